package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/cmd/yunchid/clustertest"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// hostTTL is the controllers' default: a host silent this long is marked
// down.
const hostTTL = 10 * time.Second

// TestSIGSTOPControllerIsNotAHostFailure: 3 controllers and 3 agents as
// processes, one agent attached to each controller. A follower, then the
// leader, is frozen with SIGSTOP for the host TTL and 3 s more: the agent
// attached to it moves to another controller, no host is ever marked down,
// and a create succeeds (after the election when the leader froze).
func TestSIGSTOPControllerIsNotAHostFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	c := clustertest.New(t)
	c.StartControllers(3)
	var hosts []string
	for i, center := range []string{"a1", "a2", "b1"} {
		a := c.StartAgent(fmt.Sprintf("h%d", i+1), center, 16, 32<<30, 1<<40)
		hosts = append(hosts, a.HostID)
	}
	// allReady says whether addr shows every host ready, and how each is.
	allReady := func(addr string) (bool, string, error) {
		h, err := listHosts(addr)
		if err != nil {
			return false, "", err
		}
		ready := 0
		var states []string
		for _, h := range h.Hosts {
			if h.State == yunchiv1.HostState_HOST_STATE_READY {
				ready++
			}
			states = append(states, h.Id+" "+h.State.String())
		}
		return ready == len(hosts), strings.Join(states, ", "), nil
	}
	apitest.Eventually(t, 30*time.Second, "3 hosts ready on every controller", func() bool {
		for _, ctl := range c.Controllers {
			if ok, _, _ := allReady(ctl.API); !ok {
				return false
			}
		}
		return true
	})

	for _, which := range []string{"follower", "leader"} {
		l := c.Leader()
		if l == nil {
			t.Fatal("no leader")
		}
		victim, k := l, 0
		var healthy []*clustertest.Controller
		for i, ctl := range c.Controllers {
			if which == "follower" && ctl != l && victim == l {
				victim = ctl
			}
			if ctl == victim {
				k = i // agent k tries controller k first
			}
		}
		for _, ctl := range c.Controllers {
			if ctl != victim {
				healthy = append(healthy, ctl)
			}
		}
		agentLog := len(c.Agents[k].Log())
		t.Logf("SIGSTOP %s %s", which, victim.ID)
		victim.Freeze()
		t.Cleanup(victim.Thaw)
		// Hosts stay ready on the controllers that run (their local state:
		// a host marked down is a raft write every one of them applies).
		for end, i := time.Now().Add(hostTTL+3*time.Second), 0; time.Now().Before(end); i++ {
			ctl := healthy[i%len(healthy)]
			if ok, states, err := allReady(ctl.API); err == nil && !ok {
				t.Fatalf("%s frozen: %s shows a host not ready: %s", victim.ID, ctl.ID, states)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if out := c.Agents[k].Log()[agentLog:]; !strings.Contains(out, "moved to controller") {
			t.Errorf("agent %s attached to frozen %s did not move to another controller:\n%s", c.Agents[k].HostID, victim.ID, out)
		}
		name := "after-" + which + "-freeze"
		body := fmt.Sprintf(`{"name":%q,"vcpus":1,"memory":"512MiB","disk":"5GiB"}`, name)
		apitest.Eventually(t, 30*time.Second, "create "+name, func() bool {
			code, resp, err := apitest.Post(healthy[0].API, "/v1/vms", body)
			if err == nil && code != 200 && code != 503 {
				t.Fatalf("create %s: %d %s", name, code, resp)
			}
			return err == nil && code == 200
		})
		victim.Thaw()
		c.WaitVoters(3, 30*time.Second)
		c.WaitConverged(30 * time.Second)
	}
	for _, ctl := range c.Controllers {
		if strings.Contains(ctl.Log(), "marked down") {
			t.Errorf("controller %s marked a host down", ctl.ID)
		}
	}
}

// TestSIGSTOPOnlyControllerIsNotAHostFailure: the only controller is frozen
// with SIGSTOP for longer than the host TTL. It heard nothing meanwhile
// because it did not run; once thawed it must not take that for silent
// hosts (it used to mark every host down at its first look, then up again
// at the next heartbeat).
func TestSIGSTOPOnlyControllerIsNotAHostFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	c := clustertest.New(t)
	c.StartControllers(1)
	ctl := c.Controllers[0]
	c.StartAgent("h1", "a1", 16, 32<<30, 1<<40)
	ready := func() bool {
		h, err := listHosts(ctl.API)
		return err == nil && len(h.Hosts) == 1 && h.Hosts[0].State == yunchiv1.HostState_HOST_STATE_READY
	}
	apitest.Eventually(t, 30*time.Second, "host ready", ready)
	ctl.Freeze()
	t.Cleanup(ctl.Thaw)
	time.Sleep(hostTTL + 2*time.Second)
	ctl.Thaw()
	// Bounded: the agent heartbeats every 500 ms, so 3 s covers several.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if h, err := listHosts(ctl.API); err == nil && (len(h.Hosts) != 1 || h.Hosts[0].State != yunchiv1.HostState_HOST_STATE_READY) {
			t.Fatalf("after the controller was thawed: %d hosts, h1 %v", len(h.Hosts), h.Hosts[0].GetState())
		}
	}
	if strings.Contains(ctl.Log(), "marked down") {
		t.Errorf("the thawed controller marked the host down:\n%s", ctl.Log())
	}
}
