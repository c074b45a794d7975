package scheduler

import (
	"math"
	"testing"
)

func TestBestFit(t *testing.T) {
	capacity := Resources{64, 256 * GiB, 4 * TiB}
	host := func(allocated Resources) Host {
		return Host{ID: "h1", Ready: true, Capacity: capacity, Allocated: allocated}
	}
	for _, tc := range []struct {
		name string
		req  Resources
		host Host
		want float64
	}{
		{"fills the host exactly", Resources{4, 16 * GiB, 1 * TiB}, host(Resources{60, 240 * GiB, 3 * TiB}), 100},
		{"takes everything of an empty host", capacity, host(Resources{}), 100},
		{"leaves half of everything", Resources{32, 128 * GiB, 2 * TiB}, host(Resources{}), 50},
		// leftover: CPU 0, memory 1/2, disk 1/2 -> mean 1/3
		{"mixed leftovers", Resources{64, 128 * GiB, 2 * TiB}, host(Resources{}), 100 * (1 - 1.0/3)},
		{"a sliver on an empty host", Resources{1, 1, 1}, host(Resources{}), 100 * (1 - (63.0/64+float64(256*GiB-1)/float64(256*GiB)+float64(4*TiB-1)/float64(4*TiB))/3)},
		// An overcommitted dimension counts as no leftover, not as negative.
		{"overcommitted disk", Resources{32, 128 * GiB, 1}, host(Resources{0, 0, 5 * TiB}), 100 * (1 - (0.5+0.5+0)/3)},
		{"host without capacity", Resources{1, 1, 1}, Host{ID: "h1"}, 0},
	} {
		got := (BestFit{}).Score(Request{Resources: tc.req}, &tc.host)
		if math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s: Score = %v, want %v", tc.name, got, tc.want)
		}
		if got < 0 || got > MaxScore {
			t.Errorf("%s: Score = %v, outside 0..%d", tc.name, got, MaxScore)
		}
	}
}

// TestBestFitPrefersTighterHost: of two hosts that fit, the one the request
// leaves less of scores higher.
func TestBestFitPrefersTighterHost(t *testing.T) {
	req := Request{Resources: Resources{8, 32 * GiB, 40 * GiB}}
	capacity := Resources{64, 256 * GiB, 4 * TiB}
	loose := Host{ID: "loose", Ready: true, Capacity: capacity}
	tight := Host{ID: "tight", Ready: true, Capacity: capacity, Allocated: Resources{48, 200 * GiB, 1 * TiB}}
	if l, ti := (BestFit{}).Score(req, &loose), (BestFit{}).Score(req, &tight); ti <= l {
		t.Errorf("tight host scores %v, loose host %v; want tight > loose", ti, l)
	}
}
