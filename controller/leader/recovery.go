package leader

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/placement"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// Recovery is the leader's duty for DR runs (failover, failback, drills):
// each tick it takes every running run one step further, from what the
// state says now, and records each VM's progress and measurements through
// raft. Nothing is kept in memory between ticks that the log does not
// hold, so a new leader carries on where the last one stopped.
//
// Failover: each VM is placed again in the DR center, its disk built
// there from its newest point (RelocateVMs), then watched until its host
// reports it running: RTO is the run's start to that report, the
// data-loss window the run's start minus the point's time.
//
// Failback: each VM is backed up while it still runs in the DR center (the
// pre-copy: incremental from its last point there), stopped, backed up
// once more (the changes since the pre-copy only), placed again in its
// home center from that point and started: its downtime is the stop to
// running again.
//
// Drill: a clone of each VM is restored from its newest point into the
// drill's own project in the DR center, with no network, measured when
// running, and removed; production VMs are only read.
type Recovery struct {
	prop  Proposer
	view  RecoveryView
	place RecoveryPlacer
	log   *slog.Logger

	// RunTimeout: a run still going after this gives up on the VMs not
	// done (their entries fail "timed out").
	RunTimeout time.Duration
	// MaxStarting bounds the VMs of one run being brought up at once:
	// the rest wait, in priority order.
	MaxStarting int
	// PerTick bounds the VMs placed per run per tick, so that a tick stays
	// short (it runs between the leader's heartbeat bookkeeping).
	PerTick int

	mu sync.Mutex
}

// RecoveryView is the part of the state the recovery duty reads
// (*state.Store).
type RecoveryView interface {
	RunningDRRuns() []*statev1.DRRunRecord
	VMByID(id string) (*statev1.VMRecord, bool)
	VMsOfRun(runID string) []*statev1.VMRecord
	RestorePoint(id string) (*statev1.RestorePointRecord, bool)
	RestorePointsOf(vmID, center string) []*statev1.RestorePointRecord
	Center(name string) (*statev1.CenterRecord, bool)
	DeclaredCenters() []*statev1.CenterRecord
	HostFacts(id string) (state.HostFacts, bool)
	ProtectedVMs(project string) []state.Protected
	VMsAwayFrom(center string) []*statev1.VMRecord
	DrillSchedules() []*statev1.DrillScheduleRecord
	DRRuns() []*statev1.DRRunRecord
	DRRun(id string) (*statev1.DRRunRecord, bool)
	BackupJobFor(vmID, center string) (*statev1.BackupJobRecord, bool)
	VMs(project, hostID string) []*statev1.VMRecord
	EffectivePolicy(vm *statev1.VMRecord) (name, source string)
	Policy(name string) (*statev1.PolicyRecord, bool)
}

// barrier is a Proposer that can wait until everything committed is
// applied here (the raft node).
type barrier interface {
	Barrier(ctx context.Context) error
}

// RecoveryPlacer places VMs (controller/placement.Engine).
type RecoveryPlacer interface {
	Relocate(ctx context.Context, runID string, m placement.Move) (*statev1.DRRunRecord, placement.Decision, error)
	Place(ctx context.Context, sp placement.Spec) ([]*statev1.VMRecord, []placement.Decision, error)
	Decide(sp placement.Spec) ([]placement.Decision, error)
}

// NewRecovery returns the recovery duty.
func NewRecovery(prop Proposer, view RecoveryView, place RecoveryPlacer, lg *slog.Logger) *Recovery {
	if lg == nil {
		lg = slog.Default()
	}
	return &Recovery{prop: prop, view: view, place: place, log: lg, RunTimeout: 30 * time.Minute, MaxStarting: 256, PerTick: 64}
}

// NewRunID is a DR run's id: "dr-" and 16 hex digits.
func NewRunID() string { return "dr-" + randHex() }

// DRCenterFor is the DR center a center's VMs go to when none is named:
// the same-city DR center of its site, else a remote DR center (by name),
// never a fenced one. "" = none.
func DRCenterFor(v RecoveryView, from string) string {
	fc, ok := v.Center(from)
	if !ok {
		return ""
	}
	var same, remote []string
	for _, c := range v.DeclaredCenters() {
		if c.Name == from || c.FencedBy != "" {
			continue
		}
		switch {
		case c.Role == statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR && c.Site == fc.Site:
			same = append(same, c.Name)
		case c.Role == statev1.CenterRole_CENTER_ROLE_REMOTE_DR || c.Role == statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR:
			remote = append(remote, c.Name)
		}
	}
	sort.Strings(same)
	sort.Strings(remote)
	if len(same) > 0 {
		return same[0]
	}
	if len(remote) > 0 {
		return remote[0]
	}
	return ""
}

// hostCenter is the center of a VM's host ("" = unknown).
func hostCenter(v RecoveryView, vm *statev1.VMRecord) string {
	if h, ok := v.HostFacts(vm.HostId); ok {
		return h.Center
	}
	return vm.Center
}

// newestPointOutside is a VM's newest point in a repository other than
// lost's (a lost center's repository is lost with it), preferring of two
// taken within a second the one in prefer.
func newestPointOutside(v RecoveryView, vmID, lost, prefer string) *statev1.RestorePointRecord {
	var best *statev1.RestorePointRecord
	for _, p := range v.RestorePointsOf(vmID, "") {
		if p.Center == lost {
			continue
		}
		if c, ok := v.Center(p.Center); !ok || c.FencedBy != "" {
			continue
		}
		if best == nil {
			best = p
			continue
		}
		d := p.TakenUnixNano - best.TakenUnixNano
		if d > int64(time.Second) || d > -int64(time.Second) && p.Center == prefer && best.Center != prefer {
			best = p
		}
	}
	return best
}

// RestoreSourceOf is the restore source of a point.
func RestoreSourceOf(p *statev1.RestorePointRecord) *statev1.RestoreSource {
	return &statev1.RestoreSource{PointId: p.Id, Center: p.Center, Disks: p.Disks, SourceVmId: p.VmId}
}

// PlanFailover plans a failover (or, with kind DRILL, a drill) of the
// protected VMs of center from (only project's, if given) to center to:
// each with its newest point outside from, in policy priority order. A VM
// with no such point is SKIPPED with the reason. It also returns how many
// VMs in from are not protected (they are not brought up).
func PlanFailover(v RecoveryView, kind statev1.DRRunKind, from, to, project string, now time.Time) (*statev1.DRRunRecord, int, error) {
	if _, ok := v.Center(from); !ok {
		return nil, 0, fmt.Errorf("center %q not found (see `yunchi topology`)", from)
	}
	if to == "" {
		if to = DRCenterFor(v, from); to == "" {
			return nil, 0, fmt.Errorf("no DR center to take center %s's VMs: declare one (yunchi center set)", from)
		}
	}
	tc, ok := v.Center(to)
	if !ok {
		return nil, 0, fmt.Errorf("center %q not found (see `yunchi topology`)", to)
	}
	if tc.FencedBy != "" {
		return nil, 0, fmt.Errorf("center %s is fenced (failed over by %s): it cannot take VMs", to, tc.FencedBy)
	}
	if to == from {
		return nil, 0, fmt.Errorf("%s from %s to itself: name another center with --to", state.RunKindName(kind), from)
	}
	run := &statev1.DRRunRecord{Id: NewRunID(), Kind: kind, FromCenter: from, ToCenter: to, Project: project}
	protected := map[string]bool{}
	for _, p := range v.ProtectedVMs(project) {
		vm := p.VM
		if vm.DrRun != "" || hostCenter(v, vm) != from {
			continue
		}
		protected[vm.Id] = true
		e := &statev1.DRRunVM{
			VmId: vm.Id, Name: vm.Name, Project: vm.Project, Policy: p.Policy.Name, Priority: p.Policy.Priority,
			FromHost: vm.HostId, FromCenter: from, Step: statev1.DRStep_DR_STEP_PENDING, DataLossMillis: -1,
		}
		if m := vm.GetMirror(); kind == statev1.DRRunKind_DR_RUN_KIND_FAILOVER && mirrorUsable(v, m, to) {
			// Every write the guest saw completed is on the mirror host:
			// nothing is lost.
			e.Mirror, e.HostId, e.DataLossMillis = true, m.HostId, 0
		} else if pt := newestPointOutside(v, vm.Id, from, to); pt != nil {
			e.PointId, e.PointCenter, e.PointTakenUnixNano = pt.Id, pt.Center, pt.TakenUnixNano
			e.DataLossMillis = max(0, now.Sub(time.Unix(0, pt.TakenUnixNano)).Milliseconds())
		} else {
			e.Step = statev1.DRStep_DR_STEP_SKIPPED
			e.Reason = fmt.Sprintf("no restore point outside %s yet (see `yunchi dr status`)", from)
		}
		if kind == statev1.DRRunKind_DR_RUN_KIND_DRILL {
			e.CloneName = cloneName(run.Id, vm.Name)
		}
		run.Vms = append(run.Vms, e)
	}
	sortEntries(run.Vms)
	unprotected := 0
	if kind == statev1.DRRunKind_DR_RUN_KIND_FAILOVER {
		unprotected = countUnprotected(v, from, project, protected)
	}
	return run, unprotected, nil
}

// mirrorUsable says whether a VM's mirror can take its place in center to:
// kept there, on a ready host, and mirroring at the VM host's last report.
func mirrorUsable(v RecoveryView, m *statev1.MirrorState, to string) bool {
	if m == nil || m.Center != to || m.Phase != state.MirrorMirroring || m.Address == "" {
		return false
	}
	h, ok := v.HostFacts(m.HostId)
	return ok && h.State == statev1.HostState_HOST_STATE_READY
}

// countUnprotected counts the VMs in center that no policy protects.
func countUnprotected(v RecoveryView, center, project string, protected map[string]bool) int {
	n := 0
	for _, vm := range v.VMs(project, "") {
		if !protected[vm.Id] && vm.DrRun == "" && vm.Desired != statev1.PowerState_POWER_STATE_DELETED && hostCenter(v, vm) == center {
			n++
		}
	}
	return n
}

// cloneName is a drill clone's name: the VM's, prefixed so that no two
// drills' clones clash (they live in the drill's own project anyway).
func cloneName(runID, name string) string {
	n := "d" + strings.TrimPrefix(runID, "dr-")[:6] + "-" + name
	if len(n) > 63 {
		n = n[:63]
	}
	return strings.TrimRight(n, "-")
}

// sortEntries orders a run's VMs: higher policy priority first, then by
// project and name.
func sortEntries(es []*statev1.DRRunVM) {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Priority != es[j].Priority {
			return es[i].Priority > es[j].Priority
		}
		if es[i].Project != es[j].Project {
			return es[i].Project < es[j].Project
		}
		return es[i].Name < es[j].Name
	})
}

// PlanFailback plans the return of the VMs a failover moved away from
// center home.
func PlanFailback(v RecoveryView, home string) (*statev1.DRRunRecord, error) {
	hc, ok := v.Center(home)
	if !ok {
		return nil, fmt.Errorf("center %q not found (see `yunchi topology`)", home)
	}
	run := &statev1.DRRunRecord{Id: NewRunID(), Kind: statev1.DRRunKind_DR_RUN_KIND_FAILBACK, ToCenter: home}
	for _, vm := range v.VMsAwayFrom(home) {
		now := hostCenter(v, vm)
		e := &statev1.DRRunVM{
			VmId: vm.Id, Name: vm.Name, Project: vm.Project, FromHost: vm.HostId, FromCenter: now,
			Step: statev1.DRStep_DR_STEP_PENDING,
		}
		if p := protectionOf(v, vm); p != nil {
			e.Policy, e.Priority = p.Name, p.Priority
		}
		e.JobCenter = copyCenter(v, hc, now)
		if e.JobCenter == "" {
			e.Step = statev1.DRStep_DR_STEP_SKIPPED
			e.Reason = "no center with a backup repository to copy the VM through"
		}
		if run.FromCenter == "" {
			run.FromCenter = now
		} else if run.FromCenter != now {
			run.FromCenter = "several"
		}
		run.Vms = append(run.Vms, e)
	}
	if len(run.Vms) == 0 {
		return nil, fmt.Errorf("no VM was failed over from center %s: nothing to fail back", home)
	}
	if run.FromCenter == "several" {
		run.FromCenter = ""
	}
	sortEntries(run.Vms)
	return run, nil
}

// protectionOf is the policy protecting vm (nil: none).
func protectionOf(v RecoveryView, vm *statev1.VMRecord) *statev1.PolicyRecord {
	name, _ := v.EffectivePolicy(vm)
	if name == "" {
		return nil
	}
	p, _ := v.Policy(name)
	return p
}

// copyCenter is the repository a failback copies a VM through: the home
// center's own, else the one of the center the VM runs in, else any
// center's that is not fenced.
func copyCenter(v RecoveryView, home *statev1.CenterRecord, now string) string {
	if home.RepositoryMember != "" {
		return home.Name
	}
	if c, ok := v.Center(now); ok && c.RepositoryMember != "" && c.FencedBy == "" {
		return c.Name
	}
	for _, c := range v.DeclaredCenters() {
		if c.RepositoryMember != "" && c.FencedBy == "" {
			return c.Name
		}
	}
	return ""
}

// Tick takes every running run one step further.
func (r *Recovery) Tick(ctx context.Context, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	runs := r.view.RunningDRRuns()
	if b, ok := r.prop.(barrier); ok && len(runs) > 0 {
		// Decide on everything committed: a leader that has just taken
		// over may not have applied its predecessor's last steps yet.
		bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := b.Barrier(bctx)
		cancel()
		if err != nil {
			return
		}
		runs = r.view.RunningDRRuns()
	}
	for _, run := range runs {
		if ctx.Err() != nil {
			return
		}
		r.step(ctx, run, now)
	}
	r.scheduledDrills(ctx, now)
}

// step advances one run and records what changed.
func (r *Recovery) step(ctx context.Context, run *statev1.DRRunRecord, now time.Time) {
	deadline := run.DeadlineUnixNano
	if deadline == 0 {
		deadline = run.StartedUnixNano + r.RunTimeout.Nanoseconds()
	}
	timedOut := now.UnixNano() > deadline
	var changed []*statev1.DRRunVM
	starting := 0
	for _, e := range run.Vms {
		if e.Step == statev1.DRStep_DR_STEP_STARTING {
			starting++
		}
	}
	placed := 0
	for _, e := range run.Vms {
		if ctx.Err() != nil {
			return
		}
		if state.StepFinal(run.Kind, e.Step) {
			continue
		}
		if e.Step == statev1.DRStep_DR_STEP_PENDING && run.Kind != statev1.DRRunKind_DR_RUN_KIND_FAILBACK {
			if placed >= r.PerTick {
				continue
			}
			placed++
		}
		next := proto.Clone(e).(*statev1.DRRunVM)
		if timedOut {
			r.timeOut(ctx, run, next)
		} else {
			switch run.Kind {
			case statev1.DRRunKind_DR_RUN_KIND_FAILOVER:
				if next.Step == statev1.DRStep_DR_STEP_PENDING && starting >= r.MaxStarting {
					continue
				}
				if next.Step == statev1.DRStep_DR_STEP_PENDING {
					starting++
				}
				if !r.failoverStep(ctx, run, next, now) {
					continue // recorded by the relocation itself, or nothing new
				}
			case statev1.DRRunKind_DR_RUN_KIND_DRILL:
				if next.Step == statev1.DRStep_DR_STEP_PENDING && starting >= r.MaxStarting {
					continue
				}
				if next.Step == statev1.DRStep_DR_STEP_PENDING {
					starting++
				}
				r.drillStep(ctx, run, next, now)
			case statev1.DRRunKind_DR_RUN_KIND_FAILBACK:
				if !r.failbackStep(ctx, run, next, now) {
					continue
				}
			}
		}
		if !proto.Equal(next, e) {
			changed = append(changed, next)
		}
	}
	if len(changed) > 0 {
		if err := r.update(ctx, &statev1.UpdateDRRun{Id: run.Id, Vms: changed}); err != nil {
			return
		}
	}
	r.finishIfDone(ctx, run.Id)
}

func (r *Recovery) update(ctx context.Context, u *statev1.UpdateDRRun) error {
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := r.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_UpdateDrRun{UpdateDrRun: u}})
	if err != nil && ctx.Err() == nil {
		r.log.Warn("could not record dr run progress", "run", u.Id, "err", err)
	}
	return err
}

func setStep(e *statev1.DRRunVM, st statev1.DRStep, now time.Time, reason string) {
	e.Step, e.StepUnixNano, e.Reason = st, now.UnixNano(), reason
}

// timeOut ends a VM's part in a run that took too long. A failback VM
// stopped for its switch-over is started again where it is.
func (r *Recovery) timeOut(ctx context.Context, run *statev1.DRRunRecord, e *statev1.DRRunVM) {
	reason := fmt.Sprintf("timed out after %s at step %s", r.RunTimeout, state.StepName(e.Step))
	if run.Kind == statev1.DRRunKind_DR_RUN_KIND_FAILBACK && (e.Step == statev1.DRStep_DR_STEP_STOPPING || e.Step == statev1.DRStep_DR_STEP_FINAL_COPY) {
		r.setDesired(ctx, e.VmId, statev1.PowerState_POWER_STATE_RUNNING)
		reason += fmt.Sprintf("; left running in %s", e.FromCenter)
	}
	if run.Kind == statev1.DRRunKind_DR_RUN_KIND_DRILL && e.CloneVmId != "" {
		r.setDesired(ctx, e.CloneVmId, statev1.PowerState_POWER_STATE_DELETED)
	}
	setStep(e, statev1.DRStep_DR_STEP_FAILED, time.Now(), reason)
}

func (r *Recovery) setDesired(ctx context.Context, vmID string, want statev1.PowerState) error {
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := r.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_SetVmDesired{SetVmDesired: &statev1.SetVMDesired{VmId: vmID, Desired: want}}})
	if err != nil && ctx.Err() == nil && state.KindOf(err) != state.KindNotFound {
		r.log.Warn("dr run: could not set a VM's power state", "vm", vmID, "want", want, "err", err)
	}
	return err
}

// placeFailure turns a placement error into a final step: no room is
// SKIPPED with the scheduler's reason, anything Apply refused is FAILED;
// raft errors (leadership lost) leave the VM for the next tick.
func placeFailure(e *statev1.DRRunVM, err error, now time.Time) bool {
	var nf *scheduler.NoFitError
	var se *state.Error
	switch {
	case errors.As(err, &nf):
		setStep(e, statev1.DRStep_DR_STEP_SKIPPED, now, "no room: "+oneLine(err.Error()))
	case errors.As(err, &se) && se.Kind != state.KindConflict:
		setStep(e, statev1.DRStep_DR_STEP_FAILED, now, oneLine(err.Error()))
	default:
		var races *placement.ErrRaces
		if errors.As(err, &races) {
			return false
		}
		return false
	}
	return true
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// watchRunning moves a VM that is STARTING on e.HostId to RUNNING once
// its host reports it running (or stopped, for a VM meant to be stopped),
// measuring RTO from start; to FAILED if its host could not build or start
// it. It says whether e changed.
func watchRunning(vm *statev1.VMRecord, e *statev1.DRRunVM, start int64, now time.Time) bool {
	if vm.HostId != e.HostId {
		return false
	}
	up := vm.Phase == statev1.VMPhase_VM_PHASE_RUNNING ||
		vm.Phase == statev1.VMPhase_VM_PHASE_STOPPED && vm.Desired == statev1.PowerState_POWER_STATE_STOPPED
	switch {
	case up:
		at := vm.UpdatedUnixNano
		setStep(e, statev1.DRStep_DR_STEP_RUNNING, now, "")
		e.RunningUnixNano = at
		e.RtoMillis = max(0, (at-start)/int64(time.Millisecond))
		return true
	case vm.Phase == statev1.VMPhase_VM_PHASE_FAILED:
		setStep(e, statev1.DRStep_DR_STEP_FAILED, now, "its host could not bring it up: "+oneLine(vm.Message))
		return true
	}
	return false
}

// failoverStep: PENDING -> relocated from its point (STARTING) ->
// RUNNING. It says whether e changed and needs recording (a relocation
// records the entry itself).
func (r *Recovery) failoverStep(ctx context.Context, run *statev1.DRRunRecord, e *statev1.DRRunVM, now time.Time) bool {
	vm, ok := r.view.VMByID(e.VmId)
	if !ok {
		setStep(e, statev1.DRStep_DR_STEP_FAILED, now, "the VM was deleted during the failover")
		return true
	}
	switch e.Step {
	case statev1.DRStep_DR_STEP_PENDING:
		if e.Mirror {
			if h, ok := r.view.HostFacts(e.HostId); ok && h.State == statev1.HostState_HOST_STATE_READY && vm.GetMirror().GetHostId() == e.HostId {
				moved := proto.Clone(e).(*statev1.DRRunVM)
				setStep(moved, statev1.DRStep_DR_STEP_STARTING, now, "")
				_, _, err := r.place.Relocate(ctx, run.Id, placement.Move{
					VM: vm, Center: run.ToCenter, Restore: &statev1.RestoreSource{FromMirror: true}, Entry: moved,
					HomeCenter: cmp.Or(vm.HomeCenter, run.FromCenter), HostID: e.HostId,
				})
				if err != nil {
					if ctx.Err() != nil {
						return false
					}
					r.log.Info("failover: could not bring a VM up from its mirror", "run", run.Id, "vm", vm.Name, "err", err)
					return placeFailure(e, err, now)
				}
				return false
			}
			// The mirror host went away since the plan: its newest point.
			e.Mirror, e.HostId = false, ""
			e.Reason = "its mirror host is not ready: brought up from its newest point"
			e.PointId = ""
		}
		p := r.pointOf(run, e, now)
		if p == nil {
			return true
		}
		moved := proto.Clone(e).(*statev1.DRRunVM)
		setStep(moved, statev1.DRStep_DR_STEP_STARTING, now, "")
		_, _, err := r.place.Relocate(ctx, run.Id, placement.Move{
			VM: vm, Center: run.ToCenter, Restore: RestoreSourceOf(p), Entry: moved, HomeCenter: cmp.Or(vm.HomeCenter, run.FromCenter),
		})
		if err != nil {
			if ctx.Err() != nil {
				return false
			}
			r.log.Info("failover: could not place a VM", "run", run.Id, "vm", vm.Name, "err", err)
			return placeFailure(e, err, now)
		}
		return false
	case statev1.DRStep_DR_STEP_STARTING:
		return watchRunning(vm, e, run.StartedUnixNano, now)
	}
	return false
}

// pointOf is the point a VM of a run is brought up from: the planned one,
// or, if retention removed it since, the newest left outside the lost
// center (recorded in e). nil: none is left, and e is SKIPPED.
func (r *Recovery) pointOf(run *statev1.DRRunRecord, e *statev1.DRRunVM, now time.Time) *statev1.RestorePointRecord {
	if p, ok := r.view.RestorePoint(e.PointId); ok {
		return p
	}
	p := newestPointOutside(r.view, e.VmId, run.FromCenter, run.ToCenter)
	if p == nil {
		setStep(e, statev1.DRStep_DR_STEP_SKIPPED, now, "its restore point was removed and no other is left")
		return nil
	}
	e.PointId, e.PointCenter, e.PointTakenUnixNano = p.Id, p.Center, p.TakenUnixNano
	e.DataLossMillis = max(0, (run.StartedUnixNano-p.TakenUnixNano)/int64(time.Millisecond))
	return p
}

// drillStep: PENDING -> clone placed (STARTING) -> RUNNING (measured;
// the clone is removed) -> DONE once it is gone.
func (r *Recovery) drillStep(ctx context.Context, run *statev1.DRRunRecord, e *statev1.DRRunVM, now time.Time) {
	switch e.Step {
	case statev1.DRStep_DR_STEP_PENDING:
		p := r.pointOf(run, e, now)
		if p == nil {
			return
		}
		// The clone has the shape of the VM now (its point's if the VM is
		// gone) and the point's root disk.
		res := scheduler.Resources{VCPUs: int64(p.GetVm().GetVcpus()), MemoryBytes: p.GetVm().GetMemoryBytes()}
		if vm, ok := r.view.VMByID(e.VmId); ok {
			res.VCPUs, res.MemoryBytes = int64(vm.Vcpus), vm.MemoryBytes
		}
		for _, d := range p.Disks {
			if d.Name == "root" {
				res.DiskBytes = d.SizeBytes
			}
		}
		sp := placement.Spec{
			Project: run.DrillProject, Names: []string{e.CloneName}, Center: run.ToCenter, Strategy: scheduler.Binpack,
			Resources: res,
			Desired:   statev1.PowerState_POWER_STATE_RUNNING, Restore: RestoreSourceOf(p), Isolated: true, DRRun: run.Id,
		}
		vms, _, err := r.place.Place(ctx, sp)
		if state.KindOf(err) == state.KindAlreadyExists {
			// Placed by an earlier tick whose answer was lost: adopt it.
			for _, c := range r.view.VMsOfRun(run.Id) {
				if c.Name == e.CloneName {
					vms, err = []*statev1.VMRecord{c}, nil
				}
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				r.log.Info("drill: could not place a clone", "run", run.Id, "vm", e.Name, "err", err)
				placeFailure(e, err, now)
			}
			return
		}
		e.CloneVmId, e.HostId = vms[0].Id, vms[0].HostId
		setStep(e, statev1.DRStep_DR_STEP_STARTING, now, "")
	case statev1.DRStep_DR_STEP_STARTING:
		clone, ok := r.view.VMByID(e.CloneVmId)
		if !ok {
			setStep(e, statev1.DRStep_DR_STEP_FAILED, now, "the clone was deleted before it ran")
			return
		}
		if watchRunning(clone, e, run.StartedUnixNano, now) {
			// Measured (or failed): the clone has done its part.
			r.setDesired(ctx, clone.Id, statev1.PowerState_POWER_STATE_DELETED)
			if e.Step == statev1.DRStep_DR_STEP_RUNNING {
				e.Reason = "measured; removing the clone"
			}
		}
	case statev1.DRStep_DR_STEP_RUNNING:
		if _, ok := r.view.VMByID(e.CloneVmId); !ok {
			setStep(e, statev1.DRStep_DR_STEP_DONE, now, "")
		} else if now.Sub(time.Unix(0, e.StepUnixNano)) > 10*time.Second {
			r.setDesired(ctx, e.CloneVmId, statev1.PowerState_POWER_STATE_DELETED) // again: idempotent
		}
	}
}

// newPointSince is the newest point of vm in center taken after t (nil:
// none yet).
func (r *Recovery) newPointSince(vmID, center string, t int64) *statev1.RestorePointRecord {
	if ps := r.view.RestorePointsOf(vmID, center); len(ps) > 0 && ps[0].TakenUnixNano > t { // newest first
		return ps[0]
	}
	return nil
}

// jobOf is the backup job of vm to center (nil: none).
func (r *Recovery) jobOf(vmID, center string) *statev1.BackupJobRecord {
	j, _ := r.view.BackupJobFor(vmID, center)
	return j
}

// startCopy starts a backup of vm to center now (unless one runs); it says
// whether one is running or was started.
func (r *Recovery) startCopy(ctx context.Context, vm *statev1.VMRecord, center string) error {
	if j := r.jobOf(vm.Id, center); j != nil && j.State == statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING && j.HostId == vm.HostId {
		return nil
	}
	j := &statev1.BackupJobRecord{Id: NewJobID(), VmId: vm.Id, Center: center, HostId: vm.HostId, Attempts: 1, Manual: true}
	if ps := r.view.RestorePointsOf(vm.Id, center); len(ps) > 0 {
		j.BasePointId = ps[0].Id
	}
	if pol := protectionOf(r.view, vm); pol != nil {
		j.Policy = pol.Name
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := r.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_StartBackups{StartBackups: &statev1.StartBackups{Jobs: []*statev1.BackupJobRecord{j}}}})
	return err
}

// copyAgainIfIdle starts the copy a step waits for when no backup of the
// VM to center runs: the one running when the step began (the schedule's)
// may have ended with a point taken before it.
func (r *Recovery) copyAgainIfIdle(ctx context.Context, vm *statev1.VMRecord, center string) {
	if j := r.jobOf(vm.Id, center); j == nil {
		if err := r.startCopy(ctx, vm, center); err != nil && ctx.Err() == nil {
			r.log.Warn("failback: could not start a copy", "vm", vm.Name, "center", center, "err", err)
		}
	}
}

// copyFailed says why the backup a failback step waits for failed ("" =
// it did not).
func (r *Recovery) copyFailed(vmID, center string, since int64) string {
	j := r.jobOf(vmID, center)
	if j != nil && j.State == statev1.BackupJobState_BACKUP_JOB_STATE_FAILED && j.StartedUnixNano >= since {
		return j.Error
	}
	return ""
}

// failbackStep: PENDING -> PRECOPY (backup while running) -> STOPPING ->
// FINAL_COPY (backup of the stopped VM) -> STARTING (placed at home from
// that point) -> RUNNING. It says whether e changed and needs recording.
func (r *Recovery) failbackStep(ctx context.Context, run *statev1.DRRunRecord, e *statev1.DRRunVM, now time.Time) bool {
	vm, ok := r.view.VMByID(e.VmId)
	if !ok {
		setStep(e, statev1.DRStep_DR_STEP_FAILED, now, "the VM was deleted during the failback")
		return true
	}
	switch e.Step {
	case statev1.DRStep_DR_STEP_PENDING:
		if vm.Phase != statev1.VMPhase_VM_PHASE_RUNNING && vm.Phase != statev1.VMPhase_VM_PHASE_STOPPED {
			return false // not up where it is yet: wait
		}
		if err := r.startCopy(ctx, vm, e.JobCenter); err != nil {
			return false
		}
		setStep(e, statev1.DRStep_DR_STEP_PRECOPY, now, "copying while it runs")
		return true
	case statev1.DRStep_DR_STEP_PRECOPY:
		if msg := r.copyFailed(vm.Id, e.JobCenter, e.StepUnixNano); msg != "" {
			setStep(e, statev1.DRStep_DR_STEP_FAILED, now, "pre-copy failed: "+oneLine(msg)+"; it keeps running in "+e.FromCenter)
			return true
		}
		if r.newPointSince(vm.Id, e.JobCenter, e.StepUnixNano-int64(time.Second)) == nil {
			r.copyAgainIfIdle(ctx, vm, e.JobCenter)
			return false
		}
		e.StoppedUnixNano = now.UnixNano()
		if vm.Desired == statev1.PowerState_POWER_STATE_RUNNING {
			if err := r.setDesired(ctx, vm.Id, statev1.PowerState_POWER_STATE_STOPPED); err != nil {
				return false
			}
		}
		setStep(e, statev1.DRStep_DR_STEP_STOPPING, now, "")
		return true
	case statev1.DRStep_DR_STEP_STOPPING:
		if vm.Phase != statev1.VMPhase_VM_PHASE_STOPPED {
			return false
		}
		if err := r.startCopy(ctx, vm, e.JobCenter); err != nil {
			return false
		}
		setStep(e, statev1.DRStep_DR_STEP_FINAL_COPY, now, "copying the changes since the pre-copy")
		return true
	case statev1.DRStep_DR_STEP_FINAL_COPY:
		if msg := r.copyFailed(vm.Id, e.JobCenter, e.StepUnixNano); msg != "" {
			r.setDesired(ctx, vm.Id, statev1.PowerState_POWER_STATE_RUNNING)
			setStep(e, statev1.DRStep_DR_STEP_FAILED, now, "final copy failed: "+oneLine(msg)+"; started again in "+e.FromCenter)
			return true
		}
		p := r.newPointSince(vm.Id, e.JobCenter, e.StepUnixNano)
		if p == nil {
			r.copyAgainIfIdle(ctx, vm, e.JobCenter)
			return false
		}
		e.PointId, e.PointCenter, e.PointTakenUnixNano = p.Id, p.Center, p.TakenUnixNano
		e.DataLossMillis = 0 // stopped before the copy: nothing is lost
		moved := proto.Clone(e).(*statev1.DRRunVM)
		setStep(moved, statev1.DRStep_DR_STEP_STARTING, now, "")
		_, _, err := r.place.Relocate(ctx, run.Id, placement.Move{
			VM: vm, Center: run.ToCenter, Restore: RestoreSourceOf(p), Entry: moved, Start: true, HomeCenter: "",
		})
		if err != nil {
			if ctx.Err() != nil || !placeFailure(e, err, now) {
				return false
			}
			r.setDesired(ctx, vm.Id, statev1.PowerState_POWER_STATE_RUNNING)
			e.Reason += "; started again in " + e.FromCenter
			return true
		}
		return false
	case statev1.DRStep_DR_STEP_STARTING:
		if !watchRunning(vm, e, run.StartedUnixNano, now) {
			return false
		}
		if e.Step == statev1.DRStep_DR_STEP_RUNNING {
			e.DowntimeMillis = max(0, (e.RunningUnixNano-e.StoppedUnixNano)/int64(time.Millisecond))
		}
		return true
	}
	return false
}

// finishIfDone ends a run whose VMs all reached their end (a drill's
// clones all gone), with its production check.
func (r *Recovery) finishIfDone(ctx context.Context, id string) {
	run, ok := r.view.DRRun(id)
	if !ok || run.State != statev1.DRRunState_DR_RUN_STATE_RUNNING {
		return
	}
	done, failed := 0, 0
	for _, e := range run.Vms {
		if !state.StepFinal(run.Kind, e.Step) {
			return
		}
		switch e.Step {
		case statev1.DRStep_DR_STEP_RUNNING, statev1.DRStep_DR_STEP_DONE:
			done++
		default:
			failed++
		}
	}
	u := &statev1.UpdateDRRun{Id: run.Id}
	if run.Kind == statev1.DRRunKind_DR_RUN_KIND_DRILL {
		if clones := r.view.VMsOfRun(run.Id); len(clones) > 0 {
			for _, c := range clones {
				if c.Desired != statev1.PowerState_POWER_STATE_DELETED {
					r.setDesired(ctx, c.Id, statev1.PowerState_POWER_STATE_DELETED)
				}
			}
			return // wait for them to go
		}
		u.ProductionUnchanged, u.ProductionCheck = r.productionCheck(run)
	}
	switch {
	case failed == 0:
		u.State = statev1.DRRunState_DR_RUN_STATE_SUCCEEDED
	case done == 0:
		u.State = statev1.DRRunState_DR_RUN_STATE_FAILED
	default:
		u.State = statev1.DRRunState_DR_RUN_STATE_PARTIAL
	}
	u.Message = fmt.Sprintf("%d of %d VMs %s", done, len(run.Vms), map[bool]string{true: "measured", false: "up"}[run.Kind == statev1.DRRunKind_DR_RUN_KIND_DRILL])
	if r.update(ctx, u) == nil {
		r.log.Info("dr run finished", "run", run.Id, "kind", state.RunKindName(run.Kind), "state", state.RunStateName(u.State), "vms", len(run.Vms), "done", done)
	}
}

// productionCheck checks, at the end of a drill, that every production VM
// it drilled is where it was, as it was: same host, not moved by the drill,
// not rebuilt from a point, and that no clone ran outside the DR center or
// with a network.
func (r *Recovery) productionCheck(run *statev1.DRRunRecord) (bool, string) {
	var bad []string
	n := 0
	for _, e := range run.Vms {
		vm, ok := r.view.VMByID(e.VmId)
		if !ok {
			continue // deleted by its owners meanwhile: not the drill's doing
		}
		n++
		switch {
		case vm.HostId != e.FromHost:
			bad = append(bad, fmt.Sprintf("%s moved from %s to %s", vm.Name, e.FromHost, vm.HostId))
		case vm.DrRun != "" || vm.Restore != nil && vm.Restore.PointId == e.PointId:
			bad = append(bad, fmt.Sprintf("%s is being rebuilt from point %s", vm.Name, e.PointId))
		}
		if e.HostId != "" {
			if h, ok := r.view.HostFacts(e.HostId); ok && h.Center != run.ToCenter {
				bad = append(bad, fmt.Sprintf("clone of %s ran on %s outside %s", vm.Name, e.HostId, run.ToCenter))
			}
		}
	}
	if len(bad) > 0 {
		return false, strings.Join(bad, "; ")
	}
	return true, fmt.Sprintf("%d production VMs on their hosts, not rebuilt; clones ran in %s with no network, in project %s, and are removed", n, run.ToCenter, run.DrillProject)
}

// scheduledDrills starts the drills whose schedule is due (one at a time
// per schedule: not while its last drill still runs).
func (r *Recovery) scheduledDrills(ctx context.Context, now time.Time) {
	scheds := r.view.DrillSchedules()
	if len(scheds) == 0 {
		return
	}
	running := map[string]bool{}
	for _, run := range r.view.RunningDRRuns() {
		if run.ScheduleId != "" {
			running[run.ScheduleId] = true
		}
	}
	for _, d := range scheds {
		if now.UnixNano() < d.NextUnixNano || running[d.Id] {
			continue
		}
		run, _, err := PlanFailover(r.view, statev1.DRRunKind_DR_RUN_KIND_DRILL, d.Center, d.ToCenter, d.Project, now)
		next := proto.Clone(d).(*statev1.DrillScheduleRecord)
		next.NextUnixNano = now.Add(time.Duration(d.EverySeconds) * time.Second).UnixNano()
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err == nil {
			run.ScheduleId, run.RequestedBy = d.Id, "schedule "+d.Id
			_, err = r.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_StartDrRun{StartDrRun: &statev1.StartDRRun{Run: run}}})
		}
		if err != nil {
			r.log.Warn("scheduled drill could not start", "schedule", d.Id, "err", err)
		}
		_, _ = r.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_SetDrillSchedule{SetDrillSchedule: &statev1.SetDrillSchedule{Schedule: next}}})
		cancel()
	}
}
