package main

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/raftnode"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// stateFigures are measured in this process on the controller's own FSM
// (raftnode.FSM over a state.Store) filled through Apply with encoded log
// entries, as a follower fills it: memory per VM (Go heap after GC) and
// the snapshot (FSM.Snapshot, then Persist's encoding) and restore times.
type stateFigures struct {
	vms, hosts                 int
	heapPerVM                  float64
	snapshotTake, snapshotPers time.Duration
	snapshotBytes              int
	restore                    time.Duration
}

type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "bench" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

func heapAfterGC() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func applyCmd(f *raftnode.FSM, index uint64, cmd *statev1.Command) error {
	b, err := proto.Marshal(cmd)
	if err != nil {
		return err
	}
	if r, ok := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: b}).(*raftnode.Result); ok && r.Err != nil {
		return fmt.Errorf("apply entry %d: %w", index, r.Err)
	}
	return nil
}

// measureState fills a store with hosts hosts and vms 1-vCPU VMs (batches
// of 100, each VM on the next host in turn), then measures.
func measureState(vms, hosts int) (stateFigures, error) {
	fig := stateFigures{vms: vms, hosts: hosts}
	f := &raftnode.FSM{Store: state.New()}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	index := uint64(0)
	perHost := int64(vms/hosts + 1)
	for h := 0; h < hosts; h++ {
		index++
		err := applyCmd(f, index, &statev1.Command{Version: state.CommandVersion, UnixNano: now, Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{
			Host: &statev1.HostRecord{Id: fmt.Sprintf("h%05d", h), Hostname: fmt.Sprintf("h%05d", h), Center: "a1", Site: "bench", Rack: "r1",
				Capacity: &statev1.Resources{Vcpus: perHost, MemoryBytes: perHost << 30, DiskBytes: perHost << 31}, CpuModel: "bench", AgentVersion: "bench"},
		}}})
		if err != nil {
			return fig, err
		}
	}
	before := heapAfterGC()
	for i := 0; i < vms; {
		var recs []*statev1.VMRecord
		for ; i < vms && len(recs) < 100; i++ {
			recs = append(recs, &statev1.VMRecord{
				// A uuid's length, as the API gives.
				Id: fmt.Sprintf("00000000-0000-4000-8000-%012d", i), Name: fmt.Sprintf("vm-%d", i), Project: "default",
				Vcpus: 1, MemoryBytes: 256 << 20, DiskBytes: 1 << 30, HostId: fmt.Sprintf("h%05d", i%hosts),
				Desired: statev1.PowerState_POWER_STATE_RUNNING, Strategy: "binpack",
			})
		}
		index++
		if err := applyCmd(f, index, &statev1.Command{Version: state.CommandVersion, UnixNano: now, Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: recs}}}); err != nil {
			return fig, err
		}
	}
	after := heapAfterGC()
	fig.heapPerVM = float64(int64(after)-int64(before)) / float64(vms)

	t0 := time.Now()
	snap, err := f.Snapshot()
	if err != nil {
		return fig, err
	}
	fig.snapshotTake = time.Since(t0)
	sink := &memSink{}
	t1 := time.Now()
	if err := snap.Persist(sink); err != nil {
		return fig, err
	}
	fig.snapshotPers = time.Since(t1)
	snap.Release()
	fig.snapshotBytes = sink.Len()

	g := &raftnode.FSM{Store: state.New()}
	t2 := time.Now()
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		return fig, err
	}
	fig.restore = time.Since(t2)
	if n := len(g.Store.Snapshot().Vms); n != vms {
		return fig, fmt.Errorf("restored state holds %d VMs, want %d", n, vms)
	}
	runtime.KeepAlive(f)
	return fig, nil
}
