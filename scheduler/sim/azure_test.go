package sim

import (
	"cmp"
	"os"
	"sync"
	"testing"
)

// azureDir is the shared public Azure trace, when this checkout sits next
// to it; $YUNCHI_AZURE_TRACE overrides it.
var azureDir = cmp.Or(os.Getenv("YUNCHI_AZURE_TRACE"), "../../../shared/data/azure-vm-trace")

var (
	azureOnce  sync.Once
	azureTrace *Trace
	azureErr   error
)

func loadAzure(t *testing.T) *Trace {
	t.Helper()
	if _, err := os.Stat(azureDir); err != nil {
		t.Skipf("Azure trace not present at %s (../shared/data/azure-vm-trace next to the repo, or set YUNCHI_AZURE_TRACE): %v", azureDir, err)
	}
	azureOnce.Do(func() { azureTrace, azureErr = LoadTrace(azureDir) })
	if azureErr != nil {
		t.Fatal(azureErr)
	}
	return azureTrace
}

// The counts its README gives.
func TestAzureTraceCounts(t *testing.T) {
	tr := loadAzure(t)
	if len(tr.Requests) != 259159 || tr.Batches != 53109 {
		t.Fatalf("%d requests in %d batches, want 259159 in 53109", len(tr.Requests), tr.Batches)
	}
	if tr.ArrivalsFile != "v1.dev.txt" || tr.LifetimesFile != "v1.dev.c2100000.txt" {
		t.Fatalf("files %s, %s", tr.ArrivalsFile, tr.LifetimesFile)
	}
}

// W2 at H=720 reproduces the reference figures of bench/azure-replay.md for
// both baselines (this validates the harness: event order, lifetimes, the
// peak and slot counting).
func TestAzureChurnBaselines(t *testing.T) {
	tr := loadAzure(t)
	cfg := Config{Hosts: DefaultChurnHosts}
	for _, tc := range []struct {
		name  string
		p     Placer
		slots int64
	}{
		{"bestfit", NewBestFit(cfg.Hosts, DefaultShape), 135},
		{"sample", NewSample(cfg.Hosts, DefaultShape, 1), 137},
	} {
		r, err := Churn(tr, tc.p, cfg)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Rejected != 0 || r.PeakCPUAllocated != 41654 || r.FreeSlots16c112g != tc.slots || r.RejectedWhileFit != 0 {
			t.Errorf("%s: rejected %d, peak %d, 16c112g slots %d, rejected_while_fit %d; want 0, 41654, %d, 0",
				tc.name, r.Rejected, r.PeakCPUAllocated, r.FreeSlots16c112g, r.RejectedWhileFit, tc.slots)
		}
		if r.Arrivals != int64(len(tr.Requests)) || r.Placed != r.Arrivals-r.Rejected {
			t.Errorf("%s: arrivals %d placed %d", tc.name, r.Arrivals, r.Placed)
		}
		// 4,426 free vCPU at the peak hold at most 276 such slots.
		if free := int64(cfg.Hosts)*DefaultShape.VCPUs - r.PeakCPUAllocated; free != 4426 || r.FreeSlots16c112g > free/16 {
			t.Errorf("%s: free vCPU at peak %d, slots %d", tc.name, free, r.FreeSlots16c112g)
		}
	}
}

// W1 at H=100 with both baselines: the harness invariants.
func TestAzureFillBaselines(t *testing.T) {
	tr := loadAzure(t)
	cfg := Config{Hosts: 100}
	fluid := FluidBound(tr, cfg.Hosts, DefaultShape)
	for name, p := range map[string]Placer{"bestfit": NewBestFit(cfg.Hosts, DefaultShape), "sample": NewSample(cfg.Hosts, DefaultShape, 1)} {
		r, err := Fill(tr, p, cfg)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkFill(t, name, r, cfg.Hosts, fluid)
	}
}

func checkFill(t *testing.T, name string, r FillResult, hosts int, fluid int64) {
	t.Helper()
	if r.FluidBound != fluid || r.PlacedBeforeFirstReject > fluid || r.PlacedBeforeFirstReject == 0 ||
		r.TotalPlaced < r.PlacedBeforeFirstReject || r.Rejected != DefaultMaxRejections ||
		r.HostsTouched > hosts || r.RejectedWhileFit != 0 || r.PackingRatio > 1 ||
		r.Decision.P50 > r.Decision.P99 || r.Decision.P99 > r.Decision.Max {
		t.Errorf("%s: fill figures break an invariant: %+v (fluid bound %d)", name, r, fluid)
	}
}
