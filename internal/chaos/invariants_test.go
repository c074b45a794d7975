package chaos

import (
	"fmt"
	"strings"
	"testing"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const gib = int64(1) << 30

func res(vcpus, mem, disk int64) *yunchiv1.Resources {
	return &yunchiv1.Resources{Vcpus: vcpus, MemoryBytes: mem, DiskBytes: disk}
}

func testVM(id, project, name, host string, vcpus int32, mem, disk int64, desired yunchiv1.PowerState, phase yunchiv1.VMPhase) *yunchiv1.VM {
	return &yunchiv1.VM{Id: id, Project: project, Name: name, HostId: host, Vcpus: vcpus, MemoryBytes: mem, DiskBytes: disk,
		Desired: desired, Phase: phase, Revision: 90}
}

func limit(v int64) *int64 { return &v }

// cleanSnapshot is a consistent state: two hosts, one with fractional
// ratios (allocatable 10 vCPUs from 7 x 1.5, rounded down), three VMs
// (one being deleted, still holding its resources), quotas within their
// limits, a verified audit chain.
func cleanSnapshot(controller string) Snapshot {
	running, stopped, deleted := yunchiv1.PowerState_POWER_STATE_RUNNING, yunchiv1.PowerState_POWER_STATE_STOPPED, yunchiv1.PowerState_POWER_STATE_DELETED
	return Snapshot{
		Controller:   controller,
		AppliedIndex: 100,
		Hosts: []*yunchiv1.Host{
			{Id: "h1", Capacity: res(16, 64*gib, 1000*gib), Reserved: res(1, 2*gib, 0), Ratios: &yunchiv1.Ratios{Cpu: 4, Memory: 1, Disk: 1},
				Allocatable: res(60, 62*gib, 1000*gib), Allocated: res(6, 12*gib, 60*gib)},
			{Id: "h2", Capacity: res(8, 32*gib, 500*gib), Reserved: res(1, 2*gib, 0), Ratios: &yunchiv1.Ratios{Cpu: 1.5, Memory: 1.25, Disk: 1},
				Allocatable: res(10, 40265318400, 500*gib), Allocated: res(8, 16*gib, 100*gib)},
		},
		VMs: []*yunchiv1.VM{
			testVM("vm-1", "alpha", "web-1", "h1", 2, 4*gib, 20*gib, running, yunchiv1.VMPhase_VM_PHASE_RUNNING),
			testVM("vm-2", "alpha", "web-2", "h1", 4, 8*gib, 40*gib, stopped, yunchiv1.VMPhase_VM_PHASE_STOPPED),
			testVM("vm-3", "beta", "db-1", "h2", 8, 16*gib, 100*gib, deleted, yunchiv1.VMPhase_VM_PHASE_DELETING),
		},
		Projects: []*yunchiv1.Project{
			{Name: "alpha", Department: "eng"}, {Name: "beta", Department: "eng"}, {Name: "gamma", Department: "ops"},
		},
		Quotas: []*yunchiv1.Quota{
			{Department: "default", Limit: &yunchiv1.QuotaLimits{}, Used: &yunchiv1.QuotaUsage{}},
			{Department: "eng", Limit: &yunchiv1.QuotaLimits{Vcpus: limit(20), Vms: limit(5)}, Used: &yunchiv1.QuotaUsage{Vcpus: 14, MemoryBytes: 28 * gib, DiskBytes: 160 * gib, Vms: 3}},
			{Department: "eng", Project: "alpha", Limit: &yunchiv1.QuotaLimits{MemoryBytes: limit(12 * gib), Vms: limit(2)}, Used: &yunchiv1.QuotaUsage{Vcpus: 6, MemoryBytes: 12 * gib, DiskBytes: 60 * gib, Vms: 2}},
			{Department: "eng", Project: "beta", Limit: &yunchiv1.QuotaLimits{Vcpus: limit(8)}, Used: &yunchiv1.QuotaUsage{Vcpus: 8, MemoryBytes: 16 * gib, DiskBytes: 100 * gib, Vms: 1}},
			{Department: "ops", Limit: &yunchiv1.QuotaLimits{}, Used: &yunchiv1.QuotaUsage{}},
			{Department: "ops", Project: "gamma", Used: &yunchiv1.QuotaUsage{}},
		},
		Audit: &yunchiv1.VerifyAuditResponse{Ok: true, Records: 42, FirstSeq: 1, LastSeq: 42, HeadSeq: 42, HeadHash: "9f86d0", Controller: controller},
	}
}

// vmByID finds a VM of s.
func vmByID(s Snapshot, id string) *yunchiv1.VM {
	for _, vm := range s.VMs {
		if vm.GetId() == id {
			return vm
		}
	}
	panic("no vm " + id)
}

func wantNone(t *testing.T, vs []Violation) {
	t.Helper()
	for _, v := range vs {
		t.Errorf("unexpected violation: %s", v)
	}
}

// wantViolation wants a violation of checker whose detail names every
// one of words.
func wantViolation(t *testing.T, vs []Violation, checker string, words ...string) {
	t.Helper()
next:
	for _, v := range vs {
		if v.Checker != checker {
			continue
		}
		for _, w := range words {
			if !strings.Contains(v.Detail, w) {
				continue next
			}
		}
		return
	}
	t.Errorf("no %s violation naming %q among %d: %v", checker, words, len(vs), vs)
}

func TestCheckCapacityAndAccounting(t *testing.T) {
	wantNone(t, CheckCapacity(cleanSnapshot("c1")))
	wantNone(t, CheckAccounting(cleanSnapshot("c1")))

	t.Run("host over allocatable", func(t *testing.T) {
		s := cleanSnapshot("c1")
		s.VMs = append(s.VMs, testVM("vm-4", "gamma", "big", "h2", 3, gib, gib, yunchiv1.PowerState_POWER_STATE_STOPPED, 0))
		s.Hosts[1].Allocated = res(11, 17*gib, 101*gib) // the books agree: only the limit is broken
		vs := append(CheckCapacity(s), CheckAccounting(s)...)
		wantViolation(t, vs, "capacity", "host h2", "vcpus=11", "vcpus=10")
		if len(vs) != 1 {
			t.Errorf("got %v, want the capacity violation alone", vs)
		}
	})
	t.Run("being deleted still counts", func(t *testing.T) {
		s := cleanSnapshot("c1")
		s.Hosts[1].Allocated = res(0, 0, 0) // as if vm-3 being deleted had freed its resources
		wantViolation(t, CheckAccounting(s), "accounting", "host h2", "allocated vcpus=0")
	})
	t.Run("accounting drift", func(t *testing.T) {
		s := cleanSnapshot("c1")
		s.Hosts[0].Allocated.Vcpus++
		vs := append(CheckCapacity(s), CheckAccounting(s)...)
		wantViolation(t, vs, "accounting", "host h1", "allocated vcpus=7", "take vcpus=6")
		if len(vs) != 1 {
			t.Errorf("got %v, want one violation", vs)
		}
	})
	t.Run("allocatable drift", func(t *testing.T) {
		s := cleanSnapshot("c1")
		s.Hosts[1].Allocatable.Vcpus = 11 // 7 x 1.5 rounded up
		wantViolation(t, CheckCapacity(s), "capacity", "host h2", "allocatable vcpus=11", "make vcpus=10")
	})
}

func TestCheckQuota(t *testing.T) {
	wantNone(t, CheckQuota(cleanSnapshot("c1")))

	t.Run("project exceeded", func(t *testing.T) {
		s := cleanSnapshot("c1")
		s.VMs = append(s.VMs, testVM("vm-4", "alpha", "web-3", "h1", 1, gib, gib, yunchiv1.PowerState_POWER_STATE_RUNNING, 0))
		vs := CheckQuota(s)
		wantViolation(t, vs, "quota", "project alpha", "vms used 3 > limit 2")
		wantViolation(t, vs, "quota", "project alpha", "memory_bytes used 13958643712 > limit 12884901888")
		if len(vs) != 2 {
			t.Errorf("got %v, want alpha's two", vs)
		}
	})
	t.Run("department exceeded", func(t *testing.T) {
		s := cleanSnapshot("c1")
		// delta has no quota of its own: only its department's limits it.
		s.Projects = append(s.Projects, &yunchiv1.Project{Name: "delta", Department: "eng"})
		s.VMs = append(s.VMs, testVM("vm-4", "delta", "x", "h1", 8, gib, gib, yunchiv1.PowerState_POWER_STATE_RUNNING, 0))
		vs := CheckQuota(s)
		wantViolation(t, vs, "quota", "department eng", "vcpus used 22 > limit 20")
		if len(vs) != 1 {
			t.Errorf("got %v, want eng's alone", vs)
		}
	})
	t.Run("project without a record is the default department's", func(t *testing.T) {
		s := cleanSnapshot("c1")
		s.Quotas[0].Limit.Vms = limit(0)
		s.VMs = append(s.VMs, testVM("vm-4", "default", "x", "h1", 1, gib, gib, yunchiv1.PowerState_POWER_STATE_RUNNING, 0))
		wantViolation(t, CheckQuota(s), "quota", "department default", "vms used 1 > limit 0")
	})
}

func TestCheckUnique(t *testing.T) {
	wantNone(t, CheckUnique(cleanSnapshot("c1")))

	s := cleanSnapshot("c1")
	s.VMs = append(s.VMs,
		testVM("vm-1", "gamma", "copy", "h1", 1, gib, gib, 0, 0),  // id again
		testVM("vm-5", "alpha", "web-1", "h2", 1, gib, gib, 0, 0), // name again
		testVM("vm-6", "gamma", "lost", "", 1, gib, gib, 0, 0),
		testVM("vm-7", "gamma", "far", "h9", 1, gib, gib, 0, 0),
	)
	vs := CheckUnique(s)
	wantViolation(t, vs, "unique", "vm id vm-1", "alpha/web-1", "gamma/copy")
	wantViolation(t, vs, "unique", "name alpha/web-1", "vm-1, vm-5")
	wantViolation(t, vs, "unique", "vm-6", "no host")
	wantViolation(t, vs, "unique", "vm-7", "host h9")
	if len(vs) != 4 {
		t.Errorf("got %d violations, want 4: %v", len(vs), vs)
	}
}

// cleanViews is what the hosts of cleanSnapshot run once converged: vm-1
// runs, vm-2 is defined and stopped, vm-3's domain is gone.
func cleanViews() []AgentView {
	return []AgentView{
		{HostID: "h1", Domains: []Domain{{VMID: "vm-1", Name: "yunchi-vm-1", Active: true}, {VMID: "vm-2", Name: "yunchi-vm-2"}}},
		{HostID: "h2"},
	}
}

func TestCheckRunningOnce(t *testing.T) {
	wantNone(t, CheckRunningOnce(cleanViews()))

	views := cleanViews()
	views[1].Domains = append(views[1].Domains, Domain{VMID: "vm-1", Name: "yunchi-vm-1", Active: true})
	vs := CheckRunningOnce(views)
	wantViolation(t, vs, "running-once", "vm-1", "h1, h2")
	if len(vs) != 1 {
		t.Errorf("got %v, want one", vs)
	}
}

func TestCheckAgentsMatch(t *testing.T) {
	wantNone(t, CheckAgentsMatch(cleanViews(), cleanSnapshot("c1")))

	t.Run("orphan domain", func(t *testing.T) {
		views := cleanViews()
		views[1].Domains = append(views[1].Domains, Domain{VMID: "vm-77", Name: "yunchi-vm-77", Active: true})
		wantViolation(t, CheckAgentsMatch(views, cleanSnapshot("c1")), "agents", "host h2", "vm-77", "orphan")
	})
	t.Run("domain of a VM being deleted still runs", func(t *testing.T) {
		views := cleanViews()
		views[1].Domains = append(views[1].Domains, Domain{VMID: "vm-3", Name: "yunchi-vm-3", Active: true})
		wantViolation(t, CheckAgentsMatch(views, cleanSnapshot("c1")), "agents", "host h2", "vm-3", "desired deleted")
	})
	t.Run("stopped VM runs", func(t *testing.T) {
		views := cleanViews()
		views[0].Domains[1].Active = true
		wantViolation(t, CheckAgentsMatch(views, cleanSnapshot("c1")), "agents", "host h1", "vm-2", "desired stopped")
	})
	t.Run("running VM does not run", func(t *testing.T) {
		views := cleanViews()
		views[0].Domains[0].Active = false
		vs := CheckAgentsMatch(views, cleanSnapshot("c1"))
		wantViolation(t, vs, "agents", "vm-1", "desired running on host h1")
		if len(vs) != 1 {
			t.Errorf("got %v, want one", vs)
		}
	})
	t.Run("VM runs on the wrong host", func(t *testing.T) {
		views := cleanViews()
		views[0].Domains = views[0].Domains[1:]
		views[1].Domains = []Domain{{VMID: "vm-1", Name: "yunchi-vm-1", Active: true}}
		vs := CheckAgentsMatch(views, cleanSnapshot("c1"))
		wantViolation(t, vs, "agents", "host h2 runs vm vm-1", "places on host h1")
		wantViolation(t, vs, "agents", "vm-1", "desired running on host h1")
	})
	t.Run("hosts not viewed are not judged", func(t *testing.T) {
		wantNone(t, CheckAgentsMatch(cleanViews()[1:], cleanSnapshot("c1")))
	})
}

// ackHistory is what cleanSnapshot is the end of.
func ackHistory() History {
	return History{
		{Client: 0, Seq: 1, Kind: OpCreate, Project: "alpha", Name: "web-1", Call: 10, Return: 20, Outcome: OK, VMID: "vm-1"},
		{Client: 1, Seq: 1, Kind: OpCreate, Project: "alpha", Name: "web-2", Call: 10, Return: 20, Outcome: OK, VMID: "vm-2"},
		{Client: 2, Seq: 1, Kind: OpCreate, Project: "beta", Name: "db-1", Call: 10, Return: 20, Outcome: OK, VMID: "vm-3"},
		{Client: 2, Seq: 2, Kind: OpDelete, Project: "beta", Name: "db-1", Call: 30, Return: 40, Outcome: OK, VMID: "vm-3"},
		// Created and deleted by a delete whose answer never came: gone.
		{Client: 3, Seq: 1, Kind: OpCreate, Project: "alpha", Name: "old", Call: 10, Return: 20, Outcome: OK, VMID: "vm-0"},
		{Client: 3, Seq: 2, Kind: OpDelete, Project: "alpha", Name: "old", Call: 30, Return: 900, Outcome: Unknown},
		{Client: 4, Seq: 1, Kind: OpSetQuota, Project: "alpha", Call: 50, Return: 60, Outcome: OK, Limit: 2},
		{Client: 4, Seq: 2, Kind: OpSetQuota, Project: "beta", Call: 50, Return: 60, Outcome: Rejected, Limit: 9},
		{Client: 5, Seq: 1, Kind: OpCreate, Project: "gamma", Name: "never", Call: 10, Return: 20, Outcome: Rejected},
	}
}

func TestCheckAcknowledged(t *testing.T) {
	wantNone(t, CheckAcknowledged(ackHistory(), cleanSnapshot("c1")))

	t.Run("lost create", func(t *testing.T) {
		s := cleanSnapshot("c1")
		s.VMs = s.VMs[1:]
		wantViolation(t, CheckAcknowledged(ackHistory(), s), "acknowledged", "alpha/web-1", "vm-1")
	})
	t.Run("a delete that returned before the create was called does not excuse it", func(t *testing.T) {
		s := cleanSnapshot("c1")
		s.VMs = s.VMs[1:]
		h := append(ackHistory(), Op{Client: 6, Kind: OpDelete, Project: "alpha", Name: "web-1", Call: 3, Return: 8, Outcome: OK})
		wantViolation(t, CheckAcknowledged(h, s), "acknowledged", "vm-1")
	})
	t.Run("a delete concurrent with the create may have removed it", func(t *testing.T) {
		// Found by make chaos: a delete sent before the create, answered
		// after it (its retry found the new VM by name), is no lost
		// write.
		s := cleanSnapshot("c1")
		s.VMs = s.VMs[1:]
		for _, d := range []Op{
			{Client: 6, Kind: OpDelete, Project: "alpha", Name: "web-1", Call: 5, Return: 15, Outcome: OK},
			{Client: 6, Kind: OpDelete, Project: "alpha", Name: "web-1", Call: 5, Return: 900, Outcome: Unknown},
		} {
			wantNone(t, CheckAcknowledged(append(ackHistory(), d), s))
		}
	})
	t.Run("lost delete", func(t *testing.T) {
		s := cleanSnapshot("c1")
		vmByID(s, "vm-3").Desired = yunchiv1.PowerState_POWER_STATE_RUNNING
		wantViolation(t, CheckAcknowledged(ackHistory(), s), "acknowledged", "delete of vm vm-3", "desired running")
	})
	t.Run("lost quota", func(t *testing.T) {
		h := append(ackHistory(), Op{Client: 4, Seq: 3, Kind: OpSetQuota, Project: "alpha", Call: 70, Return: 80, Outcome: OK, Limit: 5})
		wantViolation(t, CheckAcknowledged(h, cleanSnapshot("c1")), "acknowledged", "project alpha", "vms 5", "limit 2")
		h = append(ackHistory(), Op{Client: 4, Seq: 3, Kind: OpSetQuota, Project: "gamma", Call: 70, Return: 80, Outcome: OK, Limit: 5})
		wantViolation(t, CheckAcknowledged(h, cleanSnapshot("c1")), "acknowledged", "project gamma", "unlimited")
	})
}

func TestCheckSameState(t *testing.T) {
	wantNone(t, CheckSameState([]Snapshot{cleanSnapshot("c1"), cleanSnapshot("c2"), cleanSnapshot("c3")}))
	wantNone(t, CheckSameState(nil))

	t.Run("followers diverge", func(t *testing.T) {
		c2, c3 := cleanSnapshot("c2"), cleanSnapshot("c3")
		c2.AppliedIndex = 99
		vmByID(c3, "vm-2").Desired = yunchiv1.PowerState_POWER_STATE_RUNNING
		c3.VMs = c3.VMs[1:]
		c3.Hosts[0].Allocated = res(4, 8*gib, 40*gib)
		c3.Quotas[2].Used.Vms = 1
		vs := CheckSameState([]Snapshot{cleanSnapshot("c1"), c2, c3})
		wantViolation(t, vs, "same-state", "c1 vs c2", "applied index 100, c2 99")
		wantViolation(t, vs, "same-state", "c1 vs c3", "vm vm-1", "c3 has none")
		wantViolation(t, vs, "same-state", "c1 vs c3", "vm vm-2", "desired=stopped", "c3 has", "desired=running")
		wantViolation(t, vs, "same-state", "c1 vs c3", "host h1", "vcpus=6", "vcpus=4")
		wantViolation(t, vs, "same-state", "c1 vs c3", "quota eng/alpha", "vms=2", "vms=1")
		if len(vs) != 5 {
			t.Errorf("got %d violations, want 5: %v", len(vs), vs)
		}
	})
	t.Run("bounded", func(t *testing.T) {
		c2 := cleanSnapshot("c2")
		for i := range 50 {
			c2.VMs = append(c2.VMs, testVM(fmt.Sprintf("extra-%02d", i), "gamma", fmt.Sprint("x", i), "h1", 1, 1, 1, 0, 0))
		}
		vs := CheckSameState([]Snapshot{cleanSnapshot("c1"), c2})
		if len(vs) != maxDiffLines+1 {
			t.Fatalf("got %d violations, want %d", len(vs), maxDiffLines+1)
		}
		wantViolation(t, vs, "same-state", "c1 vs c2", "and 30 more differences")
	})
}

func TestCheckAudit(t *testing.T) {
	wantNone(t, CheckAudit([]Snapshot{cleanSnapshot("c1"), cleanSnapshot("c2"), cleanSnapshot("c3")}))

	t.Run("chain broken", func(t *testing.T) {
		c2 := cleanSnapshot("c2")
		c2.Audit.Ok = false
		c2.Audit.Problems = []*yunchiv1.AuditProblem{{Kind: "hash_mismatch", Seq: 7, Detail: "record 7 does not chain to 6"}}
		vs := CheckAudit([]Snapshot{cleanSnapshot("c1"), c2})
		wantViolation(t, vs, "audit", "c2", "does not verify")
		wantViolation(t, vs, "audit", "c2", "hash_mismatch at seq 7", "does not chain")
		if len(vs) != 2 {
			t.Errorf("got %v, want two", vs)
		}
	})
	t.Run("heads differ", func(t *testing.T) {
		c3 := cleanSnapshot("c3")
		c3.Audit.HeadSeq, c3.Audit.HeadHash = 43, "ab12ff"
		vs := CheckAudit([]Snapshot{cleanSnapshot("c1"), cleanSnapshot("c2"), c3})
		wantViolation(t, vs, "audit", "c1: audit head seq 42 hash 9f86d0", "c3 has seq 43 hash ab12ff")
		if len(vs) != 1 {
			t.Errorf("got %v, want one", vs)
		}
	})
	t.Run("not verified", func(t *testing.T) {
		c2 := cleanSnapshot("c2")
		c2.Audit = nil
		wantViolation(t, CheckAudit([]Snapshot{cleanSnapshot("c1"), c2}), "audit", "c2", "no audit verification")
	})
}

func TestViolationString(t *testing.T) {
	if s := (Violation{"quota", "project alpha: vms used 3 > limit 2"}).String(); s != "quota: project alpha: vms used 3 > limit 2" {
		t.Errorf("got %q", s)
	}
}
