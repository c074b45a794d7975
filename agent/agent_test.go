package agent_test

import (
	"context"
	"fmt"
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
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const (
	vmA = "6f1d0c1e-0a6b-4c1f-8f0e-2d9b8a7c6e5a"
	vmB = "a3c2b1d0-9e8f-4a7b-8c6d-5e4f3a2b1c0d"
	vmC = "0c9b8a7f-6e5d-4c3b-9a1f-0e9d8c7b6a5f"

	running = yunchiv1.PowerState_POWER_STATE_RUNNING
	stopped = yunchiv1.PowerState_POWER_STATE_STOPPED
	deleted = yunchiv1.PowerState_POWER_STATE_DELETED

	phaseRunning = yunchiv1.VMPhase_VM_PHASE_RUNNING
	phaseStopped = yunchiv1.VMPhase_VM_PHASE_STOPPED
	phaseFailed  = yunchiv1.VMPhase_VM_PHASE_FAILED
)

// host is one simulated hypervisor: a test-driver node file and the one
// connection holding its state.
func host(t *testing.T, spec libvirt.TestNode) (*libvirt.Driver, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.xml")
	uri, err := libvirt.WriteTestNodeXML(path, spec)
	if err != nil {
		t.Fatal(err)
	}
	d, err := libvirt.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, uri
}

func smallHost(t *testing.T) *libvirt.Driver {
	d, _ := host(t, libvirt.TestNode{CPUs: 8, MemoryBytes: 32 << 30})
	return d
}

func config(t *testing.T, addrs ...string) agent.Config {
	return agent.Config{
		HostID:            "host-1",
		Center:            "dc1",
		Controllers:       addrs,
		HeartbeatInterval: 20 * time.Millisecond,
		// Long enough that the tests see the stream at work, not the resync.
		ResyncInterval: time.Minute,
		StopTimeout:    5 * time.Second,
		Logger:         slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// start runs an agent until the returned function (also run at cleanup) stops
// it; stopping checks that Run returns nil promptly.
func start(t *testing.T, cfg agent.Config, d agent.Driver) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.New(cfg, d).Run(ctx) }()
	stop := sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return within 10s of cancel")
		}
	})
	t.Cleanup(stop)
	return stop
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func domains(t *testing.T, d agent.Driver) map[string]agent.Domain {
	t.Helper()
	doms, err := d.ListDomains(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]agent.Domain{}
	for _, dom := range doms {
		m[dom.VMID] = dom
	}
	return m
}

func domainIs(t *testing.T, d agent.Driver, id string, state agent.DomainState) func() bool {
	return func() bool {
		dom, ok := domains(t, d)[id]
		return ok && dom.State == state
	}
}

func vm(id, name string, desired yunchiv1.PowerState) *yunchiv1.Assignment {
	return &yunchiv1.Assignment{
		VmId: id, Name: name, Project: "default", Vcpus: 1, MemoryBytes: 256 << 20, DiskBytes: 10 << 30,
		Desired: desired, Phase: yunchiv1.VMPhase_VM_PHASE_PENDING,
	}
}

func TestRegistersNodeFacts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		diskBytes int64
		wantDisk  int64
	}{
		{"disk from pools", 0, 2 * 100 << 30}, // the test driver says 100 GiB per pool
		{"disk from config", 3 << 40, 3 << 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, uri := host(t, libvirt.TestNode{
				CPUs: 48, CPUModel: "Yunchi-EPYC", Sockets: 2, Cores: 12, Threads: 2, MemoryBytes: 384 << 30,
				Pools: []libvirt.TestPool{{Name: "images"}, {Name: "scratch"}},
			})
			c := newController()
			cfg := config(t, serve(t, c).addr)
			cfg.Hostname, cfg.Site, cfg.Rack = "hv-01", "site-a", "r12"
			cfg.Labels = map[string]string{"gpu": "none"}
			cfg.LibvirtURI = uri
			cfg.DiskBytes = tc.diskBytes
			start(t, cfg, d)

			eventually(t, "registration", func() bool { return len(c.registered()) > 0 })
			f := c.registered()[0]
			got := fmt.Sprintf("%s %s %s %s %s %s vcpus=%d mem=%d disk=%d %s %s", f.GetId(), f.GetHostname(), f.GetCenter(),
				f.GetSite(), f.GetRack(), f.GetLabels()["gpu"], f.GetCapacity().GetVcpus(), f.GetCapacity().GetMemoryBytes(),
				f.GetCapacity().GetDiskBytes(), f.GetCpuModel(), f.GetLibvirtUri())
			want := fmt.Sprintf("host-1 hv-01 dc1 site-a r12 none vcpus=48 mem=%d disk=%d Yunchi-EPYC %s", 384<<30, tc.wantDisk, uri)
			if got != want {
				t.Errorf("facts\n got %s\nwant %s", got, want)
			}
			if f.GetAgentVersion() == "" {
				t.Error("no agent version")
			}
			eventually(t, "a heartbeat", func() bool { return c.lastHeartbeat() != nil })
		})
	}
}

func TestLifecycle(t *testing.T) {
	d := &spy{Driver: smallHost(t)}
	c := newController()
	start(t, config(t, serve(t, c).addr), d)

	// create -> running
	c.put(vm(vmA, "web", running))
	eventually(t, "domain running", domainIs(t, d, vmA, agent.StateRunning))
	eventually(t, "RUNNING reported", func() bool { return c.phase(vmA) == phaseRunning })
	dom := domains(t, d)[vmA]
	if dom.Name != "web" || dom.Project != "default" {
		t.Errorf("domain metadata = %+v", dom)
	}
	eventually(t, "heartbeat counting the domain", func() bool {
		hb := c.lastHeartbeat()
		return hb.GetStats().GetDomainsRunning() == 1 && hb.GetStats().GetDomainsDefined() == 1
	})
	// libvirt's test driver cannot tell free memory: the heartbeat says
	// nothing rather than 0 bytes (host show prints "not reported").
	if hb := c.lastHeartbeat(); hb.GetStats().MemoryFreeBytes != nil {
		t.Errorf("heartbeat reports free memory %d from a driver that cannot tell", hb.GetStats().GetMemoryFreeBytes())
	}

	// stop
	c.update(vmA, func(as *yunchiv1.Assignment) { as.Desired = stopped })
	eventually(t, "domain shut off", domainIs(t, d, vmA, agent.StateShutOff))
	eventually(t, "STOPPED reported", func() bool { return c.phase(vmA) == phaseStopped })

	// start
	c.update(vmA, func(as *yunchiv1.Assignment) { as.Desired = running })
	eventually(t, "domain running again", domainIs(t, d, vmA, agent.StateRunning))
	eventually(t, "RUNNING reported again", func() bool { return c.phase(vmA) == phaseRunning })

	// reboot: carried out once, reported, remembered with the domain
	c.update(vmA, func(as *yunchiv1.Assignment) { as.RebootSeq = 1 })
	eventually(t, "reboot reported", func() bool {
		r := c.reportsFor(vmA)
		return len(r) > 0 && r[len(r)-1].GetObservedRebootSeq() == 1 && r[len(r)-1].GetPhase() == phaseRunning
	})
	if got := domains(t, d)[vmA]; got.State != agent.StateRunning || got.RebootSeq != 1 {
		t.Errorf("after reboot: %+v", got)
	}
	// More assignment traffic must not repeat the reboot.
	c.put(vm(vmB, "db", stopped))
	eventually(t, "second VM defined", domainIs(t, d, vmB, agent.StateShutOff))
	eventually(t, "second VM reported", func() bool { return c.phase(vmB) == phaseStopped })
	if n := d.reboots.Load(); n != 1 {
		t.Errorf("%d reboots, want 1", n)
	}
	if n := d.defines.Load(); n != 2 {
		t.Errorf("%d defines, want 2", n)
	}

	// delete -> gone reported, domain undefined
	c.update(vmA, func(as *yunchiv1.Assignment) {
		as.Desired = deleted
		as.Phase = yunchiv1.VMPhase_VM_PHASE_DELETING
	})
	eventually(t, "domain undefined", func() bool { _, ok := domains(t, d)[vmA]; return !ok })
	eventually(t, "gone reported", func() bool { return c.assignment(vmA) == nil })
	r := c.reportsFor(vmA)
	if last := r[len(r)-1]; !last.GetGone() {
		t.Errorf("last report %v is not gone", last)
	}
	if _, ok := domains(t, d)[vmB]; !ok {
		t.Error("the other VM went too")
	}
}

func TestReportsOnlyChanges(t *testing.T) {
	d := smallHost(t)
	c := newController()
	start(t, config(t, serve(t, c).addr), d)

	c.put(vm(vmA, "web", running))
	eventually(t, "RUNNING reported", func() bool { return c.phase(vmA) == phaseRunning })
	// Each report makes the controller send a new set; none of them, nor the
	// sets for another VM, may cause vmA to be reported again.
	for i := range 5 {
		c.put(vm(fmt.Sprintf("vm-%d", i), fmt.Sprintf("n%d", i), stopped))
	}
	eventually(t, "the other VMs reported", func() bool {
		for i := range 5 {
			if c.phase(fmt.Sprintf("vm-%d", i)) != phaseStopped {
				return false
			}
		}
		return true
	})
	if r := c.reportsFor(vmA); len(r) != 1 {
		t.Errorf("vmA reported %d times: %v", len(r), r)
	}
}

func TestRestartAdoptsRunningDomains(t *testing.T) {
	d := smallHost(t) // one connection: the simulated host outlives the agents
	c := newController()
	addr := serve(t, c).addr

	first := &spy{Driver: d}
	stop := start(t, config(t, addr), first)
	rebooted := vm(vmA, "web", running)
	rebooted.RebootSeq = 2
	c.put(rebooted, vm(vmB, "db", stopped))
	eventually(t, "first agent's VMs reported", func() bool {
		return c.phase(vmA) == phaseRunning && c.phase(vmB) == phaseStopped
	})
	if first.reboots.Load() != 0 {
		t.Error("a domain defined after a reboot request was rebooted")
	}
	c.update(vmA, func(as *yunchiv1.Assignment) { as.RebootSeq = 3 })
	eventually(t, "reboot 3 reported", func() bool {
		r := c.reportsFor(vmA)
		return r[len(r)-1].GetObservedRebootSeq() == 3
	})
	stop()

	second := &spy{Driver: d}
	start(t, config(t, addr), second)
	eventually(t, "second registration", func() bool { return len(c.registered()) == 2 })
	// A new VM proves the second agent has reconciled the whole set.
	c.put(vm(vmC, "cache", running))
	eventually(t, "new VM running", func() bool { return c.phase(vmC) == phaseRunning })

	if n := second.defines.Load(); n != 1 {
		t.Errorf("second agent defined %d domains, want 1 (the new VM)", n)
	}
	if n := second.starts.Load(); n != 1 {
		t.Errorf("second agent started %d domains, want 1 (the new VM)", n)
	}
	if n := second.reboots.Load(); n != 0 {
		t.Errorf("second agent rebooted %d domains, want 0", n)
	}
	doms := domains(t, d)
	if len(doms) != 3 || doms[vmA].State != agent.StateRunning || doms[vmB].State != agent.StateShutOff {
		t.Errorf("domains after restart: %+v", doms)
	}
}

func TestDeletedWhileAgentDown(t *testing.T) {
	d := smallHost(t)
	c := newController()
	addr := serve(t, c).addr

	stop := start(t, config(t, addr), d)
	c.put(vm(vmA, "web", running), vm(vmB, "db", running))
	eventually(t, "both running", func() bool {
		return c.phase(vmA) == phaseRunning && c.phase(vmB) == phaseRunning
	})
	stop()

	c.drop(vmA) // deleted (or moved) while the agent was away
	reportsBefore := len(c.reportsFor(vmA))
	second := &spy{Driver: d}
	start(t, config(t, addr), second)
	eventually(t, "orphan removed", func() bool { _, ok := domains(t, d)[vmA]; return !ok })
	if !domainIs(t, d, vmB, agent.StateRunning)() {
		t.Error("the assigned VM was disturbed")
	}
	if n := len(c.reportsFor(vmA)); n != reportsBefore {
		t.Error("the orphan was reported to the controllers")
	}
	if second.defines.Load() != 0 || second.starts.Load() != 0 {
		t.Error("the returning agent defined or started domains")
	}
}

func TestBadAssignmentFails(t *testing.T) {
	d := smallHost(t)
	c := newController()
	start(t, config(t, serve(t, c).addr), d)

	bad := vm(vmA, "web", running)
	bad.MemoryBytes = 0
	worse := vm(vmB, "db", running)
	worse.Vcpus = -1
	c.put(bad, worse, vm(vmC, "fine", running))
	eventually(t, "FAILED reported", func() bool {
		return c.phase(vmA) == phaseFailed && c.phase(vmB) == phaseFailed && c.phase(vmC) == phaseRunning
	})
	for id, want := range map[string]string{vmA: "memory_bytes is 0", vmB: "vcpus is -1"} {
		r := c.reportsFor(id)
		msg := r[len(r)-1].GetMessage()
		if !strings.Contains(msg, want) || strings.Contains(msg, "\n") {
			t.Errorf("%s: message %q, want one line with %q", id, msg, want)
		}
	}
	if doms := domains(t, d); len(doms) != 1 {
		t.Errorf("domains defined for bad assignments: %+v", doms)
	}

	// Fixed, it comes up.
	c.update(vmA, func(as *yunchiv1.Assignment) { as.MemoryBytes = 128 << 20 })
	eventually(t, "fixed VM running", func() bool { return c.phase(vmA) == phaseRunning })
	eventually(t, "fixed VM's domain running", domainIs(t, d, vmA, agent.StateRunning))
}

func TestResyncUndoesHandMadeChanges(t *testing.T) {
	d := smallHost(t)
	c := newController()
	addr := serve(t, c).addr
	cfg := config(t, addr)
	cfg.ResyncInterval = 100 * time.Millisecond
	start(t, cfg, d)

	c.put(vm(vmA, "web", running))
	eventually(t, "running", domainIs(t, d, vmA, agent.StateRunning))

	ctx := context.Background()
	// Someone powers it off by hand, and defines a domain of their own with
	// Yunchi's metadata: no assignment arrives, the resync repairs both.
	if err := d.Destroy(ctx, vmA); err != nil {
		t.Fatal(err)
	}
	if err := d.Define(ctx, agent.DomainSpec{VMID: vmB, Project: "x", Name: "stray", VCPUs: 1, MemoryBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "restarted by resync", domainIs(t, d, vmA, agent.StateRunning))
	eventually(t, "stray domain removed", func() bool { _, ok := domains(t, d)[vmB]; return !ok })
}

func TestReRegistersWhenForgotten(t *testing.T) {
	d := smallHost(t)
	c := newController()
	start(t, config(t, serve(t, c).addr), d)
	eventually(t, "registration", func() bool { return len(c.registered()) == 1 })
	c.forgetHost()
	eventually(t, "registration again", func() bool { return len(c.registered()) == 2 })
}

func TestFailsOverToNextController(t *testing.T) {
	d := smallHost(t)
	c := newController()
	// Nothing listens on the first address.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close()
	s1, s2 := serve(t, c), serve(t, c)
	start(t, config(t, dead, s1.addr, s2.addr), d)

	c.put(vm(vmA, "web", running))
	eventually(t, "running through a live controller", func() bool { return c.phase(vmA) == phaseRunning })

	s1.stop() // the controller in use dies
	c.put(vm(vmB, "db", running))
	eventually(t, "following the next controller", func() bool { return c.phase(vmB) == phaseRunning })
	eventually(t, "domain running", domainIs(t, d, vmB, agent.StateRunning))
}

// TestLeavesUnresponsiveController: the controller in use stops answering
// without closing anything. "hung": its stream stays open but says nothing
// more, only the failing heartbeats tell, and the stream must follow them.
// "frozen" (SIGSTOP): nothing answers; a heartbeat not answered within the
// interval has failed, so the agent moves on at once, and its stream and
// status reports follow, instead of waiting out a 10 s call timeout.
func TestLeavesUnresponsiveController(t *testing.T) {
	for _, mode := range []string{"hung", "frozen"} {
		t.Run(mode, func(t *testing.T) {
			d := smallHost(t)
			c := newController()
			s1, s2 := serve(t, c), serve(t, c)
			start(t, config(t, s1.addr, s2.addr), d)
			c.put(vm(vmA, "web", running))
			eventually(t, "running", func() bool { return c.phase(vmA) == phaseRunning })

			if mode == "hung" {
				s1.hung.Store(true)
			} else {
				s1.frozen.Store(true)
			}
			c.put(vm(vmB, "db", running))
			eventually(t, "assignment through the other controller", func() bool { return c.phase(vmB) == phaseRunning })
			eventually(t, "domain running", domainIs(t, d, vmB, agent.StateRunning))
		})
	}
}

// TestFailingControllerWarnedOnce: heartbeats that keep failing on the only
// controller are warned about once (naming it), not once per beat.
func TestFailingControllerWarnedOnce(t *testing.T) {
	d := smallHost(t)
	c := newController()
	s := serve(t, c)
	var log apitest.LockedBuffer
	cfg := config(t, s.addr)
	cfg.Logger = slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	start(t, cfg, d)
	eventually(t, "registration", func() bool { return len(c.registered()) == 1 })
	s.hung.Store(true)
	const beats = 20
	eventually(t, fmt.Sprintf("%d failed heartbeats", beats), func() bool {
		return strings.Count(log.String(), `msg="heartbeat failed"`) >= beats
	})
	warned := 0
	for _, line := range strings.Split(log.String(), "\n") {
		if strings.Contains(line, `msg="heartbeat failed"`) && strings.Contains(line, "level=WARN") {
			warned++
			if !strings.Contains(line, "controller="+s.addr) {
				t.Errorf("warning does not name the controller: %s", line)
			}
		}
	}
	if warned != 1 {
		t.Errorf("%d warnings for one failing controller over %d+ failed heartbeats, want 1", warned, beats)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	d := smallHost(t)
	for name, cfg := range map[string]agent.Config{
		"no host id":     {Controllers: []string{"127.0.0.1:1"}},
		"no controllers": {HostID: "h"},
	} {
		if err := agent.New(cfg, d).Run(context.Background()); err == nil {
			t.Errorf("%s: Run returned nil", name)
		}
	}
}
