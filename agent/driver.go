package agent

import (
	"context"
	"errors"
	"io"
	"time"
)

// Driver is the hypervisor seam: everything the agent needs from the host,
// nothing about what to do with it (that is the agent's policy). The only
// implementation is agent/libvirt; tests use it against libvirt's test driver.
//
// Domains are addressed by VM id. A driver must map a VM id to exactly one
// domain identity (libvirt: the domain UUID), so that defining the same VM
// twice on one host is impossible whatever state the agent lost.
//
// Implementations must be safe for concurrent use.
type Driver interface {
	// NodeFacts reads the host's capacity and identity.
	NodeFacts(ctx context.Context) (NodeFacts, error)
	// FreeMemoryBytes reports the host's free memory; drivers that cannot
	// tell return an error, which the agent treats as "unknown".
	FreeMemoryBytes(ctx context.Context) (int64, error)
	// ListDomains lists the domains Yunchi manages on the host (those carrying
	// its metadata), and no others.
	ListDomains(ctx context.Context) ([]Domain, error)
	// Define makes the domain persistent on the host, shut off. Defining a VM
	// id that is already defined updates that same domain.
	Define(ctx context.Context, spec DomainSpec) error
	// Start boots a defined domain; starting a running domain is a no-op.
	Start(ctx context.Context, vmID string) error
	// Stop asks the guest to shut down and, if it is not off after grace (or
	// the hypervisor cannot ask), powers it off. If ctx ends first Stop
	// returns ctx.Err() and leaves the domain as it is.
	Stop(ctx context.Context, vmID string, grace time.Duration) error
	// Destroy powers the domain off at once; destroying a shut-off domain is
	// a no-op.
	Destroy(ctx context.Context, vmID string) error
	// Reboot restarts a running domain.
	Reboot(ctx context.Context, vmID string) error
	// SetRebootSeq records, with the domain itself, the last reboot request
	// carried out, so that an agent restarted later does not repeat it.
	SetRebootSeq(ctx context.Context, vmID string, seq uint64) error
	// Undefine removes a shut-off domain's definition and the volumes
	// Define made for it (root disk, cloud-init seed).
	Undefine(ctx context.Context, vmID string) error
	// Events streams lifecycle changes of managed domains (started,
	// stopped, crashed, QEMU killed, ...) until ctx ends; the channel is
	// closed then, or earlier if the connection is lost (call again). A
	// driver that cannot watch returns ErrNoEvents.
	Events(ctx context.Context) (<-chan DomainEvent, error)
	// OpenConsole attaches to a running domain's serial console. Closing
	// the returned stream detaches.
	OpenConsole(ctx context.Context, vmID string) (io.ReadWriteCloser, error)
	// Stats reads what running managed domains use, by VM id.
	Stats(ctx context.Context) (map[string]Usage, error)

	// Volumes: data disks in the host's storage pool, each attached to at
	// most one domain, addressed by volume id (the guest sees the id as the
	// disk's serial).

	// DomainVolumes lists the ids of the volumes attached to vmID's
	// domain: as its running guest has them when it runs, else as its
	// definition does.
	DomainVolumes(ctx context.Context, vmID string) ([]string, error)
	// AttachVolume makes the volume in the pool when it is not there
	// (empty, thin) and attaches it to vmID's domain: to its definition
	// and, when it runs, to the running guest (hot-plug). Attaching an
	// attached volume is a no-op.
	AttachVolume(ctx context.Context, vmID string, v VolumeSpec) error
	// DetachVolume takes the volume off vmID's domain, its definition and
	// its running guest; the volume stays in the pool. A guest may release
	// the disk later than the call returns: DomainVolumes lists it until
	// then. Detaching a volume that is not attached is a no-op.
	DetachVolume(ctx context.Context, vmID, volumeID string) error
	// DeleteVolume removes the volume from the pool; one that is not there
	// is fine.
	DeleteVolume(ctx context.Context, volumeID string) error

	// Backups (agent/backup.go).

	// BeginBackup opens a crash-consistent point-in-time view of every
	// disk of vmID's domain (running or not), taken when it returns. With
	// req.Since naming a checkpoint the domain has, the view is
	// incremental: Changed lists only what was written since. A driver
	// that cannot make a view of this domain (no disk files, no backup
	// support) returns an error saying why, and changes nothing.
	BeginBackup(ctx context.Context, req BackupRequest) (BackupView, error)
}

// BackupRequest asks for a backup view of one VM's disks.
type BackupRequest struct {
	VMID string
	// Since is the checkpoint of the previous point of the same target
	// ("" = none): the view is incremental from it when the domain still
	// has it, else full.
	Since string
	// Checkpoint is the name of the checkpoint to create with the view
	// (the next backup's Since); "" = none. Drivers without checkpoints
	// ignore it.
	Checkpoint string
}

// BackupDisk is one disk of a backup view.
type BackupDisk struct {
	// Name is the disk's name in restore points: "root" for the root disk.
	Name      string
	SizeBytes int64
}

// Extent is a byte range of a disk.
type Extent struct{ Offset, Length int64 }

// BackupView is a point-in-time view of a VM's disks. Reads see the disks
// as they were when BeginBackup returned, whatever the guest writes since.
type BackupView interface {
	Disks() []BackupDisk
	// Incremental says whether Changed lists only what changed since the
	// request's Since checkpoint.
	Incremental() bool
	// Checkpoint is the checkpoint the view made ("" = none).
	Checkpoint() string
	// Changed lists, sorted and disjoint, the extents of the disk that may
	// differ from the Since checkpoint (incremental), or that may hold
	// data (full: every other byte reads as zero).
	Changed(ctx context.Context, disk string) ([]Extent, error)
	// ReadAt reads len(p) bytes of the disk at off (within its size).
	ReadAt(ctx context.Context, disk string, p []byte, off int64) error
	// Close ends the view. keep true: the backup was stored, the new
	// checkpoint stays and Since is deleted (no longer needed); false:
	// the new checkpoint is deleted, so the next backup starts from Since
	// again.
	Close(ctx context.Context, keep bool) error
}

// DiskSource is the contents of a disk to build (a restore).
type DiskSource interface {
	SizeBytes() int64
	// Fill calls write with the disk's contents in order, in pieces at
	// most a few MiB long; bytes it skips are zero. It checks what it
	// writes (a restore verifies every chunk) and fails on any damage.
	Fill(ctx context.Context, write func(off int64, p []byte) error) error
}

// VolumeSpec is a volume as the agent asks for it.
type VolumeSpec struct {
	ID        string
	SizeBytes int64
}

// ErrNoEvents is returned by Driver.Events for a host that cannot report
// lifecycle events; the agent then relies on its periodic reconcile.
var ErrNoEvents = errors.New("lifecycle events not supported")

// DomainEvent says that a managed domain's state changed.
type DomainEvent struct {
	VMID string
	// State after the event, and the hypervisor's words for why
	// ("stopped: crashed", "started: booted").
	State  DomainState
	Detail string
}

// Usage is what a running domain uses (libvirt bulk domain stats). Zero
// fields are unknown.
type Usage struct {
	CPUTimeNs         uint64
	MemoryBytes       int64 // balloon: current
	MemoryUnusedBytes int64 // balloon: unused, as the guest reports it
	DiskReadBytes     uint64
	DiskWriteBytes    uint64
	NetRxBytes        uint64
	NetTxBytes        uint64
}

// ErrDomainNotFound is returned (wrapped) by a Driver for a VM id that has no
// domain on the host.
var ErrDomainNotFound = errors.New("domain not found")

// NodeFacts is what a driver reads off its host.
type NodeFacts struct {
	Hostname    string
	CPUModel    string
	VCPUs       int64
	MemoryBytes int64
	// DiskBytes is the capacity summed over the host's active storage pools.
	DiskBytes int64
	// Hypervisor names the hypervisor with its version ("QEMU 7.2.0"), and
	// LibvirtVersion the libvirt library's ("9.0.0"); "" if unknown.
	Hypervisor, LibvirtVersion string
}

// DomainState is the coarse power state of a domain.
type DomainState int

const (
	// StateOther covers paused, crashed, suspended, shutting down, unknown.
	StateOther DomainState = iota
	StateRunning
	StateShutOff
)

func (s DomainState) String() string {
	switch s {
	case StateRunning:
		return "running"
	case StateShutOff:
		return "shut off"
	default:
		return "other"
	}
}

// Domain is one managed domain as the host sees it.
type Domain struct {
	VMID    string
	Project string
	Name    string
	State   DomainState
	// Detail names the hypervisor's own state ("paused", "crashed", ...).
	Detail string
	// RebootSeq is the last reboot request carried out (see SetRebootSeq).
	RebootSeq uint64
}

// DomainSpec is what the agent asks a driver to define.
type DomainSpec struct {
	VMID        string
	Project     string
	Name        string
	VCPUs       int32
	MemoryBytes int64
	// RebootSeq seeds the recorded reboot request: a freshly defined domain
	// has carried out every reboot asked before it existed.
	RebootSeq uint64
	// DiskBytes is the root disk's size; 0: no root disk.
	DiskBytes int64
	// BaseImage is the verified image file the root disk is a copy-on-write
	// overlay of ("": an empty disk), and BaseFormat its format ("qcow2",
	// "raw").
	BaseImage, BaseFormat string
	// Seed, when set, is attached as a cloud-init NoCloud seed.
	Seed *Seed
	// Volumes are attached from the start (made in the pool if missing).
	Volumes []VolumeSpec
	// RootSource, when set, is what the root disk (raw, DiskBytes long)
	// is built from before the domain is first defined: a restore. A root
	// disk left by a Define that failed before the domain existed is
	// built again.
	RootSource DiskSource
	// Isolated: the guest gets no network interface (a drill's clone).
	Isolated bool
}

// Seed is what a guest learns through cloud-init (NoCloud).
type Seed struct {
	InstanceID        string
	Hostname          string
	SSHAuthorizedKeys []string
	UserData          string
}
