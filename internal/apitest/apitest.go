// Package apitest holds what tests share to talk to running controllers: the
// REST API, the cluster status over gRPC, and waiting for a condition. It
// needs no cgo, so the controller's own tests and the process-level tests
// (cmd/yunchid/clustertest) can both use it.
package apitest

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/internal/bearer"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

var (
	tokenMu sync.Mutex
	token   string
	dialer  func(ctx context.Context, network, addr string) (net.Conn, error)
	client  = http.DefaultClient
)

// SetDialer makes every helper here connect with dial (nil: the default
// dialer), e.g. from inside a test's network namespace
// (internal/netns), and returns the one it replaces. Like SetToken it is
// for the whole test process.
func SetDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) (previous func(ctx context.Context, network, addr string) (net.Conn, error)) {
	tokenMu.Lock()
	defer tokenMu.Unlock()
	previous, dialer = dialer, dial
	if dial == nil {
		client = http.DefaultClient
	} else {
		client = &http.Client{Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 8}}
	}
	return previous
}

// currentDialer is the dialer set with SetDialer (nil: the default).
func currentDialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	tokenMu.Lock()
	defer tokenMu.Unlock()
	return dialer
}

func httpClient() *http.Client {
	tokenMu.Lock()
	defer tokenMu.Unlock()
	return client
}

// SetToken sets the bearer token every helper here sends (REST
// Authorization header, gRPC authorization metadata); "" sends none. It
// returns the token it replaces, so a test can put it back. Tests that set
// it must not run in parallel with tests that use another.
func SetToken(tok string) (previous string) {
	tokenMu.Lock()
	defer tokenMu.Unlock()
	previous, token = token, tok
	return previous
}

// UseToken is SetToken for the rest of t, the previous token restored at
// its cleanup.
func UseToken(t testing.TB, tok string) {
	prev := SetToken(tok)
	t.Cleanup(func() { SetToken(prev) })
}

// Token is the token the helpers send now.
func Token() string {
	tokenMu.Lock()
	defer tokenMu.Unlock()
	return token
}

// Bearer returns gRPC per-RPC credentials sending tok ("" nothing) as a
// bearer token over a plaintext connection (tests and benchmarks on
// loopback). The metadata is made once: a call costs no allocation for it.
func Bearer(tok string) credentials.PerRPCCredentials { return bearer.Token(tok) }

// Dial opens a plaintext gRPC client connection to addr that sends the
// token set with SetToken (at dial time) with every call.
func Dial(addr string) (*grpc.ClientConn, error) {
	return DialToken(addr, Token())
}

// DialToken is Dial with a given token ("" sends none).
func DialToken(addr, tok string) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(Bearer(tok))}
	if d := currentDialer(); d != nil {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d(ctx, "tcp", addr) }))
	}
	return grpc.NewClient(addr, opts...)
}

// Do sends one JSON request to a controller's REST API and returns the HTTP
// status and the response body. It sends the token set with SetToken.
func Do(addr, method, path, body string) (int, []byte, error) {
	return DoWith(addr, method, path, body, nil)
}

// DoWith is Do with extra request headers.
func DoWith(addr, method, path, body string, header http.Header) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if tok := Token(); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for k, v := range header { // may replace Authorization
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient().Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Post is Do with POST.
func Post(addr, path, body string) (int, []byte, error) {
	return Do(addr, http.MethodPost, path, body)
}

func get(addr, path string) (int, []byte, error) {
	return Do(addr, http.MethodGet, path, "")
}

// Get reads a controller's REST resource and returns the HTTP status and the
// body; the test fails if the request cannot be made.
func Get(t testing.TB, addr, path string) (int, []byte) {
	t.Helper()
	code, b, err := get(addr, path)
	if err != nil {
		t.Fatal(err)
	}
	return code, b
}

// GetJSON reads a controller's REST resource into out; an answer other than
// 200 is an error carrying the body.
func GetJSON(addr, path string, out proto.Message) error {
	code, b, err := get(addr, path)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, code, b)
	}
	return protojson.Unmarshal(b, out)
}

// Status asks one controller for the cluster status.
func Status(addr string) (*yunchiv1.ClusterStatus, error) { return StatusToken(addr, Token()) }

// StatusToken is Status with the token tok.
func StatusToken(addr, tok string) (*yunchiv1.ClusterStatus, error) {
	conn, err := DialToken(addr, tok)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return yunchiv1.NewClusterServiceClient(conn).GetClusterStatus(ctx, &yunchiv1.GetClusterStatusRequest{})
}

// Formed says whether st shows a leader and n members, each with an API
// address (what a node needs before it can forward writes).
func Formed(st *yunchiv1.ClusterStatus, n int) bool {
	if st.LeaderId == "" || len(st.Members) != n {
		return false
	}
	for _, m := range st.Members {
		if m.ApiAddress == "" {
			return false
		}
	}
	return true
}

// Converged says whether every controller at addrs knows a leader and has
// applied all that any of them reported committed when it was called. It
// reads every controller's status once, then reads again, for up to
// convergeWait, each one whose applied index is below the highest commit
// index of that pass, until it reaches it. Writes that go on meanwhile (a
// test's prober, the leader's own heartbeat records) move the commit index
// on, and a follower learns of a commit only with the leader's next
// message: comparing indexes read in one pass never held while writes came
// faster than a pass and that lag.
func Converged(addrs []string) bool {
	var commit uint64
	applied := make([]uint64, len(addrs))
	for i, addr := range addrs {
		st, err := Status(addr)
		if err != nil || st.LeaderId == "" {
			return false
		}
		commit, applied[i] = max(commit, st.CommitIndex), st.AppliedIndex
	}
	deadline := time.Now().Add(convergeWait)
	for i, addr := range addrs {
		for applied[i] < commit {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(20 * time.Millisecond)
			st, err := Status(addr)
			if err != nil || st.LeaderId == "" {
				return false
			}
			applied[i] = st.AppliedIndex
		}
	}
	return true
}

// convergeWait is how long Converged waits for the controllers to apply
// what was committed when it was called.
const convergeWait = 2 * time.Second

// Eventually polls ok every 50 ms until it holds, and fails the test if d
// passes first.
func Eventually(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	if err := Poll(context.Background(), d, what, ok); err != nil {
		t.Fatal(err)
	}
}

// Poll calls ok every 50 ms until it holds (nil), ctx ends (ctx's error) or
// d passes (an error saying what was awaited).
func Poll(ctx context.Context, d time.Duration, what string, ok func() bool) error {
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// FreePortOffset returns an offset such that every loopback port in ports
// (ascending) plus the offset was free a moment ago: a daemon whose ports
// are fixed relative to each other (yunchid dev: API base..base+2, raft
// base+10..base+12) can then run beside another copy of itself.
func FreePortOffset(t testing.TB, ports []int) int {
	t.Helper()
	if len(ports) == 0 {
		return 0
	}
	// Below the ephemeral range (32768-60999 on Linux), where outgoing
	// connections take their local ports: a port there, free when checked,
	// can be taken by another test's connection before the daemon binds it
	// (CI met it: a controller of a doc's rehearsal never came up). Bases
	// from 20000 to 29000 (clustertest.FreePort takes 29000-32500).
	span := ports[len(ports)-1] - ports[0]
	if span > 8000 {
		t.Fatalf("ports span %d: too wide for a free set below the ephemeral range", span)
	}
	for try := 0; try < 200; try++ {
		base := 20000 + rand.IntN(9000-span)
		off := base - ports[0]
		ok := true
		for _, p := range ports {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+off))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return off
		}
	}
	t.Fatal("no free set of loopback ports found")
	return 0
}

// CreateHostToken makes a token for the agent of hostID (no expiry)
// through addr's REST API, authenticated with secadmin (a security
// administrator's token), and returns the token.
func CreateHostToken(addr, secadmin, hostID string) (string, error) {
	body, err := protojson.Marshal(&yunchiv1.CreateTokenRequest{HostId: hostID, Ttl: "0", Description: "test agent " + hostID})
	if err != nil {
		return "", err
	}
	code, b, err := DoWith(addr, http.MethodPost, "/v1/tokens", string(body), http.Header{"Authorization": {"Bearer " + secadmin}})
	if err != nil {
		return "", err
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("POST /v1/tokens for host %s: %d %s", hostID, code, b)
	}
	var resp yunchiv1.CreateTokenResponse
	if err := protojson.Unmarshal(b, &resp); err != nil {
		return "", err
	}
	if resp.GetSecret() == "" {
		return "", fmt.Errorf("POST /v1/tokens for host %s: no token in the answer", hostID)
	}
	return resp.GetSecret(), nil
}
