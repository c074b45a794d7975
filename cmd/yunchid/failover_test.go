package main

import (
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// headSum is the sha256 of the first 16 MiB of a disk file (where the test
// writes).
func headSum(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, 16*mib)); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func waitRun(t *testing.T, c *drCluster, rc yunchiv1.RecoveryServiceClient, id string) *yunchiv1.DRRun {
	t.Helper()
	var run *yunchiv1.DRRun
	apitest.Eventually(t, 3*time.Minute, "dr run "+id+" to end", func() bool {
		r, err := rc.GetDRRun(c.ctx, &yunchiv1.GetDRRunRequest{Id: id})
		if err != nil {
			return false
		}
		run = r
		return r.State != "running"
	})
	for _, e := range run.Vms {
		t.Logf("%s %s: %s on %s rto %d ms, data loss %d ms, downtime %d ms %s", run.Kind, e.Vm, e.Step, e.Host, e.RtoMillis, e.DataLossMillis, e.DowntimeMillis, e.Reason)
	}
	return run
}

// TestCenterFailoverFailbackDrill: gold and silver VMs in a1 with known
// disk data; a drill restores clones in a2 and leaves production byte for
// byte as it was; center a1 is lost (its agents and its controller voter
// stop); failover brings both VMs up in a2 with the disk content of their
// newest points and a data-loss window within policy; a1's agents, back,
// remove their old copies (nothing runs twice); failback returns the VMs
// to a1 with the changes they got in a2.
func TestCenterFailoverFailbackDrill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the dev cluster")
	}
	dir := t.TempDir()
	base := freeBase(t)
	addrs, _, out := runDev(t, devcluster.Config{DataDir: dir, BasePort: base, Hosts: 9, NoLogin: true})
	// Talk to a2's controller: a1's goes down.
	c := newDRCluster(t, dir, []string{addrs[1], addrs[2], addrs[0]}, out)
	rc := yunchiv1.NewRecoveryServiceClient(c.conn)
	port := strconv.Itoa(base)

	type known struct {
		vm           *yunchiv1.VM
		disk         string
		atPoint      [32]byte
		afterPoint   []byte // written after the point: lost by the failover
		changedInDR  []byte
		policy, repo string
		point        string
	}
	vms := map[string]*known{"g1": {policy: "gold", repo: "a2"}, "s1": {policy: "silver", repo: "a2"}}
	for name, k := range vms {
		k.vm, k.disk = c.createVM(t, name)
		writeDisk(t, k.disk, 0, randomBytes(t, 3*mib))
		if _, err := c.prot.ProtectVM(c.ctx, &yunchiv1.ProtectVMRequest{Name: name, Policy: k.policy}); err != nil {
			t.Fatal(err)
		}
	}
	// The first backups (to a2 and b1) start at protection; once they are
	// in, a backup to a2 taken now is the newest point of each VM.
	for name := range vms {
		for _, center := range []string{"a2", "b1"} {
			apitest.Eventually(t, time.Minute, "first point of "+name+" in "+center, func() bool { return len(c.points(t, name, center)) > 0 })
		}
	}
	for name, k := range vms {
		writeDisk(t, k.disk, 5*mib, randomBytes(t, mib))
		k.point = c.backupNow(t, name, k.repo).Id
		k.atPoint = headSum(t, k.disk)
		k.afterPoint = randomBytes(t, mib)
		writeDisk(t, k.disk, 9*mib, k.afterPoint)
	}

	// A drill: clones in a2, measured and removed; production untouched.
	before := map[string][32]byte{}
	for name, k := range vms {
		before[name] = headSum(t, k.disk)
	}
	drill, err := rc.StartDrill(c.ctx, &yunchiv1.DrillRequest{Center: "a1"})
	if err != nil {
		t.Fatal(err)
	}
	drill = waitRun(t, c, rc, drill.Id)
	if drill.State != "succeeded" || !drill.ProductionUnchanged || drill.VmsDone != 2 || drill.ToCenter != "a2" {
		t.Fatalf("drill: %s, production unchanged %v (%s), %d done, to %s", drill.State, drill.ProductionUnchanged, drill.ProductionCheck, drill.VmsDone, drill.ToCenter)
	}
	for _, e := range drill.Vms {
		if e.Step != "done" || e.RtoMillis <= 0 || e.DataLossMillis <= 0 || e.Clone == "" {
			t.Fatalf("drill entry %s: %s rto %d data loss %d clone %q", e.Vm, e.Step, e.RtoMillis, e.DataLossMillis, e.Clone)
		}
	}
	for name, k := range vms {
		if headSum(t, k.disk) != before[name] {
			t.Fatalf("the drill changed %s's disk", name)
		}
		if vm, err := c.vms.GetVM(c.ctx, &yunchiv1.GetVMRequest{Name: name}); err != nil || vm.HostId != k.vm.HostId || vm.Phase != yunchiv1.VMPhase_VM_PHASE_RUNNING {
			t.Fatalf("after the drill %s: %v %v", name, vm, err)
		}
	}
	st, err := c.prot.GetDRStatus(c.ctx, &yunchiv1.GetDRStatusRequest{})
	if err != nil || len(st.Drills) != 1 || st.Drills[0].Run != drill.Id {
		t.Fatalf("dr status drills: %v %v", st.GetDrills(), err)
	}

	// Lose a1.
	runDevCenter(t, "center", "stop", "a1", "--port", port, "--token", c.admin).want(t, 0, "")
	fo, err := rc.Failover(c.ctx, &yunchiv1.FailoverRequest{FromCenter: "a1"})
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	fo = waitRun(t, c, rc, fo.Id)
	t.Logf("failover of %d VMs: all running %d ms after it started (measured here: %s)", len(fo.Vms), fo.ElapsedMillis, time.Since(started).Round(time.Millisecond))
	if fo.State != "succeeded" || fo.VmsDone != 2 {
		t.Fatalf("failover: %s, %d done: %s", fo.State, fo.VmsDone, fo.Message)
	}
	for _, e := range fo.Vms {
		k := vms[e.Vm]
		vm := c.waitVM(t, e.Vm, yunchiv1.VMPhase_VM_PHASE_RUNNING)
		if vm.HostCenter != "a2" || vm.HostId != e.Host || vm.HomeCenter != "a1" {
			t.Fatalf("%s after failover: on %s (%s), home %q", e.Vm, vm.HostId, vm.HostCenter, vm.HomeCenter)
		}
		if e.Point != k.point {
			t.Fatalf("%s failed over from point %s, want the newest, %s", e.Vm, e.Point, k.point)
		}
		if headSum(t, c.diskOf(vm)) != k.atPoint {
			t.Fatalf("%s's disk in a2 is not its newest point's", e.Vm)
		}
		if e.RtoMillis <= 0 || e.DataLossMillis <= 0 || e.DataLossMillis > 60_000 && e.Policy == "gold" {
			t.Fatalf("%s: rto %d ms, data loss %d ms", e.Vm, e.RtoMillis, e.DataLossMillis)
		}
		k.changedInDR = randomBytes(t, mib)
		writeDisk(t, c.diskOf(vm), 12*mib, k.changedInDR)
	}
	st, err = c.prot.GetDRStatus(c.ctx, &yunchiv1.GetDRStatusRequest{})
	if err != nil || len(st.FencedCenters) != 1 || st.FencedCenters[0] != "a1" {
		t.Fatalf("fenced centers: %v %v", st.GetFencedCenters(), err)
	}

	// a1 comes back: its agents remove the old copies.
	runDevCenter(t, "center", "start", "a1", "--port", port, "--token", c.admin).want(t, 0, "")
	for name, k := range vms {
		apitest.Eventually(t, 30*time.Second, "old copy of "+name+" removed in a1", func() bool {
			_, err := os.Stat(k.disk)
			return os.IsNotExist(err)
		})
	}

	// Failback: the VMs return to a1 with what they wrote in a2.
	fb, err := rc.Failback(c.ctx, &yunchiv1.FailbackRequest{ToCenter: "a1"})
	if err != nil {
		t.Fatal(err)
	}
	fb = waitRun(t, c, rc, fb.Id)
	if fb.State != "succeeded" || fb.VmsDone != 2 {
		t.Fatalf("failback: %s, %d done", fb.State, fb.VmsDone)
	}
	for _, e := range fb.Vms {
		k := vms[e.Vm]
		vm := c.waitVM(t, e.Vm, yunchiv1.VMPhase_VM_PHASE_RUNNING)
		if vm.HostCenter != "a1" || vm.HomeCenter != "" {
			t.Fatalf("%s after failback: on %s (%s), home %q", e.Vm, vm.HostId, vm.HostCenter, vm.HomeCenter)
		}
		f, err := os.Open(c.diskOf(vm))
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, mib)
		_, err = f.ReadAt(got, 12*mib)
		f.Close()
		if err != nil || !bytes.Equal(got, k.changedInDR) {
			t.Fatalf("%s: the write it got in a2 is not in its disk in a1 (%v)", e.Vm, err)
		}
		if e.DowntimeMillis <= 0 {
			t.Fatalf("%s: downtime %d ms", e.Vm, e.DowntimeMillis)
		}
	}
	if st, err = c.prot.GetDRStatus(c.ctx, &yunchiv1.GetDRStatusRequest{}); err != nil || len(st.FencedCenters) != 0 {
		t.Fatalf("fenced after failback: %v %v", st.GetFencedCenters(), err)
	}
	if !strings.Contains(fb.Kind, "failback") {
		t.Fatalf("kind %q", fb.Kind)
	}
}
