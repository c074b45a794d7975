package api

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/leader"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// newLeadingServer is controller c1, the leader, with real leader duties
// (they keep what heartbeats say) and cmds applied to its state.
func newLeadingServer(t *testing.T, cmds ...*statev1.Command) (*Server, *leader.Duties) {
	t.Helper()
	st := state.New()
	p := &fakeProposer{store: st, leader: "c1", self: "c1"}
	for _, c := range append([]*statev1.Command{upsertMember("c1", "c1:8000")}, cmds...) {
		if _, err := p.Apply(context.Background(), c); err != nil {
			t.Fatalf("setting up the state: %v", err)
		}
	}
	d := leader.New(p, st, leader.Self{ID: "c1", APIAddress: "c1:8000", RaftAddress: "c1:7000"}, slog.New(slog.DiscardHandler))
	d.HostTTL = time.Hour
	d.Start(context.Background())
	t.Cleanup(d.Stop)
	m := &fakeMembership{conf: voters("c1"), stats: map[string]string{"state": "Leader", "term": "1"}}
	s := NewServer(p, m, st, nil, d, Self{ID: "c1", APIAddress: "c1:8000"}, slog.New(slog.DiscardHandler))
	t.Cleanup(s.Close)
	return s, d
}

func registerHost(id string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
		Id: id, Hostname: id, Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 16 << 30, DiskBytes: 100 << 30},
	}}}}
}

func placeVM(id, name, host string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_PlaceVm{PlaceVm: &statev1.PlaceVM{Vm: &statev1.VMRecord{
		Id: id, Name: name, Project: state.DefaultProject, Vcpus: 1, MemoryBytes: 1 << 30, DiskBytes: 10 << 30, HostId: host,
	}}}}
}

// The leader shows each VM's usage from its host's last heartbeat, stamped
// with when it came: in GetVM and ListVMs; not for a VM the heartbeat did
// not mention, nor from a host the VM is not on; a heartbeat without it
// clears it. A follower shows none.
func TestVMUsageFromHeartbeatOnTheLeader(t *testing.T) {
	s, duties := newLeadingServer(t, registerHost("h1"), registerHost("h2"),
		placeVM("vm-web", "web", "h1"), placeVM("vm-db", "db", "h1"), placeVM("vm-app", "app", "h2"))
	ctx := context.Background()
	web := &yunchiv1.VMUsage{CpuTimeNs: 12e9, MemoryBytes: 1 << 30, MemoryUnusedBytes: 300 << 20,
		DiskReadBytes: 5 << 20, DiskWriteBytes: 7 << 20, NetRxBytes: 1000, NetTxBytes: 2000}
	before := time.Now()
	if _, err := s.Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "h1", Stats: &yunchiv1.HostStats{}, VmStats: []*yunchiv1.VMStats{
		{VmId: "vm-web", Usage: web},
		{VmId: "vm-ghost", Usage: &yunchiv1.VMUsage{CpuTimeNs: 1}}, // no such VM: ignored
	}}); err != nil {
		t.Fatal(err)
	}
	// h2 claims web's usage: web is not on h2.
	if _, err := s.Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "h2", VmStats: []*yunchiv1.VMStats{
		{VmId: "vm-web", Usage: &yunchiv1.VMUsage{CpuTimeNs: 99}},
	}}); err != nil {
		t.Fatal(err)
	}
	after := time.Now()

	check := func(vm *yunchiv1.VM) {
		t.Helper()
		u := vm.GetUsage()
		if u == nil {
			t.Fatalf("%s: no usage", vm.GetName())
		}
		at := u.GetMeasuredAt().AsTime()
		if at.Before(before.Add(-time.Millisecond)) || at.After(after) {
			t.Errorf("%s: measured at %v, want when the heartbeat came (%v..%v)", vm.GetName(), at, before, after)
		}
		got := proto.Clone(u).(*yunchiv1.VMUsage)
		got.MeasuredAt = nil
		if !proto.Equal(got, web) {
			t.Errorf("%s: usage %v, want %v", vm.GetName(), got, web)
		}
	}
	vm, err := s.GetVM(ctx, &yunchiv1.GetVMRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	check(vm)
	for _, name := range []string{"db", "app"} {
		if vm, err := s.GetVM(ctx, &yunchiv1.GetVMRequest{Name: name}); err != nil || vm.GetUsage() != nil {
			t.Errorf("%s: usage %v (%v), want none", name, vm.GetUsage(), err)
		}
	}
	list, err := s.ListVMs(ctx, &yunchiv1.ListVMsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range list.GetVms() {
		if vm.GetName() == "web" {
			check(vm)
		} else if vm.GetUsage() != nil {
			t.Errorf("list: %s has usage %v", vm.GetName(), vm.GetUsage())
		}
	}

	// The guest stopped: the next heartbeat says nothing of it.
	if _, err := s.Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "h1"}); err != nil {
		t.Fatal(err)
	}
	if vm, _ := s.GetVM(ctx, &yunchiv1.GetVMRequest{Name: "web"}); vm.GetUsage() != nil {
		t.Errorf("usage %v after a heartbeat without it", vm.GetUsage())
	}

	// A follower has none, whatever it is sent.
	if _, err := s.Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "h1", VmStats: []*yunchiv1.VMStats{{VmId: "vm-web", Usage: web}}}); err != nil {
		t.Fatal(err)
	}
	duties.Stop()
	if vm, _ := s.GetVM(ctx, &yunchiv1.GetVMRequest{Name: "web"}); vm.GetUsage() != nil {
		t.Errorf("a follower shows usage %v", vm.GetUsage())
	}
}

// A heartbeat whose usage is not one entry per VM is refused with one
// line, and changes nothing: the usage shown is the last good one.
func TestHeartbeatWithBadUsageRefused(t *testing.T) {
	s, _ := newLeadingServer(t, registerHost("h1"), placeVM("vm-web", "web", "h1"))
	ctx := context.Background()
	good := &yunchiv1.VMUsage{CpuTimeNs: 1}
	if _, err := s.Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "h1", VmStats: []*yunchiv1.VMStats{{VmId: "vm-web", Usage: good}}}); err != nil {
		t.Fatal(err)
	}
	many := make([]*yunchiv1.VMStats, maxVMStats+1)
	for i := range many {
		many[i] = &yunchiv1.VMStats{VmId: fmt.Sprintf("vm-%d", i), Usage: good}
	}
	bad := &yunchiv1.VMUsage{CpuTimeNs: 666}
	for name, c := range map[string]struct {
		vms  []*yunchiv1.VMStats
		want string
	}{
		"no vm id":    {[]*yunchiv1.VMStats{{Usage: bad}}, "usage without a vm id"},
		"twice":       {[]*yunchiv1.VMStats{{VmId: "vm-web", Usage: bad}, {VmId: "vm-web", Usage: bad}}, `usage of vm "vm-web" twice`},
		"no usage":    {[]*yunchiv1.VMStats{{VmId: "vm-web"}}, `names vm "vm-web" without its usage`},
		"long id":     {[]*yunchiv1.VMStats{{VmId: strings.Repeat("v", 129), Usage: bad}}, "129 bytes long"},
		"control":     {[]*yunchiv1.VMStats{{VmId: "vm\nweb", Usage: bad}}, "control or invalid character"},
		"too many":    {many, "at most 10000"},
		"bad host id": {nil, "host id"},
	} {
		req := &yunchiv1.HeartbeatRequest{HostId: "h1", VmStats: c.vms}
		if name == "bad host id" {
			req.HostId = "h 1"
		}
		_, err := s.Heartbeat(ctx, req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want InvalidArgument saying %q on one line", name, err, c.want)
		}
	}
	vm, err := s.GetVM(ctx, &yunchiv1.GetVMRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if vm.GetUsage().GetCpuTimeNs() != 1 {
		t.Errorf("usage after refused heartbeats: %v, want the last good one", vm.GetUsage())
	}
}
