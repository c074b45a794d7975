package audit

import (
	"io"
	"os"
)

// writeback is the audit file as the buffered writer sees it: every chunk
// written is handed to the disk at once (startWriteback), in the manner of
// RocksDB's bytes_per_sync. Left to the kernel's flusher, the trail's dirty
// pages were written out inside the raft log's fsyncs on the same file
// system (ext4's ordered journal), and a create at one client waited about
// 0.4 ms longer for its commit (docs/performance.md, "The audit trail and
// the raft log's fsync"). The trail's durability still comes from the raft
// log, which replays what a crash lost; this only starts the writes early.
type writeback struct {
	f   *os.File
	off int64 // where the next write lands
	// start begins writing back n bytes at off without waiting for them
	// (startWriteback; tests record the calls). Nil once it failed: the
	// file system does not have it, and the kernel's flusher does the work.
	start func(f *os.File, off, n int64) error
}

var _ io.Writer = (*writeback)(nil)

// writebackStart is what new writebacks start writes with (tests replace
// it).
var writebackStart = startWriteback

func newWriteback(f *os.File, off int64) *writeback {
	return &writeback{f: f, off: off, start: writebackStart}
}

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if n > 0 && w.start != nil {
		if w.start(w.f, w.off, int64(n)) != nil {
			w.start = nil
		}
	}
	w.off += int64(n)
	return n, err
}
