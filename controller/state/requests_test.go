package state

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// withID stamps cmd with a request id and hash, as the API does.
func withID(cmd *statev1.Command, id, hash string) *statev1.Command {
	cmd.RequestId, cmd.RequestHash = id, []byte(hash)
	return cmd
}

// applyAt applies cmd at index with the leader's time now.
func applyAt(t *testing.T, s *Store, index uint64, now time.Duration, cmd *statev1.Command) (Result, error) {
	t.Helper()
	cmd.Version = CommandVersion
	cmd.UnixNano = int64(now)
	return s.Apply(index, overWire(t, cmd))
}

func TestRequestIDAppliesOnce(t *testing.T) {
	s := fixture(t)
	first := mustApply(t, s, 4, withID(place("vm-2", "db-1", "h2", 2, 4*gib), "k1", "create db-1"))
	// The leader decided again (a new VM id) for the retried request: the
	// log holds both, and the second returns the first VM.
	again := mustApply(t, s, 5, withID(place("vm-3", "db-1", "h2", 2, 4*gib), "k1", "create db-1"))
	if !proto.Equal(first.VMs[0], again.VMs[0]) {
		t.Fatalf("retry returned %v, first apply %v", again, first)
	}
	if len(s.VMs("", "")) != 2 {
		t.Fatalf("%d VMs after a retried create, want 2 (web-1, db-1)", len(s.VMs("", "")))
	}
	if hv, _ := s.Host("h2"); hv.Facts.Allocated.VCPUs != 2 {
		t.Fatalf("h2 allocates %d vCPUs, want 2: the retry was charged", hv.Facts.Allocated.VCPUs)
	}

	// A rejection is an outcome too: the same error again, nothing applied.
	_, err1 := apply(t, s, 6, withID(place("vm-4", "web-1", "h2", 1, gib), "k2", "create web-1"))
	_, err2 := apply(t, s, 7, withID(place("vm-5", "web-1", "h2", 1, gib), "k2", "create web-1"))
	if KindOf(err1) != KindAlreadyExists || err2 == nil || err2.Error() != err1.Error() || KindOf(err2) != KindOf(err1) {
		t.Fatalf("first %v, retry %v: want the same already-exists error", err1, err2)
	}

	// A conflict is no outcome: the leader decides again under the same id.
	_, err := apply(t, s, 8, withID(place("vm-6", "big", "h1", 64, gib), "k3", "create big"))
	if KindOf(err) != KindConflict {
		t.Fatalf("over capacity: %v, want a conflict", err)
	}
	v := mustApply(t, s, 9, withID(place("vm-7", "big", "h2", 1, gib), "k3", "create big"))
	if v.VMs[0].Id != "vm-7" {
		t.Fatalf("after a conflict the new decision was not applied: %v", v)
	}

	// A batch answers with the same list.
	batch := func(ids ...string) *statev1.Command {
		var vms []*statev1.VMRecord
		for i, id := range ids {
			vms = append(vms, &statev1.VMRecord{Id: id, Name: "b-" + string(rune('1'+i)), Project: DefaultProject, Vcpus: 1, MemoryBytes: gib, DiskBytes: gib, HostId: "h2"})
		}
		return &statev1.Command{Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: vms}}}
	}
	b1 := mustApply(t, s, 10, withID(batch("b1", "b2"), "k4", "batch"))
	b2 := mustApply(t, s, 11, withID(batch("b3", "b4"), "k4", "batch"))
	l1, l2 := b1.VMs, b2.VMs
	if len(l2) != 2 || l2[0].Id != l1[0].Id || l2[1].Id != l1[1].Id {
		t.Fatalf("batch retry returned %v, first %v", l2, l1)
	}
}

func TestRequestIDWithDifferentRequestRefused(t *testing.T) {
	s := fixture(t)
	mustApply(t, s, 4, withID(place("vm-2", "db-1", "h2", 2, 4*gib), "k1", "create db-1"))
	before := s.Snapshot()
	_, err := apply(t, s, 5, withID(place("vm-3", "db-2", "h2", 2, 4*gib), "k1", "create db-2"))
	if KindOf(err) != KindInvalid || err.Error() != `idempotency key "k1" was already used for a different request: send a new key with every new request` {
		t.Fatalf("same id, different request: %v", err)
	}
	unchanged(t, s, before)
}

func TestRequestIDsExpireByCommandTime(t *testing.T) {
	s := fixture(t)
	if _, err := applyAt(t, s, 4, time.Hour, withID(place("vm-2", "db-1", "h2", 1, gib), "k1", "a")); err != nil {
		t.Fatal(err)
	}
	// Just inside the window: still remembered.
	v, err := applyAt(t, s, 5, time.Hour+RequestTTL, withID(place("vm-3", "db-1", "h2", 1, gib), "k1", "a"))
	if err != nil || v.VMs[0].Id != "vm-2" {
		t.Fatalf("inside the window: %v %v, want the first VM", v, err)
	}
	// Any command past the window forgets it (here a heartbeat note).
	if _, err := applyAt(t, s, 6, time.Hour+RequestTTL+1, recordHeartbeats()); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Request("k1"); ok || s.RequestCount() != 0 {
		t.Fatalf("id still remembered past %s (%d ids)", RequestTTL, s.RequestCount())
	}
	// A leader whose clock is behind does not bring it back.
	if _, err := applyAt(t, s, 7, time.Hour, recordHeartbeats()); err != nil {
		t.Fatal(err)
	}
	_, err = applyAt(t, s, 8, time.Hour, withID(place("vm-4", "db-1", "h2", 1, gib), "k1", "a"))
	if KindOf(err) != KindAlreadyExists {
		t.Fatalf("expired id applied again: %v, want already exists (the id is forgotten)", err)
	}
}

func TestRequestIDsBoundedByCount(t *testing.T) {
	s := fixture(t)
	s.setRequestBounds(RequestTTL, 3)
	for i := 0; i < 5; i++ {
		id := string(rune('a' + i))
		mustApply(t, s, uint64(4+i), withID(desired("vm-1", 1, false), id, id))
	}
	if s.RequestCount() != 3 {
		t.Fatalf("%d ids remembered, bound is 3", s.RequestCount())
	}
	for i, want := range []bool{false, false, true, true, true} {
		if _, ok := s.Request(string(rune('a' + i))); ok != want {
			t.Fatalf("id %c remembered=%v, want %v (the oldest go first)", 'a'+i, ok, want)
		}
	}
}

func TestRequestIDsKeptInSnapshots(t *testing.T) {
	s := fixture(t)
	mustApply(t, s, 4, withID(place("vm-2", "db-1", "h2", 2, 4*gib), "k1", "create db-1"))
	apply(t, s, 5, withID(place("vm-3", "web-1", "h2", 1, gib), "k2", "create web-1"))
	snap := s.Snapshot()
	r := New()
	if err := r.Restore(overWire(t, snap)); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(snap, r.Snapshot()) || r.RequestCount() != 2 {
		t.Fatalf("restored state differs (%d ids)", r.RequestCount())
	}
	v, err := apply(t, r, 6, withID(place("vm-4", "db-1", "h1", 2, 4*gib), "k1", "create db-1"))
	if err != nil || v.VMs[0].Id != "vm-2" || v.VMs[0].HostId != "h2" {
		t.Fatalf("after restore: %v %v, want the first VM", v, err)
	}
	_, err = apply(t, r, 7, withID(place("vm-5", "web-1", "h2", 1, gib), "k2", "create web-1"))
	if KindOf(err) != KindAlreadyExists {
		t.Fatalf("after restore: %v, want the first error", err)
	}
}

// TestRequestOutcomeIsTheFirst: a retry answers with the VM as the first
// apply made it, not as it is now (the table keeps its own copy).
func TestRequestOutcomeIsTheFirst(t *testing.T) {
	s := fixture(t)
	first := mustApply(t, s, 4, withID(place("vm-2", "db-1", "h2", 2, 4*gib), "k1", "create db-1"))
	mustApply(t, s, 5, desired("vm-2", statev1.PowerState_POWER_STATE_STOPPED, false))
	if now, _ := s.VMByID("vm-2"); now.Desired != statev1.PowerState_POWER_STATE_STOPPED {
		t.Fatalf("vm-2 wants %v after the stop", now.Desired)
	}
	again := mustApply(t, s, 6, withID(place("vm-3", "db-1", "h2", 2, 4*gib), "k1", "create db-1"))
	if !proto.Equal(first.VMs[0], again.VMs[0]) || again.VMs[0].Desired != statev1.PowerState_POWER_STATE_RUNNING || again.VMs[0].Revision != 4 {
		t.Fatalf("retry answered %v, want the first outcome %v", again.VMs[0], first.VMs[0])
	}
	r, ok := s.Request("k1")
	if !ok || len(r.Vms) != 1 || !proto.Equal(r.Vms[0], first.VMs[0]) || r.Index != 4 || string(r.Hash) != "create db-1" {
		t.Fatalf("Request(k1) = %v, %v", r, ok)
	}
}

// TestViewEncodeIsTheSnapshot: the snapshot bytes (remembered outcomes
// appended as they are kept, encoded) decode to the same message as
// View.Snapshot.
func TestViewEncodeIsTheSnapshot(t *testing.T) {
	s := fixture(t)
	mustApply(t, s, 4, withID(place("vm-2", "db-1", "h2", 2, 4*gib), "k1", "create db-1"))
	apply(t, s, 5, withID(place("vm-3", "web-1", "h2", 1, gib), "k2", "create web-1"))
	mustApply(t, s, 6, withID(place("vm-4", "app-1", "h1", 1, gib), "k3", "create app-1"))
	v := s.View()
	b, err := v.Encode()
	if err != nil {
		t.Fatal(err)
	}
	var got statev1.Snapshot
	if err := proto.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := v.Snapshot()
	if len(want.Requests) != 3 || len(want.Vms) != 3 {
		t.Fatalf("snapshot has %d requests and %d VMs, want 3 and 3", len(want.Requests), len(want.Vms))
	}
	if !proto.Equal(&got, want) {
		t.Fatalf("Encode decodes to\n%v\nwant\n%v", &got, want)
	}
	r := New()
	if err := r.Restore(&got); err != nil {
		t.Fatal(err)
	}
	if r.RequestCount() != 3 {
		t.Fatalf("restored %d request ids, want 3", r.RequestCount())
	}
}

// TestApplyUnansweredSameState: a follower's apply (no answer) leaves the
// same state as the leader's, the remembered outcomes of request ids
// included (a retry after a change of leader is answered from them).
func TestApplyUnansweredSameState(t *testing.T) {
	leader, follower := fixture(t), fixture(t)
	batch := &statev1.Command{Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: []*statev1.VMRecord{
		{Id: "b1", Name: "b-1", Project: DefaultProject, Vcpus: 1, MemoryBytes: gib, DiskBytes: gib, HostId: "h2"},
		{Id: "b2", Name: "b-2", Project: DefaultProject, Vcpus: 1, MemoryBytes: gib, DiskBytes: gib, HostId: "h2"},
	}}}}
	cmds := []*statev1.Command{
		withID(place("vm-2", "db-1", "h2", 2, 4*gib), "k1", "create db-1"),
		withID(batch, "k2", "batch"),
		withID(place("vm-3", "web-1", "h2", 1, gib), "k3", "create web-1"), // already exists
		place("vm-4", "app-1", "h1", 1, gib),
	}
	for i, cmd := range cmds {
		index := uint64(4 + i)
		want, werr := applyAt(t, leader, index, time.Duration(index)*time.Second, proto.Clone(cmd).(*statev1.Command))
		c := proto.Clone(cmd).(*statev1.Command)
		c.Version, c.UnixNano = CommandVersion, int64(time.Duration(index)*time.Second)
		gerr := follower.ApplyUnanswered(index, overWire(t, c))
		if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
			t.Fatalf("command %d: leader %v, follower %v", i, werr, gerr)
		}
		if werr == nil && len(want.VMs) == 0 && cmd.GetPlaceVm() != nil {
			t.Fatalf("command %d: the leader's answer has no VM", i)
		}
	}
	if !proto.Equal(leader.Snapshot(), follower.Snapshot()) {
		t.Fatal("the follower's state differs from the leader's")
	}
	for _, id := range []string{"k1", "k2", "k3"} {
		a, _ := leader.Request(id)
		b, ok := follower.Request(id)
		if !ok || !proto.Equal(a, b) {
			t.Fatalf("request %s: leader %v, follower %v", id, a, b)
		}
	}
	if r, _ := follower.Request("k2"); len(r.Vms) != 2 || r.Vms[1].Id != "b2" {
		t.Fatalf("the follower remembers the batch as %v", r.Vms)
	}
}
