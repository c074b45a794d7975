package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

// flavors is the Azure trace's VM shapes (vCPU, GiB).
var flavors = [][2]float64{
	{1, 0.75}, {1, 1.75}, {1, 2}, {16, 112}, {2, 14}, {2, 16}, {2, 3.5}, {2, 4},
	{4, 28}, {4, 32}, {4, 7}, {4, 8}, {8, 14}, {8, 16}, {8, 56}, {8, 64},
}

func flavor(i int) Resources {
	f := flavors[i%len(flavors)]
	return Resources{int64(f[0]), int64(f[1] * float64(GiB)), 40 * GiB}
}

// randomHost is a host with varied static attributes and allocations.
func randomHost(r *rand.Rand, id string) Host {
	h := Host{
		ID:       id,
		Center:   []string{"a1", "a2"}[r.IntN(2)],
		Site:     "s1",
		Rack:     []string{"r1", "r2", "r3"}[r.IntN(3)],
		Capacity: []Resources{standard, {32, 128 * GiB, 2 * TiB}, {64, 256 * GiB, 150 * GiB}}[r.IntN(3)],
		Ratios:   []Ratios{{1, 1, 1}, {}, {2, 1, 1}}[r.IntN(3)],
	}
	switch r.IntN(10) {
	case 0:
		h.State = HostMaintenance
	case 1:
		h.State = HostDown
	case 2:
		h.State = HostDraining
	}
	if r.IntN(6) == 0 {
		h.Owner = []string{"p1", "p2"}[r.IntN(2)]
	}
	if r.IntN(2) == 0 {
		h.Labels = map[string]string{"cpu_model": []string{"kunpeng920", "x86"}[r.IntN(2)]}
	}
	if r.IntN(4) == 0 {
		h.Reserved = Resources{2, 4 * GiB, 0}
	}
	free := h.Allocatable()
	for range r.IntN(12) {
		f := flavor(r.IntN(len(flavors)))
		if f.Fits(free.Sub(h.Allocated)) {
			h.Allocated = h.Allocated.Add(f)
		}
	}
	return h
}

func randomRequest(r *rand.Rand, hostIDs []string) Request {
	req := Request{Name: "vm", Resources: flavor(r.IntN(len(flavors)))}
	if r.IntN(3) == 0 {
		req.Project = []string{"p1", "p2", "p3"}[r.IntN(3)]
	}
	if r.IntN(5) == 0 {
		req.Center = []string{"a1", "a2", "zz"}[r.IntN(3)]
	}
	if r.IntN(4) == 0 {
		req.Constraints = append(req.Constraints, []Constraint{
			{Key: "cpu_model", Op: OpEq, Values: []string{"kunpeng920"}},
			{Key: "rack", Op: OpNe, Values: []string{"r2"}},
			{Key: "rack", Op: OpIn, Values: []string{"r1", "r3"}},
			{Key: "cpu_model", Op: OpNotIn, Values: []string{"x86"}},
			{Key: "host", Op: OpIn, Values: []string{hostIDs[r.IntN(len(hostIDs))], hostIDs[r.IntN(len(hostIDs))], "nohost"}},
			{Key: "host", Op: OpNe, Values: []string{hostIDs[r.IntN(len(hostIDs))]}},
		}[r.IntN(6)])
	}
	if r.IntN(3) == 0 {
		g := &Group{
			Name: "g", Affinity: r.IntN(2) == 0, Level: Level(r.IntN(3)), Hard: r.IntN(2) == 0,
			Members: map[string]int{},
		}
		if r.IntN(3) == 0 {
			g.MaxPerHost = 1 + r.IntN(2)
		}
		for range r.IntN(4) {
			g.Members[hostIDs[r.IntN(len(hostIDs))]] += 1 + r.IntN(2)
		}
		g.Members["not-a-host"] = 1
		req.Group = g
	}
	return req
}

// placeScan decides by looking at every host, and explainScan explains a
// miss host by host: the reference the index (Cluster.place, explainIndex)
// is tested against.
func (c *Cluster) placeScan(d *decision) (Placement, error) {
	t := &topK{k: 1 + c.opt.RunnersUp}
	for _, r := range c.hosts {
		if reject(d, &r.h) != Fit {
			continue
		}
		cost := shapeCost(d, r.free, r.alloc) + d.group.hostPenalty(&r.h)
		t.offer(cost, r)
	}
	if len(t.c) == 0 {
		return Placement{}, c.explainScan(d)
	}
	return t.placement(d), nil
}

func (c *Cluster) explainScan(d *decision) *NoFitError {
	e := &NoFitError{Request: *d.req, Total: len(c.hosts), Counts: map[Reason]int{}, Shortfalls: map[Reason]Shortfall{}}
	for _, r := range c.hosts {
		e.count(reject(d, &r.h), 1, r.free, r.h.ID)
	}
	return e
}

// TestIndexMatchesScan: the indexed decision and its explanation equal the
// reference that looks at every host, over random clusters, requests and
// updates, for both strategies.
func TestIndexMatchesScan(t *testing.T) {
	for _, strategy := range []Strategy{Binpack, Spread} {
		for seed := range uint64(6) {
			r := rand.New(rand.NewPCG(seed, 99))
			n := 20 + r.IntN(60)
			var hosts []Host
			var ids []string
			for i := range n {
				id := fmt.Sprintf("h%03d", i)
				hosts = append(hosts, randomHost(r, id))
				ids = append(ids, id)
			}
			c := mustCluster(t, hosts, Options{Strategy: strategy, Seed: int64(seed)})
			fits, misses := 0, 0
			for step := range 600 {
				req := randomRequest(r, ids)
				got, gotErr := c.Place(req)
				d := c.newDecision(&req, nil)
				want, wantErr := c.placeScan(d)
				if !reflect.DeepEqual(got, want) || fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
					t.Fatalf("%v seed %d step %d, %+v (group %+v):\nindex %+v, %v\nscan  %+v, %v", strategy, seed, step, req, req.Group, got, gotErr, want, wantErr)
				}
				var a, b *NoFitError
				if errors.As(gotErr, &a) && errors.As(wantErr, &b) && !reflect.DeepEqual(a, b) {
					t.Fatalf("step %d: explanations differ:\n%+v\n%+v", step, a, b)
				}
				if gotErr == nil {
					fits++
					if r.IntN(4) != 0 {
						if err := c.Allocate(got.HostID, req.Resources); err != nil {
							t.Fatal(err)
						}
					}
				} else {
					misses++
				}
				switch r.IntN(10) {
				case 0:
					id := ids[r.IntN(len(ids))]
					h, _ := c.Host(id)
					if h.Allocated.VCPUs > 0 {
						if err := c.Release(id, Resources{1, 0, 0}); err != nil {
							t.Fatal(err)
						}
					}
				case 1:
					id := ids[r.IntN(len(ids))]
					c.Upsert(randomHost(r, id))
				case 2:
					id := fmt.Sprintf("h%03d", len(ids))
					ids = append(ids, id)
					c.Upsert(randomHost(r, id))
				}
			}
			if fits < 100 || misses < 10 {
				t.Errorf("%v seed %d: %d fits, %d misses: the test should exercise both", strategy, seed, fits, misses)
			}
		}
	}
}
