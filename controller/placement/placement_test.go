package placement

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	"github.com/yunchi/yunchi/scheduler"
)

const gib = int64(1) << 30

// storeProposer applies commands to a real state.Store, as raft would on
// the leader, one at a time in the order they reach it. hold, when set,
// keeps every proposal in flight until it is closed; fail, when set, is
// the error of the next proposal instead of applying it.
type storeProposer struct {
	st *state.Store

	mu       sync.Mutex
	idx      uint64
	hold     chan struct{}
	fail     error
	before   func() // runs (once) before the next command is applied
	proposed []*statev1.Command
	arrived  chan struct{} // one value per proposal
}

func newStoreProposer() *storeProposer {
	return &storeProposer{st: state.New(), arrived: make(chan struct{}, 1024)}
}

func (p *storeProposer) Apply(ctx context.Context, cmd *statev1.Command) (state.Result, error) {
	cmd.Version = state.CommandVersion
	cmd.UnixNano = 1
	p.mu.Lock()
	p.proposed = append(p.proposed, cmd)
	hold, fail := p.hold, p.fail
	p.fail = nil
	p.mu.Unlock()
	p.arrived <- struct{}{}
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return state.Result{}, ctx.Err()
		}
	}
	if fail != nil {
		return state.Result{}, fail
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.before; f != nil {
		p.before = nil
		f()
	}
	p.idx++
	return p.st.Apply(p.idx, cmd)
}

// applyDirect applies cmd as another leader's decision would have been.
// Callers hold p.mu.
func (p *storeProposer) applyDirect(t *testing.T, cmd *statev1.Command) {
	t.Helper()
	cmd.Version = state.CommandVersion
	p.idx++
	if _, err := p.st.Apply(p.idx, cmd); err != nil {
		t.Fatalf("apply %v: %v", cmd, err)
	}
}

func (p *storeProposer) addHost(t *testing.T, id, center, rack string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.applyDirect(t, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
		Id: id, Hostname: id, Center: center, Rack: rack, Capacity: &statev1.Resources{Vcpus: 64, MemoryBytes: 64 * gib, DiskBytes: 1000 * gib},
	}}}})
}

// memFits is how many VMs of mem bytes host id can take (memory is the
// dimension these tests fill).
func (p *storeProposer) memFits(t *testing.T, id string, mem int64) int {
	t.Helper()
	hv, ok := p.st.Host(id)
	if !ok {
		t.Fatalf("host %s not registered", id)
	}
	return int(hv.Facts.Allocatable().MemoryBytes / mem)
}

// waitArrived waits for n proposals to reach the proposer.
func (p *storeProposer) waitArrived(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for i := 0; i < n; i++ {
		select {
		case <-p.arrived:
		case <-deadline:
			t.Fatalf("only %d of %d proposals reached raft: decisions are not pipelined", i, n)
		}
	}
}

func spec(name string, mem int64) Spec {
	return Spec{Project: state.DefaultProject, Names: []string{name}, Resources: scheduler.Resources{VCPUs: 1, MemoryBytes: mem, DiskBytes: 10 * gib}, Strategy: scheduler.Binpack}
}

// heldHosts is where the proposals held in flight put their VMs.
func (p *storeProposer) heldHosts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for _, c := range p.proposed {
		for _, vm := range c.GetPlaceVms().GetVms() {
			out[vm.GetHostId()]++
		}
	}
	return out
}

func TestPlaceRecordsTheDecision(t *testing.T) {
	p := newStoreProposer()
	p.addHost(t, "h1", "a1", "r1")
	e := New(p, p.st, quiet)
	recs, ds, err := e.Place(context.Background(), spec("web", 4*gib))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].HostId != "h1" || len(ds) != 1 || ds[0].HostID != "h1" || ds[0].HostCenter != "a1" {
		t.Fatalf("placed %v, decided %v; want web on h1 in a1", recs, ds)
	}
	if v, ok := p.st.VM(state.DefaultProject, "web"); !ok || v.HostId != "h1" {
		t.Fatalf("state has %v, %v; want web on h1", v, ok)
	}
	if n := e.Pending(); n != 0 {
		t.Fatalf("%d reservations left after the proposal was applied", n)
	}
	if _, _, err := e.Place(context.Background(), spec("web", 4*gib)); state.KindOf(err) != state.KindAlreadyExists {
		t.Fatalf("second create of web: %v, want already exists", err)
	}
}

// Decisions made while earlier proposals are still in flight see them: n
// creates that exactly fill two hosts, all held uncommitted at once, never
// choose more than a host holds, and all are then applied without a
// conflict.
func TestInFlightProposalsReserve(t *testing.T) {
	p := newStoreProposer()
	p.addHost(t, "h1", "a1", "r1")
	p.addHost(t, "h2", "a1", "r2")
	mem := 8 * gib
	fit1, fit2 := p.memFits(t, "h1", mem), p.memFits(t, "h2", mem)
	n := fit1 + fit2
	p.hold = make(chan struct{})
	e := New(p, p.st, quiet)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			_, _, err := e.Place(context.Background(), spec(fmt.Sprintf("vm-%d", i), mem))
			errs <- err
		}()
	}
	p.waitArrived(t, n)
	held := p.heldHosts()
	if held["h1"] > fit1 || held["h2"] > fit2 {
		close(p.hold)
		t.Fatalf("%d proposals in flight chose %v, but h1 takes %d and h2 %d: decisions did not see the reservations", n, held, fit1, fit2)
	}
	if got := e.Pending(); got != n {
		t.Errorf("%d reservations while %d proposals are in flight", got, n)
	}
	close(p.hold)
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Errorf("create: %v", err)
		}
	}
	if got := len(p.st.VMs("", "")); got != n {
		t.Errorf("%d VMs in the state, want %d", got, n)
	}
	if len(p.proposed) != n {
		t.Errorf("%d proposals for %d creates: some decisions were rejected and made again", len(p.proposed), n)
	}
	if got := e.Pending(); got != 0 {
		t.Errorf("%d reservations left after every proposal was applied", got)
	}
	// Full now: the next one finds no room.
	var nofit *scheduler.NoFitError
	if _, _, err := e.Place(context.Background(), spec("one-too-many", mem)); !errors.As(err, &nofit) {
		t.Errorf("create on full hosts: %v, want no fit", err)
	}
}

// Members of an anti-affinity group in flight count as members: concurrent
// creates in the group each take a host of their own.
func TestInFlightGroupMembersReserve(t *testing.T) {
	p := newStoreProposer()
	hosts := []string{"h1", "h2", "h3", "h4"}
	for i, h := range hosts {
		p.addHost(t, h, "a1", fmt.Sprintf("r%d", i))
	}
	p.mu.Lock()
	p.applyDirect(t, &statev1.Command{Cmd: &statev1.Command_CreatePlacementGroup{CreatePlacementGroup: &statev1.CreatePlacementGroup{Group: &statev1.PlacementGroupRecord{
		Name: "db", Project: state.DefaultProject, Policy: statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY, Level: statev1.GroupLevel_GROUP_LEVEL_HOST,
	}}}})
	p.mu.Unlock()
	p.hold = make(chan struct{})
	e := New(p, p.st, quiet)
	errs := make(chan error, len(hosts)+1)
	for i := range hosts {
		go func() {
			sp := spec(fmt.Sprintf("db-%d", i), gib)
			sp.Group = "db"
			_, _, err := e.Place(context.Background(), sp)
			errs <- err
		}()
	}
	p.waitArrived(t, len(hosts))
	held := p.heldHosts()
	// A fifth member has no host left while the four are in flight.
	sp := spec("db-extra", gib)
	sp.Group = "db"
	_, extraErr := e.Decide(sp)
	close(p.hold)
	for h, k := range held {
		if k > 1 {
			t.Errorf("host %s got %d members of anti-affinity group db in flight (%v)", h, k, held)
		}
	}
	var nofit *scheduler.NoFitError
	if !errors.As(extraErr, &nofit) {
		t.Errorf("a fifth member while four are in flight on four hosts: %v, want no fit", extraErr)
	}
	for range hosts {
		if err := <-errs; err != nil {
			t.Errorf("create: %v", err)
		}
	}
}

// A proposal that fails gives its reservation back; Reset drops the ones
// in flight, and their later outcome does not count twice.
func TestReservationsReleasedOnFailureAndReset(t *testing.T) {
	p := newStoreProposer()
	p.addHost(t, "h1", "a1", "r1")
	mem := 8 * gib
	fit := p.memFits(t, "h1", mem)
	e := New(p, p.st, quiet)

	lost := errors.New("leadership lost")
	p.fail = lost
	big := spec("big", int64(fit)*mem) // takes the whole host
	if _, _, err := e.Place(context.Background(), big); !errors.Is(err, lost) {
		t.Fatalf("place: %v, want %v", err, lost)
	}
	p.waitArrived(t, 1) // that proposal's arrival, so the wait below is for the next one
	if n := e.Pending(); n != 0 {
		t.Fatalf("%d reservations after the proposal failed", n)
	}
	if _, err := e.Decide(big); err != nil {
		t.Fatalf("the host is free again after the failed proposal, yet: %v", err)
	}

	// In flight, then leadership changes: the reservation goes.
	p.hold = make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, _, err := e.Place(context.Background(), big)
		done <- err
	}()
	p.waitArrived(t, 1)
	if _, err := e.Decide(spec("other", mem)); err == nil {
		t.Fatal("a decision while the whole host is reserved found room")
	}
	e.Reset()
	if n := e.Pending(); n != 0 {
		t.Fatalf("%d reservations after Reset", n)
	}
	if _, err := e.Decide(spec("other", mem)); err != nil {
		t.Fatalf("after Reset the reservation still counts: %v", err)
	}
	close(p.hold)
	if err := <-done; err != nil {
		t.Fatalf("the held proposal: %v", err)
	}
	// It was applied: the host is full by the state alone, and the dropped
	// reservation released late took nothing away.
	if _, err := e.Decide(spec("other", mem)); err == nil {
		t.Fatal("the host is full, yet a decision found room")
	}
}

func mustVM(t *testing.T, st *state.Store, name string) *statev1.VMRecord {
	t.Helper()
	v, ok := st.VM(state.DefaultProject, name)
	if !ok {
		t.Fatalf("vm %s not in the state", name)
	}
	return v
}

// A decision Apply rejects because the host filled meanwhile is made
// again, on what is left.
func TestConflictIsDecidedAgain(t *testing.T) {
	p := newStoreProposer()
	p.addHost(t, "h1", "a1", "r1")
	p.addHost(t, "h2", "a1", "r2")
	fit := p.memFits(t, "h1", gib)
	e := New(p, p.st, quiet)
	if _, _, err := e.Place(context.Background(), spec("first", gib)); err != nil {
		t.Fatal(err)
	}
	first := mustVM(t, p.st, "first").HostId
	// Before the next decision is applied, something else fills that host.
	p.before = func() {
		p.applyDirect(t, &statev1.Command{Cmd: &statev1.Command_PlaceVm{PlaceVm: &statev1.PlaceVM{Vm: &statev1.VMRecord{
			Id: "filler", Name: "filler", Project: state.DefaultProject, Vcpus: 1,
			MemoryBytes: int64(fit-1) * gib, DiskBytes: 10 * gib, HostId: first,
		}}}})
	}
	recs, _, err := e.Place(context.Background(), spec("second", gib))
	if err != nil {
		t.Fatal(err)
	}
	if recs[0].HostId == first {
		t.Fatalf("second went to the full host %s", first)
	}
	if len(p.proposed) != 3 {
		t.Errorf("%d proposals, want 3 (first, the rejected decision, the new one)", len(p.proposed))
	}
}

func TestSpecOfExistingVM(t *testing.T) {
	vm := &statev1.VMRecord{Name: "web", Project: "p1", Vcpus: 2, MemoryBytes: 4 * gib, DiskBytes: 20 * gib, Center: "a1",
		Group: "g", Constraints: []string{"label.disk==ssd"}, Strategy: "spread", Desired: statev1.PowerState_POWER_STATE_RUNNING}
	sp, err := SpecOf(vm, scheduler.Binpack)
	if err != nil {
		t.Fatal(err)
	}
	if sp.Project != "p1" || len(sp.Names) != 1 || sp.Names[0] != "web" || sp.Resources.VCPUs != 2 || sp.Center != "a1" || sp.Group != "g" ||
		sp.Strategy != scheduler.Spread || len(sp.Constraints) != 1 || sp.Constraints[0].String() != "label.disk==ssd" {
		t.Fatalf("SpecOf = %+v", sp)
	}
	vm.Constraints = []string{"nonsense ~~"}
	if _, err := SpecOf(vm, scheduler.Binpack); err == nil {
		t.Fatal("SpecOf accepted a constraint that does not parse")
	}
}

var quiet = slog.New(slog.DiscardHandler)

// A single create is a PlaceVMs of one VM, and the log records its
// constraints structured, not as text; SpecOf reads them back (and the
// text older versions recorded) into the same scheduler constraints.
func TestPlaceRecordsStructuredConstraints(t *testing.T) {
	p := newStoreProposer()
	p.addHost(t, "h1", "a1", "r1")
	p.addHost(t, "h2", "a1", "r2")
	e := New(p, p.st, quiet)
	sp := spec("web", gib)
	for _, cs := range []string{"rack!=r1", "center in a1,b1"} {
		c, err := scheduler.ParseConstraint(cs)
		if err != nil {
			t.Fatal(err)
		}
		sp.Constraints = append(sp.Constraints, c)
	}
	recs, _, err := e.Place(context.Background(), sp)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].HostId != "h2" {
		t.Fatalf("placed %v, want web on h2 (rack!=r1)", recs)
	}
	p.mu.Lock()
	cmd := p.proposed[len(p.proposed)-1]
	p.mu.Unlock()
	vms := cmd.GetPlaceVms().GetVms()
	if len(vms) != 1 || cmd.GetPlaceVm() != nil {
		t.Fatalf("proposed %v, want a PlaceVMs of one VM", cmd)
	}
	if len(vms[0].Constraints) != 0 || len(vms[0].ConstraintRules) != 2 ||
		vms[0].ConstraintRules[0].Op != statev1.ConstraintOp_CONSTRAINT_OP_NE || vms[0].ConstraintRules[1].Op != statev1.ConstraintOp_CONSTRAINT_OP_IN {
		t.Fatalf("recorded constraints %v / %v, want two structured rules and no text", vms[0].Constraints, vms[0].ConstraintRules)
	}
	for _, vm := range []*statev1.VMRecord{
		recs[0],
		{Name: "old", Project: "p", Vcpus: 1, Constraints: []string{"rack!=r1", "center in a1,b1"}}, // version 3
	} {
		got, err := SpecOf(vm, scheduler.Binpack)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Constraints) != 2 || got.Constraints[0].String() != "rack!=r1" || got.Constraints[1].String() != "center in a1,b1" {
			t.Errorf("SpecOf(%s) constraints %v", vm.Name, got.Constraints)
		}
	}
	if _, err := SpecOf(&statev1.VMRecord{Name: "bad", ConstraintRules: []*statev1.Constraint{{Key: "rack", Values: []string{"r1"}}}}, scheduler.Binpack); err == nil {
		t.Error("SpecOf accepted a constraint without an operator")
	}
}

// The engine's PressureWindow reaches the scheduler: once the nearly full
// pool (h1 with 2 GiB free, h2 with 4) refuses a VM for lack of memory, the
// default spreads the next small VM to h2; with the window off it still
// goes to h1, the tighter fit.
func TestPressureWindowReachesTheScheduler(t *testing.T) {
	for _, tc := range []struct {
		window int
		want   string
	}{{0, "h2"}, {-1, "h1"}} {
		p := newStoreProposer()
		p.addHost(t, "h1", "a1", "r1")
		p.addHost(t, "h2", "a2", "r1")
		e := New(p, p.st, quiet)
		e.PressureWindow = tc.window
		ctx := context.Background()
		alloc := int64(p.memFits(t, "h1", gib)) * gib
		for _, f := range []struct {
			name, center string
			free         int64
		}{{"big-1", "a1", 2 * gib}, {"big-2", "a2", 4 * gib}} {
			sp := spec(f.name, alloc-f.free)
			sp.Center = f.center
			if _, _, err := e.Place(ctx, sp); err != nil {
				t.Fatalf("window %d: %s: %v", tc.window, f.name, err)
			}
		}
		var nf *scheduler.NoFitError
		if _, _, err := e.Place(ctx, spec("too-big", 8*gib)); !errors.As(err, &nf) {
			t.Fatalf("window %d: too-big: %v, want a NoFitError", tc.window, err)
		}
		recs, _, err := e.Place(ctx, spec("small", gib))
		if err != nil {
			t.Fatalf("window %d: small: %v", tc.window, err)
		}
		if recs[0].HostId != tc.want {
			t.Errorf("window %d: small went to %s, want %s", tc.window, recs[0].HostId, tc.want)
		}
		// The small VM was the one decision made under pressure.
		if n, want := e.PressureDecisions(), map[int]uint64{0: 1, -1: 0}[tc.window]; n != want {
			t.Errorf("window %d: PressureDecisions %d, want %d", tc.window, n, want)
		}
	}
}

// TestReservationHold: a reservation holds one entry per host, summed, for
// a VM or a batch over many hosts.
func TestReservationHold(t *testing.T) {
	var r reservation
	one := scheduler.Resources{VCPUs: 1, MemoryBytes: 1 << 30}
	for i := 0; i < 100; i++ {
		r.hold(fmt.Sprintf("h%02d", i%40), one)
	}
	if len(r.hosts) != 40 {
		t.Fatalf("%d entries for 40 hosts", len(r.hosts))
	}
	for i, h := range r.hosts {
		want := int64(2)
		if i < 20 {
			want = 3 // h00..h19 got 3 of the 100
		}
		if h.host != fmt.Sprintf("h%02d", i) || h.res.VCPUs != want || h.res.MemoryBytes != want<<30 {
			t.Fatalf("entry %d: %+v, want h%02d holding %d", i, h, i, want)
		}
	}
}
