package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// retryDelay is how soon a reconcile that could not finish (libvirt or the
// report failed) is first tried again, short of the next assignments or
// resync; the delay doubles up to the resync interval while it keeps failing.
const retryDelay = time.Second

// sentStatus is a status the controllers acknowledged, and when.
type sentStatus struct {
	phase   yunchiv1.VMPhase
	message string
	gone    bool
	seq     uint64
	at      time.Time
}

func (s sentStatus) same(st *yunchiv1.VMStatus) bool {
	return s.phase == st.GetPhase() && s.message == st.GetMessage() && s.gone == st.GetGone() &&
		s.seq == st.GetObservedRebootSeq()
}

// reconcileLoop reconciles on every new set of assignments, on every resync
// tick (against the last set), and soon after a reconcile that failed.
func (a *Agent) reconcileLoop(ctx context.Context) {
	a.passLoop(ctx, a.setChanged, a.reconcile)
}

// passLoop runs pass against the latest assignments when wake fires, at
// every resync, and soon (with backoff) after a pass that could not
// finish; never before a first set has come (nothing to act on yet).
func (a *Agent) passLoop(ctx context.Context, wake <-chan struct{}, pass func(context.Context, *yunchiv1.Assignments) bool) {
	resync := time.NewTicker(a.cfg.ResyncInterval)
	defer resync.Stop()
	var retry <-chan time.Time
	bo := &backoff{min: min(retryDelay, a.cfg.ResyncInterval), max: a.cfg.ResyncInterval}
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-resync.C:
		case <-retry:
		}
		retry = nil
		set := a.latest()
		if set == nil {
			continue
		}
		if pass(ctx, set) {
			bo.reset()
		} else if ctx.Err() == nil {
			retry = time.After(bo.next())
		}
	}
}

// reconcile makes the host match set and reports what changed. It returns
// false if something should be retried soon.
func (a *Agent) reconcile(ctx context.Context, set *yunchiv1.Assignments) bool {
	a.ev.beginPass()
	doms, err := a.d.ListDomains(ctx)
	if err != nil {
		a.log.Error("reconcile: list domains", "err", err)
		return false
	}
	actual := make(map[string]Domain, len(doms))
	for _, d := range doms {
		actual[d.VMID] = d
	}
	wanted := make(map[string]bool, len(set.GetVms()))
	live := make(map[string]bool, len(set.GetVms())) // VMs whose domains may hold volumes
	vols := volumesOf(set)
	// New domains first, several at once; what could not be made has its
	// status in news, what was made is in actual for reconcileVM to find.
	news := a.makeNewDomains(ctx, set, actual, vols)
	if ctx.Err() != nil {
		return true
	}
	var statuses []*yunchiv1.VMStatus
	mirrorsOK := true
	for _, as := range set.GetVms() {
		id := as.GetVmId()
		if id == "" || wanted[id] {
			a.log.Warn("reconcile: skipping assignment with empty or repeated vm id", "vm", id, "index", set.GetIndex())
			continue
		}
		wanted[id] = true
		var dom *Domain
		if d, ok := actual[id]; ok {
			dom = &d
			if !a.known[id] {
				a.known[id] = true
				a.log.Info("adopted domain", "vm", id, "name", as.GetName(), "state", d.State.String())
			}
		}
		if as.GetDesired() != yunchiv1.PowerState_POWER_STATE_DELETED {
			live[id] = true
		}
		st, made := news[id]
		if !made {
			st = a.reconcileVM(ctx, as, dom, vols[id])
		}
		if ctx.Err() != nil {
			return true // shutting down: what was cut short is not a result
		}
		if st != nil && !a.reconcileMirror(ctx, as, st) {
			mirrorsOK = false
		}
		if ctx.Err() != nil {
			return true
		}
		a.ev.observed(as, st)
		if st != nil && (a.ev.mustReport(st) || a.shouldReport(as, st) || a.mw.behind(as, st)) {
			statuses = append(statuses, st)
		}
	}
	for id, d := range actual {
		if !wanted[id] {
			a.removeOrphan(ctx, d)
			if ctx.Err() != nil {
				return true
			}
		}
	}
	forgetUnwanted(a.known, wanted)
	forgetUnwanted(a.lastSent, wanted)
	forgetUnwanted(a.rebootDone, wanted)
	a.ev.forgetUnwanted(wanted)
	a.mw.forgetUnwanted(wanted)
	volStatuses, ok := a.reconcileVolumes(ctx, set, live)
	ok = ok && mirrorsOK
	if ctx.Err() != nil {
		return true
	}
	if len(statuses) == 0 && len(volStatuses) == 0 {
		return ok
	}
	return a.report(ctx, statuses, volStatuses) && ok
}

// reconcileVM brings one VM's domain to its desired state and returns what it
// observed, or nil when there is nothing to say.
func (a *Agent) reconcileVM(ctx context.Context, as *yunchiv1.Assignment, dom *Domain, vols []VolumeSpec) *yunchiv1.VMStatus {
	id := as.GetVmId()
	log := a.log.With("vm", id, "name", as.GetName(), "project", as.GetProject())
	seq := a.rebootDone[id]
	if dom != nil {
		seq = max(seq, dom.RebootSeq)
	}
	failed := func(err error) *yunchiv1.VMStatus { return failedStatus(ctx, log, as, seq, err) }

	switch as.GetDesired() {
	case yunchiv1.PowerState_POWER_STATE_DELETED:
		// Also without a domain: a Define cut short may have left volumes,
		// which Undefine removes.
		if err := a.remove(ctx, id); err != nil {
			return failed(fmt.Errorf("delete: %w", err))
		}
		if dom != nil {
			log.Info("deleted domain")
		}
		return &yunchiv1.VMStatus{VmId: id, Phase: yunchiv1.VMPhase_VM_PHASE_STOPPED, Gone: true, ObservedRebootSeq: seq}
	case yunchiv1.PowerState_POWER_STATE_RUNNING, yunchiv1.PowerState_POWER_STATE_STOPPED:
	default:
		log.Debug("assignment has no desired state; leaving the domain alone", "desired", as.GetDesired().String())
		return nil
	}

	if err := validate(as); err != nil {
		return failed(fmt.Errorf("invalid assignment: %w", err))
	}
	if dom == nil {
		spec, note, err := a.domainSpec(ctx, as, vols)
		if err != nil {
			return failed(err)
		}
		if spec == nil { // still fetching the image: define once it is here
			return &yunchiv1.VMStatus{VmId: id, Phase: yunchiv1.VMPhase_VM_PHASE_PENDING, Message: note, ObservedRebootSeq: seq}
		}
		if err := a.d.Define(ctx, *spec); err != nil {
			return failed(err)
		}
		log.Info("defined domain", "vcpus", spec.VCPUs, "memory_bytes", spec.MemoryBytes)
		a.removeTakenMirror(as, log)
		a.known[id] = true
		dom = &Domain{VMID: id, Project: spec.Project, Name: spec.Name, State: StateShutOff, Detail: "shut off", RebootSeq: spec.RebootSeq}
		seq = spec.RebootSeq
		a.rebootDone[id] = seq
	}

	if as.GetDesired() == yunchiv1.PowerState_POWER_STATE_STOPPED {
		if dom.State != StateShutOff {
			if err := a.d.Stop(ctx, id, a.cfg.StopTimeout); err != nil {
				return failed(err)
			}
			log.Info("stopped domain")
		}
		// A domain that is off has nothing to reboot: its next start is a
		// fresh boot, which is what the reboot asked for.
		seq = a.recordReboot(ctx, log, id, seq, as.GetRebootSeq())
		return &yunchiv1.VMStatus{VmId: id, Phase: yunchiv1.VMPhase_VM_PHASE_STOPPED, ObservedRebootSeq: seq}
	}

	booted := false
	switch dom.State {
	case StateRunning:
	case StateShutOff:
		if st := a.unexpectedStop(id, dom, seq, log); st != nil {
			return st // reported first; started at the next reconcile, at once
		}
		if err := a.d.Start(ctx, id); err != nil {
			return failed(err)
		}
		a.ev.restarting(id)
		log.Info("started domain")
		booted = true
	default:
		return failed(fmt.Errorf("domain is %s, not starting it", dom.Detail))
	}
	if as.GetRebootSeq() > seq && !booted {
		if err := a.d.Reboot(ctx, id); err != nil {
			return failed(err)
		}
		log.Info("rebooted domain", "reboot_seq", as.GetRebootSeq())
	}
	seq = a.recordReboot(ctx, log, id, seq, as.GetRebootSeq())
	return a.ev.runningStatus(&yunchiv1.VMStatus{VmId: id, Phase: yunchiv1.VMPhase_VM_PHASE_RUNNING, ObservedRebootSeq: seq})
}

// failedStatus is the FAILED status of an assignment that could not be
// carried out because of err, logged.
func failedStatus(ctx context.Context, log *slog.Logger, as *yunchiv1.Assignment, seq uint64, err error) *yunchiv1.VMStatus {
	msg := oneLine(err.Error())
	if ctx.Err() == nil {
		log.Warn("cannot carry out assignment", "desired", as.GetDesired().String(), "err", msg)
	}
	return &yunchiv1.VMStatus{VmId: as.GetVmId(), Phase: yunchiv1.VMPhase_VM_PHASE_FAILED, Message: msg, ObservedRebootSeq: seq}
}

// domainSpec is what the VM's new domain is defined from, or nil and a
// progress note while its image is still being fetched.
func (a *Agent) domainSpec(ctx context.Context, as *yunchiv1.Assignment, vols []VolumeSpec) (*DomainSpec, string, error) {
	id := as.GetVmId()
	spec := &DomainSpec{
		VMID:        id,
		Project:     as.GetProject(),
		Name:        as.GetName(),
		VCPUs:       as.GetVcpus(),
		MemoryBytes: as.GetMemoryBytes(),
		RebootSeq:   as.GetRebootSeq(),
		DiskBytes:   as.GetDiskBytes(),
		Volumes:     vols,
		Isolated:    as.GetIsolated(),
	}
	if ref := as.GetImage(); ref != nil {
		path, format, note, err := a.images.ensure(ctx, ref)
		if err != nil {
			return nil, "", err
		}
		if path == "" {
			return nil, note, nil
		}
		spec.BaseImage, spec.BaseFormat = path, format
	}
	if as.GetRestore() != nil {
		src, err := a.restoreSource(as)
		if err != nil {
			return nil, "", err
		}
		spec.RootSource = src
	}
	if as.GetImage() != nil || as.GetUserData() != "" || len(as.GetSshAuthorizedKeys()) > 0 {
		spec.Seed = &Seed{InstanceID: id, Hostname: as.GetName(), SSHAuthorizedKeys: as.GetSshAuthorizedKeys(), UserData: as.GetUserData()}
	}
	return spec, "", nil
}

// recordReboot notes that reboot request want is carried out (if it is newer
// than have) in memory and with the domain, and returns the new value.
func (a *Agent) recordReboot(ctx context.Context, log *slog.Logger, id string, have, want uint64) uint64 {
	if want <= have {
		return have
	}
	a.rebootDone[id] = want
	if err := a.d.SetRebootSeq(ctx, id, want); err != nil {
		// Only an agent restarted before the next success would reboot again.
		log.Warn("cannot record reboot request with the domain", "reboot_seq", want, "err", err)
	}
	return want
}

// remove powers a domain off and undefines it; a domain already gone is fine.
func (a *Agent) remove(ctx context.Context, id string) error {
	if err := a.d.Destroy(ctx, id); err != nil && !errors.Is(err, ErrDomainNotFound) {
		return err
	}
	if err := a.d.Undefine(ctx, id); err != nil && !errors.Is(err, ErrDomainNotFound) {
		return err
	}
	delete(a.rebootDone, id)
	return nil
}

// removeOrphan removes a managed domain that no assignment mentions: its VM
// was deleted while the agent was away, or moved to another host.
func (a *Agent) removeOrphan(ctx context.Context, d Domain) {
	log := a.log.With("vm", d.VMID, "name", d.Name, "project", d.Project, "state", d.State.String())
	if err := a.remove(ctx, d.VMID); err != nil {
		if ctx.Err() == nil {
			log.Error("cannot remove orphan domain", "err", err)
		}
		return
	}
	log.Warn("removed orphan domain: its VM is assigned to this host no more")
}

// shouldReport tells whether the controllers need st: when it differs from
// what the assignment says (or carries a reboot request they have not seen
// acknowledged), and it was not already acknowledged recently; an
// acknowledged status the controllers still do not reflect is sent again
// once per resync interval.
func (a *Agent) shouldReport(as *yunchiv1.Assignment, st *yunchiv1.VMStatus) bool {
	last, sent := a.lastSent[st.GetVmId()]
	// A pending VM with news (an image fetch's progress) is also behind.
	news := st.GetPhase() == yunchiv1.VMPhase_VM_PHASE_PENDING && st.GetMessage() != "" && (!sent || !last.same(st))
	behind := news || st.GetGone() || st.GetPhase() != as.GetPhase() ||
		(st.GetObservedRebootSeq() > 0 && (!sent || last.seq != st.GetObservedRebootSeq()))
	if !behind {
		return false
	}
	return !sent || !last.same(st) || time.Since(last.at) >= a.cfg.ResyncInterval
}

// report sends one batch of statuses (of VMs and of volumes); false means
// it should be retried. The VMs' mirror phases are the latest observed,
// sent under the mirrors' lock (mirror.go: phases arrive in order).
func (a *Agent) report(ctx context.Context, statuses []*yunchiv1.VMStatus, volumes []*yunchiv1.VolumeStatus) bool {
	a.mw.mu.Lock()
	defer a.mw.mu.Unlock()
	a.mw.refresh(statuses)
	err := a.ctl.call(ctx, "status report", rpcTimeout, func(ctx context.Context, c yunchiv1.AgentServiceClient) error {
		_, err := c.ReportVMStatus(ctx, &yunchiv1.ReportVMStatusRequest{HostId: a.cfg.HostID, Statuses: statuses, Volumes: volumes})
		return err
	})
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("cannot report vm status; will retry", "vms", len(statuses), "volumes", len(volumes), "err", err)
		}
		return false
	}
	a.mw.taken(statuses)
	now := time.Now()
	for _, st := range volumes {
		a.volSent[st.GetVolumeId()] = sentVolume{attached: st.GetAttachedVmId(), message: st.GetMessage(), gone: st.GetGone(), at: now}
		a.log.Debug("reported volume status", "volume", st.GetVolumeId(), "attached_vm", st.GetAttachedVmId(), "gone", st.GetGone(), "message", st.GetMessage())
	}
	a.ev.reported(statuses)
	for _, st := range statuses {
		a.lastSent[st.GetVmId()] = sentStatus{
			phase: st.GetPhase(), message: st.GetMessage(), gone: st.GetGone(), seq: st.GetObservedRebootSeq(), at: now,
		}
		a.log.Debug("reported vm status", "vm", st.GetVmId(), "phase", st.GetPhase().String(), "gone", st.GetGone(),
			"reboot_seq", st.GetObservedRebootSeq(), "message", st.GetMessage())
	}
	return true
}

// validate refuses assignments no domain can be defined from.
func validate(as *yunchiv1.Assignment) error {
	var errs []error
	if as.GetVcpus() <= 0 {
		errs = append(errs, fmt.Errorf("vcpus is %d, must be > 0", as.GetVcpus()))
	}
	if as.GetMemoryBytes() <= 0 {
		errs = append(errs, fmt.Errorf("memory_bytes is %d, must be > 0", as.GetMemoryBytes()))
	}
	if as.GetDiskBytes() < 0 {
		errs = append(errs, fmt.Errorf("disk_bytes is %d, must be >= 0", as.GetDiskBytes()))
	}
	return errors.Join(errs...)
}

// oneLine flattens a message for VMStatus.message.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// forgetUnwanted drops what the agent remembers about VMs no longer assigned.
func forgetUnwanted[V any](m map[string]V, wanted map[string]bool) {
	for id := range m {
		if !wanted[id] {
			delete(m, id)
		}
	}
}
