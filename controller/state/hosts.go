package state

import (
	"maps"
	"math"
	"regexp"
	"sort"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// DefaultReserved is kept for the host OS on a host whose reservation an
// admin never set: 1 vCPU and 2 GiB for the hypervisor, libvirt and the
// agent; no disk (VM disks live on a pool the host OS does not share).
var DefaultReserved = scheduler.Resources{VCPUs: 1, MemoryBytes: 2 << 30, DiskBytes: 0}

// MaxRatio is the largest allocation ratio accepted anywhere.
const MaxRatio = 64.0

// HostGroupLabel is the label whose value names a host's host group.
const HostGroupLabel = "host_group"

// Ratio scopes.
const (
	ScopeCenter    = "center"
	ScopeHostGroup = "host_group"
)

// RatioSources names where each effective ratio comes from: "host",
// "host_group <name>", "center <name>" or "default".
type RatioSources struct{ CPU, Memory, Disk string }

var labelKeyRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9_./-]*[a-z0-9])?$`)
var labelValueRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$`)

// CheckLabel validates one label: keys 1-63 of lowercase letters, digits,
// '_', '.', '-', '/'; values 0-63 of letters, digits, '_', '.', '-'.
func CheckLabel(k, v string) error {
	switch {
	case k == "":
		return errorf(KindInvalid, "label key is empty: give key=value, e.g. cpu_model=kunpeng920")
	case len(k) > 63:
		return errorf(KindInvalid, "label key %.20q... is %d characters long: at most 63 are allowed", k, len(k))
	case !labelKeyRE.MatchString(k):
		return errorf(KindInvalid, "label key %q is not valid: use lowercase letters, digits, '_', '.', '-' and '/', starting and ending with a letter or digit", k)
	case len(v) > 63:
		return errorf(KindInvalid, "label %s: value is %d characters long: at most 63 are allowed", k, len(v))
	case v != "" && !labelValueRE.MatchString(v):
		return errorf(KindInvalid, "label %s: value %q is not valid: use letters, digits, '_', '.' and '-'", k, v)
	}
	return nil
}

// CheckRatio validates a ratio being set: 0 clears, else (0, MaxRatio].
func CheckRatio(what string, r float64) error {
	if math.IsNaN(r) || math.IsInf(r, 0) || r < 0 || r > MaxRatio {
		return errorf(KindInvalid, "%s ratio %v is out of range: give a number above 0 and at most %v (0 removes the setting)", what, r, MaxRatio)
	}
	return nil
}

// checkRatios validates the ratios a command sets (nil: not set).
func checkRatios(cpu, memory, disk *float64) error {
	for _, f := range []struct {
		what string
		v    *float64
	}{{"cpu", cpu}, {"memory", memory}, {"disk", disk}} {
		if f.v != nil {
			if err := CheckRatio(f.what, *f.v); err != nil {
				return err
			}
		}
	}
	return nil
}

// mergeRatios writes the ratios a command sets into r (nil leaves one as
// it is, 0 clears it) and reports whether r still sets any.
func mergeRatios(r *yunchiv1.Ratios, cpu, memory, disk *float64) bool {
	if cpu != nil {
		r.Cpu = *cpu
	}
	if memory != nil {
		r.Memory = *memory
	}
	if disk != nil {
		r.Disk = *disk
	}
	return r.Cpu != 0 || r.Memory != 0 || r.Disk != 0
}

func ratioKey(scope, name string) string { return scope + "/" + name }

// labelsOf is the host's labels as placement sees them: the agent's, with
// the admin's on top.
func labelsOf(h *statev1.HostRecord) map[string]string {
	out := make(map[string]string, len(h.Labels)+len(h.AdminLabels))
	maps.Copy(out, h.Labels)
	maps.Copy(out, h.AdminLabels)
	return out
}

// schedResources converts r (nil: zero) for the scheduler.
func schedResources(r *yunchiv1.Resources) scheduler.Resources {
	return scheduler.Resources{VCPUs: r.GetVcpus(), MemoryBytes: r.GetMemoryBytes(), DiskBytes: r.GetDiskBytes()}
}

// reservedOf is the host's reservation, the default when never set.
func reservedOf(h *statev1.HostRecord) scheduler.Resources {
	if h.Reserved == nil {
		return DefaultReserved
	}
	return schedResources(h.Reserved)
}

// effectiveState is what placement sees: down (no heartbeats) wins over
// what an admin set.
func effectiveState(h *statev1.HostRecord) yunchiv1.HostState {
	if h.State == yunchiv1.HostState_HOST_STATE_DOWN {
		return yunchiv1.HostState_HOST_STATE_DOWN
	}
	switch h.AdminState {
	case yunchiv1.HostState_HOST_STATE_MAINTENANCE, yunchiv1.HostState_HOST_STATE_DRAINING:
		return h.AdminState
	}
	return yunchiv1.HostState_HOST_STATE_READY
}

func schedState(s yunchiv1.HostState) scheduler.HostState {
	switch s {
	case yunchiv1.HostState_HOST_STATE_MAINTENANCE:
		return scheduler.HostMaintenance
	case yunchiv1.HostState_HOST_STATE_DRAINING:
		return scheduler.HostDraining
	case yunchiv1.HostState_HOST_STATE_DOWN:
		return scheduler.HostDown
	}
	return scheduler.HostReady
}

// ratiosOf resolves the effective ratios of h, per dimension: host > host
// group > center > default. Callers hold mu.
func (s *Store) ratiosOf(h *statev1.HostRecord, labels map[string]string) (scheduler.Ratios, RatioSources) {
	type layer struct {
		r   *yunchiv1.Ratios
		src string
	}
	layers := []layer{{h.Ratios, "host"}}
	if g := labels[HostGroupLabel]; g != "" {
		if rec := s.ratios[ratioKey(ScopeHostGroup, g)]; rec != nil {
			layers = append(layers, layer{rec.Ratios, "host_group " + g})
		}
	}
	if rec := s.ratios[ratioKey(ScopeCenter, h.Center)]; rec != nil {
		layers = append(layers, layer{rec.Ratios, "center " + h.Center})
	}
	pick := func(get func(*yunchiv1.Ratios) float64, def float64) (float64, string) {
		for _, l := range layers {
			if v := get(l.r); v > 0 {
				return v, l.src
			}
		}
		return def, "default"
	}
	var r scheduler.Ratios
	var src RatioSources
	r.CPU, src.CPU = pick((*yunchiv1.Ratios).GetCpu, scheduler.DefaultRatios.CPU)
	r.Memory, src.Memory = pick((*yunchiv1.Ratios).GetMemory, scheduler.DefaultRatios.Memory)
	r.Disk, src.Disk = pick((*yunchiv1.Ratios).GetDisk, scheduler.DefaultRatios.Disk)
	return r, src
}

// schedHost is h as the scheduler (and Apply's re-check) sees it: effective
// state, labels, reservation and ratios, and what is allocated on it now.
// Callers hold mu.
func (s *Store) schedHost(h *statev1.HostRecord) (scheduler.Host, RatioSources) {
	labels := labelsOf(h)
	if _, ok := labels["cpu_model"]; !ok && h.CpuModel != "" {
		labels["cpu_model"] = h.CpuModel
	}
	r, src := s.ratiosOf(h, labels)
	return scheduler.Host{
		ID: h.Id, Center: h.Center, Site: h.Site, Rack: h.Rack,
		Labels:    labels,
		State:     schedState(effectiveState(h)),
		Owner:     h.Owner,
		Capacity:  schedResources(h.Capacity),
		Reserved:  reservedOf(h),
		Ratios:    r,
		Allocated: s.alloc[h.Id],
	}, src
}

// MaxLabelsPerUpdate bounds the labels one UpdateHost sets.
const MaxLabelsPerUpdate = 64

// CheckUpdateHost says whether c would be applied to the current state:
// the checks Apply makes before it changes anything. The API calls it
// before proposing, so that a bad request never reaches the log.
func (s *Store) CheckUpdateHost(c *statev1.UpdateHost) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, err := s.checkUpdateHost(c)
	return err
}

// checkUpdateHost validates c and returns its host. Callers hold mu.
func (s *Store) checkUpdateHost(c *statev1.UpdateHost) (*statev1.HostRecord, error) {
	h, ok := s.hosts[c.GetHostId()]
	if !ok {
		return nil, errorf(KindNotFound, "host %q not found (see `yunchi host list`)", c.GetHostId())
	}
	switch c.AdminState {
	case yunchiv1.HostState_HOST_STATE_UNSPECIFIED, yunchiv1.HostState_HOST_STATE_READY,
		yunchiv1.HostState_HOST_STATE_MAINTENANCE, yunchiv1.HostState_HOST_STATE_DRAINING:
	case yunchiv1.HostState_HOST_STATE_DOWN:
		return nil, errorf(KindInvalid, "state down is derived from missed heartbeats and cannot be set: use ready, maintenance or draining")
	default:
		return nil, errorf(KindInvalid, "unknown host state %v: use ready, maintenance or draining", c.AdminState)
	}
	if len(c.SetLabels) > MaxLabelsPerUpdate {
		return nil, errorf(KindInvalid, "%d labels at once: at most %d", len(c.SetLabels), MaxLabelsPerUpdate)
	}
	keys := make([]string, 0, len(c.SetLabels))
	for k := range c.SetLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys) // the same first error on every controller
	for _, k := range keys {
		if err := CheckLabel(k, c.SetLabels[k]); err != nil {
			return nil, err
		}
	}
	for _, k := range c.RemoveLabels {
		if _, set := c.SetLabels[k]; set {
			return nil, errorf(KindInvalid, "label %q is both set and removed: give one or the other", k)
		}
		if _, ok := h.AdminLabels[k]; !ok {
			if _, agent := h.Labels[k]; agent {
				return nil, errorf(KindInvalid, "label %q on host %s comes from its agent's configuration: change it there", k, h.Id)
			}
			return nil, errorf(KindInvalid, "host %s has no label %q", h.Id, k)
		}
	}
	if c.Owner != nil && *c.Owner != "" && !ValidName(*c.Owner) {
		return nil, errorf(KindInvalid, "owner project %q is not valid: use lowercase letters, digits and '-'", *c.Owner)
	}
	if r := c.Reserved; r != nil {
		cp := h.GetCapacity()
		if r.Vcpus < 0 || r.MemoryBytes < 0 || r.DiskBytes < 0 {
			return nil, errorf(KindInvalid, "reservation must not be negative")
		}
		if r.Vcpus > cp.GetVcpus() || r.MemoryBytes > cp.GetMemoryBytes() || r.DiskBytes > cp.GetDiskBytes() {
			return nil, errorf(KindInvalid, "reservation (%d vCPU, %s memory, %s disk) exceeds host %s's capacity (%d vCPU, %s, %s)",
				r.Vcpus, scheduler.FormatBytes(r.MemoryBytes), scheduler.FormatBytes(r.DiskBytes), h.Id,
				cp.GetVcpus(), scheduler.FormatBytes(cp.GetMemoryBytes()), scheduler.FormatBytes(cp.GetDiskBytes()))
		}
	}
	if err := checkRatios(c.CpuRatio, c.MemoryRatio, c.DiskRatio); err != nil {
		return nil, err
	}
	return h, nil
}

func (s *Store) applyUpdateHost(now int64, c *statev1.UpdateHost) (any, error) {
	// Validate everything first: a rejected command changes nothing.
	h, err := s.checkUpdateHost(c)
	if err != nil {
		return nil, err
	}
	if c.AdminState != yunchiv1.HostState_HOST_STATE_UNSPECIFIED && c.AdminState != h.AdminState {
		old := effectiveState(h)
		h.AdminState = c.AdminState
		if effectiveState(h) != old {
			h.StateChangedUnixNano = now
		}
	}
	if len(c.SetLabels) > 0 && h.AdminLabels == nil {
		h.AdminLabels = map[string]string{}
	}
	maps.Copy(h.AdminLabels, c.SetLabels)
	for _, k := range c.RemoveLabels {
		delete(h.AdminLabels, k)
	}
	if c.Owner != nil {
		h.Owner = *c.Owner
	}
	if c.Reserved != nil {
		h.Reserved = proto.Clone(c.Reserved).(*yunchiv1.Resources)
	}
	s.touched(h.Id)
	if c.CpuRatio != nil || c.MemoryRatio != nil || c.DiskRatio != nil {
		if h.Ratios == nil {
			h.Ratios = &yunchiv1.Ratios{}
		}
		if !mergeRatios(h.Ratios, c.CpuRatio, c.MemoryRatio, c.DiskRatio) {
			h.Ratios = nil
		}
	}
	return proto.Clone(h), nil
}

// CheckSetRatios says whether c is a valid SetRatios command: the checks
// Apply makes, for the API to make before proposing.
func CheckSetRatios(c *statev1.SetRatios) error {
	switch c.GetScope() {
	case ScopeCenter, ScopeHostGroup:
	case "":
		return errorf(KindInvalid, "scope is missing: give center or host_group")
	default:
		return errorf(KindInvalid, "ratio scope %q is not valid: use center or host_group", c.GetScope())
	}
	if c.GetName() == "" {
		return errorf(KindInvalid, "%s name is empty", c.Scope)
	}
	if c.Scope == ScopeCenter && !ValidName(c.Name) {
		return errorf(KindInvalid, "center %q is not valid: use lowercase letters, digits and '-'", c.Name)
	}
	if c.Scope == ScopeHostGroup {
		if err := CheckLabel(HostGroupLabel, c.Name); err != nil {
			return err
		}
	}
	if err := checkRatios(c.Cpu, c.Memory, c.Disk); err != nil {
		return err
	}
	if c.Cpu == nil && c.Memory == nil && c.Disk == nil {
		return errorf(KindInvalid, "no ratio given: set at least one of cpu, memory, disk")
	}
	return nil
}

func (s *Store) applySetRatios(c *statev1.SetRatios) (any, error) {
	if err := CheckSetRatios(c); err != nil {
		return nil, err
	}
	key := ratioKey(c.Scope, c.Name)
	rec := s.ratios[key]
	if rec == nil {
		rec = &statev1.RatioRecord{Scope: c.Scope, Name: c.Name, Ratios: &yunchiv1.Ratios{}}
	}
	if mergeRatios(rec.Ratios, c.Cpu, c.Memory, c.Disk) {
		s.ratios[key] = rec
	} else {
		delete(s.ratios, key)
	}
	s.touchedAll()
	return proto.Clone(rec), nil
}

// Ratios lists the center and host group ratio settings, sorted by scope
// then name.
func (s *Store) Ratios() []*statev1.RatioRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*statev1.RatioRecord, 0, len(s.ratios))
	for _, r := range s.ratios {
		out = append(out, proto.Clone(r).(*statev1.RatioRecord))
	}
	sortRatios(out)
	return out
}

func sortRatios(rs []*statev1.RatioRecord) {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].Scope != rs[j].Scope {
			return rs[i].Scope < rs[j].Scope
		}
		return rs[i].Name < rs[j].Name
	})
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// ValidName reports whether s is a DNS-label style name (VM, project,
// group, center): 1-63 lowercase letters, digits and '-'.
func ValidName(s string) bool { return len(s) <= 63 && nameRE.MatchString(s) }
