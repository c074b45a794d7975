package scheduler

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// Resources is an amount of each kind of capacity a VM takes from a host.
type Resources struct {
	VCPUs, MemoryBytes, DiskBytes int64
}

// Add returns r + o in every dimension.
func (r Resources) Add(o Resources) Resources {
	return Resources{r.VCPUs + o.VCPUs, r.MemoryBytes + o.MemoryBytes, r.DiskBytes + o.DiskBytes}
}

// Sub returns r - o in every dimension.
func (r Resources) Sub(o Resources) Resources {
	return Resources{r.VCPUs - o.VCPUs, r.MemoryBytes - o.MemoryBytes, r.DiskBytes - o.DiskBytes}
}

// Fits reports whether r <= in in every dimension.
func (r Resources) Fits(in Resources) bool {
	return r.VCPUs <= in.VCPUs && r.MemoryBytes <= in.MemoryBytes && r.DiskBytes <= in.DiskBytes
}

// HostState is whether a host takes new VMs. Only HostReady hosts do.
type HostState int

const (
	HostReady       HostState = iota // takes new VMs
	HostMaintenance                  // an admin took it out of service
	HostDraining                     // its VMs are being moved away
	HostDown                         // its agent is not reporting
)

var hostStateNames = [...]string{"ready", "maintenance", "draining", "down"}

func (s HostState) String() string {
	if s >= 0 && int(s) < len(hostStateNames) {
		return hostStateNames[s]
	}
	return fmt.Sprintf("HostState(%d)", int(s))
}

// ParseHostState reads "ready", "maintenance", "draining" or "down".
func ParseHostState(s string) (HostState, error) {
	for i, n := range hostStateNames {
		if strings.EqualFold(strings.TrimSpace(s), n) {
			return HostState(i), nil
		}
	}
	return 0, fmt.Errorf("unknown host state %q: want one of %s", s, strings.Join(hostStateNames[:], ", "))
}

// Ratios are allocation (overcommit) ratios: how many times its physical
// capacity (less what is reserved) a host may hand out. A zero field means
// "use the default".
type Ratios struct{ CPU, Memory, Disk float64 }

// DefaultRatios overcommit CPU four times and nothing else.
var DefaultRatios = Ratios{CPU: 4.0, Memory: 1.0, Disk: 1.0}

// OrDefault fills r's zero fields from DefaultRatios.
func (r Ratios) OrDefault() Ratios {
	if r.CPU == 0 {
		r.CPU = DefaultRatios.CPU
	}
	if r.Memory == 0 {
		r.Memory = DefaultRatios.Memory
	}
	if r.Disk == 0 {
		r.Disk = DefaultRatios.Disk
	}
	return r
}

// Host is the scheduler's view of one hypervisor host.
type Host struct {
	ID                 string
	Center, Site, Rack string
	Labels             map[string]string // admin labels, e.g. cpu_model=kunpeng920
	State              HostState
	Owner              string    // "" = shared; else dedicated to this project (only its VMs go there)
	Capacity           Resources // physical, as the agent reports
	Reserved           Resources // kept for the host OS
	Ratios             Ratios    // effective ratios (caller resolves host > group > center > default)
	Allocated          Resources // sum of the VMs placed here
}

// Allocatable is what may be allocated on h in all:
// floor((Capacity-Reserved) * ratio) in each dimension, never negative.
func (h *Host) Allocatable() Resources {
	r := h.Ratios.OrDefault()
	return Resources{
		scale(h.Capacity.VCPUs-h.Reserved.VCPUs, r.CPU),
		scale(h.Capacity.MemoryBytes-h.Reserved.MemoryBytes, r.Memory),
		scale(h.Capacity.DiskBytes-h.Reserved.DiskBytes, r.Disk),
	}
}

func scale(n int64, ratio float64) int64 {
	if n <= 0 || ratio <= 0 {
		return 0
	}
	if ratio == 1 {
		return n // exact, whatever the size
	}
	v := math.Floor(float64(n) * ratio)
	if v >= math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// Free is what may still be allocated on h: Allocatable - Allocated. It is
// negative in a dimension where h is overcommitted (its capacity or ratio
// shrank below its allocations).
func (h *Host) Free() Resources { return h.Allocatable().Sub(h.Allocated) }

// Request is what one VM asks for, and where it may go.
type Request struct {
	Name    string // the VM, for explanations
	Project string // owner check for dedicated hosts
	Resources
	Center      string // shorthand for Constraint{center = X}; "" = any center
	Constraints []Constraint
	Group       *Group // nil = none
}

// ErrInvalidRequest is wrapped by the error Place returns for a request that
// could never be placed as written (a size that is zero or negative, a
// constraint without a key...).
var ErrInvalidRequest = errors.New("invalid placement request")

func validate(req *Request) error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"VCPUs", req.VCPUs},
		{"MemoryBytes", req.MemoryBytes},
		{"DiskBytes", req.DiskBytes},
	} {
		if f.v <= 0 {
			errs = append(errs, fmt.Errorf("%w: %s must be positive, got %d", ErrInvalidRequest, f.name, f.v))
		}
	}
	for _, c := range req.Constraints {
		if err := c.validate(); err != nil {
			errs = append(errs, fmt.Errorf("%w: %v", ErrInvalidRequest, err))
		}
	}
	if g := req.Group; g != nil {
		if g.Level < LevelHost || g.Level > LevelCenter {
			errs = append(errs, fmt.Errorf("%w: group %q has unknown level %d", ErrInvalidRequest, g.Name, int(g.Level)))
		}
		if g.MaxPerHost < 0 {
			errs = append(errs, fmt.Errorf("%w: group %q MaxPerHost must be 0 (no limit) or more, got %d", ErrInvalidRequest, g.Name, g.MaxPerHost))
		}
	}
	return errors.Join(errs...)
}

// A dimension is one kind of capacity: how to read it, the Reason a host
// lacking it is rejected with, and how to print an amount of it: what the
// no-fit explanation needs to report a shortage.
type dimension struct {
	reason Reason
	of     func(Resources) int64
	format func(int64) string // for people: "1.5 GiB"
	unit   string             // of the exact amount: "B"
}

var dimensions = []dimension{
	{ReasonCPU, func(r Resources) int64 { return r.VCPUs }, formatVCPUs, "vCPU"},
	{ReasonMemory, func(r Resources) int64 { return r.MemoryBytes }, FormatBytes, "B"},
	{ReasonDisk, func(r Resources) int64 { return r.DiskBytes }, FormatBytes, "B"},
}

// dimensionOf returns the dimension whose shortage r reports.
func dimensionOf(r Reason) (dimension, bool) {
	for _, d := range dimensions {
		if d.reason == r {
			return d, true
		}
	}
	return dimension{}, false
}
