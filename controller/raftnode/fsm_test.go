package raftnode

import (
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

func entry(t *testing.T, index uint64, cmd *statev1.Command) *raft.Log {
	t.Helper()
	cmd.Version = state.CommandVersion
	b, err := proto.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: b}
}

// TestFSMSnapshotRestore persists a snapshot through raft's snapshot store
// and restores it into a fresh FSM: the states must be equal.
func TestFSMSnapshotRestore(t *testing.T) {
	f := &FSM{Store: state.New()}
	res := f.Apply(entry(t, 1, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
		Id: "h1", Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 8 << 30, DiskBytes: 100 << 30},
	}}}})).(*Result)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	res = f.Apply(entry(t, 2, &statev1.Command{Cmd: &statev1.Command_PlaceVm{PlaceVm: &statev1.PlaceVM{Vm: &statev1.VMRecord{
		Id: "v1", Name: "web-1", Project: "default", Vcpus: 1, MemoryBytes: 1 << 30, DiskBytes: 10 << 30, HostId: "h1",
	}}}})).(*Result)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	// Garbage in the log is an error result, not a panic.
	if bad := f.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: []byte{0xff, 0xff}}).(*Result); bad.Err == nil {
		t.Fatal("garbage entry applied")
	}

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	store := raft.NewInmemSnapshotStore()
	sink, err := store.Create(raft.SnapshotVersionMax, 2, 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	metas, _ := store.List()
	_, rc, err := store.Open(metas[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	g := &FSM{Store: state.New()}
	if err := g.Restore(rc); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(f.Store.Snapshot(), g.Store.Snapshot()) {
		t.Fatal("restored FSM differs")
	}
}
