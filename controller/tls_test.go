package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/internal/apitest"
	"github.com/yunchi/yunchi/internal/pki"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// tlsCluster is controllers with TLS on the API and raft, all on loopback.
type tlsCluster struct {
	t    *testing.T
	dir  string
	ctls []*Controller
	pool *x509.CertPool
	// admin is the bootstrap sysadmin's token, sent on calls made without
	// a client certificate (users' calls).
	admin string
}

func (c *tlsCluster) start(cfg Config) (*Controller, error) {
	cfg.Listen, cfg.RaftListen, cfg.FastRaft = "127.0.0.1:0", "127.0.0.1:0", true
	cfg.DataDir = filepath.Join(c.dir, cfg.ID)
	ctl, err := New(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ctl.Run(ctx) }()
	c.t.Cleanup(func() { cancel(); <-done })
	c.ctls = append(c.ctls, ctl)
	return ctl, nil
}

// conn dials a controller with TLS verified by the cluster CA, presenting
// cert when not nil, else the sysadmin's token.
func (c *tlsCluster) conn(addr string, cert *tls.Certificate) *grpc.ClientConn {
	c.t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientConfig(c.pool, cert)))}
	if cert == nil && c.admin != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(apitest.Bearer(c.admin)))
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cc.Close() })
	return cc
}

func (c *tlsCluster) status(addr string) (*yunchiv1.ClusterStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return yunchiv1.NewClusterServiceClient(c.conn(addr, nil)).GetClusterStatus(ctx, &yunchiv1.GetClusterStatusRequest{})
}

func (c *tlsCluster) joinToken(kind yunchiv1.JoinTokenKind, ttl int64) *yunchiv1.JoinToken {
	c.t.Helper()
	var jt *yunchiv1.JoinToken
	if err := retryElection(func(ctx context.Context) (err error) {
		jt, err = yunchiv1.NewClusterServiceClient(c.conn(c.ctls[0].Addr(), nil)).CreateJoinToken(ctx, &yunchiv1.CreateJoinTokenRequest{Kind: kind, TtlSeconds: ttl})
		return err
	}); err != nil {
		c.t.Fatal(err)
	}
	return jt
}

// retryElection runs a call that should succeed again while it answers
// Unavailable (an election under way on a loaded machine), for at most 30 s.
func retryElection(call func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	for ctx.Err() == nil {
		if err = call(ctx); status.Code(err) != codes.Unavailable {
			return err
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	return err
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("%s: %v, want %s saying %q", what, err, code, msg)
	}
}

// TestTLSCluster: 3 controllers with TLS (the 2nd and 3rd join with
// controller join tokens and the CA pin; raft between them over mutual
// TLS), an agent's credentials got with a host join token through a
// follower, and what mutual TLS refuses.
func TestTLSCluster(t *testing.T) {
	c := &tlsCluster{t: t, dir: t.TempDir()}
	c1, err := c.start(Config{ID: "c1", Center: "a1", Bootstrap: true})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(TLSDir(c.dir + "/c1"))
	if err != nil {
		t.Fatal(err)
	}
	c.pool = ca.Pool()
	hash := c1.CAHash()
	apitest.Eventually(t, 20*time.Second, "the administrators' tokens", func() bool {
		toks, err := ReadAdminTokens(filepath.Join(c.dir, "c1"))
		c.admin = toks.Sysadmin
		return err == nil
	})
	apitest.Eventually(t, 20*time.Second, "c1 leads", func() bool {
		st, err := c.status(c1.Addr())
		return err == nil && st.LeaderId == "c1"
	})

	// Controllers join with one-time tokens and the pin.
	j2 := c.joinToken(yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER, 0)
	if j2.CaCertHash != hash {
		t.Fatalf("join token says CA %s, bootstrap %s", j2.CaCertHash, hash)
	}
	j3 := c.joinToken(yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER, 0)
	for _, j := range []struct{ id, token string }{{"c2", j2.Token}, {"c3", j3.Token}} {
		if _, err := c.start(Config{ID: j.id, Center: "a2", Join: []string{c1.Addr()}, JoinToken: j.token, CACertHash: hash}); err != nil {
			t.Fatal(err)
		}
	}
	addrs := []string{c.ctls[0].Addr(), c.ctls[1].Addr(), c.ctls[2].Addr()}
	apitest.Eventually(t, 30*time.Second, "3 voters seen by each controller", func() bool {
		for _, a := range addrs {
			st, err := c.status(a)
			if err != nil || !apitest.Formed(st, 3) {
				return false
			}
		}
		return true
	})
	// A used token, a wrong pin, a host token for a controller.
	if _, err := New(Config{ID: "c4", Listen: "127.0.0.1:0", RaftListen: "127.0.0.1:0", DataDir: filepath.Join(c.dir, "c4"),
		Join: []string{c1.Addr()}, JoinToken: j2.Token, CACertHash: hash}); err == nil || !strings.Contains(err.Error(), "already used (by c2)") || strings.Contains(err.Error(), j2.Token) {
		t.Fatalf("joining with a used token: %v", err)
	}
	other, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	j5 := c.joinToken(yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER, 0)
	if _, err := New(Config{ID: "c5", Listen: "127.0.0.1:0", RaftListen: "127.0.0.1:0", DataDir: filepath.Join(c.dir, "c5"),
		Join: []string{c1.Addr()}, JoinToken: j5.Token, CACertHash: other.Hash()}); err == nil || !strings.Contains(err.Error(), "no CA matching --ca-cert-hash") {
		t.Fatalf("joining with the wrong pin: %v", err)
	}

	// An agent joins through a follower (forwarded to the leader).
	follower := c.ctls[1].Addr()
	hj := c.joinToken(yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_HOST, 0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A bad request is refused before the token is used.
	pinned := pki.PinnedConfig(hash)
	pinned.ServerName = pki.ClusterServerName
	pc, err := grpc.NewClient(c1.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(pinned)))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_, err = yunchiv1.NewAgentServiceClient(pc).JoinHost(ctx, &yunchiv1.JoinHostRequest{HostId: "h1", JoinToken: hj.Token, Csr: []byte("not a request")})
	wantCode(t, "a bad certificate request", err, codes.InvalidArgument, "certificate request")
	_, err = yunchiv1.NewAgentServiceClient(pc).JoinHost(ctx, &yunchiv1.JoinHostRequest{HostId: "h1", JoinToken: "yj_nope"})
	wantCode(t, "a malformed token", err, codes.Unauthenticated, "malformed")
	credDir := filepath.Join(c.dir, "agent-h1")
	creds, err := agent.Credentials(ctx, agent.JoinConfig{HostID: "h1", Controllers: []string{follower}, Dir: credDir, JoinToken: hj.Token, CAHash: hash})
	if err != nil {
		t.Fatal(err)
	}
	// Later starts reuse what is stored (no token).
	if _, err := agent.Credentials(ctx, agent.JoinConfig{HostID: "h1", Controllers: []string{follower}, Dir: credDir}); err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Credentials(ctx, agent.JoinConfig{HostID: "h2", Dir: credDir}); err == nil || !strings.Contains(err.Error(), `not host "h2"'s`) {
		t.Fatalf("another host's credentials dir: %v", err)
	}
	hostCert, err := pki.LoadKeyPair(filepath.Join(credDir, pki.HostCertFile), filepath.Join(credDir, pki.HostKeyFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The same token again, and on a fresh agent: refused.
	_, err = agent.Credentials(ctx, agent.JoinConfig{HostID: "h9", Controllers: []string{follower}, Dir: filepath.Join(c.dir, "agent-h9"), JoinToken: hj.Token, CAHash: hash})
	if err == nil || !strings.Contains(err.Error(), "already used (by h1)") {
		t.Fatalf("a used host join token: %v", err)
	}
	// An expired one (one second; waited out, then refused).
	short := c.joinToken(yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_HOST, 1)
	time.Sleep(time.Until(short.Expires.AsTime()) + 50*time.Millisecond)
	_, err = agent.Credentials(ctx, agent.JoinConfig{HostID: "h8", Controllers: []string{c1.Addr()}, Dir: filepath.Join(c.dir, "agent-h8"), JoinToken: short.Token, CAHash: hash})
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("an expired join token: %v", err)
	}

	// The agent's credentials: mutual TLS, its own host only.
	for _, addr := range []string{follower, c1.Addr()} {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ag := yunchiv1.NewAgentServiceClient(cc)
		if err := retryElection(func(ctx context.Context) error {
			_, err := ag.RegisterHost(ctx, &yunchiv1.RegisterHostRequest{Facts: &yunchiv1.HostFacts{Id: "h1", Center: "a1",
				Capacity: &yunchiv1.Resources{Vcpus: 8, MemoryBytes: 8 << 30, DiskBytes: 100 << 30}}})
			return err
		}); err != nil {
			t.Fatalf("%s: register own host: %v", addr, err)
		}
		if err := retryElection(func(ctx context.Context) error {
			_, err := ag.Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "h1"})
			return err
		}); err != nil {
			t.Fatalf("%s: heartbeat: %v", addr, err)
		}
		_, err = ag.RegisterHost(ctx, &yunchiv1.RegisterHostRequest{Facts: &yunchiv1.HostFacts{Id: "h2", Center: "a1"}})
		wantCode(t, "register another host", err, codes.PermissionDenied, `host "h1" may not act for host "h2"`)
		_, err = ag.Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "h2"})
		wantCode(t, "heartbeat for another host", err, codes.PermissionDenied, "may not act for")
		_, err = ag.ReportVMStatus(ctx, &yunchiv1.ReportVMStatusRequest{HostId: "h2"})
		wantCode(t, "report for another host", err, codes.PermissionDenied, "may not act for")
		ws, err := ag.WatchAssignments(ctx, &yunchiv1.WatchAssignmentsRequest{HostId: "h2"})
		if err == nil {
			_, err = ws.Recv()
		}
		wantCode(t, "watch another host", err, codes.PermissionDenied, "may not act for")
		// User APIs: refused to a host certificate.
		_, err = yunchiv1.NewVMServiceClient(cc).ListVMs(ctx, &yunchiv1.ListVMsRequest{})
		wantCode(t, "a host certificate on the user API", err, codes.PermissionDenied, "role host may not call ListVMs")
		_, err = yunchiv1.NewClusterServiceClient(cc).CreateJoinToken(ctx, &yunchiv1.CreateJoinTokenRequest{Kind: yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_HOST})
		wantCode(t, "a host certificate making join tokens", err, codes.PermissionDenied, "role host may not call CreateJoinToken")
	}

	// No client certificate: the agent protocol is refused.
	anon, admin := c.admin, ""
	c.admin = admin // no token either
	_, err = yunchiv1.NewAgentServiceClient(c.conn(c1.Addr(), nil)).Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "h1"})
	c.admin = anon
	wantCode(t, "heartbeat without a certificate or token", err, codes.Unauthenticated, "authentication required")

	// A certificate of another CA (same host id): the handshake fails.
	key, _ := pki.NewKey()
	forgedPEM, err := other.Issue(&key.PublicKey, pki.Identity{Kind: pki.KindHost, ID: "h1"}, pki.Names{}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pki.KeyPEM(key)
	forged, err := tls.X509KeyPair(forgedPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, err = yunchiv1.NewAgentServiceClient(c.conn(c1.Addr(), &forged)).Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "h1"})
	wantCode(t, "a certificate of another CA", err, codes.Unavailable, "")

	// The client trusting another CA: the controller is not trusted.
	cc, err := grpc.NewClient(c1.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientConfig(other.Pool(), &hostCert))))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = yunchiv1.NewAgentServiceClient(cc).Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "h1"})
	wantCode(t, "a client trusting another CA", err, codes.Unavailable, "certificate signed by unknown authority")

	// Raft: a host certificate of the cluster CA, or none, is refused.
	for name, cert := range map[string]*tls.Certificate{"host certificate": &hostCert, "no certificate": nil} {
		if err := raftHandshake(c1.Node().Addr(), c.pool, cert); err == nil {
			t.Fatalf("raft accepted a peer with a %s", name)
		}
	}
	ctlCert, err := pki.LoadKeyPair(filepath.Join(TLSDir(c.dir+"/c2"), pki.ServerCertFile), filepath.Join(TLSDir(c.dir+"/c2"), pki.ServerKeyFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := raftHandshake(c1.Node().Addr(), c.pool, &ctlCert); err != nil {
		t.Fatalf("raft refused a controller: %v", err)
	}

	// REST over TLS (HTTP/1.1), verified by the cluster CA.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientConfig(c.pool, nil)}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("https://" + c1.Addr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Fatalf("GET /healthz over TLS: %d %q", resp.StatusCode, body)
	}
}

// raftHandshake dials a raft port with mutual TLS and reads: a refused
// client certificate shows as an error on the handshake or the first read
// (TLS 1.3 completes the client's handshake before the server checks it).
func raftHandshake(addr string, pool *x509.CertPool, cert *tls.Certificate) error {
	cfg := pki.ClientConfig(pool, cert)
	cfg.ServerName = pki.ClusterServerName
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	// A byte raft reads as an unknown RPC type: an accepted peer gets
	// the connection closed (EOF) or a timeout, a refused one an alert.
	if _, err := conn.Write([]byte{0xff}); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 1))
	if err == io.EOF || isTimeout(err) {
		return nil
	}
	return err
}

func isTimeout(err error) bool {
	ne, ok := err.(interface{ Timeout() bool })
	return ok && ne.Timeout()
}

// TestTLSMinistryCert: with --tls-cert/--tls-key the API serves that
// certificate to users, and the cluster CA's to agents and controllers
// (which ask for pki.ClusterServerName); client certificates are still
// verified against the cluster CA.
func TestTLSMinistryCert(t *testing.T) {
	dir := t.TempDir()
	ministry, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	certPEM, err := ministry.Issue(&key.PublicKey, pki.Identity{Kind: pki.KindController, ID: "api"}, pki.NamesOf("127.0.0.1"), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pki.KeyPEM(key)
	if err := pki.WriteFiles(dir, map[string][]byte{"api.crt": certPEM, "api.key": keyPEM}); err != nil {
		t.Fatal(err)
	}
	c := &tlsCluster{t: t, dir: dir}
	c1, err := c.start(Config{ID: "c1", Bootstrap: true, TLSCert: filepath.Join(dir, "api.crt"), TLSKey: filepath.Join(dir, "api.key")})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(TLSDir(filepath.Join(dir, "c1")))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call := func(cfg *tls.Config) error {
		cc, err := grpc.NewClient(c1.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			return err
		}
		defer cc.Close()
		_, err = yunchiv1.NewClusterServiceClient(cc).ListMembers(ctx, &yunchiv1.ListMembersRequest{})
		if status.Code(err) == codes.Unauthenticated {
			return nil // the handshake worked; this user brought no token
		}
		return err
	}
	// A user trusting the ministry's CA.
	if err := call(pki.ClientConfig(ministry.Pool(), nil)); err != nil {
		t.Fatalf("ministry certificate: %v", err)
	}
	// The cluster's own clients, by name, verified by the cluster CA.
	internal := pki.ClientConfig(ca.Pool(), nil)
	internal.ServerName = pki.ClusterServerName
	if err := call(internal); err != nil {
		t.Fatalf("cluster certificate: %v", err)
	}
	// A user trusting only the cluster CA gets the ministry's certificate.
	if err := call(pki.ClientConfig(ca.Pool(), nil)); status.Code(err) != codes.Unavailable {
		t.Fatalf("cluster CA for the ministry's certificate: %v", err)
	}
	// --tls-cert without --tls-key is refused, changing nothing.
	if _, err := New(Config{ID: "c2", Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "c2"), Bootstrap: true, TLSCert: filepath.Join(dir, "api.crt")}); err == nil || !strings.Contains(err.Error(), "--tls-cert and --tls-key go together") {
		t.Fatalf("--tls-cert alone: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "c2")); !os.IsNotExist(err) {
		t.Fatalf("a refused start left %s: %v", filepath.Join(dir, "c2"), err)
	}
}
