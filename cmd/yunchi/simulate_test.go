package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The hand-made trace of scheduler/sim (figures worked out in its tests).
const tinyTrace = "../../scheduler/sim/testdata/tiny"

func TestSimulateJSON(t *testing.T) {
	code, stdout, stderr := yunchi(t, "simulate", "--trace", tinyTrace, "--workload", "fill", "--hosts", "3",
		"--host", "32c224g1000d", "--max-rejections", "20", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(stdout), &m); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, stdout)
	}
	for name, want := range map[string]any{
		"workload": "fill", "hosts": 3.0, "host": "32c224g1000d", "strategy": "binpack", "seed": 1.0,
		"trace": "v1.tiny.txt", "requests": 8.0, "max_rejections": 20.0,
		"placed_before_first_reject": 6.0, "fluid_bound": 6.0, "rejected": 20.0, "packing_ratio": 1.0,
		"baseline_bestfit_placed_before_first_reject": 6.0, "baseline_bestfit_total_placed": 8.0,
		"baseline_bestfit_hosts_touched": 3.0, "pressure_window": 100.0,
		// What the 20 refusals were refused beside (worked out by the
		// harness's ledger; see TestRefusalsNote for the rules).
		"rejected_shapes": "16c112g:9 8c56g:5 32c224g:3 8c112g:2 4c28g:1", "rejected_vcpus": 300.0,
		"rejected_short_memory": 11.0, "rejected_short_both": 9.0, "rejected_split": 0.0,
	} {
		if m[name] != want {
			t.Errorf("%s = %v (%T), want %v", name, m[name], m[name], want)
		}
	}
	for _, name := range []string{"placements_per_second", "decision_p50_us", "decision_p99_us", "baseline_sample_total_placed"} {
		if _, ok := m[name].(float64); !ok {
			t.Errorf("%s missing or not a number: %v", name, m[name])
		}
	}
}

func TestSimulateTable(t *testing.T) {
	code, stdout, stderr := yunchi(t, "simulate", "--trace", tinyTrace, "--workload", "churn", "--hosts", "2",
		"--host", "32c224g1000d", "--baselines=false")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	got := map[string]string{}
	for _, l := range lines {
		k, v, ok := strings.Cut(l, ": ")
		if !ok {
			t.Fatalf("line %q is not 'name: value'", l)
		}
		got[k] = v
	}
	// Best-fit figures of TestChurnBestFitTiny; Yunchi's binpack agrees on this trace.
	for k, want := range map[string]string{"workload": "churn", "hosts": "2", "rejected": "1", "peak_cpu_allocated": "52",
		"free_slots_8c56g_at_peak": "1", "rejected_pct": "12.5"} {
		if got[k] != want {
			t.Errorf("%s: %q, want %q", k, got[k], want)
		}
	}
	if _, ok := got["baseline_bestfit_rejected"]; ok {
		t.Error("--baselines=false still ran the baselines")
	}
}

// --pressure-window 0 turns pressure off: no decision is made under it, and
// the run says so; the default run spreads after its first refusal.
func TestSimulatePressureWindow(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		window    string
		pressured bool
	}{
		{nil, "100", true},
		{[]string{"--pressure-window", "0"}, "0", false},
		{[]string{"--pressure-window", "3"}, "3", true},
	} {
		args := append([]string{"simulate", "--trace", tinyTrace, "--workload", "fill", "--hosts", "3",
			"--host", "32c224g1000d", "--max-rejections", "20", "--baselines=false"}, tc.args...)
		code, stdout, stderr := yunchi(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d, stderr %q", tc.args, code, stderr)
		}
		if !strings.Contains(stdout, "\npressure_window: "+tc.window+"\n") {
			t.Errorf("%v: no pressure_window: %s in\n%s", tc.args, tc.window, stdout)
		}
		if off := strings.Contains(stdout, "\npressure_decisions: 0\n"); off == tc.pressured {
			t.Errorf("%v: pressure_decisions 0 is %v, want %v:\n%s", tc.args, off, !tc.pressured, stdout)
		}
	}
}

func TestSimulateBatch(t *testing.T) {
	code, stdout, stderr := yunchi(t, "simulate", "--trace", tinyTrace, "--workload", "churn", "--hosts", "2",
		"--host", "32c224g1000d", "--batch", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(stdout), &m); err != nil {
		t.Fatal(err)
	}
	// TestBatchBestFitTiny in scheduler/sim: 2 rejected, peak 48, 1 batch rejected.
	for k, want := range map[string]any{"batch": true, "baseline_bestfit_rejected": 2.0, "baseline_bestfit_peak_cpu_allocated": 48.0,
		"baseline_bestfit_batches_rejected": 1.0} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
	if _, ok := m["batches_placed"].(float64); !ok {
		t.Errorf("batches_placed missing: %v", m["batches_placed"])
	}
}

func TestSimulateUsageErrors(t *testing.T) {
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "flav_map.txt"), []byte("4,28 a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		msg  string
	}{
		{[]string{"--workload", "fill"}, "simulate: missing --trace DIR"},
		{[]string{"--trace", tinyTrace}, "simulate: missing --workload: want fill or churn"},
		{[]string{"--trace", tinyTrace, "--workload", "drain"}, `simulate: unknown workload "drain": want fill or churn`},
		{[]string{"--trace", "/nonexistent/trace", "--workload", "fill"}, "simulate: --trace /nonexistent/trace: no such directory"},
		{[]string{"--trace", tinyTrace, "--workload", "fill", "--hosts", "0"}, "simulate: --hosts must be positive, got 0"},
		{[]string{"--trace", tinyTrace, "--workload", "churn", "--hosts", "-5"}, "simulate: --hosts must be positive, got -5"},
		{[]string{"--trace", tinyTrace, "--workload", "fill", "--host", "64c256g"}, `simulate: --host: invalid host shape "64c256g": want <vcpus>c<memory GiB>g<disk GiB>d, e.g. 64c256g4096d`},
		{[]string{"--trace", tinyTrace, "--workload", "fill", "--strategy", "tetris"}, "simulate: --strategy: "},
		{[]string{"--trace", bad, "--workload", "fill"}, "simulate: trace directory " + bad + ": no arrivals file v1.<name>.txt"},
		{[]string{"--trace", tinyTrace, "--workload", "fill", "extra"}, `simulate: unexpected argument "extra"`},
		{[]string{"--trace", tinyTrace, "--workload", "fill", "--pressure-window", "-1"}, "simulate: --pressure-window must be 0 (off) or more, got -1"},
	}
	for _, tc := range tests {
		code, stdout, stderr := yunchi(t, append([]string{"simulate"}, tc.args...)...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", tc.args, code, stderr)
			continue
		}
		if msg := oneErrorLine(t, stderr); !strings.HasPrefix(msg, tc.msg) {
			t.Errorf("%v: %q, want it to start with %q", tc.args, msg, tc.msg)
		}
		if stdout != "" {
			t.Errorf("%v: stdout %q on error", tc.args, stdout)
		}
	}
}
