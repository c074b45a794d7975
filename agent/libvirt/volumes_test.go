package libvirt

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
)

const (
	volA = "vol-0123456789abcdef"
	volB = "vol-fedcba9876543210"
)

// volumeDisks lists a definition's volume disks as "id target serial file
// format".
func volumeDisks(x libvirtxml.Domain) []string {
	var out []string
	for _, d := range x.Devices.Disks {
		if id := diskVolumeID(d); id != "" {
			out = append(out, id+" "+d.Target.Dev+" "+d.Target.Bus+" "+d.Serial+" "+d.Driver.Type)
		}
	}
	return out
}

// A domain defined with volumes has them as virtio disks vdb onwards with
// their id as serial, made thin in the pool; Undefine leaves them there.
func TestDefineWithVolumes(t *testing.T) {
	d := openSim(t, Options{})
	ctx := context.Background()
	spec := agent.DomainSpec{VMID: "vm-v1", Name: "web", Project: "air", VCPUs: 1, MemoryBytes: 256 << 20, DiskBytes: 1 << 30,
		Volumes: []agent.VolumeSpec{{ID: volA, SizeBytes: 2 << 30}, {ID: volB, SizeBytes: 3 << 30}}}
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	x := definedXML(t, d, spec.VMID, lv.DOMAIN_XML_INACTIVE)
	if got, want := volumeDisks(x), []string{volA + " vdb virtio " + volA + " qcow2", volB + " vdc virtio " + volB + " qcow2"}; !slices.Equal(got, want) {
		t.Fatalf("volume disks %v, want %v", got, want)
	}
	vols := poolVolumes(t, d, DefaultPool)
	if v := vols[volumeName(volA)]; v.Capacity == nil || v.Capacity.Value != 2<<30 || v.Target.Format.Type != "qcow2" {
		t.Fatalf("pool volume of %s: %+v", volA, v)
	}
	if got, _ := d.DomainVolumes(ctx, spec.VMID); !slices.Equal(got, []string{volA, volB}) {
		t.Fatalf("DomainVolumes: %v", got)
	}
	if err := d.Undefine(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.ListVolumes(ctx); !slices.Equal(got, []string{volA, volB}) {
		t.Fatalf("after Undefine the pool holds volumes %v, want both kept", got)
	}
	for _, id := range []string{volA, volA, volB} { // a second delete is fine
		if err := d.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := d.ListVolumes(ctx); len(got) != 0 {
		t.Fatalf("after DeleteVolume: %v", got)
	}
}

// Attach and detach change the definition (the test driver has no running
// guest to hot-plug into: see domainXMLs), take the first free target, and
// are no-ops when repeated.
func TestAttachDetachVolume(t *testing.T) {
	d := openSim(t, Options{})
	ctx := context.Background()
	spec := agent.DomainSpec{VMID: "vm-v2", Name: "db", Project: "air", VCPUs: 1, MemoryBytes: 256 << 20, DiskBytes: 1 << 30,
		Volumes: []agent.VolumeSpec{{ID: volA, SizeBytes: 1 << 30}}}
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := d.AttachVolume(ctx, spec.VMID, agent.VolumeSpec{ID: volB, SizeBytes: 1 << 30}); err != nil {
			t.Fatal(err)
		}
	}
	x := definedXML(t, d, spec.VMID, lv.DOMAIN_XML_INACTIVE)
	if got, want := volumeDisks(x), []string{volA + " vdb virtio " + volA + " qcow2", volB + " vdc virtio " + volB + " qcow2"}; !slices.Equal(got, want) {
		t.Fatalf("after attach: %v, want %v", got, want)
	}
	for range 2 {
		if err := d.DetachVolume(ctx, spec.VMID, volA); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := d.DomainVolumes(ctx, spec.VMID); !slices.Equal(got, []string{volB}) {
		t.Fatalf("after detach: %v", got)
	}
	// vdb is free again: the next volume takes it.
	if err := d.AttachVolume(ctx, spec.VMID, agent.VolumeSpec{ID: "vol-3", SizeBytes: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	x = definedXML(t, d, spec.VMID, lv.DOMAIN_XML_INACTIVE)
	if got := volumeDisks(x); !slices.Contains(got, "vol-3 vdb virtio vol-3 qcow2") {
		t.Fatalf("the new volume did not take vdb: %v", got)
	}
	// The detached volume stays in the pool, the root disk is untouched.
	if got, _ := d.ListVolumes(ctx); !slices.Equal(got, []string{volA, "vol-3", volB}) {
		t.Fatalf("pool: %v", got)
	}
	if x.Devices.Disks[0].Target.Dev != rootTarget || diskVolumeID(x.Devices.Disks[0]) != "" {
		t.Fatalf("root disk: %+v", x.Devices.Disks[0])
	}
}

// Bad input is refused before anything is made, with one-line errors.
func TestVolumeBadInput(t *testing.T) {
	d := openSim(t, Options{})
	ctx := context.Background()
	err := d.AttachVolume(ctx, "vm-nope", agent.VolumeSpec{ID: volA, SizeBytes: 1 << 30})
	if !errors.Is(err, agent.ErrDomainNotFound) {
		t.Fatalf("attach to no domain: %v", err)
	}
	if err := d.DetachVolume(ctx, "vm-nope", volA); !errors.Is(err, agent.ErrDomainNotFound) {
		t.Fatalf("detach from no domain: %v", err)
	}
	if _, err := d.DomainVolumes(ctx, "vm-nope"); !errors.Is(err, agent.ErrDomainNotFound) {
		t.Fatalf("volumes of no domain: %v", err)
	}
	for _, c := range []struct {
		err  error
		want string
	}{
		{d.AttachVolume(ctx, "vm-x", agent.VolumeSpec{ID: "../etc", SizeBytes: 1 << 30}), "want lowercase letters"},
		{d.AttachVolume(ctx, "vm-x", agent.VolumeSpec{ID: strings.Repeat("a", 21), SizeBytes: 1 << 30}), "want 1-20 characters"},
		{d.AttachVolume(ctx, "vm-x", agent.VolumeSpec{ID: volA, SizeBytes: 1000}), "512-byte sectors"},
		{d.DetachVolume(ctx, "vm-x", ""), "want 1-20 characters"},
		{d.DeleteVolume(ctx, "A B"), "want lowercase letters"},
		{d.Define(ctx, agent.DomainSpec{VMID: "vm-x", VCPUs: 1, MemoryBytes: 1 << 20, Volumes: []agent.VolumeSpec{{ID: volA, SizeBytes: 1 << 20}, {ID: volA, SizeBytes: 1 << 20}}}), "given twice"},
		{d.Define(ctx, agent.DomainSpec{VMID: "vm-x", VCPUs: 1, MemoryBytes: 1 << 20, Volumes: []agent.VolumeSpec{{ID: "x y", SizeBytes: 1 << 20}}}), "volume id"},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) || strings.Contains(c.err.Error(), "\n") {
			t.Errorf("%v: want an error saying %q", c.err, c.want)
		}
	}
	if got, _ := d.ListVolumes(ctx); len(got) != 0 {
		t.Fatalf("refused calls made volumes: %v", got)
	}
}

func TestFreeTarget(t *testing.T) {
	x := &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{Disks: []libvirtxml.DomainDisk{
		{Target: &libvirtxml.DomainDiskTarget{Dev: "vda"}}, {Target: &libvirtxml.DomainDiskTarget{Dev: "vdb"}}, {Target: &libvirtxml.DomainDiskTarget{Dev: "hdc"}},
	}}}
	live := &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{Disks: []libvirtxml.DomainDisk{{Target: &libvirtxml.DomainDiskTarget{Dev: "vdc"}}}}}
	if got, err := freeTarget(x, live, nil); got != "vdd" || err != nil {
		t.Fatalf("freeTarget: %q %v", got, err)
	}
	full := &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{}}
	for c := 'a'; c <= 'z'; c++ {
		full.Devices.Disks = append(full.Devices.Disks, libvirtxml.DomainDisk{Target: &libvirtxml.DomainDiskTarget{Dev: "vd" + string(c)}})
	}
	if _, err := freeTarget(full); err == nil {
		t.Fatal("a domain with vda-vdz got another target")
	}
}
