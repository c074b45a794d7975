package state

import (
	"slices"
	"strings"
	"testing"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// The raft log's format must not depend on the public API: a field renamed
// there must not change how an old log decodes.
func TestStateProtoImportsNothing(t *testing.T) {
	imps := statev1.File_yunchi_state_v1_state_proto.Imports()
	for i := 0; i < imps.Len(); i++ {
		if strings.HasPrefix(imps.Get(i).Path(), "yunchi/state/v1/") {
			continue
		}
		t.Errorf("proto/yunchi/state/v1 imports %s: the log format must stand on its own", imps.Get(i).Path())
	}
}

func rule(key string, op statev1.ConstraintOp, vals ...string) *statev1.Constraint {
	return &statev1.Constraint{Key: key, Op: op, Values: vals}
}

// Apply re-checks structured constraints (version 4) and the text ones of
// older commands by the same rules, against the host at apply time.
func TestPlaceRechecksConstraints(t *testing.T) {
	eq, ne, in, notin := statev1.ConstraintOp_CONSTRAINT_OP_EQ, statev1.ConstraintOp_CONSTRAINT_OP_NE, statev1.ConstraintOp_CONSTRAINT_OP_IN, statev1.ConstraintOp_CONSTRAINT_OP_NOT_IN
	for _, tt := range []struct {
		name  string
		rules []*statev1.Constraint
		text  []string
		want  Kind // 0: placed
	}{
		{"rack matches", []*statev1.Constraint{rule("rack", eq, "r1")}, nil, 0},
		{"rack differs", []*statev1.Constraint{rule("rack", eq, "r2")}, nil, KindConflict},
		{"center in", []*statev1.Constraint{rule("center", in, "b1", "a1")}, nil, 0},
		{"center notin", []*statev1.Constraint{rule("center", notin, "a1")}, nil, KindConflict},
		{"missing label ne", []*statev1.Constraint{rule("gpu", ne, "a100")}, nil, 0},
		{"missing label eq", []*statev1.Constraint{rule("gpu", eq, "a100")}, nil, KindConflict},
		{"label from admin", []*statev1.Constraint{rule("tier", eq, "gold")}, nil, 0},
		{"host field", []*statev1.Constraint{rule("host", eq, "h1")}, nil, 0},
		{"no operator", []*statev1.Constraint{rule("rack", statev1.ConstraintOp_CONSTRAINT_OP_UNSPECIFIED, "r1")}, nil, KindInvalid},
		{"eq with two values", []*statev1.Constraint{rule("rack", eq, "r1", "r2")}, nil, KindInvalid},
		{"empty value", []*statev1.Constraint{rule("rack", in, "r1", "")}, nil, KindInvalid},
		{"legacy text matches", nil, []string{"rack=r1", "center in a1,b1"}, 0},
		{"legacy text differs", nil, []string{"rack!=r1"}, KindConflict},
		{"legacy text malformed", nil, []string{"rack ~ r1"}, KindInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := threeHosts(t)
			mustApply(t, s, 10, updateHost(&statev1.UpdateHost{HostId: "h1", SetLabels: map[string]string{"tier": "gold"}}))
			before := s.Snapshot()
			vm := vmRec("i1", "v1", "h1", "", 1, gib)
			vm.ConstraintRules, vm.Constraints = tt.rules, tt.text
			res, err := apply(t, s, 11, placeMany(vm))
			if KindOf(err) != tt.want || (tt.want == 0) != (err == nil) {
				t.Fatalf("placed with %v %v: %v, want kind %v", tt.rules, tt.text, err, tt.want)
			}
			if err != nil {
				unchanged(t, s, before)
				return
			}
			if len(res.VMs) != 1 || !slices.Equal(ConstraintTexts(res.VMs[0]), ConstraintTexts(vm)) {
				t.Fatalf("result %v", res.VMs)
			}
		})
	}
}

func TestConstraintTextsRoundTrip(t *testing.T) {
	for _, s := range []string{"rack=r1", "rack!=r3", "center in a1,a2", "center notin b1", "cpu_model=kunpeng920"} {
		c, err := parseLegacyConstraint(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if got := FormatConstraint(c); got != s {
			t.Errorf("%s formats as %s", s, got)
		}
	}
	vm := &statev1.VMRecord{Constraints: []string{"rack!=r3"}, ConstraintRules: []*statev1.Constraint{rule("center", statev1.ConstraintOp_CONSTRAINT_OP_IN, "a1", "a2")}}
	if got := ConstraintTexts(vm); !slices.Equal(got, []string{"rack!=r3", "center in a1,a2"}) {
		t.Errorf("texts %v", got)
	}
	cs, err := ConstraintsOf(vm)
	if err != nil || len(cs) != 2 || cs[0].Op != statev1.ConstraintOp_CONSTRAINT_OP_NE || cs[1].Key != "center" {
		t.Errorf("constraints %v %v", cs, err)
	}
}

// Every command kind fills the Result field documented on Result, and no
// other; a repeated request id returns the same Result.
func TestTypedResults(t *testing.T) {
	s := threeHosts(t)
	f := func(v float64) *float64 { return &v }
	type fields struct{ vms, host, ratio, group, member int }
	count := func(r Result) fields {
		b := func(ok bool) int {
			if ok {
				return 1
			}
			return 0
		}
		return fields{len(r.VMs), b(r.Host != nil), b(r.Ratio != nil), b(r.Group != nil), b(r.Member != nil)}
	}
	steps := []struct {
		name string
		cmd  *statev1.Command
		want fields
	}{
		{"RegisterHost", regHost("h4", "a1", 8, 16*gib, 100*gib), fields{host: 1}},
		{"SetHostState", &statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: "h4", State: statev1.HostState_HOST_STATE_DOWN}}}, fields{host: 1}},
		{"UpdateHost", updateHost(&statev1.UpdateHost{HostId: "h1", SetLabels: map[string]string{"a": "b"}}), fields{host: 1}},
		{"SetRatios", setRatios(&statev1.SetRatios{Scope: ScopeCenter, Name: "a1", Cpu: f(2)}), fields{ratio: 1}},
		{"CreatePlacementGroup", createGroup("g", statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY, 0, false, 0), fields{group: 1}},
		{"PlaceVMs one", placeMany(vmRec("i1", "v1", "h1", "g", 1, gib)), fields{vms: 1}},
		{"PlaceVMs batch", placeMany(vmRec("i2", "v2", "h2", "", 1, gib), vmRec("i3", "v3", "h2", "", 1, gib)), fields{vms: 2}},
		{"PlaceVM (old logs)", place("i4", "v4", "h3", 1, gib), fields{vms: 1}},
		{"SetVMDesired", desired("i1", statev1.PowerState_POWER_STATE_DELETED, false), fields{vms: 1}},
		{"ReportVMStatus", report("h1", &statev1.VMStatus{VmId: "i1", Gone: true}), fields{}},
		{"DeletePlacementGroup", deleteGroup("g"), fields{group: 1}},
		{"UpsertMember", &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{Member: &statev1.MemberRecord{Id: "c1"}}}}, fields{member: 1}},
		{"RemoveMember", &statev1.Command{Cmd: &statev1.Command_RemoveMember{RemoveMember: &statev1.RemoveMember{Id: "c1"}}}, fields{}},
		{"RecordHeartbeats", &statev1.Command{Cmd: &statev1.Command_RecordHeartbeats{RecordHeartbeats: &statev1.RecordHeartbeats{}}}, fields{}},
	}
	for i, st := range steps {
		id := "req-" + st.name
		res := mustApply(t, s, uint64(20+2*i), withID(st.cmd, id, st.name))
		if got := count(res); got != st.want {
			t.Errorf("%s: result fills %+v, want %+v", st.name, got, st.want)
		}
		again, err := apply(t, s, uint64(21+2*i), withID(st.cmd, id, st.name))
		if err != nil || count(again) != st.want {
			t.Errorf("%s repeated: %+v %v, want the first result", st.name, count(again), err)
		}
	}
}
