package auth

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// fakeStream records the headers a handler sets (grpc.SetHeader needs a
// server transport stream in the context).
type fakeStream struct {
	grpc.ServerTransportStream
	hdr metadata.MD
}

func (f *fakeStream) Method() string                  { return "" }
func (f *fakeStream) SetHeader(md metadata.MD) error  { f.hdr = metadata.Join(f.hdr, md); return nil }
func (f *fakeStream) SendHeader(md metadata.MD) error { return f.SetHeader(md) }
func (f *fakeStream) SetTrailer(metadata.MD) error    { return nil }

// Each token gets its own bucket: one token over its limit is refused with
// RESOURCE_EXHAUSTED and a retry-after, another token is not, and the
// first is let through again once the bucket refills.
func TestRateLimit(t *testing.T) {
	a, _, tok := newFixture(t)
	now := time.Unix(1_000_000, 0)
	a.Now = func() time.Time { return now }
	a.Limiter = &Limiter{PerSecond: 10, Burst: 5, Now: func() time.Time { return now }}
	list := yunchiv1.VMService_ListVMs_FullMethodName
	callAs := func(token string) (error, metadata.MD) {
		fs := &fakeStream{}
		ctx := grpc.NewContextWithServerTransportStream(metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token)), fs)
		_, err := a.UnaryInterceptor(ctx, &yunchiv1.ListVMsRequest{}, &grpc.UnaryServerInfo{FullMethod: list}, func(ctx context.Context, req any) (any, error) { return nil, nil })
		return err, fs.hdr
	}
	for i := 0; i < 5; i++ {
		if err, _ := callAs(tok["alice"]); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	err, hdr := callAs(tok["alice"])
	if status.Code(err) != codes.ResourceExhausted || len(hdr.Get(RetryAfterKey)) != 1 || hdr.Get(RetryAfterKey)[0] != "1" {
		t.Fatalf("over the limit: %v, headers %v", err, hdr)
	}
	if err, _ := callAs(tok["bob"]); err != nil {
		t.Fatalf("another token: %v", err)
	}
	now = now.Add(200 * time.Millisecond) // two requests' worth
	for i := 0; i < 2; i++ {
		if err, _ := callAs(tok["alice"]); err != nil {
			t.Fatalf("after the refill, call %d: %v", i, err)
		}
	}
	if err, _ := callAs(tok["alice"]); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("refill spent: %v", err)
	}
	// Calls without credentials are limited by address too (they are
	// refused anyway, but must not cost the controllers unbounded work).
	a.Limiter = &Limiter{PerSecond: 1, Burst: 1, Now: func() time.Time { return now }}
	ctx := context.Background()
	for i, want := range []codes.Code{codes.Unauthenticated, codes.ResourceExhausted} {
		_, err := a.UnaryInterceptor(grpc.NewContextWithServerTransportStream(ctx, &fakeStream{}), &yunchiv1.ListVMsRequest{}, &grpc.UnaryServerInfo{FullMethod: list}, func(ctx context.Context, req any) (any, error) { return nil, nil })
		if status.Code(err) != want {
			t.Fatalf("anonymous call %d: %v, want %v", i, err, want)
		}
	}
}
