package libvirt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/cloudinit"
	"github.com/yunchi/yunchi/internal/sparse"
)

// The volumes Define makes for a VM, named after its domain so that they
// are found again from the VM id alone (an interrupted Define, Undefine of
// a domain already gone).
func rootVolumeName(vmID string) string { return domainName(vmID) + "-root" }
func seedVolumeName(vmID string) string { return domainName(vmID) + "-seed.iso" }

// testPoolRoot is where the test driver's pools made without a PoolDir
// "live": the test driver keeps volumes in memory and touches no file.
const testPoolRoot = "/var/lib/yunchi"

// diskPlan is what Define makes for a spec, worked out (and refused)
// before anything is made.
type diskPlan struct {
	root *libvirtxml.StorageVolume // nil: no root disk
	seed []byte                    // the NoCloud ISO; nil: no seed
}

// planDisks checks the spec's disk and seed and renders them: the base
// image is read for its virtual size, the seed is validated and built.
func planDisks(spec agent.DomainSpec) (diskPlan, error) {
	var p diskPlan
	if spec.DiskBytes > 0 {
		v := &libvirtxml.StorageVolume{
			Name:     rootVolumeName(spec.VMID),
			Capacity: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: uint64(spec.DiskBytes)},
			// Thin: the pool gives blocks as the guest writes them.
			Allocation: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: 0},
			// qcow2 v3 (compat 1.1; libvirt makes v2 by default): only
			// v3 files keep the dirty bitmaps of backup checkpoints.
			Target: &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}, Compat: "1.1"},
		}
		if spec.RootSource != nil {
			// A restore: raw, so that libvirt's upload stream writes the
			// disk's bytes as they are; no backing image.
			v.Target.Format.Type, v.Target.Compat = "raw", ""
		}
		if spec.BaseImage != "" {
			size, err := baseImageSize(spec.BaseImage, spec.BaseFormat)
			if err != nil {
				return p, err
			}
			if spec.DiskBytes < size {
				return p, fmt.Errorf("disk of %d bytes is smaller than base image %s (%d bytes)", spec.DiskBytes, spec.BaseImage, size)
			}
			v.BackingStore = &libvirtxml.StorageVolumeBackingStore{
				Path:   spec.BaseImage,
				Format: &libvirtxml.StorageVolumeTargetFormat{Type: spec.BaseFormat},
			}
		}
		p.root = v
	}
	if spec.Seed != nil {
		s := cloudinit.Seed{
			InstanceID:        spec.Seed.InstanceID,
			Hostname:          spec.Seed.Hostname,
			SSHAuthorizedKeys: spec.Seed.SSHAuthorizedKeys,
			UserData:          spec.Seed.UserData,
		}
		if err := s.Validate(); err != nil {
			return p, fmt.Errorf("cloud-init seed: %w", err)
		}
		iso, err := s.ISO()
		if err != nil {
			return p, fmt.Errorf("cloud-init seed: %w", err)
		}
		p.seed = iso
	}
	return p, nil
}

// qcow2Magic opens every qcow2 file ("QFI\xfb").
var qcow2Magic = []byte{'Q', 'F', 'I', 0xfb}

// baseImageSize is the virtual size of the image file at path in format
// (qcow2: read from its header; raw: the file's size). It reads the file
// itself, so the agent and libvirtd must see the same path: the agent runs
// on its host.
func baseImageSize(path, format string) (int64, error) {
	if format != "qcow2" && format != "raw" {
		return 0, fmt.Errorf("base image %s: format %q, want qcow2 or raw", path, format)
	}
	if !filepath.IsAbs(path) {
		return 0, fmt.Errorf("base image %s: not an absolute path", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("base image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("base image: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("base image %s: not a regular file", path)
	}
	// Header: magic, version, backing file offset and size, cluster bits,
	// then the virtual size at bytes 24-31, big-endian.
	var hdr [32]byte
	n, err := io.ReadFull(f, hdr[:])
	isQcow2 := n >= 4 && bytes.Equal(hdr[:4], qcow2Magic)
	if format == "raw" {
		// A qcow2 file declared raw would give the guest the image's
		// metadata as its disk: surely a mistake.
		if isQcow2 {
			return 0, fmt.Errorf("base image %s: declared raw but is qcow2", path)
		}
		if st.Size() == 0 {
			return 0, fmt.Errorf("base image %s: empty", path)
		}
		return st.Size(), nil
	}
	if !isQcow2 {
		return 0, fmt.Errorf("base image %s: declared qcow2 but has no qcow2 header", path)
	}
	if err != nil {
		return 0, fmt.Errorf("base image %s: truncated qcow2 header", path)
	}
	size := binary.BigEndian.Uint64(hdr[24:32])
	if size == 0 || size > 1<<62 {
		return 0, fmt.Errorf("base image %s: qcow2 virtual size %d", path, size)
	}
	return int64(size), nil
}

// pool returns the storage pool volumes are made in, active. A missing
// pool is defined (directory pool at PoolDir, built, started, autostarted)
// if the driver has a PoolDir, or is the test driver; otherwise it is an
// error. create false only looks it up: (nil, nil) when it does not exist.
func (d *Driver) pool(conn *lv.Connect, create bool) (*lv.StoragePool, error) {
	d.poolMu.Lock() // two Defines would race to define the pool
	defer d.poolMu.Unlock()
	p, err := conn.LookupStoragePoolByName(d.poolName)
	switch {
	case err == nil:
	case isCode(err, lv.ERR_NO_STORAGE_POOL) && !create:
		return nil, nil
	case isCode(err, lv.ERR_NO_STORAGE_POOL) && (d.poolDir != "" || d.testDriver):
		return d.definePool(conn)
	case isCode(err, lv.ERR_NO_STORAGE_POOL):
		return nil, fmt.Errorf("storage pool %q: not found (define it, or give the agent a pool directory to create it in)", d.poolName)
	default:
		return nil, wrap("look up storage pool "+d.poolName, err)
	}
	if active, err := p.IsActive(); err == nil && !active {
		if !create {
			p.Free()
			return nil, fmt.Errorf("storage pool %q: not active", d.poolName)
		}
		if d.poolDir == "" && !d.testDriver {
			p.Free()
			return nil, fmt.Errorf("storage pool %q: not active (start it, or give the agent a pool directory to manage it)", d.poolName)
		}
		if err := p.Create(0); err != nil {
			p.Free()
			return nil, wrap("start storage pool "+d.poolName, err)
		}
	}
	return p, nil
}

// definePool defines, builds, starts and autostarts the directory pool;
// if a step fails, the definition is removed again.
func (d *Driver) definePool(conn *lv.Connect) (_ *lv.StoragePool, err error) {
	dir := d.poolDir
	if dir == "" {
		dir = filepath.Join(testPoolRoot, d.poolName)
	}
	doc, err := (&libvirtxml.StoragePool{
		Type:   "dir",
		Name:   d.poolName,
		Target: &libvirtxml.StoragePoolTarget{Path: dir},
	}).Marshal()
	if err != nil {
		return nil, fmt.Errorf("storage pool xml: %w", err)
	}
	p, err := conn.StoragePoolDefineXML(doc, 0)
	if err != nil {
		return nil, wrap("define storage pool "+d.poolName, err)
	}
	defer func() {
		if err != nil {
			p.Destroy()
			p.Undefine()
			p.Free()
		}
	}()
	// Build makes the directory (and is a no-op on an existing one).
	if err := p.Build(0); err != nil {
		return nil, wrap("build storage pool "+d.poolName, err)
	}
	if err := p.Create(0); err != nil {
		return nil, wrap("start storage pool "+d.poolName, err)
	}
	if err := p.SetAutostart(true); err != nil {
		return nil, wrap("autostart storage pool "+d.poolName, err)
	}
	return p, nil
}

// ensureVolume returns the volume named v.Name in pool, creating it from v
// if it does not exist; created says which. An existing volume is reused
// as it is: it is what an earlier Define of the same VM made.
func ensureVolume(pool *lv.StoragePool, v *libvirtxml.StorageVolume) (vol *lv.StorageVol, created bool, err error) {
	vol, err = pool.LookupStorageVolByName(v.Name)
	if err == nil {
		return vol, false, nil
	}
	if !isCode(err, lv.ERR_NO_STORAGE_VOL) {
		return nil, false, wrap("look up volume "+v.Name, err)
	}
	doc, err := v.Marshal()
	if err != nil {
		return nil, false, fmt.Errorf("volume xml: %w", err)
	}
	vol, err = pool.StorageVolCreateXML(doc, 0)
	if err != nil {
		return nil, false, wrap("create volume "+v.Name, err)
	}
	return vol, true, nil
}

// deleteVolumeNamed deletes the volume name of pool; a missing one is
// fine.
func deleteVolumeNamed(pool *lv.StoragePool, name string) error {
	vol, err := pool.LookupStorageVolByName(name)
	if isCode(err, lv.ERR_NO_STORAGE_VOL) {
		return nil
	}
	if err != nil {
		return wrap("look up volume "+name, err)
	}
	defer vol.Free()
	if err := vol.Delete(0); err != nil && !isCode(err, lv.ERR_NO_STORAGE_VOL) {
		return wrap("delete stale volume "+name, err)
	}
	return nil
}

// volumeFormat is the format of vol's file (raw or qcow2) as the pool
// knows it, or planned's if the pool does not say.
func volumeFormat(vol *lv.StorageVol, planned *libvirtxml.StorageVolume) (string, error) {
	doc, err := vol.GetXMLDesc(0)
	if err != nil {
		return "", wrap("read volume xml of "+planned.Name, err)
	}
	var x libvirtxml.StorageVolume
	if err := x.Unmarshal(doc); err != nil {
		return "", fmt.Errorf("parse volume xml of %s: %w", planned.Name, err)
	}
	format := ""
	if x.Target != nil && x.Target.Format != nil {
		format = x.Target.Format.Type
	}
	switch format {
	case "raw", "qcow2":
		return format, nil
	case "", "none", "auto":
		return planned.Target.Format.Type, nil
	}
	return "", fmt.Errorf("root volume %s has format %q: want raw or qcow2", planned.Name, format)
}

// fillVolume writes the disk src into vol (raw, size bytes, new) through
// one sparse libvirt upload stream: the pool's owner writes the file, the
// gaps the source skips are sent as holes and stay unallocated.
func fillVolume(ctx context.Context, conn *lv.Connect, vol *lv.StorageVol, src agent.DiskSource, size int64) (err error) {
	st, err := conn.NewStream(0)
	if err != nil {
		return wrap("new stream", err)
	}
	defer st.Free()
	if err := vol.Upload(st, 0, uint64(size), lv.STORAGE_VOL_UPLOAD_SPARSE_STREAM); err != nil {
		return wrap("upload", err)
	}
	defer func() {
		if err != nil {
			st.Abort()
		}
	}()
	hole := func(n int64) error { return wrap("upload hole", st.SendHole(n, 0)) }
	err = fillFrom(ctx, src, size, func(off int64, p []byte) error {
		if sparse.IsZero(p) {
			return hole(int64(len(p)))
		}
		for len(p) > 0 {
			n, err := st.Send(p)
			if err != nil {
				return wrap("upload", err)
			}
			p = p[n:]
		}
		return nil
	}, hole)
	if err != nil {
		return err
	}
	return wrap("finish upload", st.Finish())
}

// ensureSeed stores iso as the raw volume name in pool. An existing seed
// volume is rewritten (an interrupted Define may have left it half
// written), or replaced if its size differs; but not while the domain
// runs, whose guest has it open (and read it at first boot already).
func (d *Driver) ensureSeed(conn *lv.Connect, pool *lv.StoragePool, name string, iso []byte, domainActive bool) (vol *lv.StorageVol, created bool, err error) {
	vol, err = pool.LookupStorageVolByName(name)
	switch {
	case err == nil && domainActive:
		return vol, false, nil
	case err == nil:
		info, ierr := vol.GetInfo()
		if ierr != nil {
			vol.Free()
			return nil, false, wrap("volume info of "+name, ierr)
		}
		if info.Capacity != uint64(len(iso)) {
			derr := vol.Delete(0)
			vol.Free()
			if derr != nil {
				return nil, false, wrap("delete stale volume "+name, derr)
			}
			vol = nil
		}
	case !isCode(err, lv.ERR_NO_STORAGE_VOL):
		return nil, false, wrap("look up volume "+name, err)
	}
	if vol == nil {
		size := &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: uint64(len(iso))}
		vol, created, err = ensureVolume(pool, &libvirtxml.StorageVolume{
			Name: name, Capacity: size, Allocation: size,
			Target: &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "raw"}},
		})
		if err != nil {
			return nil, false, err
		}
	}
	if err := upload(conn, vol, iso); err != nil {
		if isCode(err, lv.ERR_NO_SUPPORT) && d.testDriver {
			// The test driver cannot upload: its volume has the seed's
			// size but no bytes, which is all a simulated host needs.
			return vol, created, nil
		}
		if created {
			vol.Delete(0)
		}
		vol.Free()
		return nil, false, wrap("upload volume "+name, err)
	}
	return vol, created, nil
}

// upload writes data over the start of vol through a libvirt stream: the
// pool's owner writes the file, not the agent behind its back.
func upload(conn *lv.Connect, vol *lv.StorageVol, data []byte) (err error) {
	st, err := conn.NewStream(0)
	if err != nil {
		return err
	}
	defer st.Free()
	if err := vol.Upload(st, 0, uint64(len(data)), 0); err != nil {
		return err
	}
	for len(data) > 0 {
		n, err := st.Send(data)
		if err != nil {
			st.Abort()
			return err
		}
		data = data[n:]
	}
	return st.Finish()
}

// deleteVolumes removes the volumes Define made for vmID: those of the
// given paths (the domain's disks) whose names are Define's, and those
// with Define's names in the configured pool. Missing ones are fine.
func (d *Driver) deleteVolumes(conn *lv.Connect, vmID string, paths []string) error {
	ours := map[string]bool{rootVolumeName(vmID): true, seedVolumeName(vmID): true}
	var errs []error
	del := func(vol *lv.StorageVol) {
		defer vol.Free()
		name, err := vol.GetName()
		if err != nil || !ours[name] {
			return // not ours: a data volume stays
		}
		if err := vol.Delete(0); err != nil && !isCode(err, lv.ERR_NO_STORAGE_VOL) {
			errs = append(errs, wrap("delete volume "+name, err))
		}
	}
	// By path first: the pool may have been reconfigured since Define.
	for _, p := range paths {
		vol, err := conn.LookupStorageVolByPath(p)
		if err != nil {
			continue // not a volume, or gone: the lookup by name decides
		}
		del(vol)
	}
	pool, err := d.pool(conn, false)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if pool == nil {
		return errors.Join(errs...)
	}
	defer pool.Free()
	for _, name := range []string{rootVolumeName(vmID), seedVolumeName(vmID)} {
		vol, err := pool.LookupStorageVolByName(name)
		if isCode(err, lv.ERR_NO_STORAGE_VOL) {
			continue
		}
		if err != nil {
			errs = append(errs, wrap("look up volume "+name, err))
			continue
		}
		del(vol)
	}
	return errors.Join(errs...)
}

// diskPaths lists the file paths of a domain's disks.
func diskPaths(dom *lv.Domain) ([]string, error) {
	doc, err := dom.GetXMLDesc(lv.DOMAIN_XML_INACTIVE)
	if err != nil {
		return nil, wrap("read domain xml", err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(doc); err != nil {
		return nil, fmt.Errorf("parse domain xml: %w", err)
	}
	var out []string
	if x.Devices == nil {
		return nil, nil
	}
	for _, disk := range x.Devices.Disks {
		if disk.Source != nil && disk.Source.File != nil && disk.Source.File.File != "" {
			out = append(out, disk.Source.File.File)
		}
	}
	return out, nil
}
