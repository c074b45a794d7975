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
	"github.com/yunchi/yunchi/internal/qemuhost"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// guestWrite writes pattern at off through the running guest's root disk
// device: when it returns, the guest's disk has acknowledged the write.
func guestWrite(t *testing.T, uri, vmID string, pattern byte, off, n int64) {
	t.Helper()
	if err := qemuhost.GuestWrite(uri, vmID, pattern, off, n); err != nil {
		t.Fatal(err)
	}
}

// reportedSince waits for a report of vmID, after the first skip ones,
// that cond accepts, and returns its position.
func reportedSince(t *testing.T, c *controller, vmID string, skip int, what string, cond func(*yunchiv1.VMStatus) bool) int {
	t.Helper()
	pos := -1
	waitFor(t, what, func() bool {
		for i, st := range c.reportsFor(vmID) {
			if i >= skip && cond(st) {
				pos = i
				return true
			}
		}
		return false
	})
	return pos
}

func mirrorPhaseIs(phase string) func(*yunchiv1.VMStatus) bool {
	return func(st *yunchiv1.VMStatus) bool {
		return st.GetPhase() == phaseRunning && st.GetMirrorPhase() == phase
	}
}

// On a real host, an agent mirrors a running VM whose assignment has a
// mirror (to an export this same host serves, as the controllers list
// it) and reports the phase: "mirroring" once the bulk copy is done. The
// export's qemu-nbd dies: the next guest write ends the job, which the
// agent reports within a second (not at its resync, a minute away),
// then mirrors the VM again once the export is back. A backup of the VM
// stops the mirror first (a disk has one block job at a time: reported
// as paused), and the mirror comes back after it. A mirror no longer
// assigned is stopped.
func TestRealHostMirrorPhasesReported(t *testing.T) {
	if why := libvirthost.Available(); why != "" {
		t.Skip(why)
	}
	needQemuNBD(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
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
	d, err := libvirt.OpenWithOptions(h.URI, libvirt.Options{DomainType: "qemu", Network: "none", Pool: "yunchi",
		PoolDir: filepath.Join(t.TempDir(), "pool"), BackupDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	c := newController()
	c.bk.records = newRepoRecords()
	repo := serveRepo(t, c.bk.records)
	cfg := config(t, serve(t, c).addr) // resync: a minute
	cfg.Mirror = mirrorConfig(t)
	start(t, cfg, d)

	const size = 64 << 20
	as := vm(vmA, "platinum", running)
	as.MemoryBytes, as.DiskBytes = 64<<20, size
	c.put(as)
	waitFor(t, "the VM running", func() bool { return c.phase(vmA) == phaseRunning })
	c.putExports(&yunchiv1.MirrorExport{VmId: vmA, ExportName: "mirror-a", SizeBytes: size, SourceHost: "host-1"})
	addr := exportAddress(t, c, vmA)

	begun := time.Now()
	c.update(vmA, func(as *yunchiv1.Assignment) {
		as.Mirror = &yunchiv1.MirrorRef{Address: addr, ExportName: "mirror-a", TargetHost: "host-1", Center: "dc1"}
	})
	at := reportedSince(t, c, vmA, 0, "mirroring reported", mirrorPhaseIs(agent.MirrorMirroring))
	t.Logf("mirroring reported %v after the mirror was assigned", time.Since(begun).Round(time.Millisecond))
	if st, err := d.MirrorStatus(ctx, vmA); err != nil || st.Phase != agent.MirrorMirroring || st.Target != (agent.MirrorTarget{Address: addr, Export: "mirror-a"}) {
		t.Fatalf("the driver's mirror: %+v, %v", st, err)
	}
	if st := c.reportsFor(vmA)[at]; st.GetMirrorError() != "" {
		t.Fatalf("mirroring with an error: %v", st)
	}

	// The export dies; the next write ends the job.
	b, err := os.ReadFile(filepath.Join(cfg.Mirror.Dir, vmA+".pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("qemu-nbd pid file holds %q", b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	guestWrite(t, h.URI, vmA, 0x5a, 1<<20, 4096)
	at = reportedSince(t, c, vmA, at+1, "the mirror's end reported", func(st *yunchiv1.VMStatus) bool {
		return st.GetMirrorPhase() == "" && strings.Contains(st.GetMirrorError(), "the mirror job ended")
	})
	endedAfter := time.Since(killed)
	at = reportedSince(t, c, vmA, at+1, "mirroring again", mirrorPhaseIs(agent.MirrorMirroring))
	t.Logf("export killed: the mirror's end reported after %v, mirroring again after %v",
		endedAfter.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
	if endedAfter > 3*time.Second {
		t.Errorf("the mirror's end reported %v after the export died: that is not prompt", endedAfter)
	}

	// A backup pauses the mirror.
	begun = time.Now()
	c.putBackup(&yunchiv1.BackupJob{JobId: "j1", VmId: vmA, Center: "dc2", RepositoryAddress: repo.addr, Checkpoint: "cp-j1"})
	paused := reportedSince(t, c, vmA, at+1, "the mirror paused for the backup", func(st *yunchiv1.VMStatus) bool {
		return st.GetMirrorPhase() == "" && strings.HasPrefix(st.GetMirrorError(), "paused while a backup")
	})
	waitFor(t, "the backup reported", func() bool { return len(c.backupReports("j1")) > 0 })
	okReport(t, c.backupReports("j1")[0])
	at = reportedSince(t, c, vmA, paused+1, "mirroring after the backup", mirrorPhaseIs(agent.MirrorMirroring))
	t.Logf("backup with the mirror paused: mirroring again %v after the job was listed", time.Since(begun).Round(time.Millisecond))

	// No longer assigned: stopped, and said so.
	c.update(vmA, func(as *yunchiv1.Assignment) { as.Mirror = nil })
	reportedSince(t, c, vmA, at+1, "no mirror reported", func(st *yunchiv1.VMStatus) bool {
		return st.GetMirrorPhase() == "" && st.GetMirrorError() == ""
	})
	waitFor(t, "the mirror stopped", func() bool {
		st, err := d.MirrorStatus(ctx, vmA)
		return err == nil && st.Phase == agent.MirrorNone
	})
}
