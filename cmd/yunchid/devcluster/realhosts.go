package devcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/internal/qemuhost"
	"github.com/yunchi/yunchi/internal/tinyimage"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// TinyImage is the name of the public image `yunchid dev --real-hosts`
// imports: a Debian kernel and a busybox initramfs that boot in seconds
// under TCG and print tinyimage.Marker with the cloud-init hostname.
const TinyImage = "tiny"

// RealHosts are the private libvirtd hosts of --real-hosts and their
// agents.
type RealHosts struct {
	hosts []*qemuhost.Host
	// agents[i] is host i's running agent (nil while its center is down).
	agents []*agentRun
	start  func(i int) *agentRun
}

// Hosts are the running hosts, in id order.
func (rh *RealHosts) Hosts() []*qemuhost.Host { return rh.hosts }

// RestartAgent stops host i's agent (its guests run on) and starts a new
// one on a new libvirt connection, as a restarted yunchid agent would.
func (rh *RealHosts) RestartAgent(i int) {
	rh.agents[i].end()
	rh.agents[i] = rh.start(i)
}

// center is the center of real host i: they are dealt round the centers.
func (rh *RealHosts) center(i int) string { return Centers[i%len(Centers)].ID }

// RealHostID is the id of real host i (0-based).
func RealHostID(i int) string { return fmt.Sprintf("qemu-%d", i+1) }

// startRealHosts starts n private libvirtd hosts under dir, spread over the
// three centers, each with an in-process agent of ctls' cluster.
func startRealHosts(ctx context.Context, cfg Config, dir string, addrs []string, ctls []*running, lg *slog.Logger) (*RealHosts, error) {
	if why := qemuhost.Available(); why != "" {
		return nil, fmt.Errorf("--real-hosts: %s", why)
	}
	rh := &RealHosts{}
	var configs []agent.Config
	rh.start = func(i int) *agentRun {
		// Read here, on the caller's goroutine: the loop below appends to
		// configs while an earlier host's agent starts (a data race that
		// -race caught in TestRealHostIncrementalBackup).
		h, ac := rh.hosts[i], configs[i]
		ctx, stop := context.WithCancel(context.Background())
		ra := &agentRun{stop: stop, done: make(chan struct{})}
		go func() {
			defer close(ra.done)
			drv, err := h.Open()
			if err != nil {
				lg.Error("agent cannot open libvirt", "host", h.ID, "err", err)
				return
			}
			defer drv.Close()
			if err := agent.New(ac, drv).Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				lg.Error("agent stopped", "host", h.ID, "err", err)
			}
		}()
		return ra
	}
	for i := range cfg.RealHosts {
		id := RealHostID(i)
		c := Centers[centerIndex(rh.center(i))]
		fmt.Fprintf(cfg.Out, "yunchi dev: starting real host %s (private libvirtd + QEMU, center %s)\n", id, c.ID)
		h, err := qemuhost.Start(ctx, id, filepath.Join(dir, "real", id))
		if err != nil {
			rh.close()
			return nil, err
		}
		rh.hosts = append(rh.hosts, h)
		tok, err := issueHostToken(ctx, ctls, id)
		if err != nil {
			rh.close()
			return nil, fmt.Errorf("host %s: %w", id, err)
		}
		// Each host serves the mirrors of other centers' platinum VMs on
		// loopback, on ports of its own: BasePort+100+20i.. (the API,
		// raft and control ports are BasePort..BasePort+20).
		mirrorPorts := cfg.BasePort + 100 + 20*i
		configs = append(configs, h.AgentConfig(agent.Config{
			Center: c.ID, Site: c.Site, Rack: "r-qemu", Labels: map[string]string{"hypervisor": "qemu"},
			Controllers: rotate(addrs, i), Logger: lg, Token: tok,
			Mirror: agent.MirrorExportConfig{Dir: filepath.Join(h.Dir, "mirror"), Host: "127.0.0.1", PortMin: mirrorPorts, PortMax: mirrorPorts + 19},
		}))
		rh.agents = append(rh.agents, rh.start(i))
	}
	return rh, nil
}

// close stops the agents, then the hosts (their guests with them).
func (rh *RealHosts) close() {
	if rh == nil {
		return
	}
	for _, a := range rh.agents {
		a.end()
	}
	for _, h := range rh.hosts {
		if err := h.Stop(); err != nil {
			slog.Warn("stopping real host", "host", h.ID, "err", err)
		}
	}
}

// importTinyImage builds the tiny image (cached under cacheDir) and imports
// it as the public image "tiny", unless the cluster has it already.
func importTinyImage(ctx context.Context, out io.Writer, cc grpc.ClientConnInterface, cacheDir string) error {
	ic := yunchiv1.NewImageServiceClient(cc)
	if _, err := ic.GetImage(ctx, &yunchiv1.GetImageRequest{Name: TinyImage}); err == nil {
		fmt.Fprintf(out, "yunchi dev: image %q is there already\n", TinyImage)
		return nil
	} else if status.Code(err) != codes.NotFound {
		return fmt.Errorf("image %s: %w", TinyImage, err)
	}
	if why := tinyimage.Available(); why != "" {
		return fmt.Errorf("--real-hosts: cannot build the tiny image: %s", why)
	}
	fmt.Fprintf(out, "yunchi dev: building the tiny image from Debian's kernel and busybox (cached in %s)\n", cacheDir)
	begun := time.Now()
	path, err := tinyimage.Build(ctx, cacheDir)
	if err != nil {
		return err
	}
	img, err := ImportImage(ctx, cc, path, &yunchiv1.ImageHeader{Name: TinyImage, Public: true,
		Description: "tiny test guest: Debian kernel + busybox; prints " + tinyimage.Marker + " and its cloud-init hostname"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "yunchi dev: imported public image %q (%d bytes, sha256 %s) in %s\n", img.Name, img.SizeBytes, img.Sha256[:12], time.Since(begun).Round(time.Millisecond))
	return nil
}

// ImportImage streams the file at path into ImageService.ImportImage under
// hdr (size and sha256 are filled in from the file).
func ImportImage(ctx context.Context, cc grpc.ClientConnInterface, path string, hdr *yunchiv1.ImageHeader) (*yunchiv1.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, err
	}
	hdr.SizeBytes, hdr.Sha256 = n, hex.EncodeToString(h.Sum(nil))
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	stream, err := yunchiv1.NewImageServiceClient(cc).ImportImage(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&yunchiv1.ImportImageRequest{Header: hdr}); err != nil {
		return nil, err
	}
	buf := make([]byte, 1<<20)
	for {
		k, rerr := f.Read(buf)
		if k > 0 {
			if err := stream.Send(&yunchiv1.ImportImageRequest{Data: buf[:k]}); err != nil {
				break // the answer says why
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return nil, rerr
		}
	}
	return stream.CloseAndRecv()
}
