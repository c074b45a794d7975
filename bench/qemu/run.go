//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/yunchi/yunchi/internal/benchkit"
	"log/slog"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/controller"
	"github.com/yunchi/yunchi/internal/bearer"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// cluster is the running dev cluster.
type cluster struct {
	rh     *devcluster.RealHosts
	conn   *grpc.ClientConn // to the leader, as the sysadmin
	stop   func() error     // stops it and waits
	dirDev string
}

// startCluster runs `yunchid dev --real-hosts 1` in process under dir.
func startCluster(ctx context.Context, dir, cacheDir string, rec *recorder) (*cluster, error) {
	base, err := benchkit.FreeBasePort()
	if err != nil {
		return nil, err
	}
	c := &cluster{dirDev: filepath.Join(dir, "dev")}
	ready := make(chan *devcluster.RealHosts, 1)
	addrs := make(chan []string, 1)
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	out := benchkit.DevOutput()
	go func() {
		done <- devcluster.Run(runCtx, devcluster.Config{
			DataDir: c.dirDev, CacheDir: cacheDir, BasePort: base, RealHosts: 1, Hosts: 0, NoLogin: true,
			Out: out, Logger: slog.New(rec),
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
	select {
	case c.rh = <-ready:
	case err := <-done:
		stopped = true
		return nil, fmt.Errorf("dev cluster: %w", err)
	case <-ctx.Done():
		return nil, errors.Join(ctx.Err(), c.stop())
	}
	if err := c.dial(ctx, (<-addrs)[0]); err != nil {
		return nil, errors.Join(err, c.stop())
	}
	return c, nil
}

// dial connects to the leader as the sysadmin: creates then take no
// forwarding hop.
func (c *cluster) dial(ctx context.Context, addr string) error {
	toks, err := controller.ReadAdminTokens(filepath.Join(c.dirDev, "controllers", devcluster.Centers[0].ID))
	if err != nil {
		return err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer.Token(toks.Sysadmin))}
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
	c.conn, err = grpc.NewClient(st.LeaderApiAddress, opts...)
	return err
}

// close stops the cluster: its agent, the host's libvirtd with every
// guest, the controllers.
func (c *cluster) close() error {
	if c.conn != nil {
		c.conn.Close()
	}
	return c.stop()
}
