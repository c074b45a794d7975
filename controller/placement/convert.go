package placement

import (
	"fmt"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// The scheduler decides with its own types; the state (and the log) keeps
// its own. These convert between them, one way for what the state knows
// about hosts and groups, both ways for constraints.

func schedResources(r state.Resources) scheduler.Resources {
	return scheduler.Resources{VCPUs: r.VCPUs, MemoryBytes: r.MemoryBytes, DiskBytes: r.DiskBytes}
}

func schedHostState(s statev1.HostState) scheduler.HostState {
	switch s {
	case statev1.HostState_HOST_STATE_MAINTENANCE:
		return scheduler.HostMaintenance
	case statev1.HostState_HOST_STATE_DRAINING:
		return scheduler.HostDraining
	case statev1.HostState_HOST_STATE_DOWN:
		return scheduler.HostDown
	}
	return scheduler.HostReady
}

// schedHost is f as the scheduler sees it. The labels map is shared (the
// state built it for this view and never changes it).
func schedHost(f *state.HostFacts) scheduler.Host {
	return scheduler.Host{
		ID: f.ID, Center: f.Center, Site: f.Site, Rack: f.Rack,
		Labels:    f.Labels,
		State:     schedHostState(f.State),
		Owner:     f.Owner,
		Capacity:  schedResources(f.Capacity),
		Reserved:  schedResources(f.Reserved),
		Ratios:    scheduler.Ratios{CPU: f.Ratios.CPU, Memory: f.Ratios.Memory, Disk: f.Ratios.Disk},
		Allocated: schedResources(f.Allocated),
	}
}

func schedLevel(l statev1.GroupLevel) scheduler.Level {
	switch l {
	case statev1.GroupLevel_GROUP_LEVEL_RACK:
		return scheduler.LevelRack
	case statev1.GroupLevel_GROUP_LEVEL_CENTER:
		return scheduler.LevelCenter
	}
	return scheduler.LevelHost
}

// schedGroup is g as the scheduler sees it (nil for nil).
func schedGroup(g *state.GroupFacts) *scheduler.Group {
	if g == nil {
		return nil
	}
	return &scheduler.Group{
		Name:       g.Name,
		Affinity:   g.Policy == statev1.GroupPolicy_GROUP_POLICY_AFFINITY,
		Level:      schedLevel(g.Level),
		Hard:       !g.Soft,
		MaxPerHost: g.MaxPerHost,
		Members:    g.Members,
	}
}

var toStateOp = map[scheduler.Op]statev1.ConstraintOp{
	scheduler.OpEq:    statev1.ConstraintOp_CONSTRAINT_OP_EQ,
	scheduler.OpNe:    statev1.ConstraintOp_CONSTRAINT_OP_NE,
	scheduler.OpIn:    statev1.ConstraintOp_CONSTRAINT_OP_IN,
	scheduler.OpNotIn: statev1.ConstraintOp_CONSTRAINT_OP_NOT_IN,
}

// stateConstraint is c as the log records it.
func stateConstraint(c scheduler.Constraint) *statev1.Constraint {
	return &statev1.Constraint{Key: c.Key, Op: toStateOp[c.Op], Values: append([]string(nil), c.Values...)}
}

// schedConstraint is a recorded constraint as the scheduler reads it.
func schedConstraint(c *statev1.Constraint) (scheduler.Constraint, error) {
	for op, sop := range toStateOp {
		if sop == c.GetOp() {
			return scheduler.Constraint{Key: c.GetKey(), Op: op, Values: append([]string(nil), c.GetValues()...)}, nil
		}
	}
	return scheduler.Constraint{}, fmt.Errorf("constraint on %q has unknown operator %d", c.GetKey(), int32(c.GetOp()))
}
