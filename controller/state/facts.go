package state

import (
	"math"
	"strconv"
	"strings"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// The rules Apply judges by live in this package, not in the scheduler:
// the scheduler may get better at choosing between versions, but what a
// command recorded in the log means must not change with it (every
// controller replays an old log to the same state). Placement converts
// HostFacts and GroupFacts into the scheduler's types.

// Resources is an amount of vCPUs, memory and disk.
type Resources struct {
	VCPUs       int64
	MemoryBytes int64
	DiskBytes   int64
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

// resourcesOf converts r (nil: zero).
func resourcesOf(r *statev1.Resources) Resources {
	return Resources{VCPUs: r.GetVcpus(), MemoryBytes: r.GetMemoryBytes(), DiskBytes: r.GetDiskBytes()}
}

// Ratios are effective allocation ratios, one per dimension.
type Ratios struct{ CPU, Memory, Disk float64 }

// DefaultRatios apply where no host, host group or center sets a ratio:
// CPU time is overcommitted four times, nothing else.
var DefaultRatios = Ratios{CPU: 4.0, Memory: 1.0, Disk: 1.0}

// HostFacts is a host as placement and Apply's re-checks see it: its
// effective state (down wins over what an admin set), labels (the
// agent's, the admin's over them, cpu_model from the host when no label
// sets it), reservation, effective ratios and what is allocated on it.
type HostFacts struct {
	ID                 string
	Center, Site, Rack string
	Labels             map[string]string
	State              statev1.HostState
	Owner              string
	Capacity           Resources
	Reserved           Resources
	Ratios             Ratios
	Allocated          Resources
}

// Allocatable is what may be allocated on h: (capacity - reserved) x
// ratio per dimension, rounded down; never negative.
func (h *HostFacts) Allocatable() Resources {
	return Resources{
		scale(h.Capacity.VCPUs-h.Reserved.VCPUs, h.Ratios.CPU),
		scale(h.Capacity.MemoryBytes-h.Reserved.MemoryBytes, h.Ratios.Memory),
		scale(h.Capacity.DiskBytes-h.Reserved.DiskBytes, h.Ratios.Disk),
	}
}

// Free is Allocatable - Allocated: negative in a dimension where h is
// overcommitted (its capacity or ratio shrank below its allocations).
func (h *HostFacts) Free() Resources { return h.Allocatable().Sub(h.Allocated) }

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

// GroupFacts is a placement group with where its members are now (host
// id -> members there).
type GroupFacts struct {
	Name       string
	Project    string
	Policy     statev1.GroupPolicy
	Level      statev1.GroupLevel // never UNSPECIFIED: read as HOST
	Soft       bool
	MaxPerHost int
	Members    map[string]int
}

// HostFieldKeys are the constraint keys that read a host's own fields
// (center, site, rack, id), never its labels; labels with these keys are
// refused (rules of version 3 on).
var HostFieldKeys = []string{"center", "site", "rack", "host"}

// IsHostFieldKey reports whether a constraint on key reads a host field.
func IsHostFieldKey(key string) bool {
	for _, k := range HostFieldKeys {
		if k == key {
			return true
		}
	}
	return false
}

// hostAttr is the host attribute a constraint key names, and whether the
// host has it.
func hostAttr(h *HostFacts, key string) (string, bool) {
	switch key {
	case "center":
		return h.Center, true
	case "site":
		return h.Site, true
	case "rack":
		return h.Rack, true
	case "host":
		return h.ID, true
	}
	v, ok := h.Labels[key]
	return v, ok
}

// MatchConstraint reports whether h satisfies c. A host without the label
// c names satisfies NE and NOT_IN, and not EQ or IN.
func MatchConstraint(c *statev1.Constraint, h *HostFacts) bool {
	v, ok := hostAttr(h, c.GetKey())
	found := false
	if ok {
		for _, w := range c.GetValues() {
			if v == w {
				found = true
				break
			}
		}
	}
	switch c.GetOp() {
	case statev1.ConstraintOp_CONSTRAINT_OP_EQ, statev1.ConstraintOp_CONSTRAINT_OP_IN:
		return found
	case statev1.ConstraintOp_CONSTRAINT_OP_NE, statev1.ConstraintOp_CONSTRAINT_OP_NOT_IN:
		return !found
	}
	return false
}

var constraintOpText = map[statev1.ConstraintOp]string{
	statev1.ConstraintOp_CONSTRAINT_OP_EQ:     "=",
	statev1.ConstraintOp_CONSTRAINT_OP_NE:     "!=",
	statev1.ConstraintOp_CONSTRAINT_OP_IN:     " in ",
	statev1.ConstraintOp_CONSTRAINT_OP_NOT_IN: " notin ",
}

// FormatConstraint is c in the form users write it: "rack!=r3",
// "center in a1,a2".
func FormatConstraint(c *statev1.Constraint) string {
	op, ok := constraintOpText[c.GetOp()]
	if !ok {
		op = "?"
	}
	return c.GetKey() + op + strings.Join(c.GetValues(), ",")
}

// CheckConstraint says whether c is well formed: a key without blanks or
// operator characters, a known operator, one value for EQ and NE, and no
// empty value.
func CheckConstraint(c *statev1.Constraint) error {
	switch {
	case c.GetKey() == "" || strings.ContainsAny(c.GetKey(), " \t=!,"):
		return errorf(KindInvalid, "constraint key %q must be a non-empty word (center, site, rack, host or a label name)", c.GetKey())
	case constraintOpText[c.GetOp()] == "":
		return errorf(KindInvalid, "constraint on %q has unknown operator %d", c.GetKey(), int32(c.GetOp()))
	case len(c.GetValues()) == 0:
		return errorf(KindInvalid, "constraint on %q has no value", c.GetKey())
	case (c.GetOp() == statev1.ConstraintOp_CONSTRAINT_OP_EQ || c.GetOp() == statev1.ConstraintOp_CONSTRAINT_OP_NE) && len(c.GetValues()) != 1:
		return errorf(KindInvalid, "constraint on %q: %s takes one value, got %d (use in/notin for several)", c.GetKey(), strings.TrimSpace(constraintOpText[c.GetOp()]), len(c.GetValues()))
	}
	for _, v := range c.GetValues() {
		if v == "" {
			return errorf(KindInvalid, "constraint on %q has an empty value", c.GetKey())
		}
	}
	return nil
}

// parseLegacyConstraint reads a constraint as commands before version 4
// recorded it (canonical text: "key=v", "key!=v", "key in v1,v2", "key
// notin v1,v2"). It is frozen with that format, whatever the API accepts
// later.
func parseLegacyConstraint(s string) (*statev1.Constraint, error) {
	in := strings.TrimSpace(s)
	c := &statev1.Constraint{}
	var key, vals string
	if i := strings.Index(in, "!="); i >= 0 {
		c.Op, key, vals = statev1.ConstraintOp_CONSTRAINT_OP_NE, in[:i], in[i+2:]
	} else if i := strings.IndexByte(in, '='); i >= 0 {
		c.Op, key, vals = statev1.ConstraintOp_CONSTRAINT_OP_EQ, in[:i], in[i+1:]
	} else if f := strings.Fields(in); len(f) >= 3 && (f[1] == "in" || f[1] == "notin") {
		c.Op = statev1.ConstraintOp_CONSTRAINT_OP_IN
		if f[1] == "notin" {
			c.Op = statev1.ConstraintOp_CONSTRAINT_OP_NOT_IN
		}
		key = f[0]
		vals = strings.TrimSpace(in[strings.Index(in, f[1])+len(f[1]):])
	} else {
		return nil, errorf(KindInvalid, "constraint %q: want key=value, key!=value, \"key in v1,v2\" or \"key notin v1,v2\"", s)
	}
	c.Key = strings.TrimSpace(key)
	for _, v := range strings.Split(vals, ",") {
		if v = strings.TrimSpace(v); v != "" {
			c.Values = append(c.Values, v)
		}
	}
	if err := CheckConstraint(c); err != nil {
		return nil, errorf(KindInvalid, "constraint %q: %v", s, err)
	}
	return c, nil
}

// ConstraintsOf returns the constraints vm was placed under, structured:
// its constraint_rules, or those read from the text older commands
// recorded.
func ConstraintsOf(vm *statev1.VMRecord) ([]*statev1.Constraint, error) {
	if len(vm.GetConstraints()) == 0 {
		return vm.GetConstraintRules(), nil
	}
	out := make([]*statev1.Constraint, 0, len(vm.Constraints)+len(vm.ConstraintRules))
	for _, cs := range vm.Constraints {
		c, err := parseLegacyConstraint(cs)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return append(out, vm.ConstraintRules...), nil
}

// ConstraintTexts is vm's constraints as users write them.
func ConstraintTexts(vm *statev1.VMRecord) []string {
	if len(vm.GetConstraintRules()) == 0 {
		return vm.GetConstraints()
	}
	out := append([]string(nil), vm.GetConstraints()...)
	for _, c := range vm.ConstraintRules {
		out = append(out, FormatConstraint(c))
	}
	return out
}

var byteUnits = []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}

// formatBytes is n in binary units, two decimals at most: "1.5 GiB". Part
// of Apply's error messages, so kept here rather than borrowed.
func formatBytes(n int64) string {
	sign := ""
	u := uint64(n)
	if n < 0 {
		sign, u = "-", uint64(-(n+1))+1 // no overflow at math.MinInt64
	}
	unit := 0
	for unit+1 < len(byteUnits) && u >= 1<<(10*(unit+1)) {
		unit++
	}
	if unit == 0 {
		return sign + strconv.FormatUint(u, 10) + " B"
	}
	v := strconv.FormatFloat(float64(u)/float64(uint64(1)<<(10*unit)), 'f', 2, 64)
	if v == "1024.00" && unit+1 < len(byteUnits) {
		v, unit = "1.00", unit+1
	}
	v = strings.TrimSuffix(strings.TrimRight(v, "0"), ".")
	return sign + v + " " + byteUnits[unit]
}
