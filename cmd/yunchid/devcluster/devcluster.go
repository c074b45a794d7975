// Package devcluster is `yunchid dev`: the embedded default cluster. Three
// controllers (one voter per center: a1 production, a2 same-city DR, b1
// remote DR) and simulated hosts whose totals match the 环保云 (45 servers,
// 14 TiB memory, 700 TB disk), each a real agent on its own connection to
// libvirt's test driver, loaded with that host's node XML.
package devcluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/controller"
	"github.com/yunchi/yunchi/internal/bearer"
	"github.com/yunchi/yunchi/internal/cliconfig"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// DefaultBasePort is the first controller's API port (`yunchid dev --port`).
const DefaultBasePort = 8470

// Config of the dev cluster.
type Config struct {
	// DataDir keeps state across runs; empty = a temp dir removed at exit.
	DataDir string
	// BasePort is the first controller's API port (8470); the others use
	// the next two; raft uses BasePort+10..12.
	BasePort int
	// Hosts is the number of simulated hosts (45; none by default when
	// RealHosts is set).
	Hosts int
	// RealHosts is the number of real hosts: private libvirtd + QEMU
	// daemons on this machine (needs root and libvirt-daemon-system,
	// qemu-system-x86), with the public image "tiny" imported to boot.
	RealHosts int
	// CacheDir keeps the tiny image between runs (default: the user's
	// cache dir, e.g. ~/.cache/yunchi).
	CacheDir string
	Out      io.Writer
	Logger   *slog.Logger
	// Ready, if set, is called with the API addresses once every host is up.
	Ready func(addrs []string)
	// RealReady, if set, is called then with the real hosts (tests).
	RealReady func(*RealHosts)
	// Centers, if set, is called then with what takes centers down and
	// up (tests; a person uses `yunchid dev center`).
	Centers func(*Control)
	// NoLogin: do not store the sysadmin's token in the yunchi CLI's
	// config (by default `yunchid dev` logs the CLI in, so that `yunchi`
	// works against it with no flags).
	NoLogin bool
}

// Centers of the "two sites, three centers" layout. The controller of
// each DR center keeps its backup repository.
var Centers = []struct {
	ID, Site, Role string
	role           yunchiv1.CenterRole
	repository     bool
}{
	{"a1", "a", "production", yunchiv1.CenterRole_CENTER_ROLE_PRODUCTION, false},
	{"a2", "a", "same-city DR", yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR, true},
	{"b1", "b", "remote DR", yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR, true},
}

// declareCenters declares the centers, each DR center's repository kept
// by its controller (the controller ids are the center names).
func declareCenters(ctx context.Context, c yunchiv1.TopologyServiceClient) error {
	for _, ce := range Centers {
		req := &yunchiv1.SetCenterRequest{Name: ce.ID, Site: ce.Site, Role: ce.role, Description: ce.Role}
		if ce.repository {
			req.RepositoryMember = ce.ID
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := c.SetCenter(ctx, req)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("declare center %s: %w", ce.ID, err)
			}
			if err := sleep(ctx, 200*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// HostSpec is one simulated server.
type HostSpec struct {
	ID, Center, Site, Rack  string
	Sockets, Cores, Threads int
	MemoryBytes, DiskBytes  int64
}

// VCPUs is the number of hardware threads.
func (h HostSpec) VCPUs() int { return h.Sockets * h.Cores * h.Threads }

const (
	gib = int64(1) << 30
	tb  = int64(1000 * 1000 * 1000 * 1000)
)

// Hosts lays out n simulated servers. For n = 45 the totals are those of the
// 环保云: 34 x 256 GiB + 11 x 512 GiB = 14 TiB of memory; 25 x 16 TB +
// 20 x 15 TB = 700 TB of disk. Centers get 21 / 12 / 12 hosts (the
// production center is the biggest), racks hold up to 6 hosts.
func Hosts(n int) []HostSpec {
	perCenter := []int{n - 2*(n*12/45), n * 12 / 45, n * 12 / 45}
	var out []HostSpec
	j := 0
	for ci, c := range Centers {
		for k := 0; k < perCenter[ci]; k++ {
			h := HostSpec{
				ID: fmt.Sprintf("%s-h%02d", c.ID, k+1), Center: c.ID, Site: c.Site,
				Rack:    fmt.Sprintf("%s-r%d", c.ID, k/6+1),
				Sockets: 2, Cores: 16, Threads: 2, MemoryBytes: 256 * gib, DiskBytes: 15 * tb,
			}
			if j%4 == 1 { // 11 of 45: the big-memory servers
				h.Cores, h.MemoryBytes = 24, 512*gib
			}
			if j < n*25/45 {
				h.DiskBytes = 16 * tb
			}
			out = append(out, h)
			j++
		}
	}
	return out
}

// Run starts everything, prints how to use it and blocks until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.BasePort == 0 {
		cfg.BasePort = DefaultBasePort
	}
	if cfg.Hosts < 0 || (cfg.Hosts == 0 && cfg.RealHosts == 0) {
		cfg.Hosts = 45
	}
	if cfg.RealHosts < 0 {
		return fmt.Errorf("--real-hosts %d: give 0 or more", cfg.RealHosts)
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	dir := cfg.DataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "yunchi-dev-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	if err := os.MkdirAll(filepath.Join(dir, "hosts"), 0o700); err != nil {
		return err
	}

	// Bound first: a busy port fails dev before anything starts.
	ctlLis, err := listenControl(cfg.BasePort)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	centers := newControl(ctx, lg, func(err error) {
		select {
		case errc <- err:
		default: // the first failure ends dev
		}
		cancel()
	})
	defer centers.shutdown() // waits for every agent and controller to end
	ctlSrv := serveControl(ctlLis, centers, lg)
	defer ctlSrv.Close()
	var addrs []string
	var admins controller.AdminTokens
	for i, c := range Centers {
		api := fmt.Sprintf("127.0.0.1:%d", cfg.BasePort+i)
		ccfg := controller.Config{
			ID: c.ID, Center: c.ID, Listen: api,
			RaftListen: fmt.Sprintf("127.0.0.1:%d", cfg.BasePort+10+i),
			DataDir:    filepath.Join(dir, "controllers", c.ID), FastRaft: true, Logger: lg,
			AdminTokensOut: io.Discard, // printed below, in dev's own words
			// The embedded demo on loopback: plaintext (said once, below).
			Insecure: true,
		}
		if i == 0 {
			ccfg.Bootstrap = true
		} else {
			// The others join with the sysadmin's token, once the first
			// controller has made the administrator accounts.
			if admins.Sysadmin == "" {
				var err error
				if admins, err = controller.WaitAdminTokens(ctx, filepath.Join(dir, "controllers", Centers[0].ID), time.Minute, nil); err != nil {
					return err
				}
			}
			ccfg.Join, ccfg.JoinToken = []string{addrs[0]}, admins.Sysadmin
		}
		r, err := centers.startController(i, ccfg)
		if err != nil {
			return err
		}
		addrs = append(addrs, r.ctl.Addr())
	}
	ctls := centers.running()
	fmt.Fprintf(cfg.Out, "yunchi dev: 3 controllers starting (a1 production, a2 same-city DR, b1 remote DR), state in %s\n", dir)
	fmt.Fprintf(cfg.Out, "yunchi dev: plaintext (no TLS), on loopback only; yunchid controller serves TLS\n")

	conn, err := grpc.NewClient(addrs[0], grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer.Token(admins.Sysadmin)))
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := waitVoters(ctx, yunchiv1.NewClusterServiceClient(conn), len(Centers)); err != nil {
		return err
	}
	if err := declareCenters(ctx, yunchiv1.NewTopologyServiceClient(conn)); err != nil {
		return err
	}

	specs := Hosts(cfg.Hosts)
	for i, h := range specs {
		path := filepath.Join(dir, "hosts", h.ID+".xml")
		uri, err := libvirt.WriteTestNodeXML(path, libvirt.TestNode{
			CPUs: h.VCPUs(), CPUModel: "sim-x86", Sockets: h.Sockets, Cores: h.Cores, Threads: h.Threads, MemoryBytes: h.MemoryBytes,
		})
		if err != nil {
			return fmt.Errorf("host %s: %w", h.ID, err)
		}
		// Root disks are sparse files (what backups read and restores
		// write): a 40 GiB disk takes what was written to it. The
		// connection holds the host's domains: it stays open while the
		// host's center is down (shutdown closes it).
		drv, err := libvirt.OpenWithOptions(uri, libvirt.Options{DiskDir: filepath.Join(dir, "hosts", h.ID+"-disks")})
		if err != nil {
			return fmt.Errorf("host %s: %w", h.ID, err)
		}
		tok, err := issueHostToken(ctx, ctls, h.ID)
		if err != nil {
			drv.Close()
			return fmt.Errorf("host %s: %w", h.ID, err)
		}
		sh := &simHost{spec: h, drv: drv, cfg: agent.Config{
			HostID: h.ID, Hostname: h.ID, Center: h.Center, Site: h.Site, Rack: h.Rack,
			Labels: map[string]string{"simulated": "true"}, DiskBytes: h.DiskBytes,
			LibvirtURI: uri, Controllers: rotate(addrs, i), Logger: lg, // agent.New adds host=ID
			Token: tok,
		}}
		centers.mu.Lock()
		centers.hosts = append(centers.hosts, sh)
		centers.startSim(sh)
		centers.mu.Unlock()
	}
	var real *RealHosts
	if cfg.RealHosts > 0 {
		if real, err = startRealHosts(ctx, cfg, dir, addrs, ctls, lg); err != nil {
			return err
		}
		centers.mu.Lock()
		centers.real = real
		centers.mu.Unlock()
	}
	if err := waitHosts(ctx, cfg.Out, yunchiv1.NewHostServiceClient(conn), len(specs)+cfg.RealHosts); err != nil {
		return err
	}
	if cfg.RealHosts > 0 {
		cache := cfg.CacheDir
		if cache == "" {
			if cache, err = os.UserCacheDir(); err != nil {
				return err
			}
			cache = filepath.Join(cache, "yunchi")
		}
		if err := importTinyImage(ctx, cfg.Out, conn, cache); err != nil {
			return err
		}
	}
	used := map[string]bool{}
	for _, h := range specs {
		used[h.Center] = true
	}
	for i := range cfg.RealHosts {
		used[real.center(i)] = true
	}
	centers.markReady(admins.Sysadmin)
	fmt.Fprintf(cfg.Out, "yunchi dev: ready. %d hosts in %d centers (%d simulated, %d real); API (gRPC + REST) at %s (followers: %s, %s); plaintext, for trying out only\n",
		len(specs)+cfg.RealHosts, len(used), len(specs), cfg.RealHosts, addrs[0], addrs[1], addrs[2])
	// The three separated administrators (MLPS level 3): one line each.
	fmt.Fprintf(cfg.Out, "sysadmin token: %s\n", admins.Sysadmin)
	fmt.Fprintf(cfg.Out, "secadmin token: %s\n", admins.Secadmin)
	fmt.Fprintf(cfg.Out, "auditor token: %s\n", admins.Auditor)
	if cfg.NoLogin {
		fmt.Fprintf(cfg.Out, "  log in: yunchi login --addr %s --token <sysadmin token>\n", strings.Join(addrs, ","))
	} else if path, err := cliconfig.SaveLogin(strings.Join(addrs, ","), admins.Sysadmin, "sysadmin"); err != nil {
		fmt.Fprintf(cfg.Out, "yunchi dev: could not log yunchi in (%v): yunchi login --addr %s --token <sysadmin token>\n", err, addrs[0])
	} else {
		fmt.Fprintf(cfg.Out, "yunchi dev: yunchi is logged in as sysadmin (%s)\n", path)
	}
	if cfg.RealHosts > 0 {
		fmt.Fprintf(cfg.Out, "  try: yunchi vm create t1 --image %s --memory 256MiB --wait && yunchi vm console t1\n", TinyImage)
	} else {
		fmt.Fprintf(cfg.Out, "  try: yunchi vm create web-1 --cpu 2 --memory 4GiB --wait\n")
	}
	fmt.Fprintf(cfg.Out, "       curl -s -H \"Authorization: Bearer $(yunchi token current)\" %s/v1/vms\n", addrs[0])
	fmt.Fprintf(cfg.Out, "       yunchi cluster status\n")
	port := ""
	if cfg.BasePort != DefaultBasePort {
		port = fmt.Sprintf(" --port %d", cfg.BasePort)
	}
	fmt.Fprintf(cfg.Out, "  a center down and back (as cut off by a network failure): yunchid dev center stop%s a1; yunchid dev center start%s a1; yunchid dev center list%s\n", port, port, port)
	fmt.Fprintf(cfg.Out, "Ctrl-C stops everything.\n")
	if cfg.Ready != nil {
		cfg.Ready(addrs)
	}
	if cfg.RealReady != nil && real != nil {
		cfg.RealReady(real)
	}
	if cfg.Centers != nil {
		cfg.Centers(centers)
	}

	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	fmt.Fprintf(cfg.Out, "yunchi dev: stopping\n")
	ctlSrv.Close()
	centers.shutdown()
	return err
}

// stopAll stops the leader first, then the followers. Stopped together, the
// leader would log an ERROR for every follower it loses ("failed to
// heartbeat to: ... EOF") while it still runs. Once the leader is gone the
// followers only see its connections close (raftnode logs a reset one at
// WARN), and they stop well before their election timeout would make them
// candidates.
func stopAll(ctls []*running) {
	for _, r := range ctls {
		if r.ctl.Node().IsLeader() {
			r.stop()
			<-r.done
		}
	}
	for _, r := range ctls {
		r.stop()
	}
	for _, r := range ctls {
		<-r.done
	}
}

// rotate spreads the agents' first choice of controller over all three.
func rotate(addrs []string, k int) []string {
	out := make([]string, len(addrs))
	for i := range addrs {
		out[i] = addrs[(i+k)%len(addrs)]
	}
	return out
}

func waitVoters(ctx context.Context, c yunchiv1.ClusterServiceClient, n int) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := c.GetClusterStatus(ctx, &yunchiv1.GetClusterStatusRequest{})
		if err == nil && st.LeaderId != "" && len(st.Members) == n {
			ok := true
			for _, m := range st.Members {
				ok = ok && m.ApiAddress != ""
			}
			if ok {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the controllers did not form a %d-voter cluster within 60s (last error: %v)", n, err)
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

func waitHosts(ctx context.Context, out io.Writer, c yunchiv1.HostServiceClient, n int) error {
	deadline := time.Now().Add(120 * time.Second)
	last := -1
	for {
		resp, err := c.ListHosts(ctx, &yunchiv1.ListHostsRequest{})
		if err == nil {
			ready := 0
			for _, h := range resp.Hosts {
				if h.State == yunchiv1.HostState_HOST_STATE_READY {
					ready++
				}
			}
			if ready != last {
				fmt.Fprintf(out, "yunchi dev: %d/%d hosts registered\n", ready, n)
				last = ready
			}
			if ready >= n {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d hosts registered within 120s (last error: %v)", last, n, err)
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// issueHostToken makes the host token of an in-process agent on whichever
// controller leads.
func issueHostToken(ctx context.Context, ctls []*running, hostID string) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var last error
		for _, r := range ctls {
			if !r.ctl.Node().IsLeader() {
				continue
			}
			tok, err := r.ctl.IssueHostToken(ctx, hostID)
			if err == nil {
				return tok, nil
			}
			last = err
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no leader took the host token: %v", last)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return "", err
		}
	}
}
