package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/internal/nbd"
)

// Synchronous mirrors (platinum). StartMirror copies a running VM's root
// disk, with libvirt's block copy (virDomainBlockCopy), to an NBD export
// on a host of the same-city center (agent/mirrorexport.go serves it):
//
//   - the copy is full, not shallow: a root disk is a qcow2 overlay of an
//     image, and the target must hold the disk as the guest sees it, the
//     backing chain flattened, as a raw image a failover boots from;
//   - VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES puts QEMU's mirror in its
//     write-blocking mode: once the job is in its mirroring phase a guest
//     write completes only when it is written to both the local disk and
//     the export, so every write the guest saw completed is in both
//     centers (before that phase, while the bulk copy runs, it is not);
//   - VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB: the domain is persistent, and
//     the job need not outlive the QEMU process (a VM started again is
//     mirrored again, from the start);
//   - VIR_DOMAIN_BLOCK_COPY_REUSE_EXT: the export exists already, made
//     and sized by its host; it is not zeroed (a mirror started again
//     finds the last one's bytes there), so the copy writes every block,
//     zeroes as zero writes (which the export turns into holes).
//
// The job is never pivoted: the VM keeps running on its own disk, the
// export only follows it. StopMirror aborts it.
//
// What "zero loss" holds for: a write completes on both sides while the
// job is in its mirroring phase. If a write to the export fails (its
// qemu-nbd died, the network between the centers broke), QEMU completes
// the guest's write on the local disk alone and ends the job within a
// fraction of a second (measured here: 90 to 160 ms): QEMU's mirror has no
// mode that fails or holds the guest's write instead, and libvirt 9.0
// cannot give the NBD client a reconnect delay (its schema has no
// <reconnect> for NBD sources), so even a restart of qemu-nbd ends the
// job. MirrorStatus then says MirrorNone: the VM is not protected from
// then on, and the export lacks the writes since, until StartMirror copies
// the disk again. A failover may count on the export only if the VM's
// mirror was in its mirroring phase when its center was lost.

// The agent's mirror types (agent.Mirrorer, which Driver implements).
type (
	MirrorTarget = agent.MirrorTarget
	MirrorState  = agent.MirrorState
)

// Phases of MirrorState.
const (
	MirrorNone      = agent.MirrorNone
	MirrorCopying   = agent.MirrorCopying
	MirrorMirroring = agent.MirrorMirroring
)

// mirrorProbeTimeout bounds checking the export before the copy.
const mirrorProbeTimeout = 5 * time.Second

var _ agent.Mirrorer = (*Driver)(nil)

// checkMirrorTarget refuses a target that cannot be put into libvirt's
// XML as given.
func checkMirrorTarget(vmID string, t MirrorTarget) error {
	name := domainName(vmID)
	host, port, err := net.SplitHostPort(t.Address)
	if err != nil {
		return fmt.Errorf("mirror of %s: address %q: want host:port", name, t.Address)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("mirror of %s: address %q: port %q is not 1 to 65535", name, t.Address, port)
	}
	if host == "" || len(host) > 253 || !isXMLText(host) || (net.ParseIP(host) == nil && !isHostname(host)) {
		return fmt.Errorf("mirror of %s: address %q: host %q is not an IP address or host name", name, t.Address, host)
	}
	if t.Export == "" || len(t.Export) > 4096 || !isXMLText(t.Export) || hasControl(t.Export) {
		return fmt.Errorf("mirror of %s: export name %q: want 1 to 4096 bytes of text without control characters", name, t.Export)
	}
	return nil
}

func isHostname(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

// mirrorDiskXML is the block copy's destination: the export, raw.
func mirrorDiskXML(t MirrorTarget) (string, error) {
	host, port, _ := net.SplitHostPort(t.Address)
	disk := libvirtxml.DomainDisk{
		Device: "disk",
		Driver: &libvirtxml.DomainDiskDriver{Type: "raw"},
		Source: &libvirtxml.DomainDiskSource{Network: &libvirtxml.DomainDiskSourceNetwork{
			Protocol: "nbd",
			Name:     t.Export,
			Hosts:    []libvirtxml.DomainDiskSourceHost{{Name: host, Port: port}},
		}},
	}
	return disk.Marshal()
}

// StartMirror starts mirroring the running VM's root disk to target,
// synchronously once the bulk copy is done (MirrorStatus then says
// MirrorMirroring). The export must exist, be writable and have the
// disk's size. A mirror to the same target already running is left as it
// is; a VM with another block job on its root disk (another mirror, a
// backup) is refused.
func (d *Driver) StartMirror(ctx context.Context, vmID string, target MirrorTarget) error {
	if vmID == "" {
		return errors.New("mirror: empty vm id")
	}
	if err := checkMirrorTarget(vmID, target); err != nil {
		return err
	}
	name := domainName(vmID)
	if d.testDriver {
		return fmt.Errorf("mirror of %s: a test-driver host has no QEMU to mirror with", name)
	}
	doc, err := mirrorDiskXML(target)
	if err != nil {
		return fmt.Errorf("mirror of %s: %w", name, err)
	}
	return d.withDomain(vmID, func(dom *lv.Domain) error {
		if err := checkRunning(dom, name); err != nil {
			return err
		}
		st, err := mirrorState(dom, name)
		if err != nil {
			return err
		}
		if st.Phase != MirrorNone {
			if st.Target == target {
				return nil
			}
			return fmt.Errorf("mirror of %s: %s already has a block copy job, to %s export %q; stop it first", name, rootTarget, st.Target.Address, st.Target.Export)
		}
		info, err := dom.GetBlockInfo(rootTarget, 0)
		if err != nil {
			return wrap("mirror of "+name+": size of "+rootTarget, err)
		}
		if err := probeExport(ctx, name, target, int64(info.Capacity)); err != nil {
			return err
		}
		flags := lv.DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES | lv.DOMAIN_BLOCK_COPY_TRANSIENT_JOB | lv.DOMAIN_BLOCK_COPY_REUSE_EXT
		return wrap("mirror of "+name+" to "+target.Address, dom.BlockCopy(rootTarget, doc, &lv.DomainBlockCopyParameters{}, flags))
	})
}

// checkRunning refuses a domain that is not running (or paused).
func checkRunning(dom *lv.Domain, name string) error {
	state, _, err := dom.GetState()
	if err != nil {
		return wrap("mirror of "+name+": state", err)
	}
	if state != lv.DOMAIN_RUNNING && state != lv.DOMAIN_PAUSED {
		return fmt.Errorf("mirror of %s: the domain is not running (%s)", name, stateText(state))
	}
	return nil
}

func stateText(s lv.DomainState) string {
	switch s {
	case lv.DOMAIN_SHUTOFF:
		return "shut off"
	case lv.DOMAIN_SHUTDOWN:
		return "shutting down"
	case lv.DOMAIN_CRASHED:
		return "crashed"
	case lv.DOMAIN_PMSUSPENDED:
		return "suspended"
	case lv.DOMAIN_BLOCKED:
		return "blocked"
	}
	return fmt.Sprintf("state %d", s)
}

// probeExport checks, before the copy, that the export answers, is
// writable and has the disk's size: QEMU's own errors for these come late
// and in its words.
func probeExport(ctx context.Context, name string, t MirrorTarget, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, mirrorProbeTimeout)
	defer cancel()
	c, err := nbd.Dial(ctx, "tcp", t.Address, nbd.Options{Export: t.Export})
	if err != nil {
		return fmt.Errorf("mirror of %s: export %q at %s not reachable: %v", name, t.Export, t.Address, oneLine(err.Error()))
	}
	defer c.Close()
	switch {
	case c.ReadOnly():
		return fmt.Errorf("mirror of %s: export %q at %s is read-only", name, t.Export, t.Address)
	case c.Size() != size:
		return fmt.Errorf("mirror of %s: export %q at %s has %d bytes, the disk %d", name, t.Export, t.Address, c.Size(), size)
	}
	return nil
}

// MirrorStatus says where the VM's mirror is: MirrorNone when its root
// disk has no block copy job (none started, stopped, or ended by an
// error: the VM is not protected then; or another job, a backup, runs),
// or the domain is not running.
func (d *Driver) MirrorStatus(ctx context.Context, vmID string) (MirrorState, error) {
	if vmID == "" {
		return MirrorState{}, errors.New("mirror: empty vm id")
	}
	if d.testDriver {
		return MirrorState{Phase: MirrorNone}, nil
	}
	var st MirrorState
	err := d.withDomain(vmID, func(dom *lv.Domain) error {
		var err error
		st, err = mirrorState(dom, domainName(vmID))
		if errors.As(err, new(*otherJobError)) {
			return nil // a backup, say: no mirror
		}
		return err
	})
	return st, err
}

// otherJobError: the root disk has a block job that is not a mirror (a
// backup: on libvirt 9.0 a disk has one block job at a time, so a VM
// cannot be backed up while it is mirrored, nor mirrored during a backup).
type otherJobError struct{ name, kind string }

func (e *otherJobError) Error() string {
	return fmt.Sprintf("mirror of %s: %s has a %s job running; mirror it once that ends", e.name, rootTarget, e.kind)
}

func blockJobKind(t lv.DomainBlockJobType) string {
	switch t {
	case lv.DOMAIN_BLOCK_JOB_TYPE_PULL:
		return "block pull"
	case lv.DOMAIN_BLOCK_JOB_TYPE_COMMIT, lv.DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
		return "block commit"
	case lv.DOMAIN_BLOCK_JOB_TYPE_BACKUP:
		return "backup"
	}
	return fmt.Sprintf("block (type %d)", t)
}

// mirrorState reads the root disk's block job: its progress from the job
// info, its phase and target from the live XML's <mirror>, whose ready
// attribute libvirt sets on QEMU's READY event (the job reached its
// mirroring phase).
func mirrorState(dom *lv.Domain, name string) (MirrorState, error) {
	if active, err := dom.IsActive(); err != nil {
		return MirrorState{}, wrap("mirror of "+name, err)
	} else if !active {
		return MirrorState{Phase: MirrorNone}, nil
	}
	info, err := dom.GetBlockJobInfo(rootTarget, 0)
	if err != nil {
		return MirrorState{}, wrap("mirror of "+name+": block job of "+rootTarget, err)
	}
	if info.Type == 0 && info.End == 0 {
		return MirrorState{Phase: MirrorNone}, nil
	}
	if info.Type != lv.DOMAIN_BLOCK_JOB_TYPE_COPY {
		return MirrorState{Phase: MirrorNone}, &otherJobError{name: name, kind: blockJobKind(info.Type)}
	}
	st := MirrorState{Phase: MirrorCopying, Cur: int64(info.Cur), End: int64(info.End)}
	doc, err := dom.GetXMLDesc(0)
	if err != nil {
		return MirrorState{}, wrap("mirror of "+name+": live XML", err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(doc); err != nil {
		return MirrorState{}, fmt.Errorf("mirror of %s: live XML: %w", name, err)
	}
	var m *libvirtxml.DomainDiskMirror
	if x.Devices != nil {
		for _, disk := range x.Devices.Disks {
			if disk.Target != nil && disk.Target.Dev == rootTarget {
				m = disk.Mirror
			}
		}
	}
	if m == nil {
		// The job ended between the two calls.
		return MirrorState{Phase: MirrorNone}, nil
	}
	if m.Source != nil && m.Source.Network != nil && m.Source.Network.Protocol == "nbd" && len(m.Source.Network.Hosts) == 1 {
		h := m.Source.Network.Hosts[0]
		st.Target = MirrorTarget{Address: net.JoinHostPort(h.Name, h.Port), Export: m.Source.Network.Name}
	}
	// libvirt keeps cur below end until QEMU says the job is ready.
	if m.Ready == "yes" && info.Cur == info.End {
		st.Phase = MirrorMirroring
	}
	return st, nil
}

// StopMirror ends the VM's mirror without pivoting: the VM goes on on its
// own disk, the export keeps what it was sent. A VM without one is not an
// error; a block job of another kind (a backup) is left alone.
func (d *Driver) StopMirror(ctx context.Context, vmID string) error {
	if vmID == "" {
		return errors.New("mirror: empty vm id")
	}
	if d.testDriver {
		return nil
	}
	name := domainName(vmID)
	return d.withDomain(vmID, func(dom *lv.Domain) error {
		st, err := mirrorState(dom, name)
		if errors.As(err, new(*otherJobError)) {
			return nil // not a mirror: left alone
		}
		if err != nil || st.Phase == MirrorNone {
			return err
		}
		// Without ABORT_ASYNC libvirt returns once the job has ended.
		err = dom.BlockJobAbort(rootTarget, 0)
		if err != nil && isCode(err, lv.ERR_OPERATION_INVALID) {
			// It ended by itself meanwhile.
			if st, serr := mirrorState(dom, name); serr == nil && st.Phase == MirrorNone {
				return nil
			}
		}
		return wrap("stop mirror of "+name, err)
	})
}
