package state

import (
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Two sites, three centers (dr.proto), version 9 on.
//
// Centers are declared (SetCenter) with a site and a role; a host says
// which center it is in when it registers (HostRecord.center), so every
// host is in exactly one. A center may have a backup repository, kept by
// one controller of that center (repository_member).
//
// Policies: platinum, gold, silver and bronze are built in (BuiltinPolicies: code,
// not records, so every controller has the same ones without a command);
// custom ones are records. A policy is attached to a VM or to a project,
// whose VMs without their own inherit it (EffectivePolicy).
//
// Backups: the leader decides which are due and records them as jobs
// (StartBackups); the VM's host runs a job and reports it, and the leader
// records the outcome (FinishBackup): a restore point, or the job FAILED
// with its error until its next attempt. One job per (VM, center) at a
// time. Restore points outlive their VM (that is what they are for); the
// leader removes them by retention (DeleteRestorePoints).
//
// Records here are replaced, never changed in place, so a View may share
// them.

// drV9 is the first command version with centers, policies and backups.
const drV9 = 9

// Policy and job bounds.
const (
	MaxPolicyTargets      = 8
	MinBackupInterval     = 10 // seconds
	MaxBackupInterval     = 366 * 24 * 3600
	MaxRetentionKeep      = 10000
	MaxBackupJobsPerStart = 1000
)

// BuiltinPolicies are platinum, gold, silver and bronze, in that order. Their targets
// name roles, not centers, so they fit any topology: a VM protected by
// gold is copied to every same-city DR center every minute, and to every
// remote DR center every hour.
func BuiltinPolicies() []*statev1.PolicyRecord {
	same, remote := statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR, statev1.CenterRole_CENTER_ROLE_REMOTE_DR
	return []*statev1.PolicyRecord{
		{
			Name: "platinum", Builtin: true, RpoSeconds: 0, RtoSeconds: 15 * 60, Priority: 40, Level: 6,
			Description: "same-city DR mirrored synchronously (RPO 0, real QEMU hosts), remote DR hourly; keep 24 hourly and 7 daily",
			Targets: []*statev1.PolicyTarget{
				{Role: same, Mirror: true},
				{Role: remote, IntervalSeconds: 3600, RpoSeconds: 3600, Retention: &statev1.RetentionRule{KeepHourly: 24, KeepDaily: 7}},
			},
		},
		{
			Name: "gold", Builtin: true, RpoSeconds: 60, RtoSeconds: 30 * 60, Priority: 30, Level: 5,
			Description: "same-city DR every minute (RPO <= 1 min), remote DR hourly; keep 24 hourly and 7 daily",
			Targets: []*statev1.PolicyTarget{
				{Role: same, IntervalSeconds: 60, RpoSeconds: 60, Retention: &statev1.RetentionRule{KeepHourly: 24, KeepDaily: 7}},
				{Role: remote, IntervalSeconds: 3600, RpoSeconds: 3600, Retention: &statev1.RetentionRule{KeepHourly: 24, KeepDaily: 7}},
			},
		},
		{
			Name: "silver", Builtin: true, RpoSeconds: 4 * 3600, RtoSeconds: 4 * 3600, Priority: 20, Level: 4,
			Description: "same-city DR every 4 hours, remote DR daily; keep 7 daily",
			Targets: []*statev1.PolicyTarget{
				{Role: same, IntervalSeconds: 4 * 3600, RpoSeconds: 4 * 3600, Retention: &statev1.RetentionRule{KeepDaily: 7}},
				{Role: remote, IntervalSeconds: 24 * 3600, RpoSeconds: 24 * 3600, Retention: &statev1.RetentionRule{KeepDaily: 7}},
			},
		},
		{
			Name: "bronze", Builtin: true, RpoSeconds: 24 * 3600, RtoSeconds: 24 * 3600, Priority: 10, Level: 2,
			Description: "remote DR daily; keep 7",
			Targets: []*statev1.PolicyTarget{
				{Role: remote, IntervalSeconds: 24 * 3600, RpoSeconds: 24 * 3600, Retention: &statev1.RetentionRule{KeepLast: 7}},
			},
		},
	}
}

var builtinPolicies = func() map[string]*statev1.PolicyRecord {
	m := map[string]*statev1.PolicyRecord{}
	for _, p := range BuiltinPolicies() {
		m[p.Name] = p
	}
	return m
}()

// CenterRoleName is how people and the CLI write a center role.
func CenterRoleName(r statev1.CenterRole) string {
	switch r {
	case statev1.CenterRole_CENTER_ROLE_PRODUCTION:
		return "production"
	case statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR:
		return "same-city-dr"
	case statev1.CenterRole_CENTER_ROLE_REMOTE_DR:
		return "remote-dr"
	}
	return "unspecified"
}

func validRole(r statev1.CenterRole) bool {
	return r >= statev1.CenterRole_CENTER_ROLE_PRODUCTION && r <= statev1.CenterRole_CENTER_ROLE_REMOTE_DR
}

// jobKey indexes jobs by what they copy where.
func jobKey(vmID, center string) string { return vmID + "/" + center }

// drTables are the state of this file, kept in Store.
type drTables struct {
	centers  map[string]*statev1.CenterRecord
	policies map[string]*statev1.PolicyRecord // custom only
	points   map[string]*statev1.RestorePointRecord
	// vmPoints indexes points by VM id (ids; no empty sets).
	vmPoints map[string]map[string]struct{}
	jobs     map[string]*statev1.BackupJobRecord
	jobByKey map[string]string // jobKey -> id
	// hostJobs indexes jobs by host (ids; no empty sets).
	hostJobs map[string]map[string]struct{}
	// runs (failover, failback, drills) and drill schedules by id
	// (recovery.go); replaced, never changed in place.
	runs   map[string]*statev1.DRRunRecord
	drills map[string]*statev1.DrillScheduleRecord
	// mirrorOn indexes VMs by the host keeping their mirror (ids; no
	// empty sets; derived).
	mirrorOn map[string]map[string]struct{}
	// protected holds the ids of the VMs that name a protection policy,
	// their own or their project's (derived: indexProtection), so that
	// the leader's every-tick look at the protected VMs costs what is
	// protected, not a pass over every VM.
	protected map[string]struct{}
}

func (t *drTables) reset() {
	t.centers = map[string]*statev1.CenterRecord{}
	t.policies = map[string]*statev1.PolicyRecord{}
	t.points = map[string]*statev1.RestorePointRecord{}
	t.vmPoints = map[string]map[string]struct{}{}
	t.jobs = map[string]*statev1.BackupJobRecord{}
	t.jobByKey = map[string]string{}
	t.hostJobs = map[string]map[string]struct{}{}
	t.runs = map[string]*statev1.DRRunRecord{}
	t.drills = map[string]*statev1.DrillScheduleRecord{}
	t.mirrorOn = map[string]map[string]struct{}{}
	t.protected = map[string]struct{}{}
}

// indexProtection puts vm in the protected index, or takes it out, by the
// policy it names (its own, else its project's). Callers hold mu.
func (s *Store) indexProtection(vm *statev1.VMRecord) {
	name := vm.ProtectionPolicy
	if name == "" {
		if p, ok := s.projects[vm.Project]; ok {
			name = p.ProtectionPolicy
		}
	}
	if name != "" {
		s.dr.protected[vm.Id] = struct{}{}
	} else {
		delete(s.dr.protected, vm.Id)
	}
}

func addToSet(m map[string]map[string]struct{}, k, id string) {
	set := m[k]
	if set == nil {
		set = map[string]struct{}{}
		m[k] = set
	}
	set[id] = struct{}{}
}

func removeFromSet(m map[string]map[string]struct{}, k, id string) {
	if set := m[k]; set != nil {
		delete(set, id)
		if len(set) == 0 {
			delete(m, k)
		}
	}
}

func (s *Store) addPoint(p *statev1.RestorePointRecord) {
	s.dr.points[p.Id] = p
	addToSet(s.dr.vmPoints, p.VmId, p.Id)
}

func (s *Store) removePoint(id string) {
	if p, ok := s.dr.points[id]; ok {
		removeFromSet(s.dr.vmPoints, p.VmId, id)
		delete(s.dr.points, id)
	}
}

func (s *Store) addJob(j *statev1.BackupJobRecord) {
	s.dr.jobs[j.Id] = j
	s.dr.jobByKey[jobKey(j.VmId, j.Center)] = j.Id
	addToSet(s.dr.hostJobs, j.HostId, j.Id)
}

func (s *Store) removeJob(id string, index uint64) {
	j, ok := s.dr.jobs[id]
	if !ok {
		return
	}
	removeFromSet(s.dr.hostJobs, j.HostId, id)
	if s.dr.jobByKey[jobKey(j.VmId, j.Center)] == id {
		delete(s.dr.jobByKey, jobKey(j.VmId, j.Center))
	}
	delete(s.dr.jobs, id)
	if index > 0 {
		s.hostRev[j.HostId] = index
	}
}

// removeVMJobs drops the jobs of a VM that is gone (its host cannot run
// them); its restore points stay.
func (s *Store) removeVMJobs(vmID string, index uint64) {
	for _, c := range s.dr.centers {
		if id, ok := s.dr.jobByKey[jobKey(vmID, c.Name)]; ok {
			s.removeJob(id, index)
		}
	}
}

// applyDR applies the commands of this file (version 9 on).
func (s *Store) applyDR(index uint64, cmd *statev1.Command) (res Result, err error) {
	if cmd.GetVersion() < drV9 {
		return res, errorf(KindInvalid, "command %T needs command version %d, got %d", cmd.GetCmd(), drV9, cmd.GetVersion())
	}
	now := cmd.UnixNano
	switch c := cmd.GetCmd().(type) {
	case *statev1.Command_SetCenter:
		res.Center, err = s.applySetCenter(index, now, c.SetCenter)
	case *statev1.Command_DeleteCenter:
		res.Center, err = s.applyDeleteCenter(c.DeleteCenter)
	case *statev1.Command_CreatePolicy:
		res.Policy, err = s.applyCreatePolicy(index, now, c.CreatePolicy)
	case *statev1.Command_DeletePolicy:
		res.Policy, err = s.applyDeletePolicy(c.DeletePolicy)
	case *statev1.Command_SetProtection:
		var vm *statev1.VMRecord
		vm, res.Project, err = s.applySetProtection(index, c.SetProtection)
		if vm != nil {
			res.VMs = []*statev1.VMRecord{vm}
		}
	case *statev1.Command_StartBackups:
		err = s.applyStartBackups(index, now, c.StartBackups)
	case *statev1.Command_FinishBackup:
		res.RestorePoint, err = s.applyFinishBackup(index, now, c.FinishBackup)
	case *statev1.Command_DeleteRestorePoints:
		err = s.applyDeleteRestorePoints(c.DeleteRestorePoints)
	}
	return res, err
}

func (s *Store) applySetCenter(index uint64, now int64, c *statev1.SetCenter) (*statev1.CenterRecord, error) {
	in := c.GetCenter()
	if in == nil {
		return nil, errorf(KindInvalid, "set center: no center given")
	}
	switch {
	case !ValidName(in.Name):
		return nil, errorf(KindInvalid, "center name %q is not valid: use 1-63 lowercase letters, digits and '-', starting with a letter", in.Name)
	case !ValidName(in.Site):
		return nil, errorf(KindInvalid, "site %q of center %q is not valid: use 1-63 lowercase letters, digits and '-', starting with a letter", in.Site, in.Name)
	case !validRole(in.Role):
		return nil, errorf(KindInvalid, "center %q: give its role: production, same-city-dr or remote-dr", in.Name)
	case len(in.Description) > 1024:
		return nil, errorf(KindInvalid, "center %q: description longer than 1024 bytes", in.Name)
	}
	if in.RepositoryMember != "" {
		m, ok := s.members[in.RepositoryMember]
		if !ok {
			return nil, errorf(KindNotFound, "repository controller %q is not a member of the cluster (see `yunchi cluster status`)", in.RepositoryMember)
		}
		if m.Center != in.Name {
			return nil, errorf(KindInvalid, "repository controller %q is in center %q, not %q: a center's backups are kept in that center", m.Id, m.Center, in.Name)
		}
	}
	rec := proto.Clone(in).(*statev1.CenterRecord)
	rec.CreatedUnixNano = now
	if old, ok := s.dr.centers[in.Name]; ok {
		rec.CreatedUnixNano = old.CreatedUnixNano
		if old.RepositoryMember != "" && old.RepositoryMember != rec.RepositoryMember {
			if n := s.pointsIn(in.Name); n > 0 {
				return nil, errorf(KindFailedPrecondition, "center %q has %d restore point(s) in the repository kept by %q: they would be lost; delete them first", in.Name, n, old.RepositoryMember)
			}
		}
	}
	rec.UpdatedUnixNano = now
	rec.Revision = index
	s.dr.centers[rec.Name] = rec
	return proto.Clone(rec).(*statev1.CenterRecord), nil
}

func (s *Store) pointsIn(center string) int {
	n := 0
	for _, p := range s.dr.points {
		if p.Center == center {
			n++
		}
	}
	return n
}

func (s *Store) applyDeleteCenter(c *statev1.DeleteCenter) (*statev1.CenterRecord, error) {
	rec, ok := s.dr.centers[c.GetName()]
	if !ok {
		return nil, errorf(KindNotFound, "center %q not found (see `yunchi topology`)", c.GetName())
	}
	for _, h := range s.hosts {
		if h.Center == rec.Name {
			return nil, errorf(KindFailedPrecondition, "center %q still has hosts (%s, ...): move or remove them first", rec.Name, h.Id)
		}
	}
	for _, p := range s.dr.policies {
		for _, t := range p.Targets {
			if t.Center == rec.Name {
				return nil, errorf(KindFailedPrecondition, "policy %q names center %q: delete the policy first", p.Name, rec.Name)
			}
		}
	}
	if n := s.pointsIn(rec.Name); n > 0 {
		return nil, errorf(KindFailedPrecondition, "center %q holds %d restore point(s): they would be lost", rec.Name, n)
	}
	delete(s.dr.centers, rec.Name)
	return proto.Clone(rec).(*statev1.CenterRecord), nil
}

// CheckPolicy is the validation CreatePolicy applies, for handlers to run
// before proposing; centers says whether a center is declared.
func CheckPolicy(p *statev1.PolicyRecord, centerDeclared func(string) bool) error {
	if p == nil {
		return errorf(KindInvalid, "no policy given")
	}
	if !ValidName(p.Name) {
		return errorf(KindInvalid, "policy name %q is not valid: use 1-63 lowercase letters, digits and '-', starting with a letter", p.Name)
	}
	if _, ok := builtinPolicies[p.Name]; ok {
		return errorf(KindAlreadyExists, "policy %q is built in: choose another name", p.Name)
	}
	if len(p.Targets) == 0 || len(p.Targets) > MaxPolicyTargets {
		return errorf(KindInvalid, "policy %q: give 1 to %d targets, not %d", p.Name, MaxPolicyTargets, len(p.Targets))
	}
	seen := map[string]bool{}
	for i, t := range p.Targets {
		what := ""
		switch {
		case t.Center != "" && t.Role != statev1.CenterRole_CENTER_ROLE_UNSPECIFIED:
			return errorf(KindInvalid, "policy %q target %d: give a center or a role, not both", p.Name, i+1)
		case t.Center != "":
			if !centerDeclared(t.Center) {
				return errorf(KindNotFound, "policy %q target %d: center %q is not declared (see `yunchi topology`)", p.Name, i+1, t.Center)
			}
			what = "center " + t.Center
		case t.Role == statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR || t.Role == statev1.CenterRole_CENTER_ROLE_REMOTE_DR:
			what = "role " + CenterRoleName(t.Role)
		default:
			return errorf(KindInvalid, "policy %q target %d: give a center or a DR role (same-city-dr, remote-dr)", p.Name, i+1)
		}
		if t.Mirror {
			// A synchronous mirror takes no backups: no interval, no
			// retention; its RPO is 0 while it mirrors.
			if seen["mirror"] {
				return errorf(KindInvalid, "policy %q: at most one mirror target", p.Name)
			}
			if t.IntervalSeconds != 0 || t.RpoSeconds != 0 || t.Retention != nil {
				return errorf(KindInvalid, "policy %q target %d: a mirror target has no interval, RPO or retention (its RPO is 0)", p.Name, i+1)
			}
			seen["mirror"] = true
			continue
		}
		if seen[what] {
			return errorf(KindInvalid, "policy %q names %s twice", p.Name, what)
		}
		seen[what] = true
		if t.IntervalSeconds < MinBackupInterval || t.IntervalSeconds > MaxBackupInterval {
			return errorf(KindInvalid, "policy %q target %d: interval %ds is out of range: give %ds to 366 days", p.Name, i+1, t.IntervalSeconds, MinBackupInterval)
		}
		if t.RpoSeconds < 0 || t.RpoSeconds > MaxBackupInterval*2 {
			return errorf(KindInvalid, "policy %q target %d: RPO %ds is out of range", p.Name, i+1, t.RpoSeconds)
		}
		r := t.GetRetention()
		if r == nil || r.KeepLast <= 0 && r.KeepHourly <= 0 && r.KeepDaily <= 0 {
			return errorf(KindInvalid, "policy %q target %d: keep at least one point (keep-last, keep-hourly or keep-daily)", p.Name, i+1)
		}
		for _, k := range []int32{r.KeepLast, r.KeepHourly, r.KeepDaily} {
			if k < 0 || k > MaxRetentionKeep {
				return errorf(KindInvalid, "policy %q target %d: retention counts must be 0 to %d", p.Name, i+1, MaxRetentionKeep)
			}
		}
	}
	switch {
	case p.RpoSeconds < 0 || p.RtoSeconds < 0:
		return errorf(KindInvalid, "policy %q: RPO and RTO cannot be negative", p.Name)
	case p.Level < 0 || p.Level > 6:
		return errorf(KindInvalid, "policy %q: GB/T 20988 level %d is out of range: give 1 to 6 (or 0: none)", p.Name, p.Level)
	case p.Priority < 0 || p.Priority > 100:
		return errorf(KindInvalid, "policy %q: priority %d is out of range: give 0 to 100", p.Name, p.Priority)
	case len(p.Description) > 1024:
		return errorf(KindInvalid, "policy %q: description longer than 1024 bytes", p.Name)
	}
	return nil
}

func (s *Store) applyCreatePolicy(index uint64, now int64, c *statev1.CreatePolicy) (*statev1.PolicyRecord, error) {
	p := c.GetPolicy()
	if err := CheckPolicy(p, func(n string) bool { _, ok := s.dr.centers[n]; return ok }); err != nil {
		return nil, err
	}
	if _, ok := s.dr.policies[p.Name]; ok {
		return nil, errorf(KindAlreadyExists, "policy %q already exists (see `yunchi policy list`)", p.Name)
	}
	rec := proto.Clone(p).(*statev1.PolicyRecord)
	rec.Builtin = false
	if rec.RpoSeconds == 0 {
		for _, t := range rec.Targets {
			rec.RpoSeconds = max(rec.RpoSeconds, TargetRPO(t))
		}
	}
	rec.CreatedUnixNano = now
	rec.Revision = index
	s.dr.policies[rec.Name] = rec
	return proto.Clone(rec).(*statev1.PolicyRecord), nil
}

// TargetRPO is a target's objective for the age of its newest point.
func TargetRPO(t *statev1.PolicyTarget) int64 {
	if t.RpoSeconds > 0 {
		return t.RpoSeconds
	}
	return t.IntervalSeconds
}

func (s *Store) policyUse(name string) (vms, projects int) {
	for id := range s.dr.protected {
		if s.vms[id].ProtectionPolicy == name {
			vms++
		}
	}
	for _, p := range s.projects {
		if p.ProtectionPolicy == name {
			projects++
		}
	}
	return vms, projects
}

func (s *Store) applyDeletePolicy(c *statev1.DeletePolicy) (*statev1.PolicyRecord, error) {
	if _, ok := builtinPolicies[c.GetName()]; ok {
		return nil, errorf(KindFailedPrecondition, "policy %q is built in and cannot be deleted", c.GetName())
	}
	rec, ok := s.dr.policies[c.GetName()]
	if !ok {
		return nil, errorf(KindNotFound, "policy %q not found (see `yunchi policy list`)", c.GetName())
	}
	if vms, projects := s.policyUse(rec.Name); vms+projects > 0 {
		return nil, errorf(KindFailedPrecondition, "policy %q protects %d VM(s) and %d project(s): protect them with another policy first", rec.Name, vms, projects)
	}
	delete(s.dr.policies, rec.Name)
	return proto.Clone(rec).(*statev1.PolicyRecord), nil
}

func (s *Store) policyExists(name string) bool {
	if _, ok := builtinPolicies[name]; ok {
		return true
	}
	_, ok := s.dr.policies[name]
	return ok
}

func (s *Store) applySetProtection(index uint64, c *statev1.SetProtection) (*statev1.VMRecord, *statev1.ProjectRecord, error) {
	if c.Policy != "" && !s.policyExists(c.Policy) {
		return nil, nil, errorf(KindNotFound, "policy %q not found (see `yunchi policy list`)", c.Policy)
	}
	if c.VmId != "" {
		vm, ok := s.vms[c.VmId]
		if !ok || vm.Project != c.Project {
			return nil, nil, errorf(KindNotFound, "vm %s not found in project %q", c.VmId, c.Project)
		}
		if vm.Desired == statev1.PowerState_POWER_STATE_DELETED {
			return nil, nil, errorf(KindFailedPrecondition, "vm %q is being deleted", vm.Name)
		}
		w, _ := s.writableVM(c.VmId)
		w.ProtectionPolicy = c.Policy
		w.Revision = index
		s.indexProtection(w)
		return proto.Clone(w).(*statev1.VMRecord), nil, nil
	}
	p, ok := s.projects[c.Project]
	if !ok {
		return nil, nil, errorf(KindNotFound, "project %q not found", c.Project)
	}
	np := proto.Clone(p).(*statev1.ProjectRecord)
	np.ProtectionPolicy = c.Policy
	s.projects[np.Name] = np
	// A rare command: one pass over the VMs to index the project's.
	for _, vm := range s.vms {
		if vm.Project == np.Name {
			s.indexProtection(vm)
		}
	}
	return nil, proto.Clone(np).(*statev1.ProjectRecord), nil
}

// effectivePolicy is the policy protecting vm and where it comes from
// ("vm", "project"); "" when none. Callers hold mu.
func (s *Store) effectivePolicy(vm *statev1.VMRecord) (*statev1.PolicyRecord, string) {
	name, src := vm.ProtectionPolicy, "vm"
	if name == "" {
		if p, ok := s.projects[vm.Project]; ok && p.ProtectionPolicy != "" {
			name, src = p.ProtectionPolicy, "project"
		}
	}
	if name == "" {
		return nil, ""
	}
	if p, ok := builtinPolicies[name]; ok {
		return p, src
	}
	if p, ok := s.dr.policies[name]; ok {
		return p, src
	}
	return nil, ""
}

// TargetCenters lists the declared centers a target copies to, sorted:
// the one it names, or every center of its role.
func (s *Store) targetCenters(t *statev1.PolicyTarget) []*statev1.CenterRecord {
	var out []*statev1.CenterRecord
	for _, c := range s.dr.centers {
		if t.Center != "" && c.Name == t.Center || t.Center == "" && c.Role == t.Role {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (s *Store) applyStartBackups(index uint64, now int64, c *statev1.StartBackups) error {
	jobs := c.GetJobs()
	if len(jobs) == 0 || len(jobs) > MaxBackupJobsPerStart {
		return errorf(KindInvalid, "start backups: give 1 to %d jobs, not %d", MaxBackupJobsPerStart, len(jobs))
	}
	// Check all first: a command applies whole or not at all.
	ids := map[string]bool{}
	for _, j := range jobs {
		if j.Id == "" || ids[j.Id] {
			return errorf(KindInvalid, "start backups: job id %q empty or repeated", j.Id)
		}
		ids[j.Id] = true
		if _, ok := s.dr.jobs[j.Id]; ok {
			return errorf(KindAlreadyExists, "backup job %s exists", j.Id)
		}
		vm, ok := s.vms[j.VmId]
		if !ok {
			return errorf(KindNotFound, "backup of vm %s: vm not found", j.VmId)
		}
		if vm.HostId != j.HostId || vm.HostId == "" {
			return errorf(KindConflict, "backup of vm %q: it is on host %q now, not %q", vm.Name, vm.HostId, j.HostId)
		}
		if vm.Desired == statev1.PowerState_POWER_STATE_DELETED {
			return errorf(KindFailedPrecondition, "backup of vm %q: it is being deleted", vm.Name)
		}
		cr, ok := s.dr.centers[j.Center]
		if !ok || cr.RepositoryMember == "" {
			return errorf(KindFailedPrecondition, "backup of vm %q: center %q has no backup repository", vm.Name, j.Center)
		}
		if j.BasePointId != "" {
			if p, ok := s.dr.points[j.BasePointId]; !ok || p.VmId != j.VmId || p.Center != j.Center {
				return errorf(KindConflict, "backup of vm %q: base point %s is gone", vm.Name, j.BasePointId)
			}
		}
		if id, ok := s.dr.jobByKey[jobKey(j.VmId, j.Center)]; ok && s.dr.jobs[id].State == statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING {
			return errorf(KindConflict, "backup of vm %q to %s is running already", vm.Name, j.Center)
		}
	}
	for _, j := range jobs {
		if id, ok := s.dr.jobByKey[jobKey(j.VmId, j.Center)]; ok {
			s.removeJob(id, index) // FAILED: replaced by the new attempt
		}
		rec := proto.Clone(j).(*statev1.BackupJobRecord)
		rec.State = statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING
		rec.StartedUnixNano = now
		rec.Error = ""
		rec.NextUnixNano = 0
		rec.Revision = index
		s.addJob(rec)
		s.hostRev[rec.HostId] = index
	}
	return nil
}

func (s *Store) applyFinishBackup(index uint64, now int64, c *statev1.FinishBackup) (*statev1.RestorePointRecord, error) {
	j, ok := s.dr.jobs[c.GetJobId()]
	if !ok || j.State != statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING {
		return nil, errorf(KindFailedPrecondition, "backup job %s is not running (finished already, or given up)", c.GetJobId())
	}
	if c.Point == nil {
		if c.Error == "" {
			return nil, errorf(KindInvalid, "finish backup %s: give a point or an error", j.Id)
		}
		f := proto.Clone(j).(*statev1.BackupJobRecord)
		f.State = statev1.BackupJobState_BACKUP_JOB_STATE_FAILED
		f.Error = c.Error
		f.NextUnixNano = c.NextUnixNano
		f.Revision = index
		s.removeJob(j.Id, index)
		s.addJob(f)
		return nil, nil
	}
	p := c.Point
	switch {
	case p.Id == "":
		return nil, errorf(KindInvalid, "finish backup %s: point without id", j.Id)
	case p.VmId != j.VmId || p.Center != j.Center:
		return nil, errorf(KindInvalid, "finish backup %s: point of vm %s in %s, not of the job's vm %s in %s", j.Id, p.VmId, p.Center, j.VmId, j.Center)
	case len(p.Disks) == 0:
		return nil, errorf(KindInvalid, "finish backup %s: point without disks", j.Id)
	}
	if _, ok := s.dr.points[p.Id]; ok {
		return nil, errorf(KindAlreadyExists, "restore point %s exists", p.Id)
	}
	for _, d := range p.Disks {
		if len(d.ManifestSha256) != 64 || d.SizeBytes <= 0 {
			return nil, errorf(KindInvalid, "finish backup %s: disk %q has no manifest or size", j.Id, d.Name)
		}
	}
	rec := proto.Clone(p).(*statev1.RestorePointRecord)
	rec.RecordedUnixNano = now
	rec.Revision = index
	rec.HostId = j.HostId
	rec.Policy = j.Policy
	s.removeJob(j.Id, index)
	s.addPoint(rec)
	return proto.Clone(rec).(*statev1.RestorePointRecord), nil
}

func (s *Store) applyDeleteRestorePoints(c *statev1.DeleteRestorePoints) error {
	if len(c.GetPointIds()) > 10000 {
		return errorf(KindInvalid, "delete restore points: at most 10000 at once")
	}
	for _, id := range c.GetPointIds() {
		// A job building on the point starts over from no base.
		for _, j := range s.dr.jobs {
			if j.BasePointId == id {
				nj := proto.Clone(j).(*statev1.BackupJobRecord)
				nj.BasePointId = ""
				s.dr.jobs[j.Id] = nj
			}
		}
		s.removePoint(id)
	}
	return nil
}

// checkVMRestore is PlaceVMs' check of a restored VM: its point exists and
// it records the point as it is.
func (s *Store) checkVMRestore(vm *statev1.VMRecord) error {
	r := vm.GetRestore()
	if r == nil {
		return nil
	}
	p, ok := s.dr.points[r.PointId]
	switch {
	case !ok:
		return errorf(KindNotFound, "restore point %s for vm %q not found: it was removed meanwhile (see `yunchi backup list`)", r.PointId, vm.Name)
	case r.Center != p.Center || len(r.Disks) != len(p.Disks):
		return errorf(KindInvalid, "vm %q: what it records of restore point %s does not match the point", vm.Name, p.Id)
	case vm.Image != nil:
		return errorf(KindInvalid, "vm %q: a restored VM has no image", vm.Name)
	}
	for i, d := range r.Disks {
		if !proto.Equal(d, p.Disks[i]) {
			return errorf(KindInvalid, "vm %q: disk %q does not match restore point %s", vm.Name, d.Name, p.Id)
		}
		if d.Name == "root" && d.SizeBytes != vm.DiskBytes {
			return errorf(KindInvalid, "vm %q: disk of %d bytes, the restore point's root disk has %d", vm.Name, vm.DiskBytes, d.SizeBytes)
		}
	}
	return nil
}

// Queries.

// Center returns a declared center.
func (s *Store) Center(name string) (*statev1.CenterRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.dr.centers[name]
	if !ok {
		return nil, false
	}
	return proto.Clone(c).(*statev1.CenterRecord), true
}

// DeclaredCenters lists the declared centers by site, then name.
func (s *Store) DeclaredCenters() []*statev1.CenterRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*statev1.CenterRecord, 0, len(s.dr.centers))
	for _, c := range s.dr.centers {
		out = append(out, proto.Clone(c).(*statev1.CenterRecord))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Site != out[j].Site {
			return out[i].Site < out[j].Site
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Policy returns a policy, built in or custom.
func (s *Store) Policy(name string) (*statev1.PolicyRecord, bool) {
	if p, ok := builtinPolicies[name]; ok {
		return proto.Clone(p).(*statev1.PolicyRecord), true
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.dr.policies[name]
	if !ok {
		return nil, false
	}
	return proto.Clone(p).(*statev1.PolicyRecord), true
}

// Policies lists the built-in policies, then the custom ones by name.
func (s *Store) Policies() []*statev1.PolicyRecord {
	out := BuiltinPolicies()
	s.mu.RLock()
	defer s.mu.RUnlock()
	var custom []*statev1.PolicyRecord
	for _, p := range s.dr.policies {
		custom = append(custom, proto.Clone(p).(*statev1.PolicyRecord))
	}
	sort.Slice(custom, func(i, j int) bool { return custom[i].Name < custom[j].Name })
	return append(out, custom...)
}

// PolicyUse counts the VMs and projects a policy is attached to.
func (s *Store) PolicyUse(name string) (vms, projects int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.policyUse(name)
}

// Protected is a VM with the policy protecting it, and each target's
// centers.
type Protected struct {
	VM     *statev1.VMRecord
	Policy *statev1.PolicyRecord
	// Source is "vm" or "project".
	Source  string
	Targets []ProtectedTarget
	// MirrorCenters are the centers the policy mirrors the VM to
	// synchronously (a mirror target's centers), sorted.
	MirrorCenters []*statev1.CenterRecord
}

// ProtectedTarget is one center a protected VM is copied to.
type ProtectedTarget struct {
	Target *statev1.PolicyTarget
	Center *statev1.CenterRecord
	// Newest is the newest point there (nil: none); Points counts them.
	Newest *statev1.RestorePointRecord
	Points int
	// Job is the running or failed backup there (nil: none).
	Job *statev1.BackupJobRecord
}

// EffectivePolicy is the policy protecting a VM ("", "" when none) and
// where it comes from ("vm" or "project").
func (s *Store) EffectivePolicy(vm *statev1.VMRecord) (name, source string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, src := s.effectivePolicy(vm)
	if p == nil {
		return "", ""
	}
	return p.Name, src
}

// ProtectedVMs lists the VMs a policy protects (project "" = all), by
// project then name, with each target center's newest point and job. VMs
// being deleted are left out.
func (s *Store) ProtectedVMs(project string) []Protected {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Protected
	for id := range s.dr.protected {
		vm := s.vms[id]
		if project != "" && vm.Project != project || vm.Desired == statev1.PowerState_POWER_STATE_DELETED {
			continue
		}
		p, src := s.effectivePolicy(vm)
		if p == nil {
			continue
		}
		pr := Protected{VM: proto.Clone(vm).(*statev1.VMRecord), Policy: p, Source: src}
		for _, t := range p.Targets {
			if t.Mirror {
				for _, c := range s.targetCenters(t) {
					pr.MirrorCenters = append(pr.MirrorCenters, c)
				}
				continue // no backups: Targets are the backup targets
			}
			for _, c := range s.targetCenters(t) {
				pt := ProtectedTarget{Target: t, Center: c}
				for id := range s.dr.vmPoints[vm.Id] {
					pt2 := s.dr.points[id]
					if pt2.Center != c.Name {
						continue
					}
					pt.Points++
					if pt.Newest == nil || pt2.TakenUnixNano > pt.Newest.TakenUnixNano {
						pt.Newest = pt2
					}
				}
				if id, ok := s.dr.jobByKey[jobKey(vm.Id, c.Name)]; ok {
					pt.Job = s.dr.jobs[id]
				}
				pr.Targets = append(pr.Targets, pt)
			}
		}
		out = append(out, pr)
	}
	sort.Slice(out, func(i, j int) bool {
		return nameKey(out[i].VM.Project, out[i].VM.Name) < nameKey(out[j].VM.Project, out[j].VM.Name)
	})
	// The VM is a clone (Apply changes VMs it owns in place); policies,
	// centers, points and jobs are replaced, never changed, so they are
	// shared: callers must not change them.
	return out
}

// BackupJob returns a job by id.
func (s *Store) BackupJob(id string) (*statev1.BackupJobRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	j, ok := s.dr.jobs[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(j).(*statev1.BackupJobRecord), true
}

// BackupJobs lists every job, by id.
func (s *Store) BackupJobs() []*statev1.BackupJobRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*statev1.BackupJobRecord, 0, len(s.dr.jobs))
	for _, j := range s.dr.jobs {
		out = append(out, proto.Clone(j).(*statev1.BackupJobRecord))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// RunningJobsOnHost lists the RUNNING jobs of a host, by id: what its
// assignments carry.
func (s *Store) RunningJobsOnHost(hostID string) []*statev1.BackupJobRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*statev1.BackupJobRecord
	for id := range s.dr.hostJobs[hostID] {
		if j := s.dr.jobs[id]; j.State == statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING {
			out = append(out, proto.Clone(j).(*statev1.BackupJobRecord))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// RestorePoint returns a point by id.
func (s *Store) RestorePoint(id string) (*statev1.RestorePointRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.dr.points[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(p).(*statev1.RestorePointRecord), true
}

func sortPointsNewestFirst(ps []*statev1.RestorePointRecord) {
	slices.SortFunc(ps, func(a, b *statev1.RestorePointRecord) int {
		if a.TakenUnixNano != b.TakenUnixNano {
			if a.TakenUnixNano > b.TakenUnixNano {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Id, b.Id)
	})
}

// RestorePointsIn lists the points in a center's repository, newest first.
func (s *Store) RestorePointsIn(center string) []*statev1.RestorePointRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*statev1.RestorePointRecord
	for _, p := range s.dr.points {
		if p.Center == center {
			out = append(out, proto.Clone(p).(*statev1.RestorePointRecord))
		}
	}
	sortPointsNewestFirst(out)
	return out
}

// RestorePoints lists every point, newest first.
func (s *Store) RestorePoints() []*statev1.RestorePointRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*statev1.RestorePointRecord, 0, len(s.dr.points))
	for _, p := range s.dr.points {
		out = append(out, proto.Clone(p).(*statev1.RestorePointRecord))
	}
	sortPointsNewestFirst(out)
	return out
}

// RestorePointsOf lists a VM's points (center "" = all), newest first.
func (s *Store) RestorePointsOf(vmID, center string) []*statev1.RestorePointRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*statev1.RestorePointRecord
	for id := range s.dr.vmPoints[vmID] {
		if p := s.dr.points[id]; center == "" || p.Center == center {
			out = append(out, proto.Clone(p).(*statev1.RestorePointRecord))
		}
	}
	sortPointsNewestFirst(out)
	return out
}

// PointVMIDs finds the ids of VMs (live or gone) whose points record
// name in project: a deleted VM's points are found by the name it had.
func (s *Store) PointVMIDs(project, name string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	seen := map[string]bool{}
	var out []string
	for _, p := range s.dr.points {
		if p.Vm != nil && p.Vm.Project == project && p.Vm.Name == name && !seen[p.VmId] {
			seen[p.VmId] = true
			out = append(out, p.VmId)
		}
	}
	sort.Strings(out)
	return out
}

// HostMayReadPoint says whether a host may read a point's chunks from its
// repository: the point is of a VM on that host (the base of its next
// backup), or a VM on that host is being restored from it.
func (s *Store) HostMayReadPoint(hostID, pointID string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.dr.points[pointID]
	if !ok || hostID == "" {
		return false
	}
	if vm, ok := s.vms[p.VmId]; ok && vm.HostId == hostID {
		return true
	}
	for id := range s.onHost[hostID] {
		if r := s.vms[id].GetRestore(); r != nil && r.PointId == pointID {
			return true
		}
	}
	return false
}

// KeptPoints splits one target's points (one VM, one center) into those a
// retention rule keeps and those it drops: a point is kept if any rule
// keeps it — the newest KeepLast, and the newest point of each of the
// newest KeepHourly hours and KeepDaily days (UTC) that have one. The
// newest point is always kept. Both lists are newest first.
func KeptPoints(points []*statev1.RestorePointRecord, r *statev1.RetentionRule) (keep, drop []*statev1.RestorePointRecord) {
	ps := slices.Clone(points)
	sortPointsNewestFirst(ps)
	const hour, day = int64(3600e9), int64(86400e9)
	hours, days := map[int64]bool{}, map[int64]bool{}
	for i, p := range ps {
		k := i == 0 || int32(i) < r.GetKeepLast()
		if h := floorDiv(p.TakenUnixNano, hour); !hours[h] && int32(len(hours)) < r.GetKeepHourly() {
			hours[h] = true
			k = true
		}
		if d := floorDiv(p.TakenUnixNano, day); !days[d] && int32(len(days)) < r.GetKeepDaily() {
			days[d] = true
			k = true
		}
		if k {
			keep = append(keep, p)
		} else {
			drop = append(drop, p)
		}
	}
	return keep, drop
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}
