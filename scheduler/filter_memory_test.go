package scheduler

import "testing"

func TestMemoryFilter(t *testing.T) {
	host := func(capacity, allocated int64) Host {
		return Host{
			ID: "h1", Ready: true,
			Capacity:  Resources{64, capacity, 4 * TiB},
			Allocated: Resources{0, allocated, 0},
		}
	}
	for _, tc := range []struct {
		name string
		need int64
		host Host
		want Reason
	}{
		{"plenty free", 8 * GiB, host(256*GiB, 0), Fit},
		{"exactly the free amount", 56 * GiB, host(256*GiB, 200*GiB), Fit},
		{"one byte short", 56*GiB + 1, host(256*GiB, 200*GiB), ReasonMemory},
		{"host full", 1, host(256*GiB, 256*GiB), ReasonMemory},
		{"overcommitted host", 1, host(256*GiB, 300*GiB), ReasonMemory},
		{"only memory is judged", 8 * GiB, Host{Capacity: Resources{MemoryBytes: 8 * GiB}}, Fit},
	} {
		req := Request{Resources: Resources{128, tc.need, 8 * TiB}}
		if got := (MemoryFilter{}).Filter(req, &tc.host); got != tc.want {
			t.Errorf("%s: Filter = %q, want %q", tc.name, got, tc.want)
		}
	}
}
