package libvirt

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/cloudinit"
)

// testSeed is a seed cloudinit accepts.
func testSeed() *agent.Seed {
	return &agent.Seed{
		InstanceID:        "i-7f0c2a9e",
		Hostname:          "web-1",
		SSHAuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMnv2pNKfPOjcWzhW0M8Q4hM0k3cFJ2Ad5b3s6Q1w2e3 ops@example"},
		UserData:          "#cloud-config\nruncmd:\n  - echo hi\n",
	}
}

// seedISO is the ISO Define stores for s.
func seedISO(t *testing.T, s *agent.Seed) []byte {
	t.Helper()
	iso, err := cloudinit.Seed{InstanceID: s.InstanceID, Hostname: s.Hostname, SSHAuthorizedKeys: s.SSHAuthorizedKeys, UserData: s.UserData}.ISO()
	if err != nil {
		t.Fatal(err)
	}
	return iso
}

// poolVolumes reads the volumes of pool as libvirt describes them, by
// name; nil if the pool does not exist.
func poolVolumes(t *testing.T, d *Driver, pool string) map[string]libvirtxml.StorageVolume {
	t.Helper()
	conn, err := d.connect()
	if err != nil {
		t.Fatal(err)
	}
	p, err := conn.LookupStoragePoolByName(pool)
	if isCode(err, lv.ERR_NO_STORAGE_POOL) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer p.Free()
	if err := p.Refresh(0); err != nil {
		t.Fatal(err)
	}
	vols, err := p.ListAllStorageVolumes(0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]libvirtxml.StorageVolume{}
	for i := range vols {
		doc, err := vols[i].GetXMLDesc(0)
		vols[i].Free()
		if err != nil {
			t.Fatal(err)
		}
		var v libvirtxml.StorageVolume
		if err := v.Unmarshal(doc); err != nil {
			t.Fatal(err)
		}
		out[v.Name] = v
	}
	return out
}

// definedXML reads back the domain of vmID as libvirt holds it.
func definedXML(t *testing.T, d *Driver, vmID string, flags lv.DomainXMLFlags) libvirtxml.Domain {
	t.Helper()
	var x libvirtxml.Domain
	err := d.withDomain(vmID, func(dom *lv.Domain) error {
		doc, err := dom.GetXMLDesc(flags)
		if err != nil {
			return err
		}
		return x.Unmarshal(doc)
	})
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// checkDomain compares what libvirt holds for spec with what Define asked.
func checkDomain(t *testing.T, x libvirtxml.Domain, domainType string, spec agent.DomainSpec, dev Devices) {
	t.Helper()
	if x.Type != domainType || x.Name != domainName(spec.VMID) || x.UUID != domainUUID(spec.VMID) ||
		x.VCPU == nil || x.VCPU.Value != uint(spec.VCPUs) || x.Memory == nil || x.Memory.Value*1024 != uint(spec.MemoryBytes) ||
		x.Metadata == nil || !strings.Contains(x.Metadata.XML, spec.VMID) {
		t.Errorf("domain: type %q name %q uuid %q vcpu %+v memory %+v metadata %+v", x.Type, x.Name, x.UUID, x.VCPU, x.Memory, x.Metadata)
	}
	if x.OnPoweroff != "destroy" || x.OnReboot != "restart" || x.OnCrash != "destroy" {
		t.Errorf("lifecycle: poweroff %q reboot %q crash %q", x.OnPoweroff, x.OnReboot, x.OnCrash)
	}
	if x.OS == nil || len(x.OS.BootDevices) != 1 || x.OS.BootDevices[0].Dev != "hd" {
		t.Errorf("os: %+v", x.OS)
	}
	if x.Devices == nil {
		t.Fatal("no devices")
	}
	var disks []string
	for _, disk := range x.Devices.Disks {
		if disk.Source == nil || disk.Source.File == nil || disk.Target == nil || disk.Driver == nil {
			t.Errorf("disk %+v: not a file disk", disk)
			continue
		}
		disks = append(disks, disk.Device+" "+disk.Source.File.File+" "+disk.Driver.Type+" "+disk.Target.Dev+" "+disk.Target.Bus+" "+
			map[bool]string{true: "ro", false: "rw"}[disk.ReadOnly != nil])
	}
	var want []string
	if dev.RootPath != "" {
		want = append(want, "disk "+dev.RootPath+" qcow2 vda virtio rw")
	}
	if dev.SeedPath != "" {
		want = append(want, "cdrom "+dev.SeedPath+" raw hdc ide ro")
	}
	if !slices.Equal(disks, want) {
		t.Errorf("disks:\n%s\nwant\n%s", strings.Join(disks, "\n"), strings.Join(want, "\n"))
	}
	if len(x.Devices.Interfaces) != 1 {
		t.Errorf("interfaces: %+v", x.Devices.Interfaces)
	} else {
		i := x.Devices.Interfaces[0]
		if i.Source == nil || i.Source.User == nil || i.Model == nil || i.Model.Type != "virtio" || i.MAC == nil || i.MAC.Address != macAddress(spec.VMID).String() {
			t.Errorf("interface: source %+v model %+v mac %+v", i.Source, i.Model, i.MAC)
		}
	}
	if len(x.Devices.Serials) != 1 || x.Devices.Serials[0].Source == nil || x.Devices.Serials[0].Source.Pty == nil {
		t.Errorf("serials: %+v", x.Devices.Serials)
	} else if s := x.Devices.Serials[0]; dev.ConsoleLog != "" && (s.Log == nil || s.Log.File != dev.ConsoleLog || s.Log.Append != "off") {
		t.Errorf("serial log: %+v, want %s", s.Log, dev.ConsoleLog)
	}
	if len(x.Devices.Consoles) != 1 || x.Devices.Consoles[0].Target == nil || x.Devices.Consoles[0].Target.Type != "serial" {
		t.Errorf("consoles: %+v", x.Devices.Consoles)
	}
	if b := x.Devices.MemBalloon; b == nil || b.Model != "virtio" || b.Stats == nil || b.Stats.Period != balloonStatsPeriod {
		t.Errorf("memballoon: %+v", b)
	}
}

// qemuImg makes an image with qemu-img (skipping the test without it).
func qemuImg(t *testing.T, format, size string) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("needs qemu-img (apt-get install qemu-utils)")
	}
	path := filepath.Join(t.TempDir(), "base."+format)
	if out, err := exec.Command(bin, "create", "-q", "-f", format, path, size).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	return path
}

// openSim opens a fresh simulated host (not test:///default, whose state
// is shared by every connection of the process).
func openSim(t *testing.T, o Options) *Driver {
	t.Helper()
	uri, err := WriteTestNodeXML(filepath.Join(t.TempDir(), "node.xml"), TestNode{CPUs: 4, MemoryBytes: 8 << 30})
	if err != nil {
		t.Fatal(err)
	}
	d, err := OpenWithOptions(uri, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// makeVolume creates v in the driver's pool, as an interrupted Define
// would have.
func makeVolume(t *testing.T, d *Driver, v *libvirtxml.StorageVolume) (key, path string) {
	t.Helper()
	conn, err := d.connect()
	if err != nil {
		t.Fatal(err)
	}
	pool, err := d.pool(conn, true)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Free()
	vol, created, err := ensureVolume(pool, v)
	if err != nil || !created {
		t.Fatalf("volume %s: created %v, %v", v.Name, created, err)
	}
	defer vol.Free()
	key, _ = vol.GetKey()
	path, _ = vol.GetPath()
	return key, path
}

// On the test driver a VM gets real volumes (the pool is made in memory),
// the domain uses them, a second Define reuses them, and Undefine removes
// them with the domain.
func TestDefineMakesRootDiskAndSeed(t *testing.T) {
	ctx := context.Background()
	d := openSim(t, Options{ConsoleLogDir: t.TempDir()})
	spec := agent.DomainSpec{VMID: "7f0c2a9e-3b1d-4c8e-9a55-1e2f3a4b5c6d", Project: "p", Name: "web", VCPUs: 2, MemoryBytes: 256 << 20,
		DiskBytes: 64 << 20, Seed: testSeed()}
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	vols := poolVolumes(t, d, DefaultPool)
	root, seed := vols[rootVolumeName(spec.VMID)], vols[seedVolumeName(spec.VMID)]
	if len(vols) != 2 || root.Capacity == nil || root.Capacity.Value != 64<<20 || root.Target.Format.Type != "qcow2" || root.BackingStore != nil {
		t.Fatalf("volumes %+v; root %+v", vols, root)
	}
	if iso := seedISO(t, spec.Seed); seed.Capacity == nil || seed.Capacity.Value != uint64(len(iso)) || seed.Target.Format.Type != "raw" {
		t.Fatalf("seed volume %+v, want %d bytes raw", seed, len(iso))
	}
	dev := Devices{RootPath: root.Target.Path, SeedPath: seed.Target.Path, ConsoleLog: filepath.Join(d.consoleLogDir, domainName(spec.VMID)+".log")}
	checkDomain(t, definedXML(t, d, spec.VMID, lv.DOMAIN_XML_INACTIVE), "test", spec, dev)

	// Idempotent: the same domain, the same volumes, no others.
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	again := poolVolumes(t, d, DefaultPool)
	if len(again) != 2 || again[root.Name].Key != root.Key || again[seed.Name].Key != seed.Key {
		t.Fatalf("after a second define: %+v", again)
	}
	if err := d.Start(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	if err := d.Undefine(ctx, spec.VMID); err == nil || !strings.Contains(err.Error(), "running") {
		t.Fatalf("undefine of a running domain: %v", err)
	}
	if len(poolVolumes(t, d, DefaultPool)) != 2 {
		t.Fatal("undefine of a running domain removed volumes")
	}
	if err := d.Destroy(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	if err := d.Undefine(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	if vols := poolVolumes(t, d, DefaultPool); len(vols) != 0 {
		t.Fatalf("volumes left: %+v", vols)
	}
	if doms, err := d.ListDomains(ctx); err != nil || len(doms) != 0 {
		t.Fatalf("domains left: %+v %v", doms, err)
	}
	if err := d.Undefine(ctx, spec.VMID); !errors.Is(err, agent.ErrDomainNotFound) {
		t.Fatalf("second undefine: %v", err)
	}
}

// The root disk of a VM with an image is a qcow2 overlay on it, as large
// as asked.
func TestDefineOverlay(t *testing.T) {
	ctx := context.Background()
	d := openSim(t, Options{Pool: "vms"})
	for _, format := range []string{"qcow2", "raw"} {
		base := qemuImg(t, format, "32M")
		spec := agent.DomainSpec{VMID: "overlay-" + format, VCPUs: 1, MemoryBytes: 64 << 20, DiskBytes: 48 << 20, BaseImage: base, BaseFormat: format}
		if err := d.Define(ctx, spec); err != nil {
			t.Fatal(err)
		}
		root := poolVolumes(t, d, "vms")[rootVolumeName(spec.VMID)]
		if root.Capacity == nil || root.Capacity.Value != 48<<20 || root.Target.Format.Type != "qcow2" ||
			root.BackingStore == nil || root.BackingStore.Path != base || root.BackingStore.Format.Type != format {
			t.Errorf("%s: root volume %+v, backing %+v", format, root, root.BackingStore)
		}
		checkDomain(t, definedXML(t, d, spec.VMID, lv.DOMAIN_XML_INACTIVE), "test", spec, Devices{RootPath: root.Target.Path})
		if err := d.Undefine(ctx, spec.VMID); err != nil {
			t.Fatal(err)
		}
	}
	if vols := poolVolumes(t, d, "vms"); len(vols) != 0 {
		t.Fatalf("volumes left: %+v", vols)
	}
}

// Bad input is refused with one line, and leaves no volume and no domain;
// so does a failure of the last step, after the volumes were made.
func TestDefineRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	d := openSim(t, Options{})
	base := qemuImg(t, "qcow2", "64M")
	raw := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(raw, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	ok := agent.DomainSpec{VMID: "bad-1", VCPUs: 1, MemoryBytes: 64 << 20, DiskBytes: 64 << 20, Seed: testSeed()}
	for name, c := range map[string]struct {
		edit func(*agent.DomainSpec)
		want string
	}{
		"missing base":      {func(s *agent.DomainSpec) { s.BaseImage, s.BaseFormat = "/nonexistent/base.qcow2", "qcow2" }, "no such file"},
		"relative base":     {func(s *agent.DomainSpec) { s.BaseImage, s.BaseFormat = "base.qcow2", "qcow2" }, "absolute"},
		"vmdk":              {func(s *agent.DomainSpec) { s.BaseImage, s.BaseFormat = base, "vmdk" }, `format "vmdk"`},
		"no format":         {func(s *agent.DomainSpec) { s.BaseImage = base }, `format ""`},
		"disk below base":   {func(s *agent.DomainSpec) { s.BaseImage, s.BaseFormat, s.DiskBytes = base, "qcow2", 32<<20 }, "smaller than base image"},
		"qcow2 said raw":    {func(s *agent.DomainSpec) { s.BaseImage, s.BaseFormat = base, "raw" }, "declared raw but is qcow2"},
		"raw said qcow2":    {func(s *agent.DomainSpec) { s.BaseImage, s.BaseFormat = raw, "qcow2" }, "no qcow2 header"},
		"base without disk": {func(s *agent.DomainSpec) { s.BaseImage, s.BaseFormat, s.DiskBytes = base, "qcow2", 0 }, "without a disk size"},
		"negative disk":     {func(s *agent.DomainSpec) { s.DiskBytes = -1 }, "disk -1 bytes"},
		"bad seed":          {func(s *agent.DomainSpec) { s.Seed = &agent.Seed{InstanceID: "i-1", Hostname: "not a host name!"} }, "cloud-init seed"},
	} {
		spec := ok
		c.edit(&spec)
		err := d.Define(ctx, spec)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %v, want one line with %q", name, err, c.want)
		}
	}
	// The domain definition itself fails: the volumes made for it go.
	d.domainType = "no-such-type"
	if err := d.Define(ctx, ok); err == nil {
		t.Error("define with a bad domain type succeeded")
	}
	if vols := poolVolumes(t, d, DefaultPool); len(vols) != 0 {
		t.Errorf("volumes left: %+v", vols)
	}
	if doms, err := d.ListDomains(ctx); err != nil || len(doms) != 0 {
		t.Errorf("domains left: %+v %v", doms, err)
	}
}

// A Define that died after making the root disk, and left a seed of the
// wrong size, is completed by the next one, which reuses the root disk and
// replaces the seed. Undefine of a VM whose domain was never defined still
// removes its volumes.
func TestDefineCompletesInterruptedDefine(t *testing.T) {
	ctx := context.Background()
	d := openSim(t, Options{})
	spec := agent.DomainSpec{VMID: "interrupted", VCPUs: 1, MemoryBytes: 64 << 20, DiskBytes: 64 << 20, Seed: testSeed()}
	plan, err := planDisks(spec)
	if err != nil {
		t.Fatal(err)
	}
	staleSeed := &libvirtxml.StorageVolume{Name: seedVolumeName(spec.VMID), Capacity: &libvirtxml.StorageVolumeSize{Value: 4096}}
	makeVolume(t, d, plan.root)
	makeVolume(t, d, staleSeed)
	if err := d.Undefine(ctx, spec.VMID); !errors.Is(err, agent.ErrDomainNotFound) {
		t.Fatalf("undefine without a domain: %v", err)
	}
	if vols := poolVolumes(t, d, DefaultPool); len(vols) != 0 {
		t.Fatalf("undefine without a domain left %+v", vols)
	}

	// Again, and this time Define completes it.
	rootKey, _ := makeVolume(t, d, plan.root)
	makeVolume(t, d, staleSeed)
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	vols := poolVolumes(t, d, DefaultPool)
	root, seed := vols[rootVolumeName(spec.VMID)], vols[seedVolumeName(spec.VMID)]
	if len(vols) != 2 || root.Key != rootKey || seed.Capacity.Value != uint64(len(plan.seed)) {
		t.Fatalf("volumes after define: %+v", vols)
	}
	checkDomain(t, definedXML(t, d, spec.VMID, lv.DOMAIN_XML_INACTIVE), "test", spec, Devices{RootPath: root.Target.Path, SeedPath: seed.Target.Path})
	if err := d.Undefine(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
}

// Undefine removes the volumes Define made, not other disks of the domain.
func TestUndefineKeepsOtherVolumes(t *testing.T) {
	ctx := context.Background()
	d := openSim(t, Options{})
	spec := agent.DomainSpec{VMID: "keeps", VCPUs: 1, MemoryBytes: 64 << 20, DiskBytes: 64 << 20}
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	_, path := makeVolume(t, d, &libvirtxml.StorageVolume{Name: "data-1", Capacity: &libvirtxml.StorageVolumeSize{Value: 1 << 20}})
	// Attach it as a second disk to the persistent definition.
	x := definedXML(t, d, spec.VMID, lv.DOMAIN_XML_INACTIVE)
	x.Devices.Disks = append(x.Devices.Disks, libvirtxml.DomainDisk{Device: "disk",
		Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
		Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: path}},
		Target: &libvirtxml.DomainDiskTarget{Dev: "vdb", Bus: "virtio"}})
	doc, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.withConn(func(conn *lv.Connect) error {
		dom, err := conn.DomainDefineXML(doc)
		if err == nil {
			dom.Free()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := d.Undefine(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	if vols := poolVolumes(t, d, DefaultPool); len(vols) != 1 || vols["data-1"].Name == "" {
		t.Fatalf("volumes after undefine: %+v, want data-1 only", vols)
	}
}

// With a pool configured, the host's disk is that pool's capacity, not
// every pool's; a configured pool that is missing is made (test driver).
func TestNodeFactsConfiguredPool(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.xml")
	uri, err := WriteTestNodeXML(path, TestNode{CPUs: 4, MemoryBytes: 8 << 30, Pools: []TestPool{{Name: "images"}, {Name: "scratch"}}})
	if err != nil {
		t.Fatal(err)
	}
	for pool, want := range map[string]int64{"": 2 * 100 << 30, "images": 100 << 30, "fresh": 100 << 30} {
		d, err := OpenWithOptions(uri, Options{Pool: pool})
		if err != nil {
			t.Fatal(err)
		}
		f, err := d.NodeFacts(context.Background())
		if err != nil || f.DiskBytes != want || f.VCPUs != 4 || f.MemoryBytes != 8<<30 {
			t.Errorf("pool %q: facts %+v, %v; want disk %d", pool, f, err, want)
		}
		if pool == "fresh" && poolVolumes(t, d, "fresh") == nil {
			t.Error("pool fresh was not made")
		}
		d.Close()
	}
}

func TestOpenRefusesBadOptions(t *testing.T) {
	for name, o := range map[string]Options{
		"relative pool dir":  {PoolDir: "pools/default"},
		"pool with slash":    {Pool: "a/b"},
		"bad bridge":         {Network: "br 0"},
		"long bridge":        {Network: "bridge-name-too-long"},
		"seed on virtio":     {SeedBus: "virtio"},
		"relative log dir":   {ConsoleLogDir: "logs"},
		"control characters": {Pool: "p\x01"},
	} {
		if d, err := OpenWithOptions("test:///default", o); err == nil || strings.Contains(err.Error(), "\n") {
			if d != nil {
				d.Close()
			}
			t.Errorf("%s: %v", name, err)
		}
	}
	// A bridge, and no network at all, are written as asked.
	for network, check := range map[string]func([]libvirtxml.DomainInterface) bool{
		"br0": func(l []libvirtxml.DomainInterface) bool {
			return len(l) == 1 && l[0].Source.Bridge != nil && l[0].Source.Bridge.Bridge == "br0"
		},
		"none": func(l []libvirtxml.DomainInterface) bool { return len(l) == 0 },
	} {
		doc, err := DomainXML("kvm", agent.DomainSpec{VMID: "n", VCPUs: 1, MemoryBytes: 1 << 20}, Devices{Network: network})
		if err != nil {
			t.Fatal(err)
		}
		var x libvirtxml.Domain
		if err := x.Unmarshal(doc); err != nil || !check(x.Devices.Interfaces) {
			t.Errorf("network %s: %v\n%s", network, err, doc)
		}
	}
}

// The qcow2 header parser against images qemu-img made, and against
// damaged ones.
func TestBaseImageSize(t *testing.T) {
	q := qemuImg(t, "qcow2", "100M")
	if n, err := baseImageSize(q, "qcow2"); err != nil || n != 100<<20 {
		t.Errorf("qcow2: %d, %v", n, err)
	}
	r := qemuImg(t, "raw", "3M")
	if n, err := baseImageSize(r, "raw"); err != nil || n != 3<<20 {
		t.Errorf("raw: %d, %v", n, err)
	}
	hdr, err := os.ReadFile(q)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, b := range map[string][]byte{
		"truncated": hdr[:20],
		"zero size": append(append([]byte{}, hdr[:24]...), make([]byte, 8)...),
		"huge size": binary.BigEndian.AppendUint64(append([]byte{}, hdr[:24]...), 1<<63),
		"no magic":  append([]byte("QFI\x00"), hdr[4:512]...),
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if n, err := baseImageSize(p, "qcow2"); err == nil {
			t.Errorf("%s: size %d accepted", name, n)
		}
	}
	if _, err := baseImageSize(dir, "raw"); err == nil {
		t.Error("a directory accepted as raw image")
	}
}

// A drill's clone (Isolated) gets no network interface whatever the
// host's network; another VM on the same host gets the host's.
func TestDefineIsolatedHasNoNetwork(t *testing.T) {
	ctx := context.Background()
	d := openSim(t, Options{Network: NetworkUser})
	for _, c := range []struct {
		id       string
		isolated bool
		want     int
	}{
		{"0b1c2d3e-4f50-4617-8a9b-0c1d2e3f4a5b", true, 0},
		{"1b1c2d3e-4f50-4617-8a9b-0c1d2e3f4a5b", false, 1},
	} {
		spec := agent.DomainSpec{VMID: c.id, Project: "p", Name: "v", VCPUs: 1, MemoryBytes: 64 << 20, Isolated: c.isolated}
		if err := d.Define(ctx, spec); err != nil {
			t.Fatal(err)
		}
		x := definedXML(t, d, c.id, lv.DOMAIN_XML_INACTIVE)
		if len(x.Devices.Interfaces) != c.want {
			t.Errorf("isolated %v: %d interfaces, want %d", c.isolated, len(x.Devices.Interfaces), c.want)
		}
	}
}
