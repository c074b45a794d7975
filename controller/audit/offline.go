package audit

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/yunchi/yunchi/controller/raftnode"
)

// VerifyDataDir checks the trail in a stopped controller's data dir (or a
// copy of it) against the chain head its raft data records: the newest
// snapshot and the log after it, replayed here without the network.
func VerifyDataDir(dir string) (*Report, error) {
	f, err := os.Open(filepath.Join(dir, FileName))
	if err != nil {
		return nil, fmt.Errorf("open the audit trail: %w", err)
	}
	defer f.Close()
	store, err := raftnode.ReplayDataDir(dir, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return Verify(f, store.AuditHead())
}

// VerifyFile checks a trail file on its own (an export or an archive): the
// chain between its records, no head to compare with.
func VerifyFile(path string) (*Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Verify(f, nil)
}
