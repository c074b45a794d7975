package audit

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestTrailWrittenBackAsItGoes: every chunk the trail's buffer writes out
// is handed to the disk at once, range after range with no gap, from
// where the file ended when it was opened; a file system without it
// (an error) is asked once and then left to the kernel.
func TestTrailWrittenBackAsItGoes(t *testing.T) {
	type call struct{ off, n int64 }
	var calls []call
	writebackStart = func(_ *os.File, off, n int64) error {
		calls = append(calls, call{off, n})
		return nil
	}
	t.Cleanup(func() { writebackStart = startWriteback })
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	s, f := trail(t, dir, 10)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) == 0 || calls[0].off != 0 {
		t.Fatalf("writebacks of the first 10 records: %v", calls)
	}
	calls = nil
	f, err = OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.SetAuditSink(f)
	applyN(s, 11, 3000) // several 64 KiB buffers
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	end, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) < 3 {
		t.Fatalf("%d writebacks for %d bytes", len(calls), end.Size()-st.Size())
	}
	next := st.Size()
	for i, c := range calls {
		if c.off != next || c.n <= 0 {
			t.Fatalf("writeback %d is [%d, +%d), want it to start at %d (calls %v)", i, c.off, c.n, next, calls)
		}
		next += c.n
	}
	if next != end.Size() {
		t.Fatalf("writebacks end at %d, the file at %d", next, end.Size())
	}

	// Unsupported: asked once, then not again.
	asked := 0
	writebackStart = func(*os.File, int64, int64) error { asked++; return errors.ErrUnsupported }
	f.Close()
	if f, err = OpenFile(dir, nil); err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s.SetAuditSink(f)
	applyN(s, 3011, 3000)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	if asked != 1 {
		t.Fatalf("an unsupported writeback was asked %d times", asked)
	}
	if rep := verifyPath(t, path, s.AuditHead()); !rep.OK() || rep.Records != 6010 {
		t.Fatalf("trail: %+v", rep)
	}
}
