package main

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// overFake answers like a controller with one host, b1-h01, that runs 8 GiB
// of VMs: lowering its memory ratio to 0.1 (6.2 GiB allocatable) is refused
// unless forced, and once forced the host and capacity show the overcommit.
type overFake struct {
	yunchiv1.UnimplementedHostServiceServer
	yunchiv1.UnimplementedRatioServiceServer
	yunchiv1.UnimplementedCapacityServiceServer
	mu     sync.Mutex
	forced []bool // Force of every UpdateHost and SetRatios, in order
}

const overMsg = "this change would put host b1-h01 below what it runs (memory: allocated 8 GiB > allocatable 6.2 GiB); give --force (REST: \"force\": true) to accept the overcommit"

func overHost() *yunchiv1.Host {
	return &yunchiv1.Host{Id: "b1-h01", Center: "b1", State: yunchiv1.HostState_HOST_STATE_READY, VmCount: 1,
		Capacity: res(16, 64, 1000), Reserved: res(1, 2, 0), Allocated: res(2, 8, 10),
		Allocatable:  &yunchiv1.Resources{Vcpus: 60, MemoryBytes: 6657199308, DiskBytes: 1000 << 30},
		Free:         &yunchiv1.Resources{Vcpus: 58, MemoryBytes: 0, DiskBytes: 990 << 30},
		Overcommit:   &yunchiv1.Resources{MemoryBytes: 8<<30 - 6657199308},
		Ratios:       &yunchiv1.Ratios{Cpu: 4, Memory: 0.1, Disk: 1},
		RatioSources: &yunchiv1.RatioSources{Cpu: "default", Memory: "host", Disk: "default"}}
}

func (f *overFake) record(force bool) {
	f.mu.Lock()
	f.forced = append(f.forced, force)
	f.mu.Unlock()
}

func (f *overFake) UpdateHost(_ context.Context, r *yunchiv1.UpdateHostRequest) (*yunchiv1.Host, error) {
	f.record(r.Force)
	if !r.Force {
		return nil, status.Error(codes.FailedPrecondition, overMsg)
	}
	return overHost(), nil
}

func (f *overFake) GetHost(context.Context, *yunchiv1.GetHostRequest) (*yunchiv1.Host, error) {
	return overHost(), nil
}

func (f *overFake) ListHosts(context.Context, *yunchiv1.ListHostsRequest) (*yunchiv1.ListHostsResponse, error) {
	return &yunchiv1.ListHostsResponse{Hosts: []*yunchiv1.Host{overHost()}}, nil
}

func (f *overFake) SetRatios(_ context.Context, r *yunchiv1.SetRatiosRequest) (*yunchiv1.RatioSetting, error) {
	f.record(r.Force)
	if !r.Force {
		return nil, status.Error(codes.FailedPrecondition, "these ratios for center b1 would put 2 hosts below what they run: ...")
	}
	return &yunchiv1.RatioSetting{Scope: r.Scope, Name: r.Name, Ratios: &yunchiv1.Ratios{Memory: r.GetMemory()}}, nil
}

func (f *overFake) GetCapacity(context.Context, *yunchiv1.GetCapacityRequest) (*yunchiv1.Capacity, error) {
	h := overHost()
	cc := &yunchiv1.CenterCapacity{Center: "b1", Hosts: 1, HostsReady: 1, Vms: 1, Capacity: h.Capacity, Allocated: h.Allocated,
		Allocatable: h.Allocatable, Free: h.Free, Overcommit: h.Overcommit, HostsOvercommitted: 1}
	return &yunchiv1.Capacity{Capacity: h.Capacity, Allocated: h.Allocated, Allocatable: h.Allocatable, Free: h.Free,
		Overcommit: h.Overcommit, HostsOvercommitted: 1, Hosts: 1, Vms: 1, Centers: []*yunchiv1.CenterCapacity{cc}}, nil
}

func startOverFake(t *testing.T) (*overFake, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &overFake{}
	srv := grpc.NewServer()
	yunchiv1.RegisterHostServiceServer(srv, f)
	yunchiv1.RegisterRatioServiceServer(srv, f)
	yunchiv1.RegisterCapacityServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return f, lis.Addr().String()
}

func TestOvercommitForceAndDisplay(t *testing.T) {
	f, addr := startOverFake(t)

	// Refused without --force: exit 7 (failed precondition), the one line.
	code, _, stderr := yunchi(t, "--addr", addr, "host", "set", "b1-h01", "--memory-ratio", "0.1")
	if code != 7 || oneErrorLine(t, stderr) != overMsg {
		t.Fatalf("host set without --force: exit %d, %q", code, stderr)
	}
	code, _, stderr = yunchi(t, "--addr", addr, "ratio", "set", "--center", "b1", "--memory", "0.1")
	if code != 7 {
		t.Fatalf("ratio set without --force: exit %d, %q", code, stderr)
	}

	// --force travels in the request; the answer shows the overcommit.
	code, stdout, stderr := yunchi(t, "--addr", addr, "host", "set", "b1-h01", "--memory-ratio", "0.1", "--force")
	if code != 0 {
		t.Fatalf("host set --force: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"Overcommitted:", "memory: allocated beyond allocatable; no new VM goes here until it is back within",
		"0 B (overcommitted by 1.8 GiB)"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("host set --force output lacks %q:\n%s", want, stdout)
		}
	}
	if code, _, stderr := yunchi(t, "--addr", addr, "ratio", "set", "--center", "b1", "--memory", "0.1", "--force"); code != 0 {
		t.Fatalf("ratio set --force: exit %d: %s", code, stderr)
	}
	f.mu.Lock()
	forced := f.forced
	f.mu.Unlock()
	if len(forced) != 4 || forced[0] || forced[1] || !forced[2] || !forced[3] {
		t.Fatalf("force sent: %v, want [false false true true]", forced)
	}

	// Lists flag it; free is never printed negative.
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"host", "list"}, []string{"ready (overcommitted: memory)", "0 B/6.2 GiB"}},
		{[]string{"host", "show", "b1-h01"}, []string{"Overcommitted:", "0 B (overcommitted by 1.8 GiB)"}},
		{[]string{"capacity"}, []string{"OVERCOMMITTED", "1 host (memory 1.8 GiB over)", "0 B/6.2 GiB"}},
	} {
		code, stdout, stderr := yunchi(t, append([]string{"--addr", addr}, tc.args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.args, code, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stdout, w) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, stdout)
			}
		}
		if strings.Contains(stdout, "-1.8") {
			t.Errorf("%v: a negative free is printed:\n%s", tc.args, stdout)
		}
	}
	// -o json carries the same, as the API's JSON.
	code, stdout, stderr = yunchi(t, "--addr", addr, "capacity", "-o", "json")
	var c struct {
		HostsOvercommitted int
		Overcommit         struct{ MemoryBytes string }
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &c) != nil || c.HostsOvercommitted != 1 || c.Overcommit.MemoryBytes != "1932735284" {
		t.Fatalf("capacity -o json: exit %d %+v %s %s", code, c, stdout, stderr)
	}
}
