//go:build linux

package main

import (
	"bytes"
	"context"
	"github.com/yunchi/yunchi/internal/benchkit"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func defaults() config {
	return config{size: "10GiB", realSize: "10GiB", spaceSize: "2GiB", rpoData: "8MiB", change: 0.01, points: 24,
		rpoVMs: 100, rpoDuration: 5 * time.Minute, failoverVMs: 100, hosts: 15, real: "auto", seed: 1, timeout: 45 * time.Minute}
}

func TestConfigCheck(t *testing.T) {
	c := defaults()
	if err := c.check(); err != nil {
		t.Fatalf("check of the defaults: %v", err)
	}
	if c.sizeBytes != 10<<30 || c.spaceSizeBytes != 2<<30 || c.rpoDataBytes != 8<<20 {
		t.Fatalf("sizes of the defaults: %d %d %d", c.sizeBytes, c.spaceSizeBytes, c.rpoDataBytes)
	}
	for _, tc := range []struct {
		set  func(*config)
		want string
	}{
		{func(c *config) { c.size = "10" }, "-size"},
		{func(c *config) { c.size = "8MiB" }, "at least 16MiB"},
		{func(c *config) { c.realSize = "2TiB" }, "-real-size"},
		{func(c *config) { c.spaceSize = "xGiB" }, "whole number"},
		{func(c *config) { c.rpoData = "1GiB" }, "at most 512MiB"},
		{func(c *config) { c.change = 0 }, "-change 0"},
		{func(c *config) { c.change = 0.6 }, "-change 0.6"},
		{func(c *config) { c.points = 1 }, "-points 1"},
		{func(c *config) { c.rpoVMs = 101 }, "-rpo-vms 101"},
		{func(c *config) { c.rpoDuration = time.Second }, "-rpo-duration 1s"},
		{func(c *config) { c.hosts = 0 }, "-hosts 0"},
		{func(c *config) { c.real = "yes" }, `-real "yes"`},
		{func(c *config) { c.timeout = time.Second }, "-timeout 1s"},
		{func(c *config) { c.failoverVMs = 101 }, "-failover-vms 101"},
		{func(c *config) { c.only = "rpo" }, `-only "rpo"`},
		{func(c *config) { c.only, c.failoverVMs = "failover", 0 }, "measures nothing"},
		{func(c *config) { c.failoverVMs, c.hosts = 3, 3 }, "at least 4"},
	} {
		c := defaults()
		tc.set(&c)
		err := c.check()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("check(%+v) = %v, want one line with %q", c, err, tc.want)
		}
	}
}

// changes gives sorted, disjoint, aligned pieces of 64 KiB to 4 MiB
// inside the disk, adding up to the fraction asked (at most one piece
// more), and the same pieces for the same seed.
func TestChanges(t *testing.T) {
	for _, tc := range []struct {
		size int64
		frac float64
	}{{10 << 30, 0.01}, {2 << 30, 0.01}, {16 << 20, 0.01}, {64 << 20, 0.5}} {
		ps := changes(rand.New(rand.NewPCG(1, 2)), tc.size, tc.frac)
		want := int64(tc.frac * float64(tc.size))
		got := changeBytes(ps)
		if got < want || got >= want+maxPiece {
			t.Errorf("size %d: %d bytes changed, want %d to %d", tc.size, got, want, want+maxPiece)
		}
		for i, p := range ps {
			if p.n < minPiece || p.n > maxPiece || p.off%pieceAlign != 0 || p.n%pieceAlign != 0 || p.off < 0 || p.off+p.n > tc.size {
				t.Fatalf("size %d: piece %d %+v", tc.size, i, p)
			}
			if i > 0 && ps[i-1].off+ps[i-1].n > p.off {
				t.Fatalf("size %d: pieces %d and %d overlap or are out of order: %+v %+v", tc.size, i-1, i, ps[i-1], p)
			}
		}
		again := changes(rand.New(rand.NewPCG(1, 2)), tc.size, tc.frac)
		if len(again) != len(ps) || again[0] != ps[0] {
			t.Errorf("size %d: the same seed gave other pieces", tc.size)
		}
	}
	// Chunks touched: a piece inside one chunk, one across a boundary,
	// and one more in a chunk already counted.
	ps := []piece{{0, 64 << 10}, {chunkSize - 4096, 8192}, {chunkSize + 8192, 4096}}
	if n := chunksTouched(ps); n != 2 {
		t.Errorf("chunksTouched = %d, want 2", n)
	}
}

func TestPercentile(t *testing.T) {
	var xs []float64
	for i := 100; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	if p := percentile(xs, 0.5); p != 50 {
		t.Errorf("p50 of 1..100 = %v", p)
	}
	if p := percentile(xs, 0.99); p != 99 {
		t.Errorf("p99 of 1..100 = %v", p)
	}
	if p := percentile(xs, 1); p != 100 {
		t.Errorf("max of 1..100 = %v", p)
	}
	if p := percentile([]float64(nil), 0.5); p != 0 {
		t.Errorf("p50 of nothing = %v", p)
	}
	if xs[0] != 100 {
		t.Error("percentile reordered its input")
	}
}

// The whole benchmark on tiny sizes (the real host too when root and
// libvirtd/QEMU are there): it prints every figure, and leaves no file
// or process of its own behind.
func TestRunSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the dev cluster")
	}
	// Not t.TempDir(): its long path would put the real host's libvirtd
	// socket past the 107 bytes a unix socket path may have.
	tmp, err := os.MkdirTemp("/tmp", "bdr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	cfg := config{size: "32MiB", realSize: "32MiB", spaceSize: "16MiB", rpoData: "1MiB", change: 0.01, points: 3,
		rpoVMs: 3, rpoDuration: 5 * time.Second, hosts: 3, real: "auto", seed: 1, timeout: 5 * time.Minute,
		// The page cache is the whole machine's: a test leaves it alone.
		dropCaches: false, cacheDir: t.TempDir(), tmpDir: tmp}
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, cfg, &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	got, err := benchkit.ParseLines(out.String())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"cluster_start_s", "space_repo_stored_mib", "space_full_copies_mib", "space_stored_of_full_pct", "space_points_new_mib_sum", "space_repo_du_mib",
		"sim_full_s", "sim_full_agent_s", "sim_incr_s", "sim_incr_agent_s", "sim_cp_s", "sim_cp_fsync_s", "sim_sha256sum_s", "sim_go_sha256_chunks_s",
		"rpo_samples", "rpo_age_p50_s", "rpo_age_p99_s", "rpo_age_max_s",
	}
	if _, skipped := got["real_host"]; !skipped {
		want = append(want, "real_fill_s", "real_full_s", "real_incr_s", "real_cp_s", "real_sha256sum_s")
	}
	for _, k := range want {
		v, ok := got[k]
		if !ok {
			t.Errorf("no %s in the output:\n%s", k, out.String())
			continue
		}
		if n, err := strconv.ParseFloat(strings.Fields(v)[0], 64); err != nil || n <= 0 {
			t.Errorf("%s: %q, want a positive number", k, v)
		}
	}
	// 3 points of 16 MiB: 12 chunks at least, less than 3 full copies.
	if f := strings.Fields(got["space_stored_of_full_pct"]); len(f) == 0 || f[0] == "100.00" {
		t.Errorf("space_stored_of_full_pct = %q: the changes should not store everything again", got["space_stored_of_full_pct"])
	}
	for _, k := range []string{"sim_incr_chunks", "real_incr_chunks"} {
		if v, ok := got[k]; ok && !strings.Contains(v, "new 1 ") && !strings.Contains(v, "new 2 ") {
			t.Errorf("%s: %q, want 1 or 2 new chunks (1%% of 32 MiB changed)", k, v)
		}
	}
	if v := got["rpo_violations"]; !strings.HasPrefix(v, "0 samples") {
		t.Errorf("rpo_violations: %q, want none in the first seconds", v)
	}
	// Everything run made is gone: its temp dir (with the hosts' files)
	// and so every daemon and guest it started.
	left, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("run left %s behind", filepath.Join(tmp, e.Name()))
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(tmp)) {
			t.Errorf("a process of the run still runs: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

// -only failover on 3 VMs: only the failover figures (no other phase's),
// every VM running in a2 within the target, gold's data loss within its
// objective; nothing left behind.
func TestRunFailoverSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the dev cluster")
	}
	tmp, err := os.MkdirTemp("/tmp", "bdrf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	cfg := defaults()
	cfg.only, cfg.failoverVMs, cfg.hosts, cfg.cacheDir, cfg.tmpDir = "failover", 3, 4, t.TempDir(), tmp
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, cfg, &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	got, err := benchkit.ParseLines(out.String())
	if err != nil {
		t.Fatal(err)
	}
	num := func(k string) float64 {
		t.Helper()
		v, ok := got[k]
		if !ok {
			t.Fatalf("no %s in the output:\n%s", k, out.String())
		}
		n, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
		if err != nil {
			t.Fatalf("%s: %q, want a number", k, v)
		}
		return n
	}
	if n := num("failover_vms"); n != 3 {
		t.Errorf("failover_vms %v, want 3", n)
	}
	if n := num("failover_vms_running"); n != 3 {
		t.Errorf("failover_vms_running %v, want 3", n)
	}
	for _, k := range []string{"failover_all_running_seconds", "failover_wall_seconds", "failover_rto_p50_ms", "failover_rto_p99_ms", "failover_rto_max_ms", "failover_max_data_loss_s"} {
		if n := num(k); n <= 0 {
			t.Errorf("%s: %v, want a positive number", k, n)
		}
	}
	if all, wall := num("failover_all_running_seconds"), num("failover_wall_seconds"); all > wall || wall > num("failover_target_seconds") {
		t.Errorf("all running %v s, wall %v s: want all <= wall <= the target", all, wall)
	}
	if p50, p99, mx := num("failover_rto_p50_ms"), num("failover_rto_p99_ms"), num("failover_rto_max_ms"); p50 > p99 || p99 > mx {
		t.Errorf("rto p50 %v p99 %v max %v out of order", p50, p99, mx)
	}
	if loss := num("failover_max_data_loss_s"); loss > num("failover_gold_rpo_s") {
		t.Errorf("data loss %v s over gold's objective", loss)
	}
	for _, k := range []string{"space_repo_stored_mib", "sim_full_s", "rpo_samples"} {
		if _, ok := got[k]; ok {
			t.Errorf("-only failover ran another phase: %s in the output", k)
		}
	}
	left, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("run left %s behind", filepath.Join(tmp, e.Name()))
	}
}
