package scheduler

import "strconv"

// Reason says why a host cannot take a request, phrased so a person knows
// what to change: "insufficient memory", "in maintenance",
// "dedicated to project x", "label cpu_model is not kunpeng920".
type Reason string

// Fit is the Reason a filter returns for a host that passes it.
const Fit Reason = ""

// Reasons with a fixed text. Others carry the detail in the text itself.
const (
	ReasonCPU    Reason = "insufficient vCPU"
	ReasonMemory Reason = "insufficient memory"
	ReasonDisk   Reason = "insufficient disk"
	// ReasonCenter: the request names a center (Request.Center) and the host
	// is in another one. The message adds the center: "not in center a1".
	ReasonCenter Reason = "not in center"
	// ReasonMaintenance, ReasonDraining and ReasonDown: only ready hosts
	// take new VMs.
	ReasonMaintenance Reason = "in maintenance"
	ReasonDraining    Reason = "draining"
	ReasonDown        Reason = "down"
)

// A filter rules out hosts that cannot take a request. Filters must not
// modify the host and must be deterministic.
//
// The filters other than the capacity ones read only what hosts of one
// class share (state, owner, location, labels; see index.go) or the host's
// ID (group members, host= constraints). The Cluster runs them once per
// class, on a stand-in host without an ID, which answers for every host of
// the class except those the ID matters for; those it judges one by one.
type filter struct {
	name     string
	capacity bool // reads the host's free capacity
	fn       func(d *decision, h *Host) Reason
}

// filters run in order; a host is reported under the first that rules it
// out. Cheap and decisive first: a host that is down or in the wrong center
// is reported as that, not as short of memory, which would send a person to
// resize the VM for nothing. CPU goes before memory because it is the
// dimension that runs out first in real traces.
var filters = []filter{
	{"State", false, stateFilter},
	{"Owner", false, ownerFilter},
	{"Center", false, centerFilter},
	{"Constraints", false, constraintFilter},
	{"GroupLocation", false, groupLocationFilter},
	{"GroupHost", false, groupHostFilter},
	{"Capacity", true, capacityFilter},
}

// stateFilter: only ready hosts take new VMs.
func stateFilter(_ *decision, h *Host) Reason {
	switch h.State {
	case HostReady:
		return Fit
	case HostMaintenance:
		return ReasonMaintenance
	case HostDraining:
		return ReasonDraining
	case HostDown:
		return ReasonDown
	}
	return Reason("in state " + h.State.String())
}

// ownerFilter: a dedicated host takes only its project's VMs. A project
// with dedicated hosts may still use shared ones.
func ownerFilter(d *decision, h *Host) Reason {
	if h.Owner != "" && h.Owner != d.req.Project {
		return Reason("dedicated to project " + h.Owner)
	}
	return Fit
}

// centerFilter: Request.Center, when set, names the only center allowed.
func centerFilter(d *decision, h *Host) Reason {
	if d.req.Center != "" && h.Center != d.req.Center {
		return ReasonCenter
	}
	return Fit
}

// constraintFilter: every constraint must match; the first that does not
// is the reason.
func constraintFilter(d *decision, h *Host) Reason {
	for i := range d.req.Constraints {
		if c := &d.req.Constraints[i]; !c.Match(h) {
			return c.reason()
		}
	}
	return Fit
}

// groupLocationFilter: a hard group at rack or center level.
// Anti-affinity rules out the racks (centers) that already hold a member;
// affinity, once there are members, rules out every other rack (center).
func groupLocationFilter(d *decision, h *Host) Reason {
	g := d.group
	if g == nil || !g.Hard || g.Level == LevelHost || g.total == 0 {
		return Fit
	}
	var here int
	var where string
	if g.Level == LevelRack {
		here, where = g.racks[rackOf(h)], "rack "+h.Rack
	} else {
		here, where = g.centers[h.Center], "center "+h.Center
	}
	if g.Affinity && here == 0 {
		return Reason("affinity: group " + g.Name + " is in another " + g.Level.String())
	}
	if !g.Affinity && here > 0 {
		return Reason("anti-affinity: group " + g.Name + " already has a member in " + where)
	}
	return Fit
}

// groupHostFilter: a hard group at host level, and MaxPerHost at any level
// and hardness. Anti-affinity rules out hosts with a member; affinity, once
// there are members, rules out every other host.
func groupHostFilter(d *decision, h *Host) Reason {
	g := d.group
	if g == nil {
		return Fit
	}
	n := g.members[h.ID]
	if g.Hard && g.Level == LevelHost && g.total > 0 {
		if g.Affinity && n == 0 {
			return Reason("affinity: group " + g.Name + " is on other hosts")
		}
		if !g.Affinity && n > 0 {
			return Reason("anti-affinity: group " + g.Name + " already has a member on this host")
		}
	}
	if g.MaxPerHost > 0 && n >= g.MaxPerHost {
		return Reason("max " + strconv.Itoa(g.MaxPerHost) + " per host reached")
	}
	return Fit
}

// capacityFilter: vCPU, memory and disk, in that order, against what is
// free after ratios and reservations.
func capacityFilter(d *decision, h *Host) Reason { return capacityReason(d.req.Resources, h.Free()) }

// capacityReason is the first resource need does not find in free: the
// capacity filter on a host, and on a bucket's free vector in explainIndex.
func capacityReason(need, free Resources) Reason {
	switch {
	case need.VCPUs > free.VCPUs:
		return ReasonCPU
	case need.MemoryBytes > free.MemoryBytes:
		return ReasonMemory
	case need.DiskBytes > free.DiskBytes:
		return ReasonDisk
	}
	return Fit
}

// reject runs every filter on h and returns the first Reason, or Fit.
func reject(d *decision, h *Host) Reason {
	for _, f := range filters {
		if r := f.fn(d, h); r != Fit {
			return r
		}
	}
	return Fit
}

// rejectPlacement runs every filter but the capacity ones.
func rejectPlacement(d *decision, h *Host) Reason {
	for _, f := range filters {
		if f.capacity {
			continue
		}
		if r := f.fn(d, h); r != Fit {
			return r
		}
	}
	return Fit
}

// rackKey identifies a rack: rack names repeat across sites and centers.
type rackKey struct{ center, site, rack string }

func rackOf(h *Host) rackKey { return rackKey{h.Center, h.Site, h.Rack} }
