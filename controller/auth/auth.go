// Package auth decides who may call what. Every RPC declares its rule
// beside its declaration (the yunchi.v1.access method option, see
// proto/yunchi/v1/access.proto); one unary and one stream interceptor
// authenticate the caller (a bearer token, or a certificate the cluster CA
// issued to a host or controller), check the caller's role against the
// rule and confine department roles to their own department: a resource of
// another department answers NOT_FOUND, exactly as one that does not
// exist. Handlers read the caller from the context (FromContext) and
// filter lists with Sees.
package auth

import (
	"context"
	"slices"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Kind is what a principal is.
type Kind int

const (
	KindUser Kind = iota + 1
	KindHost
	KindController
)

// Principal is an authenticated caller.
type Principal struct {
	Kind Kind
	// Name is the user name, host id or controller id.
	Name       string
	Role       yunchiv1.Role
	Department string   // department roles only
	Projects   []string // members and viewers: sorted
	TokenID    string   // "" for a certificate
	// Source is the caller's network address (the original client's, for
	// a call a follower forwarded).
	Source string
	// sees answers whether a project is visible (set by the interceptor).
	deptOf func(project string) (string, bool)
}

type ctxKey struct{}

// NewContext returns ctx carrying p.
func NewContext(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext returns the caller of the request ctx belongs to.
func FromContext(ctx context.Context) (*Principal, bool) {
	p, ok := ctx.Value(ctxKey{}).(*Principal)
	return p, ok
}

// RoleName is how people write a role (the state's names: the roles
// have the same numbers there).
func RoleName(r yunchiv1.Role) string { return state.RoleName(statev1.Role(r)) }

// DepartmentRole says whether r acts inside one department only.
func DepartmentRole(r yunchiv1.Role) bool {
	return r == yunchiv1.Role_ROLE_DEPT_ADMIN || r == yunchiv1.Role_ROLE_MEMBER || r == yunchiv1.Role_ROLE_VIEWER
}

// SeesProject says whether p may see project (which is in department
// dept): cluster roles see every project, a department admin its
// department's, members and viewers the projects they belong to.
func (p *Principal) SeesProject(project, dept string) bool {
	switch p.Role {
	case yunchiv1.Role_ROLE_DEPT_ADMIN:
		return dept == p.Department
	case yunchiv1.Role_ROLE_MEMBER, yunchiv1.Role_ROLE_VIEWER:
		return dept == p.Department && slices.Contains(p.Projects, project)
	case yunchiv1.Role_ROLE_HOST, yunchiv1.Role_ROLE_CONTROLLER, yunchiv1.Role_ROLE_UNSPECIFIED:
		return false
	}
	return true
}

// SeesDepartment says whether p may see department dept.
func (p *Principal) SeesDepartment(dept string) bool {
	if DepartmentRole(p.Role) {
		return dept == p.Department
	}
	return p.Role != yunchiv1.Role_ROLE_HOST && p.Role != yunchiv1.Role_ROLE_UNSPECIFIED
}

// Sees says whether the caller of ctx may see project; true when the
// request carries no caller (calls made inside the controller).
func Sees(ctx context.Context, project string) bool {
	p, ok := FromContext(ctx)
	if !ok {
		return true
	}
	if p.deptOf == nil {
		return !DepartmentRole(p.Role)
	}
	if !DepartmentRole(p.Role) {
		// SeesProject decides cluster roles, hosts and controllers
		// without the department: no store lookup per item listed.
		return p.SeesProject(project, "")
	}
	dept, exists := p.deptOf(project)
	return exists && p.SeesProject(project, dept)
}

// SeesDepartment is Principal.SeesDepartment for the caller of ctx (true
// without one).
func SeesDepartment(ctx context.Context, dept string) bool {
	p, ok := FromContext(ctx)
	return !ok || p.SeesDepartment(dept)
}

var (
	rulesOnce sync.Once
	rules     map[string]*yunchiv1.AccessRule // full method -> rule
	methods   []string                        // every yunchi.v1 method
)

func loadRules() {
	rules = map[string]*yunchiv1.AccessRule{}
	protoregistry.GlobalFiles.RangeFilesByPackage("yunchi.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				md := sd.Methods().Get(j)
				full := "/" + string(sd.FullName()) + "/" + string(md.Name())
				methods = append(methods, full)
				opts := md.Options()
				if opts == nil || !proto.HasExtension(opts, yunchiv1.E_Access) {
					continue
				}
				rules[full] = proto.GetExtension(opts, yunchiv1.E_Access).(*yunchiv1.AccessRule)
			}
		}
		return true
	})
	slices.Sort(methods)
}

// RuleFor returns the access rule of a full gRPC method name
// ("/yunchi.v1.VMService/CreateVM").
func RuleFor(fullMethod string) (*yunchiv1.AccessRule, bool) {
	rulesOnce.Do(loadRules)
	r, ok := rules[fullMethod]
	return r, ok
}

// Methods lists every method of the yunchi.v1 services, sorted.
func Methods() []string {
	rulesOnce.Do(loadRules)
	return slices.Clone(methods)
}

// Allows says whether the rule lets role call.
func Allows(r *yunchiv1.AccessRule, role yunchiv1.Role) bool {
	return slices.Contains(r.GetRoles(), role)
}

// Mutating says whether a method changes state (its rule says so).
func Mutating(fullMethod string) bool {
	r, ok := RuleFor(fullMethod)
	return ok && r.GetMutating()
}
