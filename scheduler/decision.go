package scheduler

// decision is what one placement decision knows besides the hosts: the
// request, its group's members as they stand (including members placed
// earlier in the same batch), and the scoring weights.
type decision struct {
	req      *Request
	group    *groupView // nil when the request has no group
	strategy Strategy
	w        weights
}

// groupView is a Group with its members resolved to locations. Member hosts
// the cluster does not know are ignored.
type groupView struct {
	*Group
	members map[string]int // host ID -> members there, known hosts only
	total   int            // members on known hosts
	racks   map[rackKey]int
	centers map[string]int
}

// softWeight is what a soft group rule is worth against packing: more than
// any difference in leftover (at most the sum of the weights, 3), so a soft
// rule is kept whenever some host allows it and only yields when none does.
const softWeight = 4.0

// softPenalty is the cost a soft group rule adds on a host with hostN
// members of the group, in a rack with rackN and a center with centerN.
// It is never negative, so it only ever pushes a host down the ranking.
func (g *groupView) softPenalty(hostN, rackN, centerN int) float64 {
	if g == nil || g.Hard || g.total == 0 {
		return 0
	}
	n := hostN
	switch g.Level {
	case LevelRack:
		n = rackN
	case LevelCenter:
		n = centerN
	}
	if g.Affinity {
		if n == 0 {
			return softWeight
		}
		return 0
	}
	return softWeight * float64(n)
}

// hostPenalty is softPenalty for one host.
func (g *groupView) hostPenalty(h *Host) float64 {
	if g == nil || g.Hard || g.total == 0 {
		return 0
	}
	return g.softPenalty(g.members[h.ID], g.racks[rackOf(h)], g.centers[h.Center])
}
