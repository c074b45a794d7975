// Package state holds the controller's replicated state (hosts, VMs,
// controller members) and the one deterministic function that changes it:
// Apply. It knows nothing of raft or gRPC: the FSM feeds it log entries and
// the API reads it. Apply never reads a clock, a random source or the disk;
// the leader decides (ids, times, placements) and the log records.
package state

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// CommandVersion and SnapshotVersion are the formats this binary writes and
// the newest it reads.
// Version 2 added host admin fields, ratios, placement groups and PlaceVMs;
// it reads version 1 unchanged. Version 3 judges admin changes by stricter
// rules (see rulesV3); older commands apply by the rules they were written
// under. Version 4 is the format that stands on its own (no public API
// types in the log; same bytes as before for what it shares with version
// 3), structured constraints (VMRecord.constraint_rules) and every create a
// PlaceVMs. Version 5 adds departments, projects, users and tokens, and
// VMs and groups only go into projects that exist (rulesV5), and quotas
// (SetQuota; quota.go). Apply reads
// every older version. Snapshot version 3 adds the tenancy tables.
// Version 6 adds the audit trail (audit.go): commands carry an audit
// context, Apply records them; snapshot version 4 adds the chain's head
// (and the records after the message, see raftnode's FSM); and join
// tokens (jointokens.go), in the snapshot too.
// Version 7 adds images (images.go: CreateImage, DeleteImage; a VM may
// record the image it is made from, which PlaceVMs re-checks); snapshot
// version 5 adds the image records.
// Version 8 adds volumes (volumes.go: CreateVolume, AttachVolume,
// DetachVolume, DeleteVolume; ReportVMStatus carries the hosts' volume
// statuses); snapshot version 6 adds the volume records.
// Version 9 adds two sites, three centers (dr.go: centers, policies,
// protection, backup jobs, restore points; a VM may be restored from a
// point); snapshot version 7 adds their records.
// Version 10 adds failover, failback and drills (recovery.go: DR runs,
// relocations, fenced centers, drill schedules); snapshot version 8 adds
// the runs and schedules.
const (
	CommandVersion  = 10
	SnapshotVersion = 8
)

// DefaultProject is where VMs go when no project is named.
const DefaultProject = "default"

// Store is the state plus the lock that lets API readers run beside the
// single raft goroutine that applies commands. Readers get clones.
type Store struct {
	mu      sync.RWMutex
	hosts   map[string]*statev1.HostRecord
	vms     map[string]*statev1.VMRecord // by id
	members map[string]*statev1.MemberRecord
	ratios  map[string]*statev1.RatioRecord          // scope/name
	groups  map[string]*statev1.PlacementGroupRecord // project/name
	// Tenancy and identity (tenancy.go): by name; tokens by id. Records
	// are replaced, never changed in place (so snapshots may share them).
	depts    map[string]*statev1.DepartmentRecord
	projects map[string]*statev1.ProjectRecord
	users    map[string]*statev1.UserRecord
	tokens   map[string]*statev1.TokenRecord
	// joinTokens by id (jointokens.go), replaced, never changed in place.
	joinTokens map[string]*statev1.JoinTokenRecord
	// images by project/name ("/name" for a public one; images.go),
	// replaced, never changed in place. projectImages counts each
	// project's (a project with images is not deleted).
	images        map[string]*statev1.ImageRecord
	projectImages map[string]int
	// imageUse counts the VMs made from each image record
	// (imageUseKey), shaUse those made from each image's bytes; kept by
	// addVM and removeVM, no zero entries.
	imageUse map[string]int
	shaUse   map[string]int
	// volumes by id (volumes.go), replaced, never changed in place;
	// volByName indexes them by project/name, hostVolumes by the host
	// they are placed on (ids; no empty sets), projectVolumes counts each
	// project's (a project with volumes is not deleted).
	volumes        map[string]*statev1.VolumeRecord
	volByName      map[string]string
	hostVolumes    map[string]map[string]struct{}
	projectVolumes map[string]int
	// projectUse counts the VMs and placement groups of each project
	// (derived): a project in use is not deleted, and one in use without
	// a record is a project from before departments (department default).
	projectUse map[string]int
	// projUse and deptUse are what the VMs of each project and department
	// take (derived, quota.go): kept by addVM and removeVM, no zero entries.
	projUse map[string]Usage
	deptUse map[string]Usage
	// Indexes derived from vms, kept by addVM and removeVM only: byName
	// (project/name -> id), alloc (host -> what its VMs use; absent for a
	// host that never had one) and groupHosts (a group's members per host:
	// project/name -> host -> n, no zero entries).
	byName map[string]string
	alloc  map[string]Resources
	// onHost indexes VM ids by host: a host's VMs (and their count) without
	// a pass over every VM. Kept by addVM/removeVM with alloc.
	onHost map[string]map[string]struct{}
	// hostRev is the raft index of the last change to any VM on a host
	// (placed, changed, removed): an assignment stream resends only when
	// its host's revision moves.
	hostRev    map[string]uint64
	groupHosts map[string]map[string]int
	index      uint64
	// Change tracking for a cached scheduler view (derived, not replicated):
	// seq counts changes; hostSeq is the seq of each host's last change to
	// what the scheduler sees; allSeq the last change to every host at once
	// (ratios, restore).
	// hostLog lists host changes in seq order, so that bringing a cache up
	// to date costs what changed, not a pass over every host; it is
	// compacted to one entry per host when it grows past twice their number.
	seq     uint64
	hostSeq map[string]uint64
	hostLog []hostChange
	allSeq  uint64
	changed chan struct{}
	// requests remembers recent request ids with their outcome
	// (replicated: Apply reads and writes it; kept in snapshots).
	requests requestTable
	// audit is the audit chain's head (replicated) and the sink the
	// records go to (this controller's file store).
	audit auditChain
	// Copy-on-write: a snapshot shares the stored records (it copies only
	// the tables of pointers), so Apply never changes a record in place
	// unless it owns it: writableVM and writableHost clone a record once
	// after each snapshot and list the clone here, as do addVM, RegisterHost
	// and UpdateHost for the fresh records they store. View clears these.
	// An owned host may share sub-messages with the record it replaced
	// (RegisterHost keeps the admin fields): only its scalar fields are
	// changed in place. Other records are replaced, never changed (ratios,
	// groups, members, requests).
	ownVMs   map[*statev1.VMRecord]struct{}
	ownHosts map[*statev1.HostRecord]struct{}
	// dr: centers, policies, backup jobs and restore points (dr.go).
	dr drTables
}

// New returns an empty store.
func New() *Store {
	s := &Store{changed: make(chan struct{}), requests: newRequestTable()}
	s.reset()
	return s
}

func (s *Store) reset() {
	s.hosts = map[string]*statev1.HostRecord{}
	s.vms = map[string]*statev1.VMRecord{}
	s.byName = map[string]string{}
	s.alloc = map[string]Resources{}
	s.onHost = map[string]map[string]struct{}{}
	s.hostRev = map[string]uint64{}
	s.members = map[string]*statev1.MemberRecord{}
	s.ratios = map[string]*statev1.RatioRecord{}
	s.groups = map[string]*statev1.PlacementGroupRecord{}
	s.depts = map[string]*statev1.DepartmentRecord{}
	s.projects = map[string]*statev1.ProjectRecord{}
	s.users = map[string]*statev1.UserRecord{}
	s.tokens = map[string]*statev1.TokenRecord{}
	s.joinTokens = map[string]*statev1.JoinTokenRecord{}
	s.images = map[string]*statev1.ImageRecord{}
	s.projectImages = map[string]int{}
	s.imageUse = map[string]int{}
	s.shaUse = map[string]int{}
	s.volumes = map[string]*statev1.VolumeRecord{}
	s.volByName = map[string]string{}
	s.hostVolumes = map[string]map[string]struct{}{}
	s.projectVolumes = map[string]int{}
	s.dr.reset()
	s.projectUse = map[string]int{}
	s.projUse = map[string]Usage{}
	s.deptUse = map[string]Usage{}
	s.groupHosts = map[string]map[string]int{}
	s.hostSeq = map[string]uint64{}
	s.hostLog = nil
	s.ownVMs = map[*statev1.VMRecord]struct{}{}
	s.ownHosts = map[*statev1.HostRecord]struct{}{}
	ttl, n := s.requests.ttl, s.requests.max
	s.requests = newRequestTable()
	s.requests.ttl, s.requests.max = ttl, n
	s.audit.head = &statev1.AuditHead{}
	s.seq++
	s.allSeq = s.seq
}

type hostChange struct {
	seq uint64
	id  string
}

// touched records that the scheduler's view of a host changed; callers hold mu.
func (s *Store) touched(hostID string) {
	s.seq++
	s.hostSeq[hostID] = s.seq
	s.hostLog = append(s.hostLog, hostChange{s.seq, hostID})
	if len(s.hostLog) > 2*len(s.hostSeq)+64 {
		// Keep each host's last change only: for any seq, the hosts changed
		// since then are the same. Amortised O(1) per change.
		kept := s.hostLog[:0]
		for _, c := range s.hostLog {
			if s.hostSeq[c.id] == c.seq {
				kept = append(kept, c)
			}
		}
		s.hostLog = kept
	}
}

// writableVM returns the stored VM with this id, cloned first if a
// snapshot may share it. Callers hold mu for writing.
func (s *Store) writableVM(id string) (*statev1.VMRecord, bool) {
	vm, ok := s.vms[id]
	if !ok {
		return nil, false
	}
	if _, own := s.ownVMs[vm]; !own {
		vm = proto.Clone(vm).(*statev1.VMRecord)
		s.vms[id] = vm
		s.ownVMs[vm] = struct{}{}
	}
	return vm, true
}

// writableHost is writableVM for hosts.
func (s *Store) writableHost(id string) (*statev1.HostRecord, bool) {
	h, ok := s.hosts[id]
	if !ok {
		return nil, false
	}
	if _, own := s.ownHosts[h]; !own {
		h = proto.Clone(h).(*statev1.HostRecord)
		s.hosts[id] = h
		s.ownHosts[h] = struct{}{}
	}
	return h, true
}

// touchedAll records that every host's scheduler view may have changed.
func (s *Store) touchedAll() {
	s.seq++
	s.allSeq = s.seq
}

func nameKey(project, name string) string { return project + "/" + name }

// Changed returns a channel that is closed at the next change of state.
func (s *Store) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// Index is the raft index of the last applied command.
func (s *Store) Index() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.index
}

// notify wakes every watcher; callers hold mu.
func (s *Store) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Result is what a command returns: clones of the records it placed,
// changed or created, in the field its kind fills (and no other):
//
//	RegisterHost, SetHostState, UpdateHost  Host
//	PlaceVMs (PlaceVM in old logs)           VMs, one per VM, in command order
//	SetVMDesired                             VMs, the one VM
//	SetRatios                                Ratio
//	CreatePlacementGroup                     Group (created)
//	DeletePlacementGroup                     Group (as it was)
//	UpsertMember                             Member
//	Create/DeleteDepartment                  Department
//	Create/DeleteProject                     Project
//	SetQuota                                 Department, or Project when it names one
//	Create/Delete/UpdateUser                 User
//	CreateToken, RevokeToken                 Token (its secret hash included)
//	CreateImage                              Image (created)
//	DeleteImage                              Image (as it was)
//	Create/Attach/Detach/DeleteVolume        Volume (as it is after; a
//	                                         volume removed at once: as it was)
//	SetCenter, DeleteCenter                  Center
//	CreatePolicy, DeletePolicy               Policy
//	SetProtection                            VMs (the VM) or Project
//	FinishBackup                             RestorePoint (on success)
//	StartBackups, DeleteRestorePoints,
//	RemoveMember, ReportVMStatus,
//	RecordHeartbeats, RecordLoginFailures,
//	RecordAudit, ArchiveAudit                nothing
//
// A repeated request id returns the first Result again (see RequestRecord).
type Result struct {
	VMs    []*statev1.VMRecord
	Host   *statev1.HostRecord
	Ratio  *statev1.RatioRecord
	Group  *statev1.PlacementGroupRecord
	Member *statev1.MemberRecord

	Department *statev1.DepartmentRecord
	Project    *statev1.ProjectRecord
	User       *statev1.UserRecord
	Token      *statev1.TokenRecord
	// CreateJoinToken, ConsumeJoinToken (which also sets Token: the
	// host's API token).
	JoinToken *statev1.JoinTokenRecord
	Image     *statev1.ImageRecord
	Volume    *statev1.VolumeRecord
	// SetCenter, DeleteCenter (as it was); CreatePolicy, DeletePolicy (as
	// it was); SetProtection sets VMs (a VM's) or Project; FinishBackup
	// with a point: RestorePoint.
	Center       *statev1.CenterRecord
	Policy       *statev1.PolicyRecord
	RestorePoint *statev1.RestorePointRecord
	// StartDRRun, UpdateDRRun, RelocateVMs: the run as it is after;
	// Set/DeleteDrillSchedule: the schedule (as it was, deleted).
	DRRun         *statev1.DRRunRecord
	DrillSchedule *statev1.DrillScheduleRecord
}

// Apply applies one command at a raft index. It is deterministic: the same
// commands in the same order give the same state on every controller. An
// error means the command changed nothing (and the Result is empty).
func (s *Store) Apply(index uint64, cmd *statev1.Command) (Result, error) {
	return s.apply(index, cmd, true)
}

// ApplyUnanswered is Apply where nobody reads the answer (a follower's
// apply: only the leader's proposer waits for one). The state after it is
// the same, remembered request outcomes included; what a create made is
// not copied into an answer.
func (s *Store) ApplyUnanswered(index uint64, cmd *statev1.Command) error {
	_, err := s.apply(index, cmd, false)
	return err
}

// apply is Apply; without answer the Result may hold the store's own
// records, and is dropped.
func (s *Store) apply(index uint64, cmd *statev1.Command, answer bool) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if index > s.index {
		s.index = index
	}
	if cmd.GetVersion() > CommandVersion {
		return Result{}, errorf(KindInvalid, "command version %d is newer than this controller understands (%d): upgrade it", cmd.GetVersion(), CommandVersion)
	}
	// A request id seen before gets its first outcome, not a second apply.
	s.requests.advance(cmd.UnixNano)
	if res, ok, err := s.requests.replay(cmd); ok {
		s.auditCommand(index, cmd, true, err)
		return res, err
	}
	var res Result
	var err error
	switch c := cmd.GetCmd().(type) {
	case *statev1.Command_RegisterHost:
		res.Host, err = s.applyRegisterHost(cmd.UnixNano, c.RegisterHost)
	case *statev1.Command_SetHostState:
		res.Host, err = s.applySetHostState(cmd.UnixNano, c.SetHostState)
	case *statev1.Command_PlaceVm: // before version 4 only
		res.VMs, err = s.applyPlaceVMs(index, cmd.UnixNano, []*statev1.VMRecord{c.PlaceVm.GetVm()}, false, false, answer)
	case *statev1.Command_PlaceVms:
		res.VMs, err = s.applyPlaceVMs(index, cmd.UnixNano, c.PlaceVms.GetVms(), cmd.GetVersion() >= rulesV5, cmd.GetVersion() >= imagesV7, answer)
	case *statev1.Command_SetVmDesired:
		var vm *statev1.VMRecord
		if vm, err = s.applySetVMDesired(index, cmd.UnixNano, c.SetVmDesired); err == nil {
			res.VMs = []*statev1.VMRecord{vm}
		}
	case *statev1.Command_ReportVmStatus:
		err = s.applyReportVMStatus(index, cmd.UnixNano, c.ReportVmStatus)
	case *statev1.Command_UpsertMember:
		res.Member, err = s.applyUpsertMember(c.UpsertMember)
	case *statev1.Command_RemoveMember:
		err = s.applyRemoveMember(c.RemoveMember)
	case *statev1.Command_UpdateHost:
		res.Host, err = s.applyUpdateHost(cmd.UnixNano, c.UpdateHost, cmd.GetVersion() < rulesV3)
	case *statev1.Command_SetRatios:
		res.Ratio, err = s.applySetRatios(c.SetRatios, cmd.GetVersion() < rulesV3)
	case *statev1.Command_CreatePlacementGroup:
		res.Group, err = s.applyCreatePlacementGroup(cmd.UnixNano, c.CreatePlacementGroup, cmd.GetVersion() >= rulesV5)
	case *statev1.Command_DeletePlacementGroup:
		res.Group, err = s.applyDeletePlacementGroup(c.DeletePlacementGroup)
	case *statev1.Command_RecordHeartbeats:
		err = s.applyRecordHeartbeats(cmd.UnixNano, c.RecordHeartbeats)
	case *statev1.Command_CreateDepartment:
		res.Department, err = s.applyCreateDepartment(cmd.UnixNano, c.CreateDepartment)
	case *statev1.Command_DeleteDepartment:
		res.Department, err = s.applyDeleteDepartment(c.DeleteDepartment)
	case *statev1.Command_CreateProject:
		res.Project, err = s.applyCreateProject(cmd.UnixNano, c.CreateProject)
	case *statev1.Command_DeleteProject:
		res.Project, err = s.applyDeleteProject(c.DeleteProject)
	case *statev1.Command_CreateUser:
		res.User, err = s.applyCreateUser(cmd.UnixNano, c.CreateUser)
	case *statev1.Command_DeleteUser:
		res.User, err = s.applyDeleteUser(cmd.UnixNano, c.DeleteUser)
	case *statev1.Command_UpdateUser:
		res.User, err = s.applyUpdateUser(c.UpdateUser)
	case *statev1.Command_CreateToken:
		res.Token, err = s.applyCreateToken(cmd.UnixNano, c.CreateToken)
	case *statev1.Command_RevokeToken:
		res.Token, err = s.applyRevokeToken(cmd.UnixNano, c.RevokeToken)
	case *statev1.Command_RecordLoginFailures:
		err = s.applyRecordLoginFailures(cmd.UnixNano, c.RecordLoginFailures)
	case *statev1.Command_SetQuota:
		res, err = s.applySetQuota(cmd.UnixNano, c.SetQuota)
	case *statev1.Command_RecordAudit:
		if len(c.RecordAudit.GetRecords()) == 0 {
			err = errorf(KindInvalid, "audit batch is empty")
		}
	case *statev1.Command_ArchiveAudit:
		err = s.applyArchiveAudit(c.ArchiveAudit)
	case *statev1.Command_CreateJoinToken:
		res.JoinToken, err = s.applyCreateJoinToken(cmd.UnixNano, c.CreateJoinToken)
	case *statev1.Command_ConsumeJoinToken:
		res.JoinToken, res.Token, err = s.applyConsumeJoinToken(cmd.UnixNano, c.ConsumeJoinToken)
	case *statev1.Command_CreateImage:
		res.Image, err = s.applyCreateImage(index, cmd.UnixNano, c.CreateImage)
	case *statev1.Command_DeleteImage:
		res.Image, err = s.applyDeleteImage(c.DeleteImage)
	case *statev1.Command_CreateVolume:
		res.Volume, err = s.applyCreateVolume(index, cmd.UnixNano, c.CreateVolume)
	case *statev1.Command_AttachVolume:
		res.Volume, err = s.applyAttachVolume(index, cmd.UnixNano, c.AttachVolume)
	case *statev1.Command_DetachVolume:
		res.Volume, err = s.applyDetachVolume(index, cmd.UnixNano, c.DetachVolume)
	case *statev1.Command_DeleteVolume:
		res.Volume, err = s.applyDeleteVolume(index, cmd.UnixNano, c.DeleteVolume)
	case *statev1.Command_SetCenter, *statev1.Command_DeleteCenter, *statev1.Command_CreatePolicy,
		*statev1.Command_DeletePolicy, *statev1.Command_SetProtection, *statev1.Command_StartBackups,
		*statev1.Command_FinishBackup, *statev1.Command_DeleteRestorePoints:
		res, err = s.applyDR(index, cmd)
	case *statev1.Command_StartDrRun, *statev1.Command_UpdateDrRun, *statev1.Command_RelocateVms,
		*statev1.Command_SetDrillSchedule, *statev1.Command_DeleteDrillSchedule, *statev1.Command_SetMirror:
		res, err = s.applyRecovery(index, cmd)
	default:
		err = errorf(KindInvalid, "unknown command %T: this controller is older than the log; upgrade it", cmd.GetCmd())
	}
	if cmd.GetRequestId() != "" && remembers(err) {
		s.requests.add(record(cmd, index, res, err))
	}
	s.auditCommand(index, cmd, false, err)
	if err == nil {
		s.notify()
	}
	return res, err
}

func (s *Store) applyRegisterHost(now int64, c *statev1.RegisterHost) (*statev1.HostRecord, error) {
	h := c.GetHost()
	if h.GetId() == "" {
		return nil, errorf(KindInvalid, "host id is empty")
	}
	rec := proto.Clone(h).(*statev1.HostRecord)
	// What admins decided is not the agent's to report: keep it.
	rec.AdminState, rec.AdminLabels, rec.Owner, rec.Reserved, rec.Ratios = statev1.HostState_HOST_STATE_UNSPECIFIED, nil, "", nil, nil
	if old, ok := s.hosts[h.Id]; ok {
		rec.AdminState, rec.AdminLabels, rec.Owner, rec.Reserved, rec.Ratios = old.AdminState, old.AdminLabels, old.Owner, old.Reserved, old.Ratios
		rec.RegisteredUnixNano = old.RegisteredUnixNano
		if old.State != statev1.HostState_HOST_STATE_READY {
			rec.StateChangedUnixNano = now
		} else {
			rec.StateChangedUnixNano = old.StateChangedUnixNano
		}
	} else {
		rec.RegisteredUnixNano = now
		rec.StateChangedUnixNano = now
	}
	rec.State = statev1.HostState_HOST_STATE_READY
	rec.LastHeartbeatUnixNano = now // registering is the agent speaking
	s.replaceHost(rec)
	s.touched(h.Id)
	return proto.Clone(rec).(*statev1.HostRecord), nil
}

func (s *Store) applySetHostState(now int64, c *statev1.SetHostState) (*statev1.HostRecord, error) {
	if _, ok := s.hosts[c.GetHostId()]; !ok {
		return nil, errorf(KindNotFound, "host %q not found", c.GetHostId())
	}
	// Liveness only: admins set maintenance and draining with UpdateHost.
	if c.State != statev1.HostState_HOST_STATE_READY && c.State != statev1.HostState_HOST_STATE_DOWN {
		return nil, errorf(KindInvalid, "host liveness must be ready or down, not %v", c.State)
	}
	h, _ := s.writableHost(c.GetHostId())
	if h.State != c.State {
		h.State = c.State
		h.StateChangedUnixNano = now
		s.touched(h.Id)
	}
	if c.State == statev1.HostState_HOST_STATE_READY {
		// Ready comes from a heartbeat: record it now, not a period later.
		h.LastHeartbeatUnixNano = max(h.LastHeartbeatUnixNano, now)
	}
	return proto.Clone(h).(*statev1.HostRecord), nil
}

// replaceHost stores h, a record no View holds (fresh), in place of the
// record with its id. Callers hold mu for writing.
func (s *Store) replaceHost(h *statev1.HostRecord) {
	if old, ok := s.hosts[h.Id]; ok {
		delete(s.ownHosts, old)
	}
	s.hosts[h.Id] = h
	s.ownHosts[h] = struct{}{}
}

// addVM records a placed VM, a record no View holds (fresh), and the
// indexes derived from it (name, host allocation, group members); removeVM
// undoes it. Callers hold mu.
func (s *Store) addVM(vm *statev1.VMRecord) {
	s.vms[vm.Id] = vm
	s.ownVMs[vm] = struct{}{}
	s.byName[nameKey(vm.Project, vm.Name)] = vm.Id
	ids := s.onHost[vm.HostId]
	if ids == nil {
		ids = map[string]struct{}{}
		s.onHost[vm.HostId] = ids
	}
	ids[vm.Id] = struct{}{}
	s.hostRev[vm.HostId] = max(s.hostRev[vm.HostId], vm.Revision)
	s.addMirrorIndex(vm)
	s.indexProtection(vm)
	s.charge(vm, +1)
	s.use(vm, +1)
	s.useImage(vm, +1)
	s.projectUse[vm.Project]++
}

// revise records that vm changed at index.
func (s *Store) revise(vm *statev1.VMRecord, index uint64) {
	vm.Revision = index
	s.hostRev[vm.HostId] = index
}

func (s *Store) removeVM(vm *statev1.VMRecord, index uint64) {
	delete(s.ownVMs, vm)
	s.detachVM(vm, index)
	s.dropMirrorIndex(vm, index)
	delete(s.dr.protected, vm.Id)
	s.removeVMJobs(vm.Id, index)
	s.hostRev[vm.HostId] = index
	s.charge(vm, -1)
	s.use(vm, -1)
	s.useImage(vm, -1)
	if ids := s.onHost[vm.HostId]; ids != nil {
		delete(ids, vm.Id)
		if len(ids) == 0 {
			delete(s.onHost, vm.HostId)
		}
	}
	delete(s.byName, nameKey(vm.Project, vm.Name))
	delete(s.vms, vm.Id)
	if s.projectUse[vm.Project]--; s.projectUse[vm.Project] <= 0 {
		delete(s.projectUse, vm.Project)
	}
}

// charge adds (sign=+1) or releases (sign=-1) a VM's resources on its host
// and its count among its group's members there.
func (s *Store) charge(vm *statev1.VMRecord, sign int) {
	s.touched(vm.HostId)
	if sign > 0 {
		s.alloc[vm.HostId] = s.alloc[vm.HostId].Add(vmResources(vm))
	} else {
		s.alloc[vm.HostId] = s.alloc[vm.HostId].Sub(vmResources(vm))
	}
	if vm.Group != "" {
		gk := nameKey(vm.Project, vm.Group)
		m := s.groupHosts[gk]
		if m == nil {
			m = map[string]int{}
			s.groupHosts[gk] = m
		}
		m[vm.HostId] += sign
		if m[vm.HostId] <= 0 {
			delete(m, vm.HostId)
			if len(m) == 0 {
				delete(s.groupHosts, gk)
			}
		}
	}
}

func (s *Store) applySetVMDesired(index uint64, now int64, c *statev1.SetVMDesired) (*statev1.VMRecord, error) {
	vm, ok := s.vms[c.GetVmId()] // read-only until checked
	if !ok {
		return nil, errorf(KindNotFound, "vm %s not found", c.GetVmId())
	}
	if vm.Desired == statev1.PowerState_POWER_STATE_DELETED {
		if c.Desired == statev1.PowerState_POWER_STATE_DELETED {
			return proto.Clone(vm).(*statev1.VMRecord), nil // deleting twice is deleting once
		}
		return nil, errorf(KindFailedPrecondition, "vm %q is being deleted", vm.Name)
	}
	switch c.Desired {
	case statev1.PowerState_POWER_STATE_RUNNING, statev1.PowerState_POWER_STATE_STOPPED, statev1.PowerState_POWER_STATE_DELETED:
	default:
		return nil, errorf(KindInvalid, "desired power state is unspecified")
	}
	if c.Reboot && (vm.Desired != statev1.PowerState_POWER_STATE_RUNNING || c.Desired != statev1.PowerState_POWER_STATE_RUNNING) {
		return nil, errorf(KindFailedPrecondition, "vm %q is not meant to be running; start it instead of rebooting", vm.Name)
	}
	vm, _ = s.writableVM(vm.Id)
	if c.Reboot {
		vm.RebootSeq++
	}
	vm.Desired = c.Desired
	if c.Desired == statev1.PowerState_POWER_STATE_DELETED {
		vm.Phase = statev1.VMPhase_VM_PHASE_DELETING
	}
	vm.UpdatedUnixNano = now
	s.revise(vm, index)
	return proto.Clone(vm).(*statev1.VMRecord), nil
}

func (s *Store) applyReportVMStatus(index uint64, now int64, c *statev1.ReportVMStatus) error {
	if _, ok := s.hosts[c.GetHostId()]; !ok {
		return errorf(KindNotFound, "host %q not found: register it first", c.GetHostId())
	}
	for _, st := range c.GetStatuses() {
		vm, ok := s.vms[st.GetVmId()]
		// A host reports only on what the log placed there; anything else
		// is stale news from a host that no longer owns the VM.
		if !ok || vm.HostId != c.HostId {
			continue
		}
		if st.Gone && vm.Desired == statev1.PowerState_POWER_STATE_DELETED {
			s.removeVM(vm, index)
			continue
		}
		vm, _ = s.writableVM(vm.Id)
		if st.Gone {
			// Gone but still wanted (undefined by hand): the agent defines it again.
			vm.Phase = statev1.VMPhase_VM_PHASE_PENDING
			vm.Message = st.Message
		} else if vm.Desired != statev1.PowerState_POWER_STATE_DELETED {
			if st.Phase != statev1.VMPhase_VM_PHASE_UNSPECIFIED {
				vm.Phase = st.Phase
			}
			applyMirrorStatus(vm, st, now)
			if vm.Restore != nil && (st.Phase == statev1.VMPhase_VM_PHASE_RUNNING || st.Phase == statev1.VMPhase_VM_PHASE_STOPPED) {
				// The domain exists, so its disk was built: from now on
				// the disk is the VM's, never rebuilt from the point.
				vm.Restore = nil
			}
			vm.Message = st.Message
		}
		if st.ObservedRebootSeq > vm.ObservedRebootSeq {
			vm.ObservedRebootSeq = st.ObservedRebootSeq
		}
		vm.UpdatedUnixNano = now
		s.revise(vm, index)
	}
	s.applyVolumeStatuses(index, now, c.HostId, c.GetVolumes())
	s.applyMirrorExports(index, c.HostId, c.GetMirrorExports())
	return nil
}

// applyRecordHeartbeats stamps the command's time as the last heartbeat of
// every ready host not listed as silent. Liveness itself does not change
// (SetHostState does that), nor does anything placement sees.
func (s *Store) applyRecordHeartbeats(now int64, c *statev1.RecordHeartbeats) error {
	silent := make(map[string]bool, len(c.GetSilentHostIds()))
	for _, id := range c.GetSilentHostIds() {
		silent[id] = true
	}
	for id, h := range s.hosts {
		if h.State == statev1.HostState_HOST_STATE_READY && !silent[id] && h.LastHeartbeatUnixNano < now {
			h, _ = s.writableHost(id)
			h.LastHeartbeatUnixNano = now
		}
	}
	return nil
}

func (s *Store) applyUpsertMember(c *statev1.UpsertMember) (*statev1.MemberRecord, error) {
	m := c.GetMember()
	if m.GetId() == "" {
		return nil, errorf(KindInvalid, "member id is empty")
	}
	s.members[m.Id] = proto.Clone(m).(*statev1.MemberRecord)
	return proto.Clone(m).(*statev1.MemberRecord), nil
}

func (s *Store) applyRemoveMember(c *statev1.RemoveMember) error {
	if _, ok := s.members[c.GetId()]; !ok {
		return errorf(KindNotFound, "member %q not found", c.GetId())
	}
	delete(s.members, c.Id)
	return nil
}

// View is the state as of one index, sharing the store's records: taking
// it copies only pointers, so Apply waits for microseconds per thousand
// records, not for the encoding. The store never changes a record a View
// holds (copy-on-write), so a View stays consistent while Apply goes on;
// Snapshot turns it into the message, outside the store's lock.
type View struct {
	index    uint64
	hosts    []*statev1.HostRecord
	vms      []*statev1.VMRecord
	members  []*statev1.MemberRecord
	ratios   []*statev1.RatioRecord
	groups   []*statev1.PlacementGroupRecord
	requests []*request
	depts    []*statev1.DepartmentRecord
	projects []*statev1.ProjectRecord
	users    []*statev1.UserRecord
	tokens   []*statev1.TokenRecord
	audit    *statev1.AuditHead
	joinTok  []*statev1.JoinTokenRecord
	images   []*statev1.ImageRecord
	volumes  []*statev1.VolumeRecord
	centers  []*statev1.CenterRecord
	policies []*statev1.PolicyRecord
	points   []*statev1.RestorePointRecord
	jobs     []*statev1.BackupJobRecord
	runs     []*statev1.DRRunRecord
	drills   []*statev1.DrillScheduleRecord
}

// View takes the state as of the last applied index.
func (s *Store) View() *View {
	s.mu.Lock() // not RLock: it hands the records over (resets ownership)
	defer s.mu.Unlock()
	v := &View{
		index:    s.index,
		hosts:    make([]*statev1.HostRecord, 0, len(s.hosts)),
		vms:      make([]*statev1.VMRecord, 0, len(s.vms)),
		members:  make([]*statev1.MemberRecord, 0, len(s.members)),
		ratios:   make([]*statev1.RatioRecord, 0, len(s.ratios)),
		groups:   make([]*statev1.PlacementGroupRecord, 0, len(s.groups)),
		requests: slices.Clone(s.requests.order[s.requests.head:]),
		audit:    s.audit.head,
	}
	for _, h := range s.hosts {
		v.hosts = append(v.hosts, h)
	}
	for _, vm := range s.vms {
		v.vms = append(v.vms, vm)
	}
	for _, m := range s.members {
		v.members = append(v.members, m)
	}
	for _, r := range s.ratios {
		v.ratios = append(v.ratios, r)
	}
	for _, g := range s.groups {
		v.groups = append(v.groups, g)
	}
	for _, d := range s.depts {
		v.depts = append(v.depts, d)
	}
	for _, p := range s.projects {
		v.projects = append(v.projects, p)
	}
	for _, u := range s.users {
		v.users = append(v.users, u)
	}
	for _, t := range s.tokens {
		v.tokens = append(v.tokens, t)
	}
	for _, t := range s.joinTokens {
		v.joinTok = append(v.joinTok, t)
	}
	for _, im := range s.images {
		v.images = append(v.images, im)
	}
	for _, vol := range s.volumes {
		v.volumes = append(v.volumes, vol)
	}
	for _, c := range s.dr.centers {
		v.centers = append(v.centers, c)
	}
	for _, p := range s.dr.policies {
		v.policies = append(v.policies, p)
	}
	for _, p := range s.dr.points {
		v.points = append(v.points, p)
	}
	for _, j := range s.dr.jobs {
		v.jobs = append(v.jobs, j)
	}
	for _, r := range s.dr.runs {
		v.runs = append(v.runs, r)
	}
	for _, d := range s.dr.drills {
		v.drills = append(v.drills, d)
	}
	// Every record is now shared with v: the next change to one clones it.
	s.ownVMs = map[*statev1.VMRecord]struct{}{}
	s.ownHosts = map[*statev1.HostRecord]struct{}{}
	return v
}

// Index is the raft index the view was taken at.
func (v *View) Index() uint64 { return v.index }

// Snapshot returns the view as one message, sorted. The message shares
// the store's records: read it (encode it), never change it.
func (v *View) Snapshot() *statev1.Snapshot { return v.snapshot(true) }

// snapshot is Snapshot, without the remembered requests unless asked.
func (v *View) snapshot(requests bool) *statev1.Snapshot {
	snap := &statev1.Snapshot{
		FormatVersion: SnapshotVersion, Index: v.index,
		Hosts: slices.Clone(v.hosts), Vms: slices.Clone(v.vms), Members: slices.Clone(v.members),
		Ratios: slices.Clone(v.ratios), Groups: slices.Clone(v.groups),
		Departments: slices.Clone(v.depts), Projects: slices.Clone(v.projects),
		Users: slices.Clone(v.users), Tokens: slices.Clone(v.tokens),
		AuditHead:      v.audit,
		JoinTokens:     slices.Clone(v.joinTok),
		Images:         slices.Clone(v.images),
		Volumes:        slices.Clone(v.volumes),
		Centers:        slices.Clone(v.centers),
		Policies:       slices.Clone(v.policies),
		RestorePoints:  slices.Clone(v.points),
		BackupJobs:     slices.Clone(v.jobs),
		DrRuns:         slices.Clone(v.runs),
		DrillSchedules: slices.Clone(v.drills),
	}
	if requests {
		snap.Requests = v.decodeRequests()
	}
	slices.SortFunc(snap.DrRuns, func(a, b *statev1.DRRunRecord) int { return strings.Compare(a.Id, b.Id) })
	slices.SortFunc(snap.DrillSchedules, func(a, b *statev1.DrillScheduleRecord) int { return strings.Compare(a.Id, b.Id) })
	slices.SortFunc(snap.Centers, func(a, b *statev1.CenterRecord) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(snap.Policies, func(a, b *statev1.PolicyRecord) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(snap.RestorePoints, func(a, b *statev1.RestorePointRecord) int { return strings.Compare(a.Id, b.Id) })
	slices.SortFunc(snap.BackupJobs, func(a, b *statev1.BackupJobRecord) int { return strings.Compare(a.Id, b.Id) })
	slices.SortFunc(snap.Volumes, func(a, b *statev1.VolumeRecord) int { return strings.Compare(a.Id, b.Id) })
	slices.SortFunc(snap.Images, func(a, b *statev1.ImageRecord) int {
		return strings.Compare(nameKey(a.Project, a.Name), nameKey(b.Project, b.Name))
	})
	slices.SortFunc(snap.JoinTokens, func(a, b *statev1.JoinTokenRecord) int { return strings.Compare(a.Id, b.Id) })
	slices.SortFunc(snap.Departments, func(a, b *statev1.DepartmentRecord) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(snap.Projects, func(a, b *statev1.ProjectRecord) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(snap.Users, func(a, b *statev1.UserRecord) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(snap.Tokens, func(a, b *statev1.TokenRecord) int { return strings.Compare(a.Id, b.Id) })
	sortRatios(snap.Ratios)
	sort.Slice(snap.Groups, func(i, j int) bool {
		return nameKey(snap.Groups[i].Project, snap.Groups[i].Name) < nameKey(snap.Groups[j].Project, snap.Groups[j].Name)
	})
	slices.SortFunc(snap.Hosts, func(a, b *statev1.HostRecord) int { return strings.Compare(a.Id, b.Id) })
	slices.SortFunc(snap.Vms, func(a, b *statev1.VMRecord) int { return strings.Compare(a.Id, b.Id) })
	slices.SortFunc(snap.Members, func(a, b *statev1.MemberRecord) int { return strings.Compare(a.Id, b.Id) })
	return snap
}

// Snapshot returns the whole state, sorted, as one message of its own (a
// deep copy the caller may change).
func (s *Store) Snapshot() *statev1.Snapshot {
	return proto.Clone(s.View().Snapshot()).(*statev1.Snapshot)
}

// Restore replaces the state with a snapshot.
func (s *Store) Restore(snap *statev1.Snapshot) error {
	if snap.GetFormatVersion() > SnapshotVersion {
		return fmt.Errorf("snapshot format %d is newer than this controller reads (%d): upgrade it", snap.GetFormatVersion(), SnapshotVersion)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reset()
	for _, h := range snap.GetHosts() {
		s.hosts[h.Id] = proto.Clone(h).(*statev1.HostRecord)
	}
	// Projects before VMs: a VM's usage counts against its project's
	// department (addVM).
	for _, d := range snap.GetDepartments() {
		s.depts[d.Name] = proto.Clone(d).(*statev1.DepartmentRecord)
	}
	for _, p := range snap.GetProjects() {
		s.projects[p.Name] = proto.Clone(p).(*statev1.ProjectRecord)
	}
	for _, v := range snap.GetVms() {
		s.addVM(proto.Clone(v).(*statev1.VMRecord))
	}
	for _, m := range snap.GetMembers() {
		s.members[m.Id] = proto.Clone(m).(*statev1.MemberRecord)
	}
	for _, r := range snap.GetRatios() {
		s.ratios[ratioKey(r.Scope, r.Name)] = proto.Clone(r).(*statev1.RatioRecord)
	}
	for _, g := range snap.GetGroups() {
		s.groups[nameKey(g.Project, g.Name)] = proto.Clone(g).(*statev1.PlacementGroupRecord)
		s.projectUse[g.Project]++ // as applyCreatePlacementGroup counts it
	}
	for _, u := range snap.GetUsers() {
		s.users[u.Name] = proto.Clone(u).(*statev1.UserRecord)
	}
	for _, t := range snap.GetTokens() {
		s.tokens[t.Id] = proto.Clone(t).(*statev1.TokenRecord)
	}
	for _, t := range snap.GetJoinTokens() {
		s.joinTokens[t.Id] = proto.Clone(t).(*statev1.JoinTokenRecord)
	}
	for _, im := range snap.GetImages() {
		s.addImage(proto.Clone(im).(*statev1.ImageRecord))
	}
	// After hosts and projects: a volume counts on both.
	for _, vol := range snap.GetVolumes() {
		s.addVolume(proto.Clone(vol).(*statev1.VolumeRecord))
	}
	for _, c := range snap.GetCenters() {
		s.dr.centers[c.Name] = proto.Clone(c).(*statev1.CenterRecord)
	}
	for _, p := range snap.GetPolicies() {
		s.dr.policies[p.Name] = proto.Clone(p).(*statev1.PolicyRecord)
	}
	for _, p := range snap.GetRestorePoints() {
		s.addPoint(proto.Clone(p).(*statev1.RestorePointRecord))
	}
	for _, j := range snap.GetBackupJobs() {
		s.addJob(proto.Clone(j).(*statev1.BackupJobRecord))
	}
	for _, r := range snap.GetDrRuns() {
		s.dr.runs[r.Id] = proto.Clone(r).(*statev1.DRRunRecord)
	}
	for _, d := range snap.GetDrillSchedules() {
		s.dr.drills[d.Id] = proto.Clone(d).(*statev1.DrillScheduleRecord)
	}
	for _, r := range snap.GetRequests() {
		s.requests.clock = max(s.requests.clock, r.UnixNano)
		s.requests.add(r) // encoded: r stays the caller's
	}
	if h := snap.GetAuditHead(); h != nil {
		s.audit.head = proto.Clone(h).(*statev1.AuditHead)
	}
	s.index = snap.GetIndex()
	// What was removed before the snapshot left no trace: every host's
	// assignments count as changed at the snapshot's index.
	for id := range s.hosts {
		s.hostRev[id] = s.index
	}
	s.notify()
	return nil
}
