package api

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// A center whose loss leaves the voters without a majority is named;
// three voters in three centers warn of nothing.
func TestQuorumWarnings(t *testing.T) {
	for _, tc := range []struct {
		voters map[string]string
		want   []string
	}{
		{map[string]string{"c1": "a1", "c2": "a2", "c3": "b1"}, nil},
		{map[string]string{"c1": "a1", "c2": "a1", "c3": "b1"}, []string{"center a1 (2 of 3"}},
		{map[string]string{"c1": "a1", "c2": "a2", "c3": "b1", "c4": "b1"}, []string{"center b1 (2 of 4"}},
		{map[string]string{"c1": "a1"}, []string{"center a1 (1 of 1"}},
		{map[string]string{"c1": "", "c2": "", "c3": "b1"}, []string{"controllers with no center (2 of 3"}},
	} {
		got := quorumWarnings(tc.voters)
		if len(got) != len(tc.want) {
			t.Errorf("%v: %q, want %q", tc.voters, got, tc.want)
			continue
		}
		for i := range got {
			if !strings.Contains(got[i], tc.want[i]) {
				t.Errorf("%v: %q, want it to say %q", tc.voters, got[i], tc.want[i])
			}
		}
	}
}

// The achieved RPO is the age of the newest point; over the objective it
// is a violation, and so is a failed first backup.
func TestTargetStatus(t *testing.T) {
	now := time.Unix(10000, 0)
	tgt := &statev1.PolicyTarget{IntervalSeconds: 60}
	c := &statev1.CenterRecord{Name: "a2", Role: statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR}
	st := targetStatus(state.ProtectedTarget{Target: tgt, Center: c, Newest: &statev1.RestorePointRecord{Id: "rp-1", TakenUnixNano: now.Add(-45 * time.Second).UnixNano()}, Points: 3}, now)
	if st.AchievedRpoSeconds != 45 || st.Violation || st.RpoObjectiveSeconds != 60 || st.Points != 3 {
		t.Fatalf("45 s old: %v", st)
	}
	st = targetStatus(state.ProtectedTarget{Target: tgt, Center: c, Newest: &statev1.RestorePointRecord{Id: "rp-1", TakenUnixNano: now.Add(-61 * time.Second).UnixNano()}}, now)
	if !st.Violation {
		t.Fatalf("61 s old is no violation: %v", st)
	}
	st = targetStatus(state.ProtectedTarget{Target: tgt, Center: c}, now)
	if st.AchievedRpoSeconds != -1 || st.Violation {
		t.Fatalf("no point yet: %v", st)
	}
	st = targetStatus(state.ProtectedTarget{Target: tgt, Center: c, Job: &statev1.BackupJobRecord{State: statev1.BackupJobState_BACKUP_JOB_STATE_FAILED, Error: "disk gone", Attempts: 2}}, now)
	if !st.Violation || st.Job != "failed" || st.LastError != "disk gone" {
		t.Fatalf("failed first backup: %v", st)
	}
}

// RunBackup reads the running jobs, then proposes: the schedule may start
// one for the same VM and center in between, and Apply refuses a second.
// The handler decides again and answers with the center (the running
// backup will do), not "running already: retry" (CI met it in the
// README's block).
func TestRunBackupRacingTheSchedule(t *testing.T) {
	cmd := func(c any) *statev1.Command {
		switch c := c.(type) {
		case *statev1.RegisterHost:
			return &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: c}}
		case *statev1.SetCenter:
			return &statev1.Command{Cmd: &statev1.Command_SetCenter{SetCenter: c}}
		case *statev1.PlaceVMs:
			return &statev1.Command{Cmd: &statev1.Command_PlaceVms{PlaceVms: c}}
		case *statev1.ReportVMStatus:
			return &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: c}}
		case *statev1.SetProtection:
			return &statev1.Command{Cmd: &statev1.Command_SetProtection{SetProtection: c}}
		case *statev1.UpsertMember:
			return &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: c}}
		}
		panic("unknown command")
	}
	s, p, _ := newFakeServer(t,
		cmd(&statev1.RegisterHost{Host: &statev1.HostRecord{Id: "h1", Hostname: "h1", Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 1 << 34, DiskBytes: 1 << 40}}}),
		cmd(&statev1.UpsertMember{Member: &statev1.MemberRecord{Id: "c2", RaftAddress: "c2:7000", ApiAddress: "c2:8000", Center: "b1"}}),
		cmd(&statev1.SetCenter{Center: &statev1.CenterRecord{Name: "a1", Site: "a", Role: statev1.CenterRole_CENTER_ROLE_PRODUCTION}}),
		cmd(&statev1.SetCenter{Center: &statev1.CenterRecord{Name: "b1", Site: "b", Role: statev1.CenterRole_CENTER_ROLE_REMOTE_DR, RepositoryMember: "c2"}}),
		cmd(&statev1.PlaceVMs{Vms: []*statev1.VMRecord{{Id: "v1", Name: "ledger", Project: state.DefaultProject, Vcpus: 1, MemoryBytes: 1 << 30, DiskBytes: 1 << 30, HostId: "h1"}}}),
		cmd(&statev1.ReportVMStatus{HostId: "h1", Statuses: []*statev1.VMStatus{{VmId: "v1", Phase: statev1.VMPhase_VM_PHASE_RUNNING}}}),
		cmd(&statev1.SetProtection{Project: state.DefaultProject, VmId: "v1", Policy: "bronze"}),
	)
	raced := false
	p.before = func(st *state.Store, idx uint64, c *statev1.Command) uint64 {
		if c.GetStartBackups() == nil || raced {
			return idx
		}
		raced = true // the schedule's job is committed first
		sched := &statev1.Command{Version: state.CommandVersion, UnixNano: int64(idx) * 1000, Cmd: &statev1.Command_StartBackups{StartBackups: &statev1.StartBackups{
			Jobs: []*statev1.BackupJobRecord{{Id: "bj-0000000000000001", VmId: "v1", Center: "b1", HostId: "h1", Attempts: 1, Policy: "bronze"}}}}}
		if _, err := st.Apply(idx, sched); err != nil {
			t.Errorf("the schedule's job: %v", err)
		}
		return idx + 1
	}
	resp, err := s.RunBackup(context.Background(), &yunchiv1.RunBackupRequest{Vm: "ledger"})
	if err != nil || !raced || len(resp.GetCenters()) != 1 || resp.Centers[0] != "b1" {
		t.Fatalf("RunBackup racing the schedule: %v, %v (raced %v)", resp, err, raced)
	}
}
