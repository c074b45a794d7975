//go:build linux

package agent_test

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
	"github.com/yunchi/yunchi/internal/libvirthost"
)

// On a real host: the QEMU of a running guest is killed (kill -9 of that
// one pid). The agent reports the crash, with libvirt's words, well before
// its next resync (a minute away), then starts the guest again (a new
// QEMU) and reports that.
func TestRealHostCrashReportedThenRestarted(t *testing.T) {
	if why := libvirthost.Available(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, err := libvirthost.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Stop(); err != nil {
			t.Error(err)
		}
	})
	d, err := libvirt.OpenWithOptions(h.URI, libvirt.Options{DomainType: "qemu", Network: "none"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })

	c := newController()
	start(t, config(t, serve(t, c).addr), d) // resync: a minute
	as := vm(vmA, "web", running)
	as.MemoryBytes, as.DiskBytes = 64<<20, 0
	c.put(as)
	eventually(t, "RUNNING reported", func() bool { return c.phase(vmA) == phaseRunning })
	before := len(c.reportsFor(vmA))

	// vmA is a UUID: its domain is named yunchi-<vmA>.
	pidFile := filepath.Join(h.Dir, "root", "run", "libvirt", "qemu", "yunchi-"+vmA+".pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("pid file %s holds %q", pidFile, b)
	}
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var failedAt time.Duration
	eventually(t, "the crash reported", func() bool {
		for _, st := range c.reportsFor(vmA)[before:] {
			if st.GetPhase() == phaseFailed {
				failedAt = time.Since(killed)
				return true
			}
		}
		return false
	})
	eventually(t, "RUNNING reported again", func() bool {
		r := c.reportsFor(vmA)
		return r[len(r)-1].GetPhase() == phaseRunning && len(r) > before+1
	})
	runningAt := time.Since(killed)
	t.Logf("kill -9 of QEMU %d: FAILED reported after %v, RUNNING again after %v", pid, failedAt.Round(time.Millisecond), runningAt.Round(time.Millisecond))
	r := c.reportsFor(vmA)[before:]
	if len(r) != 2 {
		t.Fatalf("reports after the kill: %v, want FAILED then RUNNING", r)
	}
	if m := r[0].GetMessage(); !strings.Contains(m, "guest stopped unexpectedly (stopped: failed)") &&
		!strings.Contains(m, "guest stopped unexpectedly (found shut off: crashed)") {
		t.Errorf("FAILED message %q does not say QEMU went away", m)
	}
	if m := r[1].GetMessage(); !strings.Contains(m, "started again") {
		t.Errorf("RUNNING message %q does not say the guest was started again", m)
	}
	if failedAt > 10*time.Second {
		t.Errorf("crash reported %v after the kill: that is the resync, not the event", failedAt)
	}
	doms, err := d.ListDomains(ctx)
	if err != nil || len(doms) != 1 || doms[0].State != agent.StateRunning {
		t.Fatalf("domains: %+v, %v", doms, err)
	}
	b, err = os.ReadFile(pidFile)
	if newPid, _ := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || newPid == pid || newPid <= 1 {
		t.Fatalf("QEMU after the restart: pid file %q (%v), the killed one was %d", b, err, pid)
	}
}
