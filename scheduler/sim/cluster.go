package sim

import (
	"fmt"
	"math"
	"regexp"
	"strconv"

	"github.com/yunchi/yunchi/scheduler"
)

// DefaultShape is the definition's host: 64 vCPU, 256 GiB memory, 4096 GiB disk.
var DefaultShape = scheduler.Resources{VCPUs: 64, MemoryBytes: 256 * GiB, DiskBytes: 4096 * GiB}

// Default cluster sizes of the two workloads.
const (
	DefaultFillHosts  = 1000
	DefaultChurnHosts = 720
	// DefaultMaxRejections is when W1 stops.
	DefaultMaxRejections = 5000
)

var shapeRE = regexp.MustCompile(`^([0-9]+)c([0-9]+)g([0-9]+)d$`)

// ParseShape parses a host shape "64c256g4096d": vCPUs, GiB of memory, GiB
// of disk, each a positive integer.
func ParseShape(s string) (scheduler.Resources, error) {
	m := shapeRE.FindStringSubmatch(s)
	if m == nil {
		return scheduler.Resources{}, fmt.Errorf("invalid host shape %q: want <vcpus>c<memory GiB>g<disk GiB>d, e.g. 64c256g4096d", s)
	}
	var v [3]int64
	for i := range v {
		n, err := strconv.ParseInt(m[i+1], 10, 64)
		if err != nil || n <= 0 || (i > 0 && n > math.MaxInt64/GiB) {
			return scheduler.Resources{}, fmt.Errorf("invalid host shape %q: every amount must be a positive integer (and not absurdly large)", s)
		}
		v[i] = n
	}
	return scheduler.Resources{VCPUs: v[0], MemoryBytes: v[1] * GiB, DiskBytes: v[2] * GiB}, nil
}

// FormatShape is the inverse of ParseShape (memory and disk in whole GiB,
// rounded down).
func FormatShape(r scheduler.Resources) string {
	return fmt.Sprintf("%dc%dg%dd", r.VCPUs, r.MemoryBytes/GiB, r.DiskBytes/GiB)
}

// HostID is the ID of host j: zero-padded so that ID order is index order.
func HostID(j int) string { return fmt.Sprintf("h%05d", j) }

// ledger is the harness's own per-host accounting. It does not trust the
// placer: a placement that would put a host over capacity is an error.
type ledger struct {
	cap   scheduler.Resources
	alloc []scheduler.Resources
	vms   []int32
	total scheduler.Resources
}

func newLedger(n int, shape scheduler.Resources) *ledger {
	return &ledger{cap: shape, alloc: make([]scheduler.Resources, n), vms: make([]int32, n)}
}

func (l *ledger) add(h int, r scheduler.Resources) error {
	if h < 0 || h >= len(l.alloc) {
		return fmt.Errorf("placed on host index %d, which does not exist (cluster of %d)", h, len(l.alloc))
	}
	a := l.alloc[h].Add(r)
	if !a.Fits(l.cap) {
		return fmt.Errorf("placed %s on %s, which would then hold %s of %s: over capacity",
			formatRes(r), HostID(h), formatRes(a), formatRes(l.cap))
	}
	l.alloc[h] = a
	l.vms[h]++
	l.total = l.total.Add(r)
	return nil
}

func (l *ledger) remove(h int, r scheduler.Resources) error {
	if !r.Fits(l.alloc[h]) || l.vms[h] == 0 {
		return fmt.Errorf("harness bug: releasing %s from %s leaves a negative allocation", formatRes(r), HostID(h))
	}
	l.alloc[h] = l.alloc[h].Sub(r)
	l.vms[h]--
	l.total = l.total.Sub(r)
	return nil
}

// firstFit is the first host that could take r, or -1.
func (l *ledger) firstFit(r scheduler.Resources) int {
	limit := l.cap.Sub(r)
	for i := range l.alloc {
		if l.alloc[i].Fits(limit) {
			return i
		}
	}
	return -1
}

// anyFits reports whether some host could take r.
func (l *ledger) anyFits(r scheduler.Resources) bool { return l.firstFit(r) >= 0 }

// slots is how many VMs of shape s still fit, summed over hosts.
func (l *ledger) slots(s scheduler.Resources) int64 {
	var n int64
	for i := range l.alloc {
		f := l.cap.Sub(l.alloc[i])
		n += min(f.VCPUs/s.VCPUs, f.MemoryBytes/s.MemoryBytes, f.DiskBytes/s.DiskBytes)
	}
	return n
}

func (l *ledger) touched() int {
	n := 0
	for _, v := range l.vms {
		if v > 0 {
			n++
		}
	}
	return n
}

func formatRes(r scheduler.Resources) string {
	return fmt.Sprintf("%d vCPU/%s/%s", r.VCPUs, gib(r.MemoryBytes), gib(r.DiskBytes))
}

func gib(b int64) string {
	return strconv.FormatFloat(float64(b)/float64(GiB), 'f', -1, 64) + " GiB"
}
