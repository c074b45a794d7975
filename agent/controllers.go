package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const (
	// rpcTimeout bounds one attempt of a call that writes through raft
	// (registration, status reports). Heartbeats get much less: see
	// Agent.heartbeatTimeout.
	rpcTimeout = 10 * time.Second
	// minAttemptTimeout is the least any attempt is given, however short
	// the heartbeat interval.
	minAttemptTimeout = 200 * time.Millisecond
	// hungFor is how long a controller that let an attempt run out of time
	// (it accepts connections but does not answer: SIGSTOP, a wedged
	// process) is tried only after the others.
	hungFor = 30 * time.Second
	// failureLogEvery: failures of one controller are logged as a warning
	// the first time, then at most this often while they go on.
	failureLogEvery = time.Minute
)

// keepaliveParams make a connection to a controller that stopped answering
// fail, streams included, even when no call is waiting on it (gRPC does not
// ping more often than every 10 s). The controllers serve gRPC through Go's
// HTTP/2 server, which answers pings without a rate policy, so these pings
// are never answered with GOAWAY too_many_pings.
var keepaliveParams = keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}

// controllers holds one client per controller address and which one is in
// use. Any controller may answer (followers forward writes to the leader), so
// the agent sticks to one until it fails, then moves to the next.
type controllers struct {
	addrs   []string
	conns   []*grpc.ClientConn
	clients []yunchiv1.AgentServiceClient
	log     *slog.Logger

	mu  sync.Mutex
	cur int
	// away is cancelled when the agent moves away from cur: calls and the
	// assignment stream still on the old controller (possibly hung) end.
	away      context.Context
	leave     context.CancelFunc
	hungUntil []time.Time
	lastOK    int // the controller that last answered; -1 before any
	fails     []failureLog
}

// failureLog rate-limits the warnings about one controller.
type failureLog struct {
	failing    bool
	lastWarned time.Time
	unlogged   int
}

// dialOptions are how the agent dials controllers (and the backup
// repositories they keep): extra (transport credentials, the host token)
// over plaintext defaults.
func dialOptions(extra []grpc.DialOption) []grpc.DialOption {
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
		grpc.WithKeepaliveParams(keepaliveParams),
	}
	return append(opts, extra...)
}

func dialControllers(addrs []string, extra []grpc.DialOption, log *slog.Logger) (*controllers, error) {
	c := &controllers{
		addrs: addrs, log: log, lastOK: -1,
		hungUntil: make([]time.Time, len(addrs)), fails: make([]failureLog, len(addrs)),
	}
	c.away, c.leave = context.WithCancel(context.Background())
	opts := dialOptions(extra)
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

// current is the controller in use: its position, its client, and a context
// cancelled when the agent moves away from it.
func (c *controllers) current() (int, yunchiv1.AgentServiceClient, context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, c.clients[c.cur], c.away
}

// failed moves on from controller i, unless someone already did. hung says
// i did not answer in time: it is then tried after the others for a while,
// so that an agent does not come back to a frozen controller while another
// one answers.
func (c *controllers) failed(i int, hung bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if hung {
		c.hungUntil[i] = now.Add(hungFor)
	}
	n := len(c.clients)
	if c.cur != i || n == 1 {
		return
	}
	next := (i + 1) % n
	for k := 1; k < n; k++ {
		if j := (i + k) % n; !now.Before(c.hungUntil[j]) {
			next = j
			break
		}
	}
	c.cur = next
	c.leave()
	c.away, c.leave = context.WithCancel(context.Background())
}

// answered records that controller i answered a call.
func (c *controllers) answered(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastOK >= 0 && c.lastOK != i {
		c.log.Info("moved to controller "+c.addrs[i], "from", c.addrs[c.lastOK])
	}
	c.lastOK = i
	c.hungUntil[i] = time.Time{}
	c.fails[i] = failureLog{}
}

// logFailure warns about the first failure of controller i after it last
// answered, then about one failure a minute (with the number not logged)
// while they go on; the rest go to debug.
func (c *controllers) logFailure(op string, i int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := &c.fails[i]
	now := time.Now()
	if f.failing && now.Sub(f.lastWarned) < failureLogEvery {
		f.unlogged++
		c.log.Debug(op+" failed", "controller", c.addrs[i], "err", err)
		return
	}
	args := []any{"controller", c.addrs[i], "err", err}
	if f.unlogged > 0 {
		args = append(args, "failures_since_last_warning", f.unlogged)
	}
	c.log.Warn(op+" failed", args...)
	*f = failureLog{failing: true, lastWarned: now}
}

// call runs fn against the controller in use, each attempt bounded by
// timeout, moving on to the next controllers while the failure says the
// controller (not the request) is the problem. Each address is tried once
// per call; callers retry with backoff. op names the call in the log
// ("heartbeat" logs "heartbeat failed").
func (c *controllers) call(ctx context.Context, op string, timeout time.Duration, fn func(context.Context, yunchiv1.AgentServiceClient) error) error {
	var err error
	for range len(c.clients) {
		i, client, away := c.current()
		actx, cancel := context.WithTimeout(ctx, timeout)
		// Another call gave up on this controller: so does this one.
		stop := context.AfterFunc(away, cancel)
		err = fn(actx, client)
		stop()
		timedOut := errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		cancel()
		if err == nil {
			c.answered(i)
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("controller %s: %w", c.addrs[i], err)
		}
		if away.Err() != nil { // moved away while this attempt ran: go on with the new one
			continue
		}
		if !controllerFault(err) {
			c.answered(i)
			return fmt.Errorf("controller %s: %w", c.addrs[i], err)
		}
		if timedOut {
			err = fmt.Errorf("no answer within %v: %w", timeout, err)
		}
		c.logFailure(op, i, err)
		c.failed(i, timedOut)
		err = fmt.Errorf("controller %s: %w", c.addrs[i], err)
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
