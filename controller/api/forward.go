package api

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
)

// dialCreds are the transport credentials for dialing another controller:
// mutual TLS with this controller's certificate, or plaintext.
func (s *Server) dialCreds() credentials.TransportCredentials {
	if s.TLS != nil && s.TLS.Dial != nil {
		return s.TLS.Dial
	}
	return insecure.NewCredentials()
}

// consistentReader is implemented by read requests with a `consistent` field.
type consistentReader interface{ GetConsistent() bool }

// answeredKey is the trailer a controller sets on every answer to a
// forwarded call: the forwarding node then knows an UNAVAILABLE came from
// the leader's own logic (and passes it on as it is), not from the network.
const answeredKey = "x-yunchi-answered-by"

// forwardHeaders are the incoming headers a forwarded call carries on.
var forwardHeaders = []string{"authorization", "x-request-id", idempotencyKey}

// forwardMD is the metadata of a call this controller forwards, given the
// incoming metadata: marked forwarded by it, with forwardHeaders carried on.
func (s *Server) forwardMD(ctx context.Context, in metadata.MD) metadata.MD {
	out := metadata.Pairs(auth.ForwardedKey, s.self.ID)
	// The leader audits the caller's address, not this controller's (a
	// forwarded call is never forwarded again, so this is the caller).
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		out.Set(auth.SourceKey, p.Addr.String())
	}
	// A host known by its certificate: the leader sees this controller's
	// certificate, so it is told whose call this is.
	if ob := auth.OnBehalf(ctx); ob != "" {
		out.Set(auth.OnBehalfKey, ob)
	}
	for _, k := range forwardHeaders {
		if v := in.Get(k); len(v) > 0 {
			out.Set(k, v...)
		}
	}
	return out
}

// forwardKeepalive makes the connection to a leader that stopped answering
// (SIGSTOP, a wedged process: TCP stays open, nothing comes back) fail, with
// every call waiting on it, instead of hanging until each caller's deadline
// or forever for callers without one. gRPC pings no more often than every
// 10 s; the controllers' gRPC transport permits pings every MinClientPing
// (NewGRPCServer), so it sends no GOAWAY too_many_pings. Agents' calls carry their own short deadlines,
// which the forwarded call inherits.
var forwardKeepalive = keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}

// forwarder keeps one client connection per leader address.
type forwarder struct {
	s     *Server
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newForwarder(s *Server) *forwarder {
	return &forwarder{s: s, conns: map[string]*grpc.ClientConn{}}
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = map[string]*grpc.ClientConn{}
}

func (f *forwarder) leaderConn() (*grpc.ClientConn, error) {
	id := f.s.prop.LeaderID()
	if id == "" {
		return nil, errNoLeader
	}
	return f.memberConn(id, "leader")
}

// memberConn is the connection to controller id (what: how messages name
// it).
func (f *forwarder) memberConn(id, what string) (*grpc.ClientConn, error) {
	m, ok := f.s.store.Member(id)
	if !ok || m.ApiAddress == "" {
		return nil, notProposed("%s %s has not published its API address yet: retry in a few seconds", what, id)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.conns[m.ApiAddress]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(m.ApiAddress, grpc.WithTransportCredentials(f.s.dialCreds()),
		grpc.WithKeepaliveParams(forwardKeepalive))
	if err != nil {
		return nil, notProposed("cannot reach %s %s at %s: %v", what, id, m.ApiAddress, err)
	}
	f.conns[m.ApiAddress] = c
	return c, nil
}

// responseTypes maps every yunchi.v1 method ("/yunchi.v1.VMService/CreateVM")
// to its response message type, read from the protobuf registry once at
// start-up, so one interceptor can forward every method without a registry
// lookup per call.
var responseTypes = func() map[string]protoreflect.MessageType {
	m := map[string]protoreflect.MessageType{}
	protoregistry.GlobalFiles.RangeFilesByPackage("yunchi.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				md := sd.Methods().Get(j)
				if mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName()); err == nil {
					m["/"+string(sd.FullName())+"/"+string(md.Name())] = mt
				}
			}
		}
		return true
	})
	return m
}()

// newResponse allocates the response message of a method.
func newResponse(fullMethod string) (proto.Message, error) {
	mt, ok := responseTypes[fullMethod]
	if !ok {
		return nil, status.Errorf(codes.Internal, "unknown method %q", fullMethod)
	}
	return mt.New().Interface(), nil
}

// LeaderInterceptor runs writes and consistent reads on the leader: on a
// follower it forwards the call (once: a forwarded call that lands on a
// non-leader fails with Unavailable rather than bouncing around); on the
// leader a consistent read first waits on a raft barrier, and a write on
// the leader having applied every entry of earlier terms (CaughtUp: a
// barrier the first time in a term, an atomic load after that). A new
// leader applies those entries only after its first commit; a write
// decided before then saw a state without them (CI met it: a failover
// started at once on a new leader found "no restore point outside a1
// yet" for a VM whose point the old leader had committed).
func (s *Server) LeaderInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	consistent := false
	if cr, ok := req.(consistentReader); ok {
		consistent = cr.GetConsistent()
	}
	if !auth.Mutating(info.FullMethod) && !consistent {
		return handler(ctx, req)
	}
	// One key looked up, not the whole metadata copied: this runs on every
	// create.
	wasForwarded := forwarded(ctx)
	if wasForwarded {
		grpc.SetTrailer(ctx, metadata.Pairs(answeredKey, s.self.ID))
	}
	if s.prop.IsLeader() {
		if consistent {
			if err := s.prop.Barrier(ctx); err != nil {
				return nil, toStatus(err)
			}
		} else if err := s.prop.CaughtUp(ctx); err != nil {
			// Nothing of this call was proposed: safe to send again.
			return nil, notProposed("this controller has just become leader and has not caught up with the log yet (%s): retry in a few seconds", oneLine(err.Error()))
		}
		return handler(ctx, req)
	}
	if wasForwarded {
		return nil, notProposed("leadership is changing: retry in a few seconds")
	}
	resp, err, sent := s.forwardToLeader(ctx, info.FullMethod, req)
	if sent {
		state.MarkAuditHandled(ctx) // the leader records it
	}
	return resp, err
}

// forwardToLeader sends a call to the leader with the caller's metadata
// (forwardMD). sent is false when it never left this controller (no
// connection to the leader), err saying why.
func (s *Server) forwardToLeader(ctx context.Context, method string, req any) (resp proto.Message, err error, sent bool) {
	conn, err := s.fwd.leaderConn()
	if err != nil {
		return nil, err, false
	}
	if resp, err = newResponse(method); err != nil {
		return nil, err, false
	}
	if !awaitReady(ctx, conn) {
		return nil, notProposed("leader %s unreachable at %s (not connected; the request was not sent): retry in a few seconds", s.prop.LeaderID(), conn.Target()), false
	}
	in, _ := metadata.FromIncomingContext(ctx)
	var trailer metadata.MD
	if err := conn.Invoke(metadata.NewOutgoingContext(ctx, s.forwardMD(ctx, in)), method, req, resp, grpc.Trailer(&trailer)); err != nil {
		if status.Code(err) == codes.Unavailable && len(trailer.Get(answeredKey)) == 0 {
			return nil, status.Errorf(codes.Unavailable, "leader unreachable: %s: retry in a few seconds", status.Convert(err).Message()), true
		}
		return nil, err, true
	}
	return resp, nil, true
}

// forwardToMember sends a call to controller id with the caller's
// metadata, as forwardToLeader does to the leader: for what only that
// controller can answer (its backup repositories).
func (s *Server) forwardToMember(ctx context.Context, id, what, method string, req any) (proto.Message, error) {
	conn, err := s.fwd.memberConn(id, what)
	if err != nil {
		return nil, err
	}
	resp, err := newResponse(method)
	if err != nil {
		return nil, err
	}
	if !awaitReady(ctx, conn) {
		return nil, status.Errorf(codes.Unavailable, "%s %s unreachable at %s: retry in a few seconds", what, id, conn.Target())
	}
	in, _ := metadata.FromIncomingContext(ctx)
	if err := conn.Invoke(metadata.NewOutgoingContext(ctx, s.forwardMD(ctx, in)), method, req, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// Escalate sends a call this follower refused (authentication or access)
// to the leader, with the caller's own credentials: the leader refuses it
// again and records the refusal in the audit trail, and counts a failed
// login towards the user's lockout. ok is false on the leader, or when the
// leader cannot be reached (the refusal then stands here, logged only).
func (s *Server) Escalate(ctx context.Context, method string, req any) (any, error, bool) {
	if s.prop.IsLeader() {
		return nil, nil, false
	}
	resp, err, sent := s.forwardToLeader(ctx, method, req)
	if !sent {
		return nil, nil, false
	}
	return resp, err, true
}
