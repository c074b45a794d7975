package audit

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback starts writing the range out (sync_file_range(2) with
// SYNC_FILE_RANGE_WRITE: it neither waits nor makes the range durable).
func startWriteback(f *os.File, off, n int64) error {
	return unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
