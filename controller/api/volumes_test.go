package api

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// requestProposer stamps commands with the request id of their context,
// as the raft node does, so that Apply remembers outcomes.
type requestProposer struct{ *fakeProposer }

func (r requestProposer) Apply(ctx context.Context, cmd *statev1.Command) (state.Result, error) {
	if ri, ok := state.RequestFrom(ctx); ok {
		cmd.RequestId, cmd.RequestHash = ri.ID, ri.Hash
	}
	return r.fakeProposer.Apply(ctx, cmd)
}

// newVolumeServer: hosts h1 (a1, 100 GiB of disk) and h2 (b1, 100 GiB),
// project air (department eco, disk quota 150 GiB), VMs web (air, on h1,
// 10 GiB) and db (air, on h2, 10 GiB) and other (default project, h1).
func newVolumeServer(t *testing.T) (*Server, *fakeProposer) {
	t.Helper()
	host := func(id, center string) *statev1.Command {
		return &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
			Id: id, Hostname: id, Center: center, Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 16 << 30, DiskBytes: 100 << 30},
		}}}}
	}
	vm := func(id, name, project, host string) *statev1.VMRecord {
		return &statev1.VMRecord{Id: id, Name: name, Project: project, Vcpus: 1, MemoryBytes: 1 << 30, DiskBytes: 10 << 30, HostId: host}
	}
	disk := int64(150 << 30)
	s, p, _ := newFakeServer(t, host("h1", "a1"), host("h2", "b1"),
		&statev1.Command{Cmd: &statev1.Command_CreateDepartment{CreateDepartment: &statev1.CreateDepartment{Department: &statev1.DepartmentRecord{
			Name: "eco", Quota: &statev1.Quota{DiskBytes: &disk}}}}},
		&statev1.Command{Cmd: &statev1.Command_CreateProject{CreateProject: &statev1.CreateProject{Project: &statev1.ProjectRecord{Name: "air", Department: "eco"}}}},
		&statev1.Command{Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: []*statev1.VMRecord{
			vm("vm-web", "web", "air", "h1"), vm("vm-db", "db", "air", "h2"), vm("vm-other", "other", "default", "h1"),
		}}}},
	)
	s.prop = requestProposer{p}
	return s, p
}

// wantStatus checks a call's code and that its message says want.
func wantStatus(t *testing.T, what string, err error, code codes.Code, want string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), want) {
		t.Errorf("%s: %v, want %v saying %q", what, err, code, want)
	}
	if msg := status.Convert(err).Message(); strings.Contains(msg, "\n") {
		t.Errorf("%s: message spans lines: %q", what, msg)
	}
}

// Bad input for every field of every call is refused with a clear
// one-line message, and nothing is proposed.
func TestVolumeBadInput(t *testing.T) {
	s, p := newVolumeServer(t)
	ctx := context.Background()
	if _, err := s.CreateVolume(ctx, &yunchiv1.CreateVolumeRequest{Name: "data", Project: "air", SizeBytes: 10 << 30}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AttachVolume(ctx, &yunchiv1.AttachVolumeRequest{Name: "data", Project: "air", Vm: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVolume(ctx, &yunchiv1.CreateVolumeRequest{Name: "spare", Project: "air", SizeBytes: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	p.cmds = nil
	before := s.store.(*state.Store).Snapshot()
	create := func(edit func(r *yunchiv1.CreateVolumeRequest)) error {
		r := &yunchiv1.CreateVolumeRequest{Name: "new", Project: "air", SizeBytes: 1 << 30}
		edit(r)
		_, err := s.CreateVolume(ctx, r)
		return err
	}
	for _, c := range []struct {
		what string
		err  error
		code codes.Code
		msg  string
	}{
		{"create: no name", create(func(r *yunchiv1.CreateVolumeRequest) { r.Name = "" }), codes.InvalidArgument, "volume name is empty"},
		{"create: bad name", create(func(r *yunchiv1.CreateVolumeRequest) { r.Name = "Data_1" }), codes.InvalidArgument, `volume name "Data_1" is not valid`},
		{"create: long name", create(func(r *yunchiv1.CreateVolumeRequest) { r.Name = strings.Repeat("a", 64) }), codes.InvalidArgument, "at most 63"},
		{"create: bad project", create(func(r *yunchiv1.CreateVolumeRequest) { r.Project = "Air" }), codes.InvalidArgument, `project "Air" is not valid`},
		{"create: unknown project", create(func(r *yunchiv1.CreateVolumeRequest) { r.Project = "soil" }), codes.NotFound, `project "soil" not found`},
		{"create: no size", create(func(r *yunchiv1.CreateVolumeRequest) { r.SizeBytes = 0 }), codes.InvalidArgument, "volume size 0 bytes is out of range: give 1MiB to 64TiB"},
		{"create: negative size", create(func(r *yunchiv1.CreateVolumeRequest) { r.SizeBytes = -1 << 30 }), codes.InvalidArgument, "out of range"},
		{"create: huge size", create(func(r *yunchiv1.CreateVolumeRequest) { r.SizeBytes = 65 << 40 }), codes.InvalidArgument, "out of range"},
		{"create: odd size", create(func(r *yunchiv1.CreateVolumeRequest) { r.SizeBytes = 1<<30 + 100 }), codes.InvalidArgument, "512-byte sectors"},
		{"create: bad center", create(func(r *yunchiv1.CreateVolumeRequest) { r.Center = "A 1" }), codes.InvalidArgument, `center "A 1" is not valid`},
		{"create: unknown center", create(func(r *yunchiv1.CreateVolumeRequest) { r.Center = "z9" }), codes.InvalidArgument, `no host is in center "z9"`},
		{"create: name taken", create(func(r *yunchiv1.CreateVolumeRequest) { r.Name = "data" }), codes.AlreadyExists, `volume "data" already exists in project "air"`},
		{"create: over quota", create(func(r *yunchiv1.CreateVolumeRequest) { r.SizeBytes = 120 << 30 }), codes.ResourceExhausted, `quota exceeded: department "eco" disk`},
		{"create: no host has room", create(func(r *yunchiv1.CreateVolumeRequest) { r.Project = "default"; r.SizeBytes = 95 << 30 }), codes.ResourceExhausted, "no room for a volume of 95 GiB on any ready host: the most free disk on one is 90 GiB"},
		{"create: no host of the center has room", create(func(r *yunchiv1.CreateVolumeRequest) {
			r.Project, r.SizeBytes, r.Center = "default", 85<<30, "a1"
		}), codes.ResourceExhausted, "on any ready host of center a1: the most free disk on one is 70 GiB"},
	} {
		wantStatus(t, c.what, c.err, c.code, c.msg)
	}
	get := func(r *yunchiv1.GetVolumeRequest) error { _, err := s.GetVolume(ctx, r); return err }
	list := func(r *yunchiv1.ListVolumesRequest) error { _, err := s.ListVolumes(ctx, r); return err }
	attach := func(r *yunchiv1.AttachVolumeRequest) error { _, err := s.AttachVolume(ctx, r); return err }
	detach := func(r *yunchiv1.DetachVolumeRequest) error { _, err := s.DetachVolume(ctx, r); return err }
	del := func(r *yunchiv1.DeleteVolumeRequest) error { _, err := s.DeleteVolume(ctx, r); return err }
	for _, c := range []struct {
		what string
		err  error
		code codes.Code
		msg  string
	}{
		{"get: no name", get(&yunchiv1.GetVolumeRequest{}), codes.InvalidArgument, "volume name is empty"},
		{"get: bad project", get(&yunchiv1.GetVolumeRequest{Name: "data", Project: "a/b"}), codes.InvalidArgument, "project"},
		{"get: unknown", get(&yunchiv1.GetVolumeRequest{Name: "nope", Project: "air"}), codes.NotFound, `volume "nope" not found in project "air" (see ` + "`yunchi volume list`)"},
		{"get: other project", get(&yunchiv1.GetVolumeRequest{Name: "data"}), codes.NotFound, `volume "data" not found in project "default"`},
		{"list: bad project", list(&yunchiv1.ListVolumesRequest{Project: "A"}), codes.InvalidArgument, `project "A" is not valid`},
		{"list: bad page size", list(&yunchiv1.ListVolumesRequest{PageSize: -1}), codes.InvalidArgument, "page"},
		{"list: bad token", list(&yunchiv1.ListVolumesRequest{PageToken: "%%%"}), codes.InvalidArgument, "token"},
		{"attach: no name", attach(&yunchiv1.AttachVolumeRequest{Project: "air", Vm: "web"}), codes.InvalidArgument, "volume name is empty"},
		{"attach: unknown volume", attach(&yunchiv1.AttachVolumeRequest{Name: "nope", Project: "air", Vm: "web"}), codes.NotFound, `volume "nope" not found`},
		{"attach: no vm", attach(&yunchiv1.AttachVolumeRequest{Name: "spare", Project: "air"}), codes.InvalidArgument, `vm is empty: name the VM to attach volume "spare" to`},
		{"attach: bad vm", attach(&yunchiv1.AttachVolumeRequest{Name: "spare", Project: "air", Vm: "Web"}), codes.InvalidArgument, `vm name "Web" is not valid`},
		{"attach: unknown vm", attach(&yunchiv1.AttachVolumeRequest{Name: "spare", Project: "air", Vm: "nope"}), codes.NotFound, `vm "nope" not found in project "air"`},
		{"attach: vm of another project", attach(&yunchiv1.AttachVolumeRequest{Name: "spare", Project: "air", Vm: "other"}), codes.NotFound, `vm "other" not found in project "air"`},
		{"attach: attached elsewhere", attach(&yunchiv1.AttachVolumeRequest{Name: "data", Project: "air", Vm: "db"}), codes.FailedPrecondition, `volume "data" is attached to vm "web": detach it first`},
		{"detach: unknown", detach(&yunchiv1.DetachVolumeRequest{Name: "nope", Project: "air"}), codes.NotFound, `volume "nope" not found`},
		{"detach: not attached", detach(&yunchiv1.DetachVolumeRequest{Name: "spare", Project: "air"}), codes.FailedPrecondition, `volume "spare" is not attached to a VM`},
		{"delete: bad name", del(&yunchiv1.DeleteVolumeRequest{Name: "-x", Project: "air"}), codes.InvalidArgument, `volume name "-x" is not valid`},
		{"delete: attached", del(&yunchiv1.DeleteVolumeRequest{Name: "data", Project: "air"}), codes.FailedPrecondition, `volume "data" is attached to vm "web": detach it first (yunchi volume detach data)`},
	} {
		wantStatus(t, c.what, c.err, c.code, c.msg)
	}
	// Only the calls that reached Apply proposed anything, and Apply
	// refused each of them.
	for _, c := range p.cmds {
		switch c.GetCmd().(type) {
		case *statev1.Command_AttachVolume, *statev1.Command_DetachVolume, *statev1.Command_DeleteVolume:
		default:
			t.Errorf("a refused call proposed %v", c)
		}
	}
	after := s.store.(*state.Store).Snapshot()
	after.Index = before.Index
	if !proto.Equal(before, after) {
		t.Fatal("refused calls changed the state")
	}
}

// The whole tour through the handlers: create, attach (placed on the VM's
// host), the host's reports move the state, detach, delete; the host's
// assignments list the volume; lists page.
func TestVolumeTour(t *testing.T) {
	s, _ := newVolumeServer(t)
	ctx := context.Background()
	v, err := s.CreateVolume(ctx, &yunchiv1.CreateVolumeRequest{Name: "data", Project: "air", SizeBytes: 20 << 30, Center: "a1"})
	if err != nil {
		t.Fatal(err)
	}
	if v.State != yunchiv1.VolumeState_VOLUME_STATE_AVAILABLE || v.HostId != "" || v.Center != "a1" || !strings.HasPrefix(v.Id, "vol-") || len(v.Id) != 20 {
		t.Fatalf("created: %v", v)
	}
	// Center a1: db (on h2, in b1) cannot have it.
	_, err = s.AttachVolume(ctx, &yunchiv1.AttachVolumeRequest{Name: "data", Project: "air", Vm: "db"})
	wantStatus(t, "attach across centers", err, codes.FailedPrecondition, `volume "data" is for center a1, vm "db" runs in center b1`)
	v, err = s.AttachVolume(ctx, &yunchiv1.AttachVolumeRequest{Name: "data", Project: "air", Vm: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if v.State != yunchiv1.VolumeState_VOLUME_STATE_ATTACHING || v.HostId != "h1" || v.Vm != "web" {
		t.Fatalf("attaching: %v", v)
	}
	hv, _ := s.store.Host("h1")
	if hv.Facts.Allocated.DiskBytes != 40<<30 { // web, other, data
		t.Fatalf("h1 allocated %d", hv.Facts.Allocated.DiskBytes)
	}
	as := volumeAssignments(s.store.HostVolumes("h1"))
	if len(as) != 1 || as[0].VolumeId != v.Id || as[0].VmId != "vm-web" || as[0].SizeBytes != 20<<30 || as[0].Deleted {
		t.Fatalf("h1's volume assignments: %v", as)
	}
	// The host's report: attached.
	if _, err := s.ReportVMStatus(ctx, &yunchiv1.ReportVMStatusRequest{HostId: "h1", Volumes: []*yunchiv1.VolumeStatus{{VolumeId: v.Id, AttachedVmId: "vm-web"}}}); err != nil {
		t.Fatal(err)
	}
	_, err = s.ReportVMStatus(ctx, &yunchiv1.ReportVMStatusRequest{HostId: "h1", Volumes: []*yunchiv1.VolumeStatus{{VolumeId: "../etc"}}})
	wantStatus(t, "report of a bad volume id", err, codes.InvalidArgument, `host h1 reports on volume id "../etc", which is not one`)
	if v, _ = s.GetVolume(ctx, &yunchiv1.GetVolumeRequest{Name: "data", Project: "air"}); v.State != yunchiv1.VolumeState_VOLUME_STATE_ATTACHED {
		t.Fatalf("after the report: %v", v)
	}
	if v, err = s.DetachVolume(ctx, &yunchiv1.DetachVolumeRequest{Name: "data", Project: "air"}); err != nil || v.State != yunchiv1.VolumeState_VOLUME_STATE_DETACHING || v.Vm != "web" {
		t.Fatalf("detaching: %v %v", v, err)
	}
	s.ReportVMStatus(ctx, &yunchiv1.ReportVMStatusRequest{HostId: "h1", Volumes: []*yunchiv1.VolumeStatus{{VolumeId: v.Id}}})
	if v, _ = s.GetVolume(ctx, &yunchiv1.GetVolumeRequest{Name: "data", Project: "air"}); v.State != yunchiv1.VolumeState_VOLUME_STATE_AVAILABLE || v.Vm != "" || v.HostId != "h1" {
		t.Fatalf("detached: %v", v)
	}
	for _, n := range []string{"b", "c"} {
		if _, err := s.CreateVolume(ctx, &yunchiv1.CreateVolumeRequest{Name: n, Project: "air", SizeBytes: 1 << 30}); err != nil {
			t.Fatal(err)
		}
	}
	page, err := s.ListVolumes(ctx, &yunchiv1.ListVolumesRequest{PageSize: 2})
	if err != nil || len(page.Volumes) != 2 || page.Volumes[0].Name != "b" || page.NextPageToken == "" {
		t.Fatalf("first page: %v %v", page, err)
	}
	page, err = s.ListVolumes(ctx, &yunchiv1.ListVolumesRequest{PageSize: 2, PageToken: page.NextPageToken})
	if err != nil || len(page.Volumes) != 1 || page.Volumes[0].Name != "data" || page.NextPageToken != "" {
		t.Fatalf("second page: %v %v", page, err)
	}
	if v, err = s.DeleteVolume(ctx, &yunchiv1.DeleteVolumeRequest{Name: "data", Project: "air"}); err != nil || v.State != yunchiv1.VolumeState_VOLUME_STATE_DELETING {
		t.Fatalf("deleting: %v %v", v, err)
	}
	if as := volumeAssignments(s.store.HostVolumes("h1")); len(as) != 1 || !as[0].Deleted {
		t.Fatalf("h1's volume assignments while deleting: %v", as)
	}
	s.ReportVMStatus(ctx, &yunchiv1.ReportVMStatusRequest{HostId: "h1", Volumes: []*yunchiv1.VolumeStatus{{VolumeId: v.Id, Gone: true}}})
	if _, err := s.GetVolume(ctx, &yunchiv1.GetVolumeRequest{Name: "data", Project: "air"}); status.Code(err) != codes.NotFound {
		t.Fatalf("after the host removed it: %v", err)
	}
	hv, _ = s.store.Host("h1")
	if hv.Facts.Allocated.DiskBytes != 20<<30 {
		t.Fatalf("h1 allocated %d after the delete", hv.Facts.Allocated.DiskBytes)
	}
}

// A create sent again with the same request id gets the first answer (the
// same volume, not "already exists" nor a second volume); the same id with
// another request is refused.
func TestVolumeRequestIDs(t *testing.T) {
	s, _ := newVolumeServer(t)
	call := func(method string, req any, h grpc.UnaryHandler) (any, error) {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(idempotencyKey, "k-1"))
		return s.IdempotencyInterceptor(ctx, req, &grpc.UnaryServerInfo{FullMethod: method}, h)
	}
	create := func(ctx context.Context, req any) (any, error) {
		return s.CreateVolume(ctx, req.(*yunchiv1.CreateVolumeRequest))
	}
	req := &yunchiv1.CreateVolumeRequest{Name: "data", Project: "air", SizeBytes: 1 << 30}
	a, err := call(yunchiv1.VolumeService_CreateVolume_FullMethodName, req, create)
	if err != nil {
		t.Fatal(err)
	}
	b, err := call(yunchiv1.VolumeService_CreateVolume_FullMethodName, req, create)
	if err != nil || a.(*yunchiv1.Volume).Id != b.(*yunchiv1.Volume).Id {
		t.Fatalf("second send: %v %v, first %v", b, err, a)
	}
	if l, _ := s.ListVolumes(context.Background(), &yunchiv1.ListVolumesRequest{}); len(l.Volumes) != 1 {
		t.Fatalf("%d volumes after two sends", len(l.Volumes))
	}
	_, err = call(yunchiv1.VolumeService_CreateVolume_FullMethodName, &yunchiv1.CreateVolumeRequest{Name: "other", Project: "air", SizeBytes: 1 << 30}, create)
	if status.Code(err) == codes.OK {
		t.Fatal("a reused request id with another request was accepted")
	}
}
