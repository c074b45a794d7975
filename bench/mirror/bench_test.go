//go:build linux

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/internal/benchkit"
)

func TestParseReport(t *testing.T) {
	for _, c := range []struct {
		line string
		us   float64
		ok   bool
	}{
		{"4096,1,0:00:00.00,1162131.535,250.000", 4000, true},
		{"4096,1,0:00:00.00,3819409.800,2000.000\n", 500, true},
		{"wrote 4096/4096 bytes at offset 0", 0, false},
		{"4 KiB, 1 ops; 00.00 sec (1.171 MiB/sec and 299.8792 ops/sec)", 0, false},
		{"8192,1,0:00:00.00,1,250.000", 0, false}, // not one of our writes
		{"4096,2,0:00:00.00,1,250.000", 0, false},
		{"4096,1,0:00:00.00,1,0", 0, false},
		{"4096,1,0:00:00.00,1,inf", 0, false},
		{"", 0, false},
	} {
		us, ok := parseReport(c.line)
		if ok != c.ok || us != c.us {
			t.Errorf("parseReport(%q) = %v, %v; want %v, %v", c.line, us, ok, c.us, c.ok)
		}
	}
}

func TestParseCacheMode(t *testing.T) {
	// QEMU 7.2's HMP info block, two drives.
	out := "libvirt-2-format: /pool/root (qcow2)\r\n" +
		"    Attached to:      /machine/peripheral/virtio-disk0/virtio-backend\r\n" +
		"    Cache mode:       writeback\r\n" +
		"    Backing file:     /img (chain depth: 1)\r\n" +
		"\r\n" +
		"libvirt-1-format: /pool/seed.iso (raw, read-only)\r\n" +
		"    Attached to:      ide0-1-0\r\n" +
		"    Removable device: not locked, tray closed\r\n" +
		"    Cache mode:       writethrough\r\n"
	for _, c := range []struct{ device, want string }{
		{"virtio-disk0/virtio-backend", "writeback"},
		{"ide0-1-0", "writethrough"},
	} {
		if got, err := parseCacheMode(out, c.device); err != nil || got != c.want {
			t.Errorf("cache mode of %s: %q, %v; want %q", c.device, got, err, c.want)
		}
	}
	if _, err := parseCacheMode(out, "virtio-disk9/virtio-backend"); err == nil {
		t.Error("a device not listed has a cache mode")
	}
}

func TestPercentile(t *testing.T) {
	var xs []float64
	for i := 20; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	if got := percentile(xs, 0.5); got != 10 {
		t.Errorf("p50 of 1..20 = %v, want 10", got)
	}
	if got := percentile(xs, 0.99); got != 20 {
		t.Errorf("p99 of 1..20 = %v, want 20", got)
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
	if xs[0] != 20 {
		t.Error("percentile reordered its input")
	}
}

func TestConfigCheck(t *testing.T) {
	if err := (&config{writes: 200, rounds: 4, diskMiB: 256}).check(); err != nil {
		t.Fatalf("the defaults: %v", err)
	}
	for _, c := range []struct {
		cfg  config
		want string
	}{
		{config{writes: 200, rounds: 0, diskMiB: 256}, "-rounds 0"},
		{config{writes: 3, rounds: 4, diskMiB: 256}, "-writes 3"},
		{config{writes: 200, rounds: 4, diskMiB: 64}, "-disk 64"},
	} {
		err := c.cfg.check()
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("check(%+v) = %v, want one line with %q", c.cfg, err, c.want)
		}
	}
}

// The whole benchmark on a tiny run: it prints every figure, and leaves
// no QEMU, libvirtd, qemu-nbd or file of its own behind.
func TestRunSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real QEMU guest")
	}
	if why := skipReason(); why != "" {
		t.Skip(why)
	}
	// Not t.TempDir(): its long path would put libvirtd's socket past
	// the 107 bytes a unix socket path may have.
	tmp, err := os.MkdirTemp("/tmp", "bm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, config{writes: 6, rounds: 2, diskMiB: 128, tmpDir: tmp, cacheDir: t.TempDir(), seed: 1}, &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	got, err := benchkit.ParseLines(out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{
		"mirror_ready_p50_ms", "plain_write_p50_us", "plain_write_p99_us", "mirror_write_p50_us", "mirror_write_p99_us",
		"mirror_wt_write_p50_us", "plain_fua_write_p50_us", "mirror_fua_write_p50_us", "mirror_wt_fua_write_p99_us",
		"overhead_ratio", "wt_overhead_ratio", "fua_overhead_ratio", "plain_rtt_p50_us", "mirror_rtt_p50_us",
	} {
		v, ok := got[k]
		if !ok {
			t.Errorf("no %s in the output:\n%s", k, out.String())
			continue
		}
		if n, err := strconv.ParseFloat(strings.Fields(v)[0], 64); err != nil || n <= 0 {
			t.Errorf("%s: %q, want a positive number", k, v)
		}
	}
	if _, ok := got["overhead_p50_us"]; !ok {
		t.Errorf("no overhead_p50_us in the output:\n%s", out.String())
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("run left %v in %s", left, tmp)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(tmp)) {
			t.Errorf("a process of the run still runs: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}
