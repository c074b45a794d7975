package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/cmd/yunchid/clustertest"
	"github.com/yunchi/yunchi/internal/apitest"
	"github.com/yunchi/yunchi/internal/netns"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Hosts of every run: two in the production center a1, one in the
// same-city center a2, one in the remote center b1; small, so that
// placement runs out of room under the workload.
var hosts = []struct{ id, center string }{{"h1", "a1"}, {"h2", "a1"}, {"h3", "a2"}, {"h4", "b1"}}

const (
	hostCPUs   = 8
	hostMemory = 16 << 30
	hostDisk   = 400 << 30
	statusPort = 9100
	// heartbeat of the agents here; the controllers mark a host down
	// after leader.Duties.HostTTL (10 s) without one.
	agentHeartbeat = 500 * time.Millisecond
	hostTTL        = 10 * time.Second
)

// Config is what a run is given.
type Config struct {
	Seed     int64
	Workload time.Duration // how long the clients run
	FaultAt  time.Duration // when, after the clients start, the fault is injected
	FaultFor time.Duration // how long it lasts before it heals
	Clients  int
	Names    int
	OutDir   string // where a failed run's history and visualisation go
}

// Scenario is one fault (or none) under the workload.
type Scenario struct {
	Name        string
	Controllers int
	// Setup runs before the controllers start (e.g. to mount a small
	// disk); may be nil.
	Setup func(r *Run)
	// Inject starts the fault and returns what it did and how to heal it.
	// nil: no fault (the baseline).
	Inject func(r *Run) (what string, heal func())
	// Leader says the fault hits the leader: the first write after it is
	// measured against the 2 s target.
	Leader bool
	// Agent says the fault hits a host's agent (Inject sets Run.faultHost):
	// its VMs must be running again within a heartbeat TTL of healing.
	Agent bool
}

// Run is one scenario being run.
type Run struct {
	T   *testing.T
	C   *clustertest.Cluster
	Cfg Config
	Rec *Recorder

	faultHost string // the host an agent fault hit (Scenario.Agent)

	connMu sync.Mutex
	conns  map[string]*grpc.ClientConn
	agents *http.Client // to the agents' status listeners

	mu         sync.Mutex
	violations map[string]Violation
	order      []string
	faults     []string
	snapshots  int
	views      int
}

// Result is what a run printed.
type Result struct {
	Scenario   string
	Lines      [][2]string
	Violations []Violation
}

func (r *Run) violate(vs ...Violation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, v := range vs {
		k := v.String()
		if _, ok := r.violations[k]; !ok {
			r.violations[k] = v
			r.order = append(r.order, k)
		}
	}
}

// conn is the run's connection to a controller with a token, made once
// (apitest dials through the test's network, see clustertest.NewNetns)
// and closed when the test ends: the monitor reads every controller
// several times a second.
func (r *Run) conn(addr, tok string) (*grpc.ClientConn, error) {
	r.connMu.Lock()
	defer r.connMu.Unlock()
	key := addr + "|" + tok
	if cc := r.conns[key]; cc != nil {
		return cc, nil
	}
	cc, err := apitest.DialToken(addr, tok)
	if err != nil {
		return nil, err
	}
	if r.conns == nil {
		r.conns = map[string]*grpc.ClientConn{}
		r.T.Cleanup(func() {
			r.connMu.Lock()
			defer r.connMu.Unlock()
			for _, cc := range r.conns {
				cc.Close()
			}
		})
	}
	r.conns[key] = cc
	return cc, nil
}

// RunScenario runs sc under cfg and returns its figures; violations fail t.
func RunScenario(t *testing.T, sc Scenario, cfg Config) Result {
	if why := netns.Available(); why != "" {
		t.Skip(why)
	}
	r := &Run{T: t, Cfg: cfg, violations: map[string]Violation{}}
	c := clustertest.NewNetns(t)
	r.C = c
	r.agents = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: c.Net.Dial}}
	t.Cleanup(r.agents.CloseIdleConnections)
	c.ControllerArgs = func(id string) []string {
		return []string{"--raft-segment-size", "1MiB", "--rate-limit", "0", "--fault-clock-file", r.clockFile(id)}
	}
	c.AgentArgs = func(hostID string, nd *netns.Node) []string {
		return []string{"--status-listen", nd.Addr(statusPort)}
	}
	if sc.Setup != nil {
		sc.Setup(r)
	}
	c.StartControllers(sc.Controllers)
	for _, h := range hosts {
		c.StartAgent(h.id, h.center, hostCPUs, hostMemory, hostDisk)
	}
	r.waitHosts(60 * time.Second)
	w := r.setup()
	r.Rec = w.Rec

	ctx, cancel := context.WithTimeout(context.Background(), cfg.Workload)
	defer cancel()
	monCtx, stopMon := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { defer bg.Done(); r.monitor(monCtx, 300*time.Millisecond) }()
	probe := &prober{r: r}
	bg.Add(1)
	go func() { defer bg.Done(); probe.run(monCtx) }()

	var injected, healed, agentBack int64 = -1, -1, -1
	agentVMs := 0
	faultDone := make(chan struct{})
	go func() {
		defer close(faultDone)
		if sc.Inject == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(cfg.FaultAt):
		}
		what, h := sc.Inject(r)
		injected = w.Rec.Now() // once in place: finding the leader and cutting links take a moment
		r.mu.Lock()
		r.faults = append(r.faults, what)
		r.mu.Unlock()
		t.Logf("%s: fault at %v: %s", sc.Name, time.Duration(injected), what)
		select {
		case <-ctx.Done():
		case <-time.After(cfg.FaultFor):
		}
		h()
		healed = w.Rec.Now()
		t.Logf("%s: healed at %v", sc.Name, time.Duration(healed))
		if sc.Agent {
			agentBack, agentVMs = r.watchAgent(monCtx, r.faultHost, 2*hostTTL)
		}
	}()
	w.Run(ctx)
	// The fault heals at the latest when the workload ends; judge only
	// after that, and after recovery.
	<-faultDone
	waitDone := make(chan struct{})
	go func() { bg.Wait(); close(waitDone) }()
	stopAfter := func() { stopMon(); <-waitDone }

	recoverStart := time.Now()
	r.recover()
	r.waitReconciled(2 * hostTTL)
	stopAfter()
	recovery := time.Since(recoverStart)
	r.finalReads(w)

	hist := w.Rec.History()
	final := r.finalChecks(hist)
	lin, err := CheckLinearizable(hist, 60*time.Second)
	if err != nil {
		t.Errorf("linearizability check: %v", err)
	}
	if !lin.OK {
		what := "not linearizable"
		if lin.Timeout {
			what = "linearizability undecided within the time allowed"
		}
		r.violate(Violation{Checker: "linearizability", Detail: what})
	}

	res := Result{Scenario: sc.Name}
	add := func(k string, v any) { res.Lines = append(res.Lines, [2]string{k, fmt.Sprint(v)}) }
	counts := map[string]int{}
	for _, op := range hist {
		counts[op.Outcome]++
	}
	add("seed", cfg.Seed)
	add("controllers", sc.Controllers)
	add("hosts", len(hosts))
	add("clients", cfg.Clients)
	add("operations", len(hist))
	for _, o := range []string{OK, NotFound, AlreadyExists, FailedPrecondition, Rejected, Unknown} {
		add("outcome_"+o, counts[o])
	}
	add("retries", w.Retries())
	add("unexpected_errors", w.Unexpected())
	if w.Unexpected() > 0 {
		for _, op := range hist {
			if strings.HasPrefix(op.Err, "unexpected: ") {
				r.violate(Violation{Checker: "client", Detail: fmt.Sprintf("%s %s via %s: %s", op.Kind, op.Key(), op.Via, op.Err)})
				break
			}
		}
	}
	r.mu.Lock()
	faults := strings.Join(r.faults, "; ")
	r.mu.Unlock()
	if faults == "" {
		faults = "none"
	}
	add("faults", faults)
	// Writes work again when any client's does: the workload's and the
	// prober's successful writes together (a client stuck on a frozen
	// controller for its timeout says little about the cluster).
	ws := probe.writes()
	for _, op := range hist {
		if op.Outcome == OK && op.Kind != OpGet {
			ws = append(ws, [2]int64{op.Call, op.Return})
		}
	}
	if injected >= 0 {
		if d, ok := ws.firstAfter(injected); ok {
			add("first_write_after_fault_ms", ms(d))
			if sc.Leader {
				add("first_write_after_fault_target_ms", 2000)
			}
		} else {
			add("first_write_after_fault_ms", "none")
		}
	}
	if healed >= 0 {
		if d, ok := ws.firstAfter(healed); ok {
			add("first_write_after_heal_ms", ms(d))
		}
		if sc.Agent {
			if agentBack >= 0 {
				add("agent_reconciled_after_heal_ms", ms(time.Duration(agentBack-healed)))
			} else {
				add("agent_reconciled_after_heal_ms", "not within 20s")
			}
			add("agent_reconciled_target_ms", ms(hostTTL))
			add("agent_vms_at_heal", agentVMs)
		}
	}
	add("probe_writes_ok", probe.count())
	add("longest_write_gap_ms", ms(ws.longestGap()))
	add("recovery_wait_ms", ms(recovery))
	add("snapshots_checked", r.snapshots)
	add("agent_views_checked", r.views)
	add("final_vms", final)
	add("linearizable", lin.OK)
	add("lin_keys", lin.Keys)
	add("lin_ops", lin.Ops)
	r.mu.Lock()
	for _, k := range r.order {
		res.Violations = append(res.Violations, r.violations[k])
	}
	r.mu.Unlock()
	add("violations", len(res.Violations))

	if len(res.Violations) > 0 {
		dir := cfg.OutDir
		if dir == "" {
			// Kept after the test: the history is what the failure is
			// about.
			var err error
			if dir, err = os.MkdirTemp("", "yunchi-chaos-"); err != nil {
				t.Fatal(err)
			}
		}
		base := filepath.Join(dir, fmt.Sprintf("chaos-%s-seed%d", sc.Name, cfg.Seed))
		if err := hist.WriteFile(base + ".history.jsonl"); err != nil {
			t.Errorf("write history: %v", err)
		}
		if !lin.OK {
			if err := lin.WriteVisualization(base + ".html"); err != nil {
				t.Errorf("write visualisation: %v", err)
			}
		}
		for _, v := range res.Violations {
			t.Errorf("%s: violation: %s", sc.Name, v)
		}
		t.Errorf("%s: history in %s.history.jsonl; replay with -chaos.seed %d -chaos.run %s", sc.Name, base, cfg.Seed, sc.Name)
	}
	return res
}

func ms(d time.Duration) int64 { return d.Milliseconds() }

// clockFile is where controller id's clock offset is written (see
// internal/clock; absent: none).
func (r *Run) clockFile(id string) string { return r.C.DataDir(id) + ".clock" }

// waitHosts waits until every host is registered and up.
func (r *Run) waitHosts(d time.Duration) {
	apitest.Eventually(r.T, d, "every host registered and up", func() bool {
		snap, err := r.snapshot(r.C.Controllers[0].API, false)
		if err != nil {
			return false
		}
		up := 0
		for _, h := range snap.Hosts {
			if h.State == yunchiv1.HostState_HOST_STATE_READY {
				up++
			}
		}
		return up == len(hosts)
	})
}

// setup makes the department and project the clients work in (with a VMs
// quota that bites), and the probe VM, and returns the workload.
func (r *Run) setup() *Workload {
	t := r.T
	ctl := r.C.Controllers[0].API
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sec, err := r.conn(ctl, r.C.Tokens.Secadmin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := yunchiv1.NewDepartmentServiceClient(sec).CreateDepartment(ctx, &yunchiv1.CreateDepartmentRequest{Name: "chaos"}); err != nil {
		t.Fatalf("setup: create department: %v", err)
	}
	for _, p := range []string{"chaos", "probe"} {
		if _, err := yunchiv1.NewProjectServiceClient(sec).CreateProject(ctx, &yunchiv1.CreateProjectRequest{Name: p, Department: "chaos"}); err != nil {
			t.Fatalf("setup: create project %s: %v", p, err)
		}
	}
	floor := int64(r.Cfg.Names / 2)
	if _, err := yunchiv1.NewQuotaServiceClient(sec).SetQuota(ctx, &yunchiv1.SetQuotaRequest{Department: "chaos", Project: "chaos", Vms: &floor}); err != nil {
		t.Fatalf("setup: quota: %v", err)
	}
	sys, err := r.conn(ctl, r.C.Tokens.Sysadmin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := yunchiv1.NewVMServiceClient(sys).CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: "probe", Project: "probe", Vcpus: 1, Memory: "256MiB"}); err != nil {
		t.Fatalf("setup: probe vm: %v", err)
	}
	// Two VMs that stay on each host whatever the workload does, so that
	// an agent fault always hits running VMs.
	for _, h := range hosts {
		for i := 1; i <= 2; i++ {
			if _, err := yunchiv1.NewVMServiceClient(sys).CreateVM(ctx, &yunchiv1.CreateVMRequest{
				Name: fmt.Sprintf("resident-%s-%d", h.id, i), Project: "probe", Vcpus: 1, Memory: "256MiB", Constraints: []string{"host=" + h.id},
			}); err != nil {
				t.Fatalf("setup: resident vm on %s: %v", h.id, err)
			}
		}
	}
	var addrs []string
	for _, c := range r.C.Controllers {
		addrs = append(addrs, c.API)
	}
	w := &Workload{
		Controllers: addrs, Dial: r.C.Net.Dial, Sysadmin: r.C.Tokens.Sysadmin, Secadmin: r.C.Tokens.Secadmin,
		Department: "chaos", Project: "chaos", Names: r.Cfg.Names, Clients: r.Cfg.Clients, Seed: r.Cfg.Seed,
		OpTimeout: 10 * time.Second, Rec: NewRecorder(),
	}
	w.SetQuotaFloor(floor)
	return w
}

// snapshot reads one controller's own state (not through the leader:
// every controller's state must hold the invariants). VMs are read before
// quotas and hosts (see CheckQuota).
func (r *Run) snapshot(addr string, withAudit bool) (Snapshot, error) {
	s := Snapshot{Taken: r.now()}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	sys, err := r.conn(addr, r.C.Tokens.Sysadmin)
	if err != nil {
		return s, err
	}
	st, err := yunchiv1.NewClusterServiceClient(sys).GetClusterStatus(ctx, &yunchiv1.GetClusterStatusRequest{})
	if err != nil {
		return s, err
	}
	s.Controller, s.AppliedIndex = st.NodeId, st.AppliedIndex
	vms, err := yunchiv1.NewVMServiceClient(sys).ListVMs(ctx, &yunchiv1.ListVMsRequest{PageSize: 5000})
	if err != nil {
		return s, err
	}
	if vms.NextPageToken != "" {
		return s, errors.New("more than one page of VMs")
	}
	s.VMs = vms.Vms
	sec, err := r.conn(addr, r.C.Tokens.Secadmin)
	if err != nil {
		return s, err
	}
	qs, err := yunchiv1.NewQuotaServiceClient(sec).ListQuotas(ctx, &yunchiv1.ListQuotasRequest{})
	if err != nil {
		return s, err
	}
	s.Quotas = qs.Quotas
	ps, err := yunchiv1.NewProjectServiceClient(sec).ListProjects(ctx, &yunchiv1.ListProjectsRequest{})
	if err != nil {
		return s, err
	}
	s.Projects = ps.Projects
	hs, err := yunchiv1.NewHostServiceClient(sys).ListHosts(ctx, &yunchiv1.ListHostsRequest{PageSize: 1000})
	if err != nil {
		return s, err
	}
	s.Hosts = hs.Hosts
	if withAudit {
		aud, err := r.conn(addr, r.C.Tokens.Auditor)
		if err != nil {
			return s, err
		}
		if s.Audit, err = yunchiv1.NewAuditServiceClient(aud).VerifyAudit(ctx, &yunchiv1.VerifyAuditRequest{}); err != nil {
			return s, err
		}
		// The final comparison needs one state, not reads spread over
		// several applied entries (the leader records heartbeats in the
		// log now and then, even with no client left).
		end, err := yunchiv1.NewClusterServiceClient(sys).GetClusterStatus(ctx, &yunchiv1.GetClusterStatusRequest{})
		if err != nil {
			return s, err
		}
		if end.AppliedIndex != s.AppliedIndex {
			return s, errMoved
		}
	}
	return s, nil
}

// errMoved: the state changed while a snapshot was read.
var errMoved = errors.New("the state changed while it was read")

func (r *Run) now() int64 {
	if r.Rec == nil {
		return 0
	}
	return r.Rec.Now()
}

// agentView asks a host's agent what its libvirt runs.
func (r *Run) agentView(hostID string) (AgentView, error) {
	v := AgentView{HostID: hostID, Taken: r.now()}
	nd := r.C.Net.Node(hostID)
	resp, err := r.agents.Get("http://" + nd.Addr(statusPort) + "/domains")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return v, err
	}
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("agent %s /domains: %d %s", hostID, resp.StatusCode, b)
	}
	var out agent.StatusDomains
	if err := json.Unmarshal(b, &out); err != nil {
		return v, err
	}
	for _, d := range out.Domains {
		v.Domains = append(v.Domains, Domain{VMID: d.VMID, Name: d.Name, Active: d.Active})
	}
	return v, nil
}

// views asks every running agent.
func (r *Run) agentViews() []AgentView {
	var out []AgentView
	for _, a := range r.C.Agents {
		if !a.Running() {
			continue
		}
		if v, err := r.agentView(a.HostID); err == nil {
			out = append(out, v)
		}
	}
	return out
}

// monitor checks the invariants on every controller's state and on what
// the agents run, every period, while the clients and faults run.
func (r *Run) monitor(ctx context.Context, period time.Duration) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, ctl := range r.C.Alive() {
			s, err := r.snapshot(ctl.API, false)
			if err != nil {
				continue // unreachable or frozen: nothing to judge
			}
			// Not CheckAccounting: the hosts' allocated is read after the
			// VMs, by another call, and may count a VM created between.
			r.violate(CheckCapacity(s)...)
			r.violate(CheckQuota(s)...)
			r.violate(CheckUnique(s)...)
			r.mu.Lock()
			r.snapshots++
			r.mu.Unlock()
		}
		vs := r.agentViews()
		r.violate(CheckRunningOnce(vs)...)
		r.mu.Lock()
		r.views += len(vs)
		r.mu.Unlock()
	}
}

// recover waits until every controller runs, knows every voter and has
// applied everything committed.
func (r *Run) recover() {
	for _, ctl := range r.C.Controllers {
		if !ctl.Running() {
			r.C.Restart(ctl)
		}
	}
	for _, a := range r.C.Agents {
		if !a.Running() {
			r.T.Fatalf("agent %s is not running after the fault healed", a.HostID)
		}
	}
	if err := apitest.Poll(context.Background(), 60*time.Second, "every controller to know every voter and apply all that is committed", func() bool {
		var addrs []string
		for _, ctl := range r.C.Controllers {
			if st, err := apitest.Status(ctl.API); err != nil || !apitest.Formed(st, len(r.C.Controllers)) {
				return false
			}
			addrs = append(addrs, ctl.API)
		}
		return apitest.Converged(addrs)
	}); err != nil {
		for _, ctl := range r.C.Controllers {
			st, serr := apitest.Status(ctl.API)
			r.T.Logf("controller %s: %v %v", ctl.ID, st, serr)
		}
		r.T.Fatal(err)
	}
}

// watchAgent waits, while the workload goes on, until host's agent runs
// again every VM that the state placed there to run when the fault healed
// and still does (VMs created, stopped or deleted since are the workload's
// churn, not the fault's), and returns when, on the run's clock (-1: not
// within d, or ctx ended first), and how many VMs that was.
func (r *Run) watchAgent(ctx context.Context, host string, d time.Duration) (int64, int) {
	var want []string
	if s, err := r.snapshot(r.leaderAPI(), false); err == nil {
		for _, vm := range s.VMs {
			if vm.HostId == host && vm.Desired == yunchiv1.PowerState_POWER_STATE_RUNNING {
				want = append(want, vm.Id)
			}
		}
	}
	deadline := time.Now().Add(d)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		s, serr := r.snapshot(r.leaderAPI(), false)
		v, verr := r.agentView(host)
		if serr == nil && verr == nil {
			running := map[string]bool{}
			for _, vm := range s.VMs {
				if vm.HostId == host && vm.Desired == yunchiv1.PowerState_POWER_STATE_RUNNING {
					running[vm.Id] = true
				}
			}
			active := map[string]bool{}
			for _, dom := range v.Domains {
				active[dom.VMID] = dom.Active
			}
			done := true
			for _, id := range want {
				if running[id] && !active[id] {
					done = false
				}
			}
			if done {
				return r.now(), len(want)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return -1, len(want)
}

// finalReads reads every VM name of the workload once more, consistently
// through the leader, after recovery, and records the answers in the
// history (client -1): the linearizability check then covers the state
// the run ends in, so a write acknowledged and lost shows there too, not
// only in CheckAcknowledged.
func (r *Run) finalReads(w *Workload) {
	cc, err := r.conn(r.leaderAPI(), r.C.Tokens.Sysadmin)
	if err != nil {
		r.violate(Violation{Checker: "final", Detail: fmt.Sprintf("final reads: %v", err)})
		return
	}
	vms := yunchiv1.NewVMServiceClient(cc)
	for i := 0; i < w.Names; i++ {
		op := Op{Client: -1, Seq: i + 1, Kind: OpGet, Project: w.Project, Name: fmt.Sprintf("vm-%d", i), Via: r.leaderAPI(), Transport: "grpc", Attempts: 1}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		op.Call = w.Rec.Now()
		vm, err := vms.GetVM(ctx, &yunchiv1.GetVMRequest{Name: op.Name, Project: op.Project, Consistent: true})
		op.Return = w.Rec.Now()
		cancel()
		switch status.Code(err) {
		case codes.OK:
			op.Outcome = OK
			fill(&op, vm)
		case codes.NotFound:
			op.Outcome = NotFound
		default:
			r.violate(Violation{Checker: "final", Detail: fmt.Sprintf("final read of %s: %v", op.Key(), err)})
			continue
		}
		w.Rec.add(op)
	}
}

// waitReconciled waits until what every agent runs matches the state (and
// returns when, on the run's clock; -1 if it did not within d: a
// violation).
func (r *Run) waitReconciled(d time.Duration) int64 {
	deadline := time.Now().Add(d)
	var last []Violation
	for {
		s, err := r.snapshot(r.leaderAPI(), false)
		if err == nil {
			vs := r.agentViews()
			if len(vs) == len(r.C.Agents) {
				if last = CheckAgentsMatch(vs, s); len(last) == 0 {
					return r.now()
				}
			}
		}
		if time.Now().After(deadline) {
			if len(last) == 0 {
				last = []Violation{{Checker: "agents", Detail: fmt.Sprintf("agents not reconciled within %v: %v", d, err)}}
			}
			r.violate(last...)
			return -1
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (r *Run) leaderAPI() string {
	if l := r.C.Leader(); l != nil {
		return l.API
	}
	return r.C.Controllers[0].API
}

// finalChecks judges the state after recovery and returns the number of
// VMs in it.
func (r *Run) finalChecks(h History) int {
	// The agents may still report a status (a VM the probe stopped last
	// shutting down): compare the controllers at one applied index, read
	// again until they all show the same.
	var snaps []Snapshot
	for try := 0; ; try++ {
		snaps = snaps[:0]
		var failed error
		for _, ctl := range r.C.Controllers {
			s, err := r.snapshot(ctl.API, true)
			if err != nil {
				failed = fmt.Errorf("controller %s cannot be read after recovery: %v", ctl.ID, err)
				if errors.Is(err, errMoved) {
					failed = fmt.Errorf("controller %s: no stable state to compare after recovery (%v)", ctl.ID, err)
				}
				continue
			}
			snaps = append(snaps, s)
		}
		same := failed == nil
		for _, s := range snaps {
			same = same && s.AppliedIndex == snaps[0].AppliedIndex
		}
		if same || try == 50 {
			if failed != nil {
				r.violate(Violation{Checker: "final", Detail: failed.Error()})
			}
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(snaps) == 0 {
		return 0
	}
	r.violate(CheckSameState(snaps)...)
	r.violate(CheckAudit(snaps)...)
	for _, s := range snaps {
		r.violate(CheckCapacity(s)...)
		r.violate(CheckAccounting(s)...) // nothing moves now
		r.violate(CheckQuota(s)...)
		r.violate(CheckUnique(s)...)
	}
	r.violate(CheckAcknowledged(h, snaps[0])...)
	return len(snaps[0].VMs)
}

// prober writes (stop, start of the probe VM) every 100 ms through any
// controller, to measure when writes work again after a fault.
type prober struct {
	r  *Run
	mu sync.Mutex
	ok [][2]int64 // run-clock times (call, return) of successful writes
}

func (p *prober) run(ctx context.Context) {
	i := 0
	for ctx.Err() == nil {
		ctls := p.r.C.Controllers
		addr := ctls[i%len(ctls)].API
		i++
		cc, err := p.r.conn(addr, p.r.C.Tokens.Sysadmin)
		if err != nil {
			continue
		}
		call := p.r.now()
		actx, cancel := context.WithTimeout(ctx, time.Second)
		vms := yunchiv1.NewVMServiceClient(cc)
		req := &yunchiv1.VMActionRequest{Name: "probe", Project: "probe"}
		if i%2 == 0 {
			_, err = vms.StopVM(actx, req)
		} else {
			_, err = vms.StartVM(actx, req)
		}
		cancel()
		if err == nil {
			p.mu.Lock()
			p.ok = append(p.ok, [2]int64{call, p.r.now()})
			p.mu.Unlock()
		} else if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded && c != codes.Canceled {
			p.r.violate(Violation{Checker: "probe", Detail: fmt.Sprintf("probe write via %s at %v: %v", addr, time.Duration(call), err)})
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// writes are successful writes, (call, return) on the run's clock.
type writes [][2]int64

func (p *prober) writes() writes {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append(writes(nil), p.ok...)
}

// firstAfter is how long after t the first of the writes sent after t
// ended (one sent before may have committed just before the fault).
func (w writes) firstAfter(t int64) (time.Duration, bool) {
	best := int64(-1)
	for _, x := range w {
		if x[0] >= t && (best < 0 || x[1] < best) {
			best = x[1]
		}
	}
	if best < 0 {
		return 0, false
	}
	return time.Duration(best - t), true
}

// longestGap is the longest time between two writes ending.
func (w writes) longestGap() time.Duration {
	ends := make([]int64, len(w))
	for i, x := range w {
		ends[i] = x[1]
	}
	slices.Sort(ends)
	var g int64
	for i := 1; i < len(ends); i++ {
		g = max(g, ends[i]-ends[i-1])
	}
	return time.Duration(g)
}

func (p *prober) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ok)
}
