package main

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/yunchi/yunchi/cmd/yunchid/clustertest"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func listVMs(addr string) (*yunchiv1.ListVMsResponse, error) {
	var out yunchiv1.ListVMsResponse
	return &out, apitest.GetJSON(addr, "/v1/vms", &out)
}

func listHosts(addr string) (*yunchiv1.ListHostsResponse, error) {
	var out yunchiv1.ListHostsResponse
	return &out, apitest.GetJSON(addr, "/v1/hosts", &out)
}

// TestKill9LeaderDuringCreates: 3 controllers and 2 agents as separate
// processes on loopback. A bounded loop of creates goes through REST while
// the leader is killed with SIGKILL; afterwards every acknowledged VM exists
// exactly once on every controller (the killed one too, once restarted),
// runs on one host, and no host is over its capacity.
func TestKill9LeaderDuringCreates(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	c := clustertest.New(t)
	c.StartControllers(3)
	const hostCPUs, hostMem = 32, int64(32) << 30
	c.StartAgent("h1", "a1", hostCPUs, hostMem, 2<<40)
	c.StartAgent("h2", "b1", hostCPUs, hostMem, 2<<40)
	apitest.Eventually(t, 30*time.Second, "2 hosts registered", func() bool {
		h, err := listHosts(c.Controllers[0].API)
		return err == nil && len(h.Hosts) == 2
	})

	const total = 40
	acked := map[string]bool{}
	var killed *clustertest.Controller
	for i := 0; i < total; i++ {
		if i == total/3 {
			killed = c.Leader()
			if killed == nil {
				t.Fatal("no leader before the kill")
			}
			killed.Kill()
			t.Logf("kill -9 leader %s after %d creates", killed.ID, i)
		}
		name := fmt.Sprintf("vm-%03d", i)
		body := fmt.Sprintf(`{"name":%q,"vcpus":1,"memory":"512MiB","disk":"5GiB"}`, name)
		for attempt := 0; ; attempt++ {
			if attempt == 100 {
				t.Fatalf("create %s: no controller accepted it in 100 attempts", name)
			}
			alive := c.Alive()
			ctl := alive[(i+attempt)%len(alive)]
			code, resp, err := apitest.Post(ctl.API, "/v1/vms", body)
			if err == nil && code == 200 {
				acked[name] = true
				break
			}
			if err == nil && code == 409 && bytes.Contains(resp, []byte("already exists")) {
				break // applied, but the answer was lost with the leader: not acknowledged
			}
			if err == nil && code != 503 && code != 409 {
				t.Fatalf("create %s: %d %s", name, code, resp)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if len(acked) < total*9/10 {
		t.Fatalf("only %d of %d creates acknowledged", len(acked), total)
	}
	c.Restart(killed)
	c.WaitVoters(3, 60*time.Second)
	c.WaitConverged(60 * time.Second)

	for _, ctl := range c.Controllers {
		vms, err := listVMs(ctl.API)
		if err != nil {
			t.Fatal(err)
		}
		count := map[string]int{}
		used := map[string]int64{}
		for _, v := range vms.Vms {
			count[v.Name]++
			used[v.HostId] += v.MemoryBytes
			if v.HostId == "" {
				t.Errorf("%s: vm %s has no host", ctl.ID, v.Name)
			}
		}
		for name := range acked {
			if count[name] != 1 {
				t.Errorf("%s: acknowledged vm %s exists %d times", ctl.ID, name, count[name])
			}
		}
		for h, m := range used {
			if m > hostMem {
				t.Errorf("%s: host %s allocated %d bytes of %d", ctl.ID, h, m, hostMem)
			}
		}
	}
	// The agents bring every VM up, exactly once each (one host per VM).
	apitest.Eventually(t, 60*time.Second, "every vm running", func() bool {
		vms, err := listVMs(c.Controllers[0].API)
		if err != nil {
			return false
		}
		for _, v := range vms.Vms {
			if v.Phase != yunchiv1.VMPhase_VM_PHASE_RUNNING {
				return false
			}
		}
		return len(vms.Vms) >= len(acked)
	})
	// No VM runs twice: the domains the agents report running, summed over
	// hosts, are exactly the VMs (stats come from heartbeats to the leader).
	apitest.Eventually(t, 30*time.Second, "agents to report one domain per vm", func() bool {
		l := c.Leader()
		if l == nil {
			return false
		}
		hosts, err := listHosts(l.API)
		vms, err2 := listVMs(l.API)
		if err != nil || err2 != nil {
			return false
		}
		running := int32(0)
		for _, h := range hosts.Hosts {
			running += h.GetStats().GetDomainsRunning()
		}
		if running > int32(len(vms.Vms)) {
			t.Fatalf("%d domains running for %d vms", running, len(vms.Vms))
		}
		return running == int32(len(vms.Vms))
	})
}
