package api

import (
	"context"
	"sync"
	"time"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Liveness that every controller agrees on. Heartbeats reach the leader
// only (followers forward them) and are not written to the log one by one.
// Instead the leader notes which hosts it heard from and, once per
// HostTTL/3, proposes one RecordHeartbeats command naming the ready hosts it
// did NOT hear from; Apply stamps the command's time (the leader's clock) on
// all the others. Every controller, and a new leader after a failover, then
// reads the same last heartbeat for each host, at most a period old. In the
// steady state the entry is a few dozen bytes whatever the number of hosts.

// VMConditionHostDown is set on a VM whose host has missed its heartbeats.
const VMConditionHostDown = "host-down"

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

// recordPeriod is how often the leader records heartbeats: a third of the
// TTL, so a follower's view lags the leader's by less than that.
func (s *Server) recordPeriod() time.Duration { return max(s.HostTTL/3, 100*time.Millisecond) }

// recordHeartbeats proposes a RecordHeartbeats when a period has passed and
// some host was heard from in it (nothing heard: nothing to record; the
// down-marking does the rest). Leader only.
func (s *Server) recordHeartbeats(ctx context.Context) {
	heard, due := s.heard.take(time.Now(), s.recordPeriod())
	if !due || len(heard) == 0 {
		return
	}
	var silent []string
	for _, id := range s.store.LiveHostIDs() {
		if !heard[id] {
			silent = append(silent, id)
		}
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.node.Apply(actx, &statev1.Command{Cmd: &statev1.Command_RecordHeartbeats{RecordHeartbeats: &statev1.RecordHeartbeats{
		SilentHostIds: silent,
	}}}); err != nil {
		s.heard.putBack(heard)
		s.log.Warn("could not record heartbeats", "err", err)
	}
}

// hostInfo is what a VM's answer says about its host.
type hostInfo struct {
	center        string
	down          bool
	lastHeartbeat int64
}

func (s *Server) hostInfo(id string) hostInfo {
	hv, ok := s.store.Host(id)
	if !ok {
		return hostInfo{}
	}
	return hostInfoOf(hv)
}

func hostInfoOf(hv state.HostView) hostInfo {
	return hostInfo{
		center:        hv.Host.Center,
		down:          hv.Host.State == yunchiv1.HostState_HOST_STATE_DOWN,
		lastHeartbeat: hv.Host.LastHeartbeatUnixNano,
	}
}
