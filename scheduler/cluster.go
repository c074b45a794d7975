package scheduler

import (
	"errors"
	"fmt"
	"maps"
)

// Options tune a Cluster's decisions.
type Options struct {
	Strategy  Strategy // default Binpack
	Seed      int64    // tie-breaks; same state+request+seed -> same answer
	RunnersUp int      // candidates listed after the winner (default 3; negative: none)
	// PressureWindow is how many decisions a Binpack cluster spreads for
	// after a refusal in a nearly full pool (pressure.go): 0 is the
	// default, DefaultPressureWindow; negative never spreads.
	PressureWindow int
}

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

// hostRec is one host as the Cluster holds it.
type hostRec struct {
	h     Host
	hash  uint64 // tie-break rank: hash of the seed and the ID
	alloc Resources
	free  Resources
	cls   *class  // its class, by static attributes
	b     *bucket // where the index has it; nil while taken out
	s     *sub
}

// Cluster is an indexed, mutable snapshot of hosts, built once and updated
// incrementally with Allocate, Release and Upsert.
//
// A Cluster is not safe for concurrent use: the controller serialises
// decisions (one at a time on the raft leader), and so must any other
// caller.
type Cluster struct {
	opt   Options
	hosts map[string]*hostRec

	classByKey   map[string]*class
	classes      []*class
	pools        map[Resources]*pool
	poolList     []*pool
	classVersion uint64 // bumped when a class appears or goes
	evalCache    map[string][]classEval
	evalVersion  uint64
	// version is bumped by every change to a host. The explanation of a
	// request that fits nowhere stays true until then: a full cluster
	// rejects request after request, and each would otherwise walk the index.
	version      uint64
	total, used  Resources // Allocatable and Allocated over ready hosts
	nofitCache   map[nofitKey]*NoFitError
	nofitVersion uint64
	top          topK       // the candidates of the current decision
	dec          decision   // the current decision
	req          Request    // its request
	spare        spareNodes // emptied index nodes, for reuse
	// decisions counts decisions made (a batch member is one); the cluster
	// is under pressure (pressure.go) up to decision pressureUntil;
	// pressured counts the decisions made under it.
	decisions, pressureUntil, pressured uint64
}

type nofitKey struct {
	static string
	need   Resources
}

// NewCluster indexes hosts. It fails, changing nothing, on an empty or
// duplicate host ID.
func NewCluster(hosts []Host, opt Options) (*Cluster, error) {
	c := &Cluster{
		opt:        opt,
		hosts:      make(map[string]*hostRec, len(hosts)),
		classByKey: map[string]*class{},
		pools:      map[Resources]*pool{},
		evalCache:  map[string][]classEval{},
		nofitCache: map[nofitKey]*NoFitError{},
	}
	if opt.RunnersUp == 0 {
		c.opt.RunnersUp = 3
	}
	if c.opt.RunnersUp < 0 {
		c.opt.RunnersUp = 0
	}
	if c.opt.PressureWindow == 0 {
		c.opt.PressureWindow = DefaultPressureWindow
	}
	if opt.Strategy != Binpack && opt.Strategy != Spread {
		return nil, fmt.Errorf("unknown strategy %d: want Binpack or Spread", int(opt.Strategy))
	}
	seen := make(map[string]bool, len(hosts))
	for i := range hosts {
		id := hosts[i].ID
		if id == "" {
			return nil, fmt.Errorf("host %d of %d has no ID", i+1, len(hosts))
		}
		if seen[id] {
			return nil, fmt.Errorf("host ID %q appears twice: host IDs must be unique", id)
		}
		seen[id] = true
	}
	for i := range hosts {
		c.Upsert(hosts[i])
	}
	return c, nil
}

// Len is the number of hosts.
func (c *Cluster) Len() int { return len(c.hosts) }

// Host returns the host with id as the Cluster has it.
func (c *Cluster) Host(id string) (Host, bool) {
	r, ok := c.hosts[id]
	if !ok {
		return Host{}, false
	}
	h := r.h
	h.Labels = maps.Clone(h.Labels)
	return h, true
}

// Upsert adds h or replaces the host with its ID: state, labels, capacity,
// allocations, everything. A host without an ID is ignored.
func (c *Cluster) Upsert(h Host) {
	if h.ID == "" {
		return
	}
	r := c.hosts[h.ID]
	if r != nil && maps.Equal(r.h.Labels, h.Labels) {
		// Most upserts change what a host has allocated, not its labels:
		// keep the cluster's own copy rather than make another.
		h.Labels = r.h.Labels
	} else {
		h.Labels = maps.Clone(h.Labels)
	}
	c.version++
	if r == nil {
		r = &hostRec{hash: tieHash(c.opt.Seed, h.ID)}
		c.hosts[h.ID] = r
	} else {
		r.cls.pool.remove(r)
		c.leave(r)
		c.account(r, -1)
	}
	r.h = h
	r.alloc = h.Allocatable()
	r.free = r.alloc.Sub(h.Allocated)
	c.account(r, 1)
	c.join(r)
	r.cls.pool.insert(r)
}

// ErrUnknownHost is wrapped by Allocate and Release for a host ID the
// Cluster does not have.
var ErrUnknownHost = errors.New("unknown host")

// Allocate records that r was placed on hostID. It does not check that r
// fits: the caller has decided (and may knowingly overcommit).
func (c *Cluster) Allocate(hostID string, r Resources) error {
	rec, ok := c.hosts[hostID]
	if !ok {
		return fmt.Errorf("allocate on %q: %w", hostID, ErrUnknownHost)
	}
	if r.VCPUs < 0 || r.MemoryBytes < 0 || r.DiskBytes < 0 {
		return fmt.Errorf("allocate on %q: negative amount %+v (use Release)", hostID, r)
	}
	c.move(rec, rec.h.Allocated.Add(r))
	return nil
}

// Release records that r left hostID. Releasing more than is allocated is
// an error and changes nothing.
func (c *Cluster) Release(hostID string, r Resources) error {
	rec, ok := c.hosts[hostID]
	if !ok {
		return fmt.Errorf("release on %q: %w", hostID, ErrUnknownHost)
	}
	if r.VCPUs < 0 || r.MemoryBytes < 0 || r.DiskBytes < 0 {
		return fmt.Errorf("release on %q: negative amount %+v (use Allocate)", hostID, r)
	}
	if !r.Fits(rec.h.Allocated) {
		return fmt.Errorf("release on %q: %+v is more than is allocated there (%+v)", hostID, r, rec.h.Allocated)
	}
	c.move(rec, rec.h.Allocated.Sub(r))
	return nil
}

func (c *Cluster) move(rec *hostRec, allocated Resources) {
	c.version++
	p := rec.cls.pool
	p.remove(rec)
	c.account(rec, -1)
	rec.h.Allocated = allocated
	c.account(rec, 1)
	rec.free = rec.alloc.Sub(allocated)
	p.insert(rec)
}

// Place picks the best host for req. It does not allocate: call Allocate
// once the placement is committed. When no host can take req it returns a
// *NoFitError; for a request that can never be valid, an error wrapping
// ErrInvalidRequest.
func (c *Cluster) Place(req Request) (Placement, error) {
	if err := validate(&req); err != nil {
		return Placement{}, err
	}
	c.req = req
	p, err := c.place(c.newDecision(&c.req, nil))
	c.req = Request{}
	var nf *NoFitError
	if errors.As(err, &nf) {
		c.notePressure(nf)
	}
	return p, err
}

// PlaceBatch places reqs all or nothing: a Placement for each, in order, or
// an error naming the first request that could not be placed. Members of
// the batch that share a group (the same *Group, or the same group Name)
// respect it among themselves too: each is placed as if the ones before it
// were already there. It does not allocate.
func (c *Cluster) PlaceBatch(reqs []Request) ([]Placement, error) {
	for i := range reqs {
		if err := validate(&reqs[i]); err != nil {
			return nil, fmt.Errorf("%s: %w", batchName(reqs, i), err)
		}
	}
	type tentative struct {
		host string
		r    Resources
	}
	var done []tentative
	defer func() {
		for i := len(done) - 1; i >= 0; i-- {
			_ = c.Release(done[i].host, done[i].r) // undo: nothing else changed them
		}
	}()
	// placed[groupKey] = host ID -> members this batch placed there.
	placed := map[string]map[string]int{}
	out := make([]Placement, 0, len(reqs))
	for i := range reqs {
		req := reqs[i]
		var gk string
		var extra map[string]int
		if req.Group != nil {
			gk = groupKey(req.Group)
			extra = placed[gk]
		}
		c.req = req
		p, err := c.place(c.newDecision(&c.req, extra))
		c.req = Request{}
		if err != nil {
			var nf *NoFitError
			if errors.As(err, &nf) {
				c.notePressure(nf)
				nf.Batch, nf.Index = len(reqs), i
				return nil, nf
			}
			return nil, fmt.Errorf("%s: %w", batchName(reqs, i), err)
		}
		out = append(out, p)
		_ = c.Allocate(p.HostID, req.Resources) // a known host, a valid size
		done = append(done, tentative{p.HostID, req.Resources})
		if req.Group != nil {
			if extra == nil {
				extra = map[string]int{}
				placed[gk] = extra
			}
			extra[p.HostID]++
		}
	}
	return out, nil
}

// groupKey identifies a group within a batch: its name, or for a group
// without one, the *Group itself.
func groupKey(g *Group) string {
	if g.Name != "" {
		return "name:" + g.Name
	}
	return fmt.Sprintf("ptr:%p", g)
}

func batchName(reqs []Request, i int) string {
	if n := reqs[i].Name; n != "" {
		return fmt.Sprintf("request %q (%d of %d)", n, i+1, len(reqs))
	}
	return fmt.Sprintf("request %d of %d", i+1, len(reqs))
}

// newDecision resolves req's group against the hosts, adding extra (host ID
// -> members placed earlier in the same batch).
// The decision lives in c (decisions are serialised), sparing an
// allocation per decision.
func (c *Cluster) newDecision(req *Request, extra map[string]int) *decision {
	d := &c.dec
	c.decisions++
	strategy := c.opt.Strategy
	if strategy == Binpack && c.pressed() {
		strategy = Spread
		c.pressured++
	}
	*d = decision{req: req, strategy: strategy, w: c.weights()}
	if g := req.Group; g != nil {
		v := &groupView{Group: g, members: map[string]int{}, racks: map[rackKey]int{}, centers: map[string]int{}}
		add := func(m map[string]int) {
			for id, n := range m {
				r, ok := c.hosts[id]
				if !ok || n <= 0 {
					continue
				}
				v.members[id] += n
				v.total += n
				v.racks[rackOf(&r.h)] += n
				v.centers[r.h.Center] += n
			}
		}
		add(g.Members)
		add(extra)
		d.group = v
	}
	return d
}

// weights are the scoring weights for the cluster as it stands.
func (c *Cluster) weights() weights { return newWeights(c.used, c.total) }

// account adds (sign 1) or removes (sign -1) r from the cluster totals.
func (c *Cluster) account(r *hostRec, sign int64) {
	if r.h.State != HostReady {
		return
	}
	a, u := r.alloc, r.h.Allocated
	c.total = c.total.Add(Resources{sign * a.VCPUs, sign * a.MemoryBytes, sign * a.DiskBytes})
	c.used = c.used.Add(Resources{sign * u.VCPUs, sign * u.MemoryBytes, sign * u.DiskBytes})
}

// place is one decision: the static filters once per class, a bounded
// search of each pool's index, and the group's member hosts one by one.
func (c *Cluster) place(d *decision) (Placement, error) {
	// Hosts whose ID the filters or the group's score look at (members of
	// the group, hosts a host= constraint names) may be treated differently
	// from the rest of their class: take them out of the index and judge
	// them one by one.
	var indiv []*hostRec
	single := func(id string) {
		if r, ok := c.hosts[id]; ok && r.b != nil {
			r.cls.pool.remove(r)
			r.cls.out++
			indiv = append(indiv, r)
		}
	}
	if g := d.group; g != nil {
		for id := range g.members {
			single(id)
		}
	}
	for _, k := range d.req.Constraints {
		if k.Key == "host" {
			for _, id := range k.Values {
				single(id)
			}
		}
	}
	static, cacheable := staticKey(d)
	ev := c.evalClasses(d, static, cacheable)
	t := &c.top
	t.reset(1 + c.opt.RunnersUp)
	for _, p := range c.poolList {
		p.search(d, ev, t)
	}
	for _, r := range indiv {
		if reject(d, &r.h) == Fit {
			t.offer(shapeCost(d, r.free, r.alloc)+d.group.hostPenalty(&r.h), r)
		}
	}
	var p Placement
	var err error
	if len(t.c) == 0 {
		err = c.explainCached(d, static, cacheable, ev, indiv)
	} else {
		p = t.placement(d)
	}
	t.reset(0) // drop the host pointers
	for _, r := range indiv {
		r.cls.out--
		r.cls.pool.insert(r)
	}
	return p, err
}

// explainCached is explainIndex, remembered until a host changes for
// requests whose static key (staticKey) is cacheable.
func (c *Cluster) explainCached(d *decision, static string, cacheable bool, ev []classEval, indiv []*hostRec) *NoFitError {
	if !cacheable || len(indiv) > 0 {
		return c.explainIndex(d, ev, indiv)
	}
	if c.nofitVersion != c.version {
		clear(c.nofitCache)
		c.nofitVersion = c.version
	}
	k := nofitKey{static, d.req.Resources}
	e, ok := c.nofitCache[k]
	if !ok {
		if len(c.nofitCache) > 256 {
			clear(c.nofitCache)
		}
		e = c.explainIndex(d, ev, indiv)
		c.nofitCache[k] = e
	}
	out := *e
	out.Request = *d.req
	out.Counts = maps.Clone(e.Counts)
	out.Shortfalls = maps.Clone(e.Shortfalls)
	return &out
}

// topK keeps the best k candidates, best first.
type topK struct {
	k int
	c []cand
}

type cand struct {
	cost float64
	r    *hostRec
}

// reset empties t for a new decision keeping the best k.
func (t *topK) reset(k int) {
	clear(t.c)
	t.c, t.k = t.c[:0], k
}

func (a cand) better(b cand) bool {
	if a.cost != b.cost {
		return a.cost < b.cost
	}
	if a.r.hash != b.r.hash {
		return a.r.hash < b.r.hash
	}
	return a.r.h.ID < b.r.h.ID
}

// offer adds a candidate if it is among the best k; it reports whether it was.
func (t *topK) offer(cost float64, r *hostRec) bool {
	c := cand{cost, r}
	if len(t.c) == t.k {
		if !c.better(t.c[len(t.c)-1]) {
			return false
		}
		t.c = t.c[:len(t.c)-1]
	}
	j := len(t.c)
	t.c = append(t.c, c)
	for ; j > 0 && c.better(t.c[j-1]); j-- {
		t.c[j] = t.c[j-1]
	}
	t.c[j] = c
	return true
}

func (t *topK) placement(d *decision) Placement {
	p := Placement{HostID: t.c[0].r.h.ID, Score: scoreOf(d, t.c[0].cost)}
	if len(t.c) > 1 {
		p.RunnersUp = make([]Candidate, 0, len(t.c)-1)
	}
	for _, c := range t.c[1:] {
		p.RunnersUp = append(p.RunnersUp, Candidate{c.r.h.ID, scoreOf(d, c.cost)})
	}
	return p
}

// tieHash ranks hosts for tie-breaks: a hash of the seed and the host ID,
// so ties spread over hosts the same way every time for a given seed.
func tieHash(seed int64, id string) uint64 {
	h := uint64(14695981039346656037) // FNV-1a
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	return mix64(h ^ mix64(uint64(seed)))
}

func mix64(x uint64) uint64 { // splitmix64 finaliser
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Place picks the best host for req among hosts: a convenience that builds a
// Binpack Cluster for one decision. Host IDs must be unique.
func Place(req Request, hosts []Host) (Placement, error) {
	if err := validate(&req); err != nil {
		return Placement{}, err
	}
	c, err := NewCluster(hosts, Options{})
	if err != nil {
		return Placement{}, err
	}
	return c.Place(req)
}
