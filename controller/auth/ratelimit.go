package auth

import (
	"context"
	"fmt"
	"math"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// RetryAfterKey is the response header (gRPC metadata) a refused call
// carries: seconds until the caller may try again. REST answers it as
// Retry-After.
const RetryAfterKey = "retry-after"

// Limiter bounds the requests of each caller: per token (or host
// certificate, or controller), a token bucket of PerSecond with Burst.
// Calls forwarded by another controller are counted where they arrived,
// not again. Buckets idle for a while are forgotten, so the table stays
// as large as the set of active callers.
type Limiter struct {
	PerSecond float64
	Burst     int
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	sweep   time.Time
}

type bucket struct {
	lim  *rate.Limiter
	used time.Time
}

// idleForget is how long a caller's bucket is kept without requests.
const idleForget = 10 * time.Minute

// DefaultRate is the limit per caller when none is configured: far above
// what a person or script needs, low enough that one stolen or runaway
// token cannot take the controllers from everyone else.
const (
	DefaultRate  = 500
	DefaultBurst = 1000
)

func (l *Limiter) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// allow takes one request of key; when refused, it says how long to wait.
func (l *Limiter) allow(key string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buckets == nil {
		l.buckets = map[string]*bucket{}
	}
	if now.Sub(l.sweep) > idleForget {
		for k, b := range l.buckets {
			if now.Sub(b.used) > idleForget {
				delete(l.buckets, k)
			}
		}
		l.sweep = now
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(rate.Limit(l.PerSecond), l.Burst)}
		l.buckets[key] = b
	}
	b.used = now
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Second
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// callerKey is what a request is counted against: its token, else its
// certificate's identity, else its source address (calls without
// credentials, refused anyway, are limited too).
func callerKey(ctx context.Context) string {
	if p, ok := FromContext(ctx); ok {
		switch {
		case p.TokenID != "":
			return "token:" + p.TokenID
		case p.Name != "":
			return fmt.Sprintf("%d:%s", p.Kind, p.Name)
		}
	}
	addr := SourceOf(ctx)
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	return "addr:" + addr
}

// check refuses a call over its caller's limit: RESOURCE_EXHAUSTED (REST
// 429) with the retry-after header.
func (l *Limiter) check(ctx context.Context) error {
	if l == nil || l.PerSecond <= 0 {
		return nil
	}
	ok, wait := l.allow(callerKey(ctx))
	if ok {
		return nil
	}
	secs := int(math.Ceil(wait.Seconds()))
	if secs < 1 {
		secs = 1
	}
	grpc.SetHeader(ctx, metadata.Pairs(RetryAfterKey, strconv.Itoa(secs)))
	return status.Errorf(codes.ResourceExhausted, "rate limit: more than %g requests per second with this token; retry after %d s", l.PerSecond, secs)
}
