//go:build linux

// Package qemuhost is a real hypervisor host for tests and `yunchid dev
// --real-hosts`: a private libvirtd (internal/libvirthost) with what an
// agent on it uses laid out under one directory — a directory storage pool
// for root disks and cloud-init seeds, the image cache, the serial console
// logs — and the driver options that boot guests under TCG (on this kind of
// machine KVM is nested and a booting guest crawls; see
// ../shared/testing/multihost.md).
package qemuhost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/internal/libvirthost"
)

// PoolName is the storage pool each host's agent uses.
const PoolName = "yunchi"

// Host is one running host.
type Host struct {
	ID  string
	Dir string
	LV  *libvirthost.Host
	// Options open the agent's driver on this host.
	Options libvirt.Options
	// ImageDir is the agent's image cache; ConsoleLogDir holds each
	// guest's serial console log (DIR/<domain name>.log).
	ImageDir, ConsoleLogDir, PoolDir string
}

// Available says why hosts cannot start here ("" when they can).
func Available() string { return libvirthost.Available() }

// Start starts host id with its files under dir.
func Start(ctx context.Context, id, dir string) (*Host, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	lv, err := libvirthost.Start(ctx, filepath.Join(dir, "libvirt"))
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", id, err)
	}
	h := &Host{ID: id, Dir: dir, LV: lv,
		PoolDir: filepath.Join(dir, "pool"), ImageDir: filepath.Join(dir, "images"), ConsoleLogDir: filepath.Join(dir, "console")}
	h.Options = libvirt.Options{DomainType: "qemu", Pool: PoolName, PoolDir: h.PoolDir, Network: "user", ConsoleLogDir: h.ConsoleLogDir}
	return h, nil
}

// URI is the host's libvirt URI.
func (h *Host) URI() string { return h.LV.URI }

// Open opens the agent's driver on the host.
func (h *Host) Open() (*libvirt.Driver, error) {
	return libvirt.OpenWithOptions(h.LV.URI, h.Options)
}

// AgentConfig is base with what this host sets: its id, libvirt URI and
// image cache.
func (h *Host) AgentConfig(base agent.Config) agent.Config {
	base.HostID = h.ID
	if base.Hostname == "" {
		base.Hostname = h.ID
	}
	base.LibvirtURI = h.LV.URI
	base.ImageDir = h.ImageDir
	base.StoragePool = PoolName
	return base
}

// ConsoleLog is where the serial console of the VM's domain is logged.
func (h *Host) ConsoleLog(vmID string) string {
	return filepath.Join(h.ConsoleLogDir, libvirt.DomainName(vmID)+".log")
}

// QEMUPids lists the host's running QEMU processes.
func (h *Host) QEMUPids() []int { return h.LV.QEMUPids() }

// Stop ends the host's libvirtd and every guest it runs; the files stay
// (the caller owns dir).
func (h *Host) Stop() error { return h.LV.Stop() }

// RootDevice finds a running domain's root disk in its live XML: the
// qemu-io device of its virtio backend ("<alias>/virtio-backend", what HMP
// "qemu-io -d" takes) and its file on the host ("" when not a file).
func RootDevice(dom *lv.Domain) (device, file string, err error) {
	doc, err := dom.GetXMLDesc(0)
	if err != nil {
		return "", "", err
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(doc); err != nil {
		return "", "", err
	}
	if x.Devices != nil {
		for _, d := range x.Devices.Disks {
			if d.Target != nil && d.Target.Dev == "vda" && d.Alias != nil {
				device = d.Alias.Name + "/virtio-backend"
				if d.Source != nil && d.Source.File != nil {
					file = d.Source.File.File
				}
			}
		}
	}
	if device == "" {
		return "", "", errors.New("the domain's root disk (vda, with a device alias) is not in its live XML")
	}
	return device, file, nil
}

// GuestWrite writes n bytes of pattern at off through the running VM's
// root disk device (HMP qemu-io on its virtio backend, the path a guest's
// write takes): when it returns, the guest's disk has acknowledged the
// write. uri is the host's libvirt URI.
func GuestWrite(uri, vmID string, pattern byte, off, n int64) error {
	conn, err := lv.NewConnect(uri)
	if err != nil {
		return err
	}
	defer conn.Close()
	dom, err := conn.LookupDomainByName(libvirt.DomainName(vmID))
	if err != nil {
		return err
	}
	defer dom.Free()
	device, _, err := RootDevice(dom)
	if err != nil {
		return fmt.Errorf("vm %s: %w", vmID, err)
	}
	cmd := fmt.Sprintf(`qemu-io -d %s "write -P %d %d %d"`, device, pattern, off, n)
	if out, err := dom.QemuMonitorCommand(cmd, lv.DOMAIN_QEMU_MONITOR_COMMAND_HMP); err != nil || out != "" {
		return fmt.Errorf("%s: %v %s", cmd, err, out)
	}
	return nil
}
