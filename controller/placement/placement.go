// Package placement makes the leader's placement decisions: it chooses
// hosts for new VMs with the scheduler, proposes the decision through raft
// and decides again when Apply rejects it because the state changed in
// between. It depends on two small interfaces, a Proposer (raft) and a
// View (the replicated state), not on the raft node.
//
// Decisions are pipelined: they are made one at a time (serial.go), but
// not while raft commits. Each decision reserves what it chose (resources
// on the host, a member of its placement group) until its proposal is
// applied or fails, and the next decision sees the committed state plus
// every reservation still in flight. Apply re-checks capacity, group
// rules and quotas anyway and rejects rather than overcommit; Reset (leadership lost
// or gained) drops every reservation.
package placement

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/google/uuid"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// Proposer puts a command through raft and returns what Apply returned
// (the raft node).
type Proposer interface {
	Apply(ctx context.Context, cmd *statev1.Command) (state.Result, error)
}

// View is the part of the replicated state decisions read (*state.Store).
type View interface {
	HasVM(project, name string) bool
	HostFacts(id string) (state.HostFacts, bool)
	SchedulerView(since uint64, project, group string) (hosts []state.HostFacts, full bool, seq uint64, g *state.GroupFacts, err error)
}

// QuotaView is a View that checks quotas (*state.Store does): Place then
// refuses a create that the committed state already leaves no room for,
// before deciding or proposing anything. Creates still in flight are not
// counted (one may fail, or be applied and not yet released): Apply checks
// the quotas again and is the guarantee.
type QuotaView interface {
	CheckQuota(project string, ask state.Usage) error
}

// Attempts is how many times a placement is decided again when Apply
// rejects the decision because the state changed in between (KindConflict).
const Attempts = 4

// schedSeed fixes the scheduler's tie-breaks: no clock, no randomness, so
// the same state and request give the same placement on any leader.
const schedSeed = 1

// Spec is a validated request for VMs: one per name, all alike.
type Spec struct {
	Project     string
	Names       []string
	Resources   scheduler.Resources
	Center      string
	Constraints []scheduler.Constraint
	Group       string
	Strategy    scheduler.Strategy
	// StrategyName is recorded with the VM ("" when the request named none).
	StrategyName string
	Desired      statev1.PowerState
	// Image the root disks are made from (nil: empty disks), and the
	// cloud-init seed's contents; recorded with each VM as given.
	Image             *statev1.VMImage
	UserData          string
	SSHAuthorizedKeys []string
	// Restore: the VMs' disks are rebuilt from this restore point.
	Restore *statev1.RestoreSource
	// Isolated VMs get no network interface; DRRun names the drill that
	// made them (its clones).
	Isolated bool
	DRRun    string
}

// SpecOf is the spec an existing VM was placed with, for deciding again
// where it goes (HA restart, failover). def is the strategy when the VM
// recorded none.
func SpecOf(vm *statev1.VMRecord, def scheduler.Strategy) (Spec, error) {
	sp := Spec{
		Project: vm.Project, Names: []string{vm.Name},
		Resources: scheduler.Resources{VCPUs: int64(vm.Vcpus), MemoryBytes: vm.MemoryBytes, DiskBytes: vm.DiskBytes},
		Center:    vm.Center, Group: vm.Group, Strategy: def, StrategyName: vm.Strategy, Desired: vm.Desired,
		Image: vm.Image, UserData: vm.UserData, SSHAuthorizedKeys: vm.SshAuthorizedKeys, Restore: vm.Restore,
	}
	cons, err := state.ConstraintsOf(vm)
	if err != nil {
		return Spec{}, fmt.Errorf("vm %q: %w", vm.Name, err)
	}
	for _, c := range cons {
		sc, err := schedConstraint(c)
		if err != nil {
			return Spec{}, fmt.Errorf("vm %q: %w", vm.Name, err)
		}
		sp.Constraints = append(sp.Constraints, sc)
	}
	if vm.Strategy != "" {
		st, err := scheduler.ParseStrategy(vm.Strategy)
		if err != nil {
			return Spec{}, fmt.Errorf("vm %q: %w", vm.Name, err)
		}
		sp.Strategy = st
	}
	return sp, nil
}

// Decision is where one VM goes and why.
type Decision struct {
	VMName     string
	HostID     string
	HostCenter string
	Score      int64
	RunnersUp  []scheduler.Candidate
}

// Engine decides and records placements on the leader.
type Engine struct {
	prop Proposer
	view View
	log  *slog.Logger
	// PressureWindow is the scheduler's Options.PressureWindow for the
	// clusters decisions are made on (0: the default; negative: off). Set
	// it before the first decision.
	PressureWindow int
	// pressured counts decisions made under pressure, across cluster
	// rebuilds (read by metrics without waiting for a decision).
	pressured atomic.Uint64

	// ser runs decisions one at a time (serial.go): everything below is
	// touched only from functions it runs, never while raft commits.
	ser      serial
	clusters map[scheduler.Strategy]*cachedCluster
	// nextID numbers reservations; never reused, so a reservation Reset
	// dropped is not found when its proposal ends.
	nextID  uint64
	pending map[uint64]*reservation
	// hostRes and groupRes are the sums of the pending reservations: per
	// host, and per group key (project/name) per host.
	hostRes  map[string]scheduler.Resources
	groupRes map[string]map[string]int
}

// cachedCluster is one scheduler.Cluster per strategy, indexed once and
// then brought up to date with only the hosts that changed since (the
// store tracks which) or whose reservations changed (dirty).
type cachedCluster struct {
	cl    *scheduler.Cluster
	seq   uint64
	dirty map[string]bool
}

// reservation is what one in-flight proposal holds.
type reservation struct {
	// hosts and what is held on each, one entry per host (a slice: most
	// reservations are one VM on one host).
	hosts []held
	group string // group key, "" for none
	// members per host of group
	members map[string]int
}

// New returns an engine proposing through prop and reading view.
func New(prop Proposer, view View, lg *slog.Logger) *Engine {
	if lg == nil {
		lg = slog.Default()
	}
	return &Engine{prop: prop, view: view, log: lg}
}

// Reset drops every reservation and the scheduler cache: call it when this
// controller gains or loses leadership (the proposals still in flight then
// fail or are decided by the log; either way they no longer reserve).
func (e *Engine) Reset() {
	e.ser.do(func() { e.pending, e.hostRes, e.groupRes, e.clusters = nil, nil, nil, nil })
}

// PressureDecisions is how many decisions (a batch member is one) were
// made under pressure: binpack spreading after a nearly full pool refused
// a VM for lack of room (scheduler/pressure.go).
func (e *Engine) PressureDecisions() uint64 { return e.pressured.Load() }

// Pending is the number of reservations in flight (tests, metrics).
func (e *Engine) Pending() int {
	var n int
	e.ser.do(func() { n = len(e.pending) })
	return n
}

func groupKey(project, group string) string {
	if group == "" {
		return ""
	}
	return project + "/" + group
}

// sync brings the cluster for strategy up to date with the view and the
// reservations and returns it with sp's group. Run by ser.
func (e *Engine) sync(strategy scheduler.Strategy, project, group string) (*scheduler.Cluster, *scheduler.Group, error) {
	if e.clusters == nil {
		e.clusters = map[scheduler.Strategy]*cachedCluster{}
	}
	cc := e.clusters[strategy]
	var since uint64
	if cc != nil {
		since = cc.seq
	}
	facts, full, seq, gf, err := e.view.SchedulerView(since, project, group)
	if err != nil {
		return nil, nil, err
	}
	hosts := make([]scheduler.Host, len(facts))
	for i := range facts {
		hosts[i] = schedHost(&facts[i])
		hosts[i].Allocated = hosts[i].Allocated.Add(e.hostRes[hosts[i].ID])
	}
	if cc == nil || full {
		cl, err := scheduler.NewCluster(hosts, scheduler.Options{Strategy: strategy, Seed: schedSeed, RunnersUp: 3, PressureWindow: e.PressureWindow})
		if err != nil {
			return nil, nil, fmt.Errorf("scheduler: %w", err)
		}
		cc = &cachedCluster{cl: cl}
		e.clusters[strategy] = cc
	} else {
		done := make(map[string]bool, len(hosts))
		for _, h := range hosts {
			cc.cl.Upsert(h)
			done[h.ID] = true
		}
		for id := range cc.dirty {
			if done[id] {
				continue
			}
			if f, ok := e.view.HostFacts(id); ok {
				h := schedHost(&f)
				h.Allocated = h.Allocated.Add(e.hostRes[id])
				cc.cl.Upsert(h)
			}
		}
	}
	cc.seq = seq
	clear(cc.dirty) // kept for the next decisions' hosts
	g := schedGroup(gf)
	if g != nil {
		for id, n := range e.groupRes[groupKey(project, group)] {
			g.Members[id] += n
		}
	}
	return cc.cl, g, nil
}

// markDirty notes that id's reservations changed, for every cached cluster.
// Run by ser.
func (e *Engine) markDirty(id string) {
	for _, cc := range e.clusters {
		if cc.dirty == nil {
			cc.dirty = map[string]bool{}
		}
		cc.dirty[id] = true
	}
}

// specUsage is what sp's VMs take of a quota.
func specUsage(sp *Spec) state.Usage {
	one := state.Usage{VCPUs: sp.Resources.VCPUs, MemoryBytes: sp.Resources.MemoryBytes, DiskBytes: sp.Resources.DiskBytes, VMs: 1}
	return one.Times(int64(len(sp.Names)))
}

// held is what a reservation holds on one host.
type held struct {
	host string
	res  scheduler.Resources
}

// hold adds res on host to r (a batch is at most state.MaxBatch VMs: a
// look through its hosts costs less than a map per reservation).
func (r *reservation) hold(host string, res scheduler.Resources) {
	for i := range r.hosts {
		if r.hosts[i].host == host {
			r.hosts[i].res = r.hosts[i].res.Add(res)
			return
		}
	}
	r.hosts = append(r.hosts, held{host, res})
}

// reserve holds what decisions ps chose until release. Run by ser.
func (e *Engine) reserve(sp *Spec, ps []scheduler.Placement) uint64 {
	r := &reservation{group: groupKey(sp.Project, sp.Group)}
	if e.pending == nil {
		e.pending, e.hostRes, e.groupRes = map[uint64]*reservation{}, map[string]scheduler.Resources{}, map[string]map[string]int{}
	}
	for _, p := range ps {
		r.hold(p.HostID, sp.Resources)
		e.hostRes[p.HostID] = e.hostRes[p.HostID].Add(sp.Resources)
		e.markDirty(p.HostID)
		if r.group != "" {
			if r.members == nil {
				r.members = map[string]int{}
			}
			r.members[p.HostID]++
			if e.groupRes[r.group] == nil {
				e.groupRes[r.group] = map[string]int{}
			}
			e.groupRes[r.group][p.HostID]++
		}
	}
	e.nextID++
	e.pending[e.nextID] = r
	return e.nextID
}

// release gives back reservation id (once; a dropped one is ignored),
// before any decision queued after it; it does not wait.
func (e *Engine) release(id uint64) { e.ser.post(func() { e.releaseNow(id) }) }

// releaseNow is release, run by ser.
func (e *Engine) releaseNow(id uint64) {
	r, ok := e.pending[id]
	if !ok {
		return
	}
	delete(e.pending, id)
	for _, hr := range r.hosts {
		h, res := hr.host, hr.res
		left := e.hostRes[h].Sub(res)
		if left == (scheduler.Resources{}) {
			delete(e.hostRes, h)
		} else {
			e.hostRes[h] = left
		}
		e.markDirty(h)
	}
	if r.group != "" {
		g := e.groupRes[r.group]
		for h, n := range r.members {
			if g[h] -= n; g[h] <= 0 {
				delete(g, h)
			}
		}
		if len(g) == 0 {
			delete(e.groupRes, r.group)
		}
	}
}

// decide chooses hosts for sp against the committed state plus the
// reservations in flight. Run by ser.
func (e *Engine) decide(sp *Spec) ([]scheduler.Placement, []Decision, error) {
	cl, g, err := e.sync(sp.Strategy, sp.Project, sp.Group)
	if err != nil {
		return nil, nil, err
	}
	reqs := make([]scheduler.Request, len(sp.Names))
	for i, n := range sp.Names {
		reqs[i] = scheduler.Request{Name: n, Project: sp.Project, Resources: sp.Resources, Center: sp.Center, Constraints: sp.Constraints, Group: g}
	}
	before := cl.PressureDecisions()
	defer func() { e.pressured.Add(cl.PressureDecisions() - before) }()
	var ps []scheduler.Placement
	if len(reqs) == 1 {
		p, err := cl.Place(reqs[0])
		if err != nil {
			return nil, nil, err
		}
		ps = []scheduler.Placement{p}
	} else if ps, err = cl.PlaceBatch(reqs); err != nil {
		return nil, nil, err
	}
	ds := make([]Decision, len(ps))
	for i, p := range ps {
		ds[i] = Decision{VMName: sp.Names[i], HostID: p.HostID, Score: p.Score, RunnersUp: p.RunnersUp}
		if h, ok := cl.Host(p.HostID); ok {
			ds[i].HostCenter = h.Center
		}
	}
	return ps, ds, nil
}

// Decide says where sp's VMs would go now, recording nothing (a dry run,
// or deciding again for an existing VM: see SpecOf).
func (e *Engine) Decide(sp Spec) ([]Decision, error) {
	var ds []Decision
	var err error
	e.ser.do(func() { _, ds, err = e.decide(&sp) })
	return ds, err
}

func alreadyExists(sp *Spec, v View) error {
	for _, n := range sp.Names {
		if v.HasVM(sp.Project, n) {
			return &state.Error{Kind: state.KindAlreadyExists, Msg: fmt.Sprintf("vm %q already exists in project %q", n, sp.Project)}
		}
	}
	return nil
}

// ErrRaces is Place's error when every attempt lost a race with other
// changes; it wraps the last rejection.
type ErrRaces struct{ Last error }

func (e *ErrRaces) Error() string {
	return fmt.Sprintf("placement kept losing races with other changes (%v)", e.Last)
}

func (e *ErrRaces) Unwrap() error { return e.Last }

// Place decides where sp's VMs go and records them in one command (all or
// none); it returns the records as applied and the decisions. A decision
// Apply rejects because the state changed meanwhile is made again, up to
// Attempts times; a quota exceeded (state.KindQuotaExceeded) is final. Errors are the scheduler's (*scheduler.NoFitError), the
// state's (*state.Error), raft's, or *ErrRaces.
func (e *Engine) Place(ctx context.Context, sp Spec) ([]*statev1.VMRecord, []Decision, error) {
	rules := make([]*statev1.Constraint, len(sp.Constraints))
	for i, c := range sp.Constraints {
		rules[i] = stateConstraint(c)
	}
	check := func() error {
		if err := alreadyExists(&sp, e.view); err != nil {
			return err
		}
		// Quotas first: over a quota, no host would do. Refused for good
		// only when the committed state alone leaves no room: a proposal
		// in flight may fail, or may have been applied and not yet
		// released. Otherwise Apply decides.
		if qv, ok := e.view.(QuotaView); ok {
			return qv.CheckQuota(sp.Project, specUsage(&sp))
		}
		return nil
	}
	var recs []*statev1.VMRecord
	build := func(ps []scheduler.Placement) *statev1.Command {
		recs = make([]*statev1.VMRecord, len(ps))
		for i, p := range ps {
			recs[i] = &statev1.VMRecord{
				Id: uuid.NewString(), Name: sp.Names[i], Project: sp.Project,
				Vcpus: int32(sp.Resources.VCPUs), MemoryBytes: sp.Resources.MemoryBytes, DiskBytes: sp.Resources.DiskBytes,
				Center: sp.Center, HostId: p.HostID, Desired: sp.Desired,
				Group: sp.Group, ConstraintRules: rules, Strategy: sp.StrategyName,
				Image: sp.Image, UserData: sp.UserData, SshAuthorizedKeys: sp.SSHAuthorizedKeys, Restore: sp.Restore,
				Isolated: sp.Isolated, DrRun: sp.DRRun,
			}
		}
		// One VM or a batch: the same command.
		return &statev1.Command{Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: recs}}}
	}
	res, ds, err := e.propose(ctx, &sp, check, nil, build)
	if err != nil {
		return nil, nil, err
	}
	placed := res.VMs
	if len(placed) != len(recs) {
		return nil, nil, fmt.Errorf("placement: %d VMs placed of %d", len(placed), len(recs))
	}
	for _, r := range placed {
		e.log.Debug("vm placed", "vm", r.Name, "project", r.Project, "host", r.HostId, "id", r.Id, "group", r.Group)
	}
	return placed, ds, nil
}

// propose is Place's and Relocate's loop: one at a time (ser), check
// (may refuse for good), decide (or take the placement fixed), reserve;
// then, unlocked, propose build's command and release the reservation. A
// decision Apply rejects because the state changed meanwhile is made again,
// up to Attempts times.
func (e *Engine) propose(ctx context.Context, sp *Spec, check func() error, fixed []Decision, build func([]scheduler.Placement) *statev1.Command) (state.Result, []Decision, error) {
	var lastErr error
	for attempt := 0; attempt < Attempts; attempt++ {
		var ps []scheduler.Placement
		ds := fixed
		var resID uint64
		var err error
		e.ser.do(func() {
			if check != nil {
				if err = check(); err != nil {
					return
				}
			}
			if fixed != nil {
				for _, d := range fixed {
					ps = append(ps, scheduler.Placement{HostID: d.HostID})
				}
			} else if ps, ds, err = e.decide(sp); err != nil {
				return
			}
			resID = e.reserve(sp, ps)
		})
		if err != nil {
			return state.Result{}, nil, err
		}

		res, err := e.prop.Apply(ctx, build(ps))
		// Applied (the committed state now holds it) or not: either way
		// the reservation has done its work.
		e.release(resID)
		if state.KindOf(err) == state.KindConflict {
			e.log.Info("placement lost a race; deciding again", "vm", sp.Names[0], "attempt", attempt+1, "err", err)
			lastErr = err
			continue
		}
		if err != nil {
			return state.Result{}, nil, err
		}
		return res, ds, nil
	}
	return state.Result{}, nil, &ErrRaces{Last: lastErr}
}

// Move is an existing VM to place again in another center (failover,
// failback), as one step of a DR run.
type Move struct {
	VM *statev1.VMRecord
	// Center the VM goes to; its disks are built there from Restore.
	Center  string
	Restore *statev1.RestoreSource
	// Entry is the run's entry for the VM after the move (its step); the
	// host chosen is filled in by Apply.
	Entry *statev1.DRRunVM
	// Start: the VM is to run there (it was stopped for a switch-over).
	Start bool
	// HomeCenter recorded with the VM after the move ("" = home again).
	HomeCenter string
	// HostID, when set, is the host it goes to (the one keeping its
	// mirror): not decided, still checked by Apply.
	HostID string
}

// Relocate decides a host for m.VM in m.Center, against the committed state
// plus the reservations in flight, and records the move with a RelocateVMs
// command of run runID. A decision Apply rejects because the state changed
// is made again, like Place's. It returns the run as Apply left it.
func (e *Engine) Relocate(ctx context.Context, runID string, m Move) (*statev1.DRRunRecord, Decision, error) {
	sp, err := SpecOf(m.VM, scheduler.Binpack)
	if err != nil {
		return nil, Decision{}, err
	}
	sp.Center, sp.Restore = m.Center, m.Restore
	var fixed []Decision
	if m.HostID != "" {
		fixed = []Decision{{VMName: m.VM.Name, HostID: m.HostID, HostCenter: m.Center}}
	}
	build := func(ps []scheduler.Placement) *statev1.Command {
		return &statev1.Command{Cmd: &statev1.Command_RelocateVms{RelocateVms: &statev1.RelocateVMs{
			RunId: runID,
			Relocations: []*statev1.Relocation{{
				VmId: m.VM.Id, HostId: ps[0].HostID, Entry: m.Entry, Restore: m.Restore, Start: m.Start, HomeCenter: m.HomeCenter,
			}},
		}}}
	}
	res, ds, err := e.propose(ctx, &sp, nil, fixed, build)
	if err != nil {
		return nil, Decision{}, err
	}
	return res.DRRun, ds[0], nil
}
