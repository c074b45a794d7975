package api

import (
	"context"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Largest limits accepted: far beyond any cluster, short of overflow when
// summed.
const (
	maxQuotaCount = 1 << 40
	maxQuotaBytes = 1 << 60
)

// quotaDimNames are the names of the dimensions in SetQuotaRequest.clear.
var quotaDimNames = map[string]statev1.QuotaDimension{
	"cpu": statev1.QuotaDimension_QUOTA_DIMENSION_VCPUS, "vcpus": statev1.QuotaDimension_QUOTA_DIMENSION_VCPUS,
	"memory": statev1.QuotaDimension_QUOTA_DIMENSION_MEMORY, "disk": statev1.QuotaDimension_QUOTA_DIMENSION_DISK,
	"vms": statev1.QuotaDimension_QUOTA_DIMENSION_VMS,
}

func checkQuotaCount(field string, v *int64) error {
	if v != nil && (*v < 0 || *v > maxQuotaCount) {
		return invalid("%s quota %d is out of range: give 0 to %d (clear it for unlimited)", field, *v, int64(maxQuotaCount))
	}
	return nil
}

// quotaSize parses a size limit ("64GiB"; nil when not given).
func quotaSize(field string, s *string) (*int64, error) {
	if s == nil {
		return nil, nil
	}
	v, err := checkSize(field+" quota", *s, 0, maxQuotaBytes)
	if err != nil {
		return nil, err
	}
	return &v, nil
}

// quotaCommand validates a SetQuotaRequest into the command.
func quotaCommand(req *yunchiv1.SetQuotaRequest) (*statev1.SetQuota, error) {
	if err := checkName("department", req.Department); err != nil {
		return nil, err
	}
	if req.Project != "" {
		if err := checkName("project", req.Project); err != nil {
			return nil, err
		}
	}
	if err := checkQuotaCount("vcpus", req.Vcpus); err != nil {
		return nil, err
	}
	if err := checkQuotaCount("vms", req.Vms); err != nil {
		return nil, err
	}
	mem, err := quotaSize("memory", req.Memory)
	if err != nil {
		return nil, err
	}
	disk, err := quotaSize("disk", req.Disk)
	if err != nil {
		return nil, err
	}
	c := &statev1.SetQuota{Department: req.Department, Project: req.Project,
		Quota: &statev1.Quota{Vcpus: req.Vcpus, MemoryBytes: mem, DiskBytes: disk, Vms: req.Vms}}
	seen := map[statev1.QuotaDimension]bool{}
	for _, n := range req.Clear {
		d, ok := quotaDimNames[strings.ToLower(strings.TrimSpace(n))]
		if !ok {
			return nil, invalid("cannot clear quota %q: use cpu, memory, disk or vms", n)
		}
		if !seen[d] {
			seen[d] = true
			c.Clear = append(c.Clear, d)
		}
	}
	if req.Vcpus == nil && mem == nil && disk == nil && req.Vms == nil && len(c.Clear) == 0 {
		return nil, invalid("nothing to set: give vcpus, memory, disk or vms, or dimensions to clear")
	}
	return c, nil
}

// SetQuota sets a department's quota (security admins) or one of its
// projects' (security admins, and the department's own admin, within the
// department's quota: Apply refuses a project limit above it).
func (s *Server) SetQuota(ctx context.Context, req *yunchiv1.SetQuotaRequest) (*yunchiv1.Quota, error) {
	c, err := quotaCommand(req)
	if err != nil {
		return nil, err
	}
	// The access interceptor let the caller call SetQuota, for the
	// department it names; the finer rule is decided here.
	switch c := caller(ctx); c.Role {
	case yunchiv1.Role_ROLE_SECADMIN:
	case yunchiv1.Role_ROLE_DEPT_ADMIN:
		if c.Department != req.Department {
			// As for anything of another department: absent.
			return nil, status.Errorf(codes.NotFound, "department %q not found", req.Department)
		}
		if req.Project == "" {
			return nil, status.Errorf(codes.PermissionDenied, "a department admin sets the quotas of the department's projects; the department's own quota is set by a security admin")
		}
	default:
		return nil, status.Error(codes.PermissionDenied, "only a security admin, or a department admin for its projects, may set quotas")
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_SetQuota{SetQuota: c}}); err != nil {
		return nil, err
	}
	return s.quotaOut(req.Department, req.Project)
}

// quotaOut is the quota of a department (project "") or project as the
// API shows it.
func (s *Server) quotaOut(dept, project string) (*yunchiv1.Quota, error) {
	q, ok := s.store.Quota(dept, project)
	if !ok {
		if project != "" {
			return nil, status.Errorf(codes.NotFound, "project %q not found in department %q", project, dept)
		}
		return nil, status.Errorf(codes.NotFound, "department %q not found", dept)
	}
	return quotaToAPI(q), nil
}

func quotaToAPI(q state.QuotaUse) *yunchiv1.Quota {
	out := &yunchiv1.Quota{
		Department: q.Department, Project: q.Project, Limit: &yunchiv1.QuotaLimits{},
		Used: &yunchiv1.QuotaUsage{Vcpus: q.Used.VCPUs, MemoryBytes: q.Used.MemoryBytes, DiskBytes: q.Used.DiskBytes, Vms: q.Used.VMs},
	}
	if l := q.Limit; l != nil {
		out.Limit = &yunchiv1.QuotaLimits{Vcpus: copyInt(l.Vcpus), MemoryBytes: copyInt(l.MemoryBytes), DiskBytes: copyInt(l.DiskBytes), Vms: copyInt(l.Vms)}
	}
	return out
}

func copyInt(p *int64) *int64 {
	if p == nil {
		return nil
	}
	return proto.Int64(*p)
}

func (s *Server) GetQuota(ctx context.Context, req *yunchiv1.GetQuotaRequest) (*yunchiv1.Quota, error) {
	if err := checkName("department", req.Department); err != nil {
		return nil, err
	}
	if req.Project != "" {
		if err := checkName("project", req.Project); err != nil {
			return nil, err
		}
	}
	return s.quotaOut(req.Department, req.Project)
}

func (s *Server) ListQuotas(ctx context.Context, req *yunchiv1.ListQuotasRequest) (*yunchiv1.ListQuotasResponse, error) {
	if req.Department != "" {
		if err := checkName("department", req.Department); err != nil {
			return nil, err
		}
	}
	qs := s.store.Quotas(req.Department)
	if req.Department != "" && len(qs) == 0 {
		return nil, status.Errorf(codes.NotFound, "department %q not found", req.Department)
	}
	out := &yunchiv1.ListQuotasResponse{Quotas: make([]*yunchiv1.Quota, 0, len(qs))}
	for _, q := range qs {
		// A department's admin sees its own department's quotas only.
		if auth.SeesDepartment(ctx, q.Department) {
			out.Quotas = append(out.Quotas, quotaToAPI(q))
		}
	}
	return out, nil
}

// quotaStatus is RESOURCE_EXHAUSTED (REST 429) for a quota exceeded, with
// one google.rpc.QuotaFailure violation: subject "department:eco" or
// "project:air", description the message.
func quotaStatus(e *state.Error) error {
	st, err := status.New(codes.ResourceExhausted, e.Msg).WithDetails(&errdetails.QuotaFailure{
		Violations: []*errdetails.QuotaFailure_Violation{{Subject: e.Subject, Description: e.Msg}},
	})
	if err != nil {
		return status.Error(codes.ResourceExhausted, e.Msg)
	}
	return st.Err()
}
