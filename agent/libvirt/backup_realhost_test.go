//go:build linux

package libvirt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/internal/libvirthost"
)

// backupHost starts a private libvirtd and opens a TCG driver on it whose
// pool and backup dir are the test's.
func backupHost(t *testing.T, ctx context.Context) (*Driver, Options, string) {
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
	o := Options{DomainType: "qemu", Pool: "yunchi", PoolDir: filepath.Join(t.TempDir(), "pool"), Network: NetworkNone, BackupDir: t.TempDir()}
	d, err := OpenWithOptions(h.URI, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, o, h.URI
}

// guestWrite writes n bytes of pattern at off into the running guest's
// root disk through QEMU itself (HMP qemu-io on the disk's device), so
// that QEMU's dirty bitmaps see the write as they see the guest's; and
// records it in want (nil: not recorded).
func guestWrite(t *testing.T, d *Driver, vmID string, pattern byte, off, n int64, want []byte) {
	t.Helper()
	err := d.withDomain(vmID, func(dom *lv.Domain) error {
		x := definedXML(t, d, vmID, 0)
		alias := ""
		for _, disk := range x.Devices.Disks {
			if disk.Target != nil && disk.Target.Dev == rootTarget && disk.Alias != nil {
				alias = disk.Alias.Name
			}
		}
		if alias == "" {
			return fmt.Errorf("the root disk has no device alias")
		}
		cmd := fmt.Sprintf(`qemu-io -d %s/virtio-backend "write -P %d %d %d"`, alias, pattern, off, n)
		out, err := dom.QemuMonitorCommand(cmd, lv.DOMAIN_QEMU_MONITOR_COMMAND_HMP)
		if err != nil {
			return err
		}
		if out != "" { // qemu-io itself prints to QEMU's log: HMP prints only its own errors
			return fmt.Errorf("%s: %s", cmd, oneLine(out))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want != nil {
		copy(want[off:off+n], bytes.Repeat([]byte{pattern}, int(n)))
	}
}

func checkpoints(t *testing.T, d *Driver, vmID string) []string {
	t.Helper()
	var names []string
	err := d.withDomain(vmID, func(dom *lv.Domain) error {
		cps, err := dom.ListAllCheckpoints(0)
		if err != nil {
			return err
		}
		for i := range cps {
			n, _ := cps[i].GetName()
			names = append(names, n)
			cps[i].Free()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// begin opens a view that is closed (not kept) at cleanup if the test
// ends first: its qemu-nbd is the test process's child, not the host's.
func begin(t *testing.T, ctx context.Context, d *Driver, req agent.BackupRequest) (agent.BackupView, error) {
	t.Helper()
	v, err := d.BeginBackup(ctx, req)
	if err == nil {
		t.Cleanup(func() { v.Close(context.Background(), false) })
	}
	return v, err
}

func changed(t *testing.T, ctx context.Context, v agent.BackupView) []agent.Extent {
	t.Helper()
	ext, err := v.Changed(ctx, "root")
	if err != nil {
		t.Fatal(err)
	}
	return ext
}

func extents(pairs ...int64) []agent.Extent {
	var out []agent.Extent
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, agent.Extent{Offset: pairs[i], Length: pairs[i+1]})
	}
	return out
}

// downloadVolume reads a volume's file through a libvirt stream.
func downloadVolume(t *testing.T, d *Driver, name string, size int64) []byte {
	t.Helper()
	conn, err := d.connect()
	if err != nil {
		t.Fatal(err)
	}
	pool, err := d.pool(conn, false)
	if err != nil || pool == nil {
		t.Fatalf("pool: %v", err)
	}
	defer pool.Free()
	vol, err := pool.LookupStorageVolByName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Free()
	st, err := conn.NewStream(0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Free()
	if err := vol.Download(st, 0, uint64(size), 0); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 0, size)
	buf := make([]byte, 1<<20)
	for {
		n, err := st.Recv(buf)
		if n == 0 || errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, buf[:n]...)
	}
	if err := st.Finish(); err != nil {
		t.Fatal(err)
	}
	return out
}

// On a real libvirtd with a running TCG guest: a full backup view reads
// every byte as written and makes a checkpoint; after two small writes an
// incremental view lists exactly their 64 KiB bitmap granules and reads
// the new bytes; a guest write after the view began does not change what
// it reads; a view not kept leaves the previous checkpoint in place; a
// backup job left by an agent that stopped is ended by the next one; a
// restore builds a raw volume byte for byte (and its views are full, with
// no checkpoint); a shut-off domain is read through qemu-nbd, incremental
// from its checkpoint's bitmap; Undefine goes with checkpoints.
func TestRealHostBackupIncrementalRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	d, o, uri := backupHost(t, ctx)
	const size = 64 << 20
	const kib, mib = 1 << 10, 1 << 20
	spec := agent.DomainSpec{VMID: "8d0c2f4e-1b3a-4c5d-9e6f-7a8b9c0d1e2f", Project: "p", Name: "src", VCPUs: 1, MemoryBytes: 128 << 20,
		DiskBytes: size, Seed: testSeed()}
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy(context.Background(), spec.VMID) })
	want := make([]byte, size)
	guestWrite(t, d, spec.VMID, 0x11, 0, 1*mib, want)
	guestWrite(t, d, spec.VMID, 0x22, 24*mib, 192*kib, want)
	guestWrite(t, d, spec.VMID, 0x33, size-64*kib, 64*kib, want)

	// 1. Full (the Since checkpoint does not exist), making cp1.
	start := time.Now()
	v, err := begin(t, ctx, d, agent.BackupRequest{VMID: spec.VMID, Since: "gone", Checkpoint: "cp1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("full view begun in %v", time.Since(start))
	if v.Incremental() || v.Checkpoint() != "cp1" || v.Disks()[0] != (agent.BackupDisk{Name: "root", SizeBytes: size}) {
		t.Fatalf("incremental %v, checkpoint %q, disks %+v", v.Incremental(), v.Checkpoint(), v.Disks())
	}
	ext := changed(t, ctx, v)
	var data int64
	for _, e := range ext {
		data += e.Length
	}
	for _, w := range extents(0, 1*mib, 24*mib, 192*kib, size-64*kib, 64*kib) {
		if !slices.ContainsFunc(ext, func(e agent.Extent) bool { return e.Offset <= w.Offset && e.Offset+e.Length >= w.Offset+w.Length }) {
			t.Errorf("written range %+v not in the data extents %v", w, ext)
		}
	}
	if data > 2*mib {
		t.Errorf("data extents %v: %d bytes, more than was written", ext, data)
	}
	start = time.Now()
	if got := readView(t, ctx, v); !bytes.Equal(got, want) {
		t.Fatal("the full view's bytes differ from what the guest wrote")
	}
	t.Logf("read 64 MiB in %v", time.Since(start))
	if err := v.Close(ctx, true); err != nil {
		t.Fatal(err)
	}
	if cps := checkpoints(t, d, spec.VMID); !slices.Equal(cps, []string{"cp1"}) {
		t.Fatalf("checkpoints %v after the first backup", cps)
	}

	// 2. Two small writes; incremental from cp1, making cp2.
	guestWrite(t, d, spec.VMID, 0x55, 10*mib+4*kib, 4*kib, want)
	guestWrite(t, d, spec.VMID, 0x66, 30*mib, 100*kib, want)
	v, err = begin(t, ctx, d, agent.BackupRequest{VMID: spec.VMID, Since: "cp1", Checkpoint: "cp2"})
	if err != nil {
		t.Fatal(err)
	}
	if !v.Incremental() || v.Checkpoint() != "cp2" {
		t.Fatalf("incremental %v, checkpoint %q", v.Incremental(), v.Checkpoint())
	}
	if ext := changed(t, ctx, v); fmt.Sprint(ext) != fmt.Sprint(extents(10*mib, 64*kib, 30*mib, 128*kib)) {
		t.Errorf("changed %v, want the two written ranges in 64 KiB granules", ext)
	}
	atCP2 := slices.Clone(want)
	// The guest writes on; the view does not see it.
	guestWrite(t, d, spec.VMID, 0x77, 10*mib, 8*kib, want)
	for _, r := range extents(10*mib, 64*kib, 30*mib, 128*kib) {
		p := make([]byte, r.Length)
		if err := v.ReadAt(ctx, "root", p, r.Offset); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, atCP2[r.Offset:r.Offset+r.Length]) {
			t.Fatalf("changed range %+v reads other bytes than at the view's point in time", r)
		}
	}
	if got := readView(t, ctx, v); !bytes.Equal(got, atCP2) {
		t.Fatal("the incremental view is not the disk at its point in time")
	}
	if err := v.Close(ctx, true); err != nil {
		t.Fatal(err)
	}
	if cps := checkpoints(t, d, spec.VMID); !slices.Equal(cps, []string{"cp2"}) {
		t.Fatalf("checkpoints %v: want cp2 only (cp1 deleted when cp2 was kept)", cps)
	}

	// 3. A view not kept: its checkpoint goes, cp2 stays.
	v, err = begin(t, ctx, d, agent.BackupRequest{VMID: spec.VMID, Since: "cp2", Checkpoint: "cp3"})
	if err != nil {
		t.Fatal(err)
	}
	if ext := changed(t, ctx, v); fmt.Sprint(ext) != fmt.Sprint(extents(10*mib, 64*kib)) {
		t.Errorf("changed since cp2: %v", ext)
	}
	if _, err := d.BeginBackup(ctx, agent.BackupRequest{VMID: spec.VMID}); err == nil {
		t.Error("a second view of the same VM opened")
	}
	if err := v.Close(ctx, false); err != nil {
		t.Fatal(err)
	}
	if cps := checkpoints(t, d, spec.VMID); !slices.Equal(cps, []string{"cp2"}) {
		t.Fatalf("checkpoints %v after a view not kept", cps)
	}

	// 4. An agent that stopped with a view open: its backup job stays in
	// libvirt; the next agent's view ends it.
	stale, err := begin(t, ctx, d, agent.BackupRequest{VMID: spec.VMID, Since: "cp2", Checkpoint: "cp4"})
	if err != nil {
		t.Fatal(err)
	}
	d2, err := OpenWithOptions(uri, o)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	v, err = begin(t, ctx, d2, agent.BackupRequest{VMID: spec.VMID, Since: "cp2", Checkpoint: "cp5"})
	if err != nil {
		t.Fatalf("backup after a stale job: %v", err)
	}
	if !v.Incremental() {
		t.Error("not incremental from cp2")
	}
	if err := v.Close(ctx, false); err != nil {
		t.Fatal(err)
	}
	stale.Close(ctx, false) // its job is gone; its checkpoint goes
	if cps := checkpoints(t, d, spec.VMID); !slices.Equal(cps, []string{"cp2"}) {
		t.Fatalf("checkpoints %v after the stale job", cps)
	}

	// 5. Restore the point of cp2 as a new VM: a raw volume, byte for byte.
	rspec := agent.DomainSpec{VMID: "restored", Project: "p", Name: "restored", VCPUs: 1, MemoryBytes: 128 << 20,
		DiskBytes: size, RootSource: &memSource{b: atCP2, piece: 4 << 20}}
	start = time.Now()
	if err := d.Define(ctx, rspec); err != nil {
		t.Fatal(err)
	}
	t.Logf("restored 64 MiB in %v", time.Since(start))
	vols := poolVolumes(t, d, "yunchi")
	if r := vols[rootVolumeName(rspec.VMID)]; r.Target == nil || r.Target.Format == nil || r.Target.Format.Type != "raw" || r.BackingStore != nil {
		t.Errorf("restored volume %+v", r)
	}
	if got := downloadVolume(t, d, rootVolumeName(rspec.VMID), size); !bytes.Equal(got, atCP2) {
		t.Fatal("the restored volume differs from the source")
	}
	if disk := definedXML(t, d, rspec.VMID, lv.DOMAIN_XML_INACTIVE).Devices.Disks[0]; disk.Driver.Type != "raw" || disk.BackingStore != nil && disk.BackingStore.Source != nil {
		t.Errorf("restored root disk %+v", disk.Driver)
	}
	// Defined again without its source (the agent restarted): still raw.
	rspec.RootSource = nil
	if err := d.Define(ctx, rspec); err != nil {
		t.Fatal(err)
	}
	if disk := definedXML(t, d, rspec.VMID, lv.DOMAIN_XML_INACTIVE).Devices.Disks[0]; disk.Driver.Type != "raw" {
		t.Errorf("redefined restored root disk is %s", disk.Driver.Type)
	}
	if err := d.Start(ctx, rspec.VMID); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy(context.Background(), rspec.VMID) })
	v, err = begin(t, ctx, d, agent.BackupRequest{VMID: rspec.VMID, Checkpoint: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Incremental() || v.Checkpoint() != "" {
		t.Errorf("raw disk view: incremental %v, checkpoint %q; want full, none", v.Incremental(), v.Checkpoint())
	}
	if got := readView(t, ctx, v); !bytes.Equal(got, atCP2) {
		t.Error("the restored VM's view differs from the source")
	}
	if err := v.Close(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, rspec.VMID); err != nil {
		t.Fatal(err)
	}
	if err := d.Undefine(ctx, rspec.VMID); err != nil {
		t.Fatal(err)
	}

	// 6. Shut off: qemu-nbd on the file, incremental from cp2's bitmap,
	// which it carries forward.
	if err := d.Destroy(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	v, err = begin(t, ctx, d, agent.BackupRequest{VMID: spec.VMID, Since: "cp2", Checkpoint: "cp6"})
	if err != nil {
		t.Fatal(err)
	}
	if !v.Incremental() || v.Checkpoint() != "cp2" {
		t.Errorf("shut-off view: incremental %v, checkpoint %q; want incremental, cp2", v.Incremental(), v.Checkpoint())
	}
	if ext := changed(t, ctx, v); fmt.Sprint(ext) != fmt.Sprint(extents(10*mib, 64*kib)) {
		t.Errorf("changed since cp2 (shut off): %v", ext)
	}
	if got := readView(t, ctx, v); !bytes.Equal(got, want) {
		t.Fatal("the shut-off view differs from the disk")
	}
	if err := d.Start(ctx, spec.VMID); err == nil {
		t.Error("the domain started while its disk was being read")
		d.Destroy(ctx, spec.VMID)
	} else {
		t.Logf("start during a shut-off view: %v", err)
	}
	if err := v.Close(ctx, true); err != nil {
		t.Fatal(err)
	}
	if cps := checkpoints(t, d, spec.VMID); !slices.Equal(cps, []string{"cp2"}) {
		t.Fatalf("checkpoints %v after the shut-off view", cps)
	}
	// A shut-off domain without its checkpoint: full, none made.
	v, err = begin(t, ctx, d, agent.BackupRequest{VMID: spec.VMID, Checkpoint: "cp7"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Incremental() || v.Checkpoint() != "" {
		t.Errorf("shut-off full view: incremental %v, checkpoint %q", v.Incremental(), v.Checkpoint())
	}
	v.Close(ctx, true)

	// 7. Undefine takes the checkpoint metadata along.
	if err := d.Undefine(ctx, spec.VMID); err != nil {
		t.Fatal(err)
	}
	if vols := poolVolumes(t, d, "yunchi"); len(vols) != 0 {
		t.Errorf("volumes after undefine: %v", vols)
	}
	if entries, _ := os.ReadDir(o.BackupDir); len(entries) != 0 {
		t.Errorf("backup dir not empty: %v", entries)
	}
}
