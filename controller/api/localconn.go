package api

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// localConn is the REST gateway's connection to this controller's own gRPC
// services. A unary call runs the service's handler directly, behind the
// same unary interceptor chain the gRPC server runs (metrics, membership,
// stale reads, leader forwarding, idempotency), with the request's metadata
// as incoming metadata and the headers and trailers the handler sets
// returned as a gRPC call returns them; what it saves is the HTTP/2
// framing, the encoding and decoding of both messages and the goroutine
// hand-offs of a gRPC round trip, which cost a REST create as much CPU as
// the create itself. Streams (WatchVM) go over the in-memory gRPC
// connection as before.
type localConn struct {
	methods map[string]localMethod // by full method name, "/yunchi.v1.VMService/CreateVM"
	chain   grpc.UnaryServerInterceptor
	streams *grpc.ClientConn
}

type localMethod struct {
	srv     any
	handler grpc.MethodHandler
}

type localServer struct {
	gs       *grpc.Server // the server these were registered on
	services []localService
	unary    []grpc.UnaryServerInterceptor
}

// localService is a registered service and its implementation.
type localService struct {
	desc *grpc.ServiceDesc
	impl any
}

// newLocalConn calls the services of ls, each on its implementation
// (gs.RegisterService, which NewGRPCServer called for each before it was
// kept, refused any implementation that lacks its service's methods).
func newLocalConn(ls *localServer, streams *grpc.ClientConn) *localConn {
	c := &localConn{methods: map[string]localMethod{}, chain: chainUnary(ls.unary), streams: streams}
	for _, svc := range ls.services {
		for _, m := range svc.desc.Methods {
			c.methods["/"+svc.desc.ServiceName+"/"+m.MethodName] = localMethod{srv: svc.impl, handler: m.Handler}
		}
	}
	return c
}

// chainUnary runs ics in order, as grpc.ChainUnaryInterceptor does.
func chainUnary(ics []grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		var next func(i int) grpc.UnaryHandler
		next = func(i int) grpc.UnaryHandler {
			if i == len(ics) {
				return handler
			}
			return func(ctx context.Context, req any) (any, error) {
				return ics[i](ctx, req, info, next(i+1))
			}
		}
		return next(0)(ctx, req)
	}
}

func (c *localConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	m, ok := c.methods[method]
	if !ok {
		return c.streams.Invoke(ctx, method, args, reply, opts...)
	}
	in, ok1 := args.(proto.Message)
	out, ok2 := reply.(proto.Message)
	if !ok1 || !ok2 {
		return c.streams.Invoke(ctx, method, args, reply, opts...)
	}
	md, _ := metadata.FromOutgoingContext(ctx) // a copy, lower-cased
	st := &localStream{method: method}
	// The handler sees the caller's metadata as incoming, as on the server,
	// and none as outgoing (a forwarded call sets its own).
	hctx := metadata.NewOutgoingContext(metadata.NewIncomingContext(ctx, md), metadata.MD{})
	hctx = grpc.NewContextWithServerTransportStream(hctx, st)
	resp, err := m.handler(m.srv, hctx, func(v any) error {
		proto.Merge(v.(proto.Message), in)
		return nil
	}, c.chain)
	st.mu.Lock()
	header, trailer := st.header, st.trailer
	st.mu.Unlock()
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.HeaderCallOption:
			*o.HeaderAddr = header
		case grpc.TrailerCallOption:
			*o.TrailerAddr = trailer
		}
	}
	if err != nil {
		// As the gRPC server answers: a status error as it is, a context
		// error as Canceled or DeadlineExceeded, anything else as Unknown.
		if s, ok := status.FromError(err); ok {
			return s.Err()
		}
		return status.FromContextError(err).Err()
	}
	r, ok := resp.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "%s answered %T, not a message", method, resp)
	}
	proto.Reset(out)
	proto.Merge(out, r)
	return nil
}

func (c *localConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.streams.NewStream(ctx, desc, method, opts...)
}

// localStream collects the headers and trailers a handler sets.
type localStream struct {
	method          string
	mu              sync.Mutex
	header, trailer metadata.MD
}

func (s *localStream) Method() string { return s.method }

func (s *localStream) SetHeader(md metadata.MD) error {
	s.mu.Lock()
	s.header = metadata.Join(s.header, md)
	s.mu.Unlock()
	return nil
}

func (s *localStream) SendHeader(md metadata.MD) error { return s.SetHeader(md) }

func (s *localStream) SetTrailer(md metadata.MD) error {
	s.mu.Lock()
	s.trailer = metadata.Join(s.trailer, md)
	s.mu.Unlock()
	return nil
}
