package scheduler

import (
	"testing"
)

// dec is a decision for req without a cluster: group members resolved
// against hosts.
func dec(req Request, hosts ...Host) *decision {
	c, err := NewCluster(hosts, Options{})
	if err != nil {
		panic(err)
	}
	return c.newDecision(&req, nil)
}

func readyHost(id string) Host {
	return Host{ID: id, Center: "a1", Site: "s1", Rack: "r1", Capacity: standard, Ratios: Ratios{1, 1, 1}}
}

func TestStateFilter(t *testing.T) {
	for _, tc := range []struct {
		state HostState
		want  Reason
	}{
		{HostReady, Fit},
		{HostMaintenance, "in maintenance"},
		{HostDraining, "draining"},
		{HostDown, "down"},
		{HostState(9), "in state HostState(9)"},
	} {
		h := readyHost("h1")
		h.State = tc.state
		if got := stateFilter(dec(small("")), &h); got != tc.want {
			t.Errorf("%v: got %q, want %q", tc.state, got, tc.want)
		}
	}
}

func TestOwnerFilter(t *testing.T) {
	for _, tc := range []struct {
		name, owner, project string
		want                 Reason
	}{
		{"shared host, any project", "", "p1", Fit},
		{"shared host, no project", "", "", Fit},
		{"own pool", "p1", "p1", Fit},
		{"someone else's pool", "p2", "p1", "dedicated to project p2"},
		{"pool, request without project", "p2", "", "dedicated to project p2"},
	} {
		h := readyHost("h1")
		h.Owner = tc.owner
		req := small("")
		req.Project = tc.project
		if got := ownerFilter(dec(req), &h); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestCenterFilter(t *testing.T) {
	for _, tc := range []struct {
		name, reqCenter, hostCenter string
		want                        Reason
	}{
		{"any center", "", "a1", Fit},
		{"any center, host without one", "", "", Fit},
		{"same center", "a1", "a1", Fit},
		{"other center", "a1", "b1", ReasonCenter},
		{"host without center", "a1", "", ReasonCenter},
		{"case matters", "a1", "A1", ReasonCenter},
	} {
		h := readyHost("h1")
		h.Center = tc.hostCenter
		if got := centerFilter(dec(small(tc.reqCenter)), &h); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestConstraintFilter(t *testing.T) {
	h := readyHost("h7")
	h.Center, h.Site, h.Rack = "a1", "s2", "r3"
	h.Labels = map[string]string{"cpu_model": "kunpeng920", "gpu": "none"}
	for _, tc := range []struct {
		c    string
		want Reason
	}{
		{"cpu_model=kunpeng920", Fit},
		{"cpu_model=x86", "label cpu_model is not x86"},
		{"cpu_model!=x86", Fit},
		{"cpu_model!=kunpeng920", "label cpu_model is kunpeng920"},
		{"cpu_model in x86,kunpeng920", Fit},
		{"cpu_model in x86,arm", "label cpu_model is not one of x86,arm"},
		{"cpu_model notin x86,arm", Fit},
		{"cpu_model notin kunpeng920,arm", "label cpu_model is one of kunpeng920,arm"},
		{"cpu_model notin kunpeng920", "label cpu_model is kunpeng920"},
		// A host without the label: = and in fail, != and notin pass.
		{"ssd=yes", "label ssd is not yes"},
		{"ssd in yes", "label ssd is not yes"},
		{"ssd!=yes", Fit},
		{"ssd notin yes,no", Fit},
		// Fields.
		{"center=a1", Fit},
		{"center=b1", "center is not b1"},
		{"site in s1,s2", Fit},
		{"rack!=r3", "rack is r3"},
		{"rack notin r1,r2", Fit},
		{"host=h7", Fit},
		{"host=h8", "host is not h8"},
		{"host!=h7", "host is h7"},
	} {
		c, err := ParseConstraint(tc.c)
		if err != nil {
			t.Fatalf("%s: %v", tc.c, err)
		}
		req := small("")
		req.Constraints = []Constraint{c}
		if got := constraintFilter(dec(req), &h); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.c, got, tc.want)
		}
	}
	// The first constraint that fails is the reason.
	req := small("")
	req.Constraints = []Constraint{{Key: "rack", Op: OpEq, Values: []string{"r1"}}, {Key: "cpu_model", Op: OpEq, Values: []string{"x86"}}}
	if got := constraintFilter(dec(req), &h); got != "rack is not r1" {
		t.Errorf("two failing constraints: got %q", got)
	}
}

// groupHosts are four hosts: h1, h2 in rack r1 of a1; h3 in rack r2 of a1;
// h4 in rack r1 of b1 (another rack, though named alike).
func groupHosts() []Host {
	hs := []Host{readyHost("h1"), readyHost("h2"), readyHost("h3"), readyHost("h4")}
	hs[2].Rack = "r2"
	hs[3].Center = "b1"
	return hs
}

func TestGroupFilters(t *testing.T) {
	hosts := groupHosts()
	type want [4]Reason // for h1..h4
	for _, tc := range []struct {
		name  string
		group Group
		want  want
	}{
		{"hard host anti-affinity", Group{Name: "g", Level: LevelHost, Hard: true, Members: map[string]int{"h1": 1}},
			want{"anti-affinity: group g already has a member on this host", Fit, Fit, Fit}},
		{"hard rack anti-affinity", Group{Name: "g", Level: LevelRack, Hard: true, Members: map[string]int{"h1": 1}},
			want{"anti-affinity: group g already has a member in rack r1", "anti-affinity: group g already has a member in rack r1", Fit, Fit}},
		{"hard center anti-affinity", Group{Name: "g", Level: LevelCenter, Hard: true, Members: map[string]int{"h1": 1}},
			want{"anti-affinity: group g already has a member in center a1", "anti-affinity: group g already has a member in center a1", "anti-affinity: group g already has a member in center a1", Fit}},
		{"hard host affinity", Group{Name: "g", Affinity: true, Level: LevelHost, Hard: true, Members: map[string]int{"h2": 1}},
			want{"affinity: group g is on other hosts", Fit, "affinity: group g is on other hosts", "affinity: group g is on other hosts"}},
		{"hard rack affinity", Group{Name: "g", Affinity: true, Level: LevelRack, Hard: true, Members: map[string]int{"h2": 1}},
			want{Fit, Fit, "affinity: group g is in another rack", "affinity: group g is in another rack"}},
		{"hard center affinity", Group{Name: "g", Affinity: true, Level: LevelCenter, Hard: true, Members: map[string]int{"h4": 2}},
			want{"affinity: group g is in another center", "affinity: group g is in another center", "affinity: group g is in another center", Fit}},
		{"affinity without members yet goes anywhere", Group{Name: "g", Affinity: true, Level: LevelHost, Hard: true, Members: map[string]int{"gone": 1}},
			want{Fit, Fit, Fit, Fit}},
		{"soft rules filter nothing", Group{Name: "g", Level: LevelHost, Members: map[string]int{"h1": 1}},
			want{Fit, Fit, Fit, Fit}},
		{"max per host", Group{Name: "g", Affinity: true, Level: LevelRack, MaxPerHost: 2, Members: map[string]int{"h1": 2, "h2": 1}},
			want{"max 2 per host reached", Fit, Fit, Fit}},
		{"max per host with hard affinity", Group{Name: "g", Affinity: true, Level: LevelHost, Hard: true, MaxPerHost: 1, Members: map[string]int{"h1": 1}},
			want{"max 1 per host reached", "affinity: group g is on other hosts", "affinity: group g is on other hosts", "affinity: group g is on other hosts"}},
	} {
		req := small("")
		g := tc.group
		req.Group = &g
		d := dec(req, hosts...)
		for i := range hosts {
			got := groupLocationFilter(d, &hosts[i])
			if got == Fit {
				got = groupHostFilter(d, &hosts[i])
			}
			if got != tc.want[i] {
				t.Errorf("%s, %s: got %q, want %q", tc.name, hosts[i].ID, got, tc.want[i])
			}
		}
	}
}

func TestCapacityFilters(t *testing.T) {
	h := func(allocated Resources) Host {
		x := readyHost("h1")
		x.Allocated = allocated
		return x
	}
	for _, tc := range []struct {
		name string
		need Resources
		host Host
		want Reason
	}{
		{"plenty free", Resources{4, 8 * GiB, 40 * GiB}, h(Resources{}), Fit},
		{"exactly the free amount", Resources{4, 56 * GiB, 96 * GiB}, h(Resources{60, 200 * GiB, 4000 * GiB}), Fit},
		{"one vCPU short", Resources{5, GiB, GiB}, h(Resources{60, 0, 0}), ReasonCPU},
		{"one byte of memory short", Resources{1, 56*GiB + 1, GiB}, h(Resources{0, 200 * GiB, 0}), ReasonMemory},
		{"one byte of disk short", Resources{1, GiB, 96*GiB + 1}, h(Resources{0, 0, 4000 * GiB}), ReasonDisk},
		{"CPU judged first", Resources{65, 300 * GiB, 5 * TiB}, h(Resources{}), ReasonCPU},
		{"overcommitted host", Resources{1, 1, 1}, h(Resources{70, 0, 0}), ReasonCPU},
		{"ratio counts", Resources{100, GiB, GiB}, Host{ID: "h", Capacity: standard, Ratios: Ratios{CPU: 2}}, Fit},
		{"reservation counts", Resources{1, 255 * GiB, GiB}, Host{ID: "h", Capacity: standard, Reserved: Resources{0, 2 * GiB, 0}}, ReasonMemory},
	} {
		d := dec(Request{Resources: tc.need})
		if got := capacityFilter(d, &tc.host); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
		if c := capacityReason(tc.need, tc.host.Free()); c != tc.want {
			t.Errorf("%s: capacityReason %q, want %q", tc.name, c, tc.want)
		}
	}
}

func TestParseConstraint(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Constraint
	}{
		{"cpu_model=kunpeng920", Constraint{"cpu_model", OpEq, []string{"kunpeng920"}}},
		{" rack != r3 ", Constraint{"rack", OpNe, []string{"r3"}}},
		{"center in a1,a2", Constraint{"center", OpIn, []string{"a1", "a2"}}},
		{"center in a1, a2", Constraint{"center", OpIn, []string{"a1", "a2"}}},
		{"center notin b1", Constraint{"center", OpNotIn, []string{"b1"}}},
	} {
		got, err := ParseConstraint(tc.in)
		if err != nil || got.Key != tc.want.Key || got.Op != tc.want.Op || len(got.Values) != len(tc.want.Values) {
			t.Errorf("%q: got %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		for i := range got.Values {
			if got.Values[i] != tc.want.Values[i] {
				t.Errorf("%q: values %v, want %v", tc.in, got.Values, tc.want.Values)
			}
		}
		// String round-trips.
		again, err := ParseConstraint(got.String())
		if err != nil || again.String() != got.String() {
			t.Errorf("%q: String %q does not parse back: %+v, %v", tc.in, got.String(), again, err)
		}
	}
	for _, bad := range []string{"", "cpu_model", "=x", "rack!=", "center in", "center in ,", "center within a1", "a b=c", "rack=r1,r2"} {
		if c, err := ParseConstraint(bad); err == nil {
			t.Errorf("%q: parsed as %+v, want an error", bad, c)
		}
	}
}

func TestParseNames(t *testing.T) {
	for i, n := range []string{"ready", "maintenance", "draining", "down"} {
		if s, err := ParseHostState(n); err != nil || s != HostState(i) || s.String() != n {
			t.Errorf("ParseHostState(%q) = %v, %v", n, s, err)
		}
	}
	if s, err := ParseHostState("DOWN"); err != nil || s != HostDown {
		t.Errorf("ParseHostState(DOWN) = %v, %v", s, err)
	}
	for i, n := range []string{"host", "rack", "center"} {
		if l, err := ParseLevel(n); err != nil || l != Level(i) || l.String() != n {
			t.Errorf("ParseLevel(%q) = %v, %v", n, l, err)
		}
	}
	for i, n := range []string{"binpack", "spread"} {
		if s, err := ParseStrategy(n); err != nil || s != Strategy(i) || s.String() != n {
			t.Errorf("ParseStrategy(%q) = %v, %v", n, s, err)
		}
	}
	if _, err := ParseHostState("up"); err == nil || err.Error() != `unknown host state "up": want one of ready, maintenance, draining, down` {
		t.Errorf("ParseHostState(up): %v", err)
	}
	if _, err := ParseLevel("zone"); err == nil {
		t.Error("ParseLevel(zone): no error")
	}
	if _, err := ParseStrategy("random"); err == nil {
		t.Error("ParseStrategy(random): no error")
	}
	if got := (Ratios{CPU: 2}).OrDefault(); got != (Ratios{2, 1, 1}) {
		t.Errorf("OrDefault = %+v", got)
	}
}
