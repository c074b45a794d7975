package sim

import (
	"fmt"
	"time"
)

// Batch mode: each tenant batch (the |-delimited group of one line) is one
// all-or-nothing decision. Yunchi uses Cluster.PlaceBatch; the baselines
// place the members one by one on their own arrays and undo them all if one
// does not fit. Rejections still count requests (every member of a rejected
// batch), so W1 stops at the same 5,000; decision latencies are per batch.

// BatchPlacer is a Placer that also decides a whole batch at once. Like
// Place, PlaceBatch decides only: the harness then Allocates each member.
type BatchPlacer interface {
	Placer
	PlaceBatch(reqs []Request) (hosts []int, ok bool, err error)
}

// PlaceBatch places the members in order on the baseline's own array, then
// undoes them: all of them fit, or none is placed.
func (b *BestFit) PlaceBatch(reqs []Request) ([]int, bool, error) {
	return seqBatch(b, &b.hostArray, reqs)
}

// PlaceBatch: as BestFit's, with sampled decisions.
func (s *Sample) PlaceBatch(reqs []Request) ([]int, bool, error) {
	return seqBatch(s, &s.hostArray, reqs)
}

func seqBatch(p Placer, a *hostArray, reqs []Request) ([]int, bool, error) {
	hosts := make([]int, 0, len(reqs))
	undo := func() {
		for i, h := range hosts {
			a.Release(h, reqs[i].Resources)
		}
	}
	for i := range reqs {
		h, ok, err := p.Place(&reqs[i])
		if err != nil || !ok {
			undo()
			return nil, false, err
		}
		a.Allocate(h, reqs[i].Resources)
		hosts = append(hosts, h)
	}
	undo()
	return hosts, true, nil
}

// batchSpans are the [lo, hi) request ranges of the tenant batches.
func batchSpans(t *Trace) [][2]int {
	var spans [][2]int
	for i := 0; i < len(t.Requests); {
		j := i + 1
		for j < len(t.Requests) && t.Requests[j].Batch == t.Requests[i].Batch {
			j++
		}
		spans = append(spans, [2]int{i, j})
		i = j
	}
	return spans
}

// fitsGreedy reports whether reqs could all be placed on the ledger's hosts
// by first fit in order: a sufficient (not necessary) test that a rejected
// batch did fit. The ledger is left as it was.
func (l *ledger) fitsGreedy(reqs []Request) bool {
	var placed []int
	ok := true
	for i := range reqs {
		h := l.firstFit(reqs[i].Resources)
		if h < 0 {
			ok = false
			break
		}
		l.add(h, reqs[i].Resources)
		placed = append(placed, h)
	}
	for i, h := range placed {
		l.remove(h, reqs[i].Resources)
	}
	return ok
}

// placeAll records a decided batch in the ledger and the placer.
func placeAll(led *ledger, p Placer, reqs []Request, hosts []int) error {
	if len(hosts) != len(reqs) {
		return fmt.Errorf("batch of %d placed %d members", len(reqs), len(hosts))
	}
	for i, h := range hosts {
		if err := led.add(h, reqs[i].Resources); err != nil {
			return fmt.Errorf("%s: %v", reqs[i].Name, err)
		}
		if err := p.Allocate(h, reqs[i].Resources); err != nil {
			return fmt.Errorf("%s: allocate on %s: %v", reqs[i].Name, HostID(h), err)
		}
	}
	return nil
}

// FillBatch runs W1 with one decision per tenant batch.
func FillBatch(t *Trace, p BatchPlacer, cfg Config) (FillResult, error) {
	if err := cfg.check(); err != nil {
		return FillResult{}, err
	}
	shape := cfg.shape()
	maxRej := cfg.maxRejections()
	res := FillResult{Batched: true}
	res.FluidBound = FluidBound(t, cfg.Hosts, shape)
	spans := batchSpans(t)
	led := newLedger(cfg.Hosts, shape)
	var m meter
	pr := progress{fn: cfg.Progress}
	m.start = time.Now()
	for i := 0; res.Rejected < maxRej; i++ {
		k := i % len(spans)
		if k == 0 {
			res.StreamPasses++
		}
		reqs := t.Requests[spans[k][0]:spans[k][1]]
		t0 := time.Now()
		hosts, ok, err := p.PlaceBatch(reqs)
		t1 := time.Now()
		if err != nil {
			return res, fmt.Errorf("batch %d (from %s, pass %d): %v", k, reqs[0].Name, res.StreamPasses, err)
		}
		if !ok {
			m.rejected = append(m.rejected, t1.Sub(t0))
			if res.Rejected == 0 {
				res.PlacedBeforeFirstReject = res.TotalPlaced
			}
			res.Rejected += int64(len(reqs))
			res.BatchesRejected++
			res.Refusals.noteAll(led, reqs)
			if led.fitsGreedy(reqs) {
				res.RejectedWhileFit += int64(len(reqs))
			}
			m.checks += time.Since(t1)
			continue
		}
		m.placed = append(m.placed, t1.Sub(t0))
		if err := placeAll(led, p, reqs, hosts); err != nil {
			return res, fmt.Errorf("batch %d: %v", k, err)
		}
		res.TotalPlaced += int64(len(reqs))
		res.BatchesPlaced++
		if i&1023 == 0 {
			pr.tick(t1, func() string {
				return fmt.Sprintf("fill: %d placed, %d rejected", res.TotalPlaced, res.Rejected)
			})
		}
	}
	res.finish(&m, led, res.BatchesPlaced+res.BatchesRejected)
	return res, nil
}

// ChurnBatch runs W2 with one decision per tenant batch: a batch arrives
// whole (its members share a line, so a timestamp); members depart one by
// one.
func ChurnBatch(t *Trace, p BatchPlacer, cfg Config) (ChurnResult, error) {
	if err := cfg.check(); err != nil {
		return ChurnResult{}, err
	}
	shape := cfg.shape()
	spans := batchSpans(t)
	end := make(map[int]int, len(spans)) // first member -> end of its batch
	for _, s := range spans {
		end[s[0]] = s[1]
	}
	var evs []event
	for _, ev := range Events(t) {
		if ev < 0 {
			evs = append(evs, ev)
		} else if _, first := end[int(ev)]; first {
			evs = append(evs, ev)
		}
	}
	res := ChurnResult{Batched: true}
	led := newLedger(cfg.Hosts, shape)
	where := make([]int32, len(t.Requests))
	var m meter
	pr := progress{fn: cfg.Progress}
	peakAt := -1
	m.start = time.Now()
	for e, ev := range evs {
		if ev < 0 {
			if err := res.depart(t, p, led, where, int(^ev)); err != nil {
				return res, err
			}
			continue
		}
		lo, hi := int(ev), end[int(ev)]
		reqs := t.Requests[lo:hi]
		res.Arrivals += int64(len(reqs))
		t0 := time.Now()
		hosts, ok, err := p.PlaceBatch(reqs)
		t1 := time.Now()
		if err != nil {
			return res, fmt.Errorf("batch from %s: %v", reqs[0].Name, err)
		}
		if !ok {
			m.rejected = append(m.rejected, t1.Sub(t0))
			for i := lo; i < hi; i++ {
				where[i] = -1
			}
			res.Rejected += int64(len(reqs))
			res.BatchesRejected++
			res.Refusals.noteAll(led, reqs)
			if led.fitsGreedy(reqs) {
				res.RejectedWhileFit += int64(len(reqs))
			}
			m.checks += time.Since(t1)
			continue
		}
		m.placed = append(m.placed, t1.Sub(t0))
		if err := placeAll(led, p, reqs, hosts); err != nil {
			return res, fmt.Errorf("batch from %s: %v", reqs[0].Name, err)
		}
		for i, h := range hosts {
			where[lo+i] = int32(h)
		}
		res.Placed += int64(len(reqs))
		res.BatchesPlaced++
		if led.total.VCPUs > res.PeakCPUAllocated {
			res.PeakCPUAllocated = led.total.VCPUs
			peakAt = e
		}
		if e&1023 == 0 {
			pr.tick(t1, func() string {
				return fmt.Sprintf("churn: %d/%d arrivals, %d rejected", res.Arrivals, len(t.Requests), res.Rejected)
			})
		}
	}
	res.Timing = m.timing(res.Placed, res.BatchesPlaced+res.BatchesRejected)
	err := res.finish(t, evs, peakAt, where, func(i int) int { return end[i] }, cfg.Hosts, shape)
	return res, err
}
