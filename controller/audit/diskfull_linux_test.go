package audit

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/internal/apitest"
)

// TestFileWritesAgainAfterDiskFull: records applied while the disk is full
// are kept and written once space is back, so the trail has no gap and
// reads work again without a restart. Before the fix the file's buffered
// writer kept its "no space left" error for good: every later record was
// missing and every read of the trail failed until the controller
// restarted (found by the chaos harness's follower-disk-full scenario).
func TestFileWritesAgainAfterDiskFull(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disk")
	apitest.MountTmpfs(t, dir, 256<<10)

	f, err := OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := state.New()
	s.SetAuditSink(f)
	applyN(s, 1, 5)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	filler := apitest.FillDisk(t, dir)
	applyN(s, 6, 400) // more than the 64 KiB buffer: writes fail
	if err := f.Flush(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("flush on a full disk: %v, want no space left", err)
	}
	if _, err := f.Reader(); err == nil {
		t.Fatal("the trail reads whole on a full disk")
	}
	os.Remove(filler)
	time.Sleep(retryEvery + 100*time.Millisecond)
	applyN(s, 406, 3)
	if err := f.Flush(); err != nil {
		t.Fatalf("flush after space came back: %v", err)
	}
	if err := f.Err(); err != nil {
		t.Fatalf("file still failed: %v", err)
	}
	if last, _ := f.Last(); last != 408 {
		t.Fatalf("file ends at %d, want 408", last)
	}
	rep := verifyPath(t, filepath.Join(dir, FileName), s.AuditHead())
	if !rep.OK() || rep.Records != 408 {
		t.Fatalf("trail after the disk came back: %+v", rep)
	}
}
