//go:build linux

package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/apitest"
	"github.com/yunchi/yunchi/internal/libvirthost"
	"github.com/yunchi/yunchi/internal/qemuhost"
	"github.com/yunchi/yunchi/internal/tinyimage"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// TestRealHostPlatinum: platinum on real QEMU (issue 12), through the whole stack: `yunchid dev
// --real-hosts 2` in process (qemu-1 in center a1, qemu-2 in a2), a tiny
// guest in a1 protected with the built-in policy platinum. Its root disk
// is mirrored synchronously to an export on qemu-2; once `dr status` says
// the mirror is mirroring, writes made through the guest's own disk device
// (each returns once the guest's disk acknowledged it) are not lost when
// center a1 is: its agents and controller stop, then its QEMU is killed
// (no flush by anyone). The failover brings the VM up on qemu-2 from the
// mirror, with a data-loss window of 0, and its new root disk holds every
// acknowledged write: it is the disk the guest saw, byte for byte.
func TestRealHostPlatinum(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real QEMU guests")
	}
	if why := qemuhost.Available(); why != "" {
		t.Skip(why)
	}
	if why := tinyimage.Available(); why != "" {
		t.Skip(why)
	}
	for _, tool := range []string{"qemu-nbd", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip("platinum needs qemu-nbd and qemu-img (apt-get install qemu-utils)")
		}
	}
	begun := time.Now()
	dir := t.TempDir()
	base := freeBase(t)
	addrs, rh, out := runDev(t, devcluster.Config{DataDir: dir, CacheDir: t.TempDir(), BasePort: base, RealHosts: 2, NoLogin: true})
	// Talk to a2's controller: a1's goes down.
	c := newDRCluster(t, dir, []string{addrs[1], addrs[2], addrs[0]}, out)
	rc := yunchiv1.NewRecoveryServiceClient(c.conn)
	hosts := rh.Hosts()
	h1, h2 := hosts[0], hosts[1]
	t.Logf("dev cluster with 2 real hosts ready in %s", time.Since(begun).Round(time.Millisecond))

	// 1. A tiny guest in a1, on qemu-1.
	step := time.Now()
	const diskSize = 64 * mib
	if _, err := c.vms.CreateVM(c.ctx, &yunchiv1.CreateVMRequest{Name: "p1", Image: devcluster.TinyImage, Vcpus: 1, Memory: "256MiB",
		Disk: "64MiB", Center: "a1"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVMRunning(t, c, "p1")
	if vm.HostId != h1.ID {
		t.Fatalf("p1 on %s, want %s (the real host of a1)", vm.HostId, h1.ID)
	}
	waitConsoleLog(t, h1, vm, tinyimage.Marker+" hostname=p1")
	t.Logf("p1 booted on %s after %s", h1.ID, time.Since(step).Round(time.Millisecond))

	// 2. Platinum: the hourly copy to b1 starts at once (it pauses the
	// mirror while it runs: wait for it first), the mirror to a2 as soon
	// as qemu-2 serves its export.
	step = time.Now()
	if _, err := c.prot.ProtectVM(c.ctx, &yunchiv1.ProtectVMRequest{Name: "p1", Policy: "platinum"}); err != nil {
		t.Fatal(err)
	}
	waitPoint(t, c, "p1", "b1", nil)
	t.Logf("first point in b1 after %s", time.Since(step).Round(time.Millisecond))
	var target *yunchiv1.TargetStatus
	apitest.Eventually(t, 2*time.Minute, "p1's mirror in a2 mirroring", func() bool {
		st, err := c.prot.GetDRStatus(c.ctx, &yunchiv1.GetDRStatusRequest{Vm: "p1", Consistent: true})
		if err != nil {
			return false
		}
		for _, v := range st.Vms {
			for _, tg := range v.Targets {
				if tg.Center == "a2" {
					target = tg
				}
			}
		}
		return target != nil && target.Mirror == "mirroring"
	})
	if target.MirrorHost != h2.ID || target.AchievedRpoSeconds != 0 || target.Violation {
		t.Fatalf("a2 target: mirror host %q (want %s), achieved RPO %v s, violation %v", target.MirrorHost, h2.ID, target.AchievedRpoSeconds, target.Violation)
	}
	t.Logf("mirroring to %s after %s", h2.ID, time.Since(step).Round(time.Millisecond))

	// 3. Writes through the guest's disk device, small and large, past
	// the image's data (the failed-over guest boots from the rest);
	// each acknowledged when it returns.
	// The disk the guest sees is its disk now (the tiny guest runs from
	// its initramfs and does not write to it) with these writes.
	overlay := filepath.Join(h1.PoolDir, libvirt.DomainName(vm.Id)+"-root")
	want := flatten(t, overlay)
	step = time.Now()
	type write struct {
		pattern byte
		off, n  int64
	}
	writes := []write{
		{0xa1, 40 * mib, 4 << 10},
		{0xa2, 41*mib + 512, 512},
		{0xa3, 42 * mib, 1 * mib},
		{0xa4, diskSize - 4<<10, 4 << 10},
	}
	img, err := yunchiv1.NewImageServiceClient(c.conn).GetImage(c.ctx, &yunchiv1.GetImageRequest{Name: devcluster.TinyImage})
	if err != nil {
		t.Fatal(err)
	}
	if img.VirtualSizeBytes > 40*mib {
		t.Fatalf("the tiny image is %d bytes: the writes at 40 MiB on would overwrite it", img.VirtualSizeBytes)
	}
	for i := range 20 {
		writes = append(writes, write{byte(0xb0 + i), 48*mib + int64(i)*12<<10, 4 << 10})
	}
	for _, w := range writes {
		hmpWrite(t, h1.URI(), vm.Id, w.pattern, w.off, w.n)
		copy(want[w.off:w.off+w.n], bytes.Repeat([]byte{w.pattern}, int(w.n)))
	}
	t.Logf("%d writes acknowledged by the guest's disk in %s", len(writes), time.Since(step).Round(time.Millisecond))

	// 4. Center a1 is lost: its agents and controller stop, then its
	// power goes (QEMU killed: nothing flushed by anyone).
	runDevCenter(t, "center", "stop", "a1", "--port", strconv.Itoa(base), "--token", c.admin).want(t, 0, "")
	pidFile := filepath.Join(h1.LV.Dir, "root", "run", "libvirt", "qemu", libvirt.DomainName(vm.Id)+".pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("pid file %s holds %q", pidFile, b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	apitest.Eventually(t, 30*time.Second, "QEMU of p1 gone", func() bool { return !libvirthost.Running(pid) })
	// What a1's own disk kept: nothing flushed it, and QEMU keeps qcow2
	// metadata (where newly written clusters are) in memory until a
	// flush, so it may lack acknowledged writes the mirror has.
	lost := flatten(t, overlay)
	missing := 0
	for _, w := range writes {
		if !bytes.Equal(lost[w.off:w.off+w.n], bytes.Repeat([]byte{w.pattern}, int(w.n))) {
			missing++
		}
	}
	t.Logf("a1's own disk, read after the power loss, lacks %d of the %d acknowledged (unflushed) writes", missing, len(writes))

	// 5. Failover: from the mirror, nothing lost.
	fo, err := rc.Failover(c.ctx, &yunchiv1.FailoverRequest{FromCenter: "a1"})
	if err != nil {
		t.Fatal(err)
	}
	fo = waitRun(t, c, rc, fo.Id)
	if fo.State != "succeeded" || fo.VmsDone != 1 || len(fo.Vms) != 1 {
		t.Fatalf("failover: %s, %d done: %s", fo.State, fo.VmsDone, fo.Message)
	}
	e := fo.Vms[0]
	if e.Vm != "p1" || !e.Mirror || e.DataLossMillis != 0 || e.Host != h2.ID || e.Center != "a2" || e.RtoMillis <= 0 {
		t.Fatalf("failover entry: %s from mirror %v, data loss %d ms, on %s (%s), rto %d ms; want p1 from its mirror, no loss, on %s in a2",
			e.Vm, e.Mirror, e.DataLossMillis, e.Host, e.Center, e.RtoMillis, h2.ID)
	}
	t.Logf("failover from the mirror: p1 running on %s, RTO %d ms, data loss %d ms", e.Host, e.RtoMillis, e.DataLossMillis)
	moved := c.waitVM(t, "p1", yunchiv1.VMPhase_VM_PHASE_RUNNING)
	if moved.HostId != h2.ID || moved.HostCenter != "a2" || moved.HomeCenter != "a1" {
		t.Fatalf("p1 after the failover: on %s (%s), home %q", moved.HostId, moved.HostCenter, moved.HomeCenter)
	}

	// 6. The new root disk holds every acknowledged write: it is the
	// lost disk, byte for byte.
	newRoot := filepath.Join(h2.PoolDir, libvirt.DomainName(moved.Id)+"-root")
	got, err := os.ReadFile(newRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range writes {
		if int64(len(got)) < w.off+w.n || !bytes.Equal(got[w.off:w.off+w.n], bytes.Repeat([]byte{w.pattern}, int(w.n))) {
			t.Errorf("the acknowledged write of %#x at %d+%d is not on the failed-over disk", w.pattern, w.off, w.n)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the failed-over disk (%d bytes) is not the disk the guest saw (%d bytes): first difference at %d", len(got), len(want), firstDifference(got, want))
	}
	// And the guest boots from it on qemu-2.
	waitConsoleLog(t, h2, moved, tinyimage.Marker)
	t.Logf("total %s", time.Since(begun).Round(time.Millisecond))
}

// flatten reads a disk image as the guest sees it.
func flatten(t *testing.T, path string) []byte {
	t.Helper()
	b, err := libvirthost.FlatImage(path, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hmpWrite writes pattern at off through the running guest's root disk
// device: when it returns, the guest's disk has acknowledged the write.
func hmpWrite(t *testing.T, uri, vmID string, pattern byte, off, n int64) {
	t.Helper()
	if err := qemuhost.GuestWrite(uri, vmID, pattern, off, n); err != nil {
		t.Fatal(err)
	}
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// `yunchid agent` refuses mirror settings it cannot serve exports with,
// with a one-line error, before registering anywhere.
func TestAgentMirrorFlags(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("yc_x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mirror-ports", "10809"}, `--mirror-ports "10809": give FIRST-LAST, e.g. 10809-10909`},
		{[]string{"--mirror-ports", "a-b"}, `--mirror-ports "a-b": give FIRST-LAST`},
		{[]string{"--mirror-ports", "20-10"}, "mirror exports: ports 20..10: want 1 <= min <= max <= 65535"},
		{[]string{"--mirror-host", "localhost"}, `mirror exports: host "localhost" is not an IP address`},
		{[]string{"--mirror-cache", "none"}, `mirror exports: cache "none": want writeback or writethrough`},
	} {
		app := &cli.App{Name: "yunchid", Commands: []*cli.Command{agentCmd()}}
		args := append([]string{"yunchid", "agent", "--host-id", "h1", "--center", "c1", "--controllers", "127.0.0.1:1",
			"--insecure", "--token-file", tok, "--libvirt-uri", "test:///default", "--mirror-dir", dir}, tc.args...)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := app.RunContext(ctx, args)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v; want one line saying %q", tc.args, err, tc.want)
		}
	}
}
