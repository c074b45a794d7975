package main

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/yunchi/yunchi/controller/api"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// printer writes results to stdout as tables for people or as the API's JSON
// for scripts.
type printer struct {
	w    io.Writer
	json bool
	now  func() time.Time
}

func newPrinter(w io.Writer, format string) (*printer, error) {
	switch format {
	case "table", "":
		return &printer{w: w, now: time.Now}, nil
	case "json":
		return &printer{w: w, json: true, now: time.Now}, nil
	}
	return nil, usagef("invalid --output %q: want table or json", format)
}

// print writes m as JSON, or calls table with a tabwriter.
func (p *printer) print(m proto.Message, table func(w io.Writer)) error {
	if p.json {
		b, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: false}.Marshal(m)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	}
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// --- VMs ---

func (p *printer) vmList(vms []*yunchiv1.VM) func(io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tPROJECT\tPHASE\tVCPUS\tMEMORY\tDISK\tHOST\tCENTER\tAGE")
		for _, vm := range vms {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n",
				vm.GetName(), dash(vm.GetProject()), vmPhase(vm), vm.GetVcpus(),
				scheduler.FormatBytes(vm.GetMemoryBytes()), scheduler.FormatBytes(vm.GetDiskBytes()),
				dash(vm.GetHostId()), dash(vm.GetHostCenter()), p.age(vm.GetCreatedAt()))
		}
	}
}

func (p *printer) vmDetail(vm *yunchiv1.VM) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "Name", vm.GetName())
		kv(w, "ID", vm.GetId())
		kv(w, "Project", vm.GetProject())
		kv(w, "Phase", vmPhase(vm))
		kv(w, "Conditions", strings.Join(vm.GetConditions(), ", "))
		kv(w, "Desired", power(vm.GetDesired()))
		kv(w, "Message", vm.GetMessage())
		// Allocation, with what the guest uses beside it when the
		// leader has it (vm.go).
		u := vm.GetUsage()
		kv(w, "vCPUs", strconv.Itoa(int(vm.GetVcpus()))+cpuUsed(u))
		kv(w, "Memory", scheduler.FormatBytes(vm.GetMemoryBytes())+memoryUsed(u))
		kv(w, "Disk", scheduler.FormatBytes(vm.GetDiskBytes())+diskUsed(u))
		if u != nil {
			kv(w, "Network", netUsed(u))
			kv(w, "Usage measured", p.timestamp(u.GetMeasuredAt()))
		}
		if vm.GetImage() != "" {
			kv(w, "Image", vm.GetImage()+" (sha256 "+shortSHA(vm.GetImageSha256())+")")
		}
		if n := len(vm.GetSshAuthorizedKeys()); n > 0 {
			kv(w, "SSH keys", strconv.Itoa(n))
		}
		if pol := vm.GetProtectionPolicy(); pol != "" {
			if vm.GetProtectionSource() == "project" {
				pol += " (the project's)"
			}
			kv(w, "Protection", pol)
		}
		if r := vm.GetRestoredFrom(); r != "" {
			kv(w, "Restored from", r)
		}
		if h := vm.GetHomeCenter(); h != "" {
			kv(w, "Home center", h+" (failed over; yunchi dr failback --to "+h+" returns it)")
		}
		if d := vm.GetDrRun(); d != "" {
			kv(w, "Drill clone of", d+" (no network; removed by the drill)")
		}
		kv(w, "Center constraint", orDefault(vm.GetCenter(), "any"))
		kv(w, "Constraints", strings.Join(vm.GetConstraints(), "; "))
		kv(w, "Group", vm.GetGroup())
		host := vm.GetHostId()
		if hostDown(vm) {
			host += " (down, last heartbeat " + p.ago(vm.GetHostLastHeartbeat()) + ")"
		}
		kv(w, "Host", host)
		kv(w, "Host center", vm.GetHostCenter())
		kv(w, "Reboots requested", strconv.FormatUint(vm.GetRebootSeq(), 10))
		kv(w, "Created", p.timestamp(vm.GetCreatedAt()))
		kv(w, "Updated", p.timestamp(vm.GetUpdatedAt()))
		kv(w, "Revision", strconv.FormatUint(vm.GetRevision(), 10))
	}
}

// --- hosts ---

func (p *printer) hostList(hosts []*yunchiv1.Host) func(io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintln(w, "ID\tCENTER\tRACK\tSTATE\tOWNER\tVMS\tVCPUS FREE\tMEMORY FREE\tDISK FREE\tLAST SEEN")
		for _, h := range hosts {
			f, a := h.GetFree(), h.GetAllocatable()
			st := hostState(h.GetState())
			if dims := overcommitted(h.GetOvercommit()); dims != "" {
				st += " (overcommitted: " + dims + ")"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%d/%d\t%s/%s\t%s/%s\t%s\n",
				h.GetId(), dash(h.GetCenter()), dash(h.GetRack()), st, dash(h.GetOwner()), h.GetVmCount(),
				f.GetVcpus(), a.GetVcpus(),
				scheduler.FormatBytes(f.GetMemoryBytes()), scheduler.FormatBytes(a.GetMemoryBytes()),
				scheduler.FormatBytes(f.GetDiskBytes()), scheduler.FormatBytes(a.GetDiskBytes()),
				p.ago(h.GetLastSeen()))
		}
	}
}

func (p *printer) hostDetail(h *yunchiv1.Host) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "ID", h.GetId())
		kv(w, "Hostname", h.GetHostname())
		kv(w, "State", hostState(h.GetState()))
		kv(w, "Owner", orDefault(h.GetOwner(), "shared"))
		kv(w, "Center", h.GetCenter())
		kv(w, "Site", h.GetSite())
		kv(w, "Rack", h.GetRack())
		kv(w, "Labels", labels(h.GetLabels()))
		kv(w, "Admin labels", labels(h.GetAdminLabels()))
		kv(w, "CPU model", h.GetCpuModel())
		kv(w, "Agent version", h.GetAgentVersion())
		kv(w, "Hypervisor", hypervisorText(h))
		kv(w, "Storage pool", storageText(h))
		kv(w, "VMs", strconv.Itoa(int(h.GetVmCount())))
		kv(w, "Registered", p.timestamp(h.GetRegisteredAt()))
		kv(w, "Last seen", p.timestamp(h.GetLastSeen()))
		if dims := overcommitted(h.GetOvercommit()); dims != "" {
			kv(w, "Overcommitted", dims+": allocated beyond allocatable; no new VM goes here until it is back within")
		}
		fmt.Fprintln(w)
		c, r, al, a, f, o := h.GetCapacity(), h.GetReserved(), h.GetAllocatable(), h.GetAllocated(), h.GetFree(), h.GetOvercommit()
		ra, src := h.GetRatios(), h.GetRatioSources()
		// free, or "0 (overcommitted by X)": never a bare negative.
		free := func(f, o int64, format func(int64) string) string {
			if o > 0 {
				return format(f) + " (overcommitted by " + format(o) + ")"
			}
			return format(f)
		}
		num := func(n int64) string { return strconv.FormatInt(n, 10) }
		fmt.Fprintln(w, "RESOURCE\tCAPACITY\tRESERVED\tRATIO\tRATIO FROM\tALLOCATABLE\tALLOCATED\tFREE")
		fmt.Fprintf(w, "vcpus\t%d\t%d\t%s\t%s\t%d\t%d\t%s\n", c.GetVcpus(), r.GetVcpus(), ratio(ra.GetCpu()), dash(src.GetCpu()), al.GetVcpus(), a.GetVcpus(), free(f.GetVcpus(), o.GetVcpus(), num))
		fmt.Fprintf(w, "memory\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", scheduler.FormatBytes(c.GetMemoryBytes()), scheduler.FormatBytes(r.GetMemoryBytes()), ratio(ra.GetMemory()), dash(src.GetMemory()),
			scheduler.FormatBytes(al.GetMemoryBytes()), scheduler.FormatBytes(a.GetMemoryBytes()), free(f.GetMemoryBytes(), o.GetMemoryBytes(), scheduler.FormatBytes))
		fmt.Fprintf(w, "disk\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", scheduler.FormatBytes(c.GetDiskBytes()), scheduler.FormatBytes(r.GetDiskBytes()), ratio(ra.GetDisk()), dash(src.GetDisk()),
			scheduler.FormatBytes(al.GetDiskBytes()), scheduler.FormatBytes(a.GetDiskBytes()), free(f.GetDiskBytes(), o.GetDiskBytes(), scheduler.FormatBytes))
		if s := h.GetStats(); s != nil {
			fmt.Fprintln(w)
			kv(w, "Domains running", strconv.Itoa(int(s.GetDomainsRunning())))
			kv(w, "Domains defined", strconv.Itoa(int(s.GetDomainsDefined())))
			free := "not reported"
			if s.MemoryFreeBytes != nil {
				free = scheduler.FormatBytes(s.GetMemoryFreeBytes()) + hostMemoryUse(h)
			}
			kv(w, "Memory free (observed)", free)
		}
	}
}

// --- capacity ---

func (p *printer) capacity(c *yunchiv1.Capacity) func(io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintln(w, "CENTER\tHOSTS\tREADY\tVMS\tVCPUS FREE/ALLOCATABLE\tMEMORY FREE/ALLOCATABLE\tDISK FREE/ALLOCATABLE\tOVERCOMMITTED")
		row := func(name string, hosts, ready, vms int32, capa, free *yunchiv1.Resources, overHosts int32, over *yunchiv1.Resources) {
			oc := "-"
			if overHosts > 0 {
				amt := overcommitAmounts(over)
				oc = fmt.Sprintf("%d hosts (%s)", overHosts, amt)
				if overHosts == 1 {
					oc = "1 host (" + amt + ")"
				}
			}
			fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d/%d\t%s/%s\t%s/%s\t%s\n", name, hosts, ready, vms,
				free.GetVcpus(), capa.GetVcpus(),
				scheduler.FormatBytes(free.GetMemoryBytes()), scheduler.FormatBytes(capa.GetMemoryBytes()),
				scheduler.FormatBytes(free.GetDiskBytes()), scheduler.FormatBytes(capa.GetDiskBytes()), oc)
		}
		var ready int32 // Capacity has no ready total: sum the centers
		// Free out of allocatable ((capacity - reserved) * ratio); older
		// controllers report no allocatable: fall back to capacity.
		orCap := func(a, c *yunchiv1.Resources) *yunchiv1.Resources {
			if a == nil {
				return c
			}
			return a
		}
		for _, cc := range c.GetCenters() {
			row(dash(cc.GetCenter()), cc.GetHosts(), cc.GetHostsReady(), cc.GetVms(), orCap(cc.GetAllocatable(), cc.GetCapacity()), cc.GetFree(), cc.GetHostsOvercommitted(), cc.GetOvercommit())
			ready += cc.GetHostsReady()
		}
		row("TOTAL", c.GetHosts(), ready, c.GetVms(), orCap(c.GetAllocatable(), c.GetCapacity()), c.GetFree(), c.GetHostsOvercommitted(), c.GetOvercommit())
	}
}

// overcommitted names the dimensions o is positive in: "memory", "cpu, disk";
// "" for none.
func overcommitted(o *yunchiv1.Resources) string {
	var dims []string
	if o.GetVcpus() > 0 {
		dims = append(dims, "cpu")
	}
	if o.GetMemoryBytes() > 0 {
		dims = append(dims, "memory")
	}
	if o.GetDiskBytes() > 0 {
		dims = append(dims, "disk")
	}
	return strings.Join(dims, ", ")
}

// overcommitAmounts prints the positive amounts of o: "memory 94.72 GiB".
func overcommitAmounts(o *yunchiv1.Resources) string {
	var parts []string
	if o.GetVcpus() > 0 {
		parts = append(parts, fmt.Sprintf("cpu %d vCPU", o.GetVcpus()))
	}
	if o.GetMemoryBytes() > 0 {
		parts = append(parts, "memory "+scheduler.FormatBytes(o.GetMemoryBytes()))
	}
	if o.GetDiskBytes() > 0 {
		parts = append(parts, "disk "+scheduler.FormatBytes(o.GetDiskBytes()))
	}
	return strings.Join(parts, ", ") + " over"
}

// --- cluster ---

func (p *printer) clusterStatus(s *yunchiv1.ClusterStatus) func(io.Writer) {
	return func(w io.Writer) {
		leader := s.GetLeaderId()
		if s.GetNodeState() == "Removed" {
			var addrs []string
			for _, m := range s.GetMembers() {
				if m.GetApiAddress() != "" {
					addrs = append(addrs, m.GetApiAddress())
				}
			}
			leader = "unknown: " + s.GetNodeId() + " was removed from the cluster; ask one of: " + strings.Join(addrs, ",")
		} else if leader == "" {
			leader = "none (no leader elected)"
		} else if s.GetLeaderApiAddress() != "" {
			leader += " (" + s.GetLeaderApiAddress() + ")"
		}
		node := s.GetNodeId()
		if s.GetNodeState() != "" {
			node += " (" + strings.ToLower(s.GetNodeState()) + ")"
		}
		kv(w, "Leader", leader)
		kv(w, "Answered by", node)
		kv(w, "Term", strconv.FormatUint(s.GetTerm(), 10))
		kv(w, "Commit index", strconv.FormatUint(s.GetCommitIndex(), 10))
		kv(w, "Applied index", strconv.FormatUint(s.GetAppliedIndex(), 10))
		kv(w, "Last log index", strconv.FormatUint(s.GetLastLogIndex(), 10))
		kv(w, "Raft log", p.logStore(s))
		fmt.Fprintln(w)
		memberRows(w, s.GetMembers())
		for _, warn := range s.GetWarnings() {
			fmt.Fprintf(w, "\nWARNING: %s\n", warn)
		}
	}
}

// removed is what `cluster remove` prints: what happened, then the members.
func (p *printer) removed(r *yunchiv1.ListMembersResponse) func(io.Writer) {
	return func(w io.Writer) {
		if r.GetMessage() != "" {
			fmt.Fprintf(w, "%s\n\n", r.GetMessage())
		}
		memberRows(w, r.GetMembers())
	}
}

// logStore says whether the answering controller can write its raft log.
func (p *printer) logStore(s *yunchiv1.ClusterStatus) string {
	if e := s.GetLogStoreError(); e != "" {
		return "CANNOT WRITE since " + p.timestamp(s.GetLogStoreFailingSince()) + ": " + e +
			" (this controller's state may be stale: ask another one; it recovers by itself once the disk has room)"
	}
	if n := s.GetLogStoreWriteFailures(); n > 0 {
		return fmt.Sprintf("ok (%d failed writes since start, recovered)", n)
	}
	return "ok"
}

func (p *printer) members(ms []*yunchiv1.Member) func(io.Writer) {
	return func(w io.Writer) { memberRows(w, ms) }
}

func memberRows(w io.Writer, ms []*yunchiv1.Member) {
	fmt.Fprintln(w, "ID\tCENTER\tSUFFRAGE\tAPI ADDRESS\tRAFT ADDRESS\tLEADER")
	for _, m := range ms {
		mark := ""
		if m.GetLeader() {
			mark = "*"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", m.GetId(), dash(m.GetCenter()), dash(m.GetSuffrage()),
			dash(m.GetApiAddress()), dash(m.GetRaftAddress()), mark)
	}
}

// --- formatting helpers ---

func kv(w io.Writer, k, v string) {
	fmt.Fprintf(w, "%s:\t%s\n", k, dash(v))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// enumWord turns VM_PHASE_RUNNING into "running".
func enumWord(name, prefix string) string {
	w := strings.ToLower(strings.TrimPrefix(name, prefix))
	if w == "unspecified" || w == "" {
		return "-"
	}
	return w
}

func phase(p yunchiv1.VMPhase) string       { return enumWord(p.String(), "VM_PHASE_") }
func power(p yunchiv1.PowerState) string    { return enumWord(p.String(), "POWER_STATE_") }
func hostState(s yunchiv1.HostState) string { return enumWord(s.String(), "HOST_STATE_") }

func hostDown(vm *yunchiv1.VM) bool {
	return slices.Contains(vm.GetConditions(), api.VMConditionHostDown)
}

// vmPhase is the phase for tables: the last one the agent reported, and
// "(host down)" when the host has stopped reporting.
func vmPhase(vm *yunchiv1.VM) string {
	if hostDown(vm) {
		return phase(vm.GetPhase()) + " (host down)"
	}
	return phase(vm.GetPhase())
}

func labels(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

func (p *printer) timestamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339) + " (" + p.ago(ts) + ")"
}

// age is how long ago ts was, short: "45s", "12m", "3h", "5d"; "0s" for
// a time still to come (a creation stamp a little ahead of this clock).
func (p *printer) age(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return span(p.now().Sub(ts.AsTime()))
}

// span is d, short and rounded down; 0s when d is negative.
func span(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

// ago is ts relative to now: "3h ago", or "in 89d" for a time more than
// a second ahead (an expiry), so a token's expiry does not read as past.
func (p *printer) ago(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	if d := ts.AsTime().Sub(p.now()); d > time.Second {
		// To the nearest minute past one, so that a 90-day token shown a
		// moment after it was made reads "in 90d", not "in 89d".
		if d >= time.Minute {
			d = d.Round(time.Minute)
		}
		return "in " + span(d)
	}
	return p.age(ts) + " ago"
}

// decisions prints where a create put (or, dry run, would put) each VM.
func (p *printer) decisions(r *yunchiv1.CreateVMsResponse) func(io.Writer) {
	return func(w io.Writer) {
		if r.GetDryRun() {
			fmt.Fprintln(w, "Dry run: nothing was created.")
		}
		fmt.Fprintln(w, "VM\tHOST\tCENTER\tSCORE\tRUNNERS-UP")
		for _, d := range r.GetDecisions() {
			var ru []string
			for _, c := range d.GetRunnersUp() {
				ru = append(ru, fmt.Sprintf("%s (%d)", c.GetHostId(), c.GetScore()))
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\n", d.GetVmName(), d.GetHostId(), dash(d.GetHostCenter()), d.GetScore(), dash(strings.Join(ru, ", ")))
		}
	}
}

// storageText says where a host's VM disks live: "yunchi (local)",
// "vmstore (shared storage nfs-a1)".
func storageText(h *yunchiv1.Host) string {
	pool := orDefault(h.GetStoragePool(), "-")
	if s := h.GetSharedStorage(); s != "" {
		return pool + " (shared storage " + s + ": disks outlive the host)"
	}
	if h.GetStoragePool() == "" {
		return pool
	}
	return pool + " (local)"
}

// hypervisorText is a host's hypervisor with the libvirt version beside
// it: "QEMU 7.2.0 (libvirt 9.0.0)"; "" when the agent did not say.
func hypervisorText(h *yunchiv1.Host) string {
	switch hv, lv := h.GetHypervisor(), h.GetLibvirtVersion(); {
	case hv != "" && lv != "":
		return hv + " (libvirt " + lv + ")"
	case lv != "":
		return "libvirt " + lv
	default:
		return hv
	}
}
