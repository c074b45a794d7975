package api

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/audit"
	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/images"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// Images. The bytes of an import go into the store of the controller that
// receives the stream (Server.Images); only the record goes through raft.
// On a follower, the record goes to the leader through RecordImage, with
// the importer's own credentials (so the leader authenticates, authorises
// and audits the importer, as for any forwarded write), after the leader
// has checked that the follower holds the bytes: it fetches their last
// byte from it with the import's peer key. Every controller then copies
// the bytes of each recorded image it lacks from a peer (RunImages), with
// the record's peer key, which only controllers know; hosts fetch them
// from any controller that has them (FetchImage), only for images their
// VMs use.
//
// Verification (controller/images): a file enters a store only whole and
// hashed; every read checks the SHA-256 of each 1 MiB chunk it serves
// against what was computed when the file was written (or, for a file
// already there when the controller started, when it is first opened,
// which hashes it whole). A damaged file is removed on the spot, the read
// fails with UNAVAILABLE (the agent goes to another controller), and the
// replication loop copies it again from a peer. A copy from a peer is
// verified whole before it enters the store.

const (
	// maxImageMessage bounds the data of one import message.
	maxImageMessage = 4 << 20
	// maxImageSize bounds an image file (and its virtual size): the
	// largest VM disk.
	maxImageSize = maxDisk
	// maxUserData and maxSSHKeys bound a VM's cloud-init seed.
	maxUserData   = 64 << 10
	maxSSHKeys    = 32
	maxSSHKeyLen  = 8 << 10
	peerKeyBytes  = 32
	imageSyncTick = 5 * time.Second
	// imageGCGrace: a file no record refers to is kept this long after
	// it was written (an import whose record is still on its way).
	imageGCGrace = 10 * time.Minute
	// peerCheckTimeout bounds the leader's check that a follower holds an
	// import's bytes.
	peerCheckTimeout = 15 * time.Second
)

// imageState is the runtime side of images on one controller: imports
// being recorded (their peer keys) and connections to peers.
type imageState struct {
	mu      sync.Mutex
	pending map[string]string // peer key -> sha256, imports not yet recorded
	conns   map[string]*grpc.ClientConn
	closed  bool
	kick    chan struct{}
	// failed remembers the last copy error per image, so that a copy
	// failing again every pass is logged once.
	failed map[string]string
}

func (st *imageState) init() {
	if st.pending == nil {
		st.pending, st.conns, st.failed = map[string]string{}, map[string]*grpc.ClientConn{}, map[string]string{}
		st.kick = make(chan struct{}, 1)
	}
}

func (st *imageState) addPending(key, sha string) func() {
	st.mu.Lock()
	st.init()
	st.pending[key] = sha
	st.mu.Unlock()
	return func() {
		st.mu.Lock()
		delete(st.pending, key)
		st.mu.Unlock()
	}
}

func (st *imageState) pendingOK(key, sha string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return key != "" && st.pending[key] == sha
}

func (st *imageState) pendingSHA(sha string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, s := range st.pending {
		if s == sha {
			return true
		}
	}
	return false
}

// wake makes RunImages look again now.
func (st *imageState) wake() {
	st.mu.Lock()
	st.init()
	k := st.kick
	st.mu.Unlock()
	select {
	case k <- struct{}{}:
	default:
	}
}

func (st *imageState) kickChan() chan struct{} {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.init()
	return st.kick
}

// conn is a connection to the controller at addr, kept for reuse.
func (st *imageState) conn(addr string, creds credentials.TransportCredentials) (*grpc.ClientConn, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.init()
	if st.closed {
		return nil, status.Error(codes.Unavailable, "the controller is shutting down")
	}
	if c, ok := st.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), grpc.WithKeepaliveParams(forwardKeepalive))
	if err != nil {
		return nil, err
	}
	st.conns[addr] = c
	return c, nil
}

func (st *imageState) close() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.closed = true
	for _, c := range st.conns {
		c.Close()
	}
	st.conns = nil
}

func newPeerKey() (string, error) {
	b := make([]byte, peerKeyBytes)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// ImageServer serves ImageService and ImagePeerService.
type ImageServer struct {
	yunchiv1.UnimplementedImageServiceServer
	yunchiv1.UnimplementedImagePeerServiceServer
	s *Server
}

// ImageService returns the image services of s.
func (s *Server) ImageService() *ImageServer { return &ImageServer{s: s} }

func formatToAPI(f statev1.ImageFormat) yunchiv1.ImageFormat   { return yunchiv1.ImageFormat(f) }
func formatFromAPI(f yunchiv1.ImageFormat) statev1.ImageFormat { return statev1.ImageFormat(f) }

func formatOfStore(f images.Format) statev1.ImageFormat {
	switch f {
	case images.QCOW2:
		return statev1.ImageFormat_IMAGE_FORMAT_QCOW2
	case images.Raw:
		return statev1.ImageFormat_IMAGE_FORMAT_RAW
	}
	return statev1.ImageFormat_IMAGE_FORMAT_UNSPECIFIED
}

func formatForStore(f yunchiv1.ImageFormat) images.Format {
	switch f {
	case yunchiv1.ImageFormat_IMAGE_FORMAT_QCOW2:
		return images.QCOW2
	case yunchiv1.ImageFormat_IMAGE_FORMAT_RAW:
		return images.Raw
	}
	return images.Unknown
}

// imageOut is r as the API shows it (never its peer key).
func (s *Server) imageOut(r *statev1.ImageRecord) *yunchiv1.Image {
	return &yunchiv1.Image{
		Name: r.Name, Project: r.Project, Public: r.Public, Sha256: r.Sha256, SizeBytes: r.SizeBytes,
		Format: formatToAPI(r.Format), VirtualSizeBytes: r.VirtualSizeBytes, CreatedAt: ts(r.CreatedUnixNano),
		Description: r.Description, Revision: r.Revision, VmCount: int32(s.store.ImageVMs(r)),
	}
}

// imageTarget names an image in audit records.
func imageTarget(project, name string, public bool) string {
	if public {
		return "public/image/" + name
	}
	return "project/" + project + "/image/" + name
}

// requireSysadmin refuses public images to everyone but infrastructure
// admins (calls without a caller are the controller's own).
func requireSysadmin(ctx context.Context, what string) error {
	p, ok := auth.FromContext(ctx)
	if !ok || p.Role == yunchiv1.Role_ROLE_SYSADMIN {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "permission denied: only an infrastructure admin (sysadmin) may %s public images (role %s)", what, auth.RoleName(p.Role))
}

// checkImageHeader validates an import's header against the state and
// returns it normalised (project resolved; "" for a public image).
func (s *Server) checkImageHeader(ctx context.Context, h *yunchiv1.ImageHeader) (*yunchiv1.ImageHeader, error) {
	if err := checkName("image name", h.GetName()); err != nil {
		return nil, err
	}
	out := &yunchiv1.ImageHeader{Name: h.Name, Public: h.Public, Format: h.Format, SizeBytes: h.SizeBytes, Sha256: h.Sha256, Description: h.Description}
	if h.Public {
		if err := requireSysadmin(ctx, "import"); err != nil {
			return nil, err
		}
	} else {
		p, err := projectOf(h.Project)
		if err != nil {
			return nil, err
		}
		if _, ok := s.store.ProjectDepartment(p); !ok {
			return nil, status.Errorf(codes.NotFound, "project %q not found", p)
		}
		out.Project = p
	}
	switch h.Format {
	case yunchiv1.ImageFormat_IMAGE_FORMAT_UNSPECIFIED, yunchiv1.ImageFormat_IMAGE_FORMAT_QCOW2, yunchiv1.ImageFormat_IMAGE_FORMAT_RAW:
	default:
		return nil, invalid("image format %d is unknown: use qcow2 or raw (or none: told from the bytes)", h.Format)
	}
	switch {
	case h.SizeBytes <= 0:
		return nil, invalid("size_bytes %d: give the file's exact size in bytes", h.SizeBytes)
	case h.SizeBytes > maxImageSize:
		return nil, invalid("image of %d bytes is larger than the %s a disk may be", h.SizeBytes, scheduler.FormatBytes(maxImageSize))
	case h.Sha256 != "" && !images.ValidSHA256(h.Sha256):
		return nil, invalid("sha256 %.80q is not 64 lowercase hex digits", h.Sha256)
	}
	if err := checkText("description", h.Description); err != nil {
		return nil, err
	}
	if _, ok := s.store.Image(out.Project, out.Name); ok {
		if out.Public {
			return nil, status.Errorf(codes.AlreadyExists, "public image %q already exists (see `yunchi image list`)", out.Name)
		}
		return nil, status.Errorf(codes.AlreadyExists, "image %q already exists in project %q (see `yunchi image list`)", out.Name, out.Project)
	}
	return out, nil
}

// imageAudit gives ctx the audit context of an image action by its
// caller (a stream has no audit interceptor; RecordImage is audited as the
// importer's ImportImage).
func imageAudit(ctx context.Context, action string, h *yunchiv1.ImageHeader) context.Context {
	c := audit.Context{Action: action, Target: imageTarget(h.Project, h.Name, h.Public), Params: audit.Params(h)}
	if p, ok := auth.FromContext(ctx); ok {
		c.Actor, c.Role, c.Department, c.TokenID, c.Source = p.Name, p.Role.String(), p.Department, p.TokenID, p.Source
	}
	if c.Source == "" {
		c.Source = auth.SourceOf(ctx)
	}
	return audit.WithContext(ctx, c)
}

// importReader turns the data messages of an import into a stream of
// bytes.
type importReader struct {
	stream yunchiv1.ImageService_ImportImageServer
	buf    []byte
}

func (r *importReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		m, err := r.stream.Recv()
		if err == io.EOF {
			return 0, io.EOF
		}
		if err != nil {
			return 0, err
		}
		if m.Header != nil {
			return 0, invalid("a second header came in the import: only the first message carries one")
		}
		if len(m.Data) > maxImageMessage {
			return 0, invalid("an import message carries %d bytes: at most %d (send the file in chunks of 1 MiB)", len(m.Data), maxImageMessage)
		}
		r.buf = m.Data
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// storeStatus is the status of an error of the image store.
func storeStatus(err error) error {
	var ie *images.InputError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ie):
		return invalid("%s", oneLine(ie.Msg))
	case errors.Is(err, syscall.ENOSPC):
		return status.Error(codes.ResourceExhausted, "this controller's image store is full: free space under its data directory, or import through another controller")
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	return status.Errorf(codes.Internal, "%s", oneLine(err.Error()))
}

// ImportImage stores the stream's bytes here and records the image
// (through the leader when this controller is a follower).
func (is *ImageServer) ImportImage(stream yunchiv1.ImageService_ImportImageServer) error {
	s := is.s
	ctx := stream.Context()
	first, err := stream.Recv()
	if err == io.EOF {
		return invalid("the import is empty: its first message must carry the header (name, size), the next ones the bytes")
	}
	if err != nil {
		return err
	}
	if first.Header == nil {
		return invalid("the first message of an import must carry the header (name, size), and no data")
	}
	if len(first.Data) > 0 {
		return invalid("the first message of an import carries the header only: send the bytes in the messages after it")
	}
	h, err := s.checkImageHeader(ctx, first.Header)
	if err != nil {
		if status.Code(err) == codes.PermissionDenied && s.AuditRecorder != nil {
			s.AuditRecorder.Denied(ctx, yunchiv1.ImageService_ImportImage_FullMethodName, codes.PermissionDenied, status.Convert(err).Message())
		}
		return err
	}
	if s.Images == nil {
		return status.Error(codes.Unavailable, "this controller keeps no image store: import through another controller")
	}
	ctx = imageAudit(ctx, "ImportImage", h)
	var (
		format images.Format
		vsize  int64
	)
	info, err := s.Images.Put(&importReader{stream: stream}, images.Expect{Size: h.SizeBytes, SHA256: h.Sha256,
		Check: func(r io.ReaderAt, n int64) error {
			f, v, err := images.Inspect(r, n, formatForStore(h.Format))
			if err == nil && v > maxImageSize {
				err = fmt.Errorf("the image's virtual size %s is larger than the %s a disk may be", scheduler.FormatBytes(v), scheduler.FormatBytes(maxImageSize))
			}
			format, vsize = f, v
			return err
		}})
	if err != nil {
		return storeStatus(err)
	}
	unpin := s.Images.Pin(info.SHA256)
	defer unpin()
	key, err := newPeerKey()
	if err != nil {
		s.dropUnrecorded(info.SHA256)
		return status.Errorf(codes.Internal, "make the image's peer key: %v", err)
	}
	rec := &statev1.ImageRecord{
		Name: h.Name, Project: h.Project, Public: h.Public, Sha256: info.SHA256, SizeBytes: info.Size,
		Format: formatOfStore(format), VirtualSizeBytes: vsize, Description: h.Description,
		SourceMember: s.self.ID, PeerKey: key,
	}
	out, err := s.recordImage(ctx, rec)
	if err != nil {
		unpin()
		s.dropUnrecorded(info.SHA256)
		return err
	}
	s.log.Info("image imported", "name", rec.Name, "project", rec.Project, "public", rec.Public, "sha256", rec.Sha256, "bytes", rec.SizeBytes, "format", format)
	s.imgs.wake()
	return stream.SendAndClose(out)
}

// dropUnrecorded removes the bytes of an import that was not recorded,
// unless something else refers to them.
func (s *Server) dropUnrecorded(sha string) {
	if s.store.ImageSHAs()[sha] || s.Images.Pinned(sha) || s.imgs.pendingSHA(sha) {
		return
	}
	if err := s.Images.Remove(sha); err != nil {
		s.log.Warn("could not remove the bytes of an import that was not recorded", "sha256", sha, "err", err)
	}
}

// recordImage records rec: here on the leader, else through the leader's
// RecordImage with the caller's credentials.
func (s *Server) recordImage(ctx context.Context, rec *statev1.ImageRecord) (*yunchiv1.Image, error) {
	if s.prop.IsLeader() {
		res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_CreateImage{CreateImage: &statev1.CreateImage{Image: rec}}})
		if err != nil {
			return nil, err
		}
		return s.imageOut(res.Image), nil
	}
	done := s.imgs.addPending(rec.PeerKey, rec.Sha256)
	defer done()
	req := &yunchiv1.RecordImageRequest{
		Header: &yunchiv1.ImageHeader{Name: rec.Name, Project: rec.Project, Public: rec.Public, Format: formatToAPI(rec.Format),
			SizeBytes: rec.SizeBytes, Sha256: rec.Sha256, Description: rec.Description},
		VirtualSizeBytes: rec.VirtualSizeBytes, SourceMember: rec.SourceMember, PeerKey: rec.PeerKey,
	}
	resp, err, _ := s.forwardToLeader(ctx, yunchiv1.ImagePeerService_RecordImage_FullMethodName, req)
	if err != nil {
		return nil, err
	}
	img := resp.(*yunchiv1.Image)
	// Answered once this controller has the record too: the image can be
	// used through it at once (and its bytes are no longer only pinned).
	if err := s.waitApplied(ctx, img.Revision); err != nil {
		s.log.Warn("image recorded by the leader, not yet applied here", "name", img.Name, "err", err)
	}
	return img, nil
}

// RecordImage records an image whose bytes a follower stored (the
// follower calls it on the leader with the importer's credentials).
func (is *ImageServer) RecordImage(ctx context.Context, req *yunchiv1.RecordImageRequest) (*yunchiv1.Image, error) {
	s := is.s
	if req.Header == nil {
		return nil, invalid("header is required")
	}
	h, err := s.checkImageHeader(ctx, req.Header)
	if err != nil {
		return nil, err
	}
	switch {
	case !images.ValidSHA256(h.Sha256):
		return nil, invalid("sha256 %.80q is not 64 lowercase hex digits", h.Sha256)
	case h.Format != yunchiv1.ImageFormat_IMAGE_FORMAT_QCOW2 && h.Format != yunchiv1.ImageFormat_IMAGE_FORMAT_RAW:
		return nil, invalid("format must be qcow2 or raw, as the bytes were found to be")
	case req.VirtualSizeBytes <= 0 || req.VirtualSizeBytes > maxImageSize:
		return nil, invalid("virtual size %d is out of range: 1 to %d bytes", req.VirtualSizeBytes, int64(maxImageSize))
	case len(req.PeerKey) < 16 || len(req.PeerKey) > 128:
		return nil, invalid("peer key is %d characters long: give 16 to 128", len(req.PeerKey))
	}
	if _, ok := s.store.Member(req.SourceMember); !ok {
		return nil, invalid("source member %q is not a controller of this cluster", req.SourceMember)
	}
	if err := s.checkPeerHolds(ctx, req.SourceMember, h.Sha256, h.SizeBytes, req.PeerKey); err != nil {
		return nil, err
	}
	ctx = imageAudit(ctx, "ImportImage", h)
	res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_CreateImage{CreateImage: &statev1.CreateImage{Image: &statev1.ImageRecord{
		Name: h.Name, Project: h.Project, Public: h.Public, Sha256: h.Sha256, SizeBytes: h.SizeBytes,
		Format: formatFromAPI(h.Format), VirtualSizeBytes: req.VirtualSizeBytes, Description: h.Description,
		SourceMember: req.SourceMember, PeerKey: req.PeerKey,
	}}}})
	if err != nil {
		return nil, err
	}
	return s.imageOut(res.Image), nil
}

// checkPeerHolds makes sure controller member holds the bytes sha (size
// bytes) under key: it fetches their last byte from it.
func (s *Server) checkPeerHolds(ctx context.Context, member, sha string, size int64, key string) error {
	refuse := func(why string) error {
		return status.Errorf(codes.FailedPrecondition, "controller %s does not hold the bytes of this import (%s): import the image again", member, oneLine(why))
	}
	failed := func(err error) error {
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			// Not an answer about the bytes: the import may be retried.
			return notProposed("cannot reach controller %s to check the import's bytes (%s): retry", member, oneLine(status.Convert(err).Message()))
		}
		return refuse(status.Convert(err).Message())
	}
	if member == s.self.ID {
		if !s.imgs.pendingOK(key, sha) || s.Images == nil || !s.Images.Has(sha) {
			return refuse("not an import this controller is recording")
		}
		return nil
	}
	m, ok := s.store.Member(member)
	if !ok || m.ApiAddress == "" {
		return refuse("its address is unknown")
	}
	conn, err := s.imgs.conn(m.ApiAddress, s.dialCreds())
	if err != nil {
		return status.Errorf(codes.Unavailable, "cannot reach controller %s: %v", member, err)
	}
	cctx, cancel := context.WithTimeout(ctx, peerCheckTimeout)
	defer cancel()
	st, err := yunchiv1.NewImagePeerServiceClient(conn).FetchImageBytes(cctx, &yunchiv1.FetchImageBytesRequest{Sha256: sha, Offset: size - 1, PeerKey: key})
	if err != nil {
		return failed(err)
	}
	ch, err := st.Recv()
	if err != nil {
		return failed(err)
	}
	if ch.Offset != size-1 || len(ch.Data) != 1 || ch.SizeBytes != size {
		return refuse(fmt.Sprintf("it has %d bytes, not %d", ch.SizeBytes, size))
	}
	return nil
}

// FetchImageBytes serves an image's bytes to another controller.
func (is *ImageServer) FetchImageBytes(req *yunchiv1.FetchImageBytesRequest, stream yunchiv1.ImagePeerService_FetchImageBytesServer) error {
	s := is.s
	ctx := stream.Context()
	if s.Auth != nil && s.Auth.PeerIdentity != nil {
		if kind, _, ok := s.Auth.PeerIdentity(ctx); !ok || kind != auth.KindController {
			return status.Error(codes.PermissionDenied, "permission denied: only controllers fetch image bytes from one another (hosts: FetchImage)")
		}
	}
	// The peer key is the credential (the method takes no token): a
	// missing or wrong one is refused alike, whether or not the image
	// exists.
	if !s.store.ImagePeerKeyOK(req.Sha256, req.PeerKey) && !s.imgs.pendingOK(req.PeerKey, req.Sha256) {
		return status.Error(codes.Unauthenticated, "image bytes are for controllers only: the peer key is missing or not the image's")
	}
	return s.serveImage(ctx, req.Sha256, req.Offset, stream.Send)
}

// FetchImage serves an image's bytes to a host that has a VM made from
// it.
func (s *Server) FetchImage(req *yunchiv1.FetchImageRequest, stream yunchiv1.AgentService_FetchImageServer) error {
	if err := checkHostID(req.HostId); err != nil {
		return err
	}
	if !images.ValidSHA256(req.Sha256) {
		return invalid("sha256 %.80q is not 64 lowercase hex digits", req.Sha256)
	}
	ctx := stream.Context()
	// The host learnt of the VM from some controller's state: this one may
	// be a moment behind.
	uses, err := s.awaitState(ctx, time.Second, func() bool { return s.hostUsesImage(req.HostId, req.Sha256) })
	if err != nil {
		return err
	}
	if !uses {
		return status.Errorf(codes.NotFound, "no VM assigned to host %s uses image %s", req.HostId, req.Sha256)
	}
	return s.serveImage(ctx, req.Sha256, req.Offset, stream.Send)
}

func (s *Server) hostUsesImage(host, sha string) bool {
	for _, v := range s.store.VMs("", host) {
		if v.GetImage().GetSha256() == sha {
			return true
		}
	}
	return false
}

// serveImage sends the stored bytes of sha from offset on, in chunks of
// images.ChunkSize aligned to the store's verification chunks.
func (s *Server) serveImage(ctx context.Context, sha string, offset int64, send func(*yunchiv1.ImageChunk) error) error {
	if s.Images == nil {
		return status.Error(codes.Unavailable, "this controller keeps no image store: fetch the image from another controller")
	}
	if offset < 0 {
		return invalid("offset %d is negative", offset)
	}
	r, err := s.Images.Open(sha, offset)
	if err != nil {
		return s.readStatus(sha, err)
	}
	defer r.Close()
	size := r.Size()
	if offset == size {
		return send(&yunchiv1.ImageChunk{Offset: offset, SizeBytes: size})
	}
	for off := offset; off < size; {
		if err := ctx.Err(); err != nil {
			return status.FromContextError(err).Err()
		}
		n := min(images.ChunkSize-off%images.ChunkSize, size-off)
		// A fresh buffer each time: a sent message may be read after Send
		// returns (stats handlers).
		buf := make([]byte, n)
		if _, err := r.ReadAt(buf, off); err != nil {
			return s.readStatus(sha, err)
		}
		if err := send(&yunchiv1.ImageChunk{Offset: off, Data: buf, SizeBytes: size}); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// readStatus is the status of a failure to read stored bytes.
func (s *Server) readStatus(sha string, err error) error {
	var ce *images.CorruptError
	var ie *images.InputError
	switch {
	case errors.Is(err, images.ErrNotFound):
		return status.Errorf(codes.Unavailable, "image %s not yet copied to this controller: retry, or fetch it from another controller", sha)
	case errors.As(err, &ce):
		s.imgs.wake() // copy it again now
		return status.Errorf(codes.Unavailable, "this controller's copy of image %s failed verification and is being copied again: fetch it from another controller", sha)
	case errors.As(err, &ie):
		return status.Errorf(codes.OutOfRange, "%s", oneLine(ie.Msg))
	}
	return status.Errorf(codes.Internal, "read image %s: %s", sha, oneLine(err.Error()))
}

// GetImage returns the project's image of that name, else the public one.
func (is *ImageServer) GetImage(ctx context.Context, req *yunchiv1.GetImageRequest) (*yunchiv1.Image, error) {
	s := is.s
	if err := checkName("image name", req.Name); err != nil {
		return nil, err
	}
	project, err := projectOf(req.Project)
	if err != nil {
		return nil, err
	}
	r, ok := s.store.GetImage(project, req.Name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "image %q not found in project %q nor among the public images (see `yunchi image list`)", req.Name, project)
	}
	return s.imageOut(r), nil
}

// ListImages lists the project's images and the public ones (every
// project's the caller sees when it names none).
func (is *ImageServer) ListImages(ctx context.Context, req *yunchiv1.ListImagesRequest) (*yunchiv1.ListImagesResponse, error) {
	s := is.s
	if req.Project != "" {
		if err := checkName("project", req.Project); err != nil {
			return nil, err
		}
	}
	size, after, err := imagePage(req.PageSize, req.PageToken)
	if err != nil {
		return nil, err
	}
	recs, more := s.store.ImagesPage(req.Project, after, size)
	out := &yunchiv1.ListImagesResponse{Images: make([]*yunchiv1.Image, 0, len(recs))}
	for _, r := range recs {
		if r.Public || auth.Sees(ctx, r.Project) {
			out.Images = append(out.Images, s.imageOut(r))
		}
	}
	if more {
		last := recs[len(recs)-1]
		out.NextPageToken = imageToken(state.ImageKey{Project: last.Project, Name: last.Name})
	}
	return out, nil
}

// DeleteImage removes an image's record; its bytes leave every
// controller's store with RunImages, once nothing refers to them.
func (is *ImageServer) DeleteImage(ctx context.Context, req *yunchiv1.DeleteImageRequest) (*yunchiv1.Image, error) {
	s := is.s
	if err := checkName("image name", req.Name); err != nil {
		return nil, err
	}
	project := ""
	if req.Public {
		if err := requireSysadmin(ctx, "delete"); err != nil {
			return nil, err
		}
	} else {
		p, err := projectOf(req.Project)
		if err != nil {
			return nil, err
		}
		project = p
	}
	ctx = audit.WithContext(ctx, audit.Context{Target: imageTarget(project, req.Name, req.Public)})
	res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_DeleteImage{DeleteImage: &statev1.DeleteImage{Project: project, Name: req.Name, Public: req.Public}}})
	if err != nil {
		return nil, err
	}
	s.imgs.wake()
	return s.imageOut(res.Image), nil
}

// imagePage reads an image list's page_size and page_token (the key of
// the last image given: "project NUL name", project "" when public).
func imagePage(size int32, token string) (int, state.ImageKey, error) {
	n, err := pageSize(size, defaultPageSize, maxPageSize)
	if err != nil || token == "" {
		return n, state.ImageKey{}, err
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	project, name, ok := strings.Cut(string(b), "\x00")
	if err != nil || !ok || project != "" && checkName("project", project) != nil || checkName("image name", name) != nil {
		return 0, state.ImageKey{}, badToken(token)
	}
	return n, state.ImageKey{Project: project, Name: name}, nil
}

func imageToken(k state.ImageKey) string {
	return base64.RawURLEncoding.EncodeToString([]byte(k.Project + "\x00" + k.Name))
}

// resolveImage is what a VM of project records of image name: the
// project's image, else the public one.
func (s *Server) resolveImage(project, name string) (*statev1.VMImage, error) {
	if err := checkName("image name", name); err != nil {
		return nil, err
	}
	r, ok := s.store.GetImage(project, name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "image %q not found in project %q nor among the public images (see `yunchi image list`)", name, project)
	}
	return &statev1.VMImage{Name: r.Name, Project: r.Project, Sha256: r.Sha256, Format: r.Format,
		SizeBytes: r.SizeBytes, VirtualSizeBytes: r.VirtualSizeBytes}, nil
}

// checkSeed validates a VM's cloud-init contents.
func checkSeed(userData string, keys []string) error {
	if len(userData) > maxUserData {
		return invalid("user data is %d bytes: at most %d (64 KiB)", len(userData), maxUserData)
	}
	if len(keys) > maxSSHKeys {
		return invalid("%d SSH keys: at most %d", len(keys), maxSSHKeys)
	}
	for i, k := range keys {
		switch {
		case strings.TrimSpace(k) == "":
			return invalid("SSH key %d is empty", i+1)
		case len(k) > maxSSHKeyLen:
			return invalid("SSH key %d is %d bytes long: at most %d", i+1, len(k), maxSSHKeyLen)
		case strings.ContainsAny(k, "\r\n\x00"):
			return invalid("SSH key %d spans lines: give each key as one line of an authorized_keys file", i+1)
		case !sshKeyLine(k):
			return invalid("SSH key %d (%.40q...) is not a public key line such as \"ssh-ed25519 AAAA... user@host\"", i+1, k)
		}
	}
	return nil
}

// sshKeyLine says whether k reads as an authorized_keys line: a key type
// (possibly after options) followed by its base64 blob.
func sshKeyLine(k string) bool {
	f := strings.Fields(k)
	for i := 0; i+1 < len(f); i++ {
		t := f[i]
		if strings.HasPrefix(t, "ssh-") || strings.HasPrefix(t, "ecdsa-sha2-") || strings.HasPrefix(t, "sk-") {
			_, err := base64.StdEncoding.DecodeString(f[i+1])
			return err == nil && len(f[i+1]) >= 16
		}
	}
	return false
}

// RunImages keeps this controller's image store in line with the state
// until ctx is done: it copies the bytes of every recorded image it lacks
// (or whose copy was found damaged) from a peer, the controller that
// recorded it first, resuming partial copies and verifying them, and
// removes files nothing refers to any more (after imageGCGrace). It looks
// after every change of state, and every few seconds to retry.
func (s *Server) RunImages(ctx context.Context) {
	if s.Images == nil {
		return
	}
	defer s.imgs.close()
	tick := time.NewTicker(imageSyncTick)
	defer tick.Stop()
	kick := s.imgs.kickChan()
	gc := true
	for {
		changed := s.store.Changed()
		if !s.member.Removed() {
			s.copyMissing(ctx)
			if gc {
				s.collectImages()
			}
		}
		gc = false
		select {
		case <-ctx.Done():
			return
		case <-changed:
			// Under a stream of writes, look at most a few times a
			// second: a pass reads every image record.
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		case <-kick:
			gc = true
		case <-tick.C:
			gc = true
		}
	}
}

// syncImages is one full pass of RunImages: copies, then cleanup.
func (s *Server) syncImages(ctx context.Context) {
	s.copyMissing(ctx)
	s.collectImages()
}

// copyMissing copies the bytes of every recorded image this controller
// lacks.
func (s *Server) copyMissing(ctx context.Context) {
	seen := map[string]bool{}
	for _, r := range s.store.Images() {
		if seen[r.Sha256] || s.Images.Has(r.Sha256) {
			continue
		}
		seen[r.Sha256] = true
		if err := s.copyImage(ctx, r); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.imgs.mu.Lock()
			s.imgs.init()
			repeat := s.imgs.failed[r.Sha256] == err.Error()
			s.imgs.failed[r.Sha256] = err.Error()
			s.imgs.mu.Unlock()
			if !repeat {
				s.log.Warn("image not copied yet; will retry", "name", r.Name, "sha256", r.Sha256, "err", err)
			}
		}
	}
}

// collectImages removes the files no image record or VM refers to.
func (s *Server) collectImages() {
	keep := s.store.ImageSHAs()
	removed, err := s.Images.GC(func(sha string) bool { return keep[sha] || s.imgs.pendingSHA(sha) }, imageGCGrace)
	if err != nil {
		s.log.Warn("image store cleanup failed", "err", err)
	}
	for _, sha := range removed {
		s.log.Info("image bytes removed: no image or VM refers to them", "sha256", sha)
	}
}

// copyImage copies the bytes of r from the first peer that has them: the
// one that recorded the image, then the others.
func (s *Server) copyImage(ctx context.Context, r *statev1.ImageRecord) error {
	ms, err := s.members()
	if err != nil {
		return err
	}
	var srcs []*yunchiv1.Member
	for _, m := range ms {
		if m.Id == r.SourceMember && m.Id != s.self.ID {
			srcs = append([]*yunchiv1.Member{m}, srcs...)
		} else if m.Id != s.self.ID && m.ApiAddress != "" {
			srcs = append(srcs, m)
		}
	}
	if len(srcs) == 0 {
		return errors.New("no other controller to copy it from")
	}
	var errs []string
	for _, m := range srcs {
		p, err := s.Images.Resume(r.Sha256, r.SizeBytes)
		if err != nil {
			return err
		}
		from := p.Offset()
		err = s.fetchFrom(ctx, m.ApiAddress, r, p)
		if err == nil {
			err = p.Commit() // verifies the whole; discards a mismatch
		}
		if err == nil {
			s.imgs.mu.Lock()
			delete(s.imgs.failed, r.Sha256)
			s.imgs.mu.Unlock()
			s.log.Info("image copied from a peer", "name", r.Name, "sha256", r.Sha256, "from", m.Id, "resumed_at", from, "bytes", r.SizeBytes)
			return nil
		}
		p.Close() // keeps what came, for the next source or pass
		errs = append(errs, m.Id+": "+oneLine(err.Error()))
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return errors.New(strings.Join(errs, "; "))
}

// fetchFrom appends to p what the controller at addr streams of r from
// p's offset on.
func (s *Server) fetchFrom(ctx context.Context, addr string, r *statev1.ImageRecord, p *images.Partial) error {
	conn, err := s.imgs.conn(addr, s.dialCreds())
	if err != nil {
		return err
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := yunchiv1.NewImagePeerServiceClient(conn).FetchImageBytes(cctx, &yunchiv1.FetchImageBytesRequest{Sha256: r.Sha256, Offset: p.Offset(), PeerKey: r.PeerKey})
	if err != nil {
		return err
	}
	for {
		ch, err := st.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return errors.New(status.Convert(err).Message())
		}
		if ch.SizeBytes != r.SizeBytes {
			return fmt.Errorf("it has %d bytes, the image %d", ch.SizeBytes, r.SizeBytes)
		}
		if ch.Offset != p.Offset() {
			return fmt.Errorf("it sent bytes at %d, %d were wanted", ch.Offset, p.Offset())
		}
		if _, err := p.Write(ch.Data); err != nil {
			return err
		}
	}
	if p.Offset() != r.SizeBytes {
		return fmt.Errorf("its stream ended at %d of %d bytes", p.Offset(), r.SizeBytes)
	}
	return nil
}
