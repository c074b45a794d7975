package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// rpcTimeout bounds one unary call to one controller.
const rpcTimeout = 10 * time.Second

// controllers holds one client per controller address and which one is in
// use. Any controller may answer (followers forward writes to the leader), so
// the agent sticks to one until it fails, then moves to the next.
type controllers struct {
	addrs   []string
	conns   []*grpc.ClientConn
	clients []yunchiv1.AgentServiceClient
	cur     atomic.Int32
	// moved is signalled when the agent moves to another controller, so that
	// a stream still open on the old one (possibly hung: there is no
	// keepalive) follows.
	moved chan struct{}
}

func dialControllers(addrs []string, extra []grpc.DialOption) (*controllers, error) {
	c := &controllers{addrs: addrs, moved: make(chan struct{}, 1)}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// gRPC's default reconnect backoff grows to two minutes; a controller
		// that comes back should be used again within seconds.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: grpcbackoff.Config{
				BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	opts = append(opts, extra...)
	for _, addr := range addrs {
		conn, err := grpc.NewClient(addr, opts...)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("controller %s: %w", addr, err)
		}
		c.conns = append(c.conns, conn)
		c.clients = append(c.clients, yunchiv1.NewAgentServiceClient(conn))
	}
	return c, nil
}

func (c *controllers) close() {
	for _, conn := range c.conns {
		conn.Close()
	}
}

// current is the controller in use: its position and client.
func (c *controllers) current() (int, yunchiv1.AgentServiceClient) {
	i := int(c.cur.Load())
	return i, c.clients[i]
}

// failed moves on from controller i, unless someone already did.
func (c *controllers) failed(i int) {
	if c.cur.CompareAndSwap(int32(i), int32((i+1)%len(c.clients))) && len(c.clients) > 1 {
		select {
		case c.moved <- struct{}{}:
		default:
		}
	}
}

// call runs fn against the controller in use, moving on to the next ones
// while the failure says the controller (not the request) is the problem.
// Each address is tried once per call; callers retry with backoff.
func (c *controllers) call(ctx context.Context, fn func(context.Context, yunchiv1.AgentServiceClient) error) error {
	var err error
	for range len(c.clients) {
		i, client := c.current()
		cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		err = fn(cctx, client)
		cancel()
		if err == nil {
			return nil
		}
		err = fmt.Errorf("controller %s: %w", c.addrs[i], err)
		if ctx.Err() != nil || !controllerFault(err) {
			return err
		}
		c.failed(i)
	}
	return err
}

// controllerFault tells whether an RPC error is worth trying elsewhere.
func controllerFault(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted:
		return true
	}
	return false
}

// backoff is a capped exponential delay with jitter.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff() *backoff {
	return &backoff{min: 100 * time.Millisecond, max: 5 * time.Second}
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	// ±20 %, so that agents cut off together do not come back together.
	return time.Duration(float64(b.cur) * (0.8 + 0.4*rand.Float64()))
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d or until ctx ends; it reports whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
