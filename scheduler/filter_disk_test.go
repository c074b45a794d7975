package scheduler

import "testing"

func TestDiskFilter(t *testing.T) {
	host := func(capacity, allocated int64) Host {
		return Host{
			ID: "h1", Ready: true,
			Capacity:  Resources{64, 256 * GiB, capacity},
			Allocated: Resources{0, 0, allocated},
		}
	}
	for _, tc := range []struct {
		name string
		need int64
		host Host
		want Reason
	}{
		{"plenty free", 40 * GiB, host(4*TiB, 0), Fit},
		{"exactly the free amount", 96 * GiB, host(4*TiB, 4000*GiB), Fit},
		{"one byte short", 96*GiB + 1, host(4*TiB, 4000*GiB), ReasonDisk},
		{"host full", 1, host(4*TiB, 4*TiB), ReasonDisk},
		{"overcommitted host", 1, host(4*TiB, 5*TiB), ReasonDisk},
		{"only disk is judged", 40 * GiB, Host{Capacity: Resources{DiskBytes: 40 * GiB}}, Fit},
	} {
		req := Request{Resources: Resources{128, 512 * GiB, tc.need}}
		if got := (DiskFilter{}).Filter(req, &tc.host); got != tc.want {
			t.Errorf("%s: Filter = %q, want %q", tc.name, got, tc.want)
		}
	}
}
