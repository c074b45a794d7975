package leader

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

func mustApplyP(t *testing.T, p *storeProposer, cmd *statev1.Command) state.Result {
	t.Helper()
	res, err := p.Apply(context.Background(), cmd)
	if err != nil {
		t.Fatalf("%T: %v", cmd.GetCmd(), err)
	}
	return res
}

// backupFixture: host h1 in a1 with VM vm1 (running) protected by gold;
// centers a1 (production), a2 (same-city DR, repository c-a2) and b1
// (remote DR, repository c-b1).
func backupFixture(t *testing.T) (*Backups, *storeProposer) {
	t.Helper()
	p := &storeProposer{st: state.New()}
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
		Id: "h1", Hostname: "h1", Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 1 << 34, DiskBytes: 1 << 40}}}}})
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
		{Id: "vm1", Name: "vm1", Project: state.DefaultProject, Vcpus: 1, MemoryBytes: 1 << 30, DiskBytes: 1 << 30, HostId: "h1"}}}}})
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: "h1",
		Statuses: []*statev1.VMStatus{{VmId: "vm1", Phase: statev1.VMPhase_VM_PHASE_RUNNING}}}}})
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_SetProtection{SetProtection: &statev1.SetProtection{Project: state.DefaultProject, VmId: "vm1", Policy: "gold"}}})
	return NewBackups(p, p.st, slog.New(slog.DiscardHandler)), p
}

func finish(t *testing.T, p *storeProposer, j *statev1.BackupJobRecord, taken time.Time) {
	t.Helper()
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_FinishBackup{FinishBackup: &statev1.FinishBackup{JobId: j.Id, Point: &statev1.RestorePointRecord{
		Id: NewPointID(), VmId: j.VmId, Center: j.Center, TakenUnixNano: taken.UnixNano(), DurationMillis: 1000,
		Disks: []*statev1.DiskPoint{{Name: "root", SizeBytes: 1 << 30, ManifestSha256: strings.Repeat("0", 64)}}}}}})
}

// A protected VM without points gets a job per target at once; one with
// a fresh point waits until the point is nearly an interval old; a failed
// job waits for its next attempt; a host that went down loses its jobs.
func TestBackupSchedule(t *testing.T) {
	b, p := backupFixture(t)
	now := time.Now()
	b.Tick(context.Background(), now)
	jobs := p.st.RunningJobsOnHost("h1")
	if len(jobs) != 2 || jobs[0].Center == jobs[1].Center {
		t.Fatalf("first tick: %v", jobs)
	}
	b.Tick(context.Background(), now) // running: nothing more
	if n := len(p.st.BackupJobs()); n != 2 {
		t.Fatalf("second tick made %d jobs", n)
	}
	for _, j := range jobs {
		finish(t, p, j, now)
	}
	b.Tick(context.Background(), now.Add(50*time.Second))
	if n := len(p.st.BackupJobs()); n != 0 {
		t.Fatalf("a point 50 s old started a job: %d", n)
	}
	// Gold's same-city interval is 60 s; the last backup took 1 s, so the
	// next starts 3 s early.
	b.Tick(context.Background(), now.Add(57*time.Second))
	js := p.st.RunningJobsOnHost("h1")
	if len(js) != 1 || js[0].Center != "a2" || js[0].BasePointId == "" {
		t.Fatalf("at 57 s: %v", js)
	}
	// A failure: retried after RetryAfter(1) = 30 s, not before.
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_FinishBackup{FinishBackup: &statev1.FinishBackup{JobId: js[0].Id, Error: "boom",
		NextUnixNano: now.Add(57*time.Second + RetryAfter(1)).UnixNano()}}})
	b.Tick(context.Background(), now.Add(80*time.Second))
	if len(p.st.RunningJobsOnHost("h1")) != 0 {
		t.Fatal("a failed job was retried before its time")
	}
	b.Tick(context.Background(), now.Add(88*time.Second))
	js = p.st.RunningJobsOnHost("h1")
	if len(js) != 1 || js[0].Attempts != 2 {
		t.Fatalf("retry: %v", js)
	}
	// The same-city point is 88 s old, over gold's 60 s: a violation event.
	if !b.violating["project/default/vm/vm1@a2"] || b.violating["project/default/vm/vm1@b1"] {
		t.Fatalf("violations: %v", b.violating)
	}
	// The host goes down: the job is given up, FAILED with why.
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: "h1", State: statev1.HostState_HOST_STATE_DOWN}}})
	b.Tick(context.Background(), now.Add(89*time.Second))
	j, ok := p.st.BackupJob(js[0].Id)
	if !ok || j.State != statev1.BackupJobState_BACKUP_JOB_STATE_FAILED || !strings.Contains(j.Error, "down") {
		t.Fatalf("host down: %v", j)
	}
	if d := RetryAfter(10); d != 30*time.Minute {
		t.Fatalf("backoff cap: %v", d)
	}
}

// Retention removes exactly what the VM's policy does not keep, and keeps
// a point a job builds on.
func TestBackupRetention(t *testing.T) {
	b, p := backupFixture(t)
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_CreatePolicy{CreatePolicy: &statev1.CreatePolicy{Policy: &statev1.PolicyRecord{Name: "last3",
		Targets: []*statev1.PolicyTarget{{Center: "a2", IntervalSeconds: 60, Retention: &statev1.RetentionRule{KeepLast: 3}}}}}}})
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_SetProtection{SetProtection: &statev1.SetProtection{Project: state.DefaultProject, VmId: "vm1", Policy: "last3"}}})
	base := time.Now().Add(-time.Hour)
	for i := 0; i < 6; i++ {
		mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_StartBackups{StartBackups: &statev1.StartBackups{Jobs: []*statev1.BackupJobRecord{{Id: NewJobID(), VmId: "vm1", Center: "a2", HostId: "h1", Policy: "last3"}}}}})
		finish(t, p, p.st.RunningJobsOnHost("h1")[0], base.Add(time.Duration(i)*time.Minute))
	}
	b.retain(context.Background())
	ps := p.st.RestorePointsOf("vm1", "a2")
	if len(ps) != 3 || ps[0].TakenUnixNano != base.Add(5*time.Minute).UnixNano() || ps[2].TakenUnixNano != base.Add(3*time.Minute).UnixNano() {
		t.Fatalf("kept %d: %v", len(ps), ps)
	}
}

// countingHosts is the store, counting its every-host reads.
type countingHosts struct {
	*state.Store
	hosts int
}

func (c *countingHosts) Hosts() []state.HostView {
	c.hosts++
	return c.Store.Hosts()
}

// TestTickReadsHostsOnlyForMirrors: a tick (every 500 ms) reads every
// host only when some VM's policy wants a mirror; without one it reads
// none (10,000 hosts were read and copied on every tick).
func TestTickReadsHostsOnlyForMirrors(t *testing.T) {
	_, p := backupFixture(t)
	view := &countingHosts{Store: p.st}
	b := NewBackups(p, view, slog.New(slog.DiscardHandler))
	b.Tick(context.Background(), time.Now())
	if view.hosts != 0 {
		t.Fatalf("a tick with gold protection only read every host %d time(s)", view.hosts)
	}
	mustApplyP(t, p, &statev1.Command{Cmd: &statev1.Command_SetProtection{SetProtection: &statev1.SetProtection{Project: state.DefaultProject, VmId: "vm1", Policy: "platinum"}}})
	b.Tick(context.Background(), time.Now())
	if view.hosts != 1 {
		t.Fatalf("a tick with a platinum VM read every host %d time(s), want 1 (to choose its mirror host)", view.hosts)
	}
}
