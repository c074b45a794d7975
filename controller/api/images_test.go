package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/images"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// qcow2Bytes is a (sparse, all-zero) qcow2 version 3 image of vsize
// bytes, padded to n bytes; edit may change its header.
func qcow2Bytes(vsize uint64, n int, edit func([]byte)) []byte {
	b := make([]byte, n)
	copy(b, "QFI\xfb")
	binary.BigEndian.PutUint32(b[4:], 3)
	binary.BigEndian.PutUint32(b[20:], 16)
	binary.BigEndian.PutUint64(b[24:], vsize)
	binary.BigEndian.PutUint32(b[100:], 104)
	for i := 512; i < n; i++ {
		b[i] = byte(i * 7)
	}
	if edit != nil {
		edit(b)
	}
	return b
}

func hexSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// imageTestServer is controller c1 (leading) with an image store, serving
// the image and agent services on loopback; as, when set, is the caller
// every call is made as.
type imageTestServer struct {
	s     *Server
	p     *fakeProposer
	dir   string
	img   yunchiv1.ImageServiceClient
	peer  yunchiv1.ImagePeerServiceClient
	agent yunchiv1.AgentServiceClient
	as    *auth.Principal
}

func newImageTestServer(t *testing.T, cmds ...*statev1.Command) *imageTestServer {
	t.Helper()
	s, p, _ := newFakeServer(t, cmds...)
	// Commands carry the audit context of their request, as the raft
	// node stamps it.
	s.prop = auditingProposer{p}
	ts := &imageTestServer{s: s, p: p, dir: t.TempDir()}
	st, err := images.Open(ts.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Images = st
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Larger messages than the controllers take, so that the handler's
	// own limit is what refuses an oversized one.
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(16<<20), grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if ts.as != nil {
			return h(srv, &ctxStream{ss, auth.NewContext(ss.Context(), ts.as)})
		}
		return h(srv, ss)
	}), grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if ts.as != nil {
			ctx = auth.NewContext(ctx, ts.as)
		}
		return h(ctx, req)
	}))
	img := s.ImageService()
	yunchiv1.RegisterImageServiceServer(gs, img)
	yunchiv1.RegisterImagePeerServiceServer(gs, img)
	yunchiv1.RegisterAgentServiceServer(gs, s)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ts.img, ts.peer, ts.agent = yunchiv1.NewImageServiceClient(cc), yunchiv1.NewImagePeerServiceClient(cc), yunchiv1.NewAgentServiceClient(cc)
	return ts
}

type auditingProposer struct{ *fakeProposer }

func (a auditingProposer) Apply(ctx context.Context, cmd *statev1.Command) (state.Result, error) {
	if ac := state.AuditFrom(ctx); ac != nil && ac.Action != "" {
		cmd.Audit = proto.Clone(ac).(*statev1.AuditContext)
	}
	return a.fakeProposer.Apply(ctx, cmd)
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *ctxStream) Context() context.Context { return c.ctx }

// importMsgs sends msgs as one import and returns the answer.
func (ts *imageTestServer) importMsgs(t *testing.T, msgs ...*yunchiv1.ImportImageRequest) (*yunchiv1.Image, error) {
	t.Helper()
	st, err := ts.img.ImportImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := st.Send(m); err != nil {
			break // the server answered already: CloseAndRecv says what
		}
	}
	return st.CloseAndRecv()
}

// importFile imports data under h, in chunks of 1 MiB.
func (ts *imageTestServer) importFile(t *testing.T, h *yunchiv1.ImageHeader, data []byte) (*yunchiv1.Image, error) {
	t.Helper()
	msgs := []*yunchiv1.ImportImageRequest{{Header: h}}
	for off := 0; off < len(data); off += 1 << 20 {
		msgs = append(msgs, &yunchiv1.ImportImageRequest{Data: data[off:min(off+1<<20, len(data))]})
	}
	return ts.importMsgs(t, msgs...)
}

// storedFiles lists the files of the image store.
func storedFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// An import on the leader stores the bytes, records the image with what
// the bytes are (format, virtual size) and audits it as the caller's
// ImportImage; the record never shows its peer key.
func TestImportImage(t *testing.T) {
	ts := newImageTestServer(t)
	data := qcow2Bytes(64<<20, 3<<20+100, nil)
	img, err := ts.importFile(t, &yunchiv1.ImageHeader{Name: "tiny", SizeBytes: int64(len(data)), Sha256: hexSHA(data), Description: "a tiny guest"}, data)
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != "tiny" || img.Project != "default" || img.Public || img.Sha256 != hexSHA(data) || img.SizeBytes != int64(len(data)) ||
		img.Format != yunchiv1.ImageFormat_IMAGE_FORMAT_QCOW2 || img.VirtualSizeBytes != 64<<20 || img.Description != "a tiny guest" || img.CreatedAt == nil {
		t.Fatalf("image %v", img)
	}
	if !ts.s.Images.Has(img.Sha256) {
		t.Fatal("the bytes are not in the store")
	}
	cmds := ts.p.commands()
	if len(cmds) != 1 {
		t.Fatalf("%d commands", len(cmds))
	}
	rec := cmds[0].GetCreateImage().GetImage()
	if rec.SourceMember != "c1" || len(rec.PeerKey) < 40 {
		t.Fatalf("record %v", rec)
	}
	if a := cmds[0].Audit; a.GetAction() != "ImportImage" || a.GetTarget() != "project/default/image/tiny" || !strings.Contains(a.GetParams(), `"name":"tiny"`) {
		t.Fatalf("audit context %v", a)
	}
	got, err := ts.img.GetImage(context.Background(), &yunchiv1.GetImageRequest{Name: "tiny"})
	if err != nil || got.Sha256 != img.Sha256 {
		t.Fatalf("GetImage: %v %v", got, err)
	}
	if strings.Contains(got.String(), rec.PeerKey) {
		t.Fatal("the API shows the peer key")
	}
	// Raw, its format told from the bytes; public, by a sysadmin.
	raw := bytes.Repeat([]byte("raw disk "), 1000)
	ts.as = &auth.Principal{Kind: auth.KindUser, Name: "root", Role: yunchiv1.Role_ROLE_SYSADMIN}
	img, err = ts.importFile(t, &yunchiv1.ImageHeader{Name: "tiny", Public: true, SizeBytes: int64(len(raw))}, raw)
	if err != nil || !img.Public || img.Project != "" || img.Format != yunchiv1.ImageFormat_IMAGE_FORMAT_RAW || img.VirtualSizeBytes != int64(len(raw)) {
		t.Fatalf("public raw import: %v %v", img, err)
	}
	if a := ts.p.commands()[1].Audit; a.GetActor() != "root" || a.GetTarget() != "public/image/tiny" {
		t.Fatalf("audit context %v", a)
	}
	list, err := ts.img.ListImages(context.Background(), &yunchiv1.ListImagesRequest{Project: "default"})
	if err != nil || len(list.Images) != 2 || !list.Images[0].Public || list.Images[1].Project != "default" {
		t.Fatalf("list %v %v", list, err)
	}
	page, err := ts.img.ListImages(context.Background(), &yunchiv1.ListImagesRequest{PageSize: 1})
	if err != nil || len(page.Images) != 1 || page.NextPageToken == "" {
		t.Fatalf("page 1: %v %v", page, err)
	}
	page, err = ts.img.ListImages(context.Background(), &yunchiv1.ListImagesRequest{PageSize: 1, PageToken: page.NextPageToken})
	if err != nil || len(page.Images) != 1 || page.Images[0].Project != "default" || page.NextPageToken != "" {
		t.Fatalf("page 2: %v %v", page, err)
	}
	if _, err := ts.img.ListImages(context.Background(), &yunchiv1.ListImagesRequest{PageToken: "bogus!"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad page token: %v", err)
	}
}

// Every bad import is refused with one clear line, records nothing and
// leaves no file behind.
func TestImportImageRefusals(t *testing.T) {
	ts := newImageTestServer(t, &statev1.Command{Cmd: &statev1.Command_CreateImage{CreateImage: &statev1.CreateImage{Image: &statev1.ImageRecord{
		Name: "taken", Project: "default", Sha256: hexSHA([]byte("x")), SizeBytes: 1, Format: statev1.ImageFormat_IMAGE_FORMAT_RAW,
		VirtualSizeBytes: 1, SourceMember: "c1", PeerKey: "k"}}}})
	good := qcow2Bytes(1<<30, 2<<20, nil)
	n := int64(len(good))
	hdr := func(edit func(h *yunchiv1.ImageHeader)) *yunchiv1.ImageHeader {
		h := &yunchiv1.ImageHeader{Name: "new", SizeBytes: n, Sha256: hexSHA(good)}
		if edit != nil {
			edit(h)
		}
		return h
	}
	data := func(b []byte) *yunchiv1.ImportImageRequest { return &yunchiv1.ImportImageRequest{Data: b} }
	backing := qcow2Bytes(1<<30, 2<<20, func(b []byte) { binary.BigEndian.PutUint64(b[8:], 512); binary.BigEndian.PutUint32(b[16:], 4) })
	for _, c := range []struct {
		name string
		as   *auth.Principal
		msgs []*yunchiv1.ImportImageRequest
		code codes.Code
		msg  string
	}{
		{"no header", nil, []*yunchiv1.ImportImageRequest{data(good)}, codes.InvalidArgument, "first message of an import must carry the header"},
		{"empty stream", nil, nil, codes.InvalidArgument, "the import is empty"},
		{"header with data", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(nil), Data: good}}, codes.InvalidArgument, "carries the header only"},
		{"header twice", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(nil)}, data(good[:10]), {Header: hdr(nil)}}, codes.InvalidArgument, "a second header"},
		{"message over 4 MiB", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) { h.SizeBytes, h.Sha256 = 5<<20, "" })}, data(make([]byte, 4<<20+1))}, codes.InvalidArgument, "at most 4194304"},
		{"bad name", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) { h.Name = "Tiny_1" })}}, codes.InvalidArgument, `image name "Tiny_1" is not valid`},
		{"no project", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) { h.Project = "nope" })}}, codes.NotFound, `project "nope" not found`},
		{"taken", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) { h.Name = "taken" })}, data(good)}, codes.AlreadyExists, `image "taken" already exists in project "default"`},
		{"no size", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) { h.SizeBytes = 0 })}}, codes.InvalidArgument, "size_bytes 0"},
		{"bad sha", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) { h.Sha256 = "abc" })}}, codes.InvalidArgument, "not 64 lowercase hex"},
		{"unknown format", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) { h.Format = 9 })}}, codes.InvalidArgument, "image format 9 is unknown"},
		{"short", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(nil)}, data(good[:1000])}, codes.InvalidArgument, "the upload was cut short"},
		{"long", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) { h.SizeBytes, h.Sha256 = 1000, "" })}, data(good)}, codes.InvalidArgument, "more bytes came than the 1000"},
		{"sha mismatch", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) { h.Sha256 = hexSHA([]byte("other")) })}, data(good)}, codes.InvalidArgument, "the bytes have sha256 " + hexSHA(good)},
		{"declared qcow2, raw bytes", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) {
			h.Format, h.Sha256, h.SizeBytes = yunchiv1.ImageFormat_IMAGE_FORMAT_QCOW2, "", 5000
		})}, data(make([]byte, 5000))}, codes.InvalidArgument, "declared qcow2 but its bytes have no qcow2 header"},
		{"backing file", nil, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) { h.Sha256 = "" })}, data(backing)}, codes.InvalidArgument, "names a backing file"},
		{"public by a member", &auth.Principal{Kind: auth.KindUser, Name: "alice", Role: yunchiv1.Role_ROLE_MEMBER}, []*yunchiv1.ImportImageRequest{{Header: hdr(func(h *yunchiv1.ImageHeader) { h.Public = true })}, data(good)}, codes.PermissionDenied, "only an infrastructure admin (sysadmin) may import public images"},
	} {
		ts.as = c.as
		_, err := ts.importMsgs(t, c.msgs...)
		if st := status.Convert(err); st.Code() != c.code || !strings.Contains(st.Message(), c.msg) || strings.Contains(st.Message(), "\n") {
			t.Errorf("%s: %v; want %v with %q", c.name, err, c.code, c.msg)
		}
		if cmds := ts.p.commands(); len(cmds) != 0 {
			t.Errorf("%s: proposed %v", c.name, cmds)
		}
		if files := storedFiles(t, ts.dir); len(files) != 0 {
			t.Errorf("%s: left %v", c.name, files)
		}
	}
}

// placeWithImage is a host h1 and VM web on it made from the image (an
// import's record) r.
func placeWithImage(r *yunchiv1.Image) []*statev1.Command {
	return []*statev1.Command{
		{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
			Id: "h1", Hostname: "h1", Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 16 << 30, DiskBytes: 100 << 30}}}}},
		{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
			Id: "h2", Hostname: "h2", Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 16 << 30, DiskBytes: 100 << 30}}}}},
		{Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: []*statev1.VMRecord{{
			Id: "vm-1", Name: "web", Project: r.Project, Vcpus: 1, MemoryBytes: 1 << 30, DiskBytes: 10 << 30, HostId: "h1",
			Image: &statev1.VMImage{Name: r.Name, Project: r.Project, Sha256: r.Sha256, Format: formatFromAPI(r.Format),
				SizeBytes: r.SizeBytes, VirtualSizeBytes: r.VirtualSizeBytes},
			UserData: "#cloud-config\n", SshAuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f alice"},
		}}}}},
	}
}

func fetchAll(t *testing.T, st interface {
	Recv() (*yunchiv1.ImageChunk, error)
}, from int64) ([]byte, error) {
	t.Helper()
	var out []byte
	next := from
	for {
		ch, err := st.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if ch.Offset != next {
			t.Fatalf("chunk at %d, want %d", ch.Offset, next)
		}
		next += int64(len(ch.Data))
		out = append(out, ch.Data...)
	}
}

// A host fetches an image its VM uses from any offset (resuming), in
// chunks of at most 1 MiB; a host without such a VM is told NOT_FOUND; a
// damaged copy is not served; its assignments carry the image and the
// seed. Controllers fetch with the image's peer key only.
func TestFetchImage(t *testing.T) {
	ts := newImageTestServer(t)
	data := qcow2Bytes(1<<30, 3<<20+5, nil)
	img, err := ts.importFile(t, &yunchiv1.ImageHeader{Name: "tiny", SizeBytes: int64(len(data))}, data)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range placeWithImage(img) {
		if _, err := ts.p.Apply(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	for _, off := range []int64{0, 1<<20 + 3, int64(len(data))} {
		st, err := ts.agent.FetchImage(ctx, &yunchiv1.FetchImageRequest{HostId: "h1", Sha256: img.Sha256, Offset: off})
		if err != nil {
			t.Fatal(err)
		}
		got, err := fetchAll(t, st, off)
		if err != nil || !bytes.Equal(got, data[off:]) {
			t.Fatalf("from %d: %d bytes, %v", off, len(got), err)
		}
	}
	for _, c := range []struct {
		req  *yunchiv1.FetchImageRequest
		code codes.Code
		msg  string
	}{
		{&yunchiv1.FetchImageRequest{HostId: "h2", Sha256: img.Sha256}, codes.NotFound, "no VM assigned to host h2 uses image"},
		{&yunchiv1.FetchImageRequest{HostId: "h1", Sha256: hexSHA([]byte("other"))}, codes.NotFound, "no VM assigned to host h1"},
		{&yunchiv1.FetchImageRequest{HostId: "h1", Sha256: "nope"}, codes.InvalidArgument, "not 64 lowercase hex"},
		{&yunchiv1.FetchImageRequest{HostId: "h1", Sha256: img.Sha256, Offset: int64(len(data)) + 1}, codes.OutOfRange, "outside image"},
		{&yunchiv1.FetchImageRequest{HostId: "h1", Sha256: img.Sha256, Offset: -1}, codes.InvalidArgument, "negative"},
	} {
		st, err := ts.agent.FetchImage(ctx, c.req)
		if err == nil {
			_, err = fetchAll(t, st, c.req.Offset)
		}
		if s := status.Convert(err); s.Code() != c.code || !strings.Contains(s.Message(), c.msg) {
			t.Errorf("%v: %v, want %v %q", c.req, err, c.code, c.msg)
		}
	}

	// Controllers: the record's peer key, or nothing.
	key := ts.p.commands()[0].GetCreateImage().GetImage().GetPeerKey()
	for _, k := range []string{"", "wrong-key-wrong-key"} {
		st, _ := ts.peer.FetchImageBytes(ctx, &yunchiv1.FetchImageBytesRequest{Sha256: img.Sha256, PeerKey: k})
		if _, err := fetchAll(t, st, 0); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "controllers only") {
			t.Errorf("peer key %q: %v", k, err)
		}
	}
	st, _ := ts.peer.FetchImageBytes(ctx, &yunchiv1.FetchImageBytesRequest{Sha256: img.Sha256, PeerKey: key, Offset: 7})
	if got, err := fetchAll(t, st, 7); err != nil || !bytes.Equal(got, data[7:]) {
		t.Fatalf("peer fetch: %v", err)
	}

	// Assignments carry the image and the seed.
	w, err := ts.agent.WatchAssignments(ctx, &yunchiv1.WatchAssignmentsRequest{HostId: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	as, err := w.Recv()
	if err != nil || len(as.Vms) != 1 {
		t.Fatalf("assignments %v %v", as, err)
	}
	a := as.Vms[0]
	if a.Image.GetSha256() != img.Sha256 || a.Image.Format != yunchiv1.ImageFormat_IMAGE_FORMAT_QCOW2 || a.Image.SizeBytes != int64(len(data)) ||
		a.Image.VirtualSizeBytes != 1<<30 || a.UserData != "#cloud-config\n" || len(a.SshAuthorizedKeys) != 1 {
		t.Fatalf("assignment %v", a)
	}

	// A flipped byte: the chunk is not served, the copy is dropped.
	f, err := os.OpenFile(ts.s.Images.Path(img.Sha256), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xff}, 2<<20+1)
	f.Close()
	st2, _ := ts.agent.FetchImage(ctx, &yunchiv1.FetchImageRequest{HostId: "h1", Sha256: img.Sha256, Offset: 1 << 20})
	got, err := fetchAll(t, st2, 1<<20)
	if s := status.Convert(err); s.Code() != codes.Unavailable || !strings.Contains(s.Message(), "failed verification") || len(got) != 1<<20 || !bytes.Equal(got, data[1<<20:2<<20]) {
		t.Fatalf("damaged copy: %d bytes, %v", len(got), err)
	}
	st3, _ := ts.agent.FetchImage(ctx, &yunchiv1.FetchImageRequest{HostId: "h1", Sha256: img.Sha256})
	if _, err := fetchAll(t, st3, 0); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not yet copied to this controller") {
		t.Fatalf("after the damage: %v", err)
	}
}

// Deleting an image: refused while a VM uses it; a public one by
// sysadmins only.
func TestDeleteImage(t *testing.T) {
	ts := newImageTestServer(t)
	data := qcow2Bytes(1<<30, 1000, nil)
	img, err := ts.importFile(t, &yunchiv1.ImageHeader{Name: "tiny", SizeBytes: int64(len(data))}, data)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range placeWithImage(img) {
		if _, err := ts.p.Apply(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if got, _ := ts.img.GetImage(ctx, &yunchiv1.GetImageRequest{Name: "tiny"}); got.GetVmCount() != 1 {
		t.Fatalf("vm count %d", got.GetVmCount())
	}
	_, err = ts.s.ImageService().DeleteImage(ctx, &yunchiv1.DeleteImageRequest{Name: "tiny"})
	if s := status.Convert(err); s.Code() != codes.FailedPrecondition || !strings.Contains(s.Message(), "used by 1 VM(s) (default/web)") {
		t.Fatalf("in use: %v", err)
	}
	member := auth.NewContext(ctx, &auth.Principal{Kind: auth.KindUser, Name: "alice", Role: yunchiv1.Role_ROLE_MEMBER})
	if _, err := ts.s.ImageService().DeleteImage(member, &yunchiv1.DeleteImageRequest{Name: "tiny", Public: true}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("public by a member: %v", err)
	}
	if _, err := ts.s.ImageService().DeleteImage(ctx, &yunchiv1.DeleteImageRequest{Name: "Bad"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := ts.p.Apply(ctx, &statev1.Command{Cmd: &statev1.Command_SetVmDesired{SetVmDesired: &statev1.SetVMDesired{VmId: "vm-1", Desired: statev1.PowerState_POWER_STATE_DELETED}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.p.Apply(ctx, &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: "h1", Statuses: []*statev1.VMStatus{{VmId: "vm-1", Gone: true}}}}}); err != nil {
		t.Fatal(err)
	}
	n := len(ts.p.commands())
	out, err := ts.s.ImageService().DeleteImage(ctx, &yunchiv1.DeleteImageRequest{Name: "tiny"})
	if err != nil || out.Name != "tiny" {
		t.Fatalf("delete: %v %v", out, err)
	}
	if a := ts.p.commands()[n].Audit; a != nil && a.Target != "" && a.Target != "project/default/image/tiny" {
		t.Fatalf("audit target %q", a.Target)
	}
	// The bytes go once nothing refers to them (after the grace period).
	old := ts.s.Images.Path(img.Sha256)
	if err := os.Chtimes(old, timeAgo(2*imageGCGrace), timeAgo(2*imageGCGrace)); err != nil {
		t.Fatal(err)
	}
	ts.s.syncImages(ctx)
	if ts.s.Images.Has(img.Sha256) {
		t.Fatal("the bytes of a deleted image stayed")
	}
}

// Creating a VM from an image records it with the VM; the disk defaults
// to the image's virtual size and may not be smaller; the seed's contents
// are bounded.
func TestCreateVMWithImage(t *testing.T) {
	f := &fakePlacer{}
	s := newPlacerServer(f)
	st := s.store.(*state.Store)
	apply := func(c *statev1.Command) {
		c.Version, c.UnixNano = state.CommandVersion, int64(st.Index()+1)
		if _, err := st.Apply(st.Index()+1, c); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []*statev1.ImageRecord{
		{Name: "tiny", Project: "default", Sha256: hexSHA([]byte("t")), SizeBytes: 10 << 20, Format: statev1.ImageFormat_IMAGE_FORMAT_QCOW2, VirtualSizeBytes: 64 << 20, SourceMember: "c1", PeerKey: "k"},
		{Name: "big", Public: true, Sha256: hexSHA([]byte("b")), SizeBytes: 1 << 30, Format: statev1.ImageFormat_IMAGE_FORMAT_QCOW2, VirtualSizeBytes: 40 << 30, SourceMember: "c1", PeerKey: "k"},
	} {
		apply(&statev1.Command{Cmd: &statev1.Command_CreateImage{CreateImage: &statev1.CreateImage{Image: r}}})
	}
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f alice@example"
	ctx := context.Background()
	if _, err := s.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: "a", Vcpus: 1, Memory: "1GiB", Image: "tiny", UserData: "#cloud-config\n", SshAuthorizedKeys: []string{key}}); err != nil {
		t.Fatal(err)
	}
	sp := f.got[0]
	if sp.Image.GetName() != "tiny" || sp.Image.Sha256 != hexSHA([]byte("t")) || sp.Resources.DiskBytes != 64<<20 || sp.UserData != "#cloud-config\n" || len(sp.SSHAuthorizedKeys) != 1 {
		t.Fatalf("spec %+v", sp)
	}
	if _, err := s.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: "b", Vcpus: 1, Memory: "1GiB", Image: "big", Disk: "50GiB"}); err != nil {
		t.Fatal(err)
	}
	if sp := f.got[1]; sp.Image.GetProject() != "" || sp.Resources.DiskBytes != 50<<30 {
		t.Fatalf("public image spec %+v", sp)
	}
	for _, c := range []struct {
		req  *yunchiv1.CreateVMRequest
		code codes.Code
		msg  string
	}{
		{&yunchiv1.CreateVMRequest{Image: "none"}, codes.NotFound, `image "none" not found in project "default" nor among the public images`},
		{&yunchiv1.CreateVMRequest{Image: "Bad!"}, codes.InvalidArgument, "image name"},
		{&yunchiv1.CreateVMRequest{Image: "big", Disk: "20GiB"}, codes.InvalidArgument, `disk 20GiB is smaller than image "big" (40 GiB)`},
		{&yunchiv1.CreateVMRequest{UserData: strings.Repeat("x", 64<<10+1)}, codes.InvalidArgument, "user data is 65537 bytes"},
		{&yunchiv1.CreateVMRequest{SshAuthorizedKeys: make([]string, 33)}, codes.InvalidArgument, "33 SSH keys"},
		{&yunchiv1.CreateVMRequest{SshAuthorizedKeys: []string{key + "\nssh-rsa AAAA"}}, codes.InvalidArgument, "spans lines"},
		{&yunchiv1.CreateVMRequest{SshAuthorizedKeys: []string{"hello world"}}, codes.InvalidArgument, "is not a public key line"},
		{&yunchiv1.CreateVMRequest{SshAuthorizedKeys: []string{" "}}, codes.InvalidArgument, "SSH key 1 is empty"},
	} {
		c.req.Name, c.req.Vcpus, c.req.Memory = "c", 1, "1GiB"
		_, err := s.CreateVM(ctx, c.req)
		if st := status.Convert(err); st.Code() != c.code || !strings.Contains(st.Message(), c.msg) {
			t.Errorf("%v: %v, want %v %q", c.req, err, c.code, c.msg)
		}
	}
	if len(f.got) != 2 {
		t.Fatalf("%d placements, want 2", len(f.got))
	}
	// What the API shows of a VM made from an image: not its user data.
	out := vmToAPI(&statev1.VMRecord{Name: "a", Image: &statev1.VMImage{Name: "tiny", Sha256: "s"}, UserData: "secret", SshAuthorizedKeys: []string{key}}, hostInfo{})
	if out.Image != "tiny" || out.ImageSha256 != "s" || len(out.SshAuthorizedKeys) != 1 || strings.Contains(out.String(), "secret") {
		t.Fatalf("vm %v", out)
	}
}

func TestImageFormatsMatchByName(t *testing.T) {
	l, a := statev1.ImageFormat(0).Descriptor(), yunchiv1.ImageFormat(0).Descriptor()
	for _, side := range [][2]protoreflect.EnumDescriptor{{l, a}, {a, l}} {
		vals := side[0].Values()
		for i := 0; i < vals.Len(); i++ {
			v := vals.Get(i)
			if o := side[1].Values().ByNumber(v.Number()); o == nil || o.Name() != v.Name() {
				t.Errorf("%s.%s has no twin in %s", side[0].FullName(), v.Name(), side[1].FullName())
			}
		}
	}
	if formatToAPI(statev1.ImageFormat_IMAGE_FORMAT_RAW) != yunchiv1.ImageFormat_IMAGE_FORMAT_RAW || formatOfStore(images.QCOW2) != statev1.ImageFormat_IMAGE_FORMAT_QCOW2 ||
		formatForStore(yunchiv1.ImageFormat_IMAGE_FORMAT_RAW) != images.Raw {
		t.Error("a format converter maps a value to another")
	}
}

func timeAgo(d time.Duration) time.Time { return time.Now().Add(-d) }
