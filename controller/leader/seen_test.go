package leader

import (
	"testing"
	"time"
)

// TestPausedCountsOnlyTimeAfterLastHeard: a pause of the leader does not
// count against hosts, but only the part of it after a host was last heard,
// so a host heard just as the leader came back gets no extra time.
func TestPausedCountsOnlyTimeAfterLastHeard(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tab := newSeenTable()
	tab.touch("early", t0, nil)                                     // heard 3 s before the pause
	tab.touch("late", t0.Add(15*time.Second-time.Millisecond), nil) // heard as the leader resumed
	tab.paused(t0.Add(15*time.Second), 12*time.Second)              // did not run from t0+3s to t0+15s
	now := t0.Add(16 * time.Second)
	if got, want := tab.get("early").silentFor(now), 4*time.Second; got != want {
		t.Errorf("early: silent for %v, want %v (3 s before the pause, 1 s after)", got, want)
	}
	if got, want := tab.get("late").silentFor(now), time.Second; got != want {
		t.Errorf("late: silent for %v, want %v", got, want)
	}
	tab.touch("early", now, nil)
	if got := tab.get("early").silentFor(now.Add(time.Second)); got != time.Second {
		t.Errorf("a heartbeat must clear the pause credit: silent for %v, want 1s", got)
	}
}
