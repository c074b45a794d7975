package leader

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/controller/placement"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// recoveryFixture is backupFixture plus host h2 in a2 (room for one VM of
// vm1's memory, 1 GiB, and 1 GiB more: 4 GiB less the 2 GiB kept for the
// host) and a point of vm1 in a2.
func recoveryFixture(t *testing.T) (*Recovery, *storeProposer, *statev1.RestorePointRecord) {
	t.Helper()
	_, p := backupFixture(t)
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
		Id: "h2", Hostname: "h2", Center: "a2", Capacity: &statev1.Resources{Vcpus: 3, MemoryBytes: 4 << 30, DiskBytes: 1 << 40}}}}})
	b := NewBackups(p, p.st, slog.New(slog.DiscardHandler))
	b.Tick(context.Background(), time.Now())
	var pt *statev1.RestorePointRecord
	for _, j := range p.st.RunningJobsOnHost("h1") {
		finish(t, p, j, time.Now().Add(-30*time.Second))
		if j.Center == "a2" {
			pt = p.st.RestorePointsOf("vm1", "a2")[0]
		}
	}
	eng := placement.New(p, p.st, slog.New(slog.DiscardHandler))
	return NewRecovery(p, p.st, eng, slog.New(slog.DiscardHandler)), p, pt
}

func report(t *testing.T, p *storeProposer, host, vm string, phase statev1.VMPhase, gone bool) {
	t.Helper()
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: host,
		Statuses: []*statev1.VMStatus{{VmId: vm, Phase: phase, Gone: gone}}}}})
}

func runOf(t *testing.T, p *storeProposer, id string) *statev1.DRRunRecord {
	t.Helper()
	r, ok := p.st.DRRun(id)
	if !ok {
		t.Fatalf("run %s not found", id)
	}
	return r
}

// Failover fences a1, moves vm1 to h2 in a2 from its newest point there and
// measures it when h2 reports it running; the fenced center takes no VM;
// failback copies it (pre-copy, stop, final copy), moves it home and
// measures the downtime; the fence is lifted.
func TestFailoverAndFailback(t *testing.T) {
	r, p, pt := recoveryFixture(t)
	ctx := context.Background()
	run, unprotected, err := PlanFailover(p.st, statev1.DRRunKind_DR_RUN_KIND_FAILOVER, "a1", "", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if run.ToCenter != "a2" || len(run.Vms) != 1 || unprotected != 0 {
		t.Fatalf("plan: to %s, %d vms, %d unprotected", run.ToCenter, len(run.Vms), unprotected)
	}
	if e := run.Vms[0]; e.PointId != pt.Id || e.DataLossMillis < 30000 || e.DataLossMillis > 40000 {
		t.Fatalf("plan entry: point %s (want %s), data loss %d ms", e.PointId, pt.Id, e.DataLossMillis)
	}
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_StartDrRun{StartDrRun: &statev1.StartDRRun{Run: run}}})
	if c, _ := p.st.Center("a1"); c.FencedBy != run.Id {
		t.Fatalf("a1 not fenced: %q", c.FencedBy)
	}
	if f, _ := p.st.HostFacts("h1"); f.State != statev1.HostState_HOST_STATE_DOWN {
		t.Fatalf("a host of the fenced center is %v for placement, want down", f.State)
	}
	// A second failover of a1 while this one runs is refused.
	again, _, _ := PlanFailover(p.st, statev1.DRRunKind_DR_RUN_KIND_FAILOVER, "a1", "a2", "", time.Now())
	if _, err := p.Apply(ctx, &statev1.Command{Cmd: &statev1.Command_StartDrRun{StartDrRun: &statev1.StartDRRun{Run: again}}}); err == nil {
		t.Fatal("a second failover of a1 was accepted while the first runs")
	}

	r.Tick(ctx, time.Now())
	vm, _ := p.st.VMByID("vm1")
	if vm.HostId != "h2" || vm.Restore.GetPointId() != pt.Id || vm.HomeCenter != "a1" || vm.Center != "a2" {
		t.Fatalf("after the first tick vm1 is on %s from %q, home %q, center %q", vm.HostId, vm.Restore.GetPointId(), vm.HomeCenter, vm.Center)
	}
	if e := runOf(t, p, run.Id).Vms[0]; e.Step != statev1.DRStep_DR_STEP_STARTING || e.HostId != "h2" {
		t.Fatalf("entry after relocation: %v on %s", e.Step, e.HostId)
	}
	// The old host speaking of vm1 changes nothing (no VM runs twice).
	report(t, p, "h1", "vm1", statev1.VMPhase_VM_PHASE_RUNNING, false)
	r.Tick(ctx, time.Now())
	if e := runOf(t, p, run.Id).Vms[0]; e.Step != statev1.DRStep_DR_STEP_STARTING {
		t.Fatalf("a report from the fenced host moved the entry to %v", e.Step)
	}
	report(t, p, "h2", "vm1", statev1.VMPhase_VM_PHASE_RUNNING, false)
	r.Tick(ctx, time.Now())
	done := runOf(t, p, run.Id)
	if done.State != statev1.DRRunState_DR_RUN_STATE_SUCCEEDED || done.Vms[0].Step != statev1.DRStep_DR_STEP_RUNNING || done.Vms[0].RtoMillis < 0 {
		t.Fatalf("run after running: %v, entry %v rto %d", done.State, done.Vms[0].Step, done.Vms[0].RtoMillis)
	}
	if vm, _ := p.st.VMByID("vm1"); vm.Restore != nil {
		t.Fatal("restore source kept after the host reported the VM running")
	}

	// Failback to a1.
	fb, err := PlanFailback(p.st, "a1")
	if err != nil {
		t.Fatal(err)
	}
	if len(fb.Vms) != 1 || fb.Vms[0].JobCenter != "a2" || fb.FromCenter != "a2" {
		t.Fatalf("failback plan: %v", fb)
	}
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_StartDrRun{StartDrRun: &statev1.StartDRRun{Run: fb}}})
	if c, _ := p.st.Center("a1"); c.FencedBy != "" {
		t.Fatal("failback did not lift a1's fence")
	}
	step := func(want statev1.DRStep) *statev1.DRRunVM {
		t.Helper()
		r.Tick(ctx, time.Now())
		e := runOf(t, p, fb.Id).Vms[0]
		if e.Step != want {
			t.Fatalf("failback step %v (%s), want %v", e.Step, e.Reason, want)
		}
		return e
	}
	step(statev1.DRStep_DR_STEP_PRECOPY)
	jobs := p.st.RunningJobsOnHost("h2")
	if len(jobs) != 1 || jobs[0].Center != "a2" || jobs[0].BasePointId != pt.Id {
		t.Fatalf("pre-copy job: %v", jobs)
	}
	finish(t, p, jobs[0], time.Now())
	step(statev1.DRStep_DR_STEP_STOPPING)
	if vm, _ := p.st.VMByID("vm1"); vm.Desired != statev1.PowerState_POWER_STATE_STOPPED {
		t.Fatalf("vm1 desired %v during the switch-over", vm.Desired)
	}
	step(statev1.DRStep_DR_STEP_STOPPING) // not stopped yet
	report(t, p, "h2", "vm1", statev1.VMPhase_VM_PHASE_STOPPED, false)
	step(statev1.DRStep_DR_STEP_FINAL_COPY)
	jobs = p.st.RunningJobsOnHost("h2")
	if len(jobs) != 1 {
		t.Fatalf("final copy: %d jobs", len(jobs))
	}
	// A point taken before the VM stopped (a backup the schedule had
	// started) is not the final copy: another backup starts.
	stepAt := runOf(t, p, fb.Id).Vms[0].StepUnixNano
	finish(t, p, jobs[0], time.Unix(0, stepAt-int64(time.Millisecond)))
	step(statev1.DRStep_DR_STEP_FINAL_COPY)
	jobs = p.st.RunningJobsOnHost("h2")
	if len(jobs) != 1 {
		t.Fatalf("final copy after an older point: %d jobs", len(jobs))
	}
	time.Sleep(2 * time.Millisecond)
	finish(t, p, jobs[0], time.Now())
	r.Tick(ctx, time.Now())
	vm, _ = p.st.VMByID("vm1")
	if vm.HostId != "h1" || vm.HomeCenter != "" || vm.Desired != statev1.PowerState_POWER_STATE_RUNNING || vm.Restore == nil {
		t.Fatalf("after the final copy vm1 is on %s, home %q, desired %v, restore %v", vm.HostId, vm.HomeCenter, vm.Desired, vm.Restore)
	}
	time.Sleep(5 * time.Millisecond)
	report(t, p, "h1", "vm1", statev1.VMPhase_VM_PHASE_RUNNING, false)
	e := step(statev1.DRStep_DR_STEP_RUNNING)
	if e.DowntimeMillis <= 0 || e.DataLossMillis != 0 {
		t.Fatalf("failback downtime %d ms, data loss %d ms", e.DowntimeMillis, e.DataLossMillis)
	}
	if st := runOf(t, p, fb.Id).State; st != statev1.DRRunState_DR_RUN_STATE_SUCCEEDED {
		t.Fatalf("failback ended %v", st)
	}
}

// A VM that does not fit in the DR center is skipped with the scheduler's
// reason, and the run ends partial.
func TestFailoverNoRoom(t *testing.T) {
	r, p, _ := recoveryFixture(t)
	ctx := context.Background()
	// vm2 (2 GiB) protected too: h2 has room for 1 GiB after vm1.
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: []*statev1.VMRecord{
		{Id: "vm2", Name: "vm2", Project: state.DefaultProject, Vcpus: 1, MemoryBytes: 2 << 30, DiskBytes: 1 << 30, HostId: "h1"}}}}})
	report(t, p, "h1", "vm2", statev1.VMPhase_VM_PHASE_RUNNING, false)
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_SetProtection{SetProtection: &statev1.SetProtection{Project: state.DefaultProject, VmId: "vm2", Policy: "silver"}}})
	b := NewBackups(p, p.st, slog.New(slog.DiscardHandler))
	b.Tick(ctx, time.Now())
	for _, j := range p.st.RunningJobsOnHost("h1") {
		finish(t, p, j, time.Now())
	}
	run, _, err := PlanFailover(p.st, statev1.DRRunKind_DR_RUN_KIND_FAILOVER, "a1", "a2", "", time.Now())
	if err != nil || len(run.Vms) != 2 {
		t.Fatalf("plan: %v, %v", run, err)
	}
	if run.Vms[0].Name != "vm1" { // gold before silver
		t.Fatalf("priority order: %s first", run.Vms[0].Name)
	}
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_StartDrRun{StartDrRun: &statev1.StartDRRun{Run: run}}})
	r.Tick(ctx, time.Now())
	got := runOf(t, p, run.Id)
	if e := got.Vms[1]; e.Step != statev1.DRStep_DR_STEP_SKIPPED || !strings.Contains(e.Reason, "no room") {
		t.Fatalf("vm2: %v %q", e.Step, e.Reason)
	}
	if vm, _ := p.st.VMByID("vm2"); vm.HostId != "h1" {
		t.Fatalf("vm2 moved to %s", vm.HostId)
	}
	report(t, p, "h2", "vm1", statev1.VMPhase_VM_PHASE_RUNNING, false)
	r.Tick(ctx, time.Now())
	if st := runOf(t, p, run.Id).State; st != statev1.DRRunState_DR_RUN_STATE_PARTIAL {
		t.Fatalf("run ended %v, want partial", st)
	}
	// Apply itself refuses to overcommit h2 whatever the leader decides.
	_, err = p.Apply(ctx, &statev1.Command{Cmd: &statev1.Command_RelocateVms{RelocateVms: &statev1.RelocateVMs{RunId: run.Id,
		Relocations: []*statev1.Relocation{{VmId: "vm2", HostId: "h2", Entry: &statev1.DRRunVM{VmId: "vm2"}}}}}})
	if err == nil {
		t.Fatal("a relocation to an ended run was applied")
	}
}

// A drill places an isolated clone in its own project in a2, measures it,
// removes it, checks production and removes the project; vm1 never moves.
func TestDrill(t *testing.T) {
	r, p, pt := recoveryFixture(t)
	ctx := context.Background()
	run, _, err := PlanFailover(p.st, statev1.DRRunKind_DR_RUN_KIND_DRILL, "a1", "", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_StartDrRun{StartDrRun: &statev1.StartDRRun{Run: run}}})
	if c, _ := p.st.Center("a1"); c.FencedBy != "" {
		t.Fatal("a drill fenced a1")
	}
	r.Tick(ctx, time.Now())
	clones := p.st.VMsOfRun(run.Id)
	if len(clones) != 1 {
		t.Fatalf("%d clones: %v", len(clones), runOf(t, p, run.Id).Vms[0])
	}
	c := clones[0]
	drill := state.DrillProjectOf(run.Id)
	if c.Project != drill || !c.Isolated || c.HostId != "h2" || c.Restore.GetPointId() != pt.Id || !strings.HasSuffix(c.Name, "-vm1") {
		t.Fatalf("clone: %s/%s on %s isolated %v from %s", c.Project, c.Name, c.HostId, c.Isolated, c.Restore.GetPointId())
	}
	report(t, p, "h2", c.Id, statev1.VMPhase_VM_PHASE_RUNNING, false)
	r.Tick(ctx, time.Now())
	if c, _ := p.st.VMByID(c.Id); c.Desired != statev1.PowerState_POWER_STATE_DELETED {
		t.Fatalf("measured clone not being removed: %v", c.Desired)
	}
	e := runOf(t, p, run.Id).Vms[0]
	if e.Step != statev1.DRStep_DR_STEP_RUNNING || e.DataLossMillis < 30000 {
		t.Fatalf("entry %v, data loss %d", e.Step, e.DataLossMillis)
	}
	report(t, p, "h2", c.Id, statev1.VMPhase_VM_PHASE_UNSPECIFIED, true)
	r.Tick(ctx, time.Now())
	got := runOf(t, p, run.Id)
	if got.State != statev1.DRRunState_DR_RUN_STATE_SUCCEEDED || !got.ProductionUnchanged || got.Vms[0].Step != statev1.DRStep_DR_STEP_DONE {
		t.Fatalf("drill ended %v, production unchanged %v (%s), step %v", got.State, got.ProductionUnchanged, got.ProductionCheck, got.Vms[0].Step)
	}
	if _, ok := p.st.ProjectDepartment(drill); ok {
		t.Fatalf("drill project %s left behind", drill)
	}
	if vm, _ := p.st.VMByID("vm1"); vm.HostId != "h1" || vm.Restore != nil {
		t.Fatalf("the drill touched vm1: on %s", vm.HostId)
	}
}

// A platinum VM on a real hypervisor gets a mirror host in the same-city
// center; the host's export address reaches the VM's record, the VM's
// host reports the phase; a failover brings it up on the mirror host
// from the mirror (no data loss); a VM protected otherwise loses its
// mirror.
func TestPlatinumMirrorAndFailover(t *testing.T) {
	ctx := context.Background()
	p := &storeProposer{st: state.New()}
	for _, h := range []*statev1.HostRecord{
		{Id: "q1", Hostname: "q1", Center: "a1", Hypervisor: "QEMU 7.2.0", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 1 << 34, DiskBytes: 1 << 40}},
		{Id: "q2", Hostname: "q2", Center: "a2", Hypervisor: "QEMU 7.2.0", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 1 << 34, DiskBytes: 1 << 40}},
		{Id: "s2", Hostname: "s2", Center: "a2", Hypervisor: "TEST 9.0.0", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 1 << 34, DiskBytes: 1 << 40}},
	} {
		mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: h}}})
	}
	for _, m := range [][2]string{{"c-a2", "a2"}, {"c-b1", "b1"}} {
		mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{Member: &statev1.MemberRecord{Id: m[0], Center: m[1], ApiAddress: "127.0.0.1:1"}}}})
	}
	for _, c := range []*statev1.CenterRecord{
		{Name: "a1", Site: "a", Role: statev1.CenterRole_CENTER_ROLE_PRODUCTION},
		{Name: "a2", Site: "a", Role: statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR, RepositoryMember: "c-a2"},
		{Name: "b1", Site: "b", Role: statev1.CenterRole_CENTER_ROLE_REMOTE_DR, RepositoryMember: "c-b1"},
	} {
		mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_SetCenter{SetCenter: &statev1.SetCenter{Center: c}}})
	}
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: []*statev1.VMRecord{
		{Id: "vm1", Name: "vm1", Project: state.DefaultProject, Vcpus: 1, MemoryBytes: 1 << 30, DiskBytes: 1 << 30, HostId: "q1"}}}}})
	report(t, p, "q1", "vm1", statev1.VMPhase_VM_PHASE_RUNNING, false)
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_SetProtection{SetProtection: &statev1.SetProtection{Project: state.DefaultProject, VmId: "vm1", Policy: "platinum"}}})
	b := NewBackups(p, p.st, slog.New(slog.DiscardHandler))
	b.Tick(ctx, time.Now())
	vm, _ := p.st.VMByID("vm1")
	if vm.GetMirror().GetHostId() != "q2" {
		t.Fatalf("mirror host %q, want q2 (the real host of a2)", vm.GetMirror().GetHostId())
	}
	for _, j := range p.st.RunningJobsOnHost("q1") {
		if j.Center == "a2" {
			t.Fatalf("a backup job to the mirror center: %v", j)
		}
	}
	if len(p.st.MirrorsOn("q2")) != 1 {
		t.Fatal("q2 does not list the mirror it keeps")
	}
	// Before the export is served and mirroring, a failover would use a point.
	run, _, _ := PlanFailover(p.st, statev1.DRRunKind_DR_RUN_KIND_FAILOVER, "a1", "a2", "", time.Now())
	if run.Vms[0].Mirror {
		t.Fatal("planned from a mirror that is not mirroring")
	}
	// A report of the export by another host is ignored.
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: "s2",
		MirrorExports: []*statev1.MirrorExportReport{{VmId: "vm1", Address: "127.0.0.1:6666"}}}}})
	if vm, _ := p.st.VMByID("vm1"); vm.Mirror.Address != "" {
		t.Fatal("an export address from the wrong host was recorded")
	}
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: "q2",
		MirrorExports: []*statev1.MirrorExportReport{{VmId: "vm1", Address: "127.0.0.1:10809"}}}}})
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: "q1",
		Statuses: []*statev1.VMStatus{{VmId: "vm1", Phase: statev1.VMPhase_VM_PHASE_RUNNING, MirrorPhase: state.MirrorMirroring}}}}})
	vm, _ = p.st.VMByID("vm1")
	if vm.Mirror.Address != "127.0.0.1:10809" || vm.Mirror.Phase != state.MirrorMirroring || vm.Mirror.MirroringUnixNano == 0 {
		t.Fatalf("mirror state: %v", vm.Mirror)
	}
	run, _, err := PlanFailover(p.st, statev1.DRRunKind_DR_RUN_KIND_FAILOVER, "a1", "a2", "", time.Now())
	if err != nil || !run.Vms[0].Mirror || run.Vms[0].HostId != "q2" || run.Vms[0].DataLossMillis != 0 {
		t.Fatalf("plan: %v %v", run.GetVms(), err)
	}
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_StartDrRun{StartDrRun: &statev1.StartDRRun{Run: run}}})
	r := NewRecovery(p, p.st, placement.New(p, p.st, slog.New(slog.DiscardHandler)), slog.New(slog.DiscardHandler))
	r.Tick(ctx, time.Now())
	vm, _ = p.st.VMByID("vm1")
	if vm.HostId != "q2" || !vm.GetRestore().GetFromMirror() || vm.Mirror != nil {
		t.Fatalf("after failover: on %s, restore %v, mirror %v", vm.HostId, vm.Restore, vm.Mirror)
	}
	report(t, p, "q2", "vm1", statev1.VMPhase_VM_PHASE_RUNNING, false)
	r.Tick(ctx, time.Now())
	got := runOf(t, p, run.Id)
	if got.State != statev1.DRRunState_DR_RUN_STATE_SUCCEEDED || !got.Vms[0].Mirror || got.Vms[0].DataLossMillis != 0 {
		t.Fatalf("run: %v %v", got.State, got.Vms[0])
	}
	// Now in a2 (its policy's mirror center): no mirror is kept.
	b.Tick(ctx, time.Now())
	if vm, _ := p.st.VMByID("vm1"); vm.Mirror != nil || len(p.st.MirroredVMIDs()) != 0 {
		t.Fatalf("a VM in its mirror center has a mirror: %v", vm.Mirror)
	}
}
