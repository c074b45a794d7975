package api

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/raftstore"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Handler tests against fakes of Proposer and Membership over a real
// state.Store: no raft cluster.

// fakeProposer applies what it is given to a real store (as the FSM
// would, at the next index), unless err is set; it records every command.
type fakeProposer struct {
	mu     sync.Mutex
	store  *state.Store
	err    error
	cmds   []*statev1.Command
	leader string
	self   string
	// before, if set, runs before each command is applied, with the
	// store to change (what another proposer committed first).
	before func(st *state.Store, idx uint64, cmd *statev1.Command) uint64
	// caughtUp, if set, is CaughtUp (a new leader applying what earlier
	// terms committed).
	caughtUp func(ctx context.Context) error
}

func (p *fakeProposer) Apply(ctx context.Context, cmd *statev1.Command) (state.Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cmds = append(p.cmds, cmd)
	if p.err != nil {
		return state.Result{}, p.err
	}
	idx := p.store.Index() + 1
	if p.before != nil {
		idx = p.before(p.store, idx, cmd)
	}
	cmd.Version, cmd.UnixNano = state.CommandVersion, int64(idx)*1000
	return p.store.Apply(idx, cmd)
}

func (p *fakeProposer) Barrier(context.Context) error { return nil }
func (p *fakeProposer) CaughtUp(ctx context.Context) error {
	if p.caughtUp != nil {
		return p.caughtUp(ctx)
	}
	return nil
}
func (p *fakeProposer) IsLeader() bool { return p.LeaderID() == p.self }
func (p *fakeProposer) LeaderID() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.leader
}

func (p *fakeProposer) setLeader(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.leader = id
}

func (p *fakeProposer) commands() []*statev1.Command {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*statev1.Command(nil), p.cmds...)
}

// fakeMembership is a raft configuration; transfer is what
// LeadershipTransfer does; it records removals.
type fakeMembership struct {
	conf     raft.Configuration
	removed  bool
	stats    map[string]string
	health   raftstore.Health
	transfer func() error
	removals []string
}

func (m *fakeMembership) Configuration() (raft.Configuration, error) { return m.conf, nil }
func (m *fakeMembership) AddVoter(id, addr string, _ time.Duration) error {
	m.conf.Servers = append(m.conf.Servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(addr), Suffrage: raft.Voter})
	return nil
}
func (m *fakeMembership) RemoveServer(id string, _ time.Duration) error {
	m.removals = append(m.removals, id)
	return nil
}
func (m *fakeMembership) LeadershipTransfer() error           { return m.transfer() }
func (m *fakeMembership) Removed() bool                       { return m.removed }
func (m *fakeMembership) Stats() map[string]string            { return m.stats }
func (m *fakeMembership) Indexes() (term, commit, app uint64) { return 1, 0, 0 }
func (m *fakeMembership) LogStoreHealth() raftstore.Health    { return m.health }

func voters(ids ...string) raft.Configuration {
	var c raft.Configuration
	for _, id := range ids {
		c.Servers = append(c.Servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(id + ":7000"), Suffrage: raft.Voter})
	}
	return c
}

// newFakeServer is controller c1 of members c1, c2, c3 (API addresses
// c1:8000...), c1 leading, with cmds applied to its state.
func newFakeServer(t *testing.T, cmds ...*statev1.Command) (*Server, *fakeProposer, *fakeMembership) {
	t.Helper()
	st := state.New()
	p := &fakeProposer{store: st, leader: "c1", self: "c1"}
	for _, id := range []string{"c1", "c2", "c3"} {
		cmds = append([]*statev1.Command{upsertMember(id, id+":8000")}, cmds...)
	}
	for _, c := range cmds {
		if _, err := p.Apply(context.Background(), c); err != nil {
			t.Fatalf("setting up the state: %v", err)
		}
	}
	p.cmds = nil
	m := &fakeMembership{conf: voters("c1", "c2", "c3"), stats: map[string]string{"state": "Leader", "term": "3"}}
	s := NewServer(p, m, st, nil, nil, Self{ID: "c1", APIAddress: "c1:8000"}, slog.New(slog.DiscardHandler))
	t.Cleanup(s.Close)
	return s, p, m
}

func upsertMember(id, api string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{
		Member: &statev1.MemberRecord{Id: id, RaftAddress: id + ":7000", ApiAddress: api},
	}}}
}

func reasonOf(err error) (string, map[string]string) {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.Reason, ei.Metadata
		}
	}
	return "", nil
}

// Start/Stop/Reboot/Delete propose one SetVMDesired for the VM found by
// name, answer with the applied record, and map the proposer's errors.
func TestSetDesiredProposesTheCommand(t *testing.T) {
	s, p, _ := newFakeServer(t,
		&statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
			Id: "h1", Hostname: "h1", Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 16 << 30, DiskBytes: 100 << 30},
		}}}},
		&statev1.Command{Cmd: &statev1.Command_PlaceVm{PlaceVm: &statev1.PlaceVM{Vm: &statev1.VMRecord{
			Id: "vm-1", Name: "web", Project: state.DefaultProject, Vcpus: 1, MemoryBytes: 1 << 30, DiskBytes: 10 << 30, HostId: "h1",
		}}}},
	)
	ctx := context.Background()
	req := &yunchiv1.VMActionRequest{Name: "web"}
	for _, c := range []struct {
		name    string
		call    func(context.Context, *yunchiv1.VMActionRequest) (*yunchiv1.VM, error)
		desired yunchiv1.PowerState
		reboot  bool
	}{
		{"stop", s.StopVM, yunchiv1.PowerState_POWER_STATE_STOPPED, false},
		{"start", s.StartVM, yunchiv1.PowerState_POWER_STATE_RUNNING, false},
		{"reboot", s.RebootVM, yunchiv1.PowerState_POWER_STATE_RUNNING, true},
		{"delete", s.DeleteVM, yunchiv1.PowerState_POWER_STATE_DELETED, false},
	} {
		p.cmds = nil
		vm, err := c.call(ctx, req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		cmds := p.commands()
		if len(cmds) != 1 || cmds[0].GetSetVmDesired() == nil {
			t.Fatalf("%s proposed %v, want one SetVMDesired", c.name, cmds)
		}
		got := cmds[0].GetSetVmDesired()
		if got.VmId != "vm-1" || got.Desired != powerFromAPI(c.desired) || got.Reboot != c.reboot {
			t.Fatalf("%s proposed %v, want vm-1 %v reboot=%v", c.name, got, c.desired, c.reboot)
		}
		if vm.Name != "web" || vm.Desired != c.desired {
			t.Fatalf("%s answered %v, want web with desired %v", c.name, vm, c.desired)
		}
	}

	// Not found: nothing proposed.
	p.cmds = nil
	if _, err := s.StopVM(ctx, &yunchiv1.VMActionRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown VM: %v, want NotFound", err)
	}
	if n := len(p.commands()); n != 0 {
		t.Fatalf("an unknown VM proposed %d commands", n)
	}

	// The proposer's errors come back as the codes clients act on.
	for _, c := range []struct {
		err  error
		want codes.Code
	}{
		{raft.ErrNotLeader, codes.Unavailable},
		{raft.ErrLeadershipLost, codes.Unavailable},
		{context.DeadlineExceeded, codes.Unavailable},
		{&state.Error{Kind: state.KindConflict, Msg: "vm changed"}, codes.Aborted},
		{&state.Error{Kind: state.KindFailedPrecondition, Msg: "host is down"}, codes.FailedPrecondition},
	} {
		p.err = c.err
		_, err := s.StopVM(ctx, req)
		if status.Code(err) != c.want {
			t.Fatalf("proposer error %v answered %v, want %v", c.err, err, c.want)
		}
	}
}

// A removed controller answers every call but GetClusterStatus with
// NOT_A_MEMBER and the remaining members' API addresses: clients get
// FAILED_PRECONDITION, agents UNAVAILABLE (so they move on).
func TestRemovedControllerAnswersNotAMember(t *testing.T) {
	s, _, m := newFakeServer(t)
	m.removed = true
	m.conf = voters("c2", "c3")
	handled := false
	handler := func(context.Context, any) (any, error) { handled = true; return nil, nil }
	for _, c := range []struct {
		method string
		want   codes.Code
	}{
		{yunchiv1.VMService_ListVMs_FullMethodName, codes.FailedPrecondition},
		{yunchiv1.ClusterService_RemoveMember_FullMethodName, codes.FailedPrecondition},
		{yunchiv1.AgentService_Heartbeat_FullMethodName, codes.Unavailable},
	} {
		_, err := s.MemberInterceptor(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: c.method}, handler)
		if status.Code(err) != c.want {
			t.Fatalf("%s on a removed controller: %v, want %v", c.method, err, c.want)
		}
		reason, md := reasonOf(err)
		if reason != NotAMemberReason || md["members"] != "c2:8000,c3:8000" {
			t.Fatalf("%s: reason %q members %q, want %s with c2:8000,c3:8000", c.method, reason, md["members"], NotAMemberReason)
		}
		if !strings.Contains(status.Convert(err).Message(), "c2:8000,c3:8000") {
			t.Fatalf("%s: message %q does not say where to go", c.method, status.Convert(err).Message())
		}
	}
	if handled {
		t.Fatal("a removed controller ran a handler")
	}
	if _, err := s.MemberInterceptor(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: yunchiv1.ClusterService_GetClusterStatus_FullMethodName}, handler); err != nil || !handled {
		t.Fatalf("GetClusterStatus on a removed controller: handled=%v err=%v", handled, err)
	}
	st, err := s.GetClusterStatus(context.Background(), &yunchiv1.GetClusterStatusRequest{})
	if err != nil || st.NodeState != "Removed" {
		t.Fatalf("status of a removed controller: %v %v, want node_state Removed", st, err)
	}
}

// Cluster status carries the log store's failure on one line, its count
// and since when.
func TestClusterStatusShowsLogStoreError(t *testing.T) {
	s, _, m := newFakeServer(t)
	since := time.Unix(1_700_000_000, 0)
	m.health = raftstore.Health{Err: errors.New("write wal: no space left on device\nsegment 12"), Since: since, Failures: 4}
	st, err := s.GetClusterStatus(context.Background(), &yunchiv1.GetClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.LogStoreError != "write wal: no space left on device; segment 12" || st.LogStoreWriteFailures != 4 || !st.LogStoreFailingSince.AsTime().Equal(since) {
		t.Fatalf("log store in status: error %q failures %d since %v", st.LogStoreError, st.LogStoreWriteFailures, st.LogStoreFailingSince.AsTime())
	}
	if st.NodeState != "Leader" || st.Term != 3 || st.LeaderId != "c1" || st.LeaderApiAddress != "c1:8000" || len(st.Members) != 3 {
		t.Fatalf("status: %v", st)
	}

	m.health = raftstore.Health{Failures: 4, Recoveries: 1}
	st, err = s.GetClusterStatus(context.Background(), &yunchiv1.GetClusterStatusRequest{})
	if err != nil || st.LogStoreError != "" || st.LogStoreFailingSince != nil || st.LogStoreWriteFailures != 4 {
		t.Fatalf("healthy log store in status: %v %v", st, err)
	}
}

// remover is the new leader's ClusterService: it records the forwarded
// RemoveMember.
type remover struct {
	yunchiv1.UnimplementedClusterServiceServer
	mu        sync.Mutex
	got       []string
	forwarded []string
}

func (r *remover) RemoveMember(ctx context.Context, req *yunchiv1.RemoveMemberRequest) (*yunchiv1.ListMembersResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, req.Id)
	r.forwarded = append(r.forwarded, md.Get(auth.ForwardedKey)...)
	return &yunchiv1.ListMembersResponse{Message: "removed there"}, nil
}

// Removing the leader hands leadership over first and has the new leader
// do the removal, as a forwarded call; the old leader removes nothing
// itself. If the hand-over fails, nothing is removed.
func TestRemoveMemberOfLeaderTransfersThenForwards(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	r := &remover{}
	yunchiv1.RegisterClusterServiceServer(gs, r)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)

	s, p, m := newFakeServer(t, upsertMember("c2", lis.Addr().String()))
	transfers := 0
	m.transfer = func() error { transfers++; p.setLeader("c2"); return nil }

	resp, err := s.RemoveMember(context.Background(), &yunchiv1.RemoveMemberRequest{Id: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if transfers != 1 {
		t.Fatalf("leadership transferred %d times, want 1", transfers)
	}
	if len(m.removals) != 0 || len(p.commands()) != 0 {
		t.Fatalf("the old leader removed %v and proposed %v itself", m.removals, p.commands())
	}
	r.mu.Lock()
	got, fwd := r.got, r.forwarded
	r.mu.Unlock()
	if len(got) != 1 || got[0] != "c1" || len(fwd) != 1 || fwd[0] != "c1" {
		t.Fatalf("new leader got RemoveMember %v forwarded by %v, want c1 forwarded by c1", got, fwd)
	}
	if want := "c1 removed; it was the leader, leadership moved to c2"; resp.Message != want {
		t.Fatalf("message %q, want %q", resp.Message, want)
	}

	// A failed hand-over removes nothing and says to retry.
	p.setLeader("c1")
	m.transfer = func() error { return raft.ErrLeadershipTransferInProgress }
	_, err = s.RemoveMember(context.Background(), &yunchiv1.RemoveMemberRequest{Id: "c1"})
	if reason, _ := reasonOf(err); status.Code(err) != codes.Unavailable || reason != NotProposedReason {
		t.Fatalf("failed hand-over: %v (reason %q), want UNAVAILABLE NOT_PROPOSED", err, reason)
	}
	r.mu.Lock()
	n := len(r.got)
	r.mu.Unlock()
	if n != 1 || len(m.removals) != 0 {
		t.Fatalf("a failed hand-over still removed: forwarded %d, removed %v", n, m.removals)
	}

	// Removing a follower is done here: out of the configuration, then
	// its member record.
	if _, err := s.RemoveMember(context.Background(), &yunchiv1.RemoveMemberRequest{Id: "c3"}); err != nil {
		t.Fatal(err)
	}
	cmds := p.commands()
	if len(m.removals) != 1 || m.removals[0] != "c3" || len(cmds) != 1 || cmds[0].GetRemoveMember().GetId() != "c3" {
		t.Fatalf("removing follower c3: removed %v, proposed %v", m.removals, cmds)
	}
}
