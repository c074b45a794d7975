//go:build linux

package libvirt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/internal/libvirthost"
	"github.com/yunchi/yunchi/internal/tinyimage"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const mirrorDisk = 64 << 20

// mirrorSetup is one private host running a TCG guest whose root disk is
// a qcow2 overlay of a base image with known bytes, and a mirror export
// (the same-city host's side, on loopback) of the disk's size.
type mirrorSetup struct {
	d       *Driver
	h       *libvirthost.Host
	vmID    string
	exports *agent.MirrorExports
	target  MirrorTarget
	// want is the disk as the guest sees it: the base image's bytes and
	// every write since.
	want []byte
}

// newMirrorSetup starts the host and the guest: with booted, a guest
// booted from the tiny image; otherwise a guest with no OS (its firmware
// finds nothing to boot) on an image of known bytes.
func newMirrorSetup(t *testing.T, ctx context.Context, booted bool) *mirrorSetup {
	t.Helper()
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("mirrors need qemu-nbd, qemu-img and qemu-io (apt-get install qemu-utils)")
	}
	if why := tinyimage.Available(); booted && why != "" {
		t.Skip(why)
	}
	consoleDir := t.TempDir()
	d, h := startHostWith(t, ctx, Options{DomainType: "qemu", Network: NetworkNone, Pool: "yunchi", PoolDir: filepath.Join(t.TempDir(), "pool"),
		BackupDir: t.TempDir(), ConsoleLogDir: consoleDir})
	s := &mirrorSetup{d: d, h: h, vmID: "6c1f0e2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b"}

	spec := agent.DomainSpec{VMID: s.vmID, Project: "p", Name: "platinum", VCPUs: 1, MemoryBytes: 128 << 20,
		DiskBytes: mirrorDisk, Seed: &agent.Seed{InstanceID: "i-platinum", Hostname: "platinum"}}
	if booted {
		img, err := tinyimage.Build(ctx, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		spec.BaseImage, spec.BaseFormat = img, tinyimage.Format
	} else {
		// An image with data at its start, in its middle and at its
		// end, and holes between, written by qemu-io into the qcow2
		// file.
		spec.BaseImage, spec.BaseFormat = qemuImg(t, "qcow2", "64M"), "qcow2"
		for _, w := range []struct {
			pattern byte
			off, n  int64
		}{{0x5a, 0, 2 << 20}, {0x6b, 40 << 20, 1 << 20}, {0x7c, mirrorDisk - 128<<10, 128 << 10}} {
			if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %d %d", w.pattern, w.off, w.n), spec.BaseImage).CombinedOutput(); err != nil {
				t.Fatalf("qemu-io on the base image: %v: %s", err, out)
			}
		}
	}
	s.want = make([]byte, mirrorDisk)
	copy(s.want, rawImage(t, spec.BaseImage))

	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, s.vmID); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy(context.Background(), s.vmID) })
	if booted {
		console := filepath.Join(consoleDir, domainName(s.vmID)+".log")
		for {
			if b, _ := os.ReadFile(console); bytes.Contains(b, []byte(tinyimage.Marker+" hostname=platinum")) {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("the guest did not boot to its marker (%s): %v", console, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}

	lo, hi := freePorts(t, 2)
	var err error
	s.exports, err = agent.NewMirrorExports(agent.MirrorExportConfig{Dir: t.TempDir(), Host: "127.0.0.1", PortMin: lo, PortMax: hi})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.exports.Close() })
	if err := s.exports.Apply(ctx, []*yunchiv1.MirrorExport{{VmId: s.vmID, ExportName: "mirror-" + s.vmID, SizeBytes: mirrorDisk, SourceHost: "h1"}}); err != nil {
		t.Fatal(err)
	}
	addr, _ := s.exports.Address(s.vmID)
	s.target = MirrorTarget{Address: addr, Export: "mirror-" + s.vmID}
	return s
}

// freePorts returns n consecutive loopback ports free now.
func freePorts(t *testing.T, n int) (int, int) {
	t.Helper()
	for try := 0; try < 50; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		base := l.Addr().(*net.TCPAddr).Port
		l.Close()
		ok := base+n <= 65536
		for p := base; ok && p < base+n; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if ok = err == nil; ok {
				l.Close()
			}
		}
		if ok {
			return base, base + n - 1
		}
	}
	t.Fatal("no free ports")
	return 0, 0
}

// rawImage reads an image's guest-visible bytes.
func rawImage(t *testing.T, path string) []byte {
	t.Helper()
	b, err := libvirthost.FlatImage(path, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitMirroring polls MirrorStatus until the mirroring phase.
func waitMirroring(t *testing.T, ctx context.Context, d *Driver, vmID string) MirrorState {
	t.Helper()
	for {
		st, err := d.MirrorStatus(ctx, vmID)
		if err != nil {
			t.Fatal(err)
		}
		if st.Phase == MirrorMirroring {
			return st
		}
		if st.Phase == MirrorNone {
			t.Fatalf("the mirror job ended before its mirroring phase (%+v)", st)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no mirroring phase: %+v: %v", st, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// firstDiff says where two images first differ ("" if equal).
func firstDiff(got, want []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%d bytes, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Sprintf("byte %d is %#x, want %#x", i, got[i], want[i])
		}
	}
	return ""
}

// On a real libvirtd with a running TCG guest whose root disk is a qcow2
// overlay of an image: StartMirror to a qemu-nbd export (the export side,
// agent.MirrorExports, on loopback) reaches the mirroring phase; guest
// writes through the guest's virtio device (HMP qemu-io on its block
// backend) each return once acknowledged; QEMU is then killed with
// SIGKILL, no flush by anyone; the export's file, taken over, holds the
// whole disk as the guest saw it: the image's bytes (the backing chain
// flattened, and stale bytes the export had where the disk has holes
// zeroed), a write from before the mirror, one from its bulk copy, and
// every write acknowledged while mirroring, at its offset.
func TestMirrorSynchronousWritesSurviveKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	writesSurviveKill(t, ctx, newMirrorSetup(t, ctx, false))
}

// The same with a guest booted from the tiny image, a Linux guest whose
// virtio-blk driver runs the disk with its write cache on (a write
// completes once in the host's page cache), idle as it writes.
func TestMirrorSynchronousWritesSurviveKillBootedGuest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	s := newMirrorSetup(t, ctx, true)
	if mode := diskCacheMode(t, s.d, s.vmID); mode != "writeback" {
		t.Fatalf("the booted guest's root disk has cache mode %q, want writeback", mode)
	}
	writesSurviveKill(t, ctx, s)
}

// diskCacheMode is QEMU's cache mode of the root disk's device (HMP info
// block): "writeback" when the device's write cache is on.
func diskCacheMode(t *testing.T, d *Driver, vmID string) string {
	t.Helper()
	alias := ""
	for _, disk := range definedXML(t, d, vmID, 0).Devices.Disks {
		if disk.Target != nil && disk.Target.Dev == rootTarget && disk.Alias != nil {
			alias = disk.Alias.Name
		}
	}
	var out string
	err := d.withDomain(vmID, func(dom *lv.Domain) error {
		var err error
		out, err = dom.QemuMonitorCommand("info block", lv.DOMAIN_QEMU_MONITOR_COMMAND_HMP)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	attached := false
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 0:
		case !strings.HasPrefix(l, " "):
			attached = false
		case len(f) >= 3 && f[0] == "Attached" && f[1] == "to:":
			attached = strings.HasSuffix(f[2], "/"+alias+"/virtio-backend")
		case attached && len(f) >= 3 && f[0] == "Cache" && f[1] == "mode:":
			return strings.Join(f[2:], " ")
		}
	}
	t.Fatalf("no cache mode of %s in info block:\n%s", alias, out)
	return ""
}

func writesSurviveKill(t *testing.T, ctx context.Context, s *mirrorSetup) {
	const kib, mib = 1 << 10, 1 << 20
	guestWrite(t, s.d, s.vmID, 0x11, 4*mib, 1*mib, s.want) // on the overlay before the mirror

	// Stale bytes in the export (a mirror of an earlier run) where the
	// disk has holes: the copy must zero them.
	exportFile := s.exports.Status()[0].Path
	f, err := os.OpenFile(exportFile, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{30 * mib, 60 * mib} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, 64*kib), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	begun := time.Now()
	if err := s.d.StartMirror(ctx, s.vmID, s.target); err != nil {
		t.Fatal(err)
	}
	guestWrite(t, s.d, s.vmID, 0x22, 8*mib, 256*kib, s.want) // while copying (or just after)
	st := waitMirroring(t, ctx, s.d, s.vmID)
	t.Logf("mirroring %v after StartMirror: %+v", time.Since(begun).Round(time.Millisecond), st)
	if st.Target != s.target || st.Cur != st.End || st.End <= 0 {
		t.Fatalf("mirror state %+v, want target %+v and cur == end", st, s.target)
	}
	// The same target again: left as it is.
	if err := s.d.StartMirror(ctx, s.vmID, s.target); err != nil {
		t.Fatalf("StartMirror again: %v", err)
	}

	// Writes the guest sees completed, small and large, overwriting the
	// image's data, the overlay's and holes, the disk's last block.
	writes := []struct {
		pattern byte
		off, n  int64
	}{
		{0xa1, 0, 4 * kib},
		{0xa2, 1*mib + 512, 512},
		{0xa3, 4*mib + 64*kib, 64 * kib},
		{0xa4, 20 * mib, 1 * mib},
		{0xa5, 40*mib + 4*kib, 8 * kib},
		{0xa6, mirrorDisk - 4*kib, 4 * kib},
	}
	for i := 0; i < 40; i++ { // and many 4 KiB ones, the last just before the kill
		writes = append(writes, struct {
			pattern byte
			off, n  int64
		}{byte(0xb0 + i%16), 48*mib + int64(i)*12*kib, 4 * kib})
	}
	for _, w := range writes {
		guestWrite(t, s.d, s.vmID, w.pattern, w.off, w.n, s.want)
	}
	pid := qemuPid(t, s.h, s.vmID)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for libvirthost.Running(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU %d still running 30 s after SIGKILL", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.d.Destroy(ctx, s.vmID) // libvirt may still be cleaning up

	path, err := s.exports.Takeover(s.vmID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The copy wrote the disk's holes as holes.
	var fst syscall.Stat_t
	if err := syscall.Stat(path, &fst); err != nil || fst.Blocks*512 > 32<<20 {
		t.Errorf("the export's file: %d bytes allocated (%v), want it sparse (the disk has under 32 MiB of data)", fst.Blocks*512, err)
	}
	for _, w := range writes {
		if !bytes.Equal(got[w.off:w.off+w.n], bytes.Repeat([]byte{w.pattern}, int(w.n))) {
			t.Errorf("the acknowledged write of %#x at %d+%d is not in the mirror", w.pattern, w.off, w.n)
		}
	}
	if diff := firstDiff(got, s.want); diff != "" {
		t.Fatalf("the mirror is not the disk the guest saw: %s", diff)
	}
}

// The export's qemu-nbd dies while mirroring: libvirt 9.0 gives QEMU's
// NBD client no reconnect delay, so the next guest write completes on the
// local disk only and QEMU ends the job; MirrorStatus says so ("none": the
// VM is not protected from then on). The export's host has started
// qemu-nbd again meanwhile, and a new StartMirror copies the disk again,
// that write included. StopMirror then ends the job without a pivot: the
// VM keeps its own disk and writes on.
func TestMirrorEndsWhenExportDiesAndStarts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := newMirrorSetup(t, ctx, false)
	if err := s.d.StartMirror(ctx, s.vmID, s.target); err != nil {
		t.Fatal(err)
	}
	waitMirroring(t, ctx, s.d, s.vmID)
	guestWrite(t, s.d, s.vmID, 0x31, 1<<20, 4096, s.want)
	before := s.exports.Status()[0]
	if err := syscall.Kill(before.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	guestWrite(t, s.d, s.vmID, 0x32, 2<<20, 4096, s.want)
	for {
		st, err := s.d.MirrorStatus(ctx, s.vmID)
		if err != nil {
			t.Fatal(err)
		}
		if st.Phase == MirrorNone {
			break
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("the mirror job still runs 30 s after its export died: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the mirror job ended %v after its export was killed", time.Since(killed).Round(time.Millisecond))
	for {
		if now := s.exports.Status()[0]; now.Pid != 0 && now.Pid != before.Pid {
			if now.Restarts != 1 || now.Address != before.Address {
				t.Fatalf("export after its restart: %+v (before %+v)", now, before)
			}
			break
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("the export was not started again: %+v", s.exports.Status()[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.d.StartMirror(ctx, s.vmID, s.target); err != nil {
		t.Fatal(err)
	}
	waitMirroring(t, ctx, s.d, s.vmID)
	guestWrite(t, s.d, s.vmID, 0x33, 3<<20, 4096, s.want)

	if err := s.d.StopMirror(ctx, s.vmID); err != nil {
		t.Fatal(err)
	}
	if st, err := s.d.MirrorStatus(ctx, s.vmID); err != nil || st.Phase != MirrorNone {
		t.Fatalf("after StopMirror: %+v, %v", st, err)
	}
	if err := s.d.StopMirror(ctx, s.vmID); err != nil {
		t.Fatalf("a second StopMirror: %v", err)
	}
	// No pivot: the domain's disk is still its own file.
	x := definedXML(t, s.d, s.vmID, 0)
	if disk := x.Devices.Disks[0]; disk.Source == nil || disk.Source.File == nil || disk.Mirror != nil {
		t.Fatalf("root disk after StopMirror: %+v", disk)
	}
	atStop := bytes.Clone(s.want)
	guestWrite(t, s.d, s.vmID, 0x34, 4<<20, 4096, s.want) // the VM writes on, unmirrored
	if err := s.d.Destroy(ctx, s.vmID); err != nil {
		t.Fatal(err)
	}
	path, err := s.exports.Takeover(s.vmID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := firstDiff(got, atStop); diff != "" {
		t.Fatalf("the export is not the disk as it was when the mirror stopped: %s", diff)
	}
	if flat := rawImage(t, filepath.Join(s.d.poolDir, rootVolumeName(s.vmID))); !bytes.Equal(flat, s.want) {
		t.Fatalf("the VM's own disk after the mirror stopped: %s", firstDiff(flat, s.want))
	}
}

// Bad input gets a one-line error and changes nothing: a malformed target,
// an export nobody serves, one of another size, a VM not running, a VM
// that does not exist, a second mirror to another target, a mirror during
// a backup (and a backup during a mirror: a disk has one block job at a
// time on libvirt 9.0).
func TestMirrorBadInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := newMirrorSetup(t, ctx, false)
	closed, _ := freePorts(t, 1)
	noMirror := func(what string) {
		t.Helper()
		if st, err := s.d.MirrorStatus(ctx, s.vmID); err != nil || st.Phase != MirrorNone {
			t.Fatalf("after %s: %+v, %v", what, st, err)
		}
	}
	for _, c := range []struct {
		target MirrorTarget
		want   string
	}{
		{MirrorTarget{Address: "127.0.0.1", Export: "x"}, "want host:port"},
		{MirrorTarget{Address: "127.0.0.1:0", Export: "x"}, "port"},
		{MirrorTarget{Address: "127.0.0.1:70000", Export: "x"}, "port"},
		{MirrorTarget{Address: "a b:10809", Export: "x"}, "host"},
		{MirrorTarget{Address: ":10809", Export: "x"}, "host"},
		{MirrorTarget{Address: s.target.Address, Export: ""}, "export name"},
		{MirrorTarget{Address: s.target.Address, Export: "a\nb"}, "export name"},
		{MirrorTarget{Address: fmt.Sprintf("127.0.0.1:%d", closed), Export: s.target.Export}, "not reachable"},
		{MirrorTarget{Address: s.target.Address, Export: "other"}, "not reachable"},
	} {
		err := s.d.StartMirror(ctx, s.vmID, c.target)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("target %+v: %v, want one line with %q", c.target, err, c.want)
		}
		noMirror(fmt.Sprintf("target %+v", c.target))
	}
	// An export of another size.
	if err := s.exports.Apply(ctx, []*yunchiv1.MirrorExport{
		{VmId: s.vmID, ExportName: s.target.Export, SizeBytes: mirrorDisk},
		{VmId: "small", ExportName: "small", SizeBytes: 32 << 20},
	}); err != nil {
		t.Fatal(err)
	}
	small, _ := s.exports.Address("small")
	if err := s.d.StartMirror(ctx, s.vmID, MirrorTarget{Address: small, Export: "small"}); err == nil || !strings.Contains(err.Error(), "has 33554432 bytes, the disk 67108864") {
		t.Errorf("an export of another size: %v", err)
	}
	noMirror("an export of another size")
	if err := s.d.StartMirror(ctx, "no-such-vm", s.target); !errors.Is(err, agent.ErrDomainNotFound) {
		t.Errorf("an unknown VM: %v", err)
	}

	// A second mirror to another target is refused; the first goes on.
	if err := s.d.StartMirror(ctx, s.vmID, s.target); err != nil {
		t.Fatal(err)
	}
	waitMirroring(t, ctx, s.d, s.vmID)
	if err := s.d.StartMirror(ctx, s.vmID, MirrorTarget{Address: small, Export: "small"}); err == nil || !strings.Contains(err.Error(), "already has a block copy job") {
		t.Errorf("a second mirror: %v", err)
	}
	if st, err := s.d.MirrorStatus(ctx, s.vmID); err != nil || st.Phase != MirrorMirroring || st.Target != s.target {
		t.Fatalf("the first mirror after a second was refused: %+v, %v", st, err)
	}

	// A backup and a mirror exclude each other: on libvirt 9.0 a disk has
	// one block job at a time.
	if _, err := begin(t, ctx, s.d, agent.BackupRequest{VMID: s.vmID, Checkpoint: "cp1"}); err == nil {
		t.Error("a backup began while the disk is mirrored")
	}
	if err := s.d.StopMirror(ctx, s.vmID); err != nil {
		t.Fatal(err)
	}
	noMirror("StopMirror")
	v, err := begin(t, ctx, s.d, agent.BackupRequest{VMID: s.vmID, Checkpoint: "cp1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.d.StartMirror(ctx, s.vmID, s.target); err == nil || !strings.Contains(err.Error(), "has a backup job running") {
		t.Errorf("a mirror during a backup: %v", err)
	}
	noMirror("a mirror refused during a backup")
	if err := s.d.StopMirror(ctx, s.vmID); err != nil {
		t.Errorf("StopMirror during a backup: %v", err)
	}
	p := make([]byte, 4096)
	if err := v.ReadAt(ctx, "root", p, 0); err != nil || p[0] != 0x5a {
		t.Errorf("the backup after StopMirror: %v, first byte %#x", err, p[0])
	}
	if err := v.Close(ctx, false); err != nil {
		t.Fatal(err)
	}

	// Not running.
	if err := s.d.Destroy(ctx, s.vmID); err != nil {
		t.Fatal(err)
	}
	noMirror("destroy")
	err = s.d.StartMirror(ctx, s.vmID, s.target)
	if err == nil || !strings.Contains(err.Error(), "not running (shut off)") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("a VM not running: %v", err)
	}
	if err := s.d.StopMirror(ctx, s.vmID); err != nil {
		t.Fatalf("StopMirror of a VM not running: %v", err)
	}
	// The domain's definition carries no mirror.
	if x := definedXML(t, s.d, s.vmID, lv.DOMAIN_XML_INACTIVE); x.Devices.Disks[0].Mirror != nil || x.Devices.Disks[0].Source.File == nil {
		t.Fatalf("the persistent definition changed: %+v", x.Devices.Disks[0])
	}
}
