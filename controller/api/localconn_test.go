package api

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// The gateway's direct calls behave as gRPC calls to the same server: the
// interceptors run in the server's order around the handler and see the
// caller's metadata as incoming; the handler gets a copy of the request and
// no outgoing metadata; the headers and trailers it sets come back through
// the call options; its errors come back as the server would send them.
func TestLocalConnActsAsGRPC(t *testing.T) {
	var order []string
	ic := func(name string) grpc.UnaryServerInterceptor {
		return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			order = append(order, fmt.Sprintf("%s %s key=%v", name, info.FullMethod, md.Get("idempotency-key")))
			return h(ctx, req)
		}
	}
	var handlerErr error
	var got *yunchiv1.GetVMRequest
	desc := &grpc.ServiceDesc{ServiceName: "test.Svc", Methods: []grpc.MethodDesc{{
		MethodName: "Get",
		Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			in := new(yunchiv1.GetVMRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			return ic(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/test.Svc/Get"}, func(ctx context.Context, req any) (any, error) {
				order = append(order, "handler")
				got = req.(*yunchiv1.GetVMRequest)
				if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md) > 0 {
					t.Errorf("handler sees outgoing metadata %v", md)
				}
				grpc.SetHeader(ctx, metadata.Pairs("h", "1"))
				grpc.SetTrailer(ctx, metadata.Pairs(answeredKey, "a1"))
				if handlerErr != nil {
					return nil, handlerErr
				}
				return &yunchiv1.VM{Name: got.Name, HostId: "h1"}, nil
			})
		},
	}}}
	lc := newLocalConn(&localServer{services: []localService{{desc, struct{}{}}}, unary: []grpc.UnaryServerInterceptor{ic("first"), ic("second")}}, nil)

	ctx := metadata.AppendToOutgoingContext(context.Background(), "idempotency-key", "k1")
	req := &yunchiv1.GetVMRequest{Name: "web"}
	reply := &yunchiv1.VM{Id: "stale"}
	var header, trailer metadata.MD
	if err := lc.Invoke(ctx, "/test.Svc/Get", req, reply, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
		t.Fatal(err)
	}
	want := []string{"first /test.Svc/Get key=[k1]", "second /test.Svc/Get key=[k1]", "handler"}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("calls %q, want %q", order, want)
	}
	if got == req || !proto.Equal(got, req) {
		t.Errorf("handler got %v (same pointer: %v), want a copy of %v", got, got == req, req)
	}
	if !proto.Equal(reply, &yunchiv1.VM{Name: "web", HostId: "h1"}) {
		t.Errorf("reply %v, want the handler's answer only", reply)
	}
	if fmt.Sprint(header.Get("h")) != "[1]" || fmt.Sprint(trailer.Get(answeredKey)) != "[a1]" {
		t.Errorf("header %v trailer %v", header, trailer)
	}

	for _, tc := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{status.Error(codes.FailedPrecondition, "not yet"), codes.FailedPrecondition, "not yet"},
		{context.Canceled, codes.Canceled, context.Canceled.Error()},
		{context.DeadlineExceeded, codes.DeadlineExceeded, context.DeadlineExceeded.Error()},
		{errors.New("boom"), codes.Unknown, "boom"},
	} {
		handlerErr = tc.err
		err := lc.Invoke(ctx, "/test.Svc/Get", req, &yunchiv1.VM{})
		if s, ok := status.FromError(err); !ok || s.Code() != tc.code || s.Message() != tc.msg {
			t.Errorf("handler error %v: got %v, want code %v, message %q", tc.err, err, tc.code, tc.msg)
		}
	}
}

// Each service is called on its own implementation (the tenancy services
// are not *Server): REST to /v1/tokens used to panic with "*api.Server is
// not yunchiv1.TokenServiceServer" on a controller that served it itself.
// (A service whose implementation lacks its methods never gets here:
// gs.RegisterService refuses it.)
func TestLocalConnCallsEachServiceOnItsImplementation(t *testing.T) {
	s := &Server{}
	gs := s.NewGRPCServer(NewMetrics(s))
	defer gs.Stop()
	lc := newLocalConn(s.local, nil)
	for _, svc := range s.local.services {
		d := svc.desc
		for _, m := range d.Methods {
			lm := lc.methods["/"+d.ServiceName+"/"+m.MethodName]
			if !reflect.TypeOf(lm.srv).Implements(reflect.TypeOf(d.HandlerType).Elem()) {
				t.Errorf("%s/%s is called on %T", d.ServiceName, m.MethodName, lm.srv)
			}
		}
	}
	if _, ok := lc.methods["/yunchi.v1.TokenService/CreateToken"]; !ok {
		t.Fatal("TokenService is not served directly")
	}
}
