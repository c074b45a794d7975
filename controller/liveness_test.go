package controller

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// heartbeater plays the agents of some hosts: every 200 ms it heartbeats
// each host still beating through the first controller that answers, as
// an agent moves on when its controller goes away.
type heartbeater struct {
	mu     sync.Mutex
	addrs  []string
	beats  map[string]bool
	stop   chan struct{}
	done   chan struct{}
	client func(addr string) yunchiv1.AgentServiceClient
}

func startHeartbeats(t *testing.T, addrs []string, hosts ...string) *heartbeater {
	clients := map[string]yunchiv1.AgentServiceClient{}
	for _, a := range addrs {
		clients[a] = yunchiv1.NewAgentServiceClient(dial(t, a))
	}
	h := &heartbeater{addrs: addrs, beats: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{}),
		client: func(a string) yunchiv1.AgentServiceClient { return clients[a] }}
	for _, id := range hosts {
		h.beats[id] = true
	}
	go h.run()
	t.Cleanup(func() { close(h.stop); <-h.done })
	return h
}

func (h *heartbeater) run() {
	defer close(h.done)
	for {
		h.mu.Lock()
		addrs := slices.Clone(h.addrs)
		var ids []string
		for id, on := range h.beats {
			if on {
				ids = append(ids, id)
			}
		}
		h.mu.Unlock()
		for _, id := range ids {
			for _, a := range addrs {
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				_, err := h.client(a).Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: id})
				cancel()
				if err == nil {
					break
				}
			}
		}
		select {
		case <-h.stop:
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (h *heartbeater) silence(id string) {
	h.mu.Lock()
	h.beats[id] = false
	h.mu.Unlock()
}

func (h *heartbeater) setAddrs(addrs []string) {
	h.mu.Lock()
	h.addrs = addrs
	h.mu.Unlock()
}

// watchEvents follows a VM through WatchVM on one controller and keeps
// every event, until the test ends.
type watchEvents struct {
	mu  sync.Mutex
	evs []*yunchiv1.VM
}

func watchVM(t *testing.T, addr, name string) *watchEvents {
	w := &watchEvents{}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := yunchiv1.NewVMServiceClient(dial(t, addr)).WatchVM(ctx, &yunchiv1.WatchVMRequest{Name: name})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			w.mu.Lock()
			w.evs = append(w.evs, ev.GetVm())
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// hostDownEvents counts the events that said the VM's host was down.
func (w *watchEvents) hostDownEvents() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, vm := range w.evs {
		if slices.Contains(vm.GetConditions(), "host-down") {
			n++
		}
	}
	return n
}

func addrsOf(ms []*member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ctl.Addr())
	}
	return out
}

// sameLastSeen reads host id from every controller (its own local state)
// and says whether they all answer the same last heartbeat, at or after
// since.
func sameLastSeen(t *testing.T, addrs []string, id string, since time.Time) bool {
	t.Helper()
	var first *yunchiv1.Host
	for _, a := range addrs {
		var h yunchiv1.Host
		if err := apitest.GetJSON(a, "/v1/hosts/"+id, &h); err != nil {
			return false
		}
		if h.LastSeen == nil || h.LastSeen.AsTime().Before(since) {
			return false
		}
		if first == nil {
			first = &h
		} else if !proto.Equal(first.LastSeen, h.LastSeen) || first.State != h.State {
			return false
		}
	}
	return true
}

// TestLivenessIsTheSameOnEveryController: followers answer the leader's
// last heartbeat for every host (not a value frozen at their last term as
// leader, or none); a leader change neither freezes it nor marks
// heartbeating hosts down; and a VM whose host stops heartbeating says so
// (condition host-down) on every controller.
func TestLivenessIsTheSameOnEveryController(t *testing.T) {
	const ttl = 4 * time.Second
	c := newInmemClusterTTL(t, ttl)
	registerHosts(t, c.members[1].ctl.Addr(), 2, 8, 16*gib) // a1-h01, a2-h01
	hb := startHeartbeats(t, addrsOf(c.members), "a1-h01", "a2-h01")
	for vm, host := range map[string]string{"web-1": "a1-h01", "web-2": "a2-h01"} {
		body := fmt.Sprintf(`{"name":%q,"vcpus":1,"memory":"1GiB","constraints":["host=%s"]}`, vm, host)
		if code, resp, err := apitest.Post(c.members[2].ctl.Addr(), "/v1/vms", body); err != nil || code != 200 {
			t.Fatalf("create %s: %d %s %v", vm, code, resp, err)
		}
	}

	// 1. Every controller answers the same, recent, last heartbeat.
	since := time.Now()
	for _, id := range []string{"a1-h01", "a2-h01"} {
		apitest.Eventually(t, 20*time.Second, "every controller to answer the same last heartbeat of "+id+" after the test began heartbeating", func() bool {
			return sameLastSeen(t, addrsOf(c.members), id, since)
		})
	}

	// 2. The leader goes away. Nothing is marked down, and every remaining
	// controller's last heartbeat keeps moving under the new leader, past
	// its grace window.
	old := c.leader()
	if old == nil {
		t.Fatal("no leader")
	}
	var watchers []*watchEvents
	var survivor *member
	for _, m := range c.members {
		if m != old {
			survivor = m
		}
	}
	for _, vm := range []string{"web-1", "web-2"} {
		watchers = append(watchers, watchVM(t, survivor.ctl.Addr(), vm))
	}
	c.kill(old)
	hb.setAddrs(addrsOf(c.alive()))
	apitest.Eventually(t, 30*time.Second, "a new leader", func() bool { return c.leader() != nil })
	afterGrace := time.Now().Add(ttl + time.Second)
	for _, id := range []string{"a1-h01", "a2-h01"} {
		apitest.Eventually(t, 30*time.Second, "the remaining controllers to agree on a last heartbeat of "+id+" past the new leader's grace window", func() bool {
			return sameLastSeen(t, addrsOf(c.alive()), id, afterGrace)
		})
	}
	for i, w := range watchers {
		if n := w.hostDownEvents(); n != 0 {
			t.Fatalf("web-%d: its heartbeating host was reported down %d times across the leader change", i+1, n)
		}
	}
	for _, a := range addrsOf(c.alive()) {
		for _, id := range []string{"a1-h01", "a2-h01"} {
			var h yunchiv1.Host
			if err := apitest.GetJSON(a, "/v1/hosts/"+id, &h); err != nil || h.State != yunchiv1.HostState_HOST_STATE_READY {
				t.Fatalf("%s: heartbeating host %s is %v (%v) after the leader change", a, id, h.State, err)
			}
		}
	}

	// 3. a2-h01's agent stops: web-2 says host-down, the same on every
	// controller, with the host's last heartbeat; web-1 does not.
	hb.silence("a2-h01")
	apitest.Eventually(t, 30*time.Second, "web-2 to show host-down on every controller", func() bool {
		var first *yunchiv1.VM
		for _, a := range addrsOf(c.alive()) {
			var vm yunchiv1.VM
			if err := apitest.GetJSON(a, "/v1/vms/web-2", &vm); err != nil {
				return false
			}
			if !slices.Equal(vm.Conditions, []string{"host-down"}) || vm.HostLastHeartbeat == nil {
				return false
			}
			if first == nil {
				first = &vm
			} else if !proto.Equal(first.HostLastHeartbeat, vm.HostLastHeartbeat) {
				return false
			}
		}
		return true
	})
	for _, a := range addrsOf(c.alive()) {
		var vm yunchiv1.VM
		if err := apitest.GetJSON(a, "/v1/vms/web-1", &vm); err != nil || len(vm.Conditions) != 0 {
			t.Fatalf("%s: web-1 on a heartbeating host: conditions %v (%v)", a, vm.Conditions, err)
		}
	}
	var list yunchiv1.ListVMsResponse
	if err := apitest.GetJSON(survivor.ctl.Addr(), "/v1/vms", &list); err != nil {
		t.Fatal(err)
	}
	for _, vm := range list.Vms {
		if want := vm.Name == "web-2"; slices.Contains(vm.Conditions, "host-down") != want {
			t.Errorf("vm list: %s conditions %v", vm.Name, vm.Conditions)
		}
	}
	// The watch said so too, without waiting for the VM itself to change.
	apitest.Eventually(t, 10*time.Second, "the watch on web-2 to report host-down", func() bool {
		return watchers[1].hostDownEvents() > 0
	})
}
