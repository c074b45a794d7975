// Package scheduler decides which host a VM goes to.
//
// It is pure logic: the caller passes the hosts as they stand and gets back a
// Placement (or a NoFitError that says why nothing fits), with no I/O, clock
// or randomness, so the same input always gives the same answer whatever
// order the hosts come in. The controller decides on the raft leader and
// records the answer in the log; nothing here needs to run again on replay.
//
// The shape follows the Kubernetes scheduler framework: Filters rule hosts
// out, each with a Reason a person can act on; Scorers rate the hosts left
// from 0 to MaxScore; the best combined score wins, ties going to the
// smallest host ID.
package scheduler

import (
	"errors"
	"fmt"
	"math"
)

// Placement is where a request goes.
type Placement struct {
	HostID string
	Score  int64 // 0..MaxScore, rounded
	// RunnersUp are the next best hosts, best first: what the decision was
	// weighed against, and where to try next if the chosen host fills up
	// before the placement is committed.
	RunnersUp []Candidate
}

// Candidate is a host that could take the request, with its score.
type Candidate struct {
	HostID string
	Score  int64 // 0..MaxScore, rounded
}

// Scheduler is a chain of filters and weighted scorers.
type Scheduler struct {
	// Filters run in order; a host's Rejection names the first one that
	// rules it out.
	Filters []Filter
	// Scorers combine as a weighted mean, so the total stays 0..MaxScore.
	Scorers []WeightedScorer
	// RunnersUp is how many candidates after the winner a Placement lists.
	RunnersUp int
}

// Default is best-fit placement on capacity, readiness and center.
func Default() *Scheduler {
	return &Scheduler{
		// Cheapest first, and most decisive first. Ready and Center read one
		// field each and rule out whole groups of hosts (a down rack, every
		// other center), so the resource filters, which do arithmetic, see
		// fewer hosts; and a host in the wrong center is reported as that,
		// not as short of memory, which would send a person to resize the
		// VM for nothing. The resource filters cost the same; CPU goes first
		// because it is the dimension that runs out first in real traces
		// (Azure: 90% of vCPU allocated while memory is at 45%).
		Filters: []Filter{
			ReadyFilter{},
			CenterFilter{},
			CPUFilter{},
			MemoryFilter{},
			DiskFilter{},
		},
		Scorers:   []WeightedScorer{{Scorer: BestFit{}, Weight: 1}},
		RunnersUp: 3,
	}
}

var defaultScheduler = Default()

// ErrInvalidRequest is wrapped by the error Place returns for a request that
// could never be placed as written (a size that is zero or negative).
var ErrInvalidRequest = errors.New("invalid placement request")

// Place picks the best host for req among hosts with the Default scheduler:
// the feasible host with the least normalised leftover across CPU, memory
// and disk, ties broken by host ID. When nothing fits it returns a
// *NoFitError. Host IDs must be unique.
func Place(req Request, hosts []Host) (Placement, error) {
	return defaultScheduler.Place(req, hosts)
}

// Place picks the host with the best combined score among those that pass
// every filter, ties going to the smallest host ID. It does not modify hosts.
// When no host passes it returns a *NoFitError; for an invalid request, an
// error wrapping ErrInvalidRequest.
func (s *Scheduler) Place(req Request, hosts []Host) (Placement, error) {
	if err := validate(req); err != nil {
		return Placement{}, err
	}
	// Keep the best 1+RunnersUp candidates, best first: a few comparisons
	// per host instead of sorting every feasible host.
	top := make([]scored, 0, 1+max(s.RunnersUp, 0))
	for i := range hosts {
		h := &hosts[i]
		if s.reject(req, h) != Fit {
			continue
		}
		c := scored{h.ID, s.score(req, h)}
		if len(top) == cap(top) {
			if !c.better(top[len(top)-1]) {
				continue
			}
			top = top[:len(top)-1]
		}
		j := len(top)
		top = append(top, c)
		for ; j > 0 && c.better(top[j-1]); j-- {
			top[j] = top[j-1]
		}
		top[j] = c
	}
	if len(top) == 0 {
		return Placement{}, s.explain(req, hosts)
	}
	p := Placement{HostID: top[0].id, Score: round(top[0].score)}
	for _, c := range top[1:] {
		p.RunnersUp = append(p.RunnersUp, Candidate{c.id, round(c.score)})
	}
	return p, nil
}

// reject returns the Reason of the first filter that rules h out, or Fit.
func (s *Scheduler) reject(req Request, h *Host) Reason {
	for _, f := range s.Filters {
		if r := f.Filter(req, h); r != Fit {
			return r
		}
	}
	return Fit
}

func (s *Scheduler) score(req Request, h *Host) float64 {
	var sum, weights float64
	for _, ws := range s.Scorers {
		sum += ws.Weight * ws.Score(req, h)
		weights += ws.Weight
	}
	if weights == 0 {
		return 0
	}
	return sum / weights
}

// scored is a feasible host with its exact combined score; candidates are
// ranked on the exact score, and only rounded for the Placement.
type scored struct {
	id    string
	score float64
}

func (c scored) better(o scored) bool {
	if c.score != o.score {
		return c.score > o.score
	}
	return c.id < o.id
}

func round(score float64) int64 { return int64(math.Round(score)) }

func validate(req Request) error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"VCPUs", req.VCPUs},
		{"MemoryBytes", req.MemoryBytes},
		{"DiskBytes", req.DiskBytes},
	} {
		if f.v <= 0 {
			errs = append(errs, fmt.Errorf("%w: %s must be positive, got %d", ErrInvalidRequest, f.name, f.v))
		}
	}
	return errors.Join(errs...)
}
