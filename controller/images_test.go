package controller

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/internal/apitest"
	"github.com/yunchi/yunchi/internal/pki"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// testQCOW2 is a qcow2 version 3 header for a disk of vsize bytes, then
// n-512 bytes of pattern (the store and the API only read the header).
func testQCOW2(vsize uint64, n int) []byte {
	b := make([]byte, n)
	copy(b, "QFI\xfb")
	binary.BigEndian.PutUint32(b[4:], 3)
	binary.BigEndian.PutUint32(b[20:], 16)
	binary.BigEndian.PutUint64(b[24:], vsize)
	binary.BigEndian.PutUint32(b[100:], 104)
	for i := 512; i < n; i++ {
		b[i] = byte(i*31 + i/4096)
	}
	return b
}

// fetchImage is what FetchImage from addr streams as host from offset:
// the bytes, and the error that ended the stream (nil at its end).
func fetchImage(t *testing.T, addr, hostToken, host, sha string, offset int64) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+hostToken)
	st, err := yunchiv1.NewAgentServiceClient(dial(t, addr)).FetchImage(ctx, &yunchiv1.FetchImageRequest{HostId: host, Sha256: sha, Offset: offset})
	if err != nil {
		return nil, err
	}
	var out []byte
	for next := offset; ; {
		ch, err := st.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if ch.Offset != next || len(ch.Data) > 1<<20 {
			t.Fatalf("chunk of %d bytes at %d, want at most 1 MiB at %d", len(ch.Data), ch.Offset, next)
		}
		next += int64(len(ch.Data))
		out = append(out, ch.Data...)
	}
}

// Images on a 3-controller cluster with authentication:
//   - an import through a follower is stored there and recorded through
//     the leader (audited as the importer's ImportImage), and the record
//     reaches every controller;
//   - every controller copies the bytes from a peer and verifies them;
//   - a host whose VM uses the image fetches it from any controller, from
//     an offset (a resumed transfer); a host without such a VM is told
//     NOT_FOUND;
//   - a byte flipped in one controller's stored file is caught when the
//     chunk is read (the chunks before it are served, it is not), the file
//     is dropped and copied again from a peer, and then served intact;
//   - the image cannot be deleted while its VM exists, and can once the VM
//     is gone; its bytes then leave every controller.
func TestImagesAcrossControllers(t *testing.T) {
	c := &inmemCluster{t: t, auth: true}
	for _, id := range []string{"a1", "a2", "b1"} {
		c.members = append(c.members, &member{id: id, center: id, dir: t.TempDir()})
	}
	c.form(nil)
	leader := c.leader()
	var followers []*member
	for _, m := range c.members {
		if m != leader {
			followers = append(followers, m)
		}
	}
	follower, other := followers[0], followers[1]
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	}
	sys := as(c.admins.Sysadmin)
	conn := dial(t, follower.ctl.Addr())

	// Two hosts, known by their tokens.
	hostTok := map[string]string{}
	for _, h := range []string{"h1", "h2"} {
		r, err := yunchiv1.NewTokenServiceClient(conn).CreateToken(as(c.admins.Secadmin), &yunchiv1.CreateTokenRequest{HostId: h})
		if err != nil {
			t.Fatal(err)
		}
		hostTok[h] = r.Secret
		_, err = yunchiv1.NewAgentServiceClient(conn).RegisterHost(as(r.Secret), &yunchiv1.RegisterHostRequest{Facts: &yunchiv1.HostFacts{
			Id: h, Center: "a1", Hostname: h, Capacity: &yunchiv1.Resources{Vcpus: 16, MemoryBytes: 64 * gib, DiskBytes: 1000 * gib}}})
		if err != nil {
			t.Fatalf("register %s: %v", h, err)
		}
	}

	// Import through a follower, in 1 MiB messages, the hash declared.
	data := testQCOW2(2*uint64(gib), 5<<20+4321)
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	st, err := yunchiv1.NewImageServiceClient(conn).ImportImage(sys)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&yunchiv1.ImportImageRequest{Header: &yunchiv1.ImageHeader{Name: "tiny", SizeBytes: int64(len(data)), Sha256: sha, Description: "test image"}}); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += 1 << 20 {
		if err := st.Send(&yunchiv1.ImportImageRequest{Data: data[off:min(off+1<<20, len(data))]}); err != nil {
			t.Fatal(err)
		}
	}
	img, err := st.CloseAndRecv()
	if err != nil {
		t.Fatalf("import through follower %s: %v", follower.id, err)
	}
	if img.Sha256 != sha || img.Format != yunchiv1.ImageFormat_IMAGE_FORMAT_QCOW2 || img.VirtualSizeBytes != 2*gib || img.Project != "default" {
		t.Fatalf("imported %v", img)
	}
	// The follower answered once it had the record itself.
	if rec, ok := follower.ctl.Node().Store.Image("default", "tiny"); !ok || rec.SourceMember != follower.id {
		t.Fatalf("follower's record %v %v, want source %s", rec, ok, follower.id)
	}
	for _, m := range c.members {
		apitest.Eventually(t, 10*time.Second, "the record on "+m.id, func() bool {
			_, ok := m.ctl.Node().Store.Image("default", "tiny")
			return ok
		})
		apitest.Eventually(t, 20*time.Second, "the bytes on "+m.id, func() bool { return m.ctl.api.Images.Has(sha) })
		if err := m.ctl.api.Images.Verify(sha); err != nil {
			t.Fatalf("%s's copy: %v", m.id, err)
		}
	}
	// Audited once, by Apply, as the importer's ImportImage.
	ar, err := yunchiv1.NewAuditServiceClient(dial(t, leader.ctl.Addr())).ListAudit(as(c.admins.Auditor), &yunchiv1.ListAuditRequest{Action: "ImportImage"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ar.Records) != 1 || ar.Records[0].Actor != "sysadmin" || ar.Records[0].Target != "project/default/image/tiny" || ar.Records[0].Result != "ok" ||
		strings.Contains(ar.Records[0].Params, "peer") {
		t.Fatalf("audit records of the import: %v", ar.Records)
	}

	// A VM made from it, on h1.
	vm, err := yunchiv1.NewVMServiceClient(conn).CreateVM(sys, &yunchiv1.CreateVMRequest{Name: "web", Vcpus: 1, Memory: "1GiB", Image: "tiny",
		Constraints: []string{"host=h1"}, SshAuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f alice@example"}})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Image != "tiny" || vm.ImageSha256 != sha || vm.DiskBytes != 2*gib || vm.HostId != "h1" || len(vm.SshAuthorizedKeys) != 1 {
		t.Fatalf("vm %v", vm)
	}

	// h1 fetches it from every controller, resuming at an offset; h2 may not.
	for _, m := range c.members {
		off := int64(1<<20 + 17)
		got, err := fetchImage(t, m.ctl.Addr(), hostTok["h1"], "h1", sha, off)
		if err != nil || !bytes.Equal(got, data[off:]) {
			t.Fatalf("h1 from %s at %d: %d bytes, %v", m.id, off, len(got), err)
		}
		if _, err := fetchImage(t, m.ctl.Addr(), hostTok["h2"], "h2", sha, 0); status.Code(err) != codes.NotFound {
			t.Fatalf("h2 from %s: %v, want NOT_FOUND", m.id, err)
		}
	}
	// A host may not ask in another host's name.
	if _, err := fetchImage(t, leader.ctl.Addr(), hostTok["h2"], "h1", sha, 0); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("h2 as h1: %v", err)
	}

	// A flipped byte on one controller: caught, not served, copied again.
	path := other.ctl.api.Images.Path(sha)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{data[3<<20+9] ^ 0x20}, 3<<20+9); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := fetchImage(t, other.ctl.Addr(), hostTok["h1"], "h1", sha, 0)
	if s := status.Convert(err); s.Code() != codes.Unavailable || !strings.Contains(s.Message(), "failed verification") || !bytes.Equal(got, data[:3<<20]) {
		t.Fatalf("the damaged copy on %s: %d bytes, then %v; want the 3 intact MiB and UNAVAILABLE", other.id, len(got), err)
	}
	apitest.Eventually(t, 20*time.Second, "the damaged copy replaced on "+other.id, func() bool {
		got, err := fetchImage(t, other.ctl.Addr(), hostTok["h1"], "h1", sha, 0)
		return err == nil && bytes.Equal(got, data)
	})

	// Not deleted while the VM exists; deleted once it is gone.
	images := yunchiv1.NewImageServiceClient(conn)
	_, err = images.DeleteImage(sys, &yunchiv1.DeleteImageRequest{Name: "tiny"})
	if s := status.Convert(err); s.Code() != codes.FailedPrecondition || !strings.Contains(s.Message(), "used by 1 VM(s) (default/web)") {
		t.Fatalf("delete while in use: %v", err)
	}
	if _, err := yunchiv1.NewVMServiceClient(conn).DeleteVM(sys, &yunchiv1.VMActionRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := yunchiv1.NewAgentServiceClient(conn).ReportVMStatus(as(hostTok["h1"]), &yunchiv1.ReportVMStatusRequest{HostId: "h1",
		Statuses: []*yunchiv1.VMStatus{{VmId: vm.Id, Gone: true}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := images.DeleteImage(sys, &yunchiv1.DeleteImageRequest{Name: "tiny"}); err != nil {
		t.Fatalf("delete after the VM: %v", err)
	}
	for _, m := range c.members {
		apitest.Eventually(t, 10*time.Second, "the record gone from "+m.id, func() bool {
			_, ok := m.ctl.Node().Store.Image("default", "tiny")
			return !ok
		})
		// Bytes stay a grace period after they were written (an import's
		// record may still be on its way): age them.
		old := time.Now().Add(-time.Hour)
		os.Chtimes(m.ctl.api.Images.Path(sha), old, old)
	}
	for _, m := range c.members {
		apitest.Eventually(t, 15*time.Second, "the bytes gone from "+m.id, func() bool { return !m.ctl.api.Images.Has(sha) })
	}
}

// With TLS, controllers copy image bytes with their certificates (and the
// record's peer key): an import through a follower reaches every
// controller; a caller without a controller certificate is refused the
// bytes even with the right key.
func TestImagesTLS(t *testing.T) {
	c := &tlsCluster{t: t, dir: t.TempDir()}
	c1, err := c.start(Config{ID: "c1", Center: "a1", Bootstrap: true})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(TLSDir(filepath.Join(c.dir, "c1")))
	if err != nil {
		t.Fatal(err)
	}
	c.pool = ca.Pool()
	apitest.Eventually(t, 20*time.Second, "the administrators' tokens", func() bool {
		toks, err := ReadAdminTokens(filepath.Join(c.dir, "c1"))
		c.admin = toks.Sysadmin
		return err == nil
	})
	apitest.Eventually(t, 20*time.Second, "c1 leads", func() bool {
		st, err := c.status(c1.Addr())
		return err == nil && st.LeaderId == "c1"
	})
	for _, id := range []string{"c2", "c3"} {
		j := c.joinToken(yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER, 0)
		if _, err := c.start(Config{ID: id, Center: "a2", Join: []string{c1.Addr()}, JoinToken: j.Token, CACertHash: c1.CAHash()}); err != nil {
			t.Fatal(err)
		}
	}
	apitest.Eventually(t, 30*time.Second, "3 voters seen by each controller", func() bool {
		for _, ctl := range c.ctls {
			st, err := c.status(ctl.Addr())
			if err != nil || !apitest.Formed(st, 3) {
				return false
			}
		}
		return true
	})
	var follower *Controller
	for _, ctl := range c.ctls {
		if !ctl.Node().IsLeader() {
			follower = ctl
			break
		}
	}
	data := bytes.Repeat([]byte("raw disk sector "), 200_000) // 3.2 MB, raw
	var img *yunchiv1.Image
	if err := retryElection(func(ctx context.Context) error {
		st, err := yunchiv1.NewImageServiceClient(c.conn(follower.Addr(), nil)).ImportImage(ctx)
		if err != nil {
			return err
		}
		if err := st.Send(&yunchiv1.ImportImageRequest{Header: &yunchiv1.ImageHeader{Name: "disk", Public: true, SizeBytes: int64(len(data))}}); err != nil {
			return err
		}
		for off := 0; off < len(data); off += 1 << 20 {
			if err := st.Send(&yunchiv1.ImportImageRequest{Data: data[off:min(off+1<<20, len(data))]}); err != nil {
				return err
			}
		}
		img, err = st.CloseAndRecv()
		return err
	}); err != nil {
		t.Fatalf("import through a follower: %v", err)
	}
	if !img.Public || img.Format != yunchiv1.ImageFormat_IMAGE_FORMAT_RAW || img.VirtualSizeBytes != int64(len(data)) {
		t.Fatalf("imported %v", img)
	}
	for _, ctl := range c.ctls {
		apitest.Eventually(t, 20*time.Second, "the bytes on "+ctl.cfg.ID, func() bool { return ctl.api.Images.Has(img.Sha256) })
	}
	rec, _ := c1.Node().Store.Image("", "disk")
	st, err := yunchiv1.NewImagePeerServiceClient(c.conn(c1.Addr(), nil)).FetchImageBytes(context.Background(), &yunchiv1.FetchImageBytesRequest{Sha256: img.Sha256, PeerKey: rec.PeerKey})
	if err == nil {
		_, err = st.Recv()
	}
	wantCode(t, "image bytes to a user", err, codes.PermissionDenied, "only controllers fetch image bytes")
}
