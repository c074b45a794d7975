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
}

// Seed is what a guest learns through cloud-init (NoCloud).
type Seed struct {
	InstanceID        string
	Hostname          string
	SSHAuthorizedKeys []string
	UserData          string
}
