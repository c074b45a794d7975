package chaos

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/yunchi/yunchi/internal/bearer"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// DialFunc connects to a controller (from inside the test's network).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Recorder keeps a run's history; its clock starts with the run.
type Recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   History
}

// NewRecorder starts a run's clock.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// Now is nanoseconds since the run started (monotonic).
func (r *Recorder) Now() int64 { return int64(time.Since(r.start)) }

func (r *Recorder) add(op Op) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// History returns a copy of what was recorded so far.
func (r *Recorder) History() History {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append(History(nil), r.ops...)
}

// Workload is the clients of a run: each creates, reads, starts, stops and
// deletes VMs of a small shared set of names (so that they contend),
// creates and deletes placement groups and raises a quota, through every
// controller in turn, half of them over gRPC and half over REST, each
// mutating call with a request id that its retries reuse, as a real client
// does. Every operation is recorded.
type Workload struct {
	Controllers []string // API addresses
	Dial        DialFunc
	Sysadmin    string // token for VMs and groups
	Secadmin    string // token for quotas
	Department  string
	Project     string
	Names       int   // VM names shared by the clients
	Clients     int   // concurrent clients
	Seed        int64 // the run's seed: each client's choices follow from it
	// OpTimeout bounds one operation with its retries; past it the
	// outcome is Unknown.
	OpTimeout time.Duration
	Rec       *Recorder

	quota atomic.Int64 // the VMs limit last asked for (only grows)
	// Counters for the report.
	retries, unexpected atomic.Int64
}

// SetQuotaFloor sets the VMs limit the workload starts raising from.
func (w *Workload) SetQuotaFloor(n int64) { w.quota.Store(n) }

// Retries is how many attempts were retries of an earlier one.
func (w *Workload) Retries() int64 { return w.retries.Load() }

// Unexpected is how many answers were errors no client should get
// (invalid argument, permission denied, unauthenticated, internal).
func (w *Workload) Unexpected() int64 { return w.unexpected.Load() }

// Run runs the clients until ctx ends; operations under way then end as
// Unknown (writes) or are dropped (reads).
func (w *Workload) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := 0; i < w.Clients; i++ {
		c := &client{w: w, id: i, rest: i%2 == 1, rng: mrand.New(mrand.NewPCG(uint64(w.Seed), uint64(i)))}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.close()
			c.loop(ctx)
		}()
	}
	wg.Wait()
}

type client struct {
	w     *Workload
	id    int
	rest  bool
	rng   *mrand.Rand
	seq   int
	next  int // controller tried next
	conns map[string]*grpc.ClientConn
	hc    *http.Client
}

func (c *client) close() {
	for _, cc := range c.conns {
		cc.Close()
	}
	if c.hc != nil {
		c.hc.CloseIdleConnections()
	}
}

func (c *client) loop(ctx context.Context) {
	for ctx.Err() == nil {
		op := c.pick()
		c.run(ctx, op)
		select { // think time: keeps two cores for the cluster
		case <-ctx.Done():
		case <-time.After(time.Duration(5+c.rng.IntN(25)) * time.Millisecond):
		}
	}
}

// pick chooses the next operation.
func (c *client) pick() Op {
	c.seq++
	op := Op{Client: c.id, Seq: c.seq, Project: c.w.Project, Transport: "grpc"}
	if c.rest {
		op.Transport = "rest"
	}
	name := func() string { return fmt.Sprintf("vm-%d", c.rng.IntN(c.w.Names)) }
	switch r := c.rng.IntN(100); {
	case r < 25:
		op.Kind, op.Name = OpCreate, name()
		op.VCPUs = int32(1 + c.rng.IntN(3))
		op.MemoryBytes = int64(1+c.rng.IntN(2)) << 30
	case r < 55:
		op.Kind, op.Name = OpGet, name()
	case r < 67:
		op.Kind, op.Name = OpStart, name()
	case r < 79:
		op.Kind, op.Name = OpStop, name()
	case r < 92:
		op.Kind, op.Name = OpDelete, name()
	case r < 95:
		op.Kind, op.Name = OpCreateGroup, fmt.Sprintf("g-%d", c.rng.IntN(3))
	case r < 99:
		op.Kind, op.Name = OpDeleteGroup, fmt.Sprintf("g-%d", c.rng.IntN(3))
	default:
		// Raise the limit by one, up to three quarters of the names, so
		// that it keeps biting; at the cap the same limit is set again.
		// Never lower: see CheckQuota.
		op.Kind = OpSetQuota
		op.Limit = c.w.quota.Load()
		if op.Limit < int64(c.w.Names*3/4) {
			op.Limit = c.w.quota.Add(1)
		}
	}
	if op.Kind != OpGet {
		op.RequestID = newRequestID()
	}
	return op
}

func newRequestID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// run does one operation: attempts through the controllers in turn until a
// definite answer, the op's deadline or the run's end, and records it.
func (c *client) run(ctx context.Context, op Op) {
	opCtx, cancel := context.WithTimeout(ctx, c.w.OpTimeout)
	defer cancel()
	op.Call = c.w.Rec.Now()
	backoff := 50 * time.Millisecond
	for {
		addr := c.w.Controllers[c.next%len(c.w.Controllers)]
		if op.Via == "" {
			op.Via = addr
		}
		op.Attempts++
		if op.Attempts > 1 {
			c.w.retries.Add(1)
		}
		attemptCtx, cancelAttempt := context.WithTimeout(opCtx, 2*time.Second)
		var code codes.Code
		var err error
		if c.rest {
			code, err = c.doREST(attemptCtx, addr, &op)
		} else {
			code, err = c.doGRPC(attemptCtx, addr, &op)
		}
		cancelAttempt()
		outcome, retry := classify(code)
		if !retry {
			op.Return = c.w.Rec.Now()
			op.Outcome = outcome
			if err != nil && outcome != OK {
				op.Err = err.Error()
			}
			if outcome == "" {
				c.w.unexpected.Add(1)
				op.Outcome = Rejected // refused before anything was done
				op.Err = "unexpected: " + op.Err
			}
			c.w.Rec.add(op)
			return
		}
		op.Err = fmt.Sprint(err)
		c.next++ // another controller next time
		select {
		case <-opCtx.Done():
			if op.Kind == OpGet {
				return // a read without an answer tells nothing
			}
			op.Return = c.w.Rec.Now()
			op.Outcome = Unknown
			c.w.Rec.add(op)
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 400*time.Millisecond)
	}
}

// classify maps an answer to an outcome, or says to retry (the write may
// or may not have happened: the same request id is sent again). "" with
// retry false: an answer no correct client should get.
func classify(code codes.Code) (outcome string, retry bool) {
	switch code {
	case codes.OK:
		return OK, false
	case codes.NotFound:
		return NotFound, false
	case codes.AlreadyExists:
		return AlreadyExists, false
	case codes.FailedPrecondition:
		return FailedPrecondition, false
	case codes.ResourceExhausted:
		return Rejected, false // no capacity, quota, or rate limit: nothing done
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.Unknown:
		return "", true
	}
	return "", false
}

func (c *client) conn(addr, tok string) (*grpc.ClientConn, error) {
	key := addr + "|" + tok
	if cc, ok := c.conns[key]; ok {
		return cc, nil
	}
	if c.conns == nil {
		c.conns = map[string]*grpc.ClientConn{}
	}
	dial := c.w.Dial
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer.Token(tok)),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return dial(ctx, "tcp", a) }))
	if err != nil {
		return nil, err
	}
	c.conns[key] = cc
	return cc, nil
}

func (c *client) doGRPC(ctx context.Context, addr string, op *Op) (codes.Code, error) {
	tok := c.w.Sysadmin
	if op.Kind == OpSetQuota {
		tok = c.w.Secadmin
	}
	cc, err := c.conn(addr, tok)
	if err != nil {
		return codes.Unavailable, err
	}
	if op.RequestID != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", op.RequestID)
	}
	vms := yunchiv1.NewVMServiceClient(cc)
	act := &yunchiv1.VMActionRequest{Name: op.Name, Project: op.Project}
	var vm *yunchiv1.VM
	switch op.Kind {
	case OpCreate:
		vm, err = vms.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: op.Name, Project: op.Project, Vcpus: op.VCPUs, Memory: strconv.FormatInt(op.MemoryBytes, 10)})
	case OpGet:
		vm, err = vms.GetVM(ctx, &yunchiv1.GetVMRequest{Name: op.Name, Project: op.Project, Consistent: true})
	case OpStart:
		vm, err = vms.StartVM(ctx, act)
	case OpStop:
		vm, err = vms.StopVM(ctx, act)
	case OpDelete:
		vm, err = vms.DeleteVM(ctx, act)
	case OpCreateGroup:
		_, err = yunchiv1.NewGroupServiceClient(cc).CreateGroup(ctx, &yunchiv1.CreateGroupRequest{Name: op.Name, Project: op.Project, Policy: yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY, Soft: true})
	case OpDeleteGroup:
		_, err = yunchiv1.NewGroupServiceClient(cc).DeleteGroup(ctx, &yunchiv1.DeleteGroupRequest{Name: op.Name, Project: op.Project})
	case OpSetQuota:
		lim := op.Limit
		_, err = yunchiv1.NewQuotaServiceClient(cc).SetQuota(ctx, &yunchiv1.SetQuotaRequest{Department: c.w.Department, Project: op.Project, Vms: &lim})
	}
	if err != nil {
		return status.Code(err), err
	}
	fill(op, vm)
	return codes.OK, nil
}

// fill records what an OK answer said about the VM.
func fill(op *Op, vm *yunchiv1.VM) {
	if vm == nil {
		return
	}
	op.VMID, op.HostID, op.Revision = vm.Id, vm.HostId, vm.Revision
	switch vm.Desired {
	case yunchiv1.PowerState_POWER_STATE_RUNNING:
		op.Desired = Running
	case yunchiv1.PowerState_POWER_STATE_STOPPED:
		op.Desired = Stopped
	case yunchiv1.PowerState_POWER_STATE_DELETED:
		op.Desired = Deleting
	}
}

func (c *client) doREST(ctx context.Context, addr string, op *Op) (codes.Code, error) {
	if c.hc == nil {
		c.hc = &http.Client{Transport: &http.Transport{DialContext: c.w.Dial, MaxIdleConnsPerHost: 2}}
	}
	tok := c.w.Sysadmin
	q := url.Values{"project": {op.Project}}
	var method, path string
	var body any
	vmPath := "/v1/vms/" + url.PathEscape(op.Name)
	switch op.Kind {
	case OpCreate:
		method, path = http.MethodPost, "/v1/vms"
		body = map[string]any{"name": op.Name, "project": op.Project, "vcpus": op.VCPUs, "memory": strconv.FormatInt(op.MemoryBytes, 10)}
		q = nil
	case OpGet:
		method, path = http.MethodGet, vmPath
		q.Set("consistent", "true")
	case OpStart, OpStop:
		method, path = http.MethodPost, vmPath+":"+op.Kind
		body = map[string]any{"project": op.Project}
		q = nil
	case OpDelete:
		method, path = http.MethodDelete, vmPath
	case OpCreateGroup:
		method, path = http.MethodPost, "/v1/groups"
		body = map[string]any{"name": op.Name, "project": op.Project, "policy": "GROUP_POLICY_ANTI_AFFINITY", "soft": true}
		q = nil
	case OpDeleteGroup:
		method, path = http.MethodDelete, "/v1/groups/"+url.PathEscape(op.Name)
	case OpSetQuota:
		tok = c.w.Secadmin
		method, path = http.MethodPost, "/v1/quotas"
		body = map[string]any{"department": c.w.Department, "project": op.Project, "vms": strconv.FormatInt(op.Limit, 10)}
		q = nil
	}
	u := "http://" + addr + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return codes.Internal, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if op.RequestID != "" {
		req.Header.Set("Idempotency-Key", op.RequestID)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return codes.Unavailable, err // not answered: may or may not have happened
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return codes.Unavailable, err
	}
	if resp.StatusCode != http.StatusOK {
		return restCode(resp.StatusCode, b)
	}
	switch op.Kind {
	case OpCreate, OpGet, OpStart, OpStop, OpDelete:
		vm := &yunchiv1.VM{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, vm); err != nil {
			return codes.Internal, fmt.Errorf("decode %s answer: %w", op.Kind, err)
		}
		fill(op, vm)
	}
	return codes.OK, nil
}

// restCode reads the gRPC code of a REST error (the gateway's
// {"code": n, "message": ...}); without one, the HTTP status says.
func restCode(httpStatus int, body []byte) (codes.Code, error) {
	var e struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &e) == nil && e.Code != nil {
		return codes.Code(*e.Code), fmt.Errorf("HTTP %d: %s", httpStatus, e.Message)
	}
	err := fmt.Errorf("HTTP %d: %.200s", httpStatus, body)
	switch httpStatus {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return codes.Unavailable, err
	case http.StatusTooManyRequests:
		return codes.ResourceExhausted, err
	}
	return codes.Unknown, errors.Join(err, errors.New("no gRPC code in the answer"))
}
