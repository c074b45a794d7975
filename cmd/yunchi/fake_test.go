package main

import (
	"context"
	"net"
	"path"
	"sort"
	"sync"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/yunchi/yunchi/controller/api"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// fakeController is a small stand-in for the controller's API: canned
// objects, errors chosen by name, and scripted WatchVM streams. The real
// controller gets its own end-to-end test.
type fakeController struct {
	addr string

	mu sync.Mutex
	// unavailable makes every call answer Unavailable, like a controller
	// that has lost its leader.
	unavailable bool
	calls       map[string]int // by method name, e.g. "CreateVM"
	auth        []string       // authorization metadata of every call, "" if none
	keys        []string       // idempotency-key metadata of every call, "" if none
	vms         map[string]*yunchiv1.VM
	// watch scripts WatchVM per VM name: the events are sent in order,
	// then the stream stays open (or fails with watchErr if set).
	watch    map[string][]*yunchiv1.VMEvent
	watchErr map[string]error
	// action is what StartVM/StopVM/RebootVM/DeleteVM return per VM name
	// (default: the stored VM).
	action map[string]*yunchiv1.VM

	// unavailableN makes the next N calls answer Unavailable, like a
	// controller during an election.
	unavailableN int
	// notProposed marks those Unavailable answers NOT_PROPOSED, as a
	// controller does when it answered before proposing anything.
	notProposed bool
	// removed makes every call answer like a controller removed from the
	// cluster: FailedPrecondition, reason NOT_A_MEMBER.
	removed bool
	// pageSize, when set, caps every ListVMs answer (and the page size
	// asked for is recorded in pageSizes), so the CLI must follow
	// next_page_token.
	pageSize  int
	pageSizes []int32
}

var created = timestamppb.New(timestamppb.Now().AsTime().Add(-90 * 60e9))

func cannedVM(name string, phase yunchiv1.VMPhase, host string, rev uint64) *yunchiv1.VM {
	vm := &yunchiv1.VM{
		Id: "vm-" + name, Name: name, Project: "default",
		Vcpus: 2, MemoryBytes: 4 << 30, DiskBytes: 40 << 30,
		Desired: yunchiv1.PowerState_POWER_STATE_RUNNING, Phase: phase,
		CreatedAt: created, UpdatedAt: created, Revision: rev,
	}
	if host != "" {
		vm.HostId, vm.HostCenter = host, "a1"
	}
	return vm
}

// onDownHost marks vm as the controller does when its host has missed its
// heartbeats: condition host-down, with the host's last heartbeat.
func onDownHost(vm *yunchiv1.VM) *yunchiv1.VM {
	vm.HostCenter = "b2"
	vm.Conditions = []string{"host-down"}
	vm.HostLastHeartbeat = created
	return vm
}

func startFake(t *testing.T) *fakeController {
	t.Helper()
	f := &fakeController{
		calls:    map[string]int{},
		vms:      map[string]*yunchiv1.VM{},
		watch:    map[string][]*yunchiv1.VMEvent{},
		watchErr: map[string]error{},
		action:   map[string]*yunchiv1.VM{},
	}
	f.vms["web-1"] = cannedVM("web-1", yunchiv1.VMPhase_VM_PHASE_RUNNING, "a1-h07", 12)
	f.vms["db-1"] = cannedVM("db-1", yunchiv1.VMPhase_VM_PHASE_STOPPED, "a1-h02", 7)
	f.vms["app-3"] = onDownHost(cannedVM("app-3", yunchiv1.VMPhase_VM_PHASE_RUNNING, "b2-h01", 9))

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = lis.Addr().String()
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := f.record(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := f.record(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	)
	yunchiv1.RegisterVMServiceServer(srv, fakeVMs{f: f})
	yunchiv1.RegisterHostServiceServer(srv, fakeHosts{})
	yunchiv1.RegisterCapacityServiceServer(srv, fakeCapacity{})
	yunchiv1.RegisterClusterServiceServer(srv, fakeCluster{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return f
}

func (f *fakeController) record(ctx context.Context, fullMethod string) error {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[path.Base(fullMethod)]++
	auth := ""
	if v := md.Get("authorization"); len(v) > 0 {
		auth = v[0]
	}
	f.auth = append(f.auth, auth)
	key := ""
	if v := md.Get("idempotency-key"); len(v) > 0 {
		key = v[0]
	}
	f.keys = append(f.keys, key)
	if f.removed {
		return withReason(status.New(codes.FailedPrecondition, "controller c9 was removed from the cluster; use one of: 10.0.0.1:8470"), api.NotAMemberReason)
	}
	if f.unavailable || f.unavailableN > 0 {
		if f.unavailableN > 0 {
			f.unavailableN--
		}
		st := status.New(codes.Unavailable, "no leader: election in progress")
		if f.notProposed {
			return withReason(st, api.NotProposedReason)
		}
		return st.Err()
	}
	return nil
}

func withReason(st *status.Status, reason string) error {
	d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: "yunchi.v1"})
	if err != nil {
		panic(err)
	}
	return d.Err()
}

// electing makes the next n calls answer Unavailable (marked NOT_PROPOSED
// if notProposed), then answers normally.
func (f *fakeController) electing(n int, notProposed bool) {
	f.mu.Lock()
	f.unavailableN, f.notProposed = n, notProposed
	f.mu.Unlock()
}

func (f *fakeController) callCount(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func (f *fakeController) setUnavailable(v bool) {
	f.mu.Lock()
	f.unavailable = v
	f.mu.Unlock()
}

func (f *fakeController) script(name string, events ...*yunchiv1.VMEvent) {
	f.mu.Lock()
	f.watch[name] = events
	f.mu.Unlock()
}

func (f *fakeController) setAction(name string, vm *yunchiv1.VM) {
	f.mu.Lock()
	f.action[name] = vm
	f.mu.Unlock()
}

func (f *fakeController) setWatchErr(name string, err error) {
	f.mu.Lock()
	f.watchErr[name] = err
	f.mu.Unlock()
}

func ev(vm *yunchiv1.VM) *yunchiv1.VMEvent { return &yunchiv1.VMEvent{Vm: vm} }

// --- VMService ---

type fakeVMs struct {
	yunchiv1.UnimplementedVMServiceServer
	f *fakeController
}

func (s fakeVMs) CreateVM(_ context.Context, r *yunchiv1.CreateVMRequest) (*yunchiv1.VM, error) {
	switch {
	case r.Name == "taken":
		return nil, status.Errorf(codes.AlreadyExists, "vm %q already exists in project \"default\"", r.Name)
	case r.Name == "huge":
		return nil, status.Error(codes.ResourceExhausted, "no host has 64 vCPUs and 512 GiB memory free (best: a1-h03 with 12 vCPUs free)")
	case r.Name == "boom":
		return nil, status.Error(codes.Internal, "raft apply: disk full")
	case r.Name != "" && (r.Name[0] < 'a' || r.Name[0] > 'z'):
		return nil, status.Errorf(codes.InvalidArgument, "invalid name %q: use lowercase letters, digits and '-'", r.Name)
	case r.Memory == "lots":
		return nil, status.Errorf(codes.InvalidArgument, "invalid memory %q: want a size like 4GiB", r.Memory)
	}
	vm := cannedVM(r.Name, yunchiv1.VMPhase_VM_PHASE_PENDING, "", 10)
	vm.Vcpus = r.Vcpus
	vm.Center = r.Center
	if r.Project != "" {
		vm.Project = r.Project
	}
	if r.Stopped {
		vm.Desired = yunchiv1.PowerState_POWER_STATE_STOPPED
	}
	s.f.mu.Lock()
	s.f.vms[r.Name] = vm
	s.f.mu.Unlock()
	return vm, nil
}

func (s fakeVMs) get(name string) (*yunchiv1.VM, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	vm, ok := s.f.vms[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "vm %q not found in project \"default\"", name)
	}
	return proto.Clone(vm).(*yunchiv1.VM), nil
}

func (s fakeVMs) GetVM(ctx context.Context, r *yunchiv1.GetVMRequest) (*yunchiv1.VM, error) {
	if r.Name == "hang" {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.get(r.Name)
}

func (s fakeVMs) ListVMs(_ context.Context, r *yunchiv1.ListVMsRequest) (*yunchiv1.ListVMsResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	resp := &yunchiv1.ListVMsResponse{}
	for _, vm := range s.f.vms {
		if r.HostId != "" && vm.HostId != r.HostId {
			continue
		}
		resp.Vms = append(resp.Vms, vm)
	}
	sort.Slice(resp.Vms, func(i, j int) bool { return resp.Vms[i].Name < resp.Vms[j].Name })
	if s.f.pageSize == 0 {
		return resp, nil
	}
	s.f.pageSizes = append(s.f.pageSizes, r.PageSize)
	// Token: the last name given (the fake has one project).
	i := sort.Search(len(resp.Vms), func(i int) bool { return resp.Vms[i].Name > r.PageToken })
	resp.Vms = resp.Vms[i:]
	if len(resp.Vms) > s.f.pageSize {
		resp.Vms = resp.Vms[:s.f.pageSize]
		resp.NextPageToken = resp.Vms[len(resp.Vms)-1].Name
	}
	return resp, nil
}

func (s fakeVMs) act(name string) (*yunchiv1.VM, error) {
	if name == "locked" {
		return nil, status.Errorf(codes.FailedPrecondition, "vm %q is being deleted", name)
	}
	s.f.mu.Lock()
	vm, ok := s.f.action[name]
	s.f.mu.Unlock()
	if ok {
		return vm, nil
	}
	return s.get(name)
}

func (s fakeVMs) StartVM(_ context.Context, r *yunchiv1.VMActionRequest) (*yunchiv1.VM, error) {
	return s.act(r.Name)
}
func (s fakeVMs) StopVM(_ context.Context, r *yunchiv1.VMActionRequest) (*yunchiv1.VM, error) {
	return s.act(r.Name)
}
func (s fakeVMs) RebootVM(_ context.Context, r *yunchiv1.VMActionRequest) (*yunchiv1.VM, error) {
	return s.act(r.Name)
}
func (s fakeVMs) DeleteVM(_ context.Context, r *yunchiv1.VMActionRequest) (*yunchiv1.VM, error) {
	return s.act(r.Name)
}

func (s fakeVMs) WatchVM(r *yunchiv1.WatchVMRequest, stream grpc.ServerStreamingServer[yunchiv1.VMEvent]) error {
	s.f.mu.Lock()
	events, ok := s.f.watch[r.Name]
	werr := s.f.watchErr[r.Name]
	s.f.mu.Unlock()
	if !ok {
		return status.Errorf(codes.NotFound, "vm %q not found in project \"default\"", r.Name)
	}
	for _, e := range events {
		if err := stream.Send(e); err != nil {
			return err
		}
	}
	if werr != nil {
		return werr
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

// --- HostService ---

type fakeHosts struct {
	yunchiv1.UnimplementedHostServiceServer
}

func res(cpu, memGiB, diskGiB int64) *yunchiv1.Resources {
	return &yunchiv1.Resources{Vcpus: cpu, MemoryBytes: memGiB << 30, DiskBytes: diskGiB << 30}
}

var hosts = []*yunchiv1.Host{
	{Id: "a1-h07", Hostname: "a1-h07.gov.internal", Center: "a1", Site: "s1", Rack: "r3",
		Labels: map[string]string{"gpu": "none", "tier": "gold"}, State: yunchiv1.HostState_HOST_STATE_READY,
		Capacity: res(64, 256, 4096), Allocated: res(10, 40, 400), VmCount: 3,
		Reserved: res(1, 2, 0), Allocatable: res(252, 254, 4096), Free: res(242, 214, 3696),
		Ratios: &yunchiv1.Ratios{Cpu: 4, Memory: 1, Disk: 1}, RatioSources: &yunchiv1.RatioSources{Cpu: "default", Memory: "center a1", Disk: "default"},
		CpuModel: "EPYC 7543", AgentVersion: "0.1.0", RegisteredAt: created, LastSeen: timestamppb.Now(),
		Hypervisor: "QEMU 7.2.0", LibvirtVersion: "9.0.0",
		Stats: &yunchiv1.HostStats{DomainsRunning: 3, DomainsDefined: 3, MemoryFreeBytes: proto.Int64(200 << 30)}},
	{Id: "b2-h01", Hostname: "b2-h01.gov.internal", Center: "b2", State: yunchiv1.HostState_HOST_STATE_DOWN,
		Capacity: res(32, 128, 2048), Allocated: res(0, 0, 0), Owner: "tax",
		Reserved: res(1, 2, 0), Allocatable: res(124, 126, 2048), Free: res(124, 126, 2048),
		// Its driver cannot tell free memory (as libvirt's test driver).
		Stats: &yunchiv1.HostStats{DomainsRunning: 0, DomainsDefined: 1}},
}

func (fakeHosts) ListHosts(_ context.Context, r *yunchiv1.ListHostsRequest) (*yunchiv1.ListHostsResponse, error) {
	resp := &yunchiv1.ListHostsResponse{}
	for _, h := range hosts {
		if r.Center == "" || h.Center == r.Center {
			resp.Hosts = append(resp.Hosts, h)
		}
	}
	return resp, nil
}

func (fakeHosts) GetHost(_ context.Context, r *yunchiv1.GetHostRequest) (*yunchiv1.Host, error) {
	for _, h := range hosts {
		if h.Id == r.Id {
			return h, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "host %q not found", r.Id)
}

// --- CapacityService ---

type fakeCapacity struct {
	yunchiv1.UnimplementedCapacityServiceServer
}

func (fakeCapacity) GetCapacity(context.Context, *yunchiv1.GetCapacityRequest) (*yunchiv1.Capacity, error) {
	return &yunchiv1.Capacity{
		Capacity: res(96, 384, 6144), Allocated: res(10, 40, 400), Free: res(86, 344, 5744),
		Hosts: 2, Vms: 3,
		Centers: []*yunchiv1.CenterCapacity{
			{Center: "a1", Hosts: 1, HostsReady: 1, Vms: 3, Capacity: res(64, 256, 4096), Allocated: res(10, 40, 400), Free: res(54, 216, 3696)},
			{Center: "b2", Hosts: 1, HostsReady: 0, Capacity: res(32, 128, 2048), Allocated: res(0, 0, 0), Free: res(32, 128, 2048)},
		},
	}, nil
}

// --- ClusterService ---

type fakeCluster struct {
	yunchiv1.UnimplementedClusterServiceServer
}

var members = []*yunchiv1.Member{
	{Id: "c1", RaftAddress: "10.0.0.1:8471", ApiAddress: "10.0.0.1:8470", Center: "a1", Suffrage: "voter", Leader: true},
	{Id: "c2", RaftAddress: "10.0.0.2:8471", ApiAddress: "10.0.0.2:8470", Center: "b2", Suffrage: "voter"},
	{Id: "c3", RaftAddress: "10.0.0.3:8471", ApiAddress: "10.0.0.3:8470", Center: "c3", Suffrage: "nonvoter"},
}

func (fakeCluster) GetClusterStatus(context.Context, *yunchiv1.GetClusterStatusRequest) (*yunchiv1.ClusterStatus, error) {
	return &yunchiv1.ClusterStatus{
		NodeId: "c2", NodeState: "Follower", LeaderId: "c1", LeaderApiAddress: "10.0.0.1:8470",
		Term: 4, CommitIndex: 1207, AppliedIndex: 1206, LastLogIndex: 1207, Members: members,
	}, nil
}

func (fakeCluster) ListMembers(context.Context, *yunchiv1.ListMembersRequest) (*yunchiv1.ListMembersResponse, error) {
	return &yunchiv1.ListMembersResponse{Members: members}, nil
}

func (fakeCluster) JoinCluster(_ context.Context, r *yunchiv1.JoinClusterRequest) (*yunchiv1.Member, error) {
	for _, m := range members {
		if m.Id == r.Id {
			return nil, status.Errorf(codes.AlreadyExists, "member %q already in the cluster", r.Id)
		}
	}
	return &yunchiv1.Member{Id: r.Id, RaftAddress: r.RaftAddress, ApiAddress: r.ApiAddress, Center: r.Center, Suffrage: "voter"}, nil
}

func (fakeCluster) RemoveMember(_ context.Context, r *yunchiv1.RemoveMemberRequest) (*yunchiv1.ListMembersResponse, error) {
	var rest []*yunchiv1.Member
	found := false
	for _, m := range members {
		if m.Id == r.Id {
			found = true
			continue
		}
		rest = append(rest, m)
	}
	if !found {
		return nil, status.Errorf(codes.NotFound, "member %q not found", r.Id)
	}
	if r.Id == "c1" { // the leader: the controller hands leadership over first
		rest[0] = &yunchiv1.Member{Id: "c2", RaftAddress: "10.0.0.2:8471", ApiAddress: "10.0.0.2:8470", Center: "b2", Suffrage: "voter", Leader: true}
		return &yunchiv1.ListMembersResponse{Members: rest, Message: "c1 removed; it was the leader, leadership moved to c2"}, nil
	}
	return &yunchiv1.ListMembersResponse{Members: rest, Message: r.Id + " removed"}, nil
}

// deadAddr is an address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}
