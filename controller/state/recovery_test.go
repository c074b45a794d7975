package state

import (
	"strings"
	"testing"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Bad DR run commands are refused with a message naming what is wrong,
// and change nothing.
func TestRecoveryCommandsBadInput(t *testing.T) {
	s := New()
	idx := uint64(0)
	apply := func(c *statev1.Command) error {
		idx++
		c.Version = CommandVersion
		_, err := s.Apply(idx, c)
		return err
	}
	for _, c := range []*statev1.CenterRecord{
		{Name: "a1", Site: "a", Role: statev1.CenterRole_CENTER_ROLE_PRODUCTION},
		{Name: "a2", Site: "a", Role: statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR},
	} {
		if err := apply(&statev1.Command{Cmd: &statev1.Command_SetCenter{SetCenter: &statev1.SetCenter{Center: c}}}); err != nil {
			t.Fatal(err)
		}
	}
	start := func(r *statev1.DRRunRecord) error {
		return apply(&statev1.Command{Cmd: &statev1.Command_StartDrRun{StartDrRun: &statev1.StartDRRun{Run: r}}})
	}
	fo := statev1.DRRunKind_DR_RUN_KIND_FAILOVER
	for _, tc := range []struct {
		run  *statev1.DRRunRecord
		want string
	}{
		{nil, "no run given"},
		{&statev1.DRRunRecord{Id: "x", Kind: fo, FromCenter: "a1", ToCenter: "a2"}, "want dr- and 16 hex digits"},
		{&statev1.DRRunRecord{Id: "dr-0123456789abcdef", Kind: fo, FromCenter: "zz", ToCenter: "a2"}, `center "zz" not found`},
		{&statev1.DRRunRecord{Id: "dr-0123456789abcdef", Kind: fo, FromCenter: "a1", ToCenter: "a1"}, "to itself"},
		{&statev1.DRRunRecord{Id: "dr-0123456789abcdef", FromCenter: "a1", ToCenter: "a2"}, "unknown kind"},
		{&statev1.DRRunRecord{Id: "dr-0123456789abcdef", Kind: fo, FromCenter: "a1", ToCenter: "a2", Vms: []*statev1.DRRunVM{{VmId: "nope"}}}, "not found"},
	} {
		err := start(tc.run)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("start %v: %v, want %q", tc.run, err, tc.want)
		}
	}
	if c, _ := s.Center("a1"); c.FencedBy != "" || len(s.DRRuns()) != 0 {
		t.Fatal("a refused run changed the state")
	}
	if err := apply(&statev1.Command{Cmd: &statev1.Command_UpdateDrRun{UpdateDrRun: &statev1.UpdateDRRun{Id: "dr-0000000000000000"}}}); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("update of an unknown run: %v", err)
	}
	if err := apply(&statev1.Command{Cmd: &statev1.Command_SetDrillSchedule{SetDrillSchedule: &statev1.SetDrillSchedule{Schedule: &statev1.DrillScheduleRecord{
		Id: "a1", Center: "a1", EverySeconds: 60}}}}); err == nil || !strings.Contains(err.Error(), "at least every hour") {
		t.Errorf("a drill every minute: %v", err)
	}
	// Policies: a mirror target has no interval; at most one.
	for _, tc := range []struct {
		targets []*statev1.PolicyTarget
		want    string
	}{
		{[]*statev1.PolicyTarget{{Role: statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR, Mirror: true, IntervalSeconds: 60}}, "a mirror target has no interval"},
		{[]*statev1.PolicyTarget{{Role: statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR, Mirror: true}, {Center: "a2", Mirror: true}}, "at most one mirror target"},
	} {
		err := CheckPolicy(&statev1.PolicyRecord{Name: "p", Targets: tc.targets}, func(string) bool { return true })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("policy %v: %v, want %q", tc.targets, err, tc.want)
		}
	}
	if err := CheckPolicy(&statev1.PolicyRecord{Name: "p", Targets: []*statev1.PolicyTarget{{Role: statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR, Mirror: true}}}, func(string) bool { return true }); err != nil {
		t.Errorf("a mirror-only policy: %v", err)
	}
}
