package chaos

import (
	"fmt"
	"math"
	"sort"
	"strings"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// The invariant checkers judge states rather than histories: what one
// controller holds (a Snapshot), what the hosts' libvirt runs (AgentView)
// and, at the end of a run, whether the answers clients were given are
// still true. They recompute everything they can from the raw records
// instead of trusting the derived fields the API reports: a derived field
// that drifted from its records is itself one of the bugs they look for.
// Each returns one Violation per thing wrong, nil when all is well.

// Violation is one broken invariant: the checker that found it and what,
// naming the VMs, hosts and controllers involved.
type Violation struct {
	Checker string
	Detail  string
}

func (v Violation) String() string { return v.Checker + ": " + v.Detail }

// Snapshot is one controller's state, read through its API.
type Snapshot struct {
	Controller   string
	Taken        int64 // ns since the run started
	AppliedIndex uint64
	Hosts        []*yunchiv1.Host
	VMs          []*yunchiv1.VM
	Projects     []*yunchiv1.Project
	Quotas       []*yunchiv1.Quota
	Audit        *yunchiv1.VerifyAuditResponse
}

// AgentView is what one host's libvirt runs, as its agent (or virsh) sees
// it.
type AgentView struct {
	HostID  string
	Taken   int64 // ns since the run started
	Domains []Domain
}

// Domain is one libvirt domain: the VM it is, and whether it runs.
type Domain struct {
	VMID, Name string
	Active     bool
}

// maxDiffLines bounds the violations one comparison reports: past a few
// dozen, more lines say nothing the first ones did not.
const maxDiffLines = 20

// amount is an amount of vCPUs, memory and disk.
type amount struct{ VCPUs, MemoryBytes, DiskBytes int64 }

func amountOf(r *yunchiv1.Resources) amount {
	return amount{r.GetVcpus(), r.GetMemoryBytes(), r.GetDiskBytes()}
}

func vmAmount(vm *yunchiv1.VM) amount {
	return amount{int64(vm.GetVcpus()), vm.GetMemoryBytes(), vm.GetDiskBytes()}
}

func (a amount) add(b amount) amount {
	return amount{a.VCPUs + b.VCPUs, a.MemoryBytes + b.MemoryBytes, a.DiskBytes + b.DiskBytes}
}

func (a amount) fits(in amount) bool {
	return a.VCPUs <= in.VCPUs && a.MemoryBytes <= in.MemoryBytes && a.DiskBytes <= in.DiskBytes
}

func (a amount) String() string {
	return fmt.Sprintf("vcpus=%d memory=%d disk=%d", a.VCPUs, a.MemoryBytes, a.DiskBytes)
}

// allocatableOf is what may be allocated on h: (capacity - reserved) x
// ratio per dimension, rounded down, never negative. A copy of
// controller/state's HostFacts.Allocatable, so that a change there that
// breaks the rule shows here instead of moving the yardstick with it.
func allocatableOf(h *yunchiv1.Host) amount {
	c, r, q := amountOf(h.GetCapacity()), amountOf(h.GetReserved()), h.GetRatios()
	return amount{
		scaleByRatio(c.VCPUs-r.VCPUs, q.GetCpu()),
		scaleByRatio(c.MemoryBytes-r.MemoryBytes, q.GetMemory()),
		scaleByRatio(c.DiskBytes-r.DiskBytes, q.GetDisk()),
	}
}

// scaleByRatio is controller/state's scale: floor(n x ratio), exact for a
// ratio of 1, 0 for nothing, capped at MaxInt64.
func scaleByRatio(n int64, ratio float64) int64 {
	if n <= 0 || ratio <= 0 {
		return 0
	}
	if ratio == 1 {
		return n
	}
	v := math.Floor(float64(n) * ratio)
	if v >= math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// vmName is how violations name a VM: "vm-3 (alpha/web-1)".
func vmName(vm *yunchiv1.VM) string {
	return fmt.Sprintf("%s (%s/%s)", vm.GetId(), vm.GetProject(), vm.GetName())
}

// hostUsage is what the VMs of s take on each host, in any desired state
// (a VM being deleted holds its resources until it is gone), and how many
// they are.
func hostUsage(s Snapshot) (map[string]amount, map[string]int) {
	used, count := map[string]amount{}, map[string]int{}
	for _, vm := range s.VMs {
		used[vm.GetHostId()] = used[vm.GetHostId()].add(vmAmount(vm))
		count[vm.GetHostId()]++
	}
	return used, count
}

// CheckCapacity checks that the VMs on each host of s fit within what it
// may allocate, recomputed from its capacity, reserved and ratios, and
// that the allocatable it reports is that. The chaos workload never
// lowers a host's capacity or ratios, so the overcommit an admin may
// force is a violation here; and a Snapshot reads the VMs before the
// hosts, so VMs read that were placed under the same yardstick must fit
// it, whatever happened in between. Safe on a cluster under load.
func CheckCapacity(s Snapshot) []Violation {
	used, count := hostUsage(s)
	var out []Violation
	for _, h := range s.Hosts {
		id, u, alloc := h.GetId(), used[h.GetId()], allocatableOf(h)
		if !u.fits(alloc) {
			out = append(out, Violation{"capacity", fmt.Sprintf("%s: host %s: its %d VMs take %s, more than allocatable %s (capacity %s, reserved %s, ratios cpu %g memory %g disk %g)",
				s.Controller, id, count[id], u, alloc, amountOf(h.GetCapacity()), amountOf(h.GetReserved()), h.GetRatios().GetCpu(), h.GetRatios().GetMemory(), h.GetRatios().GetDisk())})
		}
		if got := amountOf(h.GetAllocatable()); got != alloc {
			out = append(out, Violation{"capacity", fmt.Sprintf("%s: host %s reports allocatable %s, its capacity, reserved and ratios make %s", s.Controller, id, got, alloc)})
		}
	}
	return out
}

// CheckAccounting checks that each host's allocated is what the VMs of s
// on it take. The two are read by different calls (VMs first), so a VM
// placed or purged in between makes them differ in a correct cluster:
// judge only a quiescent state (after the workload stopped and the
// cluster converged).
func CheckAccounting(s Snapshot) []Violation {
	used, count := hostUsage(s)
	var out []Violation
	for _, h := range s.Hosts {
		if got, u := amountOf(h.GetAllocated()), used[h.GetId()]; got != u {
			out = append(out, Violation{"accounting", fmt.Sprintf("%s: host %s reports allocated %s, its %d VMs take %s", s.Controller, h.GetId(), got, count[h.GetId()], u)})
		}
	}
	return out
}

// quotaDimensions are the dimensions a quota limits: a limit's field and
// the usage of one VM.
var quotaDimensions = []struct {
	name  string
	limit func(*yunchiv1.QuotaLimits) *int64
	use   func(*yunchiv1.VM) int64
}{
	{"vcpus", func(l *yunchiv1.QuotaLimits) *int64 { return l.Vcpus }, func(vm *yunchiv1.VM) int64 { return int64(vm.GetVcpus()) }},
	{"memory_bytes", func(l *yunchiv1.QuotaLimits) *int64 { return l.MemoryBytes }, func(vm *yunchiv1.VM) int64 { return vm.GetMemoryBytes() }},
	{"disk_bytes", func(l *yunchiv1.QuotaLimits) *int64 { return l.DiskBytes }, func(vm *yunchiv1.VM) int64 { return vm.GetDiskBytes() }},
	{"vms", func(l *yunchiv1.QuotaLimits) *int64 { return l.Vms }, func(*yunchiv1.VM) int64 { return 1 }},
}

// defaultDepartment is the department of a project without a record (the
// default project): controller/state's DefaultDepartment.
const defaultDepartment = "default"

// CheckQuota checks that no quota of s is exceeded by what its VMs take,
// recomputed from the VMs (those being deleted included, as the
// controllers count them): a project quota counts the project's VMs, a
// department's (project "") those of all its projects. The workload only
// ever raises limits and a Snapshot reads the VMs before the quotas, so
// the limits read are at least those the VMs were placed under: any
// excess is a violation.
//
// The quotas' own used is not compared with the recomputed usage: it is
// read by another call, after the VMs, and a VM created or purged in
// between would make the two differ in a correct cluster. CheckSameState
// compares used across controllers instead.
func CheckQuota(s Snapshot) []Violation {
	dept := map[string]string{}
	for _, p := range s.Projects {
		dept[p.GetName()] = p.GetDepartment()
	}
	deptOf := func(project string) string {
		if d, ok := dept[project]; ok {
			return d
		}
		return defaultDepartment
	}
	var out []Violation
	for _, q := range s.Quotas {
		l := q.GetLimit()
		if l == nil {
			continue
		}
		subject := "department " + q.GetDepartment()
		if q.GetProject() != "" {
			subject = "project " + q.GetProject()
		}
		for _, d := range quotaDimensions {
			limit := d.limit(l)
			if limit == nil {
				continue
			}
			var used int64
			for _, vm := range s.VMs {
				if (q.GetProject() != "" && vm.GetProject() == q.GetProject()) ||
					(q.GetProject() == "" && deptOf(vm.GetProject()) == q.GetDepartment()) {
					used += d.use(vm)
				}
			}
			if used > *limit {
				out = append(out, Violation{"quota", fmt.Sprintf("%s: %s: %s used %d > limit %d", s.Controller, subject, d.name, used, *limit)})
			}
		}
	}
	return out
}

// CheckUnique checks that VM ids are unique, that no two VMs share a name
// in a project, and that every VM is on a host s knows.
func CheckUnique(s Snapshot) []Violation {
	byID := map[string][]*yunchiv1.VM{}
	byName := map[string][]string{}
	hosts := map[string]bool{}
	for _, h := range s.Hosts {
		hosts[h.GetId()] = true
	}
	var out []Violation
	for _, vm := range s.VMs {
		byID[vm.GetId()] = append(byID[vm.GetId()], vm)
		key := vm.GetProject() + "/" + vm.GetName()
		byName[key] = append(byName[key], vm.GetId())
		switch {
		case vm.GetHostId() == "":
			out = append(out, Violation{"unique", fmt.Sprintf("%s: vm %s has no host", s.Controller, vmName(vm))})
		case !hosts[vm.GetHostId()]:
			out = append(out, Violation{"unique", fmt.Sprintf("%s: vm %s is on host %s, which is not in the state", s.Controller, vmName(vm), vm.GetHostId())})
		}
	}
	for _, id := range sortedKeys(byID) {
		if vms := byID[id]; len(vms) > 1 {
			var names []string
			for _, vm := range vms {
				names = append(names, vm.GetProject()+"/"+vm.GetName())
			}
			out = append(out, Violation{"unique", fmt.Sprintf("%s: vm id %s is held by %d VMs: %s", s.Controller, id, len(vms), strings.Join(names, ", "))})
		}
	}
	for _, key := range sortedKeys(byName) {
		if ids := byName[key]; len(ids) > 1 {
			out = append(out, Violation{"unique", fmt.Sprintf("%s: name %s is held by %d VMs: %s", s.Controller, key, len(ids), strings.Join(ids, ", "))})
		}
	}
	return out
}

// CheckRunningOnce checks that no VM is active on two hosts: views taken
// at about the same time, so that a VM that moved between two of them is
// a violation only if the two windows overlapped (the harness's concern:
// it takes them together).
func CheckRunningOnce(views []AgentView) []Violation {
	on := map[string][]string{}
	for _, v := range views {
		seen := map[string]bool{}
		for _, d := range v.Domains {
			if d.Active && d.VMID != "" && !seen[d.VMID] {
				seen[d.VMID] = true
				on[d.VMID] = append(on[d.VMID], v.HostID)
			}
		}
	}
	var out []Violation
	for _, id := range sortedKeys(on) {
		if hosts := on[id]; len(hosts) > 1 {
			sort.Strings(hosts)
			out = append(out, Violation{"running-once", fmt.Sprintf("vm %s is active on %d hosts: %s", id, len(hosts), strings.Join(hosts, ", "))})
		}
	}
	return out
}

// CheckAgentsMatch checks, once the cluster has healed and converged,
// that the hosts run what the state says: every active domain is a VM s
// places on that host with desired running, and every VM with desired
// running on a host in views is active there (a VM whose agent failed to
// start it is a violation too: its phase and message say why).
func CheckAgentsMatch(views []AgentView, s Snapshot) []Violation {
	vms := map[string]*yunchiv1.VM{}
	for _, vm := range s.VMs {
		vms[vm.GetId()] = vm
	}
	active := map[string]map[string]bool{} // host -> vm ids active
	var out []Violation
	for _, v := range views {
		active[v.HostID] = map[string]bool{}
		for _, d := range v.Domains {
			if !d.Active {
				continue
			}
			active[v.HostID][d.VMID] = true
			vm := vms[d.VMID]
			switch {
			case vm == nil:
				out = append(out, Violation{"agents", fmt.Sprintf("host %s runs domain %s (vm %q), which %s does not have: an orphan", v.HostID, d.Name, d.VMID, s.Controller)})
			case vm.GetHostId() != v.HostID:
				out = append(out, Violation{"agents", fmt.Sprintf("host %s runs vm %s, which %s places on host %s", v.HostID, vmName(vm), s.Controller, vm.GetHostId())})
			case vm.GetDesired() != yunchiv1.PowerState_POWER_STATE_RUNNING:
				out = append(out, Violation{"agents", fmt.Sprintf("host %s runs vm %s, desired %s", v.HostID, vmName(vm), powerName(vm.GetDesired()))})
			}
		}
	}
	for _, vm := range s.VMs {
		on, viewed := active[vm.GetHostId()]
		if viewed && vm.GetDesired() == yunchiv1.PowerState_POWER_STATE_RUNNING && !on[vm.GetId()] {
			out = append(out, Violation{"agents", fmt.Sprintf("vm %s is desired running on host %s, which does not run it (phase %s %q)", vmName(vm), vm.GetHostId(), phaseName(vm.GetPhase()), vm.GetMessage())})
		}
	}
	return out
}

// CheckAcknowledged checks that what clients were told stayed true in the
// final state:
//
//   - a VM a create acknowledged is there, unless a delete on its name
//     with outcome OK or Unknown was called after the create was (it may
//     have deleted that VM);
//   - a VM a delete acknowledged is gone or being deleted;
//   - a project's VMs limit is at least what a set_quota acknowledged
//     (limits only grow in the workload, and are never cleared: an unset
//     limit after an acknowledged set is a lost write too).
//
// Answers that name no VM are judged by name (creates) or not at all
// (deletes: the name may have been reused since). set_quota ops without a
// project are not judged: Op names no department.
func CheckAcknowledged(h History, final Snapshot) []Violation {
	byID := map[string]*yunchiv1.VM{}
	byName := map[string]bool{}
	for _, vm := range final.VMs {
		byID[vm.GetId()] = vm
		byName[vm.GetProject()+"/"+vm.GetName()] = true
	}
	quotas := map[string]*yunchiv1.Quota{}
	for _, q := range final.Quotas {
		if q.GetProject() != "" {
			quotas[q.GetProject()] = q
		}
	}
	// mayDelete says whether a delete on key may have taken effect after
	// a create called at t: one that had not returned by then (it may be
	// linearized after the create: a retry of a delete sent before the
	// create finds the new VM by its name), or whose outcome is unknown
	// (it may take effect at any time after its call).
	mayDelete := func(key string, t int64) bool {
		for _, d := range h {
			if d.Kind == OpDelete && d.Key() == key && (d.Outcome == Unknown || d.Outcome == OK && d.Return > t) {
				return true
			}
		}
		return false
	}
	var out []Violation
	for _, op := range h {
		if op.Outcome != OK {
			continue
		}
		who := fmt.Sprintf("client %d #%d", op.Client, op.Seq)
		switch op.Kind {
		case OpCreate:
			there := byName[op.Key()]
			if op.VMID != "" {
				there = byID[op.VMID] != nil
			}
			if !there && !mayDelete(op.Key(), op.Call) {
				out = append(out, Violation{"acknowledged", fmt.Sprintf("%s: create of %s acknowledged (vm %s) at %d, absent from %s and never deleted", who, op.Key(), op.VMID, op.Return, final.Controller)})
			}
		case OpDelete:
			if vm := byID[op.VMID]; op.VMID != "" && vm != nil && vm.GetDesired() != yunchiv1.PowerState_POWER_STATE_DELETED {
				out = append(out, Violation{"acknowledged", fmt.Sprintf("%s: delete of vm %s acknowledged at %d, %s has it desired %s", who, vmName(vm), op.Return, final.Controller, powerName(vm.GetDesired()))})
			}
		case OpSetQuota:
			if op.Project == "" {
				continue
			}
			q := quotas[op.Project]
			switch limit := q.GetLimit().GetVms(); {
			case q == nil:
				out = append(out, Violation{"acknowledged", fmt.Sprintf("%s: set_quota of project %s (vms %d) acknowledged, %s has no quota for it", who, op.Project, op.Limit, final.Controller)})
			case q.GetLimit() == nil || q.GetLimit().Vms == nil:
				out = append(out, Violation{"acknowledged", fmt.Sprintf("%s: set_quota of project %s (vms %d) acknowledged, %s has its vms unlimited", who, op.Project, op.Limit, final.Controller)})
			case limit < op.Limit:
				out = append(out, Violation{"acknowledged", fmt.Sprintf("%s: set_quota of project %s (vms %d) acknowledged, %s has vms limit %d", who, op.Project, op.Limit, final.Controller, limit)})
			}
		}
	}
	return out
}

// CheckSameState checks that controllers that have converged agree: the
// same applied index, VMs, host allocations and quotas. Each is compared
// with the first; each difference is a violation, at most maxDiffLines
// (and a count of the rest) per pair.
func CheckSameState(snaps []Snapshot) []Violation {
	var out []Violation
	for _, b := range snaps[min(1, len(snaps)):] {
		out = append(out, diffSnapshots(snaps[0], b)...)
	}
	return out
}

// diffSnapshots lists how b differs from a.
func diffSnapshots(a, b Snapshot) []Violation {
	var lines []string
	if a.AppliedIndex != b.AppliedIndex {
		lines = append(lines, fmt.Sprintf("applied index %d, %s %d", a.AppliedIndex, b.Controller, b.AppliedIndex))
	}
	vmSig := func(vm *yunchiv1.VM) string {
		return fmt.Sprintf("%s/%s host=%s %s desired=%s phase=%s revision=%d", vm.GetProject(), vm.GetName(), vm.GetHostId(),
			vmAmount(vm), powerName(vm.GetDesired()), phaseName(vm.GetPhase()), vm.GetRevision())
	}
	lines = append(lines, diffBy("vm", a.VMs, b.VMs, (*yunchiv1.VM).GetId, vmSig, b.Controller)...)
	hostSig := func(h *yunchiv1.Host) string { return "allocated " + amountOf(h.GetAllocated()).String() }
	lines = append(lines, diffBy("host", a.Hosts, b.Hosts, (*yunchiv1.Host).GetId, hostSig, b.Controller)...)
	quotaKey := func(q *yunchiv1.Quota) string { return q.GetDepartment() + "/" + q.GetProject() }
	quotaSig := func(q *yunchiv1.Quota) string {
		l, u := q.GetLimit(), q.GetUsed()
		return fmt.Sprintf("limit vcpus=%s memory=%s disk=%s vms=%s used vcpus=%d memory=%d disk=%d vms=%d",
			optional(l.GetVcpus(), l != nil && l.Vcpus != nil), optional(l.GetMemoryBytes(), l != nil && l.MemoryBytes != nil),
			optional(l.GetDiskBytes(), l != nil && l.DiskBytes != nil), optional(l.GetVms(), l != nil && l.Vms != nil),
			u.GetVcpus(), u.GetMemoryBytes(), u.GetDiskBytes(), u.GetVms())
	}
	lines = append(lines, diffBy("quota", a.Quotas, b.Quotas, quotaKey, quotaSig, b.Controller)...)

	var out []Violation
	for i, l := range lines {
		if i == maxDiffLines {
			out = append(out, Violation{"same-state", fmt.Sprintf("%s vs %s: and %d more differences", a.Controller, b.Controller, len(lines)-i)})
			break
		}
		out = append(out, Violation{"same-state", fmt.Sprintf("%s vs %s: %s", a.Controller, b.Controller, l)})
	}
	return out
}

// diffBy compares two lists of records by key: those only in one, and
// those whose signatures (the fields compared) differ, by key.
func diffBy[T any](what string, as, bs []T, key func(T) string, sig func(T) string, bName string) []string {
	am, bm := map[string]string{}, map[string]string{}
	for _, x := range as {
		am[key(x)] = sig(x)
	}
	for _, x := range bs {
		bm[key(x)] = sig(x)
	}
	all := map[string]bool{}
	for k := range am {
		all[k] = true
	}
	for k := range bm {
		all[k] = true
	}
	var lines []string
	for _, k := range sortedKeys(all) {
		sa, inA := am[k]
		sb, inB := bm[k]
		switch {
		case !inB:
			lines = append(lines, fmt.Sprintf("%s %s: %s, %s has none", what, k, sa, bName))
		case !inA:
			lines = append(lines, fmt.Sprintf("%s %s: none, %s has %s", what, k, bName, sb))
		case sa != sb:
			lines = append(lines, fmt.Sprintf("%s %s: %s, %s has %s", what, k, sa, bName, sb))
		}
	}
	return lines
}

// CheckAudit checks that every controller verified its audit chain
// without a problem and that all are at the same head.
func CheckAudit(snaps []Snapshot) []Violation {
	var out []Violation
	var first *Snapshot
	for i, s := range snaps {
		a := s.Audit
		if a == nil {
			out = append(out, Violation{"audit", fmt.Sprintf("%s: no audit verification", s.Controller)})
			continue
		}
		if !a.GetOk() {
			out = append(out, Violation{"audit", fmt.Sprintf("%s: audit chain does not verify (%d records, seq %d..%d, %d problems)", s.Controller, a.GetRecords(), a.GetFirstSeq(), a.GetLastSeq(), len(a.GetProblems()))})
		}
		for j, p := range a.GetProblems() {
			if j == maxDiffLines {
				out = append(out, Violation{"audit", fmt.Sprintf("%s: and %d more audit problems", s.Controller, len(a.GetProblems())-j)})
				break
			}
			out = append(out, Violation{"audit", fmt.Sprintf("%s: audit problem %s at seq %d: %s", s.Controller, p.GetKind(), p.GetSeq(), p.GetDetail())})
		}
		if first == nil {
			first = &snaps[i]
			continue
		}
		if fa := first.Audit; a.GetHeadSeq() != fa.GetHeadSeq() || a.GetHeadHash() != fa.GetHeadHash() {
			out = append(out, Violation{"audit", fmt.Sprintf("%s: audit head seq %d hash %s, %s has seq %d hash %s", first.Controller, fa.GetHeadSeq(), fa.GetHeadHash(), s.Controller, a.GetHeadSeq(), a.GetHeadHash())})
		}
	}
	return out
}

// powerName is a desired state as the history writes it: "running".
func powerName(p yunchiv1.PowerState) string {
	return strings.ToLower(strings.TrimPrefix(p.String(), "POWER_STATE_"))
}

// phaseName is a phase in lower case: "pending".
func phaseName(p yunchiv1.VMPhase) string {
	return strings.ToLower(strings.TrimPrefix(p.String(), "VM_PHASE_"))
}

// optional writes an optional limit: its value, or "-" when unset.
func optional(v int64, set bool) string {
	if !set {
		return "-"
	}
	return fmt.Sprint(v)
}

// sortedKeys is m's keys in order, so that violations come in the same
// order every run.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
