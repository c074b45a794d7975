//go:build linux

package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/apitest"
	"github.com/yunchi/yunchi/internal/bearer"
	"github.com/yunchi/yunchi/internal/cliconfig"
	"github.com/yunchi/yunchi/internal/qemuhost"
	"github.com/yunchi/yunchi/internal/tinyimage"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// The real-QEMU suite (issue 10): `yunchid dev --real-hosts 2` in process
// (three controllers, two private libvirtd hosts with agents, the tiny image
// imported), driven through the CLI binary and the API, and checked on the
// hosts themselves: QEMU processes, console logs, pool files.
func TestRealHosts(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real QEMU guests")
	}
	if why := qemuhost.Available(); why != "" {
		t.Skip(why)
	}
	if why := tinyimage.Available(); why != "" {
		t.Skip(why)
	}
	cli := buildCLI(t)
	cfgPath := filepath.Join(t.TempDir(), "yunchi-config.json")
	t.Setenv("YUNCHI_CONFIG", cfgPath)
	base := freeBase(t)
	_, rh, out := runDev(t, devcluster.Config{DataDir: t.TempDir(), CacheDir: t.TempDir(), BasePort: base, RealHosts: 2})
	hosts := rh.Hosts()
	cfg, _, err := cliconfig.Load()
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.Split(cfg.Addr, ",")[0]
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer.Token(cfg.Token)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	vms := yunchiv1.NewVMServiceClient(cc)
	cli1 := func(args ...string) cliResult {
		t.Helper()
		r := runCLI(t, cli, cfg.Addr, args...)
		if r.code != 0 {
			t.Fatalf("yunchi %s: exit %d\nstdout %s\nstderr %s\ndev cluster:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr, out)
		}
		return r
	}
	ctx := context.Background()
	getVM := func(name string) *yunchiv1.VM {
		t.Helper()
		vm, err := vms.GetVM(ctx, &yunchiv1.GetVMRequest{Name: name, Consistent: true})
		if err != nil {
			t.Fatalf("get %s: %v", name, err)
		}
		return vm
	}
	hostOf := func(vm *yunchiv1.VM) *qemuhost.Host {
		for _, h := range hosts {
			if h.ID == vm.HostId {
				return h
			}
		}
		t.Fatalf("VM %s on %q, not a real host", vm.Name, vm.HostId)
		return nil
	}
	waitLog := func(h *qemuhost.Host, vm *yunchiv1.VM, want string) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			b, _ := os.ReadFile(h.ConsoleLog(vm.Id))
			if strings.Contains(string(b), want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("console log of %s has no %q within 90s:\n%s", vm.Name, want, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// One VM per host, both from the tiny image; the CLI's own tour.
	t.Log("creating t1 and t2")
	begun := time.Now()
	cli1("vm", "create", "t1", "--image", devcluster.TinyImage, "--memory", "256MiB", "--constraint", "host="+hosts[0].ID, "--wait")
	t.Logf("t1 running after %s", time.Since(begun).Round(time.Millisecond))
	cli1("vm", "create", "t2", "--image", devcluster.TinyImage, "--memory", "256MiB", "--constraint", "host="+hosts[1].ID, "--wait")
	t1, t2 := getVM("t1"), getVM("t2")
	h1, h2 := hostOf(t1), hostOf(t2)
	if h1 == h2 {
		t.Fatalf("t1 and t2 both on %s", h1.ID)
	}

	t.Run("guest boots with its cloud-init hostname", func(t *testing.T) {
		waitLog(h1, t1, tinyimage.Marker+" hostname=t1")
		waitLog(h2, t2, tinyimage.Marker+" hostname=t2")
		for _, h := range hosts {
			if n := len(h.QEMUPids()); n != 1 {
				t.Fatalf("host %s runs %d QEMU processes, want 1", h.ID, n)
			}
		}
	})

	t.Run("console through the controller", func(t *testing.T) {
		// The CLI types a command and detaches once the guest answers it.
		r := cli1("vm", "console", "t1", "--send", `\recho console-$((6*7))\r`, "--expect", "console-42", "--expect-timeout", "60s")
		if !strings.Contains(r.stdout, "console-42") {
			t.Fatalf("console output: %q", r.stdout)
		}
		r = cli1("vm", "console", "t2", "--send", `\rhostname\r`, "--expect", "\nt2", "--expect-timeout", "60s")
	})

	t.Run("volume hot-plug", func(t *testing.T) {
		begun := time.Now()
		cli1("volume", "create", "scratch", "--size", "64MiB")
		r := cli1("volume", "attach", "scratch", "--vm", "t1", "--wait", "-o", "json")
		var vol struct{ Id, HostId, State, Vm string }
		if err := json.Unmarshal([]byte(r.stdout), &vol); err != nil || vol.State != "VOLUME_STATE_ATTACHED" || vol.HostId != h1.ID || vol.Vm != "t1" {
			t.Fatalf("attach: %v %s", err, r.stdout)
		}
		t.Logf("volume attached to the running t1 %s after its create", time.Since(begun).Round(time.Millisecond))
		file := filepath.Join(h1.PoolDir, "yunchi-vol-"+vol.Id)
		// libvirt's live definition has it: a virtio disk on the pool
		// file, with the volume's id as serial.
		disk := liveVolumeDisk(t, h1, t1.Id, vol.Id)
		if disk == nil || disk.Target == nil || disk.Target.Bus != "virtio" || disk.Source == nil || disk.Source.File == nil || disk.Source.File.File != file {
			t.Fatalf("live disk of the volume: %+v", disk)
		}
		// The guest sees the disk, with the id as its serial.
		cli1("vm", "console", "t1", "--send", `\rls /dev/vd*\r`, "--expect", "/dev/vdb", "--expect-timeout", "60s")
		cli1("vm", "console", "t1", "--send", `\rcat /sys/block/vdb/serial\r`, "--expect", vol.Id, "--expect-timeout", "60s")

		begun = time.Now()
		cli1("volume", "detach", "scratch", "--wait")
		t.Logf("volume detached from the running t1 in %s", time.Since(begun).Round(time.Millisecond))
		if disk := liveVolumeDisk(t, h1, t1.Id, vol.Id); disk != nil {
			t.Fatalf("the live definition still has the volume: %+v", disk)
		}
		cli1("vm", "console", "t1", "--send", `\r[ -e /dev/vdb ] || echo vdb-gone-$((6*7))\r`, "--expect", "vdb-gone-42", "--expect-timeout", "60s")
		if _, err := os.Stat(file); err != nil {
			t.Fatalf("detached, the volume's file is gone: %v", err)
		}

		// Onto a stopped VM (its definition), which then goes: the volume
		// stays, detached, on the host.
		cli1("vm", "create", "t4", "--image", devcluster.TinyImage, "--memory", "128MiB", "--constraint", "host="+h1.ID, "--stopped", "--wait")
		cli1("volume", "attach", "scratch", "--vm", "t4", "--wait")
		if disk := liveVolumeDisk(t, h1, getVM("t4").Id, vol.Id); disk == nil {
			t.Fatal("the stopped t4's definition lacks the volume")
		}
		cli1("vm", "delete", "t4", "--wait")
		r = cli1("volume", "show", "scratch", "-o", "json")
		var after struct{ State, Vm, HostId string }
		if err := json.Unmarshal([]byte(r.stdout), &after); err != nil || after.State != "VOLUME_STATE_AVAILABLE" || after.Vm != "" || after.HostId != h1.ID {
			t.Fatalf("after its VM's delete: %v %s", err, r.stdout)
		}
		if _, err := os.Stat(file); err != nil {
			t.Fatalf("its VM deleted, the volume's file is gone: %v", err)
		}
		cli1("volume", "delete", "scratch", "--wait")
		if _, err := os.Stat(file); !os.IsNotExist(err) {
			t.Fatalf("deleted, the volume's file is still there: %v", err)
		}
	})

	t.Run("image fetched once per host", func(t *testing.T) {
		img, err := yunchiv1.NewImageServiceClient(cc).GetImage(ctx, &yunchiv1.GetImageRequest{Name: devcluster.TinyImage})
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range []*qemuhost.Host{h1, h2} {
			entries, err := os.ReadDir(h.ImageDir)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			if !slices.Equal(names, []string{img.Sha256 + ".raw"}) {
				t.Fatalf("host %s image cache %v, want just %s.raw", h.ID, names, img.Sha256)
			}
		}
		before, err := os.Stat(filepath.Join(h1.ImageDir, img.Sha256+".raw"))
		if err != nil {
			t.Fatal(err)
		}
		cli1("vm", "create", "t3", "--image", devcluster.TinyImage, "--memory", "128MiB", "--constraint", "host="+h1.ID, "--stopped", "--wait")
		after, err := os.Stat(filepath.Join(h1.ImageDir, img.Sha256+".raw"))
		if err != nil || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
			t.Fatalf("the cached image changed when a second VM used it: %v", err)
		}
		cli1("vm", "delete", "t3", "--wait")
	})

	t.Run("killed QEMU is reported as a crash", func(t *testing.T) {
		pids := h1.QEMUPids()
		if len(pids) != 1 {
			t.Fatalf("QEMU processes on %s: %v", h1.ID, pids)
		}
		killed := time.Now()
		if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var seen time.Duration
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			vm := getVM("t1")
			if strings.Contains(vm.Message, "stopped unexpectedly") {
				seen = time.Since(killed)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the crash never showed: %v", vm)
			}
		}
		t.Logf("crash reported %s after kill -9 of QEMU", seen.Round(time.Millisecond))
		// And, wanted running, the guest boots again: one QEMU, marker again.
		waitRunningWith(t, getVM, "t1")
		if n := len(h1.QEMUPids()); n != 1 {
			t.Fatalf("after the restart %s runs %d QEMU processes", h1.ID, n)
		}
		waitLog(h1, getVM("t1"), tinyimage.Marker+" hostname=t1")
	})

	t.Run("agent restart adopts its guests", func(t *testing.T) {
		before := h2.QEMUPids()
		rh.RestartAgent(1)
		time.Sleep(3 * time.Second) // registered, watching, reconciled at least once
		r := cli1("vm", "show", "t2", "-o", "json")
		if !strings.Contains(r.stdout, "VM_PHASE_RUNNING") {
			t.Fatalf("t2 after the agent restart: %s", r.stdout)
		}
		if after := h2.QEMUPids(); !slices.Equal(before, after) {
			t.Fatalf("QEMU processes on %s were %v, are %v after the agent restart", h2.ID, before, after)
		}
	})

	t.Run("stop start reboot delete", func(t *testing.T) {
		cli1("vm", "stop", "t2", "--wait")
		if n := len(h2.QEMUPids()); n != 0 {
			t.Fatalf("stopped, yet %d QEMU processes on %s", n, h2.ID)
		}
		cli1("vm", "start", "t2", "--wait")
		waitLog(h2, t2, tinyimage.Marker+" hostname=t2")
		// A reboot keeps QEMU (and its log): the guest boots again in it.
		pids := h2.QEMUPids()
		logText, _ := os.ReadFile(h2.ConsoleLog(t2.Id))
		boots := strings.Count(string(logText), tinyimage.Marker)
		cli1("vm", "reboot", "t2", "--wait")
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			logText, _ = os.ReadFile(h2.ConsoleLog(t2.Id))
			if strings.Count(string(logText), tinyimage.Marker) > boots {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("t2 did not boot again after reboot:\n%s", logText)
			}
		}
		if after := h2.QEMUPids(); len(after) != 1 {
			t.Fatalf("after reboot %s runs %v (before %v)", h2.ID, after, pids)
		}
		pool := func() []string {
			entries, _ := os.ReadDir(h2.PoolDir)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			return names
		}
		if files := pool(); len(files) != 2 {
			t.Fatalf("pool of %s holds %v, want t2's overlay and seed", h2.ID, files)
		}
		cli1("vm", "delete", "t2", "--wait")
		if files := pool(); len(files) != 0 {
			t.Fatalf("after delete the pool of %s still holds %v", h2.ID, files)
		}
		if n := len(h2.QEMUPids()); n != 0 {
			t.Fatalf("deleted, yet %d QEMU processes on %s", n, h2.ID)
		}
	})
}

// liveVolumeDisk is the disk of volume id in the live definition of the
// VM's domain on h, as `virsh dumpxml` shows it (nil: none).
func liveVolumeDisk(t *testing.T, h *qemuhost.Host, vmID, id string) *libvirtxml.DomainDisk {
	t.Helper()
	out, err := exec.Command("virsh", "-c", h.URI(), "dumpxml", libvirt.DomainName(vmID)).Output()
	if err != nil {
		t.Fatalf("virsh dumpxml: %v", err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(string(out)); err != nil {
		t.Fatal(err)
	}
	for i, d := range x.Devices.Disks {
		if d.Serial == id {
			return &x.Devices.Disks[i]
		}
	}
	return nil
}

// freeBase finds a base port for a dev cluster: base..base+2 (API),
// base+10..base+12 (raft) and base+20 (control) all free now, below the
// ephemeral range (so no outgoing connection of another test takes one
// meanwhile) and apart from clustertest.FreePort's range.
func freeBase(t *testing.T) int {
	t.Helper()
	return apitest.FreePortOffset(t, []int{0, 1, 2, 10, 11, 12, devcluster.ControlPortOffset})
}

// waitRunningWith waits until the VM is running again.
func waitRunningWith(t *testing.T, get func(string) *yunchiv1.VM, name string) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		vm := get(name)
		if vm.Phase == yunchiv1.VMPhase_VM_PHASE_RUNNING {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not running again within 60s: %v", name, vm)
		}
	}
}
