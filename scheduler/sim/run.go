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

func (c Config) maxRejections() int64 {
	if c.MaxRejections <= 0 {
		return DefaultMaxRejections
	}
	return int64(c.MaxRejections)
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

// Timing is what a run measures of its decisions.
type Timing struct {
	Wall                time.Duration // the loop, less the harness's checks after rejections
	PlacementsPerSecond float64       // requests placed / Wall
	DecisionsPerSecond  float64       // decisions (a batch is one) / Wall
	// Decision is every decision; PlacedDecision those that found a host,
	// RejectedDecision those that did not (a NoFitError to build).
	Decision, PlacedDecision, RejectedDecision Latency
}

// figures are the rates and latencies; wall_seconds goes last in a result.
func (t Timing) figures() []Figure {
	return []Figure{
		{"placements_per_second", float64(int64(t.PlacementsPerSecond + 0.5))},
		{"decisions_per_second", float64(int64(t.DecisionsPerSecond + 0.5))},
		{"decision_p50_us", us(t.Decision.P50)},
		{"decision_p99_us", us(t.Decision.P99)},
		{"decision_max_us", us(t.Decision.Max)},
		{"placed_decision_p50_us", us(t.PlacedDecision.P50)},
		{"placed_decision_p99_us", us(t.PlacedDecision.P99)},
		{"rejected_decision_p50_us", us(t.RejectedDecision.P50)},
		{"rejected_decision_p99_us", us(t.RejectedDecision.P99)},
	}
}

// meter times a run's loop: each decision's latency, placed or rejected,
// and the harness's own checks after rejections, which Wall leaves out.
type meter struct {
	start            time.Time
	checks           time.Duration
	placed, rejected []time.Duration
}

// timing ends the measurement: placed requests and decisions made.
func (m *meter) timing(placed, decisions int64) Timing {
	t := Timing{Wall: time.Since(m.start) - m.checks}
	if s := t.Wall.Seconds(); s > 0 {
		t.PlacementsPerSecond = float64(placed) / s
		t.DecisionsPerSecond = float64(decisions) / s
	}
	t.PlacedDecision, t.RejectedDecision = latency(m.placed), latency(m.rejected)
	t.Decision = latency(append(m.placed, m.rejected...))
	return t
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
	RejectedWhileFit int64
	Refusals         Refusals // what each refusal was refused beside
	Timing
	HostsTouched int
	StreamPasses int // how many times the stream was started
	// Batch mode: one decision per tenant batch. Rejected and
	// RejectedWhileFit still count requests.
	Batched                        bool
	BatchesPlaced, BatchesRejected int64
}

// Figures are the result's lines, each name prefixed.
func (r FillResult) Figures(prefix string) []Figure {
	fs := []Figure{
		{"placed_before_first_reject", r.PlacedBeforeFirstReject},
		{"total_placed", r.TotalPlaced},
		{"rejected", r.Rejected},
		{"fluid_bound", r.FluidBound},
		{"packing_ratio", round6(r.PackingRatio)},
	}
	fs = append(fs, r.Refusals.figures()...)
	fs = append(fs, r.Timing.figures()...)
	fs = append(fs,
		Figure{"hosts_touched", r.HostsTouched},
		Figure{"rejected_while_fit", r.RejectedWhileFit},
		Figure{"stream_passes", r.StreamPasses},
		Figure{"wall_seconds", round3(r.Wall.Seconds())},
	)
	return prefixed(prefix, fs, r.Batched, r.BatchesPlaced, r.BatchesRejected)
}

// finish fills the figures of a fill run from its meter and ledger.
func (r *FillResult) finish(m *meter, led *ledger, decisions int64) {
	r.Timing = m.timing(r.TotalPlaced, decisions)
	if r.FluidBound > 0 {
		r.PackingRatio = float64(r.PlacedBeforeFirstReject) / float64(r.FluidBound)
	}
	r.HostsTouched = led.touched()
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
	maxRej := cfg.maxRejections()
	var res FillResult
	res.FluidBound = FluidBound(t, cfg.Hosts, shape)
	led := newLedger(cfg.Hosts, shape)
	m := meter{placed: make([]time.Duration, 0, res.FluidBound+1024), rejected: make([]time.Duration, 0, maxRej)}
	pr := progress{fn: cfg.Progress}
	n := len(t.Requests)
	m.start = time.Now()
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
			m.rejected = append(m.rejected, t1.Sub(t0))
			if res.Rejected == 0 {
				res.PlacedBeforeFirstReject = res.TotalPlaced
			}
			res.Rejected++
			if res.Refusals.note(led, req.Resources) {
				res.RejectedWhileFit++
			}
			m.checks += time.Since(t1)
			continue
		}
		m.placed = append(m.placed, t1.Sub(t0))
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
	res.finish(&m, led, res.TotalPlaced+res.Rejected)
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
	Refusals             Refusals // what each refusal was refused beside
	PeakCPUAllocated     int64
	PeakCPUPct           float64
	PeakMemoryPct        float64 // memory allocated at the CPU peak
	PeakTime             int64   // trace seconds of the CPU peak
	FreeSlots16c112g     int64
	FreeSlots8c56g       int64
	EmptyHostsAtPeak     int
	Timing
	// As in FillResult.
	Batched                        bool
	BatchesPlaced, BatchesRejected int64
}

// Figures are the result's lines, each name prefixed.
func (r ChurnResult) Figures(prefix string) []Figure {
	fs := []Figure{
		{"arrivals", r.Arrivals},
		{"rejected", r.Rejected},
		{"rejected_pct", round3(r.RejectedPct)},
	}
	fs = append(fs, r.Refusals.figures()...)
	fs = append(fs, []Figure{
		{"peak_cpu_allocated", r.PeakCPUAllocated},
		{"peak_cpu_pct", round3(r.PeakCPUPct)},
		{"memory_pct_at_peak", round3(r.PeakMemoryPct)},
		{"peak_time", r.PeakTime},
		{"free_slots_16c112g_at_peak", r.FreeSlots16c112g},
		{"free_slots_8c56g_at_peak", r.FreeSlots8c56g},
		{"empty_hosts_at_peak", r.EmptyHostsAtPeak},
	}...)
	fs = append(fs, r.Timing.figures()...)
	fs = append(fs,
		Figure{"rejected_while_fit", r.RejectedWhileFit},
		Figure{"wall_seconds", round3(r.Wall.Seconds())},
	)
	return prefixed(prefix, fs, r.Batched, r.BatchesPlaced, r.BatchesRejected)
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
	m := meter{placed: make([]time.Duration, 0, len(t.Requests))}
	pr := progress{fn: cfg.Progress}
	peakAt := -1 // index in evs of the event after which CPU first peaked
	m.start = time.Now()
	for e, ev := range evs {
		if ev < 0 {
			if err := res.depart(t, p, led, where, int(^ev)); err != nil {
				return res, err
			}
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
			m.rejected = append(m.rejected, t1.Sub(t0))
			where[i] = -1
			res.Rejected++
			if res.Refusals.note(led, req.Resources) {
				res.RejectedWhileFit++
			}
			m.checks += time.Since(t1)
			continue
		}
		m.placed = append(m.placed, t1.Sub(t0))
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
	res.Timing = m.timing(res.Placed, res.Arrivals)
	err := res.finish(t, evs, peakAt, where, func(i int) int { return i + 1 }, cfg.Hosts, shape)
	return res, err
}

// depart records that request i left, in the ledger and in the placer; a
// rejected request (where[i] < 0) has nothing to release.
func (res *ChurnResult) depart(t *Trace, p Placer, led *ledger, where []int32, i int) error {
	h := int(where[i])
	if h < 0 {
		return nil
	}
	r := t.Requests[i].Resources
	if err := led.remove(h, r); err != nil {
		return err
	}
	if err := p.Release(h, r); err != nil {
		return fmt.Errorf("release %s from %s: %v", t.Requests[i].Name, HostID(h), err)
	}
	res.Departures++
	return nil
}

// finish fills the figures of the state at the CPU peak (after event
// evs[peakAt]), rebuilt from where each request went; an arrival event i
// stands for requests i to end(i)-1.
func (res *ChurnResult) finish(t *Trace, evs []event, peakAt int, where []int32, end func(int) int, hosts int, shape scheduler.Resources) error {
	if res.Arrivals > 0 {
		res.RejectedPct = 100 * float64(res.Rejected) / float64(res.Arrivals)
	}
	at := newLedger(hosts, shape)
	for _, ev := range evs[:peakAt+1] {
		lo, hi := int(^ev), int(^ev)+1
		if ev >= 0 {
			lo, hi = int(ev), end(int(ev))
		}
		for i := lo; i < hi; i++ {
			h := int(where[i])
			if h < 0 {
				continue
			}
			var err error
			if ev < 0 {
				err = at.remove(h, t.Requests[i].Resources)
			} else {
				err = at.add(h, t.Requests[i].Resources)
			}
			if err != nil {
				return fmt.Errorf("harness bug rebuilding the peak: %v", err)
			}
		}
	}
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
