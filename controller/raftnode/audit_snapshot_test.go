package raftnode_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/audit"
	"github.com/yunchi/yunchi/controller/raftnode"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

func auditFSM(t testing.TB, dir string) (*raftnode.FSM, *audit.File) {
	t.Helper()
	f, err := audit.OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	s := state.New()
	s.SetAuditSink(f)
	return &raftnode.FSM{Store: s, Audit: f}, f
}

func auditEntry(t testing.TB, index uint64, n int) *raft.Log {
	recs := make([]*statev1.AuditRecord, n)
	for i := range recs {
		recs[i] = &statev1.AuditRecord{Kind: "denied", Result: "denied", Code: "PermissionDenied", Message: "only auditors read the audit trail",
			Context: &statev1.AuditContext{Actor: "user-17", Role: "ROLE_MEMBER", Department: "air", Source: "10.20.30.40:51234",
				Action: "CreateVM", Target: "project/air/vm/web-1", Params: `{"name":"web-1","project":"air","vcpus":2,"memory":"4GiB","disk":"40GiB"}`}}
	}
	b, err := proto.Marshal(&statev1.Command{Version: state.CommandVersion, UnixNano: int64(index) * 1e6,
		Cmd: &statev1.Command_RecordAudit{RecordAudit: &statev1.RecordAudit{Records: recs}}})
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: b}
}

// A follower that installs a snapshot ends with the leader's whole trail
// (the records travel after the state in the snapshot stream), and the
// log after the snapshot appends to it. Logs how long Persist and Restore
// take at 100,000 records (10,000 with -short).
func TestSnapshotCarriesAuditTrail(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	dir := t.TempDir()
	leader, lf := auditFSM(t, filepath.Join(dir, "leader"))
	const batch = 100
	idx := uint64(0)
	for range n / batch {
		idx++
		if r := leader.Apply(auditEntry(t, idx, batch)).(*raftnode.Result); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(dir, "snaps"), 1, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	fs, err := leader.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	// Applies go on while the snapshot persists: they are not in it.
	idx++
	leader.Apply(auditEntry(t, idx, 1))
	sink, err := snaps.Create(raft.SnapshotVersionMax, idx-1, 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := fs.Persist(sink); err != nil {
		t.Fatal(err)
	}
	persist := time.Since(start)
	fs.Release()
	list, _ := snaps.List()
	meta, rc, err := snaps.Open(list[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	follower, ff := auditFSM(t, filepath.Join(dir, "follower"))
	start = time.Now()
	if err := follower.Restore(rc); err != nil {
		t.Fatal(err)
	}
	restore := time.Since(start)
	t.Logf("%d records: snapshot %v, persist %v, restore %v, snapshot size %d bytes", n, took, persist, restore, meta.Size)
	if got := follower.Store.AuditHead().Seq; got != uint64(n) {
		t.Fatalf("restored head %d, want %d", got, n)
	}
	// The entry after the snapshot, replayed on the follower.
	follower.Apply(auditEntry(t, idx, 1))
	lf.Flush()
	ff.Flush()
	a, _ := os.ReadFile(filepath.Join(dir, "leader", audit.FileName))
	b, _ := os.ReadFile(filepath.Join(dir, "follower", audit.FileName))
	if !bytes.Equal(a, b) {
		t.Fatalf("follower's trail (%d bytes) differs from the leader's (%d bytes)", len(b), len(a))
	}
	r, err := ff.Reader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rep, err := audit.Verify(r, follower.Store.AuditHead())
	if err != nil || !rep.OK() || rep.Records != uint64(n+1) {
		t.Fatalf("follower's trail: %+v %v", rep, err)
	}
}

// Snapshots written before the audit trail (the state message alone)
// still restore.
func TestOldSnapshotWithoutTrail(t *testing.T) {
	s := state.New()
	b, err := proto.Marshal(s.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	f, _ := auditFSM(t, t.TempDir())
	if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
}
