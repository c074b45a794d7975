package agent

import "context"

// SetBackupLimiter makes the per-center backup limiters with f until the
// returned func is called, for the tests of package agent_test to see
// them consulted. Call it before starting an agent and restore after it
// stopped.
func SetBackupLimiter(f func(center string, bytesPerSec int64) interface {
	WaitN(ctx context.Context, n int) error
}) (restore func()) {
	old := newBackupLimiter
	newBackupLimiter = func(center string, bytesPerSec int64) byteLimiter { return f(center, bytesPerSec) }
	return func() { newBackupLimiter = old }
}

// ManifestPieces is the agent's encoding of the manifest of a disk of
// size bytes whose chunks hash to sums, in the pieces it sends.
func ManifestPieces(size int64, sums [][]byte) [][]byte {
	var out [][]byte
	encodeManifest(size, sums, func(p []byte) error {
		out = append(out, append([]byte(nil), p...))
		return nil
	})
	return out
}

// CheckManifest decodes a manifest's encoding as the agent does, checking
// it against its name and the disk's size.
var CheckManifest = checkManifest
