package scheduler

import "testing"

func TestCPUFilter(t *testing.T) {
	host := func(capacity, allocated int64) Host {
		return Host{
			ID: "h1", Ready: true,
			Capacity:  Resources{capacity, 256 * GiB, 4 * TiB},
			Allocated: Resources{allocated, 0, 0},
		}
	}
	for _, tc := range []struct {
		name string
		need int64
		host Host
		want Reason
	}{
		{"plenty free", 4, host(64, 0), Fit},
		{"exactly the free amount", 4, host(64, 60), Fit},
		{"one short", 5, host(64, 60), ReasonCPU},
		{"host full", 1, host(64, 64), ReasonCPU},
		{"overcommitted host", 1, host(64, 70), ReasonCPU},
		{"only CPU is judged", 4, Host{Capacity: Resources{VCPUs: 4}}, Fit},
	} {
		req := Request{Resources: Resources{tc.need, 512 * GiB, 8 * TiB}}
		if got := (CPUFilter{}).Filter(req, &tc.host); got != tc.want {
			t.Errorf("%s: Filter = %q, want %q", tc.name, got, tc.want)
		}
	}
}
