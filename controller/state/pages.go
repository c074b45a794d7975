package state

import (
	"sort"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// VMKey orders VMs in lists and pages: by project, then name.
type VMKey struct{ Project, Name string }

// Less reports whether k sorts before o.
func (k VMKey) Less(o VMKey) bool {
	if k.Project != o.Project {
		return k.Project < o.Project
	}
	return k.Name < o.Name
}

// VMsPage lists up to limit VMs (of project and hostID when set, as VMs
// does) whose key sorts after the key after (the zero key: from the
// start), in key order; more says whether any follow. Only the VMs
// returned are copied.
func (s *Store) VMsPage(project, hostID string, after VMKey, limit int) (out []*statev1.VMRecord, more bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	first := after == VMKey{}
	var sel []*statev1.VMRecord
	add := func(v *statev1.VMRecord) {
		if (project == "" || v.Project == project) && (first || after.Less(VMKey{v.Project, v.Name})) {
			sel = append(sel, v)
		}
	}
	if hostID != "" {
		for id := range s.onHost[hostID] {
			add(s.vms[id])
		}
	} else {
		for _, v := range s.vms {
			add(v)
		}
	}
	sort.Slice(sel, func(i, j int) bool {
		return VMKey{sel[i].Project, sel[i].Name}.Less(VMKey{sel[j].Project, sel[j].Name})
	})
	if len(sel) > limit {
		sel, more = sel[:limit], true
	}
	out = make([]*statev1.VMRecord, len(sel))
	for i, v := range sel {
		out[i] = proto.Clone(v).(*statev1.VMRecord)
	}
	return out, more
}

// HostsPage lists up to limit hosts (of center when set) whose id sorts
// after after ("": from the start), by id; more says whether any follow.
// Only the hosts returned are viewed.
func (s *Store) HostsPage(center, after string, limit int) (out []HostView, more bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var ids []string
	for id, h := range s.hosts {
		if (center == "" || h.Center == center) && id > after {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	if len(ids) > limit {
		ids, more = ids[:limit], true
	}
	out = make([]HostView, len(ids))
	for i, id := range ids {
		out[i] = s.hostView(s.hosts[id])
	}
	return out, more
}
