package scheduler

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

// Host is the scheduler's view of one hypervisor host.
type Host struct {
	ID, Center string
	Ready      bool      // false: down or otherwise unavailable
	Capacity   Resources // what may be allocated
	Allocated  Resources // what is allocated now
}

// Free is what may still be allocated on h. It is negative in a dimension
// where h is overcommitted (its capacity shrank below its allocations).
func (h Host) Free() Resources { return h.Capacity.Sub(h.Allocated) }

// Request is what one VM asks for.
type Request struct {
	Resources
	Center string // "" = any center
}

// A dimension is one kind of capacity: how to read it, the Reason a host
// lacking it is rejected with, and how to print an amount of it. The resource
// filters, the best-fit scorer and the no-fit explanation all work from this
// table, so a new kind of capacity (GPUs, say) is one more entry and one
// more filter.
type dimension struct {
	reason Reason
	of     func(Resources) int64
	format func(int64) string // for people: "1.5 GiB"
	unit   string             // of the exact amount: "B"
}

var (
	cpuDim    = dimension{ReasonCPU, func(r Resources) int64 { return r.VCPUs }, formatVCPUs, "vCPU"}
	memoryDim = dimension{ReasonMemory, func(r Resources) int64 { return r.MemoryBytes }, FormatBytes, "B"}
	diskDim   = dimension{ReasonDisk, func(r Resources) int64 { return r.DiskBytes }, FormatBytes, "B"}

	dimensions = []dimension{cpuDim, memoryDim, diskDim}
)

// fit is the check every resource filter makes in its own dimension.
func (d dimension) fit(req Request, h *Host) Reason {
	if d.of(req.Resources) > d.of(h.Free()) {
		return d.reason
	}
	return Fit
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
