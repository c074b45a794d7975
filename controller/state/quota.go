package state

import (
	"cmp"
	"slices"
	"strconv"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Quotas limit what the VMs of a department, and of each of its projects,
// take: vCPUs, memory, disk and the number of VMs (an unset limit is
// unlimited); volumes (volumes.go) count in disk, from version 8 on. The limits live in the department's and project's records
// (SetQuota changes them); what is in use is derived from the VMs, kept
// by addVM and removeVM. A VM counts from its PlaceVMs until it is gone
// (a VM being deleted still counts). PlaceVMs is refused, whole, when it
// would take a project or its department over a limit
// (KindQuotaExceeded); a limit set below what is in use refuses new VMs
// and leaves the existing ones alone.
//
// Only version 5 commands can set a limit (SetQuota, or a department or
// project created with one), so a log written before quotas existed never
// meets one: the check applies to PlaceVMs (and PlaceVM) of any version.

// Usage is an amount in the dimensions quotas limit.
type Usage struct {
	VCPUs, MemoryBytes, DiskBytes, VMs int64
}

// Add is u + o.
func (u Usage) Add(o Usage) Usage {
	return Usage{u.VCPUs + o.VCPUs, u.MemoryBytes + o.MemoryBytes, u.DiskBytes + o.DiskBytes, u.VMs + o.VMs}
}

// Sub is u - o.
func (u Usage) Sub(o Usage) Usage {
	return Usage{u.VCPUs - o.VCPUs, u.MemoryBytes - o.MemoryBytes, u.DiskBytes - o.DiskBytes, u.VMs - o.VMs}
}

// Times is n VMs of u each.
func (u Usage) Times(n int64) Usage {
	return Usage{u.VCPUs * n, u.MemoryBytes * n, u.DiskBytes * n, u.VMs * n}
}

// UsageOf is what one VM takes.
func UsageOf(vm *statev1.VMRecord) Usage {
	return Usage{VCPUs: int64(vm.Vcpus), MemoryBytes: vm.MemoryBytes, DiskBytes: vm.DiskBytes, VMs: 1}
}

// QuotaUse is a department's or project's quota with what is in use.
type QuotaUse struct {
	Department string
	// "" for the department's own quota.
	Project string
	// nil or an unset field: unlimited.
	Limit *statev1.Quota
	Used  Usage
}

// quotaDim is one dimension: how people name it, its field in a Quota and
// in a Usage, and how its amounts are written.
type quotaDim struct {
	dim   statev1.QuotaDimension
	name  string
	limit func(*statev1.Quota) *int64
	used  func(Usage) int64
	bytes bool
}

var quotaDims = []quotaDim{
	{statev1.QuotaDimension_QUOTA_DIMENSION_VCPUS, "vCPU", func(q *statev1.Quota) *int64 { return q.Vcpus }, func(u Usage) int64 { return u.VCPUs }, false},
	{statev1.QuotaDimension_QUOTA_DIMENSION_MEMORY, "memory", func(q *statev1.Quota) *int64 { return q.MemoryBytes }, func(u Usage) int64 { return u.MemoryBytes }, true},
	{statev1.QuotaDimension_QUOTA_DIMENSION_DISK, "disk", func(q *statev1.Quota) *int64 { return q.DiskBytes }, func(u Usage) int64 { return u.DiskBytes }, true},
	{statev1.QuotaDimension_QUOTA_DIMENSION_VMS, "VMs", func(q *statev1.Quota) *int64 { return q.Vms }, func(u Usage) int64 { return u.VMs }, false},
}

func (d quotaDim) format(n int64) string {
	if d.bytes {
		return formatBytes(n)
	}
	return strconv.FormatInt(n, 10)
}

// setLimit sets (v non-nil) or clears d's limit in q.
func setLimit(q *statev1.Quota, d statev1.QuotaDimension, v *int64) {
	switch d {
	case statev1.QuotaDimension_QUOTA_DIMENSION_VCPUS:
		q.Vcpus = v
	case statev1.QuotaDimension_QUOTA_DIMENSION_MEMORY:
		q.MemoryBytes = v
	case statev1.QuotaDimension_QUOTA_DIMENSION_DISK:
		q.DiskBytes = v
	case statev1.QuotaDimension_QUOTA_DIMENSION_VMS:
		q.Vms = v
	}
}

// QuotaSubject names what a quota belongs to, as QuotaFailure subjects
// do: "department:eco", "project:air".
func QuotaSubject(dept, project string) string {
	if project != "" {
		return "project:" + project
	}
	return "department:" + dept
}

// vmDept is the department a VM of project p counts against: its
// project's, or default for a project without a record. Callers hold mu.
func (s *Store) vmDept(p string) string {
	return cmp.Or(s.projectDept(p), DefaultDepartment)
}

// use adds (sign +1) or removes (-1) vm's usage from its project and
// department. A project keeps its department while it has VMs (it cannot
// be created or deleted then), so both come off where they went on.
func (s *Store) use(vm *statev1.VMRecord, sign int64) {
	u := UsageOf(vm).Times(sign)
	d := s.vmDept(vm.Project)
	s.addUse(s.projUse, vm.Project, u)
	s.addUse(s.deptUse, d, u)
}

// addUse adds u to m[k], keeping no zero entries (volumes use disk
// without being VMs).
func (s *Store) addUse(m map[string]Usage, k string, u Usage) {
	if n := m[k].Add(u); n != (Usage{}) {
		m[k] = n
	} else {
		delete(m, k)
	}
}

// quotaOf is the limit of a department (project "") or project; nil when
// unlimited. Callers hold mu.
func (s *Store) quotaOf(dept, project string) *statev1.Quota {
	if project != "" {
		return s.projects[project].GetQuota()
	}
	return s.depts[dept].GetQuota()
}

// exceeds checks that used+ask stays within limit in every dimension.
func exceeds(dept, project string, limit *statev1.Quota, used, ask Usage) error {
	if limit == nil {
		return nil
	}
	for _, d := range quotaDims {
		l := d.limit(limit)
		if l == nil || d.used(ask) == 0 || d.used(used)+d.used(ask) <= *l {
			continue
		}
		what := "department " + strconv.Quote(dept)
		if project != "" {
			what = "project " + strconv.Quote(project)
		}
		return &Error{Kind: KindQuotaExceeded, Subject: QuotaSubject(dept, project),
			Msg: "quota exceeded: " + what + " " + d.name + ": limit " + d.format(*l) + ", in use " + d.format(d.used(used)) + ", asked " + d.format(d.used(ask))}
	}
	return nil
}

// checkQuotas refuses asks (per project, in first-seen order) that would
// take a project or its department over its quota. Callers hold mu.
func (s *Store) checkQuotas(order []string, asks map[string]Usage) error {
	deptAsk := map[string]Usage{}
	var depts []string
	for _, p := range order {
		d := s.vmDept(p)
		if err := exceeds(d, p, s.quotaOf(d, p), s.projUse[p], asks[p]); err != nil {
			return err
		}
		if _, ok := deptAsk[d]; !ok {
			depts = append(depts, d)
		}
		deptAsk[d] = deptAsk[d].Add(asks[p])
	}
	for _, d := range depts {
		if err := exceeds(d, "", s.quotaOf(d, ""), s.deptUse[d], deptAsk[d]); err != nil {
			return err
		}
	}
	return nil
}

// checkPlaceQuotas checks the quotas for a PlaceVMs batch. Callers hold mu.
func (s *Store) checkPlaceQuotas(vms []*statev1.VMRecord) error {
	asks := map[string]Usage{}
	var order []string
	for _, vm := range vms {
		if _, ok := asks[vm.Project]; !ok {
			order = append(order, vm.Project)
		}
		asks[vm.Project] = asks[vm.Project].Add(UsageOf(vm))
	}
	return s.checkQuotas(order, asks)
}

// CheckQuota says whether ask more in project p fits the quotas of p and
// of its department as the committed state uses them: the leader's early
// refusal, before anything goes to raft; Apply checks again.
func (s *Store) CheckQuota(p string, ask Usage) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := s.vmDept(p)
	if s.quotaOf(d, p) == nil && s.quotaOf(d, "") == nil {
		return nil // no limit on this project or its department: nothing to count
	}
	return s.checkQuotas([]string{p}, map[string]Usage{p: ask})
}

// checkQuotaValues refuses negative limits.
func checkQuotaValues(q *statev1.Quota) error {
	if q == nil {
		return nil
	}
	for _, d := range quotaDims {
		if l := d.limit(q); l != nil && *l < 0 {
			return errorf(KindInvalid, "%s quota %d is negative: give 0 or more, or clear it for unlimited", d.name, *l)
		}
	}
	return nil
}

// checkWithin refuses a project limit above its department's.
func checkWithin(dept, project string, pq, dq *statev1.Quota) error {
	if pq == nil || dq == nil {
		return nil
	}
	for _, d := range quotaDims {
		p, dl := d.limit(pq), d.limit(dq)
		if p != nil && dl != nil && *p > *dl {
			return errorf(KindFailedPrecondition, "project %q %s quota %s would be above department %q's %s: lower it, or raise the department's first",
				project, d.name, d.format(*p), dept, d.format(*dl))
		}
	}
	return nil
}

// emptyQuota is nil for a quota without any limit.
func emptyQuota(q *statev1.Quota) *statev1.Quota {
	if q == nil || (q.Vcpus == nil && q.MemoryBytes == nil && q.DiskBytes == nil && q.Vms == nil) {
		return nil
	}
	return q
}

// checkNewQuota checks the quota a department or project is created with.
func (s *Store) checkNewQuota(dept, project string, q *statev1.Quota) error {
	if err := checkQuotaValues(q); err != nil {
		return err
	}
	if project != "" {
		return checkWithin(dept, project, q, s.quotaOf(dept, ""))
	}
	return nil
}

func (s *Store) applySetQuota(now int64, c *statev1.SetQuota) (Result, error) {
	dept, project := c.GetDepartment(), c.GetProject()
	if !s.deptExists(dept) {
		return Result{}, errorf(KindNotFound, "department %q not found", dept)
	}
	if project != "" && s.projectDept(project) != dept {
		return Result{}, errorf(KindNotFound, "project %q not found in department %q", project, dept)
	}
	if err := checkQuotaValues(c.GetQuota()); err != nil {
		return Result{}, err
	}
	q := proto.Clone(s.quotaOf(dept, project)).(*statev1.Quota)
	if q == nil {
		q = &statev1.Quota{}
	}
	set := c.GetQuota()
	if set == nil {
		set = &statev1.Quota{}
	}
	for _, d := range quotaDims {
		if v := d.limit(set); v != nil {
			setLimit(q, d.dim, proto.Int64(*v))
		}
	}
	for _, cd := range c.GetClear() {
		i := slices.IndexFunc(quotaDims, func(d quotaDim) bool { return d.dim == cd })
		if i < 0 {
			return Result{}, errorf(KindInvalid, "quota dimension %v to clear is unknown: use vcpus, memory, disk or vms", cd)
		}
		if quotaDims[i].limit(set) != nil {
			return Result{}, errorf(KindInvalid, "%s quota is both set and cleared: do one", quotaDims[i].name)
		}
		setLimit(q, cd, nil)
	}
	q = emptyQuota(q)
	if project != "" {
		if err := checkWithin(dept, project, q, s.quotaOf(dept, "")); err != nil {
			return Result{}, err
		}
		rec, _ := s.project(project) // a clone; made up for a project without a record
		if _, ok := s.projects[project]; !ok {
			rec.CreatedUnixNano = now
		}
		rec.Quota = q
		s.projects[project] = rec
		return Result{Project: proto.Clone(rec).(*statev1.ProjectRecord)}, nil
	}
	var names []string
	for _, p := range s.projects {
		if p.Department == dept {
			names = append(names, p.Name)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		pq := s.projects[n].GetQuota()
		if pq == nil || q == nil {
			continue
		}
		for _, d := range quotaDims {
			if p, dl := d.limit(pq), d.limit(q); p != nil && dl != nil && *p > *dl {
				return Result{}, errorf(KindFailedPrecondition, "department %q %s quota %s would be below its project %q's %s: lower the project's first",
					dept, d.name, d.format(*dl), n, d.format(*p))
			}
		}
	}
	rec, _ := s.department(dept)
	if _, ok := s.depts[dept]; !ok {
		rec.CreatedUnixNano = now
	}
	rec.Quota = q
	s.depts[dept] = rec
	return Result{Department: proto.Clone(rec).(*statev1.DepartmentRecord)}, nil
}

// Quota returns the quota of a department (project "") or of one of its
// projects, with what is in use; ok is false when it does not exist (or
// the project is another department's).
func (s *Store) Quota(dept, project string) (QuotaUse, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.deptExists(dept) {
		return QuotaUse{}, false
	}
	if project == "" {
		return QuotaUse{Department: dept, Limit: proto.Clone(s.quotaOf(dept, "")).(*statev1.Quota), Used: s.deptUse[dept]}, true
	}
	if s.projectDept(project) != dept {
		return QuotaUse{}, false
	}
	return QuotaUse{Department: dept, Project: project, Limit: proto.Clone(s.quotaOf(dept, project)).(*statev1.Quota), Used: s.projUse[project]}, true
}

// Quotas lists the quotas of department dept ("" = every department),
// each department followed by its projects, by name.
func (s *Store) Quotas(dept string) []QuotaUse {
	s.mu.RLock()
	defer s.mu.RUnlock()
	depts := map[string]bool{DefaultDepartment: true}
	for d := range s.depts {
		depts[d] = true
	}
	projects := map[string][]string{}
	for _, p := range s.projectNames() {
		d := s.projectDept(p)
		projects[d] = append(projects[d], p)
	}
	var names []string
	for d := range depts {
		if dept == "" || d == dept {
			names = append(names, d)
		}
	}
	slices.Sort(names)
	var out []QuotaUse
	for _, d := range names {
		out = append(out, QuotaUse{Department: d, Limit: proto.Clone(s.quotaOf(d, "")).(*statev1.Quota), Used: s.deptUse[d]})
		for _, p := range projects[d] { // sorted: projectNames is
			out = append(out, QuotaUse{Department: d, Project: p, Limit: proto.Clone(s.quotaOf(d, p)).(*statev1.Quota), Used: s.projUse[p]})
		}
	}
	return out
}
