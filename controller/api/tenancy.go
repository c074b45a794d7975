package api

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/internal/clock"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// TenancyView is what the department, project, user and token handlers
// read (*state.Store).
type TenancyView interface {
	Department(name string) (*statev1.DepartmentRecord, bool)
	Departments() []*statev1.DepartmentRecord
	Project(name string) (*statev1.ProjectRecord, bool)
	Projects(dept string) []*statev1.ProjectRecord
	ProjectCounts(p string) (vms, groups int)
	UserCount(dept string) int
	User(name string) (*statev1.UserRecord, bool)
	Users(dept string) []*statev1.UserRecord
	Tokens(user string) []*statev1.TokenRecord
}

// TenancyServer serves departments, projects, users and tokens.
type TenancyServer struct {
	yunchiv1.UnimplementedDepartmentServiceServer
	yunchiv1.UnimplementedProjectServiceServer
	yunchiv1.UnimplementedUserServiceServer
	yunchiv1.UnimplementedTokenServiceServer

	s *Server
}

// Tenancy returns the tenancy services of s.
func (s *Server) Tenancy() *TenancyServer {
	return &TenancyServer{s: s}
}

func caller(ctx context.Context) *auth.Principal {
	if p, ok := auth.FromContext(ctx); ok {
		return p
	}
	// Calls made inside the controller (bootstrap) act as the system.
	return &auth.Principal{Kind: auth.KindController, Name: "system", Role: yunchiv1.Role_ROLE_SECADMIN}
}

func (t *TenancyServer) deptOut(ctx context.Context, d *statev1.DepartmentRecord) *yunchiv1.Department {
	out := &yunchiv1.Department{Name: d.Name, Description: d.Description, CreatedAt: ts(d.CreatedUnixNano), Projects: []string{}}
	for _, p := range t.s.store.Projects(d.Name) {
		if auth.Sees(ctx, p.Name) {
			out.Projects = append(out.Projects, p.Name)
		}
	}
	out.Users = int32(t.s.store.UserCount(d.Name))
	return out
}

func (t *TenancyServer) CreateDepartment(ctx context.Context, req *yunchiv1.CreateDepartmentRequest) (*yunchiv1.Department, error) {
	if err := checkName("department name", req.Name); err != nil {
		return nil, err
	}
	if err := checkText("description", req.Description); err != nil {
		return nil, err
	}
	res, err := t.s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_CreateDepartment{CreateDepartment: &statev1.CreateDepartment{
		Department: &statev1.DepartmentRecord{Name: req.Name, Description: req.Description}}}})
	if err != nil {
		return nil, err
	}
	return t.deptOut(ctx, res.Department), nil
}

func (t *TenancyServer) GetDepartment(ctx context.Context, req *yunchiv1.GetDepartmentRequest) (*yunchiv1.Department, error) {
	d, ok := t.s.store.Department(req.Name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "department %q not found", req.Name)
	}
	return t.deptOut(ctx, d), nil
}

func (t *TenancyServer) ListDepartments(ctx context.Context, req *yunchiv1.ListDepartmentsRequest) (*yunchiv1.ListDepartmentsResponse, error) {
	out := &yunchiv1.ListDepartmentsResponse{Departments: []*yunchiv1.Department{}}
	for _, d := range t.s.store.Departments() {
		if auth.SeesDepartment(ctx, d.Name) {
			out.Departments = append(out.Departments, t.deptOut(ctx, d))
		}
	}
	return out, nil
}

func (t *TenancyServer) DeleteDepartment(ctx context.Context, req *yunchiv1.DeleteDepartmentRequest) (*yunchiv1.DeleteDepartmentResponse, error) {
	if err := checkName("department name", req.Name); err != nil {
		return nil, err
	}
	if _, err := t.s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_DeleteDepartment{DeleteDepartment: &statev1.DeleteDepartment{Name: req.Name}}}); err != nil {
		return nil, err
	}
	return &yunchiv1.DeleteDepartmentResponse{}, nil
}

func (t *TenancyServer) projectOut(p *statev1.ProjectRecord) *yunchiv1.Project {
	out := &yunchiv1.Project{Name: p.Name, Department: p.Department, Description: p.Description, CreatedAt: ts(p.CreatedUnixNano)}
	vms, groups := t.s.store.ProjectCounts(p.Name)
	out.Vms, out.Groups = int32(vms), int32(groups)
	return out
}

func (t *TenancyServer) CreateProject(ctx context.Context, req *yunchiv1.CreateProjectRequest) (*yunchiv1.Project, error) {
	if err := checkName("project name", req.Name); err != nil {
		return nil, err
	}
	if req.Department == "" {
		return nil, invalid("department is required: give --dept")
	}
	if err := checkName("department name", req.Department); err != nil {
		return nil, err
	}
	if err := checkText("description", req.Description); err != nil {
		return nil, err
	}
	res, err := t.s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_CreateProject{CreateProject: &statev1.CreateProject{
		Project: &statev1.ProjectRecord{Name: req.Name, Department: req.Department, Description: req.Description}}}})
	if err != nil {
		return nil, err
	}
	return t.projectOut(res.Project), nil
}

func (t *TenancyServer) GetProject(ctx context.Context, req *yunchiv1.GetProjectRequest) (*yunchiv1.Project, error) {
	p, ok := t.s.store.Project(req.Name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "project %q not found", req.Name)
	}
	return t.projectOut(p), nil
}

func (t *TenancyServer) ListProjects(ctx context.Context, req *yunchiv1.ListProjectsRequest) (*yunchiv1.ListProjectsResponse, error) {
	if req.Department != "" {
		if _, ok := t.s.store.Department(req.Department); !ok {
			return nil, status.Errorf(codes.NotFound, "department %q not found", req.Department)
		}
	}
	out := &yunchiv1.ListProjectsResponse{Projects: []*yunchiv1.Project{}}
	for _, p := range t.s.store.Projects(req.Department) {
		if auth.Sees(ctx, p.Name) {
			out.Projects = append(out.Projects, t.projectOut(p))
		}
	}
	return out, nil
}

func (t *TenancyServer) DeleteProject(ctx context.Context, req *yunchiv1.DeleteProjectRequest) (*yunchiv1.DeleteProjectResponse, error) {
	if err := checkName("project name", req.Name); err != nil {
		return nil, err
	}
	if _, err := t.s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: req.Name}}}); err != nil {
		return nil, err
	}
	return &yunchiv1.DeleteProjectResponse{}, nil
}

func userOut(u *statev1.UserRecord) *yunchiv1.User {
	out := &yunchiv1.User{
		Name: u.Name, Department: u.Department, Role: yunchiv1.Role(u.Role), RoleName: state.RoleName(u.Role),
		Projects: append([]string{}, u.Projects...), CreatedAt: ts(u.CreatedUnixNano), DisplayName: u.DisplayName,
	}
	if u.LockedUntilUnixNano > clock.Now().UnixNano() {
		out.LockedUntil = ts(u.LockedUntilUnixNano)
	}
	return out
}

// visibleUser finds a user the caller may manage: a department admin only
// those of its department (others answer not found, as absent ones do).
func (t *TenancyServer) visibleUser(ctx context.Context, name string) (*statev1.UserRecord, error) {
	if err := checkName("user name", name); err != nil {
		return nil, err
	}
	u, ok := t.s.store.User(name)
	if !ok || !caller(ctx).SeesDepartment(u.Department) || (auth.DepartmentRole(caller(ctx).Role) && u.Department == "") {
		return nil, status.Errorf(codes.NotFound, "user %q not found", name)
	}
	return u, nil
}

func (t *TenancyServer) CreateUser(ctx context.Context, req *yunchiv1.CreateUserRequest) (*yunchiv1.User, error) {
	if err := checkName("user name", req.Name); err != nil {
		return nil, err
	}
	role, err := state.ParseRole(req.Role)
	if err != nil {
		return nil, toStatus(err)
	}
	if req.Department != "" {
		if err := checkName("department name", req.Department); err != nil {
			return nil, err
		}
	}
	for _, p := range req.Projects {
		if err := checkName("project name", p); err != nil {
			return nil, err
		}
	}
	if err := checkText("display name", req.DisplayName); err != nil {
		return nil, err
	}
	// A department admin manages its members and viewers, nothing above.
	if c := caller(ctx); c.Role == yunchiv1.Role_ROLE_DEPT_ADMIN && role != statev1.Role_ROLE_MEMBER && role != statev1.Role_ROLE_VIEWER {
		return nil, status.Errorf(codes.PermissionDenied, "permission denied: a department admin may create members and viewers only, not %s", req.Role)
	}
	res, err := t.s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_CreateUser{CreateUser: &statev1.CreateUser{User: &statev1.UserRecord{
		Name: req.Name, Role: role, Department: req.Department, Projects: req.Projects, DisplayName: req.DisplayName}}}})
	if err != nil {
		return nil, err
	}
	return userOut(res.User), nil
}

func (t *TenancyServer) GetUser(ctx context.Context, req *yunchiv1.GetUserRequest) (*yunchiv1.User, error) {
	u, err := t.visibleUser(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	return userOut(u), nil
}

func (t *TenancyServer) ListUsers(ctx context.Context, req *yunchiv1.ListUsersRequest) (*yunchiv1.ListUsersResponse, error) {
	out := &yunchiv1.ListUsersResponse{Users: []*yunchiv1.User{}}
	c := caller(ctx)
	for _, u := range t.s.store.Users(req.Department) {
		if auth.DepartmentRole(c.Role) && u.Department != c.Department {
			continue
		}
		out.Users = append(out.Users, userOut(u))
	}
	return out, nil
}

func (t *TenancyServer) UpdateUser(ctx context.Context, req *yunchiv1.UpdateUserRequest) (*yunchiv1.User, error) {
	u, err := t.visibleUser(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	for _, p := range append(append([]string{}, req.AddProjects...), req.RemoveProjects...) {
		if err := checkName("project name", p); err != nil {
			return nil, err
		}
	}
	if caller(ctx).Role == yunchiv1.Role_ROLE_DEPT_ADMIN && req.Unlock {
		return nil, status.Errorf(codes.PermissionDenied, "permission denied: only a security administrator unlocks accounts")
	}
	res, err := t.s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_UpdateUser{UpdateUser: &statev1.UpdateUser{
		Name: u.Name, AddProjects: req.AddProjects, RemoveProjects: req.RemoveProjects, Unlock: req.Unlock}}})
	if err != nil {
		return nil, err
	}
	return userOut(res.User), nil
}

func (t *TenancyServer) DeleteUser(ctx context.Context, req *yunchiv1.DeleteUserRequest) (*yunchiv1.DeleteUserResponse, error) {
	u, err := t.visibleUser(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	if c := caller(ctx); c.Kind == auth.KindUser && c.Name == u.Name {
		return nil, status.Errorf(codes.FailedPrecondition, "you cannot delete your own account")
	}
	if _, err := t.s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_DeleteUser{DeleteUser: &statev1.DeleteUser{Name: u.Name}}}); err != nil {
		return nil, err
	}
	return &yunchiv1.DeleteUserResponse{}, nil
}

func tokenOut(t *statev1.TokenRecord) *yunchiv1.Token {
	return &yunchiv1.Token{
		Id: t.Id, User: t.User, HostId: t.HostId, Description: t.Description,
		CreatedAt: ts(t.CreatedUnixNano), ExpiresAt: ts(t.ExpiresUnixNano), RevokedAt: ts(t.RevokedUnixNano),
	}
}

// DefaultTokenTTL is a token's lifetime when none is asked.
const DefaultTokenTTL = 90 * 24 * time.Hour

// MaxTokenTTL bounds a token's lifetime ("0" asks for none).
const MaxTokenTTL = 5 * 365 * 24 * time.Hour

// ParseTTL reads "30d", "12h", "90m" or "0" (never expires).
func ParseTTL(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return DefaultTokenTTL, nil
	}
	if s == "0" {
		return 0, nil
	}
	var d time.Duration
	var err error
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int
		days, err = strconv.Atoi(n)
		d = time.Duration(days) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d <= 0 || d > MaxTokenTTL {
		return 0, invalid("ttl %q is not valid: give e.g. 30d, 12h or 0 (never expires), at most %dd", s, int(MaxTokenTTL/(24*time.Hour)))
	}
	return d, nil
}

func (t *TenancyServer) CreateToken(ctx context.Context, req *yunchiv1.CreateTokenRequest) (*yunchiv1.CreateTokenResponse, error) {
	switch {
	case req.User != "" && req.HostId != "":
		return nil, invalid("a token is for a user or a host: give user or host_id, not both")
	case req.HostId != "":
		if err := checkHostID(req.HostId); err != nil {
			return nil, err
		}
	default:
		if err := checkName("user name", req.User); err != nil {
			return nil, err
		}
		if _, ok := t.s.store.User(req.User); !ok {
			return nil, status.Errorf(codes.NotFound, "user %q not found", req.User)
		}
	}
	ttl, err := ParseTTL(req.Ttl)
	if err != nil {
		return nil, err
	}
	if err := checkText("description", req.Description); err != nil {
		return nil, err
	}
	tok, id, hash, err := auth.NewToken()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "make a token: %v", err)
	}
	rec := &statev1.TokenRecord{Id: id, User: req.User, HostId: req.HostId, SecretHash: hash, Description: req.Description}
	if ttl > 0 {
		rec.ExpiresUnixNano = clock.Now().Add(ttl).UnixNano()
	}
	res, err := t.s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_CreateToken{CreateToken: &statev1.CreateToken{Token: rec}}})
	if err != nil {
		return nil, err
	}
	return &yunchiv1.CreateTokenResponse{Token: tokenOut(res.Token), Secret: tok}, nil
}

func (t *TenancyServer) ListTokens(ctx context.Context, req *yunchiv1.ListTokensRequest) (*yunchiv1.ListTokensResponse, error) {
	out := &yunchiv1.ListTokensResponse{Tokens: []*yunchiv1.Token{}}
	for _, tk := range t.s.store.Tokens(req.User) {
		out.Tokens = append(out.Tokens, tokenOut(tk))
	}
	return out, nil
}

func (t *TenancyServer) RevokeToken(ctx context.Context, req *yunchiv1.RevokeTokenRequest) (*yunchiv1.Token, error) {
	if req.Id == "" || !state.ValidName(req.Id) {
		return nil, invalid("token id %q is not valid: give the id `yunchi token list` shows", req.Id)
	}
	res, err := t.s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_RevokeToken{RevokeToken: &statev1.RevokeToken{Id: req.Id}}})
	if err != nil {
		return nil, err
	}
	return tokenOut(res.Token), nil
}

func (t *TenancyServer) WhoAmI(ctx context.Context, req *yunchiv1.WhoAmIRequest) (*yunchiv1.WhoAmIResponse, error) {
	p := caller(ctx)
	kind := map[auth.Kind]string{auth.KindUser: "user", auth.KindHost: "host", auth.KindController: "controller"}[p.Kind]
	return &yunchiv1.WhoAmIResponse{
		Name: p.Name, Role: p.Role, RoleName: auth.RoleName(p.Role), Department: p.Department,
		Projects: append([]string{}, p.Projects...), TokenId: p.TokenID, Kind: kind,
	}, nil
}

// maxTextLen bounds descriptions and display names.
const maxTextLen = 256

// checkText validates free text: one line of printable characters.
func checkText(what, s string) error {
	if len(s) > maxTextLen {
		return invalid("%s is %d bytes long: at most %d are allowed", what, len(s), maxTextLen)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return invalid("%s contains a control or invalid character (%q): use one line of printable text", what, fmt.Sprintf("%U", r))
		}
	}
	return nil
}
