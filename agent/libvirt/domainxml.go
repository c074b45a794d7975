package libvirt

import (
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
)

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

// Network values besides a bridge name.
const (
	// NetworkUser is QEMU's user-mode networking (slirp): no host set-up,
	// outbound only.
	NetworkUser = "user"
	// NetworkNone gives the guest no network interface.
	NetworkNone = "none"
)

// Devices are the host-side things a domain's devices use: the volumes
// Define made for it and what the driver is configured with. The zero
// value is a guest with no disks, user-mode networking and an unlogged
// serial console.
type Devices struct {
	// RootPath is the root disk volume's path ("": no root disk) and
	// RootFormat its format (default "qcow2").
	RootPath, RootFormat string
	// SeedPath is the cloud-init seed ISO volume's path ("": no seed),
	// attached as a read-only cdrom on SeedBus ("ide" or "sata"; default
	// "ide", which the pc machine type has built in).
	SeedPath, SeedBus string
	// Network is NetworkUser (also ""), NetworkNone, or the name of a host
	// bridge the guest's interface is plugged into.
	Network string
	// ConsoleLog, if set, is a file the serial console is also written
	// to, rewritten at each start.
	ConsoleLog string
	// Volumes are attached as virtio disks vdb onwards, in order.
	Volumes []VolumeDisk
}

// Device names the guest sees.
const (
	rootTarget     = "vda"
	seedTargetIDE  = "hdc" // IDE bus 1, unit 0: where PCs have their cdrom
	seedTargetSATA = "sdc"
)

// maxVolumeDisks is how many volumes a domain can have: vdb to vdz.
const maxVolumeDisks = 25

// balloonStatsPeriod is how often (seconds) the guest's balloon driver
// refreshes the memory statistics that Stats reads.
const balloonStatsPeriod = 5

// checkSpec refuses a domain spec that cannot be defined as asked, before
// anything is made for it.
func checkSpec(spec agent.DomainSpec) error {
	if spec.VMID == "" {
		return errors.New("domain spec: empty vm id")
	}
	if spec.VCPUs <= 0 {
		return fmt.Errorf("domain spec: vcpus %d, must be > 0", spec.VCPUs)
	}
	if spec.MemoryBytes <= 0 {
		return fmt.Errorf("domain spec: memory %d bytes, must be > 0", spec.MemoryBytes)
	}
	if spec.DiskBytes < 0 {
		return fmt.Errorf("domain spec: disk %d bytes, must be >= 0", spec.DiskBytes)
	}
	if spec.BaseImage != "" && spec.DiskBytes == 0 {
		return fmt.Errorf("domain spec: base image %s without a disk size", spec.BaseImage)
	}
	if spec.RootSource != nil {
		switch n := spec.RootSource.SizeBytes(); {
		case spec.DiskBytes == 0:
			return errors.New("domain spec: a root disk source without a disk size")
		case spec.BaseImage != "":
			return fmt.Errorf("domain spec: a root disk source and a base image (%s)", spec.BaseImage)
		case n <= 0 || n > spec.DiskBytes:
			return fmt.Errorf("domain spec: a root disk source of %d bytes for a disk of %d", n, spec.DiskBytes)
		}
	}
	if len(spec.Volumes) > maxVolumeDisks {
		return fmt.Errorf("domain spec: %d volumes, at most %d", len(spec.Volumes), maxVolumeDisks)
	}
	seen := map[string]bool{}
	for _, v := range spec.Volumes {
		if err := checkVolumeSpec(v); err != nil {
			return fmt.Errorf("domain spec: %w", err)
		}
		if seen[v.ID] {
			return fmt.Errorf("domain spec: volume %s given twice", v.ID)
		}
		seen[v.ID] = true
	}
	// XML cannot carry every string: encoding/xml would write U+FFFD for
	// what it cannot, and the metadata read back would name another VM.
	for _, f := range []struct{ what, s string }{
		{"vm id", spec.VMID}, {"project", spec.Project}, {"vm name", spec.Name}, {"base image", spec.BaseImage},
	} {
		if !isXMLText(f.s) {
			return fmt.Errorf("domain spec: %s %q has bytes XML cannot carry (invalid UTF-8 or a control character)", f.what, f.s)
		}
	}
	return nil
}

// checkDevices refuses devices DomainXML cannot express.
func checkDevices(dev Devices) error {
	switch dev.RootFormat {
	case "", "qcow2", "raw":
	default:
		return fmt.Errorf("root disk format %q: want qcow2 or raw", dev.RootFormat)
	}
	switch dev.SeedBus {
	case "", "ide", "sata":
	default:
		return fmt.Errorf("seed bus %q: want ide or sata", dev.SeedBus)
	}
	if err := checkNetwork(dev.Network); err != nil {
		return err
	}
	if len(dev.Volumes) > maxVolumeDisks {
		return fmt.Errorf("%d volumes: at most %d", len(dev.Volumes), maxVolumeDisks)
	}
	for _, v := range dev.Volumes {
		if err := checkVolumeID(v.ID); err != nil {
			return err
		}
		if !filepath.IsAbs(v.Path) || !isXMLText(v.Path) {
			return fmt.Errorf("volume %s path %q: must be absolute and XML text", v.ID, v.Path)
		}
	}
	for _, p := range []struct{ what, path string }{{"root disk", dev.RootPath}, {"seed", dev.SeedPath}, {"console log", dev.ConsoleLog}} {
		if p.path == "" {
			continue
		}
		if !filepath.IsAbs(p.path) || !isXMLText(p.path) {
			return fmt.Errorf("%s path %q: must be absolute and XML text", p.what, p.path)
		}
	}
	return nil
}

// checkNetwork accepts "user", "none", "" and names Linux accepts for a
// bridge (IFNAMSIZ, no '/', no white space).
func checkNetwork(n string) error {
	switch n {
	case "", NetworkUser, NetworkNone:
		return nil
	}
	if len(n) > 15 || n == "." || n == ".." || strings.ContainsAny(n, "/: \t\n\r\x00") || !isXMLText(n) {
		return fmt.Errorf("network %q: want %q, %q or a bridge name (at most 15 bytes, no '/', ':' or spaces)", n, NetworkUser, NetworkNone)
	}
	return nil
}

// DomainXML renders the libvirt definition of spec for a domain of type
// domainType with devices dev. Exposed for inspection; Define uses it with
// the volumes it made.
func DomainXML(domainType string, spec agent.DomainSpec, dev Devices) (string, error) {
	if err := checkSpec(spec); err != nil {
		return "", err
	}
	if err := checkDevices(dev); err != nil {
		return "", fmt.Errorf("domain devices: %w", err)
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
		Type:     domainType,
		Name:     domainName(spec.VMID),
		UUID:     domainUUID(spec.VMID),
		Title:    strings.Join(strings.Fields(spec.Project+"/"+spec.Name), " "), // libvirt refuses newlines
		Metadata: &libvirtxml.DomainMetadata{XML: meta},
		Memory:   &libvirtxml.DomainMemory{Value: kib, Unit: "KiB"},
		VCPU:     &libvirtxml.DomainVCPU{Value: uint(spec.VCPUs)},
		OS: &libvirtxml.DomainOS{
			Type: &libvirtxml.DomainOSType{Type: "hvm"},
			// SeaBIOS boots the root disk; with none it finds nothing and
			// idles, which is still a running guest.
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}},
		},
		// ACPI lets Stop ask the guest to power off (virDomainShutdown
		// presses the ACPI power button).
		Features: &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}},
		// A guest that powers off or crashes is left shut off, where the
		// agent sees it (and events report it); a reboot stays inside QEMU.
		OnPoweroff:  "destroy",
		OnReboot:    "restart",
		OnCrash:     "destroy",
		Description: "Managed by Yunchi; changes made here are reconciled away.",
		Devices:     devices(spec, dev),
	}
	return dom.Marshal()
}

func devices(spec agent.DomainSpec, dev Devices) *libvirtxml.DomainDeviceList {
	var l libvirtxml.DomainDeviceList
	if dev.RootPath != "" {
		format := dev.RootFormat
		if format == "" {
			format = "qcow2"
		}
		// A file disk on the volume's path rather than <disk type='volume'>:
		// it reads back the same in the inactive and the live XML, and
		// block jobs, backups and checkpoints take it without translating
		// a pool reference. The path is the volume's, so libvirt's storage
		// API still owns the file.
		l.Disks = append(l.Disks, libvirtxml.DomainDisk{
			Device: "disk",
			// discard=unmap: blocks the guest frees go back to the pool.
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: format, Discard: "unmap"},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: dev.RootPath}},
			Target: &libvirtxml.DomainDiskTarget{Dev: rootTarget, Bus: "virtio"},
		})
	}
	for i, v := range dev.Volumes {
		l.Disks = append(l.Disks, volumeDisk(v.ID, v.Path, "vd"+string(rune('b'+i))))
	}
	if dev.SeedPath != "" {
		bus, target := "ide", seedTargetIDE
		if dev.SeedBus == "sata" {
			bus, target = "sata", seedTargetSATA
		}
		l.Disks = append(l.Disks, libvirtxml.DomainDisk{
			Device:   "cdrom",
			Driver:   &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
			Source:   &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: dev.SeedPath}},
			Target:   &libvirtxml.DomainDiskTarget{Dev: target, Bus: bus},
			ReadOnly: &libvirtxml.DomainDiskReadOnly{},
		})
	}
	if dev.Network != NetworkNone {
		iface := libvirtxml.DomainInterface{
			MAC:   &libvirtxml.DomainInterfaceMAC{Address: macAddress(spec.VMID).String()},
			Model: &libvirtxml.DomainInterfaceModel{Type: "virtio"},
		}
		if dev.Network == "" || dev.Network == NetworkUser {
			iface.Source = &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}}
		} else {
			iface.Source = &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: dev.Network}}
		}
		l.Interfaces = append(l.Interfaces, iface)
	}
	port := uint(0)
	serial := libvirtxml.DomainSerial{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port},
	}
	if dev.ConsoleLog != "" {
		serial.Log = &libvirtxml.DomainChardevLog{File: dev.ConsoleLog, Append: "off"}
	}
	l.Serials = append(l.Serials, serial)
	l.Consoles = append(l.Consoles, libvirtxml.DomainConsole{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port},
	})
	l.MemBalloon = &libvirtxml.DomainMemBalloon{
		Model: "virtio",
		Stats: &libvirtxml.DomainMemBalloonStats{Period: balloonStatsPeriod},
	}
	return &l
}

// macAddress is the guest NIC's MAC address, derived from the domain UUID
// so that redefining a VM keeps it (libvirt would pick a new random one).
// 0x52 as first byte makes it unicast and locally administered, like
// QEMU's 52:54:00 prefix, with 40 bits from the UUID instead of 24.
func macAddress(vmID string) net.HardwareAddr {
	u := uuid.MustParse(domainUUID(vmID))
	return net.HardwareAddr{0x52, u[0], u[1], u[2], u[3], u[4]}
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
