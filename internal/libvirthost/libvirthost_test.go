//go:build linux

package libvirthost

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/libvirt"
)

// Two private libvirtd hosts on this machine, each driven by the agent's
// own libvirt driver: each reads the machine's real capacity, each runs a
// real QEMU domain for the same VM id (the same domain name) at once, in
// its own mount namespace; stopping a host ends every process it started,
// its guest's QEMU included.
func TestTwoHostsRunTheSameDomain(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var hs []*Host
	for i := 0; i < 2; i++ {
		h, err := Start(ctx, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
		t.Cleanup(func() {
			if err := h.Stop(); err != nil {
				t.Error(err)
			}
		})
	}
	spec := agent.DomainSpec{VMID: "6c1f3c1e-0a0b-4c3d-9e8f-000000000001", Project: "p", Name: "vm1", VCPUs: 1, MemoryBytes: 64 << 20}
	for i, h := range hs {
		d, err := libvirt.OpenWithOptions(h.URI, libvirt.Options{DomainType: "qemu"})
		if err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
		defer d.Close()
		nf, err := d.NodeFacts(ctx)
		if err != nil {
			t.Fatalf("host %d: node facts: %v", i, err)
		}
		if nf.VCPUs < 1 || nf.MemoryBytes < 1<<30 {
			t.Errorf("host %d: capacity %d vCPUs, %d bytes: not the machine's", i, nf.VCPUs, nf.MemoryBytes)
		}
		if !strings.HasPrefix(nf.Hypervisor, "QEMU ") || nf.LibvirtVersion == "" {
			t.Errorf("host %d: hypervisor %q, libvirt %q; want QEMU with its version, and libvirt's", i, nf.Hypervisor, nf.LibvirtVersion)
		}
		if err := d.Define(ctx, spec); err != nil {
			t.Fatalf("host %d: define: %v", i, err)
		}
		if err := d.Start(ctx, spec.VMID); err != nil {
			t.Fatalf("host %d: start: %v", i, err)
		}
		doms, err := d.ListDomains(ctx)
		if err != nil || len(doms) != 1 || doms[0].VMID != spec.VMID || doms[0].State != agent.StateRunning {
			t.Fatalf("host %d: domains %+v, %v; want %s running", i, doms, err, spec.VMID)
		}
	}
	// Each host's QEMU runs in that host's namespace, and only there.
	var qemus [2][]int
	for i, h := range hs {
		for _, pid := range processesIn(h.ns) {
			if b, err := os.ReadFile("/proc/" + itoa(pid) + "/comm"); err == nil && strings.HasPrefix(string(b), "qemu-system") {
				qemus[i] = append(qemus[i], pid)
			}
		}
		if len(qemus[i]) != 1 {
			t.Fatalf("host %d: QEMU processes %v, want one", i, qemus[i])
		}
	}
	if qemus[0][0] == qemus[1][0] {
		t.Fatal("both hosts report the same QEMU process")
	}
	for i, h := range hs {
		if err := h.Stop(); err != nil {
			t.Fatal(err)
		}
		if ps := processesIn(h.ns); len(ps) != 0 {
			t.Fatalf("host %d: processes left after Stop: %v", i, ps)
		}
		if Running(qemus[i][0]) {
			t.Fatalf("host %d: its QEMU %d still runs", i, qemus[i][0])
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// Start waits for the daemons' sockets to take connections, not for the
// files to exist: libvirtd binds its socket (the file appears) before it
// listens, and a client that connects in between is refused (seen in CI
// under load: "Connection refused" right after Start).
func TestAcceptsWaitsForListen(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("bound socket has no file: %v", err)
	}
	if accepts(sock) {
		t.Fatal("a bound socket nobody listens on counted as accepting")
	}
	if err := syscall.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	if !accepts(sock) {
		t.Fatal("a listening socket did not count as accepting")
	}
}
