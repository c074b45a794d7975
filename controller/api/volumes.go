package api

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// Volumes (VolumeService). Handlers check what they can before proposing,
// so that bad input never reaches the log; Apply decides what depends on
// the state at apply time (quotas, the host's room, who the volume is
// attached to) and refuses with a message people can act on. See
// controller/state/volumes.go for where a volume lives and what it counts
// against.

// newVolumeID is a volume's id: "vol-" and 16 hex digits, 20 bytes, what a
// virtio disk's serial holds whole.
func newVolumeID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", status.Errorf(codes.Internal, "volume id: %v", err)
	}
	return "vol-" + hex.EncodeToString(b[:]), nil
}

// volumeState is what a volume is doing, from what was asked and what its
// host reported.
func volumeState(v *statev1.VolumeRecord) yunchiv1.VolumeState {
	switch {
	case v.Deleting:
		return yunchiv1.VolumeState_VOLUME_STATE_DELETING
	case v.VmId != "" && v.AttachedVmId == v.VmId:
		return yunchiv1.VolumeState_VOLUME_STATE_ATTACHED
	case v.VmId != "":
		return yunchiv1.VolumeState_VOLUME_STATE_ATTACHING
	case v.AttachedVmId != "":
		return yunchiv1.VolumeState_VOLUME_STATE_DETACHING
	}
	return yunchiv1.VolumeState_VOLUME_STATE_AVAILABLE
}

// volumeOut is v as the API shows it: the VM by name (the one asked for,
// or while detaching the one still holding it).
func (s *Server) volumeOut(v *statev1.VolumeRecord) *yunchiv1.Volume {
	out := &yunchiv1.Volume{
		Name: v.Name, Project: v.Project, SizeBytes: v.SizeBytes, Center: v.Center, HostId: v.HostId,
		State: volumeState(v), Message: v.Message, Id: v.Id,
		CreatedAt: ts(v.CreatedUnixNano), UpdatedAt: ts(v.UpdatedUnixNano), Revision: v.Revision,
	}
	id := v.VmId
	if id == "" {
		id = v.AttachedVmId
	}
	if id != "" {
		if vm, ok := s.store.VMByID(id); ok {
			out.Vm = vm.Name
		}
	}
	return out
}

// findVolume looks a volume up by name, for a request naming project (""
// is the default project).
func (s *Server) findVolume(project, name string) (*statev1.VolumeRecord, error) {
	if err := checkName("volume name", name); err != nil {
		return nil, err
	}
	p, err := projectOf(project)
	if err != nil {
		return nil, err
	}
	v, ok := s.store.Volume(p, name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %q not found in project %q (see `yunchi volume list`)", name, p)
	}
	return v, nil
}

func (s *Server) CreateVolume(ctx context.Context, req *yunchiv1.CreateVolumeRequest) (*yunchiv1.Volume, error) {
	if err := checkName("volume name", req.Name); err != nil {
		return nil, err
	}
	project, err := projectOf(req.Project)
	if err != nil {
		return nil, err
	}
	if err := state.CheckVolumeSize(req.SizeBytes); err != nil {
		return nil, invalid("%s", err.Error())
	}
	if req.Center != "" {
		if err := checkName("center", req.Center); err != nil {
			return nil, err
		}
		if err := s.checkCenterExists(req.Center); err != nil {
			return nil, err
		}
	}
	if _, ok := s.store.ProjectDepartment(project); !ok {
		return nil, status.Errorf(codes.NotFound, "project %q not found", project)
	}
	if _, ok := s.store.Volume(project, req.Name); ok {
		return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists in project %q (see `yunchi volume list`)", req.Name, project)
	}
	if err := s.store.CheckQuota(project, state.Usage{DiskBytes: req.SizeBytes}); err != nil {
		return nil, toStatus(err)
	}
	if err := s.checkVolumeRoom(req.SizeBytes, req.Center); err != nil {
		return nil, err
	}
	id, err := newVolumeID()
	if err != nil {
		return nil, err
	}
	res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_CreateVolume{CreateVolume: &statev1.CreateVolume{Volume: &statev1.VolumeRecord{
		Id: id, Name: req.Name, Project: project, SizeBytes: req.SizeBytes, Center: req.Center,
	}}}})
	if err != nil {
		return nil, err
	}
	s.log.Info("volume created", "volume", req.Name, "project", project, "id", id, "size_bytes", req.SizeBytes)
	return s.volumeOut(res.Volume), nil
}

// checkVolumeRoom refuses a volume no ready host (of center, if given)
// could take now: it would never attach. This is advice at create time,
// not a reservation; the attach that places the volume checks the VM's
// host.
func (s *Server) checkVolumeRoom(size int64, center string) error {
	var best int64
	ready := 0
	for _, hv := range s.store.Hosts() {
		f := hv.Facts
		if f.State != statev1.HostState_HOST_STATE_READY || center != "" && f.Center != center {
			continue
		}
		ready++
		free := f.Allocatable().DiskBytes - f.Allocated.DiskBytes
		if free >= size {
			return nil
		}
		best = max(best, free)
	}
	where := "any ready host"
	if center != "" {
		where = "any ready host of center " + center
	}
	if ready == 0 {
		return status.Errorf(codes.ResourceExhausted, "no room for a volume: there is no ready host%s to put it on", strings.TrimPrefix(where, "any ready host"))
	}
	return status.Errorf(codes.ResourceExhausted, "no room for a volume of %s on %s: the most free disk on one is %s",
		scheduler.FormatBytes(size), where, scheduler.FormatBytes(max(best, 0)))
}

func (s *Server) GetVolume(ctx context.Context, req *yunchiv1.GetVolumeRequest) (*yunchiv1.Volume, error) {
	v, err := s.findVolume(req.Project, req.Name)
	if err != nil {
		return nil, err
	}
	return s.volumeOut(v), nil
}

func (s *Server) ListVolumes(ctx context.Context, req *yunchiv1.ListVolumesRequest) (*yunchiv1.ListVolumesResponse, error) {
	if req.Project != "" {
		if err := checkName("project", req.Project); err != nil {
			return nil, err
		}
	}
	size, after, err := volumePage(req.PageSize, req.PageToken)
	if err != nil {
		return nil, err
	}
	recs, more := s.store.VolumesPage(req.Project, after, size)
	out := &yunchiv1.ListVolumesResponse{Volumes: make([]*yunchiv1.Volume, 0, len(recs))}
	for _, v := range recs {
		// A department's users see their projects' volumes only.
		if auth.Sees(ctx, v.Project) {
			out.Volumes = append(out.Volumes, s.volumeOut(v))
		}
	}
	if more {
		last := recs[len(recs)-1]
		out.NextPageToken = volumeToken(state.VolumeKey{Project: last.Project, Name: last.Name})
	}
	return out, nil
}

func (s *Server) AttachVolume(ctx context.Context, req *yunchiv1.AttachVolumeRequest) (*yunchiv1.Volume, error) {
	v, err := s.findVolume(req.Project, req.Name)
	if err != nil {
		return nil, err
	}
	if req.Vm == "" {
		return nil, invalid("vm is empty: name the VM to attach volume %q to", req.Name)
	}
	vm, err := s.findVM(v.Project, req.Vm)
	if err != nil {
		return nil, err
	}
	res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_AttachVolume{AttachVolume: &statev1.AttachVolume{
		Project: v.Project, Name: v.Name, VmId: vm.Id,
	}}})
	if err != nil {
		return nil, err
	}
	s.log.Info("volume attached", "volume", v.Name, "project", v.Project, "vm", vm.Name, "host", res.Volume.HostId)
	return s.volumeOut(res.Volume), nil
}

func (s *Server) DetachVolume(ctx context.Context, req *yunchiv1.DetachVolumeRequest) (*yunchiv1.Volume, error) {
	v, err := s.findVolume(req.Project, req.Name)
	if err != nil {
		return nil, err
	}
	res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_DetachVolume{DetachVolume: &statev1.DetachVolume{Project: v.Project, Name: v.Name}}})
	if err != nil {
		return nil, err
	}
	s.log.Info("volume detached", "volume", v.Name, "project", v.Project)
	return s.volumeOut(res.Volume), nil
}

func (s *Server) DeleteVolume(ctx context.Context, req *yunchiv1.DeleteVolumeRequest) (*yunchiv1.Volume, error) {
	v, err := s.findVolume(req.Project, req.Name)
	if err != nil {
		return nil, err
	}
	res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_DeleteVolume{DeleteVolume: &statev1.DeleteVolume{Project: v.Project, Name: v.Name}}})
	if err != nil {
		return nil, err
	}
	s.log.Info("volume deleted", "volume", v.Name, "project", v.Project, "host", v.HostId)
	return s.volumeOut(res.Volume), nil
}

// volumePage reads a volume list's page_size and page_token (the key of
// the last volume given: "project NUL name").
func volumePage(size int32, token string) (int, state.VolumeKey, error) {
	n, err := pageSize(size, defaultPageSize, maxPageSize)
	if err != nil || token == "" {
		return n, state.VolumeKey{}, err
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	project, name, ok := strings.Cut(string(b), "\x00")
	if err != nil || !ok || checkName("project", project) != nil || checkName("volume name", name) != nil {
		return 0, state.VolumeKey{}, badToken(token)
	}
	return n, state.VolumeKey{Project: project, Name: name}, nil
}

func volumeToken(k state.VolumeKey) string {
	return base64.RawURLEncoding.EncodeToString([]byte(k.Project + "\x00" + k.Name))
}

// volumeAssignments is what a host's agent is told of its volumes.
func volumeAssignments(vols []*statev1.VolumeRecord) []*yunchiv1.VolumeAssignment {
	out := make([]*yunchiv1.VolumeAssignment, 0, len(vols))
	for _, v := range vols {
		out = append(out, &yunchiv1.VolumeAssignment{
			VolumeId: v.Id, Name: v.Name, Project: v.Project, SizeBytes: v.SizeBytes, VmId: v.VmId,
			Deleted: v.Deleting, AttachedVmId: v.AttachedVmId, Message: v.Message,
		})
	}
	return out
}

// checkVolumeStatuses validates what an agent reports of its volumes.
func checkVolumeStatuses(host string, sts []*yunchiv1.VolumeStatus) error {
	for _, st := range sts {
		if !state.ValidVolumeID(st.GetVolumeId()) {
			return invalid("host %s reports on volume id %.40q, which is not one", host, st.GetVolumeId())
		}
	}
	return nil
}

func volumeStatusesFromAPI(in []*yunchiv1.VolumeStatus) []*statev1.VolumeStatus {
	if len(in) == 0 {
		return nil
	}
	out := make([]*statev1.VolumeStatus, len(in))
	for i, st := range in {
		out[i] = &statev1.VolumeStatus{VolumeId: st.GetVolumeId(), AttachedVmId: st.GetAttachedVmId(), Message: st.GetMessage(), Gone: st.GetGone()}
	}
	return out
}
