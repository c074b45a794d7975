//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/yunchi/yunchi/internal/benchkit"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/uuid"
	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/cloudinit"
	yunchilibvirt "github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/internal/qemuhost"
)

// The baseline: libvirt alone doing what the agent's driver does to
// define and start a VM from an image, on the same host's libvirtd: a
// qcow2 overlay volume of the cached image and a NoCloud seed ISO volume
// in the host's pool (the seed uploaded through a libvirt stream), the
// domain defined from the XML agent/libvirt's DomainXML renders, then
// started. Everything is rendered before the clock starts (the ISO, the
// volume and domain XML); the clock covers only libvirt calls. The domain
// carries no Yunchi metadata, so the agent on the host neither lists nor
// touches it; its name starts "bench-".

// lvVM is one baseline VM, rendered.
type lvVM struct {
	name                string
	rootName, seedName  string
	rootXML, seedXML    string
	iso                 []byte
	domXML              string
	root, seed          *lv.StorageVol // made by define
	dom                 *lv.Domain     // defined by define
	defineDur, startDur time.Duration
	failedStarts        int
}

// baseline renders and runs baseline VMs on one host.
type baseline struct {
	h         *qemuhost.Host
	image     string // the agent's cached image file (raw)
	diskBytes int64
	memory    int64
}

// render prepares VM i of kind (e.g. "seq", "burst") as the agent's
// driver would for a VM of that name: from the image (booted), or with
// an empty disk and the user data.
func (b *baseline) render(kind string, i int, booted bool) (*lvVM, error) {
	id := uuid.NewString()
	name := fmt.Sprintf("bench-%s-%d", kind, i)
	v := &lvVM{name: name, rootName: name + "-root", seedName: name + "-seed.iso"}
	seed := cloudinit.Seed{InstanceID: id, Hostname: name}
	disk := b.diskBytes
	if !booted {
		seed.UserData, disk = userData, emptyDiskSize
	}
	iso, err := seed.ISO()
	if err != nil {
		return nil, err
	}
	v.iso = iso
	root := &libvirtxml.StorageVolume{
		Name:       v.rootName,
		Capacity:   &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: uint64(disk)},
		Allocation: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: 0},
		Target:     &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}},
	}
	if booted {
		root.BackingStore = &libvirtxml.StorageVolumeBackingStore{
			Path: b.image, Format: &libvirtxml.StorageVolumeTargetFormat{Type: "raw"},
		}
	}
	size := &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: uint64(len(iso))}
	seedVol := &libvirtxml.StorageVolume{
		Name: v.seedName, Capacity: size, Allocation: size,
		Target: &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "raw"}},
	}
	if v.rootXML, err = root.Marshal(); err != nil {
		return nil, err
	}
	if v.seedXML, err = seedVol.Marshal(); err != nil {
		return nil, err
	}
	spec := agent.DomainSpec{VMID: id, Project: "default", Name: name, VCPUs: 1, MemoryBytes: b.memory, DiskBytes: disk}
	doc, err := yunchilibvirt.DomainXML("qemu", spec, yunchilibvirt.Devices{
		// A directory pool's volume lives at DIR/<name>.
		RootPath: filepath.Join(b.h.PoolDir, v.rootName), SeedPath: filepath.Join(b.h.PoolDir, v.seedName),
		Network:    yunchilibvirt.NetworkUser,
		ConsoleLog: filepath.Join(b.h.ConsoleLogDir, name+".log"),
	})
	if err != nil {
		return nil, err
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(doc); err != nil {
		return nil, err
	}
	dom.Name, dom.Metadata, dom.Title = name, nil, ""
	dom.Description = "yunchi bench-qemu baseline"
	if v.domXML, err = dom.Marshal(); err != nil {
		return nil, err
	}
	return v, nil
}

// renderN renders n VMs of kind.
func (b *baseline) renderN(kind string, n int, booted bool) ([]*lvVM, error) {
	var out []*lvVM
	for i := range n {
		v, err := b.render(kind, i, booted)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// run defines and starts v on conn: the timed part.
func (v *lvVM) run(conn *lv.Connect) error {
	t0 := time.Now()
	pool, err := conn.LookupStoragePoolByName(qemuhost.PoolName)
	if err != nil {
		return fmt.Errorf("baseline %s: pool: %w", v.name, err)
	}
	defer pool.Free()
	if v.root, err = pool.StorageVolCreateXML(v.rootXML, 0); err != nil {
		return fmt.Errorf("baseline %s: root volume: %w", v.name, err)
	}
	if v.seed, err = pool.StorageVolCreateXML(v.seedXML, 0); err != nil {
		return fmt.Errorf("baseline %s: seed volume: %w", v.name, err)
	}
	if err := upload(conn, v.seed, v.iso); err != nil {
		return fmt.Errorf("baseline %s: upload seed: %w", v.name, err)
	}
	if v.dom, err = conn.DomainDefineXML(v.domXML); err != nil {
		return fmt.Errorf("baseline %s: define: %w", v.name, err)
	}
	t1 := time.Now()
	if err := v.dom.Create(); err != nil {
		// Tried once more at once, as the agent does at its next pass
		// after reporting the failure; counted.
		v.failedStarts++
		benchkit.Progress("  baseline %s: start failed (%v); trying again", v.name, err)
		if err := v.dom.Create(); err != nil {
			return fmt.Errorf("baseline %s: start: %w", v.name, err)
		}
	}
	v.defineDur, v.startDur = t1.Sub(t0), time.Since(t1)
	return nil
}

// cleanup destroys, undefines and deletes what run made; not timed.
func (v *lvVM) cleanup() error {
	var errs []error
	if v.dom != nil {
		if active, err := v.dom.IsActive(); err == nil && active {
			if err := v.dom.Destroy(); err != nil {
				errs = append(errs, fmt.Errorf("destroy %s: %w", v.name, err))
			}
		}
		if err := v.dom.Undefine(); err != nil {
			errs = append(errs, fmt.Errorf("undefine %s: %w", v.name, err))
		}
		v.dom.Free()
		v.dom = nil
	}
	for _, vol := range []**lv.StorageVol{&v.root, &v.seed} {
		if *vol == nil {
			continue
		}
		if err := (*vol).Delete(0); err != nil {
			errs = append(errs, fmt.Errorf("delete volume of %s: %w", v.name, err))
		}
		(*vol).Free()
		*vol = nil
	}
	return errors.Join(errs...)
}

// upload writes data over vol through a libvirt stream, as the driver
// does for the seed.
func upload(conn *lv.Connect, vol *lv.StorageVol, data []byte) error {
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

// burstAtOnce defines and starts vms all at once, one goroutine and one
// connection (opened before the clock starts) each, and returns the time
// until the last one is running.
func (b *baseline) burstAtOnce(ctx context.Context, vms []*lvVM) (time.Duration, error) {
	conns := make([]*lv.Connect, len(vms))
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range conns {
		c, err := lv.NewConnect(b.h.URI())
		if err != nil {
			return 0, err
		}
		conns[i] = c
	}
	errs := make([]error, len(vms))
	var wg sync.WaitGroup
	begun := time.Now()
	for i, v := range vms {
		wg.Go(func() { errs[i] = v.run(conns[i]) })
	}
	wg.Wait()
	all := time.Since(begun)
	return all, errors.Join(errs...)
}

// burstPool defines and starts vms, width at a time in order, on the one
// connection conn (width 1: one after the other), and returns the time
// until the last one is running.
func (b *baseline) burstPool(ctx context.Context, conn *lv.Connect, vms []*lvVM, width int) (time.Duration, error) {
	errs := make([]error, len(vms))
	sem := make(chan struct{}, width)
	var wg sync.WaitGroup
	begun := time.Now()
	for i, v := range vms {
		if err := ctx.Err(); err != nil {
			errs[i] = err
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = v.run(conn)
		})
	}
	wg.Wait()
	return time.Since(begun), errors.Join(errs...)
}

// cleanupAll cleans vms up, a few at a time.
func cleanupAll(vms []*lvVM) error {
	errs := make([]error, len(vms))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, v := range vms {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = v.cleanup()
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
