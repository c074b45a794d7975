package raftnode

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"
	"weak"

	"github.com/hashicorp/raft"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// TestApplyWithDoneContextProposesNothing: a request whose deadline has
// passed gets its context's error and leaves the log as it was (raft would
// read the negative time left as "wait forever").
// singleNode opens a one-node cluster on an in-memory transport and waits
// until it leads.
func singleNode(t *testing.T) (*Node, *state.Store) {
	t.Helper()
	_, trans := raft.NewInmemTransport("n1:7000")
	store := state.New()
	n, err := Open(Config{ID: "n1", DataDir: t.TempDir(), Bootstrap: true, Transport: trans,
		HeartbeatTimeout: 50 * time.Millisecond, ElectionTimeout: 50 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond}, store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Shutdown() })
	waitLeads(t, n)
	return n, store
}

// waitLeads waits up to 10 s for n to be the leader.
func waitLeads(t *testing.T, n *Node) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.Raft.State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatal("no leader in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestApplyWithDoneContextProposesNothing(t *testing.T) {
	n, store := singleNode(t)
	reg := &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
		Id: "h1", Hostname: "h1", Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 1 << 34, DiskBytes: 1 << 40},
	}}}}
	// A new leader appends a no-op entry of its own, possibly after it
	// reports Leader: wait until that is in the log, or it would look like
	// the refused Apply below had proposed something.
	if err := n.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := n.Raft.LastIndex()
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := n.Apply(ctx, reg); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("apply with a passed deadline: %v, want context.DeadlineExceeded", err)
	}
	if err := n.Barrier(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("barrier with a passed deadline: %v", err)
	}
	if got := n.Raft.LastIndex(); got != before {
		t.Fatalf("log grew from %d to %d", before, got)
	}
	if _, ok := store.Host("h1"); ok {
		t.Fatal("the host was registered")
	}
	// The same command with time left is applied.
	ok, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if _, err := n.Apply(ok, reg); err != nil {
		t.Fatal(err)
	}
	if _, found := store.Host("h1"); !found {
		t.Fatal("host not registered")
	}
}

// TestProductionTimeouts: a node opened without test tuning runs with the
// production timeouts (a follower stands for election after 0.5–1 s of
// silence, so failover to the first write stays under 2 s), and test
// tuning still overrides them.
func TestProductionTimeouts(t *testing.T) {
	if LeaderLeaseTimeout > HeartbeatTimeout || HeartbeatTimeout > time.Second {
		t.Fatalf("lease %s, heartbeat timeout %s: the lease must not exceed the heartbeat timeout, which must leave failover under 2 s", LeaderLeaseTimeout, HeartbeatTimeout)
	}
	for _, tc := range []struct {
		cfg       Config
		heartbeat time.Duration
		election  time.Duration
	}{
		{Config{}, HeartbeatTimeout, ElectionTimeout},
		{Config{HeartbeatTimeout: 50 * time.Millisecond, ElectionTimeout: 60 * time.Millisecond, LeaderLeaseTimeout: 40 * time.Millisecond}, 50 * time.Millisecond, 60 * time.Millisecond},
	} {
		addr, trans := raft.NewInmemTransport("")
		cfg := tc.cfg
		cfg.ID, cfg.DataDir, cfg.Bootstrap, cfg.Transport = string(addr), t.TempDir(), true, trans
		n, err := Open(cfg, state.New())
		if err != nil {
			t.Fatal(err)
		}
		got := n.Raft.ReloadableConfig()
		n.Shutdown()
		if got.HeartbeatTimeout != tc.heartbeat || got.ElectionTimeout != tc.election {
			t.Fatalf("config %+v: heartbeat timeout %s, election timeout %s; want %s, %s", tc.cfg, got.HeartbeatTimeout, got.ElectionTimeout, tc.heartbeat, tc.election)
		}
	}
}

// TestApplyLeavesNoAnswerInTheLogCache: the leader's log cache keeps each
// entry's future for thousands of entries; the records an answer carries
// (a batch's copy of every VM it made) must not live on with it once the
// proposer has them.
func TestApplyLeavesNoAnswerInTheLogCache(t *testing.T) {
	n, store := singleNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var answers []weak.Pointer[statev1.HostRecord]
	for i := range 5 {
		id := fmt.Sprintf("h%d", i)
		res, err := n.Apply(ctx, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
			Id: id, Hostname: id, Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 1 << 34, DiskBytes: 1 << 40},
		}}}})
		if err != nil {
			t.Fatal(err)
		}
		if res.Host == nil || res.Host.Id != id {
			t.Fatalf("answer to registering %s: %v", id, res.Host)
		}
		answers = append(answers, weak.Make(res.Host))
	}
	runtime.GC()
	for i, w := range answers {
		if w.Value() != nil {
			t.Errorf("the answer to command %d is still reachable after the proposer dropped it (kept with raft's future)", i+1)
		}
	}
	if _, ok := store.Host("h4"); !ok {
		t.Fatal("host h4 not in the state")
	}
}

// TestTakeAnswer: the answer leaves the response; an entry this node
// proposed but applied after it stopped leading (unanswered) reports the
// change of leader, unless the command failed anyway.
func TestTakeAnswer(t *testing.T) {
	host := &statev1.HostRecord{Id: "h1"}
	res := &Result{Value: state.Result{Host: host}}
	if v, err := takeAnswer(res); err != nil || v.Host != host || res.Value.Host != nil {
		t.Fatalf("answered: %v %v, response left %v", v, err, res)
	}
	if _, err := takeAnswer(&Result{Unanswered: true}); !errors.Is(err, raft.ErrLeadershipLost) {
		t.Fatalf("unanswered: %v, want raft.ErrLeadershipLost", err)
	}
	refused := errors.New("refused")
	if _, err := takeAnswer(&Result{Unanswered: true, Err: refused}); err != refused {
		t.Fatalf("unanswered refusal: %v", err)
	}
}

// TestFSMUnansweredWhileFollowing: while the node does not lead, the FSM
// applies without an answer (nothing copied) and says so.
func TestFSMUnansweredWhileFollowing(t *testing.T) {
	store := state.New()
	leads := false
	f := &FSM{Store: store, Answers: func() bool { return leads }}
	reg := func(index uint64, id string) *raft.Log {
		return entry(t, index, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
			Id: id, Hostname: id, Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 1 << 34, DiskBytes: 1 << 40}}}}})
	}
	r := f.Apply(reg(1, "h1")).(*Result)
	if !r.Unanswered || r.Err != nil || r.Value.Host != nil {
		t.Fatalf("following: %+v", r)
	}
	if _, ok := store.Host("h1"); !ok {
		t.Fatal("h1 not applied")
	}
	leads = true
	if r := f.Apply(reg(2, "h2")).(*Result); r.Unanswered || r.Err != nil || r.Value.Host.GetId() != "h2" {
		t.Fatalf("leading: %+v", r)
	}
}
