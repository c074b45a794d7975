package api

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/leader"
	"github.com/yunchi/yunchi/controller/placement"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// Two sites, three centers (TopologyService, ProtectionService,
// BackupService, AgentService.ReportBackup). The state's rules live in
// controller/state/dr.go, the schedule in controller/leader/backups.go,
// the repositories in controller/backup with their service in
// backuprepo.go.

// DRView is what these handlers read of the state (*state.Store).
type DRView interface {
	DeclaredCenters() []*statev1.CenterRecord
	Center(name string) (*statev1.CenterRecord, bool)
	Policy(name string) (*statev1.PolicyRecord, bool)
	Policies() []*statev1.PolicyRecord
	PolicyUse(name string) (vms, projects int)
	EffectivePolicy(vm *statev1.VMRecord) (name, source string)
	ProtectedVMs(project string) []state.Protected
	RestorePoint(id string) (*statev1.RestorePointRecord, bool)
	RestorePointsOf(vmID, center string) []*statev1.RestorePointRecord
	RestorePointsIn(center string) []*statev1.RestorePointRecord
	PointVMIDs(project, name string) []string
	BackupJob(id string) (*statev1.BackupJobRecord, bool)
	RunningJobsOnHost(hostID string) []*statev1.BackupJobRecord
	Members() []*statev1.MemberRecord
	MirrorsOn(hostID string) []*statev1.VMRecord
}

// Repositories are the backup repositories this controller keeps
// (BackupRepoServer).
type Repositories interface {
	Verify(ctx context.Context, center string) (*yunchiv1.VerifyBackupsResponse, error)
	CollectGarbage(ctx context.Context, center string) (*yunchiv1.CollectGarbageResponse, error)
	Stats(center string) *yunchiv1.Repository
}

func (s *Server) drView() DRView { return s.store.(DRView) }

// noRepos answers BackupRepoService on a controller that keeps no
// repositories.
type noRepos struct {
	yunchiv1.UnimplementedBackupRepoServiceServer
}

// PutChunks reads the first message, so that the access check (which
// looks at it) refuses another host's stream before this one answers.
func (noRepos) PutChunks(st yunchiv1.BackupRepoService_PutChunksServer) error {
	if _, err := st.Recv(); err != nil {
		return err
	}
	return status.Error(codes.Unimplemented, "this controller keeps no backup repositories")
}

func (s *Server) repoService() yunchiv1.BackupRepoServiceServer {
	if s.RepoService != nil {
		return s.RepoService
	}
	return noRepos{}
}

func roleToAPI(r statev1.CenterRole) yunchiv1.CenterRole { return yunchiv1.CenterRole(r) }
func roleFromAPI(r yunchiv1.CenterRole) statev1.CenterRole {
	return statev1.CenterRole(r)
}

func (s *Server) repositoryAddress(c *statev1.CenterRecord) string {
	if c == nil || c.RepositoryMember == "" {
		return ""
	}
	if m, ok := s.store.Member(c.RepositoryMember); ok {
		return m.ApiAddress
	}
	return ""
}

// GetTopology shows sites and centers: declared ones, and those hosts name
// without a declaration; their hosts, capacity, voters and repository.
func (s *Server) GetTopology(ctx context.Context, req *yunchiv1.GetTopologyRequest) (*yunchiv1.Topology, error) {
	dv := s.drView()
	byName := map[string]*yunchiv1.Center{}
	var out yunchiv1.Topology
	for _, c := range dv.DeclaredCenters() {
		ac := &yunchiv1.Center{Name: c.Name, Site: c.Site, Role: roleToAPI(c.Role), Description: c.Description, Declared: true,
			CreatedAt: ts(c.CreatedUnixNano), Revision: c.Revision, Capacity: &yunchiv1.Resources{}, Allocated: &yunchiv1.Resources{}}
		if c.RepositoryMember != "" {
			ac.Repository = &yunchiv1.Repository{Member: c.RepositoryMember, Address: s.repositoryAddress(c)}
			for _, p := range dv.RestorePointsIn(c.Name) {
				ac.Repository.Points++
				ac.Repository.LogicalBytes += p.SizeBytes
			}
		}
		byName[c.Name] = ac
	}
	center := func(name, site string) *yunchiv1.Center {
		if c, ok := byName[name]; ok {
			return c
		}
		c := &yunchiv1.Center{Name: name, Site: site, Capacity: &yunchiv1.Resources{}, Allocated: &yunchiv1.Resources{}}
		byName[name] = c
		return c
	}
	for _, h := range s.store.Hosts() {
		c := center(h.Host.Center, h.Host.Site)
		c.Hosts = append(c.Hosts, h.Host.Id)
		if h.Facts.State == statev1.HostState_HOST_STATE_READY {
			c.ReadyHosts++
		}
		a := h.Facts.Allocatable()
		c.Capacity.Vcpus += a.VCPUs
		c.Capacity.MemoryBytes += a.MemoryBytes
		c.Capacity.DiskBytes += a.DiskBytes
		c.Allocated.Vcpus += h.Facts.Allocated.VCPUs
		c.Allocated.MemoryBytes += h.Facts.Allocated.MemoryBytes
		c.Allocated.DiskBytes += h.Facts.Allocated.DiskBytes
	}
	voters, err := s.voterCenters()
	if err != nil {
		return nil, err
	}
	for id, cn := range voters {
		c := center(cn, "")
		c.Voters = append(c.Voters, id)
	}
	for _, c := range byName {
		sort.Strings(c.Voters)
		if r := c.Repository; r != nil {
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			st, err := s.repositoryStats(cctx, c.Name)
			cancel()
			if err != nil {
				r.Error = oneLine(status.Convert(err).Message())
			} else {
				r.Chunks, r.StoredBytes, r.FreeBytes, r.Error = st.Chunks, st.StoredBytes, st.FreeBytes, st.Error
			}
		}
		out.Centers = append(out.Centers, c)
	}
	sort.Slice(out.Centers, func(i, j int) bool {
		a, b := out.Centers[i], out.Centers[j]
		if a.Site != b.Site {
			return a.Site < b.Site
		}
		return a.Name < b.Name
	})
	out.Warnings = append(quorumWarnings(voters), topologyWarnings(out.Centers)...)
	return &out, nil
}

// voterCenters maps each raft voter to its center ("" = unknown).
func (s *Server) voterCenters() (map[string]string, error) {
	ms, err := s.members()
	if err != nil {
		return nil, err
	}
	return votersOf(ms), nil
}

func votersOf(ms []*yunchiv1.Member) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		if m.Suffrage == "voter" {
			out[m.Id] = m.Center
		}
	}
	return out
}

// quorumWarnings names each center whose loss would leave the voters
// without a majority.
func quorumWarnings(voters map[string]string) []string {
	n := len(voters)
	per := map[string]int{}
	for _, c := range voters {
		per[c]++
	}
	names := make([]string, 0, len(per))
	for c := range per {
		names = append(names, c)
	}
	sort.Strings(names)
	var out []string
	for _, c := range names {
		if left := n - per[c]; left <= n/2 {
			where := "center " + c
			if c == "" {
				where = "the controllers with no center"
			}
			out = append(out, fmt.Sprintf("losing %s (%d of %d controllers) would cost the controllers their quorum (%d left, %d needed): place the voters so that no center holds half of them", where, per[c], n, left, n/2+1))
		}
	}
	return out
}

func topologyWarnings(cs []*yunchiv1.Center) []string {
	var out []string
	roles := map[yunchiv1.CenterRole]int{}
	for _, c := range cs {
		if !c.Declared {
			if len(c.Hosts) > 0 {
				out = append(out, fmt.Sprintf("center %q has %d host(s) but is not declared: `yunchi center set %s --site SITE --role ROLE`", c.Name, len(c.Hosts), c.Name))
			}
			continue
		}
		roles[c.Role]++
		if (c.Role == yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR || c.Role == yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR) && c.Repository == nil {
			out = append(out, fmt.Sprintf("DR center %q has no backup repository: nothing can be copied to it (--repository)", c.Name))
		}
		if r := c.Repository; r != nil && r.Error != "" {
			out = append(out, fmt.Sprintf("backup repository of center %q: %s", c.Name, r.Error))
		}
	}
	if roles[yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR] == 0 {
		out = append(out, "no same-city DR center is declared: gold and silver have nowhere to keep their same-city copies")
	}
	if roles[yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR] == 0 {
		out = append(out, "no remote DR center is declared: no policy can keep a copy at another site")
	}
	return out
}

// forwarded says whether this call came from another controller.
func forwarded(ctx context.Context) bool {
	return len(metadata.ValueFromIncomingContext(ctx, auth.ForwardedKey)) > 0
}

// repositoryStats measures a center's repository where it is kept.
func (s *Server) repositoryStats(ctx context.Context, center string) (*yunchiv1.Repository, error) {
	out, err := s.onRepository(ctx, center, yunchiv1.BackupService_GetRepository_FullMethodName, &yunchiv1.GetRepositoryRequest{Center: center}, func() (any, error) {
		return s.Repos.Stats(center), nil
	})
	if err != nil {
		return nil, err
	}
	return out.(*yunchiv1.Repository), nil
}

func (s *Server) GetRepository(ctx context.Context, req *yunchiv1.GetRepositoryRequest) (*yunchiv1.Repository, error) {
	if err := checkName("center", req.Center); err != nil {
		return nil, err
	}
	return s.repositoryStats(ctx, req.Center)
}

func centerToAPI(c *statev1.CenterRecord) *yunchiv1.Center {
	out := &yunchiv1.Center{Name: c.Name, Site: c.Site, Role: roleToAPI(c.Role), Description: c.Description, Declared: true,
		CreatedAt: ts(c.CreatedUnixNano), Revision: c.Revision}
	if c.RepositoryMember != "" {
		out.Repository = &yunchiv1.Repository{Member: c.RepositoryMember}
	}
	return out
}

func (s *Server) SetCenter(ctx context.Context, req *yunchiv1.SetCenterRequest) (*yunchiv1.Center, error) {
	if err := checkName("center", req.Name); err != nil {
		return nil, err
	}
	if err := checkName("site", req.Site); err != nil {
		return nil, err
	}
	if req.Role < yunchiv1.CenterRole_CENTER_ROLE_PRODUCTION || req.Role > yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR {
		return nil, invalid("center %q: give its role: production, same-city-dr or remote-dr", req.Name)
	}
	if len(req.Description) > 1024 {
		return nil, invalid("description is %d bytes long: at most 1024 are allowed", len(req.Description))
	}
	if req.RepositoryMember != "" {
		if err := checkName("repository controller", req.RepositoryMember); err != nil {
			return nil, err
		}
		m, ok := s.store.Member(req.RepositoryMember)
		if !ok {
			return nil, status.Errorf(codes.NotFound, "controller %q is not a member of the cluster (see `yunchi cluster status`)", req.RepositoryMember)
		}
		if m.Center != req.Name {
			return nil, invalid("controller %q is in center %q, not %q: a center's backups are kept by a controller in that center", m.Id, m.Center, req.Name)
		}
	}
	res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_SetCenter{SetCenter: &statev1.SetCenter{Center: &statev1.CenterRecord{
		Name: req.Name, Site: req.Site, Role: roleFromAPI(req.Role), Description: req.Description, RepositoryMember: req.RepositoryMember,
	}}}})
	if err != nil {
		return nil, err
	}
	s.log.Info("center set", "center", req.Name, "site", req.Site, "role", state.CenterRoleName(roleFromAPI(req.Role)), "repository", req.RepositoryMember)
	return centerToAPI(res.Center), nil
}

func (s *Server) DeleteCenter(ctx context.Context, req *yunchiv1.DeleteCenterRequest) (*yunchiv1.DeleteCenterResponse, error) {
	if err := checkName("center", req.Name); err != nil {
		return nil, err
	}
	if _, ok := s.drView().Center(req.Name); !ok {
		return nil, status.Errorf(codes.NotFound, "center %q not found (see `yunchi topology`)", req.Name)
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_DeleteCenter{DeleteCenter: &statev1.DeleteCenter{Name: req.Name}}}); err != nil {
		return nil, err
	}
	return &yunchiv1.DeleteCenterResponse{}, nil
}

func protectionPolicyToAPI(p *statev1.PolicyRecord, vms, projects int) *yunchiv1.Policy {
	out := &yunchiv1.Policy{Name: p.Name, Builtin: p.Builtin, RpoSeconds: p.RpoSeconds, RtoSeconds: p.RtoSeconds,
		Priority: p.Priority, Level: p.Level, Description: p.Description, CreatedAt: ts(p.CreatedUnixNano),
		Vms: int32(vms), Projects: int32(projects)}
	for _, t := range p.Targets {
		ot := &yunchiv1.PolicyTarget{Role: roleToAPI(t.Role), Center: t.Center,
			IntervalSeconds: t.IntervalSeconds, RpoSeconds: state.TargetRPO(t), Mirror: t.Mirror}
		if !t.Mirror {
			ot.Retention = &yunchiv1.Retention{KeepLast: t.GetRetention().GetKeepLast(), KeepHourly: t.GetRetention().GetKeepHourly(), KeepDaily: t.GetRetention().GetKeepDaily()}
		}
		out.Targets = append(out.Targets, ot)
	}
	return out
}

func (s *Server) CreatePolicy(ctx context.Context, req *yunchiv1.CreatePolicyRequest) (*yunchiv1.Policy, error) {
	in := req.GetPolicy()
	if in == nil {
		return nil, invalid("give the policy (name and targets)")
	}
	rec := &statev1.PolicyRecord{Name: in.Name, RpoSeconds: in.RpoSeconds, RtoSeconds: in.RtoSeconds, Priority: in.Priority,
		Level: in.Level, Description: in.Description}
	for _, t := range in.Targets {
		if t == nil {
			return nil, invalid("policy %q: empty target", in.Name)
		}
		rt := &statev1.PolicyTarget{Role: roleFromAPI(t.Role), Center: t.Center,
			IntervalSeconds: t.IntervalSeconds, RpoSeconds: t.RpoSeconds, Mirror: t.Mirror}
		if t.Retention != nil || !t.Mirror {
			rt.Retention = &statev1.RetentionRule{KeepLast: t.GetRetention().GetKeepLast(), KeepHourly: t.GetRetention().GetKeepHourly(), KeepDaily: t.GetRetention().GetKeepDaily()}
		}
		rec.Targets = append(rec.Targets, rt)
	}
	dv := s.drView()
	if err := state.CheckPolicy(rec, func(n string) bool { _, ok := dv.Center(n); return ok }); err != nil {
		return nil, toStatus(err)
	}
	if _, ok := dv.Policy(rec.Name); ok {
		return nil, status.Errorf(codes.AlreadyExists, "policy %q already exists (see `yunchi policy list`)", rec.Name)
	}
	res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_CreatePolicy{CreatePolicy: &statev1.CreatePolicy{Policy: rec}}})
	if err != nil {
		return nil, err
	}
	return protectionPolicyToAPI(res.Policy, 0, 0), nil
}

func (s *Server) GetPolicy(ctx context.Context, req *yunchiv1.GetPolicyRequest) (*yunchiv1.Policy, error) {
	if err := checkName("policy", req.Name); err != nil {
		return nil, err
	}
	p, ok := s.drView().Policy(req.Name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "policy %q not found (see `yunchi policy list`)", req.Name)
	}
	vms, projects := s.drView().PolicyUse(p.Name)
	return protectionPolicyToAPI(p, vms, projects), nil
}

func (s *Server) ListPolicies(ctx context.Context, _ *yunchiv1.ListPoliciesRequest) (*yunchiv1.ListPoliciesResponse, error) {
	out := &yunchiv1.ListPoliciesResponse{}
	for _, p := range s.drView().Policies() {
		vms, projects := s.drView().PolicyUse(p.Name)
		out.Policies = append(out.Policies, protectionPolicyToAPI(p, vms, projects))
	}
	return out, nil
}

func (s *Server) DeletePolicy(ctx context.Context, req *yunchiv1.DeletePolicyRequest) (*yunchiv1.DeletePolicyResponse, error) {
	if err := checkName("policy", req.Name); err != nil {
		return nil, err
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_DeletePolicy{DeletePolicy: &statev1.DeletePolicy{Name: req.Name}}}); err != nil {
		return nil, err
	}
	return &yunchiv1.DeletePolicyResponse{}, nil
}

func (s *Server) checkPolicyName(name string) error {
	if name == "" {
		return nil
	}
	if err := checkName("policy", name); err != nil {
		return err
	}
	if _, ok := s.drView().Policy(name); !ok {
		return status.Errorf(codes.NotFound, "policy %q not found (see `yunchi policy list`)", name)
	}
	return nil
}

func (s *Server) ProtectVM(ctx context.Context, req *yunchiv1.ProtectVMRequest) (*yunchiv1.Protection, error) {
	vm, err := s.findVM(req.Project, req.Name)
	if err != nil {
		return nil, err
	}
	if err := s.checkPolicyName(req.Policy); err != nil {
		return nil, err
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_SetProtection{SetProtection: &statev1.SetProtection{
		Project: vm.Project, VmId: vm.Id, Policy: req.Policy}}}); err != nil {
		return nil, err
	}
	s.log.Info("vm protection set", "vm", vm.Name, "project", vm.Project, "policy", req.Policy)
	return &yunchiv1.Protection{Project: vm.Project, Vm: vm.Name, Policy: req.Policy}, nil
}

func (s *Server) ProtectProject(ctx context.Context, req *yunchiv1.ProtectProjectRequest) (*yunchiv1.Protection, error) {
	project, err := projectOf(req.Project)
	if err != nil {
		return nil, err
	}
	if _, ok := s.store.ProjectDepartment(project); !ok {
		return nil, status.Errorf(codes.NotFound, "project %q not found", project)
	}
	if err := s.checkPolicyName(req.Policy); err != nil {
		return nil, err
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_SetProtection{SetProtection: &statev1.SetProtection{
		Project: project, Policy: req.Policy}}}); err != nil {
		return nil, err
	}
	s.log.Info("project protection set", "project", project, "policy", req.Policy)
	return &yunchiv1.Protection{Project: project, Policy: req.Policy}, nil
}

// targetStatus is one protected target as the API shows it at now.
// mirrorStatus is a mirror target's status: its RPO is 0 while the VM's
// host reports it mirroring, else the time since it last did (-1: never).
func mirrorStatus(vm *statev1.VMRecord, vmCenter string, c *statev1.CenterRecord, now time.Time) *yunchiv1.TargetStatus {
	out := &yunchiv1.TargetStatus{Center: c.Name, Role: roleToAPI(c.Role), AchievedRpoSeconds: -1}
	m := vm.GetMirror()
	switch {
	case c.Name == vmCenter:
		out.Mirror = "not mirrored: the VM runs in this center"
		return out
	case m == nil:
		out.Mirror = "no mirror host yet (real QEMU hosts only)"
		return out
	case m.Center != c.Name:
		out.Mirror = "mirrored to " + m.Center
		return out
	}
	out.MirrorHost = m.HostId
	switch {
	case m.Phase == state.MirrorMirroring:
		out.Mirror, out.AchievedRpoSeconds = "mirroring", 0
	case m.Address == "":
		out.Mirror = cmp.Or(m.Error, "waiting for the export on "+m.HostId)
	default:
		out.Mirror = cmp.Or(m.Phase, "starting")
		if m.Error != "" {
			out.Mirror += ": " + m.Error
		}
	}
	if out.AchievedRpoSeconds < 0 && m.MirroringUnixNano > 0 {
		out.AchievedRpoSeconds = now.Sub(time.Unix(0, m.MirroringUnixNano)).Seconds()
	}
	out.Violation = m.Phase != state.MirrorMirroring && now.Sub(time.Unix(0, m.PhaseUnixNano)) > 5*time.Minute
	return out
}

func targetStatus(t state.ProtectedTarget, now time.Time) *yunchiv1.TargetStatus {
	ts1 := &yunchiv1.TargetStatus{Center: t.Center.Name, Role: roleToAPI(t.Center.Role), IntervalSeconds: t.Target.IntervalSeconds,
		RpoObjectiveSeconds: state.TargetRPO(t.Target), Points: int32(t.Points), AchievedRpoSeconds: -1}
	if p := t.Newest; p != nil {
		ts1.NewestPoint, ts1.NewestPointAt = p.Id, ts(p.TakenUnixNano)
		ts1.AchievedRpoSeconds = max(0, now.Sub(time.Unix(0, p.TakenUnixNano)).Seconds())
	}
	// No point yet counts as a violation once the VM has been protected
	// for longer than the objective allows; before that it is "not yet".
	ts1.Violation = t.Newest != nil && ts1.AchievedRpoSeconds > float64(ts1.RpoObjectiveSeconds)
	if j := t.Job; j != nil {
		switch j.State {
		case statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING:
			ts1.Job = "running"
		case statev1.BackupJobState_BACKUP_JOB_STATE_FAILED:
			ts1.Job, ts1.LastError, ts1.NextAttemptAt = "failed", j.Error, ts(j.NextUnixNano)
			if t.Newest == nil {
				ts1.Violation = true
			}
		}
		ts1.Attempts = j.Attempts
	}
	return ts1
}

func (s *Server) GetDRStatus(ctx context.Context, req *yunchiv1.GetDRStatusRequest) (*yunchiv1.DRStatus, error) {
	project := ""
	if req.Project != "" {
		if err := checkName("project", req.Project); err != nil {
			return nil, err
		}
		project = req.Project
	}
	if req.Vm != "" {
		if err := checkName("vm name", req.Vm); err != nil {
			return nil, err
		}
		if project == "" {
			project = state.DefaultProject
		}
		if _, err := s.findVM(project, req.Vm); err != nil {
			return nil, err
		}
	}
	now := time.Now()
	out := &yunchiv1.DRStatus{}
	for _, p := range s.drView().ProtectedVMs(project) {
		if req.Vm != "" && p.VM.Name != req.Vm || !auth.Sees(ctx, p.VM.Project) {
			continue
		}
		vp := &yunchiv1.VMProtection{Vm: p.VM.Name, Project: p.VM.Project, Policy: p.Policy.Name, Source: p.Source}
		for _, mc := range p.MirrorCenters {
			vp.Targets = append(vp.Targets, mirrorStatus(p.VM, s.hostInfo(p.VM.HostId).center, mc, now))
		}
		for _, t := range p.Targets {
			st := targetStatus(t, now)
			if st.Violation {
				out.Violations++
			}
			vp.Targets = append(vp.Targets, st)
		}
		out.Vms = append(out.Vms, vp)
	}
	var projects []string
	for _, vp := range out.Vms {
		if len(projects) == 0 || projects[len(projects)-1] != vp.Project {
			projects = append(projects, vp.Project)
		}
	}
	out.Drills = s.drillSummaries(ctx, project, projects)
	out.FencedCenters = s.recoveryView().FencedCenters()
	return out, nil
}

func pointToAPI(p *statev1.RestorePointRecord) *yunchiv1.RestorePoint {
	out := &yunchiv1.RestorePoint{Id: p.Id, Vm: p.GetVm().GetName(), Project: p.GetVm().GetProject(), Center: p.Center,
		TakenAt: ts(p.TakenUnixNano), SizeBytes: p.SizeBytes, NewBytes: p.NewBytes, Incremental: p.Incremental,
		Policy: p.Policy, DurationMillis: p.DurationMillis, HostId: p.HostId}
	for _, d := range p.Disks {
		out.Disks = append(out.Disks, &yunchiv1.RestorePointDisk{Name: d.Name, SizeBytes: d.SizeBytes, ManifestSha256: d.ManifestSha256,
			Chunks: d.Chunks, NewChunks: d.NewChunks, NewBytes: d.NewBytes, ReadChunks: d.ReadChunks})
	}
	return out
}

// pointVMs finds the VM ids a request names: the live VM of that name and
// any gone VM whose points recorded that name (or vm_id given).
func (s *Server) pointVMs(project, name, vmID string) ([]string, error) {
	p, err := projectOf(project)
	if err != nil {
		return nil, err
	}
	if vmID != "" {
		if err := checkName("vm id", vmID); err != nil {
			return nil, err
		}
		return []string{vmID}, nil
	}
	if err := checkName("vm name", name); err != nil {
		return nil, err
	}
	ids := s.drView().PointVMIDs(p, name)
	if vm, ok := s.store.VM(p, name); ok && !slices.Contains(ids, vm.Id) {
		ids = append(ids, vm.Id)
	}
	if len(ids) == 0 {
		return nil, status.Errorf(codes.NotFound, "vm %q not found in project %q, and no restore point names it", name, p)
	}
	return ids, nil
}

func (s *Server) ListRestorePoints(ctx context.Context, req *yunchiv1.ListRestorePointsRequest) (*yunchiv1.ListRestorePointsResponse, error) {
	if req.Center != "" {
		if err := checkName("center", req.Center); err != nil {
			return nil, err
		}
	}
	ids, err := s.pointVMs(req.Project, req.Vm, req.VmId)
	if err != nil {
		return nil, err
	}
	project, _ := projectOf(req.Project)
	out := &yunchiv1.ListRestorePointsResponse{}
	for _, id := range ids {
		for _, p := range s.drView().RestorePointsOf(id, req.Center) {
			if p.GetVm().GetProject() != project {
				continue // a vm_id of another project: not this caller's to see
			}
			out.Points = append(out.Points, pointToAPI(p))
		}
	}
	sort.SliceStable(out.Points, func(i, j int) bool {
		return out.Points[i].TakenAt.AsTime().After(out.Points[j].TakenAt.AsTime())
	})
	return out, nil
}

// RestoreVM creates a new VM from a restore point, placed by the scheduler
// in the center asked (by default the point's own).
func (s *Server) RestoreVM(ctx context.Context, req *yunchiv1.RestoreVMRequest) (*yunchiv1.VM, error) {
	project, err := projectOf(req.Project)
	if err != nil {
		return nil, err
	}
	if req.Center != "" {
		if err := checkName("center", req.Center); err != nil {
			return nil, err
		}
	}
	var point *statev1.RestorePointRecord
	if req.Point != "" {
		if err := checkName("restore point", req.Point); err != nil {
			return nil, err
		}
		p, ok := s.drView().RestorePoint(req.Point)
		if !ok || p.GetVm().GetProject() != project || req.Vm != "" && p.GetVm().GetName() != req.Vm {
			return nil, status.Errorf(codes.NotFound, "restore point %q of vm %q not found in project %q (see `yunchi backup list %s`)", req.Point, req.Vm, project, req.Vm)
		}
		point = p
	} else {
		ids, err := s.pointVMs(req.Project, req.Vm, "")
		if err != nil {
			return nil, err
		}
		// The newest point anywhere; of two taken within a second, the
		// one in the center the VM goes to (its chunks are read there).
		better := func(p, than *statev1.RestorePointRecord) bool {
			if d := p.TakenUnixNano - than.TakenUnixNano; d > int64(time.Second) || d < -int64(time.Second) {
				return d > 0
			}
			if (p.Center == req.Center) != (than.Center == req.Center) {
				return p.Center == req.Center
			}
			return p.TakenUnixNano > than.TakenUnixNano
		}
		for _, id := range ids {
			for _, p := range s.drView().RestorePointsOf(id, "") {
				if p.GetVm().GetProject() == project && (point == nil || better(p, point)) {
					point = p
				}
			}
		}
		if point == nil {
			return nil, status.Errorf(codes.NotFound, "vm %q has no restore point yet (see `yunchi dr status`)", req.Vm)
		}
	}
	name := req.As
	if name == "" {
		name = point.GetVm().GetName() + "-restored"
	}
	if err := checkName("vm name", name); err != nil {
		return nil, err
	}
	if _, ok := s.store.VM(project, name); ok {
		return nil, status.Errorf(codes.AlreadyExists, "vm %q already exists in project %q: name the restored VM with --as", name, project)
	}
	center := req.Center
	if center == "" {
		center = point.Center
	}
	if err := s.checkCenterExists(center); err != nil {
		return nil, err
	}
	var root int64
	for _, d := range point.Disks {
		if d.Name == "root" {
			root = d.SizeBytes
		}
	}
	if root == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "restore point %s has no root disk", point.Id)
	}
	pv := point.GetVm()
	sp := placement.Spec{Project: project, Names: []string{name}, Center: center, Strategy: s.DefaultStrategy,
		Resources: scheduler.Resources{VCPUs: int64(pv.GetVcpus()), MemoryBytes: pv.GetMemoryBytes(), DiskBytes: root},
		Restore:   &statev1.RestoreSource{PointId: point.Id, Center: point.Center, Disks: point.Disks, SourceVmId: point.VmId}}
	if sp.Resources.VCPUs <= 0 || sp.Resources.MemoryBytes <= 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "restore point %s does not record the VM's shape", point.Id)
	}
	vms, _, err := s.place(ctx, &sp, false)
	if err != nil {
		return nil, err
	}
	s.log.Info("vm restored from a backup", "vm", name, "project", project, "point", point.Id, "from_center", point.Center, "center", center)
	return vms[0], nil
}

// RunBackup starts a backup of a VM now, to every center of its policy
// (or one), whatever the schedule says.
func (s *Server) RunBackup(ctx context.Context, req *yunchiv1.RunBackupRequest) (*yunchiv1.RunBackupResponse, error) {
	if req.Center != "" {
		if err := checkName("center", req.Center); err != nil {
			return nil, err
		}
	}
	// The schedule may start a backup of the VM between this read and the
	// command (Apply refuses a second running one): deciding again then
	// finds it running, and that one will do.
	for attempt := 1; ; attempt++ {
		resp, err := s.runBackup(ctx, req)
		if state.KindOf(err) != state.KindConflict || attempt == 3 {
			return resp, toStatus(err)
		}
	}
}

func (s *Server) runBackup(ctx context.Context, req *yunchiv1.RunBackupRequest) (*yunchiv1.RunBackupResponse, error) {
	vm, err := s.findVM(req.Project, req.Vm)
	if err != nil {
		return nil, err
	}
	var prot *state.Protected
	for _, p := range s.drView().ProtectedVMs(vm.Project) {
		if p.VM.Id == vm.Id {
			prot = &p
			break
		}
	}
	if prot == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "vm %q is not protected: `yunchi vm protect %s --policy gold` first", vm.Name, vm.Name)
	}
	if vm.HostId == "" || vm.Phase == statev1.VMPhase_VM_PHASE_PENDING {
		return nil, status.Errorf(codes.FailedPrecondition, "vm %q is not on a host yet: retry when it runs", vm.Name)
	}
	var jobs []*statev1.BackupJobRecord
	var centers []string
	for _, t := range prot.Targets {
		if req.Center != "" && t.Center.Name != req.Center {
			continue
		}
		if t.Center.RepositoryMember == "" {
			continue
		}
		if t.Job != nil && t.Job.State == statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING {
			centers = append(centers, t.Center.Name) // running already: that one will do
			continue
		}
		j := leader.JobFor(*prot, t, 1)
		j.Manual = true
		jobs = append(jobs, j)
		centers = append(centers, t.Center.Name)
	}
	if len(centers) == 0 {
		if req.Center != "" {
			return nil, status.Errorf(codes.FailedPrecondition, "policy %q of vm %q does not copy to center %q, or it has no repository", prot.Policy.Name, vm.Name, req.Center)
		}
		return nil, status.Errorf(codes.FailedPrecondition, "no center of policy %q has a backup repository (see `yunchi topology`)", prot.Policy.Name)
	}
	if len(jobs) > 0 {
		// The state's own error (not yet a status): RunBackup decides again
		// on a conflict.
		if _, err := s.prop.Apply(ctx, &statev1.Command{Cmd: &statev1.Command_StartBackups{StartBackups: &statev1.StartBackups{Jobs: jobs}}}); err != nil {
			return nil, err
		}
	}
	return &yunchiv1.RunBackupResponse{Centers: centers}, nil
}

// onRepository runs fn here when this controller keeps center's
// repository, else forwards the call there.
func (s *Server) onRepository(ctx context.Context, center, method string, req any, fn func() (any, error)) (any, error) {
	if err := checkName("center", center); err != nil {
		return nil, err
	}
	c, ok := s.drView().Center(center)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "center %q not found (see `yunchi topology`)", center)
	}
	if c.RepositoryMember == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "center %q has no backup repository", center)
	}
	if c.RepositoryMember == s.self.ID {
		if s.Repos == nil {
			return nil, status.Errorf(codes.FailedPrecondition, "controller %s keeps no backup repositories (start it with --backup-dir)", s.self.ID)
		}
		return fn()
	}
	if forwarded(ctx) {
		return nil, status.Errorf(codes.Unavailable, "the repository of center %q moved meanwhile: retry", center)
	}
	return s.forwardToMember(ctx, c.RepositoryMember, "repository controller", method, req)
}

func (s *Server) VerifyBackups(ctx context.Context, req *yunchiv1.VerifyBackupsRequest) (*yunchiv1.VerifyBackupsResponse, error) {
	out, err := s.onRepository(ctx, req.Center, yunchiv1.BackupService_VerifyBackups_FullMethodName, req, func() (any, error) {
		return s.Repos.Verify(ctx, req.Center)
	})
	if err != nil {
		return nil, err
	}
	return out.(*yunchiv1.VerifyBackupsResponse), nil
}

func (s *Server) CollectGarbage(ctx context.Context, req *yunchiv1.CollectGarbageRequest) (*yunchiv1.CollectGarbageResponse, error) {
	out, err := s.onRepository(ctx, req.Center, yunchiv1.BackupService_CollectGarbage_FullMethodName, req, func() (any, error) {
		return s.Repos.CollectGarbage(ctx, req.Center)
	})
	if err != nil {
		return nil, err
	}
	return out.(*yunchiv1.CollectGarbageResponse), nil
}

// ReportBackup records a host's outcome of a backup job: its restore point,
// or its failure with the time of the next attempt.
func (s *Server) ReportBackup(ctx context.Context, req *yunchiv1.ReportBackupRequest) (*yunchiv1.ReportBackupResponse, error) {
	if err := checkHostID(req.HostId); err != nil {
		return nil, err
	}
	j, ok := s.drView().BackupJob(req.JobId)
	if !ok || j.HostId != req.HostId {
		// Given up meanwhile (or never this host's): nothing to record.
		return nil, status.Errorf(codes.NotFound, "backup job %q is not this host's running job (given up, or finished already)", req.JobId)
	}
	fin := &statev1.FinishBackup{JobId: j.Id}
	if req.Error != "" || len(req.Disks) == 0 {
		msg := oneLine(req.Error)
		if msg == "" {
			msg = "the host reported no disks"
		}
		if len(msg) > 1024 {
			msg = msg[:1024]
		}
		fin.Error = msg
		fin.NextUnixNano = time.Now().Add(leader.RetryAfter(j.Attempts)).UnixNano()
		s.log.Warn("backup failed", "job", j.Id, "vm", j.VmId, "center", j.Center, "host", j.HostId, "attempt", j.Attempts, "err", msg)
	} else {
		vm, ok := s.store.VMByID(j.VmId)
		if !ok {
			return nil, status.Errorf(codes.NotFound, "vm %s of backup job %s is gone", j.VmId, j.Id)
		}
		p := &statev1.RestorePointRecord{Id: leader.NewPointID(), VmId: j.VmId, Center: j.Center, TakenUnixNano: req.TakenUnixNano,
			Incremental: req.Incremental, Checkpoint: req.Checkpoint, DurationMillis: req.DurationMillis,
			Vm: &statev1.PointVM{Name: vm.Name, Project: vm.Project, Vcpus: vm.Vcpus, MemoryBytes: vm.MemoryBytes, DiskBytes: vm.DiskBytes, Center: vm.Center}}
		now := time.Now().UnixNano()
		if p.TakenUnixNano <= 0 || p.TakenUnixNano > now {
			p.TakenUnixNano = min(max(p.TakenUnixNano, j.StartedUnixNano), now) // never later than recorded
		}
		for _, d := range req.Disks {
			if err := checkName("disk name", d.Name); err != nil {
				return nil, err
			}
			if len(d.ManifestSha256) != 64 || strings.Trim(d.ManifestSha256, "0123456789abcdef") != "" || d.SizeBytes <= 0 {
				return nil, invalid("disk %q: manifest sha256 must be 64 hex digits and the size positive", d.Name)
			}
			p.Disks = append(p.Disks, &statev1.DiskPoint{Name: d.Name, SizeBytes: d.SizeBytes, ManifestSha256: d.ManifestSha256,
				Chunks: d.Chunks, NewChunks: d.NewChunks, NewBytes: d.NewBytes, ReadChunks: d.ReadChunks})
			p.SizeBytes += d.SizeBytes
			p.NewBytes += d.NewBytes
		}
		fin.Point = p
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_FinishBackup{FinishBackup: fin}}); err != nil {
		return nil, err
	}
	return &yunchiv1.ReportBackupResponse{}, nil
}

// backupAssignments are a host's running jobs as its agent gets them.
func (s *Server) backupAssignments(hostID string) []*yunchiv1.BackupJob {
	dv := s.drView()
	var out []*yunchiv1.BackupJob
	for _, j := range dv.RunningJobsOnHost(hostID) {
		c, _ := dv.Center(j.Center)
		bj := &yunchiv1.BackupJob{JobId: j.Id, VmId: j.VmId, Center: j.Center, RepositoryAddress: s.repositoryAddress(c),
			BasePointId: j.BasePointId, Checkpoint: "yunchi-" + j.Id}
		if p, ok := dv.RestorePoint(j.BasePointId); ok && j.BasePointId != "" {
			bj.BaseCheckpoint = p.Checkpoint
			for _, d := range p.Disks {
				bj.BaseDisks = append(bj.BaseDisks, &yunchiv1.DiskRef{Name: d.Name, SizeBytes: d.SizeBytes, ManifestSha256: d.ManifestSha256})
			}
		}
		out = append(out, bj)
	}
	return out
}

// restoreRef is a restored VM's source as its agent gets it.
func (s *Server) restoreRef(r *statev1.RestoreSource) *yunchiv1.RestoreRef {
	if r == nil {
		return nil
	}
	if r.FromMirror {
		return &yunchiv1.RestoreRef{FromMirror: true}
	}
	c, _ := s.drView().Center(r.Center)
	out := &yunchiv1.RestoreRef{PointId: r.PointId, Center: r.Center, RepositoryAddress: s.repositoryAddress(c)}
	for _, d := range r.Disks {
		out.Disks = append(out.Disks, &yunchiv1.DiskRef{Name: d.Name, SizeBytes: d.SizeBytes, ManifestSha256: d.ManifestSha256})
	}
	return out
}

// BackupGCEvery is how often a controller collects the garbage of the
// repositories it keeps (RunBackupGC).
const BackupGCEvery = time.Hour

// RunBackupGC removes, every BackupGCEvery until ctx ends, the chunks no
// restore point uses from each repository this controller keeps:
// retention removes points every half minute, and their chunks go here.
func (s *Server) RunBackupGC(ctx context.Context) {
	if s.Repos == nil {
		return
	}
	t := time.NewTicker(BackupGCEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, c := range s.drView().DeclaredCenters() {
			if c.RepositoryMember != s.self.ID {
				continue
			}
			r, err := s.Repos.CollectGarbage(ctx, c.Name)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("backup repository garbage collection failed", "center", c.Name, "err", err)
				}
				continue
			}
			s.log.Info("backup repository garbage collected", "center", c.Name, "chunks_removed", r.ChunksRemoved, "bytes_removed", r.BytesRemoved, "chunks_kept", r.ChunksKept)
		}
	}
}
