package state

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// snapshotWorkload is a run of commands that change records in every way
// Apply does: new VMs, desired state and reboots, status reports, a VM
// deleted and gone, heartbeats, liveness, a re-registered host and
// remembered request ids.
func snapshotWorkload() []*statev1.Command {
	var cmds []*statev1.Command
	for i := range 4 {
		cmds = append(cmds, regHost(fmt.Sprintf("h%d", i), "a1", 64, 256*gib, 1000*gib))
	}
	for i := range 40 {
		cmds = append(cmds, withID(place(fmt.Sprintf("vm-%02d", i), fmt.Sprintf("web-%02d", i), fmt.Sprintf("h%d", i%4), 1, gib), fmt.Sprintf("req-%d", i), "x"))
	}
	for round := range 3 {
		for i := range 40 {
			if i >= 37 && i-37 < round {
				continue // deleted in an earlier round
			}
			id, host := fmt.Sprintf("vm-%02d", i), fmt.Sprintf("h%d", i%4)
			switch (i + round) % 4 {
			case 0:
				cmds = append(cmds, report(host, &statev1.VMStatus{VmId: id, Phase: statev1.VMPhase_VM_PHASE_RUNNING, Message: fmt.Sprintf("round %d", round)}))
			case 1:
				cmds = append(cmds, desired(id, statev1.PowerState_POWER_STATE_RUNNING, true))
			case 2:
				cmds = append(cmds, desired(id, statev1.PowerState_POWER_STATE_STOPPED, false))
			case 3:
				cmds = append(cmds, desired(id, statev1.PowerState_POWER_STATE_RUNNING, false))
			}
		}
		cmds = append(cmds,
			&statev1.Command{Cmd: &statev1.Command_RecordHeartbeats{RecordHeartbeats: &statev1.RecordHeartbeats{SilentHostIds: []string{"h3"}}}},
			&statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: "h3", State: statev1.HostState_HOST_STATE_DOWN}}},
			&statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: "h3", State: statev1.HostState_HOST_STATE_READY}}},
			regHost("h2", "a1", 64+int64(round), 256*gib, 1000*gib),
			desired(fmt.Sprintf("vm-%02d", 37+round), statev1.PowerState_POWER_STATE_DELETED, false),
			report(fmt.Sprintf("h%d", (37+round)%4), &statev1.VMStatus{VmId: fmt.Sprintf("vm-%02d", 37+round), Gone: true}),
		)
	}
	return cmds
}

// TestSnapshotWhileApplying takes a snapshot in the middle of a workload,
// encodes it while Apply goes on (and again after), and restores it: the
// result is exactly the state at the snapshot's index, however far Apply
// has moved since.
func TestSnapshotWhileApplying(t *testing.T) {
	cmds := snapshotWorkload()
	for _, at := range []int{44, 100, 150, len(cmds) - 10} {
		t.Run(fmt.Sprint(at), func(t *testing.T) {
			s, ref := New(), New()
			for i, c := range cmds[:at] {
				mustApply(t, s, uint64(i+1), proto.Clone(c).(*statev1.Command))
				mustApply(t, ref, uint64(i+1), proto.Clone(c).(*statev1.Command))
			}
			view := s.View()
			if view.Index() != uint64(at) {
				t.Fatalf("view index %d, want %d", view.Index(), at)
			}
			during := make(chan []byte, 1)
			go func() {
				b, err := proto.Marshal(view.Snapshot())
				if err != nil {
					b = nil
				}
				during <- b
			}()
			for i := at; i < len(cmds); i++ {
				mustApply(t, s, uint64(i+1), proto.Clone(cmds[i]).(*statev1.Command))
			}
			after, err := proto.Marshal(view.Snapshot())
			if err != nil {
				t.Fatal(err)
			}
			want := ref.Snapshot()
			for name, b := range map[string][]byte{"encoded while applying": <-during, "encoded after applying": after} {
				var snap statev1.Snapshot
				if b == nil || proto.Unmarshal(b, &snap) != nil {
					t.Fatalf("%s: snapshot did not encode", name)
				}
				r := New()
				if err := r.Restore(&snap); err != nil {
					t.Fatal(err)
				}
				if got := r.Snapshot(); !proto.Equal(got, want) {
					t.Fatalf("%s: restored state differs from the state at index %d\ngot  %v\nwant %v", name, at, got, want)
				}
			}
			if s.Index() != uint64(len(cmds)) || proto.Equal(s.Snapshot(), want) {
				t.Fatal("the store did not move on past the snapshot")
			}
		})
	}
}

// TestViewKeepsFreshRecords: records Apply has just stored (a placed VM, a
// registered or updated host) are changed in place until a View is taken,
// never after: the View still shows them as they were when it was taken,
// however a status report, heartbeats or liveness change them later.
func TestViewKeepsFreshRecords(t *testing.T) {
	s := fixture(t) // h1, h2 registered, vm-1 placed: all fresh
	mustApply(t, s, 4, report("h1", &statev1.VMStatus{VmId: "vm-1", Phase: statev1.VMPhase_VM_PHASE_RUNNING, Message: "up"}))
	mustApply(t, s, 5, updateHost(&statev1.UpdateHost{HostId: "h2", SetLabels: map[string]string{"tier": "gold"}}))
	mustApply(t, s, 6, &statev1.Command{Cmd: &statev1.Command_RecordHeartbeats{RecordHeartbeats: &statev1.RecordHeartbeats{}}})
	view := s.View()
	want := proto.Clone(view.Snapshot()).(*statev1.Snapshot)

	mustApply(t, s, 7, report("h1", &statev1.VMStatus{VmId: "vm-1", Phase: statev1.VMPhase_VM_PHASE_STOPPED, Message: "down", ObservedRebootSeq: 3}))
	mustApply(t, s, 8, &statev1.Command{Cmd: &statev1.Command_RecordHeartbeats{RecordHeartbeats: &statev1.RecordHeartbeats{}}})
	mustApply(t, s, 9, &statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: "h2", State: statev1.HostState_HOST_STATE_DOWN}}})
	// Changed twice after the View: the second change is to the clone.
	mustApply(t, s, 10, report("h1", &statev1.VMStatus{VmId: "vm-1", Phase: statev1.VMPhase_VM_PHASE_RUNNING, Message: "again"}))
	mustApply(t, s, 11, &statev1.Command{Cmd: &statev1.Command_RecordHeartbeats{RecordHeartbeats: &statev1.RecordHeartbeats{}}})

	if got := view.Snapshot(); !proto.Equal(got, want) {
		t.Fatalf("a View changed after it was taken\ngot  %v\nwant %v", got, want)
	}
	vm := want.Vms[0]
	if vm.Phase != statev1.VMPhase_VM_PHASE_RUNNING || vm.Message != "up" || vm.Revision != 4 {
		t.Fatalf("vm in view: %v", vm)
	}
	for _, h := range want.Hosts {
		if h.LastHeartbeatUnixNano != 6000 || h.State != statev1.HostState_HOST_STATE_READY {
			t.Fatalf("host in view: %v", h)
		}
	}
	// And the store did move on.
	if vm, _ := s.VM(DefaultProject, "web-1"); vm.Message != "again" || vm.ObservedRebootSeq != 3 {
		t.Fatalf("vm in store: %v", vm)
	}
	if hv, _ := s.Host("h1"); hv.Host.LastHeartbeatUnixNano != 11000 {
		t.Fatalf("h1 in store: %v", hv.Host)
	}
	if hv, _ := s.Host("h2"); hv.Host.State != statev1.HostState_HOST_STATE_DOWN {
		t.Fatalf("h2 in store: %v", hv.Host)
	}
}
