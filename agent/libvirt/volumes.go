package libvirt

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
)

// Volumes: data disks in the driver's pool, named after their id
// (volumeFilePrefix + id), attached to a domain as virtio disks whose
// serial is the id (the guest finds /dev/disk/by-id/virtio-<id>). A disk
// of a domain is a volume when its file is named so: that is how
// DomainVolumes tells them from the root disk and the seed, and what
// Undefine leaves in the pool.

// volumeFilePrefix starts the pool name of every volume.
const volumeFilePrefix = "yunchi-vol-"

func volumeName(id string) string { return volumeFilePrefix + id }

// maxVolumeID is what a virtio disk's serial holds.
const maxVolumeID = 20

// checkVolumeID refuses ids that cannot be a serial and part of a file
// name.
func checkVolumeID(id string) error {
	if id == "" || len(id) > maxVolumeID {
		return fmt.Errorf("volume id %.40q: want 1-%d characters", id, maxVolumeID)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("volume id %q: want lowercase letters, digits and '-'", id)
		}
	}
	return nil
}

func checkVolumeSpec(v agent.VolumeSpec) error {
	if err := checkVolumeID(v.ID); err != nil {
		return err
	}
	if v.SizeBytes <= 0 || v.SizeBytes%512 != 0 {
		return fmt.Errorf("volume %s: size %d bytes, want a positive whole number of 512-byte sectors", v.ID, v.SizeBytes)
	}
	return nil
}

// volumeXML is the pool volume of v: qcow2, thin (the pool gives blocks as
// the guest writes them).
func volumeXML(v agent.VolumeSpec) *libvirtxml.StorageVolume {
	return &libvirtxml.StorageVolume{
		Name:       volumeName(v.ID),
		Capacity:   &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: uint64(v.SizeBytes)},
		Allocation: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: 0},
		Target:     &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}},
	}
}

// VolumeDisk is a volume as a domain's disk: its id and its file.
type VolumeDisk struct {
	ID, Path string
}

// volumeDisk is the device of volume id at path, as the guest's target.
func volumeDisk(id, path, target string) libvirtxml.DomainDisk {
	return libvirtxml.DomainDisk{
		Device: "disk",
		Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2", Discard: "unmap"},
		Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: path}},
		Target: &libvirtxml.DomainDiskTarget{Dev: target, Bus: "virtio"},
		Serial: id,
	}
}

// diskVolumeID is the volume id of a domain disk, "" when it is none.
func diskVolumeID(d libvirtxml.DomainDisk) string {
	if d.Device != "disk" || d.Source == nil || d.Source.File == nil {
		return ""
	}
	base := filepath.Base(d.Source.File.File)
	if !strings.HasPrefix(base, volumeFilePrefix) {
		return ""
	}
	return strings.TrimPrefix(base, volumeFilePrefix)
}

// freeTarget is the first virtio target from vdb on that none of the
// definitions uses.
func freeTarget(defs ...*libvirtxml.Domain) (string, error) {
	used := map[string]bool{rootTarget: true}
	for _, x := range defs {
		if x == nil || x.Devices == nil {
			continue
		}
		for _, d := range x.Devices.Disks {
			if d.Target != nil {
				used[d.Target.Dev] = true
			}
		}
	}
	for c := 'b'; c <= 'z'; c++ {
		if t := "vd" + string(c); !used[t] {
			return t, nil
		}
	}
	return "", fmt.Errorf("no free virtio disk name (vdb to vdz are all taken)")
}

// findVolumeDisk is the disk of volume id in x, if any.
func findVolumeDisk(x *libvirtxml.Domain, id string) *libvirtxml.DomainDisk {
	if x == nil || x.Devices == nil {
		return nil
	}
	for i := range x.Devices.Disks {
		if diskVolumeID(x.Devices.Disks[i]) == id {
			return &x.Devices.Disks[i]
		}
	}
	return nil
}

// domainXMLs reads a domain's persistent definition and, when it runs
// (and the driver can change a running guest), its live one (nil else).
func (d *Driver) domainXMLs(dom *lv.Domain, vmID string) (config, live *libvirtxml.Domain, err error) {
	read := func(flags lv.DomainXMLFlags) (*libvirtxml.Domain, error) {
		doc, err := dom.GetXMLDesc(flags)
		if err != nil {
			return nil, wrap("read xml of "+domainName(vmID), err)
		}
		var x libvirtxml.Domain
		if err := x.Unmarshal(doc); err != nil {
			return nil, fmt.Errorf("parse xml of %s: %w", domainName(vmID), err)
		}
		return &x, nil
	}
	if config, err = read(lv.DOMAIN_XML_INACTIVE); err != nil {
		return nil, nil, err
	}
	// The test driver cannot change a running guest's devices: its live
	// definition would never follow, so the persistent one stands for it.
	if active, aerr := dom.IsActive(); aerr == nil && active && !d.testDriver {
		if live, err = read(0); err != nil {
			return nil, nil, err
		}
	}
	return config, live, nil
}

// DomainVolumes implements agent.Driver; the ids come sorted.
func (d *Driver) DomainVolumes(ctx context.Context, vmID string) ([]string, error) {
	var out []string
	err := d.withDomain(vmID, func(dom *lv.Domain) error {
		config, live, err := d.domainXMLs(dom, vmID)
		if err != nil {
			return err
		}
		x := config
		if live != nil {
			x = live
		}
		if x.Devices != nil {
			for _, disk := range x.Devices.Disks {
				if id := diskVolumeID(disk); id != "" {
					out = append(out, id)
				}
			}
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}

// AttachVolume implements agent.Driver: the volume is made in the pool if
// missing, then attached to the running guest (when it runs) and to the
// definition, each only where it is not yet.
func (d *Driver) AttachVolume(ctx context.Context, vmID string, v agent.VolumeSpec) error {
	if err := checkVolumeSpec(v); err != nil {
		return fmt.Errorf("attach volume: %w", err)
	}
	return d.withConn(func(conn *lv.Connect) error {
		dom, err := conn.LookupDomainByUUIDString(domainUUID(vmID))
		if err != nil {
			if isCode(err, lv.ERR_NO_DOMAIN) {
				return fmt.Errorf("%s: %w", domainName(vmID), agent.ErrDomainNotFound)
			}
			return wrap("look up "+domainName(vmID), err)
		}
		defer dom.Free()
		config, live, err := d.domainXMLs(dom, vmID)
		if err != nil {
			return err
		}
		inConfig, inLive := findVolumeDisk(config, v.ID) != nil, live == nil || findVolumeDisk(live, v.ID) != nil
		if inConfig && inLive {
			return nil
		}
		pool, err := d.pool(conn, true)
		if err != nil {
			return fmt.Errorf("attach volume %s: %w", v.ID, err)
		}
		defer pool.Free()
		vol, _, err := ensureVolume(pool, volumeXML(v))
		if err != nil {
			return err
		}
		defer vol.Free()
		path, err := vol.GetPath()
		if err != nil {
			return wrap("path of volume "+volumeName(v.ID), err)
		}
		// One target for both, free in both: the guest's name for the disk
		// stays the same across a restart.
		target, err := freeTarget(config, live)
		if err != nil {
			return fmt.Errorf("attach volume %s to %s: %w", v.ID, domainName(vmID), err)
		}
		disk := volumeDisk(v.ID, path, target)
		doc, err := disk.Marshal()
		if err != nil {
			return fmt.Errorf("volume disk xml: %w", err)
		}
		if !inLive {
			if err := dom.AttachDeviceFlags(doc, lv.DOMAIN_DEVICE_MODIFY_LIVE); err != nil {
				return wrap("hot-plug volume "+v.ID+" into "+domainName(vmID), err)
			}
		}
		if !inConfig {
			err := dom.AttachDeviceFlags(doc, lv.DOMAIN_DEVICE_MODIFY_CONFIG)
			if isCode(err, lv.ERR_NO_SUPPORT) && d.testDriver {
				// The test driver has no device calls: define the
				// domain again with the disk.
				config.Devices.Disks = append(config.Devices.Disks, disk)
				err = d.redefine(conn, config)
			}
			if err != nil {
				return wrap("attach volume "+v.ID+" to "+domainName(vmID), err)
			}
		}
		return nil
	})
}

// DetachVolume implements agent.Driver.
func (d *Driver) DetachVolume(ctx context.Context, vmID, volumeID string) error {
	if err := checkVolumeID(volumeID); err != nil {
		return fmt.Errorf("detach volume: %w", err)
	}
	return d.withConn(func(conn *lv.Connect) error {
		dom, err := conn.LookupDomainByUUIDString(domainUUID(vmID))
		if err != nil {
			if isCode(err, lv.ERR_NO_DOMAIN) {
				return fmt.Errorf("%s: %w", domainName(vmID), agent.ErrDomainNotFound)
			}
			return wrap("look up "+domainName(vmID), err)
		}
		defer dom.Free()
		config, live, err := d.domainXMLs(dom, vmID)
		if err != nil {
			return err
		}
		if disk := findVolumeDisk(live, volumeID); disk != nil {
			doc, err := disk.Marshal()
			if err != nil {
				return fmt.Errorf("volume disk xml: %w", err)
			}
			// QEMU asks the guest to release the disk; libvirt waits a
			// few seconds for it, then leaves it pending.
			if err := dom.DetachDeviceFlags(doc, lv.DOMAIN_DEVICE_MODIFY_LIVE); err != nil {
				return wrap("unplug volume "+volumeID+" from "+domainName(vmID), err)
			}
		}
		if disk := findVolumeDisk(config, volumeID); disk != nil {
			doc, err := disk.Marshal()
			if err != nil {
				return fmt.Errorf("volume disk xml: %w", err)
			}
			err = dom.DetachDeviceFlags(doc, lv.DOMAIN_DEVICE_MODIFY_CONFIG)
			if isCode(err, lv.ERR_NO_SUPPORT) && d.testDriver {
				disks := config.Devices.Disks[:0]
				for _, dk := range config.Devices.Disks {
					if diskVolumeID(dk) != volumeID {
						disks = append(disks, dk)
					}
				}
				config.Devices.Disks = disks
				err = d.redefine(conn, config)
			}
			if err != nil {
				return wrap("detach volume "+volumeID+" from "+domainName(vmID), err)
			}
		}
		return nil
	})
}

// redefine defines x again (the test driver's way to change a
// definition's devices).
func (d *Driver) redefine(conn *lv.Connect, x *libvirtxml.Domain) error {
	doc, err := x.Marshal()
	if err != nil {
		return fmt.Errorf("domain xml: %w", err)
	}
	dom, err := conn.DomainDefineXML(doc)
	if err != nil {
		return err
	}
	return dom.Free()
}

// DeleteVolume implements agent.Driver.
func (d *Driver) DeleteVolume(ctx context.Context, volumeID string) error {
	if err := checkVolumeID(volumeID); err != nil {
		return fmt.Errorf("delete volume: %w", err)
	}
	return d.withConn(func(conn *lv.Connect) error {
		pool, err := d.pool(conn, false)
		if err != nil || pool == nil {
			return err // no pool: no volume in it
		}
		defer pool.Free()
		vol, err := pool.LookupStorageVolByName(volumeName(volumeID))
		if isCode(err, lv.ERR_NO_STORAGE_VOL) {
			return nil
		}
		if err != nil {
			return wrap("look up volume "+volumeName(volumeID), err)
		}
		defer vol.Free()
		if err := vol.Delete(0); err != nil && !isCode(err, lv.ERR_NO_STORAGE_VOL) {
			return wrap("delete volume "+volumeName(volumeID), err)
		}
		return nil
	})
}

// ListVolumes lists the ids of the volumes in the driver's pool, sorted.
func (d *Driver) ListVolumes(ctx context.Context) ([]string, error) {
	var out []string
	err := d.withConn(func(conn *lv.Connect) error {
		pool, err := d.pool(conn, false)
		if err != nil || pool == nil {
			return err
		}
		defer pool.Free()
		names, err := pool.ListStorageVolumes()
		if err != nil {
			return wrap("list volumes of pool "+d.poolName, err)
		}
		for _, n := range names {
			if strings.HasPrefix(n, volumeFilePrefix) {
				out = append(out, strings.TrimPrefix(n, volumeFilePrefix))
			}
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}
