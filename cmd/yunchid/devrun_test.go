package main

import (
	"context"
	"errors"
	"regexp"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/apitest"
	"github.com/yunchi/yunchi/internal/bearer"
)

// runDev runs the dev cluster of cfg in process until the test ends (its
// Out, Ready and RealReady are set here) and returns, once it is ready,
// its API addresses, its real hosts (nil without cfg.RealHosts) and what
// it printed so far and later.
func runDev(t *testing.T, cfg devcluster.Config) ([]string, *devcluster.RealHosts, *apitest.LockedBuffer) {
	t.Helper()
	out := &apitest.LockedBuffer{}
	addrsc := make(chan []string, 1)
	realc := make(chan *devcluster.RealHosts, 1)
	cfg.Out = out
	cfg.Ready = func(a []string) { addrsc <- a }
	cfg.RealReady = func(rh *devcluster.RealHosts) { realc <- rh }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- devcluster.Run(ctx, cfg) }()
	stopped := false
	t.Cleanup(func() {
		cancel()
		if stopped {
			return
		}
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("dev cluster: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("dev cluster did not stop within 60s")
		}
	})
	var addrs []string
	select {
	case addrs = <-addrsc:
	case err := <-done:
		stopped = true
		t.Fatalf("dev cluster stopped: %v\n%s", err, out)
	case <-time.After(180 * time.Second):
		t.Fatalf("dev cluster not ready in 180s:\n%s", out)
	}
	var rh *devcluster.RealHosts
	if cfg.RealHosts > 0 {
		rh = <-realc // called right after Ready
	}
	return addrs, rh, out
}

// adminConn is a connection to addr with the sysadmin's token the dev
// cluster printed in out. A loaded 2-core machine may see a leader
// election now and then: calls the controllers refused as UNAVAILABLE
// (not proposed) are tried again, as the CLI does.
func adminConn(t *testing.T, addr string, out *apitest.LockedBuffer) (*grpc.ClientConn, string) {
	t.Helper()
	m := regexp.MustCompile(`sysadmin token: (\S+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no sysadmin token printed:\n%s", out)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer.Token(m[1])),
		grpc.WithDefaultServiceConfig(`{"methodConfig":[{"name":[{}],"retryPolicy":{"maxAttempts":5,"initialBackoff":"0.5s","maxBackoff":"4s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, m[1]
}
