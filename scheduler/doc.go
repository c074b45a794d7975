// Package scheduler decides which host a VM goes to.
//
// It is pure logic: no I/O, clock, global randomness, raft or RPC. The
// controller keeps a Cluster (an indexed snapshot of its hosts), asks it
// for a Placement on the raft leader, commits the answer through the log
// and then records it with Allocate; nothing here runs again on replay.
// The same hosts, request and Options.Seed always give the same answer,
// whatever order the hosts were given in, in a Cluster with the same recent
// refusals (see Under pressure).
//
// # Decisions
//
// A decision has three steps, after the Kubernetes scheduler framework:
//
//   - Filters rule hosts out, each with a Reason a person can act on
//     (filters.go, in order): state (only ready hosts take new VMs: "in
//     maintenance", "draining", "down"), owner (a dedicated host takes only
//     its project's VMs: "dedicated to project x"), Request.Center ("not in
//     center a1"), constraints on center/site/rack/host or labels with =,
//     !=, in, notin ("label cpu_model is not kunpeng920"), hard group rules
//     at rack or center level, hard group rules at host level and
//     MaxPerHost ("anti-affinity: group g already has a member on this
//     host", "max 2 per host reached"), then vCPU, memory and disk free
//     after ratios and reservations (Host.Allocatable).
//   - Scoring ranks the hosts left by a cost, lowest first (score.go).
//     Binpack (the default) is best fit on normalised leftover vCPU and
//     memory plus a fragmentation term: the vCPU (memory) a leftover would
//     strand, given the memory-per-vCPU mix of what the cluster runs,
//     weighted by how scarce that resource is cluster-wide. Spread prefers
//     the most leftover. Soft group rules add a penalty larger than any
//     packing difference, so they hold whenever some host allows them.
//   - Ties go by a hash of the seed and the host ID, then the ID.
//
// # Under pressure
//
// Once a nearly full pool (95% of vCPU or memory allocated) refuses a
// request for lack of room, a Binpack Cluster decides as Spread does for
// the next 100 decisions, and again after every such refusal (pressure.go).
// Demand then exceeds supply and every freed vCPU finds a taker; taking
// small requests from the largest holes serves more requests in the same
// room than keeping large holes whole for the next large one. On the Azure
// trace with too few hosts that refuses fewer requests than best fit and
// than sampling at every H measured from 300 to 600 (docs/performance.md).
// Nothing changes before the first refusal.
//
// The winner comes with up to Options.RunnersUp next-best hosts. When no
// host passes, Place returns a *NoFitError counting hosts per reason (each
// under the first filter that rules it out) with the nearest miss per
// resource, as one line:
//
//	0/45 hosts fit: 30 insufficient memory (need 64 GiB; most free: 48 GiB on a1-h12), 15 not in center a1
//
// PlaceBatch places several requests all or nothing, each as if the ones
// before it were already there, so members of one group keep their rules
// among themselves; it allocates nothing.
//
// # The index: one decision does not look at every host
//
// Hosts the filters cannot tell apart (same state, owner, center, site,
// rack, labels, capacity, reservation, ratios) form a class, and the
// filters other than capacity run once per class per decision, on a
// stand-in host, cached across decisions for requests without a group.
// Classes with the same Allocatable share a pool; a pool indexes its hosts
// by free vCPU (levels) and free memory (buckets), each bucket holding its
// hosts in tie-break order, all together and per class (index.go). A
// decision searches each pool best first: a lower bound on the cost of a
// whole level ends the walk over levels, and along a level the cost is
// convex in free memory, so it scans outwards from the cheapest point and
// stops each way at the first bucket that cannot beat the k-th candidate
// so far (k = 1 + RunnersUp). All hosts of a bucket cost the same, so it
// scores once per bucket and takes hosts from the top of its lists. Hosts the rules treat one by one (members of the request's group,
// hosts a host= constraint names) leave the index for that decision and
// are judged individually. An explanation is built from classes and
// buckets too, and is remembered until a host changes (a full cluster
// rejects request after request).
//
// Disk is a filter, not a score: each host keeps its own free disk and a
// bucket's class list knows the most any of its hosts has.
//
// # Measured
//
// On the shared Azure trace (bench/azure-replay.md; 64 vCPU, 256 GiB,
// 4 TiB hosts), W1 fill packs to the fluid bound (packing ratio 1) at
// 1,000, 5,000 and 10,000 hosts, where plain best fit reaches 0.9954 at
// 10,000; W2 churn at 720 hosts rejects nothing and leaves 138 free
// 16-vCPU/112-GiB slots at the CPU peak (best fit 135, best of log2(H)
// random samples 137). With too few hosts (W2 churn at 300 to 600), it
// refuses fewer requests than both (at 400: 27,865 against 35,669 and
// 33,756). See BenchmarkPlace for the decision cost.
//
// # Concurrency
//
// A Cluster is not safe for concurrent use. The controller serialises
// decisions and updates (one placement at a time on the raft leader); any
// other caller must do the same. The package-level Place builds a Cluster
// for one decision and is safe to call from several goroutines on
// separate host slices.
package scheduler
