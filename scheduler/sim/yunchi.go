package sim

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/yunchi/yunchi/scheduler"
)

// Hosts returns the definition's cluster of n identical hosts: ratio 1.0,
// nothing reserved, ready, host j in center j%3 and rack (j/3)%5.
func Hosts(n int, shape scheduler.Resources) []scheduler.Host {
	hosts := make([]scheduler.Host, n)
	for j := range hosts {
		center := fmt.Sprintf("c%d", j%3)
		hosts[j] = scheduler.Host{
			ID:       HostID(j),
			Center:   center,
			Site:     center,
			Rack:     fmt.Sprintf("%s-r%d", center, (j/3)%5),
			State:    scheduler.HostReady,
			Capacity: shape,
			Ratios:   scheduler.Ratios{CPU: 1, Memory: 1, Disk: 1},
		}
	}
	return hosts
}

// Yunchi is Yunchi's scheduler (scheduler.Cluster) behind the Placer
// interface: Place, then Allocate; Release on departure.
type Yunchi struct {
	c     *scheduler.Cluster
	ids   []string
	index map[string]int
}

// NewYunchi builds a scheduler.Cluster over hosts with opt.
func NewYunchi(hosts []scheduler.Host, opt scheduler.Options) (*Yunchi, error) {
	c, err := scheduler.NewCluster(hosts, opt)
	if err != nil {
		return nil, err
	}
	y := &Yunchi{c: c, ids: make([]string, len(hosts)), index: make(map[string]int, len(hosts))}
	for i, h := range hosts {
		y.ids[i] = h.ID
		y.index[h.ID] = i
	}
	return y, nil
}

// Place asks the cluster for a host; a *scheduler.NoFitError is "no room".
func (y *Yunchi) Place(req *Request) (int, bool, error) {
	p, err := y.c.Place(scheduler.Request{Name: req.Name, Resources: req.Resources})
	if err != nil {
		var nf *scheduler.NoFitError
		if errors.As(err, &nf) {
			return -1, false, nil
		}
		return -1, false, err
	}
	h, ok := y.index[p.HostID]
	if !ok {
		return -1, false, fmt.Errorf("scheduler chose host %q, which is not in the cluster", p.HostID)
	}
	return h, true, nil
}

// PlaceBatch places reqs all-or-nothing; ok=false when the batch does not fit.
func (y *Yunchi) PlaceBatch(reqs []Request) ([]int, bool, error) {
	rs := make([]scheduler.Request, len(reqs))
	for i := range reqs {
		rs[i] = scheduler.Request{Name: reqs[i].Name, Resources: reqs[i].Resources}
	}
	ps, err := y.c.PlaceBatch(rs)
	if err != nil {
		var nf *scheduler.NoFitError
		if errors.As(err, &nf) {
			return nil, false, nil
		}
		return nil, false, err
	}
	if len(ps) != len(reqs) {
		return nil, false, fmt.Errorf("PlaceBatch returned %d placements for %d requests", len(ps), len(reqs))
	}
	out := make([]int, len(ps))
	for i, p := range ps {
		h, ok := y.index[p.HostID]
		if !ok {
			return nil, false, fmt.Errorf("scheduler chose host %q, which is not in the cluster", p.HostID)
		}
		out[i] = h
	}
	return out, true, nil
}

// Allocate records r on host h.
func (y *Yunchi) Allocate(h int, r scheduler.Resources) error { return y.c.Allocate(y.ids[h], r) }

// Release removes r from host h.
func (y *Yunchi) Release(h int, r scheduler.Resources) error { return y.c.Release(y.ids[h], r) }

// Workloads.
const (
	WorkloadFill  = "fill"
	WorkloadChurn = "churn"
)

// Settings are one simulate run: the workload, the cluster and Yunchi's
// options.
type Settings struct {
	Workload  string // WorkloadFill or WorkloadChurn
	Hosts     int
	Shape     scheduler.Resources // zero = DefaultShape
	Strategy  scheduler.Strategy
	Seed      int64
	Baselines bool // also run the two baselines
	// Batch: one all-or-nothing decision per tenant batch (Yunchi's
	// PlaceBatch) instead of one per request.
	Batch bool
	// MaxRejections stops fill; 0 = DefaultMaxRejections.
	MaxRejections int
	// PressureWindow is Yunchi's scheduler.Options.PressureWindow: 0 the
	// default, negative off.
	PressureWindow int
	// Progress, if set, gets a short status about once a second.
	Progress func(status string)
}

// Run replays t with s: Yunchi's scheduler first, then (if asked) the
// best-fit and sampling baselines. It returns the settings lines, then
// Yunchi's figures unprefixed, then the baselines' with the prefixes
// baseline_bestfit_ and baseline_sample_.
func Run(t *Trace, s Settings) ([]Figure, error) {
	if s.Workload != WorkloadFill && s.Workload != WorkloadChurn {
		return nil, fmt.Errorf("unknown workload %q: want fill or churn", s.Workload)
	}
	cfg := Config{Hosts: s.Hosts, Shape: s.Shape, MaxRejections: s.MaxRejections, Progress: s.Progress}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	shape := cfg.shape()
	figs := []Figure{
		{"workload", s.Workload},
		{"hosts", s.Hosts},
		{"host", FormatShape(shape)},
		{"strategy", s.Strategy.String()},
		{"seed", s.Seed},
		{"trace", t.ArrivalsFile},
		{"lifetimes", t.LifetimesFile},
		{"requests", len(t.Requests)},
		{"batches", t.Batches},
		{"sample_size", SampleSize(s.Hosts)},
		{"batch", s.Batch},
		{"pressure_window", pressureWindow(s.PressureWindow)},
	}
	if s.Workload == WorkloadFill {
		figs = append(figs, Figure{"max_rejections", cfg.maxRejections()}) // what the run uses
	}
	run := func(name, prefix string, p BatchPlacer) error {
		runtime.GC() // each run starts from the same heap state
		cfg := cfg
		if s.Progress != nil {
			cfg.Progress = func(status string) { s.Progress(name + ": " + status) }
		}
		var r interface{ Figures(prefix string) []Figure }
		var err error
		switch {
		case s.Workload == WorkloadFill && s.Batch:
			r, err = FillBatch(t, p, cfg)
		case s.Workload == WorkloadFill:
			r, err = Fill(t, p, cfg)
		case s.Batch:
			r, err = ChurnBatch(t, p, cfg)
		default:
			r, err = Churn(t, p, cfg)
		}
		if err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
		figs = append(figs, r.Figures(prefix)...)
		return nil
	}
	y, err := NewYunchi(Hosts(s.Hosts, shape), scheduler.Options{Strategy: s.Strategy, Seed: s.Seed, PressureWindow: s.PressureWindow})
	if err != nil {
		return nil, fmt.Errorf("yunchi: %v", err)
	}
	if err := run("yunchi", "", y); err != nil {
		return nil, err
	}
	// How many of Yunchi's decisions were made under pressure (after a
	// refusal in a nearly full pool: scheduler/pressure.go).
	figs = append(figs, Figure{"pressure_decisions", int64(y.c.PressureDecisions())})
	if !s.Baselines {
		return figs, nil
	}
	if err := run("baseline best-fit", "baseline_bestfit_", NewBestFit(s.Hosts, shape)); err != nil {
		return nil, err
	}
	if err := run("baseline sample", "baseline_sample_", NewSample(s.Hosts, shape, 1)); err != nil {
		return nil, err
	}
	return figs, nil
}

// pressureWindow is the window a run uses, as printed: 0 when off.
func pressureWindow(w int) int {
	switch {
	case w < 0:
		return 0
	case w == 0:
		return scheduler.DefaultPressureWindow
	}
	return w
}
