package controller

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// policy is who may call what, written out here independently of the
// access rules in the proto: TestAccessMatrix holds the rules to it, and
// the running controllers to both. A new RPC must be added here too.
var policy = map[string]string{
	"VMService/CreateVM":  "sysadmin dept-admin member",
	"VMService/CreateVMs": "sysadmin dept-admin member",
	"VMService/GetVM":     "sysadmin operator dept-admin member viewer",
	"VMService/ListVMs":   "sysadmin operator dept-admin member viewer",
	"VMService/StartVM":   "sysadmin dept-admin member",
	"VMService/StopVM":    "sysadmin dept-admin member",
	"VMService/RebootVM":  "sysadmin dept-admin member",
	"VMService/DeleteVM":  "sysadmin dept-admin member",
	"VMService/WatchVM":   "sysadmin operator dept-admin member viewer",
	"VMService/Console":   "sysadmin dept-admin member",

	"HostService/ListHosts":  "sysadmin operator",
	"HostService/GetHost":    "sysadmin operator",
	"HostService/UpdateHost": "sysadmin operator",

	"RatioService/SetRatios":  "sysadmin",
	"RatioService/ListRatios": "sysadmin operator",

	"GroupService/CreateGroup": "sysadmin dept-admin member",
	"GroupService/GetGroup":    "sysadmin operator dept-admin member viewer",
	"GroupService/ListGroups":  "sysadmin operator dept-admin member viewer",
	"GroupService/DeleteGroup": "sysadmin dept-admin member",

	"CapacityService/GetCapacity": "sysadmin operator",

	"ClusterService/GetClusterStatus": "sysadmin operator",
	"ClusterService/ListMembers":      "sysadmin operator",
	"ClusterService/JoinCluster":      "sysadmin controller",
	"ClusterService/RemoveMember":     "sysadmin",
	"ClusterService/CreateJoinToken":  "sysadmin",
	"ClusterService/JoinController":   "public",

	"AgentService/JoinHost":         "public",
	"AgentService/RegisterHost":     "host",
	"AgentService/Heartbeat":        "host",
	"AgentService/ReportVMStatus":   "host",
	"AgentService/WatchAssignments": "host",
	"AgentService/FetchImage":       "host",
	"AgentService/WatchConsoles":    "host",
	"AgentService/ConsoleStream":    "host",
	"AgentService/ReportBackup":     "host",

	"BackupRepoService/HaveChunks":  "host",
	"BackupRepoService/PutChunks":   "host",
	"BackupRepoService/PutManifest": "host",
	"BackupRepoService/GetManifest": "host",
	"BackupRepoService/GetChunks":   "host",

	"TopologyService/GetTopology":  "sysadmin operator",
	"TopologyService/SetCenter":    "sysadmin",
	"TopologyService/DeleteCenter": "sysadmin",

	"ProtectionService/CreatePolicy":   "sysadmin",
	"ProtectionService/GetPolicy":      "sysadmin operator dept-admin member viewer",
	"ProtectionService/ListPolicies":   "sysadmin operator dept-admin member viewer",
	"ProtectionService/DeletePolicy":   "sysadmin",
	"ProtectionService/ProtectVM":      "sysadmin dept-admin member",
	"ProtectionService/ProtectProject": "sysadmin dept-admin",
	"ProtectionService/GetDRStatus":    "sysadmin operator dept-admin member viewer",

	"BackupService/ListRestorePoints": "sysadmin operator dept-admin member viewer",
	"BackupService/RestoreVM":         "sysadmin dept-admin member",
	"BackupService/RunBackup":         "sysadmin dept-admin member",
	"BackupService/GetRepository":     "sysadmin operator",
	"BackupService/VerifyBackups":     "sysadmin operator",
	"BackupService/CollectGarbage":    "sysadmin",

	"RecoveryService/Failover":            "sysadmin",
	"RecoveryService/Failback":            "sysadmin",
	"RecoveryService/StartDrill":          "sysadmin dept-admin",
	"RecoveryService/GetDRRun":            "sysadmin operator dept-admin member viewer",
	"RecoveryService/ListDRRuns":          "sysadmin operator dept-admin member viewer",
	"RecoveryService/ListDrillSchedules":  "sysadmin operator",
	"RecoveryService/DeleteDrillSchedule": "sysadmin",

	"ImageService/ImportImage":         "sysadmin dept-admin member",
	"ImageService/GetImage":            "sysadmin operator dept-admin member viewer",
	"ImageService/ListImages":          "sysadmin operator dept-admin member viewer",
	"ImageService/DeleteImage":         "sysadmin dept-admin member",
	"ImagePeerService/RecordImage":     "sysadmin dept-admin member",
	"ImagePeerService/FetchImageBytes": "public",

	"VolumeService/CreateVolume": "sysadmin dept-admin member",
	"VolumeService/GetVolume":    "sysadmin operator dept-admin member viewer",
	"VolumeService/ListVolumes":  "sysadmin operator dept-admin member viewer",
	"VolumeService/AttachVolume": "sysadmin dept-admin member",
	"VolumeService/DetachVolume": "sysadmin dept-admin member",
	"VolumeService/DeleteVolume": "sysadmin dept-admin member",

	"DepartmentService/CreateDepartment": "secadmin",
	"DepartmentService/GetDepartment":    "secadmin sysadmin operator dept-admin member viewer",
	"DepartmentService/ListDepartments":  "secadmin sysadmin operator dept-admin member viewer",
	"DepartmentService/DeleteDepartment": "secadmin",

	"ProjectService/CreateProject": "secadmin dept-admin",
	"ProjectService/GetProject":    "secadmin sysadmin operator dept-admin member viewer",
	"ProjectService/ListProjects":  "secadmin sysadmin operator dept-admin member viewer",
	"ProjectService/DeleteProject": "secadmin dept-admin",

	"UserService/CreateUser": "secadmin dept-admin",
	"UserService/GetUser":    "secadmin dept-admin",
	"UserService/ListUsers":  "secadmin dept-admin",
	"UserService/UpdateUser": "secadmin dept-admin",
	"UserService/DeleteUser": "secadmin dept-admin",

	"QuotaService/SetQuota":   "secadmin dept-admin",
	"QuotaService/GetQuota":   "secadmin sysadmin operator dept-admin",
	"QuotaService/ListQuotas": "secadmin sysadmin operator dept-admin",

	"AuditService/ListAudit":    "auditor",
	"AuditService/VerifyAudit":  "auditor",
	"AuditService/ExportAudit":  "auditor",
	"AuditService/ArchiveAudit": "auditor",
	"AuditService/SubmitAudit":  "controller",

	"TokenService/CreateToken": "secadmin",
	"TokenService/ListTokens":  "secadmin",
	"TokenService/RevokeToken": "secadmin",
	"TokenService/WhoAmI":      "sysadmin secadmin auditor operator dept-admin member viewer host controller",
}

// callers are the accounts the matrix calls with: one per role (the
// department roles in department eco, project air), and a host.
var callerRoles = []string{"sysadmin", "secadmin", "auditor", "operator", "dept-admin", "member", "viewer", "host"}

// TestAccessMatrix calls every RPC as every role, through gRPC and REST,
// once naming the caller's own department (project air of eco, host h1)
// and once another's (project river of water, host h2), against 3 running
// controllers (through a follower, so forwarded calls are covered too):
//   - a role the policy does not list gets PERMISSION_DENIED (403);
//   - a department role naming another department's project or department
//     gets NOT_FOUND (404), like one that does not exist;
//   - everything else is let through to the handler (whatever it answers
//     for the mostly empty request, it is not 401 or 403).
func TestAccessMatrix(t *testing.T) {
	// The rules in the proto say exactly what the policy says.
	for _, m := range auth.Methods() {
		short := strings.TrimPrefix(m, "/yunchi.v1.")
		want, ok := policy[short]
		if !ok {
			t.Errorf("%s is not in the policy table of this test", short)
			continue
		}
		r, _ := auth.RuleFor(m)
		var got []string
		for _, role := range r.GetRoles() {
			got = append(got, auth.RoleName(role))
		}
		if r.GetPublic() {
			got = append(got, "public") // the handler checks what the caller brings (a join token)
		}
		if w := strings.Fields(want); !sameSet(got, w) {
			t.Errorf("%s: rule lets %v in, the policy says %v", short, got, w)
		}
	}
	if len(policy) != len(auth.Methods()) {
		t.Errorf("policy lists %d methods, the API has %d", len(policy), len(auth.Methods()))
	}

	// Each role's token makes some 750 calls in a few seconds here, over
	// the default per-caller limit (the limiter has tests of its own).
	c := &inmemCluster{t: t, auth: true, rateLimit: 100000}
	for _, id := range []string{"a1", "a2", "b1"} {
		c.members = append(c.members, &member{id: id, center: id, dir: t.TempDir()})
	}
	c.form(nil)
	var follower *member
	for _, m := range c.members {
		if !m.ctl.Node().IsLeader() {
			follower = m
		}
	}
	addr := follower.ctl.Addr()
	conn := dial(t, addr)
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	}
	sec, sys := as(c.admins.Secadmin), as(c.admins.Sysadmin)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	deps, projs, users, toks := yunchiv1.NewDepartmentServiceClient(conn), yunchiv1.NewProjectServiceClient(conn), yunchiv1.NewUserServiceClient(conn), yunchiv1.NewTokenServiceClient(conn)
	for _, d := range [][2]string{{"eco", "air"}, {"water", "river"}} {
		_, err := deps.CreateDepartment(sec, &yunchiv1.CreateDepartmentRequest{Name: d[0]})
		must(err)
		_, err = projs.CreateProject(sec, &yunchiv1.CreateProjectRequest{Name: d[1], Department: d[0]})
		must(err)
	}
	tokens := map[string]string{"sysadmin": c.admins.Sysadmin, "secadmin": c.admins.Secadmin, "auditor": c.admins.Auditor}
	for _, u := range []struct{ name, role, dept string }{{"op", "operator", ""}, {"ecoadmin", "dept-admin", "eco"}, {"alice", "member", "eco"}, {"vic", "viewer", "eco"}} {
		req := &yunchiv1.CreateUserRequest{Name: u.name, Role: u.role, Department: u.dept}
		if u.role == "member" || u.role == "viewer" {
			req.Projects = []string{"air"}
		}
		_, err := users.CreateUser(sec, req)
		must(err)
		r, err := toks.CreateToken(sec, &yunchiv1.CreateTokenRequest{User: u.name})
		must(err)
		tokens[u.role] = r.Secret
	}
	r, err := toks.CreateToken(sec, &yunchiv1.CreateTokenRequest{HostId: "h1"})
	must(err)
	tokens["host"] = r.Secret
	// Something in each project, so deletes are refused rather than done.
	hosts := yunchiv1.NewAgentServiceClient(conn)
	_, err = hosts.RegisterHost(as(tokens["host"]), &yunchiv1.RegisterHostRequest{Facts: &yunchiv1.HostFacts{
		Id: "h1", Center: "a1", Hostname: "h1", Capacity: &yunchiv1.Resources{Vcpus: 64, MemoryBytes: 256 * gib, DiskBytes: 4096 * gib}}})
	must(err)
	vms := yunchiv1.NewVMServiceClient(conn)
	for _, p := range []string{"air", "river"} {
		_, err := vms.CreateVM(sys, &yunchiv1.CreateVMRequest{Name: "keep", Project: p, Vcpus: 1, Memory: "1GiB", Disk: "1GiB"})
		must(err)
	}
	// Wait until the follower has applied all of it.
	apitest.Eventually(t, 10*time.Second, "the follower caught up", func() bool {
		return follower.ctl.Node().Store.ProjectUse("river") == 1 && len(follower.ctl.Node().Store.Tokens("")) >= 8
	})

	checked := 0
	for _, m := range auth.Methods() {
		short := strings.TrimPrefix(m, "/yunchi.v1.")
		allowed := strings.Fields(policy[short])
		rule, _ := auth.RuleFor(m)
		for _, role := range callerRoles {
			for _, other := range []bool{false, true} {
				want := "through" // to the handler
				switch {
				case rule.GetPublic():
					want = "public" // its handler checks the credential in the request (a join token)
				case !slices.Contains(allowed, role):
					want = "denied"
				case other && auth.DepartmentRole(roleOf(role)) && hasScopeField(t, m, rule) && (rule.GetScope() == yunchiv1.Scope_SCOPE_PROJECT || rule.GetScope() == yunchiv1.Scope_SCOPE_DEPARTMENT):
					want = "not found"
				case other && rule.GetScope() == yunchiv1.Scope_SCOPE_HOST:
					want = "denied"
				}
				req := scopedRequest(t, m, rule, other)
				code := grpcCall(conn, m, as(tokens[role]), req)
				if !matches(code, want) {
					t.Errorf("gRPC %s as %s (other department: %v): %v, want %s", short, role, other, code, want)
				}
				if rest, ok := restCall(t, addr, m, tokens[role], scopedRequest(t, m, rule, other)); ok && !matches(rest, want) {
					t.Errorf("REST %s as %s (other department: %v): %v, want %s", short, role, other, rest, want)
				}
				checked++
			}
		}
	}
	// Nothing of water's leaked into eco's lists.
	list, err := vms.ListVMs(as(tokens["member"]), &yunchiv1.ListVMsRequest{})
	must(err)
	if len(list.Vms) != 1 || list.Vms[0].Project != "air" {
		t.Errorf("alice lists %v, want air's VM only", list.Vms)
	}
	// Without a token, only health answers.
	if code := grpcCall(conn, yunchiv1.VMService_ListVMs_FullMethodName, context.Background(), &yunchiv1.ListVMsRequest{}); code != codes.Unauthenticated {
		t.Errorf("no token: %v", code)
	}
	if code, _, _ := apitest.Do(addr, "GET", "/v1/vms", ""); code != http.StatusUnauthorized {
		t.Errorf("REST without a token: %d", code)
	}
	if code, _, _ := apitest.Do(addr, "GET", "/healthz", ""); code != http.StatusOK {
		t.Errorf("healthz without a token: %d", code)
	}
	t.Logf("%d calls checked through gRPC and REST", checked)
}

// hasScopeField says whether the method's request has the field its scope
// confines (a list of every department has none: it is filtered instead).
func hasScopeField(t *testing.T, method string, rule *yunchiv1.AccessRule) bool {
	field := rule.GetField()
	if field == "" {
		field = map[yunchiv1.Scope]string{yunchiv1.Scope_SCOPE_PROJECT: "project", yunchiv1.Scope_SCOPE_DEPARTMENT: "department", yunchiv1.Scope_SCOPE_HOST: "host_id"}[rule.GetScope()]
	}
	return methodDesc(t, method).Input().Fields().ByName(protoreflect.Name(strings.Split(field, ".")[0])) != nil
}

func roleOf(name string) yunchiv1.Role {
	for r := yunchiv1.Role_ROLE_SYSADMIN; r <= yunchiv1.Role_ROLE_CONTROLLER; r++ {
		if auth.RoleName(r) == name {
			return r
		}
	}
	return 0
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	sort.Strings(a)
	sort.Strings(b)
	return slices.Equal(a, b)
}

// matches says whether code is what want expects: denied is exactly
// PERMISSION_DENIED, not found exactly NOT_FOUND; a call let through may
// get any answer from its handler but those two refusals and
// UNAUTHENTICATED (a handler's own NOT_FOUND, for the mostly empty
// request, is fine).
func matches(code codes.Code, want string) bool {
	switch want {
	case "public":
		return code != codes.PermissionDenied
	case "denied":
		return code == codes.PermissionDenied
	case "not found":
		return code == codes.NotFound
	}
	return code != codes.PermissionDenied && code != codes.Unauthenticated
}

// scopedRequest is the method's request with only its scope field set:
// the caller's own side (air, eco, h1) or another department's (river,
// water, h2).
func scopedRequest(t *testing.T, method string, rule *yunchiv1.AccessRule, other bool) proto.Message {
	t.Helper()
	md := methodDesc(t, method)
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		t.Fatal(err)
	}
	msg := mt.New()
	val := map[yunchiv1.Scope][2]string{
		yunchiv1.Scope_SCOPE_PROJECT: {"air", "river"}, yunchiv1.Scope_SCOPE_DEPARTMENT: {"eco", "water"}, yunchiv1.Scope_SCOPE_HOST: {"h1", "h2"},
	}[rule.GetScope()]
	field := rule.GetField()
	if field == "" {
		field = map[yunchiv1.Scope]string{yunchiv1.Scope_SCOPE_PROJECT: "project", yunchiv1.Scope_SCOPE_DEPARTMENT: "department", yunchiv1.Scope_SCOPE_HOST: "host_id"}[rule.GetScope()]
	}
	if field != "" {
		v := val[0]
		if other {
			v = val[1]
		}
		setPath(msg, field, v)
	}
	// A VM (or center) name, so that calls reach past name validation
	// and REST paths have their variables.
	for _, n := range []protoreflect.Name{"name", "vm", "center"} {
		if fd := msg.Descriptor().Fields().ByName(n); fd != nil && fd.Kind() == protoreflect.StringKind && field != string(n) {
			msg.Set(fd, protoreflect.ValueOfString("nope"))
		}
	}
	return msg.Interface()
}

// setPath sets a string field by dotted path (a request without that
// field, such as a list of every department, is left as it is).
func setPath(m protoreflect.Message, path, v string) {
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(p))
		if fd == nil {
			return
		}
		m = m.Mutable(fd).Message()
	}
	if fd := m.Descriptor().Fields().ByName(protoreflect.Name(parts[len(parts)-1])); fd != nil {
		m.Set(fd, protoreflect.ValueOfString(v))
	}
}

func methodDesc(t *testing.T, full string) protoreflect.MethodDescriptor {
	t.Helper()
	i := strings.LastIndexByte(full, '/')
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(full[1:i]))
	if err != nil {
		t.Fatal(err)
	}
	return d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(full[i+1:]))
}

// grpcCall invokes method with req; for a server stream, what the first
// receive says (a stream that is let through and waits counts as OK).
func grpcCall(conn *grpc.ClientConn, method string, ctx context.Context, req proto.Message) codes.Code {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	i := strings.LastIndexByte(method, '/')
	d, _ := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(method[1:i]))
	md := d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(method[i+1:]))
	out, _ := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if !md.IsStreamingServer() {
		err := conn.Invoke(ctx, method, req, out.New().Interface())
		return status.Code(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer scancel()
	st, err := conn.NewStream(sctx, &grpc.StreamDesc{ServerStreams: true}, method)
	if err != nil {
		return status.Code(err)
	}
	if err := st.SendMsg(req); err != nil {
		return status.Code(err)
	}
	st.CloseSend()
	err = st.RecvMsg(out.New().Interface())
	if c := status.Code(err); c == codes.DeadlineExceeded || err == nil {
		return codes.OK // let through; it waits for news
	}
	return status.Code(err)
}

// restCall makes the REST call of method (its google.api.http binding),
// with req's fields in the path, the query or the body. ok is false for a
// method without one.
func restCall(t *testing.T, addr, method, token string, req proto.Message) (codes.Code, bool) {
	t.Helper()
	md := methodDesc(t, method)
	rule, ok := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
	if !ok || rule == nil {
		return 0, false
	}
	verb, tmpl := "", ""
	switch p := rule.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		verb, tmpl = "GET", p.Get
	case *annotations.HttpRule_Post:
		verb, tmpl = "POST", p.Post
	case *annotations.HttpRule_Delete:
		verb, tmpl = "DELETE", p.Delete
	case *annotations.HttpRule_Patch:
		verb, tmpl = "PATCH", p.Patch
	case *annotations.HttpRule_Put:
		verb, tmpl = "PUT", p.Put
	default:
		return 0, false
	}
	if md.IsStreamingServer() {
		return 0, false // streams over REST are not part of the API
	}
	m := req.ProtoReflect()
	used := map[string]bool{}
	path := tmpl
	for strings.Contains(path, "{") {
		a, b := strings.Index(path, "{"), strings.Index(path, "}")
		name := path[a+1 : b]
		used[name] = true
		v := m.Get(m.Descriptor().Fields().ByName(protoreflect.Name(name))).String()
		path = path[:a] + url.PathEscape(v) + path[b+1:]
	}
	body := ""
	if rule.GetBody() == "*" {
		b, _ := protojson.Marshal(req)
		body = string(b)
	} else {
		q := url.Values{}
		fs := m.Descriptor().Fields()
		for i := 0; i < fs.Len(); i++ {
			fd := fs.Get(i)
			if !used[string(fd.Name())] && fd.Kind() == protoreflect.StringKind && m.Has(fd) {
				q.Set(string(fd.Name()), m.Get(fd).String())
			}
		}
		if len(q) > 0 {
			path += "?" + q.Encode()
		}
	}
	hr, _ := http.NewRequest(verb, "http://"+addr+path, strings.NewReader(body))
	hr.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		hr.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatalf("REST %s %s: %v", verb, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 {
		return codes.OK, true
	}
	var e struct{ Code int }
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("REST %s %s: %d %s", verb, path, resp.StatusCode, b)
	}
	// The HTTP status must agree with the code.
	wantHTTP := map[codes.Code]int{codes.PermissionDenied: 403, codes.Unauthenticated: 401, codes.NotFound: 404}[codes.Code(e.Code)]
	if wantHTTP != 0 && resp.StatusCode != wantHTTP {
		t.Errorf("REST %s %s: HTTP %d for %v", verb, path, resp.StatusCode, codes.Code(e.Code))
	}
	return codes.Code(e.Code), true
}
