package devcluster

// Taking one center of the dev cluster down and bringing it back while it
// runs, as a network failure that cuts a center off would (not a fire:
// its machines keep what they run). Down, the center's agents end (no
// heartbeat, report or reconcile) and its controller stops (its raft voter
// is gone; the other two keep the quorum). Each simulated host keeps its
// libvirt test-driver connection, which holds that host's domains: they
// are still there, and running, when its agent comes back. Up, the
// controller starts again on the same data dir and config (it is a voter
// from its own raft state) and each host gets a new agent on the same
// driver, which reconciles against what the controllers assign it now
// (after a failover, nothing: it removes the VMs that moved away).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/controller"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Center states, as `yunchid dev center list` shows them.
const (
	StateUp       = "up"
	StateDown     = "down"
	StateStopping = "stopping"
	StateStarting = "starting"
)

// StartTimeout bounds how long a start waits for the center's controller
// to catch up with the leader and its hosts to be READY again.
const StartTimeout = 60 * time.Second

// Control takes the centers of a running dev cluster down and up. One stop
// or start runs at a time.
type Control struct {
	ctx    context.Context // ends waits when dev stops
	cancel context.CancelFunc
	lg     *slog.Logger

	op sync.Mutex // held by a stop or start, and by shutdown

	mu       sync.Mutex
	closing  bool
	ctls     []*running          // by index in Centers; a stopped one stays until started again
	ctlCfgs  []controller.Config // as first started
	state    []string            // by index in Centers
	since    []time.Time
	hosts    []*simHost
	real     *RealHosts
	ready    bool   // set once dev is ready: until then the endpoint says so
	token    string // the sysadmin's: what the control endpoint wants
	onFailed func(error)
}

// simHost is one simulated host: its driver lives as long as dev does,
// its agent only while its center is up.
type simHost struct {
	spec HostSpec
	cfg  agent.Config
	drv  *libvirt.Driver
	run  *agentRun
}

// agentRun is one running agent.
type agentRun struct {
	stop context.CancelFunc
	done chan struct{}
}

func (r *agentRun) end() {
	if r == nil {
		return
	}
	r.stop()
	<-r.done
}

// running is a controller started by Run.
type running struct {
	ctl  *controller.Controller
	stop context.CancelFunc
	done chan struct{}
	// stopping: taken down on purpose (its center stopped); an error it
	// ends with is the stop's, not dev's.
	stopping atomic.Bool
	err      error // what Run returned, once done is closed
}

func newControl(ctx context.Context, lg *slog.Logger, onFailed func(error)) *Control {
	n := len(Centers)
	ctx, cancel := context.WithCancel(ctx)
	c := &Control{ctx: ctx, cancel: cancel, lg: lg, onFailed: onFailed,
		ctls: make([]*running, n), ctlCfgs: make([]controller.Config, n),
		state: make([]string, n), since: make([]time.Time, n)}
	for i := range c.state {
		c.state[i] = StateStarting
	}
	return c
}

// centerIndex is the index of center id in Centers, -1 if none.
func centerIndex(id string) int {
	for i, c := range Centers {
		if c.ID == id {
			return i
		}
	}
	return -1
}

// startController starts controller i of cfg; its Run failing (not on
// purpose) ends dev.
func (c *Control) startController(i int, cfg controller.Config) (*running, error) {
	ctl, err := controller.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("controller %s: %w", cfg.ID, err)
	}
	ctx, stop := context.WithCancel(context.Background())
	r := &running{ctl: ctl, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = ctl.Run(ctx)
		if r.err == nil {
			return
		}
		if r.stopping.Load() {
			c.lg.Warn("controller stopped with an error", "controller", cfg.ID, "err", r.err)
			return
		}
		c.onFailed(fmt.Errorf("controller %s: %w", cfg.ID, r.err))
	}()
	c.mu.Lock()
	c.ctls[i], c.ctlCfgs[i] = r, cfg
	c.mu.Unlock()
	return r, nil
}

// running lists the controllers that run now.
func (c *Control) running() []*running {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*running
	for i, r := range c.ctls {
		if r != nil && c.state[i] != StateDown {
			out = append(out, r)
		}
	}
	return out
}

// startSim starts simulated host h's agent on its driver. Callers hold
// mu.
func (c *Control) startSim(h *simHost) {
	a := agent.New(h.cfg, h.drv)
	ctx, stop := context.WithCancel(context.Background())
	r := &agentRun{stop: stop, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			c.lg.Error("agent stopped", "host", h.spec.ID, "err", err)
		}
	}()
	h.run = r
}

// centerHosts are the ids of center id's hosts, simulated then real.
func (c *Control) centerHosts(id string) []string {
	var out []string
	for _, h := range c.hosts {
		if h.spec.Center == id {
			out = append(out, h.spec.ID)
		}
	}
	if c.real != nil {
		for i := range c.real.hosts {
			if c.real.center(i) == id {
				out = append(out, c.real.hosts[i].ID)
			}
		}
	}
	return out
}

// CenterError is a refused stop or start: Code says why (as the control
// endpoint's answer does).
type CenterError struct {
	Code string // one of the Code* constants
	Msg  string
}

func (e *CenterError) Error() string { return e.Msg }

// Reasons a request to the control endpoint is refused.
const (
	CodeNotFound           = "not_found"           // no such center
	CodeFailedPrecondition = "failed_precondition" // already up or down, or the quorum forbids it
	CodeUnavailable        = "unavailable"         // dev is starting or stopping
	CodeUnauthenticated    = "unauthenticated"     // no or a wrong token
	CodeInvalid            = "invalid"             // a malformed request
	CodeInternal           = "internal"            // something failed on the way
)

func centerErr(code, format string, args ...any) error {
	return &CenterError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// check finds center id for a stop (toStop) or a start, or says why not.
// Callers hold mu.
func (c *Control) check(id string, toStop bool) (int, error) {
	if c.closing {
		return 0, centerErr(CodeUnavailable, "yunchid dev is stopping")
	}
	if !c.ready {
		return 0, centerErr(CodeUnavailable, "yunchid dev is still starting: try again once it prints ready")
	}
	i := centerIndex(id)
	if i < 0 {
		return 0, centerErr(CodeNotFound, "unknown center %q: the dev cluster's centers are %s", id, centerIDs())
	}
	switch st := c.state[i]; {
	case toStop && st == StateDown:
		return 0, centerErr(CodeFailedPrecondition, "center %s is down already (since %s): start it with: yunchid dev center start %s", id, c.since[i].Format(time.TimeOnly), id)
	case !toStop && st == StateUp:
		return 0, centerErr(CodeFailedPrecondition, "center %s is up already", id)
	}
	return i, nil
}

func centerIDs() string {
	var ids []string
	for _, c := range Centers {
		ids = append(ids, c.ID)
	}
	return strings.Join(ids, ", ")
}

// quorumLeft refuses to stop center i when the voters left running would
// be short of raft's quorum. Callers hold mu.
func (c *Control) quorumLeft(i int) error {
	var conf raft.Configuration
	var err error = errors.New("no controller runs")
	for j, r := range c.ctls {
		if r != nil && c.state[j] != StateDown {
			if conf, err = r.ctl.Node().Configuration(); err == nil {
				break
			}
		}
	}
	if err != nil {
		return centerErr(CodeInternal, "cannot read the raft configuration: %v", err)
	}
	down := map[string]bool{Centers[i].ID: true}
	var downNames []string
	for j, st := range c.state {
		if st == StateDown {
			down[c.ctlCfgs[j].ID] = true
			downNames = append(downNames, Centers[j].ID)
		}
	}
	voters, left := 0, 0
	for _, s := range conf.Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if !down[string(s.ID)] {
			left++
		}
	}
	if quorum := voters/2 + 1; left < quorum {
		why := ""
		if len(downNames) > 0 {
			why = fmt.Sprintf("center %s is down already, and ", strings.Join(downNames, ", "))
		}
		return centerErr(CodeFailedPrecondition, "cannot stop center %s: %swith it down only %d of %d controllers would be left, short of the raft quorum of %d (the cluster could take no writes)%s",
			Centers[i].ID, why, left, voters, quorum, startFirst(downNames))
	}
	return nil
}

func startFirst(down []string) string {
	if len(down) == 0 {
		return ""
	}
	return ": start " + strings.Join(down, ", ") + " first"
}

// Stop takes center id down: its agents end, then its controller.
func (c *Control) Stop(id string) (string, error) {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	i, err := c.check(id, true)
	if err == nil {
		err = c.quorumLeft(i)
	}
	if err != nil {
		c.mu.Unlock()
		return "", err
	}
	c.state[i] = StateStopping
	r := c.ctls[i]
	var runs []*agentRun
	for _, h := range c.hosts {
		if h.spec.Center == id {
			runs = append(runs, h.run)
			h.run = nil
		}
	}
	if c.real != nil {
		for k := range c.real.hosts {
			if c.real.center(k) == id {
				runs = append(runs, c.real.agents[k])
				c.real.agents[k] = nil
			}
		}
	}
	c.mu.Unlock()

	begun := time.Now()
	var wg sync.WaitGroup
	for _, a := range runs {
		wg.Go(a.end)
	}
	wg.Wait()
	led := r.ctl.Node().IsLeader()
	r.stopping.Store(true)
	r.stop()
	<-r.done

	c.mu.Lock()
	c.state[i], c.since[i] = StateDown, time.Now()
	c.mu.Unlock()
	took := time.Since(begun).Round(time.Millisecond)
	c.lg.Info("center stopped", "center", id, "agents", len(runs), "took", took)

	lead := "it was a follower"
	if led {
		lead = "it led; " + c.waitLeader()
	}
	ttl := c.ctlCfgs[i].HostTTL
	if ttl == 0 {
		ttl = 10 * time.Second // the leader's default (leader.New)
	}
	return fmt.Sprintf("center %s is down (%s): controller %s stopped (%s), %s stopped (their domains keep running, as behind a cut link); its hosts go DOWN once the leader has missed their heartbeats for %s",
		id, took, r.ctl.Node().ID(), lead, agents(len(runs)), ttl), nil
}

// waitLeader says which controller leads once the others have elected one
// (within 10 s).
func (c *Control) waitLeader() string {
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, r := range c.running() {
			if r.ctl.Node().IsLeader() {
				return r.ctl.Node().ID() + " leads now"
			}
		}
		if time.Now().After(deadline) || sleep(c.ctx, 100*time.Millisecond) != nil {
			return "no leader elected yet"
		}
	}
}

// Start brings center id back: its controller on the same data dir and
// config, then a new agent on each of its hosts. It returns once the
// controller has caught up with the leader and the hosts are READY again
// (or says what is not, after StartTimeout).
func (c *Control) Start(id string) (string, error) {
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	i, err := c.check(id, false)
	if err != nil {
		c.mu.Unlock()
		return "", err
	}
	cfg := c.ctlCfgs[i]
	if !cfg.Bootstrap {
		// Joins go to whichever of the others answers (the first may be
		// the one down); a voter already in the configuration is a no-op.
		cfg.Join = nil
		for j, r := range c.ctls {
			if j != i && c.state[j] != StateDown {
				cfg.Join = append(cfg.Join, r.ctl.Addr())
			}
		}
	}
	c.state[i] = StateStarting
	c.mu.Unlock()

	begun := time.Now()
	r, err := c.startController(i, cfg)
	if err != nil {
		c.mu.Lock()
		c.state[i] = StateDown
		c.mu.Unlock()
		return "", centerErr(CodeInternal, "center %s stays down: %v", id, err)
	}
	// The agents come back once their center's controller has caught up
	// (the first one each dials), or after the wait anyway: they would
	// only be told to try again meanwhile.
	deadline := begun.Add(StartTimeout)
	caughtUp := c.waitCaughtUp(r, deadline)
	c.mu.Lock()
	n := 0
	for _, h := range c.hosts {
		if h.spec.Center == id {
			c.startSim(h)
			n++
		}
	}
	if c.real != nil {
		for k := range c.real.hosts {
			if c.real.center(k) == id {
				c.real.agents[k] = c.real.start(k)
				n++
			}
		}
	}
	c.state[i], c.since[i] = StateUp, time.Now()
	hosts := c.centerHosts(id)
	c.mu.Unlock()
	c.lg.Info("center started", "center", id, "agents", n)

	if caughtUp != nil {
		return "", centerErr(CodeInternal, "center %s started, but %v", id, caughtUp)
	}
	ready, err := c.waitHostsBack(hosts, begun, deadline)
	if err != nil {
		return "", centerErr(CodeInternal, "center %s started, but %v", id, err)
	}
	return fmt.Sprintf("center %s is up (%s): controller %s is a voter again, caught up with leader %s; %s started, %d/%d hosts READY",
		id, time.Since(begun).Round(time.Millisecond), r.ctl.Node().ID(), r.ctl.Node().LeaderID(), agents(n), ready, len(hosts)), nil
}

func agents(n int) string {
	if n == 1 {
		return "1 agent"
	}
	return fmt.Sprintf("%d agents", n)
}

// waitCaughtUp waits until r knows a leader, is a voter in its
// configuration and has applied what the leader had committed when r
// started.
func (c *Control) waitCaughtUp(r *running, deadline time.Time) error {
	var target uint64
	for _, o := range c.running() {
		if o != r && o.ctl.Node().IsLeader() {
			_, target, _ = o.ctl.Node().Indexes()
		}
	}
	node := r.ctl.Node()
	for {
		_, _, applied := node.Indexes()
		leader := node.LeaderID()
		voter := false
		if conf, err := node.Configuration(); err == nil {
			for _, s := range conf.Servers {
				voter = voter || (string(s.ID) == node.ID() && s.Suffrage == raft.Voter)
			}
		}
		if leader != "" && voter && applied >= target {
			return nil
		}
		select {
		case <-r.done:
			return fmt.Errorf("controller %s ended: %v", node.ID(), r.err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("controller %s did not catch up within %s (leader %q, voter %v, applied %d of %d)", node.ID(), StartTimeout, leader, voter, applied, target)
		}
		if err := sleep(c.ctx, 100*time.Millisecond); err != nil {
			return errors.New("yunchid dev is stopping")
		}
	}
}

// waitHostsBack waits until every host in ids is READY with a heartbeat
// (or registration) since begun, in the leader's state; it returns how
// many are.
func (c *Control) waitHostsBack(ids []string, begun, deadline time.Time) (int, error) {
	for {
		ready := 0
		var leader *running
		for _, r := range c.running() {
			if r.ctl.Node().IsLeader() {
				leader = r
			}
		}
		if leader != nil {
			for _, id := range ids {
				hv, ok := leader.ctl.Node().Store.Host(id)
				if ok && hv.Host.State == statev1.HostState_HOST_STATE_READY && hv.Host.LastHeartbeatUnixNano >= begun.UnixNano() {
					ready++
				}
			}
		}
		if ready == len(ids) {
			return ready, nil
		}
		if time.Now().After(deadline) {
			return ready, fmt.Errorf("only %d of its %d hosts were READY again within %s (see yunchi host list)", ready, len(ids), StartTimeout)
		}
		if err := sleep(c.ctx, 200*time.Millisecond); err != nil {
			return ready, errors.New("yunchid dev is stopping")
		}
	}
}

// CenterStatus is one center as `yunchid dev center list` shows it.
type CenterStatus struct {
	Center string `json:"center"`
	Site   string `json:"site"`
	Role   string `json:"role"`
	// State: up, down, stopping or starting.
	State string    `json:"state"`
	Since time.Time `json:"since"`
	// Controller is the center's controller id; Raft its raft state
	// (Leader, Follower, Candidate; "stopped" while the center is down).
	Controller    string `json:"controller"`
	ControllerAPI string `json:"controller_api"`
	Raft          string `json:"raft"`
	// Hosts is how many hosts the center has, Agents how many agents run
	// there now, HostsReady how many hosts the leader holds READY.
	Hosts      int `json:"hosts"`
	Agents     int `json:"agents"`
	HostsReady int `json:"hosts_ready"`
}

// List is every center's status.
func (c *Control) List() ([]CenterStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return nil, centerErr(CodeUnavailable, "yunchid dev is stopping")
	}
	if !c.ready {
		return nil, centerErr(CodeUnavailable, "yunchid dev is still starting: try again once it prints ready")
	}
	var leader *running
	for j, r := range c.ctls {
		if r != nil && c.state[j] != StateDown && r.ctl.Node().IsLeader() {
			leader = r
		}
	}
	var out []CenterStatus
	for i, ce := range Centers {
		r := c.ctls[i]
		s := CenterStatus{Center: ce.ID, Site: ce.Site, Role: ce.Role, State: c.state[i], Since: c.since[i],
			Controller: c.ctlCfgs[i].ID, ControllerAPI: r.ctl.Addr(), Raft: "stopped"}
		if c.state[i] != StateDown {
			s.Raft = r.ctl.Node().Raft.State().String()
		}
		ids := c.centerHosts(ce.ID)
		s.Hosts = len(ids)
		for _, h := range c.hosts {
			if h.spec.Center == ce.ID && h.run != nil {
				s.Agents++
			}
		}
		if c.real != nil {
			for k, a := range c.real.agents {
				if c.real.center(k) == ce.ID && a != nil {
					s.Agents++
				}
			}
		}
		if leader != nil {
			for _, id := range ids {
				if hv, ok := leader.ctl.Node().Store.Host(id); ok && hv.Host.State == statev1.HostState_HOST_STATE_READY {
					s.HostsReady++
				}
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// Domains lists the domains simulated host id's libvirt connection holds
// (also while its center is down: the connection stays open).
func (c *Control) Domains(ctx context.Context, id string) ([]agent.Domain, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.hosts {
		if h.spec.ID == id {
			return h.drv.ListDomains(ctx)
		}
	}
	return nil, fmt.Errorf("no simulated host %q", id)
}

// markReady lets the control endpoint act (dev is ready).
func (c *Control) markReady(token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ready, c.token = true, token
	now := time.Now()
	for i := range c.state {
		c.state[i], c.since[i] = StateUp, now
	}
}

// shutdown stops everything that runs: agents, real hosts, the drivers
// of the simulated hosts, then the controllers (leader first). Once.
func (c *Control) shutdown() {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing = true
	c.mu.Unlock()
	// A stop or start under way ends first (its waits end now).
	c.cancel()
	c.op.Lock()
	defer c.op.Unlock()
	var wg sync.WaitGroup
	for _, h := range c.hosts {
		wg.Go(h.run.end)
	}
	wg.Wait()
	for _, h := range c.hosts {
		h.drv.Close()
	}
	c.real.close()
	var ctls []*running
	for _, r := range c.ctls {
		if r != nil {
			ctls = append(ctls, r)
		}
	}
	stopAll(ctls)
}
