package controller

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/yunchi/yunchi/controller/api"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// member is one in-process controller of a test cluster.
type member struct {
	id, center, dir string
	advertise       string // the API address others dial ("": the bound one)
	trans           *raft.InmemTransport
	ctl             *Controller
	cancel          context.CancelFunc
	done            chan struct{}
}

// inmemCluster is 3 controllers in one process: raft over raft's in-memory
// transport, the API on real loopback ports.
type inmemCluster struct {
	t       testing.TB
	members []*member
	hostTTL time.Duration // 0: an hour (hosts here mostly have no agents)
	segSize int           // raft log segment size; 0: the default
	hbEvery time.Duration // heartbeat interval announced to agents (0: the default)
	// auth: controllers authenticate callers (the tests of access and
	// identity); other tests run without (Config.NoAuth). admins are the
	// bootstrap tokens then.
	auth   bool
	admins AdminTokens
	// rateLimit per caller (0: the default; see Config.RateLimit).
	rateLimit float64
}

func (c *inmemCluster) start(m *member, bootstrap bool, join []string) {
	c.t.Helper()
	// Never dialled: the in-memory transport routes by name.
	_, m.trans = raft.NewInmemTransport(raft.ServerAddress("inmem-" + m.id + ":7000"))
	for _, o := range c.members {
		if o != m && o.trans != nil {
			m.trans.Connect(o.trans.LocalAddr(), o.trans)
			o.trans.Connect(m.trans.LocalAddr(), m.trans)
		}
	}
	ctl, err := New(Config{Insecure: true,
		ID: m.id, Center: m.center, Listen: "127.0.0.1:0", Advertise: m.advertise, DataDir: m.dir,
		Bootstrap: bootstrap, Join: join, RaftTransport: m.trans, FastRaft: true, NoAuth: !c.auth, JoinToken: c.admins.Sysadmin, AdminTokensOut: io.Discard,
		HostTTL: cmp.Or(c.hostTTL, time.Hour), LogSegmentSize: c.segSize, HeartbeatInterval: c.hbEvery,
		RateLimit: c.rateLimit,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.ctl, m.cancel, m.done = ctl, cancel, make(chan struct{})
	go func() { defer close(m.done); ctl.Run(ctx) }()
}

// kill stops a member at once: its raft shuts down and its peers can no
// longer reach it.
func (c *inmemCluster) kill(m *member) {
	for _, o := range c.members {
		if o != m && o.trans != nil {
			o.trans.Disconnect(m.trans.LocalAddr())
		}
	}
	m.trans.DisconnectAll()
	m.cancel()
	<-m.done
	m.ctl = nil
}

func (c *inmemCluster) stopAll() {
	for _, m := range c.members {
		if m.ctl != nil {
			m.cancel()
			<-m.done
		}
	}
}

func newInmemCluster(t *testing.T) *inmemCluster {
	return newInmemClusterTTL(t, 0)
}

// newInmemClusterTTL is newInmemCluster with hosts marked down after ttl
// without a heartbeat.
func newInmemClusterTTL(t testing.TB, ttl time.Duration) *inmemCluster {
	c := &inmemCluster{t: t, hostTTL: ttl}
	for _, id := range []string{"a1", "a2", "b1"} {
		c.members = append(c.members, &member{id: id, center: id, dir: filepath.Join(t.TempDir(), id)})
	}
	c.form(nil)
	return c
}

// form starts c's members (the first bootstraps, the others join it) and
// waits until every one sees 3 voters and the leader. started, when not nil,
// runs right after each member starts.
func (c *inmemCluster) form(started func(*member)) {
	t := c.t
	t.Cleanup(c.stopAll)
	for i, m := range c.members {
		if i == 0 {
			c.start(m, true, nil)
			if c.auth {
				apitest.Eventually(t, 30*time.Second, "the administrator tokens", func() bool {
					var err error
					c.admins, err = ReadAdminTokens(m.dir)
					return err == nil
				})
			}
		} else {
			c.start(m, false, []string{c.members[0].ctl.Addr()})
		}
		if started != nil {
			started(m)
		}
	}
	// Every node, not just the leader, must know the leader and every
	// member's API address before it can forward writes.
	apitest.Eventually(t, 30*time.Second, "3 voters with a leader, seen by every node", func() bool {
		for _, n := range c.members {
			st, err := c.status(n.ctl.Addr())
			if err != nil || !apitest.Formed(st, 3) {
				return false
			}
		}
		return true
	})
}

func (c *inmemCluster) leader() *member {
	for _, m := range c.members {
		if m.ctl != nil && m.ctl.Node().IsLeader() {
			return m
		}
	}
	return nil
}

func (c *inmemCluster) alive() []*member {
	var out []*member
	for _, m := range c.members {
		if m.ctl != nil {
			out = append(out, m)
		}
	}
	return out
}

func dial(t testing.TB, addr string) *grpc.ClientConn {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(resendNotProposed))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// notProposedWait bounds how long resendNotProposed keeps resending.
const notProposedWait = 20 * time.Second

// resendNotProposed sends a unary call again, as the CLI does, while a
// controller answers UNAVAILABLE with reason NOT_PROPOSED: nothing reached
// raft (no leader yet, leadership changing), so sending it again is safe
// for every call. On a loaded machine (CI's, under -race) a leader of the
// tests' fast raft steps down now and then; a test of something else must
// not fail for it. Other UNAVAILABLE answers (the outcome unknown, a
// damaged image) come back at once.
func resendNotProposed(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	deadline := time.Now().Add(notProposedWait)
	for {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if status.Code(err) != codes.Unavailable || errorReason(err) != api.NotProposedReason || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

const gib = int64(1) << 30

// registerHosts registers hosts through a follower (so the writes are
// forwarded) the way agents do.
func registerHosts(t testing.TB, addr string, n int, cpus, mem int64) {
	t.Helper()
	registerHostsDisk(t, addr, n, cpus, mem, 1000*gib)
}

// registerHostsDisk is registerHosts with disk bytes per host.
func registerHostsDisk(t testing.TB, addr string, n int, cpus, mem, disk int64) {
	t.Helper()
	ac := yunchiv1.NewAgentServiceClient(dial(t, addr))
	for i := 0; i < n; i++ {
		center := []string{"a1", "a2", "b1"}[i%3]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := ac.RegisterHost(ctx, &yunchiv1.RegisterHostRequest{Facts: &yunchiv1.HostFacts{
			Id: fmt.Sprintf("%s-h%02d", center, i/3+1), Center: center, Hostname: "sim",
			Capacity: &yunchiv1.Resources{Vcpus: cpus, MemoryBytes: mem, DiskBytes: disk},
		}})
		cancel()
		if err != nil {
			t.Fatalf("register host %d: %v", i, err)
		}
	}
}

// listVMs is one controller's own list of VMs (REST, local read), every
// page of it.
func listVMs(t *testing.T, addr string) *yunchiv1.ListVMsResponse {
	t.Helper()
	all := &yunchiv1.ListVMsResponse{}
	token := ""
	for {
		code, body := apitest.Get(t, addr, "/v1/vms?pageToken="+url.QueryEscape(token))
		if code != 200 {
			t.Fatalf("%s: list vms: %d %s", addr, code, body)
		}
		var page yunchiv1.ListVMsResponse
		if err := protojson.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		all.Vms = append(all.Vms, page.Vms...)
		if token = page.NextPageToken; token == "" {
			return all
		}
	}
}

// checkInvariants asserts, on one controller's own state, that every
// acknowledged VM exists exactly once, names its host's center, and no host
// is over capacity.
func checkInvariants(t *testing.T, addr string, acked map[string]bool) {
	t.Helper()
	list := listVMs(t, addr)
	seen := map[string]int{}
	used := map[string]*yunchiv1.Resources{}
	for _, v := range list.Vms {
		seen[v.Name]++
		if used[v.HostId] == nil {
			used[v.HostId] = &yunchiv1.Resources{}
		}
		used[v.HostId].Vcpus += int64(v.Vcpus)
		used[v.HostId].MemoryBytes += v.MemoryBytes
		used[v.HostId].DiskBytes += v.DiskBytes
	}
	for name := range acked {
		if seen[name] != 1 {
			t.Errorf("%s: acknowledged vm %s exists %d times", addr, name, seen[name])
		}
	}
	for name, n := range seen {
		if n != 1 {
			t.Errorf("%s: vm %s exists %d times", addr, name, n)
		}
	}
	code, body := apitest.Get(t, addr, "/v1/hosts")
	var hosts yunchiv1.ListHostsResponse
	if err := protojson.Unmarshal(body, &hosts); err != nil || code != 200 {
		t.Fatalf("list hosts: %d %v", code, err)
	}
	centers := map[string]string{}
	for _, h := range hosts.Hosts {
		centers[h.Id] = h.Center
	}
	for _, v := range list.Vms {
		if v.HostCenter != centers[v.HostId] {
			t.Errorf("%s: vm %s on %s lists host center %q, the host is in %q", addr, v.Name, v.HostId, v.HostCenter, centers[v.HostId])
		}
	}
	for _, h := range hosts.Hosts {
		u := used[h.Id]
		if u == nil {
			u = &yunchiv1.Resources{}
		}
		// Allocatable: (capacity - reserved) * effective ratio.
		if a := h.Allocatable; u.Vcpus > a.GetVcpus() || u.MemoryBytes > a.GetMemoryBytes() || u.DiskBytes > a.GetDiskBytes() {
			t.Errorf("%s: host %s over allocatable: used %v of %v", addr, h.Id, u, a)
		}
		if u.Vcpus != h.Allocated.GetVcpus() || u.MemoryBytes != h.Allocated.GetMemoryBytes() {
			t.Errorf("%s: host %s allocation %v does not match its VMs %v", addr, h.Id, h.Allocated, u)
		}
	}
}

// TestLeaderKilledDuringCreates: VMs are created through REST (round robin
// over the controllers, so most writes are forwarded) while the leader is
// killed midway. Afterwards every acknowledged VM exists exactly once on
// the new leader, on the surviving follower and on the killed controller
// once it comes back; no host is over capacity.
func TestLeaderKilledDuringCreates(t *testing.T) {
	c := newInmemCluster(t)
	registerHosts(t, c.members[1].ctl.Addr(), 6, 16, 64*gib)

	const total = 60
	acked := map[string]bool{}
	var mu sync.Mutex
	killed := false
	for i := 0; i < total; i++ {
		if i == total/3 {
			l := c.leader()
			if l == nil {
				t.Fatal("no leader before the kill")
			}
			c.kill(l)
			killed = true
			t.Logf("killed leader %s after %d creates", l.id, i)
		}
		name := fmt.Sprintf("vm-%03d", i)
		body := fmt.Sprintf(`{"name":%q,"vcpus":1,"memory":"2GiB","disk":"10GiB"}`, name)
		// A client retries on 503 (no leader yet) against any live controller.
		for attempt := 0; attempt < 100; attempt++ {
			alive := c.alive()
			m := alive[(i+attempt)%len(alive)]
			code, resp, err := apitest.Post(m.ctl.Addr(), "/v1/vms", body)
			if err == nil && code == 200 {
				mu.Lock()
				acked[name] = true
				mu.Unlock()
				break
			}
			if err == nil && code == 409 && bytes.Contains(resp, []byte("already exists")) {
				break // an earlier attempt was applied but its answer was lost: not acknowledged
			}
			if err == nil && code != 503 && code != 409 {
				t.Fatalf("create %s: %d %s", name, code, resp)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !killed || len(acked) < total*9/10 {
		t.Fatalf("only %d of %d creates acknowledged", len(acked), total)
	}
	waitConverged(t, c.alive())
	for _, m := range c.alive() {
		checkInvariants(t, m.ctl.Addr(), acked)
	}
	// The killed controller comes back from its data dir and catches up.
	var dead *member
	for _, m := range c.members {
		if m.ctl == nil {
			dead = m
		}
	}
	c.start(dead, false, nil)
	waitConverged(t, c.members)
	for _, m := range c.members {
		checkInvariants(t, m.ctl.Addr(), acked)
	}
}

func waitConverged(t *testing.T, ms []*member) {
	t.Helper()
	var addrs []string
	for _, m := range ms {
		addrs = append(addrs, m.ctl.Addr())
	}
	apitest.Eventually(t, 30*time.Second, "controllers to apply everything committed", func() bool {
		return apitest.Converged(addrs)
	})
}

// TestSilentHostsAreMarkedDown: the leader marks a host that stops
// heartbeating down after the TTL, and only that host.
func TestSilentHostsAreMarkedDown(t *testing.T) {
	c := newInmemClusterTTL(t, 2*time.Second)
	addr := c.members[1].ctl.Addr()
	registerHosts(t, addr, 2, 8, 16*gib) // a1-h01 and a2-h01
	ac := yunchiv1.NewAgentServiceClient(dial(t, addr))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // a1-h01 keeps heartbeating; a2-h01 is silent
		defer close(done)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			ac.Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "a1-h01"})
			cancel()
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	defer func() { close(stop); <-done }()
	stateOf := func(id string) yunchiv1.HostState {
		_, body := apitest.Get(t, addr, "/v1/hosts/"+id+"?consistent=true")
		var h yunchiv1.Host
		if err := protojson.Unmarshal(body, &h); err != nil {
			t.Fatalf("host %s: %v: %s", id, err, body)
		}
		return h.State
	}
	apitest.Eventually(t, 20*time.Second, "a2-h01 marked down", func() bool {
		return stateOf("a2-h01") == yunchiv1.HostState_HOST_STATE_DOWN
	})
	if st := stateOf("a1-h01"); st != yunchiv1.HostState_HOST_STATE_READY {
		t.Fatalf("heartbeating host a1-h01 is %v", st)
	}
}

// status is apitest.Status, with the sysadmin's token when c.auth.
func (c *inmemCluster) status(addr string) (*yunchiv1.ClusterStatus, error) {
	if !c.auth {
		return apitest.Status(addr)
	}
	return apitest.StatusToken(addr, c.admins.Sysadmin)
}

// resendNotProposed sends again only what never reached raft, and gives up
// with the last answer when the context ends.
func TestResendNotProposed(t *testing.T) {
	notProposed := func() error {
		st, err := status.New(codes.Unavailable, "leadership is changing").WithDetails(&errdetails.ErrorInfo{Reason: api.NotProposedReason})
		if err != nil {
			t.Fatal(err)
		}
		return st.Err()
	}
	for _, tc := range []struct {
		name    string
		answers []error
		calls   int
		code    codes.Code
	}{
		{"not proposed twice, then done", []error{notProposed(), notProposed(), nil}, 3, codes.OK},
		{"outcome unknown", []error{status.Error(codes.Unavailable, "leadership lost"), nil}, 1, codes.Unavailable},
		{"refused", []error{status.Error(codes.ResourceExhausted, "no room"), nil}, 1, codes.ResourceExhausted},
	} {
		calls := 0
		err := resendNotProposed(context.Background(), "/m", nil, nil, nil, func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
			calls++
			return tc.answers[calls-1]
		})
		if calls != tc.calls || status.Code(err) != tc.code {
			t.Errorf("%s: %d calls, %v; want %d calls, %s", tc.name, calls, err, tc.calls, tc.code)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	calls := 0
	err := resendNotProposed(ctx, "/m", nil, nil, nil, func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		calls++
		return notProposed()
	})
	if errorReason(err) != api.NotProposedReason || calls < 2 {
		t.Fatalf("with the context ending: %d calls, %v", calls, err)
	}
}
