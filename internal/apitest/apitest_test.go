package apitest

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// The REST helpers send the token SetToken set (a header given to DoWith
// wins), and none once it is cleared; UseToken puts the previous back.
func TestSetTokenREST(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Write([]byte("{}"))
	}))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	prev := SetToken("")
	defer SetToken(prev)
	Get(t, addr, "/v1/x")
	t.Run("use", func(t *testing.T) {
		UseToken(t, "tok-1")
		if Token() != "tok-1" {
			t.Fatalf("Token() = %q", Token())
		}
		Get(t, addr, "/v1/x")
		Post(addr, "/v1/x", "{}")
		DoWith(addr, http.MethodGet, "/v1/x", "", http.Header{"Authorization": {"Bearer other"}})
	})
	if Token() != "" {
		t.Fatalf("after UseToken's test: Token() = %q", Token())
	}
	Get(t, addr, "/v1/x")
	mu.Lock()
	defer mu.Unlock()
	want := []string{"", "Bearer tok-1", "Bearer tok-1", "Bearer other", ""}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("Authorization headers %q, want %q", got, want)
	}
}

// Bearer's metadata: the token, or nothing for "".
func TestBearer(t *testing.T) {
	md, err := Bearer("t1").GetRequestMetadata(t.Context())
	if err != nil || md["authorization"] != "Bearer t1" || len(md) != 1 {
		t.Fatalf("%v %v", md, err)
	}
	if md, _ := Bearer("").GetRequestMetadata(t.Context()); len(md) != 0 {
		t.Fatalf("empty token sends %v", md)
	}
}

// FreePortOffset's sets are free, keep their spacing, and lie below the
// ephemeral range (where outgoing connections could take them).
func TestFreePortOffsetBelowEphemeral(t *testing.T) {
	ports := []int{8470, 8471, 8472, 8480, 8490, 9482}
	for range 20 {
		off := FreePortOffset(t, ports)
		for _, p := range ports {
			if q := p + off; q < 1024 || q >= 32768 {
				t.Fatalf("port %d+%d = %d: outside 1024-32767", p, off, q)
			}
		}
	}
}

// fakeController answers GetClusterStatus from a log that takes a write
// after every status read (as a prober writing every 100 ms does between
// slow reads); a follower has applied lag entries less than was committed.
type fakeController struct {
	yunchiv1.UnimplementedClusterServiceServer
	log *fakeLog
	lag uint64
}

type fakeLog struct {
	mu        sync.Mutex
	committed uint64
}

func (f *fakeController) GetClusterStatus(context.Context, *yunchiv1.GetClusterStatusRequest) (*yunchiv1.ClusterStatus, error) {
	f.log.mu.Lock()
	defer f.log.mu.Unlock()
	seen := f.log.committed - f.lag
	f.log.committed++
	return &yunchiv1.ClusterStatus{LeaderId: "c1", CommitIndex: seen, AppliedIndex: seen}, nil
}

// While writes keep coming, Converged still holds once every controller
// has applied what was committed when it was called. It compared indexes
// read in one pass, which never held here: the chaos test's recovery wait
// timed out so on a loaded machine.
func TestConvergedWhileWritesGoOn(t *testing.T) {
	lg := &fakeLog{committed: 100}
	var addrs []string
	for _, lag := range []uint64{2, 2, 0} { // two followers, the leader last
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer()
		yunchiv1.RegisterClusterServiceServer(gs, &fakeController{log: lg, lag: lag})
		go gs.Serve(l)
		t.Cleanup(gs.Stop)
		addrs = append(addrs, l.Addr().String())
	}
	if !Converged(addrs) {
		t.Fatal("not converged while the followers keep applying what is committed")
	}

	// A follower that stops applying is not converged.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	yunchiv1.RegisterClusterServiceServer(gs, stuckController{})
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	if Converged(append(addrs, l.Addr().String())) {
		t.Fatal("converged with a controller whose applied index stays behind")
	}
}

// stuckController reports the highest commit index (it heard of the
// leader's last commit) but never applies past 1.
type stuckController struct {
	yunchiv1.UnimplementedClusterServiceServer
}

func (stuckController) GetClusterStatus(context.Context, *yunchiv1.GetClusterStatusRequest) (*yunchiv1.ClusterStatus, error) {
	return &yunchiv1.ClusterStatus{LeaderId: "c1", CommitIndex: 1, AppliedIndex: 1}, nil
}
