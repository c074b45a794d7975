package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

// azureMix is the share of each Azure flavor (vCPU, GiB) in the trace's
// first pass, rounded: a realistic request mix without reading the trace.
var azureMix = []struct {
	r      Resources
	weight int
}{
	{flavor(0), 18}, {flavor(1), 30}, {flavor(2), 2}, {flavor(3), 1}, {flavor(4), 3}, {flavor(5), 1},
	{flavor(6), 20}, {flavor(7), 3}, {flavor(8), 2}, {flavor(9), 1}, {flavor(10), 10}, {flavor(11), 2},
	{flavor(12), 4}, {flavor(13), 1}, {flavor(14), 3}, {flavor(15), 1},
}

// mixStream is n requests drawn from azureMix with bursts: a tenant asks
// for several VMs of one flavor at once, as in the trace.
func mixStream(n int, seed uint64) []Resources {
	r := rand.New(rand.NewPCG(seed, 1))
	total := 0
	for _, m := range azureMix {
		total += m.weight
	}
	out := make([]Resources, 0, n)
	for len(out) < n {
		x := r.IntN(total)
		var f Resources
		for _, m := range azureMix {
			if x < m.weight {
				f = m.r
				break
			}
			x -= m.weight
		}
		for range 1 + r.IntN(8) {
			out = append(out, f)
		}
	}
	return out[:n]
}

// benchHosts is the benchmark cluster: 64 vCPU, 256 GiB, 4 TiB, ratio 1,
// over 3 centers x 5 racks.
func benchHosts(n int) []Host {
	hosts := make([]Host, n)
	for j := range hosts {
		c := fmt.Sprintf("c%d", j%3)
		hosts[j] = Host{ID: fmt.Sprintf("h%05d", j), Center: c, Site: c, Rack: fmt.Sprintf("%s-r%d", c, (j/3)%5),
			Capacity: standard, Ratios: Ratios{1, 1, 1}}
	}
	return hosts
}

// BenchmarkPlace is W1-like: place and allocate a realistic mix until the
// cluster is 97% full by CPU, then start again on a fresh cluster (outside
// the timer). One op is one decision plus its Allocate.
func BenchmarkPlace(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			hosts := benchHosts(n)
			stream := mixStream(n*40, 7)
			limit := int64(n) * 64 * 97 / 100
			var c *Cluster
			var used int64
			i := 0
			fresh := func() {
				var err error
				if c, err = NewCluster(hosts, Options{Seed: 1}); err != nil {
					b.Fatal(err)
				}
				used, i = 0, 0
			}
			fresh()
			for b.Loop() {
				if used >= limit || i == len(stream) {
					b.StopTimer()
					fresh()
					b.StartTimer()
				}
				req := Request{Resources: stream[i]}
				i++
				p, err := c.Place(req)
				var nf *NoFitError
				if errors.As(err, &nf) {
					used = limit
					continue
				}
				if err != nil {
					b.Fatal(err)
				}
				if err := c.Allocate(p.HostID, req.Resources); err != nil {
					b.Fatal(err)
				}
				used += req.VCPUs
			}
		})
	}
}

// BenchmarkPlaceChurn: a cluster held at about 90% CPU by releasing the
// oldest VM for each new one.
func BenchmarkPlaceChurn(b *testing.B) {
	const n = 1000
	c, err := NewCluster(benchHosts(n), Options{Seed: 1})
	if err != nil {
		b.Fatal(err)
	}
	stream := mixStream(200000, 9)
	type vm struct {
		host string
		r    Resources
	}
	var live []vm
	var used int64
	i := 0
	place := func() {
		r := stream[i%len(stream)]
		i++
		p, err := c.Place(Request{Resources: r})
		if err != nil {
			return
		}
		_ = c.Allocate(p.HostID, r)
		live = append(live, vm{p.HostID, r})
		used += r.VCPUs
	}
	for used < n*64*9/10 {
		place()
	}
	for b.Loop() {
		old := live[0]
		live = live[1:]
		_ = c.Release(old.host, old.r)
		used -= old.r.VCPUs
		place()
	}
}
