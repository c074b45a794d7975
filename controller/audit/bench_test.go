package audit

// Costs of the audit trail per request: the interceptor (on the
// controller a request reaches) and the record Apply writes (on every
// controller), beside an Apply that records nothing.

import (
	"context"
	"testing"

	"google.golang.org/grpc"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func BenchmarkInterceptorCreate(b *testing.B) {
	req := &yunchiv1.CreateVMRequest{Name: "web-1", Project: "air", Vcpus: 2, Memory: "4GiB", Disk: "40GiB"}
	info := &grpc.UnaryServerInfo{FullMethod: yunchiv1.VMService_CreateVM_FullMethodName}
	h := func(ctx context.Context, req any) (any, error) { return state.AuditFrom(ctx), nil }
	ctx := WithContext(context.Background(), Context{Actor: "alice", Role: "ROLE_MEMBER"})
	for b.Loop() {
		UnaryInterceptor(ctx, req, info, h)
	}
}

func BenchmarkAppendRecord(b *testing.B) {
	f, _ := OpenFile(b.TempDir(), nil)
	defer f.Close()
	s := state.New()
	s.SetAuditSink(f)
	ac := &statev1.AuditContext{Actor: "alice", Role: "ROLE_MEMBER", Department: "air", Source: "10.0.0.1:5555", Action: "CreateVM",
		Target: "project/air/vm/web-1", Params: `{"name":"web-1","project":"air","vcpus":2,"memory":"4GiB","disk":"40GiB"}`}
	i := uint64(0)
	for b.Loop() {
		i++
		s.Apply(i, &statev1.Command{Version: state.CommandVersion, UnixNano: int64(i), Audit: ac,
			Cmd: &statev1.Command_RemoveMember{RemoveMember: &statev1.RemoveMember{Id: "x"}}})
	}
}

func BenchmarkApplyNoAudit(b *testing.B) {
	s := state.New()
	i := uint64(0)
	for b.Loop() {
		i++
		s.Apply(i, &statev1.Command{Version: state.CommandVersion, UnixNano: int64(i),
			Cmd: &statev1.Command_RemoveMember{RemoveMember: &statev1.RemoveMember{Id: "x"}}})
	}
}
