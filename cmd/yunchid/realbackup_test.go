//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/apitest"
	"github.com/yunchi/yunchi/internal/qemuhost"
	"github.com/yunchi/yunchi/internal/tinyimage"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// The incremental backup path on real QEMU (issue 11), through the whole
// stack: `yunchid dev --real-hosts 2` in process (qemu-1 in center a1,
// qemu-2 in a2), a tiny guest protected to a2 and b1. The first backups
// are full; a write made by the guest itself (dd on its console) moves
// exactly the chunk it touched to each center, found through QEMU's dirty
// bitmap since that center's checkpoint; a backup with no writes reads
// nothing; the point restored on the other host boots and its disk is the
// source's byte for byte.
func TestRealHostIncrementalBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real QEMU guests")
	}
	if why := qemuhost.Available(); why != "" {
		t.Skip(why)
	}
	if why := tinyimage.Available(); why != "" {
		t.Skip(why)
	}
	begun := time.Now()
	c, hosts := startRealDRCluster(t)
	t.Logf("dev cluster with 2 real hosts ready in %s", time.Since(begun).Round(time.Millisecond))
	hostOf := func(vm *yunchiv1.VM) *qemuhost.Host {
		t.Helper()
		for _, h := range hosts {
			if h.ID == vm.HostId {
				return h
			}
		}
		t.Fatalf("VM %s on %q, not a real host", vm.Name, vm.HostId)
		return nil
	}

	// 1. A tiny guest in a1 (on qemu-1), its disk larger than the image:
	// the write below lands past the image's filesystem.
	const diskSize = 64 * mib
	step := time.Now()
	if _, err := c.vms.CreateVM(c.ctx, &yunchiv1.CreateVMRequest{Name: "rb1", Image: devcluster.TinyImage, Vcpus: 1, Memory: "256MiB",
		Disk: "64MiB", Center: "a1"}); err != nil {
		t.Fatal(err)
	}
	src := waitVMRunning(t, c, "rb1")
	h1 := hostOf(src)
	t.Logf("rb1 running on %s after %s", h1.ID, time.Since(step).Round(time.Millisecond))
	waitConsoleLog(t, h1, src, tinyimage.Marker+" hostname=rb1")
	t.Logf("rb1 ready after %s", time.Since(step).Round(time.Millisecond))
	img, err := yunchiv1.NewImageServiceClient(c.conn).GetImage(c.ctx, &yunchiv1.GetImageRequest{Name: devcluster.TinyImage})
	if err != nil {
		t.Fatal(err)
	}
	// The write: 1 MiB at 40 MiB, inside chunk 10, past the image.
	const writeOff, writeLen = 40 * mib, 1 * mib
	if img.VirtualSizeBytes > writeOff {
		t.Fatalf("the tiny image is %d bytes: the write at %d would overwrite it", img.VirtualSizeBytes, writeOff)
	}
	touched := int64((writeOff+writeLen-1)/(4*mib) - writeOff/(4*mib) + 1)

	// 2. Protected to a2 and b1, hourly (the schedule stays out of the
	// way): the first backups start at once and are full.
	step = time.Now()
	if _, err := c.prot.CreatePolicy(c.ctx, &yunchiv1.CreatePolicyRequest{Policy: &yunchiv1.Policy{Name: "realbk",
		Targets: []*yunchiv1.PolicyTarget{
			{Center: "a2", IntervalSeconds: 3600, Retention: &yunchiv1.Retention{KeepLast: 10}},
			{Center: "b1", IntervalSeconds: 3600, Retention: &yunchiv1.Retention{KeepLast: 10}},
		}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.prot.ProtectVM(c.ctx, &yunchiv1.ProtectVMRequest{Name: "rb1", Policy: "realbk"}); err != nil {
		t.Fatal(err)
	}
	const chunks = diskSize / (4 * mib)
	firsts := map[string]*yunchiv1.RestorePoint{}
	for _, center := range []string{"a2", "b1"} {
		p := waitPoint(t, c, "rb1", center, nil)
		d := p.Disks[0]
		if p.Incremental || p.HostId != h1.ID || len(p.Disks) != 1 || d.Chunks != chunks || d.SizeBytes != diskSize || d.ReadChunks <= 0 || d.ReadChunks > chunks ||
			d.NewChunks <= 0 || d.NewChunks > d.ReadChunks+1 {
			t.Fatalf("first point in %s, want full with data chunks read: %v", center, p)
		}
		firsts[center] = p
	}
	t.Logf("first (full) points in a2 and b1 after %s: read %d of %d chunks", time.Since(step).Round(time.Millisecond), firsts["a2"].Disks[0].ReadChunks, chunks)

	// 3. The guest writes random data into its own disk (it runs from its
	// initramfs: the disk is not mounted), syncs, and says what it wrote.
	step = time.Now()
	cmd := fmt.Sprintf("dd if=/dev/urandom of=/dev/vda bs=65536 count=%d seek=%d conv=fsync 2>/dev/null && sync && echo wrote-$((6*7)) $(dd if=/dev/vda bs=65536 count=%d skip=%d 2>/dev/null | sha256sum)",
		writeLen/65536, writeOff/65536, writeLen/65536, writeOff/65536)
	m := regexp.MustCompile(`wrote-42 ([0-9a-f]{64})`).FindStringSubmatch(guestConsole(t, c, "rb1", cmd, `wrote-42 [0-9a-f]{64}`))
	wroteSum := m[1]
	t.Logf("guest wrote %d bytes at %d (sha256 %s) in %s", writeLen, writeOff, wroteSum[:12], time.Since(step).Round(time.Millisecond))

	// 4. Incremental to each center: only the touched chunk is read and
	// sent. b1's checkpoint is not a2's: its backup finds the same write.
	step = time.Now()
	second := backupRealNow(t, c, "rb1", "a2")
	remote := backupRealNow(t, c, "rb1", "b1")
	for _, p := range []*yunchiv1.RestorePoint{second, remote} {
		d := p.Disks[0]
		if !p.Incremental || d.ReadChunks != touched || d.NewChunks != touched || d.NewBytes != touched*4*mib || d.Chunks != chunks {
			t.Fatalf("point in %s after a write touching %d chunk(s): want incremental, reading and sending only those: %v", p.Center, touched, p)
		}
		if d.ManifestSha256 == firsts[p.Center].Disks[0].ManifestSha256 {
			t.Fatalf("point in %s has the first point's manifest after a write", p.Center)
		}
	}
	// A third backup with no write in between: nothing to read, the same
	// disk (the same manifest).
	third := backupRealNow(t, c, "rb1", "a2")
	if d := third.Disks[0]; !third.Incremental || d.ReadChunks != 0 || d.NewChunks != 0 || d.ManifestSha256 != second.Disks[0].ManifestSha256 {
		t.Fatalf("third point, no write since the second: want incremental, reading nothing, same manifest: %v (second %v)", third, second)
	}
	t.Logf("incremental points (a2, b1, a2 again) in %s; %d, %d, %d ms each on the host", time.Since(step).Round(time.Millisecond),
		second.DurationMillis, remote.DurationMillis, third.DurationMillis)

	// 5. The second point restored in a2, on qemu-2: it boots (boot
	// loader and kernel came back whole) and its disk is the source's.
	step = time.Now()
	if _, err := c.bk.RestoreVM(c.ctx, &yunchiv1.RestoreVMRequest{Vm: "rb1", Point: second.Id, Center: "a2", As: "rb1-restored"}); err != nil {
		t.Fatal(err)
	}
	r := waitVMRunning(t, c, "rb1-restored")
	h2 := hostOf(r)
	t.Logf("restored VM running on %s after %s", h2.ID, time.Since(step).Round(time.Millisecond))
	if h2 == h1 || r.HostCenter != "a2" || r.RestoredFrom != second.Id {
		t.Fatalf("restored vm on %s in %s from %q, want on the other host, in a2, from %s", r.HostId, r.HostCenter, r.RestoredFrom, second.Id)
	}
	// The marker alone: a restored VM gets no cloud-init seed (it is no
	// image's new instance), so the tiny guest names itself "tiny".
	waitConsoleLog(t, h2, r, tinyimage.Marker)
	t.Logf("restored VM booted after %s", time.Since(step).Round(time.Millisecond))
	// The source's disk read as raw (the guest has not written since the
	// point: it is still at it), against the restored raw volume.
	srcRaw := filepath.Join(t.TempDir(), "rb1.raw")
	overlay := filepath.Join(h1.PoolDir, libvirt.DomainName(src.Id)+"-root")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", overlay, srcRaw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v: %s", overlay, err, out)
	}
	restored := filepath.Join(h2.PoolDir, libvirt.DomainName(r.Id)+"-root")
	if out, err := exec.Command("qemu-img", "info", "-U", "--output=json", restored).Output(); err != nil || !bytes.Contains(out, []byte(`"format": "raw"`)) {
		t.Fatalf("restored volume %s, want raw: %v %s", restored, err, out)
	}
	sameFile(t, srcRaw, restored)
	// And it holds what the guest wrote.
	if got := fileRangeSum(t, restored, writeOff, writeLen); got != wroteSum {
		t.Fatalf("restored disk at %d: sha256 %s, the guest wrote %s", writeOff, got, wroteSum)
	}
	// The restored guest reads the same from its own disk.
	out := guestConsole(t, c, "rb1-restored", fmt.Sprintf("echo read-$((6*7)) $(dd if=/dev/vda bs=65536 count=%d skip=%d 2>/dev/null | sha256sum)", writeLen/65536, writeOff/65536),
		`read-42 [0-9a-f]{64}`)
	if !strings.Contains(out, "read-42 "+wroteSum) {
		t.Fatalf("the restored guest reads other bytes at %d than were written (%s):\n%s", writeOff, wroteSum, out)
	}
	t.Logf("total %s", time.Since(begun).Round(time.Millisecond))
}

// startRealDRCluster starts `yunchid dev --real-hosts 2` (no simulated
// hosts; the sysadmin's token read from its output, the CLI's config left
// alone) and returns it with the real hosts.
func startRealDRCluster(t *testing.T) (*drCluster, []*qemuhost.Host) {
	t.Helper()
	dir := t.TempDir()
	addrs, rh, out := runDev(t, devcluster.Config{DataDir: dir, CacheDir: t.TempDir(), BasePort: freeBase(t), RealHosts: 2, NoLogin: true})
	return newDRCluster(t, dir, addrs, out), rh.Hosts()
}

// waitVMRunning waits up to 60 s for the VM to run; a failed VM fails the
// test at once, with its message.
func waitVMRunning(t *testing.T, c *drCluster, name string) *yunchiv1.VM {
	t.Helper()
	var vm *yunchiv1.VM
	apitest.Eventually(t, 60*time.Second, "vm "+name+" running", func() bool {
		v, err := c.vms.GetVM(c.ctx, &yunchiv1.GetVMRequest{Name: name, Consistent: true})
		if err != nil {
			return false
		}
		if v.Phase == yunchiv1.VMPhase_VM_PHASE_FAILED {
			t.Fatalf("vm %s failed: %s", name, v.Message)
		}
		vm = v
		return v.Phase == yunchiv1.VMPhase_VM_PHASE_RUNNING
	})
	return vm
}

// waitConsoleLog waits up to 90 s for the VM's serial console log on h to
// show want.
func waitConsoleLog(t *testing.T, h *qemuhost.Host, vm *yunchiv1.VM, want string) {
	t.Helper()
	var b []byte
	apitest.Eventually(t, 90*time.Second, fmt.Sprintf("%q on the console of %s", want, vm.Name), func() bool {
		b, _ = os.ReadFile(h.ConsoleLog(vm.Id))
		return bytes.Contains(b, []byte(want))
	})
}

// guestConsole types cmd on the VM's serial console through the
// controller (VMService.Console) and returns what the console printed
// until it matched the regular expression want (within 60 s).
func guestConsole(t *testing.T, c *drCluster, name, cmd, want string) string {
	t.Helper()
	re := regexp.MustCompile(want)
	ctx, cancel := context.WithTimeout(c.ctx, 60*time.Second)
	defer cancel()
	stream, err := c.vms.Console(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&yunchiv1.ConsoleInput{Name: name}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // the empty "attached" message
		t.Fatalf("console of %s: %v", name, err)
	}
	if err := stream.Send(&yunchiv1.ConsoleInput{Data: []byte("\r" + cmd + "\r")}); err != nil {
		t.Fatalf("console of %s: %v", name, err)
	}
	var seen bytes.Buffer
	for !re.Match(seen.Bytes()) {
		out, err := stream.Recv()
		if err != nil {
			t.Fatalf("console of %s: %v before it printed %q; it printed:\n%s", name, err, want, seen.String())
		}
		seen.Write(out.Data)
	}
	return seen.String()
}

// waitPoint waits up to 60 s for a point of vm in center not in before; a
// failed backup there fails the test at once, with its error.
func waitPoint(t *testing.T, c *drCluster, vm, center string, before map[string]bool) *yunchiv1.RestorePoint {
	t.Helper()
	var got *yunchiv1.RestorePoint
	apitest.Eventually(t, 60*time.Second, "a new point of "+vm+" in "+center, func() bool {
		for _, p := range c.points(t, vm, center) {
			if !before[p.Id] {
				got = p
				return true
			}
		}
		st, err := c.prot.GetDRStatus(c.ctx, &yunchiv1.GetDRStatusRequest{Vm: vm})
		if err == nil {
			for _, v := range st.Vms {
				for _, tg := range v.Targets {
					if tg.Center == center && tg.Job == "failed" {
						t.Fatalf("backup of %s to %s failed: %s", vm, center, tg.LastError)
					}
				}
			}
		}
		return false
	})
	return got
}

// backupRealNow runs a backup of vm to center and returns its new point.
func backupRealNow(t *testing.T, c *drCluster, vm, center string) *yunchiv1.RestorePoint {
	t.Helper()
	before := map[string]bool{}
	for _, p := range c.points(t, vm, center) {
		before[p.Id] = true
	}
	if _, err := c.bk.RunBackup(c.ctx, &yunchiv1.RunBackupRequest{Vm: vm, Center: center}); err != nil {
		t.Fatal(err)
	}
	return waitPoint(t, c, vm, center, before)
}

// fileRangeSum is the hex sha256 of n bytes of the file at off.
func fileRangeSum(t *testing.T, path string, off, n int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, off, n)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
