package sim

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/yunchi/yunchi/scheduler"
)

// Placer is what the harness drives: a decision, then the record of it.
// Hosts are named by their index in the cluster (see HostID).
type Placer interface {
	// Place decides where req goes: ok=false when nothing fits; err only
	// for something that is not "no room" (a bug, an invalid request).
	Place(req *Request) (host int, ok bool, err error)
	Allocate(host int, r scheduler.Resources) error
	Release(host int, r scheduler.Resources) error
}

// hostArray is the baselines' own state: free resources per host.
type hostArray struct {
	cap  scheduler.Resources
	free []scheduler.Resources
	// 1/capacity per scored dimension, for the normalised leftover.
	invCPU, invMem float64
}

func newHostArray(n int, shape scheduler.Resources) hostArray {
	a := hostArray{cap: shape, free: make([]scheduler.Resources, n),
		invCPU: 1 / float64(shape.VCPUs), invMem: 1 / float64(shape.MemoryBytes)}
	for i := range a.free {
		a.free[i] = shape
	}
	return a
}

// leftover is the baselines' score: normalised leftover CPU + memory after
// placing r on host h (lower is a tighter fit).
func (a *hostArray) leftover(h int, r scheduler.Resources) float64 {
	f := &a.free[h]
	return float64(f.VCPUs-r.VCPUs)*a.invCPU + float64(f.MemoryBytes-r.MemoryBytes)*a.invMem
}

func (a *hostArray) Allocate(h int, r scheduler.Resources) error {
	if h < 0 || h >= len(a.free) {
		return fmt.Errorf("no host %d", h)
	}
	a.free[h] = a.free[h].Sub(r)
	return nil
}

func (a *hostArray) Release(h int, r scheduler.Resources) error {
	if h < 0 || h >= len(a.free) {
		return fmt.Errorf("no host %d", h)
	}
	a.free[h] = a.free[h].Add(r)
	return nil
}

// BestFit is the plain full-scan best-fit baseline: every host is checked,
// the feasible host with the lowest normalised leftover CPU + memory wins,
// ties going to the lowest index.
type BestFit struct{ hostArray }

// NewBestFit returns the best-fit baseline over n hosts of shape.
func NewBestFit(n int, shape scheduler.Resources) *BestFit {
	return &BestFit{newHostArray(n, shape)}
}

func (b *BestFit) Place(req *Request) (int, bool, error) {
	r := req.Resources
	best, bestScore := -1, math.Inf(1)
	for h := range b.free {
		if !r.Fits(b.free[h]) {
			continue
		}
		if s := b.leftover(h, r); s < bestScore {
			best, bestScore = h, s
		}
	}
	return best, best >= 0, nil
}

// Sample is the sampling baseline: the best (BestFit's score) of k hosts
// sampled uniformly at random without replacement among the feasible ones,
// k = ceil(log2(H)) and at least 2, as Nomad does (it shuffles the nodes and
// scores the first log2(n) feasible ones). Exactly: a partial Fisher-Yates
// shuffle of a host permutation kept across decisions, drawing positions
// with math/rand/v2 (PCG seeded (seed, 0)) and stopping once k feasible
// hosts are drawn or every host has been drawn; ties go to the lowest index.
type Sample struct {
	hostArray
	k    int
	perm []int32
	rng  *rand.Rand
}

// SampleSize is k = max(2, ceil(log2(n))).
func SampleSize(n int) int {
	if n < 2 {
		return 2
	}
	return max(2, int(math.Ceil(math.Log2(float64(n)))))
}

// NewSample returns the sampling baseline over n hosts of shape.
func NewSample(n int, shape scheduler.Resources, seed uint64) *Sample {
	s := &Sample{hostArray: newHostArray(n, shape), k: SampleSize(n), perm: make([]int32, n),
		rng: rand.New(rand.NewPCG(seed, 0))}
	for i := range s.perm {
		s.perm[i] = int32(i)
	}
	return s
}

func (s *Sample) Place(req *Request) (int, bool, error) {
	r := req.Resources
	n := len(s.perm)
	best, bestScore, found := -1, math.Inf(1), 0
	for i := 0; i < n && found < s.k; i++ {
		j := i + s.rng.IntN(n-i)
		s.perm[i], s.perm[j] = s.perm[j], s.perm[i]
		h := int(s.perm[i])
		if !r.Fits(s.free[h]) {
			continue
		}
		found++
		if sc := s.leftover(h, r); sc < bestScore || (sc == bestScore && h < best) {
			best, bestScore = h, sc
		}
	}
	return best, best >= 0, nil
}
