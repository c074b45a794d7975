package leader

import (
	"sync"
	"time"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// hostSeen is the leader's memory of a host's last heartbeat. Heartbeats do
// not go through raft (that would write the log every few seconds per
// host); only the host's state changes (ready <-> down) and, once per
// period, one RecordHeartbeats for all hosts do.
type hostSeen struct {
	at    time.Time
	stats *yunchiv1.HostStats
	// vms is what the host's running guests used, as the heartbeat said
	// (the request's own slice: kept, not copied).
	vms []*yunchiv1.VMStats
	// stalled is how long, since at, the leader was not running: it
	// could not hear the host then, so the TTL does not count it.
	stalled time.Duration
}

// silentFor is how long the host has not been heard from, counting only the
// time the leader could have heard it.
func (h *hostSeen) silentFor(now time.Time) time.Duration { return now.Sub(h.at) - h.stalled }

// seenTable holds entries by value: a heartbeat rewrites its host's entry
// in place and allocates nothing (10,000 hosts every few seconds).
type seenTable struct {
	mu sync.Mutex
	m  map[string]hostSeen
}

func newSeenTable() *seenTable { return &seenTable{m: map[string]hostSeen{}} }

func (t *seenTable) get(id string) *hostSeen {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h, ok := t.m[id]; ok {
		return &h
	}
	return nil
}

func (t *seenTable) touch(id string, at time.Time, stats *yunchiv1.HostStats, vms []*yunchiv1.VMStats) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m[id] = hostSeen{at: at, stats: stats, vms: vms}
}

// silent returns, of ids, the hosts not heard from for ttl or longer (with
// when they were last heard), in the order of ids, in one pass under the
// lock. A host the table does not know (registered through another leader)
// starts its grace period at now.
func (t *seenTable) silent(ids []string, now time.Time, ttl time.Duration) (out []string, at []time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		h, ok := t.m[id]
		if !ok {
			t.m[id] = hostSeen{at: now}
			continue
		}
		if h.silentFor(now) >= ttl {
			out, at = append(out, id), append(at, h.at)
		}
	}
	return out, at
}

// paused records that the leader did not run for the d up to end: time it
// could not have heard anything in does not count against a host's TTL
// (only the part after the host was last heard counts as a pause for it).
func (t *seenTable) paused(end time.Time, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	start := end.Add(-d)
	for id, h := range t.m {
		from := h.at
		if from.Before(start) {
			from = start
		}
		if from.Before(end) {
			h.stalled += end.Sub(from)
			t.m[id] = h
		}
	}
}

// reset gives every host a fresh grace period (a new leader has no memory
// of heartbeats sent to the old one); no ids empties the table.
func (t *seenTable) reset(ids []string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m = make(map[string]hostSeen, len(ids))
	for _, id := range ids {
		t.m[id] = hostSeen{at: at}
	}
}

// heardSet collects the hosts the leader heard from (heartbeat or
// registration) since the last RecordHeartbeats.
type heardSet struct {
	mu   sync.Mutex
	m    map[string]bool
	last time.Time // when the last record was proposed (or leadership began)
}

func (h *heardSet) add(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[string]bool{}
	}
	h.m[id] = true
}

// restart forgets what was heard (a new term of leadership starts counting
// afresh) and starts the period at now.
func (h *heardSet) restart(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m, h.last = nil, now
}

// take returns what was heard and empties the set, if at least period has
// passed since the last record; else nil, false.
func (h *heardSet) take(now time.Time, period time.Duration) (map[string]bool, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(h.last) < period {
		return nil, false
	}
	m := h.m
	h.m, h.last = nil, now
	return m, true
}

// putBack returns hosts to the set after a record that was not committed.
func (h *heardSet) putBack(m map[string]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[string]bool{}
	}
	for id := range m {
		h.m[id] = true
	}
}
