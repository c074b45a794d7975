package scheduler

import "testing"

func TestResources(t *testing.T) {
	a := Resources{VCPUs: 4, MemoryBytes: 8 * GiB, DiskBytes: 100 * GiB}
	b := Resources{VCPUs: 1, MemoryBytes: 2 * GiB, DiskBytes: 40 * GiB}
	if got, want := a.Add(b), (Resources{5, 10 * GiB, 140 * GiB}); got != want {
		t.Errorf("Add = %+v, want %+v", got, want)
	}
	if got, want := a.Sub(b), (Resources{3, 6 * GiB, 60 * GiB}); got != want {
		t.Errorf("Sub = %+v, want %+v", got, want)
	}
	for _, tc := range []struct {
		name string
		r    Resources
		want bool
	}{
		{"smaller everywhere", b, true},
		{"equal", a, true},
		{"zero", Resources{}, true},
		{"more vCPU", Resources{5, 1, 1}, false},
		{"more memory", Resources{1, 8*GiB + 1, 1}, false},
		{"more disk", Resources{1, 1, 101 * GiB}, false},
	} {
		if got := tc.r.Fits(a); got != tc.want {
			t.Errorf("%s: %+v.Fits(%+v) = %v, want %v", tc.name, tc.r, a, got, tc.want)
		}
	}
}

func TestHostFree(t *testing.T) {
	h := Host{Capacity: Resources{64, 256 * GiB, 4 * TiB}, Allocated: Resources{60, 200 * GiB, 5 * TiB}}
	// Default ratios: CPU 4x (256 vCPU allocatable), memory and disk 1x.
	if got, want := h.Free(), (Resources{196, 56 * GiB, -1 * TiB}); got != want {
		t.Errorf("Free = %+v, want %+v", got, want)
	}
	h.Ratios = Ratios{CPU: 1}
	if got, want := h.Free(), (Resources{4, 56 * GiB, -1 * TiB}); got != want {
		t.Errorf("Free with CPU ratio 1 = %+v, want %+v", got, want)
	}
	h.Reserved = Resources{2, 8 * GiB, 0}
	h.Ratios = Ratios{1.5, 1, 1}
	// floor((64-2)*1.5) = 93; 256-8 = 248 GiB.
	if got, want := h.Allocatable(), (Resources{93, 248 * GiB, 4 * TiB}); got != want {
		t.Errorf("Allocatable = %+v, want %+v", got, want)
	}
}
