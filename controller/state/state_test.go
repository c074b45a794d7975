package state

import (
	"testing"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

const gib = 1 << 30

// overWire returns m encoded and decoded again, as it travels through the
// raft log or a snapshot file.
func overWire[M proto.Message](t *testing.T, m M) M {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	dec := m.ProtoReflect().New().Interface().(M)
	if err := proto.Unmarshal(b, dec); err != nil {
		t.Fatal(err)
	}
	return dec
}

// apply applies cmd as it comes out of the raft log, so every test also
// covers the wire form of its command.
func apply(t *testing.T, s *Store, index uint64, cmd *statev1.Command) (Result, error) {
	t.Helper()
	cmd.Version = CommandVersion
	cmd.UnixNano = int64(index) * 1000
	return s.Apply(index, overWire(t, cmd))
}

func mustApply(t *testing.T, s *Store, index uint64, cmd *statev1.Command) Result {
	t.Helper()
	v, err := apply(t, s, index, cmd)
	if err != nil {
		t.Fatalf("apply %d: %v", index, err)
	}
	return v
}

// unchanged asserts that a rejected command left the state as it was.
func unchanged(t *testing.T, s *Store, before *statev1.Snapshot) {
	t.Helper()
	after := s.Snapshot()
	after.Index = before.Index
	if !proto.Equal(before, after) {
		t.Fatal("a rejected command changed the state")
	}
}

func regHost(id, center string, cpu, mem, disk int64) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
		Id: id, Hostname: id, Center: center, Capacity: &statev1.Resources{Vcpus: cpu, MemoryBytes: mem, DiskBytes: disk},
	}}}}
}

func place(id, name, host string, cpu int32, mem int64) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_PlaceVm{PlaceVm: &statev1.PlaceVM{Vm: &statev1.VMRecord{
		Id: id, Name: name, Project: DefaultProject, Vcpus: cpu, MemoryBytes: mem, DiskBytes: 10 * gib, HostId: host,
	}}}}
}

func desired(id string, d statev1.PowerState, reboot bool) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_SetVmDesired{SetVmDesired: &statev1.SetVMDesired{VmId: id, Desired: d, Reboot: reboot}}}
}

func report(host string, st ...*statev1.VMStatus) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: host, Statuses: st}}}
}

// fixture: two hosts (h1: 8 vCPU / 16 GiB, h2 in b1) and one VM on h1.
func fixture(t *testing.T) *Store {
	s := New()
	mustApply(t, s, 1, regHost("h1", "a1", 8, 16*gib, 100*gib))
	mustApply(t, s, 2, regHost("h2", "b1", 8, 16*gib, 100*gib))
	mustApply(t, s, 3, place("vm-1", "web-1", "h1", 2, 4*gib))
	return s
}

func TestRegisterHost(t *testing.T) {
	s := New()
	mustApply(t, s, 1, regHost("h1", "a1", 8, 16*gib, 100*gib))
	hv, ok := s.Host("h1")
	if !ok || hv.Host.State != statev1.HostState_HOST_STATE_READY || hv.Host.RegisteredUnixNano != 1000 {
		t.Fatalf("host after register: %+v", hv.Host)
	}
	// Re-registering updates facts but keeps the first registration time.
	mustApply(t, s, 2, regHost("h1", "a1", 16, 32*gib, 100*gib))
	hv, _ = s.Host("h1")
	if hv.Host.Capacity.Vcpus != 16 || hv.Host.RegisteredUnixNano != 1000 {
		t.Fatalf("re-register: %+v", hv.Host)
	}
	if _, err := apply(t, s, 3, regHost("", "a1", 1, 1, 1)); KindOf(err) != KindInvalid {
		t.Fatalf("empty id: %v", err)
	}
}

func TestSetHostState(t *testing.T) {
	s := fixture(t)
	mustApply(t, s, 4, &statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: "h1", State: statev1.HostState_HOST_STATE_DOWN}}})
	hv, _ := s.Host("h1")
	if hv.Host.State != statev1.HostState_HOST_STATE_DOWN || hv.Host.StateChangedUnixNano != 4000 {
		t.Fatalf("state: %v at %d", hv.Host.State, hv.Host.StateChangedUnixNano)
	}
	// A down host takes no placements.
	if _, err := apply(t, s, 5, place("vm-2", "web-2", "h1", 1, gib)); KindOf(err) != KindConflict {
		t.Fatalf("place on down host: %v", err)
	}
	if _, err := apply(t, s, 6, &statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: "nope", State: statev1.HostState_HOST_STATE_DOWN}}}); KindOf(err) != KindNotFound {
		t.Fatalf("unknown host: %v", err)
	}
}

func TestPlaceVM(t *testing.T) {
	s := fixture(t)
	vm, ok := s.VM(DefaultProject, "web-1")
	if !ok || vm.HostId != "h1" || vm.Phase != statev1.VMPhase_VM_PHASE_PENDING || vm.Desired != statev1.PowerState_POWER_STATE_RUNNING || vm.Revision != 3 {
		t.Fatalf("vm: %+v", vm)
	}
	hv, _ := s.Host("h1")
	if hv.Facts.Allocated.VCPUs != 2 || hv.Facts.Allocated.MemoryBytes != 4*gib || hv.VMs != 1 {
		t.Fatalf("allocated: %+v", hv.Facts.Allocated)
	}
	// Same name again: rejected, nothing changes.
	before := s.Snapshot()
	if _, err := apply(t, s, 4, place("vm-2", "web-1", "h2", 1, gib)); KindOf(err) != KindAlreadyExists {
		t.Fatalf("duplicate name: %v", err)
	}
	// Over capacity: 10 GiB more fits (16 less the default 2 GiB reserved
	// for the host OS), 11 does not.
	if _, err := apply(t, s, 5, place("vm-3", "big", "h1", 2, 11*gib)); KindOf(err) != KindConflict {
		t.Fatalf("overcommit: %v", err)
	}
	if _, err := apply(t, s, 6, place("vm-4", "x", "nohost", 1, gib)); KindOf(err) != KindConflict {
		t.Fatalf("unknown host: %v", err)
	}
	unchanged(t, s, before)
	mustApply(t, s, 7, place("vm-5", "fits", "h1", 6, 10*gib))
	hv, _ = s.Host("h1")
	if hv.Facts.Allocated.VCPUs != 8 || hv.Facts.Allocated.MemoryBytes != 14*gib {
		t.Fatalf("full host: %+v", hv.Facts.Allocated)
	}
}

func TestSetVMDesired(t *testing.T) {
	s := fixture(t)
	v := mustApply(t, s, 4, desired("vm-1", statev1.PowerState_POWER_STATE_STOPPED, false)).VMs[0]
	if v.Desired != statev1.PowerState_POWER_STATE_STOPPED || v.Revision != 4 {
		t.Fatalf("stop: %+v", v)
	}
	if _, err := apply(t, s, 5, desired("vm-1", statev1.PowerState_POWER_STATE_STOPPED, true)); KindOf(err) != KindFailedPrecondition {
		t.Fatalf("reboot a stopped vm: %v", err)
	}
	mustApply(t, s, 6, desired("vm-1", statev1.PowerState_POWER_STATE_RUNNING, false))
	v = mustApply(t, s, 7, desired("vm-1", statev1.PowerState_POWER_STATE_RUNNING, true)).VMs[0]
	if v.RebootSeq != 1 {
		t.Fatalf("reboot seq: %d", v.RebootSeq)
	}
	v = mustApply(t, s, 8, desired("vm-1", statev1.PowerState_POWER_STATE_DELETED, false)).VMs[0]
	if v.Phase != statev1.VMPhase_VM_PHASE_DELETING {
		t.Fatalf("delete phase: %v", v.Phase)
	}
	// Capacity stays charged until the agent confirms the domain is gone.
	if hv, _ := s.Host("h1"); hv.Facts.Allocated.VCPUs != 2 {
		t.Fatalf("released too early: %+v", hv.Facts.Allocated)
	}
	if _, err := apply(t, s, 9, desired("vm-1", statev1.PowerState_POWER_STATE_RUNNING, false)); KindOf(err) != KindFailedPrecondition {
		t.Fatalf("start while deleting: %v", err)
	}
	mustApply(t, s, 10, desired("vm-1", statev1.PowerState_POWER_STATE_DELETED, false)) // idempotent
	if _, err := apply(t, s, 11, desired("nope", statev1.PowerState_POWER_STATE_STOPPED, false)); KindOf(err) != KindNotFound {
		t.Fatalf("unknown vm: %v", err)
	}
}

func TestReportVMStatus(t *testing.T) {
	s := fixture(t)
	mustApply(t, s, 4, report("h1", &statev1.VMStatus{VmId: "vm-1", Phase: statev1.VMPhase_VM_PHASE_RUNNING}))
	if v, _ := s.VMByID("vm-1"); v.Phase != statev1.VMPhase_VM_PHASE_RUNNING || v.Revision != 4 {
		t.Fatalf("phase: %+v", v)
	}
	// A report from a host that does not own the VM is ignored.
	mustApply(t, s, 5, report("h2", &statev1.VMStatus{VmId: "vm-1", Phase: statev1.VMPhase_VM_PHASE_FAILED}))
	if v, _ := s.VMByID("vm-1"); v.Phase != statev1.VMPhase_VM_PHASE_RUNNING {
		t.Fatalf("stale host changed phase: %v", v.Phase)
	}
	// Gone while still wanted: back to pending, capacity kept.
	mustApply(t, s, 6, report("h1", &statev1.VMStatus{VmId: "vm-1", Gone: true}))
	if v, ok := s.VMByID("vm-1"); !ok || v.Phase != statev1.VMPhase_VM_PHASE_PENDING {
		t.Fatalf("gone but wanted: %+v", v)
	}
	// Gone after delete: the VM and its allocation go away.
	mustApply(t, s, 7, desired("vm-1", statev1.PowerState_POWER_STATE_DELETED, false))
	mustApply(t, s, 8, report("h1", &statev1.VMStatus{VmId: "vm-1", Gone: true}))
	if _, ok := s.VMByID("vm-1"); ok {
		t.Fatal("deleted vm still there")
	}
	if _, ok := s.VM(DefaultProject, "web-1"); ok {
		t.Fatal("name index still holds the deleted vm")
	}
	if hv, _ := s.Host("h1"); hv.Facts.Allocated.VCPUs != 0 || hv.Facts.Allocated.MemoryBytes != 0 || hv.VMs != 0 {
		t.Fatalf("allocation not released: %+v", hv.Facts.Allocated)
	}
	if _, err := apply(t, s, 9, report("nohost")); KindOf(err) != KindNotFound {
		t.Fatalf("unknown host: %v", err)
	}
}

func TestMembers(t *testing.T) {
	s := New()
	mustApply(t, s, 1, &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{Member: &statev1.MemberRecord{Id: "a1", ApiAddress: "127.0.0.1:8470", Center: "a1"}}}})
	if m, ok := s.Member("a1"); !ok || m.ApiAddress != "127.0.0.1:8470" {
		t.Fatalf("member: %+v", m)
	}
	mustApply(t, s, 2, &statev1.Command{Cmd: &statev1.Command_RemoveMember{RemoveMember: &statev1.RemoveMember{Id: "a1"}}})
	if len(s.Members()) != 0 {
		t.Fatal("member not removed")
	}
	if _, err := apply(t, s, 3, &statev1.Command{Cmd: &statev1.Command_RemoveMember{RemoveMember: &statev1.RemoveMember{Id: "a1"}}}); KindOf(err) != KindNotFound {
		t.Fatalf("remove twice: %v", err)
	}
}

func TestUnknownAndNewerCommands(t *testing.T) {
	s := fixture(t)
	before := s.Snapshot()
	if _, err := s.Apply(4, &statev1.Command{Version: CommandVersion}); KindOf(err) != KindInvalid {
		t.Fatalf("empty command: %v", err)
	}
	if _, err := s.Apply(5, &statev1.Command{Version: CommandVersion + 1, Cmd: regHost("h9", "a1", 1, 1, 1).Cmd}); KindOf(err) != KindInvalid {
		t.Fatalf("newer command: %v", err)
	}
	unchanged(t, s, before)
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	s := fixture(t)
	mustApply(t, s, 4, place("vm-2", "db-1", "h2", 4, 8*gib))
	mustApply(t, s, 5, report("h1", &statev1.VMStatus{VmId: "vm-1", Phase: statev1.VMPhase_VM_PHASE_RUNNING}))
	mustApply(t, s, 6, &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{Member: &statev1.MemberRecord{Id: "a1", Center: "a1"}}}})
	snap := s.Snapshot()
	r := New()
	if err := r.Restore(overWire(t, snap)); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(snap, r.Snapshot()) {
		t.Fatal("restored state differs from the original")
	}
	// Derived indexes are rebuilt too: allocation and name lookup.
	hv, _ := r.Host("h2")
	if hv.Facts.Allocated.VCPUs != 4 || r.Index() != 6 {
		t.Fatalf("derived state after restore: %+v index %d", hv.Facts.Allocated, r.Index())
	}
	if _, ok := r.VM(DefaultProject, "db-1"); !ok {
		t.Fatal("name index not rebuilt")
	}
	if err := r.Restore(&statev1.Snapshot{FormatVersion: SnapshotVersion + 1}); err == nil {
		t.Fatal("newer snapshot format accepted")
	}
}

// Determinism: two stores fed the same log end up identical.
func TestApplyIsDeterministic(t *testing.T) {
	a, b := fixture(t), fixture(t)
	for i, c := range []*statev1.Command{
		place("vm-2", "x", "h2", 1, gib),
		report("h1", &statev1.VMStatus{VmId: "vm-1", Phase: statev1.VMPhase_VM_PHASE_RUNNING}),
		desired("vm-2", statev1.PowerState_POWER_STATE_DELETED, false),
		recordHeartbeats("h2"),
	} {
		apply(t, a, uint64(10+i), proto.Clone(c).(*statev1.Command))
		apply(t, b, uint64(10+i), proto.Clone(c).(*statev1.Command))
	}
	if !proto.Equal(a.Snapshot(), b.Snapshot()) {
		t.Fatal("same log, different state")
	}
}

func recordHeartbeats(silent ...string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_RecordHeartbeats{RecordHeartbeats: &statev1.RecordHeartbeats{SilentHostIds: silent}}}
}

func setLiveness(id string, st statev1.HostState) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: id, State: st}}}
}

// TestRecordHeartbeats: the last heartbeat is the command's time (the
// leader's clock) for every ready host not named silent; registration and
// coming back ready record one too; a down or silent host keeps its own.
func TestRecordHeartbeats(t *testing.T) {
	s := New()
	mustApply(t, s, 1, regHost("h1", "a1", 8, 16*gib, 100*gib))
	mustApply(t, s, 2, regHost("h2", "a1", 8, 16*gib, 100*gib))
	mustApply(t, s, 3, regHost("h3", "a1", 8, 16*gib, 100*gib))
	mustApply(t, s, 4, setLiveness("h2", statev1.HostState_HOST_STATE_DOWN))
	last := func(id string) int64 {
		t.Helper()
		hv, ok := s.Host(id)
		if !ok {
			t.Fatalf("no host %s", id)
		}
		return hv.Host.LastHeartbeatUnixNano
	}
	for id, want := range map[string]int64{"h1": 1000, "h2": 2000, "h3": 3000} {
		if got := last(id); got != want {
			t.Errorf("after registering: %s last heartbeat %d, want %d", id, got, want)
		}
	}
	seq := s.seq
	mustApply(t, s, 5, recordHeartbeats("h3", "nope")) // an unknown id is ignored
	for id, want := range map[string]int64{"h1": 5000, "h2": 2000, "h3": 3000} {
		if got := last(id); got != want {
			t.Errorf("after record: %s last heartbeat %d, want %d", id, got, want)
		}
	}
	if s.seq != seq {
		t.Error("recording heartbeats changed what placement sees")
	}
	if hv, _ := s.Host("h2"); hv.Host.State != statev1.HostState_HOST_STATE_DOWN {
		t.Errorf("recording heartbeats changed liveness: h2 is %v", hv.Host.State)
	}
	// A heartbeat from a down host makes it ready, and that is a heartbeat.
	mustApply(t, s, 6, setLiveness("h2", statev1.HostState_HOST_STATE_READY))
	if got := last("h2"); got != 6000 {
		t.Errorf("h2 back: last heartbeat %d, want 6000", got)
	}
	// Marking down keeps the last heartbeat: it says when the host was last heard.
	mustApply(t, s, 7, setLiveness("h1", statev1.HostState_HOST_STATE_DOWN))
	if got := last("h1"); got != 5000 {
		t.Errorf("h1 down: last heartbeat %d, want 5000", got)
	}
	// It survives a snapshot, and applying the same log elsewhere agrees.
	r := New()
	if err := r.Restore(overWire(t, s.Snapshot())); err != nil {
		t.Fatal(err)
	}
	if hv, _ := r.Host("h1"); hv.Host.LastHeartbeatUnixNano != 5000 {
		t.Errorf("after restore: h1 last heartbeat %d", hv.Host.LastHeartbeatUnixNano)
	}
	// A record never moves a heartbeat back (a command stamped by a leader
	// whose clock is behind the previous one's).
	cmd := recordHeartbeats()
	cmd.Version, cmd.UnixNano = CommandVersion, 10
	if _, err := s.Apply(8, overWire(t, cmd)); err != nil {
		t.Fatal(err)
	}
	if got := last("h2"); got != 6000 {
		t.Errorf("an older record moved h2's last heartbeat back to %d", got)
	}
}
