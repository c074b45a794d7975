package state

import (
	"math"
	"sort"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// HostView is a host with what is allocated on it, as of one moment.
type HostView struct {
	Host *statev1.HostRecord
	VMs  int
	// Facts is the host as placement sees it: effective state, labels,
	// reservation, ratios and what is allocated on it;
	// Facts.Allocatable() is what may be allocated.
	Facts HostFacts
	// Sources says where each effective ratio comes from.
	Sources RatioSources
}

func (s *Store) hostView(h *statev1.HostRecord) HostView {
	sh, src := s.hostFacts(h)
	return HostView{
		Host:    proto.Clone(h).(*statev1.HostRecord),
		VMs:     len(s.onHost[h.Id]),
		Facts:   sh,
		Sources: src,
	}
}

// Host returns one host.
func (s *Store) Host(id string) (HostView, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h, ok := s.hosts[id]
	if !ok {
		return HostView{}, false
	}
	return s.hostView(h), true
}

// HostSummary is what a VM's answer says of its host.
type HostSummary struct {
	Center string
	// State is the host's recorded state (not its effective one).
	State                 statev1.HostState
	LastHeartbeatUnixNano int64
}

// HostSummary returns what a VM's answer says of host id, without copying
// its record or working out its facts (every VM answer asks).
func (s *Store) HostSummary(id string) (HostSummary, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h, ok := s.hosts[id]
	if !ok {
		return HostSummary{}, false
	}
	return summaryOf(h), true
}

// Summary is what a VM's answer says of the host.
func (v HostView) Summary() HostSummary { return summaryOf(v.Host) }

func summaryOf(h *statev1.HostRecord) HostSummary {
	return HostSummary{Center: h.Center, State: h.State, LastHeartbeatUnixNano: h.LastHeartbeatUnixNano}
}

// HostFacts is host id as placement sees it, without copying its record
// (a decision asks for it about once per create).
func (s *Store) HostFacts(id string) (HostFacts, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h, ok := s.hosts[id]
	if !ok {
		return HostFacts{}, false
	}
	f, _ := s.hostFacts(h)
	return f, true
}

// HostLiveness is host id's liveness as the log records it (ready or
// down; not the admin state): the heartbeat path's one question, answered
// without copying the record.
func (s *Store) HostLiveness(id string) (statev1.HostState, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h, ok := s.hosts[id]
	if !ok {
		return statev1.HostState_HOST_STATE_UNSPECIFIED, false
	}
	return h.State, true
}

// HostRevision is the raft index of the last change to the VMs assigned
// to host id (0: none yet): equal revisions mean equal assignments.
func (s *Store) HostRevision(id string) uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.hostRev[id]
}

// Centers lists the centers that have hosts, sorted.
func (s *Store) Centers() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	seen := map[string]bool{}
	var out []string
	for _, h := range s.hosts {
		if !seen[h.Center] {
			seen[h.Center] = true
			out = append(out, h.Center)
		}
	}
	sort.Strings(out)
	return out
}

// LiveHostIDs lists the hosts whose liveness is ready (not marked down
// for missed heartbeats), whatever an admin set; sorted.
func (s *Store) LiveHostIDs() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for id, h := range s.hosts {
		if h.State == statev1.HostState_HOST_STATE_READY {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// Hosts returns every host, sorted by id.
func (s *Store) Hosts() []HostView {
	out, _ := s.HostsPage("", "", math.MaxInt) // ids are never empty
	return out
}

// VM finds a VM by project and name.
func (s *Store) VM(project, name string) (*statev1.VMRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.byName[nameKey(project, name)]
	if !ok {
		return nil, false
	}
	return proto.Clone(s.vms[id]).(*statev1.VMRecord), true
}

// HasVM says whether project has a VM called name (no copy made: the
// placement engine asks before every decision).
func (s *Store) HasVM(project, name string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.byName[nameKey(project, name)]
	return ok
}

// VMByID finds a VM by id.
func (s *Store) VMByID(id string) (*statev1.VMRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.vms[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(v).(*statev1.VMRecord), true
}

// VMs lists VMs, filtered by project and host when those are not empty,
// sorted by project then name.
func (s *Store) VMs(project, hostID string) []*statev1.VMRecord {
	out, _ := s.VMsPage(project, hostID, VMKey{}, math.MaxInt)
	return out
}

// Members lists controller members, sorted by id.
func (s *Store) Members() []*statev1.MemberRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*statev1.MemberRecord, 0, len(s.members))
	for _, m := range s.members {
		out = append(out, proto.Clone(m).(*statev1.MemberRecord))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// Member returns one member.
func (s *Store) Member(id string) (*statev1.MemberRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m, ok := s.members[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(m).(*statev1.MemberRecord), true
}

// SchedulerView brings a cached scheduler view up to date: given the seq a
// cache was last synced at (0: never), it returns the hosts whose view
// changed since (all of them, with full set, when the cache must be
// rebuilt), the seq to remember, and, when group is not empty, that group
// of project with where its members are, all as of one moment.
func (s *Store) SchedulerView(since uint64, project, group string) (hosts []HostFacts, full bool, seq uint64, g *GroupFacts, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if group != "" {
		rec, ok := s.groups[nameKey(project, group)]
		if !ok {
			return nil, false, 0, nil, errorf(KindNotFound, "placement group %q not found in project %q: create it with `yunchi group create %s --policy anti-affinity`", group, project, group)
		}
		g = s.groupFacts(rec)
	}
	full = since == 0 || s.allSeq > since
	if full {
		for _, h := range s.hosts {
			sh, _ := s.hostFacts(h)
			hosts = append(hosts, sh)
		}
	} else {
		// Only the changes after since: the tail of the log, each host at
		// its last entry (the one compaction keeps).
		i := sort.Search(len(s.hostLog), func(i int) bool { return s.hostLog[i].seq > since })
		for _, c := range s.hostLog[i:] {
			if h, ok := s.hosts[c.id]; ok && s.hostSeq[c.id] == c.seq {
				sh, _ := s.hostFacts(h)
				hosts = append(hosts, sh)
			}
		}
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].ID < hosts[j].ID })
	return hosts, full, s.seq, g, nil
}
