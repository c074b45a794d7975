package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/api"
)

// retry says whether a call may be sent again to the next controller after
// one answered Unavailable. A controller that could not be connected to never
// saw the request, so every call moves on from an unreachable address.
type retry int

const (
	// retrySafe: reads: sending them twice does no harm.
	retrySafe retry = iota
	// retryNever: cluster join and remove. Unavailable may come from a
	// connection that broke after the request went out, and these change
	// raft's membership outside the log's request ids.
	retryNever
	// retryKeyed: every other write. The call carries one idempotency key
	// (a random UUID) on every attempt, so the controllers answer a resend
	// with the first outcome: it is sent again like a read, even after an
	// answer that leaves open whether it was applied.
	retryKeyed
)

// idempotencyKey is the metadata key of a write's request id.
const idempotencyKey = "idempotency-key"

// client talks to the controllers listed in --addr. It keeps one connection
// per address and starts each call at the address that last answered.
type client struct {
	addrs          []string
	token          string
	timeout        time.Duration // per call; 0 = none
	connectTimeout time.Duration
	// tr: TLS or plaintext (transport.go).
	tr transport

	// progress gets the one line saying a call waits for an election.
	progress io.Writer
	warned   bool

	mu      sync.Mutex
	conns   []*grpc.ClientConn
	dialErr []error // last dial error per address, for messages
	cur     int
}

func newClient(addrs []string, token string, timeout, connectTimeout time.Duration) *client {
	return &client{
		addrs:          addrs,
		token:          token,
		timeout:        timeout,
		connectTimeout: connectTimeout,
		conns:          make([]*grpc.ClientConn, len(addrs)),
		dialErr:        make([]error, len(addrs)),
	}
}

func (c *client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cc := range c.conns {
		if cc != nil {
			cc.Close()
		}
	}
}

// parseAddrs splits the comma-separated --addr value.
func parseAddrs(s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, usagef("invalid --addr %q: want host:port", a)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, usagef("--addr: no controller address given")
	}
	return out, nil
}

func (c *client) conn(i int) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conns[i] != nil {
		return c.conns[i], nil
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Our own dialer only to remember why an address is unreachable.
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err == nil {
				// TLS here rather than as gRPC credentials, so that a
				// failed verification is remembered and explained.
				conn, err = c.tr.handshake(ctx, conn, addr)
			}
			c.mu.Lock()
			c.dialErr[i] = err
			c.mu.Unlock()
			return conn, err
		}),
	}
	if c.token != "" {
		opts = append(opts,
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
				return invoker(c.withToken(ctx), method, req, reply, cc, o...)
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, o ...grpc.CallOption) (grpc.ClientStream, error) {
				return streamer(c.withToken(ctx), desc, cc, method, o...)
			}),
		)
	}
	// passthrough: the dialer resolves the name, so a DNS failure is a dial
	// error we can report.
	cc, err := grpc.NewClient("passthrough:///"+c.addrs[i], opts...)
	if err != nil {
		return nil, usagef("invalid --addr %q: %v", c.addrs[i], err)
	}
	c.conns[i] = cc
	return cc, nil
}

func (c *client) withToken(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
}

// ready connects to address i and waits until the connection is up, so that
// a failure here means the request was never sent.
func (c *client) ready(ctx context.Context, i int) (*grpc.ClientConn, error) {
	cc, err := c.conn(i)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.connectTimeout)
	defer cancel()
	cc.Connect()
	for {
		s := cc.GetState()
		switch s {
		case connectivity.Ready:
			return cc, nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			err := c.unreachable(i, "unreachable")
			// Only when the TCP connection itself worked (no dial error)
			// can a plaintext failure mean a TLS server.
			c.mu.Lock()
			connected := c.dialErr[i] == nil
			c.mu.Unlock()
			if connected && c.tr.tls == nil && probeTLS(ctx, c.addrs[i], c.connectTimeout) {
				return nil, usagef("the controller at %s serves TLS: %s", c.addrs[i], caHint)
			}
			return nil, err
		}
		if !cc.WaitForStateChange(ctx, s) {
			waited := time.Since(start).Round(100 * time.Millisecond)
			return nil, c.unreachable(i, fmt.Sprintf("no connection within %s", waited))
		}
	}
}

// unreachable says why address i could not be connected to: the last dial
// error if there was one, else fallback.
func (c *client) unreachable(i int, fallback string) error {
	c.mu.Lock()
	err := c.dialErr[i]
	c.mu.Unlock()
	var op *net.OpError
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		return ue
	case err == nil:
		return errors.New(fallback)
	case errors.As(err, &op) && op.Err != nil:
		return op.Err // "connect: connection refused" without the repeated address
	default:
		return err
	}
}

// electionWait bounds how long a unary call keeps trying the controllers
// of several --addr while none can take it because there is no leader (an
// election is under way: raft elects within a few seconds) or the leader is
// unreachable. A shorter --timeout bounds it instead.
const electionWait = 20 * time.Second

// Between rounds over the controllers a call waits retryFirstWait, then
// longer, but never more than retryMaxWait: raft elects a new leader 0.5–1 s
// after the old one dies (controller/raftnode), and a wait that grew to
// seconds would add up to that much to the failover a user sees (a round
// is a handful of small calls, cheap for the controllers).
const (
	retryFirstWait = 200 * time.Millisecond
	retryMaxWait   = 300 * time.Millisecond
)

// nextRetryWait is the wait after one of w.
func nextRetryWait(w time.Duration) time.Duration { return min(2*w, retryMaxWait) }

// errorReason is the google.rpc.ErrorInfo reason in err, "" if none.
func errorReason(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

// call runs fn against the controllers in turn, starting with the one that
// last answered, until one gives an answer other than Unavailable.
// perCall applies --timeout to each attempt; streams pass false.
//
// With several addresses, a unary call that no controller could take goes
// round them again (backing off, one progress line on stderr) until a new
// leader answers or electionWait passes: while some controller answered
// Unavailable (no leader, leader unreachable) and the call may be resent,
// which retrySafe and retryKeyed calls always may (a keyed write is resent
// with the same key) and retryNever calls only when nothing reached raft
// (the address was unreachable, or the answer is marked NOT_PROPOSED). A
// controller removed from the cluster is passed over.
// Streams (--wait) re-watch on their own and make one pass.
func (c *client) call(ctx context.Context, r retry, perCall bool, fn func(ctx context.Context, cc grpc.ClientConnInterface) error) error {
	if r == retryKeyed {
		// One key for every attempt of this call.
		ctx = metadata.AppendToOutgoingContext(ctx, idempotencyKey, uuid.NewString())
	}
	n := len(c.addrs)
	removed := make([]bool, n)
	var deadline time.Time
	backoff := retryFirstWait
	for {
		var failures []string
		var lastUnavailable, lastRemoved error
		answered := false // some controller answered Unavailable
		stop := false     // a retryNever call may have been proposed
		for k := 0; k < n && !stop; k++ {
			i := (c.cur + k) % n
			addr := c.addrs[i]
			if removed[i] {
				failures = append(failures, addr+": removed from the cluster")
				continue
			}
			actx, cancel := ctx, context.CancelFunc(func() {})
			if perCall && c.timeout > 0 {
				actx, cancel = context.WithTimeout(ctx, c.timeout)
			}
			cc, err := c.ready(actx, i)
			if err != nil {
				cancel()
				if ctx.Err() != nil {
					return status.FromContextError(ctx.Err()).Err()
				}
				var ue *usageError
				if errors.As(err, &ue) {
					return err
				}
				failures = append(failures, fmt.Sprintf("%s: %v", addr, err))
				continue
			}
			err = fn(actx, cc)
			timedOut := perCall && ranOut(actx, err) && ctx.Err() == nil
			cancel()
			switch {
			case n > 1 && errorReason(err) == api.NotAMemberReason && ctx.Err() == nil:
				// Nothing was done there; the next address may be a member.
				removed[i] = true
				lastRemoved = err
				failures = append(failures, fmt.Sprintf("%s: %s", addr, status.Convert(err).Message()))
				continue
			case status.Code(err) == codes.Unavailable && ctx.Err() == nil:
				failures = append(failures, fmt.Sprintf("%s: %s", addr, status.Convert(err).Message()))
				lastUnavailable = err
				answered = true
				stop = r == retryNever && errorReason(err) != api.NotProposedReason
				continue
			}
			c.cur = i
			if timedOut {
				return status.Errorf(codes.DeadlineExceeded, "no answer from %s within %s (--timeout)", addr, c.timeout)
			}
			return err
		}
		if stop || !answered || !perCall || n == 1 {
			if len(failures) == 1 && lastUnavailable != nil {
				return lastUnavailable // one controller, its own words ("no leader")
			}
			if answered || lastRemoved == nil {
				return status.Errorf(codes.Unavailable, "no controller available: %s", strings.Join(failures, "; "))
			}
			// Only removed controllers answered: that is the precondition
			// to fix (their message names the members to use).
			return lastRemoved
		}
		wait := electionWait
		if c.timeout > 0 && c.timeout < wait {
			wait = c.timeout
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(wait)
			if !c.warned && c.progress != nil {
				c.warned = true
				fmt.Fprintf(c.progress, "yunchi: no leader (election in progress): retrying for up to %s…\n", wait)
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return status.Errorf(codes.Unavailable, "no leader within %s: %s", wait, strings.Join(failures, "; "))
		}
		t := time.NewTimer(min(backoff, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return status.FromContextError(ctx.Err()).Err()
		case <-t.C:
		}
		backoff = nextRetryWait(backoff)
	}
}

// ranOut says whether err is the call running out of --timeout. The server
// gets the deadline too and may give up first, resetting the stream, so the
// error can be Canceled and arrive a moment before ctx itself expires.
func ranOut(ctx context.Context, err error) bool {
	if err == nil {
		return false
	}
	if ctx.Err() == context.DeadlineExceeded {
		return true
	}
	dl, ok := ctx.Deadline()
	code := status.Code(err)
	return ok && time.Until(dl) < 100*time.Millisecond && (code == codes.DeadlineExceeded || code == codes.Canceled)
}

// do is call for a unary RPC that returns a value.
func do[T any](ctx context.Context, c *client, r retry, fn func(ctx context.Context, cc grpc.ClientConnInterface) (T, error)) (T, error) {
	var out T
	err := c.call(ctx, r, true, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		var err error
		out, err = fn(ctx, cc)
		return err
	})
	return out, err
}
