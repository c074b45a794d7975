package leader

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// storeProposer applies commands to a real state.Store in order, as raft
// would, stamping them with the proposer's clock as the raft node does.
type storeProposer struct {
	mu  sync.Mutex
	st  *state.Store
	idx uint64
}

func (p *storeProposer) Apply(ctx context.Context, cmd *statev1.Command) (state.Result, error) {
	if err := ctx.Err(); err != nil {
		return state.Result{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd.Version = state.CommandVersion
	cmd.UnixNano = time.Now().UnixNano()
	p.idx++
	return p.st.Apply(p.idx, cmd)
}

func newDuties(t *testing.T, ttl time.Duration, hosts ...string) (*Duties, *storeProposer) {
	t.Helper()
	p := &storeProposer{st: state.New()}
	for _, id := range hosts {
		if _, err := p.Apply(context.Background(), &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
			Id: id, Hostname: id, Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 1 << 34, DiskBytes: 1 << 40},
		}}}}); err != nil {
			t.Fatal(err)
		}
	}
	d := New(p, p.st, Self{ID: "c1", APIAddress: "127.0.0.1:1", RaftAddress: "127.0.0.1:2", Center: "a1"}, slog.New(slog.DiscardHandler))
	d.HostTTL = ttl
	t.Cleanup(d.Stop)
	return d, p
}

// eventually polls ok every 10 ms until it holds or a generous deadline
// passes.
func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hostState(st *state.Store, id string) statev1.HostState {
	hv, _ := st.Host(id)
	return hv.Facts.State
}

// While leading, the duties publish this controller, record the hosts
// they hear from and mark down the one that stays silent.
func TestDutiesKeepLiveness(t *testing.T) {
	d, p := newDuties(t, 300*time.Millisecond, "h1", "h2")
	d.Start(context.Background())
	eventually(t, "the controller to publish itself", func() bool {
		m, ok := p.st.Member("c1")
		return ok && m.ApiAddress == "127.0.0.1:1" && m.RaftAddress == "127.0.0.1:2"
	})
	stats := &yunchiv1.HostStats{}
	eventually(t, "silent h2 to be marked down", func() bool {
		d.Heard("h1", stats, nil) // h1 keeps heartbeating
		return hostState(p.st, "h2") == statev1.HostState_HOST_STATE_DOWN
	})
	if s := hostState(p.st, "h1"); s != statev1.HostState_HOST_STATE_READY {
		t.Errorf("h1 heartbeated throughout, yet it is %v", s)
	}
	eventually(t, "h1's heartbeat to be recorded in the state", func() bool {
		hv, _ := p.st.Host("h1")
		return hv.Host.LastHeartbeatUnixNano > 0
	})
	if d.Stats("h1") != stats {
		t.Error("the leader does not answer h1's last stats")
	}
}

// The leader keeps each host's last report of its guests' usage, with
// when it came, replaced by the next heartbeat; a follower has none.
func TestLeaderKeepsGuestUsage(t *testing.T) {
	d, _ := newDuties(t, time.Hour, "h1")
	first := []*yunchiv1.VMStats{{VmId: "vm-1", Usage: &yunchiv1.VMUsage{CpuTimeNs: 5}}}
	d.Heard("h1", &yunchiv1.HostStats{}, first)
	if vms, at := d.VMStats("h1"); vms != nil || !at.IsZero() {
		t.Fatalf("a follower answers usage %v (%v)", vms, at)
	}
	d.Start(context.Background())
	defer d.Stop()
	before := time.Now()
	d.Heard("h1", &yunchiv1.HostStats{}, first)
	vms, at := d.VMStats("h1")
	if len(vms) != 1 || vms[0] != first[0] || at.Before(before) || at.After(time.Now()) {
		t.Fatalf("usage %v at %v, want the heartbeat's, received now", vms, at)
	}
	d.Heard("h1", &yunchiv1.HostStats{}, nil) // vm-1 stopped: no usage any more
	if vms, _ := d.VMStats("h1"); len(vms) != 0 {
		t.Fatalf("usage after a heartbeat without it: %v", vms)
	}
	if vms, at := d.VMStats("h2"); vms != nil || !at.IsZero() {
		t.Fatalf("usage of a host never heard: %v (%v)", vms, at)
	}
	d.Heard("h1", &yunchiv1.HostStats{}, first)
	d.Stop()
	if vms, _ := d.VMStats("h1"); vms != nil {
		t.Fatalf("after Stop: usage %v", vms)
	}
}

// Stop ends the duties and forgets what was heard: a follower answers no
// stats and ignores heartbeats; a new term starts every TTL afresh.
func TestStopForgetsWhatWasHeard(t *testing.T) {
	d, _ := newDuties(t, time.Hour, "h1")
	if d.Stats("h1") != nil {
		t.Fatal("stats before leading")
	}
	d.Heard("h1", &yunchiv1.HostStats{}, nil)
	if d.Stats("h1") != nil {
		t.Fatal("a heartbeat heard while not leading was kept")
	}
	d.Start(context.Background())
	d.Heard("h1", &yunchiv1.HostStats{}, nil)
	if d.Stats("h1") == nil {
		t.Fatal("the leader lost h1's stats")
	}
	d.Stop()
	if d.Leading() || d.Stats("h1") != nil {
		t.Fatalf("after Stop: leading %v, stats %v", d.Leading(), d.Stats("h1"))
	}
	if got := d.seen.get("h1"); got != nil {
		t.Fatalf("after Stop the seen table still holds h1: %+v", got)
	}
	d.seen.touch("h1", time.Now().Add(-time.Hour), nil, nil) // as if heard long ago
	// Leading again starts every host's TTL afresh.
	d.Start(context.Background())
	if s := d.seen.get("h1"); s == nil || s.silentFor(time.Now()) > time.Minute {
		t.Fatalf("a new term did not restart h1's TTL: %+v", s)
	}
}
