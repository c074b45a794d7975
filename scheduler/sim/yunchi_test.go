package sim

import (
	"fmt"
	"strings"
	"testing"

	"github.com/yunchi/yunchi/scheduler"
)

func newYunchi(t *testing.T, hosts int, shape scheduler.Resources, s scheduler.Strategy, seed int64) *Yunchi {
	t.Helper()
	y, err := NewYunchi(Hosts(hosts, shape), scheduler.Options{Strategy: s, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	return y
}

func TestHostsLayout(t *testing.T) {
	hs := Hosts(16, DefaultShape)
	for j, h := range hs {
		want := fmt.Sprintf("c%d", j%3)
		if h.ID != HostID(j) || h.Center != want || h.Rack != fmt.Sprintf("%s-r%d", want, (j/3)%5) ||
			h.State != scheduler.HostReady || h.Allocatable() != DefaultShape {
			t.Fatalf("host %d: %+v (allocatable %+v)", j, h, h.Allocatable())
		}
	}
	if hs[15].Rack != "c0-r0" || hs[14].Rack != "c2-r4" {
		t.Fatalf("racks: %s %s", hs[14].Rack, hs[15].Rack)
	}
}

// Properties of Yunchi's placer on the tiny trace (figures by hand, see
// sim_test.go for the trace).
//
// Binpack: r1 and r2 must join r0 on its host (the tighter one), which
// leaves an empty host for r3 (a whole host), so the first rejection comes
// only at the fluid bound, 6.
//
// Spread: r0, r1, r2 each go to an empty host (the emptiest), so r3 (a
// whole host) finds none: placed_before_first_reject = 3, and every host is
// touched.
func TestYunchiFillTiny(t *testing.T) {
	tr := loadTiny(t)
	cfg := Config{Hosts: 3, Shape: tinyShape, MaxRejections: 20}
	for _, tc := range []struct {
		s           scheduler.Strategy
		beforeFirst int64
	}{{scheduler.Binpack, 6}, {scheduler.Spread, 3}} {
		var prev FillResult
		for _, seed := range []int64{1, 1, 7} {
			r, err := Fill(tr, newYunchi(t, 3, tinyShape, tc.s, seed), cfg)
			if err != nil {
				t.Fatalf("%v seed %d: %v", tc.s, seed, err)
			}
			if r.PlacedBeforeFirstReject != tc.beforeFirst || r.FluidBound != 6 || r.RejectedWhileFit != 0 || r.HostsTouched != 3 {
				t.Fatalf("%v seed %d: placed_before_first_reject %d (want %d), fluid %d, rejected_while_fit %d, hosts_touched %d",
					tc.s, seed, r.PlacedBeforeFirstReject, tc.beforeFirst, r.FluidBound, r.RejectedWhileFit, r.HostsTouched)
			}
			if seed == 1 && prev.TotalPlaced != 0 && prev.TotalPlaced != r.TotalPlaced {
				t.Fatalf("%v: same seed, different total_placed %d vs %d", tc.s, prev.TotalPlaced, r.TotalPlaced)
			}
			prev = r
		}
	}
}

// On the tiny churn at H=2 any placer is bounded by the definition: the
// peak is at most 52+8 (if r5 fits) and the ledger checks every placement.
func TestYunchiChurnTiny(t *testing.T) {
	tr := loadTiny(t)
	for _, s := range []scheduler.Strategy{scheduler.Binpack, scheduler.Spread} {
		r, err := Churn(tr, newYunchi(t, 2, tinyShape, s, 1), Config{Hosts: 2, Shape: tinyShape})
		if err != nil {
			t.Fatalf("%v: %v", s, err)
		}
		if r.RejectedWhileFit != 0 || r.Arrivals != 8 || r.Placed+r.Rejected != 8 || r.PeakCPUAllocated > 64 {
			t.Fatalf("%v: %+v", s, r)
		}
	}
	// Binpack decides this tiny case as best-fit does (see sim_test.go).
	r, err := Churn(tr, newYunchi(t, 2, tinyShape, scheduler.Binpack, 1), Config{Hosts: 2, Shape: tinyShape})
	if err != nil {
		t.Fatal(err)
	}
	if r.Rejected != 1 || r.PeakCPUAllocated != 52 || r.FreeSlots8c56g != 1 {
		t.Fatalf("binpack H=2: rejected %d, peak %d, 8c56g slots %d; want 1, 52, 1", r.Rejected, r.PeakCPUAllocated, r.FreeSlots8c56g)
	}
}

func TestRunFiguresTiny(t *testing.T) {
	tr := loadTiny(t)
	figs, err := Run(tr, Settings{Workload: WorkloadFill, Hosts: 3, Shape: tinyShape, Seed: 1, Baselines: true, MaxRejections: 20})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, f := range figs {
		if _, dup := m[f.Name]; dup {
			t.Fatalf("figure %s twice", f.Name)
		}
		m[f.Name] = f.Text()
	}
	for name, want := range map[string]string{
		"workload": "fill", "hosts": "3", "host": "32c224g1000d", "strategy": "binpack", "seed": "1",
		"trace": "v1.tiny.txt", "requests": "8", "placed_before_first_reject": "6", "fluid_bound": "6",
		"baseline_bestfit_placed_before_first_reject": "6", "baseline_bestfit_total_placed": "8",
		"baseline_bestfit_hosts_touched": "3", "baseline_sample_fluid_bound": "6",
	} {
		if m[name] != want {
			t.Errorf("%s: %q, want %q", name, m[name], want)
		}
	}
	for _, name := range []string{"placements_per_second", "decision_p50_us", "decision_p99_us", "baseline_sample_decision_p99_us", "baseline_bestfit_packing_ratio"} {
		if m[name] == "" {
			t.Errorf("figure %s missing", name)
		}
	}
	for _, bad := range []Settings{{Workload: "drain", Hosts: 3}, {Workload: WorkloadChurn, Hosts: 0}} {
		if _, err := Run(tr, bad); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%+v: %v", bad, err)
		}
	}
}

// Yunchi on the Azure trace: W1 at H=100 and W2 at H=720, the harness
// invariants. With nothing rejected, the W2 peak is fixed by the trace.
func TestAzureYunchi(t *testing.T) {
	tr := loadAzure(t)
	fill, err := Fill(tr, newYunchi(t, 100, DefaultShape, scheduler.Binpack, 1), Config{Hosts: 100})
	if err != nil {
		t.Fatal(err)
	}
	checkFill(t, "yunchi", fill, 100, FluidBound(tr, 100, DefaultShape))
	t.Logf("fill H=100: placed_before_first_reject %d of fluid bound %d, total %d",
		fill.PlacedBeforeFirstReject, fill.FluidBound, fill.TotalPlaced)

	churn, err := Churn(tr, newYunchi(t, DefaultChurnHosts, DefaultShape, scheduler.Binpack, 1), Config{Hosts: DefaultChurnHosts})
	if err != nil {
		t.Fatal(err)
	}
	if churn.RejectedWhileFit != 0 || churn.Placed+churn.Rejected != int64(len(tr.Requests)) ||
		(churn.Rejected == 0 && churn.PeakCPUAllocated != 41654) {
		t.Fatalf("churn: %+v", churn)
	}
	t.Logf("churn H=720: rejected %d, free 16c112g slots at peak %d (baselines: 0/135 best-fit, 0/137 sample)",
		churn.Rejected, churn.FreeSlots16c112g)
}

// Batch mode through Cluster.PlaceBatch: all or nothing, checked by the
// ledger; the tiny figures are bounded by the fluid bound, and a rejected
// batch that first fit could have placed is counted (it must not happen).
func TestYunchiBatchTiny(t *testing.T) {
	tr := loadTiny(t)
	for _, s := range []scheduler.Strategy{scheduler.Binpack, scheduler.Spread} {
		f, err := FillBatch(tr, newYunchi(t, 3, tinyShape, s, 1), Config{Hosts: 3, Shape: tinyShape, MaxRejections: 20})
		if err != nil {
			t.Fatalf("%v: %v", s, err)
		}
		if f.PlacedBeforeFirstReject > 6 || f.RejectedWhileFit != 0 || f.Rejected < 20 || f.BatchesPlaced == 0 {
			t.Fatalf("%v fill: %+v", s, f)
		}
		c, err := ChurnBatch(tr, newYunchi(t, 2, tinyShape, s, 1), Config{Hosts: 2, Shape: tinyShape})
		if err != nil {
			t.Fatalf("%v: %v", s, err)
		}
		if c.RejectedWhileFit != 0 || c.Arrivals != 8 || c.Placed+c.Rejected != 8 {
			t.Fatalf("%v churn: %+v", s, c)
		}
	}
}
