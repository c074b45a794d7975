package scheduler

// Pressure: what Binpack does once the pool has run out.
//
// Binpack fills hosts up and keeps large holes whole, so that the next large
// VM finds room (W2's free 16c/112g slots at the CPU peak). That is right
// while there is room for everyone. Once the pool is nearly full and still
// refusing requests for lack of capacity, demand exceeds supply: every vCPU
// that frees up will find a taker, and the only question left is how many
// requests get served. Keeping large holes whole then serves the large
// request that comes next and refuses the burst of small ones after it;
// taking the small ones from the largest holes serves many of them in the
// same room. So a Binpack cluster under pressure decides as Spread does
// (most leftover wins) until a window of decisions (100) has passed without
// another such refusal (Options.PressureWindow; negative turns it off).
//
// Under pressure is: a request was refused with at least one host ruled out
// for capacity (not only by state, owner, location or group rules), while
// the ready hosts were at least pressureFull allocated in vCPU or memory. A
// request larger than any host, or one kept to a small corner of a lightly
// used cluster, is refused without putting the cluster under pressure.
//
// The trade is deliberate and measured (docs/performance.md, "Under
// pressure"): on the Azure trace with too few hosts, fewer requests are
// refused than by best fit or by sampling, while the large requests among
// them are refused more often. Before the first refusal nothing changes, so
// W1's packing up to the first refusal and W2 at 720 hosts (no refusals)
// are as Binpack alone makes them.
//
// DefaultPressureWindow was fixed after measuring W2 with too few hosts
// (H = 300 to 650 in steps of 25; docs/performance.md). Each window
// measured (20, 100, 1,000 decisions) refuses fewer requests than both
// baselines at every H from 300 to 600; longer windows refuse fewer
// requests and more vCPU (the large ones), shorter ones the reverse. At
// 100 the vCPU refused is at most 4% above the better baseline's.
// pressureFull only tells a full pool from an awkward request: in those
// runs the free vCPU at a refusal averages under 1% of the pool.
const DefaultPressureWindow = 100

// pressureFull is how full (vCPU or memory, over the ready hosts) the pool
// must be for a refusal to put it under pressure.
const pressureFull = 0.95

// pressed reports whether the current decision (c.decisions) is made
// under pressure.
func (c *Cluster) pressed() bool { return c.decisions <= c.pressureUntil }

// PressureDecisions is how many decisions so far were made under pressure:
// how long the pool has been refusing for lack of room (yunchi simulate
// prints it; see pressure.go).
func (c *Cluster) PressureDecisions() uint64 { return c.pressured }

// notePressure looks at a decision's outcome: a refusal for capacity in a
// nearly full pool puts the cluster under pressure for the next
// Options.PressureWindow decisions.
func (c *Cluster) notePressure(nf *NoFitError) {
	if nf == nil || c.opt.PressureWindow < 0 {
		return
	}
	capacity := false
	for r, n := range nf.Counts {
		if _, ok := dimensionOf(r); ok && n > 0 {
			capacity = true
			break
		}
	}
	if !capacity {
		return
	}
	uc, um := frac(c.used.VCPUs, c.total.VCPUs), frac(c.used.MemoryBytes, c.total.MemoryBytes)
	if max(uc, um) < pressureFull {
		return
	}
	c.pressureUntil = c.decisions + uint64(c.opt.PressureWindow)
}
