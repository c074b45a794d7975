package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const mib = 1 << 20

// drCluster is the dev cluster (three centers: a1 production, a2
// same-city DR, b1 remote DR, each DR center's controller keeping its
// repository) with 9 simulated hosts whose VM disks are sparse files.
type drCluster struct {
	dir   string
	addrs []string
	conn  *grpc.ClientConn
	ctx   context.Context
	vms   yunchiv1.VMServiceClient
	prot  yunchiv1.ProtectionServiceClient
	bk    yunchiv1.BackupServiceClient
	topo  yunchiv1.TopologyServiceClient
	admin string
}

func startDRCluster(t *testing.T) *drCluster {
	t.Helper()
	dir := t.TempDir()
	addrs, _, out := runDev(t, devcluster.Config{DataDir: dir, BasePort: freeBase(t), Hosts: 9, NoLogin: true})
	return newDRCluster(t, dir, addrs, out)
}

func newDRCluster(t *testing.T, dir string, addrs []string, out *apitest.LockedBuffer) *drCluster {
	t.Helper()
	conn, admin := adminConn(t, addrs[0], out)
	return &drCluster{dir: dir, addrs: addrs, conn: conn, ctx: context.Background(), admin: admin,
		vms: yunchiv1.NewVMServiceClient(conn), prot: yunchiv1.NewProtectionServiceClient(conn),
		bk: yunchiv1.NewBackupServiceClient(conn), topo: yunchiv1.NewTopologyServiceClient(conn)}
}

// createVM creates a running VM with a 1 GiB disk in center a1 and
// returns it with the path of its disk file.
func (c *drCluster) createVM(t *testing.T, name string) (*yunchiv1.VM, string) {
	t.Helper()
	if _, err := c.vms.CreateVM(c.ctx, &yunchiv1.CreateVMRequest{Name: name, Vcpus: 1, Memory: "512MiB", Disk: "1GiB", Center: "a1"}); err != nil {
		t.Fatal(err)
	}
	vm := c.waitVM(t, name, yunchiv1.VMPhase_VM_PHASE_RUNNING)
	return vm, c.diskOf(vm)
}

func (c *drCluster) diskOf(vm *yunchiv1.VM) string {
	return filepath.Join(c.dir, "hosts", vm.HostId+"-disks", vm.Id+".img")
}

func (c *drCluster) waitVM(t *testing.T, name string, phase yunchiv1.VMPhase) *yunchiv1.VM {
	t.Helper()
	var vm *yunchiv1.VM
	apitest.Eventually(t, 60*time.Second, "vm "+name+" "+phase.String(), func() bool {
		v, err := c.vms.GetVM(c.ctx, &yunchiv1.GetVMRequest{Name: name})
		vm = v
		return err == nil && v.Phase == phase
	})
	return vm
}

// points lists a VM's restore points in a center, newest first.
func (c *drCluster) points(t *testing.T, vm, center string) []*yunchiv1.RestorePoint {
	t.Helper()
	r, err := c.bk.ListRestorePoints(c.ctx, &yunchiv1.ListRestorePointsRequest{Vm: vm, Center: center})
	if err != nil {
		t.Fatal(err)
	}
	return r.Points
}

// holding lists the ids of the VMs' restore points in a center.
func (c *drCluster) holding(t *testing.T, center string, vms ...string) []string {
	t.Helper()
	var ids []string
	for _, vm := range vms {
		for _, p := range c.points(t, vm, center) {
			ids = append(ids, p.Id)
		}
	}
	return ids
}

// backupNow runs a backup of vm to center and returns its new point.
func (c *drCluster) backupNow(t *testing.T, vm, center string) *yunchiv1.RestorePoint {
	t.Helper()
	before := map[string]bool{}
	for _, p := range c.points(t, vm, center) {
		before[p.Id] = true
	}
	if _, err := c.bk.RunBackup(c.ctx, &yunchiv1.RunBackupRequest{Vm: vm, Center: center}); err != nil {
		t.Fatal(err)
	}
	return c.waitNewPoint(t, vm, center, before)
}

func (c *drCluster) waitNewPoint(t *testing.T, vm, center string, before map[string]bool) *yunchiv1.RestorePoint {
	t.Helper()
	var got *yunchiv1.RestorePoint
	apitest.Eventually(t, 60*time.Second, "a new point of "+vm+" in "+center, func() bool {
		for _, p := range c.points(t, vm, center) {
			if !before[p.Id] {
				got = p
				return true
			}
		}
		return false
	})
	return got
}

func writeDisk(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// sameFile compares two files byte for byte.
func sameFile(t *testing.T, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 4*mib), make([]byte, 4*mib)
	for off := int64(0); ; off += int64(len(ba)) {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			t.Fatalf("%s and %s differ in the 4 MiB at %d", a, b, off)
		}
		if ea != nil || eb != nil {
			if (ea == nil) != (eb == nil) {
				t.Fatalf("%s and %s differ in size", a, b)
			}
			return
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Two sites, three centers end to end (issue 11) on simulated hosts: VMs
// protected with gold and silver are copied to the same-city and the
// remote repositories; a second backup after a small change moves only
// the changed chunk; unchanged data is stored once across VMs; a restore
// in another center gives the disk back byte for byte; a damaged chunk is
// named by verify and refused by a restore; retention keeps exactly what
// the policy says.
func TestTwoSitesThreeCenters(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the dev cluster")
	}
	c := startDRCluster(t)
	topo, err := c.topo.GetTopology(c.ctx, &yunchiv1.GetTopologyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(topo.Centers) != 3 || topo.Centers[1].Role != yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR || topo.Centers[1].Repository.GetMember() != "a2" ||
		topo.Centers[2].Role != yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR || len(topo.Centers[2].Voters) != 1 || len(topo.Warnings) != 0 {
		t.Fatalf("topology: %v", topo)
	}

	// Known data in g1's disk: three 4 MiB chunks, the rest a hole.
	_, g1disk := c.createVM(t, "g1")
	data := [][]byte{randomBytes(t, 4*mib), randomBytes(t, 4*mib), randomBytes(t, 4*mib)}
	for i, off := range []int64{0, 40 * mib, 100 * mib} {
		writeDisk(t, g1disk, off, data[i])
	}
	if _, err := c.prot.ProtectVM(c.ctx, &yunchiv1.ProtectVMRequest{Name: "g1", Policy: "gold"}); err != nil {
		t.Fatal(err)
	}
	// Gold: the first backups start at once, to a2 and b1.
	first := c.waitNewPoint(t, "g1", "a2", nil)
	remote := c.waitNewPoint(t, "g1", "b1", nil)
	for _, p := range []*yunchiv1.RestorePoint{first, remote} {
		d := p.Disks[0]
		// 3 data chunks and the zero chunk are new to each repository;
		// only the 3 data chunks were read.
		if d.Chunks != 256 || d.ReadChunks != 3 || d.NewChunks != 4 || d.NewBytes != 16*mib || p.Policy != "gold" {
			t.Fatalf("first point in %s: %v", p.Center, p)
		}
	}
	st, err := c.prot.GetDRStatus(c.ctx, &yunchiv1.GetDRStatusRequest{Vm: "g1"})
	if err != nil || len(st.Vms) != 1 || len(st.Vms[0].Targets) != 2 || st.Violations != 0 {
		t.Fatalf("dr status: %v %v", st, err)
	}
	for _, tg := range st.Vms[0].Targets {
		if tg.NewestPoint == "" || tg.AchievedRpoSeconds < 0 || tg.AchievedRpoSeconds > float64(tg.RpoObjectiveSeconds) {
			t.Fatalf("target %s: %v", tg.Center, tg)
		}
	}

	// The same figures as Prometheus metrics, on a follower too (once it
	// has applied the points).
	rpoLine := regexp.MustCompile(`yunchi_dr_rpo_seconds\{center="a2",policy="gold",project="default",vm="g1"\} \d`)
	var metrics []byte
	apitest.Eventually(t, 10*time.Second, "RPO metrics on a follower", func() bool {
		_, metrics, err = apitest.Do(c.addrs[1], "GET", "/metrics", "")
		return err == nil && rpoLine.Match(metrics) && strings.Contains(string(metrics), "yunchi_dr_rpo_violations 0")
	})

	// A little change: 1 MiB inside the second chunk. Only that chunk moves.
	writeDisk(t, g1disk, 41*mib, randomBytes(t, mib))
	second := c.backupNow(t, "g1", "a2")
	if d := second.Disks[0]; d.NewChunks != 1 || d.NewBytes != 4*mib || d.Chunks != 256 {
		t.Fatalf("second point: %v", second)
	}
	atSecond := filepath.Join(t.TempDir(), "g1-at-second.img")
	copyFile(t, g1disk, atSecond)

	// Silver VM with the same first chunks as g1: stored once.
	s1, s1disk := c.createVM(t, "s1")
	writeDisk(t, s1disk, 0, data[0])
	writeDisk(t, s1disk, 100*mib, data[2])
	if _, err := c.prot.ProtectVM(c.ctx, &yunchiv1.ProtectVMRequest{Name: "s1", Policy: "silver"}); err != nil {
		t.Fatal(err)
	}
	sp := c.waitNewPoint(t, "s1", "a2", nil)
	if d := sp.Disks[0]; d.NewChunks != 0 || d.ReadChunks != 2 || sp.Policy != "silver" {
		t.Fatalf("s1's chunks were all in a2's repository already: %v", sp)
	}

	// Points outlive their VM: s1 deleted, its points are listed and
	// restored by the name it had.
	if _, err := c.vms.DeleteVM(c.ctx, &yunchiv1.VMActionRequest{Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	apitest.Eventually(t, 60*time.Second, "s1 gone", func() bool {
		_, err := c.vms.GetVM(c.ctx, &yunchiv1.GetVMRequest{Name: "s1"})
		return err != nil
	})
	if ps := c.points(t, "s1", "a2"); len(ps) == 0 || ps[0].Id != sp.Id {
		t.Fatalf("a deleted VM's points: %v", ps)
	}
	if _, err := c.bk.RestoreVM(c.ctx, &yunchiv1.RestoreVMRequest{Vm: "s1", Point: sp.Id}); err != nil {
		t.Fatal(err)
	}
	s1r := c.waitVM(t, "s1-restored", yunchiv1.VMPhase_VM_PHASE_RUNNING)
	if s1r.RestoredFrom != sp.Id || s1r.Id == s1.Id {
		t.Fatalf("restored s1: %v", s1r)
	}

	// Restore g1's second point into the remote center: byte for byte.
	if _, err := c.bk.RestoreVM(c.ctx, &yunchiv1.RestoreVMRequest{Vm: "g1", Point: second.Id, Center: "b1", As: "g1-restored"}); err != nil {
		t.Fatal(err)
	}
	r := c.waitVM(t, "g1-restored", yunchiv1.VMPhase_VM_PHASE_RUNNING)
	if r.HostCenter != "b1" || r.RestoredFrom != second.Id {
		t.Fatalf("restored vm: %v", r)
	}
	sameFile(t, c.diskOf(r), atSecond)

	// Damage a chunk of g1's in a2's repository: verify names it and the
	// points that use it; a restore from such a point refuses.
	sum := sha256.Sum256(data[2])
	chunk := hex.EncodeToString(sum[:])
	path := filepath.Join(c.dir, "controllers", "a2", "backups", "a2", "chunks", chunk[:2], chunk)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("chunk %s not in a2's repository: %v", chunk, err)
	}
	b[12345] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// Every point of g1 and s1 in a2 holds that chunk. The leader keeps
	// working while verify runs: retention (every 30 s) may drop g1's
	// first point (gold keeps the newest of an hour) and gold's schedule
	// (every minute) may add one. So verify must name every point listed
	// both before and after it, and no point that was not listed before.
	holdingBefore := c.holding(t, "a2", "g1", "s1")
	v, err := c.bk.VerifyBackups(c.ctx, &yunchiv1.VerifyBackupsRequest{Center: "a2"})
	if err != nil {
		t.Fatal(err)
	}
	holdingAfter := c.holding(t, "a2", "g1", "s1")
	named := map[string]bool{}
	for _, id := range v.DamagedPoints {
		named[id] = true
		if !slices.Contains(holdingBefore, id) {
			t.Fatalf("verify names point %s, not a point of g1 or s1 in a2 (%v): %v", id, holdingBefore, v)
		}
	}
	for _, id := range holdingAfter {
		if slices.Contains(holdingBefore, id) && !named[id] {
			t.Fatalf("verify does not name point %s, which holds chunk %s: %v", id, chunk[:12], v)
		}
	}
	if len(v.Damaged) != 1 || v.Damaged[0].Sha256 != chunk || !named[sp.Id] {
		t.Fatalf("verify: %v; the points in a2 that hold chunk %s: %v", v, chunk[:12], holdingBefore)
	}
	newest := c.points(t, "g1", "a2")[0]
	if _, err := c.bk.RestoreVM(c.ctx, &yunchiv1.RestoreVMRequest{Vm: "g1", Point: newest.Id, As: "g1-bad"}); err != nil {
		t.Fatal(err)
	}
	bad := c.waitVM(t, "g1-bad", yunchiv1.VMPhase_VM_PHASE_FAILED)
	if !strings.Contains(bad.Message, chunk[:12]) {
		t.Fatalf("a restore from a damaged point: %q does not name chunk %s", bad.Message, chunk)
	}

	// Retention: a policy keeping the last 2 points in a2.
	if _, err := c.prot.CreatePolicy(c.ctx, &yunchiv1.CreatePolicyRequest{Policy: &yunchiv1.Policy{Name: "last2",
		Targets: []*yunchiv1.PolicyTarget{{Center: "a2", IntervalSeconds: 3600, Retention: &yunchiv1.Retention{KeepLast: 2}}}}}); err != nil {
		t.Fatal(err)
	}
	_, k1disk := c.createVM(t, "k1")
	if _, err := c.prot.ProtectVM(c.ctx, &yunchiv1.ProtectVMRequest{Name: "k1", Policy: "last2"}); err != nil {
		t.Fatal(err)
	}
	c.waitNewPoint(t, "k1", "a2", nil)
	var kept []string
	for i := 0; i < 3; i++ {
		writeDisk(t, k1disk, int64(i)*8*mib, randomBytes(t, mib))
		kept = append(kept, c.backupNow(t, "k1", "a2").Id)
	}
	apitest.Eventually(t, 60*time.Second, "retention to keep the last 2 points of k1", func() bool {
		ps := c.points(t, "k1", "a2")
		return len(ps) == 2 && ps[0].Id == kept[2] && ps[1].Id == kept[1]
	})
	gc, err := c.bk.CollectGarbage(c.ctx, &yunchiv1.CollectGarbageRequest{Center: "a2"})
	if err != nil || gc.ChunksKept == 0 {
		t.Fatalf("gc: %v %v", gc, err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
