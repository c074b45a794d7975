package agent

import (
	"context"
	"sync"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// New domains, several at once. A reconcile that finds more than one VM
// without a domain (a CreateVMs of many, an agent catching up) defines
// them, and starts those wanted running, up to newDomainWorkers at a time
// rather than one after the other: on a real host a define and start
// takes a second or so, mostly in libvirtd and QEMU, which carry out
// several side by side. One after the other, 50 VMs created at once ran
// after 1.6 times what libvirt alone needed for the same 50 define+starts
// in parallel (docs/performance.md, "VM create-to-running"). Only the
// making of new domains goes this way; the rest of the pass (statuses,
// stops, reboots, deletes, orphans) stays in order in reconcileVM, which
// then finds the new domains as made.

// newDomainWorkers bounds the defines and starts in flight. libvirtd
// serves one client connection (the agent has one) 5 calls at a time by
// default (max_client_requests), so 4 leave a call for the heartbeat's,
// the events' and the console's meanwhile.
const newDomainWorkers = 4

// newDomain is one VM makeNewDomains makes a domain for.
type newDomain struct {
	as   *yunchiv1.Assignment
	vols []VolumeSpec
	seq  uint64 // reboot request carried out, as reconcileVM starts from

	// Set by makeNewDomain.
	spec             DomainSpec
	defined, started bool
	// st is the status to report instead of what reconcileVM would find:
	// the image is still being fetched, or the define or start failed.
	st *yunchiv1.VMStatus
}

// makeNewDomains makes the domains of the set's VMs that have none on the
// host, when there are at least two (a lone one is left to reconcileVM).
// The domains made are added to actual, so reconcileVM finds them as
// made; the VMs whose status is not what reconcileVM would then find
// (pending, failed) have it in the result, by VM id.
func (a *Agent) makeNewDomains(ctx context.Context, set *yunchiv1.Assignments, actual map[string]Domain, vols map[string][]VolumeSpec) map[string]*yunchiv1.VMStatus {
	var todo []*newDomain
	seen := make(map[string]bool, len(set.GetVms()))
	for _, as := range set.GetVms() {
		id := as.GetVmId()
		first := id != "" && !seen[id] // reconcile skips the others
		seen[id] = true
		if _, ok := actual[id]; !first || ok {
			continue
		}
		switch as.GetDesired() {
		case yunchiv1.PowerState_POWER_STATE_RUNNING, yunchiv1.PowerState_POWER_STATE_STOPPED:
		default:
			continue
		}
		// An invalid assignment is refused by reconcileVM; a guest this
		// agent left running whose domain is gone has that reported
		// first, by reconcileVM too.
		if validate(as) != nil || a.ev.running[id] {
			continue
		}
		todo = append(todo, &newDomain{as: as, vols: vols[id], seq: a.rebootDone[id]})
	}
	if len(todo) < 2 {
		return nil
	}
	sem := make(chan struct{}, newDomainWorkers)
	var wg sync.WaitGroup
	for _, nd := range todo {
		sem <- struct{}{} // in assignment order, newDomainWorkers at a time
		wg.Go(func() {
			defer func() { <-sem }()
			a.makeNewDomain(ctx, nd)
		})
	}
	wg.Wait()
	// What the workers made, recorded as reconcileVM records it, here:
	// the maps are the reconcile loop's own.
	out := map[string]*yunchiv1.VMStatus{}
	for _, nd := range todo {
		id := nd.as.GetVmId()
		if nd.defined {
			a.known[id] = true
			a.rebootDone[id] = nd.spec.RebootSeq
			d := Domain{VMID: id, Project: nd.spec.Project, Name: nd.spec.Name, State: StateShutOff, Detail: "shut off", RebootSeq: nd.spec.RebootSeq}
			if nd.started {
				d.State, d.Detail = StateRunning, "running"
				a.ev.restarting(id)
			}
			actual[id] = d
		}
		if nd.st != nil {
			out[id] = nd.st
		}
	}
	return out
}

// makeNewDomain defines nd's domain and starts it if it is wanted
// running. It touches nothing of the agent's but the driver and the image
// cache (both safe for concurrent use).
func (a *Agent) makeNewDomain(ctx context.Context, nd *newDomain) {
	as := nd.as
	id := as.GetVmId()
	log := a.log.With("vm", id, "name", as.GetName(), "project", as.GetProject())
	spec, note, err := a.domainSpec(ctx, as, nd.vols)
	if err != nil {
		nd.st = failedStatus(ctx, log, as, nd.seq, err)
		return
	}
	if spec == nil { // still fetching the image
		nd.st = &yunchiv1.VMStatus{VmId: id, Phase: yunchiv1.VMPhase_VM_PHASE_PENDING, Message: note, ObservedRebootSeq: nd.seq}
		return
	}
	if err := a.d.Define(ctx, *spec); err != nil {
		nd.st = failedStatus(ctx, log, as, nd.seq, err)
		return
	}
	log.Info("defined domain", "vcpus", spec.VCPUs, "memory_bytes", spec.MemoryBytes)
	a.removeTakenMirror(as, log)
	nd.spec, nd.defined = *spec, true
	if as.GetDesired() != yunchiv1.PowerState_POWER_STATE_RUNNING {
		return
	}
	if err := a.d.Start(ctx, id); err != nil {
		nd.st = failedStatus(ctx, log, as, spec.RebootSeq, err)
		return
	}
	log.Info("started domain")
	nd.started = true
}
