package auth

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/yunchi/yunchi/internal/clock"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Store is what authentication and scoping read (*state.Store).
type Store interface {
	// Credential is a token and, for a user token, its user (nil when
	// the user was deleted); records are shared: read only.
	Credential(id string) (*statev1.TokenRecord, *statev1.UserRecord, bool)
	ProjectDepartment(project string) (string, bool)
}

// Recorder is told of every refusal and failed login (the audit trail;
// failed logins also count towards the user's lockout).
type Recorder interface {
	Denied(ctx context.Context, method string, code codes.Code, reason string)
	LoginFailed(ctx context.Context, method, tokenID, user, reason string)
}

// Forwarded calls: a follower forwards a write to the leader with the
// caller's own credentials, and says where the call came from.
const (
	ForwardedKey = "x-yunchi-forwarded"
	SourceKey    = "x-yunchi-source"
	// OnBehalfKey names the certificate identity ("host/h1") of the
	// caller of a call a controller forwards: the leader takes it from a
	// controller's certificate only.
	OnBehalfKey = "x-yunchi-on-behalf-of"
)

// OnBehalf is the value of OnBehalfKey for the caller of ctx: set when it
// was identified by its certificate (a token travels on by itself).
func OnBehalf(ctx context.Context) string {
	p, ok := FromContext(ctx)
	if !ok || p.TokenID != "" || p.Kind != KindHost {
		return ""
	}
	return "host/" + p.Name
}

// Authorizer holds the interceptors' dependencies.
type Authorizer struct {
	Store Store
	// Recorder is told of the refusals this controller records (nil:
	// none are): all of them, but on a follower without certificates
	// (see Escalate), which logs them instead.
	Recorder Recorder
	// Log is where refusals left to the leader are logged (nil:
	// slog.Default()).
	Log *slog.Logger
	// PeerIdentity returns the identity in the caller's verified client
	// certificate (hosts and controllers), if any.
	PeerIdentity func(ctx context.Context) (Kind, string, bool)
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
	// WaitChange, when set, waits (within ctx) for the next change of the
	// state and says whether one came (false at once on the leader). An
	// unknown token is looked up again after each, for up to
	// CatchUpWait: a token made a moment ago through the leader may not
	// have reached this follower yet.
	WaitChange func(ctx context.Context) bool
	// Leader, when set, says whether this controller is the leader. Only
	// the leader (caught up, see WaitChange) knows every token there is:
	// a follower's state may lag (restarted and replaying its log, or cut
	// off for a while), so a token still unknown to it after CatchUpWait
	// is not refused there. The call goes to the leader (Escalate), which
	// decides and records a failed login; if it cannot go, the answer is
	// UNAVAILABLE, which clients retry, not UNAUTHENTICATED, which they
	// do not. nil: this controller decides alone (tests).
	Leader func() bool
	// Limiter bounds each caller's requests (nil: no limit).
	Limiter *Limiter
	// Escalate, when set, sends a unary call this controller refused to
	// the leader, which refuses it again and records the refusal (ok
	// false: it could not, and the refusal stands here). Every refusal
	// goes without certificates: there a follower cannot prove itself to
	// the leader to hand it its own records, so the caller's call itself
	// goes, with the caller's credentials, and the follower records none
	// of its refusals (it logs them, see leavesToLeader). With
	// certificates only a token this follower does not know goes (see
	// Leader); its other refusals it records itself.
	Escalate func(ctx context.Context, method string, req any) (resp any, err error, ok bool)
	// Disabled lets every call through with no caller in its context, as
	// calls made inside the controller (only Go code sets it, through
	// controller.Config.NoAuth: tests of what predates authentication).
	Disabled bool
}

// CatchUpWait bounds how long a follower waits for an unknown token to
// arrive through the log (replication takes milliseconds; an unknown
// token then costs its sender this long, which also slows guessing).
const CatchUpWait = 500 * time.Millisecond

// publicMethods need no credentials and carry no rule of ours.
var publicMethods = map[string]bool{
	"/grpc.health.v1.Health/Check": true,
	"/grpc.health.v1.Health/Watch": true,
	"/grpc.health.v1.Health/List":  true,
}

func (a *Authorizer) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return clock.Now()
}

// SourceOf is the network address the request of ctx came from (the
// original client's, for a call a follower forwarded).
func SourceOf(ctx context.Context) string {
	if forwarded(ctx) {
		if s := metadata.ValueFromIncomingContext(ctx, SourceKey); len(s) > 0 {
			return s[0]
		}
	}
	return peerAddr(ctx)
}

// forwarded says whether another controller marked the call as one it
// forwards. (One key is looked up: FromIncomingContext would copy the
// whole metadata, on every call.)
func forwarded(ctx context.Context) bool {
	return len(metadata.ValueFromIncomingContext(ctx, ForwardedKey)) > 0
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// errUnauthenticated is the answer to a missing token.
var errUnauthenticated = status.Error(codes.Unauthenticated,
	"authentication required: log in with `yunchi login --addr ADDR --token TOKEN`, or send the header Authorization: Bearer <token>")

// errBadToken is the answer to every token that does not authenticate,
// whatever the reason (unknown, wrong secret, revoked, expired, deleted
// user): the reason goes to the audit trail, not to the caller.
var errBadToken = status.Error(codes.Unauthenticated, "authentication failed: the token is unknown, revoked or expired")

// errNotKnownHere answers, on a follower, a token it does not know: the
// leader may (see Authorizer.Leader).
var errNotKnownHere = status.Error(codes.Unavailable, "this controller does not know the token and cannot ask the leader now (it may still be catching up): try again in a few seconds, or another controller")

// authenticate resolves the caller of ctx.
func (a *Authorizer) authenticate(ctx context.Context, method string) (*Principal, error) {
	src := SourceOf(ctx)
	auth := metadata.ValueFromIncomingContext(ctx, "authorization")
	if a.PeerIdentity != nil {
		kind, id, ok := a.PeerIdentity(ctx)
		if !ok || kind != KindController {
			// With certificates, only another controller may say where a
			// call came from; anyone else's forwarding marks are ignored.
			src = peerAddr(ctx)
		}
		if ok {
			p := &Principal{Kind: kind, Name: id, Source: src}
			switch kind {
			case KindHost:
				p.Role = yunchiv1.Role_ROLE_HOST
			case KindController:
				p.Role = yunchiv1.Role_ROLE_CONTROLLER
			}
			// A controller forwarding a call passes the caller on: a
			// user's token (authenticated below), or the identity of a
			// host's certificate, which only a controller may vouch for.
			if kind == KindController && forwarded(ctx) {
				if ob := metadata.ValueFromIncomingContext(ctx, OnBehalfKey); len(ob) > 0 {
					if id, ok := strings.CutPrefix(ob[0], "host/"); ok && id != "" {
						return &Principal{Kind: KindHost, Name: id, Role: yunchiv1.Role_ROLE_HOST, Source: src}, nil
					}
				}
			}
			if kind != KindController || len(auth) == 0 {
				return p, nil
			}
		}
	}
	if len(auth) == 0 {
		return nil, errUnauthenticated
	}
	scheme, tok, ok := strings.Cut(strings.TrimSpace(auth[0]), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		a.loginFailed(ctx, method, "", "", "authorization header is not a bearer token")
		return nil, status.Error(codes.Unauthenticated, "authentication failed: send the header Authorization: Bearer <token>")
	}
	id, secret, err := ParseToken(strings.TrimSpace(tok))
	if err != nil {
		a.loginFailed(ctx, method, "", "", "malformed token")
		return nil, status.Error(codes.Unauthenticated, "authentication failed: "+err.Error())
	}
	t, u, found := a.Store.Credential(id)
	if !found && a.WaitChange != nil {
		wctx, cancel := context.WithTimeout(ctx, CatchUpWait)
		for !found && a.WaitChange(wctx) {
			t, u, found = a.Store.Credential(id)
		}
		cancel()
	}
	if !found && a.Leader != nil && !a.Leader() {
		return nil, errNotKnownHere // not a failed login: the leader decides
	}
	if !found {
		a.loginFailed(ctx, method, id, "", "unknown token")
		return nil, errBadToken
	}
	now := a.now().UnixNano()
	switch {
	case !SecretMatches(secret, t.SecretHash):
		a.loginFailed(ctx, method, id, t.User, "wrong secret")
		return nil, errBadToken
	case t.RevokedUnixNano != 0:
		a.loginFailed(ctx, method, id, t.User, "revoked token")
		return nil, errBadToken
	case t.ExpiresUnixNano != 0 && now >= t.ExpiresUnixNano:
		a.loginFailed(ctx, method, id, t.User, "expired token")
		return nil, errBadToken
	}
	if t.HostId != "" {
		return &Principal{Kind: KindHost, Name: t.HostId, Role: yunchiv1.Role_ROLE_HOST, TokenID: id, Source: src}, nil
	}
	if u == nil {
		a.loginFailed(ctx, method, id, t.User, "user deleted")
		return nil, errBadToken
	}
	if u.LockedUntilUnixNano > now {
		// The secret was right: the owner may know why.
		a.denied(ctx, method, codes.Unauthenticated, "account locked")
		return nil, status.Errorf(codes.Unauthenticated, "account %q is locked until %s after repeated failed logins: a security administrator can unlock it (yunchi user unlock %s)",
			u.Name, time.Unix(0, u.LockedUntilUnixNano).UTC().Format(time.RFC3339), u.Name)
	}
	return &Principal{
		Kind: KindUser, Name: u.Name, Role: yunchiv1.Role(u.Role), Department: u.Department,
		Projects: u.Projects, TokenID: id, Source: src,
	}, nil
}

// leavesToLeader says whether this controller leaves its refusals to the
// leader rather than record them: it is a follower without certificates
// (Leader and Escalate set, PeerIdentity not). It cannot prove itself to
// the leader to hand it records; its refused unary calls go to the leader
// themselves (Escalate), which refuses and records them, and counts the
// failed logins. Recorded here as well, they would be recorded twice
// should this controller lead before its Recorder sent them. What cannot
// go (a refused stream; any refusal while the leader is out of reach) is
// only logged, as nothing here could record it.
func (a *Authorizer) leavesToLeader() bool {
	return a.Escalate != nil && a.PeerIdentity == nil && a.Leader != nil && !a.Leader()
}

func (a *Authorizer) logger() *slog.Logger {
	if a.Log != nil {
		return a.Log
	}
	return slog.Default()
}

func (a *Authorizer) loginFailed(ctx context.Context, method, tokenID, user, reason string) {
	switch {
	case a.leavesToLeader():
		a.logger().Debug("failed login left to the leader (no TLS)", "method", method, "token_id", tokenID, "user", user,
			"reason", reason, "source", SourceOf(ctx))
	case a.Recorder != nil:
		a.Recorder.LoginFailed(ctx, method, tokenID, user, reason)
	}
}

func (a *Authorizer) denied(ctx context.Context, method string, code codes.Code, reason string) {
	switch {
	case a.leavesToLeader():
		actor := ""
		if p, ok := FromContext(ctx); ok {
			actor = p.Name
		}
		a.logger().Debug("refusal left to the leader (no TLS)", "method", method, "code", code.String(), "reason", reason,
			"actor", actor, "source", SourceOf(ctx))
	case a.Recorder != nil:
		a.Recorder.Denied(ctx, method, code, reason)
	}
}

// admit authenticates the caller of method and checks its role; the
// request itself is checked by scope.
func (a *Authorizer) admit(ctx context.Context, method string) (context.Context, *yunchiv1.AccessRule, error) {
	if publicMethods[method] {
		return ctx, nil, nil
	}
	rule, ok := RuleFor(method)
	if !ok {
		a.denied(ctx, method, codes.PermissionDenied, "no access rule")
		return nil, nil, status.Errorf(codes.PermissionDenied, "%s has no access rule: nobody may call it", method)
	}
	if a.Disabled {
		return ctx, rule, nil // no caller: handlers act as for calls made inside the controller
	}
	if rule.GetPublic() {
		return ctx, rule, nil
	}
	p, err := a.authenticate(ctx, method)
	if err != nil {
		return nil, nil, err
	}
	p.deptOf = a.Store.ProjectDepartment
	if !Allows(rule, p.Role) {
		reason := fmt.Sprintf("role %s may not call %s", RoleName(p.Role), MethodName(method))
		a.denied(NewContext(ctx, p), method, codes.PermissionDenied, reason)
		return nil, nil, status.Errorf(codes.PermissionDenied, "permission denied: %s (roles allowed: %s)", reason, roleList(rule))
	}
	return NewContext(ctx, p), rule, nil
}

// MethodName is the short name of a full gRPC method name:
// "/yunchi.v1.VMService/CreateVM" is "CreateVM".
func MethodName(full string) string {
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[i+1:]
	}
	return full
}

func roleList(r *yunchiv1.AccessRule) string {
	var out []string
	for _, role := range r.GetRoles() {
		out = append(out, RoleName(role))
	}
	return strings.Join(out, ", ")
}

// scope confines req to what the caller may see. It may fill in the
// caller's only project where the request names none.
func (a *Authorizer) scope(ctx context.Context, method string, rule *yunchiv1.AccessRule, req any) error {
	p, ok := FromContext(ctx)
	if !ok || rule == nil || a.Disabled {
		return nil
	}
	msg, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	m := msg.ProtoReflect()
	field := rule.GetField()
	list := strings.HasPrefix(MethodName(method), "List")
	switch rule.GetScope() {
	case yunchiv1.Scope_SCOPE_PROJECT:
		if field == "" {
			field = "project"
		}
		project, fd := getString(m, field)
		if project == "" {
			if list || !DepartmentRole(p.Role) {
				return nil // lists filter; cluster roles get the default project
			}
			only := p.Projects
			if p.Role == yunchiv1.Role_ROLE_DEPT_ADMIN {
				return status.Errorf(codes.InvalidArgument, "name a project (--project): a department admin has no default project")
			}
			if len(only) != 1 {
				return status.Errorf(codes.InvalidArgument, "name a project (--project): you belong to %d projects (%s)", len(only), strings.Join(only, ", "))
			}
			if fd != nil {
				m.Set(fd, protoreflect.ValueOfString(only[0]))
			}
			return nil
		}
		dept, exists := a.Store.ProjectDepartment(project)
		if !exists || !p.SeesProject(project, dept) {
			a.denied(ctx, method, codes.NotFound, fmt.Sprintf("project %q outside the caller's scope", project))
			return status.Errorf(codes.NotFound, "project %q not found", project)
		}
	case yunchiv1.Scope_SCOPE_DEPARTMENT:
		if field == "" {
			field = "department"
		}
		dept, _ := getString(m, field)
		if dept == "" {
			if list || !DepartmentRole(p.Role) {
				return nil
			}
			if fd := m.Descriptor().Fields().ByName(protoreflect.Name(field)); fd != nil && !strings.Contains(field, ".") {
				m.Set(fd, protoreflect.ValueOfString(p.Department))
			}
			return nil
		}
		if !p.SeesDepartment(dept) {
			a.denied(ctx, method, codes.NotFound, fmt.Sprintf("department %q outside the caller's scope", dept))
			return status.Errorf(codes.NotFound, "department %q not found", dept)
		}
	case yunchiv1.Scope_SCOPE_HOST:
		if field == "" {
			field = "host_id"
		}
		host, _ := getString(m, field)
		if p.Kind != KindHost || host != p.Name {
			reason := fmt.Sprintf("host %q may not act for host %q", p.Name, host)
			a.denied(ctx, method, codes.PermissionDenied, reason)
			return status.Errorf(codes.PermissionDenied, "permission denied: %s", reason)
		}
	}
	return nil
}

// StringField reads a string field of m by dotted path ("facts.id"); ""
// when the path does not resolve to one.
func StringField(m protoreflect.Message, path string) string {
	v, _ := getString(m, path)
	return v
}

// getString reads a string field by dotted path; fd is the last field
// (nil when the path does not resolve).
func getString(m protoreflect.Message, path string) (string, protoreflect.FieldDescriptor) {
	parts := strings.Split(path, ".")
	for i, name := range parts {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(name))
		if fd == nil || fd.IsList() || fd.IsMap() {
			return "", nil
		}
		if i == len(parts)-1 {
			if fd.Kind() != protoreflect.StringKind {
				return "", nil
			}
			return m.Get(fd).String(), fd
		}
		if fd.Kind() != protoreflect.MessageKind || !m.Has(fd) {
			return "", nil
		}
		m = m.Get(fd).Message()
	}
	return "", nil
}

// limit applies the rate limit to a call admit let in (actx) or refused
// (err: then counted by address). A call a controller forwarded was
// counted where it arrived; health checks are not counted.
func (a *Authorizer) limit(ctx, actx context.Context, method string, err error) error {
	if a.Limiter == nil || publicMethods[method] {
		return nil
	}
	if err == nil {
		ctx = actx
		if p, ok := FromContext(actx); ok && a.PeerIdentity != nil && forwarded(ctx) {
			if kind, _, ok := a.PeerIdentity(ctx); ok && kind == KindController && p != nil {
				return nil
			}
		}
	}
	return a.Limiter.check(ctx)
}

// UnaryInterceptor authenticates, checks the role and confines the request.
func (a *Authorizer) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	actx, rule, err := a.admit(ctx, info.FullMethod)
	if lerr := a.limit(ctx, actx, info.FullMethod, err); lerr != nil {
		return nil, lerr
	}
	if err == nil {
		err = a.scope(actx, info.FullMethod, rule, req)
	}
	if err != nil {
		if a.Escalate != nil && (a.PeerIdentity == nil || err == errNotKnownHere) && !forwarded(ctx) {
			if resp, ferr, ok := a.Escalate(ctx, info.FullMethod, req); ok {
				return resp, ferr
			}
		}
		return nil, err
	}
	return handler(actx, req)
}

// StreamInterceptor does the same for streams: the caller before the
// stream starts, the request when it arrives.
func (a *Authorizer) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, rule, err := a.admit(ss.Context(), info.FullMethod)
	if lerr := a.limit(ss.Context(), ctx, info.FullMethod, err); lerr != nil {
		return lerr
	}
	if err != nil {
		return err
	}
	return handler(srv, &scopedStream{ServerStream: ss, ctx: ctx, a: a, method: info.FullMethod, rule: rule})
}

type scopedStream struct {
	grpc.ServerStream
	ctx    context.Context
	a      *Authorizer
	method string
	rule   *yunchiv1.AccessRule
	seen   bool
}

func (s *scopedStream) Context() context.Context { return s.ctx }

func (s *scopedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if !s.seen {
		s.seen = true
		return s.a.scope(s.ctx, s.method, s.rule, m)
	}
	return nil
}
