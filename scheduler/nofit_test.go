package scheduler

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
)

// TestNoFitExample is the message from the design: 45 hosts, 30 in the right
// center but short of memory, 15 elsewhere.
func TestNoFitExample(t *testing.T) {
	var hosts []Host
	for i := range 45 {
		if i < 30 {
			// Free memory 1..48 GiB; the most (48 GiB) on a1-h12.
			used := 256*GiB - int64(1+i%20)*GiB
			if i == 12 {
				used = 256*GiB - 48*GiB
			}
			hosts = append(hosts, host(fmt.Sprintf("a1-h%02d", i), "a1", Resources{MemoryBytes: used}))
		} else {
			hosts = append(hosts, host(fmt.Sprintf("b1-h%02d", i), "b1", Resources{}))
		}
	}
	req := Request{Resources: Resources{8, 64 * GiB, 40 * GiB}, Center: "a1"}
	_, err := Place(req, hosts)
	var nf *NoFitError
	if !errors.As(err, &nf) {
		t.Fatalf("err = %v, want a *NoFitError", err)
	}
	const want = "0/45 hosts fit: 30 insufficient memory (need 64 GiB; most free: 48 GiB on a1-h12), 15 not in center a1"
	if got := err.Error(); got != want {
		t.Errorf("Error() =\n  %s\nwant\n  %s", got, want)
	}
	if nf.Total != 45 || !reflect.DeepEqual(nf.Counts, map[Reason]int{ReasonMemory: 30, ReasonCenter: 15}) {
		t.Errorf("Total %d, Counts %v", nf.Total, nf.Counts)
	}
	if got, want := nf.Shortfalls[ReasonMemory], (Shortfall{Need: 64 * GiB, MostFree: 48 * GiB, HostID: "a1-h12"}); got != want {
		t.Errorf("Shortfall = %+v, want %+v", got, want)
	}
}

func TestNoFitMessages(t *testing.T) {
	full := Resources{64, 256 * GiB, 4 * TiB}
	for _, tc := range []struct {
		name  string
		req   Request
		hosts []Host
		want  string
	}{
		{
			name: "no hosts",
			req:  small(""),
			want: "0/0 hosts fit: no hosts registered",
		},
		{
			name: "each host counted once, under the first filter",
			req:  Request{Resources: Resources{64, 256 * GiB, 4 * TiB}, Center: "a1"},
			hosts: []Host{
				{ID: "down", Center: "b1", State: HostDown, Capacity: standard, Ratios: Ratios{1, 1, 1}, Allocated: full}, // down, wrong center, full
				host("elsewhere", "b1", full),                           // wrong center, full
				host("busy", "a1", Resources{VCPUs: 1, MemoryBytes: 1}), // short of CPU and memory
			},
			want: "0/3 hosts fit: 1 down, 1 insufficient vCPU (need 64 vCPU; most free: 63 vCPU on busy), 1 not in center a1",
		},
		{
			name: "count ties sorted by reason name",
			req:  Request{Resources: Resources{8, 64 * GiB, 100 * GiB}},
			hosts: []Host{
				host("m2", "a1", Resources{0, 250 * GiB, 0}),
				host("m1", "a1", Resources{0, 250 * GiB, 0}),
				host("d1", "a1", Resources{0, 0, 4*TiB - 10*GiB}),
				host("d2", "a1", Resources{0, 0, 4*TiB - 1536*MiB}),
			},
			// a tie on most free goes to the smaller ID
			want: "0/4 hosts fit: 2 insufficient disk (need 100 GiB; most free: 10 GiB on d1), 2 insufficient memory (need 64 GiB; most free: 6 GiB on m1)",
		},
		{
			name:  "amounts that print alike are printed exactly",
			req:   Request{Resources: Resources{1, 64 * GiB, GiB}},
			hosts: []Host{host("h1", "a1", Resources{MemoryBytes: 192*GiB + 1})},
			want:  "0/1 hosts fit: 1 insufficient memory (need 68719476736 B; most free: 68719476735 B on h1)",
		},
		{
			name:  "overcommitted host",
			req:   small(""),
			hosts: []Host{host("h1", "a1", Resources{4, 16 * GiB, 4*TiB + 1536*MiB})},
			want:  "0/1 hosts fit: 1 insufficient disk (need 40 GiB; none free: h1, the least overcommitted, is over by 1.5 GiB)",
		},
	} {
		_, err := Place(tc.req, tc.hosts)
		var nf *NoFitError
		if !errors.As(err, &nf) {
			t.Errorf("%s: err = %v, want a *NoFitError", tc.name, err)
			continue
		}
		if got := err.Error(); got != tc.want {
			t.Errorf("%s: Error() =\n  %s\nwant\n  %s", tc.name, got, tc.want)
		}
		n := 0
		for _, c := range nf.Counts {
			n += c
		}
		if n != len(tc.hosts) || nf.Total != len(tc.hosts) {
			t.Errorf("%s: %d hosts counted, Total %d, for %d hosts", tc.name, n, nf.Total, len(tc.hosts))
		}
	}
}
