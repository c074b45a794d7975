package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Context is who made a request and what it asks: the authentication
// interceptor fills the caller, UnaryInterceptor the action, target and
// params of mutating methods. Commands proposed under it carry it
// (raftnode.Node.Apply stamps Command.audit), and Apply records them.
type Context struct {
	Actor      string // user name, host id for agents, controller id
	Role       string // yunchi.v1.Role name, e.g. "ROLE_SYSADMIN"
	Department string
	Source     string // client address as seen by the first controller
	TokenID    string // public token id, never the secret
	Action     string // gRPC method short name, e.g. "CreateVM"
	Target     string // e.g. "project/air/vm/web-1"
	Params     string // request JSON, secrets redacted (Params)
}

// WithContext returns ctx carrying c merged over the context ctx already
// carries: c's non-empty fields win. Either interceptor may run first.
func WithContext(ctx context.Context, c Context) context.Context {
	ac := &statev1.AuditContext{}
	if old := state.AuditFrom(ctx); old != nil {
		ac = proto.Clone(old).(*statev1.AuditContext)
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&ac.Actor, c.Actor)
	set(&ac.Role, c.Role)
	set(&ac.Department, c.Department)
	set(&ac.Source, c.Source)
	set(&ac.TokenId, c.TokenID)
	set(&ac.Action, c.Action)
	set(&ac.Target, c.Target)
	set(&ac.Params, c.Params)
	return state.WithAudit(ctx, ac)
}

// FromContext is the audit context ctx carries.
func FromContext(ctx context.Context) (Context, bool) {
	ac := state.AuditFrom(ctx)
	if ac == nil {
		return Context{}, false
	}
	return Context{Actor: ac.Actor, Role: ac.Role, Department: ac.Department, Source: ac.Source, TokenID: ac.TokenId,
		Action: ac.Action, Target: ac.Target, Params: ac.Params}, true
}

// callerContext is the audit context of the caller the access interceptor
// authenticated (empty without one).
func callerContext(ctx context.Context) Context {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return Context{}
	}
	return Context{Actor: p.Name, Role: p.Role.String(), Department: p.Department, Source: p.Source, TokenID: p.TokenID}
}

// UnaryInterceptor gives calls to methods whose access rule says
// mutating their audit context (the caller, action, target, and params
// encoded only if a command is proposed: most heartbeats propose none),
// so that the commands they propose are recorded with it. Reads get none:
// nothing they do is recorded but a refusal, which the recorder takes
// from the caller.
func UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !auth.Mutating(info.FullMethod) {
		return handler(ctx, req)
	}
	c := callerContext(ctx)
	if c.Source == "" {
		c.Source = auth.SourceOf(ctx)
	}
	ac := &statev1.AuditContext{Actor: c.Actor, Role: c.Role, Department: c.Department, Source: c.Source,
		TokenId: c.TokenID, Action: auth.MethodName(info.FullMethod)}
	var params func() string
	if m, ok := req.(proto.Message); ok {
		ac.Target = TargetOf(info.FullMethod, m)
		params = func() string { return Params(m) }
	}
	return handler(state.WithAuditParams(ctx, ac, params), req)
}

// MaxParams bounds the params recorded (a batch create, an agent's report
// of many VMs); longer ones are cut and say so.
const MaxParams = 4096

// secretNames are field names whose values never reach a record: any
// field whose name contains one of them is redacted, at any depth.
var secretNames = []string{"token", "secret", "password", "passwd", "key", "credential", "private", "cert"}

// Secret says whether a field name is redacted.
func Secret(name string) bool {
	n := strings.ToLower(name)
	for _, s := range secretNames {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// Params is m as JSON with every secret field (Secret) replaced by
// "[redacted]", cut to MaxParams.
func Params(m proto.Message) string {
	// Most requests carry no secret: those are encoded as they are,
	// without the copy redacting needs (every API call is audited).
	if hasSecret(m.ProtoReflect()) {
		m = proto.Clone(m)
		redact(m.ProtoReflect())
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return ""
	}
	// protojson varies its spacing on purpose: compact it.
	s := compact(b)
	if len(s) > MaxParams {
		s = s[:MaxParams] + "...(cut)"
	}
	return s
}

// hasSecret says whether m has a secret field set, at any depth.
func hasSecret(m protoreflect.Message) bool {
	return !eachSecret(m, func(protoreflect.Message, protoreflect.FieldDescriptor) bool { return false })
}

// redact replaces secret string fields of m with "[redacted]" and clears
// secret fields of other kinds, at any depth.
func redact(m protoreflect.Message) {
	eachSecret(m, func(m protoreflect.Message, fd protoreflect.FieldDescriptor) bool {
		if fd.Kind() == protoreflect.StringKind && !fd.IsList() && !fd.IsMap() {
			m.Set(fd, protoreflect.ValueOfString("[redacted]"))
		} else {
			m.Clear(fd)
		}
		return true
	})
}

// eachSecret calls fn with every secret field set in m, at any depth, and
// the message holding it, until fn returns false; it says whether it went
// through them all.
func eachSecret(m protoreflect.Message, fn func(protoreflect.Message, protoreflect.FieldDescriptor) bool) bool {
	all := true
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if Secret(string(fd.Name())) {
			all = fn(m, fd)
			return all
		}
		if fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind {
			switch {
			case fd.IsList():
				l := v.List()
				for i := 0; i < l.Len() && all; i++ {
					all = eachSecret(l.Get(i).Message(), fn)
				}
			case fd.IsMap():
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
						all = eachSecret(mv.Message(), fn)
						return all
					})
				}
			default:
				all = eachSecret(v.Message(), fn)
			}
		}
		return all
	})
	return all
}

// nouns name what each service's requests act on, for targets.
var nouns = map[string]string{
	"VMService": "vm", "GroupService": "group", "HostService": "host", "AgentService": "host",
	"RatioService": "ratio", "ClusterService": "member", "AuditService": "audit",
	"DepartmentService": "department", "ProjectService": "project", "UserService": "user",
	"TokenService": "token", "QuotaService": "quota", "VolumeService": "volume",
	"TopologyService": "center", "ProtectionService": "protection", "BackupService": "backup",
}

// TargetOf names what a request acts on: "project/P/vm/N",
// "project/P/group/N", "project/P/volume/N", "host/ID", "ratio/SCOPE/NAME",
// "member/ID".
func TargetOf(fullMethod string, m proto.Message) string {
	svc := fullMethod
	if i := strings.LastIndexByte(svc, '/'); i > 0 {
		svc = svc[:i]
	}
	svc = svc[strings.LastIndexByte(svc, '.')+1:]
	noun := nouns[svc]
	r := m.ProtoReflect()
	str := func(path string) string { return auth.StringField(r, path) }
	switch noun {
	case "vm", "group", "volume":
		p := str("project")
		if p == "" {
			p = state.DefaultProject
		}
		return "project/" + p + "/" + noun + "/" + str("name")
	case "host":
		id := str("host_id")
		if id == "" {
			id = str("id")
		}
		if id == "" {
			id = str("facts.id")
		}
		return "host/" + id
	case "ratio":
		return "ratio/" + str("scope") + "/" + str("name")
	case "member":
		return "member/" + str("id")
	case "audit":
		return "audit"
	case "department", "project", "user":
		return noun + "/" + str("name")
	case "token":
		// A token is named by its id, or by whom it is for; never its secret.
		if id := str("id"); id != "" {
			return "token/" + id
		}
		if h := str("host_id"); h != "" {
			return "token/host/" + h
		}
		return "token/user/" + str("user")
	case "center":
		return "center/" + str("name")
	case "protection":
		p := str("project")
		if p == "" {
			p = state.DefaultProject
		}
		switch r.Descriptor().Name() {
		case "CreatePolicyRequest":
			return "policy/" + str("policy.name")
		case "GetPolicyRequest", "DeletePolicyRequest":
			return "policy/" + str("name")
		case "ProtectVMRequest":
			return "project/" + p + "/vm/" + str("name")
		case "GetDRStatusRequest":
			if v := str("vm"); v != "" {
				return "project/" + p + "/vm/" + v
			}
		}
		return "project/" + p
	case "backup":
		if c := str("center"); str("vm") == "" {
			return "center/" + c
		}
		p := str("project")
		if p == "" {
			p = state.DefaultProject
		}
		return "project/" + p + "/vm/" + str("vm")
	case "quota":
		if p := str("project"); p != "" {
			return "quota/department/" + str("department") + "/project/" + p
		}
		return "quota/department/" + str("department")
	}
	return ""
}

// compact removes insignificant whitespace from JSON.
func compact(js []byte) string {
	var b bytes.Buffer
	b.Grow(len(js))
	if err := json.Compact(&b, js); err != nil {
		return string(js)
	}
	return b.String()
}
