package scheduler

import (
	"math"
	"testing"
)

func TestShapeCostBinpack(t *testing.T) {
	alloc := standard
	req := Request{Resources: Resources{8, 32 * GiB, 40 * GiB}}
	// Before anything is allocated the strand term is off: plain best fit.
	d := &decision{req: &req, w: newWeights(Resources{}, Resources{})}
	for _, tc := range []struct {
		name string
		free Resources
		want float64
	}{
		{"left exactly full", Resources{8, 32 * GiB, 40 * GiB}, 0},
		{"empty host", alloc, 56.0/64 + 224.0/256},
		{"half left", Resources{40, 160 * GiB, TiB}, 0.5 + 0.5},
		{"disk is not scored", Resources{8, 32 * GiB, 4 * TiB}, 0},
	} {
		if got := shapeCost(d, tc.free, alloc); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("%s: cost %v, want %v", tc.name, got, tc.want)
		}
	}
	if s := scoreOf(d, 0); s != MaxScore {
		t.Errorf("score of a perfect fit = %d", s)
	}
	if s := scoreOf(d, 2); s != MaxScore/2 {
		t.Errorf("score of an empty host taking nothing = %d, want %d", s, MaxScore/2)
	}
	if a, b := scoreOf(d, 2), scoreOf(d, 6); !(a > b && b > 0) {
		t.Errorf("a leftover that strands capacity (cost 6) scores %d, want below the empty host's %d and above 0", b, a)
	}
}

// TestStrandTerm: in a cluster short of CPU (90% of vCPU, 45% of memory
// allocated), a leftover that keeps vCPU without memory to use it costs
// more than one that keeps both, though best fit alone prefers it.
func TestStrandTerm(t *testing.T) {
	total := Resources{6400, 25600 * GiB, 0}
	w := newWeights(Resources{5760, 11520 * GiB, 0}, total)
	if math.Abs(w.ratio-0.5) > 1e-12 || w.pc != strandWeight || w.pm >= w.pc/10 {
		t.Fatalf("weights %+v: want ρ 0.5, full weight on stranded vCPU, little on memory", w)
	}
	req := Request{Resources: Resources{8, 56 * GiB, 40 * GiB}}
	d := &decision{req: &req, w: w}
	// A host that would be left with 32 vCPU and 32 GiB: memory runs out
	// with 16 vCPU beyond what ρ says 32 GiB can carry.
	stranding := shapeCost(d, Resources{40, 88 * GiB, TiB}, standard)
	// An empty host: leaves 56 vCPU and 200 GiB, a usable mix.
	empty := shapeCost(d, standard, standard)
	if !(stranding > empty) {
		t.Errorf("stranding host costs %v, empty host %v: want the empty host preferred", stranding, empty)
	}
	d.w.pc, d.w.pm = 0, 0 // best fit alone
	if !(shapeCost(d, Resources{40, 88 * GiB, TiB}, standard) < shapeCost(d, standard, standard)) {
		t.Error("best fit alone should prefer the fuller host")
	}
}

// TestMemCostFloor: the floor is never above the cost at or beyond the
// point it is taken from (the bound the index search relies on).
func TestMemCostFloor(t *testing.T) {
	for _, w := range []weights{
		newWeights(Resources{90, 45, 0}, Resources{100, 100, 0}),
		newWeights(Resources{20, 80, 0}, Resources{100, 100, 0}),
		newWeights(Resources{}, Resources{100, 100, 0}),
	} {
		for lc := 0.0; lc <= 1; lc += 1.0 / 64 {
			for from := 0.0; from <= 1; from += 1.0 / 32 {
				floor := w.memCostFloor(lc, from)
				for lm := from; lm <= 1; lm += 1.0 / 256 {
					if c := w.memCost(lc, lm); c < floor-1e-12 {
						t.Fatalf("weights %+v lc %v: cost %v at lm %v below floor %v from %v", w, lc, c, lm, floor, from)
					}
				}
			}
			// The level floor grows with lc.
			if lc > 0 && w.cpu*lc+w.memCostFloor(lc, 0) < w.cpu*(lc-1.0/64)+w.memCostFloor(lc-1.0/64, 0)-1e-12 {
				t.Fatalf("level floor falls at lc %v", lc)
			}
		}
	}
}

func TestShapeCostSpread(t *testing.T) {
	req := Request{Resources: Resources{8, 32 * GiB, 40 * GiB}}
	d := &decision{req: &req, strategy: Spread, w: newWeights(Resources{}, Resources{})}
	empty := shapeCost(d, standard, standard)
	half := shapeCost(d, Resources{32, 128 * GiB, TiB}, standard)
	if !(empty < half) {
		t.Errorf("spread: empty host costs %v, half-full %v; want the empty one preferred", empty, half)
	}
	if s := scoreOf(d, empty); s != 88 { // (56/64 + 224/256) / 2 = 0.875
		t.Errorf("spread score of an empty host = %d, want 88", s)
	}
}
