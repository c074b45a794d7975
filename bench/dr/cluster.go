//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/yunchi/yunchi/internal/benchkit"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/controller"
	"github.com/yunchi/yunchi/internal/bearer"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// cluster is the running dev cluster and the sysadmin's clients.
type cluster struct {
	dir  string // the dev cluster's data dir
	rh   *devcluster.RealHosts
	conn *grpc.ClientConn // to the leader, as the sysadmin
	stop func() error     // stops it and waits
	// For the failover phase: the base port (the control endpoint is
	// devcluster.ControlAddr(base)), the controllers' API addresses (by
	// center, as devcluster.Centers), the sysadmin's token and the dial
	// options.
	base  int
	addrs []string
	token string
	opts  []grpc.DialOption

	vms   yunchiv1.VMServiceClient
	prot  yunchiv1.ProtectionServiceClient
	bk    yunchiv1.BackupServiceClient
	hosts yunchiv1.HostServiceClient
}

// startCluster runs the dev cluster in process under dir: hosts
// simulated hosts and realHosts real ones.
func startCluster(ctx context.Context, dir, cacheDir string, hosts, realHosts int) (*cluster, error) {
	base, err := benchkit.FreeBasePort()
	if err != nil {
		return nil, err
	}
	c := &cluster{dir: dir, base: base}
	ready := make(chan *devcluster.RealHosts, 1)
	addrs := make(chan []string, 1)
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	out := benchkit.DevOutput()
	go func() {
		done <- devcluster.Run(runCtx, devcluster.Config{
			DataDir: dir, CacheDir: cacheDir, BasePort: base, Hosts: hosts, RealHosts: realHosts, NoLogin: true,
			Out: out, Logger: slog.New(slog.NewTextHandler(progressWriter{}, &slog.HandlerOptions{Level: slog.LevelWarn})),
			Ready:     func(a []string) { addrs <- a },
			RealReady: func(rh *devcluster.RealHosts) { ready <- rh },
		})
		out.Close()
	}()
	stopped := false
	c.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if errors.Is(err, context.Canceled) {
				err = nil
			}
			return err
		case <-time.After(2 * time.Minute):
			return errors.New("the dev cluster did not stop within 2 minutes")
		}
	}
	var a []string
	select {
	case a = <-addrs:
	case err := <-done:
		stopped = true
		return nil, fmt.Errorf("dev cluster: %w", err)
	case <-ctx.Done():
		return nil, errors.Join(ctx.Err(), c.stop())
	case <-time.After(5 * time.Minute):
		return nil, errors.Join(errors.New("the dev cluster was not ready within 5 minutes"), c.stop())
	}
	if realHosts > 0 {
		select { // RealReady is called right after Ready
		case c.rh = <-ready:
		case err := <-done:
			stopped = true
			return nil, fmt.Errorf("dev cluster: %w", err)
		case <-time.After(time.Minute):
			return nil, errors.Join(errors.New("the dev cluster did not hand over its real hosts"), c.stop())
		}
	}
	c.addrs = a
	if err := c.dial(ctx, a[0]); err != nil {
		return nil, errors.Join(err, c.stop())
	}
	return c, nil
}

// dial connects to the leader as the sysadmin. Calls the controllers
// refused as UNAVAILABLE (a leader election on a loaded machine) are
// tried again, as the CLI does.
func (c *cluster) dial(ctx context.Context, addr string) error {
	toks, err := controller.ReadAdminTokens(filepath.Join(c.dir, "controllers", devcluster.Centers[0].ID))
	if err != nil {
		return err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer.Token(toks.Sysadmin)),
		grpc.WithDefaultServiceConfig(`{"methodConfig":[{"name":[{}],"retryPolicy":{"maxAttempts":5,"initialBackoff":"0.5s","maxBackoff":"4s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]}`)}
	c.token, c.opts = toks.Sysadmin, opts
	first, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return err
	}
	defer first.Close()
	st, err := yunchiv1.NewClusterServiceClient(first).GetClusterStatus(ctx, &yunchiv1.GetClusterStatusRequest{})
	if err != nil {
		return fmt.Errorf("cluster status: %w", err)
	}
	if st.LeaderApiAddress == "" {
		return errors.New("the cluster has no leader")
	}
	if c.conn, err = grpc.NewClient(st.LeaderApiAddress, opts...); err != nil {
		return err
	}
	c.vms, c.prot, c.bk, c.hosts = yunchiv1.NewVMServiceClient(c.conn), yunchiv1.NewProtectionServiceClient(c.conn),
		yunchiv1.NewBackupServiceClient(c.conn), yunchiv1.NewHostServiceClient(c.conn)
	return nil
}

// close stops the cluster: its agents, the real host's libvirtd with its
// guests, the controllers.
func (c *cluster) close() error {
	if c.conn != nil {
		c.conn.Close()
	}
	return c.stop()
}

// simDisk is the file holding a VM's disk on a simulated host.
func (c *cluster) simDisk(vm *yunchiv1.VM) string {
	return filepath.Join(c.dir, "hosts", vm.HostId+"-disks", vm.Id+".img")
}

// waitVM waits until VM name is in phase.
func (c *cluster) waitVM(ctx context.Context, name string, phase yunchiv1.VMPhase, timeout time.Duration) (*yunchiv1.VM, error) {
	deadline := time.Now().Add(timeout)
	for {
		vm, err := c.vms.GetVM(ctx, &yunchiv1.GetVMRequest{Name: name})
		if err == nil && vm.Phase == phase {
			return vm, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("vm %s not %s within %s (phase %s %q, %v)", name, phase, timeout, vm.GetPhase(), vm.GetMessage(), err)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// deleteVM deletes a VM and waits until it is gone (its disk removed).
func (c *cluster) deleteVM(ctx context.Context, name string) error {
	if _, err := c.vms.DeleteVM(ctx, &yunchiv1.VMActionRequest{Name: name}); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := c.vms.GetVM(ctx, &yunchiv1.GetVMRequest{Name: name})
		if status.Code(err) == codes.NotFound {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("vm %s not gone within 2 minutes (%v)", name, err)
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// points lists a VM's restore points in a center, newest first.
func (c *cluster) points(ctx context.Context, vm, center string) ([]*yunchiv1.RestorePoint, error) {
	r, err := c.bk.ListRestorePoints(ctx, &yunchiv1.ListRestorePointsRequest{Vm: vm, Center: center})
	if err != nil {
		return nil, fmt.Errorf("restore points of %s in %s: %w", vm, center, err)
	}
	return r.Points, nil
}

// waitNewPoint waits for a point of vm in center not in before, and says
// when it was seen; a backup job reported failed is an error.
func (c *cluster) waitNewPoint(ctx context.Context, vm, center string, before map[string]bool, timeout time.Duration) (*yunchiv1.RestorePoint, time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		ps, err := c.points(ctx, vm, center)
		if err != nil {
			return nil, time.Time{}, err
		}
		for _, p := range ps {
			if !before[p.Id] {
				return p, time.Now(), nil
			}
		}
		if st, err := c.prot.GetDRStatus(ctx, &yunchiv1.GetDRStatusRequest{Vm: vm}); err == nil {
			for _, v := range st.Vms {
				for _, t := range v.Targets {
					if t.Center == center && t.Job == "failed" {
						return nil, time.Time{}, fmt.Errorf("backup of %s to %s failed: %s", vm, center, t.LastError)
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return nil, time.Time{}, fmt.Errorf("no new point of %s in %s within %s", vm, center, timeout)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, time.Time{}, err
		}
	}
}

// pointIDs is the set of the points' ids.
func pointIDs(ps []*yunchiv1.RestorePoint) map[string]bool {
	m := map[string]bool{}
	for _, p := range ps {
		m[p.Id] = true
	}
	return m
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// progressWriter writes the cluster's warnings to stderr.
type progressWriter struct{}

func (progressWriter) Write(p []byte) (int, error) {
	benchkit.Progress("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// leaderWatch counts the changes of leader the cluster reports, polled
// every second: on a loaded machine an election now and then stalls
// writes for a few seconds, which the figures then include.
type leaderWatch struct {
	mu      sync.Mutex
	changes int
	stop    context.CancelFunc
	done    chan struct{}
}

func (c *cluster) watchLeader() *leaderWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &leaderWatch{stop: cancel, done: make(chan struct{})}
	cs := yunchiv1.NewClusterServiceClient(c.conn)
	go func() {
		defer close(w.done)
		last := ""
		for {
			st, err := cs.GetClusterStatus(ctx, &yunchiv1.GetClusterStatusRequest{})
			if err == nil && st.LeaderId != "" {
				if last != "" && st.LeaderId != last {
					w.mu.Lock()
					w.changes++
					w.mu.Unlock()
					benchkit.Progress("the leader is now %s (was %s)", st.LeaderId, last)
				}
				last = st.LeaderId
			}
			if sleep(ctx, time.Second) != nil {
				return
			}
		}
	}()
	return w
}

// count is the changes seen so far.
func (w *leaderWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changes
}

func (w *leaderWatch) close() {
	w.stop()
	<-w.done
}
