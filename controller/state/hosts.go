package state

import (
	"fmt"
	"maps"
	"math"
	"regexp"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// DefaultReserved is kept for the host OS on a host whose reservation an
// admin never set: 1 vCPU and 2 GiB for the hypervisor, libvirt and the
// agent; no disk (VM disks live on a pool the host OS does not share).
var DefaultReserved = Resources{VCPUs: 1, MemoryBytes: 2 << 30, DiskBytes: 0}

// Ratio bounds, per dimension: a ratio being set is 0 (remove the
// setting) or in [MinRatio, MaxRatios]. Below a tenth a host would offer
// almost nothing (take it out of service or reserve instead); CPU time
// is shared and overcommits far, memory beyond 4x would live on ballooning
// and swap, thin disks beyond 16x on hope.
const MinRatio = 0.1

// MaxRatios are the largest ratios accepted, per dimension.
var MaxRatios = Ratios{CPU: 64, Memory: 4, Disk: 16}

// legacyMaxRatio bounds every ratio of a command older than version 3.
const legacyMaxRatio = 64.0

// rulesV3 is the first command version judged by the rules of version 3:
// reserved label keys refused, ratios within MinRatio..MaxRatios, admin
// changes that would overcommit a host refused unless forced. Older
// commands (a log written before) apply as they did, so that every
// controller replays them to the same state.
const rulesV3 = 3

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

// checkRatio validates a ratio being set for one dimension: 0 clears, else
// [MinRatio, max] (legacy: (0, legacyMaxRatio]).
func checkRatio(what string, r, max float64, legacy bool) error {
	if legacy {
		if math.IsNaN(r) || math.IsInf(r, 0) || r < 0 || r > legacyMaxRatio {
			return errorf(KindInvalid, "%s ratio %v is out of range: give a number above 0 and at most %v (0 removes the setting)", what, r, legacyMaxRatio)
		}
		return nil
	}
	if math.IsNaN(r) || math.IsInf(r, 0) || (r != 0 && (r < MinRatio || r > max)) {
		return errorf(KindInvalid, "%s ratio %v is out of range: give %v to %v (0 removes the setting)", what, r, MinRatio, max)
	}
	return nil
}

// checkRatios validates the ratios a command sets (nil: not set).
func checkRatios(cpu, memory, disk *float64, legacy bool) error {
	for _, f := range []struct {
		what string
		v    *float64
		max  float64
	}{{"cpu", cpu, MaxRatios.CPU}, {"memory", memory, MaxRatios.Memory}, {"disk", disk, MaxRatios.Disk}} {
		if f.v != nil {
			if err := checkRatio(f.what, *f.v, f.max, legacy); err != nil {
				return err
			}
		}
	}
	return nil
}

// mergeRatios writes the ratios a command sets into r (nil leaves one as
// it is, 0 clears it) and reports whether r still sets any.
func mergeRatios(r *statev1.Ratios, cpu, memory, disk *float64) bool {
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

// reservedOf is the host's reservation, the default when never set.
func reservedOf(h *statev1.HostRecord) Resources {
	if h.Reserved == nil {
		return DefaultReserved
	}
	return resourcesOf(h.Reserved)
}

// effectiveState is what placement sees: down (no heartbeats) wins over
// what an admin set.
func effectiveState(h *statev1.HostRecord) statev1.HostState {
	if h.State == statev1.HostState_HOST_STATE_DOWN {
		return statev1.HostState_HOST_STATE_DOWN
	}
	switch h.AdminState {
	case statev1.HostState_HOST_STATE_MAINTENANCE, statev1.HostState_HOST_STATE_DRAINING:
		return h.AdminState
	}
	return statev1.HostState_HOST_STATE_READY
}

// stateName is how messages name a host state: "ready", "down",
// "maintenance", "draining".
func stateName(s statev1.HostState) string {
	switch s {
	case statev1.HostState_HOST_STATE_MAINTENANCE:
		return "maintenance"
	case statev1.HostState_HOST_STATE_DRAINING:
		return "draining"
	case statev1.HostState_HOST_STATE_DOWN:
		return "down"
	}
	return "ready"
}

// ratiosOf resolves the effective ratios of h, per dimension: host > host
// group > center > default, from the settings in ratios (s.ratios, or what
// they would be after a change). Callers hold mu.
func ratiosOf(h *statev1.HostRecord, group string, ratios map[string]*statev1.RatioRecord) (Ratios, RatioSources) {
	type layer struct {
		r   *statev1.Ratios
		src string
	}
	layers := []layer{{h.Ratios, "host"}}
	if group != "" {
		if rec := ratios[ratioKey(ScopeHostGroup, group)]; rec != nil {
			layers = append(layers, layer{rec.Ratios, "host_group " + group})
		}
	}
	if rec := ratios[ratioKey(ScopeCenter, h.Center)]; rec != nil {
		layers = append(layers, layer{rec.Ratios, "center " + h.Center})
	}
	pick := func(get func(*statev1.Ratios) float64, def float64) (float64, string) {
		for _, l := range layers {
			if v := get(l.r); v > 0 {
				return v, l.src
			}
		}
		return def, "default"
	}
	var r Ratios
	var src RatioSources
	r.CPU, src.CPU = pick((*statev1.Ratios).GetCpu, DefaultRatios.CPU)
	r.Memory, src.Memory = pick((*statev1.Ratios).GetMemory, DefaultRatios.Memory)
	r.Disk, src.Disk = pick((*statev1.Ratios).GetDisk, DefaultRatios.Disk)
	return r, src
}

// hostFacts is h as placement and Apply's re-check see it: effective
// state, labels, reservation and ratios, and what is allocated on it now.
// Callers hold mu.
func (s *Store) hostFacts(h *statev1.HostRecord) (HostFacts, RatioSources) {
	return s.hostFactsWith(h, s.ratios)
}

// hostFactsWith is hostFacts under the ratio settings given: what h would
// be after a change to them. Callers hold mu.
func (s *Store) hostFactsWith(h *statev1.HostRecord, ratios map[string]*statev1.RatioRecord) (HostFacts, RatioSources) {
	f, src := s.hostFactsNoLabels(h, ratios)
	f.Labels = factsLabels(h)
	return f, src
}

// factsLabels is hostFacts' Labels: h's labels, an administrator's over
// the host's own, and its CPU model unless a label gives one.
func factsLabels(h *statev1.HostRecord) map[string]string {
	labels := labelsOf(h)
	if _, ok := labels["cpu_model"]; !ok && h.CpuModel != "" {
		labels["cpu_model"] = h.CpuModel
	}
	return labels
}

// hostLabel is h's label key as hostFacts' Labels has it (an
// administrator's label over the host's own).
func hostLabel(h *statev1.HostRecord, key string) string {
	if v, ok := h.AdminLabels[key]; ok {
		return v
	}
	return h.Labels[key]
}

// hostFactsNoLabels is hostFactsWith without Labels (nil), which costs a
// map per call: Apply re-checks every placement with it and builds the
// labels only for a VM with constraints.
func (s *Store) hostFactsNoLabels(h *statev1.HostRecord, ratios map[string]*statev1.RatioRecord) (HostFacts, RatioSources) {
	r, src := ratiosOf(h, hostLabel(h, HostGroupLabel), ratios)
	st := effectiveState(h)
	if s.centerFenced(h.Center) {
		// A center a failover declared lost takes no VMs, whatever its
		// hosts say, until failback lifts the fence.
		st = statev1.HostState_HOST_STATE_DOWN
	}
	return HostFacts{
		ID: h.Id, Center: h.Center, Site: h.Site, Rack: h.Rack,
		State:     st,
		Owner:     h.Owner,
		Capacity:  resourcesOf(h.Capacity),
		Reserved:  reservedOf(h),
		Ratios:    r,
		Allocated: s.alloc[h.Id],
	}, src
}

// loweredBelow says, per dimension a change from allocatable before to
// after puts under what the host runs (used > after, after < before), what
// it runs and what it would be allowed: "memory: allocated 8 GiB >
// allocatable 6.2 GiB".
func loweredBelow(before, after, used Resources) []string {
	vcpus := func(n int64) string { return fmt.Sprintf("%d vCPU", n) }
	var out []string
	for _, d := range []struct {
		name      string
		b, a, use int64
		format    func(int64) string
	}{
		{"cpu", before.VCPUs, after.VCPUs, used.VCPUs, vcpus},
		{"memory", before.MemoryBytes, after.MemoryBytes, used.MemoryBytes, formatBytes},
		{"disk", before.DiskBytes, after.DiskBytes, used.DiskBytes, formatBytes},
	} {
		if d.use > d.a && d.a < d.b {
			out = append(out, d.name+": allocated "+d.format(d.use)+" > allocatable "+d.format(d.a))
		}
	}
	return out
}

// maxNamedHosts is how many hosts an overcommit refusal names.
const maxNamedHosts = 3

// overcommitError refuses a change that would put hosts below what they
// already run: for each (before, after) view, sorted by host ID, the
// dimensions whose allocatable the change lowers under what is allocated.
// A host already overcommitted may take a change that does not lower it
// further. nil when no host is put below.
func overcommitError(what string, changes [][2]HostFacts) error {
	var named []string
	var firstID, firstDims string
	n := 0
	for _, c := range changes {
		dims := loweredBelow(c[0].Allocatable(), c[1].Allocatable(), c[1].Allocated)
		if len(dims) == 0 {
			continue
		}
		n++
		if n == 1 {
			firstID, firstDims = c[1].ID, strings.Join(dims, "; ")
		}
		if len(named) < maxNamedHosts {
			named = append(named, c[1].ID+" ("+strings.Join(dims, "; ")+")")
		}
	}
	if n == 0 {
		return nil
	}
	const force = "give --force (REST: \"force\": true) to accept the overcommit"
	if n == 1 {
		return errorf(KindFailedPrecondition, "%s would put host %s below what it runs (%s); %s", what, firstID, firstDims, force)
	}
	list := strings.Join(named, ", ")
	if n > len(named) {
		list += fmt.Sprintf(" and %d more", n-len(named))
	}
	return errorf(KindFailedPrecondition, "%s would put %d hosts below what they run: %s; %s", what, n, list, force)
}

// MaxLabelsPerUpdate bounds the labels one UpdateHost sets.
const MaxLabelsPerUpdate = 64

// CheckUpdateHost says whether c would be applied to the current state:
// the checks Apply makes before it changes anything, overcommit included.
// The API calls it before proposing, so that a bad request never reaches
// the log.
func (s *Store) CheckUpdateHost(c *statev1.UpdateHost) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, err := s.checkUpdateHost(0, c, false)
	return err
}

// checkUpdateHost validates c and returns its host as c would leave it (a
// new record; the stored one is untouched). legacy: c predates version 3
// and is judged by the rules it was written under. Callers hold mu.
func (s *Store) checkUpdateHost(now int64, c *statev1.UpdateHost, legacy bool) (*statev1.HostRecord, error) {
	h, ok := s.hosts[c.GetHostId()]
	if !ok {
		return nil, errorf(KindNotFound, "host %q not found (see `yunchi host list`)", c.GetHostId())
	}
	switch c.AdminState {
	case statev1.HostState_HOST_STATE_UNSPECIFIED, statev1.HostState_HOST_STATE_READY,
		statev1.HostState_HOST_STATE_MAINTENANCE, statev1.HostState_HOST_STATE_DRAINING:
	case statev1.HostState_HOST_STATE_DOWN:
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
		if !legacy && IsHostFieldKey(k) {
			return nil, errorf(KindInvalid, "label key %q is reserved: constraints on %s read the host's own fields (its agent's --center, --site, --rack and --host-id), never labels; use another key",
				k, strings.Join(HostFieldKeys, ", "))
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
				r.Vcpus, formatBytes(r.MemoryBytes), formatBytes(r.DiskBytes), h.Id,
				cp.GetVcpus(), formatBytes(cp.GetMemoryBytes()), formatBytes(cp.GetDiskBytes()))
		}
	}
	if err := checkRatios(c.CpuRatio, c.MemoryRatio, c.DiskRatio, legacy); err != nil {
		return nil, err
	}
	nh := updatedHost(now, h, c)
	if !legacy && !c.Force {
		before, _ := s.hostFacts(h)
		after, _ := s.hostFacts(nh)
		if err := overcommitError("this change", [][2]HostFacts{{before, after}}); err != nil {
			return nil, err
		}
	}
	return nh, nil
}

// updatedHost returns a copy of h with c's changes, which have been checked.
func updatedHost(now int64, h *statev1.HostRecord, c *statev1.UpdateHost) *statev1.HostRecord {
	h = proto.Clone(h).(*statev1.HostRecord)
	if c.AdminState != statev1.HostState_HOST_STATE_UNSPECIFIED && c.AdminState != h.AdminState {
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
		h.Reserved = proto.Clone(c.Reserved).(*statev1.Resources)
	}
	if c.CpuRatio != nil || c.MemoryRatio != nil || c.DiskRatio != nil {
		if h.Ratios == nil {
			h.Ratios = &statev1.Ratios{}
		}
		if !mergeRatios(h.Ratios, c.CpuRatio, c.MemoryRatio, c.DiskRatio) {
			h.Ratios = nil
		}
	}
	return h
}

func (s *Store) applyUpdateHost(now int64, c *statev1.UpdateHost, legacy bool) (*statev1.HostRecord, error) {
	// Validate everything first: a rejected command changes nothing.
	nh, err := s.checkUpdateHost(now, c, legacy)
	if err != nil {
		return nil, err
	}
	s.replaceHost(nh)
	s.touched(nh.Id)
	return proto.Clone(nh).(*statev1.HostRecord), nil
}

// CheckSetRatios says whether c would be applied to the current state: the
// checks Apply makes, overcommit included, for the API to make before
// proposing.
func (s *Store) CheckSetRatios(c *statev1.SetRatios) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, _, err := s.checkSetRatios(c, false)
	return err
}

// checkSetRatios validates c and returns the ratio settings as c would
// leave them (a new map; s.ratios is untouched) and the setting c changes.
// legacy as in checkUpdateHost. Callers hold mu.
func (s *Store) checkSetRatios(c *statev1.SetRatios, legacy bool) (map[string]*statev1.RatioRecord, *statev1.RatioRecord, error) {
	switch c.GetScope() {
	case ScopeCenter, ScopeHostGroup:
	case "":
		return nil, nil, errorf(KindInvalid, "scope is missing: give center or host_group")
	default:
		return nil, nil, errorf(KindInvalid, "ratio scope %q is not valid: use center or host_group", c.GetScope())
	}
	if c.GetName() == "" {
		return nil, nil, errorf(KindInvalid, "%s name is empty", c.Scope)
	}
	if c.Scope == ScopeCenter && !ValidName(c.Name) {
		return nil, nil, errorf(KindInvalid, "center %q is not valid: use lowercase letters, digits and '-'", c.Name)
	}
	if c.Scope == ScopeHostGroup {
		if err := CheckLabel(HostGroupLabel, c.Name); err != nil {
			return nil, nil, err
		}
	}
	if err := checkRatios(c.Cpu, c.Memory, c.Disk, legacy); err != nil {
		return nil, nil, err
	}
	if c.Cpu == nil && c.Memory == nil && c.Disk == nil {
		return nil, nil, errorf(KindInvalid, "no ratio given: set at least one of cpu, memory, disk")
	}
	key := ratioKey(c.Scope, c.Name)
	rec := &statev1.RatioRecord{Scope: c.Scope, Name: c.Name, Ratios: &statev1.Ratios{}}
	if old := s.ratios[key]; old != nil {
		rec = proto.Clone(old).(*statev1.RatioRecord)
	}
	next := maps.Clone(s.ratios)
	if mergeRatios(rec.Ratios, c.Cpu, c.Memory, c.Disk) {
		next[key] = rec
	} else {
		delete(next, key)
	}
	if !legacy && !c.Force {
		ids := make([]string, 0, len(s.alloc))
		for id, a := range s.alloc {
			if _, ok := s.hosts[id]; ok && a != (Resources{}) {
				ids = append(ids, id) // only a host that runs something can be put below it
			}
		}
		sort.Strings(ids)
		changes := make([][2]HostFacts, 0, len(ids))
		for _, id := range ids {
			before, _ := s.hostFacts(s.hosts[id])
			after, _ := s.hostFactsWith(s.hosts[id], next)
			changes = append(changes, [2]HostFacts{before, after})
		}
		what := "these ratios for " + c.Scope + " " + c.Name
		if err := overcommitError(what, changes); err != nil {
			return nil, nil, err
		}
	}
	return next, rec, nil
}

func (s *Store) applySetRatios(c *statev1.SetRatios, legacy bool) (*statev1.RatioRecord, error) {
	next, rec, err := s.checkSetRatios(c, legacy)
	if err != nil {
		return nil, err
	}
	s.ratios = next
	s.touchedAll()
	return proto.Clone(rec).(*statev1.RatioRecord), nil
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
