package api

import (
	"context"
	"fmt"
	"sync"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// placeAttempts is how many times the leader decides again when Apply
// rejects its decision because the state changed in between (KindConflict).
const placeAttempts = 4

// createSpec is a validated create request.
type createSpec struct {
	project     string
	names       []string
	res         scheduler.Resources
	center      string
	constraints []scheduler.Constraint
	group       string
	strategy    scheduler.Strategy
	strategyStr string
	desired     yunchiv1.PowerState
}

// checkCreate validates a create request; every error is InvalidArgument
// (or NotFound for an unknown group) with one actionable line.
func (s *Server) checkCreate(req *yunchiv1.CreateVMRequest) (*createSpec, error) {
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
	disk := int64(defaultDisk)
	if req.Disk != "" {
		if disk, err = checkSize("disk", req.Disk, minDisk, maxDisk); err != nil {
			return nil, err
		}
	}
	if req.Center != "" {
		if err := checkName("center", req.Center); err != nil {
			return nil, err
		}
		if err := s.checkCenterExists(req.Center); err != nil {
			return nil, err
		}
	}
	sp := &createSpec{project: project, res: scheduler.Resources{VCPUs: int64(req.Vcpus), MemoryBytes: mem, DiskBytes: disk}, center: req.Center, strategy: s.DefaultStrategy}
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
		sp.constraints = append(sp.constraints, c)
	}
	if req.Strategy != "" {
		st, err := scheduler.ParseStrategy(req.Strategy)
		if err != nil {
			return nil, invalid("%s", oneLine(err.Error()))
		}
		sp.strategy, sp.strategyStr = st, st.String()
	}
	if req.Group != "" {
		if err := checkName("group name", req.Group); err != nil {
			return nil, err
		}
		if !s.store.HasPlacementGroup(project, req.Group) {
			return nil, status.Errorf(codes.NotFound, "placement group %q not found in project %q: create it first with `yunchi group create %s --policy anti-affinity`", req.Group, project, req.Group)
		}
		sp.group = req.Group
	}
	switch {
	case req.Count < 0 || req.Count > state.MaxBatch:
		return nil, invalid("count %d is out of range: give 1 to %d", req.Count, state.MaxBatch)
	case req.Count <= 1:
		sp.names = []string{req.Name}
	default:
		for i := 1; i <= int(req.Count); i++ {
			n := fmt.Sprintf("%s-%d", req.Name, i)
			if err := checkName("vm name", n); err != nil {
				return nil, invalid("vm name %q with count %d makes names up to %q, longer than %d characters: use a shorter name", req.Name, req.Count, n, maxNameLen)
			}
			sp.names = append(sp.names, n)
		}
	}
	sp.desired = yunchiv1.PowerState_POWER_STATE_RUNNING
	if req.Stopped {
		sp.desired = yunchiv1.PowerState_POWER_STATE_STOPPED
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

// schedSeed fixes the scheduler's tie-breaks: no clock, no randomness, so
// the same state and request give the same placement on any leader.
const schedSeed = 1

// clusterCache keeps one scheduler.Cluster per strategy, indexed once and
// then brought up to date with only the hosts that changed since (the
// store tracks which), so a decision does not rebuild the index.
type clusterCache struct {
	mu       sync.Mutex
	clusters map[scheduler.Strategy]*cachedCluster
}

type cachedCluster struct {
	cl  *scheduler.Cluster
	seq uint64
}

// decide runs fn on an up-to-date Cluster for strategy, with the group of
// project (nil when group is ""), holding the cache for the whole decision:
// a Cluster is not safe for concurrent use.
func (s *Server) decide(strategy scheduler.Strategy, project, group string, fn func(*scheduler.Cluster, *scheduler.Group) error) error {
	c := &s.clusters
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.clusters == nil {
		c.clusters = map[scheduler.Strategy]*cachedCluster{}
	}
	cc := c.clusters[strategy]
	var since uint64
	if cc != nil {
		since = cc.seq
	}
	hosts, full, seq, g, err := s.store.SchedulerView(since, project, group)
	if err != nil {
		return toStatus(err)
	}
	if cc == nil || full {
		cl, err := scheduler.NewCluster(hosts, scheduler.Options{Strategy: strategy, Seed: schedSeed, RunnersUp: 3})
		if err != nil {
			return status.Errorf(codes.Internal, "scheduler: %v", err)
		}
		cc = &cachedCluster{cl: cl}
		c.clusters[strategy] = cc
	} else {
		for _, h := range hosts {
			cc.cl.Upsert(h)
		}
	}
	cc.seq = seq
	return fn(cc.cl, g)
}

// place decides where sp's VMs go and, unless dryRun, records them.
func (s *Server) place(ctx context.Context, sp *createSpec, dryRun bool) ([]*yunchiv1.VM, []*yunchiv1.PlacementDecision, error) {
	if !dryRun {
		s.placeMu.Lock()
		defer s.placeMu.Unlock()
	}
	var constraintStrs []string
	for _, c := range sp.constraints {
		constraintStrs = append(constraintStrs, c.String())
	}
	var lastErr error
	for attempt := 0; attempt < placeAttempts; attempt++ {
		for _, n := range sp.names {
			if _, ok := s.store.VM(sp.project, n); ok {
				return nil, nil, status.Errorf(codes.AlreadyExists, "vm %q already exists in project %q", n, sp.project)
			}
		}
		var ps []scheduler.Placement
		err := s.decide(sp.strategy, sp.project, sp.group, func(cl *scheduler.Cluster, group *scheduler.Group) error {
			reqs := make([]scheduler.Request, len(sp.names))
			for i, n := range sp.names {
				reqs[i] = scheduler.Request{Name: n, Project: sp.project, Resources: sp.res, Center: sp.center, Constraints: sp.constraints, Group: group}
			}
			if len(reqs) == 1 {
				p, err := cl.Place(reqs[0])
				ps = []scheduler.Placement{p}
				return err
			}
			var err error
			ps, err = cl.PlaceBatch(reqs)
			return err
		})
		if err != nil {
			return nil, nil, toStatus(err)
		}
		decisions := make([]*yunchiv1.PlacementDecision, len(ps))
		for i, p := range ps {
			d := &yunchiv1.PlacementDecision{VmName: sp.names[i], HostId: p.HostID, HostCenter: s.hostCenter(p.HostID), Score: p.Score}
			for _, c := range p.RunnersUp {
				d.RunnersUp = append(d.RunnersUp, &yunchiv1.Candidate{HostId: c.HostID, Score: c.Score})
			}
			decisions[i] = d
		}
		if dryRun {
			return []*yunchiv1.VM{}, decisions, nil
		}
		recs := make([]*statev1.VMRecord, len(ps))
		for i, p := range ps {
			recs[i] = &statev1.VMRecord{
				Id: uuid.NewString(), Name: sp.names[i], Project: sp.project,
				Vcpus: int32(sp.res.VCPUs), MemoryBytes: sp.res.MemoryBytes, DiskBytes: sp.res.DiskBytes,
				Center: sp.center, HostId: p.HostID, Desired: sp.desired,
				Group: sp.group, Constraints: constraintStrs, Strategy: sp.strategyStr,
			}
		}
		cmd := &statev1.Command{Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: recs}}}
		if len(recs) == 1 {
			cmd = &statev1.Command{Cmd: &statev1.Command_PlaceVm{PlaceVm: &statev1.PlaceVM{Vm: recs[0]}}}
		}
		v, err := s.node.Apply(ctx, cmd)
		if state.KindOf(err) == state.KindConflict {
			s.log.Info("placement lost a race; deciding again", "vm", sp.names[0], "attempt", attempt+1, "err", err)
			lastErr = err
			continue
		}
		if err != nil {
			return nil, nil, toStatus(err)
		}
		var placed []*statev1.VMRecord
		switch out := v.(type) {
		case *statev1.VMRecord:
			placed = []*statev1.VMRecord{out}
		case []*statev1.VMRecord:
			placed = out
		}
		vms := make([]*yunchiv1.VM, len(placed))
		for i, r := range placed {
			vms[i] = s.vmOut(r)
			s.log.Info("vm placed", "vm", r.Name, "project", r.Project, "host", r.HostId, "id", r.Id, "group", r.Group)
		}
		return vms, decisions, nil
	}
	return nil, nil, status.Errorf(codes.Aborted, "placement kept losing races with other changes (%v): retry", lastErr)
}
