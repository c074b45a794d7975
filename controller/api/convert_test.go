package api

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// The converters between the log's enums and the API's go by number; this
// holds them to the names: every value of each side has a value of the
// same name and number on the other. A value added to one side only, or
// renumbered, fails here instead of showing users the wrong state.
func TestEnumConvertersMatchByName(t *testing.T) {
	pairs := []struct{ log, api protoreflect.EnumDescriptor }{
		{statev1.HostState(0).Descriptor(), yunchiv1.HostState(0).Descriptor()},
		{statev1.PowerState(0).Descriptor(), yunchiv1.PowerState(0).Descriptor()},
		{statev1.VMPhase(0).Descriptor(), yunchiv1.VMPhase(0).Descriptor()},
		{statev1.GroupPolicy(0).Descriptor(), yunchiv1.GroupPolicy(0).Descriptor()},
		{statev1.GroupLevel(0).Descriptor(), yunchiv1.GroupLevel(0).Descriptor()},
	}
	for _, p := range pairs {
		for _, side := range [][2]protoreflect.EnumDescriptor{{p.log, p.api}, {p.api, p.log}} {
			vals := side[0].Values()
			for i := 0; i < vals.Len(); i++ {
				v := vals.Get(i)
				o := side[1].Values().ByNumber(v.Number())
				if o == nil || o.Name() != v.Name() {
					t.Errorf("%s.%s (%d) has no value of the same name and number in %s", side[0].FullName(), v.Name(), v.Number(), side[1].FullName())
				}
			}
		}
	}
	// And the functions do what the table says, both ways.
	if powerToAPI(statev1.PowerState_POWER_STATE_DELETED) != yunchiv1.PowerState_POWER_STATE_DELETED ||
		powerFromAPI(yunchiv1.PowerState_POWER_STATE_STOPPED) != statev1.PowerState_POWER_STATE_STOPPED ||
		phaseToAPI(statev1.VMPhase_VM_PHASE_DELETING) != yunchiv1.VMPhase_VM_PHASE_DELETING ||
		hostStateToAPI(statev1.HostState_HOST_STATE_DRAINING) != yunchiv1.HostState_HOST_STATE_DRAINING ||
		hostStateFromAPI(yunchiv1.HostState_HOST_STATE_MAINTENANCE) != statev1.HostState_HOST_STATE_MAINTENANCE ||
		levelFromAPI(yunchiv1.GroupLevel_GROUP_LEVEL_RACK) != statev1.GroupLevel_GROUP_LEVEL_RACK ||
		policyToAPI(statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY) != yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY {
		t.Error("an enum converter maps a value to another")
	}
}

// An agent's report reaches the log field for field. (That logs written
// while the state proto imported the API's types still decode is the
// replay tests' job: controller/raftnode/testdata.)
func TestStatusesFromAPI(t *testing.T) {
	st := statusesFromAPI([]*yunchiv1.VMStatus{{VmId: "v", Phase: yunchiv1.VMPhase_VM_PHASE_FAILED, Message: "m", ObservedRebootSeq: 3, Gone: true}})
	if len(st) != 1 || st[0].VmId != "v" || st[0].Phase != statev1.VMPhase_VM_PHASE_FAILED || st[0].Message != "m" || st[0].ObservedRebootSeq != 3 || !st[0].Gone {
		t.Errorf("statusesFromAPI: %v", st)
	}
}
