package api

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/placement"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// fakePlacer records the specs it is given and answers with err, or with
// each VM on host h1.
type fakePlacer struct {
	got []placement.Spec
	err error
}

func (f *fakePlacer) Place(ctx context.Context, sp placement.Spec) ([]*statev1.VMRecord, []placement.Decision, error) {
	f.got = append(f.got, sp)
	if f.err != nil {
		return nil, nil, f.err
	}
	var recs []*statev1.VMRecord
	var ds []placement.Decision
	for _, n := range sp.Names {
		recs = append(recs, &statev1.VMRecord{Id: "id-" + n, Name: n, Project: sp.Project, Vcpus: int32(sp.Resources.VCPUs), HostId: "h1"})
		ds = append(ds, placement.Decision{VMName: n, HostID: "h1", HostCenter: "a1", Score: 7, RunnersUp: []scheduler.Candidate{{HostID: "h2", Score: 5}}})
	}
	return recs, ds, nil
}

func (f *fakePlacer) Decide(sp placement.Spec) ([]placement.Decision, error) {
	f.got = append(f.got, sp)
	return []placement.Decision{{VMName: sp.Names[0], HostID: "h1"}}, f.err
}

func newPlacerServer(p Placer) *Server {
	return &Server{store: state.New(), placer: p, log: slog.New(slog.DiscardHandler), DefaultStrategy: scheduler.Spread}
}

// The create handlers validate, hand the placer one spec, and translate
// its answer and its errors; nothing else.
func TestCreateHandlersUseThePlacer(t *testing.T) {
	p := &fakePlacer{}
	s := newPlacerServer(p)
	ctx := context.Background()
	vm, err := s.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: "web", Vcpus: 2, Memory: "1GiB"})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Name != "web" || vm.HostId != "h1" {
		t.Fatalf("CreateVM answered %v", vm)
	}
	sp := p.got[0]
	if sp.Project != state.DefaultProject || len(sp.Names) != 1 || sp.Resources.VCPUs != 2 || sp.Resources.MemoryBytes != 1<<30 ||
		sp.Strategy != scheduler.Spread || sp.StrategyName != "" || sp.Desired != statev1.PowerState_POWER_STATE_RUNNING {
		t.Fatalf("placer got %+v", sp)
	}

	resp, err := s.CreateVMs(ctx, &yunchiv1.CreateVMRequest{Name: "db", Vcpus: 1, Memory: "1GiB", Count: 3, Strategy: "binpack", Stopped: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Vms) != 3 || len(resp.Decisions) != 3 || resp.Decisions[0].HostCenter != "a1" || resp.Decisions[0].RunnersUp[0].HostId != "h2" {
		t.Fatalf("CreateVMs answered %v", resp)
	}
	if sp := p.got[1]; sp.Names[2] != "db-3" || sp.Strategy != scheduler.Binpack || sp.StrategyName != "binpack" || sp.Desired != statev1.PowerState_POWER_STATE_STOPPED {
		t.Fatalf("placer got %+v", sp)
	}

	dry, err := s.CreateVMs(ctx, &yunchiv1.CreateVMRequest{Name: "x", Vcpus: 1, Memory: "1GiB", DryRun: true})
	if err != nil || !dry.DryRun || len(dry.Vms) != 0 || len(dry.Decisions) != 1 {
		t.Fatalf("dry run: %v, %v", dry, err)
	}

	// Bad input never reaches the placer.
	n := len(p.got)
	if _, err := s.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: "web", Vcpus: 0, Memory: "1GiB"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("vcpus 0: %v", err)
	}
	if len(p.got) != n {
		t.Fatal("an invalid request reached the placer")
	}

	for _, c := range []struct {
		err  error
		want codes.Code
	}{
		{&placement.ErrRaces{Last: errors.New("host h1 no longer has room")}, codes.Aborted},
		{&scheduler.NoFitError{Total: 3}, codes.ResourceExhausted},
		{&state.Error{Kind: state.KindAlreadyExists, Msg: "vm \"web\" already exists"}, codes.AlreadyExists},
	} {
		p.err = c.err
		if _, err := s.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: "web", Vcpus: 1, Memory: "1GiB"}); status.Code(err) != c.want {
			t.Errorf("placer error %v: answered %v, want %v", c.err, err, c.want)
		}
	}
}
