package api

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func deptCmd(name string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_CreateDepartment{CreateDepartment: &statev1.CreateDepartment{Department: &statev1.DepartmentRecord{Name: name}}}}
}

func projectCmd(name, dept string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_CreateProject{CreateProject: &statev1.CreateProject{Project: &statev1.ProjectRecord{Name: name, Department: dept}}}}
}

// A quota refusal from Apply is RESOURCE_EXHAUSTED with one QuotaFailure
// violation naming the subject, its description the message.
func TestQuotaExceededStatus(t *testing.T) {
	err := toStatus(&state.Error{Kind: state.KindQuotaExceeded, Subject: "department:eco", Msg: `quota exceeded: department "eco" vCPU: limit 16, in use 16, asked 2`})
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || st.Message() != `quota exceeded: department "eco" vCPU: limit 16, in use 16, asked 2` {
		t.Fatalf("%v", err)
	}
	var qf *errdetails.QuotaFailure
	for _, d := range st.Details() {
		if q, ok := d.(*errdetails.QuotaFailure); ok {
			qf = q
		}
	}
	if qf == nil || len(qf.Violations) != 1 || qf.Violations[0].Subject != "department:eco" || qf.Violations[0].Description != st.Message() {
		t.Fatalf("details %v", st.Details())
	}
}

// SetQuota: security admins set department and project quotas; a
// department admin only its own department's projects' (another
// department answers NOT_FOUND, its own quota PERMISSION_DENIED); other
// roles nothing. Bad input is refused before anything is proposed.
func TestSetQuotaRoles(t *testing.T) {
	s, p, _ := newFakeServer(t, deptCmd("eco"), projectCmd("air", "eco"), deptCmd("tax"))
	ctx := context.Background()
	q, err := s.SetQuota(ctx, &yunchiv1.SetQuotaRequest{Department: "eco", Vcpus: proto.Int64(16), Memory: proto.String("64GiB")})
	if err != nil || q.GetLimit().GetVcpus() != 16 || q.GetLimit().GetMemoryBytes() != 64<<30 || q.GetLimit().DiskBytes != nil {
		t.Fatalf("secadmin: %v %v", q, err)
	}
	as := func(role yunchiv1.Role, dept string) {
		ctx = auth.NewContext(context.Background(), &auth.Principal{Kind: auth.KindUser, Name: "someone", Role: role, Department: dept})
	}
	as(yunchiv1.Role_ROLE_DEPT_ADMIN, "eco")
	if q, err := s.SetQuota(ctx, &yunchiv1.SetQuotaRequest{Department: "eco", Project: "air", Vcpus: proto.Int64(8)}); err != nil || q.GetLimit().GetVcpus() != 8 || q.Project != "air" {
		t.Fatalf("dept admin, own project: %v %v", q, err)
	}
	n := len(p.commands())
	for _, c := range []struct {
		req  *yunchiv1.SetQuotaRequest
		code codes.Code
	}{
		{&yunchiv1.SetQuotaRequest{Department: "eco", Vcpus: proto.Int64(32)}, codes.PermissionDenied},
		{&yunchiv1.SetQuotaRequest{Department: "tax", Project: "air", Vcpus: proto.Int64(1)}, codes.NotFound},
		{&yunchiv1.SetQuotaRequest{Department: "eco", Project: "air", Memory: proto.String("4GB")}, codes.InvalidArgument},
		{&yunchiv1.SetQuotaRequest{Department: "eco", Project: "air", Vms: proto.Int64(-1)}, codes.InvalidArgument},
		{&yunchiv1.SetQuotaRequest{Department: "eco", Project: "air", Clear: []string{"gpu"}}, codes.InvalidArgument},
		{&yunchiv1.SetQuotaRequest{Department: "eco", Project: "air"}, codes.InvalidArgument},
		{&yunchiv1.SetQuotaRequest{Department: "Eco", Project: "air", Vms: proto.Int64(1)}, codes.InvalidArgument},
	} {
		_, err := s.SetQuota(ctx, c.req)
		if status.Code(err) != c.code || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v, want %v", c.req, err, c.code)
		}
	}
	if m := len(p.commands()); m != n {
		t.Fatalf("%d commands proposed for refused requests", m-n)
	}
	// Within the department's quota: Apply refuses a project above it.
	if _, err := s.SetQuota(ctx, &yunchiv1.SetQuotaRequest{Department: "eco", Project: "air", Vcpus: proto.Int64(17)}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("above the department: %v", err)
	}
	as(yunchiv1.Role_ROLE_OPERATOR, "")
	if _, err := s.SetQuota(ctx, &yunchiv1.SetQuotaRequest{Department: "eco", Project: "air", Vcpus: proto.Int64(1)}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("operator: %v", err)
	}
	// Clearing, and reading back.
	as(yunchiv1.Role_ROLE_SECADMIN, "")
	if q, err := s.SetQuota(ctx, &yunchiv1.SetQuotaRequest{Department: "eco", Clear: []string{"cpu"}}); err != nil || q.GetLimit().Vcpus != nil || q.GetLimit().GetMemoryBytes() != 64<<30 {
		t.Fatalf("clear: %v %v", q, err)
	}
	l, err := s.ListQuotas(ctx, &yunchiv1.ListQuotasRequest{Department: "eco"})
	if err != nil || len(l.Quotas) != 2 || l.Quotas[1].Project != "air" || l.Quotas[1].GetLimit().GetVcpus() != 8 {
		t.Fatalf("list: %v %v", l, err)
	}
	if _, err := s.GetQuota(ctx, &yunchiv1.GetQuotaRequest{Department: "tax", Project: "air"}); status.Code(err) != codes.NotFound {
		t.Fatalf("another department's project: %v", err)
	}
}
