// Package libvirt is the agent's Driver on top of libvirt. It is the only
// package of Yunchi that imports libvirt.org/go/libvirt, and it holds no
// policy: it does what the agent asks and reports what it sees.
package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	lv "libvirt.org/go/libvirt"

	"github.com/yunchi/yunchi/agent"
)

// MetadataNamespace is the XML namespace of the metadata element that marks a
// domain as Yunchi's. Domains without it are never listed or touched.
const MetadataNamespace = "https://yunchi.dev/xmlns/domain/1"

// metadataPrefix is the prefix libvirt writes for MetadataNamespace.
const metadataPrefix = "yunchi"

// stopPoll is how often Stop looks whether the guest has shut down.
const stopPoll = 100 * time.Millisecond

// Options tune a Driver.
type Options struct {
	// DomainType is the hypervisor type written in <domain type=...>: "kvm",
	// "qemu", "test". Empty means "test" for test:/// URIs, "kvm" otherwise.
	DomainType string
	// Pool is the storage pool root disks and cloud-init seeds are created
	// in; default "default". When set, NodeFacts reports this pool's
	// capacity as the host's disk; when empty, the sum over active pools.
	Pool string
	// PoolDir, if set, is where the pool is made (a directory pool:
	// defined, built, started, autostarted) when it does not exist. Without
	// it a missing pool is an error, except on the test driver, which gets
	// an in-memory pool.
	PoolDir string
	// Network is the guest's network: "user" (user-mode, the default),
	// "none", or the name of a host bridge.
	Network string
	// ConsoleLogDir, if set, is a directory each domain's serial console is
	// also logged to, as DIR/<domain name>.log (rewritten at each start).
	// It is made if missing.
	ConsoleLogDir string
	// SeedBus is the bus of the cloud-init seed's cdrom: "ide" (default;
	// the pc machine type has it built in) or "sata".
	SeedBus string
	// DiskDir, test driver only: each VM's root disk is a real sparse
	// file DIR/<vm id>.img, which backups read and restores fill
	// (simdisk.go). It is made if missing.
	DiskDir string
	// BackupDir is where backup views keep their NBD socket and QEMU's
	// scratch file (the old contents of blocks the guest overwrites
	// while a backup is read: on a busy guest it grows); default the
	// system's temp dir. Give it a file system with room, not a tmpfs.
	BackupDir string
}

// DefaultPool is the storage pool used when Options.Pool is empty.
const DefaultPool = "default"

// Driver implements agent.Driver over one libvirt connection.
type Driver struct {
	uri        string
	domainType string
	// testDriver is true for test:/// URIs. Then reconnect is false: the
	// test driver's state lives in the connection, a new connection would
	// be a different host.
	testDriver, reconnect bool

	poolName, poolDir string
	// poolSet: Options.Pool was given, NodeFacts reports that pool only.
	poolSet          bool
	poolMu           sync.Mutex // serialises looking up and defining the pool
	network, seedBus string
	consoleLogDir    string
	diskDir          string
	backupDir        string

	backupMu sync.Mutex
	backups  map[string]bool // VM ids with an open backup view

	mu   sync.Mutex
	conn *lv.Connect
	// dead are connections found dead; they are closed by Close only, since
	// another goroutine may still be inside a call on them.
	dead []*lv.Connect
}

var _ agent.Driver = (*Driver)(nil)

// Open connects to libvirt at uri (qemu:///system, test:///default,
// test:///ABS/PATH/node.xml, ...).
func Open(uri string) (*Driver, error) {
	return OpenWithOptions(uri, Options{})
}

// OpenWithOptions is Open with options.
func OpenWithOptions(uri string, o Options) (*Driver, error) {
	d := &Driver{
		uri: uri, domainType: o.DomainType, testDriver: strings.HasPrefix(uri, "test:"),
		poolName: o.Pool, poolDir: o.PoolDir, poolSet: o.Pool != "",
		network: o.Network, seedBus: o.SeedBus, consoleLogDir: o.ConsoleLogDir,
		diskDir: o.DiskDir, backupDir: o.BackupDir,
	}
	d.reconnect = !d.testDriver
	if d.domainType == "" {
		d.domainType = "kvm"
		if d.testDriver {
			d.domainType = "test"
		}
	}
	if d.poolName == "" {
		d.poolName = DefaultPool
	}
	if d.network == "" {
		d.network = NetworkUser
	}
	if err := d.checkOptions(); err != nil {
		return nil, err
	}
	for _, p := range []struct{ what, dir string }{{"console log dir", d.consoleLogDir}, {"disk dir", d.diskDir}} {
		if p.dir == "" {
			continue
		}
		if err := os.MkdirAll(p.dir, 0o750); err != nil {
			return nil, fmt.Errorf("libvirt options: %s: %w", p.what, err)
		}
	}
	conn, err := lv.NewConnect(uri)
	if err != nil {
		return nil, wrap("connect to "+uri, err)
	}
	d.conn = conn
	return d, nil
}

// checkOptions refuses options that could not be written into libvirt's
// XML as given.
func (d *Driver) checkOptions() error {
	if !isXMLText(d.poolName) || strings.ContainsAny(d.poolName, "/\n") {
		return fmt.Errorf("libvirt options: pool name %q: no '/', newlines or control characters", d.poolName)
	}
	for _, p := range []struct{ what, dir string }{{"pool dir", d.poolDir}, {"console log dir", d.consoleLogDir}, {"disk dir", d.diskDir}, {"backup dir", d.backupDir}} {
		if p.dir != "" && (!filepath.IsAbs(p.dir) || !isXMLText(p.dir)) {
			return fmt.Errorf("libvirt options: %s %q: must be an absolute path", p.what, p.dir)
		}
	}
	if d.diskDir != "" && !d.testDriver {
		return fmt.Errorf("libvirt options: disk dir %q: only for test-driver hosts (real hosts keep disks in the storage pool)", d.diskDir)
	}
	if err := checkDevices(Devices{Network: d.network, SeedBus: d.seedBus}); err != nil {
		return fmt.Errorf("libvirt options: %w", err)
	}
	return nil
}

// URI is the libvirt URI the driver was opened with.
func (d *Driver) URI() string { return d.uri }

// Close closes the libvirt connection.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, c := range append(d.dead, d.conn) {
		if c == nil {
			continue
		}
		if _, err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	d.conn, d.dead = nil, nil
	return errors.Join(errs...)
}

// connect returns the live connection, reopening it if an earlier call found
// it dead (libvirtd restarted).
func (d *Driver) connect() (*lv.Connect, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil {
		return d.conn, nil
	}
	conn, err := lv.NewConnect(d.uri)
	if err != nil {
		return nil, wrap("reconnect to "+d.uri, err)
	}
	d.conn = conn
	return conn, nil
}

// checkConn retires conn after a failed call if it is dead, so the next call
// reconnects.
func (d *Driver) checkConn(conn *lv.Connect, err error) {
	if err == nil || !d.reconnect {
		return
	}
	if alive, aerr := conn.IsAlive(); aerr == nil && alive {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == conn {
		d.dead = append(d.dead, conn)
		d.conn = nil
	}
}

// withConn runs fn on the current connection.
func (d *Driver) withConn(fn func(*lv.Connect) error) error {
	conn, err := d.connect()
	if err != nil {
		return err
	}
	err = fn(conn)
	d.checkConn(conn, err)
	return err
}

// withDomain runs fn on the domain of vmID.
func (d *Driver) withDomain(vmID string, fn func(*lv.Domain) error) error {
	return d.withConn(func(conn *lv.Connect) error {
		dom, err := conn.LookupDomainByUUIDString(domainUUID(vmID))
		if err != nil {
			if isCode(err, lv.ERR_NO_DOMAIN) {
				return fmt.Errorf("%s: %w", domainName(vmID), agent.ErrDomainNotFound)
			}
			return wrap("look up "+domainName(vmID), err)
		}
		defer dom.Free()
		return fn(dom)
	})
}

// NodeFacts implements agent.Driver.
func (d *Driver) NodeFacts(ctx context.Context) (agent.NodeFacts, error) {
	var f agent.NodeFacts
	err := d.withConn(func(conn *lv.Connect) error {
		info, err := conn.GetNodeInfo()
		if err != nil {
			return wrap("node info", err)
		}
		host, err := conn.GetHostname()
		if err != nil {
			return wrap("hostname", err)
		}
		disk, err := d.diskCapacity(conn)
		if err != nil {
			return err
		}
		f = agent.NodeFacts{
			Hostname:    host,
			CPUModel:    info.Model,
			VCPUs:       int64(info.Cpus),
			MemoryBytes: int64(info.Memory) * 1024,
			DiskBytes:   int64(disk),
		}
		// Versions are reported as facts, not needed to run: a driver
		// that cannot tell leaves them empty.
		if typ, err := conn.GetType(); err == nil {
			f.Hypervisor = typ
			if v, err := conn.GetVersion(); err == nil && v > 0 {
				f.Hypervisor += " " + versionText(v)
			}
		}
		if v, err := conn.GetLibVersion(); err == nil {
			f.LibvirtVersion = versionText(v)
		}
		return nil
	})
	return f, err
}

// diskCapacity is the configured pool's capacity (made if it can be), or
// without a configured pool the sum over the active pools.
func (d *Driver) diskCapacity(conn *lv.Connect) (uint64, error) {
	if d.poolSet {
		p, err := d.pool(conn, true)
		if err != nil {
			return 0, err
		}
		defer p.Free()
		pi, err := p.GetInfo()
		if err != nil {
			return 0, wrap("storage pool info of "+d.poolName, err)
		}
		return pi.Capacity, nil
	}
	pools, err := conn.ListAllStoragePools(lv.CONNECT_LIST_STORAGE_POOLS_ACTIVE)
	if err != nil {
		return 0, wrap("list storage pools", err)
	}
	var disk uint64
	for i := range pools {
		pi, perr := pools[i].GetInfo()
		pools[i].Free()
		if perr != nil {
			err = errors.Join(err, wrap("storage pool info", perr))
			continue
		}
		disk += pi.Capacity
	}
	return disk, err
}

// FreeMemoryBytes implements agent.Driver.
func (d *Driver) FreeMemoryBytes(ctx context.Context) (int64, error) {
	var free uint64
	err := d.withConn(func(conn *lv.Connect) error {
		var err error
		free, err = conn.GetFreeMemory()
		return wrap("free memory", err)
	})
	return int64(free), err
}

// readMetadata returns the domain's Yunchi metadata; ok is false for a domain
// that is not Yunchi's.
func readMetadata(dom *lv.Domain) (m vmMetadata, ok bool, err error) {
	s, err := dom.GetMetadata(lv.DOMAIN_METADATA_ELEMENT, MetadataNamespace, lv.DOMAIN_AFFECT_CURRENT)
	if err != nil {
		if isCode(err, lv.ERR_NO_DOMAIN_METADATA) {
			return m, false, nil
		}
		return m, false, wrap("read metadata", err)
	}
	// An element in Yunchi's namespace that does not parse was not written
	// by Yunchi: the domain is not one of its own.
	if err := xml.Unmarshal([]byte(s), &m); err != nil || m.XMLName.Local != "vm" {
		return vmMetadata{}, false, nil
	}
	return m, m.ID != "", nil
}

// ListDomains implements agent.Driver.
func (d *Driver) ListDomains(ctx context.Context) ([]agent.Domain, error) {
	var out []agent.Domain
	err := d.withConn(func(conn *lv.Connect) error {
		doms, err := conn.ListAllDomains(0)
		if err != nil {
			return wrap("list domains", err)
		}
		defer func() {
			for i := range doms {
				doms[i].Free()
			}
		}()
		for i := range doms {
			dom := &doms[i]
			m, ok, err := readMetadata(dom)
			if isCode(err, lv.ERR_NO_DOMAIN) {
				continue // undefined meanwhile
			}
			if err != nil {
				name, _ := dom.GetName()
				return fmt.Errorf("domain %s: %w", name, err)
			}
			if !ok {
				continue
			}
			st, reason, err := dom.GetState()
			if isCode(err, lv.ERR_NO_DOMAIN) {
				continue
			}
			if err != nil {
				return wrap("state of "+domainName(m.ID), err)
			}
			state, detail := mapStateReason(st, reason)
			out = append(out, agent.Domain{
				VMID:      m.ID,
				Project:   m.Project,
				Name:      m.Name,
				State:     state,
				Detail:    detail,
				RebootSeq: m.RebootSeq,
			})
		}
		return nil
	})
	return out, err
}

func mapState(s lv.DomainState) (agent.DomainState, string) {
	switch s {
	case lv.DOMAIN_RUNNING:
		return agent.StateRunning, "running"
	case lv.DOMAIN_BLOCKED: // running, waiting on a resource
		return agent.StateRunning, "blocked"
	case lv.DOMAIN_SHUTOFF:
		return agent.StateShutOff, "shut off"
	case lv.DOMAIN_PAUSED:
		return agent.StateOther, "paused"
	case lv.DOMAIN_SHUTDOWN:
		return agent.StateOther, "shutting down"
	case lv.DOMAIN_CRASHED:
		return agent.StateOther, "crashed"
	case lv.DOMAIN_PMSUSPENDED:
		return agent.StateOther, "suspended"
	default:
		return agent.StateOther, "no state"
	}
}

// Define implements agent.Driver. It makes the root disk (a qcow2 overlay
// of spec.BaseImage, an empty qcow2, or for a restore a raw volume filled
// from spec.RootSource) and the cloud-init seed ISO as volumes of the
// pool, then defines the domain using them. Everything the spec can be
// refused for is checked before anything is made; volumes this call made
// are removed again if a later step fails. Volumes that already exist
// under the VM's names are reused, so a Define interrupted midway is
// completed by the next one; except a restore's root disk while the
// domain does not exist yet, which may be half written and is made again.
// On a test-driver host with a disk dir the root disk is a file there
// (simdisk.go).
func (d *Driver) Define(ctx context.Context, spec agent.DomainSpec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	if spec.RootSource != nil && d.testDriver && !d.simDisks() {
		return fmt.Errorf("define %s: a restored disk needs a disk dir on a test-driver host (its volumes hold no bytes)", domainName(spec.VMID))
	}
	if d.simDisks() && spec.DiskBytes > 0 {
		if _, err := d.simDiskPath(spec.VMID); err != nil {
			return fmt.Errorf("define %s: %w", domainName(spec.VMID), err)
		}
	}
	plan, err := planDisks(spec)
	if err != nil {
		return fmt.Errorf("define %s: %w", domainName(spec.VMID), err)
	}
	dev := Devices{Network: d.network, SeedBus: d.seedBus}
	if spec.Isolated {
		dev.Network = NetworkNone // nothing a drill's clone does reaches production
	}
	if d.consoleLogDir != "" {
		dev.ConsoleLog = filepath.Join(d.consoleLogDir, domainName(spec.VMID)+".log")
	}
	return d.withConn(func(conn *lv.Connect) (err error) {
		exists, active := false, false
		if dom, err := conn.LookupDomainByUUIDString(domainUUID(spec.VMID)); err == nil {
			exists = true
			active, _ = dom.IsActive()
			dom.Free()
		}
		var vols, made []*lv.StorageVol
		madeFile := ""
		defer func() {
			if err != nil {
				for _, v := range made {
					v.Delete(0)
				}
				if madeFile != "" {
					os.Remove(madeFile)
				}
			}
			for _, v := range vols {
				v.Free()
			}
		}()
		if plan.root != nil && d.simDisks() {
			path, created, err := d.ensureSimDisk(ctx, spec, exists)
			if err != nil {
				return fmt.Errorf("define %s: %w", domainName(spec.VMID), err)
			}
			if created {
				madeFile = path
			}
			dev.RootPath, dev.RootFormat = path, "raw"
			plan.root = nil
		}
		if plan.root != nil || plan.seed != nil || len(spec.Volumes) > 0 {
			pool, err := d.pool(conn, true)
			if err != nil {
				return fmt.Errorf("define %s: %w", domainName(spec.VMID), err)
			}
			defer pool.Free()
			if plan.root != nil {
				if spec.RootSource != nil && !exists {
					if err := deleteVolumeNamed(pool, plan.root.Name); err != nil {
						return err
					}
				}
				vol, created, err := ensureVolume(pool, plan.root)
				if err != nil {
					return err
				}
				vols = append(vols, vol)
				if created {
					made = append(made, vol)
					if spec.RootSource != nil {
						if err := fillVolume(ctx, conn, vol, spec.RootSource, spec.DiskBytes); err != nil {
							return fmt.Errorf("define %s: restore the root disk: %w", domainName(spec.VMID), err)
						}
					}
				}
				if dev.RootPath, err = vol.GetPath(); err != nil {
					return wrap("path of volume "+plan.root.Name, err)
				}
				// The volume's own format: a restored (raw) disk stays
				// raw when the VM is defined again without its source.
				if dev.RootFormat, err = volumeFormat(vol, plan.root); err != nil {
					return err
				}
			}
			for _, v := range spec.Volumes {
				vol, created, err := ensureVolume(pool, volumeXML(v))
				if err != nil {
					return err
				}
				vols = append(vols, vol)
				if created {
					made = append(made, vol)
				}
				path, err := vol.GetPath()
				if err != nil {
					return wrap("path of volume "+volumeName(v.ID), err)
				}
				dev.Volumes = append(dev.Volumes, VolumeDisk{ID: v.ID, Path: path})
			}
			if plan.seed != nil {
				name := seedVolumeName(spec.VMID)
				vol, created, err := d.ensureSeed(conn, pool, name, plan.seed, active)
				if err != nil {
					return err
				}
				vols = append(vols, vol)
				if created {
					made = append(made, vol)
				}
				if dev.SeedPath, err = vol.GetPath(); err != nil {
					return wrap("path of volume "+name, err)
				}
			}
		}
		doc, err := DomainXML(d.domainType, spec, dev)
		if err != nil {
			return err
		}
		dom, err := conn.DomainDefineXML(doc)
		if err != nil {
			return wrap("define "+domainName(spec.VMID), err)
		}
		return dom.Free()
	})
}

// Start implements agent.Driver.
func (d *Driver) Start(ctx context.Context, vmID string) error {
	return d.withDomain(vmID, func(dom *lv.Domain) error {
		if active, err := dom.IsActive(); err == nil && active {
			return nil
		}
		return wrap("start "+domainName(vmID), dom.Create())
	})
}

// Stop implements agent.Driver.
func (d *Driver) Stop(ctx context.Context, vmID string, grace time.Duration) error {
	return d.withDomain(vmID, func(dom *lv.Domain) error {
		if active, err := dom.IsActive(); err == nil && !active {
			return nil
		}
		if err := dom.Shutdown(); err != nil {
			if active, aerr := dom.IsActive(); aerr == nil && !active {
				return nil
			}
			if !isCode(err, lv.ERR_NO_SUPPORT, lv.ERR_OPERATION_INVALID, lv.ERR_OPERATION_UNSUPPORTED,
				lv.ERR_ARGUMENT_UNSUPPORTED, lv.ERR_AGENT_UNRESPONSIVE) {
				return wrap("shut down "+domainName(vmID), err)
			}
			// The guest cannot be asked: power it off.
			return destroy(dom, vmID)
		}
		deadline := time.NewTimer(grace)
		defer deadline.Stop()
		tick := time.NewTicker(stopPoll)
		defer tick.Stop()
		for {
			if active, err := dom.IsActive(); err == nil && !active {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-deadline.C:
				return destroy(dom, vmID)
			case <-tick.C:
			}
		}
	})
}

// Destroy implements agent.Driver.
func (d *Driver) Destroy(ctx context.Context, vmID string) error {
	return d.withDomain(vmID, func(dom *lv.Domain) error { return destroy(dom, vmID) })
}

func destroy(dom *lv.Domain, vmID string) error {
	err := dom.Destroy()
	if err != nil {
		if active, aerr := dom.IsActive(); aerr == nil && !active {
			return nil
		}
	}
	return wrap("destroy "+domainName(vmID), err)
}

// Reboot implements agent.Driver.
func (d *Driver) Reboot(ctx context.Context, vmID string) error {
	return d.withDomain(vmID, func(dom *lv.Domain) error {
		return wrap("reboot "+domainName(vmID), dom.Reboot(lv.DOMAIN_REBOOT_DEFAULT))
	})
}

// SetRebootSeq implements agent.Driver. The sequence is written to both the
// live and the persistent definition, so it survives a power cycle.
func (d *Driver) SetRebootSeq(ctx context.Context, vmID string, seq uint64) error {
	return d.withDomain(vmID, func(dom *lv.Domain) error {
		m, ok, err := readMetadata(dom)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%s: no yunchi metadata", domainName(vmID))
		}
		m.RebootSeq = seq
		doc, err := m.marshal()
		if err != nil {
			return err
		}
		flags := lv.DOMAIN_AFFECT_CONFIG
		if active, err := dom.IsActive(); err == nil && active {
			flags |= lv.DOMAIN_AFFECT_LIVE
		}
		return wrap("set metadata of "+domainName(vmID),
			dom.SetMetadata(lv.DOMAIN_METADATA_ELEMENT, doc, metadataPrefix, MetadataNamespace, flags))
	})
}

// Undefine implements agent.Driver. It also removes what libvirt keeps beside
// the definition (managed save, snapshot and checkpoint metadata, NVRAM),
// and the volumes Define made (root disk, seed); other disks stay. A
// running domain is refused: its disks are in use. Volumes are removed
// even when the domain is already gone (an interrupted Define, an earlier
// Undefine that failed midway), and ErrDomainNotFound is returned then.
func (d *Driver) Undefine(ctx context.Context, vmID string) error {
	return d.withConn(func(conn *lv.Connect) error {
		dom, err := conn.LookupDomainByUUIDString(domainUUID(vmID))
		if isCode(err, lv.ERR_NO_DOMAIN) {
			if err := oneLineJoin(d.deleteVolumes(conn, vmID, nil), d.removeSimDisk(vmID)); err != nil {
				return fmt.Errorf("undefine %s: %w", domainName(vmID), err)
			}
			return fmt.Errorf("%s: %w", domainName(vmID), agent.ErrDomainNotFound)
		}
		if err != nil {
			return wrap("look up "+domainName(vmID), err)
		}
		defer dom.Free()
		if active, err := dom.IsActive(); err == nil && active {
			return fmt.Errorf("undefine %s: the domain is running; destroy it first", domainName(vmID))
		}
		paths, err := diskPaths(dom)
		if err != nil {
			return fmt.Errorf("undefine %s: %w", domainName(vmID), err)
		}
		// Checkpoint metadata goes with the domain (libvirt refuses to
		// undefine a domain that has checkpoints otherwise); their
		// bitmaps live in the root disk, which goes too.
		err = dom.UndefineFlags(lv.DOMAIN_UNDEFINE_MANAGED_SAVE | lv.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
			lv.DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | lv.DOMAIN_UNDEFINE_NVRAM)
		if isCode(err, lv.ERR_INVALID_ARG, lv.ERR_NO_SUPPORT) {
			// Drivers that know none of these extras refuse the flags.
			err = dom.Undefine()
		}
		if err != nil {
			return wrap("undefine "+domainName(vmID), err)
		}
		if err := oneLineJoin(d.deleteVolumes(conn, vmID, paths), d.removeSimDisk(vmID)); err != nil {
			return fmt.Errorf("undefine %s: %w", domainName(vmID), err)
		}
		return nil
	})
}

// Error is a failed libvirt call: what was attempted and libvirt's message on
// one line. The libvirt error stays reachable with errors.As.
type Error struct {
	Op  string
	Err error
}

func (e *Error) Error() string {
	msg := e.Err.Error()
	var le lv.Error
	if errors.As(e.Err, &le) && le.Message != "" {
		msg = le.Message
	}
	return e.Op + ": " + strings.Join(strings.Fields(msg), " ")
}

func (e *Error) Unwrap() error { return e.Err }

func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Op: op, Err: err}
}

func isCode(err error, codes ...lv.ErrorNumber) bool {
	var le lv.Error
	if !errors.As(err, &le) {
		return false
	}
	for _, c := range codes {
		if le.Code == c {
			return true
		}
	}
	return false
}

// versionText reads libvirt's version numbers: major * 1,000,000 +
// minor * 1,000 + release.
func versionText(v uint32) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}
