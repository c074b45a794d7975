package agent_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// imageServer is a controller that also serves one image, with faults: the
// first stream breaks after breakAt bytes, and the first corrupt complete
// copies carry a flipped byte.
type imageServer struct {
	*server
	data    []byte
	breakAt int64

	mu      sync.Mutex
	offsets []int64 // offset of each FetchImage call
	broken  bool
	corrupt int // complete copies still to corrupt
	copies  int // copies served in full (or up to the end)
}

const chunk = 256 << 10

func (s *imageServer) FetchImage(req *yunchiv1.FetchImageRequest, stream grpc.ServerStreamingServer[yunchiv1.ImageChunk]) error {
	sum := sha256.Sum256(s.data)
	if req.GetSha256() != hex.EncodeToString(sum[:]) {
		return status.Error(codes.NotFound, "no such image")
	}
	s.mu.Lock()
	s.offsets = append(s.offsets, req.GetOffset())
	breakNow := !s.broken && s.breakAt > 0
	s.broken = true
	corrupt := !breakNow && s.corrupt > 0
	if corrupt {
		s.corrupt--
	}
	s.copies++
	s.mu.Unlock()
	size := int64(len(s.data))
	for off := req.GetOffset(); off < size; off += chunk {
		if breakNow && off >= s.breakAt {
			return status.Error(codes.Unavailable, "stream cut by the test")
		}
		b := append([]byte(nil), s.data[off:min(off+chunk, size)]...)
		if corrupt && off+int64(len(b)) > size/2 && off <= size/2 {
			b[size/2-off] ^= 0xff
		}
		if err := stream.Send(&yunchiv1.ImageChunk{Offset: off, Data: b, SizeBytes: size}); err != nil {
			return err
		}
	}
	return nil
}

func serveImage(t *testing.T, c *controller, img *imageServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	img.server = &server{c: c, addr: lis.Addr().String()}
	srv := grpc.NewServer()
	yunchiv1.RegisterAgentServiceServer(srv, img)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func imageVM(data []byte) *yunchiv1.Assignment {
	sum := sha256.Sum256(data)
	as := vm(vmA, "web", running)
	as.DiskBytes = int64(len(data))
	as.Image = &yunchiv1.ImageRef{Sha256: hex.EncodeToString(sum[:]), Format: yunchiv1.ImageFormat_IMAGE_FORMAT_RAW,
		SizeBytes: int64(len(data)), VirtualSizeBytes: int64(len(data))}
	return as
}

func randomImage(t *testing.T) []byte {
	data := make([]byte, 3<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	return data
}

// An image is fetched the first time a VM needs it: a stream cut midway
// resumes from what the agent holds, a copy with a damaged chunk is found
// out by its hash and fetched again, and only a verified file is booted.
func TestImageFetchResumesAndRefetchesCorrupt(t *testing.T) {
	data := randomImage(t)
	img := &imageServer{data: data, breakAt: 1 << 20, corrupt: 1}
	c := newController()
	cfg := config(t, serveImage(t, c, img))
	cfg.ImageDir = t.TempDir()
	d := &spy{Driver: smallHost(t)}
	start(t, cfg, d)
	c.put(imageVM(data))

	eventually(t, "running", func() bool { return c.phase(vmA) == yunchiv1.VMPhase_VM_PHASE_RUNNING })
	img.mu.Lock()
	offsets := append([]int64(nil), img.offsets...)
	img.mu.Unlock()
	// Cut at 1 MiB: resumed there; the resumed copy was corrupt: from 0 again.
	if len(offsets) != 3 || offsets[0] != 0 || offsets[1] != 1<<20 || offsets[2] != 0 {
		t.Fatalf("fetch offsets %v, want [0 %d 0]", offsets, 1<<20)
	}
	sum := sha256.Sum256(data)
	path := filepath.Join(cfg.ImageDir, hex.EncodeToString(sum[:])+".raw")
	got, err := os.ReadFile(path)
	if err != nil || sha256.Sum256(got) != sum {
		t.Fatalf("cached image %s: %v, or not the image's bytes", path, err)
	}
	if n := d.defines.Load(); n != 1 {
		t.Fatalf("%d defines, want 1 (after the image was verified)", n)
	}
	var progress bool
	for _, st := range c.reportsFor(vmA) {
		progress = progress || strings.Contains(st.GetMessage(), "fetching image")
	}
	if !progress {
		t.Error("no report said the image was being fetched")
	}
	entries, _ := os.ReadDir(cfg.ImageDir)
	if len(entries) != 1 {
		t.Errorf("image cache holds %d files, want only the image (no .part)", len(entries))
	}
}

// Copies that never hash right fail the VM with the reason, after a few
// attempts, and nothing is defined from them.
func TestImageThatNeverVerifiesFailsTheVM(t *testing.T) {
	data := randomImage(t)
	img := &imageServer{data: data, corrupt: 100}
	c := newController()
	cfg := config(t, serveImage(t, c, img))
	cfg.ImageDir = t.TempDir()
	d := &spy{Driver: smallHost(t)}
	start(t, cfg, d)
	c.put(imageVM(data))

	eventually(t, "failed", func() bool { return c.phase(vmA) == yunchiv1.VMPhase_VM_PHASE_FAILED })
	reports := c.reportsFor(vmA)
	if msg := reports[len(reports)-1].GetMessage(); !strings.Contains(msg, "did not match its sha256") {
		t.Fatalf("failure message %q", msg)
	}
	if n := d.defines.Load(); n != 0 {
		t.Fatalf("%d defines from an image that never verified", n)
	}
	// And it is not fetched again at every reconcile: the copies on the
	// controllers are damaged, which no retry within seconds mends.
	time.Sleep(500 * time.Millisecond)
	img.mu.Lock()
	copies := img.copies
	img.mu.Unlock()
	if copies != 3 {
		t.Fatalf("%d copies fetched, want 3 attempts", copies)
	}
}

// VMs created together from one image (their domains are made several at
// once) fetch it once, also when a damaged copy in the cache (hashed by
// each before it is thrown away) makes the race for the fetch wide.
func TestImageFetchedOnceForManyVMs(t *testing.T) {
	data := randomImage(t)
	img := &imageServer{data: data}
	c := newController()
	cfg := config(t, serveImage(t, c, img))
	cfg.ImageDir = t.TempDir()
	sum := sha256.Sum256(data)
	damaged := append([]byte(nil), data...)
	damaged[len(damaged)/2] ^= 1
	if err := os.WriteFile(filepath.Join(cfg.ImageDir, hex.EncodeToString(sum[:])+".raw"), damaged, 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, cfg, &spy{Driver: smallHost(t)})
	var ids []string
	var all []*yunchiv1.Assignment
	for i := range 6 {
		as := imageVM(data)
		as.VmId = fmt.Sprintf("6f1d0c1e-0a6b-4c1f-8f0e-2d9b8a7c6e%02d", i)
		as.Name = fmt.Sprintf("web-%d", i)
		ids = append(ids, as.VmId)
		all = append(all, as)
	}
	c.put(all...) // one set: the agent makes their domains together
	eventually(t, "all running", func() bool {
		for _, id := range ids {
			if c.phase(id) != yunchiv1.VMPhase_VM_PHASE_RUNNING {
				return false
			}
		}
		return true
	})
	img.mu.Lock()
	defer img.mu.Unlock()
	if len(img.offsets) != 1 {
		t.Fatalf("%d fetches of one image for 6 VMs, want 1", len(img.offsets))
	}
}
