package api

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/leader"
	"github.com/yunchi/yunchi/controller/placement"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// RecoveryView is the state the failover, failback and drill handlers read
// (*state.Store).
type RecoveryView interface {
	leader.RecoveryView
	RunningRunOf(vmID string) (*statev1.DRRunRecord, bool)
	FencedCenters() []string
	Hosts() []state.HostView
}

func (s *Server) recoveryView() RecoveryView { return s.store.(RecoveryView) }

// deptCaller says whether the caller has a department role (sees only
// its department's projects).
func deptCaller(ctx context.Context) bool {
	p, ok := auth.FromContext(ctx)
	return ok && auth.DepartmentRole(p.Role)
}

func callerName(ctx context.Context) string {
	if p, ok := auth.FromContext(ctx); ok {
		return p.Name
	}
	return ""
}

// Failover declares a center lost, fences it and brings its protected VMs
// up in a DR center (the leader's recovery duty drives the run).
func (s *Server) Failover(ctx context.Context, req *yunchiv1.FailoverRequest) (*yunchiv1.DRRun, error) {
	if err := checkName("center", req.FromCenter); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "name the lost center (--from): %s", status.Convert(err).Message())
	}
	if req.ToCenter != "" {
		if err := checkName("center", req.ToCenter); err != nil {
			return nil, err
		}
	}
	v := s.recoveryView()
	if c, ok := v.Center(req.FromCenter); ok && c.FencedBy != "" && !req.DryRun {
		if r, ok := v.DRRun(c.FencedBy); ok && r.State == statev1.DRRunState_DR_RUN_STATE_RUNNING {
			return nil, status.Errorf(codes.FailedPrecondition, "center %s is being failed over already: see `yunchi dr show %s`", c.Name, r.Id)
		}
	}
	run, unprotected, err := leader.PlanFailover(v, statev1.DRRunKind_DR_RUN_KIND_FAILOVER, req.FromCenter, req.ToCenter, "", time.Now())
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	if unprotected > 0 {
		run.Message = fmt.Sprintf("%d VMs in %s have no protection policy: they are not brought up", unprotected, req.FromCenter)
	}
	if len(run.Vms) == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "no protected VM runs in center %s: nothing to fail over (%s)", req.FromCenter, cmp.Or(run.Message, "see `yunchi dr status`"))
	}
	if req.DryRun {
		return s.planOut(run, true), nil
	}
	run.RequestedBy = callerName(ctx)
	return s.startRun(ctx, run)
}

// Failback returns the VMs failed over from a center, once it is back.
func (s *Server) Failback(ctx context.Context, req *yunchiv1.FailbackRequest) (*yunchiv1.DRRun, error) {
	if err := checkName("center", req.ToCenter); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "name the home center (--to): %s", status.Convert(err).Message())
	}
	v := s.recoveryView()
	ready := 0
	for _, h := range v.Hosts() {
		if h.Host.Center == req.ToCenter && h.Host.State == statev1.HostState_HOST_STATE_READY {
			ready++
		}
	}
	if ready == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "center %s has no ready host: bring it back first (its agents must be heartbeating)", req.ToCenter)
	}
	run, err := leader.PlanFailback(v, req.ToCenter)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	for _, e := range run.Vms {
		if r, ok := v.RunningRunOf(e.VmId); ok {
			return nil, status.Errorf(codes.FailedPrecondition, "vm %q is in %s %s, still running: wait for it (yunchi dr show %s)", e.Name, state.RunKindName(r.Kind), r.Id, r.Id)
		}
	}
	if req.DryRun {
		return s.planOut(run, false), nil
	}
	run.RequestedBy = callerName(ctx)
	return s.startRun(ctx, run)
}

// startRun records a planned run (a failover fences its center in the
// same entry) and answers with it as the caller may see it.
func (s *Server) startRun(ctx context.Context, run *statev1.DRRunRecord) (*yunchiv1.DRRun, error) {
	res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_StartDrRun{StartDrRun: &statev1.StartDRRun{Run: run}}})
	if err != nil {
		return nil, err
	}
	level := slog.LevelInfo
	if run.Kind == statev1.DRRunKind_DR_RUN_KIND_FAILOVER {
		level = slog.LevelWarn // a center was declared lost and fenced
	}
	s.log.Log(ctx, level, "dr run started", "run", run.Id, "kind", state.RunKindName(run.Kind), "from", run.FromCenter, "to", run.ToCenter,
		"vms", len(run.Vms), "by", run.RequestedBy)
	return runToAPI(res.DRRun, s.entryVisible(ctx)), nil
}

// ParseEvery reads a drill interval: a Go duration or a number of days
// ("30d").
func ParseEvery(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 || n > 3660 {
			return 0, fmt.Errorf("every %q: give a number of days from 1 to 3660 (\"30d\") or a duration (\"12h\")", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("every %q: give a number of days (\"30d\") or a duration (\"12h\")", s)
	}
	return d, nil
}

// StartDrill restores clones of a center's protected VMs into an isolated
// project, measures them and removes them; with every, also on a schedule.
func (s *Server) StartDrill(ctx context.Context, req *yunchiv1.DrillRequest) (*yunchiv1.DRRun, error) {
	if err := checkName("center", req.Center); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "name the center to drill (--center): %s", status.Convert(err).Message())
	}
	if req.ToCenter != "" {
		if err := checkName("center", req.ToCenter); err != nil {
			return nil, err
		}
	}
	if req.Project != "" {
		if err := checkName("project", req.Project); err != nil {
			return nil, err
		}
	}
	var every time.Duration
	if req.Every != "" {
		d, err := ParseEvery(req.Every)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if d < state.MinDrillEvery*time.Second {
			return nil, status.Errorf(codes.InvalidArgument, "every %s: drills run at most hourly", req.Every)
		}
		every = d
	}
	v := s.recoveryView()
	now := time.Now()
	run, _, err := leader.PlanFailover(v, statev1.DRRunKind_DR_RUN_KIND_DRILL, req.Center, req.ToCenter, req.Project, now)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	// A department admin drills only what it sees (its project).
	run.Vms = slices.DeleteFunc(run.Vms, func(e *statev1.DRRunVM) bool { return !auth.Sees(ctx, e.Project) })
	if len(run.Vms) == 0 {
		scope := "center " + req.Center
		if req.Project != "" {
			scope += " (project " + req.Project + ")"
		}
		return nil, status.Errorf(codes.FailedPrecondition, "no protected VM in %s: nothing to drill (protect VMs with `yunchi vm protect`)", scope)
	}
	if req.DryRun {
		return s.planOut(run, true), nil
	}
	run.RequestedBy = callerName(ctx)
	if every > 0 {
		sched := &statev1.DrillScheduleRecord{
			Id: state.DrillScheduleID(req.Center, req.Project), Center: req.Center, ToCenter: req.ToCenter, Project: req.Project,
			EverySeconds: int64(every / time.Second), NextUnixNano: now.Add(every).UnixNano(), CreatedBy: run.RequestedBy,
		}
		if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_SetDrillSchedule{SetDrillSchedule: &statev1.SetDrillSchedule{Schedule: sched}}}); err != nil {
			return nil, err
		}
		run.ScheduleId = sched.Id
	}
	return s.startRun(ctx, run)
}

// planOut is a dry run's answer: the plan, each VM checked against the
// scheduler alone (not with the others: a full center may fit fewer),
// with what it expects: the policy's RTO objective and the point's age.
func (s *Server) planOut(run *statev1.DRRunRecord, place bool) *yunchiv1.DRRun {
	v := s.recoveryView()
	out := runToAPI(run, nil)
	out.State = "plan"
	for i, e := range run.Vms {
		ov := out.Vms[i]
		if pol, ok := v.(DRView).Policy(e.Policy); ok {
			ov.ExpectedRtoSeconds = pol.RtoSeconds
		}
		if e.DataLossMillis >= 0 {
			ov.ExpectedDataLossSeconds = e.DataLossMillis / 1000
		}
		if !place || e.Step != statev1.DRStep_DR_STEP_PENDING || e.Mirror {
			continue
		}
		vm, ok := v.VMByID(e.VmId)
		if !ok {
			continue
		}
		sp, err := placement.SpecOf(vm, s.DefaultStrategy)
		if err != nil {
			continue
		}
		sp.Center = run.ToCenter
		if run.Kind == statev1.DRRunKind_DR_RUN_KIND_DRILL {
			sp = placement.Spec{Project: vm.Project, Names: []string{e.CloneName}, Center: run.ToCenter, Strategy: scheduler.Binpack,
				Resources: scheduler.Resources{VCPUs: int64(vm.Vcpus), MemoryBytes: vm.MemoryBytes, DiskBytes: vm.DiskBytes}}
		}
		ds, err := s.placer.Decide(sp)
		if err != nil {
			ov.Step, ov.Reason = "skipped", "no room: "+oneLine(err.Error())
			continue
		}
		ov.Host, ov.Center = ds[0].HostID, ds[0].HostCenter
	}
	return out
}

// entryVisible filters a run's VMs to what the caller sees.
func (s *Server) entryVisible(ctx context.Context) func(e *statev1.DRRunVM) bool {
	return func(e *statev1.DRRunVM) bool { return auth.Sees(ctx, e.Project) }
}

func (s *Server) GetDRRun(ctx context.Context, req *yunchiv1.GetDRRunRequest) (*yunchiv1.DRRun, error) {
	if req.Id == "" {
		return nil, status.Error(codes.InvalidArgument, "give the run's id (see `yunchi dr runs`)")
	}
	r, ok := s.recoveryView().DRRun(req.Id)
	if ok {
		out := runToAPI(r, s.entryVisible(ctx))
		if len(out.Vms) > 0 || len(r.Vms) == 0 || !deptCaller(ctx) {
			return out, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "dr run %q not found (see `yunchi dr runs`)", req.Id)
}

func (s *Server) ListDRRuns(ctx context.Context, req *yunchiv1.ListDRRunsRequest) (*yunchiv1.ListDRRunsResponse, error) {
	var kind statev1.DRRunKind
	switch req.Kind {
	case "":
	case "failover":
		kind = statev1.DRRunKind_DR_RUN_KIND_FAILOVER
	case "failback":
		kind = statev1.DRRunKind_DR_RUN_KIND_FAILBACK
	case "drill":
		kind = statev1.DRRunKind_DR_RUN_KIND_DRILL
	default:
		return nil, status.Errorf(codes.InvalidArgument, "kind %q: want failover, failback or drill", req.Kind)
	}
	if req.Project != "" {
		if err := checkName("project", req.Project); err != nil {
			return nil, err
		}
	}
	vis := s.entryVisible(ctx)
	out := &yunchiv1.ListDRRunsResponse{}
	for _, r := range s.recoveryView().DRRuns() {
		if kind != 0 && r.Kind != kind {
			continue
		}
		o := runToAPI(r, func(e *statev1.DRRunVM) bool { return vis(e) && (req.Project == "" || e.Project == req.Project) })
		if len(o.Vms) == 0 && (req.Project != "" || !!deptCaller(ctx) && len(r.Vms) > 0) {
			continue
		}
		o.Vms = nil
		out.Runs = append(out.Runs, o)
	}
	return out, nil
}

func (s *Server) ListDrillSchedules(ctx context.Context, _ *yunchiv1.ListDrillSchedulesRequest) (*yunchiv1.ListDrillSchedulesResponse, error) {
	out := &yunchiv1.ListDrillSchedulesResponse{}
	for _, d := range s.recoveryView().DrillSchedules() {
		out.Schedules = append(out.Schedules, &yunchiv1.DrillSchedule{
			Id: d.Id, Center: d.Center, ToCenter: d.ToCenter, Project: d.Project, EverySeconds: d.EverySeconds,
			NextAt: ts(d.NextUnixNano), CreatedBy: d.CreatedBy,
		})
	}
	return out, nil
}

func (s *Server) DeleteDrillSchedule(ctx context.Context, req *yunchiv1.DeleteDrillScheduleRequest) (*yunchiv1.DeleteDrillScheduleResponse, error) {
	if req.Id == "" {
		return nil, status.Error(codes.InvalidArgument, "give the schedule's id (see `yunchi dr drill schedules`)")
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_DeleteDrillSchedule{DeleteDrillSchedule: &statev1.DeleteDrillSchedule{Id: req.Id}}}); err != nil {
		return nil, err
	}
	return &yunchiv1.DeleteDrillScheduleResponse{}, nil
}

// runToAPI converts a run, keeping the VMs keep says (nil: all), with its
// summary figures over them.
func runToAPI(r *statev1.DRRunRecord, keep func(*statev1.DRRunVM) bool) *yunchiv1.DRRun {
	out := &yunchiv1.DRRun{
		Id: r.Id, Kind: state.RunKindName(r.Kind), State: state.RunStateName(r.State),
		FromCenter: r.FromCenter, ToCenter: r.ToCenter, Project: r.Project, RequestedBy: r.RequestedBy,
		StartedAt: ts(r.StartedUnixNano), FinishedAt: ts(r.FinishedUnixNano), Message: r.Message,
		DrillProject: r.DrillProject, ProductionUnchanged: r.ProductionUnchanged, ProductionCheck: r.ProductionCheck,
		Schedule: r.ScheduleId,
	}
	var rtos []int64
	var last int64
	for _, e := range r.Vms {
		if keep != nil && !keep(e) {
			continue
		}
		ov := &yunchiv1.DRRunVM{
			Vm: e.Name, Project: e.Project, Policy: e.Policy, Priority: e.Priority,
			Point: e.PointId, PointCenter: e.PointCenter, PointTakenAt: ts(e.PointTakenUnixNano),
			Step: state.StepName(e.Step), Reason: e.Reason, Host: e.HostId, Clone: e.CloneName,
			RtoMillis: e.RtoMillis, DataLossMillis: e.DataLossMillis, DowntimeMillis: e.DowntimeMillis,
			FromHost: e.FromHost, FromCenter: e.FromCenter, Mirror: e.Mirror,
		}
		if e.HostId != "" {
			ov.Center = r.ToCenter
		}
		switch e.Step {
		case statev1.DRStep_DR_STEP_RUNNING, statev1.DRStep_DR_STEP_DONE:
			out.VmsDone++
			rtos = append(rtos, e.RtoMillis)
			last = max(last, e.RunningUnixNano)
			out.MaxDataLossMillis = max(out.MaxDataLossMillis, e.DataLossMillis)
		case statev1.DRStep_DR_STEP_FAILED:
			out.VmsFailed++
		case statev1.DRStep_DR_STEP_SKIPPED:
			out.VmsSkipped++
		}
		out.Vms = append(out.Vms, ov)
	}
	if len(rtos) > 0 {
		slices.Sort(rtos)
		out.RtoP50Millis = rtos[(len(rtos)-1)/2]
		out.RtoP99Millis = rtos[(len(rtos)*99+99)/100-1]
		out.RtoMaxMillis = rtos[len(rtos)-1]
	}
	switch {
	case r.StartedUnixNano == 0:
	case r.State == statev1.DRRunState_DR_RUN_STATE_RUNNING:
		out.ElapsedMillis = time.Since(time.Unix(0, r.StartedUnixNano)).Milliseconds()
	case last > 0:
		out.ElapsedMillis = (last - r.StartedUnixNano) / int64(time.Millisecond)
	default:
		out.ElapsedMillis = (r.FinishedUnixNano - r.StartedUnixNano) / int64(time.Millisecond)
	}
	return out
}

// drillSummaries is the newest successful drill of each project with
// protected VMs (DRStatus.drills).
func (s *Server) drillSummaries(ctx context.Context, project string, protectedProjects []string) []*yunchiv1.ProjectDrill {
	newest := map[string]*statev1.DRRunRecord{}
	for _, r := range s.recoveryView().DRRuns() { // newest first
		if r.Kind != statev1.DRRunKind_DR_RUN_KIND_DRILL || r.State != statev1.DRRunState_DR_RUN_STATE_SUCCEEDED && r.State != statev1.DRRunState_DR_RUN_STATE_PARTIAL {
			continue
		}
		for _, e := range r.Vms {
			if e.Step == statev1.DRStep_DR_STEP_DONE && newest[e.Project] == nil {
				newest[e.Project] = r
			}
		}
	}
	var out []*yunchiv1.ProjectDrill
	for _, p := range protectedProjects {
		if project != "" && p != project || !auth.Sees(ctx, p) {
			continue
		}
		d := &yunchiv1.ProjectDrill{Project: p}
		if r := newest[p]; r != nil {
			d.Run, d.FinishedAt, d.Center = r.Id, ts(r.FinishedUnixNano), r.FromCenter
		}
		out = append(out, d)
	}
	return out
}
