// Package api serves Yunchi's gRPC services (and, through grpc-gateway,
// REST) on one port. Handlers validate and record through raft; creates go
// through a Placer (controller/placement), heartbeats to a Liveness
// (controller/leader). Reads come from the local state unless the caller
// asks for a consistent read.
package api

import (
	"context"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/audit"
	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/images"
	"github.com/yunchi/yunchi/controller/placement"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// Self describes this controller to its peers.
type Self struct {
	ID         string
	APIAddress string
	Center     string
}

// Server implements every Yunchi service over one raft node.
type Server struct {
	yunchiv1.UnimplementedVMServiceServer
	yunchiv1.UnimplementedHostServiceServer
	yunchiv1.UnimplementedCapacityServiceServer
	yunchiv1.UnimplementedClusterServiceServer
	yunchiv1.UnimplementedAgentServiceServer
	yunchiv1.UnimplementedRatioServiceServer
	yunchiv1.UnimplementedGroupServiceServer
	yunchiv1.UnimplementedQuotaServiceServer
	yunchiv1.UnimplementedAuditServiceServer
	yunchiv1.UnimplementedVolumeServiceServer
	yunchiv1.UnimplementedTopologyServiceServer
	yunchiv1.UnimplementedProtectionServiceServer
	yunchiv1.UnimplementedBackupServiceServer
	yunchiv1.UnimplementedRecoveryServiceServer

	// prop proposes commands and knows the leader; member is the raft
	// configuration; store is the replicated state (see deps.go).
	prop   Proposer
	member Membership
	store  ReadView
	self   Self
	log    *slog.Logger
	fwd    *forwarder

	// placer decides where new VMs go and records them (leader only).
	placer Placer

	// Auth authenticates callers and decides access (nil: every call is
	// let through, for handler tests; a controller always sets it).
	Auth *auth.Authorizer

	// live is what the leader heard from hosts (controller/leader).
	live Liveness
	// local is what NewGRPCServer registered, for REST's direct calls
	// (localconn.go).
	local *localServer

	// HeartbeatInterval is what agents are told to heartbeat at.
	HeartbeatInterval time.Duration
	// DefaultStrategy is used when a create names none (zero: Binpack).
	DefaultStrategy scheduler.Strategy
	// Audit is this controller's audit trail (nil: AuditService answers
	// UNAVAILABLE); AuditRecorder records denied requests and failed
	// logins (its queue length and drops are metrics).
	Audit         AuditTrail
	AuditRecorder *audit.Recorder
	// TLS: the cluster CA and how to dial other controllers (nil:
	// plaintext, --insecure and the dev cluster).
	TLS *TLS
	// Images is this controller's image byte store (nil: none; imports
	// and fetches through it are refused); imgs its runtime (images.go).
	Images *images.Store
	imgs   imageState
	// Repos are the backup repositories this controller keeps (nil: none;
	// dr.go).
	Repos Repositories
	// RepoService serves BackupRepoService (nil: every call UNIMPLEMENTED).
	RepoService yunchiv1.BackupRepoServiceServer

	// consoles pairs users' console calls with agents' (console.go).
	consoles consoleBroker

	// health is the gRPC health service; RunHealth sets its status.
	healthMu sync.Mutex
	health   *health.Server
}

// Placer decides and records placements (controller/placement.Engine).
type Placer interface {
	Place(ctx context.Context, sp placement.Spec) ([]*statev1.VMRecord, []placement.Decision, error)
	Decide(sp placement.Spec) ([]placement.Decision, error)
}

// Liveness is what the leader heard from hosts (controller/leader.Duties).
type Liveness interface {
	// Heard notes a heartbeat (with stats and guests' usage) or a
	// registration (neither).
	Heard(hostID string, stats *yunchiv1.HostStats, vms []*yunchiv1.VMStats)
	// Stats is the host's last reported stats: nil when none, or when
	// this controller is not the leader.
	Stats(hostID string) *yunchiv1.HostStats
	// VMStats is the host's guests' usage by its last heartbeat, and when
	// that came: nil when none, or when not the leader. Read only.
	VMStats(hostID string) ([]*yunchiv1.VMStats, time.Time)
}

// NewServer builds the services: prop proposes to the raft log, member is
// its configuration, store the replicated state (a controller passes its
// *raftnode.Node for both prop and member, and the node's *state.Store);
// placer decides placements (controller/placement), live keeps host
// liveness (controller/leader).
func NewServer(prop Proposer, member Membership, store ReadView, placer Placer, live Liveness, self Self, lg *slog.Logger) *Server {
	if lg == nil {
		lg = slog.Default()
	}
	s := &Server{
		prop: prop, member: member, store: store, self: self, log: lg,
		HeartbeatInterval: 2 * time.Second, live: live,
	}
	s.placer = placer
	s.fwd = newForwarder(s)
	return s
}

// Close releases connections to other controllers.
func (s *Server) Close() { s.fwd.close() }

func (s *Server) apply(ctx context.Context, cmd *statev1.Command) (state.Result, error) {
	res, err := s.prop.Apply(ctx, cmd)
	return res, toStatus(err)
}

func projectOf(p string) (string, error) {
	if p == "" {
		return state.DefaultProject, nil
	}
	return p, checkName("project", p)
}

func (s *Server) vmOut(v *statev1.VMRecord) *yunchiv1.VM {
	out := vmToAPI(v, s.hostInfo(v.HostId))
	if dv, ok := s.store.(DRView); ok {
		out.ProtectionPolicy, out.ProtectionSource = dv.EffectivePolicy(v)
	}
	return out
}

func (s *Server) findVM(project, name string) (*statev1.VMRecord, error) {
	if err := checkName("vm name", name); err != nil {
		return nil, err
	}
	p, err := projectOf(project)
	if err != nil {
		return nil, err
	}
	v, ok := s.store.VM(p, name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "vm %q not found in project %q", name, p)
	}
	return v, nil
}

func (s *Server) checkCenterExists(center string) error {
	centers := s.store.Centers()
	if slices.Contains(centers, center) {
		return nil
	}
	return invalid("no host is in center %q (centers with hosts: %v)", center, centers)
}

func (s *Server) GetVM(ctx context.Context, req *yunchiv1.GetVMRequest) (*yunchiv1.VM, error) {
	v, err := s.findVM(req.Project, req.Name)
	if err != nil {
		return nil, err
	}
	return s.vmOut(v), nil
}

func (s *Server) ListVMs(ctx context.Context, req *yunchiv1.ListVMsRequest) (*yunchiv1.ListVMsResponse, error) {
	if req.Project != "" {
		if err := checkName("project", req.Project); err != nil {
			return nil, err
		}
	}
	// Each host's center and liveness are looked up once for the whole
	// list, not once per VM (one host lookup is a pass over every VM).
	var hosts map[string]hostInfo
	if req.HostId != "" {
		if err := checkHostID(req.HostId); err != nil {
			return nil, err
		}
		hv, ok := s.store.Host(req.HostId)
		if !ok {
			return nil, status.Errorf(codes.NotFound, "host %q not found", req.HostId)
		}
		hosts = map[string]hostInfo{req.HostId: s.hostInfoOf(hv.Host.Id, hv.Summary())}
	}
	size, after, err := vmPage(req.PageSize, req.PageToken)
	if err != nil {
		return nil, err
	}
	vms, more := s.store.VMsPage(req.Project, req.HostId, after, size)
	if hosts == nil {
		all := s.store.Hosts() // after the VMs, so a host registered meanwhile is there too
		hosts = make(map[string]hostInfo, len(all))
		for _, hv := range all {
			hosts[hv.Host.Id] = s.hostInfoOf(hv.Host.Id, hv.Summary())
		}
	}
	out := &yunchiv1.ListVMsResponse{Vms: make([]*yunchiv1.VM, 0, len(vms))}
	for _, v := range vms {
		// A department's users see their projects' VMs only; a page
		// may then hold fewer than asked, never another's VM.
		if auth.Sees(ctx, v.Project) {
			out.Vms = append(out.Vms, vmToAPI(v, hosts[v.HostId]))
		}
	}
	if more {
		last := vms[len(vms)-1]
		out.NextPageToken = vmToken(state.VMKey{Project: last.Project, Name: last.Name})
	}
	return out, nil
}

func (s *Server) setDesired(ctx context.Context, req *yunchiv1.VMActionRequest, desired yunchiv1.PowerState, reboot bool) (*yunchiv1.VM, error) {
	v, err := s.findVM(req.Project, req.Name)
	if err != nil {
		return nil, err
	}
	res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_SetVmDesired{SetVmDesired: &statev1.SetVMDesired{
		VmId: v.Id, Desired: powerFromAPI(desired), Reboot: reboot,
	}}})
	if err != nil {
		return nil, err
	}
	return s.vmOut(res.VMs[0]), nil
}

func (s *Server) StartVM(ctx context.Context, req *yunchiv1.VMActionRequest) (*yunchiv1.VM, error) {
	return s.setDesired(ctx, req, yunchiv1.PowerState_POWER_STATE_RUNNING, false)
}

func (s *Server) StopVM(ctx context.Context, req *yunchiv1.VMActionRequest) (*yunchiv1.VM, error) {
	return s.setDesired(ctx, req, yunchiv1.PowerState_POWER_STATE_STOPPED, false)
}

func (s *Server) RebootVM(ctx context.Context, req *yunchiv1.VMActionRequest) (*yunchiv1.VM, error) {
	return s.setDesired(ctx, req, yunchiv1.PowerState_POWER_STATE_RUNNING, true)
}

func (s *Server) DeleteVM(ctx context.Context, req *yunchiv1.VMActionRequest) (*yunchiv1.VM, error) {
	return s.setDesired(ctx, req, yunchiv1.PowerState_POWER_STATE_DELETED, false)
}

// WatchVM sends the VM now and after every change, until it is gone or
// the client leaves. Served from local state on any controller.
func (s *Server) WatchVM(req *yunchiv1.WatchVMRequest, stream yunchiv1.VMService_WatchVMServer) error {
	if err := s.waitApplied(stream.Context(), req.MinRevision); err != nil {
		return err
	}
	v, err := s.findVM(req.Project, req.Name)
	if err != nil {
		return err
	}
	id := v.Id
	var (
		last     uint64
		lastDown bool
	)
	for {
		changed := s.store.Changed()
		cur, ok := s.store.VMByID(id)
		if !ok {
			return stream.Send(&yunchiv1.VMEvent{Vm: s.vmOut(v), Gone: true})
		}
		// A change of the host's liveness changes what the VM's answer
		// says (condition host-down) without a new revision of the VM.
		out := s.vmOut(cur)
		down := slices.Contains(out.Conditions, VMConditionHostDown)
		if cur.Revision != last || down != lastDown {
			last, lastDown = cur.Revision, down
			v = cur
			if err := stream.Send(&yunchiv1.VMEvent{Vm: out}); err != nil {
				return err
			}
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (s *Server) ListHosts(ctx context.Context, req *yunchiv1.ListHostsRequest) (*yunchiv1.ListHostsResponse, error) {
	if req.Center != "" {
		if err := checkName("center", req.Center); err != nil {
			return nil, err
		}
	}
	size, after, err := hostPage(req.PageSize, req.PageToken)
	if err != nil {
		return nil, err
	}
	hosts, more := s.store.HostsPage(req.Center, after, size)
	out := &yunchiv1.ListHostsResponse{Hosts: make([]*yunchiv1.Host, 0, len(hosts))}
	for _, hv := range hosts {
		out.Hosts = append(out.Hosts, hostToAPI(hv, s.live.Stats(hv.Host.Id)))
	}
	if more {
		out.NextPageToken = hostToken(hosts[len(hosts)-1].Host.Id)
	}
	return out, nil
}

func (s *Server) findHost(id string) (state.HostView, error) {
	if err := checkHostID(id); err != nil {
		return state.HostView{}, err
	}
	hv, ok := s.store.Host(id)
	if !ok {
		return state.HostView{}, status.Errorf(codes.NotFound, "host %q not found (see `yunchi host list`)", id)
	}
	return hv, nil
}

func (s *Server) GetHost(ctx context.Context, req *yunchiv1.GetHostRequest) (*yunchiv1.Host, error) {
	hv, err := s.findHost(req.Id)
	if err != nil {
		return nil, err
	}
	return hostToAPI(hv, s.live.Stats(req.Id)), nil
}

func (s *Server) GetCapacity(ctx context.Context, req *yunchiv1.GetCapacityRequest) (*yunchiv1.Capacity, error) {
	out := &yunchiv1.Capacity{Capacity: &yunchiv1.Resources{}, Allocated: &yunchiv1.Resources{}, Allocatable: &yunchiv1.Resources{}, Free: &yunchiv1.Resources{}}
	centers := map[string]*yunchiv1.CenterCapacity{}
	for _, hv := range s.store.Hosts() {
		h := hv.Host
		c := centers[h.Center]
		if c == nil {
			c = &yunchiv1.CenterCapacity{Center: h.Center, Capacity: &yunchiv1.Resources{}, Allocated: &yunchiv1.Resources{}, Allocatable: &yunchiv1.Resources{}, Free: &yunchiv1.Resources{}}
			centers[h.Center] = c
		}
		c.Hosts++
		if hv.Facts.State == statev1.HostState_HOST_STATE_READY {
			c.HostsReady++
		}
		c.Vms += int32(hv.VMs)
		a := hv.Facts.Allocatable()
		alloc, used, capa := resToAPI(a), resToAPI(hv.Facts.Allocated), recResToAPI(h.Capacity)
		// Free is what each host has left: an overcommitted host's
		// shortfall is not taken from another host's room, it is reported.
		free, over := freeAndOvercommit(a, hv.Facts.Allocated)
		addTo(c.Capacity, capa)
		addTo(c.Allocated, used)
		addTo(c.Allocatable, alloc)
		addTo(c.Free, free)
		addTo(out.Capacity, capa)
		addTo(out.Allocated, used)
		addTo(out.Allocatable, alloc)
		addTo(out.Free, free)
		if over != nil {
			if c.Overcommit == nil {
				c.Overcommit = &yunchiv1.Resources{}
			}
			addTo(c.Overcommit, over)
			c.HostsOvercommitted++
			if out.Overcommit == nil {
				out.Overcommit = &yunchiv1.Resources{}
			}
			addTo(out.Overcommit, over)
			out.HostsOvercommitted++
		}
		out.Hosts++
		out.Vms += int32(hv.VMs)
	}
	for _, c := range centers {
		out.Centers = append(out.Centers, c)
	}
	sort.Slice(out.Centers, func(i, j int) bool { return out.Centers[i].Center < out.Centers[j].Center })
	return out, nil
}

var errNoLeader = notProposed("no leader elected yet (is a majority of controllers up?): retry in a few seconds")

// awaitState blocks until ok holds on this node's state, checking again
// after every applied change. It reports false when d passes first; a done
// ctx ends it with ctx's status.
func (s *Server) awaitState(ctx context.Context, d time.Duration, ok func() bool) (bool, error) {
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		changed := s.store.Changed()
		if ok() {
			return true, nil
		}
		select {
		case <-changed:
		case <-timeout.C:
			return false, nil
		case <-ctx.Done():
			return false, status.FromContextError(ctx.Err()).Err()
		}
	}
}

// waitApplied blocks until this node's state includes raft index idx: the
// read-your-writes step for a client that wrote through another controller.
func (s *Server) waitApplied(ctx context.Context, idx uint64) error {
	if idx == 0 {
		return nil
	}
	var applied uint64
	reached, err := s.awaitState(ctx, 10*time.Second, func() bool {
		applied = s.store.Index()
		return applied >= idx
	})
	if err == nil && !reached {
		err = status.Errorf(codes.Unavailable, "this controller has applied the log up to %d, not yet %d: it is behind the leader; retry or use another controller", applied, idx)
	}
	return err
}
