package api

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// splitPort serves one loopback port split by Split: gRPC's health service
// on the gRPC side, and on the HTTP side a handler that answers with the
// protocol the request came in and refuses gRPC (so a gRPC call that
// reaches it fails).
func splitPort(t *testing.T) (addr string, httpConns *atomic.Int32) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gl, hl := Split(lis)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			http.Error(w, "gRPC reached the HTTP server", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, r.Proto)
	}), ReadHeaderTimeout: 10 * time.Second}
	httpConns = new(atomic.Int32)
	hs.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			httpConns.Add(1)
		}
	}
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	go gs.Serve(gl)
	go hs.Serve(hl)
	t.Cleanup(func() {
		hs.Close()
		gs.Stop()
	})
	return lis.Addr().String(), httpConns
}

// One port serves gRPC through gRPC's own transport and HTTP/1.1 and
// HTTP/2 without TLS through the HTTP server, on connections of each kind
// open at once.
func TestSplitServesGRPCAndHTTPOnOnePort(t *testing.T) {
	addr, httpConns := splitPort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	check := func() {
		t.Helper()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("gRPC health check: %v %v", resp, err)
		}
	}
	check()

	get := func(c *http.Client, want string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/x", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", want, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != want {
			t.Fatalf("GET over %s: %d %q", want, resp.StatusCode, b)
		}
	}
	h1 := &http.Client{Transport: &http.Transport{}}
	h2t := &http.Transport{Protocols: new(http.Protocols)}
	h2t.Protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: h2t}
	// Several requests on each connection: the HTTP/2 one must outlive
	// the splitter's own SETTINGS and its ACK (the HTTP server fails a
	// connection that ACKs more SETTINGS than it sent).
	for range 5 {
		get(h1, "HTTP/1.1")
		get(h2, "HTTP/2.0")
		check()
	}
	if n := httpConns.Load(); n != 2 {
		t.Fatalf("5 HTTP/1.1 and 5 HTTP/2 requests took %d connections, want 2", n)
	}
}

// A connection that is neither (TLS, say, on this plain port) is handed to
// the HTTP server, which answers as it would have without the split.
func TestSplitHandsOtherBytesToHTTP(t *testing.T) {
	addr, _ := splitPort(t)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err == nil {
		c.Close()
		t.Fatal("a TLS handshake with a plain port succeeded")
	}
	// The port still serves afterwards.
	resp, err := http.Get("http://" + addr + "/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
}

// The controllers' gRPC server accepts the keepalive pings followers send
// it when forwarding (agents ping as often; see agent.keepaliveParams): a
// client pinging more often than the server permits has its connection
// closed with "too many pings".
func TestForwardKeepaliveIsPermitted(t *testing.T) {
	if forwardKeepalive.Time < MinClientPing || !forwardKeepalive.PermitWithoutStream {
		t.Fatalf("followers ping every %v (without streams: %v); the server permits every %v", forwardKeepalive.Time, forwardKeepalive.PermitWithoutStream, MinClientPing)
	}
}
