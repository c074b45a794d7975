package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/yunchi/yunchi/internal/sparse"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Synchronous mirrors (platinum), the agent's part on both sides.
//
// Source: a running VM whose assignment has a mirror gets its root disk
// mirrored there (Mirrorer.StartMirror: libvirt's block copy with
// synchronous writes, agent/libvirt/mirror.go); its status carries the
// mirror's phase, "copying" until the bulk copy is done, "mirroring" from
// then on (every write the guest saw completed is on the target too), ""
// when there is none, with the reason in mirror_error. A failover trusts
// the last phase the controllers heard: a mirror that ends (its export
// died, the link between the centers broke) must be reported at once. So
// besides the reconcile loop, which starts mirrors and reports phases
// with the VMs' statuses, a watcher reads the phase of every mirrored VM
// every mirrorPollInterval and reports a change itself, without waiting
// for a reconcile that may be busy (a restore fills a disk within a
// pass). Observing a phase and reporting it happen under one lock, so
// the controllers hear phases in the order they were observed: an older
// "mirroring" never arrives after a newer "".
//
// Target: the host serves the exports its assignments list (MirrorExports,
// agent/mirrorexport.go) and reports each one's address, or why it cannot
// serve it, whenever that changes and after each reconnection. A failover
// that places the VM here builds its root disk from the export's file
// (RestoreRef.from_mirror: Takeover, then fileSource).
//
// A backup and a mirror exclude each other (on libvirt 9.0 a disk has one
// block job at a time): a backup job stops the VM's mirror first and holds
// it off until the backup view is closed; the next reconcile starts it
// again, a full copy.

// Phases of MirrorState.
const (
	MirrorNone      = "none"      // no mirror job
	MirrorCopying   = "copying"   // the bulk copy runs: the target is not yet whole
	MirrorMirroring = "mirroring" // every completed write is on the target
)

// MirrorTarget is an NBD export a root disk is mirrored to.
type MirrorTarget struct {
	// Address is host:port of the NBD server; Export the export's name.
	Address, Export string
}

// MirrorState is where a VM's mirror is.
type MirrorState struct {
	// Phase is MirrorNone, MirrorCopying or MirrorMirroring.
	Phase string
	// Cur and End are the job's progress in bytes: End what it has had to
	// copy so far, Cur what it copied.
	Cur, End int64
	// Target is where the job copies to (zero: no job).
	Target MirrorTarget
}

// Mirrorer mirrors running VMs' root disks synchronously to NBD exports.
// agent/libvirt's Driver implements it (its test driver has nothing to
// mirror with: StartMirror fails, MirrorStatus says MirrorNone).
type Mirrorer interface {
	// StartMirror starts mirroring the running VM's root disk to target;
	// a mirror to the same target already running is left as it is.
	StartMirror(ctx context.Context, vmID string, target MirrorTarget) error
	// MirrorStatus says where the VM's mirror is: MirrorNone when there is
	// none (never started, stopped, ended by an error, VM not running).
	MirrorStatus(ctx context.Context, vmID string) (MirrorState, error)
	// StopMirror ends the VM's mirror; none is not an error.
	StopMirror(ctx context.Context, vmID string) error
}

const (
	// mirrorPollInterval is how often the watcher reads mirrored VMs'
	// phases: the longest a mirror's end goes unnoticed.
	mirrorPollInterval = 200 * time.Millisecond
	// mirrorPausedForBackup is the mirror_error while a backup runs.
	mirrorPausedForBackup = "paused while a backup of the VM runs (a disk has one block job at a time); copied again after it"
	// mirrorEnded is the mirror_error of a job that ended by itself.
	mirrorEnded = "the mirror job ended (its export or the link to it failed, or the guest stopped); starting it again"
	// fileSourcePiece is the largest piece fileSource.Fill writes.
	fileSourcePiece = 4 << 20
)

// mirrorSeen is a VM's mirror as reported: its phase on the wire ("" for
// none) and why it is not mirroring.
type mirrorSeen struct{ phase, err string }

// wirePhase is a MirrorState phase as VMStatus.mirror_phase says it.
func wirePhase(p string) string {
	if p == MirrorNone {
		return ""
	}
	return p
}

// next is what follows s when the VM's mirror is found in phase p: a
// mirror that ended says so until a start says otherwise.
func (s mirrorSeen) next(p string) mirrorSeen {
	switch {
	case wirePhase(p) != "":
		return mirrorSeen{phase: wirePhase(p)}
	case s.phase != "":
		return mirrorSeen{err: mirrorEnded}
	}
	return s
}

// mirroredVM is a running VM the reconcile loop mirrors.
type mirroredVM struct {
	target MirrorTarget
	seen   mirrorSeen
	// base is the VM's status from the last reconcile (RUNNING), which
	// the watcher reports with a new phase.
	base *yunchiv1.VMStatus
	// startErr is the last error recorded (logged once, not at every
	// retry).
	startErr string
}

// mirrors is what the agent knows of its VMs' mirrors.
type mirrors struct {
	// mu is held while a phase is observed and recorded, and while
	// statuses carrying phases are reported (by the reconcile loop or
	// the watcher).
	mu   sync.Mutex
	vms  map[string]*mirroredVM // by VM id
	sent map[string]mirrorSeen  // acknowledged by the controllers, by VM id
	// resend: a new assignment stream began (maybe on a controller that
	// knows less); every mirrored VM's phase is sent again.
	resend atomic.Bool
	// reportAfter: the watcher's last report failed; it tries again
	// then (the reconcile loop retries on its own).
	reportAfter time.Time
	reportBo    *backoff

	// startMu orders mirror starts against backups pausing mirrors, so
	// that no start slips in between a backup stopping the mirror and
	// beginning its view; paused counts the backups running by VM.
	startMu sync.Mutex
	paused  map[string]int
}

func newMirrors() mirrors {
	return mirrors{vms: map[string]*mirroredVM{}, sent: map[string]mirrorSeen{}, paused: map[string]int{},
		reportBo: &backoff{min: retryDelay, max: 30 * time.Second}}
}

// takeResend clears what was acknowledged after a reconnection. mu is held.
func (m *mirrors) takeResend() {
	if m.resend.Swap(false) {
		clear(m.sent)
	}
}

// behind says whether st's mirror fields are news to the controllers.
// A VM with a mirror assigned has its phase sent at least once (after
// each reconnection), "" included.
func (m *mirrors) behind(as *yunchiv1.Assignment, st *yunchiv1.VMStatus) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.takeResend()
	cur := mirrorSeen{phase: st.GetMirrorPhase(), err: st.GetMirrorError()}
	sent, ok := m.sent[st.GetVmId()]
	if !ok {
		return cur != mirrorSeen{} || as.GetMirror() != nil
	}
	return sent != cur
}

// refresh puts the latest observed phases into statuses about to be
// reported. mu is held.
func (m *mirrors) refresh(statuses []*yunchiv1.VMStatus) {
	for _, st := range statuses {
		if v := m.vms[st.GetVmId()]; v != nil {
			st.MirrorPhase, st.MirrorError = v.seen.phase, v.seen.err
		}
	}
}

// taken records statuses the controllers took. mu is held.
func (m *mirrors) taken(statuses []*yunchiv1.VMStatus) {
	for _, st := range statuses {
		if st.GetGone() {
			delete(m.sent, st.GetVmId())
			continue
		}
		m.sent[st.GetVmId()] = mirrorSeen{phase: st.GetMirrorPhase(), err: st.GetMirrorError()}
	}
}

// forgetUnwanted drops what is remembered of VMs no longer assigned.
func (m *mirrors) forgetUnwanted(wanted map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	forgetUnwanted(m.vms, wanted)
	forgetUnwanted(m.sent, wanted)
}

// reconcileMirror makes the mirror of the VM st is the status of match
// its assignment, and fills in st's mirror fields. A running VM with a
// mirror assigned is mirrored there (started when it has none, started
// again when its target changed); one without has its mirror stopped.
// It returns false when a start failed (to be tried again soon).
func (a *Agent) reconcileMirror(ctx context.Context, as *yunchiv1.Assignment, st *yunchiv1.VMStatus) bool {
	id := as.GetVmId()
	ref := as.GetMirror()
	running := st.GetPhase() == yunchiv1.VMPhase_VM_PHASE_RUNNING && !st.GetGone()
	log := a.log.With("vm", id, "name", as.GetName())
	if !running || ref == nil {
		a.mw.mu.Lock()
		delete(a.mw.vms, id)
		a.mw.mu.Unlock()
		if running && a.mirrorer != nil {
			a.stopUnwantedMirror(ctx, id, log)
		}
		return true
	}
	want := MirrorTarget{Address: ref.GetAddress(), Export: ref.GetExportName()}
	base := cloneStatus(st)
	if a.mirrorer == nil {
		a.recordMirror(id, want, base, mirrorSeen{err: "this host's driver cannot mirror disks"})
		a.fillMirror(st)
		return true
	}

	a.mw.startMu.Lock()
	defer a.mw.startMu.Unlock()
	if a.mw.paused[id] > 0 {
		a.recordMirror(id, want, base, mirrorSeen{err: mirrorPausedForBackup})
		a.fillMirror(st)
		return true
	}
	cur, err := a.mirrorer.MirrorStatus(ctx, id)
	var startErr error
	switch {
	case err != nil:
		startErr = err
	case cur.Phase == MirrorNone && a.endedUnseen(id, want):
		// The job ended by itself since it was last looked at (this pass
		// came before the watcher's next poll). Report that first, as the
		// watcher would have: the controllers show why the VM is not
		// protected. The next pass, at once, starts it again.
		a.recordMirror(id, want, base, mirrorSeen{err: mirrorEnded})
		log.Warn("mirror ended: the VM is not protected until it is copied again", "to", want.Address)
		a.wake()
		a.fillMirror(st)
		return true
	case cur.Phase != MirrorNone && cur.Target != want:
		log.Info("mirror target changed; stopping the old mirror", "from", cur.Target.Address, "from_export", cur.Target.Export,
			"to", want.Address, "to_export", want.Export)
		if err := a.mirrorer.StopMirror(ctx, id); err != nil {
			startErr = err
			break
		}
		fallthrough
	case cur.Phase == MirrorNone:
		if startErr = a.mirrorer.StartMirror(ctx, id, want); startErr == nil {
			log.Info("mirror started", "to", want.Address, "export", want.Export, "center", ref.GetCenter(), "target_host", ref.GetTargetHost())
		}
	}
	if ctx.Err() != nil {
		return true
	}
	if startErr != nil {
		msg := oneLine("mirror: " + startErr.Error())
		if a.recordMirror(id, want, base, mirrorSeen{err: msg}) {
			log.Warn("cannot mirror the VM; retrying", "to", want.Address, "err", msg)
		}
		a.fillMirror(st)
		return false
	}
	a.observeMirror(ctx, id, want, base)
	a.fillMirror(st)
	return true
}

// endedUnseen says whether the VM's mirror to want was last seen copying
// or mirroring: found with no job now, it ended by itself.
func (a *Agent) endedUnseen(id string, want MirrorTarget) bool {
	a.mw.mu.Lock()
	defer a.mw.mu.Unlock()
	v := a.mw.vms[id]
	return v != nil && v.seen.phase != "" && v.target == want
}

// stopUnwantedMirror stops a mirror the VM's assignment no longer asks.
func (a *Agent) stopUnwantedMirror(ctx context.Context, id string, log *slog.Logger) {
	cur, err := a.mirrorer.MirrorStatus(ctx, id)
	if err != nil || cur.Phase == MirrorNone {
		return
	}
	if err := a.mirrorer.StopMirror(ctx, id); err != nil {
		if ctx.Err() == nil {
			log.Warn("cannot stop a mirror no longer assigned", "to", cur.Target.Address, "err", oneLine(err.Error()))
		}
		return
	}
	log.Info("mirror stopped: no longer assigned", "to", cur.Target.Address, "export", cur.Target.Export)
}

// recordMirror sets the VM's observed mirror to seen (not mirroring);
// it says whether seen's error is news (to be logged: a start retried
// with the same error is logged once).
func (a *Agent) recordMirror(id string, target MirrorTarget, base *yunchiv1.VMStatus, seen mirrorSeen) bool {
	a.mw.mu.Lock()
	defer a.mw.mu.Unlock()
	v := a.mw.vm(id)
	v.target, v.base, v.seen = target, base, seen
	news := v.startErr != seen.err
	v.startErr = seen.err
	return news
}

// observeMirror reads the VM's mirror phase and records it, under mu.
func (a *Agent) observeMirror(ctx context.Context, id string, target MirrorTarget, base *yunchiv1.VMStatus) {
	a.mw.mu.Lock()
	defer a.mw.mu.Unlock()
	v := a.mw.vm(id)
	v.target, v.base = target, base
	cur, err := a.mirrorer.MirrorStatus(ctx, id)
	if err != nil {
		v.seen = mirrorSeen{err: oneLine("mirror: " + err.Error())}
		return
	}
	v.startErr = ""
	v.seen = v.seen.next(cur.Phase)
}

// vm is what is remembered of the VM's mirror, made when there is
// nothing yet. mu is held.
func (m *mirrors) vm(id string) *mirroredVM {
	v := m.vms[id]
	if v == nil {
		v = &mirroredVM{}
		m.vms[id] = v
	}
	return v
}

// fillMirror puts the VM's observed mirror into st.
func (a *Agent) fillMirror(st *yunchiv1.VMStatus) {
	a.mw.mu.Lock()
	defer a.mw.mu.Unlock()
	a.mw.refresh([]*yunchiv1.VMStatus{st})
}

func cloneStatus(st *yunchiv1.VMStatus) *yunchiv1.VMStatus {
	return &yunchiv1.VMStatus{VmId: st.GetVmId(), Phase: st.GetPhase(), Message: st.GetMessage(), ObservedRebootSeq: st.GetObservedRebootSeq()}
}

// mirrorLoop watches the phases of mirrored VMs until ctx ends, and
// reports each change at once.
func (a *Agent) mirrorLoop(ctx context.Context) {
	if a.mirrorer == nil {
		return
	}
	t := time.NewTicker(mirrorPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.pollMirrors(ctx)
	}
}

// pollMirrors reads every mirrored VM's phase, reports those the
// controllers have not taken, and wakes the reconcile loop to start
// again a mirror that ended.
func (a *Agent) pollMirrors(ctx context.Context) {
	m := &a.mw
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.vms) == 0 {
		return
	}
	m.takeResend()
	ended := false
	var out []*yunchiv1.VMStatus
	for id, v := range m.vms {
		cur, err := a.mirrorer.MirrorStatus(ctx, id)
		if err != nil {
			continue // the reconcile loop will say what is wrong with the domain
		}
		seen := v.seen.next(cur.Phase)
		if seen != v.seen {
			switch {
			case seen.phase == "" && v.seen.phase != "":
				ended = true
				a.log.Warn("mirror ended: the VM is not protected until it is copied again", "vm", id, "was", v.seen.phase, "to", v.target.Address)
			case seen.phase == MirrorMirroring:
				a.log.Info("mirroring: every write the guest completes is on the target too", "vm", id, "to", v.target.Address, "bytes", cur.End)
			}
		}
		v.seen = seen
		if sent, ok := m.sent[id]; (!ok || sent != seen) && v.base != nil {
			st := cloneStatus(v.base)
			st.MirrorPhase, st.MirrorError = seen.phase, seen.err
			out = append(out, st)
		}
	}
	if ended {
		a.wake()
	}
	if len(out) == 0 || time.Now().Before(m.reportAfter) || ctx.Err() != nil {
		return
	}
	slices.SortFunc(out, func(x, y *yunchiv1.VMStatus) int { return strings.Compare(x.GetVmId(), y.GetVmId()) })
	err := a.ctl.call(ctx, "mirror report", rpcTimeout, func(ctx context.Context, c yunchiv1.AgentServiceClient) error {
		_, err := c.ReportVMStatus(ctx, &yunchiv1.ReportVMStatusRequest{HostId: a.cfg.HostID, Statuses: out})
		return err
	})
	if err != nil {
		if ctx.Err() == nil {
			d := m.reportBo.next()
			m.reportAfter = time.Now().Add(d)
			a.log.Warn("cannot report mirror phases; will retry", "vms", len(out), "err", err, "in", d.Round(time.Millisecond))
		}
		return
	}
	m.reportBo.reset()
	m.reportAfter = time.Time{}
	m.taken(out)
	for _, st := range out {
		a.log.Debug("reported mirror phase", "vm", st.GetVmId(), "phase", st.GetMirrorPhase(), "error", st.GetMirrorError())
	}
}

// pauseMirror stops the VM's mirror, if it has one, for a backup, and
// keeps the reconcile loop from starting it again until the returned
// function is called (once the backup view is closed).
func (a *Agent) pauseMirror(ctx context.Context, id string, log *slog.Logger) func() {
	if a.mirrorer == nil {
		return func() {}
	}
	m := &a.mw
	m.startMu.Lock()
	m.paused[id]++
	m.startMu.Unlock()
	release := sync.OnceFunc(func() {
		m.startMu.Lock()
		if m.paused[id]--; m.paused[id] <= 0 {
			delete(m.paused, id)
		}
		m.startMu.Unlock()
		a.wake() // the mirror starts again
	})
	cur, err := a.mirrorer.MirrorStatus(ctx, id)
	if err != nil || cur.Phase == MirrorNone {
		return release
	}
	if err := a.mirrorer.StopMirror(ctx, id); err != nil {
		log.Warn("cannot stop the VM's mirror for its backup; the backup will fail", "err", oneLine(err.Error()))
		return release
	}
	log.Info("mirror stopped for a backup (a disk has one block job at a time); it is copied again after the backup", "was", cur.Phase, "to", cur.Target.Address)
	m.mu.Lock()
	if v := m.vms[id]; v != nil {
		v.seen = mirrorSeen{err: mirrorPausedForBackup}
	}
	m.mu.Unlock()
	return release
}

// exportsLoop serves the mirror exports of the latest assignments and
// reports them: on every new set, at every resync, and soon after a pass
// that could not finish.
func (a *Agent) exportsLoop(ctx context.Context) {
	a.passLoop(ctx, a.exportsChanged, a.syncExports)
}

// mirrorKeepUnlisted is how long the file of an export no longer listed
// (nor taken over by a VM assigned here) is kept before it is removed: a
// failover of its VM may still place the VM here, or the export be
// listed again. A var for the tests.
var mirrorKeepUnlisted = time.Hour

// noExports is the error of every export asked of a host that serves
// none.
const noExports = "this host serves no mirror exports (its agent runs without a mirror dir)"

// syncExports applies set's mirror exports and reports their statuses
// if they are news; false means something should be tried again soon.
func (a *Agent) syncExports(ctx context.Context, set *yunchiv1.Assignments) bool {
	list := set.GetMirrorExports()
	var out []*yunchiv1.MirrorExportStatus
	ok := true
	seen := map[string]bool{}
	if a.exports == nil {
		for _, e := range list {
			if !seen[e.GetVmId()] {
				seen[e.GetVmId()] = true
				out = append(out, &yunchiv1.MirrorExportStatus{VmId: e.GetVmId(), Error: noExports})
			}
		}
	} else {
		a.exportsMu.Lock()
		byVM, other := a.exports.ApplyEach(ctx, list)
		a.exportsMu.Unlock()
		if ctx.Err() != nil {
			return true
		}
		for _, err := range other {
			a.log.Warn("mirror exports", "err", oneLine(err.Error()))
			ok = false
		}
		status := map[string]MirrorExportStatus{}
		for _, s := range a.exports.Status() {
			status[s.VMID] = s
		}
		a.collectExports(set, status)
		for _, e := range list {
			id := e.GetVmId()
			if seen[id] {
				continue
			}
			seen[id] = true
			st := &yunchiv1.MirrorExportStatus{VmId: id}
			s, found := status[id]
			switch err := byVM[id]; {
			case err != nil:
				st.Error = oneLine(err.Error())
			case !found || !s.Serving:
				st.Error = "not served"
			default:
				// Also while its qemu-nbd is being started again after
				// it died: the address stays, and the source's mirror
				// says if it cannot reach it.
				st.Address = s.Address
			}
			if st.Error != "" {
				ok = false
			}
			out = append(out, st)
		}
	}
	slices.SortFunc(out, func(x, y *yunchiv1.MirrorExportStatus) int { return strings.Compare(x.GetVmId(), y.GetVmId()) })
	resend := a.exportsResend.Swap(false)
	if !resend && sameExports(out, a.exportsSent) {
		return ok
	}
	if len(out) == 0 {
		a.exportsSent = nil // nothing to tell: the controllers list none
		return ok
	}
	err := a.ctl.call(ctx, "mirror export report", rpcTimeout, func(ctx context.Context, c yunchiv1.AgentServiceClient) error {
		_, err := c.ReportVMStatus(ctx, &yunchiv1.ReportVMStatusRequest{HostId: a.cfg.HostID, MirrorExports: out})
		return err
	})
	if err != nil {
		if resend {
			a.exportsResend.Store(true)
		}
		if ctx.Err() == nil {
			a.log.Warn("cannot report mirror exports; will retry", "exports", len(out), "err", err)
		}
		return false
	}
	a.exportsSent = out
	for _, st := range out {
		if st.GetError() != "" {
			a.log.Warn("mirror export not served", "vm", st.GetVmId(), "err", st.GetError())
		} else {
			a.log.Info("mirror export reported", "vm", st.GetVmId(), "address", st.GetAddress())
		}
	}
	return ok
}

// collectExports removes the files of exports neither listed nor
// restored from by an assignment for mirrorKeepUnlisted (the exports
// loop's own: exportsUnlisted says since when).
func (a *Agent) collectExports(set *yunchiv1.Assignments, status map[string]MirrorExportStatus) {
	used := map[string]bool{}
	for _, e := range set.GetMirrorExports() {
		used[e.GetVmId()] = true
	}
	for _, as := range set.GetVms() {
		if as.GetRestore().GetFromMirror() {
			used[as.GetVmId()] = true
		}
	}
	if a.exportsUnlisted == nil {
		a.exportsUnlisted = map[string]time.Time{}
	}
	now := time.Now()
	for id := range a.exportsUnlisted {
		if _, ok := status[id]; !ok || used[id] {
			delete(a.exportsUnlisted, id)
		}
	}
	for id, s := range status {
		if used[id] || s.Serving {
			continue
		}
		since, ok := a.exportsUnlisted[id]
		if !ok {
			a.exportsUnlisted[id] = now
			since = now
		}
		if now.Sub(since) < mirrorKeepUnlisted {
			continue
		}
		a.exportsMu.Lock()
		err := a.exports.Remove(id)
		a.exportsMu.Unlock()
		if err != nil {
			a.log.Warn("cannot remove a mirror export no longer listed", "vm", id, "err", oneLine(err.Error()))
			continue
		}
		delete(a.exportsUnlisted, id)
		a.log.Info("removed a mirror export no longer listed", "vm", id, "unlisted_for", now.Sub(since).Round(time.Second), "path", s.Path)
	}
}

func sameExports(x, y []*yunchiv1.MirrorExportStatus) bool {
	return slices.EqualFunc(x, y, func(p, q *yunchiv1.MirrorExportStatus) bool {
		return p.GetVmId() == q.GetVmId() && p.GetAddress() == q.GetAddress() && p.GetError() == q.GetError()
	})
}

// mirrorSource is the root disk of a VM failed over to this host from
// its synchronous mirror: this host's export of it, taken over.
func (a *Agent) mirrorSource(as *yunchiv1.Assignment) (DiskSource, error) {
	id := as.GetVmId()
	switch {
	case as.GetImage() != nil:
		return nil, errors.New("restore from the mirror: the assignment also names an image")
	case as.GetDiskBytes() <= 0:
		return nil, fmt.Errorf("restore from the mirror: disk_bytes %d, want the root disk's size", as.GetDiskBytes())
	case a.exports == nil:
		return nil, errors.New("restore from the mirror: " + noExports)
	}
	a.exportsMu.Lock()
	path, err := a.exports.Takeover(id)
	a.exportsMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("restore from the mirror: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("restore from the mirror: %w", err)
	}
	if fi.Size() != as.GetDiskBytes() {
		return nil, fmt.Errorf("restore from the mirror: the export's file has %d bytes, disk_bytes is %d", fi.Size(), as.GetDiskBytes())
	}
	return &fileSource{path: path, size: as.GetDiskBytes(), log: a.log.With("vm", id, "mirror", path)}, nil
}

// removeTakenMirror deletes the export file a VM's new root disk was
// built from, once its domain is defined: the disk is the VM's now.
func (a *Agent) removeTakenMirror(as *yunchiv1.Assignment, log *slog.Logger) {
	if !as.GetRestore().GetFromMirror() || a.exports == nil {
		return
	}
	a.exportsMu.Lock()
	err := a.exports.Remove(as.GetVmId())
	a.exportsMu.Unlock()
	if err != nil {
		log.Warn("cannot remove the mirror export the VM's disk was built from", "err", oneLine(err.Error()))
		return
	}
	log.Info("root disk built from the VM's mirror; the export's file is removed")
}

// fileSource is a raw disk image in a local file, as a DiskSource.
type fileSource struct {
	path string
	size int64
	log  *slog.Logger
}

func (s *fileSource) SizeBytes() int64 { return s.size }

// Fill writes the file's data in order, in pieces of at most
// fileSourcePiece bytes; its holes, and pieces of zeros, are skipped.
func (s *fileSource) Fill(ctx context.Context, write func(off int64, p []byte) error) error {
	begun := time.Now()
	f, err := os.Open(s.path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, fileSourcePiece)
	var written int64
	for off := int64(0); off < s.size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, end, err := sparse.NextData(f, off, s.size)
		if err != nil {
			return fmt.Errorf("read %s: %w", s.path, err)
		}
		if data >= s.size {
			break
		}
		for off = data; off < end; {
			p := buf[:min(int64(len(buf)), end-off)]
			if _, err := f.ReadAt(p, off); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read %s: %w", s.path, err)
			}
			if !sparse.IsZero(p) {
				if err := write(off, p); err != nil {
					return err
				}
				written += int64(len(p))
			}
			off += int64(len(p))
		}
	}
	s.log.Info("root disk built from the mirror", "size_bytes", s.size, "data_bytes", written, "took", time.Since(begun).Round(time.Millisecond))
	return nil
}
