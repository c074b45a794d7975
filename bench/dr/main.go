//go:build linux

// Command bench/dr is `make bench-dr`: the backup figures of issue 11
// (two sites, three centers), measured through the real code path in
// process. It starts the dev cluster (devcluster.Run: three controllers,
// a1 production, a2 same-city DR and b1 remote DR, the DR centers'
// repositories kept by their controllers; -hosts simulated hosts whose VM
// disks are sparse files; and, with root and libvirtd/QEMU, one real QEMU
// host qemu-1 in a1), then, in order:
//
//  1. Space: a VM with a -space-size disk full of random data, under a
//     policy copying to a2 hourly and keeping the last -points points;
//     the first point, then -points-1 more, each after changing -change
//     of the disk (scattered pieces of 64 KiB to 4 MiB); a2's repository
//     size against -points full copies.
//  2. Throughput on a simulated host: a -size disk full of random data,
//     its full backup (the first point), -change of it changed, its
//     incremental backup; then `cp` of the disk file (and an fsync of the
//     copy) and `sha256sum` of it, the limit on this machine. A simulated
//     host has no dirty bitmap: each backup reads every data extent of
//     the file and sends the chunks whose hash is new.
//  3. Throughput on the real host (skipped without one): an empty
//     -real-size qcow2 root disk filled with random data through QEMU
//     (HMP qemu-io on the running guest's disk, in 64 MiB writes, as the
//     guest's own writes would land), full backup (pull mode, a
//     checkpoint made with it), -change written the same way, the
//     incremental backup (only the blocks in the checkpoint's dirty
//     bitmap are read); then `cp` and `sha256sum` of the qcow2 file.
//  4. RPO: -rpo-vms VMs with small disks (-rpo-data of random data each)
//     protected with gold; the schedule runs for -rpo-duration after the
//     first full round, a 1 MiB write lands in a few disks every 5 s, and
//     every 5 s the age of each VM's newest a2 point is sampled
//     (GetDRStatus achieved_rpo_seconds): p50, p99, max and the samples
//     over the 60 s objective.
//  5. Failover: -failover-vms VMs (small disks, a little random data)
//     in a1 protected with gold; once each has a point in a2, center a1
//     is stopped (the dev cluster's control endpoint) and `dr failover`
//     started from a2's controller; the run's time to all running, its
//     per-VM RTO p50/p99/max and largest data-loss window (see
//     failover.go). -only failover runs just this phase.
//
// Before each timed backup and each of cp and sha256sum it syncs and
// drops the page cache (root only; said in the output). It prints `name:
// value` lines on stdout; progress goes to stderr. The dev cluster (its
// agents, the real host's libvirtd and guest) is stopped and the temp dir
// removed when it ends, also on an error or Ctrl-C; every wait is bounded.
//
// It is a separate program, not part of yunchid: load generation has no
// place in the product binary.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/yunchi/yunchi/internal/benchkit"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	size, realSize, spaceSize, rpoData string
	// In bytes, from the strings above (check).
	sizeBytes, realSizeBytes, spaceSizeBytes, rpoDataBytes int64
	change                                                 float64 // fraction of a disk changed between points
	points                                                 int
	rpoVMs                                                 int
	rpoDuration                                            time.Duration
	hosts                                                  int
	// real: "auto" (the real host when root and libvirtd/QEMU are
	// there), "off".
	real    string
	seed    uint64
	timeout time.Duration
	// dropCaches: sync and drop the page cache before each timed backup
	// and baseline (needs root).
	dropCaches bool
	// cpuProfile, if set, receives the CPU profile of the simulated full
	// backup (the whole process: agent and repository).
	cpuProfile string
	// cacheDir keeps the tiny image between runs ("": the user's cache
	// dir, as `yunchid dev`); tmpDir is where the run's temp dir is made
	// ("": $TMPDIR; the real host's libvirtd socket lives under it, and
	// a unix socket path has at most 107 bytes).
	cacheDir, tmpDir string
	// failoverVMs: VMs failed over (0 skips the phase); only: "" (every
	// phase) or "failover" (just that one).
	failoverVMs int
	only        string
}

func main() {
	var cfg config
	flag.StringVar(&cfg.size, "size", "10GiB", "disk of the simulated throughput VM, all of it random data (MiB or GiB)")
	flag.StringVar(&cfg.realSize, "real-size", "10GiB", "disk of the real-host throughput VM, all of it random data (MiB or GiB)")
	flag.StringVar(&cfg.spaceSize, "space-size", "2GiB", "disk of the space VM, all of it random data (MiB or GiB)")
	flag.Float64Var(&cfg.change, "change", 0.01, "fraction of a disk changed between two points (0 < f <= 0.5)")
	flag.IntVar(&cfg.points, "points", 24, "restore points of the space VM (2 to 100)")
	flag.IntVar(&cfg.rpoVMs, "rpo-vms", 100, "VMs protected with gold for the RPO figures (0 skips; at most 100)")
	flag.StringVar(&cfg.rpoData, "rpo-data", "8MiB", "random data in each RPO VM's 1 GiB disk (MiB)")
	flag.DurationVar(&cfg.rpoDuration, "rpo-duration", 5*time.Minute, "how long the gold schedule is sampled after its first full round")
	flag.IntVar(&cfg.failoverVMs, "failover-vms", 100, "VMs protected with gold, then failed over from a1 to a2 (0 skips; at most 100)")
	flag.StringVar(&cfg.only, "only", "", `run one phase only: "" (all) or failover`)
	flag.IntVar(&cfg.hosts, "hosts", 15, "simulated hosts (devcluster layout: 7 of 15 in a1)")
	flag.StringVar(&cfg.real, "real", "auto", "the real QEMU host: auto (when root and libvirtd/QEMU are there) or off")
	flag.Uint64Var(&cfg.seed, "seed", 1, "seed of the data and of where changes land")
	flag.DurationVar(&cfg.timeout, "timeout", 45*time.Minute, "the whole run is given up after this")
	flag.BoolVar(&cfg.dropCaches, "drop-caches", canDropCaches(), "sync and drop the page cache before each timed backup, cp and sha256sum (root only, the default for root; the whole machine's cache)")
	flag.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write the CPU profile of the simulated full backup to this file")
	flag.Parse()
	if err := cfg.check(); err != nil {
		fmt.Fprintf(os.Stderr, "bench-dr: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	err := run(ctx, cfg, os.Stdout)
	cancel()
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench-dr: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		os.Exit(1)
	}
}

// check refuses flags the run cannot be made with.
func (c *config) check() error {
	var err error
	if c.sizeBytes, err = parseSize(c.size, 16<<20); err != nil {
		return fmt.Errorf("-size %q: %v", c.size, err)
	}
	if c.realSizeBytes, err = parseSize(c.realSize, 16<<20); err != nil {
		return fmt.Errorf("-real-size %q: %v", c.realSize, err)
	}
	if c.spaceSizeBytes, err = parseSize(c.spaceSize, 16<<20); err != nil {
		return fmt.Errorf("-space-size %q: %v", c.spaceSize, err)
	}
	if c.rpoDataBytes, err = parseSize(c.rpoData, 1<<20); err != nil {
		return fmt.Errorf("-rpo-data %q: %v", c.rpoData, err)
	}
	if c.rpoDataBytes > 512<<20 {
		return fmt.Errorf("-rpo-data %q: at most 512MiB (the RPO VMs' disks are 1 GiB)", c.rpoData)
	}
	if !(c.change > 0 && c.change <= 0.5) {
		return fmt.Errorf("-change %v: give a fraction above 0 and at most 0.5", c.change)
	}
	if c.points < 2 || c.points > 100 {
		return fmt.Errorf("-points %d: give 2 to 100", c.points)
	}
	if c.rpoVMs < 0 || c.rpoVMs > 100 {
		return fmt.Errorf("-rpo-vms %d: give 0 to 100 (CreateVMs makes at most 100)", c.rpoVMs)
	}
	if c.failoverVMs < 0 || c.failoverVMs > 100 {
		return fmt.Errorf("-failover-vms %d: give 0 to 100 (CreateVMs makes at most 100)", c.failoverVMs)
	}
	if c.only != "" && c.only != "failover" {
		return fmt.Errorf("-only %q: give failover (or nothing for every phase)", c.only)
	}
	if c.only == "failover" && c.failoverVMs == 0 {
		return errors.New("-only failover with -failover-vms 0 measures nothing: give 1 to 100 VMs")
	}
	if c.failoverVMs > 0 && c.hosts < 4 {
		return fmt.Errorf("-hosts %d: the failover needs at least 4 (a2 has none below 4)", c.hosts)
	}
	if c.rpoDuration < 5*time.Second {
		return fmt.Errorf("-rpo-duration %s: at least 5s (one sample)", c.rpoDuration)
	}
	if c.hosts < 1 || c.hosts > 45 {
		return fmt.Errorf("-hosts %d: give 1 to 45", c.hosts)
	}
	if c.real != "auto" && c.real != "off" {
		return fmt.Errorf("-real %q: give auto or off", c.real)
	}
	if c.dropCaches && !canDropCaches() {
		return errors.New("-drop-caches needs root: run as root or give -drop-caches=false (reads may then come from the page cache)")
	}
	if c.timeout < time.Minute {
		return fmt.Errorf("-timeout %s: at least 1m", c.timeout)
	}
	return nil
}

// parseSize reads "16MiB" or "10GiB": a whole number of MiB or GiB, at
// least least bytes and at most 1 TiB.
func parseSize(s string, least int64) (int64, error) {
	unit, num := int64(0), s
	switch {
	case strings.HasSuffix(s, "MiB"):
		unit, num = 1<<20, strings.TrimSuffix(s, "MiB")
	case strings.HasSuffix(s, "GiB"):
		unit, num = 1<<30, strings.TrimSuffix(s, "GiB")
	default:
		return 0, errors.New("give MiB or GiB, e.g. 10GiB")
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n*unit > 1<<40 {
		return 0, errors.New("give a positive whole number of MiB or GiB up to 1TiB, e.g. 10GiB")
	}
	if n*unit < least {
		return 0, fmt.Errorf("at least %dMiB", least>>20)
	}
	return n * unit, nil
}

// lines are the output figures, printed in the order added.
type lines = benchkit.Lines

func header(ls *lines, cfg config) {
	ls.Add("cpus", "%d", runtime.NumCPU())
	ls.Add("mem_available_mib_at_start", "%d", benchkit.MemAvailableMiB())
	ls.Add("loadavg_at_start", "%s", benchkit.Loadavg())
	if cfg.dropCaches {
		ls.Add("page_cache_dropped", "yes (sync, then echo 3 > /proc/sys/vm/drop_caches before each timed backup, cp, sha256sum and in-process hash)")
	} else {
		ls.Add("page_cache_dropped", "no (-drop-caches=false, the default without root: reads may come from the page cache)")
	}
	ls.Add("chunk_size_mib", "4")
}
