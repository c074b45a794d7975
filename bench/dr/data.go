//go:build linux

package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"github.com/yunchi/yunchi/internal/benchkit"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	mib       = 1 << 20
	chunkSize = 4 << 20 // the backups' chunk size
	// Pieces of a change: 64 KiB to 4 MiB, on 4 KiB boundaries.
	minPiece   = 64 << 10
	maxPiece   = 4 << 20
	pieceAlign = 4 << 10
)

// piece is one write of a change.
type piece struct{ off, n int64 }

// changes picks where frac of a disk of size bytes changes: disjoint
// pieces of minPiece to maxPiece bytes (at most a sixteenth of the disk)
// at random places, sorted, until they add up to frac of the disk.
func changes(rng *rand.Rand, size int64, frac float64) []piece {
	want := int64(frac * float64(size))
	hi := min(int64(maxPiece), max(minPiece, size/16))
	var ps []piece
	var total int64
	for tries := 0; total < want && tries < 100000; tries++ {
		n := (minPiece + rng.Int64N(hi-minPiece+1)) / pieceAlign * pieceAlign
		if rest := want - total; n > rest { // the last piece: no more than needed
			n = max((rest+pieceAlign-1)/pieceAlign*pieceAlign, minPiece)
		}
		off := rng.Int64N((size-n)/pieceAlign+1) * pieceAlign
		i, _ := slices.BinarySearchFunc(ps, off, func(p piece, off int64) int {
			switch {
			case p.off < off:
				return -1
			case p.off > off:
				return 1
			}
			return 0
		})
		if i > 0 && ps[i-1].off+ps[i-1].n > off || i < len(ps) && off+n > ps[i].off {
			continue // overlaps a piece already chosen
		}
		ps = slices.Insert(ps, i, piece{off, n})
		total += n
	}
	return ps
}

// changeBytes is the bytes the pieces cover.
func changeBytes(ps []piece) int64 {
	var n int64
	for _, p := range ps {
		n += p.n
	}
	return n
}

// chunksTouched is how many chunks the pieces change.
func chunksTouched(ps []piece) int {
	seen := map[int64]bool{}
	for _, p := range ps {
		for c := p.off / chunkSize; c <= (p.off+p.n-1)/chunkSize; c++ {
			seen[c] = true
		}
	}
	return len(seen)
}

// fillRandom writes size bytes of random data (from rng) at the start of
// the file at path, in 4 MiB writes, and makes them durable.
func fillRandom(ctx context.Context, path string, size int64, rng *rand.ChaCha8) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, chunkSize)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(int64(len(buf)), size-off)]
		rng.Read(b)
		if _, err := f.WriteAt(b, off); err != nil {
			return fmt.Errorf("write %s at %d: %w", path, off, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

// writePieces writes random data (from rng) over the pieces of the file
// at path.
func writePieces(path string, ps []piece, rng *rand.ChaCha8) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range ps {
		b := make([]byte, p.n)
		rng.Read(b)
		if _, err := f.WriteAt(b, p.off); err != nil {
			return fmt.Errorf("write %s at %d: %w", path, p.off, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

// canDropCaches: the page cache can be dropped (root).
func canDropCaches() bool { return os.Geteuid() == 0 }

// dropCaches writes dirty pages back and drops the page cache, so that
// what is timed next reads from the disk; nothing if !drop.
func dropCaches(drop bool) error {
	if !drop {
		return nil
	}
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop the page cache: %w", err)
	}
	return nil
}

// cpuTime is the CPU time (user + system) this process has used: the
// whole dev cluster (controllers, agents, repositories) runs in it.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the CPU time (user + system) process pid has used, from
// /proc (0 if it cannot be read).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	// The fields after the command name (in parentheses, which may hold
	// spaces): utime and stime are the 14th and 15th of the line.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// command is one timed baseline command.
type command struct {
	wall, cpu time.Duration
}

// runTimed runs a command, after dropping the page cache (if drop), and
// times it.
func runTimed(ctx context.Context, drop bool, name string, args ...string) (command, error) {
	if err := dropCaches(drop); err != nil {
		return command{}, err
	}
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	begun := time.Now()
	if err := cmd.Run(); err != nil {
		return command{}, fmt.Errorf("%s: %v: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	wall := time.Since(begun)
	return command{wall: wall, cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}, nil
}

// baselines times `cp FILE COPY`, `sync COPY` (fsync of the copy) and
// `sha256sum FILE` on the same file, and reads and hashes it as the agent
// does, each after dropping the page cache (if drop), adds them as
// PREFIX_cp_s etc. and removes the copy.
func baselines(ctx context.Context, ls *lines, drop bool, prefix, file, copyTo string, size int64) error {
	defer os.Remove(copyTo)
	benchkit.Progress("%s: cp of %s (%d MiB)", prefix, file, size/mib)
	cp, err := runTimed(ctx, drop, "cp", "--", file, copyTo)
	if err != nil {
		return err
	}
	// The copy's pages are written back by `sync COPY` (an fsync of that
	// file only), as the repository fsyncs each chunk it stores.
	begun := time.Now()
	if out, err := exec.CommandContext(ctx, "sync", "--", copyTo).CombinedOutput(); err != nil {
		return fmt.Errorf("sync %s: %v: %s", copyTo, err, strings.TrimSpace(string(out)))
	}
	fsync := time.Since(begun)
	if err := os.Remove(copyTo); err != nil {
		return err
	}
	benchkit.Progress("%s: sha256sum of %s", prefix, file)
	sum, err := runTimed(ctx, drop, "sha256sum", "--", file)
	if err != nil {
		return err
	}
	ls.Add(prefix+"_cp_s", "%s (%s MiB/s; cp CPU %s s)", secs(cp.wall), rate(size, cp.wall), secs(cp.cpu))
	ls.Add(prefix+"_cp_fsync_s", "%s (%s MiB/s: cp, then `sync COPY` took %s s more)", secs(cp.wall+fsync), rate(size, cp.wall+fsync), secs(fsync))
	benchkit.Progress("%s: reading and hashing %s in 4 MiB chunks in this process", prefix, file)
	goSum, err := hashChunks(ctx, drop, file)
	if err != nil {
		return err
	}
	ls.Add(prefix+"_sha256sum_s", "%s (%s MiB/s; CPU %s s)", secs(sum.wall), rate(size, sum.wall), secs(sum.cpu))
	ls.Add(prefix+"_go_sha256_chunks_s", "%s (%s MiB/s; CPU %s s: read in 4 MiB pieces, crypto/sha256 of each, in this process, as the agent hashes)", secs(goSum.wall), rate(size, goSum.wall), secs(goSum.cpu))
	return nil
}

// hashChunks reads file in chunks and hashes each with crypto/sha256
// (what the agent does with a disk, without the rest), after dropping
// the page cache (if drop).
func hashChunks(ctx context.Context, drop bool, file string) (command, error) {
	if err := dropCaches(drop); err != nil {
		return command{}, err
	}
	f, err := os.Open(file)
	if err != nil {
		return command{}, err
	}
	defer f.Close()
	buf := make([]byte, chunkSize)
	cpu0, begun := cpuTime(), time.Now()
	for {
		if err := ctx.Err(); err != nil {
			return command{}, err
		}
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			sha256.Sum256(buf[:n])
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return command{}, fmt.Errorf("read %s: %w", file, err)
		}
	}
	return command{wall: time.Since(begun), cpu: cpuTime() - cpu0}, nil
}

// secs formats a duration in seconds, 2 decimals.
func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) }

// rate is bytes per d, in MiB/s, 1 decimal.
func rate(bytes int64, d time.Duration) string {
	if d <= 0 {
		return "inf"
	}
	return strconv.FormatFloat(float64(bytes)/mib/d.Seconds(), 'f', 1, 64)
}

// mibs formats bytes in MiB, 1 decimal.
func mibs(b int64) string { return strconv.FormatFloat(float64(b)/mib, 'f', 1, 64) }

// dirUsage is what the files under dir take on disk (st_blocks), like
// `du -s`.
func dirUsage(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		}
		return nil
	})
	return n, err
}
