package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/internal/apitest"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// listGroups reads one controller's own view of the placement groups.
func listGroups(t *testing.T, addr string) []*yunchiv1.PlacementGroup {
	t.Helper()
	code, body := apitest.Get(t, addr, "/v1/groups")
	var resp yunchiv1.ListGroupsResponse
	if code != 200 || protojson.Unmarshal(body, &resp) != nil {
		t.Fatalf("%s: list groups: %d %s", addr, code, body)
	}
	return resp.Groups
}

// checkGroupRules asserts, on one controller's own state, that no hard
// group rule is broken: anti-affinity members on distinct hosts, affinity
// members on one host, max per host respected, and that every member is
// listed by its group.
func checkGroupRules(t *testing.T, addr string) {
	t.Helper()
	code, body := apitest.Get(t, addr, "/v1/vms")
	var list yunchiv1.ListVMsResponse
	if code != 200 || protojson.Unmarshal(body, &list) != nil {
		t.Fatalf("%s: list vms: %d", addr, code)
	}
	hostsOf := map[string]map[string]int{} // group -> host -> members
	members := map[string]int{}
	for _, v := range list.Vms {
		if v.Group == "" {
			continue
		}
		if hostsOf[v.Group] == nil {
			hostsOf[v.Group] = map[string]int{}
		}
		hostsOf[v.Group][v.HostId]++
		members[v.Group]++
	}
	for _, g := range listGroups(t, addr) {
		hs := hostsOf[g.Name]
		if len(g.Members) != members[g.Name] {
			t.Errorf("%s: group %s lists %d members, %d VMs name it", addr, g.Name, len(g.Members), members[g.Name])
		}
		for h, n := range hs {
			if g.MaxPerHost > 0 && n > int(g.MaxPerHost) {
				t.Errorf("%s: group %s has %d members on %s, max %d", addr, g.Name, n, h, g.MaxPerHost)
			}
			if !g.Soft && g.Policy == yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY && n > 1 {
				t.Errorf("%s: anti-affinity group %s has %d members on %s", addr, g.Name, n, h)
			}
		}
		if !g.Soft && g.Policy == yunchiv1.GroupPolicy_GROUP_POLICY_AFFINITY && len(hs) > 1 {
			t.Errorf("%s: affinity group %s is spread over %v", addr, g.Name, hs)
		}
	}
}

// TestConcurrentGroupPlacements: goroutines create batches into host
// anti-affinity groups and single VMs into affinity and max-per-host
// groups, through every controller at once (most calls are forwarded to
// the leader). The FSM's re-check is the last line of defence; afterwards
// every controller's own state must show no hard rule broken and no host
// over its allocatable capacity.
func TestConcurrentGroupPlacements(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[0].ctl.Addr()
	registerHosts(t, addr, 9, 16, 64*gib) // 3 hosts per center

	gc := yunchiv1.NewGroupServiceClient(dial(t, addr))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, g := range []*yunchiv1.CreateGroupRequest{
		{Name: "anti-a", Policy: yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY},
		{Name: "anti-b", Policy: yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY},
		{Name: "together", Policy: yunchiv1.GroupPolicy_GROUP_POLICY_AFFINITY},
		{Name: "two-per-host", Policy: yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY, Soft: true, MaxPerHost: 2},
	} {
		if _, err := gc.CreateGroup(ctx, g); err != nil {
			t.Fatalf("create group %s: %v", g.Name, err)
		}
	}

	type result struct {
		group, name string
		n           int
		err         error
	}
	var wg sync.WaitGroup
	results := make(chan result, 64)
	clients := make([]yunchiv1.VMServiceClient, len(c.members))
	for i, m := range c.members {
		clients[i] = yunchiv1.NewVMServiceClient(dial(t, m.ctl.Addr()))
	}
	// 4 batches of 3 into each 9-host anti-affinity group: 3 fit, 1 cannot.
	for _, g := range []string{"anti-a", "anti-b"} {
		for b := 0; b < 4; b++ {
			wg.Add(1)
			go func(g string, b int) {
				defer wg.Done()
				name := fmt.Sprintf("%s-b%d", g, b)
				resp, err := clients[b%3].CreateVMs(ctx, &yunchiv1.CreateVMRequest{Name: name, Vcpus: 1, Memory: "1GiB", Count: 3, Group: g})
				results <- result{g, name, len(resp.GetVms()), err}
			}(g, b)
		}
	}
	// Singles: 8 into the affinity group, 8 into the 2-per-host group.
	for _, g := range []string{"together", "two-per-host"} {
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func(g string, i int) {
				defer wg.Done()
				name := fmt.Sprintf("%s-%d", g, i)
				_, err := clients[i%3].CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: name, Vcpus: 1, Memory: "1GiB", Group: g, Strategy: []string{"binpack", "spread"}[i%2]})
				results <- result{g, name, 1, err}
			}(g, i)
		}
	}
	wg.Wait()
	close(results)
	created := map[string]int{}
	for r := range results {
		if r.err != nil {
			if status.Code(r.err) != codes.ResourceExhausted || !strings.Contains(status.Convert(r.err).Message(), "hosts fit") {
				t.Errorf("%s: %v", r.name, r.err)
			}
			continue
		}
		created[r.group] += r.n
	}
	// 9 hosts: 3 whole batches of 3 per anti-affinity group; 16 vCPU less 1
	// reserved, x4, leaves room for all 8 affinity singles on one host; the
	// 2-per-host group takes 8 of 18 slots.
	if created["anti-a"] != 9 || created["anti-b"] != 9 || created["together"] != 8 || created["two-per-host"] != 8 {
		t.Errorf("members created: %v (want anti-a 9, anti-b 9, together 8, two-per-host 8)", created)
	}

	// Decisions made on the same stale view, proposed straight to raft
	// (past the leader's placement lock): the FSM lets exactly one through.
	if _, err := gc.CreateGroup(ctx, &yunchiv1.CreateGroupRequest{Name: "anti-c", Policy: yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY}); err != nil {
		t.Fatal(err)
	}
	leader := c.leader()
	var applied sync.WaitGroup
	var mu sync.Mutex
	okCount, conflictCount := 0, 0
	for i := 0; i < 6; i++ {
		applied.Add(1)
		go func(i int) {
			defer applied.Done()
			_, err := leader.ctl.Node().Apply(ctx, &statev1.Command{Cmd: &statev1.Command_PlaceVm{PlaceVm: &statev1.PlaceVM{Vm: &statev1.VMRecord{
				Id: fmt.Sprintf("stale-%d", i), Name: fmt.Sprintf("stale-%d", i), Project: state.DefaultProject,
				Vcpus: 1, MemoryBytes: gib, DiskBytes: 10 * gib, HostId: "a1-h01", Group: "anti-c",
			}}}})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				okCount++
			case state.KindOf(err) == state.KindConflict:
				conflictCount++
			default:
				t.Errorf("stale placement %d: %v", i, err)
			}
		}(i)
	}
	applied.Wait()
	if okCount != 1 || conflictCount != 5 {
		t.Errorf("stale anti-affinity placements on one host: %d applied, %d rejected (want 1 and 5)", okCount, conflictCount)
	}

	waitConverged(t, c.members)
	for _, m := range c.members {
		checkInvariants(t, m.ctl.Addr(), nil)
		checkGroupRules(t, m.ctl.Addr())
		if g := listGroups(t, m.ctl.Addr()); len(g) != 5 {
			t.Errorf("%s: %d groups", m.id, len(g))
		}
	}
}

// TestDryRunCommitsNothing: a dry run answers with the chosen host, its
// score and the runners-up, and leaves the state exactly as it was.
func TestDryRunCommitsNothing(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[1].ctl.Addr()
	registerHosts(t, addr, 6, 16, 64*gib)
	if code, body, err := apitest.Post(addr, "/v1/groups", `{"name":"g1","policy":"GROUP_POLICY_ANTI_AFFINITY"}`); err != nil || code != 200 {
		t.Fatalf("create group: %d %s %v", code, body, err)
	}
	before := stateDump(t, addr)
	code, body, err := apitest.Post(addr, "/v1/vms:batch", `{"name":"app","vcpus":1,"memory":"1GiB","count":3,"group":"g1","dryRun":true,"constraints":["center in a1,a2"]}`)
	if err != nil || code != 200 {
		t.Fatalf("dry run: %d %s %v", code, body, err)
	}
	var resp yunchiv1.CreateVMsResponse
	if err := protojson.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	hosts := map[string]bool{}
	for _, d := range resp.Decisions {
		hosts[d.HostId] = true
		if d.HostCenter != "a1" && d.HostCenter != "a2" {
			t.Errorf("decision outside the constraint: %v", d)
		}
		if len(d.RunnersUp) == 0 {
			t.Errorf("no runners-up: %v", d)
		}
	}
	if !resp.DryRun || len(resp.Vms) != 0 || len(resp.Decisions) != 3 || len(hosts) != 3 {
		t.Fatalf("dry run answer: %s", body)
	}
	// A dry run that cannot fit explains, and also commits nothing.
	code, body, _ = apitest.Post(addr, "/v1/vms:batch", `{"name":"big","vcpus":1,"memory":"4TiB","dryRun":true}`)
	if code != 429 || !strings.Contains(string(body), "0/6 hosts fit") {
		t.Fatalf("dry run no fit: %d %s", code, body)
	}
	if after := stateDump(t, addr); after != before {
		t.Fatalf("dry run changed the state:\nbefore %s\nafter  %s", before, after)
	}
	// The same request for real lands where the dry run said.
	code, body, _ = apitest.Post(addr, "/v1/vms:batch", `{"name":"app","vcpus":1,"memory":"1GiB","count":3,"group":"g1","constraints":["center in a1,a2"]}`)
	var real yunchiv1.CreateVMsResponse
	if code != 200 || protojson.Unmarshal(body, &real) != nil || len(real.Vms) != 3 {
		t.Fatalf("create: %d %s", code, body)
	}
	for i, v := range real.Vms {
		if v.HostId != resp.Decisions[i].HostId || v.Group != "g1" || len(v.Constraints) != 1 {
			t.Errorf("vm %s on %s (group %q, constraints %v); the dry run said %s", v.Name, v.HostId, v.Group, v.Constraints, resp.Decisions[i].HostId)
		}
	}
}

// TestNoFitExplanationDetails: RESOURCE_EXHAUSTED carries the one-line
// explanation as its message and a google.rpc.ErrorInfo NO_FIT with the
// counts, over gRPC and in the REST body.
func TestNoFitExplanationDetails(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[2].ctl.Addr()
	registerHosts(t, addr, 3, 16, 64*gib)
	code, body, err := apitest.Post(addr, "/v1/vms", `{"name":"huge","vcpus":1,"memory":"1TiB"}`)
	if err != nil || code != 429 {
		t.Fatalf("no fit: %d %s %v", code, body, err)
	}
	var e struct {
		Message string
		Details []map[string]any
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Details) != 1 {
		t.Fatalf("body: %s", body)
	}
	d := e.Details[0]
	md, _ := d["metadata"].(map[string]any)
	if d["@type"] != "type.googleapis.com/google.rpc.ErrorInfo" || d["reason"] != "NO_FIT" || md["hosts"] != "3" || !strings.HasPrefix(fmt.Sprint(md["reason_1"]), "3 insufficient memory") {
		t.Fatalf("details: %s", body)
	}
	if !strings.HasPrefix(e.Message, "0/3 hosts fit: 3 insufficient memory") {
		t.Fatalf("message: %q", e.Message)
	}
	vc := yunchiv1.NewVMServiceClient(dial(t, addr))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = vc.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: "huge", Vcpus: 1, Memory: "1TiB"})
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || len(st.Details()) != 1 {
		t.Fatalf("grpc: %v %v", err, st.Details())
	}
}

func TestDefaultStrategyIsValidated(t *testing.T) {
	_, err := New(Config{Insecure: true, ID: "x", Listen: "127.0.0.1:0", DataDir: t.TempDir(), DefaultStrategy: "random"})
	if err == nil || !strings.Contains(err.Error(), "default-strategy") {
		t.Fatalf("bad default strategy: %v", err)
	}
}

// TestStrategyPerRequest: binpack fills one host up, spread prefers the
// emptiest; and a constraint keeps both within the hosts it allows.
func TestStrategyPerRequest(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[0].ctl.Addr()
	registerHosts(t, addr, 6, 16, 64*gib)
	hostsOf := func(prefix, strategy, center string) map[string]bool {
		hosts := map[string]bool{}
		for i := 0; i < 3; i++ {
			body := fmt.Sprintf(`{"name":"%s-%d","vcpus":2,"memory":"4GiB","strategy":%q,"constraints":["center=%s"]}`, prefix, i, strategy, center)
			code, resp, err := apitest.Post(addr, "/v1/vms", body)
			var vm yunchiv1.VM
			if err != nil || code != 200 || protojson.Unmarshal(resp, &vm) != nil {
				t.Fatalf("create: %d %s %v", code, resp, err)
			}
			if !strings.HasPrefix(vm.HostId, center+"-") {
				t.Fatalf("%s outside the constraint: %s", vm.Name, vm.HostId)
			}
			hosts[vm.HostId] = true
		}
		return hosts
	}
	// Each center has 2 empty hosts.
	if h := hostsOf("packed", "binpack", "a1"); len(h) != 1 {
		t.Errorf("binpack used %d hosts: %v", len(h), h)
	}
	if h := hostsOf("spread", "spread", "a2"); len(h) != 2 {
		t.Errorf("spread used %d hosts: %v", len(h), h)
	}
}
