package sim

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/scheduler"
)

// The hand-made trace in testdata/tiny, with hosts of tinyShape:
//
//	flavors a=4c28g b=8c56g c=16c112g d=32c224g e=8c112g (f=1c0.75g unused)
//	bins: U0=150 s (by definition), U1=300, U2=600, U3=900
//
//	req  flavor  arrival  lifetime  departs  batch
//	r0   c        0       U1 300    300      0
//	r1   b        0       U2 600    600      1
//	r2   b        0       C0        never    1
//	r3   d      300       U0 150    450      2
//	r4   a      300       C1        never    3
//	r5   e      300       U1 300    600      3
//	r6   c      600       U3 900   1500      4
//	r7   c      600       C2        never    4
//
// The flavors are the ones of a 8c16g host scaled by 4 in CPU and 14 in
// memory, so a host 32c224g holds exactly one d, two c or four b; disk
// (40 GiB a VM, 1000 GiB a host) never binds.
const tinyDir = "testdata/tiny"

var tinyShape = scheduler.Resources{VCPUs: 32, MemoryBytes: 224 * GiB, DiskBytes: 1000 * GiB}

func loadTiny(t *testing.T) *Trace {
	t.Helper()
	tr, err := LoadTrace(tinyDir)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func res(cpu, memGiB int64) scheduler.Resources {
	return scheduler.Resources{VCPUs: cpu, MemoryBytes: memGiB * GiB, DiskBytes: DiskPerRequest}
}

func TestLoadTiny(t *testing.T) {
	tr := loadTiny(t)
	if tr.ArrivalsFile != "v1.tiny.txt" || tr.LifetimesFile != "v1.tiny.c900.txt" {
		t.Fatalf("files %s, %s", tr.ArrivalsFile, tr.LifetimesFile)
	}
	want := []Request{
		{"r0", "c", 0, 0, res(16, 112), 300},
		{"r1", "b", 0, 1, res(8, 56), 600},
		{"r2", "b", 0, 1, res(8, 56), Never},
		{"r3", "d", 300, 2, res(32, 224), 150},
		{"r4", "a", 300, 3, res(4, 28), Never},
		{"r5", "e", 300, 3, res(8, 112), 300},
		{"r6", "c", 600, 4, res(16, 112), 900},
		{"r7", "c", 600, 4, res(16, 112), Never},
	}
	if !reflect.DeepEqual(tr.Requests, want) {
		t.Fatalf("requests\n got %+v\nwant %+v", tr.Requests, want)
	}
	if tr.Batches != 5 {
		t.Fatalf("batches %d, want 5", tr.Batches)
	}
}

func TestFlavorGBIsGiB(t *testing.T) {
	m, err := readFlavors(filepath.Join(tinyDir, FlavorFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := m["f"]; got != (flavor{VCPUs: 1, MemoryBytes: 805306368}) { // 0.75 * 2^30
		t.Fatalf("flavor f = %+v", got)
	}
}

func TestParseShape(t *testing.T) {
	r, err := ParseShape("64c256g4096d")
	if err != nil || r != DefaultShape {
		t.Fatalf("ParseShape = %+v, %v", r, err)
	}
	if FormatShape(r) != "64c256g4096d" {
		t.Fatalf("FormatShape = %s", FormatShape(r))
	}
	for _, bad := range []string{"", "64c256g", "64C256G4096D", "0c1g1d", "64c256g4096", "-1c2g3d", "1c99999999999999999g1d"} {
		if _, err := ParseShape(bad); err == nil {
			t.Errorf("ParseShape(%q) accepted", bad)
		} else if strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseShape(%q): multi-line error %q", bad, err)
		}
	}
}

// writeTrace copies testdata/tiny to a temp dir, then applies edits
// (name -> content; "" removes the file).
func writeTrace(t *testing.T, edits map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir(tinyDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(tinyDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range edits {
		p := filepath.Join(dir, name)
		if content == "" {
			os.Remove(p)
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadTraceErrors(t *testing.T) {
	tests := []struct {
		name  string
		edits map[string]string
		want  string // substring of the one-line error
	}{
		{"no arrivals", map[string]string{"v1.tiny.txt": ""}, "no arrivals file v1.<name>.txt"},
		{"two arrivals", map[string]string{"v1.other.txt": "0 a\n"}, "2 arrivals files (v1.other.txt, v1.tiny.txt); keep exactly one"},
		{"no lifetimes", map[string]string{"v1.tiny.c900.txt": ""}, "no lifetimes file v1.tiny.c<cut>.txt for v1.tiny.txt"},
		{"two lifetimes", map[string]string{"v1.tiny.c1200.txt": "0 U1\n"}, "2 lifetimes files for v1.tiny.txt"},
		{"no flavors file", map[string]string{"flav_map.txt": ""}, "flav_map.txt: no such file or directory"},
		{"no interval file", map[string]string{"v1.interval_map.txt": ""}, "v1.interval_map.txt: no such file or directory"},
		{"bad flavor row", map[string]string{"flav_map.txt": "4,28 a\n4;28 b\n"}, "flav_map.txt line 2: want \"<vcpus>,<memoryGB> <letter>\""},
		{"bad flavor cpu", map[string]string{"flav_map.txt": "x,28 a\n"}, "flav_map.txt line 1: vCPUs \"x\" is not a positive integer"},
		{"bad flavor memory", map[string]string{"flav_map.txt": "4,0 a\n"}, "flav_map.txt line 1: memory \"0\" is not a positive number of GB"},
		{"duplicate flavor", map[string]string{"flav_map.txt": "4,28 a\n8,56 a\n"}, "flav_map.txt line 2: flavor \"a\" defined twice"},
		{"bad interval row", map[string]string{"v1.interval_map.txt": "0 0\n300 x\n"}, "v1.interval_map.txt line 2: want two non-negative integers"},
		{"unknown flavor", map[string]string{"v1.tiny.txt": "0 c,|,b,b,|\n300 d,|,z,e,|\n600 c,c,|\n"},
			"v1.tiny.txt line 2: token 3: unknown flavor \"z\" (not in flav_map.txt)"},
		{"bad timestamp", map[string]string{"v1.tiny.txt": "0 c,|,b,b,|\nabc d,|,a,e,|\n600 c,c,|\n"},
			"v1.tiny.txt line 2: timestamp \"abc\" is not a non-negative integer"},
		{"no tokens separator", map[string]string{"v1.tiny.txt": "0 c,|,b,b,|\n300\n600 c,c,|\n"}, "v1.tiny.txt line 2: want \"<seconds> <token>,<token>,...\""},
		{"empty token", map[string]string{"v1.tiny.txt": "0 c,,b,b,|\n300 d,|,a,e,|\n600 c,c,|\n"}, "v1.tiny.txt line 1: token 2 is empty"},
		{"time goes back", map[string]string{
			"v1.tiny.txt":      "0 c,|,b,b,|\n300 d,|,a,e,|\n200 c,c,|\n",
			"v1.tiny.c900.txt": "0 U1,|,U2,C0,|\n300 U0,|,C1,U1,|\n200 U3,C2,|\n"},
			"v1.tiny.txt line 3: timestamp 200 is before the previous line's 300"},
		{"bad lifetime", map[string]string{"v1.tiny.c900.txt": "0 X1,|,U2,C0,|\n300 U0,|,C1,U1,|\n600 U3,C2,|\n"},
			"v1.tiny.c900.txt line 1: token 1: lifetime \"X1\": want U<bin> or C<bin>"},
		{"unknown bin", map[string]string{"v1.tiny.c900.txt": "0 U1,|,U2,C0,|\n300 U0,|,C1,U9,|\n600 U3,C2,|\n"},
			"v1.tiny.c900.txt line 2: token 4: lifetime \"U9\": bin 9 is not in v1.interval_map.txt"},
		{"token count", map[string]string{"v1.tiny.c900.txt": "0 U1,|,U2,C0,|\n300 U0,|,C1,|\n600 U3,C2,|\n"},
			"v1.tiny.c900.txt line 2: 4 tokens but v1.tiny.txt has 5 on that line"},
		{"line count", map[string]string{"v1.tiny.c900.txt": "0 U1,|,U2,C0,|\n300 U0,|,C1,U1,|\n"},
			"v1.tiny.c900.txt has 2 lines but v1.tiny.txt has 3"},
		{"timestamp mismatch", map[string]string{"v1.tiny.c900.txt": "0 U1,|,U2,C0,|\n301 U0,|,C1,U1,|\n600 U3,C2,|\n"},
			"v1.tiny.c900.txt line 2: timestamp 301 differs from 300 in v1.tiny.txt"},
		{"batch mismatch", map[string]string{"v1.tiny.c900.txt": "0 U1,U1,U2,C0,|\n300 U0,|,C1,U1,|\n600 U3,C2,|\n"},
			"v1.tiny.c900.txt line 1: token 2 is \"U1\" where v1.tiny.txt has \"|\""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadTrace(writeTrace(t, tc.edits))
			if err == nil {
				t.Fatal("no error")
			}
			if msg := err.Error(); !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
				t.Fatalf("error %q, want one line containing %q", msg, tc.want)
			}
		})
	}
	if _, err := LoadTrace(filepath.Join(t.TempDir(), "nope")); err == nil || !strings.Contains(err.Error(), "no such file or directory") {
		t.Fatalf("missing dir: %v", err)
	}
}

func TestEventsOrder(t *testing.T) {
	tr := loadTiny(t)
	// Departures r0@300, r3@450, r1@600, r5@600, r6@1500; r2, r4, r7 never.
	want := []event{0, 1, 2, ^0, 3, 4, 5, ^3, ^1, ^5, 6, 7, ^6}
	if got := Events(tr); !reflect.DeepEqual(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

func TestFluidBound(t *testing.T) {
	tr := loadTiny(t)
	// H=3: 96c 672g. Cumulative CPU 16,24,32,64,68,76,92,108 (7 fit);
	// memory 112,168,224,448,476,588,700 (6 fit).
	if got := FluidBound(tr, 3, tinyShape); got != 6 {
		t.Fatalf("H=3: %d, want 6", got)
	}
	// H=10: 320c 2240g; a pass is 108c 812g: 2 whole passes (216c 1624g),
	// then r0..r5 (76c 588g -> 292c 2212g); r6 would make 2324g > 2240g:
	// 2*8+6 = 22.
	if got := FluidBound(tr, 10, tinyShape); got != 22 {
		t.Fatalf("H=10: %d, want 22", got)
	}
}

// TestFillBestFitTiny checks W1 with the best-fit baseline against the
// figures worked out by hand, H=3 (h0, h1, h2), 20 rejections:
//
//	pass 1: r0 c->h0, r1 b->h0 (leftover 0.5 vs 1.5), r2 b->h0 (h0 full),
//	        r3 d->h1 (tie h1/h2: lowest), r4 a->h2, r5 e->h2 (h2 20c 84g free),
//	        r6 c rejected (84g < 112g): placed_before_first_reject = 6 = fluid
//	        bound; r7 rejected.                         rejections 2
//	pass 2: r0 rej, r1 b->h2 (12c 28g free), r2 rej, r3 rej, r4 a->h2
//	        (8c 0g free), r5 r6 r7 rej.                  rejections 8
//	pass 3: everything rejected (no memory anywhere).   rejections 16
//	pass 4: r0..r3 rejected.                            rejections 20
//
// total_placed 8, hosts_touched 3, stream_passes 4.
func TestFillBestFitTiny(t *testing.T) {
	tr := loadTiny(t)
	r, err := Fill(tr, NewBestFit(3, tinyShape), Config{Hosts: 3, Shape: tinyShape, MaxRejections: 20})
	if err != nil {
		t.Fatal(err)
	}
	got := [...]int64{r.PlacedBeforeFirstReject, r.FluidBound, r.TotalPlaced, r.Rejected, int64(r.HostsTouched), int64(r.StreamPasses), r.RejectedWhileFit}
	want := [...]int64{6, 6, 8, 20, 3, 4, 0}
	if got != want {
		t.Fatalf("placed_before_first_reject, fluid_bound, total_placed, rejected, hosts_touched, passes, rejected_while_fit = %v, want %v", got, want)
	}
	if r.PackingRatio != 1 {
		t.Fatalf("packing_ratio %v, want 1", r.PackingRatio)
	}
}

// TestChurnBestFitTiny checks W2 with the best-fit baseline, by hand.
//
// H=2: t=0 r0,r1,r2 -> h0 (full, 32c). t=300: r0 leaves (h0 16c 112g used);
// r3 d -> h1 (full); r4 a -> h0 (20c 140g used); r5 e (8c 112g) fits
// nowhere (h0 has 84g free): rejected. CPU peaks here: 20+32 = 52 of 64.
// h0 free 12c 84g: one 8c56g slot, no 16c112g slot; h1 full; no empty host.
// Then r3, r1 leave (r5 was rejected: nothing to release), r6 c -> h0
// (leftover 0.25 vs 1), r7 c -> h1: 44c < 52.
//
// H=3: as above until r3 d -> h1 (tie h1/h2), r4 a -> h0 (leftover 0.75 vs
// 1.75 on empty h2), r5 e -> h2. Peak 20+32+8 = 60 at t=300; free h0 12c 84g
// (0 big, 1 small slot), h1 none, h2 24c 112g (1 big, 2 small): 1 and 3
// slots, no empty host. No rejection.
func TestChurnBestFitTiny(t *testing.T) {
	tr := loadTiny(t)
	for _, tc := range []struct {
		hosts                            int
		rejected, peak, big, small, empt int64
		pct                              float64
	}{
		{2, 1, 52, 0, 1, 0, 12.5},
		{3, 0, 60, 1, 3, 0, 0},
	} {
		r, err := Churn(tr, NewBestFit(tc.hosts, tinyShape), Config{Hosts: tc.hosts, Shape: tinyShape})
		if err != nil {
			t.Fatal(err)
		}
		got := [...]int64{r.Rejected, r.PeakCPUAllocated, r.FreeSlots16c112g, r.FreeSlots8c56g, int64(r.EmptyHostsAtPeak), r.PeakTime, r.Arrivals, r.Departures}
		// Departures: r0, r3, r1 (and r5 when placed) before the last
		// arrival, r6 after it.
		deps := int64(5) - tc.rejected
		want := [...]int64{tc.rejected, tc.peak, tc.big, tc.small, tc.empt, 300, 8, deps}
		if got != want {
			t.Fatalf("H=%d: rejected, peak, 16c112g, 8c56g, empty, peak_time, arrivals, departures = %v, want %v", tc.hosts, got, want)
		}
		if r.RejectedPct != tc.pct || r.RejectedWhileFit != 0 {
			t.Fatalf("H=%d: rejected_pct %v (want %v), rejected_while_fit %d", tc.hosts, r.RejectedPct, tc.pct, r.RejectedWhileFit)
		}
	}
}

// With H=2 the sample size is 2, so the sampling baseline sees every
// feasible host and must decide exactly as best-fit does.
func TestSampleCoversSmallCluster(t *testing.T) {
	tr := loadTiny(t)
	if k := SampleSize(2); k != 2 {
		t.Fatalf("SampleSize(2) = %d", k)
	}
	r, err := Churn(tr, NewSample(2, tinyShape, 1), Config{Hosts: 2, Shape: tinyShape})
	if err != nil {
		t.Fatal(err)
	}
	if r.Rejected != 1 || r.PeakCPUAllocated != 52 || r.FreeSlots16c112g != 0 || r.FreeSlots8c56g != 1 {
		t.Fatalf("sample H=2: %+v", r)
	}
	f, err := Fill(tr, NewSample(2, tinyShape, 1), Config{Hosts: 2, Shape: tinyShape, MaxRejections: 20})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Fill(tr, NewBestFit(2, tinyShape), Config{Hosts: 2, Shape: tinyShape, MaxRejections: 20})
	if f.TotalPlaced != b.TotalPlaced || f.PlacedBeforeFirstReject != b.PlacedBeforeFirstReject {
		t.Fatalf("sample H=2 fill %+v differs from best-fit %+v", f, b)
	}
}

func TestSampleSize(t *testing.T) {
	for n, k := range map[int]int{1: 2, 2: 2, 3: 2, 4: 2, 5: 3, 720: 10, 1000: 10, 1024: 10, 1025: 11, 5000: 13, 10000: 14} {
		if got := SampleSize(n); got != k {
			t.Errorf("SampleSize(%d) = %d, want %d", n, got, k)
		}
	}
}

// A sampled decision only ever picks a feasible host and is reproducible.
func TestSampleDeterministic(t *testing.T) {
	tr := loadTiny(t)
	run := func() FillResult {
		r, err := Fill(tr, NewSample(7, tinyShape, 1), Config{Hosts: 7, Shape: tinyShape, MaxRejections: 50})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a, b := run(), run()
	if a.TotalPlaced != b.TotalPlaced || a.PlacedBeforeFirstReject != b.PlacedBeforeFirstReject || a.HostsTouched != b.HostsTouched {
		t.Fatalf("two runs differ: %+v vs %+v", a, b)
	}
	if a.PlacedBeforeFirstReject > a.FluidBound || a.RejectedWhileFit != 0 {
		t.Fatalf("sample fill: %+v", a)
	}
}

// badPlacer always answers host 0 (or a fixed answer), whatever the state.
type badPlacer struct {
	host int
	ok   bool
}

func (b badPlacer) Place(*Request) (int, bool, error)     { return b.host, b.ok, nil }
func (badPlacer) Allocate(int, scheduler.Resources) error { return nil }
func (badPlacer) Release(int, scheduler.Resources) error  { return nil }

// The harness does not trust the placer.
func TestHarnessCatchesBadPlacer(t *testing.T) {
	tr := loadTiny(t)
	cfg := Config{Hosts: 3, Shape: tinyShape, MaxRejections: 5}
	_, err := Fill(tr, badPlacer{host: 0, ok: true}, cfg)
	// r0 c + r1 b + r2 b fill h0 exactly; r3 d on h0 is over capacity.
	if err == nil || !strings.Contains(err.Error(), "request 3 (r3): placed 32 vCPU/224 GiB/40 GiB on h00000, which would then hold 64 vCPU/448 GiB/160 GiB of 32 vCPU/224 GiB/1000 GiB: over capacity") {
		t.Fatalf("fill: %v", err)
	}
	if _, err := Churn(tr, badPlacer{host: 0, ok: true}, Config{Hosts: 1, Shape: tinyShape}); err == nil || !strings.Contains(err.Error(), "over capacity") {
		t.Fatalf("churn: %v", err)
	}
	if _, err := Fill(tr, badPlacer{host: 3, ok: true}, cfg); err == nil || !strings.Contains(err.Error(), "host index 3, which does not exist") {
		t.Fatalf("out of range: %v", err)
	}
	// A placer that rejects everything while hosts are empty is counted.
	r, err := Fill(tr, badPlacer{host: -1, ok: false}, cfg)
	if err != nil || r.RejectedWhileFit != 5 || r.TotalPlaced != 0 {
		t.Fatalf("lazy placer: %+v, %v", r, err)
	}
}

func TestConfigErrors(t *testing.T) {
	tr := loadTiny(t)
	if _, err := Fill(tr, NewBestFit(1, tinyShape), Config{Hosts: 0}); err == nil || err.Error() != "hosts must be positive, got 0" {
		t.Fatalf("hosts 0: %v", err)
	}
	if _, err := Churn(tr, NewBestFit(1, tinyShape), Config{Hosts: -3}); err == nil {
		t.Fatal("hosts -3 accepted")
	}
}

func TestLatencyNearestRank(t *testing.T) {
	var d []time.Duration
	for i := 200; i >= 1; i-- {
		d = append(d, time.Duration(i))
	}
	l := latency(d)
	if l.P50 != 100 || l.P99 != 198 || l.Max != 200 {
		t.Fatalf("%+v", l)
	}
}

// Batch mode on the tiny trace, best-fit members one by one, all or
// nothing. Batches [r0] [r1 r2] [r3] [r4 r5] [r6 r7].
//
// Fill, H=3, 20 rejections: pass 1 places the first four batches as in
// TestFillBestFitTiny (h2 ends with 20c 84g free) and rejects [r6 r7] (r6
// needs 112g): placed_before_first_reject 6. From pass 2 on nothing more
// fits as a batch ([r1 r2] and [r4 r5] each have a member that does not
// fit; r1 and r4 are undone): rejections 2, then 1+2+1+2+2 = 8 a pass, so
// 10 after pass 2, 18 after pass 3, and [r0] [r1 r2] of pass 4 make 21.
// total_placed 6, batches placed 4, rejected 1+5+5+2 = 13.
//
// Churn, H=2: [r0] [r1 r2] fill h0; r0 leaves; [r3] fills h1 (CPU 48, the
// peak); [r4 r5]: r4 fits h0 but r5 does not: both rejected (25%). At the
// peak h0 has r1 r2 (16c 112g free: one 16c112g and two 8c56g slots), h1
// is full. Then r3, r1 leave; [r6 r7] go to h0 and h1 (CPU 40).
func TestBatchBestFitTiny(t *testing.T) {
	tr := loadTiny(t)
	if got := batchSpans(tr); !reflect.DeepEqual(got, [][2]int{{0, 1}, {1, 3}, {3, 4}, {4, 6}, {6, 8}}) {
		t.Fatalf("spans %v", got)
	}
	f, err := FillBatch(tr, NewBestFit(3, tinyShape), Config{Hosts: 3, Shape: tinyShape, MaxRejections: 20})
	if err != nil {
		t.Fatal(err)
	}
	got := [...]int64{f.PlacedBeforeFirstReject, f.TotalPlaced, f.Rejected, f.BatchesPlaced, f.BatchesRejected, int64(f.StreamPasses), f.RejectedWhileFit}
	if want := [...]int64{6, 6, 21, 4, 13, 4, 0}; got != want {
		t.Fatalf("fill: placed_before_first_reject, total, rejected, batches placed, rejected, passes, rejected_while_fit = %v, want %v", got, want)
	}
	c, err := ChurnBatch(tr, NewBestFit(2, tinyShape), Config{Hosts: 2, Shape: tinyShape})
	if err != nil {
		t.Fatal(err)
	}
	got2 := [...]int64{c.Rejected, c.PeakCPUAllocated, c.FreeSlots16c112g, c.FreeSlots8c56g, int64(c.EmptyHostsAtPeak), c.PeakTime, c.Arrivals, c.Departures, c.BatchesPlaced, c.BatchesRejected}
	if want := [...]int64{2, 48, 1, 2, 0, 300, 8, 4, 4, 1}; got2 != want {
		t.Fatalf("churn: rejected, peak, 16c112g, 8c56g, empty, peak_time, arrivals, departures, batches placed, rejected = %v, want %v", got2, want)
	}
	if c.RejectedPct != 25 {
		t.Fatalf("rejected_pct %v", c.RejectedPct)
	}
}

// A rejected batch that first fit could have placed is counted.
func TestBatchRejectedWhileFit(t *testing.T) {
	tr := loadTiny(t)
	f, err := FillBatch(tr, lazyBatch{}, Config{Hosts: 3, Shape: tinyShape, MaxRejections: 3})
	if err != nil {
		t.Fatal(err)
	}
	// [r0] and [r1 r2] rejected on an empty cluster: 3 requests.
	if f.Rejected != 3 || f.RejectedWhileFit != 3 {
		t.Fatalf("%+v", f)
	}
}

type lazyBatch struct{ badPlacer }

func (lazyBatch) PlaceBatch([]Request) ([]int, bool, error) { return nil, false, nil }
