//go:build linux

// Command bench/mirror is `make bench-mirror`: what a platinum VM's
// synchronous mirror (agent/libvirt/mirror.go, issue 12) costs each small
// write, beside the same disk unmirrored, in the same run. It starts one
// private libvirtd + QEMU host (internal/libvirthost), boots a TCG guest
// from the tiny image (internal/tinyimage) whose root disk is a qcow2
// overlay, as the agent makes it (QEMU's cache mode of the disk, writeback,
// is checked and reported), and two
// mirror exports on loopback (agent.MirrorExports: qemu-nbd on a raw
// sparse file, one with the default writeback cache, one writethrough).
// It writes the disk past the image whole once (the writes measured then
// overwrite data), then in each of -rounds rounds, the disk's three states
// in turn (unmirrored, mirrored to the writeback export, mirrored to the
// writethrough one; the order turns from round to round):
//
//   - the mirror is started and waited for until its mirroring phase
//     (every write then completes on both sides), or there is none;
//   - -writes/-rounds 4 KiB writes at random 4 KiB-aligned offsets, one
//     after the other, each through the guest's virtio disk (HMP qemu-io
//     on its block backend, the path a guest's write takes through QEMU's
//     block layer, the mirror's filter included), then as many with FUA
//     (on stable storage when it completes, as an O_DSYNC write asks;
//     the mirror sends it to the export as a FUA write too);
//   - the mirror is stopped, and its export is checked to hold the last
//     write.
//
// Each write's latency is QEMU's own timing of it (qemu-io -C, read from
// QEMU's log): what the guest would wait, without the libvirt and monitor
// round trip, which is reported apart (rtt). It prints `name: value` lines
// on stdout; progress goes to stderr. The host, its guest, the exports'
// qemu-nbd and every file are removed when it ends, also on an error or
// Ctrl-C. Without root, libvirtd, QEMU, qemu-nbd or what the tiny image is
// built from it says why and exits 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/yunchi/yunchi/internal/libvirthost"
	"github.com/yunchi/yunchi/internal/tinyimage"
)

type config struct {
	// writes is the number of writes of each series (over all rounds).
	writes, rounds int
	diskMiB        int
	// tmpDir is where the run's temp dir is made ("": $TMPDIR). The
	// host's libvirtd socket lives under it: a unix socket path has at
	// most 107 bytes.
	tmpDir string
	// cacheDir keeps the tiny image between runs ("": the user's cache
	// dir, as `yunchid dev`).
	cacheDir string
	seed     uint64
}

func main() {
	var cfg config
	flag.IntVar(&cfg.writes, "writes", 200, "4 KiB writes of each series (unmirrored, mirrored; plain and FUA), over all rounds")
	flag.IntVar(&cfg.rounds, "rounds", 4, "rounds: each measures every series with writes/rounds writes")
	flag.IntVar(&cfg.diskMiB, "disk", 256, "the guest's root disk, MiB (the mirror copies all of it first)")
	flag.StringVar(&cfg.tmpDir, "tmp", "", "where the run's temp dir is made (default $TMPDIR; keep it short: libvirtd's socket is under it)")
	flag.Uint64Var(&cfg.seed, "seed", 1, "seed of the write offsets")
	flag.StringVar(&cfg.cacheDir, "cache", "", "where the tiny image is cached (default: the user's cache dir/yunchi, as yunchid dev)")
	flag.Parse()
	if cfg.cacheDir == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench-mirror: %v\n", err)
			os.Exit(2)
		}
		cfg.cacheDir = filepath.Join(d, "yunchi")
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintf(os.Stderr, "bench-mirror: %v\n", err)
		os.Exit(2)
	}
	if why := skipReason(); why != "" {
		fmt.Fprintf(os.Stderr, "bench-mirror: cannot run here: %s\n", why)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench-mirror: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		os.Exit(1)
	}
}

// check refuses flags the run cannot be made with.
func (c *config) check() error {
	switch {
	case c.rounds < 1:
		return fmt.Errorf("-rounds %d: give 1 or more", c.rounds)
	case c.writes < c.rounds || c.writes > 100000:
		return fmt.Errorf("-writes %d: give %d (one a round) to 100000", c.writes, c.rounds)
	case c.diskMiB < 128 || c.diskMiB > 64<<10:
		return fmt.Errorf("-disk %d: give 128 to 65536 MiB", c.diskMiB)
	}
	return nil
}

// skipReason says why the benchmark cannot run here ("" when it can).
func skipReason() string {
	if why := libvirthost.Available(); why != "" {
		return why
	}
	for _, bin := range []string{"qemu-nbd", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Sprintf("needs %s (apt-get install qemu-utils)", bin)
		}
	}
	return tinyimage.Available()
}

var errNoLines = errors.New("QEMU's log has not the expected qemu-io lines")
