//go:build linux

package main

import (
	"bytes"
	"context"
	"github.com/yunchi/yunchi/internal/benchkit"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 20; i >= 1; i-- { // 1..20 ms, given out of order
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	if got := percentile(ds, 0.5); got != 10*time.Millisecond {
		t.Errorf("p50 of 1..20 ms = %s, want 10ms", got)
	}
	if got := percentile(ds, 0.99); got != 20*time.Millisecond {
		t.Errorf("p99 of 1..20 ms = %s, want 20ms (the slowest of 20)", got)
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("p50 of nothing = %s, want 0", got)
	}
	if ds[0] != 20*time.Millisecond {
		t.Error("percentile reordered its input")
	}
}

func TestConfigCheck(t *testing.T) {
	ok := config{seq: 20, burst: 50, bursts: 1, memory: "128MiB"}
	if err := ok.check(); err != nil || ok.memoryBytes != 128<<20 {
		t.Fatalf("check of the defaults: %v, memory %d", err, ok.memoryBytes)
	}
	g := config{seq: 1, burst: 0, bursts: 1, memory: "1GiB"}
	if err := g.check(); err != nil || g.memoryBytes != 1<<30 {
		t.Fatalf("1GiB: %v, memory %d", err, g.memoryBytes)
	}
	for _, c := range []struct {
		cfg  config
		want string
	}{
		{config{seq: 0, burst: 50, bursts: 1, memory: "128MiB"}, "-seq 0"},
		{config{seq: 20, burst: 101, bursts: 1, memory: "128MiB"}, "-burst 101"},
		{config{seq: 20, burst: -1, bursts: 1, memory: "128MiB"}, "-burst -1"},
		{config{seq: 20, burst: 50, bursts: 0, memory: "128MiB"}, "-bursts 0"},
		{config{seq: 20, burst: 50, bursts: 1, memory: "128"}, "MiB or GiB"},
		{config{seq: 20, burst: 50, bursts: 1, memory: "32MiB"}, "at least 64MiB"},
		{config{seq: 20, burst: 50, bursts: 1, memory: "xMiB"}, "whole number"},
	} {
		err := c.cfg.check()
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("check(%+v) = %v, want one line with %q", c.cfg, err, c.want)
		}
	}
}

// The recorder notes the agent's "defined domain" and "started domain"
// with the VM id given either with With (as the agent does) or in the
// record, keeps the first time only, ignores other messages, and passes
// warnings on.
func TestRecorder(t *testing.T) {
	var out bytes.Buffer
	rec := newRecorder(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn}))
	lg := slog.New(rec).With("host", "qemu-1")
	lg.With("vm", "id-1", "name", "a").Info("defined domain")
	first, ok := rec.when("defined domain", "id-1")
	if !ok {
		t.Fatal("defined domain of id-1 not recorded")
	}
	time.Sleep(2 * time.Millisecond)
	lg.With("vm", "id-1").Info("defined domain")
	if again, _ := rec.when("defined domain", "id-1"); !again.Equal(first) {
		t.Errorf("a second record moved the time from %s to %s", first, again)
	}
	lg.Info("started domain", "vm", "id-2")
	if _, ok := rec.when("started domain", "id-2"); !ok {
		t.Error("started domain of id-2 (vm in the record) not recorded")
	}
	lg.With("vm", "id-3").Info("stopped domain")
	if _, ok := rec.when("stopped domain", "id-3"); ok {
		t.Error("a message the recorder does not keep was recorded")
	}
	lg.WithGroup("g").Info("started domain", "vm", "id-4")
	lg.Warn("something odd", "vm", "id-5")
	lg.Info("an info line")
	if s := out.String(); !strings.Contains(s, "something odd") || strings.Contains(s, "an info line") || strings.Contains(s, "defined domain") {
		t.Errorf("passed on:\n%s\nwant the warning only", s)
	}
	lg.Warn(markedDown, "host", "qemu-1")
	lg.With("controller", "a2").Warn(markedDown, "host", "qemu-1")
	if n := rec.hostDowns(); n != 2 {
		t.Errorf("hostDowns = %d after two warnings, want 2", n)
	}
	if !rec.Enabled(context.Background(), slog.LevelInfo) || rec.Enabled(context.Background(), slog.LevelDebug) {
		t.Error("the recorder must take Info (the agent's messages) and nothing below")
	}
}

func TestBurstOf(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ts := []vmTimes{
		{call: t0, returned: at(10), defined: at(100), started: at(400), running: at(1500), haveDefined: true, haveStarted: true},
		{call: t0, returned: at(10), defined: at(50), started: at(1200), running: at(1450), haveDefined: true, haveStarted: true},
		{call: t0, returned: at(10), running: at(1300)},
	}
	b := burstOf(ts)
	want := burst{all: 1500 * time.Millisecond, api: 10 * time.Millisecond, firstDefined: 50 * time.Millisecond,
		lastStarted: 1200 * time.Millisecond, lastReport: 300 * time.Millisecond}
	if b != want {
		t.Errorf("burstOf = %+v, want %+v", b, want)
	}
	if b := burstOf(nil); b != (burst{}) {
		t.Errorf("burstOf(nil) = %+v", b)
	}
}

// The whole harness on a tiny run (one VM each way one at a time, two at
// once): it prints every figure, and leaves no QEMU, libvirtd or file of
// its own behind.
func TestRunSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real QEMU guests")
	}
	if why := skipReason(); why != "" {
		t.Skip(why)
	}
	// Not t.TempDir(): its long path would put the host's libvirtd socket
	// past the 107 bytes a unix socket path may have.
	tmp, err := os.MkdirTemp("/tmp", "bq-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	cfg := config{seq: 1, burst: 2, bursts: 1, memory: "128MiB", cacheDir: t.TempDir(), tmpDir: tmp}
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, cfg, &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	got, err := benchkit.ParseLines(out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{
		"yunchi_cold_first_vm_ms", "libvirt_first_vm_ms",
		"yunchi_create_to_running_p50_ms", "yunchi_create_to_running_p99_ms",
		"libvirt_define_start_p50_ms", "libvirt_define_start_p99_ms", "yunchi_added_per_vm_p50_ms",
		"yunchi_api_create_p50_ms", "yunchi_to_agent_defined_p50_ms", "yunchi_agent_start_p50_ms", "yunchi_started_to_api_running_p50_ms",
		"yunchi_burst2_idle_all_running_s", "libvirt_burst2_idle_atonce_all_running_s", "libvirt_burst2_idle_4wide_all_running_s", "libvirt_burst2_idle_serial_all_running_s",
		"yunchi_burst2_idle_added_per_vm_ms", "yunchi_burst2_idle_last_started_s",
	} {
		v, ok := got[k]
		if !ok {
			t.Errorf("no %s in the output:\n%s", k, out.String())
			continue
		}
		f := strings.Fields(v)
		if n, err := strconv.ParseFloat(f[0], 64); err != nil || (!strings.Contains(k, "added") && n <= 0) {
			t.Errorf("%s: %q, want a positive number", k, v)
		}
	}
	// Everything run made is gone: its temp dir (with the hosts' files)
	// and so every daemon and guest it started.
	left, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		if strings.HasPrefix(e.Name(), "yunchi-bench-qemu-") {
			t.Errorf("run left %s behind", filepath.Join(tmp, e.Name()))
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(tmp)) {
			t.Errorf("a process of the run still runs: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}
