// Package clustertest runs Yunchi as real processes on loopback for tests:
// controllers and agents started from the yunchid binary, killed with
// SIGKILL by pid, restarted on the same data dir. Fault tests build on it.
// Everything it starts is stopped, and everything it writes is removed, when
// the test ends (also on failure).
package clustertest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/controller"
	"github.com/yunchi/yunchi/internal/apitest"
	"github.com/yunchi/yunchi/internal/daemon"
	"github.com/yunchi/yunchi/internal/netns"
	"github.com/yunchi/yunchi/internal/pki"
)

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

// Main runs a test binary's tests (call it from TestMain) and then
// removes the yunchid that Binary built for them: one build per test
// process, none left behind in $TMPDIR.
func Main(m *testing.M) int {
	code := m.Run()
	RemoveBinary()
	return code
}

// RemoveBinary removes what Binary built (nothing if it built nothing).
func RemoveBinary() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	buildOnce, binDir, binPath, buildErr = sync.Once{}, "", "", nil
}

// Binary builds cmd/yunchid once per test process and returns its path;
// Main removes it after the tests.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "yunchid-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binDir, binPath = dir, filepath.Join(dir, "yunchid")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/yunchi/yunchi/cmd/yunchid").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build yunchid: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// FreePort returns a loopback address that was free a moment ago.
func FreePort(t testing.TB) string {
	t.Helper()
	// A port the kernel hands out for 127.0.0.1:0 is in the ephemeral
	// range, where every outgoing connection of the machine also takes its
	// local port: between this check and the daemon's bind, another test's
	// connection may take it ("bind: address already in use", met in CI).
	// Ports below the ephemeral range (32768-60999 on Linux) are taken
	// only by listeners; 29000-32500 here, apart from the sets
	// apitest.FreePortOffset hands out.
	for range 200 {
		port := 29000 + rand.IntN(3500) // apitest.FreePortOffset takes 20000-29000
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		return l.Addr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Proc is one daemon process.
type Proc struct {
	Name string
	Args []string
	Dir  string
	// Node is the network namespace it runs in (nil: the test's own, on
	// loopback).
	Node *netns.Node
	// d is the process of the last start: a restart replaces it while
	// other goroutines of the test may ask whether it runs.
	d atomic.Pointer[daemon.Proc]
}

func (p *Proc) start(t testing.TB, bin string) {
	t.Helper()
	args := p.Args
	if p.Node != nil {
		bin, args = p.Node.Command(bin, args...)
	}
	d, err := daemon.Start(bin, args, filepath.Join(p.Dir, p.Name+".log"), false)
	if err != nil {
		t.Fatal(err)
	}
	p.d.Store(d)
}

// Pid is the process id (of the last start).
func (p *Proc) Pid() int { return p.d.Load().Pid() }

// Running says whether the process is still up.
func (p *Proc) Running() bool { return p.d.Load().Running() }

// Kill sends SIGKILL to the process (by its pid) and waits for it.
func (p *Proc) Kill() { p.d.Load().Kill() }

// Freeze stops the process with SIGSTOP: its sockets stay open but it
// answers nothing, like a hung process. Thaw, Stop and Kill end it.
func (p *Proc) Freeze() { p.d.Load().Freeze() }

// Thaw lets a frozen process run again (SIGCONT).
func (p *Proc) Thaw() { p.d.Load().Thaw() }

// Stop sends SIGTERM and waits up to 10 s, then SIGKILL. A frozen process
// is thawed first, or it could not act on SIGTERM.
func (p *Proc) Stop() { p.d.Load().Stop() }

// Log returns what the process wrote so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, p.Name+".log"))
	return string(b)
}

// Controller is a controller process.
type Controller struct {
	*Proc
	ID, Center, API, Raft string
}

// Agent is an agent process on a simulated host (libvirt test driver).
type Agent struct {
	*Proc
	HostID string
}

// Cluster is a set of processes sharing one temp dir.
type Cluster struct {
	t           testing.TB
	bin, dir    string
	Controllers []*Controller
	Agents      []*Agent
	// Net is the cluster's network when it runs in namespaces (NewNetns):
	// one per process, faults on its links. nil on loopback.
	Net *netns.Net
	// ControllerArgs are added to every controller's command line (given
	// its id), and AgentArgs (given the agent's namespace, nil on
	// loopback) to every agent's: set them before starting any.
	ControllerArgs func(id string) []string
	AgentArgs      func(hostID string, node *netns.Node) []string
	// Tokens are the administrators' tokens the first controller made
	// (set by StartControllers). The apitest helpers send the sysadmin's
	// for the rest of the test; CLI runs get it with Env.
	Tokens controller.AdminTokens
}

// New returns an empty cluster on loopback; Stop runs at test cleanup.
func New(t testing.TB) *Cluster {
	c := &Cluster{t: t, bin: Binary(t), dir: t.TempDir()}
	c.cleanup()
	return c
}

// NewNetns returns an empty cluster whose processes will each run in a
// network namespace of their own, joined by a bridge (internal/netns), so
// tests can cut links between them. The test reaches them from the
// bridge's hub: every apitest helper dials through it until the test ends.
// It skips the test where namespaces cannot be made (not root, no ip).
func NewNetns(t testing.TB) *Cluster {
	if why := netns.Available(); why != "" {
		t.Skip(why)
	}
	n, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, bin: Binary(t), dir: t.TempDir(), Net: n}
	prev := apitest.SetDialer(n.Dial)
	t.Cleanup(func() {
		// Runs after cleanup's (registered later, run first): the
		// processes are gone by now.
		apitest.SetDialer(prev)
		if err := n.Close(); err != nil {
			t.Errorf("remove the test's network namespaces: %v", err)
		}
	})
	c.cleanup()
	return c
}

// node makes the namespace a process named name runs in (nil on loopback).
func (c *Cluster) node(name string) *netns.Node {
	c.t.Helper()
	if c.Net == nil {
		return nil
	}
	nd, err := c.Net.Add(name)
	if err != nil {
		c.t.Fatal(err)
	}
	return nd
}

// cleanup registers the end of the cluster: its processes stopped, their
// logs shown when the test failed.
func (c *Cluster) cleanup() {
	t := c.t
	prev := apitest.SetToken("")
	t.Cleanup(func() {
		apitest.SetToken(prev)
		for _, a := range c.Agents {
			a.Stop()
		}
		for _, ctl := range c.Controllers {
			ctl.Stop()
		}
		if t.Failed() {
			for _, ctl := range c.Controllers {
				t.Logf("--- log of controller %s:\n%s", ctl.ID, tail(ctl.Log(), 4000))
			}
			for _, a := range c.Agents {
				t.Logf("--- log of agent %s:\n%s", a.HostID, tail(a.Log(), 2000))
			}
		}
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// StartControllers starts n controllers: the first bootstraps (the test
// waits for the administrator tokens it writes to its data dir), the
// others join it with the sysadmin's token. Centers cycle a1, a2, b1. It
// waits for n voters and a leader.
func (c *Cluster) StartControllers(n int) {
	c.t.Helper()
	centers := []string{"a1", "a2", "b1"}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("c%d", i+1)
		ctl := &Controller{ID: id, Center: centers[i%3]}
		nd := c.node(id)
		if nd != nil {
			ctl.API, ctl.Raft = nd.Addr(8470), nd.Addr(8480)
		} else {
			ctl.API, ctl.Raft = FreePort(c.t), FreePort(c.t)
		}
		ctl.Proc = &Proc{Name: "controller-" + ctl.ID, Dir: c.dir, Node: nd, Args: []string{
			"--log-level", "info", "controller", "--id", ctl.ID, "--center", ctl.Center,
			"--listen", ctl.API, "--raft-listen", ctl.Raft, "--data-dir", filepath.Join(c.dir, ctl.ID),
			"--insecure", // plaintext on loopback; TLS has its own tests (cmd/yunchid/tls_test.go)
		}}
		if c.ControllerArgs != nil {
			ctl.Args = append(ctl.Args, c.ControllerArgs(id)...)
		}
		if i == 0 {
			ctl.Args = append(ctl.Args, "--bootstrap")
		} else {
			ctl.Args = append(ctl.Args, "--join", c.Controllers[0].API, "--join-token", c.Tokens.Sysadmin)
		}
		ctl.start(c.t, c.bin)
		c.Controllers = append(c.Controllers, ctl)
		if i == 0 {
			toks, err := daemon.WaitAdminTokens(context.Background(), ctl.d.Load(), filepath.Join(c.dir, ctl.ID), 60*time.Second)
			if err != nil {
				c.t.Fatalf("controller %s: %v", ctl.ID, err)
			}
			c.Tokens = toks
			apitest.SetToken(toks.Sysadmin) // New's cleanup puts the previous one back
		}
	}
	c.WaitVoters(n, 60*time.Second)
}

// DataDir is where controller id keeps its data (made when it starts: a
// test may mount something there first).
func (c *Cluster) DataDir(id string) string { return filepath.Join(c.dir, id) }

// Restart starts a stopped or killed controller again on its data dir.
func (c *Cluster) Restart(ctl *Controller) {
	c.t.Helper()
	ctl.start(c.t, c.bin)
}

// RestartAgent starts a stopped or killed agent again (same host, same
// token, same simulated node: libvirt's test driver starts it with no
// domains, as a rebooted host).
func (c *Cluster) RestartAgent(a *Agent) {
	c.t.Helper()
	a.start(c.t, c.bin)
}

// StartAgent starts an agent for a simulated host with the given size. The
// k-th agent started tries controller k (modulo their number) first, so
// agents spread over the controllers as in a real deployment. Its host
// token is made through the API with the security administrator's token
// and given in a file of mode 0600.
func (c *Cluster) StartAgent(hostID, center string, cpus int, memBytes, diskBytes int64) *Agent {
	c.t.Helper()
	path := filepath.Join(c.dir, hostID+".xml")
	uri, err := libvirt.WriteTestNodeXML(path, libvirt.TestNode{CPUs: cpus, MemoryBytes: memBytes})
	if err != nil {
		c.t.Fatal(err)
	}
	tokFile := c.hostTokenFile(hostID)
	nd := c.node(hostID)
	a := &Agent{HostID: hostID, Proc: &Proc{Name: "agent-" + hostID, Dir: c.dir, Node: nd, Args: []string{
		"agent", "--host-id", hostID, "--center", center, "--libvirt-uri", uri,
		"--disk-bytes", fmt.Sprint(diskBytes), "--controllers", c.apiListFrom(len(c.Agents)), "--heartbeat", "500ms",
		"--token-file", tokFile,
		"--insecure",
	}}}
	if c.AgentArgs != nil {
		a.Args = append(a.Args, c.AgentArgs(hostID, nd)...)
	}
	a.start(c.t, c.bin)
	c.Agents = append(c.Agents, a)
	return a
}

// hostTokenFile makes a host token for hostID through any live controller
// (a follower forwards the write) and writes it to a 0600 file.
func (c *Cluster) hostTokenFile(hostID string) string {
	c.t.Helper()
	if c.Tokens.Secadmin == "" {
		c.t.Fatal("clustertest: start the controllers before the agents")
	}
	var tok string
	var last error
	if err := apitest.Poll(context.Background(), 30*time.Second, "a host token for "+hostID, func() bool {
		for _, ctl := range c.Alive() {
			if tok, last = apitest.CreateHostToken(ctl.API, c.Tokens.Secadmin, hostID); last == nil {
				return true
			}
		}
		return false
	}); err != nil {
		c.t.Fatalf("%v (last error: %v)", err, last)
	}
	dir, name := filepath.Join(c.dir, "tokens"), hostID+".token"
	if err := pki.WriteFiles(dir, map[string][]byte{name: []byte(tok + "\n")}); err != nil {
		c.t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// APIList is the controllers' API addresses, comma-separated.
func (c *Cluster) APIList() string { return c.apiListFrom(0) }

// apiListFrom is APIList starting at controller k (modulo their number).
func (c *Cluster) apiListFrom(k int) string {
	var addrs []string
	for i := range c.Controllers {
		addrs = append(addrs, c.Controllers[(i+k)%len(c.Controllers)].API)
	}
	return strings.Join(addrs, ",")
}

// Alive returns the controllers whose process runs.
func (c *Cluster) Alive() []*Controller {
	var out []*Controller
	for _, ctl := range c.Controllers {
		if ctl.Running() {
			out = append(out, ctl)
		}
	}
	return out
}

// Leader returns the controller that is leader now, or nil.
func (c *Cluster) Leader() *Controller {
	for _, ctl := range c.Alive() {
		if st, err := apitest.Status(ctl.API); err == nil && st.NodeState == "Leader" {
			return ctl
		}
	}
	return nil
}

// WaitVoters waits until every live controller reports n members, all with
// API addresses, and a leader.
func (c *Cluster) WaitVoters(n int, d time.Duration) {
	c.t.Helper()
	// Every live controller, not just one: a follower that has not yet
	// applied the leader's member record cannot forward to it.
	apitest.Eventually(c.t, d, fmt.Sprintf("%d voters and a leader known to every live controller", n), func() bool {
		for _, ctl := range c.Alive() {
			if st, err := apitest.Status(ctl.API); err != nil || !apitest.Formed(st, n) {
				return false
			}
		}
		return true
	})
}

// WaitConverged waits until every live controller has applied all that any
// of them reports committed.
func (c *Cluster) WaitConverged(d time.Duration) {
	c.t.Helper()
	apitest.Eventually(c.t, d, "controllers to converge", func() bool {
		var addrs []string
		for _, ctl := range c.Alive() {
			addrs = append(addrs, ctl.API)
		}
		return apitest.Converged(addrs)
	})
}
