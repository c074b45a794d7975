package state

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Failover, failback and drills (command version 10 on). The leader plans
// a run and records it (StartDRRun), then drives it one step at a time:
// it places VMs again in another center (RelocateVMs, re-checked here like
// a create), or places a drill's clones (PlaceVMs), and records each VM's
// progress and measurements (UpdateDRRun). A run in the log survives a
// leader change: the next leader carries on from the recorded steps.
//
// Fencing. A failover declares its source center lost: the center records
// the run (fenced_by) and its hosts count as down for placement whatever
// they report, so nothing new goes there and the VMs moved away are not
// assigned to them any more (an agent that comes back removes their old
// domains). Failback lifts the fence.

// recoveryV10 is the first command version with DR runs.
const recoveryV10 = 10

// MaxRunVMs bounds the VMs of one run (a center's protected VMs).
const MaxRunVMs = 10000

var runIDRE = regexp.MustCompile(`^dr-[0-9a-f]{16}$`)

// DrillProjectOf is the isolated project a drill's clones live in.
func DrillProjectOf(runID string) string { return "drill-" + strings.TrimPrefix(runID, "dr-")[:8] }

// RunKindName is how people and the API name a run kind.
func RunKindName(k statev1.DRRunKind) string {
	switch k {
	case statev1.DRRunKind_DR_RUN_KIND_FAILOVER:
		return "failover"
	case statev1.DRRunKind_DR_RUN_KIND_FAILBACK:
		return "failback"
	case statev1.DRRunKind_DR_RUN_KIND_DRILL:
		return "drill"
	}
	return "unknown"
}

// RunStateName names a run state.
func RunStateName(st statev1.DRRunState) string {
	switch st {
	case statev1.DRRunState_DR_RUN_STATE_RUNNING:
		return "running"
	case statev1.DRRunState_DR_RUN_STATE_SUCCEEDED:
		return "succeeded"
	case statev1.DRRunState_DR_RUN_STATE_PARTIAL:
		return "partial"
	case statev1.DRRunState_DR_RUN_STATE_FAILED:
		return "failed"
	}
	return "unknown"
}

// StepName names a VM's step in a run.
func StepName(st statev1.DRStep) string {
	switch st {
	case statev1.DRStep_DR_STEP_PENDING:
		return "pending"
	case statev1.DRStep_DR_STEP_PRECOPY:
		return "precopy"
	case statev1.DRStep_DR_STEP_STOPPING:
		return "stopping"
	case statev1.DRStep_DR_STEP_FINAL_COPY:
		return "final-copy"
	case statev1.DRStep_DR_STEP_STARTING:
		return "starting"
	case statev1.DRStep_DR_STEP_RUNNING:
		return "running"
	case statev1.DRStep_DR_STEP_DONE:
		return "done"
	case statev1.DRStep_DR_STEP_FAILED:
		return "failed"
	case statev1.DRStep_DR_STEP_SKIPPED:
		return "skipped"
	}
	return "unknown"
}

// StepFinal says whether a VM's step is its last in a run of kind k.
func StepFinal(k statev1.DRRunKind, st statev1.DRStep) bool {
	switch st {
	case statev1.DRStep_DR_STEP_FAILED, statev1.DRStep_DR_STEP_SKIPPED, statev1.DRStep_DR_STEP_DONE:
		return true
	case statev1.DRStep_DR_STEP_RUNNING:
		return k != statev1.DRRunKind_DR_RUN_KIND_DRILL // a drill removes its clone after
	}
	return false
}

// centerFenced says whether a failover declared the center lost. Callers
// hold mu.
func (s *Store) centerFenced(name string) bool {
	c, ok := s.dr.centers[name]
	return ok && c.FencedBy != ""
}

// applyRecovery applies the commands of this file.
func (s *Store) applyRecovery(index uint64, cmd *statev1.Command) (res Result, err error) {
	if cmd.GetVersion() < recoveryV10 {
		return res, errorf(KindInvalid, "command %T needs command version %d, got %d", cmd.GetCmd(), recoveryV10, cmd.GetVersion())
	}
	now := cmd.UnixNano
	switch c := cmd.GetCmd().(type) {
	case *statev1.Command_StartDrRun:
		res.DRRun, err = s.applyStartDRRun(index, now, c.StartDrRun)
	case *statev1.Command_UpdateDrRun:
		res.DRRun, err = s.applyUpdateDRRun(index, now, c.UpdateDrRun)
	case *statev1.Command_RelocateVms:
		res.DRRun, err = s.applyRelocateVMs(index, now, c.RelocateVms)
	case *statev1.Command_SetDrillSchedule:
		res.DrillSchedule, err = s.applySetDrillSchedule(index, now, c.SetDrillSchedule)
	case *statev1.Command_SetMirror:
		var vm *statev1.VMRecord
		if vm, err = s.applySetMirror(index, now, c.SetMirror); vm != nil {
			res.VMs = []*statev1.VMRecord{vm}
		}
	case *statev1.Command_DeleteDrillSchedule:
		d, ok := s.dr.drills[c.DeleteDrillSchedule.GetId()]
		if !ok {
			return res, errorf(KindNotFound, "drill schedule %q not found (see `yunchi dr drill schedules`)", c.DeleteDrillSchedule.GetId())
		}
		delete(s.dr.drills, d.Id)
		res.DrillSchedule = proto.Clone(d).(*statev1.DrillScheduleRecord)
	}
	return res, err
}

// runningRunOf returns the running run (other than except) a VM is in.
// Callers hold mu.
func (s *Store) runningRunOf(vmID, except string) (*statev1.DRRunRecord, bool) {
	for _, r := range s.dr.runs {
		if r.Id == except || r.State != statev1.DRRunState_DR_RUN_STATE_RUNNING || r.Kind == statev1.DRRunKind_DR_RUN_KIND_DRILL {
			continue
		}
		for _, e := range r.Vms {
			if e.VmId == vmID {
				return r, true
			}
		}
	}
	return nil, false
}

func (s *Store) applyStartDRRun(index uint64, now int64, c *statev1.StartDRRun) (*statev1.DRRunRecord, error) {
	in := c.GetRun()
	switch {
	case in == nil:
		return nil, errorf(KindInvalid, "start dr run: no run given")
	case !runIDRE.MatchString(in.Id):
		return nil, errorf(KindInvalid, "dr run id %q: want dr- and 16 hex digits", in.Id)
	case len(in.Vms) > MaxRunVMs:
		return nil, errorf(KindInvalid, "dr run with %d VMs: at most %d", len(in.Vms), MaxRunVMs)
	}
	if _, ok := s.dr.runs[in.Id]; ok {
		return nil, errorf(KindAlreadyExists, "dr run %s already exists", in.Id)
	}
	from, fromOK := s.dr.centers[in.FromCenter]
	to, toOK := s.dr.centers[in.ToCenter]
	switch in.Kind {
	case statev1.DRRunKind_DR_RUN_KIND_FAILOVER, statev1.DRRunKind_DR_RUN_KIND_DRILL:
		if !fromOK {
			return nil, errorf(KindNotFound, "center %q not found (see `yunchi topology`)", in.FromCenter)
		}
		if !toOK {
			return nil, errorf(KindNotFound, "center %q not found (see `yunchi topology`)", in.ToCenter)
		}
		if in.FromCenter == in.ToCenter {
			return nil, errorf(KindInvalid, "%s from %s to itself: name another center", RunKindName(in.Kind), in.FromCenter)
		}
		if to.FencedBy != "" {
			return nil, errorf(KindFailedPrecondition, "center %s is fenced (failed over by %s): it cannot take VMs", to.Name, to.FencedBy)
		}
	case statev1.DRRunKind_DR_RUN_KIND_FAILBACK:
		if !toOK {
			return nil, errorf(KindNotFound, "center %q not found (see `yunchi topology`)", in.ToCenter)
		}
	default:
		return nil, errorf(KindInvalid, "dr run %s: unknown kind", in.Id)
	}
	seen := map[string]bool{}
	for _, e := range in.Vms {
		vm, ok := s.vms[e.VmId]
		switch {
		case !ok:
			return nil, errorf(KindNotFound, "vm %s of dr run %s not found: it was deleted meanwhile", e.VmId, in.Id)
		case seen[e.VmId]:
			return nil, errorf(KindInvalid, "vm %q is twice in dr run %s", vm.Name, in.Id)
		}
		seen[e.VmId] = true
		if in.Kind != statev1.DRRunKind_DR_RUN_KIND_DRILL {
			if other, busy := s.runningRunOf(e.VmId, ""); busy {
				return nil, errorf(KindFailedPrecondition, "vm %q is already in %s %s (running)", vm.Name, RunKindName(other.Kind), other.Id)
			}
		}
	}
	rec := proto.Clone(in).(*statev1.DRRunRecord)
	rec.State = statev1.DRRunState_DR_RUN_STATE_RUNNING
	rec.StartedUnixNano = now
	rec.FinishedUnixNano = 0
	rec.Revision = index
	for _, e := range rec.Vms {
		if e.Step == statev1.DRStep_DR_STEP_UNSPECIFIED {
			e.Step = statev1.DRStep_DR_STEP_PENDING
		}
		e.StepUnixNano = now
	}
	switch in.Kind {
	case statev1.DRRunKind_DR_RUN_KIND_FAILOVER:
		if from.FencedBy != "" {
			if r, ok := s.dr.runs[from.FencedBy]; ok && r.State == statev1.DRRunState_DR_RUN_STATE_RUNNING {
				return nil, errorf(KindFailedPrecondition, "center %s is being failed over already (%s): wait for it (yunchi dr show %s)", from.Name, r.Id, r.Id)
			}
		}
		// Fence: the center is lost until failback says otherwise.
		fc := proto.Clone(from).(*statev1.CenterRecord)
		if fc.FencedBy == "" {
			fc.FencedUnixNano = now
		}
		fc.FencedBy = rec.Id
		fc.Revision, fc.UpdatedUnixNano = index, now
		s.dr.centers[fc.Name] = fc
		s.touchedAll()
		s.reviseCenterHosts(fc.Name, index)
	case statev1.DRRunKind_DR_RUN_KIND_FAILBACK:
		if to.FencedBy != "" {
			tc := proto.Clone(to).(*statev1.CenterRecord)
			tc.FencedBy, tc.FencedUnixNano = "", 0
			tc.Revision, tc.UpdatedUnixNano = index, now
			s.dr.centers[tc.Name] = tc
			s.touchedAll()
			s.reviseCenterHosts(tc.Name, index)
		}
	case statev1.DRRunKind_DR_RUN_KIND_DRILL:
		rec.DrillProject = DrillProjectOf(rec.Id)
		if s.projectDept(rec.DrillProject) == "" {
			s.projects[rec.DrillProject] = &statev1.ProjectRecord{
				Name: rec.DrillProject, Department: DefaultDepartment, CreatedUnixNano: now,
				Description: fmt.Sprintf("clones of drill %s (removed with them)", rec.Id),
			}
		}
	}
	s.dr.runs[rec.Id] = rec
	return proto.Clone(rec).(*statev1.DRRunRecord), nil
}

// reviseCenterHosts marks every host of a center changed at index, so that
// their assignment streams are sent again.
func (s *Store) reviseCenterHosts(center string, index uint64) {
	for id, h := range s.hosts {
		if h.Center == center {
			s.hostRev[id] = index
			s.touched(id)
		}
	}
}

// runForUpdate returns a copy of a running run to change. Callers hold mu.
func (s *Store) runForUpdate(id string) (*statev1.DRRunRecord, error) {
	r, ok := s.dr.runs[id]
	if !ok {
		return nil, errorf(KindNotFound, "dr run %q not found (see `yunchi dr runs`)", id)
	}
	if r.State != statev1.DRRunState_DR_RUN_STATE_RUNNING {
		return nil, errorf(KindFailedPrecondition, "dr run %s has ended (%s)", id, RunStateName(r.State))
	}
	return proto.Clone(r).(*statev1.DRRunRecord), nil
}

// setEntry replaces the entry of e.VmId in r. It returns false if the VM
// is not in the run.
func setEntry(r *statev1.DRRunRecord, e *statev1.DRRunVM) bool {
	for i, old := range r.Vms {
		if old.VmId == e.VmId {
			r.Vms[i] = proto.Clone(e).(*statev1.DRRunVM)
			return true
		}
	}
	return false
}

func (s *Store) applyUpdateDRRun(index uint64, now int64, c *statev1.UpdateDRRun) (*statev1.DRRunRecord, error) {
	r, err := s.runForUpdate(c.GetId())
	if err != nil {
		return nil, err
	}
	for _, e := range c.GetVms() {
		if !setEntry(r, e) {
			return nil, errorf(KindInvalid, "vm %s is not in dr run %s", e.GetVmId(), r.Id)
		}
	}
	if c.Message != "" {
		r.Message = c.Message
	}
	switch c.State {
	case statev1.DRRunState_DR_RUN_STATE_UNSPECIFIED, statev1.DRRunState_DR_RUN_STATE_RUNNING:
	case statev1.DRRunState_DR_RUN_STATE_SUCCEEDED, statev1.DRRunState_DR_RUN_STATE_PARTIAL, statev1.DRRunState_DR_RUN_STATE_FAILED:
		r.State = c.State
		r.FinishedUnixNano = now
		r.ProductionUnchanged, r.ProductionCheck = c.ProductionUnchanged, c.ProductionCheck
		if r.Kind == statev1.DRRunKind_DR_RUN_KIND_DRILL && r.DrillProject != "" && s.projectUse[r.DrillProject] == 0 {
			if p, ok := s.projects[r.DrillProject]; ok && s.checkProjectImages(p.Name) == nil && s.checkProjectVolumes(p.Name) == nil {
				delete(s.projects, p.Name)
			}
		}
	default:
		return nil, errorf(KindInvalid, "dr run %s: unknown state %d", r.Id, c.State)
	}
	r.Revision = index
	s.dr.runs[r.Id] = r
	return proto.Clone(r).(*statev1.DRRunRecord), nil
}

// applyRelocateVMs moves VMs of a run to the hosts the leader chose, with
// the checks of a create: the host is ready (and not fenced), dedicated to
// no other project, in the VM's center now, satisfies its constraints, has
// room under its ratios, and keeps the VM's placement group's
// anti-affinity and max-per-host (affinity is not checked while a group
// moves member by member).
func (s *Store) applyRelocateVMs(index uint64, now int64, c *statev1.RelocateVMs) (*statev1.DRRunRecord, error) {
	r, err := s.runForUpdate(c.GetRunId())
	if err != nil {
		return nil, err
	}
	if r.Kind == statev1.DRRunKind_DR_RUN_KIND_DRILL {
		return nil, errorf(KindInvalid, "dr run %s is a drill: it places clones, it moves no VM", r.Id)
	}
	rels := c.GetRelocations()
	if len(rels) == 0 || len(rels) > MaxBatch {
		return nil, errorf(KindInvalid, "relocate: give 1 to %d VMs, not %d", MaxBatch, len(rels))
	}
	extra := map[string]Resources{}
	moved := map[string]bool{}
	for _, rel := range rels {
		vm, ok := s.vms[rel.GetVmId()]
		switch {
		case !ok:
			return nil, errorf(KindNotFound, "vm %s not found: it was deleted meanwhile", rel.GetVmId())
		case moved[vm.Id]:
			return nil, errorf(KindInvalid, "vm %q is twice in one relocation", vm.Name)
		case vm.Desired == statev1.PowerState_POWER_STATE_DELETED:
			return nil, errorf(KindFailedPrecondition, "vm %q is being deleted", vm.Name)
		case rel.GetEntry().GetVmId() != vm.Id:
			return nil, errorf(KindInvalid, "relocation of vm %q carries the run entry of another VM", vm.Name)
		case rel.HostId == vm.HostId:
			return nil, errorf(KindInvalid, "vm %q is on host %s already", vm.Name, vm.HostId)
		}
		moved[vm.Id] = true
		i := slices.IndexFunc(r.Vms, func(e *statev1.DRRunVM) bool { return e.VmId == vm.Id })
		if i < 0 {
			return nil, errorf(KindInvalid, "vm %q is not in dr run %s", vm.Name, r.Id)
		}
		// A run moves a VM once, from the step that moves it: a decision
		// made on a view older than that move (a new leader not caught up)
		// must not move it again.
		if st := r.Vms[i].Step; st != statev1.DRStep_DR_STEP_PENDING && st != statev1.DRStep_DR_STEP_FINAL_COPY {
			return nil, errorf(KindConflict, "vm %q was moved by dr run %s already (it is at step %s)", vm.Name, r.Id, StepName(st))
		}
		if s.vmHasVolumes(vm) {
			return nil, errorf(KindFailedPrecondition, "vm %q has volumes attached: restore points hold its root disk only", vm.Name)
		}
		h, ok := s.hosts[rel.HostId]
		if !ok {
			return nil, errorf(KindConflict, "host %q chosen for vm %q is not registered", rel.HostId, vm.Name)
		}
		sh, _ := s.hostFacts(h)
		if sh.State != statev1.HostState_HOST_STATE_READY {
			return nil, errorf(KindConflict, "host %q chosen for vm %q is not ready (%s)", h.Id, vm.Name, stateName(sh.State))
		}
		if h.Owner != "" && h.Owner != vm.Project {
			return nil, errorf(KindConflict, "host %q chosen for vm %q is dedicated to project %q", h.Id, vm.Name, h.Owner)
		}
		cons, err := ConstraintsOf(vm)
		if err != nil {
			return nil, errorf(KindInvalid, "vm %q: %v", vm.Name, err)
		}
		for _, con := range cons {
			if !MatchConstraint(con, &sh) {
				return nil, errorf(KindConflict, "host %q chosen for vm %q no longer satisfies %s", h.Id, vm.Name, FormatConstraint(con))
			}
		}
		need := vmResources(vm)
		if !sh.Allocated.Add(extra[h.Id]).Add(need).Fits(sh.Allocatable()) {
			return nil, errorf(KindConflict, "host %q no longer has room for vm %q", h.Id, vm.Name)
		}
		if vm.Group != "" {
			if g, ok := s.groups[nameKey(vm.Project, vm.Group)]; ok {
				if err := s.checkMoveGroup(g, h, vm); err != nil {
					return nil, err
				}
			}
		}
		if rs := rel.GetRestore(); rs.GetFromMirror() {
			if vm.GetMirror().GetHostId() != rel.HostId {
				return nil, errorf(KindConflict, "vm %q: its mirror is not on host %q", vm.Name, rel.HostId)
			}
		} else if rs != nil {
			probe := proto.Clone(vm).(*statev1.VMRecord)
			probe.Restore, probe.Image = rs, nil
			if err := s.checkVMRestore(probe); err != nil {
				return nil, err
			}
		}
		extra[h.Id] = extra[h.Id].Add(need)
	}
	for _, rel := range rels {
		old := s.vms[rel.VmId]
		h := s.hosts[rel.HostId]
		next := proto.Clone(old).(*statev1.VMRecord)
		s.removeVM(old, index)
		// Its mirror is its disk now (or belongs to the old host's copy):
		// the leader chooses a mirror again for where it runs now.
		next.Mirror = nil
		next.HostId, next.Center = h.Id, h.Center
		next.Phase = statev1.VMPhase_VM_PHASE_PENDING
		next.Message = fmt.Sprintf("%s %s: moved from %s", RunKindName(r.Kind), r.Id, old.HostId)
		if rel.Restore != nil {
			next.Restore = proto.Clone(rel.Restore).(*statev1.RestoreSource)
			next.RestoredFrom = cmp.Or(rel.Restore.PointId, "mirror on "+h.Id)
			next.Image = nil
		}
		if rel.Start {
			next.Desired = statev1.PowerState_POWER_STATE_RUNNING
		}
		next.HomeCenter = rel.HomeCenter
		next.UpdatedUnixNano = now
		next.Revision = index
		s.addVM(next)
		e := proto.Clone(rel.Entry).(*statev1.DRRunVM)
		e.HostId = h.Id
		e.StepUnixNano = now
		setEntry(r, e)
	}
	r.Revision = index
	s.dr.runs[r.Id] = r
	return proto.Clone(r).(*statev1.DRRunRecord), nil
}

// vmHasVolumes says whether volumes are attached to (or made for) vm.
func (s *Store) vmHasVolumes(vm *statev1.VMRecord) bool {
	for id := range s.hostVolumes[vm.HostId] {
		if v := s.volumes[id]; v.VmId == vm.Id || v.AttachedVmId == vm.Id {
			return true
		}
	}
	return false
}

// checkMoveGroup is checkGroup for a VM moving to h: the VM itself and
// members on hosts of fenced centers do not count, and affinity is not
// enforced (a group moves member by member).
func (s *Store) checkMoveGroup(g *statev1.PlacementGroupRecord, h *statev1.HostRecord, vm *statev1.VMRecord) error {
	count := map[string]int{}
	for id, n := range s.groupHosts[nameKey(g.Project, g.Name)] {
		if id == vm.HostId {
			n-- // the VM itself, leaving
		}
		if mh, ok := s.hosts[id]; ok && s.centerFenced(mh.Center) {
			continue
		}
		if n > 0 {
			count[id] = n
		}
	}
	if g.MaxPerHost > 0 && count[h.Id] >= int(g.MaxPerHost) {
		return errorf(KindConflict, "host %q already has %d members of group %q (max per host %d): vm %q cannot join them", h.Id, count[h.Id], g.Name, g.MaxPerHost, vm.Name)
	}
	if g.Soft || g.Policy != statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY {
		return nil
	}
	dom := domainOf(h, g.Level)
	for id, n := range count {
		if mh, ok := s.hosts[id]; ok && n > 0 && domainOf(mh, g.Level) == dom {
			return errorf(KindConflict, "%s of host %q already has a member of anti-affinity group %q: vm %q would break it", levelName(g.Level), h.Id, g.Name, vm.Name)
		}
	}
	return nil
}

// MinDrillEvery is the shortest drill schedule.
const MinDrillEvery = 3600

func (s *Store) applySetDrillSchedule(index uint64, now int64, c *statev1.SetDrillSchedule) (*statev1.DrillScheduleRecord, error) {
	in := c.GetSchedule()
	switch {
	case in == nil:
		return nil, errorf(KindInvalid, "set drill schedule: none given")
	case in.EverySeconds < MinDrillEvery:
		return nil, errorf(KindInvalid, "drill every %ds: at least every hour (%ds)", in.EverySeconds, MinDrillEvery)
	}
	if _, ok := s.dr.centers[in.Center]; !ok {
		return nil, errorf(KindNotFound, "center %q not found (see `yunchi topology`)", in.Center)
	}
	if in.ToCenter != "" {
		if _, ok := s.dr.centers[in.ToCenter]; !ok {
			return nil, errorf(KindNotFound, "center %q not found (see `yunchi topology`)", in.ToCenter)
		}
	}
	if in.Project != "" && s.projectDept(in.Project) == "" {
		return nil, errorf(KindNotFound, "project %q not found", in.Project)
	}
	if want := DrillScheduleID(in.Center, in.Project); in.Id != want {
		return nil, errorf(KindInvalid, "drill schedule id %q: want %q", in.Id, want)
	}
	rec := proto.Clone(in).(*statev1.DrillScheduleRecord)
	if old, ok := s.dr.drills[in.Id]; ok {
		rec.CreatedUnixNano = old.CreatedUnixNano
	} else {
		rec.CreatedUnixNano = now
	}
	rec.Revision = index
	s.dr.drills[rec.Id] = rec
	return proto.Clone(rec).(*statev1.DrillScheduleRecord), nil
}

// DrillScheduleID is the id of the schedule drilling a center (and
// project).
func DrillScheduleID(center, project string) string {
	if project == "" {
		return center
	}
	return center + "/" + project
}

// Queries.

// DRRun returns a run.
func (s *Store) DRRun(id string) (*statev1.DRRunRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.dr.runs[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(r).(*statev1.DRRunRecord), true
}

// DRRuns returns every run, newest first (shared records: read only).
func (s *Store) DRRuns() []*statev1.DRRunRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*statev1.DRRunRecord, 0, len(s.dr.runs))
	for _, r := range s.dr.runs {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].StartedUnixNano != out[j].StartedUnixNano {
			return out[i].StartedUnixNano > out[j].StartedUnixNano
		}
		return out[i].Id < out[j].Id
	})
	return out
}

// RunningDRRuns returns the runs not ended, oldest first (clones).
func (s *Store) RunningDRRuns() []*statev1.DRRunRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*statev1.DRRunRecord
	for _, r := range s.dr.runs {
		if r.State == statev1.DRRunState_DR_RUN_STATE_RUNNING {
			out = append(out, proto.Clone(r).(*statev1.DRRunRecord))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartedUnixNano < out[j].StartedUnixNano })
	return out
}

// DrillSchedules returns the drill schedules by id (shared: read only).
func (s *Store) DrillSchedules() []*statev1.DrillScheduleRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*statev1.DrillScheduleRecord, 0, len(s.dr.drills))
	for _, d := range s.dr.drills {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// VMsAwayFrom returns the VMs a failover moved away from a center (their
// home), by project and name (clones).
func (s *Store) VMsAwayFrom(center string) []*statev1.VMRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*statev1.VMRecord
	for _, vm := range s.vms {
		if vm.HomeCenter == center && vm.Desired != statev1.PowerState_POWER_STATE_DELETED {
			out = append(out, proto.Clone(vm).(*statev1.VMRecord))
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return nameKey(out[i].Project, out[i].Name) < nameKey(out[j].Project, out[j].Name)
	})
	return out
}

// VMsOfRun returns the VMs (clones) a drill placed.
func (s *Store) VMsOfRun(runID string) []*statev1.VMRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*statev1.VMRecord
	for _, vm := range s.vms {
		if vm.DrRun == runID {
			out = append(out, proto.Clone(vm).(*statev1.VMRecord))
		}
	}
	return out
}

// FencedCenters names the centers a failover declared lost.
func (s *Store) FencedCenters() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for _, c := range s.dr.centers {
		if c.FencedBy != "" {
			out = append(out, c.Name)
		}
	}
	sort.Strings(out)
	return out
}

// Synchronous mirrors (platinum). The leader chooses the host that keeps
// a VM's mirror (SetMirror); that host reports where it serves it
// (ReportVMStatus.mirror_exports), the VM's host the mirror's phase
// (VMStatus.mirror_phase). A failover trusts a mirror only if its phase
// was "mirroring" at the last report.

// Mirror phases as hosts report them.
const (
	MirrorCopying   = "copying"
	MirrorMirroring = "mirroring"
)

// addMirrorIndex and dropMirrorIndex keep mirrorOn (host -> VM ids whose
// mirror it keeps). Callers hold mu.
func (s *Store) addMirrorIndex(vm *statev1.VMRecord) {
	if h := vm.GetMirror().GetHostId(); h != "" {
		addToSet(s.dr.mirrorOn, h, vm.Id)
		s.hostRev[h] = max(s.hostRev[h], vm.Revision)
	}
}

func (s *Store) dropMirrorIndex(vm *statev1.VMRecord, index uint64) {
	if h := vm.GetMirror().GetHostId(); h != "" {
		removeFromSet(s.dr.mirrorOn, h, vm.Id)
		if index > 0 {
			s.hostRev[h] = index
		}
	}
}

func (s *Store) applySetMirror(index uint64, now int64, c *statev1.SetMirror) (*statev1.VMRecord, error) {
	vm, ok := s.vms[c.GetVmId()]
	if !ok {
		return nil, errorf(KindNotFound, "vm %s not found", c.GetVmId())
	}
	if c.HostId == vm.GetMirror().GetHostId() {
		return proto.Clone(vm).(*statev1.VMRecord), nil
	}
	var h *statev1.HostRecord
	if c.HostId != "" {
		if h, ok = s.hosts[c.HostId]; !ok {
			return nil, errorf(KindNotFound, "host %q not found", c.HostId)
		}
		hv, _ := s.hosts[vm.HostId]
		switch {
		case c.HostId == vm.HostId || hv != nil && hv.Center == h.Center:
			return nil, errorf(KindInvalid, "vm %q: a mirror must be kept in another center than the VM's", vm.Name)
		case s.centerFenced(h.Center):
			return nil, errorf(KindConflict, "host %q is in fenced center %s", h.Id, h.Center)
		}
	}
	vm, _ = s.writableVM(vm.Id)
	s.dropMirrorIndex(vm, index)
	if h == nil {
		vm.Mirror = nil
	} else {
		vm.Mirror = &statev1.MirrorState{HostId: h.Id, Center: h.Center, ExportName: vm.Id, PhaseUnixNano: now}
	}
	vm.UpdatedUnixNano = now
	s.revise(vm, index)
	s.addMirrorIndex(vm)
	return proto.Clone(vm).(*statev1.VMRecord), nil
}

// applyMirrorStatus records what a VM's host says of its mirror. Callers
// hold mu and own vm.
func applyMirrorStatus(vm *statev1.VMRecord, st *statev1.VMStatus, now int64) {
	m := vm.Mirror
	if m == nil {
		return
	}
	if st.MirrorPhase != m.Phase {
		m.Phase, m.PhaseUnixNano = st.MirrorPhase, now
	}
	if st.MirrorPhase == MirrorMirroring {
		m.MirroringUnixNano = now
	}
	m.Error = st.MirrorError
}

// applyMirrorExports records where a host serves the mirrors it keeps.
// Callers hold mu.
func (s *Store) applyMirrorExports(index uint64, hostID string, reps []*statev1.MirrorExportReport) {
	for _, r := range reps {
		vm, ok := s.vms[r.GetVmId()]
		if !ok || vm.GetMirror().GetHostId() != hostID {
			continue // news of a mirror this host no longer keeps
		}
		if vm.Mirror.Address == r.Address && vm.Mirror.Error == r.Error {
			continue
		}
		vm, _ = s.writableVM(vm.Id)
		vm.Mirror.Address = r.Address
		if r.Error != "" {
			vm.Mirror.Error = r.Error
		}
		s.revise(vm, index) // the VM's host gets the address in its assignment
	}
}

// MirrorsOn returns the VMs whose mirror host keeps (clones).
func (s *Store) MirrorsOn(hostID string) []*statev1.VMRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*statev1.VMRecord
	for id := range s.dr.mirrorOn[hostID] {
		if vm, ok := s.vms[id]; ok {
			out = append(out, proto.Clone(vm).(*statev1.VMRecord))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// MirroredVMIDs lists the VMs that have a mirror host.
func (s *Store) MirroredVMIDs() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for _, ids := range s.dr.mirrorOn {
		for id := range ids {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// BackupJobFor returns the backup job of a VM to a center (running or
// failed), by the store's index.
func (s *Store) BackupJobFor(vmID, center string) (*statev1.BackupJobRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.dr.jobByKey[jobKey(vmID, center)]
	if !ok {
		return nil, false
	}
	return s.dr.jobs[id], true // replaced, never changed: shared
}

// RunningRunOf returns the running failover or failback a VM is in.
func (s *Store) RunningRunOf(vmID string) (*statev1.DRRunRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.runningRunOf(vmID, "")
	if !ok {
		return nil, false
	}
	return proto.Clone(r).(*statev1.DRRunRecord), true
}
