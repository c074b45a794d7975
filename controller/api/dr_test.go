package api

import (
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
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
