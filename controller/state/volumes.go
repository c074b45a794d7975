package state

import (
	"math"
	"sort"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Volumes (volume.proto), version 8 on: data disks in the storage pool of
// one host, attached to at most one VM of their project at a time.
//
// Accounting. A volume counts against its project's and department's disk
// quota from CreateVolume until it is gone (a volume being deleted still
// counts, as a VM does), whether it is placed or not: quotas are checked
// when the space is promised, at create. It is created placed nowhere, for
// the host it will live on is the host of the VM it is attached to, and
// which VM that is nobody knows at create. Its first AttachVolume places
// it on the VM's host, refused unless the host's disk, with what is
// allocated there already, fits the host's capacity x ratio less its
// reservation (the rule PlaceVMs applies to VMs); from then on its size
// is allocated on that host (the scheduler sees it like a VM's disk) until
// the host reports it removed from its pool after a delete. It stays on
// that host, detached or not: its bytes are there.
//
// A VM's deletion detaches its volumes (they stay on the host); a
// volume's deletion is refused while it is attached to a VM.

// volumesV8 is the first command version with volumes.
const volumesV8 = 8

// MaxVolumesPerVM bounds the volumes attached to one VM (virtio disks vdb
// onwards).
const MaxVolumesPerVM = 16

// Volume sizes: whole 512-byte sectors, 1 MiB to 64 TiB.
const (
	MinVolumeBytes = 1 << 20
	MaxVolumeBytes = 64 << 40
)

// MaxVolumeIDLen is the longest volume id: what a virtio disk's serial
// holds (20 bytes), so the guest sees the whole id.
const MaxVolumeIDLen = 20

// ValidVolumeID says whether id can name a volume: 1-20 lowercase
// letters, digits and '-' (it is a disk serial and part of a file name).
func ValidVolumeID(id string) bool {
	if id == "" || len(id) > MaxVolumeIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// CheckVolumeSize refuses a size that is no disk's.
func CheckVolumeSize(n int64) error {
	switch {
	case n < MinVolumeBytes || n > MaxVolumeBytes:
		return errorf(KindInvalid, "volume size %d bytes is out of range: give 1MiB to 64TiB", n)
	case n%512 != 0:
		return errorf(KindInvalid, "volume size %d bytes is not a whole number of 512-byte sectors", n)
	}
	return nil
}

// volumeUsage is what a volume counts against quotas: its disk, no VM.
func volumeUsage(v *statev1.VolumeRecord) Usage { return Usage{DiskBytes: v.SizeBytes} }

// addVolume stores v, a record no View holds, with what it counts
// (quotas, its host's allocation) and the indexes; removeVolume undoes
// it. Callers hold mu.
func (s *Store) addVolume(v *statev1.VolumeRecord) {
	s.volumes[v.Id] = v
	s.volByName[nameKey(v.Project, v.Name)] = v.Id
	s.projectVolumes[v.Project]++
	s.useVolume(v, +1)
	if v.HostId != "" {
		s.placeVolume(v, +1)
	}
}

func (s *Store) removeVolume(v *statev1.VolumeRecord, index uint64) {
	if v.HostId != "" {
		s.placeVolume(v, -1)
		s.hostRev[v.HostId] = index
	}
	s.useVolume(v, -1)
	if s.projectVolumes[v.Project]--; s.projectVolumes[v.Project] <= 0 {
		delete(s.projectVolumes, v.Project)
	}
	delete(s.volByName, nameKey(v.Project, v.Name))
	delete(s.volumes, v.Id)
}

// useVolume adds (sign +1) or removes (-1) v's size from its project's
// and department's use.
func (s *Store) useVolume(v *statev1.VolumeRecord, sign int64) {
	u := volumeUsage(v).Times(sign)
	d := s.vmDept(v.Project)
	s.addUse(s.projUse, v.Project, u)
	s.addUse(s.deptUse, d, u)
}

// placeVolume charges (sign +1) or releases (-1) v's size on its host and
// indexes it there. Callers hold mu.
func (s *Store) placeVolume(v *statev1.VolumeRecord, sign int) {
	s.touched(v.HostId)
	need := Resources{DiskBytes: v.SizeBytes}
	ids := s.hostVolumes[v.HostId]
	if sign > 0 {
		s.alloc[v.HostId] = s.alloc[v.HostId].Add(need)
		if ids == nil {
			ids = map[string]struct{}{}
			s.hostVolumes[v.HostId] = ids
		}
		ids[v.Id] = struct{}{}
		return
	}
	s.alloc[v.HostId] = s.alloc[v.HostId].Sub(need)
	delete(ids, v.Id)
	if len(ids) == 0 {
		delete(s.hostVolumes, v.HostId)
	}
}

// replaceVolume stores next in place of the record with its id (records
// are replaced, never changed in place: a View may hold the old one) and
// notes the change for its host's assignments. Callers hold mu.
func (s *Store) replaceVolume(next *statev1.VolumeRecord, now int64, index uint64) {
	next.UpdatedUnixNano = now
	next.Revision = index
	s.volumes[next.Id] = next
	if next.HostId != "" {
		s.hostRev[next.HostId] = index
	}
}

// volumeByName finds a volume; callers hold mu.
func (s *Store) volumeByName(project, name string) (*statev1.VolumeRecord, error) {
	if !ValidName(name) {
		return nil, errorf(KindInvalid, "volume name %q is not valid", name)
	}
	id, ok := s.volByName[nameKey(project, name)]
	if !ok {
		return nil, errorf(KindNotFound, "volume %q not found in project %q (see `yunchi volume list`)", name, project)
	}
	return s.volumes[id], nil
}

// checkVolume validates a volume record to create.
func checkVolume(v *statev1.VolumeRecord) error {
	switch {
	case v == nil:
		return errorf(KindInvalid, "volume is missing")
	case !ValidVolumeID(v.Id):
		return errorf(KindInvalid, "volume id %.40q is not valid: 1-%d lowercase letters, digits and '-'", v.Id, MaxVolumeIDLen)
	case !ValidName(v.Name):
		return errorf(KindInvalid, "volume name %q is not valid: use 1-63 lowercase letters, digits and '-'", v.Name)
	case !ValidName(v.Project):
		return errorf(KindInvalid, "volume %q: project %q is not valid", v.Name, v.Project)
	case v.Center != "" && !ValidName(v.Center):
		return errorf(KindInvalid, "volume %q: center %q is not valid", v.Name, v.Center)
	case v.HostId != "" || v.VmId != "" || v.AttachedVmId != "" || v.Deleting || v.Message != "":
		return errorf(KindInvalid, "volume %q: a new volume is placed nowhere and attached to nothing", v.Name)
	}
	return CheckVolumeSize(v.SizeBytes)
}

func (s *Store) applyCreateVolume(index uint64, now int64, c *statev1.CreateVolume) (*statev1.VolumeRecord, error) {
	v := c.GetVolume()
	if err := checkVolume(v); err != nil {
		return nil, err
	}
	if s.projectDept(v.Project) == "" {
		return nil, errorf(KindNotFound, "project %q not found", v.Project)
	}
	if _, ok := s.volumes[v.Id]; ok {
		return nil, errorf(KindAlreadyExists, "volume id %s already exists", v.Id)
	}
	if _, ok := s.volByName[nameKey(v.Project, v.Name)]; ok {
		return nil, errorf(KindAlreadyExists, "volume %q already exists in project %q (see `yunchi volume list`)", v.Name, v.Project)
	}
	if err := s.checkQuotas([]string{v.Project}, map[string]Usage{v.Project: volumeUsage(v)}); err != nil {
		return nil, err
	}
	rec := proto.Clone(v).(*statev1.VolumeRecord)
	rec.CreatedUnixNano = now
	rec.UpdatedUnixNano = now
	rec.Revision = index
	s.addVolume(rec)
	return proto.Clone(rec).(*statev1.VolumeRecord), nil
}

// checkAttach says whether vol can go onto vm (placing it on vm's host
// when it is placed nowhere yet).
// Callers hold mu.
func (s *Store) checkAttach(vol *statev1.VolumeRecord, vm *statev1.VMRecord) error {
	switch {
	case vol.Deleting:
		return errorf(KindFailedPrecondition, "volume %q is being deleted", vol.Name)
	case vm.Project != vol.Project:
		return errorf(KindInvalid, "vm %q is in project %q, volume %q in %q: a volume attaches to VMs of its own project", vm.Name, vm.Project, vol.Name, vol.Project)
	case vm.Desired == statev1.PowerState_POWER_STATE_DELETED:
		return errorf(KindFailedPrecondition, "vm %q is being deleted", vm.Name)
	case vol.VmId != "" && vol.VmId != vm.Id:
		return errorf(KindFailedPrecondition, "volume %q is attached to vm %q: detach it first (yunchi volume detach %s)", vol.Name, s.vmName(vol.VmId), vol.Name)
	case vol.HostId != "" && vol.HostId != vm.HostId:
		return errorf(KindFailedPrecondition, "volume %q lives on host %s (where it was first attached), vm %q runs on %s: attach it to a VM on %s", vol.Name, vol.HostId, vm.Name, vm.HostId, vol.HostId)
	}
	if vol.VmId == vm.Id {
		return nil // already asked onto vm
	}
	if n := s.vmVolumeCount(vm); n >= MaxVolumesPerVM {
		return errorf(KindFailedPrecondition, "vm %q already has %d volumes: at most %d", vm.Name, n, MaxVolumesPerVM)
	}
	if vol.HostId != "" {
		return nil
	}
	h, ok := s.hosts[vm.HostId]
	if !ok {
		return errorf(KindFailedPrecondition, "host %q of vm %q is not registered", vm.HostId, vm.Name)
	}
	if vol.Center != "" && h.Center != vol.Center {
		return errorf(KindFailedPrecondition, "volume %q is for center %s, vm %q runs in center %s", vol.Name, vol.Center, vm.Name, h.Center)
	}
	// Disk only: a host overcommitted in vCPUs or memory (an admin's
	// forced change) still takes a volume its disk has room for.
	f, _ := s.hostFacts(h)
	if alloc, room := f.Allocated.DiskBytes+vol.SizeBytes, f.Allocatable().DiskBytes; alloc > room {
		return errorf(KindFailedPrecondition, "host %s of vm %q has no room for volume %q: disk allocated %s + %s > allocatable %s",
			h.Id, vm.Name, vol.Name, formatBytes(f.Allocated.DiskBytes), formatBytes(vol.SizeBytes), formatBytes(room))
	}
	return nil
}

// vmVolumeCount is how many volumes are attached (or asked onto) vm.
// Callers hold mu.
func (s *Store) vmVolumeCount(vm *statev1.VMRecord) int {
	n := 0
	for id := range s.hostVolumes[vm.HostId] {
		if s.volumes[id].VmId == vm.Id {
			n++
		}
	}
	return n
}

// vmName names a VM by id in messages; callers hold mu.
func (s *Store) vmName(id string) string {
	if vm, ok := s.vms[id]; ok {
		return vm.Name
	}
	return id
}

func (s *Store) applyAttachVolume(index uint64, now int64, c *statev1.AttachVolume) (*statev1.VolumeRecord, error) {
	vol, err := s.volumeByName(c.GetProject(), c.GetName())
	if err != nil {
		return nil, err
	}
	vm, ok := s.vms[c.GetVmId()]
	if !ok {
		return nil, errorf(KindNotFound, "vm %s not found", c.GetVmId())
	}
	if err := s.checkAttach(vol, vm); err != nil {
		return nil, err
	}
	if vol.VmId == vm.Id {
		return proto.Clone(vol).(*statev1.VolumeRecord), nil // attaching twice is attaching once
	}
	next := proto.Clone(vol).(*statev1.VolumeRecord)
	next.VmId = vm.Id
	if next.HostId == "" {
		next.HostId = vm.HostId
		next.Center = s.hosts[vm.HostId].Center
		s.placeVolume(next, +1)
	}
	s.replaceVolume(next, now, index)
	return proto.Clone(next).(*statev1.VolumeRecord), nil
}

func (s *Store) applyDetachVolume(index uint64, now int64, c *statev1.DetachVolume) (*statev1.VolumeRecord, error) {
	vol, err := s.volumeByName(c.GetProject(), c.GetName())
	if err != nil {
		return nil, err
	}
	if vol.VmId == "" {
		return nil, errorf(KindFailedPrecondition, "volume %q is not attached to a VM", vol.Name)
	}
	next := proto.Clone(vol).(*statev1.VolumeRecord)
	next.VmId = ""
	s.replaceVolume(next, now, index)
	return proto.Clone(next).(*statev1.VolumeRecord), nil
}

func (s *Store) applyDeleteVolume(index uint64, now int64, c *statev1.DeleteVolume) (*statev1.VolumeRecord, error) {
	vol, err := s.volumeByName(c.GetProject(), c.GetName())
	if err != nil {
		return nil, err
	}
	switch {
	case vol.VmId != "":
		return nil, errorf(KindFailedPrecondition, "volume %q is attached to vm %q: detach it first (yunchi volume detach %s)", vol.Name, s.vmName(vol.VmId), vol.Name)
	case vol.Deleting:
		return proto.Clone(vol).(*statev1.VolumeRecord), nil // deleting twice is deleting once
	case vol.HostId == "":
		// Never placed: no host holds anything of it.
		s.removeVolume(vol, index)
		return vol, nil // records are replaced, never changed: no clone needed
	}
	next := proto.Clone(vol).(*statev1.VolumeRecord)
	next.Deleting = true
	s.replaceVolume(next, now, index)
	return proto.Clone(next).(*statev1.VolumeRecord), nil
}

// applyVolumeStatuses records what host reported of its volumes: a host
// reports only on volumes placed on it. Callers hold mu.
func (s *Store) applyVolumeStatuses(index uint64, now int64, host string, sts []*statev1.VolumeStatus) {
	for _, st := range sts {
		vol, ok := s.volumes[st.GetVolumeId()]
		if !ok || vol.HostId != host {
			continue
		}
		if st.Gone {
			if vol.Deleting {
				s.removeVolume(vol, index)
				continue
			}
			// Gone but still wanted (removed by hand): it is made again,
			// empty, at its next attach; say so meanwhile.
			if st.Message == "" {
				st = &statev1.VolumeStatus{VolumeId: st.VolumeId, Message: "missing from the host's storage pool"}
			}
		}
		attached := st.AttachedVmId
		if _, ok := s.vms[attached]; !ok {
			attached = "" // a VM the state does not know: nothing to show
		}
		if attached == vol.AttachedVmId && st.Message == vol.Message {
			continue
		}
		next := proto.Clone(vol).(*statev1.VolumeRecord)
		next.AttachedVmId, next.Message = attached, st.Message
		s.replaceVolume(next, now, index)
	}
}

// detachVM forgets vm on the volumes of its host when it is gone: they
// stay there, detached. Callers hold mu.
func (s *Store) detachVM(vm *statev1.VMRecord, index uint64) {
	for id := range s.hostVolumes[vm.HostId] {
		vol := s.volumes[id]
		if vol.VmId != vm.Id && vol.AttachedVmId != vm.Id {
			continue
		}
		next := proto.Clone(vol).(*statev1.VolumeRecord)
		if next.VmId == vm.Id {
			next.VmId = ""
		}
		if next.AttachedVmId == vm.Id {
			next.AttachedVmId = ""
		}
		s.replaceVolume(next, next.UpdatedUnixNano, index)
	}
}

// checkProjectVolumes refuses to delete a project that still has volumes.
// Callers hold mu.
func (s *Store) checkProjectVolumes(project string) error {
	if n := s.projectVolumes[project]; n > 0 {
		return errorf(KindFailedPrecondition, "project %q still has %d volume(s): delete them first (yunchi volume delete)", project, n)
	}
	return nil
}

// VolumeKey orders volumes in lists and pages: by project, then name.
type VolumeKey struct{ Project, Name string }

// Less reports whether k sorts before o.
func (k VolumeKey) Less(o VolumeKey) bool {
	if k.Project != o.Project {
		return k.Project < o.Project
	}
	return k.Name < o.Name
}

// Volume returns the volume of that name in project.
func (s *Store) Volume(project, name string) (*statev1.VolumeRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.volByName[nameKey(project, name)]
	if !ok {
		return nil, false
	}
	return proto.Clone(s.volumes[id]).(*statev1.VolumeRecord), true
}

// VolumesPage lists up to limit volumes of project (every project's when
// it is "") whose key sorts after after (the zero key: from the start), in
// key order; more says whether any follow.
func (s *Store) VolumesPage(project string, after VolumeKey, limit int) (out []*statev1.VolumeRecord, more bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	first := after == VolumeKey{}
	var sel []*statev1.VolumeRecord
	for _, v := range s.volumes {
		if (project == "" || v.Project == project) && (first || after.Less(VolumeKey{v.Project, v.Name})) {
			sel = append(sel, v)
		}
	}
	sort.Slice(sel, func(i, j int) bool {
		return VolumeKey{sel[i].Project, sel[i].Name}.Less(VolumeKey{sel[j].Project, sel[j].Name})
	})
	if len(sel) > limit {
		sel, more = sel[:limit], true
	}
	out = make([]*statev1.VolumeRecord, len(sel))
	for i, v := range sel {
		out[i] = proto.Clone(v).(*statev1.VolumeRecord)
	}
	return out, more
}

// Volumes lists every volume, sorted.
func (s *Store) Volumes() []*statev1.VolumeRecord {
	out, _ := s.VolumesPage("", VolumeKey{}, math.MaxInt)
	return out
}

// HostVolumes lists the volumes placed on a host, sorted by id.
func (s *Store) HostVolumes(hostID string) []*statev1.VolumeRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*statev1.VolumeRecord, 0, len(s.hostVolumes[hostID]))
	for id := range s.hostVolumes[hostID] {
		out = append(out, proto.Clone(s.volumes[id]).(*statev1.VolumeRecord))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}
