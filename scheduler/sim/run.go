package sim

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/yunchi/yunchi/scheduler"
)

// Config is the cluster and the stopping rule of a run.
type Config struct {
	Hosts int                 // H
	Shape scheduler.Resources // every host's capacity; zero = DefaultShape
	// MaxRejections stops W1 (fill); 0 = DefaultMaxRejections.
	MaxRejections int
	// Progress, if set, is called about once a second with a short status.
	Progress func(status string)
}

func (c Config) shape() scheduler.Resources {
	if c.Shape == (scheduler.Resources{}) {
		return DefaultShape
	}
	return c.Shape
}

func (c Config) check() error {
	if c.Hosts <= 0 {
		return fmt.Errorf("hosts must be positive, got %d", c.Hosts)
	}
	s := c.shape()
	if s.VCPUs <= 0 || s.MemoryBytes <= 0 || s.DiskBytes <= 0 {
		return fmt.Errorf("host shape %s: every dimension must be positive", FormatShape(s))
	}
	return nil
}

// Figure is one "name: value" line of a result.
type Figure struct {
	Name  string
	Value any // int64, int, float64 or string
}

// Text is the value as printed.
func (f Figure) Text() string {
	switch v := f.Value.(type) {
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	default:
		return fmt.Sprint(v)
	}
}

// Latency is the distribution of single decisions.
type Latency struct {
	P50, P99, Max time.Duration
}

func latency(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := func(p float64) time.Duration { // nearest rank
		i := int(p*float64(len(s))+0.999999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return Latency{P50: rank(0.50), P99: rank(0.99), Max: s[len(s)-1]}
}

func us(d time.Duration) float64 { return round3(float64(d) / 1e3) }

func round3(f float64) float64 {
	v, _ := strconv.ParseFloat(strconv.FormatFloat(f, 'f', 3, 64), 64)
	return v
}

// FillResult is W1's figures.
type FillResult struct {
	PlacedBeforeFirstReject int64
	TotalPlaced             int64
	Rejected                int64
	FluidBound              int64
	PackingRatio            float64 // PlacedBeforeFirstReject / FluidBound
	// RejectedWhileFit counts rejections while the harness's own ledger had
	// a host that could take the request (a placer bug if nonzero).
	RejectedWhileFit    int64
	Wall                time.Duration // the loop, less the harness's after-rejection check
	PlacementsPerSecond float64       // TotalPlaced / Wall
	DecisionsPerSecond  float64       // (TotalPlaced+Rejected) / Wall
	// Decision is every decision; PlacedDecision those that found a host,
	// RejectedDecision those that did not (a NoFitError to build).
	Decision, PlacedDecision, RejectedDecision Latency
	HostsTouched                               int
	StreamPasses                               int // how many times the stream was started
	// Batch mode: one decision per tenant batch. Rejected and
	// RejectedWhileFit still count requests.
	Batched                        bool
	BatchesPlaced, BatchesRejected int64
}

// Figures are the result's lines, each name prefixed.
func (r FillResult) Figures(prefix string) []Figure {
	return prefixed(prefix, []Figure{
		{"placed_before_first_reject", r.PlacedBeforeFirstReject},
		{"total_placed", r.TotalPlaced},
		{"rejected", r.Rejected},
		{"fluid_bound", r.FluidBound},
		{"packing_ratio", round6(r.PackingRatio)},
		{"placements_per_second", float64(int64(r.PlacementsPerSecond + 0.5))},
		{"decisions_per_second", float64(int64(r.DecisionsPerSecond + 0.5))},
		{"decision_p50_us", us(r.Decision.P50)},
		{"decision_p99_us", us(r.Decision.P99)},
		{"decision_max_us", us(r.Decision.Max)},
		{"placed_decision_p50_us", us(r.PlacedDecision.P50)},
		{"placed_decision_p99_us", us(r.PlacedDecision.P99)},
		{"rejected_decision_p50_us", us(r.RejectedDecision.P50)},
		{"rejected_decision_p99_us", us(r.RejectedDecision.P99)},
		{"hosts_touched", r.HostsTouched},
		{"rejected_while_fit", r.RejectedWhileFit},
		{"stream_passes", r.StreamPasses},
		{"wall_seconds", round3(r.Wall.Seconds())},
	}, r.Batched, r.BatchesPlaced, r.BatchesRejected)
}

func round6(f float64) float64 {
	v, _ := strconv.ParseFloat(strconv.FormatFloat(f, 'f', 6, 64), 64)
	return v
}

func prefixed(prefix string, fs []Figure, batched bool, placed, rejected int64) []Figure {
	if batched {
		fs = append(fs, Figure{"batches_placed", placed}, Figure{"batches_rejected", rejected})
	}
	for i := range fs {
		fs[i].Name = prefix + fs[i].Name
	}
	return fs
}

// FluidBound is the largest n such that the first n requests of the
// repeated stream fit in the summed capacity of hosts hosts of shape, in
// every dimension.
func FluidBound(t *Trace, hosts int, shape scheduler.Resources) int64 {
	capTotal := scheduler.Resources{
		VCPUs:       shape.VCPUs * int64(hosts),
		MemoryBytes: shape.MemoryBytes * int64(hosts),
		DiskBytes:   shape.DiskBytes * int64(hosts),
	}
	// Skip whole passes of the stream, then walk the last one.
	perPass := t.Total()
	passes := min(capTotal.VCPUs/perPass.VCPUs, capTotal.MemoryBytes/perPass.MemoryBytes, capTotal.DiskBytes/perPass.DiskBytes)
	used := scheduler.Resources{
		VCPUs:       perPass.VCPUs * passes,
		MemoryBytes: perPass.MemoryBytes * passes,
		DiskBytes:   perPass.DiskBytes * passes,
	}
	n := passes * int64(len(t.Requests))
	for i := 0; ; i = (i + 1) % len(t.Requests) {
		next := used.Add(t.Requests[i].Resources)
		if !next.Fits(capTotal) {
			return n
		}
		used = next
		n++
	}
}

// progress calls cfg.Progress about once a second.
type progress struct {
	fn   func(string)
	next time.Time
}

func (p *progress) tick(now time.Time, status func() string) {
	if p.fn == nil || now.Before(p.next) {
		return
	}
	if !p.next.IsZero() {
		p.fn(status())
	}
	p.next = now.Add(time.Second)
}

// Fill runs W1: requests in stream order, none departing, until
// cfg.MaxRejections rejections; the stream restarts when it runs out.
func Fill(t *Trace, p Placer, cfg Config) (FillResult, error) {
	if err := cfg.check(); err != nil {
		return FillResult{}, err
	}
	shape := cfg.shape()
	maxRej := int64(cfg.MaxRejections)
	if maxRej <= 0 {
		maxRej = DefaultMaxRejections
	}
	var res FillResult
	res.FluidBound = FluidBound(t, cfg.Hosts, shape)
	led := newLedger(cfg.Hosts, shape)
	lat := make([]time.Duration, 0, res.FluidBound+1024)
	rejLat := make([]time.Duration, 0, maxRej)
	pr := progress{fn: cfg.Progress}
	firstReject := false
	var checkTime time.Duration
	n := len(t.Requests)
	start := time.Now()
	for i := 0; res.Rejected < maxRej; i++ {
		k := i % n
		if k == 0 {
			res.StreamPasses++
		}
		req := &t.Requests[k]
		t0 := time.Now()
		h, ok, err := p.Place(req)
		t1 := time.Now()
		if err != nil {
			return res, fmt.Errorf("request %d (%s, pass %d): %v", i, req.Name, res.StreamPasses, err)
		}
		if !ok {
			rejLat = append(rejLat, t1.Sub(t0))
			if !firstReject {
				firstReject = true
				res.PlacedBeforeFirstReject = res.TotalPlaced
			}
			res.Rejected++
			if led.anyFits(req.Resources) {
				res.RejectedWhileFit++
			}
			checkTime += time.Since(t1)
			continue
		}
		lat = append(lat, t1.Sub(t0))
		if err := led.add(h, req.Resources); err != nil {
			return res, fmt.Errorf("request %d (%s): %v", i, req.Name, err)
		}
		if err := p.Allocate(h, req.Resources); err != nil {
			return res, fmt.Errorf("request %d (%s): allocate on %s: %v", i, req.Name, HostID(h), err)
		}
		res.TotalPlaced++
		if i&4095 == 0 {
			pr.tick(t1, func() string {
				return fmt.Sprintf("fill: %d placed, %d rejected", res.TotalPlaced, res.Rejected)
			})
		}
	}
	res.Wall = time.Since(start) - checkTime
	if res.FluidBound > 0 {
		res.PackingRatio = float64(res.PlacedBeforeFirstReject) / float64(res.FluidBound)
	}
	if s := res.Wall.Seconds(); s > 0 {
		res.PlacementsPerSecond = float64(res.TotalPlaced) / s
		res.DecisionsPerSecond = float64(res.TotalPlaced+res.Rejected) / s
	}
	res.PlacedDecision, res.RejectedDecision = latency(lat), latency(rejLat)
	res.Decision = latency(append(lat, rejLat...))
	res.HostsTouched = led.touched()
	return res, nil
}

// Slot shapes counted at the churn peak.
var (
	Slot16c112g = scheduler.Resources{VCPUs: 16, MemoryBytes: 112 * GiB, DiskBytes: DiskPerRequest}
	Slot8c56g   = scheduler.Resources{VCPUs: 8, MemoryBytes: 56 * GiB, DiskBytes: DiskPerRequest}
)

// ChurnResult is W2's figures.
type ChurnResult struct {
	Arrivals, Departures int64
	Placed, Rejected     int64
	RejectedPct          float64
	RejectedWhileFit     int64
	PeakCPUAllocated     int64
	PeakCPUPct           float64
	PeakMemoryPct        float64 // memory allocated at the CPU peak
	PeakTime             int64   // trace seconds of the CPU peak
	FreeSlots16c112g     int64
	FreeSlots8c56g       int64
	EmptyHostsAtPeak     int
	Wall                 time.Duration
	PlacementsPerSecond  float64 // Placed / Wall
	DecisionsPerSecond   float64 // Arrivals / Wall
	// As in FillResult.
	Decision, PlacedDecision, RejectedDecision Latency
	Batched                                    bool
	BatchesPlaced, BatchesRejected             int64
}

// Figures are the result's lines, each name prefixed.
func (r ChurnResult) Figures(prefix string) []Figure {
	return prefixed(prefix, []Figure{
		{"arrivals", r.Arrivals},
		{"rejected", r.Rejected},
		{"rejected_pct", round3(r.RejectedPct)},
		{"peak_cpu_allocated", r.PeakCPUAllocated},
		{"peak_cpu_pct", round3(r.PeakCPUPct)},
		{"memory_pct_at_peak", round3(r.PeakMemoryPct)},
		{"peak_time", r.PeakTime},
		{"free_slots_16c112g_at_peak", r.FreeSlots16c112g},
		{"free_slots_8c56g_at_peak", r.FreeSlots8c56g},
		{"empty_hosts_at_peak", r.EmptyHostsAtPeak},
		{"placements_per_second", float64(int64(r.PlacementsPerSecond + 0.5))},
		{"decisions_per_second", float64(int64(r.DecisionsPerSecond + 0.5))},
		{"decision_p50_us", us(r.Decision.P50)},
		{"decision_p99_us", us(r.Decision.P99)},
		{"decision_max_us", us(r.Decision.Max)},
		{"placed_decision_p50_us", us(r.PlacedDecision.P50)},
		{"placed_decision_p99_us", us(r.PlacedDecision.P99)},
		{"rejected_decision_p50_us", us(r.RejectedDecision.P50)},
		{"rejected_decision_p99_us", us(r.RejectedDecision.P99)},
		{"rejected_while_fit", r.RejectedWhileFit},
		{"wall_seconds", round3(r.Wall.Seconds())},
	}, r.Batched, r.BatchesPlaced, r.BatchesRejected)
}

// event is a request index; a departure is its bitwise complement.
type event int32

// Events is W2's event order: by time, departures before arrivals at the
// same second, each kind in stream order. VMs that never depart (Ck) have
// no departure.
func Events(t *Trace) []event {
	type dep struct {
		at  int64
		idx int32
	}
	deps := make([]dep, 0, len(t.Requests))
	for i := range t.Requests {
		if r := &t.Requests[i]; r.Lifetime != Never {
			deps = append(deps, dep{r.Arrival + r.Lifetime, int32(i)})
		}
	}
	sort.Slice(deps, func(a, b int) bool {
		if deps[a].at != deps[b].at {
			return deps[a].at < deps[b].at
		}
		return deps[a].idx < deps[b].idx
	})
	ev := make([]event, 0, len(t.Requests)+len(deps))
	d := 0
	for i := range t.Requests {
		at := t.Requests[i].Arrival
		for d < len(deps) && deps[d].at <= at {
			ev = append(ev, ^event(deps[d].idx))
			d++
		}
		ev = append(ev, event(i))
	}
	for ; d < len(deps); d++ {
		ev = append(ev, ^event(deps[d].idx))
	}
	return ev
}

// Churn runs W2: arrivals and departures in trace time.
func Churn(t *Trace, p Placer, cfg Config) (ChurnResult, error) {
	if err := cfg.check(); err != nil {
		return ChurnResult{}, err
	}
	shape := cfg.shape()
	evs := Events(t)
	var res ChurnResult
	led := newLedger(cfg.Hosts, shape)
	where := make([]int32, len(t.Requests)) // host of each placed request, -1 rejected
	lat := make([]time.Duration, 0, len(t.Requests))
	var rejLat []time.Duration
	pr := progress{fn: cfg.Progress}
	peakAt := -1 // index in evs of the event after which CPU first peaked
	var checkTime time.Duration
	start := time.Now()
	for e, ev := range evs {
		if ev < 0 {
			i := int(^ev)
			h := where[i]
			if h < 0 {
				continue // it was rejected
			}
			r := t.Requests[i].Resources
			if err := led.remove(int(h), r); err != nil {
				return res, err
			}
			if err := p.Release(int(h), r); err != nil {
				return res, fmt.Errorf("release %s from %s: %v", t.Requests[i].Name, HostID(int(h)), err)
			}
			res.Departures++
			continue
		}
		i := int(ev)
		req := &t.Requests[i]
		res.Arrivals++
		t0 := time.Now()
		h, ok, err := p.Place(req)
		t1 := time.Now()
		if err != nil {
			return res, fmt.Errorf("request %s: %v", req.Name, err)
		}
		if !ok {
			rejLat = append(rejLat, t1.Sub(t0))
			where[i] = -1
			res.Rejected++
			if led.anyFits(req.Resources) {
				res.RejectedWhileFit++
			}
			checkTime += time.Since(t1)
			continue
		}
		lat = append(lat, t1.Sub(t0))
		if err := led.add(h, req.Resources); err != nil {
			return res, fmt.Errorf("request %s: %v", req.Name, err)
		}
		if err := p.Allocate(h, req.Resources); err != nil {
			return res, fmt.Errorf("request %s: allocate on %s: %v", req.Name, HostID(h), err)
		}
		where[i] = int32(h)
		res.Placed++
		if led.total.VCPUs > res.PeakCPUAllocated {
			res.PeakCPUAllocated = led.total.VCPUs
			peakAt = e
		}
		if i&4095 == 0 {
			pr.tick(t1, func() string {
				return fmt.Sprintf("churn: %d/%d arrivals, %d rejected", res.Arrivals, len(t.Requests), res.Rejected)
			})
		}
	}
	res.Wall = time.Since(start) - checkTime
	if s := res.Wall.Seconds(); s > 0 {
		res.PlacementsPerSecond = float64(res.Placed) / s
		res.DecisionsPerSecond = float64(res.Arrivals) / s
	}
	res.PlacedDecision, res.RejectedDecision = latency(lat), latency(rejLat)
	res.Decision = latency(append(lat, rejLat...))
	if res.Arrivals > 0 {
		res.RejectedPct = 100 * float64(res.Rejected) / float64(res.Arrivals)
	}

	// The state at the peak, rebuilt from the recorded placements.
	at := newLedger(cfg.Hosts, shape)
	for _, ev := range evs[:peakAt+1] {
		i := int(ev)
		if ev < 0 {
			i = int(^ev)
		}
		h := where[i]
		if h < 0 {
			continue
		}
		var err error
		if ev < 0 {
			err = at.remove(int(h), t.Requests[i].Resources)
		} else {
			err = at.add(int(h), t.Requests[i].Resources)
		}
		if err != nil {
			return res, fmt.Errorf("harness bug rebuilding the peak: %v", err)
		}
	}
	if err := res.atPeak(t, at, evs, peakAt, cfg.Hosts, shape); err != nil {
		return res, err
	}
	return res, nil
}

// atPeak fills the figures of the state at the CPU peak (after event
// evs[peakAt]), rebuilt in at.
func (res *ChurnResult) atPeak(t *Trace, at *ledger, evs []event, peakAt, hosts int, shape scheduler.Resources) error {
	if at.total.VCPUs != res.PeakCPUAllocated {
		return fmt.Errorf("harness bug: rebuilt peak has %d vCPU, want %d", at.total.VCPUs, res.PeakCPUAllocated)
	}
	if peakAt >= 0 {
		res.PeakTime = t.Requests[int(evs[peakAt])].Arrival
	}
	total := int64(hosts)
	res.PeakCPUPct = 100 * float64(at.total.VCPUs) / float64(shape.VCPUs*total)
	res.PeakMemoryPct = 100 * float64(at.total.MemoryBytes) / (float64(shape.MemoryBytes) * float64(total))
	res.FreeSlots16c112g = at.slots(Slot16c112g)
	res.FreeSlots8c56g = at.slots(Slot8c56g)
	res.EmptyHostsAtPeak = hosts - at.touched()
	return nil
}
