package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// recoveryFake answers RecoveryService (and GetDRStatus) like a leader
// running scripted runs: a started run answers with the first state of
// its script, and each GetDRRun moves one state on (then stays on the
// last). It keeps the first outcome of each idempotency key, as the
// controllers do, and records every request. The real RecoveryService
// is the controller's (controller/api).
type recoveryFake struct {
	yunchiv1.UnimplementedRecoveryServiceServer
	yunchiv1.UnimplementedProtectionServiceServer

	mu   sync.Mutex
	reqs map[string][]proto.Message // by method name
	keys map[string][]string        // idempotency key of each request, by method
	// byKey is the first outcome of each key: a resend gets it again.
	byKey map[string]*yunchiv1.DRRun
	// script is the states of the next run started; plan is what a dry
	// run answers.
	script  []*yunchiv1.DRRun
	plan    *yunchiv1.DRRun
	scripts map[string][]*yunchiv1.DRRun // by run id
	gets    map[string]int               // next state of each run
	started int                          // runs started (dry runs not counted)
	// lostAnswers: a start is applied, then answered Unavailable this many
	// times (a connection that broke after the request went out).
	lostAnswers int
	// unavailableGets: GetDRRun answers Unavailable this many times;
	// getErr, if set, is every GetDRRun's answer.
	unavailableGets int
	getErr          error
	runs            []*yunchiv1.DRRun
	schedules       []*yunchiv1.DrillSchedule
	status          *yunchiv1.DRStatus
}

func startRecoveryFake(t *testing.T) (*recoveryFake, string) {
	t.Helper()
	f := &recoveryFake{reqs: map[string][]proto.Message{}, keys: map[string][]string{}, byKey: map[string]*yunchiv1.DRRun{},
		scripts: map[string][]*yunchiv1.DRRun{}, gets: map[string]int{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	yunchiv1.RegisterRecoveryServiceServer(srv, f)
	yunchiv1.RegisterProtectionServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	// Runs move on a step per look: no need to look only twice a second.
	old := drPoll
	drPoll = 10 * time.Millisecond
	t.Cleanup(func() { drPoll = old })
	return f, lis.Addr().String()
}

func (f *recoveryFake) record(ctx context.Context, method string, m proto.Message) string {
	key := ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(idempotencyKey); len(v) > 0 {
			key = v[0]
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs[method] = append(f.reqs[method], proto.Clone(m))
	f.keys[method] = append(f.keys[method], key)
	return key
}

func (f *recoveryFake) sent(method string) []proto.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs[method]
}

func (f *recoveryFake) sentKeys(method string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.keys[method]
}

func (f *recoveryFake) sentAny() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.reqs {
		n += len(r)
	}
	return n
}

func (f *recoveryFake) set(fn func(f *recoveryFake)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// start answers Failover, Failback and StartDrill.
func (f *recoveryFake) start(key string, dry bool) (*yunchiv1.DRRun, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r, ok := f.byKey[key]; ok && key != "" {
		return proto.Clone(r).(*yunchiv1.DRRun), nil
	}
	var run *yunchiv1.DRRun
	switch {
	case dry:
		run = f.plan
	case len(f.script) == 0:
		return nil, status.Error(codes.FailedPrecondition, "nothing scripted")
	default:
		run = f.script[0]
		f.scripts[run.Id], f.gets[run.Id] = f.script, 1
		f.script = nil
		f.started++
	}
	f.byKey[key] = run
	if f.lostAnswers > 0 {
		f.lostAnswers--
		return nil, status.Error(codes.Unavailable, "connection reset")
	}
	return proto.Clone(run).(*yunchiv1.DRRun), nil
}

func (f *recoveryFake) Failover(ctx context.Context, r *yunchiv1.FailoverRequest) (*yunchiv1.DRRun, error) {
	key := f.record(ctx, "Failover", r)
	if r.FromCenter == "zz" {
		return nil, status.Errorf(codes.NotFound, "center %q not found (see yunchi topology)", r.FromCenter)
	}
	return f.start(key, r.DryRun)
}

func (f *recoveryFake) Failback(ctx context.Context, r *yunchiv1.FailbackRequest) (*yunchiv1.DRRun, error) {
	return f.start(f.record(ctx, "Failback", r), r.DryRun)
}

func (f *recoveryFake) StartDrill(ctx context.Context, r *yunchiv1.DrillRequest) (*yunchiv1.DRRun, error) {
	return f.start(f.record(ctx, "StartDrill", r), r.DryRun)
}

func (f *recoveryFake) GetDRRun(ctx context.Context, r *yunchiv1.GetDRRunRequest) (*yunchiv1.DRRun, error) {
	f.record(ctx, "GetDRRun", r)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.getErr != nil {
		return nil, f.getErr
	}
	if f.unavailableGets > 0 {
		f.unavailableGets--
		return nil, status.Error(codes.Unavailable, "no leader: election in progress")
	}
	s, ok := f.scripts[r.Id]
	if !ok {
		for _, run := range f.runs {
			if run.Id == r.Id {
				return proto.Clone(run).(*yunchiv1.DRRun), nil
			}
		}
		return nil, status.Errorf(codes.NotFound, "run %q not found", r.Id)
	}
	i := min(f.gets[r.Id], len(s)-1)
	f.gets[r.Id]++
	return proto.Clone(s[i]).(*yunchiv1.DRRun), nil
}

func (f *recoveryFake) ListDRRuns(ctx context.Context, r *yunchiv1.ListDRRunsRequest) (*yunchiv1.ListDRRunsResponse, error) {
	f.record(ctx, "ListDRRuns", r)
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &yunchiv1.ListDRRunsResponse{}
	for _, run := range f.runs {
		if (r.Kind == "" || run.Kind == r.Kind) && (r.Project == "" || run.Project == r.Project) {
			x := proto.Clone(run).(*yunchiv1.DRRun)
			x.Vms = nil
			resp.Runs = append(resp.Runs, x)
		}
	}
	return resp, nil
}

func (f *recoveryFake) ListDrillSchedules(ctx context.Context, r *yunchiv1.ListDrillSchedulesRequest) (*yunchiv1.ListDrillSchedulesResponse, error) {
	f.record(ctx, "ListDrillSchedules", r)
	f.mu.Lock()
	defer f.mu.Unlock()
	return &yunchiv1.ListDrillSchedulesResponse{Schedules: f.schedules}, nil
}

func (f *recoveryFake) DeleteDrillSchedule(ctx context.Context, r *yunchiv1.DeleteDrillScheduleRequest) (*yunchiv1.DeleteDrillScheduleResponse, error) {
	f.record(ctx, "DeleteDrillSchedule", r)
	if r.Id != "a1/tax" {
		return nil, status.Errorf(codes.NotFound, "drill schedule %q not found", r.Id)
	}
	return &yunchiv1.DeleteDrillScheduleResponse{}, nil
}

func (f *recoveryFake) GetDRStatus(ctx context.Context, r *yunchiv1.GetDRStatusRequest) (*yunchiv1.DRStatus, error) {
	f.record(ctx, "GetDRStatus", r)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status, nil
}

// --- scripted runs ---

var runStart = time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)

// snap copies run with its VMs replaced and the changes made by fn.
func snap(run *yunchiv1.DRRun, fn func(r *yunchiv1.DRRun), vms ...*yunchiv1.DRRunVM) *yunchiv1.DRRun {
	r := proto.Clone(run).(*yunchiv1.DRRun)
	r.Vms = nil
	for _, v := range vms {
		r.Vms = append(r.Vms, proto.Clone(v).(*yunchiv1.DRRunVM))
	}
	if fn != nil {
		fn(r)
	}
	return r
}

// at is v at a step, with the changes made by fn.
func at(v *yunchiv1.DRRunVM, step string, fn func(v *yunchiv1.DRRunVM)) *yunchiv1.DRRunVM {
	x := proto.Clone(v).(*yunchiv1.DRRunVM)
	x.Step = step
	if fn != nil {
		fn(x)
	}
	return x
}

func onHost(h string, rto, loss int64) func(v *yunchiv1.DRRunVM) {
	return func(v *yunchiv1.DRRunVM) { v.Host, v.Center, v.RtoMillis, v.DataLossMillis = h, h[:2], rto, loss }
}

func ended(state string, done, failed, skipped int32, p50, p99, maxRTO, loss, elapsed int64) func(r *yunchiv1.DRRun) {
	return func(r *yunchiv1.DRRun) {
		r.State, r.VmsDone, r.VmsFailed, r.VmsSkipped = state, done, failed, skipped
		r.RtoP50Millis, r.RtoP99Millis, r.RtoMaxMillis, r.MaxDataLossMillis, r.ElapsedMillis = p50, p99, maxRTO, loss, elapsed
		r.FinishedAt = timestamppb.New(runStart.Add(time.Duration(elapsed) * time.Millisecond))
	}
}

var (
	web = &yunchiv1.DRRunVM{Vm: "web-1", Project: "default", Policy: "gold", Priority: 30, Point: "rp-00000000000000a2", PointCenter: "a2",
		PointTakenAt: timestamppb.New(runStart.Add(-38 * time.Second)), FromCenter: "a1", FromHost: "a1-h07", DataLossMillis: 38000}
	db = &yunchiv1.DRRunVM{Vm: "db-1", Project: "tax", Policy: "platinum", Priority: 40, Mirror: true, FromCenter: "a1", FromHost: "a1-h02"}
	// app-3 does not fit; its reason carries markup, which HTML must escape.
	app = &yunchiv1.DRRunVM{Vm: "app-3", Project: "default", Policy: "silver", Step: "skipped",
		Reason: `no host in a2 has 8 vCPUs free <script>alert("x")</script> & more`}
)

// failoverScript: web-1 starts and runs, then db-1 (from its mirror);
// final is how it ends: succeeded, partial (app-3 skipped) or failed
// (both fail, app-3 skipped).
func failoverScript(final string) []*yunchiv1.DRRun {
	base := &yunchiv1.DRRun{Id: "dr-00000000000000f1", Kind: "failover", State: "running", FromCenter: "a1", ToCenter: "a2",
		RequestedBy: "admin", StartedAt: timestamppb.New(runStart)}
	extra := []*yunchiv1.DRRunVM{}
	if final != "succeeded" {
		extra = append(extra, app)
	}
	vms := func(vs ...*yunchiv1.DRRunVM) []*yunchiv1.DRRunVM { return append(vs, extra...) }
	s := []*yunchiv1.DRRun{
		snap(base, nil, vms(at(web, "pending", nil), at(db, "pending", nil))...),
		snap(base, nil, vms(at(web, "starting", onHost("a2-h03", 0, 38000)), at(db, "pending", nil))...),
	}
	switch final {
	case "failed":
		bad := func(v *yunchiv1.DRRunVM) { v.Reason = "restore: chunk 3f2a… missing in a2" }
		s = append(s,
			snap(base, nil, vms(at(web, "failed", bad), at(db, "starting", onHost("a2-h01", 0, 0)))...),
			snap(base, ended("failed", 0, 2, 1, 0, 0, 0, 0, 9000), vms(at(web, "failed", bad), at(db, "failed", func(v *yunchiv1.DRRunVM) { v.Reason = "mirror not in sync" }))...))
	default:
		skipped := int32(len(extra))
		s = append(s,
			snap(base, nil, vms(at(web, "running", onHost("a2-h03", 4200, 38000)), at(db, "starting", onHost("a2-h01", 0, 0)))...),
			snap(base, ended(final, 2, 0, skipped, 4200, 6100, 6100, 38000, 6300),
				vms(at(web, "running", onHost("a2-h03", 4200, 38000)), at(db, "running", onHost("a2-h01", 6100, 0)))...))
	}
	return s
}

// The report and the exit code follow how the run ended; progress lines
// say each VM's steps on stderr, in the order they came.
func TestDRFailover(t *testing.T) {
	for _, c := range []struct {
		final    string
		code     int
		progress []string
		report   []string
		errLine  string
	}{
		{
			final: "succeeded", code: 0,
			progress: []string{
				"failover dr-00000000000000f1 started: 2 VMs from a1 to a2",
				"web-1: starting on a2-h03…",
				"web-1: running on a2-h03 after 4.2s (data loss 38s)",
				"db-1: starting on a2-h01…",
				"db-1: running on a2-h01 after 6.1s (data loss 0s, from its mirror)",
			},
			report: []string{
				"Run: failover dr-00000000000000f1 from a1 to a2",
				"State: succeeded",
				"Requested by: admin",
				"Started: 2026-11-30T09:00:00Z",
				"Finished: 2026-11-30T09:00:06Z",
				"VM PROJECT POLICY POINT HOST RTO DATA LOSS OUTCOME",
				"web-1 default gold rp-00000000000000a2 (a2) a2-h03 4.2s 38s running",
				"db-1 tax platinum mirror a2-h01 6.1s 0s (mirror) running",
				"VMs running: 2/2",
				"RTO: p50 4.2s, p99 6.1s, max 6.1s",
				"Elapsed: 6.3s",
				"Worst data loss: 38s",
			},
		},
		{
			final: "partial", code: exitRunPartial,
			progress: []string{
				"failover dr-00000000000000f1 started: 3 VMs from a1 to a2",
				`app-3: skipped: no host in a2 has 8 vCPUs free <script>alert("x")</script> & more`,
				"web-1: starting on a2-h03…",
				"web-1: running on a2-h03 after 4.2s (data loss 38s)",
				"db-1: starting on a2-h01…",
				"db-1: running on a2-h01 after 6.1s (data loss 0s, from its mirror)",
			},
			report: []string{
				"State: partial",
				`app-3 default silver - - - - skipped: no host in a2 has 8 vCPUs free <script>alert("x")</script> & more`,
				"VMs running: 2/3 (1 skipped)",
				"Worst data loss: 38s",
			},
			errLine: "failover dr-00000000000000f1 partial: 2 of 3 VMs running, 1 skipped",
		},
		{
			final: "failed", code: exitRunFailed,
			progress: []string{
				"failover dr-00000000000000f1 started: 3 VMs from a1 to a2",
				`app-3: skipped: no host in a2 has 8 vCPUs free <script>alert("x")</script> & more`,
				"web-1: starting on a2-h03…",
				"web-1: failed: restore: chunk 3f2a… missing in a2",
				"db-1: starting on a2-h01…",
				"db-1: failed: mirror not in sync",
			},
			report: []string{
				"State: failed",
				"web-1 default gold rp-00000000000000a2 (a2) - - 38s failed: restore: chunk 3f2a… missing in a2",
				"VMs running: 0/3 (2 failed, 1 skipped)",
				"RTO: -",
				"Worst data loss: -",
			},
			errLine: "failover dr-00000000000000f1 failed: 0 of 3 VMs running, 2 failed, 1 skipped",
		},
	} {
		t.Run(c.final, func(t *testing.T) {
			f, addr := startRecoveryFake(t)
			script := failoverScript(c.final)
			f.set(func(f *recoveryFake) { f.script = script })
			code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "failover", "--from", "a1", "--to", "a2")
			if code != c.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, c.code, stderr)
			}
			want := strings.Join(c.progress, "\n") + "\n"
			if c.errLine != "" {
				want += "yunchi: " + c.errLine + "\n"
			}
			if stderr != want {
				t.Errorf("stderr:\n%s\nwant:\n%s", stderr, want)
			}
			out := words(stdout)
			for _, w := range c.report {
				if !strings.Contains(out, w) {
					t.Errorf("report lacks %q:\n%s", w, stdout)
				}
			}
			if r := f.sent("Failover"); len(r) != 1 || !proto.Equal(r[0], &yunchiv1.FailoverRequest{FromCenter: "a1", ToCenter: "a2"}) {
				t.Errorf("sent %v", r)
			}
			if k := f.sentKeys("Failover"); len(k) != 1 || k[0] == "" {
				t.Errorf("failover without a request id: %q", k)
			}
			if n := len(f.sent("GetDRRun")); n != len(script)-1 {
				t.Errorf("%d GetDRRun, want %d (one per state after the first)", n, len(script)-1)
			}
		})
	}
}

// -o json (or --format json) prints the final DRRun as the API's JSON;
// progress still goes to stderr, the exit code still says how it ended.
func TestDRFailoverJSON(t *testing.T) {
	for _, args := range [][]string{{"-o", "json"}, {"--format", "json"}, {"-o", "json", "--format", "json"}} {
		f, addr := startRecoveryFake(t)
		script := failoverScript("partial")
		f.set(func(f *recoveryFake) { f.script = script })
		code, stdout, stderr := yunchi(t, append([]string{"--addr", addr, "dr", "failover", "--from", "a1"}, args...)...)
		var run yunchiv1.DRRun
		if code != exitRunPartial || unmarshalJSON(stdout, &run) != nil || !proto.Equal(&run, script[len(script)-1]) {
			t.Errorf("%v: exit %d\n%s\n%s", args, code, stdout, stderr)
		}
		if !strings.Contains(stderr, "web-1: running on a2-h03 after 4.2s") {
			t.Errorf("%v: no progress on stderr:\n%s", args, stderr)
		}
	}
}

func failoverPlan() *yunchiv1.DRRun {
	return &yunchiv1.DRRun{Kind: "failover", State: "plan", FromCenter: "a1", ToCenter: "a2", Vms: []*yunchiv1.DRRunVM{
		at(web, "pending", func(v *yunchiv1.DRRunVM) {
			v.Host, v.Center, v.DataLossMillis, v.ExpectedDataLossSeconds, v.ExpectedRtoSeconds = "a2-h03", "a2", 0, 42, 1800
		}),
		at(db, "pending", func(v *yunchiv1.DRRunVM) { v.ExpectedRtoSeconds = 600 }),
		at(app, "skipped", func(v *yunchiv1.DRRunVM) {
			v.Point, v.ExpectedDataLossSeconds, v.ExpectedRtoSeconds = "rp-00000000000000a3", 4*3600, 4*3600
		}),
		{Vm: "bare", Project: "default", Policy: "bronze", Step: "skipped", Reason: "no restore point in a2"},
	}}
}

// A dry run prints the plan and starts nothing: no run is followed.
func TestDRFailoverDryRun(t *testing.T) {
	f, addr := startRecoveryFake(t)
	f.set(func(f *recoveryFake) { f.plan = failoverPlan() })
	code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "failover", "--from", "a1", "--dry-run")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	out := words(stdout)
	for _, w := range []string{
		"Dry run: nothing was changed. The plan of a failover from a1 to a2:",
		"VM PROJECT POLICY POINT AGE (DATA LOSS) EXPECTED RTO TARGET",
		"web-1 default gold 42s 30m a2-h03 (a2)",
		"db-1 tax platinum 0s (mirror) 10m a2",
		`app-3 default silver 4h 4h skipped: no host in a2 has 8 vCPUs free <script>alert("x")</script> & more`,
		"bare default bronze no point - skipped: no restore point in a2",
		"2 VMs would start in a2, 2 skipped; worst expected data loss 42s, longest expected RTO 30m",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("plan lacks %q:\n%s", w, stdout)
		}
	}
	if r := f.sent("Failover"); len(r) != 1 || !proto.Equal(r[0], &yunchiv1.FailoverRequest{FromCenter: "a1", DryRun: true}) {
		t.Errorf("sent %v", r)
	}
	if n := len(f.sent("GetDRRun")); n != 0 || f.started != 0 {
		t.Errorf("dry run followed a run: %d GetDRRun, %d started", n, f.started)
	}
	code, stdout, _ = yunchi(t, "--addr", addr, "-o", "json", "dr", "failover", "--from", "a1", "--dry-run")
	var plan yunchiv1.DRRun
	if code != 0 || unmarshalJSON(stdout, &plan) != nil || !proto.Equal(&plan, failoverPlan()) {
		t.Errorf("dry run -o json: exit %d\n%s", code, stdout)
	}
}

// The request carries a request id; an answer lost on the way is asked
// for again with the same id, and the controllers answer the first run,
// never a second one.
func TestDRFailoverResendIsIdempotent(t *testing.T) {
	f, addr := startRecoveryFake(t)
	script := failoverScript("succeeded")
	f.set(func(f *recoveryFake) { f.script, f.lostAnswers = script, 1 })
	code, _, stderr := yunchi(t, "--addr", addr+","+addr, "dr", "failover", "--from", "a1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	keys := f.sentKeys("Failover")
	if len(keys) != 2 || keys[0] == "" || keys[0] != keys[1] {
		t.Errorf("keys %q: want the same one twice", keys)
	}
	if f.started != 1 {
		t.Errorf("%d runs started, want 1", f.started)
	}
	if !strings.HasPrefix(stderr, "failover dr-00000000000000f1 started") {
		t.Errorf("stderr:\n%s", stderr)
	}
}

// A controller that does not answer for a while only delays the next
// look; --wait-timeout ends the wait (not the run) with its own code and
// prints the report so far; --wait=false returns at once.
func TestDRFollow(t *testing.T) {
	t.Run("unavailable for a while", func(t *testing.T) {
		f, addr := startRecoveryFake(t)
		f.set(func(f *recoveryFake) { f.script, f.unavailableGets = failoverScript("succeeded"), 3 })
		code, _, stderr := yunchi(t, "--addr", addr, "dr", "failover", "--from", "a1")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		if n := strings.Count(stderr, "yunchi: no answer about dr-00000000000000f1 (no leader: election in progress); still asking…\n"); n != 1 {
			t.Errorf("%d warnings, want 1:\n%s", n, stderr)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		f, addr := startRecoveryFake(t)
		f.set(func(f *recoveryFake) { f.script = failoverScript("succeeded")[:2] }) // never ends
		start := time.Now()
		code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "failover", "--from", "a1", "--wait-timeout", "300ms")
		if code != exitRunTimeout {
			t.Fatalf("exit %d, want %d: %s", code, exitRunTimeout, stderr)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %s", d)
		}
		if want := "yunchi: timed out after 300ms waiting for failover dr-00000000000000f1 (0 of 2 VMs running); it goes on, see 'yunchi dr show dr-00000000000000f1'\n"; !strings.HasSuffix(stderr, want) {
			t.Errorf("stderr:\n%s\nwant suffix %q", stderr, want)
		}
		if out := words(stdout); !strings.Contains(out, "State: running") || !strings.Contains(out, "web-1 default gold rp-00000000000000a2 (a2) a2-h03 - 38s starting") {
			t.Errorf("report so far:\n%s", stdout)
		}
	})
	t.Run("no wait", func(t *testing.T) {
		f, addr := startRecoveryFake(t)
		f.set(func(f *recoveryFake) { f.script = failoverScript("succeeded") })
		code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "failover", "--from", "a1", "--wait=false")
		if code != 0 || stderr != "" || stdout != "failover dr-00000000000000f1 started: 2 VMs from a1 to a2; follow it with yunchi dr show dr-00000000000000f1\n" {
			t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		if n := len(f.sent("GetDRRun")); n != 0 {
			t.Errorf("%d GetDRRun without --wait", n)
		}
	})
	t.Run("refused while following", func(t *testing.T) {
		// Nothing learnt about the run: its error, no report.
		f, addr := startRecoveryFake(t)
		f.set(func(f *recoveryFake) {
			f.script = failoverScript("succeeded")
			f.getErr = status.Error(codes.PermissionDenied, "role viewer may not read DR runs")
		})
		code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "failover", "--from", "a1")
		if code != exitDenied || stdout != "" || !strings.HasSuffix(stderr, "\nyunchi: role viewer may not read DR runs\n") {
			t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
	})
	t.Run("controller refuses", func(t *testing.T) {
		f, addr := startRecoveryFake(t)
		code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "failover", "--from", "zz")
		if code != exitNotFound || stdout != "" || oneErrorLine(t, stderr) != `center "zz" not found (see yunchi topology)` {
			t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		if n := len(f.sent("GetDRRun")); n != 0 {
			t.Errorf("%d GetDRRun after a refusal", n)
		}
	})
}

// Failback: each VM's steps from the copy while it runs to running at
// home, and the switch-over's downtime.
func TestDRFailback(t *testing.T) {
	f, addr := startRecoveryFake(t)
	base := &yunchiv1.DRRun{Id: "dr-00000000000000b1", Kind: "failback", State: "running", FromCenter: "a2", ToCenter: "a1", StartedAt: timestamppb.New(runStart)}
	w := &yunchiv1.DRRunVM{Vm: "web-1", Project: "default", Policy: "gold", FromCenter: "a2", FromHost: "a2-h03"}
	home := func(rto, down int64) func(v *yunchiv1.DRRunVM) {
		return func(v *yunchiv1.DRRunVM) { v.Host, v.Center, v.RtoMillis, v.DowntimeMillis = "a1-h01", "a1", rto, down }
	}
	script := []*yunchiv1.DRRun{
		snap(base, nil, at(w, "pending", nil)),
		snap(base, nil, at(w, "precopy", nil)),
		snap(base, nil, at(w, "stopping", nil)),
		snap(base, nil, at(w, "final-copy", nil)),
		snap(base, nil, at(w, "starting", home(0, 0))),
		snap(base, ended("succeeded", 1, 0, 0, 9100, 9100, 9100, 0, 9400), at(w, "running", home(9100, 1300))),
	}
	f.set(func(f *recoveryFake) { f.script = script })
	code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "failback", "--to", "a1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := "failback dr-00000000000000b1 started: 1 VM back to a1\n" +
		"web-1: copying its disks to a1 while it runs…\n" +
		"web-1: stopping in a2 for the switch-over…\n" +
		"web-1: copying the last changes…\n" +
		"web-1: starting on a1-h01…\n" +
		"web-1: running on a1-h01 after 9.1s (downtime 1.3s)\n"
	if stderr != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", stderr, want)
	}
	out := words(stdout)
	for _, x := range []string{
		"Run: failback dr-00000000000000b1 from a2 to a1",
		"VM PROJECT POLICY FROM HOST RTO DOWNTIME OUTCOME",
		"web-1 default gold a2 a1-h01 9.1s 1.3s running",
		"VMs running: 1/1",
		"Longest downtime: 1.3s",
	} {
		if !strings.Contains(out, x) {
			t.Errorf("report lacks %q:\n%s", x, stdout)
		}
	}
	if r := f.sent("Failback"); len(r) != 1 || !proto.Equal(r[0], &yunchiv1.FailbackRequest{ToCenter: "a1"}) {
		t.Errorf("sent %v", r)
	}
	if k := f.sentKeys("Failback"); len(k) != 1 || k[0] == "" {
		t.Errorf("failback without a request id: %q", k)
	}

	// Its plan: where each VM is now, no data-loss column.
	f.set(func(f *recoveryFake) {
		f.plan = &yunchiv1.DRRun{Kind: "failback", State: "plan", FromCenter: "a2", ToCenter: "a1",
			Vms: []*yunchiv1.DRRunVM{at(w, "pending", func(v *yunchiv1.DRRunVM) { v.Host, v.Center, v.ExpectedRtoSeconds = "a1-h01", "a1", 120 })}}
	})
	code, stdout, _ = yunchi(t, "--addr", addr, "dr", "failback", "--to", "a1", "--dry-run")
	out = words(stdout)
	for _, x := range []string{
		"Dry run: nothing was changed. The plan of a failback to a1 from a2:",
		"VM PROJECT POLICY NOW IN EXPECTED RTO TARGET",
		"web-1 default gold a2-h03 (a2) 2m a1-h01 (a1)",
		"1 VM would start in a1, longest expected RTO 2m",
	} {
		if code != 0 || !strings.Contains(out, x) {
			t.Errorf("exit %d; failback plan lacks %q:\n%s", code, x, stdout)
		}
	}
}

func drillScript(productionUnchanged bool) []*yunchiv1.DRRun {
	base := &yunchiv1.DRRun{Id: "dr-00000000000000d1", Kind: "drill", State: "running", FromCenter: "a1", ToCenter: "a2", Project: "tax",
		DrillProject: "drill-00f3", Schedule: "a1/tax", RequestedBy: "admin", StartedAt: timestamppb.New(runStart)}
	d := &yunchiv1.DRRunVM{Vm: "db-1", Project: "tax", Policy: "gold", Point: "rp-00000000000000a2", PointCenter: "a2", DataLossMillis: 61000, FromCenter: "a1"}
	clone := func(rto int64) func(v *yunchiv1.DRRunVM) {
		return func(v *yunchiv1.DRRunVM) { v.Clone, v.Host, v.Center, v.RtoMillis = "db-1-d00f3", "a2-h02", "a2", rto }
	}
	end := func(r *yunchiv1.DRRun) {
		ended("succeeded", 1, 0, 0, 5000, 5000, 5000, 61000, 7000)(r)
		r.ProductionUnchanged = productionUnchanged
		r.ProductionCheck = "1 VM: host, center, power state and disk sources as before; disks byte for byte"
		if !productionUnchanged {
			r.ProductionCheck = "db-1: host a1-h02 became a1-h05"
		}
	}
	return []*yunchiv1.DRRun{
		snap(base, nil, at(d, "pending", nil)),
		snap(base, nil, at(d, "starting", clone(0))),
		snap(base, nil, at(d, "running", clone(5000))),
		snap(base, end, at(d, "done", clone(5000))),
	}
}

// A drill: the clone's steps, the report with RTO, RPO and the production
// check, --every as a Go duration; a drill that changed production fails.
func TestDRDrill(t *testing.T) {
	f, addr := startRecoveryFake(t)
	script := drillScript(true)
	f.set(func(f *recoveryFake) { f.script = script })
	code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "drill", "--center", "a1", "--project", "tax", "--every", "30d")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := "drill schedule a1/tax made: it repeats (see yunchi dr drill schedules)\n" +
		"drill dr-00000000000000d1 started: 1 VM of a1 cloned into a2 (project drill-00f3)\n" +
		"db-1: starting clone db-1-d00f3 on a2-h02…\n" +
		"db-1: clone db-1-d00f3 running on a2-h02 after 5.0s (RPO 1m1s)\n" +
		"db-1: clone removed\n"
	if stderr != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", stderr, want)
	}
	out := words(stdout)
	for _, x := range []string{
		"Run: drill dr-00000000000000d1 of a1 in a2",
		"Project: tax",
		"Drill project: drill-00f3",
		"Schedule: a1/tax",
		"VM PROJECT POLICY POINT CLONE HOST RTO RPO (DATA LOSS) OUTCOME",
		"db-1 tax gold rp-00000000000000a2 (a2) db-1-d00f3 a2-h02 5.0s 1m1s done",
		"Clones started: 1/1",
		"RTO: p50 5.0s, p99 5.0s, max 5.0s",
		"Worst RPO (data loss): 1m1s",
		"Production unchanged: yes (checked: 1 VM: host, center, power state and disk sources as before; disks byte for byte)",
	} {
		if !strings.Contains(out, x) {
			t.Errorf("report lacks %q:\n%s", x, stdout)
		}
	}
	if r := f.sent("StartDrill"); len(r) != 1 || !proto.Equal(r[0], &yunchiv1.DrillRequest{Center: "a1", Project: "tax", Every: "720h0m0s"}) {
		t.Errorf("sent %v", r)
	}
	if k := f.sentKeys("StartDrill"); len(k) != 1 || k[0] == "" {
		t.Errorf("drill without a request id: %q", k)
	}

	// Production changed: the drill fails, whatever its state says.
	f.set(func(f *recoveryFake) { f.script = drillScript(false) })
	code, stdout, stderr = yunchi(t, "--addr", addr, "dr", "drill", "--center", "a1")
	if code != exitRunFailed || !strings.Contains(words(stdout), "Production unchanged: NO: db-1: host a1-h02 became a1-h05") ||
		!strings.HasSuffix(stderr, "\nyunchi: drill dr-00000000000000d1 changed production: db-1: host a1-h02 became a1-h05\n") {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// htmlCheck parses s as HTML and checks it is balanced and
// self-contained; it returns the page's text.
func htmlCheck(t *testing.T, s string) string {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(s))
	if err != nil {
		t.Fatalf("HTML does not parse: %v", err)
	}
	var text strings.Builder
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		switch n.Type {
		case html.ElementNode:
			if n.DataAtom == atom.Script || n.DataAtom == atom.Link || n.DataAtom == atom.Img || n.DataAtom == atom.Iframe {
				t.Errorf("report has a <%s> element", n.Data)
			}
			for _, a := range n.Attr {
				if a.Key == "src" || a.Key == "href" || strings.HasPrefix(a.Key, "on") {
					t.Errorf("report has <%s %s=%q>", n.Data, a.Key, a.Val)
				}
			}
		case html.TextNode:
			text.WriteString(n.Data)
			text.WriteString(" ")
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	// Every element the page opens it closes, in order (void ones aside).
	z := html.NewTokenizer(strings.NewReader(s))
	var open []string
	void := map[string]bool{"meta": true, "br": true, "hr": true, "img": true, "link": true, "input": true}
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			if z.Err() != io.EOF {
				t.Fatalf("tokenizer: %v", z.Err())
			}
			break
		}
		name, _ := z.TagName()
		switch tt {
		case html.StartTagToken:
			if !void[string(name)] {
				open = append(open, string(name))
			}
		case html.EndTagToken:
			if len(open) == 0 || open[len(open)-1] != string(name) {
				t.Fatalf("</%s> closes %v", name, open)
			}
			open = open[:len(open)-1]
		}
	}
	if len(open) != 0 {
		t.Fatalf("unclosed elements %v", open)
	}
	return words(text.String())
}

// --format html: a self-contained page headed in Chinese and English,
// every value escaped; --out writes it to a file instead.
func TestDRDrillHTML(t *testing.T) {
	f, addr := startRecoveryFake(t)
	script := drillScript(true)
	// A skipped VM whose reason carries markup.
	for _, s := range script {
		s.Vms = append(s.Vms, proto.Clone(app).(*yunchiv1.DRRunVM))
		s.Vms[1].Project = "tax"
	}
	last := script[len(script)-1]
	last.State, last.VmsSkipped = "partial", 1
	f.set(func(f *recoveryFake) { f.script = script })
	code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "drill", "--center", "a1", "--format", "html")
	if code != exitRunPartial {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	text := htmlCheck(t, stdout)
	for _, x := range []string{
		"演练报告 / Drill report",
		"概要 / Summary",
		"运行编号 Run ID dr-00000000000000d1",
		"类型 Kind 演练 drill",
		"状态 State 部分成功 partial",
		"生产中心 Production center a1",
		"灾备中心 DR center a2",
		"演练项目 Drill project drill-00f3",
		"恢复时间 RTO p50 5.0s, p99 5.0s, max 5.0s",
		"最差恢复点 Worst RPO (data loss) 1m1s",
		"生产未受影响 / Production unchanged yes (checked: 1 VM:",
		"恢复时间 RTO RTO",
		"恢复点 RPO RPO (data loss)",
		"db-1 tax gold rp-00000000000000a2 (a2) db-1-d00f3 a2-h02 5.0s 1m1s done",
		`app-3 tax silver - - - - - skipped: no host in a2 has 8 vCPUs free <script>alert("x")</script> & more`,
		"Started 2026-11-30 09:00:00 UTC",
	} {
		if !strings.Contains(text, x) {
			t.Errorf("HTML report lacks %q:\n%s", x, text)
		}
	}
	if !strings.Contains(stdout, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; more") {
		t.Errorf("the reason is not escaped:\n%s", stdout)
	}
	if !strings.Contains(stdout, `<html lang="zh-CN">`) || !strings.Contains(stdout, `<meta charset="utf-8">`) {
		t.Errorf("no language or charset:\n%s", stdout)
	}

	// dr drill show --format html --out FILE: the same page, in a file.
	f.set(func(f *recoveryFake) { f.runs = []*yunchiv1.DRRun{last} })
	dir := t.TempDir()
	path := filepath.Join(dir, "drill.html")
	code, out2, stderr := yunchi(t, "--addr", addr, "dr", "drill", "show", "dr-00000000000000d1", "--format", "html", "--out", path)
	if code != 0 || out2 != "" || stderr != "report written to "+path+"\n" {
		t.Fatalf("show --out: exit %d, stdout %q, stderr %q", code, out2, stderr)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The same but for when it was generated.
	strip := func(s string) string {
		i := strings.Index(s, "<footer>")
		if i < 0 {
			t.Fatalf("no footer in %s", s)
		}
		return s[:i]
	}
	if strip(string(b)) != strip(stdout) {
		t.Errorf("file differs from the page printed:\n%s", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left in %s: %v", dir, ents)
	}
}

// A plan renders as HTML too, with its own title and no totals.
func TestDRPlanHTML(t *testing.T) {
	var b strings.Builder
	if err := renderRunHTML(&b, failoverPlan(), runStart); err != nil {
		t.Fatal(err)
	}
	text := htmlCheck(t, b.String())
	for _, x := range []string{"切换计划 / Failover plan", "Dry run: nothing was changed.", "预计恢复时间 Expected RTO", "web-1 default gold 42s 30m a2-h03 (a2)",
		"bare default bronze no point - skipped: no restore point in a2", "Generated by yunchi at 2026-11-30 09:00:00 UTC"} {
		if !strings.Contains(text, x) {
			t.Errorf("plan lacks %q:\n%s", x, text)
		}
	}
	if strings.Contains(text, "结果汇总") {
		t.Errorf("a plan with totals:\n%s", text)
	}
}

func pastRuns() []*yunchiv1.DRRun {
	d := drillScript(true)
	f := failoverScript("partial")
	drill, fo := d[len(d)-1], f[len(f)-1]
	drill.StartedAt = timestamppb.New(time.Now().Add(-3 * time.Hour))
	fo.StartedAt = timestamppb.New(time.Now().Add(-26 * time.Hour))
	return []*yunchiv1.DRRun{drill, fo}
}

// dr runs, dr drill list, dr show, dr drill show: the reports kept.
func TestDRRunsAndShow(t *testing.T) {
	f, addr := startRecoveryFake(t)
	f.set(func(f *recoveryFake) { f.runs = pastRuns() })
	code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "runs")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	out := words(stdout)
	for _, x := range []string{
		"ID KIND STATE FROM TO PROJECT STARTED DONE/FAILED/SKIPPED RTO P50/MAX WORST DATA LOSS",
		"dr-00000000000000d1 drill succeeded a1 a2 tax 3h ago 1/0/0 5.0s/5.0s 1m1s",
		"dr-00000000000000f1 failover partial a1 a2 - 26h ago 2/0/1 4.2s/6.1s 38s",
	} {
		if !strings.Contains(out, x) {
			t.Errorf("dr runs lacks %q:\n%s", x, stdout)
		}
	}
	code, stdout, _ = yunchi(t, "--addr", addr, "dr", "drill", "list", "--project", "tax")
	out = words(stdout)
	if code != 0 || !strings.Contains(out, "ID STATE CENTER TO PROJECT STARTED STARTED/FAILED/SKIPPED RTO P50/MAX WORST RPO PRODUCTION UNCHANGED") ||
		!strings.Contains(out, "dr-00000000000000d1 succeeded a1 a2 tax 3h ago 1/0/0 5.0s/5.0s 1m1s yes") || strings.Contains(out, "failover") {
		t.Errorf("drill list: exit %d\n%s", code, stdout)
	}
	r := f.sent("ListDRRuns")
	if len(r) != 2 || !proto.Equal(r[0], &yunchiv1.ListDRRunsRequest{}) || !proto.Equal(r[1], &yunchiv1.ListDRRunsRequest{Kind: "drill", Project: "tax"}) {
		t.Errorf("sent %v", r)
	}
	code, stdout, _ = yunchi(t, "--addr", addr, "dr", "runs", "--kind", "failback")
	if code != 0 || stdout != "No failovers, failbacks or drills.\n" {
		t.Errorf("dr runs --kind failback: %d %q", code, stdout)
	}
	code, stdout, _ = yunchi(t, "--addr", addr, "-o", "json", "dr", "runs", "--kind", "drill")
	var list yunchiv1.ListDRRunsResponse
	if code != 0 || unmarshalJSON(stdout, &list) != nil || len(list.Runs) != 1 || list.Runs[0].Id != "dr-00000000000000d1" {
		t.Errorf("dr runs -o json: %d\n%s", code, stdout)
	}

	// dr show: any run, exit 0 whatever its end (it is a report, not a run).
	code, stdout, _ = yunchi(t, "--addr", addr, "dr", "show", "dr-00000000000000f1")
	if code != 0 || !strings.Contains(words(stdout), "Run: failover dr-00000000000000f1 from a1 to a2 State: partial") {
		t.Errorf("dr show: %d\n%s", code, stdout)
	}
	code, stdout, _ = yunchi(t, "--addr", addr, "dr", "show", "dr-00000000000000d1", "-o", "json")
	var run yunchiv1.DRRun
	if code != 0 || unmarshalJSON(stdout, &run) != nil || run.Id != "dr-00000000000000d1" || len(run.Vms) != 1 || run.Vms[0].Clone != "db-1-d00f3" || !run.ProductionUnchanged {
		t.Errorf("dr show -o json: %d\n%s", code, stdout)
	}
	// dr drill show: drills only.
	code, stdout, stderr = yunchi(t, "--addr", addr, "dr", "drill", "show", "dr-00000000000000f1")
	if code != exitNotFound || stdout != "" || oneErrorLine(t, stderr) != "dr-00000000000000f1 is a failover, not a drill: see 'yunchi dr show dr-00000000000000f1'" {
		t.Errorf("drill show of a failover: %d %q %q", code, stdout, stderr)
	}
	code, _, stderr = yunchi(t, "--addr", addr, "dr", "show", "dr-nope")
	if code != exitNotFound || oneErrorLine(t, stderr) != `run "dr-nope" not found` {
		t.Errorf("dr show of no run: %d %q", code, stderr)
	}
}

func TestDRDrillSchedules(t *testing.T) {
	f, addr := startRecoveryFake(t)
	code, stdout, _ := yunchi(t, "--addr", addr, "dr", "drill", "schedules")
	if code != 0 || stdout != "No drill schedules (yunchi dr drill --center C --every 30d makes one).\n" {
		t.Errorf("no schedules: %d %q", code, stdout)
	}
	next := time.Now().Add(30*24*time.Hour + time.Minute)
	f.set(func(f *recoveryFake) {
		f.schedules = []*yunchiv1.DrillSchedule{
			{Id: "a1", Center: "a1", EverySeconds: 30 * 86400, NextAt: timestamppb.New(next), CreatedBy: "admin"},
			{Id: "a1/tax", Center: "a1", ToCenter: "b1", Project: "tax", EverySeconds: 7 * 86400, NextAt: timestamppb.New(next), CreatedBy: "ops"},
		}
	})
	code, stdout, _ = yunchi(t, "--addr", addr, "dr", "drill", "schedules")
	out := words(stdout)
	for _, x := range []string{
		"ID CENTER TO PROJECT EVERY NEXT CREATED BY",
		"a1 a1 - every project 30d " + next.UTC().Format(time.RFC3339) + " (in 30d) admin",
		"a1/tax a1 b1 tax 7d " + next.UTC().Format(time.RFC3339) + " (in 30d) ops",
	} {
		if code != 0 || !strings.Contains(out, x) {
			t.Errorf("exit %d; schedules lack %q:\n%s", code, x, stdout)
		}
	}
	code, stdout, _ = yunchi(t, "--addr", addr, "-o", "json", "dr", "drill", "schedules")
	var list yunchiv1.ListDrillSchedulesResponse
	if code != 0 || unmarshalJSON(stdout, &list) != nil || len(list.Schedules) != 2 {
		t.Errorf("schedules -o json: %d\n%s", code, stdout)
	}

	code, stdout, _ = yunchi(t, "--addr", addr, "dr", "drill", "unschedule", "a1/tax")
	if code != 0 || stdout != "drill schedule a1/tax deleted\n" {
		t.Errorf("unschedule: %d %q", code, stdout)
	}
	if k := f.sentKeys("DeleteDrillSchedule"); len(k) != 1 || k[0] == "" {
		t.Errorf("unschedule without a request id: %q", k)
	}
	code, stdout, _ = yunchi(t, "--addr", addr, "-o", "json", "dr", "drill", "unschedule", "a1/tax")
	if code != 0 || strings.TrimSpace(stdout) != "{}" {
		t.Errorf("unschedule -o json: %d %q", code, stdout)
	}
	code, _, stderr := yunchi(t, "--addr", addr, "dr", "drill", "unschedule", "b9")
	if code != exitNotFound || oneErrorLine(t, stderr) != `drill schedule "b9" not found` {
		t.Errorf("unschedule of no schedule: %d %q", code, stderr)
	}
}

// dr status: the last successful drill per project ("never" for none),
// and a warning per fenced center, also when no VM is protected.
func TestDRStatusDrillsAndFences(t *testing.T) {
	f, addr := startRecoveryFake(t)
	finished := timestamppb.New(time.Now().Add(-3 * 24 * time.Hour))
	f.set(func(f *recoveryFake) {
		f.status = &yunchiv1.DRStatus{
			Vms: []*yunchiv1.VMProtection{{Vm: "web-1", Project: "default", Policy: "gold", Source: "vm", Targets: []*yunchiv1.TargetStatus{
				{Center: "a2", IntervalSeconds: 60, RpoObjectiveSeconds: 60, NewestPoint: "rp-00000000000000a2", NewestPointAt: timestamppb.New(time.Now().Add(-42 * time.Second)), AchievedRpoSeconds: 42}}}},
			Drills: []*yunchiv1.ProjectDrill{
				{Project: "default", Run: "dr-00000000000000d1", FinishedAt: finished, Center: "a1"},
				{Project: "tax"},
			},
			FencedCenters: []string{"a1"},
		}
	})
	code, stdout, stderr := yunchi(t, "--addr", addr, "dr", "status")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d %q", code, stderr)
	}
	out := words(stdout)
	for _, x := range []string{
		"web-1 default gold a2 42s ago 42s/1m ok",
		"1 VM protected, 1 target: no violations",
		"PROJECT LAST SUCCESSFUL DRILL CENTER FINISHED",
		"default dr-00000000000000d1 a1 " + finished.AsTime().UTC().Format(time.RFC3339) + " (3d ago)",
		"tax never - -",
		"WARNING: center a1 is fenced (failed over); run yunchi dr failback --to a1 once it is back",
	} {
		if !strings.Contains(out, x) {
			t.Errorf("dr status lacks %q:\n%s", x, stdout)
		}
	}
	// The drill table's columns line up under its own header.
	var header, never string
	for _, l := range strings.Split(stdout, "\n") {
		switch {
		case strings.HasPrefix(l, "PROJECT "):
			header = l
		case strings.HasPrefix(l, "tax "):
			never = l
		}
	}
	if i := strings.Index(header, "LAST SUCCESSFUL DRILL"); i < 0 || strings.Index(never, "never") != i {
		t.Errorf("drill table not aligned:\n%s\n%s", header, never)
	}
	f.set(func(f *recoveryFake) { f.status.Vms, f.status.Drills = nil, nil })
	code, stdout, _ = yunchi(t, "--addr", addr, "dr", "status")
	if code != 0 || words(stdout) != "No protected VMs (yunchi vm protect, yunchi project protect). WARNING: center a1 is fenced (failed over); run yunchi dr failback --to a1 once it is back" {
		t.Errorf("dr status without VMs: %d\n%s", code, stdout)
	}
}

// Mistakes on the command line: one line, the usage exit code, and
// nothing reaches the controller.
func TestDRRecoveryUsage(t *testing.T) {
	f, addr := startRecoveryFake(t)
	missingDir := filepath.Join(t.TempDir(), "no", "such")
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"dr", "failover"}, "dr failover: --from is required: the lost center (see yunchi topology)"},
		{[]string{"dr", "failover", "a1"}, `dr failover: unexpected argument "a1"`},
		{[]string{"dr", "failover", "--from", "A_1"}, `dr failover: --from "A_1" is not a center name`},
		{[]string{"dr", "failover", "--from", "a1", "--to", "a1"}, "dr failover: --to a1 is the center failed over from"},
		{[]string{"dr", "failover", "--from", "a1", "--to", "B2"}, `--to "B2" is not a center name`},
		{[]string{"dr", "failover", "--from", "a1", "--wait-timeout", "0s"}, "dr failover: --wait-timeout must be positive"},
		{[]string{"dr", "failover", "--from", "a1", "--wait-timeout", "-1m"}, "--wait-timeout must be positive"},
		{[]string{"dr", "failover", "--from", "a1", "--format", "pdf"}, `dr failover: --format "pdf" is not valid: use text, json or html`},
		{[]string{"dr", "failover", "--from", "a1", "--out", filepath.Join(missingDir, "r.html")}, "directory " + missingDir + " does not exist"},
		{[]string{"dr", "failover", "--from", "a1", "--out", t.TempDir()}, "is a directory: give a file name"},
		{[]string{"dr", "failover", "--from", "a1", "--wiat"}, "unknown flag --wiat (did you mean --wait?)"},
		{[]string{"dr", "failback"}, "dr failback: --to is required: the home center the VMs return to"},
		{[]string{"dr", "drill"}, "dr drill: --center is required: the production center drilled"},
		{[]string{"dr", "drill", "frob"}, `dr drill: unexpected argument "frob"`},
		{[]string{"dr", "drill", "--center", "a1", "--to", "a1"}, "dr drill: --to a1 is the center drilled"},
		{[]string{"dr", "drill", "--center", "a1", "--every", "0s"}, `dr drill: --every: "0s": give a duration longer than zero`},
		{[]string{"dr", "drill", "--center", "a1", "--every", "0d"}, `--every: "0d": give a duration longer than zero`},
		{[]string{"dr", "drill", "--center", "a1", "--every", "-1d"}, `--every: "-1d" is not a duration`},
		{[]string{"dr", "drill", "--center", "a1", "--every", "-30m"}, `--every: "-30m" is not a duration`},
		{[]string{"dr", "drill", "--center", "a1", "--every", "monthly"}, `--every: "monthly" is not a duration: use e.g. 30s, 1m, 4h, 24h, 7d`},
		{[]string{"dr", "drill", "--center", "a1", "--every", ""}, `--every: "" is not a duration`},
		{[]string{"dr", "drill", "--center", "a1", "--every", "30d", "--dry-run"}, "--every and --dry-run exclude each other"},
		{[]string{"dr", "drill", "--center", "a1", "--format", "xml"}, `dr drill: --format "xml" is not valid: use text, json or html`},
		{[]string{"dr", "drill", "--center", "a1", "--format", "html", "-o", "json"}, "dr drill: --format html and -o json exclude each other"},
		{[]string{"dr", "drill", "show"}, "dr drill show: missing ID"},
		{[]string{"dr", "drill", "show", "x", "--format", "pdf"}, `--format "pdf" is not valid`},
		{[]string{"dr", "drill", "list", "x"}, `unexpected argument "x"`},
		{[]string{"dr", "drill", "unschedule"}, "dr drill unschedule: missing ID"},
		{[]string{"dr", "drill", "schedules", "x"}, `unexpected argument "x"`},
		{[]string{"dr", "drill", "frob", "x"}, `unexpected argument "frob"`},
		{[]string{"dr", "runs", "--kind", "restore"}, `dr runs: --kind "restore" is not valid: use failover, failback or drill`},
		{[]string{"dr", "show"}, "dr show: missing ID"},
		{[]string{"dr", "show", "a", "b"}, `unexpected argument "b"`},
		{[]string{"dr", "show", "x", "--format", "text", "-o", "json"}, "--format text and -o json exclude each other"},
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

func TestDRRecoveryHelp(t *testing.T) {
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
	for _, p := range [][]string{{"dr", "failover"}, {"dr", "failback"}, {"dr", "drill"}} {
		d := find(p...).Description
		for _, code := range []int{exitRunPartial, exitRunFailed, exitRunTimeout} {
			if !strings.Contains(d, fmt.Sprint(code)) {
				t.Errorf("%v help does not name exit code %d: %q", p, code, d)
			}
		}
	}
	for code, what := range map[int]string{exitRunPartial: "ended partial", exitRunFailed: "failed", exitRunTimeout: "--wait-timeout"} {
		if !strings.Contains(exitCodesHelp, fmt.Sprintf("%d  dr failover, failback or drill", code)) || !strings.Contains(exitCodesHelp, what) {
			t.Errorf("exit codes help lacks %d: %s", code, exitCodesHelp)
		}
	}
	for _, args := range [][]string{{"dr"}, {"dr", "failover", "--help"}, {"dr", "failback", "-h"}, {"dr", "drill", "--help"},
		{"dr", "drill", "list", "--help"}, {"dr", "drill", "show", "--help"}, {"dr", "drill", "schedules", "--help"},
		{"dr", "drill", "unschedule", "--help"}, {"dr", "runs", "--help"}, {"dr", "show", "--help"}} {
		code, stdout, stderr := yunchi(t, args...)
		if code != 0 || stderr != "" || !strings.Contains(stdout, "USAGE") {
			t.Errorf("%v: exit %d stderr %q stdout %q", args, code, stderr, stdout)
		}
	}
	// The drill's subcommands show in its help.
	_, stdout, _ := yunchi(t, "dr", "drill", "--help")
	for _, sub := range []string{"list", "show", "schedules", "unschedule", "--every", "--format"} {
		if !strings.Contains(stdout, sub) {
			t.Errorf("dr drill --help lacks %q:\n%s", sub, stdout)
		}
	}
}
