package api

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/auth"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Every method a follower forwards has its response type known at start-up.
func TestForwardedMethodsHaveResponseTypes(t *testing.T) {
	n := 0
	for _, m := range auth.Methods() {
		if !auth.Mutating(m) {
			continue
		}
		n++
		r, err := newResponse(m)
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		if r == nil || r.ProtoReflect().Descriptor() == nil {
			t.Fatalf("%s: no response message", m)
		}
	}
	// The writes are the methods whose access rule says mutating: the VM
	// actions, for one, must reach the leader.
	for _, m := range []string{yunchiv1.VMService_CreateVM_FullMethodName, yunchiv1.VMService_DeleteVM_FullMethodName,
		yunchiv1.AgentService_Heartbeat_FullMethodName, yunchiv1.TokenService_RevokeToken_FullMethodName} {
		if !auth.Mutating(m) {
			t.Errorf("%s is not forwarded to the leader", m)
		}
	}
	// The idempotency interceptor counts on LeaderInterceptor having
	// caught the leader up, which it does for writes.
	for m := range idempotent {
		if !auth.Mutating(m) {
			t.Errorf("%s takes a request id but is not a write", m)
		}
	}
	if auth.Mutating(yunchiv1.VMService_ListVMs_FullMethodName) || n < 20 {
		t.Errorf("ListVMs forwarded, or only %d writes", n)
	}
	if _, err := newResponse("/yunchi.v1.VMService/NoSuchMethod"); err == nil {
		t.Fatal("an unknown method has a response type")
	}
}

// A write on the leader is decided only once the leader has applied what
// earlier terms committed (a new leader applies it after its first
// commit): the handler sees the state with it. If the leader cannot catch
// up, the write is not proposed and says so (NOT_PROPOSED: safe to send
// again). A read does not wait.
func TestLeaderCatchesUpBeforeWrites(t *testing.T) {
	s, p, _ := newFakeServer(t)
	committed := &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{
		Member: &statev1.MemberRecord{Id: "c4", RaftAddress: "c4:7000", ApiAddress: "c4:8000"}}}}
	caughtUp := 0
	p.caughtUp = func(ctx context.Context) error {
		caughtUp++
		if caughtUp == 1 { // the entry of an earlier term, applied now
			_, err := p.Apply(ctx, committed)
			return err
		}
		return nil
	}
	sawIt := func(context.Context, any) (any, error) {
		_, ok := p.store.Member("c4")
		return ok, nil
	}
	write := &grpc.UnaryServerInfo{FullMethod: yunchiv1.VMService_CreateVM_FullMethodName}
	got, err := s.LeaderInterceptor(context.Background(), &yunchiv1.CreateVMRequest{}, write, sawIt)
	if err != nil || got != true || caughtUp != 1 {
		t.Fatalf("the write's handler saw the earlier term's entry: %v, %v (%d catch-ups)", got, err, caughtUp)
	}

	read := &grpc.UnaryServerInfo{FullMethod: yunchiv1.VMService_ListVMs_FullMethodName}
	if _, err := s.LeaderInterceptor(context.Background(), &yunchiv1.ListVMsRequest{}, read, sawIt); err != nil || caughtUp != 1 {
		t.Fatalf("a read: %v, %d catch-ups", err, caughtUp)
	}

	p.caughtUp = func(context.Context) error { return raft.ErrLeadershipLost }
	called := false
	_, err = s.LeaderInterceptor(context.Background(), &yunchiv1.CreateVMRequest{}, write, func(context.Context, any) (any, error) {
		called = true
		return nil, nil
	})
	reason, _ := reasonOf(err)
	if st := status.Convert(err); called || st.Code() != codes.Unavailable || reason != NotProposedReason ||
		!strings.Contains(st.Message(), "has not caught up") {
		t.Fatalf("not caught up: handler called %v, %v ", called, err)
	}
}
