package leader

import (
	"slices"
	"testing"
	"time"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// TestPausedCountsOnlyTimeAfterLastHeard: a pause of the leader does not
// count against hosts, but only the part of it after a host was last heard,
// so a host heard just as the leader came back gets no extra time.
func TestPausedCountsOnlyTimeAfterLastHeard(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tab := newSeenTable()
	tab.touch("early", t0, nil, nil)                                     // heard 3 s before the pause
	tab.touch("late", t0.Add(15*time.Second-time.Millisecond), nil, nil) // heard as the leader resumed
	tab.paused(t0.Add(15*time.Second), 12*time.Second)                   // did not run from t0+3s to t0+15s
	now := t0.Add(16 * time.Second)
	if got, want := tab.get("early").silentFor(now), 4*time.Second; got != want {
		t.Errorf("early: silent for %v, want %v (3 s before the pause, 1 s after)", got, want)
	}
	if got, want := tab.get("late").silentFor(now), time.Second; got != want {
		t.Errorf("late: silent for %v, want %v", got, want)
	}
	tab.touch("early", now, nil, nil)
	if got := tab.get("early").silentFor(now.Add(time.Second)); got != time.Second {
		t.Errorf("a heartbeat must clear the pause credit: silent for %v, want 1s", got)
	}
}

// TestHeartbeatAllocatesNothing: a heartbeat from a known host rewrites its
// entry in place; the leader hears 10,000 hosts every few seconds, and a
// garbage object per heartbeat is GC work against the whole (large) heap.
func TestHeartbeatAllocatesNothing(t *testing.T) {
	tb := newSeenTable()
	stats := &yunchiv1.HostStats{}
	vms := []*yunchiv1.VMStats{{VmId: "vm-1", Usage: &yunchiv1.VMUsage{CpuTimeNs: 1}}} // guests' usage: kept, not copied
	at := time.Unix(100, 0)
	tb.touch("h1", at, stats, vms)
	if n := testing.AllocsPerRun(100, func() { tb.touch("h1", at, stats, vms) }); n != 0 {
		t.Fatalf("a heartbeat allocates %.0f objects, want 0", n)
	}
	if got := tb.get("h1"); got == nil || !got.at.Equal(at) || got.stats != stats || len(got.vms) != 1 || got.vms[0] != vms[0] {
		t.Fatalf("entry after heartbeats: %+v", got)
	}
}

// TestSilentHosts: one pass finds the hosts silent for the TTL, in the
// order given, and starts a grace period for hosts it never heard of.
func TestSilentHosts(t *testing.T) {
	tb := newSeenTable()
	t0 := time.Unix(1000, 0)
	tb.touch("a", t0, nil, nil)
	tb.touch("b", t0.Add(8*time.Second), nil, nil)
	tb.touch("c", t0.Add(-time.Minute), nil, nil)
	now := t0.Add(10 * time.Second)
	ids, at := tb.silent([]string{"a", "b", "c", "new"}, now, 10*time.Second)
	if !slices.Equal(ids, []string{"a", "c"}) || len(at) != 2 || !at[0].Equal(t0) || !at[1].Equal(t0.Add(-time.Minute)) {
		t.Fatalf("silent: %v %v, want [a c] with their last heartbeats", ids, at)
	}
	if got := tb.get("new"); got == nil || !got.at.Equal(now) {
		t.Fatalf("a host registered through another leader gets its grace period from now: %+v", got)
	}
	// A pause of the leader does not count against a host.
	tb.paused(now, 5*time.Second)
	if ids, _ := tb.silent([]string{"a", "b", "c"}, now, 10*time.Second); !slices.Equal(ids, []string{"c"}) {
		t.Fatalf("after a 5 s pause: %v silent, want [c]", ids)
	}
}
