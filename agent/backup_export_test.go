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
