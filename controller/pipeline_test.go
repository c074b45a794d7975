package controller

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// TestConcurrentCreatesNearFullCapacity: 256 clients create at once, through
// every controller, more VMs than the hosts hold, some into host
// anti-affinity groups; the leader decides them pipelined (many proposals
// in flight, each reserving its host). Afterwards, on every controller's own
// state: no host is over capacity, no group rule is broken, every
// acknowledged VM exists once and every rejected one does not exist.
func TestConcurrentCreatesNearFullCapacity(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[0].ctl.Addr()
	registerHosts(t, addr, 9, 64, 16*gib) // memory is what fills: ~14 VMs of 1 GiB per host

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gc := yunchiv1.NewGroupServiceClient(dial(t, addr))
	groups := []string{"spread-a", "spread-b"}
	for _, g := range groups {
		if _, err := gc.CreateGroup(ctx, &yunchiv1.CreateGroupRequest{Name: g, Policy: yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY}); err != nil {
			t.Fatalf("create group %s: %v", g, err)
		}
	}
	clients := make([]yunchiv1.VMServiceClient, len(c.members))
	for i, m := range c.members {
		clients[i] = yunchiv1.NewVMServiceClient(dial(t, m.ctl.Addr()))
	}

	const n = 256
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		acked    = map[string]bool{}
		rejected = map[string]error{}
		unknown  = map[string]error{} // "may or may not have been applied"
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := &yunchiv1.CreateVMRequest{Name: fmt.Sprintf("vm-%03d", i), Vcpus: 1, Memory: "1GiB", Disk: "1GiB"}
			if i%8 == 0 { // 32 per group; 9 hosts take 9 of each
				req.Group = groups[i/8%2]
			}
			_, err := clients[i%3].CreateVM(ctx, req)
			mu.Lock()
			defer mu.Unlock()
			switch code := status.Code(err); {
			case err == nil:
				acked[req.Name] = true
			case code == codes.ResourceExhausted || code == codes.Aborted:
				// No room (or, rarely, decided again too often).
				rejected[req.Name] = err
			case code == codes.Unavailable:
				// A leader change on a loaded machine: the create may or
				// may not have been applied; only "at most once" holds.
				unknown[req.Name] = err
			default:
				t.Errorf("%s: %v", req.Name, err)
			}
		}()
	}
	wg.Wait()
	if len(acked) == 0 {
		t.Fatalf("no create acknowledged (%d rejected, %d unknown)", len(rejected), len(unknown))
	}
	t.Logf("%d creates acknowledged, %d rejected, %d unknown (leader changed)", len(acked), len(rejected), len(unknown))

	waitConverged(t, c.members)
	for _, m := range c.members {
		checkInvariants(t, m.ctl.Addr(), acked)
		checkGroupRules(t, m.ctl.Addr())
		for _, v := range listVMs(t, m.ctl.Addr()).Vms {
			if err, ok := rejected[v.Name]; ok {
				t.Errorf("%s: vm %s exists, but its create was rejected: %v", m.id, v.Name, err)
			} else if !acked[v.Name] && unknown[v.Name] == nil {
				t.Errorf("%s: vm %s exists, but nobody created it", m.id, v.Name)
			}
		}
	}
}
