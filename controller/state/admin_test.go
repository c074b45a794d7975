package state

import (
	"math"
	"strings"
	"testing"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// fiveHosts: h1..h5 in center b1, 16 vCPU / 64 GiB / 1000 GiB each; h1..h4
// run one VM of 2 vCPU / 8 GiB / 10 GiB, h5 runs nothing.
func fiveHosts(t *testing.T) *Store {
	t.Helper()
	s := New()
	for i, id := range []string{"h1", "h2", "h3", "h4", "h5"} {
		mustApply(t, s, uint64(i+1), regHost(id, "b1", 16, 64*gib, 1000*gib))
	}
	for i, id := range []string{"h1", "h2", "h3", "h4"} {
		mustApply(t, s, uint64(10+i), place("vm-"+id, "web-"+id, id, 2, 8*gib))
	}
	return s
}

// legacyApply applies cmd as a controller before version 3 wrote it.
func legacyApply(t *testing.T, s *Store, index uint64, cmd *statev1.Command) (Result, error) {
	t.Helper()
	cmd.Version = rulesV3 - 1
	cmd.UnixNano = int64(index) * 1000
	return s.Apply(index, overWire(t, cmd))
}

func wantRefused(t *testing.T, err error, kind Kind, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want refused saying %q", parts)
	}
	if KindOf(err) != kind {
		t.Fatalf("kind %d, want %d: %v", KindOf(err), kind, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("message %q does not say %q", err, p)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("message spans lines: %q", err)
	}
}

// Every admin change that lowers a host's allocatable below what it runs is
// refused (naming the hosts) unless forced; the refusal changes nothing.
func TestOvercommitNeedsForce(t *testing.T) {
	s := fiveHosts(t)
	// A host group with a tiny memory ratio: no host carries its label yet,
	// so setting it lowers nothing.
	mustApply(t, s, 20, setRatios(&statev1.SetRatios{Scope: ScopeHostGroup, Name: "tiny", Memory: f64(0.1)}))
	before := s.Snapshot()

	_, err := apply(t, s, 21, setRatios(&statev1.SetRatios{Scope: ScopeCenter, Name: "b1", Memory: f64(0.1)}))
	// (64 GiB - 2 GiB reserved) * 0.1 = 6.2 GiB < 8 GiB on h1..h4; h5 runs nothing.
	wantRefused(t, err, KindFailedPrecondition,
		"these ratios for center b1 would put 4 hosts below what they run: h1 (memory: allocated 8 GiB > allocatable 6.2 GiB), h2 (", "h3 (", " and 1 more;",
		`give --force (REST: "force": true) to accept the overcommit`)
	if strings.Contains(err.Error(), "h4") || strings.Contains(err.Error(), "h5") {
		t.Fatalf("names more than the first 3 hosts: %v", err)
	}
	unchanged(t, s, before)

	// A change that keeps the host within what it runs needs no force:
	// (1000 GiB disk) * 0.1 = 100 GiB >= 10 GiB.
	mustApply(t, s, 21, updateHost(&statev1.UpdateHost{HostId: "h1", DiskRatio: f64(0.1)}))
	before = s.Snapshot()
	for name, u := range map[string]*statev1.UpdateHost{
		"memory ratio":       {HostId: "h1", MemoryRatio: f64(0.1)},
		"cpu ratio":          {HostId: "h1", CpuRatio: f64(0.1)}, // 15 * 0.1 = 1 vCPU < 2
		"reserve memory":     {HostId: "h1", Reserved: &statev1.Resources{Vcpus: 1, MemoryBytes: 60 * gib}},
		"reserve cpu":        {HostId: "h1", Reserved: &statev1.Resources{Vcpus: 16, MemoryBytes: 2 * gib}},
		"into a small group": {HostId: "h1", SetLabels: map[string]string{HostGroupLabel: "tiny"}},
		"with other changes": {HostId: "h1", Owner: str("tax"), MemoryRatio: f64(0.1)},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := apply(t, s, 22, updateHost(u))
			wantRefused(t, err, KindFailedPrecondition, "this change would put host h1 below what it runs (", "allocated", "--force")
		})
	}
	// The API's pre-check says the same as Apply.
	wantRefused(t, s.CheckUpdateHost(&statev1.UpdateHost{HostId: "h2", MemoryRatio: f64(0.1)}), KindFailedPrecondition, "host h2 below what it runs")
	wantRefused(t, s.CheckSetRatios(&statev1.SetRatios{Scope: ScopeCenter, Name: "b1", Memory: f64(0.1)}), KindFailedPrecondition, "4 hosts")
	unchanged(t, s, before)

	// Forced, it is applied, and the hosts say they are overcommitted.
	mustApply(t, s, 30, setRatios(&statev1.SetRatios{Scope: ScopeCenter, Name: "b1", Memory: f64(0.1), Force: true}))
	for _, hv := range s.Hosts() {
		f := hv.Facts.Free()
		if runsVMs := hv.Host.Id != "h5"; (f.MemoryBytes < 0) != runsVMs || f.VCPUs < 0 || f.DiskBytes < 0 {
			t.Fatalf("%s after a forced memory ratio: free %+v", hv.Host.Id, f)
		}
	}
	// An overcommitted host takes no new VM.
	if _, err := apply(t, s, 31, place("vm-x", "more", "h1", 1, 16<<20)); KindOf(err) != KindConflict {
		t.Fatalf("place on an overcommitted host: %v", err)
	}
	// A change that does not lower it further needs no force; one that does
	// (cpu now, or memory further) does.
	mustApply(t, s, 32, updateHost(&statev1.UpdateHost{HostId: "h1", SetLabels: map[string]string{"tier": "gold"}, AdminState: statev1.HostState_HOST_STATE_MAINTENANCE}))
	mustApply(t, s, 33, updateHost(&statev1.UpdateHost{HostId: "h1", MemoryRatio: f64(0.12)})) // up, still below
	_, err = apply(t, s, 34, updateHost(&statev1.UpdateHost{HostId: "h1", MemoryRatio: f64(0.11)}))
	wantRefused(t, err, KindFailedPrecondition, "host h1 below what it runs (memory: allocated 8 GiB > allocatable ")
	// Raising the center's ratio back ends the overcommit.
	mustApply(t, s, 35, setRatios(&statev1.SetRatios{Scope: ScopeCenter, Name: "b1", Memory: f64(0)}))
	if hv, _ := s.Host("h2"); hv.Facts.Free().MemoryBytes < 0 {
		t.Fatalf("h2 still overcommitted: free %+v", hv.Facts.Free())
	}
}

// A log written before version 3 replays as it was applied then: an
// overcommitting change without force, a tiny ratio, a reserved label key.
func TestLegacyCommandsApplyByTheirRules(t *testing.T) {
	s := fiveHosts(t)
	for i, cmd := range []*statev1.Command{
		setRatios(&statev1.SetRatios{Scope: ScopeCenter, Name: "b1", Memory: f64(0.01)}),
		updateHost(&statev1.UpdateHost{HostId: "h5", CpuRatio: f64(1e-300), SetLabels: map[string]string{"center": "a1"}}),
	} {
		if _, err := legacyApply(t, s, uint64(20+i), cmd); err != nil {
			t.Fatalf("legacy command %d refused: %v", i, err)
		}
	}
	if hv, _ := s.Host("h1"); hv.Facts.Free().MemoryBytes >= 0 {
		t.Fatalf("h1 after a legacy ratio: free %+v", hv.Facts.Free())
	}
	// A reserved label left by an old command can be removed.
	mustApply(t, s, 30, updateHost(&statev1.UpdateHost{HostId: "h5", RemoveLabels: []string{"center"}, CpuRatio: f64(0)}))
	if hv, _ := s.Host("h5"); hv.Host.AdminLabels["center"] != "" || hv.Host.Ratios != nil {
		t.Fatalf("h5: %+v", hv.Host)
	}
}

func TestRatioBounds(t *testing.T) {
	s := fiveHosts(t)
	before := s.Snapshot()
	for _, tc := range []struct {
		what string
		v    float64
		msg  string
	}{
		{"cpu", 1e-300, "cpu ratio 1e-300 is out of range: give 0.1 to 64 (0 removes the setting)"},
		{"cpu", 0.09, "cpu ratio 0.09 is out of range: give 0.1 to 64"},
		{"cpu", 64.5, "cpu ratio 64.5 is out of range"},
		{"cpu", -1, "cpu ratio -1 is out of range"},
		{"cpu", math.NaN(), "cpu ratio NaN is out of range"},
		{"cpu", math.Inf(1), "cpu ratio +Inf is out of range"},
		{"memory", 0.01, "memory ratio 0.01 is out of range: give 0.1 to 4 (0 removes the setting)"},
		{"memory", 4.5, "memory ratio 4.5 is out of range: give 0.1 to 4"},
		{"disk", 17, "disk ratio 17 is out of range: give 0.1 to 16"},
		{"disk", 1e-300, "disk ratio 1e-300 is out of range"},
	} {
		r := &statev1.SetRatios{Scope: ScopeCenter, Name: "b1", Force: true}
		u := &statev1.UpdateHost{HostId: "h5", Force: true}
		v := f64(tc.v)
		switch tc.what {
		case "cpu":
			r.Cpu, u.CpuRatio = v, v
		case "memory":
			r.Memory, u.MemoryRatio = v, v
		case "disk":
			r.Disk, u.DiskRatio = v, v
		}
		_, err := apply(t, s, 20, setRatios(r))
		wantRefused(t, err, KindInvalid, tc.msg)
		_, err = apply(t, s, 21, updateHost(u))
		wantRefused(t, err, KindInvalid, tc.msg)
	}
	unchanged(t, s, before)
	// The bounds themselves are accepted, on a host that runs nothing.
	mustApply(t, s, 22, updateHost(&statev1.UpdateHost{HostId: "h5", CpuRatio: f64(0.1), MemoryRatio: f64(4), DiskRatio: f64(16)}))
	mustApply(t, s, 23, updateHost(&statev1.UpdateHost{HostId: "h5", CpuRatio: f64(64), MemoryRatio: f64(0.1), DiskRatio: f64(0.1)}))
}

func TestReservedLabelKeys(t *testing.T) {
	s := fiveHosts(t)
	before := s.Snapshot()
	for _, k := range []string{"center", "site", "rack", "host"} {
		_, err := apply(t, s, 20, updateHost(&statev1.UpdateHost{HostId: "h1", SetLabels: map[string]string{k: "b1", "tier": "gold"}}))
		wantRefused(t, err, KindInvalid, `label key "`+k+`" is reserved: constraints on center, site, rack, host read the host's own fields (its agent's --center, --site, --rack and --host-id), never labels; use another key`)
	}
	unchanged(t, s, before)
	// Keys that only look alike are labels like any other.
	mustApply(t, s, 21, updateHost(&statev1.UpdateHost{HostId: "h1", SetLabels: map[string]string{"center_zone": "x", "rack.pos": "3"}}))
}
