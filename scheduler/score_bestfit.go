package scheduler

// BestFit prefers the host the request fills most snugly: the one left with
// the least free capacity after placement, as a fraction of its capacity and
// averaged over vCPU, memory and disk. Packing tightly keeps large holes open
// for large VMs and leaves whole hosts empty for maintenance.
//
// A host left exactly full scores MaxScore; an empty host taking a request
// of almost nothing scores near 0.
type BestFit struct{}

var _ Scorer = BestFit{}

func (BestFit) Name() string { return "BestFit" }

func (BestFit) Score(req Request, h *Host) float64 {
	free := h.Free()
	var leftover float64
	n := 0
	for _, d := range dimensions {
		c := d.of(h.Capacity)
		if c <= 0 {
			continue // no capacity to fill; the filters already judged fit
		}
		left := float64(d.of(free)-d.of(req.Resources)) / float64(c)
		leftover += min(max(left, 0), 1)
		n++
	}
	if n == 0 {
		return 0
	}
	return MaxScore * (1 - leftover/float64(n))
}
