package state

import (
	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// MaxBatch is the most VMs one PlaceVMs command may carry.
const MaxBatch = 100

// domainOf is the failure domain of h at a group's level: the host, its
// rack (within its center) or its center.
func domainOf(h *statev1.HostRecord, l statev1.GroupLevel) string {
	switch l {
	case statev1.GroupLevel_GROUP_LEVEL_RACK:
		return h.Center + "/" + h.Site + "/" + h.Rack
	case statev1.GroupLevel_GROUP_LEVEL_CENTER:
		return h.Center
	}
	return h.Id
}

func vmResources(vm *statev1.VMRecord) Resources {
	return Resources{VCPUs: int64(vm.Vcpus), MemoryBytes: vm.MemoryBytes, DiskBytes: vm.DiskBytes}
}

// checkPlacements re-checks, in log order, every rule the leader decided
// on: the decision was made on a view of the state that may have changed
// since (two creates racing, a host put into maintenance, a group filling
// up). The VMs of one batch see each other. Callers hold mu.
func (s *Store) checkPlacements(vms []*statev1.VMRecord) error {
	if len(vms) == 0 {
		return errorf(KindInvalid, "no vm to place")
	}
	if len(vms) > MaxBatch {
		return errorf(KindInvalid, "%d vms in one batch: at most %d", len(vms), MaxBatch)
	}
	ids, names := map[string]bool{}, map[string]bool{}
	extra := map[string]Resources{}             // host -> batch so far
	extraMembers := map[string]map[string]int{} // group key -> host -> batch so far
	for _, vm := range vms {
		switch {
		case vm.GetId() == "":
			return errorf(KindInvalid, "vm id is empty")
		case vm.GetName() == "" || vm.GetProject() == "":
			return errorf(KindInvalid, "vm name and project are required")
		case vm.Vcpus <= 0 || vm.MemoryBytes <= 0 || vm.DiskBytes <= 0:
			return errorf(KindInvalid, "vm sizes must be positive")
		}
		if _, ok := s.vms[vm.Id]; ok || ids[vm.Id] {
			return errorf(KindAlreadyExists, "vm id %s already exists", vm.Id)
		}
		nk := nameKey(vm.Project, vm.Name)
		if _, ok := s.byName[nk]; ok || names[nk] {
			return errorf(KindAlreadyExists, "vm %q already exists in project %q", vm.Name, vm.Project)
		}
		ids[vm.Id], names[nk] = true, true

		h, ok := s.hosts[vm.HostId]
		if !ok {
			return errorf(KindConflict, "host %q chosen for vm %q is not registered", vm.HostId, vm.Name)
		}
		sh, _ := s.hostFactsNoLabels(h, s.ratios)
		if sh.State != statev1.HostState_HOST_STATE_READY {
			return errorf(KindConflict, "host %q chosen for vm %q is not ready (%s)", vm.HostId, vm.Name, stateName(sh.State))
		}
		if h.Owner != "" && h.Owner != vm.Project {
			return errorf(KindConflict, "host %q chosen for vm %q is dedicated to project %q", vm.HostId, vm.Name, h.Owner)
		}
		if vm.Center != "" && h.Center != vm.Center {
			return errorf(KindConflict, "host %q chosen for vm %q is not in center %s", vm.HostId, vm.Name, vm.Center)
		}
		// Labels may have changed since the decision: the VM's constraints
		// must still hold.
		cons, err := ConstraintsOf(vm)
		if err != nil {
			return errorf(KindInvalid, "vm %q: %v", vm.Name, err)
		}
		if len(cons) > 0 {
			sh.Labels = factsLabels(h)
		}
		for _, c := range cons {
			if err := CheckConstraint(c); err != nil {
				return errorf(KindInvalid, "vm %q: %v", vm.Name, err)
			}
			if !MatchConstraint(c, &sh) {
				return errorf(KindConflict, "host %q chosen for vm %q no longer satisfies %s", vm.HostId, vm.Name, FormatConstraint(c))
			}
		}
		// Capacity with the effective ratios and reservation: the same
		// Allocatable the scheduler decided with.
		need := vmResources(vm)
		if !sh.Allocated.Add(extra[h.Id]).Add(need).Fits(sh.Allocatable()) {
			return errorf(KindConflict, "host %q no longer has room for vm %q", h.Id, vm.Name)
		}
		if vm.Group != "" {
			gk := nameKey(vm.Project, vm.Group)
			g, ok := s.groups[gk]
			if !ok {
				return errorf(KindNotFound, "placement group %q not found in project %q (see `yunchi group list`)", vm.Group, vm.Project)
			}
			if err := s.checkGroup(g, h, vm, extraMembers[gk]); err != nil {
				return err
			}
			if extraMembers[gk] == nil {
				extraMembers[gk] = map[string]int{}
			}
			extraMembers[gk][h.Id]++
		}
		extra[h.Id] = extra[h.Id].Add(need)
	}
	return nil
}

// checkGroup enforces g's hard rules for vm going to h, counting the
// members already placed and those earlier in the same batch.
func (s *Store) checkGroup(g *statev1.PlacementGroupRecord, h *statev1.HostRecord, vm *statev1.VMRecord, batch map[string]int) error {
	count := map[string]int{} // host -> members
	for id, n := range s.groupHosts[nameKey(g.Project, g.Name)] {
		count[id] += n
	}
	for id, n := range batch {
		count[id] += n
	}
	if g.MaxPerHost > 0 && count[h.Id] >= int(g.MaxPerHost) {
		return errorf(KindConflict, "host %q already has %d members of group %q (max per host %d): vm %q cannot join them", h.Id, count[h.Id], g.Name, g.MaxPerHost, vm.Name)
	}
	if g.Soft {
		return nil
	}
	dom := domainOf(h, g.Level)
	inDomain, total := 0, 0
	for id, n := range count {
		total += n
		if mh, ok := s.hosts[id]; ok && domainOf(mh, g.Level) == dom {
			inDomain += n
		}
	}
	level := levelName(g.Level)
	if g.Policy == statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY && inDomain > 0 {
		return errorf(KindConflict, "%s of host %q already has a member of anti-affinity group %q: vm %q would break it", level, h.Id, g.Name, vm.Name)
	}
	if g.Policy == statev1.GroupPolicy_GROUP_POLICY_AFFINITY && total > 0 && inDomain == 0 {
		return errorf(KindConflict, "host %q is not in the %s of the other members of affinity group %q: vm %q would break it", h.Id, level, g.Name, vm.Name)
	}
	return nil
}

func (s *Store) applyPlaceVMs(index uint64, now int64, vms []*statev1.VMRecord, projectMustExist, imageRules, answer bool) ([]*statev1.VMRecord, error) {
	if err := s.checkPlacements(vms); err != nil {
		return nil, err
	}
	if projectMustExist {
		for _, vm := range vms {
			if s.projectDept(vm.Project) == "" {
				return nil, errorf(KindNotFound, "project %q not found", vm.Project)
			}
		}
	}
	if imageRules {
		for _, vm := range vms {
			if err := s.checkVMImage(vm); err != nil {
				return nil, err
			}
			if err := s.checkVMRestore(vm); err != nil {
				return nil, err
			}
		}
	}
	if err := s.checkPlaceQuotas(vms); err != nil {
		return nil, err
	}
	out := make([]*statev1.VMRecord, 0, len(vms))
	for _, vm := range vms {
		// The command is Apply's own (decoded from the log entry for it)
		// and read only for the audit record after this, which does not
		// look at the VMs: the store keeps the record, not a copy.
		rec := vm
		if rec.Desired == statev1.PowerState_POWER_STATE_UNSPECIFIED {
			rec.Desired = statev1.PowerState_POWER_STATE_RUNNING
		}
		rec.Phase = statev1.VMPhase_VM_PHASE_PENDING
		rec.RestoredFrom = rec.GetRestore().GetPointId()
		rec.CreatedUnixNano = now
		rec.UpdatedUnixNano = now
		rec.Revision = index
		s.addVM(rec)
		if answer {
			out = append(out, proto.Clone(rec).(*statev1.VMRecord))
		} else {
			// Read only by the request table (which encodes it) before
			// apply returns; then dropped.
			out = append(out, rec)
		}
	}
	return out, nil
}
