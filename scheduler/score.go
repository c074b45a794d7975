package scheduler

import "math"

// Scoring. A decision ranks the hosts that pass every filter by a cost,
// lowest first; ties go to the host ranked first by tieHash(seed, ID).
//
// Binpack's cost, on the leftover a host would have after taking the
// request (vCPU and memory as fractions of the host's Allocatable: lc, lm),
// is
//
//	lc + lm                                  fill hosts up (best fit)
//	+ Pc·max(0, lc - lm/ρ) + Pm·max(0, lm - lc·ρ)   what the leftover strands
//	+ soft group terms
//
// ρ is how much memory the cluster's VMs use per vCPU (both as fractions
// of capacity, cluster-wide): the mix future requests are likely to bring.
// A leftover of lc vCPU can only be used with about lc·ρ memory beside it;
// the vCPU beyond what the leftover memory can carry is stranded (and the
// reverse for memory). Stranding is weighted by how scarce the dimension is
// cluster-wide relative to the scarcest one (Pc = strandWeight·(uc/u)^k), so
// in a cluster that runs out of CPU first, stranded vCPU costs a lot and
// stranded memory little. Best fit alone packs bursts of memory-heavy VMs
// onto one host and leaves its vCPU stranded; on the Azure trace at 10,000
// hosts that ends packing at 99.5% of the fluid bound; with the strand term
// it reaches 100% (see the package doc).
//
// Spread's cost is minus the leftover: the host with the most room wins.

// Tunables, fixed after measuring on the Azure trace (bench/azure-replay.md).
// With strandPower 4, every strandWeight from 8 to 40 packs W1 to the fluid
// bound at 1,000, 5,000 and 10,000 hosts and leaves 138 free 16c/112g slots
// at the W2 peak; 10 sits inside that plateau. Lower powers make the
// figures jump about with the weight (W2 slots anywhere from 20 to 156), so
// they were not chosen, though some points beat 138.
const (
	strandWeight = 10.0
	strandPower  = 4.0
)

// weights are the cost factors of one decision, from the cluster totals.
type weights struct {
	cpu, mem float64 // per unit of normalised leftover
	pc, pm   float64 // per unit of stranded vCPU / memory (Binpack)
	ratio    float64 // ρ; 0 while nothing is allocated (no strand term)
	invRatio float64 // 1/ρ
}

func (w weights) sum() float64 { return w.cpu + w.mem }

// newWeights derives the weights from what is allocated (used) of what is
// allocatable (total) over the ready hosts.
func newWeights(used, total Resources) weights {
	w := weights{cpu: 1, mem: 1}
	uc, um := frac(used.VCPUs, total.VCPUs), frac(used.MemoryBytes, total.MemoryBytes)
	if uc > 0 && um > 0 {
		top := max(uc, um)
		w.ratio, w.invRatio = um/uc, uc/um
		w.pc = strandWeight * pow(uc/top, strandPower)
		w.pm = strandWeight * pow(um/top, strandPower)
	}
	return w
}

// pow is math.Pow with a fast path for small whole exponents.
func pow(x, y float64) float64 {
	if y == math.Trunc(y) && y >= 0 && y <= 8 {
		r := 1.0
		for range int(y) {
			r *= x
		}
		return r
	}
	return math.Pow(x, y)
}

func frac(n, of int64) float64 {
	if of <= 0 {
		return 0
	}
	return float64(n) / float64(of)
}

// shapeCost is what placing d's request on a host with free (of alloc)
// costs, before group terms; lower is better. Disk is not scored, only
// filtered (see index.go), so the cost depends on vCPU and memory alone.
func shapeCost(d *decision, free, alloc Resources) float64 {
	lc := frac(free.VCPUs-d.req.VCPUs, alloc.VCPUs)
	lm := frac(free.MemoryBytes-d.req.MemoryBytes, alloc.MemoryBytes)
	w := &d.w
	if d.strategy == Spread {
		return -(w.cpu*lc + w.mem*lm)
	}
	return w.cpu*lc + w.memCost(lc, lm)
}

// memCost is the part of the Binpack cost that varies with lm for a given
// lc: the memory leftover and both strand terms. It is convex in lm.
func (w *weights) memCost(lc, lm float64) float64 {
	c := w.mem * lm
	if w.ratio > 0 {
		c += w.pc*max(0, lc-lm*w.invRatio) + w.pm*max(0, lm-lc*w.ratio)
	}
	return c
}

// memCostFloor is the least memCost(lc, lm) over every lm >= from: the
// function is convex with its kink at lc·ρ, so the least is at from or at
// the kink.
func (w *weights) memCostFloor(lc, from float64) float64 {
	best := w.memCost(lc, from)
	if w.ratio > 0 {
		if k := lc * w.ratio; k > from {
			best = min(best, w.memCost(lc, k))
		}
	}
	return best
}

// memLeast is where memCost(lc, ·) is least over lm >= 0: at the kink lc·ρ
// when it falls until there (stranded vCPU costs more per unit than the
// memory leftover), else at 0.
func (w *weights) memLeast(lc float64) float64 {
	if w.ratio > 0 && w.mem-w.pc*w.invRatio < 0 {
		return lc * w.ratio
	}
	return 0
}

// scoreOf maps a cost to a Placement score, 0 (worst) to MaxScore (best),
// falling as the cost rises, so scores rank hosts as the decision did. For
// Binpack: 100 for a host left exactly full, 50 for an empty host taking
// almost nothing (cost = the weight sum), less for a leftover that strands
// capacity or breaks a soft group rule; the curve s/(s+cost) never flattens
// at 0, so even in an empty cluster the runners-up show how they compared.
// For Spread: 100 for an empty host taking almost nothing.
func scoreOf(d *decision, cost float64) int64 {
	s := d.w.sum()
	if s <= 0 {
		return 0
	}
	var v float64
	if d.strategy == Spread {
		v = -cost / s
	} else {
		v = s / (s + max(cost, 0))
	}
	return int64(math.Round(MaxScore * min(max(v, 0), 1)))
}

// MaxScore is the best score a Placement carries.
const MaxScore = 100
