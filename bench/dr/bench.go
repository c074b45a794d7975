//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/yunchi/yunchi/internal/benchkit"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/yunchi/yunchi/internal/qemuhost"
	"github.com/yunchi/yunchi/internal/tinyimage"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const (
	// sameCity is the dev cluster's same-city DR center, where every
	// figure's backups go.
	sameCity = "a2"
	// benchPolicy copies to sameCity hourly (so the schedule leaves the
	// benchmark's backups alone once the first is made) and keeps the
	// last -points.
	benchPolicy = "bench-hourly"
	// vmMemory of every VM (simulated hosts have room for hundreds).
	vmMemory = "512MiB"
)

// realSkipReason says why the real host is left out ("" when it is in).
func realSkipReason(cfg config) string {
	if cfg.real == "off" {
		return "-real off"
	}
	if why := qemuhost.Available(); why != "" {
		return why
	}
	return tinyimage.Available() // the dev cluster imports the tiny image for real hosts
}

// run measures and prints the figures, also those of a run cut short.
func run(ctx context.Context, cfg config, out io.Writer) (err error) {
	dir, err := os.MkdirTemp(cfg.tmpDir, "yunchi-bench-dr-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var ls lines
	header(&ls, cfg)
	defer func() {
		ls.Add("mem_available_mib_at_end", "%d", benchkit.MemAvailableMiB())
		ls.Add("loadavg_at_end", "%s", benchkit.Loadavg())
		ls.Print(out)
	}()
	realHosts := 1
	if cfg.only != "" {
		realHosts = 0
		ls.Add("real_host", "skipped: -only %s", cfg.only)
	} else if why := realSkipReason(cfg); why != "" {
		realHosts = 0
		benchkit.Progress("the real-host figures are left out: %s", why)
		ls.Add("real_host", "skipped: %s", why)
	}
	if err := checkRoom(dir, cfg, realHosts > 0); err != nil {
		return err
	}
	benchkit.Progress("starting the dev cluster (3 controllers, %d simulated hosts, %d real) in %s", cfg.hosts, realHosts, dir)
	started := time.Now()
	cl, err := startCluster(ctx, filepath.Join(dir, "dev"), cfg.cacheDir, cfg.hosts, realHosts)
	if err != nil {
		return err
	}
	defer func() {
		benchkit.Progress("stopping the dev cluster")
		err = errors.Join(err, cl.close())
	}()
	ls.Add("cluster_start_s", "%s", secs(time.Since(started)))
	if _, err := cl.prot.CreatePolicy(ctx, &yunchiv1.CreatePolicyRequest{Policy: &yunchiv1.Policy{
		Name: benchPolicy, Description: "bench-dr: same-city DR hourly, keep the last points",
		Targets: []*yunchiv1.PolicyTarget{{Center: sameCity, IntervalSeconds: 3600, Retention: &yunchiv1.Retention{KeepLast: int32(cfg.points)}}},
	}}); err != nil {
		return fmt.Errorf("create policy %s: %w", benchPolicy, err)
	}
	b := &bench{c: cl, cfg: cfg, ls: &ls, dir: dir}
	lw := cl.watchLeader()
	var changes []string
	defer func() {
		lw.close()
		ls.Add("leader_changes", "%d (%s; GetClusterStatus polled every second)", lw.count(), strings.Join(changes, ", "))
	}()
	for _, step := range []struct {
		name string
		fn   func(context.Context) error
		skip bool
	}{
		{"space", b.space, cfg.only != ""},
		{"simulated throughput", b.simThroughput, cfg.only != ""},
		{"real-host throughput", b.realThroughput, realHosts == 0},
		{"rpo", b.rpo, cfg.rpoVMs == 0 || cfg.only != ""},
		// Last: it takes center a1 down.
		{"failover", b.failover, cfg.failoverVMs == 0},
	} {
		if step.skip {
			continue
		}
		benchkit.Progress("== %s", step.name)
		n := lw.count()
		err := step.fn(ctx)
		changes = append(changes, fmt.Sprintf("%s %d", step.name, lw.count()-n))
		if err != nil {
			return fmt.Errorf("%s: %w", step.name, err)
		}
	}
	return nil
}

// checkRoom refuses a run whose files would not fit in dir's file system.
// At most: the space VM's repository (about twice its disk, kept), then
// the larger of the simulated step (disk, its repository, cp's copy) and
// the real one (the simulated disk's repository is kept; qcow2, its
// repository, cp's copy), then the RPO VMs' data in the disks and two
// repositories.
func checkRoom(dir string, cfg config, real bool) error {
	disk := func(n int64) int64 { return max(n, minDisk) }
	need := 2*cfg.spaceSizeBytes + 3*disk(cfg.sizeBytes)
	if real {
		need = 2*cfg.spaceSizeBytes + max(3*disk(cfg.sizeBytes), cfg.sizeBytes+3*disk(cfg.realSizeBytes))
	}
	need += 3*int64(cfg.rpoVMs)*cfg.rpoDataBytes + minDisk // and a margin
	if cfg.only == "failover" {
		need = 0
	}
	need += 4 * int64(cfg.failoverVMs) * failoverData // disks in a1 and a2, two repositories
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("free space of %s: %w", dir, err)
	}
	if free := int64(st.Bavail) * int64(st.Bsize); free < need {
		return fmt.Errorf("%s has %d MiB free, the run needs about %d MiB: give smaller -size, -real-size or -space-size, or -real off", dir, free/mib, need/mib)
	}
	return nil
}

// bench is one run's state.
type bench struct {
	c   *cluster
	cfg config
	ls  *lines
	dir string // the run's temp dir
	// stream counts the random streams handed out: each use of the seed
	// gets its own.
	stream uint64
}

// rng is a new random stream of the run's seed.
func (b *bench) rng() *rand.ChaCha8 {
	b.stream++
	var s [32]byte
	for i := range 8 {
		s[i] = byte(b.cfg.seed >> (8 * i))
		s[8+i] = byte(b.stream >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

// backup is one timed backup: from the call that starts it to its point
// listed by the API.
type backup struct {
	point *yunchiv1.RestorePoint
	wall  time.Duration
	cpu   time.Duration // this process's CPU meanwhile (controllers, agents, repositories)
}

// timedBackup starts a backup of vm to sameCity with start (protecting
// it, or RunBackup) after dropping the page cache, and waits for its
// point.
func (b *bench) timedBackup(ctx context.Context, vm string, size int64, start func() error) (backup, error) {
	ps, err := b.c.points(ctx, vm, sameCity)
	if err != nil {
		return backup{}, err
	}
	if err := dropCaches(b.cfg.dropCaches); err != nil {
		return backup{}, err
	}
	cpu0, begun := cpuTime(), time.Now()
	if err := start(); err != nil {
		return backup{}, err
	}
	// Generous: 8 MiB/s would be very slow here.
	p, seen, err := b.c.waitNewPoint(ctx, vm, sameCity, pointIDs(ps), 2*time.Minute+time.Duration(size/(8*mib))*time.Second)
	if err != nil {
		return backup{}, err
	}
	if len(p.Disks) != 1 {
		return backup{}, fmt.Errorf("point %s of %s has %d disks, want 1", p.Id, vm, len(p.Disks))
	}
	return backup{point: p, wall: seen.Sub(begun), cpu: cpuTime() - cpu0}, nil
}

func (b *bench) protect(ctx context.Context, vm, policy string) func() error {
	return func() error {
		_, err := b.c.prot.ProtectVM(ctx, &yunchiv1.ProtectVMRequest{Name: vm, Policy: policy})
		if err != nil {
			return fmt.Errorf("protect %s with %s: %w", vm, policy, err)
		}
		return nil
	}
}

func (b *bench) runBackup(ctx context.Context, vm string) func() error {
	return func() error {
		_, err := b.c.bk.RunBackup(ctx, &yunchiv1.RunBackupRequest{Vm: vm, Center: sameCity})
		if err != nil {
			return fmt.Errorf("run backup of %s: %w", vm, err)
		}
		return nil
	}
}

// addBackup adds a backup's figures as PREFIX_*: its time and rate over
// the disk's data bytes, the agent's own time (from the view's opening
// to its report), CPU, and the disk's chunk counts.
func (b *bench) addBackup(prefix string, r backup, data int64, extra string) {
	d := r.point.Disks[0]
	agent := time.Duration(r.point.DurationMillis) * time.Millisecond
	b.ls.Add(prefix+"_s", "%s (%s MiB/s of the disk's %s MiB of data; incremental=%v%s)", secs(r.wall), rate(data, r.wall), mibs(data), r.point.Incremental, extra)
	b.ls.Add(prefix+"_agent_s", "%s (%s MiB/s: the agent's job, view opened to report, without scheduling and the report's commit)", secs(agent), rate(data, agent))
	b.ls.Add(prefix+"_cpu_s", "%s (this process: controllers, agents, repositories)", secs(r.cpu))
	b.ls.Add(prefix+"_chunks", "read %d, new %d (%s MiB) of %d", d.ReadChunks, d.NewChunks, mibs(d.NewBytes), d.Chunks)
}

// minDisk is the smallest disk a VM can have.
const minDisk = 1 << 30

// newSimVM creates a running VM on a simulated host of a1 with a disk of
// size (at least minDisk) and fills the first size bytes of its disk
// file with random data.
func (b *bench) newSimVM(ctx context.Context, name string, size int64) (*yunchiv1.VM, string, error) {
	if _, err := b.c.vms.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: name, Vcpus: 1, Memory: vmMemory,
		Disk: fmt.Sprintf("%dMiB", max(size, minDisk)/mib), Center: "a1", Constraints: []string{"simulated=true"}}); err != nil {
		return nil, "", fmt.Errorf("create %s: %w", name, err)
	}
	vm, err := b.c.waitVM(ctx, name, yunchiv1.VMPhase_VM_PHASE_RUNNING, 2*time.Minute)
	if err != nil {
		return nil, "", err
	}
	path := b.c.simDisk(vm)
	benchkit.Progress("%s: writing %d MiB of random data into %s", name, size/mib, path)
	begun := time.Now()
	if err := fillRandom(ctx, path, size, b.rng()); err != nil {
		return nil, "", err
	}
	benchkit.Progress("%s: written in %s", name, time.Since(begun).Round(time.Millisecond))
	return vm, path, nil
}

// space: -points points of one VM, -change of its disk changed before
// each after the first, against as many full copies.
func (b *bench) space(ctx context.Context) error {
	size := b.cfg.spaceSizeBytes
	before, err := b.c.bk.GetRepository(ctx, &yunchiv1.GetRepositoryRequest{Center: sameCity})
	if err != nil {
		return fmt.Errorf("repository of %s: %w", sameCity, err)
	}
	const name = "space"
	_, path, err := b.newSimVM(ctx, name, size)
	if err != nil {
		return err
	}
	rng := rand.New(b.rng())
	var newBytes int64
	var touched int
	var took []time.Duration
	for i := range b.cfg.points {
		start := b.runBackup(ctx, name)
		if i == 0 {
			start = b.protect(ctx, name, benchPolicy)
		} else {
			ps := changes(rng, size, b.cfg.change)
			touched += chunksTouched(ps)
			if err := writePieces(path, ps, b.rng()); err != nil {
				return err
			}
		}
		r, err := b.timedBackup(ctx, name, size, start)
		if err != nil {
			return err
		}
		newBytes += r.point.Disks[0].NewBytes
		took = append(took, r.wall)
		benchkit.Progress("space: point %d of %d: %s s, %d chunks new", i+1, b.cfg.points, secs(r.wall), r.point.Disks[0].NewChunks)
	}
	ps, err := b.c.points(ctx, name, sameCity)
	if err != nil {
		return err
	}
	if len(ps) != b.cfg.points {
		return fmt.Errorf("%d points of %s in %s, want %d (policy %s keeps the last %d)", len(ps), name, sameCity, len(ps), benchPolicy, b.cfg.points)
	}
	after, err := b.c.bk.GetRepository(ctx, &yunchiv1.GetRepositoryRequest{Center: sameCity})
	if err != nil {
		return fmt.Errorf("repository of %s: %w", sameCity, err)
	}
	stored := after.StoredBytes - before.StoredBytes
	full := int64(b.cfg.points) * size
	du, err := dirUsage(filepath.Join(b.c.dir, "controllers", sameCity, "backups", sameCity))
	if err != nil {
		return err
	}
	b.ls.Add("space_disk_mib", "%s (all of it random data; %d points, %.2g%% changed before each after the first, in pieces of 64 KiB to 4 MiB)", mibs(size), b.cfg.points, 100*b.cfg.change)
	b.ls.Add("space_repo_stored_mib", "%s (%d chunks; GetRepository stored_bytes of %s, the space VM's alone)", mibs(stored), after.Chunks-before.Chunks, sameCity)
	b.ls.Add("space_full_copies_mib", "%s (%d x the disk)", mibs(full), b.cfg.points)
	b.ls.Add("space_stored_of_full_pct", "%.2f", 100*float64(stored)/float64(full))
	b.ls.Add("space_points_new_mib_sum", "%s (sum of the points' new_bytes)", mibs(newBytes))
	b.ls.Add("space_chunks_touched", "%d (by the %d changes: %s MiB of 4 MiB chunks)", touched, b.cfg.points-1, mibs(int64(touched)*chunkSize))
	b.ls.Add("space_repo_du_mib", "%s (du of %s's repository dir: chunks and manifests)", mibs(du), sameCity)
	b.ls.Add("space_point_s_p50", "%s (per point after the first; max %s)", secs(percentile(took[1:], 0.5)), secs(percentile(took[1:], 1)))
	return b.c.deleteVM(ctx, name)
}

// simThroughput: full and incremental backup of a -size disk on a
// simulated host, beside cp and sha256sum of its file.
func (b *bench) simThroughput(ctx context.Context) error {
	size := b.cfg.sizeBytes
	const name = "tp-sim"
	_, path, err := b.newSimVM(ctx, name, size)
	if err != nil {
		return err
	}
	if b.cfg.cpuProfile != "" {
		f, err := os.Create(b.cfg.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	benchkit.Progress("%s: full backup", name)
	full, err := b.timedBackup(ctx, name, size, b.protect(ctx, name, benchPolicy))
	if b.cfg.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return err
	}
	b.addBackup("sim_full", full, size, "")
	ps := changes(rand.New(b.rng()), size, b.cfg.change)
	if err := writePieces(path, ps, b.rng()); err != nil {
		return err
	}
	b.ls.Add("sim_change", "%s MiB in %d pieces, %d chunks touched", mibs(changeBytes(ps)), len(ps), chunksTouched(ps))
	benchkit.Progress("%s: incremental backup", name)
	incr, err := b.timedBackup(ctx, name, size, b.runBackup(ctx, name))
	if err != nil {
		return err
	}
	b.addBackup("sim_incr", incr, size, "")
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if err := baselines(ctx, b.ls, b.cfg.dropCaches, "sim", path, filepath.Join(b.dir, "copy"), st.Size()); err != nil {
		return err
	}
	return b.c.deleteVM(ctx, name)
}
