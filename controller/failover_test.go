package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/internal/apitest"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// freezer is a TCP proxy in front of one controller's API that can be
// frozen like the process behind it under SIGSTOP: connections stay open and
// new ones are accepted, but no byte is relayed until it thaws.
type freezer struct {
	lis    net.Listener
	closed chan struct{}
	wg     sync.WaitGroup

	mu     sync.Mutex
	target string
	thawed chan struct{} // nil while relaying; closed on thaw
	conns  map[net.Conn]bool
}

func newFreezer(t *testing.T) *freezer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezer{lis: lis, closed: make(chan struct{}), conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *freezer) addr() string { return p.lis.Addr().String() }

func (p *freezer) setTarget(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = addr
}

func (p *freezer) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.thawed == nil {
		p.thawed = make(chan struct{})
	}
}

func (p *freezer) thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.thawed != nil {
		close(p.thawed)
		p.thawed = nil
	}
}

// track adds c to the open connections; false if the proxy is closed.
func (p *freezer) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.closed:
		c.Close()
		return false
	default:
	}
	p.conns[c] = true
	return true
}

func (p *freezer) close() {
	p.mu.Lock()
	select {
	case <-p.closed:
		p.mu.Unlock()
		return
	default:
	}
	close(p.closed)
	p.lis.Close()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *freezer) accept() {
	for {
		in, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		out, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			in.Close()
			continue
		}
		if !p.track(in) || !p.track(out) {
			in.Close()
			out.Close()
			return
		}
		p.wg.Go(func() { p.relay(out, in) })
		p.wg.Go(func() { p.relay(in, out) })
	}
}

// relay copies src to dst, holding every chunk while the proxy is frozen.
func (p *freezer) relay(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			thawed := p.thawed
			p.mu.Unlock()
			if thawed != nil {
				select {
				case <-thawed:
				case <-p.closed:
					return
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// newFreezableCluster is newInmemClusterTTL with every controller's API
// behind a freezer (the advertised address, so agents, followers
// forwarding to the leader and the REST gateway all go through it) and
// heartbeats every hb.
func newFreezableCluster(t *testing.T, ttl, hb time.Duration) (*inmemCluster, map[*member]*freezer) {
	c := &inmemCluster{t: t, hostTTL: ttl, hbEvery: hb}
	px := map[*member]*freezer{}
	for _, id := range []string{"a1", "a2", "b1"} {
		m := &member{id: id, center: id, dir: filepath.Join(t.TempDir(), id)}
		px[m] = newFreezer(t)
		m.advertise = px[m].addr()
		c.members = append(c.members, m)
	}
	c.form(func(m *member) { px[m].setTarget(m.ctl.lis.Addr().String()) })
	return c, px
}

// freeze stops m the way SIGSTOP does, as far as its peers and clients can
// tell: its API answers nothing (connections stay open) and raft cannot
// reach it nor it raft.
func (c *inmemCluster) freeze(m *member, px *freezer) {
	px.freeze()
	for _, o := range c.members {
		if o != m {
			o.trans.Disconnect(m.trans.LocalAddr())
		}
	}
	m.trans.DisconnectAll()
}

func (c *inmemCluster) thaw(m *member, px *freezer) {
	for _, o := range c.members {
		if o != m {
			o.trans.Connect(m.trans.LocalAddr(), m.trans)
			m.trans.Connect(o.trans.LocalAddr(), o.trans)
		}
	}
	px.thaw()
}

// noHostDownFor fails the test if any of hosts is not READY on any of ms
// at any poll during d.
func noHostDownFor(t *testing.T, d time.Duration, ms []*member, hosts []string) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		for _, m := range ms {
			for _, id := range hosts {
				hv, ok := m.ctl.Node().Store.Host(id)
				if !ok || hv.Host.State != statev1.HostState_HOST_STATE_READY {
					t.Fatalf("controller %s: host %s is %v (registered %v) while only a controller is frozen",
						m.id, id, hv.Host.GetState(), ok)
				}
			}
		}
	}
}

// createVM creates a VM through addr, retrying while the cluster has no
// leader (503); any other failure fails the test.
func createVM(t *testing.T, addr, name string) {
	t.Helper()
	body := fmt.Sprintf(`{"name":%q,"vcpus":1,"memory":"256MiB","disk":"1GiB"}`, name)
	var code int
	var resp []byte
	apitest.Eventually(t, 20*time.Second, "create "+name, func() bool {
		var err error
		code, resp, err = apitest.Post(addr, "/v1/vms", body)
		if err == nil && code != 200 && code != 503 {
			t.Fatalf("create %s through %s: %d %s", name, addr, code, resp)
		}
		return err == nil && code == 200
	})
}

// TestFrozenControllerIsNotAHostFailure: 3 controllers with agents attached
// one to each. A follower, then the leader, is frozen (API and raft, as
// under SIGSTOP) for twice the host TTL: the agents attached to it detect the
// hung controller within a heartbeat interval, say so, and move on, so no
// host is ever marked down and creates succeed. A host whose agent really
// stops still goes down after the TTL.
func TestFrozenControllerIsNotAHostFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster for several host TTLs")
	}
	const ttl, hb = 3 * time.Second, 300 * time.Millisecond
	c, px := newFreezableCluster(t, ttl, hb)
	var addrs []string
	for _, m := range c.members {
		addrs = append(addrs, m.ctl.Addr())
	}
	hosts := []string{"h1", "h2", "h3"}
	logs := make([]*apitest.LockedBuffer, len(hosts))
	stops := make([]func(), len(hosts))
	for k, id := range hosts {
		uri, err := libvirt.WriteTestNodeXML(filepath.Join(t.TempDir(), id+".xml"), libvirt.TestNode{CPUs: 8, MemoryBytes: 16 << 30})
		if err != nil {
			t.Fatal(err)
		}
		drv, err := libvirt.Open(uri)
		if err != nil {
			t.Fatal(err)
		}
		// Agent k tries controller k first.
		var ctls []string
		for i := range addrs {
			ctls = append(ctls, addrs[(i+k)%len(addrs)])
		}
		logs[k] = &apitest.LockedBuffer{}
		a := agent.New(agent.Config{
			HostID: id, Center: c.members[k].center, DiskBytes: 100 << 30, LibvirtURI: uri, Controllers: ctls,
			Logger: slog.New(slog.NewTextHandler(io.MultiWriter(logs[k], t.Output()), nil)),
		}, drv)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		stops[k] = sync.OnceFunc(func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("agent %s: %v", id, err)
			}
			drv.Close()
		})
		t.Cleanup(stops[k])
	}
	apitest.Eventually(t, 30*time.Second, "3 hosts ready on every controller", func() bool {
		for _, m := range c.members {
			for _, id := range hosts {
				if hv, ok := m.ctl.Node().Store.Host(id); !ok || hv.Host.State != statev1.HostState_HOST_STATE_READY {
					return false
				}
			}
		}
		return true
	})
	others := func(m *member) []*member {
		var out []*member
		for _, o := range c.members {
			if o != m {
				out = append(out, o)
			}
		}
		return out
	}
	// attachedBefore lists, just before m freezes, the agents that use m now
	// (the first of their list until they log a move: under load an agent
	// may leave a controller before any freeze, when a heartbeat misses its
	// deadline, so they are found, not assumed) with how much each has logged.
	attachedBefore := func(m *member) map[int]int {
		const mark = `msg="moved to controller `
		out := map[int]int{}
		for k := range hosts {
			log := logs[k].String()
			cur := addrs[k%len(addrs)]
			if i := strings.LastIndex(log, mark); i >= 0 {
				rest := log[i+len(mark):]
				cur = rest[:strings.IndexByte(rest, '"')]
			}
			if cur == m.ctl.Addr() {
				out[k] = len(log)
			}
		}
		return out
	}
	// checkMoved looks at what each agent attached to the frozen controller
	// logged since the freeze.
	checkMoved := func(attached map[int]int, from *member) {
		t.Helper()
		if len(attached) == 0 {
			t.Logf("no agent was attached to %s when it froze: no log to check", from.id)
		}
		for k, n := range attached {
			out := logs[k].String()[n:]
			if !strings.Contains(out, "heartbeat failed") || !strings.Contains(out, "controller="+from.ctl.Addr()) {
				t.Errorf("agent %s attached to frozen %s logged no failed heartbeat naming it", hosts[k], from.id)
			}
			if !strings.Contains(out, "moved to controller") {
				t.Errorf("agent %s attached to frozen %s logged no move to another controller", hosts[k], from.id)
			}
		}
	}

	// A follower freezes.
	l := c.leader()
	var f *member
	for _, m := range c.members {
		if m != l {
			f = m
			break
		}
	}
	t.Logf("freezing follower %s", f.id)
	attached := attachedBefore(f)
	c.freeze(f, px[f])
	thawF := sync.OnceFunc(func() { c.thaw(f, px[f]) })
	t.Cleanup(thawF)
	noHostDownFor(t, 2*ttl, others(f), hosts)
	checkMoved(attached, f)
	createVM(t, l.ctl.Addr(), "during-follower-freeze")
	thawF()
	waitConverged(t, c.members)

	// The leader freezes.
	l = c.leader()
	if l == nil {
		t.Fatal("no leader after the follower thawed")
	}
	t.Logf("freezing leader %s", l.id)
	attached = attachedBefore(l)
	c.freeze(l, px[l])
	thawL := sync.OnceFunc(func() { c.thaw(l, px[l]) })
	t.Cleanup(thawL)
	noHostDownFor(t, 2*ttl, others(l), hosts)
	checkMoved(attached, l)
	createVM(t, others(l)[0].ctl.Addr(), "during-leader-freeze")
	thawL()
	waitConverged(t, c.members)

	// A host whose agent stops is still marked down after the TTL, and only
	// that host.
	stops[0]()
	apitest.Eventually(t, 5*ttl, "h1 marked down", func() bool {
		l := c.leader()
		if l == nil {
			return false
		}
		hv, ok := l.ctl.Node().Store.Host("h1")
		return ok && hv.Host.State == statev1.HostState_HOST_STATE_DOWN
	})
	for _, id := range hosts[1:] {
		if hv, _ := c.leader().ctl.Node().Store.Host(id); hv.Host.GetState() != statev1.HostState_HOST_STATE_READY {
			t.Errorf("host %s is %v after h1's agent stopped", id, hv.Host.GetState())
		}
	}
}
