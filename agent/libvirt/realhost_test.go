//go:build linux

package libvirt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/cloudinit"
	"github.com/yunchi/yunchi/internal/libvirthost"
)

// realHost starts a private libvirtd and opens a driver on it that keeps
// its pool and console logs in the test's temp dirs.
func realHost(t *testing.T, ctx context.Context) (*Driver, Options) {
	t.Helper()
	if why := libvirthost.Available(); why != "" {
		t.Skip(why)
	}
	h, err := libvirthost.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Stop(); err != nil {
			t.Error(err)
		}
	})
	o := Options{DomainType: "qemu", Pool: "yunchi", PoolDir: filepath.Join(t.TempDir(), "pool"), ConsoleLogDir: filepath.Join(t.TempDir(), "console")}
	d, err := OpenWithOptions(h.URI, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, o
}

// imageInfo is what qemu-img reads off a disk file.
type imageInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
}

func qemuImgInfo(t *testing.T, path string) imageInfo {
	t.Helper()
	// -U: the file may be open in a running QEMU.
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var info imageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	return info
}

// On a real libvirtd: the pool is made at PoolDir, a VM gets an empty
// 64 MiB qcow2 root disk and its seed ISO (the bytes cloudinit built,
// uploaded through libvirt), the domain XML libvirt holds is what was
// asked, the domain runs in QEMU (SeaBIOS, no OS) with its console logged,
// and Undefine removes the domain and both files.
func TestRealHostDefineStartUndefine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, o := realHost(t, ctx)

	f, err := d.NodeFacts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(o.PoolDir, &fs); err != nil {
		t.Fatalf("pool dir: %v", err)
	}
	if want := int64(fs.Blocks) * fs.Frsize; f.DiskBytes != want {
		t.Errorf("disk %d bytes, want the pool's file system, %d", f.DiskBytes, want)
	}

	spec := agent.DomainSpec{VMID: "3e0f6a52-6d0e-4b8e-8c1a-2f4a5b6c7d80", Project: "p", Name: "vm1", VCPUs: 1, MemoryBytes: 128 << 20,
		DiskBytes: 64 << 20, Seed: testSeed()}
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	rootPath := filepath.Join(o.PoolDir, rootVolumeName(spec.VMID))
	seedPath := filepath.Join(o.PoolDir, seedVolumeName(spec.VMID))
	vols := poolVolumes(t, d, "yunchi")
	if root := vols[rootVolumeName(spec.VMID)]; len(vols) != 2 || root.Target == nil || root.Target.Path != rootPath ||
		root.Capacity.Value != 64<<20 || root.Target.Format.Type != "qcow2" || root.BackingStore != nil {
		t.Fatalf("volumes %+v", vols)
	}
	if info := qemuImgInfo(t, rootPath); info.Format != "qcow2" || info.VirtualSize != 64<<20 || info.BackingFilename != "" {
		t.Errorf("root disk file: %+v", info)
	}
	// The seed file holds what cloudinit wrote (its ISO carries the time
	// it was made, so the files are looked for, not the whole image).
	iso, err := os.ReadFile(seedPath)
	if err != nil {
		t.Fatal(err)
	}
	files, err := cloudinit.Seed{InstanceID: spec.Seed.InstanceID, Hostname: spec.Seed.Hostname,
		SSHAuthorizedKeys: spec.Seed.SSHAuthorizedKeys, UserData: spec.Seed.UserData}.Files()
	if err != nil {
		t.Fatal(err)
	}
	if len(iso) != len(seedISO(t, spec.Seed)) || !bytes.Contains(iso, files[cloudinit.MetaDataFile]) ||
		!bytes.Contains(iso, files[cloudinit.UserDataFile]) || !bytes.Contains(bytes.ToLower(iso[16*2048:17*2048]), []byte(cloudinit.Label)) {
		t.Fatalf("seed file (%d bytes) is not the seed ISO", len(iso))
	}
	dev := Devices{RootPath: rootPath, SeedPath: seedPath, ConsoleLog: filepath.Join(o.ConsoleLogDir, domainName(spec.VMID)+".log")}
	checkDomain(t, definedXML(t, d, spec.VMID, lv.DOMAIN_XML_INACTIVE), "qemu", spec, dev)

	if err := d.Start(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	checkDomain(t, definedXML(t, d, spec.VMID, 0), "qemu", spec, dev)
	doms, err := d.ListDomains(ctx)
	if err != nil || len(doms) != 1 || doms[0].State != agent.StateRunning {
		t.Fatalf("domains %+v, %v", doms, err)
	}
	if _, err := os.Stat(dev.ConsoleLog); err != nil {
		t.Errorf("console log: %v", err)
	}
	// Defining the running VM again (an agent restarted) changes nothing.
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if vols := poolVolumes(t, d, "yunchi"); len(vols) != 2 {
		t.Fatalf("volumes after a second define: %+v", vols)
	}
	if err := d.Destroy(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	if err := d.Undefine(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{rootPath, seedPath} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after undefine: %v", p, err)
		}
	}
	if vols := poolVolumes(t, d, "yunchi"); len(vols) != 0 {
		t.Errorf("volumes after undefine: %+v", vols)
	}
}

// On a real libvirtd a VM with an image gets a qcow2 overlay whose backing
// file is the image, and it runs; a Define interrupted after making the
// root disk is completed by the next one; bad input leaves nothing.
func TestRealHostOverlayAndInterruptedDefine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, o := realHost(t, ctx)
	base := qemuImg(t, "qcow2", "64M")

	spec := agent.DomainSpec{VMID: "overlay", VCPUs: 1, MemoryBytes: 128 << 20, DiskBytes: 96 << 20, BaseImage: base, BaseFormat: "qcow2", Seed: testSeed()}
	rootPath := filepath.Join(o.PoolDir, rootVolumeName(spec.VMID))

	// Bad input first: the pool stays empty.
	for _, bad := range []agent.DomainSpec{
		{VMID: "overlay", VCPUs: 1, MemoryBytes: 128 << 20, DiskBytes: 32 << 20, BaseImage: base, BaseFormat: "qcow2"},
		{VMID: "overlay", VCPUs: 1, MemoryBytes: 128 << 20, DiskBytes: 96 << 20, BaseImage: base + ".missing", BaseFormat: "qcow2"},
	} {
		if err := d.Define(ctx, bad); err == nil {
			t.Fatalf("%+v accepted", bad)
		}
	}
	if vols := poolVolumes(t, d, "yunchi"); len(vols) != 0 {
		t.Fatalf("bad input left volumes %+v", vols)
	}

	// A Define that died after the root disk.
	plan, err := planDisks(spec)
	if err != nil {
		t.Fatal(err)
	}
	conn, _ := d.connect()
	pool, err := d.pool(conn, true)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Free()
	vol, created, err := ensureVolume(pool, plan.root)
	if err != nil || !created {
		t.Fatal(created, err)
	}
	key, _ := vol.GetKey()
	vol.Free()

	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	vols := poolVolumes(t, d, "yunchi")
	root := vols[rootVolumeName(spec.VMID)]
	if len(vols) != 2 || root.Key != key || root.Capacity.Value != 96<<20 ||
		root.BackingStore == nil || root.BackingStore.Path != base || root.BackingStore.Format == nil || root.BackingStore.Format.Type != "qcow2" {
		t.Fatalf("volumes %+v; root backing %+v", vols, root.BackingStore)
	}
	if info := qemuImgInfo(t, rootPath); info.Format != "qcow2" || info.VirtualSize != 96<<20 || info.BackingFilename != base || info.BackingFormat != "qcow2" {
		t.Errorf("overlay file: %+v", info)
	}
	if err := d.Start(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	// The running domain's disk carries its backing chain.
	live := definedXML(t, d, spec.VMID, 0)
	if disk := live.Devices.Disks[0]; disk.BackingStore == nil || disk.BackingStore.Source == nil || disk.BackingStore.Source.File == nil ||
		disk.BackingStore.Source.File.File != base {
		t.Errorf("live root disk backing store: %+v", disk.BackingStore)
	}
	if err := d.Destroy(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	if err := d.Undefine(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	if vols := poolVolumes(t, d, "yunchi"); len(vols) != 0 {
		t.Errorf("volumes after undefine: %+v", vols)
	}
	if _, err := os.Stat(base); err != nil {
		t.Errorf("the base image went with the overlay: %v", err)
	}
}
