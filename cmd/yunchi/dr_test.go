package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// drFake answers the DR services like a controller of three centers (a1
// production and a2 same-city DR in shanghai, b1 remote DR in hangzhou)
// plus hosts of an undeclared center x9, recording every request. Its VM
// service is fake_test.go's, for restore --wait. The real controller is
// TestDRAgainstController's (dr_e2e_test.go).
type drFake struct {
	yunchiv1.UnimplementedTopologyServiceServer
	yunchiv1.UnimplementedProtectionServiceServer
	yunchiv1.UnimplementedBackupServiceServer
	vms *fakeController

	mu   sync.Mutex
	reqs map[string][]proto.Message // by method name
	// After RunBackup of web: the new points show in the lists after this
	// many more ListRestorePoints calls (a2 after 1, b1 after 3), and
	// b1's job keeps its old FAILED state (from before the run) until then.
	runs      map[string]int
	listCalls map[string]int
	// next is when web's failed b1 job tries again: 30s from the start
	// (and a little, so that it still reads "in 30s" a moment later).
	next time.Time
}

func (f *drFake) record(method string, m proto.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs[method] = append(f.reqs[method], proto.Clone(m))
}

func (f *drFake) sent(method string) []proto.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs[method]
}

func (f *drFake) sentAny() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.reqs {
		n += len(r)
	}
	return n
}

func startDRFake(t *testing.T) (*drFake, string) {
	t.Helper()
	f := &drFake{reqs: map[string][]proto.Message{}, runs: map[string]int{}, listCalls: map[string]int{}, next: time.Now().Add(30*time.Second + 500*time.Millisecond),
		vms: &fakeController{calls: map[string]int{}, vms: map[string]*yunchiv1.VM{}, watch: map[string][]*yunchiv1.VMEvent{},
			watchErr: map[string]error{}, action: map[string]*yunchiv1.VM{}}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	yunchiv1.RegisterTopologyServiceServer(srv, f)
	yunchiv1.RegisterProtectionServiceServer(srv, f)
	yunchiv1.RegisterBackupServiceServer(srv, f)
	yunchiv1.RegisterVMServiceServer(srv, fakeVMs{f: f.vms})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return f, lis.Addr().String()
}

// drAgo is d before now: the fake makes its answers at each call, so that
// ages print the same however late a test runs.
func drAgo(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(time.Now().Add(-d)) }

func drTopology() *yunchiv1.Topology {
	return &yunchiv1.Topology{
		Centers: []*yunchiv1.Center{
			{Name: "b1", Site: "hangzhou", Role: yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR, Declared: true,
				Hosts: []string{"b1-h01", "b1-h02"}, ReadyHosts: 1, Capacity: res(64, 256, 8192), Allocated: res(0, 0, 0), Voters: []string{"c3"},
				Repository: &yunchiv1.Repository{Member: "c3", Address: "10.1.0.3:8470", Points: 7, Error: "no answer within 5s"}},
			{Name: "a1", Site: "shanghai", Role: yunchiv1.CenterRole_CENTER_ROLE_PRODUCTION, Declared: true, Description: "main hall",
				Hosts: []string{"a1-h01", "a1-h02", "a1-h03"}, ReadyHosts: 3, Capacity: res(96, 384, 6144), Allocated: res(24, 96, 1200), Voters: []string{"c1", "c2"}},
			{Name: "a2", Site: "shanghai", Role: yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR, Declared: true,
				Hosts: []string{"a2-h01"}, ReadyHosts: 1, Capacity: res(32, 128, 4096), Allocated: res(2, 4, 40),
				Repository: &yunchiv1.Repository{Member: "c4", Address: "10.0.2.4:8470", Points: 48, Chunks: 1200, StoredBytes: 5 << 30, LogicalBytes: 100 << 30, FreeBytes: 2 << 40}},
			{Name: "x9", Hosts: []string{"x9-h01"}, Capacity: res(8, 32, 100), Allocated: res(0, 0, 0)},
		},
		Warnings: []string{"losing center a1 costs the controllers their quorum (2 of 3 voters are there)", "hosts in undeclared center x9: x9-h01"},
	}
}

func (f *drFake) GetTopology(_ context.Context, r *yunchiv1.GetTopologyRequest) (*yunchiv1.Topology, error) {
	f.record("GetTopology", r)
	return drTopology(), nil
}

func (f *drFake) SetCenter(_ context.Context, r *yunchiv1.SetCenterRequest) (*yunchiv1.Center, error) {
	f.record("SetCenter", r)
	if r.RepositoryMember == "c1" {
		return nil, status.Errorf(codes.InvalidArgument, "repository controller %q is in center %q, not %q: a center's backups are kept in that center", "c1", "a1", r.Name)
	}
	c := &yunchiv1.Center{Name: r.Name, Site: r.Site, Role: r.Role, Description: r.Description, Declared: true,
		CreatedAt: drAgo(time.Hour), Revision: 42, Hosts: []string{"a2-h01"}, ReadyHosts: 1}
	if r.RepositoryMember != "" {
		c.Repository = &yunchiv1.Repository{Member: r.RepositoryMember, Address: "10.0.2.4:8470"}
	}
	return c, nil
}

func (f *drFake) DeleteCenter(_ context.Context, r *yunchiv1.DeleteCenterRequest) (*yunchiv1.DeleteCenterResponse, error) {
	f.record("DeleteCenter", r)
	if r.Name != "x9" {
		return nil, status.Errorf(codes.NotFound, "center %q not found (see `yunchi topology`)", r.Name)
	}
	return &yunchiv1.DeleteCenterResponse{}, nil
}

func drPolicies() []*yunchiv1.Policy {
	same, remote := yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR, yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR
	return []*yunchiv1.Policy{
		{Name: "gold", Builtin: true, RpoSeconds: 60, RtoSeconds: 1800, Priority: 30, Level: 5, Vms: 2, Projects: 1,
			Description: "same-city DR every minute (RPO <= 1 min), remote DR hourly; keep 24 hourly and 7 daily",
			Targets: []*yunchiv1.PolicyTarget{
				{Role: same, IntervalSeconds: 60, RpoSeconds: 60, Retention: &yunchiv1.Retention{KeepHourly: 24, KeepDaily: 7}},
				{Role: remote, IntervalSeconds: 3600, RpoSeconds: 3600, Retention: &yunchiv1.Retention{KeepHourly: 24, KeepDaily: 7}}}},
		{Name: "silver", Builtin: true, RpoSeconds: 4 * 3600, RtoSeconds: 4 * 3600, Priority: 20, Level: 4,
			Targets: []*yunchiv1.PolicyTarget{
				{Role: same, IntervalSeconds: 4 * 3600, Retention: &yunchiv1.Retention{KeepDaily: 7}},
				{Role: remote, IntervalSeconds: 86400, Retention: &yunchiv1.Retention{KeepDaily: 7}}}},
		{Name: "payroll", RpoSeconds: 90, CreatedAt: drAgo(3 * time.Hour), Vms: 1,
			Targets: []*yunchiv1.PolicyTarget{{Center: "b1", IntervalSeconds: 5400, RpoSeconds: 90, Retention: &yunchiv1.Retention{KeepLast: 3}}}},
	}
}

func (f *drFake) ListPolicies(_ context.Context, r *yunchiv1.ListPoliciesRequest) (*yunchiv1.ListPoliciesResponse, error) {
	f.record("ListPolicies", r)
	return &yunchiv1.ListPoliciesResponse{Policies: drPolicies()}, nil
}

func (f *drFake) GetPolicy(_ context.Context, r *yunchiv1.GetPolicyRequest) (*yunchiv1.Policy, error) {
	f.record("GetPolicy", r)
	for _, p := range drPolicies() {
		if p.Name == r.Name {
			return p, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "policy %q not found", r.Name)
}

func (f *drFake) CreatePolicy(_ context.Context, r *yunchiv1.CreatePolicyRequest) (*yunchiv1.Policy, error) {
	f.record("CreatePolicy", r)
	if r.Policy.GetName() == "gold" {
		return nil, status.Errorf(codes.AlreadyExists, "policy %q is built in: choose another name", "gold")
	}
	p := proto.Clone(r.Policy).(*yunchiv1.Policy)
	p.CreatedAt = drAgo(0)
	return p, nil
}

func (f *drFake) DeletePolicy(_ context.Context, r *yunchiv1.DeletePolicyRequest) (*yunchiv1.DeletePolicyResponse, error) {
	f.record("DeletePolicy", r)
	if r.Name == "gold" {
		return nil, status.Error(codes.FailedPrecondition, `policy "gold" is built in: it cannot be deleted`)
	}
	return &yunchiv1.DeletePolicyResponse{}, nil
}

func (f *drFake) ProtectVM(_ context.Context, r *yunchiv1.ProtectVMRequest) (*yunchiv1.Protection, error) {
	f.record("ProtectVM", r)
	if r.Name == "nope" {
		return nil, status.Errorf(codes.NotFound, "vm %q not found in project \"default\"", r.Name)
	}
	return &yunchiv1.Protection{Project: orDefault(r.Project, "default"), Vm: r.Name, Policy: r.Policy}, nil
}

func (f *drFake) ProtectProject(_ context.Context, r *yunchiv1.ProtectProjectRequest) (*yunchiv1.Protection, error) {
	f.record("ProtectProject", r)
	return &yunchiv1.Protection{Project: r.Project, Policy: r.Policy}, nil
}

// GetDRStatus: web (gold, its own) is fine in a2 and late in b1, whose
// last backup failed; db (gold, its project's) has no point yet in a2 and
// is being backed up. After RunBackup, db's b1 job fails anew.
func (f *drFake) GetDRStatus(_ context.Context, r *yunchiv1.GetDRStatusRequest) (*yunchiv1.DRStatus, error) {
	f.record("GetDRStatus", r)
	f.mu.Lock()
	dbRun := f.runs["db"] > 0
	f.mu.Unlock()
	web := &yunchiv1.VMProtection{Vm: "web", Project: "default", Policy: "gold", Source: "vm", Targets: []*yunchiv1.TargetStatus{
		{Center: "a2", Role: yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR, IntervalSeconds: 60, RpoObjectiveSeconds: 60,
			NewestPoint: "rp-00000000000000a2", NewestPointAt: drAgo(42 * time.Second), AchievedRpoSeconds: 42.3, Points: 12},
		{Center: "b1", Role: yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR, IntervalSeconds: 3600, RpoObjectiveSeconds: 3600,
			NewestPoint: "rp-00000000000000b1", NewestPointAt: drAgo(75 * time.Minute), AchievedRpoSeconds: 4500, Violation: true, Points: 3,
			Job: "failed", LastError: "repository c3: no answer within 5s", Attempts: 2, NextAttemptAt: timestamppb.New(f.next)},
	}}
	db := &yunchiv1.VMProtection{Vm: "db", Project: "tax", Policy: "gold", Source: "project", Targets: []*yunchiv1.TargetStatus{
		{Center: "a2", Role: yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR, IntervalSeconds: 60, RpoObjectiveSeconds: 60, AchievedRpoSeconds: -1, Job: "running"},
		{Center: "b1", Role: yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR, IntervalSeconds: 3600, RpoObjectiveSeconds: 3600, AchievedRpoSeconds: -1},
	}}
	if dbRun {
		db.Targets[1].Job, db.Targets[1].LastError, db.Targets[1].Attempts = "failed", "agent b1-h01: disk read error", 1
	}
	all := &yunchiv1.DRStatus{Vms: []*yunchiv1.VMProtection{web, db}, Violations: 1}
	out := &yunchiv1.DRStatus{}
	for _, v := range all.Vms {
		if (r.Project == "" || v.Project == r.Project) && (r.Vm == "" || v.Vm == r.Vm) {
			out.Vms = append(out.Vms, v)
			for _, t := range v.Targets {
				if t.Violation {
					out.Violations++
				}
			}
		}
	}
	return out, nil
}

func drPoint(id, center string, age time.Duration, incremental bool) *yunchiv1.RestorePoint {
	p := &yunchiv1.RestorePoint{Id: id, Vm: "web", Project: "default", Center: center, TakenAt: drAgo(age),
		SizeBytes: 20 << 30, NewBytes: 12 << 20, Incremental: incremental, Policy: "gold", DurationMillis: 2100, HostId: "a1-h01",
		Disks: []*yunchiv1.RestorePointDisk{{Name: "root", SizeBytes: 20 << 30, Chunks: 5120, NewChunks: 3, NewBytes: 12 << 20, ReadChunks: 5}}}
	if !incremental {
		p.NewBytes, p.Disks[0].NewBytes, p.Disks[0].ReadChunks, p.Disks[0].NewChunks = 20<<30, 20<<30, 5120, 5120
	}
	return p
}

func (f *drFake) ListRestorePoints(_ context.Context, r *yunchiv1.ListRestorePointsRequest) (*yunchiv1.ListRestorePointsResponse, error) {
	f.record("ListRestorePoints", r)
	if r.Vm != "web" && r.Vm != "db" {
		return nil, status.Errorf(codes.NotFound, "vm %q not found in project \"default\"", r.Vm)
	}
	f.mu.Lock()
	runs := f.runs[r.Vm]
	calls := 0
	if runs > 0 {
		f.listCalls[r.Vm]++
		calls = f.listCalls[r.Vm]
	}
	f.mu.Unlock()
	var all []*yunchiv1.RestorePoint
	if r.Vm == "web" {
		if calls >= 3 {
			all = append(all, drPoint("rp-00000000000000n2", "b1", 0, true))
		}
		if calls >= 1 {
			all = append(all, drPoint("rp-00000000000000n1", "a2", 0, true))
		}
		all = append(all, drPoint("rp-00000000000000a2", "a2", 42*time.Second, true),
			drPoint("rp-00000000000000b1", "b1", 75*time.Minute, false))
	}
	resp := &yunchiv1.ListRestorePointsResponse{}
	for _, p := range all {
		if r.Center == "" || p.Center == r.Center {
			resp.Points = append(resp.Points, p)
		}
	}
	return resp, nil
}

func (f *drFake) RunBackup(_ context.Context, r *yunchiv1.RunBackupRequest) (*yunchiv1.RunBackupResponse, error) {
	f.record("RunBackup", r)
	f.mu.Lock()
	f.runs[r.Vm]++
	f.mu.Unlock()
	switch r.Vm {
	case "web", "db":
		if r.Center != "" {
			return &yunchiv1.RunBackupResponse{Centers: []string{r.Center}}, nil
		}
		return &yunchiv1.RunBackupResponse{Centers: []string{"a2", "b1"}}, nil
	case "bare":
		return &yunchiv1.RunBackupResponse{}, nil
	}
	return nil, status.Errorf(codes.NotFound, "vm %q not found in project \"default\"", r.Vm)
}

func (f *drFake) RestoreVM(_ context.Context, r *yunchiv1.RestoreVMRequest) (*yunchiv1.VM, error) {
	f.record("RestoreVM", r)
	if r.Point == "rp-bad" {
		return nil, status.Errorf(codes.FailedPrecondition, "restore point %q is damaged: chunk 3f2a… of disk root fails its sha256 (see yunchi backup verify)", r.Point)
	}
	vm := cannedVM(orDefault(r.As, r.Vm+"-restored"), yunchiv1.VMPhase_VM_PHASE_PENDING, "", 30)
	vm.Center, vm.RestoredFrom = orDefault(r.Center, "a2"), orDefault(r.Point, "rp-00000000000000a2")
	return vm, nil
}

func (f *drFake) VerifyBackups(_ context.Context, r *yunchiv1.VerifyBackupsRequest) (*yunchiv1.VerifyBackupsResponse, error) {
	f.record("VerifyBackups", r)
	resp := &yunchiv1.VerifyBackupsResponse{Center: r.Center, ChunksChecked: 1200, BytesChecked: 4800 << 20, Seconds: 3.25}
	if r.Center == "b1" {
		resp.Damaged = []*yunchiv1.DamagedChunk{
			{Sha256: strings.Repeat("3f", 32), Error: "content hashes to 9c0e…"},
			{Sha256: strings.Repeat("a0", 32), Error: "missing"},
		}
		resp.DamagedPoints = []string{"rp-00000000000000b1", "rp-00000000000000b0"}
	}
	return resp, nil
}

func (f *drFake) CollectGarbage(_ context.Context, r *yunchiv1.CollectGarbageRequest) (*yunchiv1.CollectGarbageResponse, error) {
	f.record("CollectGarbage", r)
	return &yunchiv1.CollectGarbageResponse{Center: r.Center, ChunksRemoved: 12, BytesRemoved: 48 << 20, ChunksKept: 1188}, nil
}

// Mistakes on the command line are usage errors (exit 2, one line naming
// the bad part), found before any call: nothing reaches the controller.
func TestDRUsage(t *testing.T) {
	f, addr := startDRFake(t)
	pc := func(target ...string) []string {
		args := []string{"policy", "create", "p1"}
		for _, x := range target {
			args = append(args, "--target", x)
		}
		return args
	}
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"topology", "extra"}, `unexpected argument "extra"`},
		{[]string{"center", "set", "--site", "s", "--role", "production"}, "missing NAME"},
		{[]string{"center", "set", "a2", "--role", "production"}, "--site is required"},
		{[]string{"center", "set", "a2", "--site", "shanghai"}, "--role is required: production, same-city-dr or remote-dr"},
		{[]string{"center", "set", "a2", "--site", "shanghai", "--role", "dr"}, `--role "dr" is not valid: use production, same-city-dr or remote-dr`},
		{[]string{"center", "delete"}, "missing NAME"},
		{[]string{"center", "frob"}, `unknown command "frob"`},
		{[]string{"policy", "create"}, "missing NAME"},
		{[]string{"policy", "create", "P1", "--target", "b1:1h:keep-last=1"}, `name "P1" is not valid`},
		{pc(), "give at least one --target ROLE_OR_CENTER:INTERVAL"},
		{pc("same-city-dr"), `--target "same-city-dr": want ROLE_OR_CENTER:INTERVAL`},
		{pc("same-city-dr:1x:keep-last=1"), `--target "same-city-dr:1x:keep-last=1": interval: "1x" is not a duration: use e.g. 30s, 1m, 4h, 24h, 7d`},
		{pc("same-city-dr:5s:keep-last=1"), "interval 5s is out of range: give 10s to 366d"},
		{pc("same-city-dr:400d:keep-last=1"), "interval 400d is out of range"},
		{pc("same-city-dr:1500ms:keep-last=1"), `"1500ms": give whole seconds`},
		{pc("same-city-dr:-1m:keep-last=1"), `"-1m" is not a duration`},
		{pc("same-city-dr:0d:keep-last=1"), `"0d": give a duration longer than zero`},
		{pc("same-city-dr:1m"), "say how many points to keep: add :keep-last=N"},
		{pc("same-city-dr:1m:keep-weekly=4"), `"keep-weekly=4" is not valid: use keep-last=N, keep-hourly=N, keep-daily=N`},
		{pc("same-city-dr:1m:keep-last=x"), "keep-last=x: give a count from 0 to 10000"},
		{pc("same-city-dr:1m:keep-last=-1"), "keep-last=-1: give a count from 0 to 10000"},
		{pc("same-city-dr:1m:keep-last=0"), `"keep-last=0" keeps nothing: keep at least one point`},
		{pc("same-city-dr:1m:keep-last=1,keep-last=2"), "keep-last is given twice"},
		{pc("same-city-dr:1m:keep-last=1:keep-daily=2"), "give the keep-* counts in one part"},
		{pc("same-city-dr:1m:keep-last=1:rpo=soon"), `rpo: "soon" is not a duration`},
		{pc("same-city-dr:1m:keep-last=1:rpo=1m:rpo=2m"), "rpo is given twice"},
		{pc("same-city-dr:1m:keep-last=1:every=2"), `"every=2" is not valid: after INTERVAL give keep-last=N,keep-hourly=N,keep-daily=N and rpo=DUR`},
		{pc("production:1m:keep-last=1"), "backups go to DR centers: give same-city-dr, remote-dr or a center's name, not production"},
		{pc("同城灾备:1m:keep-last=1"), `write the role "同城灾备" as same-city-dr`},
		{pc("B_1:1m:keep-last=1"), `"B_1" is neither a role (same-city-dr, remote-dr) nor a center name`},
		{pc(":1m:keep-last=1"), `"" is neither a role`},
		{pc("b1:1h:keep-last=1", "b1:2h:keep-last=1"), "b1 is named twice"},
		{pc("a:1h:keep-last=1", "b:1h:keep-last=1", "c:1h:keep-last=1", "d:1h:keep-last=1", "e:1h:keep-last=1",
			"f:1h:keep-last=1", "g:1h:keep-last=1", "h:1h:keep-last=1", "i:1h:keep-last=1"), "9 targets: give at most 8"},
		{append(pc("b1:1h:keep-last=1"), "--rpo", "1 hour"), `--rpo: "1 hour" is not a duration`},
		{append(pc("b1:1h:keep-last=1"), "--rto", "0s"), `--rto: "0s": give a duration longer than zero`},
		{append(pc("b1:1h:keep-last=1"), "--level", "7"), "--level 7 is out of range: give a GB/T 20988 level, 1 to 6"},
		{append(pc("b1:1h:keep-last=1"), "--level", "0"), "--level 0 is out of range"},
		{append(pc("b1:1h:keep-last=1"), "--priority", "101"), "--priority 101 is out of range: give 0 to 100"},
		{append(pc("b1:1h:keep-last=1"), "--description", strings.Repeat("x", 1025)), "--description is longer than 1024 bytes"},
		{[]string{"policy", "show"}, "missing NAME"},
		{[]string{"policy", "delete"}, "missing NAME"},
		{[]string{"vm", "protect", "web"}, "vm protect: give --policy P (see yunchi policy list), or --none to remove the policy"},
		{[]string{"vm", "protect", "--policy", "gold"}, "missing NAME"},
		{[]string{"vm", "protect", "web", "--policy", "gold", "--none"}, "--policy gold and --none exclude each other"},
		{[]string{"project", "protect", "tax"}, "project protect: give --policy P"},
		{[]string{"project", "protect", "--none"}, "missing PROJECT"},
		{[]string{"dr", "status", "web"}, `unexpected argument "web"`},
		{[]string{"dr", "frob"}, `unknown command "frob"`},
		{[]string{"backup", "list"}, "missing VM"},
		{[]string{"backup", "restore"}, "missing VM"},
		{[]string{"backup", "run"}, "missing VM"},
		{[]string{"backup", "run", "web", "--wait", "--wait-timeout", "0s"}, "--wait-timeout must be positive"},
		{[]string{"backup", "verify"}, "backup verify: --center is required"},
		{[]string{"backup", "gc"}, "backup gc: --center is required"},
		{[]string{"backup", "gc", "a2", "--center", "a2"}, `unexpected argument "a2"`},
	} {
		code, stdout, stderr := yunchi(t, append([]string{"--addr", addr}, c.args...)...)
		if code != exitUsage || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", c.args, code, stdout, stderr)
			continue
		}
		if msg := oneErrorLine(t, stderr); !strings.Contains(msg, c.msg) {
			t.Errorf("%v: %q, want %q", c.args, msg, c.msg)
		}
	}
	if n := f.sentAny(); n != 0 {
		t.Fatalf("%d requests reached the controller: %v", n, f.reqs)
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]int64{"30s": 30, "1m": 60, "4h": 14400, "24h": 86400, "7d": 604800, "1d12h": 129600, "1h30m": 5400, "90s": 90} {
		got, err := parseDuration(in)
		if err != nil || got != want {
			t.Errorf("%s: %d, %v; want %d", in, got, err, want)
		}
		if back, _ := parseDuration(seconds(got)); back != got {
			t.Errorf("%s: printed as %s, read back as %d", in, seconds(got), back)
		}
	}
	for _, in := range []string{"", "d", "1", "1dd", "+1m", "1m-", "0s", "-1d", "1.5d", "0.5s"} {
		if got, err := parseDuration(in); err == nil {
			t.Errorf("%q: %d, want an error", in, got)
		}
	}
	for n, want := range map[int64]string{0: "-", 59: "59s", 60: "1m", 5400: "1h30m", 86400: "1d", 90061: "1d1h1m1s"} {
		if got := seconds(n); got != want {
			t.Errorf("seconds(%d) = %q, want %q", n, got, want)
		}
	}
}

// displayWidth is how many terminal cells s takes: wide (East Asian)
// characters two.
func displayWidth(s string) int {
	n := 0
	for _, r := range s {
		n++
		if unicode.Is(unicode.Han, r) {
			n++
		}
	}
	return n
}

func TestTopology(t *testing.T) {
	f, addr := startDRFake(t)
	code, stdout, stderr := yunchi(t, "--addr", addr, "topology", "--consistent")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	out := words(stdout)
	for _, want := range []string{
		// Sites, in the centers' order: hosts ready/total, voters.
		"SITE CENTERS HOSTS VOTERS",
		"hangzhou b1 1/2 1",
		"shanghai a1, a2 4/4 2",
		"- (undeclared) x9 0/1 0",
		// Centers: role in English and Chinese, allocated/capacity.
		"CENTER SITE ROLE 中心角色 HOSTS VCPUS ALLOC/CAP MEMORY ALLOC/CAP DISK ALLOC/CAP VOTERS",
		"b1 hangzhou remote-dr 异地灾备 1/2 0/64 0 B/256 GiB 0 B/8 TiB c3",
		"a1 shanghai production 生产中心 3/3 24/96 96 GiB/384 GiB 1.17 TiB/6 TiB c1, c2",
		"a2 shanghai same-city-dr 同城灾备 1/1 2/32 4 GiB/128 GiB 40 GiB/4 TiB -",
		"x9 - undeclared 尚未声明 0/1 0/8",
		// Repositories: stored against logical, the dedup ratio, free.
		"REPOSITORY MEMBER ADDRESS POINTS CHUNKS STORED LOGICAL DEDUP FREE",
		"a1 none - - - - - - -",
		"a2 c4 10.0.2.4:8470 48 1200 5 GiB 100 GiB 20.0x 2 TiB",
		"b1 c3 10.1.0.3:8470 7 - - - - unavailable: no answer within 5s",
		"WARNING: losing center a1 costs the controllers their quorum (2 of 3 voters are there)",
		"WARNING: hosts in undeclared center x9: x9-h01",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("topology lacks %q:\n%s", want, stdout)
		}
	}
	// The Chinese column keeps the columns after it aligned on a terminal.
	var block []string
	for _, l := range strings.Split(stdout, "\n") {
		if strings.HasPrefix(l, "CENTER ") {
			block = append(block, l)
		} else if len(block) > 0 && l == "" {
			break
		} else if len(block) > 0 {
			block = append(block, l)
		}
	}
	col := regexp.MustCompile(`\S+(?: \S+)*`)
	at := -1
	for _, l := range block {
		cells := col.FindAllStringIndex(l, -1)
		if len(cells) < 5 {
			t.Fatalf("short row %q", l)
		}
		w := displayWidth(l[:cells[4][0]]) // where HOSTS starts
		if at >= 0 && w != at {
			t.Errorf("HOSTS column at cell %d in %q, %d above", w, l, at)
		}
		at = w
	}
	if len(block) != 5 {
		t.Errorf("centers table: %q", block)
	}
	if r := f.sent("GetTopology"); len(r) != 1 || !r[0].(*yunchiv1.GetTopologyRequest).Consistent {
		t.Errorf("requests: %v", r)
	}

	code, stdout, _ = yunchi(t, "--addr", addr, "topology", "-o", "json")
	var topo yunchiv1.Topology
	if code != 0 || unmarshalJSON(stdout, &topo) != nil || !proto.Equal(&topo, drTopology()) {
		t.Fatalf("topology -o json: exit %d:\n%s", code, stdout)
	}
}

// unmarshalJSON reads what -o json printed back into the message.
func unmarshalJSON(s string, m proto.Message) error {
	return protojson.Unmarshal([]byte(s), m)
}

func TestCenterSetAndDelete(t *testing.T) {
	f, addr := startDRFake(t)
	code, stdout, stderr := yunchi(t, "--addr", addr, "center", "set", "a2", "--site", "shanghai", "--role", "同城灾备",
		"--description", "Songjiang hall", "--repository", "c4")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := &yunchiv1.SetCenterRequest{Name: "a2", Site: "shanghai", Role: yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR, Description: "Songjiang hall", RepositoryMember: "c4"}
	if r := f.sent("SetCenter"); len(r) != 1 || !proto.Equal(r[0], want) {
		t.Errorf("sent %v, want %v", r, want)
	}
	for _, w := range []string{"Name: a2", "Site: shanghai", "Role: same-city-dr (同城灾备)", "Description: Songjiang hall", "Hosts: 1/1 ready", "Repository: c4 at 10.0.2.4:8470", "Revision: 42"} {
		if !strings.Contains(words(stdout), w) {
			t.Errorf("center set output lacks %q:\n%s", w, stdout)
		}
	}
	code, stdout, _ = yunchi(t, "--addr", addr, "center", "set", "b1", "--site", "hangzhou", "--role", "remote-dr", "-o", "json")
	var c yunchiv1.Center
	if code != 0 || unmarshalJSON(stdout, &c) != nil || c.Role != yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR || !strings.Contains(stdout, `"CENTER_ROLE_REMOTE_DR"`) {
		t.Errorf("center set -o json: exit %d %s", code, stdout)
	}
	for _, x := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"center", "set", "a2", "--site", "shanghai", "--role", "production", "--repository", "c1"}, exitUsage, `repository controller "c1" is in center "a1", not "a2": a center's backups are kept in that center`},
		{[]string{"center", "delete", "zz"}, exitNotFound, `center "zz" not found (see ` + "`yunchi topology`)"},
	} {
		code, stdout, stderr := yunchi(t, append([]string{"--addr", addr}, x.args...)...)
		if code != x.code || stdout != "" || oneErrorLine(t, stderr) != x.msg {
			t.Errorf("%v: exit %d stdout %q stderr %q; want %d %q", x.args, code, stdout, stderr, x.code, x.msg)
		}
	}
	if code, stdout, _ := yunchi(t, "--addr", addr, "center", "rm", "x9"); code != 0 || stdout != "center x9 deleted\n" {
		t.Errorf("center rm: exit %d %q", code, stdout)
	}
}

func TestPolicyCommands(t *testing.T) {
	f, addr := startDRFake(t)
	must := func(args ...string) string {
		t.Helper()
		code, stdout, stderr := yunchi(t, append([]string{"--addr", addr}, args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
		return stdout
	}
	out := words(must("policy", "list"))
	for _, w := range []string{
		"NAME BUILTIN TARGETS RPO RTO LEVEL VMS PROJECTS",
		"gold yes same-city-dr/1m, remote-dr/1h 1m 30m 5 2 1",
		"silver yes same-city-dr/4h, remote-dr/1d 4h 4h 4 0 0",
		"payroll no b1/1h30m 1m30s - - 1 0",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("policy list lacks %q:\n%s", w, out)
		}
	}
	out = words(must("policy", "show", "gold"))
	for _, w := range []string{"Name: gold", "Built in: yes", "RPO: 1m", "RTO: 30m", "Priority: 30", "Level: 5 (GB/T 20988)", "Protects: 2 VMs, 1 project",
		"TARGET INTERVAL RPO KEEP", "every same-city-dr center 1m 1m hourly 24, daily 7", "every remote-dr center 1h 1h hourly 24, daily 7"} {
		if !strings.Contains(out, w) {
			t.Errorf("policy show lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "Created") {
		t.Errorf("a built-in policy shows a creation time:\n%s", out)
	}
	if out := words(must("policy", "show", "silver")); !strings.Contains(out, "every same-city-dr center 4h 4h daily 7") {
		t.Errorf("a target without its own RPO shows its interval as RPO:\n%s", out)
	}

	out = words(must("policy", "create", "payroll", "--target", "same-city-dr:1m:keep-last=60,keep-hourly=24,keep-daily=7",
		"--target", "b1:24h:rpo=1d12h:keep-daily=7", "--rpo", "2m", "--rto", "1h", "--priority", "50", "--level", "5", "--description", "the payroll system"))
	want := &yunchiv1.Policy{Name: "payroll", RpoSeconds: 120, RtoSeconds: 3600, Priority: 50, Level: 5, Description: "the payroll system",
		Targets: []*yunchiv1.PolicyTarget{
			{Role: yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR, IntervalSeconds: 60, Retention: &yunchiv1.Retention{KeepLast: 60, KeepHourly: 24, KeepDaily: 7}},
			{Center: "b1", IntervalSeconds: 86400, RpoSeconds: 129600, Retention: &yunchiv1.Retention{KeepDaily: 7}},
		}}
	if r := f.sent("CreatePolicy"); len(r) != 1 || !proto.Equal(r[0].(*yunchiv1.CreatePolicyRequest).Policy, want) {
		t.Errorf("sent %v\nwant %v", r, want)
	}
	for _, w := range []string{"Name: payroll", "Built in: no", "RPO: 2m", "Level: 5 (GB/T 20988)", "Created:",
		"every same-city-dr center 1m 1m last 60, hourly 24, daily 7", "center b1 1d 1d12h daily 7"} {
		if !strings.Contains(out, w) {
			t.Errorf("policy create output lacks %q:\n%s", w, out)
		}
	}
	// Flags left out are left out of the request.
	must("policy", "create", "min", "--target", "remote-dr:1h:keep-last=1")
	if r := f.sent("CreatePolicy"); len(r) != 2 || !proto.Equal(r[1].(*yunchiv1.CreatePolicyRequest).Policy, &yunchiv1.Policy{Name: "min",
		Targets: []*yunchiv1.PolicyTarget{{Role: yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR, IntervalSeconds: 3600, Retention: &yunchiv1.Retention{KeepLast: 1}}}}) {
		t.Errorf("sent %v", r)
	}

	var list yunchiv1.ListPoliciesResponse
	if err := unmarshalJSON(must("policy", "list", "-o", "json"), &list); err != nil || len(list.Policies) != 3 || list.Policies[0].Name != "gold" {
		t.Errorf("policy list -o json: %v %v", err, &list)
	}
	if out := must("policy", "rm", "payroll"); out != "policy payroll deleted\n" {
		t.Errorf("policy delete: %q", out)
	}
	for _, x := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"policy", "delete", "gold"}, exitFailed, `policy "gold" is built in: it cannot be deleted`},
		{[]string{"policy", "show", "nope"}, exitNotFound, `policy "nope" not found`},
		{[]string{"policy", "create", "gold", "--target", "b1:1h:keep-last=1"}, exitExists, `policy "gold" is built in: choose another name`},
	} {
		code, stdout, stderr := yunchi(t, append([]string{"--addr", addr}, x.args...)...)
		if code != x.code || stdout != "" || oneErrorLine(t, stderr) != x.msg {
			t.Errorf("%v: exit %d stdout %q stderr %q; want %d %q", x.args, code, stdout, stderr, x.code, x.msg)
		}
	}
}

func TestProtect(t *testing.T) {
	f, addr := startDRFake(t)
	for _, x := range []struct {
		args []string
		out  string
		req  proto.Message
	}{
		{[]string{"vm", "protect", "web", "--policy", "gold"}, "vm web protected by gold\n", &yunchiv1.ProtectVMRequest{Name: "web", Policy: "gold"}},
		{[]string{"vm", "protect", "web", "--policy", "silver", "-p", "tax"}, "vm web protected by silver\n", &yunchiv1.ProtectVMRequest{Name: "web", Project: "tax", Policy: "silver"}},
		{[]string{"vm", "protect", "web", "--none"}, "vm web: its own policy removed (it inherits its project's, if any)\n", &yunchiv1.ProtectVMRequest{Name: "web"}},
		{[]string{"vm", "protect", "web", "--policy", ""}, "vm web: its own policy removed (it inherits its project's, if any)\n", &yunchiv1.ProtectVMRequest{Name: "web"}},
		{[]string{"vm", "protect", "web", "--policy=", "--none"}, "vm web: its own policy removed (it inherits its project's, if any)\n", &yunchiv1.ProtectVMRequest{Name: "web"}},
		{[]string{"project", "protect", "tax", "--policy", "gold"}, "project tax protected by gold (its VMs without their own policy)\n", &yunchiv1.ProtectProjectRequest{Project: "tax", Policy: "gold"}},
		{[]string{"project", "protect", "tax", "--none"}, "project tax: policy removed\n", &yunchiv1.ProtectProjectRequest{Project: "tax"}},
	} {
		before := len(f.sent("ProtectVM")) + len(f.sent("ProtectProject"))
		code, stdout, stderr := yunchi(t, append([]string{"--addr", addr}, x.args...)...)
		if code != 0 || stdout != x.out {
			t.Errorf("%v: exit %d, %q %q; want %q", x.args, code, stdout, stderr, x.out)
			continue
		}
		all := append(f.sent("ProtectVM"), f.sent("ProtectProject")...)
		if len(all) != before+1 {
			t.Errorf("%v: %d requests, want %d", x.args, len(all), before+1)
			continue
		}
		found := false
		for _, r := range all {
			found = found || proto.Equal(r, x.req)
		}
		if !found {
			t.Errorf("%v: sent %v, want %v", x.args, all, x.req)
		}
	}
	code, stdout, _ := yunchi(t, "--addr", addr, "-o", "json", "vm", "protect", "web", "--policy", "gold")
	var p yunchiv1.Protection
	if code != 0 || unmarshalJSON(stdout, &p) != nil || !proto.Equal(&p, &yunchiv1.Protection{Project: "default", Vm: "web", Policy: "gold"}) {
		t.Errorf("vm protect -o json: %d %s", code, stdout)
	}
	code, stdout, stderr := yunchi(t, "--addr", addr, "vm", "protect", "nope", "--policy", "gold")
	if code != exitNotFound || stdout != "" || oneErrorLine(t, stderr) != `vm "nope" not found in project "default"` {
		t.Errorf("protect of a missing VM: %d %q %q", code, stdout, stderr)
	}
}

func TestDRStatus(t *testing.T) {
	f, addr := startDRFake(t)
	code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "status")
	if code != 0 || stderr != "" {
		t.Fatalf("dr status: exit %d %q", code, stderr)
	}
	out := words(stdout)
	for _, w := range []string{
		"VM PROJECT POLICY CENTER NEWEST POINT RPO ACHIEVED/OBJECTIVE STATE",
		"web default gold a2 42s ago 42s/1m ok",
		"web default gold b1 1h ago 1h15m/1h VIOLATION, failed: repository c3: no answer within 5s (2 attempts, next in 30s)",
		"db tax gold (project) a2 - -/1m no point yet (backing up)",
		"db tax gold (project) b1 - -/1h no point yet",
		"2 VMs protected, 4 targets: 1 violation",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("dr status lacks %q:\n%s", w, stdout)
		}
	}
	// --check: the same table, then exit 12 naming the violation.
	code, stdout2, stderr := yunchi(t, "--addr", addr, "dr", "status", "--check")
	if code != exitRPOViolation || words(stdout2) != out {
		t.Fatalf("dr status --check: exit %d, want %d; stdout:\n%s", code, exitRPOViolation, stdout2)
	}
	if msg := oneErrorLine(t, stderr); msg != "1 RPO violation (first: vm default/web in b1: newest point 1h15m old, objective 1h)" {
		t.Errorf("--check: %q", msg)
	}
	// Filters go to the controller; no violation: --check exits 0.
	code, stdout, stderr = yunchi(t, "--addr", addr, "dr", "status", "--project", "tax", "--vm", "db", "--check")
	if code != 0 || stderr != "" || !strings.Contains(words(stdout), "1 VM protected, 2 targets: no violations") {
		t.Errorf("dr status of db: exit %d %q\n%s", code, stderr, stdout)
	}
	if r := f.sent("GetDRStatus"); len(r) != 3 || !proto.Equal(r[2], &yunchiv1.GetDRStatusRequest{Project: "tax", Vm: "db"}) {
		t.Errorf("sent %v", r)
	}
	code, stdout, _ = yunchi(t, "--addr", addr, "dr", "status", "--vm", "nothing")
	if code != 0 || !strings.Contains(stdout, "No protected VMs") {
		t.Errorf("dr status, nothing protected: %d %q", code, stdout)
	}
	// JSON: the DRStatus message; --check still says so by its exit code.
	code, stdout, _ = yunchi(t, "--addr", addr, "dr", "status", "-o", "json", "--check")
	var st yunchiv1.DRStatus
	if code != exitRPOViolation || unmarshalJSON(stdout, &st) != nil || st.Violations != 1 || len(st.Vms) != 2 {
		t.Errorf("dr status -o json --check: exit %d\n%s", code, stdout)
	}
}

func TestBackupListAndRestore(t *testing.T) {
	f, addr := startDRFake(t)
	code, stdout, stderr := yunchi(t, "--addr", addr, "backup", "list", "web")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	out := words(stdout)
	for _, w := range []string{
		"ID CENTER TAKEN SIZE NEW BYTES KIND CHUNKS READ/TOTAL",
		`rp-00000000000000a2 a2 \S+Z \(42s ago\) 20 GiB 12 MiB incremental 5/5120`,
		`rp-00000000000000b1 b1 \S+Z \(1h ago\) 20 GiB 20 GiB full 5120/5120`,
	} {
		if !regexp.MustCompile(w).MatchString(out) {
			t.Errorf("backup list lacks %q:\n%s", w, stdout)
		}
	}
	if m := regexp.MustCompile(`rp-00000000000000a2 a2 (\S+Z)`).FindStringSubmatch(out); m != nil {
		taken, err := time.Parse(time.RFC3339, m[1])
		if d := time.Since(taken); err != nil || d < 41*time.Second || d > 50*time.Second {
			t.Errorf("backup list: taken %s (%v), want 42s ago", m[1], err)
		}
	}
	code, stdout, _ = yunchi(t, "--addr", addr, "backup", "list", "web", "--center", "b1", "-p", "default", "-o", "json")
	var list yunchiv1.ListRestorePointsResponse
	if code != 0 || unmarshalJSON(stdout, &list) != nil || len(list.Points) != 1 || list.Points[0].Center != "b1" {
		t.Errorf("backup list --center b1 -o json: %d\n%s", code, stdout)
	}
	if r := f.sent("ListRestorePoints"); len(r) != 2 || !proto.Equal(r[1], &yunchiv1.ListRestorePointsRequest{Vm: "web", Project: "default", Center: "b1"}) {
		t.Errorf("sent %v", r)
	}
	if code, stdout, _ := yunchi(t, "--addr", addr, "backup", "list", "db"); code != 0 || stdout != "No restore points.\n" {
		t.Errorf("backup list of a VM without points: %d %q", code, stdout)
	}

	// Restore as a new VM into b1, waiting until it runs.
	f.vms.script("web-back",
		ev(cannedVM("web-back", yunchiv1.VMPhase_VM_PHASE_PENDING, "", 30)),
		ev(cannedVM("web-back", yunchiv1.VMPhase_VM_PHASE_PENDING, "b1-h01", 31)),
		ev(cannedVM("web-back", yunchiv1.VMPhase_VM_PHASE_RUNNING, "b1-h01", 32)),
	)
	code, stdout, stderr = yunchi(t, "--addr", addr, "backup", "restore", "web", "--point", "rp-00000000000000b1", "--center", "b1", "--as", "web-back", "--wait")
	if code != 0 {
		t.Fatalf("restore --wait: exit %d: %s", code, stderr)
	}
	wantProgress := "web-back: restoring from rp-00000000000000b1\nweb-back: waiting for placement…\nweb-back: placed on b1-h01, starting…\nweb-back: running on b1-h01 (center a1)\n"
	if stderr != wantProgress {
		t.Errorf("progress:\n%s\nwant:\n%s", stderr, wantProgress)
	}
	if !strings.Contains(words(stdout), "Name: web-back") || !strings.Contains(words(stdout), "Phase: running") {
		t.Errorf("restore output:\n%s", stdout)
	}
	if r := f.sent("RestoreVM"); len(r) != 1 || !proto.Equal(r[0], &yunchiv1.RestoreVMRequest{Vm: "web", Point: "rp-00000000000000b1", Center: "b1", As: "web-back"}) {
		t.Errorf("sent %v", r)
	}
	// Without --wait: the new VM as the controller answered.
	code, stdout, _ = yunchi(t, "--addr", addr, "-o", "json", "backup", "restore", "web")
	var vm yunchiv1.VM
	if code != 0 || unmarshalJSON(stdout, &vm) != nil || vm.Name != "web-restored" || vm.RestoredFrom != "rp-00000000000000a2" {
		t.Errorf("restore -o json: %d\n%s", code, stdout)
	}
	code, stdout, stderr = yunchi(t, "--addr", addr, "backup", "restore", "web", "--point", "rp-bad")
	if code != exitFailed || stdout != "" || !strings.Contains(oneErrorLine(t, stderr), `restore point "rp-bad" is damaged`) {
		t.Errorf("restore of a damaged point: %d %q %q", code, stdout, stderr)
	}
}

func TestBackupRun(t *testing.T) {
	t.Run("no wait", func(t *testing.T) {
		f, addr := startDRFake(t)
		code, stdout, _ := yunchi(t, "--addr", addr, "backup", "run", "web")
		if code != 0 || stdout != "vm web: backup started to a2, b1\n" {
			t.Errorf("exit %d %q", code, stdout)
		}
		code, stdout, _ = yunchi(t, "--addr", addr, "backup", "run", "bare")
		if code != 0 || stdout != "vm bare: no backup started (no target center)\n" {
			t.Errorf("exit %d %q", code, stdout)
		}
		if r := f.sent("RunBackup"); len(r) != 2 || len(f.sent("ListRestorePoints")) != 0 {
			t.Errorf("sent %v and %d lists", r, len(f.sent("ListRestorePoints")))
		}
	})
	t.Run("wait for both centers", func(t *testing.T) {
		// b1's job was FAILED before the run and still is while its new
		// point comes: an old failure does not end the wait.
		f, addr := startDRFake(t)
		code, stdout, stderr := yunchi(t, "--addr", addr, "backup", "run", "web", "--wait")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		wantErr := "web: backing up to a2, b1…\n" +
			"web: a2: restore point rp-00000000000000n1 (20 GiB, 12 MiB new, incremental, 2.1s)\n" +
			"web: b1: restore point rp-00000000000000n2 (20 GiB, 12 MiB new, incremental, 2.1s)\n"
		if stderr != wantErr {
			t.Errorf("progress:\n%s\nwant:\n%s", stderr, wantErr)
		}
		out := words(stdout)
		if !strings.Contains(out, "rp-00000000000000n1 a2") || !strings.Contains(out, "rp-00000000000000n2 b1") || strings.Contains(out, "rp-00000000000000a2") {
			t.Errorf("output: the new points only:\n%s", stdout)
		}
		if n := len(f.sent("ListRestorePoints")); n != 4 { // before, then until b1's shows
			t.Errorf("%d lists, want 4", n)
		}
	})
	t.Run("a backup fails", func(t *testing.T) {
		_, addr := startDRFake(t)
		code, stdout, stderr := yunchi(t, "--addr", addr, "backup", "run", "db", "--project", "tax", "--center", "b1", "--wait")
		if code != exitFailed || stdout != "" {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		if len(lines) != 2 || lines[0] != "db: backing up to b1…" || lines[1] != "yunchi: backup of vm db to b1 failed: agent b1-h01: disk read error" {
			t.Errorf("stderr:\n%s", stderr)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		_, addr := startDRFake(t)
		// web's a2 point comes, but db's never does (and no job fails).
		code, stdout, stderr := yunchi(t, "--addr", addr, "backup", "run", "db", "--project", "tax", "--center", "a2", "--wait", "--wait-timeout", "1s")
		if code != exitError || stdout != "" || !strings.HasSuffix(stderr, "yunchi: timed out after 1s waiting for the backup of vm db to a2; it may still finish, see 'yunchi dr status --vm db'\n") {
			t.Errorf("exit %d stdout %q stderr %q", code, stdout, stderr)
		}
	})
}

func TestBackupVerifyAndGC(t *testing.T) {
	f, addr := startDRFake(t)
	code, stdout, stderr := yunchi(t, "--addr", addr, "backup", "verify", "--center", "a2")
	if code != 0 || stderr != "" {
		t.Fatalf("verify a2: exit %d %q", code, stderr)
	}
	if out := words(stdout); out != "Center: a2 Checked: 1200 chunks, 4.69 GiB, in 3.25s Damaged: none" {
		t.Errorf("verify a2:\n%s", stdout)
	}
	code, stdout, stderr = yunchi(t, "--addr", addr, "backup", "verify", "--center", "b1")
	if code != exitBackupDamaged {
		t.Fatalf("verify b1: exit %d, want %d (%s)", code, exitBackupDamaged, stderr)
	}
	if msg := oneErrorLine(t, stderr); msg != "the repository of center b1 is damaged: 2 damaged chunks, 0 damaged manifests; 2 restore points cannot be restored" {
		t.Errorf("verify b1: %q", msg)
	}
	for _, w := range []string{
		"Damaged: 2 chunks, 0 manifests; 2 restore points cannot be restored",
		"DAMAGED CHUNK ERROR",
		strings.Repeat("3f", 32) + " content hashes to 9c0e…",
		strings.Repeat("a0", 32) + " missing",
		"RESTORE POINT THAT CANNOT BE RESTORED rp-00000000000000b1 rp-00000000000000b0",
	} {
		if !strings.Contains(words(stdout), w) {
			t.Errorf("verify b1 lacks %q:\n%s", w, stdout)
		}
	}
	// One damaged chunk per line.
	if n := strings.Count(stdout, "\n"+strings.Repeat("3f", 32)); n != 1 {
		t.Errorf("chunk 3f… on %d lines:\n%s", n, stdout)
	}
	code, stdout, _ = yunchi(t, "--addr", addr, "-o", "json", "backup", "verify", "--center", "b1")
	var v yunchiv1.VerifyBackupsResponse
	if code != exitBackupDamaged || unmarshalJSON(stdout, &v) != nil || len(v.Damaged) != 2 {
		t.Errorf("verify -o json: exit %d\n%s", code, stdout)
	}
	// The global --timeout does not cut a verify short (it reads the
	// whole repository); the fake answers at once either way.
	if code, _, _ := yunchi(t, "--addr", addr, "--timeout", "1ns", "backup", "verify", "--center", "a2"); code != 0 {
		t.Errorf("verify with --timeout 1ns: exit %d", code)
	}

	code, stdout, _ = yunchi(t, "--addr", addr, "backup", "gc", "--center", "a2")
	if code != 0 || stdout != "center a2: 12 chunks removed (48 MiB), 1188 kept\n" {
		t.Errorf("gc: %d %q", code, stdout)
	}
	if r := f.sent("CollectGarbage"); len(r) != 1 || !proto.Equal(r[0], &yunchiv1.CollectGarbageRequest{Center: "a2"}) {
		t.Errorf("sent %v", r)
	}
}

// The help of commands with their own exit codes names the right ones,
// and every new command's help shows.
func TestDRHelp(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	find := func(path ...string) *cli.Command {
		cmds := app.Commands
		var c *cli.Command
		for _, name := range path {
			c = nil
			for _, x := range cmds {
				if x.Name == name {
					c = x
				}
			}
			if c == nil {
				t.Fatalf("no command %v", path)
			}
			cmds = c.Subcommands
		}
		return c
	}
	if d := find("dr", "status").Description; !strings.Contains(d, fmt.Sprintf("exits %d when any target is in violation", exitRPOViolation)) {
		t.Errorf("dr status help: %q", d)
	}
	if d := find("backup", "verify").Description; !strings.Contains(d, fmt.Sprintf("Exits %d when anything is damaged", exitBackupDamaged)) {
		t.Errorf("backup verify help: %q", d)
	}
	if !strings.Contains(exitCodesHelp, fmt.Sprintf("%d  dr status --check", exitRPOViolation)) || !strings.Contains(exitCodesHelp, fmt.Sprintf("%d  backup verify", exitBackupDamaged)) {
		t.Errorf("exit codes help: %s", exitCodesHelp)
	}
	for _, args := range [][]string{{"topology", "--help"}, {"center"}, {"center", "set", "-h"}, {"policy"}, {"policy", "create", "--help"},
		{"vm", "protect", "--help"}, {"project", "protect", "--help"}, {"dr"}, {"dr", "status", "--help"}, {"backup"}, {"backup", "run", "--help"}} {
		code, stdout, stderr := yunchi(t, args...)
		if code != 0 || stderr != "" || !strings.Contains(stdout, "USAGE") {
			t.Errorf("%v: exit %d stderr %q stdout %q", args, code, stderr, stdout)
		}
	}
}
