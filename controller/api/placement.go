package api

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/placement"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// checkCreate validates a create request; every error is InvalidArgument
// (or NotFound for an unknown group) with one actionable line.
func (s *Server) checkCreate(req *yunchiv1.CreateVMRequest) (*placement.Spec, error) {
	if err := checkName("vm name", req.Name); err != nil {
		return nil, err
	}
	project, err := projectOf(req.Project)
	if err != nil {
		return nil, err
	}
	if req.Vcpus <= 0 || req.Vcpus > maxVCPUs {
		return nil, invalid("vcpus %d is out of range: give 1 to %d", req.Vcpus, maxVCPUs)
	}
	if req.Memory == "" {
		return nil, invalid("memory is required, e.g. \"4GiB\"")
	}
	mem, err := checkSize("memory", req.Memory, minMemory, maxMemory)
	if err != nil {
		return nil, err
	}
	// With an image the disk is at least its virtual size, and that by
	// default.
	var img *statev1.VMImage
	if req.Image != "" {
		if img, err = s.resolveImage(project, req.Image); err != nil {
			return nil, err
		}
	}
	disk := int64(defaultDisk)
	switch {
	case req.Disk != "" && img != nil:
		if v, perr := ParseSize(req.Disk); perr == nil && v < img.VirtualSizeBytes {
			return nil, invalid("disk %s is smaller than image %q (%s): give at least that, or leave the disk size out", oneLine(req.Disk), img.Name, scheduler.FormatBytes(img.VirtualSizeBytes))
		}
		if disk, err = checkSize("disk", req.Disk, img.VirtualSizeBytes, maxDisk); err != nil {
			return nil, err
		}
	case req.Disk != "":
		if disk, err = checkSize("disk", req.Disk, minDisk, maxDisk); err != nil {
			return nil, err
		}
	case img != nil:
		disk = img.VirtualSizeBytes
	}
	if err := checkSeed(req.UserData, req.SshAuthorizedKeys); err != nil {
		return nil, err
	}
	if req.Center != "" {
		if err := checkName("center", req.Center); err != nil {
			return nil, err
		}
		if err := s.checkCenterExists(req.Center); err != nil {
			return nil, err
		}
	}
	sp := &placement.Spec{Project: project, Resources: scheduler.Resources{VCPUs: int64(req.Vcpus), MemoryBytes: mem, DiskBytes: disk}, Center: req.Center, Strategy: s.DefaultStrategy,
		Image: img, UserData: req.UserData, SSHAuthorizedKeys: req.SshAuthorizedKeys}
	if len(req.Constraints) > 32 {
		return nil, invalid("%d constraints: at most 32 are allowed", len(req.Constraints))
	}
	for _, cs := range req.Constraints {
		if len(cs) > 512 {
			return nil, invalid("constraint %.20q... is %d characters long: at most 512 are allowed", cs, len(cs))
		}
		c, err := scheduler.ParseConstraint(cs)
		if err != nil {
			return nil, invalid("%s", oneLine(err.Error()))
		}
		sp.Constraints = append(sp.Constraints, c)
	}
	if req.Strategy != "" {
		st, err := scheduler.ParseStrategy(req.Strategy)
		if err != nil {
			return nil, invalid("%s", oneLine(err.Error()))
		}
		sp.Strategy, sp.StrategyName = st, st.String()
	}
	if req.Group != "" {
		if err := checkName("group name", req.Group); err != nil {
			return nil, err
		}
		if !s.store.HasPlacementGroup(project, req.Group) {
			return nil, status.Errorf(codes.NotFound, "placement group %q not found in project %q: create it first with `yunchi group create %s --policy anti-affinity`", req.Group, project, req.Group)
		}
		sp.Group = req.Group
	}
	switch {
	case req.Count < 0 || req.Count > state.MaxBatch:
		return nil, invalid("count %d is out of range: give 1 to %d", req.Count, state.MaxBatch)
	case req.Count <= 1:
		sp.Names = []string{req.Name}
	default:
		for i := 1; i <= int(req.Count); i++ {
			n := fmt.Sprintf("%s-%d", req.Name, i)
			if err := checkName("vm name", n); err != nil {
				return nil, invalid("vm name %q with count %d makes names up to %q, longer than %d characters: use a shorter name", req.Name, req.Count, n, maxNameLen)
			}
			sp.Names = append(sp.Names, n)
		}
	}
	sp.Desired = statev1.PowerState_POWER_STATE_RUNNING
	if req.Stopped {
		sp.Desired = statev1.PowerState_POWER_STATE_STOPPED
	}
	return sp, nil
}

// CreateVM validates the request, places the VM on the leader and records
// the placement. A race lost in Apply (host filled meanwhile) is decided again.
func (s *Server) CreateVM(ctx context.Context, req *yunchiv1.CreateVMRequest) (*yunchiv1.VM, error) {
	if req.Count > 1 || req.DryRun {
		return nil, invalid("count and dry_run are for CreateVMs (POST /v1/vms:batch)")
	}
	sp, err := s.checkCreate(req)
	if err != nil {
		return nil, err
	}
	vms, _, err := s.place(ctx, sp, false)
	if err != nil {
		return nil, err
	}
	return vms[0], nil
}

// CreateVMs creates count VMs in one raft command, all or none, or with
// dry_run only says where they would go.
func (s *Server) CreateVMs(ctx context.Context, req *yunchiv1.CreateVMRequest) (*yunchiv1.CreateVMsResponse, error) {
	sp, err := s.checkCreate(req)
	if err != nil {
		return nil, err
	}
	vms, decisions, err := s.place(ctx, sp, req.DryRun)
	if err != nil {
		return nil, err
	}
	return &yunchiv1.CreateVMsResponse{Vms: vms, Decisions: decisions, DryRun: req.DryRun}, nil
}

// place decides where sp's VMs go and, unless dryRun, records them.
func (s *Server) place(ctx context.Context, sp *placement.Spec, dryRun bool) ([]*yunchiv1.VM, []*yunchiv1.PlacementDecision, error) {
	if dryRun {
		ds, err := s.placer.Decide(*sp)
		if err != nil {
			return nil, nil, placeStatus(err)
		}
		return []*yunchiv1.VM{}, decisionsToAPI(ds), nil
	}
	recs, ds, err := s.placer.Place(ctx, *sp)
	if err != nil {
		return nil, nil, placeStatus(err)
	}
	vms := make([]*yunchiv1.VM, len(recs))
	for i, r := range recs {
		vms[i] = s.vmOut(r)
	}
	return vms, decisionsToAPI(ds), nil
}

// placeStatus is toStatus for placement's errors.
func placeStatus(err error) error {
	var races *placement.ErrRaces
	if errors.As(err, &races) {
		return status.Errorf(codes.Aborted, "%s: retry", oneLine(err.Error()))
	}
	return toStatus(err)
}

func decisionsToAPI(ds []placement.Decision) []*yunchiv1.PlacementDecision {
	out := make([]*yunchiv1.PlacementDecision, len(ds))
	for i, d := range ds {
		pd := &yunchiv1.PlacementDecision{VmName: d.VMName, HostId: d.HostID, HostCenter: d.HostCenter, Score: d.Score}
		for _, c := range d.RunnersUp {
			pd.RunnersUp = append(pd.RunnersUp, &yunchiv1.Candidate{HostId: c.HostID, Score: c.Score})
		}
		out[i] = pd
	}
	return out
}
