// Package libvirt is the agent's Driver on top of libvirt. It is the only
// package of Yunchi that imports libvirt.org/go/libvirt, and it holds no
// policy: it does what the agent asks and reports what it sees.
package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

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
}

// Driver implements agent.Driver over one libvirt connection.
type Driver struct {
	uri        string
	domainType string
	// reconnect is false for test:/// URIs: the test driver's state lives in
	// the connection, a new connection would be a different host.
	reconnect bool

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
	conn, err := lv.NewConnect(uri)
	if err != nil {
		return nil, wrap("connect to "+uri, err)
	}
	isTest := strings.HasPrefix(uri, "test:")
	dt := o.DomainType
	if dt == "" {
		dt = "kvm"
		if isTest {
			dt = "test"
		}
	}
	return &Driver{uri: uri, domainType: dt, reconnect: !isTest, conn: conn}, nil
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
		pools, err := conn.ListAllStoragePools(lv.CONNECT_LIST_STORAGE_POOLS_ACTIVE)
		if err != nil {
			return wrap("list storage pools", err)
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

// vmMetadata is Yunchi's metadata element inside <metadata>. XMLName has no
// tag on purpose: marshalling then takes the namespaced name from its value,
// and unmarshalling accepts the element libvirt hands back, which has lost
// its namespace (readMetadata checks the local name).
type vmMetadata struct {
	XMLName   xml.Name
	ID        string `xml:"id"`
	Project   string `xml:"project"`
	Name      string `xml:"name"`
	RebootSeq uint64 `xml:"reboot-seq"`
}

func (m vmMetadata) marshal() (string, error) {
	m.XMLName = xml.Name{Space: MetadataNamespace, Local: "vm"}
	b, err := xml.Marshal(m)
	return string(b), err
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
			st, _, err := dom.GetState()
			if isCode(err, lv.ERR_NO_DOMAIN) {
				continue
			}
			if err != nil {
				return wrap("state of "+domainName(m.ID), err)
			}
			state, detail := mapState(st)
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

// DomainXML renders the libvirt definition of spec for a domain of type
// domainType. Exposed for inspection; Define uses it.
func DomainXML(domainType string, spec agent.DomainSpec) (string, error) {
	if spec.VMID == "" {
		return "", errors.New("domain spec: empty vm id")
	}
	if spec.VCPUs <= 0 {
		return "", fmt.Errorf("domain spec: vcpus %d, must be > 0", spec.VCPUs)
	}
	if spec.MemoryBytes <= 0 {
		return "", fmt.Errorf("domain spec: memory %d bytes, must be > 0", spec.MemoryBytes)
	}
	// XML cannot carry every string: encoding/xml would write U+FFFD for
	// what it cannot, and the metadata read back would name another VM.
	for _, f := range []struct{ what, s string }{{"vm id", spec.VMID}, {"project", spec.Project}, {"vm name", spec.Name}} {
		if !isXMLText(f.s) {
			return "", fmt.Errorf("domain spec: %s %q has bytes XML cannot carry (invalid UTF-8 or a control character)", f.what, f.s)
		}
	}
	meta, err := vmMetadata{
		ID:        spec.VMID,
		Project:   spec.Project,
		Name:      spec.Name,
		RebootSeq: spec.RebootSeq,
	}.marshal()
	if err != nil {
		return "", fmt.Errorf("domain metadata: %w", err)
	}
	kib := uint(spec.MemoryBytes / 1024) // rounded up, without overflow near MaxInt64
	if spec.MemoryBytes%1024 != 0 {
		kib++
	}
	dom := &libvirtxml.Domain{
		Type:        domainType,
		Name:        domainName(spec.VMID),
		UUID:        domainUUID(spec.VMID),
		Title:       strings.Join(strings.Fields(spec.Project+"/"+spec.Name), " "), // libvirt refuses newlines
		Metadata:    &libvirtxml.DomainMetadata{XML: meta},
		Memory:      &libvirtxml.DomainMemory{Value: kib, Unit: "KiB"},
		VCPU:        &libvirtxml.DomainVCPU{Value: uint(spec.VCPUs)},
		OS:          &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Type: "hvm"}},
		OnPoweroff:  "destroy",
		OnReboot:    "restart",
		OnCrash:     "destroy",
		Description: "Managed by Yunchi; changes made here are reconciled away.",
	}
	return dom.Marshal()
}

// isXMLText reports whether s is valid UTF-8 made of XML 1.0 characters
// (https://www.w3.org/TR/xml/#charsets).
func isXMLText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' || r == 0xFFFE || r == 0xFFFF {
			return false
		}
	}
	return true
}

// Define implements agent.Driver.
func (d *Driver) Define(ctx context.Context, spec agent.DomainSpec) error {
	doc, err := DomainXML(d.domainType, spec)
	if err != nil {
		return err
	}
	return d.withConn(func(conn *lv.Connect) error {
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
// the definition (managed save, snapshot and checkpoint metadata, NVRAM).
func (d *Driver) Undefine(ctx context.Context, vmID string) error {
	return d.withDomain(vmID, func(dom *lv.Domain) error {
		err := dom.UndefineFlags(lv.DOMAIN_UNDEFINE_MANAGED_SAVE | lv.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
			lv.DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | lv.DOMAIN_UNDEFINE_NVRAM)
		if isCode(err, lv.ERR_INVALID_ARG, lv.ERR_NO_SUPPORT) {
			// Drivers that know none of these extras refuse the flags.
			err = dom.Undefine()
		}
		return wrap("undefine "+domainName(vmID), err)
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
