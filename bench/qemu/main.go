//go:build linux

// Command bench/qemu is `make bench-qemu`: how long a VM takes from the
// create call to running on a real QEMU host through Yunchi, beside libvirt
// alone doing the same define+start on the same host in the same run
// (issue 10). It starts `yunchid dev --real-hosts 1` in process (three
// controllers, one private libvirtd + QEMU host with its agent, the public
// image "tiny"), then:
//
//  1. one VM from the image, cold: the host fetches the image first
//     (reported apart, not in the figures below);
//  2. -seq VMs one after the other, each created through the API
//     (CreateVM, sysadmin token) and timed until WatchVM shows it RUNNING,
//     then deleted; interleaved with the same number of libvirt-alone
//     define+starts (the same volumes, seed and domain XML the agent's
//     driver makes, rendered before the clock starts), each timed until
//     virDomainCreate returns, then destroyed;
//  3. -burst VMs created at once (one CreateVMs call), timed until all are
//     RUNNING in WatchVM, then deleted; and libvirt alone doing the same
//     define+starts three ways: all at once (a connection each), 4 at a
//     time on one connection (as the agent does), one after the other.
//     The VMs have an empty disk and a seed, and their firmware finds
//     nothing to boot: 50 guests booting Linux under TCG would starve a
//     small machine of CPU, and that, not Yunchi or libvirt, would be
//     measured. -burst-image adds the same burst from the image, booting.
//     The order of the four turns from round to round (-bursts).
//
// It prints `name: value` lines on stdout; progress goes to stderr. The
// dev cluster (agent, libvirtd, every guest) is stopped and the temp dir
// removed when it ends, also on an error or Ctrl-C. Without root or
// libvirtd/QEMU it says why and exits 0 without measuring.
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

	"github.com/yunchi/yunchi/internal/qemuhost"
	"github.com/yunchi/yunchi/internal/tinyimage"
)

type config struct {
	seq, burst, bursts int
	// burstImage also measures the burst with VMs from the image, whose
	// guests boot (and on a small machine starve each other of CPU).
	burstImage  bool
	memory      string
	memoryBytes int64
	// cacheDir keeps the tiny image between runs ("": the user's cache
	// dir, as `yunchid dev`).
	cacheDir string
	// tmpDir is where the run's temp dir is made ("": $TMPDIR). The hosts'
	// libvirtd sockets live under it: a unix socket path has at most 107
	// bytes.
	tmpDir string
}

func main() {
	var cfg config
	flag.IntVar(&cfg.seq, "seq", 20, "VMs created one after the other, each way (Yunchi, libvirt alone)")
	flag.IntVar(&cfg.burst, "burst", 50, "VMs created at once, each way (1 to 100; 0 skips)")
	flag.IntVar(&cfg.bursts, "bursts", 1, "how many times the burst is measured, each way")
	flag.StringVar(&cfg.memory, "memory", "128MiB", "memory of every VM (MiB or GiB)")
	flag.BoolVar(&cfg.burstImage, "burst-image", false, "also measure the burst with VMs from the image, booting (minutes on a small machine)")
	flag.Parse()
	if err := cfg.check(); err != nil {
		fmt.Fprintf(os.Stderr, "bench-qemu: %v\n", err)
		os.Exit(2)
	}
	if why := skipReason(); why != "" {
		fmt.Fprintf(os.Stderr, "bench-qemu: skipped: %s\n", why)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench-qemu: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		os.Exit(1)
	}
}

// check refuses flags the run cannot be made with.
func (c *config) check() error {
	if c.seq < 1 {
		return fmt.Errorf("-seq %d: give 1 or more", c.seq)
	}
	if c.burst < 0 || c.burst > 100 {
		return fmt.Errorf("-burst %d: give 0 to 100 (CreateVMs makes at most 100)", c.burst)
	}
	if c.bursts < 1 {
		return fmt.Errorf("-bursts %d: give 1 or more", c.bursts)
	}
	n, err := parseMemory(c.memory)
	if err != nil {
		return fmt.Errorf("-memory %q: %v", c.memory, err)
	}
	c.memoryBytes = n
	return nil
}

// parseMemory reads "128MiB" or "1GiB"; at least 64 MiB, for the tiny
// image's kernel to boot in.
func parseMemory(s string) (int64, error) {
	unit := int64(0)
	num := s
	switch {
	case strings.HasSuffix(s, "MiB"):
		unit, num = 1<<20, strings.TrimSuffix(s, "MiB")
	case strings.HasSuffix(s, "GiB"):
		unit, num = 1<<30, strings.TrimSuffix(s, "GiB")
	default:
		return 0, errors.New("give MiB or GiB, e.g. 128MiB")
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > 64<<10 {
		return 0, errors.New("give a positive whole number of MiB or GiB, e.g. 128MiB")
	}
	if n*unit < 64<<20 {
		return 0, errors.New("at least 64MiB (the guest boots a kernel)")
	}
	return n * unit, nil
}

// skipReason says why the benchmark cannot run here ("" when it can).
func skipReason() string {
	if why := qemuhost.Available(); why != "" {
		return why
	}
	return tinyimage.Available()
}

// lines are the output figures, printed in the order added.
type lines = benchkit.Lines

func header(ls *lines, cfg config) {
	ls.Add("cpus", "%d", runtime.NumCPU())
	ls.Add("mem_available_mib_at_start", "%d", benchkit.MemAvailableMiB())
	ls.Add("loadavg_at_start", "%s", benchkit.Loadavg())
	ls.Add("vm_shape", "1 vCPU, %s, root disk = qcow2 overlay of image %q (raw), NoCloud seed ISO, user-mode NIC, logged serial console; domain type qemu (TCG)", cfg.memory, "tiny")
}
