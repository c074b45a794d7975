//go:build contract

package sim

import (
	"errors"
	"fmt"

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
