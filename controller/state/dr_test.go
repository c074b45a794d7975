package state

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

const (
	prodRole   = statev1.CenterRole_CENTER_ROLE_PRODUCTION
	sameRole   = statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR
	remoteRole = statev1.CenterRole_CENTER_ROLE_REMOTE_DR
)

func setCenter(name, site string, role statev1.CenterRole, repo string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_SetCenter{SetCenter: &statev1.SetCenter{Center: &statev1.CenterRecord{
		Name: name, Site: site, Role: role, RepositoryMember: repo}}}}
}

func member(id, center string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{Member: &statev1.MemberRecord{Id: id, Center: center, ApiAddress: "127.0.0.1:1"}}}}
}

func protect(project, vmID, policy string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_SetProtection{SetProtection: &statev1.SetProtection{Project: project, VmId: vmID, Policy: policy}}}
}

func startJob(id, vm, center, host, base string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_StartBackups{StartBackups: &statev1.StartBackups{Jobs: []*statev1.BackupJobRecord{
		{Id: id, VmId: vm, Center: center, HostId: host, BasePointId: base, Policy: "gold"}}}}}
}

func finishJob(job, point, vm, center string, taken int64) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_FinishBackup{FinishBackup: &statev1.FinishBackup{JobId: job, Point: &statev1.RestorePointRecord{
		Id: point, VmId: vm, Center: center, TakenUnixNano: taken,
		Disks: []*statev1.DiskPoint{{Name: "root", SizeBytes: 10 * gib, ManifestSha256: strings.Repeat("ab", 32)}},
		Vm:    &statev1.PointVM{Name: "a1", Project: "air", Vcpus: 1, MemoryBytes: gib, DiskBytes: 10 * gib},
	}}}}
}

// drFixture: volumeFixture's hosts (h1, h2 in a1, h3 in b1) and VMs (a1
// on h1, a2 on h2, project air), controllers c-a1 in a1, c-a2 in a2, c-b1
// in b1, and the three centers declared with repositories. Indexes to 40.
func drFixture(t *testing.T) *Store {
	s := volumeFixture(t)
	mustApply(t, s, 30, member("c-a1", "a1"))
	mustApply(t, s, 31, member("c-a2", "a2"))
	mustApply(t, s, 32, member("c-b1", "b1"))
	mustApply(t, s, 33, setCenter("a1", "a", prodRole, ""))
	mustApply(t, s, 34, setCenter("a2", "a", sameRole, "c-a2"))
	mustApply(t, s, 35, setCenter("b1", "b", remoteRole, "c-b1"))
	return s
}

func TestCentersAndPolicies(t *testing.T) {
	s := drFixture(t)
	before := s.Snapshot()
	for _, bad := range []struct {
		cmd  *statev1.Command
		want string
	}{
		{setCenter("A1", "a", prodRole, ""), "center name"},
		{setCenter("a3", "", prodRole, ""), "site"},
		{setCenter("a3", "a", 0, ""), "role"},
		{setCenter("a3", "a", sameRole, "nobody"), "not a member"},
		{setCenter("a1", "a", prodRole, "c-b1"), "is in center \"b1\""},
		{&statev1.Command{Cmd: &statev1.Command_DeleteCenter{DeleteCenter: &statev1.DeleteCenter{Name: "a1"}}}, "still has hosts"},
		{&statev1.Command{Cmd: &statev1.Command_CreatePolicy{CreatePolicy: &statev1.CreatePolicy{Policy: &statev1.PolicyRecord{Name: "gold",
			Targets: []*statev1.PolicyTarget{{Role: sameRole, IntervalSeconds: 60, Retention: &statev1.RetentionRule{KeepLast: 1}}}}}}}, "built in"},
		{&statev1.Command{Cmd: &statev1.Command_CreatePolicy{CreatePolicy: &statev1.CreatePolicy{Policy: &statev1.PolicyRecord{Name: "p",
			Targets: []*statev1.PolicyTarget{{Center: "zz", IntervalSeconds: 60, Retention: &statev1.RetentionRule{KeepLast: 1}}}}}}}, "not declared"},
		{&statev1.Command{Cmd: &statev1.Command_CreatePolicy{CreatePolicy: &statev1.CreatePolicy{Policy: &statev1.PolicyRecord{Name: "p",
			Targets: []*statev1.PolicyTarget{{Center: "b1", IntervalSeconds: 5, Retention: &statev1.RetentionRule{KeepLast: 1}}}}}}}, "interval"},
		{&statev1.Command{Cmd: &statev1.Command_CreatePolicy{CreatePolicy: &statev1.CreatePolicy{Policy: &statev1.PolicyRecord{Name: "p",
			Targets: []*statev1.PolicyTarget{{Center: "b1", IntervalSeconds: 60}}}}}}, "keep at least one"},
		{&statev1.Command{Cmd: &statev1.Command_CreatePolicy{CreatePolicy: &statev1.CreatePolicy{Policy: &statev1.PolicyRecord{Name: "p",
			Targets: []*statev1.PolicyTarget{{Role: prodRole, IntervalSeconds: 60, Retention: &statev1.RetentionRule{KeepLast: 1}}}}}}}, "DR role"},
		{protect("air", "", "diamond"), "not found"},
		{protect("nope", "", "gold"), "project \"nope\" not found"},
		{protect("air", "zz", "gold"), "not found"},
		{&statev1.Command{Cmd: &statev1.Command_DeletePolicy{DeletePolicy: &statev1.DeletePolicy{Name: "silver"}}}, "built in"},
	} {
		_, err := apply(t, s, 40, bad.cmd)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%v: err %v, want %q", bad.cmd.GetCmd(), err, bad.want)
		}
		unchanged(t, s, before)
	}
	mustApply(t, s, 41, &statev1.Command{Cmd: &statev1.Command_CreatePolicy{CreatePolicy: &statev1.CreatePolicy{Policy: &statev1.PolicyRecord{Name: "remote-only",
		Targets: []*statev1.PolicyTarget{{Center: "b1", IntervalSeconds: 600, Retention: &statev1.RetentionRule{KeepLast: 3}}}}}}})
	if p, ok := s.Policy("remote-only"); !ok || p.RpoSeconds != 600 || p.Builtin {
		t.Fatalf("custom policy: %v", p)
	}
	if ps := s.Policies(); len(ps) != 5 || ps[0].Name != "platinum" || ps[4].Name != "remote-only" {
		t.Fatalf("policies: %v", ps)
	}
	// Project protection is inherited; a VM's own wins.
	mustApply(t, s, 42, protect("air", "", "silver"))
	mustApply(t, s, 43, protect("air", "a1", "gold"))
	a1, _ := s.VMByID("a1")
	a2, _ := s.VMByID("a2")
	if p, src := s.EffectivePolicy(a1); p != "gold" || src != "vm" {
		t.Fatalf("a1: %s %s", p, src)
	}
	if p, src := s.EffectivePolicy(a2); p != "silver" || src != "project" {
		t.Fatalf("a2: %s %s", p, src)
	}
	pv := s.ProtectedVMs("air")
	if len(pv) != 2 || len(pv[0].Targets) != 2 || pv[0].Targets[0].Center.Name != "a2" || pv[0].Targets[1].Center.Name != "b1" {
		t.Fatalf("protected: %+v", pv)
	}
	if _, err := apply(t, s, 44, setCenter("b1", "b", remoteRole, "")); err != nil {
		t.Fatalf("a center without points may drop its repository: %v", err)
	}
	// In use: not deleted.
	mustApply(t, s, 45, protect("air", "a2", "remote-only"))
	if _, err := apply(t, s, 46, &statev1.Command{Cmd: &statev1.Command_DeletePolicy{DeletePolicy: &statev1.DeletePolicy{Name: "remote-only"}}}); err == nil || !strings.Contains(err.Error(), "protects 1 VM") {
		t.Fatalf("delete in use: %v", err)
	}
	if _, err := apply(t, s, 47, &statev1.Command{Cmd: &statev1.Command_DeleteCenter{DeleteCenter: &statev1.DeleteCenter{Name: "a2"}}}); err != nil {
		t.Fatalf("delete an empty center: %v", err)
	}
}

func TestBackupJobsAndPoints(t *testing.T) {
	s := drFixture(t)
	mustApply(t, s, 40, protect("air", "a1", "gold"))
	before := s.Snapshot()
	for _, bad := range []struct {
		cmd  *statev1.Command
		want string
	}{
		{startJob("j1", "a1", "a2", "h2", ""), "on host \"h1\" now"},
		{startJob("j1", "a1", "a1", "h1", ""), "no backup repository"},
		{startJob("j1", "zz", "a2", "h1", ""), "vm not found"},
		{startJob("j1", "a1", "a2", "h1", "rp-x"), "base point"},
		{finishJob("j9", "rp-1", "a1", "a2", 1), "not running"},
	} {
		if _, err := apply(t, s, 41, bad.cmd); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%v: err %v, want %q", bad.cmd.GetCmd(), err, bad.want)
		}
		unchanged(t, s, before)
	}
	rev := s.HostRevision("h1")
	mustApply(t, s, 42, startJob("j1", "a1", "a2", "h1", ""))
	if s.HostRevision("h1") == rev {
		t.Fatal("a job did not move its host's revision (the agent would not hear of it)")
	}
	if js := s.RunningJobsOnHost("h1"); len(js) != 1 || js[0].Id != "j1" || js[0].StartedUnixNano != 42000 {
		t.Fatalf("jobs on h1: %v", js)
	}
	if _, err := apply(t, s, 43, startJob("j2", "a1", "a2", "h1", "")); err == nil || !strings.Contains(err.Error(), "running already") {
		t.Fatalf("second job: %v", err)
	}
	// A failure keeps the job, FAILED, until the next attempt replaces it.
	mustApply(t, s, 44, &statev1.Command{Cmd: &statev1.Command_FinishBackup{FinishBackup: &statev1.FinishBackup{JobId: "j1", Error: "disk gone", NextUnixNano: 99}}})
	if j, _ := s.BackupJob("j1"); j.State != statev1.BackupJobState_BACKUP_JOB_STATE_FAILED || j.Error != "disk gone" || j.NextUnixNano != 99 {
		t.Fatalf("failed job: %v", j)
	}
	if js := s.RunningJobsOnHost("h1"); len(js) != 0 {
		t.Fatalf("a failed job is still assigned: %v", js)
	}
	mustApply(t, s, 45, startJob("j2", "a1", "a2", "h1", ""))
	if _, ok := s.BackupJob("j1"); ok {
		t.Fatal("the failed job was not replaced")
	}
	res := mustApply(t, s, 46, finishJob("j2", "rp-1", "a1", "a2", 45500))
	if p := res.RestorePoint; p == nil || p.RecordedUnixNano != 46000 || p.HostId != "h1" || p.Policy != "gold" {
		t.Fatalf("point: %v", p)
	}
	if _, ok := s.BackupJob("j2"); ok {
		t.Fatal("a finished job stayed")
	}
	if !s.HostMayReadPoint("h1", "rp-1") || s.HostMayReadPoint("h2", "rp-1") {
		t.Fatal("HostMayReadPoint: only the VM's host may read its point")
	}
	// A restored VM on h3 may read it too, and PlaceVMs checks what it records.
	p, _ := s.RestorePoint("rp-1")
	vm := projVM("r1", "r1", "air", "h3", 1, gib, 10*gib)
	vm.Restore = &statev1.RestoreSource{PointId: "rp-1", Center: "a2", Disks: p.Disks, SourceVmId: "a1"}
	bad := proto.Clone(vm).(*statev1.VMRecord)
	bad.DiskBytes = 20 * gib
	if _, err := apply(t, s, 47, placeMany(bad)); err == nil || !strings.Contains(err.Error(), "root disk has") {
		t.Fatalf("restore with a wrong disk size: %v", err)
	}
	mustApply(t, s, 48, placeMany(vm))
	if !s.HostMayReadPoint("h3", "rp-1") {
		t.Fatal("the restoring host may not read its point")
	}
	if r, _ := s.VMByID("r1"); r.RestoredFrom != "rp-1" || r.Restore == nil {
		t.Fatalf("restored vm: %v", r)
	}
	// Still being built (pending): the source stays. Once the host reports
	// the domain running, the disk is the VM's: the source goes (a domain
	// defined again later is not rebuilt from the point), the record of it
	// stays.
	mustApply(t, s, 49, &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: "h3",
		Statuses: []*statev1.VMStatus{{VmId: "r1", Phase: statev1.VMPhase_VM_PHASE_PENDING, Message: "restoring"}}}}})
	if r, _ := s.VMByID("r1"); r.Restore == nil {
		t.Fatal("the restore source went before the disk was built")
	}
	mustApply(t, s, 50, &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: "h3",
		Statuses: []*statev1.VMStatus{{VmId: "r1", Phase: statev1.VMPhase_VM_PHASE_RUNNING}}}}})
	if r, _ := s.VMByID("r1"); r.Restore != nil || r.RestoredFrom != "rp-1" {
		t.Fatalf("after running: %v", r)
	}
	if s.HostMayReadPoint("h3", "rp-1") {
		t.Fatal("a host may read the point after its restore is done")
	}
	// Snapshots carry it all.
	s2 := New()
	if err := s2.Restore(overWire(t, s.Snapshot())); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(s.Snapshot(), s2.Snapshot()) {
		t.Fatal("snapshot round trip differs")
	}
	// Deleting the VM drops its jobs, keeps its points.
	mustApply(t, s, 51, startJob("j3", "a1", "b1", "h1", ""))
	mustApply(t, s, 52, &statev1.Command{Cmd: &statev1.Command_SetVmDesired{SetVmDesired: &statev1.SetVMDesired{VmId: "a1", Desired: statev1.PowerState_POWER_STATE_DELETED}}})
	mustApply(t, s, 53, &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: "h1",
		Statuses: []*statev1.VMStatus{{VmId: "a1", Gone: true}}}}})
	if _, ok := s.VMByID("a1"); ok {
		t.Fatal("the VM was not removed")
	}
	if _, ok := s.BackupJob("j3"); ok {
		t.Fatal("a deleted VM's job stayed")
	}
	if ps := s.RestorePointsOf("a1", ""); len(ps) != 1 {
		t.Fatalf("a deleted VM's points: %v", ps)
	}
}

func TestKeptPoints(t *testing.T) {
	const hour = int64(3600e9)
	var ps []*statev1.RestorePointRecord
	// 48 hourly points and, in the newest hour, 5 more a minute apart.
	for h := int64(0); h < 48; h++ {
		ps = append(ps, &statev1.RestorePointRecord{Id: "h" + string(rune('A'+h%26)) + string(rune('a'+h/26)), TakenUnixNano: 100*24*hour + h*hour})
	}
	for m := int64(1); m <= 5; m++ {
		ps = append(ps, &statev1.RestorePointRecord{Id: "m" + string(rune('0'+m)), TakenUnixNano: 100*24*hour + 47*hour + m*60e9})
	}
	keep, drop := KeptPoints(ps, &statev1.RetentionRule{KeepHourly: 24, KeepDaily: 7})
	// Hourly: the newest of each of the newest 24 hours, 24-47 (hour 47's
	// newest is m5): all of day 101. Daily: the newest of day 101 (m5
	// again) and of day 100 (hour 23). So 25 points.
	if len(keep) != 25 || len(keep)+len(drop) != len(ps) {
		t.Fatalf("kept %d, dropped %d", len(keep), len(drop))
	}
	if keep[0].Id != "m5" {
		t.Fatalf("newest kept: %s", keep[0].Id)
	}
	keep, _ = KeptPoints(ps, &statev1.RetentionRule{KeepLast: 3})
	if len(keep) != 3 || keep[2].Id != "m3" {
		t.Fatalf("keep-last 3: %v", keep)
	}
	keep, _ = KeptPoints(ps, &statev1.RetentionRule{KeepDaily: 7})
	if len(keep) != 2 {
		t.Fatalf("keep-daily over 2 days: %d", len(keep))
	}
	keep, _ = KeptPoints(ps, &statev1.RetentionRule{})
	if len(keep) != 1 {
		t.Fatalf("the newest is always kept: %d", len(keep))
	}
}

// TestProtectedVMsIndex: the protected VMs come from an index kept by
// every change that can protect or unprotect a VM (its own policy, its
// project's, the VM going), and by a restore; it always answers what a
// look at every VM would.
func TestProtectedVMsIndex(t *testing.T) {
	s := drFixture(t)
	check := func(what string, st *Store, want ...string) {
		t.Helper()
		var scan []string
		for _, vm := range st.VMs("", "") {
			if p, _ := st.EffectivePolicy(vm); p != "" && vm.Desired != statev1.PowerState_POWER_STATE_DELETED {
				scan = append(scan, vm.Id)
			}
		}
		var got []string
		for _, p := range st.ProtectedVMs("") {
			got = append(got, p.VM.Id)
		}
		slices.Sort(scan)
		slices.Sort(got)
		if !slices.Equal(got, want) || !slices.Equal(scan, want) {
			t.Fatalf("%s: ProtectedVMs %v, every VM looked at %v, want %v", what, got, scan, want)
		}
	}
	check("nothing protected", s)
	mustApply(t, s, 41, protect("air", "", "silver"))
	check("project protected", s, "a1", "a2")
	mustApply(t, s, 42, protect("air", "a1", "gold"))
	mustApply(t, s, 43, protect("air", "", ""))
	check("project unprotected, a1 by its own", s, "a1")
	snap := s.Snapshot()
	r := New()
	if err := r.Restore(overWire(t, snap)); err != nil {
		t.Fatal(err)
	}
	check("restored", r, "a1")
	mustApply(t, s, 44, protect("air", "a1", ""))
	check("a1 unprotected", s)
	mustApply(t, s, 45, protect("air", "", "gold"))
	mustApply(t, s, 46, desired("a2", statev1.PowerState_POWER_STATE_DELETED, false))
	check("a2 being deleted", s, "a1")
}
