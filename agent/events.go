package agent

// What the host says without being asked: lifecycle events, which wake the
// reconcile loop at once (a guest whose QEMU died is reported within a
// second, not at the next resync), and what running guests use, sent with
// each heartbeat.
//
// An unexpected stop (a guest the agent left running and wants running is
// found shut off: QEMU crashed or was killed, someone ran virsh destroy) is
// reported before anything is done about it: the reconcile that finds it
// reports FAILED with the cause, and the next one, at once, starts the
// guest again and reports RUNNING with a message saying so. The restart
// does not wait for the controllers to hear of the crash (the guest is
// wanted running, controllers or not); the RUNNING report carries the
// crash too, and is repeated until the controllers have taken it.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// timedEvent is a lifecycle event and when the agent got it.
type timedEvent struct {
	DomainEvent
	at time.Time
}

// unexpectedStop is a guest found shut off while it should run, until a
// report that it was started again has reached the controllers.
type unexpectedStop struct {
	cause     string    // libvirt's words ("stopped: failed") or what was found
	at        time.Time // when it stopped (or was found stopped)
	restarted time.Time // when the agent started it again (zero: not yet)
	// taken: the controllers took a report that it was started again.
	// The note stays until the assignments say RUNNING, so that a
	// reconcile against an older set repeats the same status (which is
	// then not sent again) rather than one without the message.
	taken bool
}

// hostEvents is the agent's memory of lifecycle events and unexpected
// stops.
type hostEvents struct {
	mu     sync.Mutex
	latest map[string]timedEvent // by VM id, the last event since the reconcile loop took them

	// The reconcile loop's own.
	seen    map[string]timedEvent      // the events taken at the start of this reconcile
	running map[string]bool            // VMs the last reconcile left running
	stops   map[string]*unexpectedStop // by VM id
}

// note keeps ev as the latest event of its VM.
func (e *hostEvents) note(ev DomainEvent, at time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.latest == nil {
		e.latest = map[string]timedEvent{}
	}
	e.latest[ev.VMID] = timedEvent{ev, at}
}

// event is the VM's latest event: taken by this reconcile, or come since.
func (e *hostEvents) event(id string) (timedEvent, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ev, ok := e.latest[id]; ok {
		return ev, true
	}
	ev, ok := e.seen[id]
	return ev, ok
}

// beginPass takes the events noted since the last reconcile.
func (e *hostEvents) beginPass() {
	e.mu.Lock()
	e.seen, e.latest = e.latest, nil
	e.mu.Unlock()
	if e.running == nil {
		e.running, e.stops = map[string]bool{}, map[string]*unexpectedStop{}
	}
}

// observed records the outcome of reconciling as: whether the VM is left
// running. A VM no longer wanted running has no unexpected stop to tell,
// nor has one whose restart the controllers took and show.
func (e *hostEvents) observed(as *yunchiv1.Assignment, st *yunchiv1.VMStatus) {
	id := as.GetVmId()
	e.running[id] = st.GetPhase() == yunchiv1.VMPhase_VM_PHASE_RUNNING
	s := e.stops[id]
	if as.GetDesired() != yunchiv1.PowerState_POWER_STATE_RUNNING ||
		s != nil && s.taken && as.GetPhase() == yunchiv1.VMPhase_VM_PHASE_RUNNING {
		delete(e.stops, id)
	}
}

// mustReport says whether st carries an unexpected stop the controllers
// have not taken yet: it is sent whatever the assignment's phase says.
func (e *hostEvents) mustReport(st *yunchiv1.VMStatus) bool {
	s := e.stops[st.GetVmId()]
	return st != nil && s != nil && !s.taken
}

// reported notes statuses the controllers took, among them a RUNNING one
// that said the guest was started again.
func (e *hostEvents) reported(statuses []*yunchiv1.VMStatus) {
	for _, st := range statuses {
		if s := e.stops[st.GetVmId()]; s != nil && !s.restarted.IsZero() && st.GetPhase() == yunchiv1.VMPhase_VM_PHASE_RUNNING {
			s.taken = true
		}
	}
}

// forgetUnwanted drops what is remembered about VMs no longer assigned.
func (e *hostEvents) forgetUnwanted(wanted map[string]bool) {
	forgetUnwanted(e.running, wanted)
	forgetUnwanted(e.stops, wanted)
}

// unexpectedStop is called for a domain found shut off while desired
// running, before starting it. A guest the agent left running has stopped
// unexpectedly: the status to report first is returned (and the reconcile
// loop is woken to start the guest right after). nil means: start it.
func (a *Agent) unexpectedStop(id string, dom *Domain, seq uint64, log *slog.Logger) *yunchiv1.VMStatus {
	e := &a.ev
	if !e.running[id] {
		return nil // defined, stopped on request, or never seen running by this agent: a plain start
	}
	// libvirt's event says it best; without one (not watching, or this
	// reconcile began just before it came) the domain's own state does.
	s := &unexpectedStop{cause: "found " + dom.Detail, at: time.Now()}
	if ev, ok := e.event(id); ok && ev.State == StateShutOff {
		s.cause, s.at = ev.Detail, ev.at
	}
	e.stops[id] = s
	log.Warn("guest stopped unexpectedly; reporting it, then starting it again", "cause", s.cause)
	a.wake()
	return &yunchiv1.VMStatus{
		VmId: id, Phase: yunchiv1.VMPhase_VM_PHASE_FAILED, ObservedRebootSeq: seq,
		Message: fmt.Sprintf("guest stopped unexpectedly (%s) at %s; starting it again", s.cause, stamp(s.at)),
	}
}

// restarting notes that the guest of an unexpected stop is being started.
func (e *hostEvents) restarting(id string) {
	if s := e.stops[id]; s != nil && s.restarted.IsZero() {
		s.restarted = time.Now()
	}
}

// runningStatus is st (RUNNING), telling of the unexpected stop the guest
// was started again after, if any.
func (e *hostEvents) runningStatus(st *yunchiv1.VMStatus) *yunchiv1.VMStatus {
	if s := e.stops[st.GetVmId()]; s != nil && !s.restarted.IsZero() {
		st.Message = fmt.Sprintf("started again at %s after the guest stopped unexpectedly (%s) at %s",
			stamp(s.restarted), s.cause, stamp(s.at))
	}
	return st
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// eventsLoop watches the host's lifecycle events until ctx ends, waking
// the reconcile loop for each, and watches again (with backoff) when the
// watch ends. A host that cannot report events is left to the resync.
func (a *Agent) eventsLoop(ctx context.Context) {
	bo := newBackoff()
	failing := false // warned once per run of failures, then at debug
	for {
		ch, err := a.d.Events(ctx)
		if errors.Is(err, ErrNoEvents) {
			a.log.Info("the host reports no lifecycle events: changes made outside the agent are seen at each resync",
				"resync", a.cfg.ResyncInterval)
			return
		}
		if err == nil {
			if failing {
				a.log.Info("watching domain lifecycle events again")
			} else {
				a.log.Debug("watching domain lifecycle events")
			}
			failing = false
			// Events may have been missed while not watching.
			a.wake()
			for ev := range ch {
				bo.reset()
				a.log.Debug("domain event", "vm", ev.VMID, "state", ev.State.String(), "detail", ev.Detail)
				a.ev.note(ev, time.Now())
				a.wake()
			}
		}
		if ctx.Err() != nil {
			return
		}
		d := bo.next()
		switch {
		case failing:
			a.log.Debug("cannot watch domain events; retrying", "err", err, "in", d.Round(time.Millisecond))
		case err != nil:
			a.log.Warn("cannot watch domain events; retrying (changes made outside the agent wait for the resync meanwhile)",
				"err", err, "in", d.Round(time.Millisecond))
		default:
			a.log.Warn("domain event watch ended (libvirt connection lost); watching again", "in", d.Round(time.Millisecond))
		}
		failing = err != nil || failing
		if !sleep(ctx, d) {
			return
		}
	}
}

// vmStats is what running guests use, for a heartbeat; none when the
// host cannot tell (logged at debug: the heartbeat matters more).
func (a *Agent) vmStats(ctx context.Context) []*yunchiv1.VMStats {
	usage, err := a.d.Stats(ctx)
	if err != nil {
		a.log.Debug("cannot read guests' usage; heartbeat without it", "err", err)
		return nil
	}
	out := make([]*yunchiv1.VMStats, 0, len(usage))
	for id, u := range usage {
		out = append(out, &yunchiv1.VMStats{VmId: id, Usage: &yunchiv1.VMUsage{
			CpuTimeNs: u.CPUTimeNs, MemoryBytes: u.MemoryBytes, MemoryUnusedBytes: u.MemoryUnusedBytes,
			DiskReadBytes: u.DiskReadBytes, DiskWriteBytes: u.DiskWriteBytes, NetRxBytes: u.NetRxBytes, NetTxBytes: u.NetTxBytes,
		}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VmId < out[j].VmId })
	return out
}
