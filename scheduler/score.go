package scheduler

import "math"

// weights are what a unit of normalised leftover costs in each dimension.
type weights struct{ cpu, mem, disk float64 }

func (w weights) sum() float64 { return w.cpu + w.mem + w.disk }

// leftover is the weighted normalised leftover of a host with free and
// allocatable after taking need: 0 when it is left exactly full, w.sum()
// when need is nothing and the host was empty.
func leftover(w weights, free, alloc, need Resources) float64 {
	return w.cpu*frac(free.VCPUs-need.VCPUs, alloc.VCPUs) +
		w.mem*frac(free.MemoryBytes-need.MemoryBytes, alloc.MemoryBytes) +
		w.disk*frac(free.DiskBytes-need.DiskBytes, alloc.DiskBytes)
}

func frac(n, of int64) float64 {
	if of <= 0 {
		return 0
	}
	return float64(n) / float64(of)
}

// shapeCost is what placing need on a host with free (of alloc) costs, lower
// being better: for Binpack the leftover plus the fragmentation term; for
// Spread minus the leftover.
func shapeCost(d *decision, free, alloc Resources) float64 {
	if d.strategy == Spread {
		return -leftover(d.w, free, alloc, d.req.Resources)
	}
	return leftover(d.w, free, alloc, d.req.Resources) + fragCost(d, free, alloc)
}

// fragCost is the Binpack fragmentation term; it is never negative.
func fragCost(d *decision, free, alloc Resources) float64 {
	return 0
}

// scoreOf maps a cost to a Placement score, 0 (worst) to MaxScore (best).
func scoreOf(d *decision, cost float64) int64 {
	s := d.w.sum()
	if s <= 0 {
		return 0
	}
	var v float64
	if d.strategy == Spread {
		v = -cost / s
	} else {
		v = 1 - cost/s
	}
	return int64(math.Round(MaxScore * min(max(v, 0), 1)))
}

// MaxScore is the best score a Placement carries.
const MaxScore = 100
