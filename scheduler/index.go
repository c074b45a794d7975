package scheduler

import (
	"cmp"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

// The index. Hosts that the filters other than capacity cannot tell apart
// (same state, owner, center, site, rack, labels, capacity, reservation and
// ratios) form a class; a decision runs those filters once per class.
// Classes with
// the same Allocatable vector share a pool, and a pool indexes its hosts by
// free vector:
//
//	pool (Allocatable)
//	  levels, by free vCPU ascending
//	    buckets, by free memory ascending: one per (free vCPU, free memory)
//	      all: every host of the bucket, by tie-break rank descending
//	      subs, one per class with hosts in the bucket
//	        hosts, by tie-break rank (tieHash, then ID) descending
//
// Every host of a bucket costs the same (the cost depends only on free vCPU
// and memory, the pool's Allocatable and the class), so a decision scores
// once per bucket and takes hosts in rank order: from the merged list when
// the decision treats every class of the pool alike (the common case: no
// constraints, no group), else from the subs of the classes that pass, each
// at its class's group penalty. Disk is only a
// filter: each host keeps its own free disk, a sub knows the most any of its
// hosts has, and a host short of disk is passed over. (Keying buckets on
// disk too would multiply them tenfold on the Azure trace, where every VM
// takes 40 GiB of 4 TiB and disk never runs out.) The levels and
// buckets are searched best first with a bound (see search), so a decision
// looks at the buckets near the best fit, not at every host.

// class is the hosts the filters other than capacity cannot tell apart.
type class struct {
	key  string
	idx  int  // position in Cluster.classes
	host Host // the stand-in: a member's attributes, no ID, nothing allocated
	rack rackKey
	pool *pool
	n    int // hosts in the class
	out  int // of which taken out of the index for the current decision
}

// pool is the classes sharing one Allocatable vector, and their hosts by
// free vector.
type pool struct {
	alloc   Resources
	classes []*class
	levels  []*level
	maxMem  int64 // the most free memory any host here has had: a bound
	spare   *spareNodes
}

// spareNodes keeps emptied levels, buckets and subs for reuse: free
// vectors come and go with every placement, and reusing their nodes spares
// the garbage collector.
type spareNodes struct {
	levels  []*level
	buckets []*bucket
	subs    []*sub
}

func take[T any](list *[]*T) *T {
	if n := len(*list); n > 0 {
		x := (*list)[n-1]
		*list = (*list)[:n-1]
		return x
	}
	return new(T)
}

type level struct {
	cpu     int64
	buckets []*bucket
}

type bucket struct {
	free Resources // vCPU and memory; DiskBytes is 0
	subs []*sub
	// all is every host of the bucket, whatever its class: what a decision
	// that treats every class alike takes hosts from.
	all ranked
}

type sub struct {
	cls *class
	ranked
}

// ranked is hosts by rank descending (the best-ranked host is last), with
// the most free disk any of them has (maxDisk) and how many have it: a
// request needing more skips the list.
type ranked struct {
	hosts    []*hostRec
	maxDisk  int64
	nMaxDisk int
}

func (l *ranked) add(r *hostRec) {
	// Descending rank: find the first host ranked below r.
	i, _ := slices.BinarySearchFunc(l.hosts, r, func(x, t *hostRec) int {
		if rankLess(t, x) {
			return -1
		}
		if x == t {
			return 0
		}
		return 1
	})
	l.hosts = slices.Insert(l.hosts, i, r)
	switch d := r.free.DiskBytes; {
	case len(l.hosts) == 1 || d > l.maxDisk:
		l.maxDisk, l.nMaxDisk = d, 1
	case d == l.maxDisk:
		l.nMaxDisk++
	}
}

// del removes r and reports whether the list is empty.
func (l *ranked) del(r *hostRec) bool {
	i, found := slices.BinarySearchFunc(l.hosts, r, func(x, t *hostRec) int {
		if x == t {
			return 0
		}
		if rankLess(t, x) {
			return -1
		}
		return 1
	})
	if !found {
		panic("scheduler: index out of step with host " + r.h.ID)
	}
	l.hosts = slices.Delete(l.hosts, i, i+1)
	if len(l.hosts) == 0 {
		return true
	}
	if r.free.DiskBytes == l.maxDisk {
		if l.nMaxDisk--; l.nMaxDisk == 0 {
			l.maxDisk = l.hosts[0].free.DiskBytes
			for _, x := range l.hosts {
				switch {
				case x.free.DiskBytes > l.maxDisk:
					l.maxDisk, l.nMaxDisk = x.free.DiskBytes, 1
				case x.free.DiskBytes == l.maxDisk:
					l.nMaxDisk++
				}
			}
		}
	}
	return false
}

// offer offers t the hosts of l with need's disk, best-ranked first, at
// cost, until t turns one down.
func (l *ranked) offer(t *topK, cost float64, disk int64) {
	if l.maxDisk < disk {
		return
	}
	for k := len(l.hosts) - 1; k >= 0; k-- {
		if r := l.hosts[k]; r.free.DiskBytes >= disk && !t.offer(cost, r) {
			return
		}
	}
}

// rankLess orders hosts for tie-breaks: by tieHash, then by ID.
func rankLess(a, b *hostRec) bool {
	if a.hash != b.hash {
		return a.hash < b.hash
	}
	return a.h.ID < b.h.ID
}

// classKey is the static signature of h.
func classKey(h *Host, alloc Resources) string {
	var b strings.Builder
	w := func(s string) { b.WriteString(strconv.Quote(s)); b.WriteByte(0) }
	wi := func(n int64) { b.WriteString(strconv.FormatInt(n, 10)); b.WriteByte(0) }
	w(h.Center)
	w(h.Site)
	w(h.Rack)
	w(h.Owner)
	wi(int64(h.State))
	for _, r := range []Resources{alloc, h.Capacity, h.Reserved} {
		wi(r.VCPUs)
		wi(r.MemoryBytes)
		wi(r.DiskBytes)
	}
	keys := slices.Sorted(maps.Keys(h.Labels))
	for _, k := range keys {
		w(k)
		w(h.Labels[k])
	}
	return b.String()
}

// join puts r in the class its static attributes say.
func (c *Cluster) join(r *hostRec) {
	key := classKey(&r.h, r.alloc)
	cls := c.classByKey[key]
	if cls == nil {
		p := c.pools[r.alloc]
		if p == nil {
			p = &pool{alloc: r.alloc, spare: &c.spare}
			c.pools[r.alloc] = p
			c.poolList = append(c.poolList, p)
		}
		cls = &class{key: key, idx: len(c.classes), host: r.h, rack: rackOf(&r.h), pool: p}
		cls.host.Allocated = Resources{}
		cls.host.ID = "" // a stand-in: no group member, named by no constraint
		c.classByKey[key] = cls
		c.classes = append(c.classes, cls)
		p.classes = append(p.classes, cls)
		c.classVersion++
	}
	cls.n++
	r.cls = cls
}

// leave takes r out of its class, dropping the class (and its pool) when
// it empties.
func (c *Cluster) leave(r *hostRec) {
	cls := r.cls
	r.cls = nil
	cls.n--
	if cls.n > 0 {
		return
	}
	delete(c.classByKey, cls.key)
	last := c.classes[len(c.classes)-1]
	c.classes[cls.idx] = last
	last.idx = cls.idx
	c.classes = c.classes[:len(c.classes)-1]
	p := cls.pool
	p.classes = slices.DeleteFunc(p.classes, func(x *class) bool { return x == cls })
	if len(p.classes) == 0 {
		delete(c.pools, p.alloc)
		c.poolList = slices.DeleteFunc(c.poolList, func(x *pool) bool { return x == p })
	}
	c.classVersion++
}

// insert puts r in its pool's index under its free vector.
func (p *pool) insert(r *hostRec) {
	f := r.free
	li, found := slices.BinarySearchFunc(p.levels, f.VCPUs, levelCmp)
	if !found {
		l := take(&p.spare.levels)
		l.cpu = f.VCPUs
		p.levels = slices.Insert(p.levels, li, l)
	}
	l := p.levels[li]
	bi, found := slices.BinarySearchFunc(l.buckets, f.MemoryBytes, bucketCmp)
	if !found {
		b := take(&p.spare.buckets)
		b.free = Resources{f.VCPUs, f.MemoryBytes, 0}
		l.buckets = slices.Insert(l.buckets, bi, b)
	}
	b := l.buckets[bi]
	var s *sub
	for _, x := range b.subs {
		if x.cls == r.cls {
			s = x
			break
		}
	}
	if s == nil {
		s = take(&p.spare.subs)
		s.cls = r.cls
		b.subs = append(b.subs, s)
	}
	s.add(r)
	b.all.add(r)
	r.b, r.s = b, s
	p.maxMem = max(p.maxMem, f.MemoryBytes)
}

func levelCmp(l *level, cpu int64) int   { return cmp.Compare(l.cpu, cpu) }
func bucketCmp(b *bucket, mem int64) int { return cmp.Compare(b.free.MemoryBytes, mem) }

// remove takes r out of its pool's index, dropping what empties.
func (p *pool) remove(r *hostRec) {
	s, b := r.s, r.b
	r.s, r.b = nil, nil
	b.all.del(r)
	if !s.del(r) {
		return
	}
	b.subs = slices.DeleteFunc(b.subs, func(x *sub) bool { return x == s })
	s.cls = nil
	p.spare.subs = append(p.spare.subs, s)
	if len(b.subs) > 0 {
		return
	}
	f := b.free
	li, _ := slices.BinarySearchFunc(p.levels, f.VCPUs, levelCmp)
	l := p.levels[li]
	bi, _ := slices.BinarySearchFunc(l.buckets, f.MemoryBytes, bucketCmp)
	l.buckets = slices.Delete(l.buckets, bi, bi+1)
	p.spare.buckets = append(p.spare.buckets, b)
	if len(l.buckets) == 0 {
		p.levels = slices.Delete(p.levels, li, li+1)
		p.spare.levels = append(p.spare.levels, l)
	}
}

// classEval is what the filters other than capacity say about the hosts of
// a class that are still in the index.
type classEval struct {
	reason Reason  // Fit: the class passes
	pen    float64 // soft group cost on its hosts that hold no member
}

// evalClasses runs the filters other than capacity once per class, on the
// class's stand-in host. Without a group the answer depends only on the
// request's project, center and constraints (staticKey: key, cacheable),
// and is cached until the set of classes changes.
func (c *Cluster) evalClasses(d *decision, key string, cacheable bool) []classEval {
	if cacheable {
		if c.evalVersion != c.classVersion {
			clear(c.evalCache)
			c.evalVersion = c.classVersion
		}
		if ev, ok := c.evalCache[key]; ok {
			return ev
		}
	}
	ev := make([]classEval, len(c.classes))
	for i, cls := range c.classes {
		ev[i].reason = rejectPlacement(d, &cls.host)
		if g := d.group; g != nil && ev[i].reason == Fit {
			ev[i].pen = g.softPenalty(0, g.racks[cls.rack], g.centers[cls.host.Center])
		}
	}
	if cacheable {
		if len(c.evalCache) > 256 {
			clear(c.evalCache) // many distinct constraint sets: keep it bounded
		}
		c.evalCache[key] = ev
	}
	return ev
}

// staticKey is what the filters other than capacity read of a request
// without a group: its project, center and constraints.
func staticKey(d *decision) (string, bool) {
	if d.group != nil {
		return "", false
	}
	if len(d.req.Constraints) == 0 && d.req.Center == "" && d.req.Project == "" {
		return "", true
	}
	var b strings.Builder
	b.WriteString(strconv.Quote(d.req.Project))
	b.WriteString(strconv.Quote(d.req.Center))
	for _, k := range d.req.Constraints {
		b.WriteString(strconv.Quote(k.String()))
	}
	return b.String(), true
}

// boundSlack absorbs rounding between a bound and the cost it bounds.
const boundSlack = 1e-9

// search offers t the best hosts of p for d: every host whose cost could
// make the top k. A level or bucket is skipped only when a lower bound on
// its cost (group penalties are never negative and are left out of it)
// exceeds the k-th candidate so far; see the bounds below.
func (p *pool) search(d *decision, ev []classEval, t *topK) {
	need, a, w := d.req.Resources, p.alloc, d.w
	if !need.Fits(a) {
		return
	}
	// uniform: every class with hosts in the index passes, at one penalty,
	// so a bucket's hosts are taken from its merged list.
	passing, uniform, pen0 := false, true, math.NaN()
	for _, cls := range p.classes {
		e := ev[cls.idx]
		switch {
		case cls.n == cls.out:
		case e.reason != Fit:
			uniform = false
		case math.IsNaN(pen0):
			passing, pen0 = true, e.pen
		default:
			uniform = uniform && e.pen == pen0
		}
	}
	if !passing {
		return
	}
	offer := func(b *bucket, cost0 float64) {
		if uniform {
			b.all.offer(t, cost0+pen0, need.DiskBytes)
			return
		}
		for _, s := range b.subs {
			if e := ev[s.cls.idx]; e.reason == Fit {
				s.offer(t, cost0+e.pen, need.DiskBytes)
			}
		}
	}
	li, _ := slices.BinarySearchFunc(p.levels, need.VCPUs, levelCmp)
	if d.strategy == Spread {
		// Most leftover first: levels from the top, buckets from the top;
		// the cost is minus the leftover, at least minus what the level
		// (bucket) could leave with the most memory seen in the pool.
		mostMem := w.mem * frac(p.maxMem-need.MemoryBytes, a.MemoryBytes)
		for i := len(p.levels) - 1; i >= li; i-- {
			l := p.levels[i]
			cc := w.cpu * frac(l.cpu-need.VCPUs, a.VCPUs)
			if -(cc + mostMem) > t.threshold() {
				break
			}
			for j := len(l.buckets) - 1; j >= 0; j-- {
				b := l.buckets[j]
				if b.free.MemoryBytes < need.MemoryBytes {
					break
				}
				cost := shapeCost(d, b.free, a)
				if cost > t.threshold() {
					break // the rest of the level leaves less
				}
				offer(b, cost)
			}
		}
		return
	}
	// Binpack: least leftover first. For a level (lc fixed) the cost is at
	// least w.cpu·lc + memCostFloor(lc, 0), which grows with lc. Along a
	// level's buckets the cost is convex in lm, least at lmLeast (0 or the
	// kink lc·ρ): scan up from there and down from there, each way until a
	// bucket costs more than the threshold, as every bucket beyond it costs
	// more still. The group terms are never negative.
	lmOf := func(b *bucket) float64 { return frac(b.free.MemoryBytes-need.MemoryBytes, a.MemoryBytes) }
	for i := li; i < len(p.levels); i++ {
		l := p.levels[i]
		if l.buckets[len(l.buckets)-1].free.MemoryBytes < need.MemoryBytes {
			continue // no host at this level has the memory
		}
		lc := frac(l.cpu-need.VCPUs, a.VCPUs)
		cc := w.cpu * lc
		if cc+w.memCostFloor(lc, 0) > t.threshold() {
			break
		}
		lo, _ := slices.BinarySearchFunc(l.buckets, need.MemoryBytes, bucketCmp)
		least := w.memLeast(lc)
		mid := lo
		if least > 0 {
			mid, _ = slices.BinarySearchFunc(l.buckets[lo:], least, func(b *bucket, x float64) int { return cmp.Compare(lmOf(b), x) })
			mid += lo
		}
		for j := mid; j < len(l.buckets); j++ {
			b := l.buckets[j]
			cost := cc + w.memCost(lc, lmOf(b))
			if cost > t.threshold() {
				break
			}
			offer(b, cost)
		}
		for j := mid - 1; j >= lo; j-- {
			b := l.buckets[j]
			cost := cc + w.memCost(lc, lmOf(b))
			if cost > t.threshold() {
				break
			}
			offer(b, cost)
		}
	}
}

// threshold is the cost a candidate must not exceed to enter t: the k-th
// best so far (plus slack), or +Inf while t is not full.
func (t *topK) threshold() float64 {
	if len(t.c) < t.k {
		return math.Inf(1)
	}
	return t.c[len(t.c)-1].cost + boundSlack
}

// explainIndex builds the NoFitError from the classes and buckets, not host
// by host; hosts taken out of the index (group members) come as indiv.
func (c *Cluster) explainIndex(d *decision, ev []classEval, indiv []*hostRec) *NoFitError {
	e := &NoFitError{Request: *d.req, Total: len(c.hosts), Counts: map[Reason]int{}, Shortfalls: map[Reason]Shortfall{}}
	for _, p := range c.poolList {
		anyPass := false
		for _, cls := range p.classes {
			if r := ev[cls.idx].reason; r != Fit {
				e.Counts[r] += cls.n - cls.out
			} else {
				anyPass = true
			}
		}
		if !anyPass {
			continue
		}
		for _, l := range p.levels {
			for _, b := range l.buckets {
				reason := capacityReason(d.req.Resources, Resources{b.free.VCPUs, b.free.MemoryBytes, math.MaxInt64})
				for _, s := range b.subs {
					if ev[s.cls.idx].reason != Fit {
						continue
					}
					if reason != Fit {
						e.countHosts(reason, b.free, s.hosts)
						continue
					}
					// vCPU and memory fit: each host here is short of disk.
					for _, r := range s.hosts {
						if r.free.DiskBytes >= d.req.DiskBytes {
							panic("scheduler: a fitting host was not chosen")
						}
						e.count(ReasonDisk, 1, r.free, r.h.ID)
					}
				}
			}
		}
	}
	for _, r := range indiv {
		e.count(reject(d, &r.h), 1, r.free, r.h.ID)
	}
	return e
}

// countHosts counts hosts that share the free vector free. Their smallest
// ID is looked for only when they could be the nearest miss (count keeps
// the rule).
func (e *NoFitError) countHosts(reason Reason, free Resources, hosts []*hostRec) {
	id := ""
	if dim, ok := dimensionOf(reason); ok {
		if sf, seen := e.Shortfalls[reason]; !seen || dim.of(free) >= sf.MostFree {
			id = hosts[0].h.ID
			for _, r := range hosts[1:] {
				id = min(id, r.h.ID)
			}
		}
	}
	e.count(reason, len(hosts), free, id)
}
