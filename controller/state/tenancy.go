package state

import (
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// DefaultDepartment holds DefaultProject, and every project that has VMs
// or groups but no record (made before departments existed): both exist
// without a record and cannot be deleted.
const DefaultDepartment = "default"

// rulesV5 is the first command version under which a VM or group may only
// go into a project that exists (older commands named any project).
const rulesV5 = 5

// Lockout (MLPS level 3, identification and authentication): after
// MaxLoginFailures failed logins of one user within LoginFailureWindow,
// every token of the user is refused for LockoutDuration. Times are
// command times (the leader's clock), so every controller agrees.
const (
	MaxLoginFailures   = 5
	LoginFailureWindow = 15 * time.Minute
	LockoutDuration    = 30 * time.Minute
)

// clusterRole says whether r is one of the cluster-wide roles, whose
// users belong to no department.
func clusterRole(r statev1.Role) bool {
	switch r {
	case statev1.Role_ROLE_SYSADMIN, statev1.Role_ROLE_SECADMIN, statev1.Role_ROLE_AUDITOR, statev1.Role_ROLE_OPERATOR:
		return true
	}
	return false
}

func deptRole(r statev1.Role) bool {
	switch r {
	case statev1.Role_ROLE_DEPT_ADMIN, statev1.Role_ROLE_MEMBER, statev1.Role_ROLE_VIEWER:
		return true
	}
	return false
}

// RoleName is how people write a role: "sysadmin", "dept-admin".
func RoleName(r statev1.Role) string {
	switch r {
	case statev1.Role_ROLE_SYSADMIN:
		return "sysadmin"
	case statev1.Role_ROLE_SECADMIN:
		return "secadmin"
	case statev1.Role_ROLE_AUDITOR:
		return "auditor"
	case statev1.Role_ROLE_OPERATOR:
		return "operator"
	case statev1.Role_ROLE_DEPT_ADMIN:
		return "dept-admin"
	case statev1.Role_ROLE_MEMBER:
		return "member"
	case statev1.Role_ROLE_VIEWER:
		return "viewer"
	case statev1.Role_ROLE_HOST:
		return "host"
	case statev1.Role_ROLE_CONTROLLER:
		return "controller"
	}
	return "none"
}

// UserRoles are the roles a user account may have, as people write them.
var UserRoles = []string{"sysadmin", "secadmin", "auditor", "operator", "dept-admin", "member", "viewer"}

// ParseRole reads a role as people write it (one of UserRoles).
func ParseRole(s string) (statev1.Role, error) {
	for r := statev1.Role_ROLE_SYSADMIN; r <= statev1.Role_ROLE_VIEWER; r++ {
		if RoleName(r) == s {
			return r, nil
		}
	}
	return 0, errorf(KindInvalid, "unknown role %q: use one of %v", s, UserRoles)
}

// projectDept is the department of project p ("" when p does not exist).
// Callers hold mu.
func (s *Store) projectDept(p string) string {
	if rec, ok := s.projects[p]; ok {
		return rec.Department
	}
	if s.legacyProject(p) {
		return DefaultDepartment
	}
	return ""
}

// legacyProject says whether p exists without a record: the default
// project, or one that VMs or groups were put in before departments
// existed. Callers hold mu.
func (s *Store) legacyProject(p string) bool {
	if p == DefaultProject {
		return true
	}
	return s.projectUse[p] > 0 || s.projectImages[p] > 0 || s.projectVolumes[p] > 0
}

func (s *Store) deptExists(d string) bool {
	_, ok := s.depts[d]
	return ok || d == DefaultDepartment
}

func (s *Store) applyCreateDepartment(now int64, c *statev1.CreateDepartment) (*statev1.DepartmentRecord, error) {
	d := c.GetDepartment()
	if err := checkStateName("department name", d.GetName()); err != nil {
		return nil, err
	}
	if s.deptExists(d.Name) {
		return nil, errorf(KindAlreadyExists, "department %q already exists", d.Name)
	}
	if err := s.checkNewQuota(d.Name, "", d.GetQuota()); err != nil {
		return nil, err
	}
	rec := proto.Clone(d).(*statev1.DepartmentRecord)
	rec.CreatedUnixNano = now
	s.depts[rec.Name] = rec
	return proto.Clone(rec).(*statev1.DepartmentRecord), nil
}

func (s *Store) applyDeleteDepartment(c *statev1.DeleteDepartment) (*statev1.DepartmentRecord, error) {
	name := c.GetName()
	if name == DefaultDepartment {
		return nil, errorf(KindFailedPrecondition, "department %q holds what existed before departments and cannot be deleted", name)
	}
	rec, ok := s.depts[name]
	if !ok {
		return nil, errorf(KindNotFound, "department %q not found", name)
	}
	var projects, users []string
	for _, p := range s.projects {
		if p.Department == name {
			projects = append(projects, p.Name)
		}
	}
	for _, u := range s.users {
		if u.Department == name {
			users = append(users, u.Name)
		}
	}
	sort.Strings(projects)
	sort.Strings(users)
	if len(projects) > 0 {
		return nil, errorf(KindFailedPrecondition, "department %q still has %d project(s) (%s): delete them first", name, len(projects), listSome(projects))
	}
	if len(users) > 0 {
		return nil, errorf(KindFailedPrecondition, "department %q still has %d user(s) (%s): delete them first", name, len(users), listSome(users))
	}
	delete(s.depts, name)
	return rec, nil
}

func (s *Store) applyCreateProject(now int64, c *statev1.CreateProject) (*statev1.ProjectRecord, error) {
	p := c.GetProject()
	if err := checkStateName("project name", p.GetName()); err != nil {
		return nil, err
	}
	if d := s.projectDept(p.Name); d != "" {
		return nil, errorf(KindAlreadyExists, "project %q already exists (department %q)", p.Name, d)
	}
	if !s.deptExists(p.GetDepartment()) {
		return nil, errorf(KindNotFound, "department %q not found", p.GetDepartment())
	}
	if err := s.checkNewQuota(p.Department, p.Name, p.GetQuota()); err != nil {
		return nil, err
	}
	rec := proto.Clone(p).(*statev1.ProjectRecord)
	rec.CreatedUnixNano = now
	s.projects[rec.Name] = rec
	return proto.Clone(rec).(*statev1.ProjectRecord), nil
}

func (s *Store) applyDeleteProject(c *statev1.DeleteProject) (*statev1.ProjectRecord, error) {
	name := c.GetName()
	rec, ok := s.projects[name]
	if !ok || name == DefaultProject { // the default project may have a record (a quota)
		if s.legacyProject(name) {
			if n := s.projectUse[name]; n > 0 {
				return nil, errorf(KindFailedPrecondition, "project %q still has %d VM(s) or group(s): delete them first", name, n)
			}
			if err := s.checkProjectImages(name); err != nil && name != DefaultProject {
				return nil, err
			}
			if err := s.checkProjectVolumes(name); err != nil && name != DefaultProject {
				return nil, err
			}
			return nil, errorf(KindFailedPrecondition, "project %q is the default project and cannot be deleted", name)
		}
		return nil, errorf(KindNotFound, "project %q not found", name)
	}
	if n := s.projectUse[name]; n > 0 {
		return nil, errorf(KindFailedPrecondition, "project %q still has %d VM(s) or group(s): delete them first", name, n)
	}
	if err := s.checkProjectImages(name); err != nil {
		return nil, err
	}
	if err := s.checkProjectVolumes(name); err != nil {
		return nil, err
	}
	delete(s.projects, name)
	// Members lose the project; the users stay.
	for _, u := range s.users {
		if slices.Contains(u.Projects, name) {
			nu := proto.Clone(u).(*statev1.UserRecord)
			nu.Projects = slices.DeleteFunc(nu.Projects, func(p string) bool { return p == name })
			s.users[u.Name] = nu
		}
	}
	return rec, nil
}

// checkUserProjects checks that every project exists and belongs to dept.
func (s *Store) checkUserProjects(dept string, projects []string) error {
	for _, p := range projects {
		d := s.projectDept(p)
		if d == "" || d != dept {
			// Another department's project is reported as absent.
			return errorf(KindNotFound, "project %q not found in department %q", p, dept)
		}
	}
	return nil
}

func (s *Store) applyCreateUser(now int64, c *statev1.CreateUser) (*statev1.UserRecord, error) {
	u := c.GetUser()
	if err := checkStateName("user name", u.GetName()); err != nil {
		return nil, err
	}
	if _, ok := s.users[u.Name]; ok {
		return nil, errorf(KindAlreadyExists, "user %q already exists", u.Name)
	}
	switch {
	case clusterRole(u.Role):
		if u.Department != "" || len(u.Projects) > 0 {
			return nil, errorf(KindInvalid, "role %s is cluster-wide: give no department or project", RoleName(u.Role))
		}
	case deptRole(u.Role):
		if !s.deptExists(u.Department) {
			return nil, errorf(KindNotFound, "department %q not found", u.Department)
		}
		if err := s.checkUserProjects(u.Department, u.Projects); err != nil {
			return nil, err
		}
	default:
		return nil, errorf(KindInvalid, "role %s cannot be given to a user: use one of %v", RoleName(u.Role), UserRoles)
	}
	rec := proto.Clone(u).(*statev1.UserRecord)
	rec.CreatedUnixNano = now
	rec.Projects = sortedUnique(rec.Projects)
	rec.FailuresUnixNano, rec.LockedUntilUnixNano = nil, 0
	s.users[rec.Name] = rec
	return proto.Clone(rec).(*statev1.UserRecord), nil
}

func (s *Store) applyDeleteUser(now int64, c *statev1.DeleteUser) (*statev1.UserRecord, error) {
	rec, ok := s.users[c.GetName()]
	if !ok {
		return nil, errorf(KindNotFound, "user %q not found", c.GetName())
	}
	delete(s.users, rec.Name)
	// Its tokens stop working with it (and stay listed as revoked).
	for id, t := range s.tokens {
		if t.User == rec.Name && t.RevokedUnixNano == 0 {
			nt := proto.Clone(t).(*statev1.TokenRecord)
			nt.RevokedUnixNano = now
			s.tokens[id] = nt
		}
	}
	return rec, nil
}

func (s *Store) applyUpdateUser(c *statev1.UpdateUser) (*statev1.UserRecord, error) {
	old, ok := s.users[c.GetName()]
	if !ok {
		return nil, errorf(KindNotFound, "user %q not found", c.GetName())
	}
	u := proto.Clone(old).(*statev1.UserRecord)
	if c.Role != statev1.Role_ROLE_UNSPECIFIED && c.Role != u.Role {
		if clusterRole(c.Role) != clusterRole(u.Role) || !(clusterRole(c.Role) || deptRole(c.Role)) {
			return nil, errorf(KindInvalid, "user %q cannot go from role %s to %s: a user is either cluster-wide or in a department; create another user", u.Name, RoleName(u.Role), RoleName(c.Role))
		}
		u.Role = c.Role
	}
	if len(c.AddProjects)+len(c.RemoveProjects) > 0 && !deptRole(u.Role) {
		return nil, errorf(KindInvalid, "user %q has the cluster role %s and belongs to no project", u.Name, RoleName(u.Role))
	}
	if err := s.checkUserProjects(u.Department, c.AddProjects); err != nil {
		return nil, err
	}
	u.Projects = append(u.Projects, c.AddProjects...)
	u.Projects = slices.DeleteFunc(u.Projects, func(p string) bool { return slices.Contains(c.RemoveProjects, p) })
	u.Projects = sortedUnique(u.Projects)
	if c.Unlock {
		u.FailuresUnixNano, u.LockedUntilUnixNano = nil, 0
	}
	s.users[u.Name] = u
	return proto.Clone(u).(*statev1.UserRecord), nil
}

func (s *Store) applyCreateToken(now int64, c *statev1.CreateToken) (*statev1.TokenRecord, error) {
	t := c.GetToken()
	switch {
	case t.GetId() == "" || !ValidName(t.Id):
		return nil, errorf(KindInvalid, "token id %q is not valid", t.GetId())
	case len(t.GetSecretHash()) != 32:
		return nil, errorf(KindInvalid, "token secret hash must be 32 bytes (SHA-256), not %d", len(t.GetSecretHash()))
	case (t.User == "") == (t.HostId == ""):
		return nil, errorf(KindInvalid, "a token is for one user or one host")
	case t.ExpiresUnixNano != 0 && t.ExpiresUnixNano <= now:
		return nil, errorf(KindInvalid, "token would expire before it is created")
	}
	if _, ok := s.tokens[t.Id]; ok {
		return nil, errorf(KindAlreadyExists, "token %q already exists", t.Id)
	}
	if t.User != "" {
		if _, ok := s.users[t.User]; !ok {
			return nil, errorf(KindNotFound, "user %q not found", t.User)
		}
	}
	rec := proto.Clone(t).(*statev1.TokenRecord)
	rec.CreatedUnixNano, rec.RevokedUnixNano = now, 0
	s.tokens[rec.Id] = rec
	return proto.Clone(rec).(*statev1.TokenRecord), nil
}

func (s *Store) applyRevokeToken(now int64, c *statev1.RevokeToken) (*statev1.TokenRecord, error) {
	t, ok := s.tokens[c.GetId()]
	if !ok {
		return nil, errorf(KindNotFound, "token %q not found", c.GetId())
	}
	if t.RevokedUnixNano == 0 {
		t = proto.Clone(t).(*statev1.TokenRecord)
		t.RevokedUnixNano = now
		s.tokens[t.Id] = t
	}
	return proto.Clone(t).(*statev1.TokenRecord), nil
}

func (s *Store) applyRecordLoginFailures(now int64, c *statev1.RecordLoginFailures) error {
	for _, f := range c.GetFailures() {
		old, ok := s.users[f.GetUser()]
		if !ok {
			continue // audited only
		}
		u := proto.Clone(old).(*statev1.UserRecord)
		cut := now - int64(LoginFailureWindow)
		u.FailuresUnixNano = slices.DeleteFunc(u.FailuresUnixNano, func(t int64) bool { return t <= cut })
		u.FailuresUnixNano = append(u.FailuresUnixNano, now)
		if len(u.FailuresUnixNano) >= MaxLoginFailures {
			u.LockedUntilUnixNano = now + int64(LockoutDuration)
			u.FailuresUnixNano = nil
		}
		s.users[u.Name] = u
	}
	return nil
}

func sortedUnique(ss []string) []string {
	out := slices.Clone(ss)
	sort.Strings(out)
	return slices.Compact(out)
}

// listSome names up to three items: "a, b, c and 4 more".
func listSome(ss []string) string {
	if len(ss) <= 3 {
		return strings.Join(ss, ", ")
	}
	return strings.Join(ss[:3], ", ") + " and " + strconv.Itoa(len(ss)-3) + " more"
}

func checkStateName(what, n string) error {
	switch {
	case n == "":
		return errorf(KindInvalid, "%s is empty: give 1-63 lowercase letters, digits or '-'", what)
	case len(n) > 63:
		return errorf(KindInvalid, "%s %.20q... is %d characters long: at most 63 are allowed", what, n, len(n))
	case !ValidName(n):
		return errorf(KindInvalid, "%s %q is not valid: use lowercase letters, digits and '-', starting and ending with a letter or digit", what, n)
	}
	return nil
}

// Department returns one department (the default one included).
func (s *Store) Department(name string) (*statev1.DepartmentRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.department(name)
}

func (s *Store) department(name string) (*statev1.DepartmentRecord, bool) {
	if d, ok := s.depts[name]; ok {
		return proto.Clone(d).(*statev1.DepartmentRecord), true
	}
	if name == DefaultDepartment {
		return &statev1.DepartmentRecord{Name: DefaultDepartment, Description: "what existed before departments"}, true
	}
	return nil, false
}

// Departments lists every department, sorted by name.
func (s *Store) Departments() []*statev1.DepartmentRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := []*statev1.DepartmentRecord{}
	if _, ok := s.depts[DefaultDepartment]; !ok {
		d, _ := s.department(DefaultDepartment)
		out = append(out, d)
	}
	for _, d := range s.depts {
		out = append(out, proto.Clone(d).(*statev1.DepartmentRecord))
	}
	slices.SortFunc(out, func(a, b *statev1.DepartmentRecord) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Project returns one project, with a record made up for one that exists
// without a record (see legacyProject).
func (s *Store) Project(name string) (*statev1.ProjectRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.project(name)
}

func (s *Store) project(name string) (*statev1.ProjectRecord, bool) {
	if p, ok := s.projects[name]; ok {
		return proto.Clone(p).(*statev1.ProjectRecord), true
	}
	if s.legacyProject(name) {
		return &statev1.ProjectRecord{Name: name, Department: DefaultDepartment}, true
	}
	return nil, false
}

// ProjectDepartment is the department of project p; ok is false when p
// does not exist.
func (s *Store) ProjectDepartment(p string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := s.projectDept(p)
	return d, d != ""
}

// Projects lists the projects of department dept ("" = every one), sorted.
func (s *Store) Projects(dept string) []*statev1.ProjectRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := []*statev1.ProjectRecord{}
	for _, n := range s.projectNames() {
		if p, ok := s.project(n); ok && (dept == "" || p.Department == dept) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *statev1.ProjectRecord) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// projectNames lists every project, with or without a record (see
// legacyProject), sorted. Callers hold mu.
func (s *Store) projectNames() []string {
	names := map[string]bool{DefaultProject: true}
	for p := range s.projects {
		names[p] = true
	}
	for p := range s.projectUse {
		names[p] = true
	}
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// ProjectUse is how many VMs and placement groups project p has.
func (s *Store) ProjectUse(p string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.projectUse[p]
}

// ProjectCounts is how many VMs and how many placement groups project p
// has, from the counters Apply keeps (no record is copied).
func (s *Store) ProjectCounts(p string) (vms, groups int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	vms = int(s.projUse[p].VMs)
	return vms, s.projectUse[p] - vms
}

// UserCount is how many users department dept has.
func (s *Store) UserCount(dept string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, u := range s.users {
		if u.Department == dept {
			n++
		}
	}
	return n
}

// User returns one user.
func (s *Store) User(name string) (*statev1.UserRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, ok := s.users[name]
	if !ok {
		return nil, false
	}
	return proto.Clone(u).(*statev1.UserRecord), true
}

// Users lists the users of department dept ("" = every user; "-" = the
// cluster-wide ones), sorted by name.
func (s *Store) Users(dept string) []*statev1.UserRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := []*statev1.UserRecord{}
	for _, u := range s.users {
		if dept == "" || u.Department == dept || (dept == "-" && u.Department == "") {
			out = append(out, proto.Clone(u).(*statev1.UserRecord))
		}
	}
	slices.SortFunc(out, func(a, b *statev1.UserRecord) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Token returns one token record (its secret hash included: callers
// compare, never show it).
func (s *Store) Token(id string) (*statev1.TokenRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.tokens[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(t).(*statev1.TokenRecord), true
}

// Credential is what authenticating a token needs, read at one moment:
// the token and, for a user token, its user (nil when deleted).
func (s *Store) Credential(id string) (*statev1.TokenRecord, *statev1.UserRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.tokens[id]
	if !ok {
		return nil, nil, false
	}
	// Records are replaced, never changed: sharing them read-only is safe.
	return t, s.users[t.User], true
}

// Tokens lists the tokens of user ("" = every token), sorted by id.
func (s *Store) Tokens(user string) []*statev1.TokenRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := []*statev1.TokenRecord{}
	for _, t := range s.tokens {
		if user == "" || t.User == user {
			out = append(out, proto.Clone(t).(*statev1.TokenRecord))
		}
	}
	slices.SortFunc(out, func(a, b *statev1.TokenRecord) int { return strings.Compare(a.Id, b.Id) })
	return out
}
