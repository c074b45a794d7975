package audit

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Batch bounds: the Recorder sends what it holds every FlushInterval, or
// as soon as it holds FlushRecords; it holds at most QueueLimit, dropping
// the oldest beyond (counted, and recorded as a "dropped" record).
const (
	FlushInterval = 100 * time.Millisecond
	FlushRecords  = 100
	QueueLimit    = 10_000
)

// Submit records a batch through raft: denied requests (a RecordAudit
// command) and failed logins (a RecordLoginFailures command, which also
// counts them against their users). A follower sends them to the leader.
type Submit func(ctx context.Context, denied []*statev1.AuditRecord, failures []*statev1.LoginFailure) error

// Recorder collects denied requests and failed logins (which no command
// of their own carries) and records them in batches. Its methods never
// block the request they describe.
type Recorder struct {
	submit Submit
	log    *slog.Logger
	now    func() time.Time

	mu       sync.Mutex
	denied   []*statev1.AuditRecord
	failures []*statev1.LoginFailure
	dropped  uint64 // since the last "dropped" record was queued
	total    uint64 // ever dropped (the metric)
	kick     chan struct{}
}

// NewRecorder returns a Recorder that records through submit once Run
// runs.
func NewRecorder(submit Submit, lg *slog.Logger) *Recorder {
	if lg == nil {
		lg = slog.Default()
	}
	return &Recorder{submit: submit, log: lg, now: time.Now, kick: make(chan struct{}, 1)}
}

// Denied records a refused request: who (the audit context ctx carries),
// what (method, the full gRPC name), the status code and why.
func (r *Recorder) Denied(ctx context.Context, method string, code codes.Code, reason string) {
	r.record(ctx, "denied", method, code, reason)
}

// Session records a session that changes no state but is an action of
// its caller all the same (a console attach, with its duration and bytes
// in message): kind "session", against target.
func (r *Recorder) Session(ctx context.Context, method, target string, code codes.Code, message string) {
	if c, ok := FromContext(ctx); !ok || c.Target == "" {
		c = callerContext(ctx)
		c.Target = target
		ctx = WithContext(ctx, c)
	}
	r.record(ctx, "session", method, code, message)
}

// record queues a record of a request that reached no command: kind
// "denied" (refused by access control) or "rejected" (refused by the
// handler before the log).
func (r *Recorder) record(ctx context.Context, kind, method string, code codes.Code, reason string) {
	c, ok := FromContext(ctx)
	if !ok {
		c = callerContext(ctx) // refused before the audit interceptor ran
	}
	if c.Source == "" {
		c.Source = auth.SourceOf(ctx)
	}
	c.Action = auth.MethodName(method)
	result := kind
	if kind == "session" {
		result = "ok"
		if code != codes.OK && code != codes.Canceled {
			result = "failed"
		}
	}
	rec := &statev1.AuditRecord{Kind: kind, Result: result, Code: code.String(), Message: reason,
		EventUnixNano: r.now().UnixNano(),
		Context: &statev1.AuditContext{Actor: c.Actor, Role: c.Role, Department: c.Department, Source: c.Source,
			TokenId: c.TokenID, Action: c.Action, Target: c.Target, Params: c.Params}}
	r.mu.Lock()
	r.denied = append(r.denied, rec)
	r.trimLocked()
	n := len(r.denied) + len(r.failures)
	r.mu.Unlock()
	if n >= FlushRecords {
		r.wake()
	}
}

// LoginFailed records a failed login: the token id and user it named (if
// any; never the secret) and why.
func (r *Recorder) LoginFailed(ctx context.Context, method, tokenID, user, reason string) {
	f := &statev1.LoginFailure{User: user, TokenId: tokenID, Reason: reason, Source: auth.SourceOf(ctx)}
	r.mu.Lock()
	r.failures = append(r.failures, f)
	r.trimLocked()
	n := len(r.denied) + len(r.failures)
	r.mu.Unlock()
	if n >= FlushRecords {
		r.wake()
	}
}

// Dropped is how many records a full queue dropped since the start.
func (r *Recorder) Dropped() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// Queued is how many records wait to be sent.
func (r *Recorder) Queued() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.denied) + len(r.failures)
}

func (r *Recorder) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// trimLocked drops the oldest records beyond QueueLimit (denied first:
// failed logins also count toward lockouts).
func (r *Recorder) trimLocked() {
	for len(r.denied)+len(r.failures) > QueueLimit {
		if len(r.denied) > 0 {
			r.denied = r.denied[1:]
		} else {
			r.failures = r.failures[1:]
		}
		r.dropped++
		r.total++
	}
}

// Run sends batches until ctx is done, then tries once more.
func (r *Recorder) Run(ctx context.Context) {
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), time.Second)
			r.Flush(fctx)
			cancel()
			return
		case <-t.C:
		case <-r.kick:
		}
		r.Flush(ctx)
	}
}

// Flush sends what is queued (at most a few batches); on failure the
// records go back to the queue for the next try.
func (r *Recorder) Flush(ctx context.Context) error {
	for range QueueLimit/FlushRecords + 1 {
		r.mu.Lock()
		if r.dropped > 0 {
			// Loss is recorded, never silent.
			r.denied = append([]*statev1.AuditRecord{{Kind: "dropped", Result: "dropped", EventUnixNano: r.now().UnixNano(),
				Message: fmt.Sprintf("%d audit records were dropped: the queue of %d was full", r.dropped, QueueLimit)}}, r.denied...)
			r.dropped = 0
		}
		nd, nf := min(len(r.denied), FlushRecords), min(len(r.failures), FlushRecords)
		if nd == 0 && nf == 0 {
			r.mu.Unlock()
			return nil
		}
		denied, failures := r.denied[:nd:nd], r.failures[:nf:nf]
		r.denied, r.failures = r.denied[nd:], r.failures[nf:]
		r.mu.Unlock()
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := r.submit(sctx, denied, failures)
		cancel()
		if err != nil {
			r.mu.Lock()
			r.denied = append(denied, r.denied...)
			r.failures = append(failures, r.failures...)
			r.trimLocked()
			r.mu.Unlock()
			r.log.Warn("audit: cannot record denied requests and failed logins yet; will retry", "records", nd+nf, "err", err)
			return err
		}
	}
	return nil
}

// UnaryInterceptor is the package's UnaryInterceptor, and records a
// request that would change state but was refused before it reached the
// log (bad input, a quota, no host with room): such a request proposes no
// command, so Apply writes no record of it. A request forwarded to the
// leader is recorded there.
func (r *Recorder) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	var inner context.Context
	resp, err := UnaryInterceptor(ctx, req, info, func(c context.Context, req any) (any, error) {
		inner = c
		return handler(c, req)
	})
	if err != nil && inner != nil && auth.Mutating(info.FullMethod) && !state.AuditHandled(inner) {
		st := status.Convert(err)
		r.record(inner, "rejected", info.FullMethod, st.Code(), st.Message())
	}
	return resp, err
}
