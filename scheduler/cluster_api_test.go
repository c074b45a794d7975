package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func mustCluster(t *testing.T, hosts []Host, opt Options) *Cluster {
	t.Helper()
	c, err := NewCluster(hosts, opt)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNoFitNewReasons(t *testing.T) {
	var hosts []Host
	add := func(n int, f func(h *Host)) {
		for range n {
			h := readyHost(fmt.Sprintf("h%02d", len(hosts)))
			f(&h)
			hosts = append(hosts, h)
		}
	}
	add(3, func(h *Host) { h.State = HostMaintenance })
	add(1, func(h *Host) { h.State = HostDraining })
	add(2, func(h *Host) { h.State = HostDown })
	add(2, func(h *Host) { h.Owner = "x" })
	add(2, func(h *Host) { h.Labels = map[string]string{"cpu_model": "x86"} })
	add(1, func(h *Host) {
		h.Labels = map[string]string{"cpu_model": "kunpeng920"}
		h.Allocated = Resources{0, 250 * GiB, 0}
	})
	add(2, func(h *Host) {
		h.Labels = map[string]string{"cpu_model": "kunpeng920"}
		h.Allocated = Resources{40, 0, 0}
	})
	c := mustCluster(t, hosts, Options{})
	req := Request{Name: "db-1", Project: "p1", Resources: Resources{32, 64 * GiB, 40 * GiB},
		Constraints: []Constraint{{Key: "cpu_model", Op: OpEq, Values: []string{"kunpeng920"}}}}
	_, err := c.Place(req)
	const want = "0/13 hosts fit: 3 in maintenance, 2 dedicated to project x, 2 down, 2 insufficient vCPU (need 32 vCPU; most free: 24 vCPU on h11), " +
		"2 label cpu_model is not kunpeng920, 1 draining, 1 insufficient memory (need 64 GiB; most free: 6 GiB on h10)"
	if err == nil || err.Error() != want {
		t.Errorf("got\n  %v\nwant\n  %s", err, want)
	}
	var nf *NoFitError
	if !errors.As(err, &nf) || nf.Request.Name != "db-1" || nf.Total != 13 {
		t.Errorf("NoFitError %+v", nf)
	}

	// Groups and per-host caps.
	hosts = groupHosts()
	c = mustCluster(t, hosts, Options{})
	req = small("")
	req.Group = &Group{Name: "web", Level: LevelHost, Hard: true, MaxPerHost: 0, Members: map[string]int{"h1": 1, "h2": 1, "h3": 1, "h4": 1}}
	_, err = c.Place(req)
	if want := "0/4 hosts fit: 4 anti-affinity: group web already has a member on this host"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	req.Group = &Group{Name: "web", Affinity: true, Level: LevelRack, MaxPerHost: 2, Members: map[string]int{"h1": 2, "h2": 2}}
	req.Constraints = []Constraint{{Key: "rack", Op: OpEq, Values: []string{"r1"}}, {Key: "center", Op: OpEq, Values: []string{"a1"}}}
	_, err = c.Place(req)
	if want := "0/4 hosts fit: 2 max 2 per host reached, 1 center is not a1, 1 rack is not r1"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

// TestDeterministic: the same hosts, request and seed give the same
// placement whatever order the hosts come in, with constraints and groups.
func TestDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	var hosts []Host
	var ids []string
	for i := range 60 {
		id := fmt.Sprintf("h%02d", i)
		hosts = append(hosts, randomHost(r, id))
		ids = append(ids, id)
	}
	reqs := make([]Request, 40)
	for i := range reqs {
		reqs[i] = randomRequest(r, ids)
	}
	answers := func(hs []Host, seed int64) []string {
		c := mustCluster(t, hs, Options{Seed: seed})
		var out []string
		for _, req := range reqs {
			p, err := c.Place(req)
			out = append(out, fmt.Sprint(p, err))
			if err == nil {
				_ = c.Allocate(p.HostID, req.Resources)
			}
		}
		return out
	}
	for _, seed := range []int64{0, 1, 42} {
		want := answers(hosts, seed)
		for k := range 5 {
			shuffled := slices.Clone(hosts)
			rand.New(rand.NewPCG(uint64(k), 9)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			if got := answers(shuffled, seed); !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d, shuffle %d: answers differ", seed, k)
			}
		}
	}
	// The seed decides ties: identical empty hosts are picked in a
	// different order under different seeds.
	same := []Host{readyHost("a"), readyHost("b"), readyHost("c"), readyHost("d"), readyHost("e")}
	winners := map[string]bool{}
	for seed := range int64(20) {
		p, err := mustCluster(t, same, Options{Seed: seed}).Place(small(""))
		if err != nil {
			t.Fatal(err)
		}
		winners[p.HostID] = true
	}
	if len(winners) < 3 {
		t.Errorf("20 seeds picked only %v among 5 identical hosts", winners)
	}
}

func TestPlaceBatchAntiAffinity(t *testing.T) {
	hosts := []Host{readyHost("h1"), readyHost("h2"), readyHost("h3")}
	c := mustCluster(t, hosts, Options{})
	g := &Group{Name: "db", Level: LevelHost, Hard: true}
	batch := func(n int) []Request {
		var rs []Request
		for i := range n {
			rs = append(rs, Request{Name: fmt.Sprintf("db-%d", i+1), Resources: Resources{2, 4 * GiB, 40 * GiB}, Group: g})
		}
		return rs
	}
	ps, err := c.PlaceBatch(batch(3))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, p := range ps {
		seen[p.HostID] = true
	}
	if len(ps) != 3 || len(seen) != 3 {
		t.Fatalf("placements %+v: want 3 distinct hosts", ps)
	}
	// Nothing was allocated.
	for _, id := range []string{"h1", "h2", "h3"} {
		if h, _ := c.Host(id); h.Allocated != (Resources{}) {
			t.Errorf("%s allocated %+v after PlaceBatch", id, h.Allocated)
		}
	}
	// Four do not fit on three hosts: the fourth is named.
	_, err = c.PlaceBatch(batch(4))
	want := `request "db-4" (4 of 4): 0/3 hosts fit: 3 anti-affinity: group db already has a member on this host`
	var nf *NoFitError
	if err == nil || err.Error() != want || !errors.As(err, &nf) || nf.Index != 3 || nf.Batch != 4 {
		t.Fatalf("got %v, want %s", err, want)
	}
	for _, id := range []string{"h1", "h2", "h3"} {
		if h, _ := c.Host(id); h.Allocated != (Resources{}) {
			t.Errorf("%s allocated %+v after a failed PlaceBatch", id, h.Allocated)
		}
	}
	// Groups are matched by name too: separate *Group values named db.
	rs := batch(3)
	for i := range rs {
		g2 := *g
		rs[i].Group = &g2
	}
	if ps, err := c.PlaceBatch(rs); err != nil || ps[0].HostID == ps[1].HostID || ps[1].HostID == ps[2].HostID || ps[0].HostID == ps[2].HostID {
		t.Errorf("same-name groups: %+v, %v", ps, err)
	}
}

func TestPlaceBatchAllOrNothing(t *testing.T) {
	hosts := []Host{readyHost("h1")}
	c := mustCluster(t, hosts, Options{})
	big := Resources{40, 100 * GiB, 40 * GiB}
	// Each fits alone; both together do not.
	_, err := c.PlaceBatch([]Request{{Name: "a", Resources: big}, {Name: "b", Resources: big}})
	if err == nil || !strings.HasPrefix(err.Error(), `request "b" (2 of 2): 0/1 hosts fit: 1 insufficient vCPU (need 40 vCPU; most free: 24 vCPU on h1)`) {
		t.Fatalf("got %v", err)
	}
	if h, _ := c.Host("h1"); h.Allocated != (Resources{}) {
		t.Errorf("allocated %+v after a failed batch", h.Allocated)
	}
	// An invalid member fails the batch before anything is decided.
	_, err = c.PlaceBatch([]Request{{Name: "a", Resources: big}, {Name: "b"}})
	if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), `request "b" (2 of 2)`) {
		t.Errorf("invalid member: %v", err)
	}
	if ps, err := c.PlaceBatch(nil); err != nil || len(ps) != 0 {
		t.Errorf("empty batch: %v, %v", ps, err)
	}
}

func TestSoftGroups(t *testing.T) {
	hosts := groupHosts()
	// h1 is the tightest fit: without a group it wins.
	hosts[0].Allocated = Resources{48, 128 * GiB, 0}
	c := mustCluster(t, hosts, Options{})
	if p, _ := c.Place(small("")); p.HostID != "h1" {
		t.Fatalf("no group: %s, want h1", p.HostID)
	}
	for _, tc := range []struct {
		name  string
		group Group
		want  []string // any of these
	}{
		{"soft host anti-affinity avoids the member's host", Group{Name: "g", Level: LevelHost, Members: map[string]int{"h1": 1}}, []string{"h2", "h3", "h4"}},
		// h4's rack is also called r1, but it is in another center.
		{"soft rack anti-affinity avoids the rack", Group{Name: "g", Level: LevelRack, Members: map[string]int{"h1": 1}}, []string{"h3", "h4"}},
		{"soft host affinity joins the member", Group{Name: "g", Affinity: true, Level: LevelHost, Members: map[string]int{"h4": 1}}, []string{"h4"}},
		{"soft center affinity", Group{Name: "g", Affinity: true, Level: LevelCenter, Members: map[string]int{"h4": 1}}, []string{"h4"}},
		{"soft rack affinity", Group{Name: "g", Affinity: true, Level: LevelRack, Members: map[string]int{"h3": 1}}, []string{"h3"}},
	} {
		req := small("")
		g := tc.group
		req.Group = &g
		p, err := c.Place(req)
		if err != nil || !slices.Contains(tc.want, p.HostID) {
			t.Errorf("%s: got %s, %v; want one of %v", tc.name, p.HostID, err, tc.want)
		}
	}
	// A soft rule yields when nothing else fits.
	one := mustCluster(t, []Host{readyHost("only")}, Options{})
	req := small("")
	req.Group = &Group{Name: "g", Level: LevelHost, Members: map[string]int{"only": 3}}
	if p, err := one.Place(req); err != nil || p.HostID != "only" {
		t.Errorf("soft anti-affinity with one host: %+v, %v", p, err)
	}
}

func TestDedicatedPools(t *testing.T) {
	hosts := []Host{readyHost("shared"), readyHost("p1-a"), readyHost("p2-a")}
	hosts[1].Owner, hosts[2].Owner = "p1", "p2"
	hosts[0].Allocated = Resources{60, 0, 0} // shared is nearly full
	c := mustCluster(t, hosts, Options{})
	if p, err := c.Place(Request{Project: "p3", Resources: Resources{2, GiB, GiB}}); err != nil || p.HostID != "shared" {
		t.Errorf("p3: %+v, %v; want shared", p, err)
	}
	for range 20 {
		req := Request{Project: "p1", Resources: Resources{2, 4 * GiB, 40 * GiB}}
		p, err := c.Place(req)
		if err != nil {
			t.Fatal(err)
		}
		if p.HostID == "p2-a" {
			t.Fatal("p1's VM landed on p2's pool")
		}
		for _, ru := range p.RunnersUp {
			if ru.HostID == "p2-a" {
				t.Fatal("p2's host listed as a runner-up for p1")
			}
		}
		_ = c.Allocate(p.HostID, req.Resources)
	}
	// The shared host is full now: p3 has nowhere to go.
	if _, err := c.Place(Request{Project: "p3", Resources: Resources{2, GiB, GiB}}); err == nil || !strings.Contains(err.Error(), "1 dedicated to project p1, 1 dedicated to project p2") {
		t.Errorf("p3 on a full shared host: %v", err)
	}
}

func TestSpreadPicksEmptiest(t *testing.T) {
	hosts := []Host{readyHost("busy"), readyHost("idle"), readyHost("mid")}
	hosts[0].Allocated = Resources{40, 200 * GiB, 0}
	hosts[2].Allocated = Resources{20, 50 * GiB, 0}
	c := mustCluster(t, hosts, Options{Strategy: Spread})
	p, err := c.Place(small(""))
	if err != nil || p.HostID != "idle" || len(p.RunnersUp) != 2 || p.RunnersUp[0].HostID != "mid" {
		t.Errorf("spread: %+v, %v", p, err)
	}
}

func TestClusterUpdates(t *testing.T) {
	if _, err := NewCluster([]Host{readyHost("a"), readyHost("a")}, Options{}); err == nil || !strings.Contains(err.Error(), `"a" appears twice`) {
		t.Errorf("duplicate IDs: %v", err)
	}
	if _, err := NewCluster([]Host{readyHost("a"), {}}, Options{}); err == nil || !strings.Contains(err.Error(), "host 2 of 2 has no ID") {
		t.Errorf("empty ID: %v", err)
	}
	if _, err := NewCluster(nil, Options{Strategy: 7}); err == nil {
		t.Error("unknown strategy accepted")
	}
	c := mustCluster(t, []Host{readyHost("a"), readyHost("b")}, Options{})
	if c.Len() != 2 {
		t.Fatalf("Len %d", c.Len())
	}
	if err := c.Allocate("zz", Resources{1, 1, 1}); !errors.Is(err, ErrUnknownHost) {
		t.Errorf("allocate on unknown host: %v", err)
	}
	if err := c.Release("zz", Resources{1, 1, 1}); !errors.Is(err, ErrUnknownHost) {
		t.Errorf("release on unknown host: %v", err)
	}
	if err := c.Allocate("a", Resources{-1, 0, 0}); err == nil {
		t.Error("negative allocate accepted")
	}
	if err := c.Allocate("a", Resources{8, 8 * GiB, 40 * GiB}); err != nil {
		t.Fatal(err)
	}
	if err := c.Release("a", Resources{9, 0, 0}); err == nil || !strings.Contains(err.Error(), "more than is allocated") {
		t.Errorf("over-release: %v", err)
	}
	if h, _ := c.Host("a"); h.Allocated != (Resources{8, 8 * GiB, 40 * GiB}) {
		t.Errorf("a failed release changed the host: %+v", h.Allocated)
	}
	// The tighter host wins; once it goes into maintenance, the other.
	if p, _ := c.Place(small("")); p.HostID != "a" {
		t.Errorf("got %s, want a", p.HostID)
	}
	h, _ := c.Host("a")
	h.State = HostMaintenance
	c.Upsert(h)
	if p, _ := c.Place(small("")); p.HostID != "b" {
		t.Errorf("after maintenance: got %s, want b", p.HostID)
	}
	h.State = HostReady
	h.Labels = map[string]string{"gpu": "a100"}
	c.Upsert(h)
	req := small("")
	req.Constraints = []Constraint{{Key: "gpu", Op: OpEq, Values: []string{"a100"}}}
	if p, err := c.Place(req); err != nil || p.HostID != "a" {
		t.Errorf("after labelling: %+v, %v", p, err)
	}
	// The cluster keeps its own copy of labels.
	h.Labels["gpu"] = "none"
	if got, _ := c.Host("a"); got.Labels["gpu"] != "a100" {
		t.Error("Upsert kept the caller's label map")
	}
	// Also when the labels are unchanged (the cluster keeps its copy then).
	same := map[string]string{"gpu": "a100"}
	h.Labels = same
	c.Upsert(h)
	same["gpu"] = "none"
	if got, _ := c.Host("a"); got.Labels["gpu"] != "a100" {
		t.Error("an upsert with the same labels kept the caller's map")
	}
	h.Labels = map[string]string{"gpu": "h100"}
	c.Upsert(h)
	if got, _ := c.Host("a"); got.Labels["gpu"] != "h100" {
		t.Errorf("new labels not taken: %v", got.Labels)
	}
	c.Upsert(readyHost("c"))
	if c.Len() != 3 {
		t.Errorf("Len after adding %d", c.Len())
	}
	if _, ok := c.Host("c"); !ok {
		t.Error("new host not found")
	}
}

func TestInvalidRequests(t *testing.T) {
	c := mustCluster(t, []Host{readyHost("a")}, Options{})
	for _, tc := range []struct {
		name string
		req  Request
		msg  string
	}{
		{"bad constraint", Request{Resources: Resources{1, 1, 1}, Constraints: []Constraint{{Key: "rack", Op: OpEq}}}, `constraint on "rack" has no value`},
		{"two values for =", Request{Resources: Resources{1, 1, 1}, Constraints: []Constraint{{Key: "rack", Op: OpEq, Values: []string{"a", "b"}}}}, "takes one value"},
		{"bad level", Request{Resources: Resources{1, 1, 1}, Group: &Group{Name: "g", Level: 5}}, "unknown level"},
		{"negative cap", Request{Resources: Resources{1, 1, 1}, Group: &Group{Name: "g", MaxPerHost: -1}}, "MaxPerHost"},
	} {
		_, err := c.Place(tc.req)
		if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
