package apitest

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
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
