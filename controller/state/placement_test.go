package state

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

func f64(v float64) *float64 { return &v }
func str(v string) *string   { return &v }

func updateHost(u *statev1.UpdateHost) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_UpdateHost{UpdateHost: u}}
}

func setRatios(r *statev1.SetRatios) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_SetRatios{SetRatios: r}}
}

func createGroup(name string, policy statev1.GroupPolicy, level statev1.GroupLevel, soft bool, maxPerHost int32) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_CreatePlacementGroup{CreatePlacementGroup: &statev1.CreatePlacementGroup{Group: &statev1.PlacementGroupRecord{
		Name: name, Project: DefaultProject, Policy: policy, Level: level, Soft: soft, MaxPerHost: maxPerHost,
	}}}}
}

func deleteGroup(name string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_DeletePlacementGroup{DeletePlacementGroup: &statev1.DeletePlacementGroup{Project: DefaultProject, Name: name}}}
}

func vmRec(id, name, host, group string, cpu int32, mem int64) *statev1.VMRecord {
	return &statev1.VMRecord{Id: id, Name: name, Project: DefaultProject, Vcpus: cpu, MemoryBytes: mem, DiskBytes: 10 * gib, HostId: host, Group: group}
}

func placeMany(vms ...*statev1.VMRecord) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: vms}}}
}

func TestUpdateHost(t *testing.T) {
	s := fixture(t) // h1: 8 vCPU / 16 GiB / 100 GiB in a1, web-1 (2 vCPU, 4 GiB) on it
	hv, _ := s.Host("h1")
	if a := hv.Facts.Allocatable(); a.VCPUs != 28 || a.MemoryBytes != 14*gib || a.DiskBytes != 100*gib {
		t.Fatalf("default allocatable (reserve 1 vCPU, 2 GiB; cpu x4): %+v", a)
	}
	if hv.Sources != (RatioSources{"default", "default", "default"}) {
		t.Fatalf("sources: %+v", hv.Sources)
	}
	mustApply(t, s, 4, updateHost(&statev1.UpdateHost{
		HostId: "h1", AdminState: statev1.HostState_HOST_STATE_MAINTENANCE,
		SetLabels: map[string]string{"cpu_model": "kunpeng920", "host_group": "gold"},
		Owner:     str("tax"), Reserved: &statev1.Resources{Vcpus: 2, MemoryBytes: 4 * gib},
		CpuRatio: f64(2), MemoryRatio: f64(1.5),
	}))
	hv, _ = s.Host("h1")
	h := hv.Host
	if hv.Facts.State != statev1.HostState_HOST_STATE_MAINTENANCE || h.Owner != "tax" || h.AdminLabels["cpu_model"] != "kunpeng920" || h.StateChangedUnixNano != 4000 {
		t.Fatalf("after update: %+v state %v", h, hv.Facts.State)
	}
	if a := hv.Facts.Allocatable(); a.VCPUs != 12 || a.MemoryBytes != 18*gib {
		t.Fatalf("allocatable with reserve 2/4GiB and ratios 2/1.5: %+v", a)
	}
	if hv.Facts.State != statev1.HostState_HOST_STATE_MAINTENANCE || hv.Sources.CPU != "host" || hv.Sources.Disk != "default" {
		t.Fatalf("sched view: %+v %+v", hv.Facts, hv.Sources)
	}
	// Re-registration (agent facts) keeps what the admin decided.
	mustApply(t, s, 5, regHost("h1", "a1", 8, 16*gib, 100*gib))
	hv2, _ := s.Host("h1")
	if hv2.Facts.State != statev1.HostState_HOST_STATE_MAINTENANCE || hv2.Host.Owner != "tax" || hv2.Host.AdminLabels["host_group"] != "gold" || hv2.Host.Ratios.GetCpu() != 2 {
		t.Fatalf("re-register lost admin fields: %+v", hv2.Host)
	}
	// Down (liveness) wins over maintenance, and back.
	mustApply(t, s, 6, &statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: "h1", State: statev1.HostState_HOST_STATE_DOWN}}})
	if hv, _ := s.Host("h1"); hv.Facts.State != statev1.HostState_HOST_STATE_DOWN {
		t.Fatalf("down: %v", hv.Facts.State)
	}
	// Clearing: ratio 0 inherits again, owner "" shares, label removed.
	mustApply(t, s, 7, updateHost(&statev1.UpdateHost{HostId: "h1", AdminState: statev1.HostState_HOST_STATE_READY, CpuRatio: f64(0), MemoryRatio: f64(0), Owner: str(""), RemoveLabels: []string{"cpu_model"}}))
	hv, _ = s.Host("h1")
	if hv.Host.Ratios != nil || hv.Host.Owner != "" || hv.Host.AdminLabels["cpu_model"] != "" || hv.Sources.CPU != "default" {
		t.Fatalf("after clearing: %+v %+v", hv.Host, hv.Sources)
	}

	before := s.Snapshot()
	for name, u := range map[string]*statev1.UpdateHost{
		"unknown host":       {HostId: "nope", Owner: str("x")},
		"set down":           {HostId: "h1", AdminState: statev1.HostState_HOST_STATE_DOWN},
		"bad label key":      {HostId: "h1", SetLabels: map[string]string{"Bad Key": "x"}},
		"bad label value":    {HostId: "h1", SetLabels: map[string]string{"k": "a b"}},
		"remove agent label": {HostId: "h1", RemoveLabels: []string{"nolabel"}},
		"ratio too high":     {HostId: "h1", CpuRatio: f64(65)},
		"ratio negative":     {HostId: "h1", DiskRatio: f64(-1)},
		"reserve > capacity": {HostId: "h1", Reserved: &statev1.Resources{Vcpus: 9}},
		"bad owner":          {HostId: "h1", Owner: str("Tax Dept")},
		// One bad field rejects the whole command, good fields included.
		"mixed": {HostId: "h1", Owner: str("tax"), CpuRatio: f64(100)},
	} {
		if _, err := apply(t, s, 8, updateHost(u)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if name == "unknown host" && KindOf(err) != KindNotFound {
			t.Errorf("unknown host: %v", err)
		}
	}
	unchanged(t, s, before)
}

func TestSetRatiosPrecedence(t *testing.T) {
	s := fixture(t)
	mustApply(t, s, 4, setRatios(&statev1.SetRatios{Scope: ScopeCenter, Name: "a1", Cpu: f64(8), Memory: f64(1.2)}))
	hv, _ := s.Host("h1")
	if hv.Facts.Ratios.CPU != 8 || hv.Sources.CPU != "center a1" || hv.Sources.Disk != "default" {
		t.Fatalf("center ratios: %+v %+v", hv.Facts.Ratios, hv.Sources)
	}
	// A host group beats the center once the host carries the label.
	mustApply(t, s, 5, setRatios(&statev1.SetRatios{Scope: ScopeHostGroup, Name: "gold", Cpu: f64(2)}))
	mustApply(t, s, 6, updateHost(&statev1.UpdateHost{HostId: "h1", SetLabels: map[string]string{HostGroupLabel: "gold"}}))
	hv, _ = s.Host("h1")
	if hv.Facts.Ratios.CPU != 2 || hv.Sources.CPU != "host_group gold" || hv.Facts.Ratios.Memory != 1.2 || hv.Sources.Memory != "center a1" {
		t.Fatalf("group over center: %+v %+v", hv.Facts.Ratios, hv.Sources)
	}
	// The host's own ratio beats both.
	mustApply(t, s, 7, updateHost(&statev1.UpdateHost{HostId: "h1", CpuRatio: f64(3)}))
	if hv, _ = s.Host("h1"); hv.Facts.Ratios.CPU != 3 || hv.Sources.CPU != "host" {
		t.Fatalf("host over group: %+v", hv.Sources)
	}
	// h2 in b1 is untouched.
	if hv, _ := s.Host("h2"); hv.Facts.Ratios != DefaultRatios {
		t.Fatalf("h2: %+v", hv.Facts.Ratios)
	}
	// Clearing every ratio of a setting removes it.
	mustApply(t, s, 8, setRatios(&statev1.SetRatios{Scope: ScopeHostGroup, Name: "gold", Cpu: f64(0)}))
	if len(s.Ratios()) != 1 {
		t.Fatalf("settings: %v", s.Ratios())
	}
	before := s.Snapshot()
	for name, r := range map[string]*statev1.SetRatios{
		"bad scope":  {Scope: "rack", Name: "r1", Cpu: f64(2)},
		"no name":    {Scope: ScopeCenter, Cpu: f64(2)},
		"no ratios":  {Scope: ScopeCenter, Name: "a1"},
		"too high":   {Scope: ScopeCenter, Name: "a1", Memory: f64(64.5)},
		"bad center": {Scope: ScopeCenter, Name: "A 1", Cpu: f64(2)},
	} {
		if _, err := apply(t, s, 9, setRatios(r)); KindOf(err) != KindInvalid {
			t.Errorf("%s: %v", name, err)
		}
	}
	unchanged(t, s, before)
	// Lowering a ratio below what is allocated takes --force (see
	// TestOvercommitNeedsForce); then free goes negative and the host takes
	// nothing more.
	mustApply(t, s, 10, updateHost(&statev1.UpdateHost{HostId: "h1", MemoryRatio: f64(0.1), Force: true}))
	if _, err := apply(t, s, 11, place("vm-9", "more", "h1", 1, gib)); KindOf(err) != KindConflict {
		t.Fatalf("place over a lowered ratio: %v", err)
	}
}

func TestPlacementGroupsCreateDelete(t *testing.T) {
	s := fixture(t)
	v := mustApply(t, s, 4, createGroup("g1", statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY, statev1.GroupLevel_GROUP_LEVEL_UNSPECIFIED, false, 0)).Group
	if v.Level != statev1.GroupLevel_GROUP_LEVEL_HOST || v.CreatedUnixNano != 4000 {
		t.Fatalf("group: %+v", v)
	}
	if _, err := apply(t, s, 5, createGroup("g1", statev1.GroupPolicy_GROUP_POLICY_AFFINITY, 0, false, 0)); KindOf(err) != KindAlreadyExists {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := apply(t, s, 6, createGroup("g2", statev1.GroupPolicy_GROUP_POLICY_UNSPECIFIED, 0, false, 0)); KindOf(err) != KindInvalid {
		t.Fatalf("no policy: %v", err)
	}
	if _, err := apply(t, s, 7, createGroup("g2", statev1.GroupPolicy_GROUP_POLICY_AFFINITY, 0, false, -1)); KindOf(err) != KindInvalid {
		t.Fatalf("negative max: %v", err)
	}
	mustApply(t, s, 8, placeMany(vmRec("vm-2", "a-1", "h1", "g1", 1, gib)))
	before := s.Snapshot()
	if _, err := apply(t, s, 9, deleteGroup("g1")); KindOf(err) != KindFailedPrecondition {
		t.Fatalf("delete with members: %v", err)
	}
	unchanged(t, s, before)
	if _, err := apply(t, s, 10, deleteGroup("nope")); KindOf(err) != KindNotFound {
		t.Fatalf("delete unknown: %v", err)
	}
	// Once its member is gone, the group can go.
	mustApply(t, s, 11, desired("vm-2", statev1.PowerState_POWER_STATE_DELETED, false))
	mustApply(t, s, 12, report("h1", &statev1.VMStatus{VmId: "vm-2", Gone: true}))
	mustApply(t, s, 13, deleteGroup("g1"))
	if _, ok := s.PlacementGroup(DefaultProject, "g1"); ok {
		t.Fatal("group still there")
	}
}

// threeHosts: h1, h2 in a1 rack r1 and r2; h3 in b1; 16 vCPU / 64 GiB each.
func threeHosts(t *testing.T) *Store {
	s := New()
	for i, h := range []struct{ id, center, rack string }{{"h1", "a1", "r1"}, {"h2", "a1", "r2"}, {"h3", "b1", "r1"}} {
		cmd := regHost(h.id, h.center, 16, 64*gib, 1000*gib)
		cmd.GetRegisterHost().Host.Rack = h.rack
		mustApply(t, s, uint64(i+1), cmd)
	}
	return s
}

func TestPlaceVMsRechecksGroupRules(t *testing.T) {
	anti, aff := statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY, statev1.GroupPolicy_GROUP_POLICY_AFFINITY
	host, rack, center := statev1.GroupLevel_GROUP_LEVEL_HOST, statev1.GroupLevel_GROUP_LEVEL_RACK, statev1.GroupLevel_GROUP_LEVEL_CENTER
	tests := []struct {
		name   string
		group  *statev1.Command
		first  []string // hosts of an earlier, accepted batch
		second []string // hosts of the batch under test
		ok     bool
	}{
		{"anti host: distinct hosts", createGroup("g", anti, host, false, 0), nil, []string{"h1", "h2", "h3"}, true},
		{"anti host: two on one host in a batch", createGroup("g", anti, host, false, 0), nil, []string{"h1", "h1"}, false},
		{"anti host: onto an existing member", createGroup("g", anti, host, false, 0), []string{"h2"}, []string{"h2"}, false},
		{"anti rack: same rack name, other center", createGroup("g", anti, rack, false, 0), []string{"h1"}, []string{"h3"}, true},
		{"anti center: same center", createGroup("g", anti, center, false, 0), []string{"h1"}, []string{"h2"}, false},
		{"affinity host: together", createGroup("g", aff, host, false, 0), []string{"h1"}, []string{"h1", "h1"}, true},
		{"affinity host: apart", createGroup("g", aff, host, false, 0), []string{"h1"}, []string{"h2"}, false},
		{"affinity host: apart within a batch", createGroup("g", aff, host, false, 0), nil, []string{"h1", "h2"}, false},
		{"affinity center: same center", createGroup("g", aff, center, false, 0), []string{"h1"}, []string{"h2"}, true},
		{"soft anti: allowed", createGroup("g", anti, host, true, 0), []string{"h1"}, []string{"h1"}, true},
		{"max per host 2: third refused", createGroup("g", aff, host, true, 2), []string{"h1", "h1"}, []string{"h1"}, false},
		{"max per host 2: hard affinity full", createGroup("g", aff, host, false, 2), []string{"h1"}, []string{"h1", "h1"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := threeHosts(t)
			mustApply(t, s, 10, tt.group)
			n := 0
			batch := func(hosts []string) *statev1.Command {
				var vms []*statev1.VMRecord
				for _, h := range hosts {
					n++
					vms = append(vms, vmRec("id-"+string(rune('a'+n)), "vm-"+string(rune('a'+n)), h, "g", 1, gib))
				}
				return placeMany(vms...)
			}
			if tt.first != nil {
				mustApply(t, s, 11, batch(tt.first))
			}
			before := s.Snapshot()
			_, err := apply(t, s, 12, batch(tt.second))
			if tt.ok && err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !tt.ok {
				if KindOf(err) != KindConflict {
					t.Fatalf("want a conflict, got %v", err)
				}
				unchanged(t, s, before) // all or nothing
			}
		})
	}
}

func TestPlaceVMsRechecksHostsAndCapacity(t *testing.T) {
	s := threeHosts(t)
	mustApply(t, s, 10, updateHost(&statev1.UpdateHost{HostId: "h2", AdminState: statev1.HostState_HOST_STATE_DRAINING}))
	mustApply(t, s, 11, updateHost(&statev1.UpdateHost{HostId: "h3", Owner: str("tax")}))
	before := s.Snapshot()
	for name, cmd := range map[string]*statev1.Command{
		"draining host":   placeMany(vmRec("i1", "v1", "h2", "", 1, gib)),
		"dedicated host":  placeMany(vmRec("i1", "v1", "h3", "", 1, gib)),
		"batch overfills": placeMany(vmRec("i1", "v1", "h1", "", 1, 40*gib), vmRec("i2", "v2", "h1", "", 1, 40*gib)),
		// 16 vCPU less 1 reserved, x4 = 60 allocatable vCPUs.
		"cpu over ratio": placeMany(vmRec("i1", "v1", "h1", "", 61, gib)),
		"unknown host":   placeMany(vmRec("i1", "v1", "h9", "", 1, gib)),
		"wrong center":   placeMany(func() *statev1.VMRecord { v := vmRec("i1", "v1", "h1", "", 1, gib); v.Center = "b1"; return v }()),
		"constraint no longer holds": placeMany(func() *statev1.VMRecord {
			v := vmRec("i1", "v1", "h1", "", 1, gib)
			v.Constraints = []string{"cpu_model=kunpeng920"}
			return v
		}()),
	} {
		if _, err := apply(t, s, 12, cmd); KindOf(err) != KindConflict {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, cmd := range map[string]*statev1.Command{
		"unknown group":  placeMany(vmRec("i1", "v1", "h1", "nope", 1, gib)),
		"duplicate name": placeMany(vmRec("i1", "v1", "h1", "", 1, gib), vmRec("i2", "v1", "h1", "", 1, gib)),
		"empty batch":    placeMany(),
	} {
		if _, err := apply(t, s, 12, cmd); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	unchanged(t, s, before)
	// Over physical CPU but within the ratio is fine; a project's VM fits
	// its dedicated host.
	out := mustApply(t, s, 13, placeMany(vmRec("i1", "v1", "h1", "", 58, gib), vmRec("i2", "v2", "h1", "", 1, gib)))
	if vms := out.VMs; len(vms) != 2 || vms[0].Revision != 13 {
		t.Fatalf("placed: %v", vms)
	}
	arm := vmRec("i4", "v4", "h1", "", 1, gib)
	arm.Constraints = []string{"rack=r1", "center in a1,a2"}
	mustApply(t, s, 15, placeMany(arm))
	tax := vmRec("i3", "v3", "h3", "", 1, gib)
	tax.Project = "tax"
	if _, err := apply(t, s, 16, placeMany(tax)); KindOf(err) != KindNotFound {
		t.Fatalf("vm in a project that does not exist: %v, want not found", err)
	}
	mustApply(t, s, 17, &statev1.Command{Cmd: &statev1.Command_CreateProject{CreateProject: &statev1.CreateProject{Project: &statev1.ProjectRecord{Name: "tax", Department: DefaultDepartment}}}})
	mustApply(t, s, 18, placeMany(tax))
}

func TestSnapshotRoundTripWithNewFields(t *testing.T) {
	s := threeHosts(t)
	mustApply(t, s, 10, updateHost(&statev1.UpdateHost{HostId: "h1", AdminState: statev1.HostState_HOST_STATE_MAINTENANCE, SetLabels: map[string]string{"host_group": "gold"},
		Owner: str("tax"), Reserved: &statev1.Resources{Vcpus: 2}, CpuRatio: f64(2)}))
	mustApply(t, s, 11, setRatios(&statev1.SetRatios{Scope: ScopeCenter, Name: "a1", Memory: f64(1.5)}))
	mustApply(t, s, 12, setRatios(&statev1.SetRatios{Scope: ScopeHostGroup, Name: "gold", Disk: f64(2)}))
	mustApply(t, s, 13, createGroup("g", statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY, statev1.GroupLevel_GROUP_LEVEL_RACK, false, 1))
	v := vmRec("i1", "v1", "h2", "g", 1, gib)
	v.Constraints, v.Strategy = []string{"rack!=r1"}, "spread"
	mustApply(t, s, 14, placeMany(v))
	snap := s.Snapshot()
	if snap.FormatVersion != SnapshotVersion || len(snap.Ratios) != 2 || len(snap.Groups) != 1 {
		t.Fatalf("snapshot: %v", snap)
	}
	r := New()
	if err := r.Restore(overWire(t, snap)); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(snap, r.Snapshot()) {
		t.Fatal("restored state differs")
	}
	// Derived state: effective views, group membership.
	a, _ := s.Host("h1")
	b2, _ := r.Host("h1")
	if a.Facts.Allocatable() != b2.Facts.Allocatable() || a.Sources != b2.Sources || b2.Facts.State != statev1.HostState_HOST_STATE_MAINTENANCE {
		t.Fatalf("effective view after restore: %+v vs %+v", b2.Sources, a.Sources)
	}
	_, _, _, g, err := r.SchedulerView(0, DefaultProject, "g")
	if err != nil || g.Members["h2"] != 1 || g.Level != statev1.GroupLevel_GROUP_LEVEL_RACK || g.Soft || g.MaxPerHost != 1 {
		t.Fatalf("group after restore: %+v", g)
	}
	// The restored store enforces the group: rack r2 of a1 is taken.
	if _, err := apply(t, r, 15, placeMany(vmRec("i2", "v2", "h2", "g", 1, gib))); KindOf(err) != KindConflict {
		t.Fatalf("restored group rule: %v", err)
	}
	// A version 1 snapshot (no new fields) still restores.
	if err := New().Restore(&statev1.Snapshot{FormatVersion: 1}); err != nil {
		t.Fatal(err)
	}
}

// TestSchedulerViewDeltas: a cache of host facts kept up to date with only
// the hosts SchedulerView reports as changed holds exactly what a fresh
// view would, after every kind of command.
func TestSchedulerViewDeltas(t *testing.T) {
	s := threeHosts(t)
	hosts, full, seq, _, err := s.SchedulerView(0, "", "")
	if err != nil || !full || len(hosts) != 3 {
		t.Fatalf("first view: %d hosts, full %v, %v", len(hosts), full, err)
	}
	cache := map[string]HostFacts{}
	for _, h := range hosts {
		cache[h.ID] = h
	}
	mustApply(t, s, 10, createGroup("g", statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY, 0, false, 0))
	steps := []struct {
		cmd       *statev1.Command
		wantHosts int // hosts reported changed; -1: a full rebuild
	}{
		{placeMany(vmRec("i1", "v1", "h1", "g", 2, gib)), 1},
		{placeMany(vmRec("i2", "v2", "h2", "g", 2, gib), vmRec("i3", "v3", "h3", "", 1, gib)), 2},
		{updateHost(&statev1.UpdateHost{HostId: "h2", AdminState: statev1.HostState_HOST_STATE_DRAINING, SetLabels: map[string]string{"host_group": "x"}}), 1},
		{&statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: "h3", State: statev1.HostState_HOST_STATE_DOWN}}}, 1},
		{setRatios(&statev1.SetRatios{Scope: ScopeHostGroup, Name: "x", Cpu: f64(8)}), -1},
		{desired("i1", statev1.PowerState_POWER_STATE_DELETED, false), 0},
		{report("h1", &statev1.VMStatus{VmId: "i1", Gone: true}), 1},
		{regHost("h1", "a1", 32, 64*gib, 1000*gib), 1},
	}
	for i, st := range steps {
		mustApply(t, s, uint64(11+i), st.cmd)
		changed, full, next, _, err := s.SchedulerView(seq, "", "")
		if err != nil {
			t.Fatal(err)
		}
		if st.wantHosts == -1 && !full || st.wantHosts >= 0 && (full || len(changed) != st.wantHosts) {
			t.Fatalf("step %d: %d hosts changed (full %v), want %d", i, len(changed), full, st.wantHosts)
		}
		for _, h := range changed {
			cache[h.ID] = h
		}
		seq = next
		fresh, _, _, _, _ := s.SchedulerView(0, "", "")
		for _, h := range fresh {
			got := cache[h.ID]
			if got.State != h.State || got.Allocated != h.Allocated || got.Allocatable() != h.Allocatable() || got.Labels["host_group"] != h.Labels["host_group"] {
				t.Fatalf("step %d: cached %s = %+v, fresh %+v", i, h.ID, got, h)
			}
		}
	}
	if _, _, _, g, _ := s.SchedulerView(seq, DefaultProject, "g"); g == nil || g.Members["h2"] != 1 || g.Members["h1"] != 0 {
		t.Fatalf("group view: %+v", g)
	}
	if _, _, _, _, err := s.SchedulerView(seq, DefaultProject, "nope"); KindOf(err) != KindNotFound {
		t.Fatalf("unknown group: %v", err)
	}
}

// TestSchedulerViewDeltasAcrossCompaction: after enough changes that the
// host change log is compacted many times, the hosts reported as changed
// since any earlier seq are exactly those whose view changed after it.
func TestSchedulerViewDeltasAcrossCompaction(t *testing.T) {
	s := threeHosts(t)
	_, _, seq0, _, _ := s.SchedulerView(0, "", "")
	type mark struct {
		seq  uint64
		host string // the host changed by the command that led to seq
	}
	var marks []mark
	ids := []string{"h1", "h2", "h3"}
	states := []statev1.HostState{statev1.HostState_HOST_STATE_DOWN, statev1.HostState_HOST_STATE_READY}
	for i := 0; i < 500; i++ {
		// h3 changes only in the first 10 steps, so old seqs must still
		// report it while later ones must not.
		id, st := ids[(i/2)%2], states[i%2]
		if i < 9 {
			id, st = ids[i%3], states[(i/3)%2]
		}
		mustApply(t, s, uint64(100+i), &statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: id, State: st}}})
		_, _, seq, _, _ := s.SchedulerView(seq0, "", "")
		prev := seq0
		if len(marks) > 0 {
			prev = marks[len(marks)-1].seq
		}
		if seq == prev {
			id = "" // the host was already in that state: nothing changed
		}
		marks = append(marks, mark{seq, id})
	}
	changes := 0
	for _, m := range marks {
		if m.host != "" {
			changes++
		}
	}
	if changes < 4*(2*len(s.hostSeq)+64) {
		t.Fatalf("only %d changes: too few to compact the log several times", changes)
	}
	if len(s.hostLog) > 2*len(s.hostSeq)+64 {
		t.Fatalf("log not compacted: %d entries for %d hosts", len(s.hostLog), len(s.hostSeq))
	}
	for k := range marks {
		since := seq0
		if k > 0 {
			since = marks[k-1].seq
		}
		want := map[string]bool{}
		for _, m := range marks[k:] {
			if m.host != "" {
				want[m.host] = true
			}
		}
		got, full, _, _, err := s.SchedulerView(since, "", "")
		if err != nil || full {
			t.Fatalf("since %d: full %v, %v", since, full, err)
		}
		if len(got) != len(want) {
			t.Fatalf("since step %d: %d hosts changed, want %d (%v)", k, len(got), len(want), want)
		}
		for _, h := range got {
			if !want[h.ID] {
				t.Fatalf("since step %d: %s reported, want %v", k, h.ID, want)
			}
		}
	}
}

// TestVMsByHostIndex: a host's VM list and count, served from the per-host
// index, match a filter over every VM after placements, a removal, and a
// snapshot restored into another store.
func TestVMsByHostIndex(t *testing.T) {
	s := threeHosts(t)
	mustApply(t, s, 10, placeMany(vmRec("i1", "v1", "h1", "", 1, gib), vmRec("i2", "v2", "h1", "", 1, gib), vmRec("i3", "v3", "h2", "", 1, gib)))
	mustApply(t, s, 11, desired("i2", statev1.PowerState_POWER_STATE_DELETED, false))
	mustApply(t, s, 12, report("h1", &statev1.VMStatus{VmId: "i2", Gone: true}))
	restored := New()
	if err := restored.Restore(s.Snapshot()); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"h1": {"v1"}, "h2": {"v3"}, "h3": nil}
	for _, st := range []*Store{s, restored} {
		all := st.VMs("", "")
		for host, names := range want {
			var got, scanned []string
			for _, v := range st.VMs("", host) {
				got = append(got, v.Name)
			}
			for _, v := range all {
				if v.HostId == host {
					scanned = append(scanned, v.Name)
				}
			}
			hv, _ := st.Host(host)
			if !slices.Equal(got, names) || !slices.Equal(scanned, names) || hv.VMs != len(names) {
				t.Errorf("%s: index %v, scan %v, count %d; want %v", host, got, scanned, hv.VMs, names)
			}
		}
	}
}

// TestHostRevision: a host's revision moves with every change to its VMs
// (placed, changed, removed) and only with those; a restore counts as a
// change on every host.
func TestHostRevision(t *testing.T) {
	s := threeHosts(t)
	rev := func(h string) uint64 { return s.HostRevision(h) }
	mustApply(t, s, 10, placeMany(vmRec("i1", "v1", "h1", "", 1, gib)))
	if rev("h1") != 10 || rev("h2") != 0 {
		t.Fatalf("after a placement on h1: h1 %d, h2 %d", rev("h1"), rev("h2"))
	}
	mustApply(t, s, 11, placeMany(vmRec("i2", "v2", "h2", "", 1, gib)))
	mustApply(t, s, 12, desired("i1", statev1.PowerState_POWER_STATE_STOPPED, false))
	if rev("h1") != 12 || rev("h2") != 11 {
		t.Fatalf("after stopping v1: h1 %d, h2 %d", rev("h1"), rev("h2"))
	}
	mustApply(t, s, 13, report("h1", &statev1.VMStatus{VmId: "i1", Phase: statev1.VMPhase_VM_PHASE_STOPPED}))
	mustApply(t, s, 14, desired("i1", statev1.PowerState_POWER_STATE_DELETED, false))
	mustApply(t, s, 15, report("h1", &statev1.VMStatus{VmId: "i1", Gone: true}))
	if rev("h1") != 15 || rev("h2") != 11 {
		t.Fatalf("after v1 is removed: h1 %d, h2 %d", rev("h1"), rev("h2"))
	}
	restored := New()
	if err := restored.Restore(s.Snapshot()); err != nil {
		t.Fatal(err)
	}
	idx := restored.Index()
	for _, h := range []string{"h1", "h2", "h3"} {
		if got := restored.HostRevision(h); got != idx {
			t.Errorf("restored %s: revision %d, want the snapshot index %d", h, got, idx)
		}
	}
}

// TestApplyRecheckSeesGroupRatioAndLabels: Apply's re-check of a placement
// (which works the host's facts out without its labels unless the VM has
// constraints) still takes the host group's ratio from an administrator's
// label and still matches constraints against the labels.
func TestApplyRecheckSeesGroupRatioAndLabels(t *testing.T) {
	s := fixture(t)
	mustApply(t, s, 4, setRatios(&statev1.SetRatios{Scope: ScopeHostGroup, Name: "tight", Cpu: f64(1)}))
	mustApply(t, s, 5, updateHost(&statev1.UpdateHost{HostId: "h1", SetLabels: map[string]string{HostGroupLabel: "tight", "disk": "ssd"}}))
	hv, _ := s.Host("h1")
	if hv.Facts.Ratios.CPU != 1 {
		t.Fatalf("h1's cpu ratio %v, want the group's 1", hv.Facts.Ratios.CPU)
	}
	free := int32(hv.Facts.Allocatable().VCPUs - hv.Facts.Allocated.VCPUs)
	if _, err := apply(t, s, 6, place("vm-2", "too-big", "h1", free+1, gib)); KindOf(err) != KindConflict {
		t.Fatalf("%d vCPUs on h1 with %d free under the group's ratio: %v, want a conflict", free+1, free, err)
	}
	withRule := func(id, name string, c *statev1.Constraint) *statev1.Command {
		cmd := place(id, name, "h1", 1, gib)
		cmd.GetPlaceVm().Vm.ConstraintRules = []*statev1.Constraint{c}
		return cmd
	}
	if _, err := apply(t, s, 7, withRule("vm-3", "wrong-disk", rule("disk", statev1.ConstraintOp_CONSTRAINT_OP_EQ, "hdd"))); KindOf(err) != KindConflict || !strings.Contains(err.Error(), "no longer satisfies") {
		t.Fatalf("a constraint h1's labels break: %v", err)
	}
	mustApply(t, s, 8, withRule("vm-4", "on-ssd", rule("disk", statev1.ConstraintOp_CONSTRAINT_OP_EQ, "ssd")))
	mustApply(t, s, 9, place("vm-5", "fits", "h1", free-1, gib)) // vm-4 took one
}
