package controller

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// createWithKey creates a VM through addr with an idempotency key.
func createWithKey(t *testing.T, addr, key string, req *yunchiv1.CreateVMRequest) (*yunchiv1.VM, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", key)
	return yunchiv1.NewVMServiceClient(dial(t, addr)).CreateVM(ctx, req)
}

// A create retried with its key after the leader that applied it died
// returns the first VM, through another controller: no second VM and no
// "already exists". The same key with another request is refused.
func TestRetriedRequestIDAcrossLeaderKill(t *testing.T) {
	c := newInmemCluster(t)
	registerHosts(t, c.members[1].ctl.Addr(), 6, 16, 64*gib)
	l := c.leader()
	if l == nil {
		t.Fatal("no leader")
	}
	var follower *member
	for _, m := range c.members {
		if m != l {
			follower = m
		}
	}
	req := &yunchiv1.CreateVMRequest{Name: "idem-1", Vcpus: 1, Memory: "2GiB", Disk: "10GiB"}
	first, err := createWithKey(t, l.ctl.Addr(), "key-1", req)
	if err != nil {
		t.Fatal(err)
	}
	c.kill(l)

	var again *yunchiv1.VM
	apitest.Eventually(t, 30*time.Second, "the retry answered by a new leader", func() bool {
		again, err = createWithKey(t, follower.ctl.Addr(), "key-1", req)
		if status.Code(err) == codes.Unavailable {
			return false
		}
		if err != nil {
			t.Fatalf("retry with the same key: %v", err)
		}
		return true
	})
	if again.Id != first.Id || again.HostId != first.HostId || again.Name != first.Name {
		t.Fatalf("retry returned vm %s on %s, first was %s on %s", again.Id, again.HostId, first.Id, first.HostId)
	}
	n := 0
	for _, vm := range listVMs(t, follower.ctl.Addr()).Vms {
		if vm.Name == "idem-1" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d VMs named idem-1, want 1", n)
	}

	other := proto.Clone(req).(*yunchiv1.CreateVMRequest)
	other.Name = "idem-2"
	_, err = createWithKey(t, follower.ctl.Addr(), "key-1", other)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "already used for a different request") {
		t.Fatalf("same key, different request: %v", err)
	}
	_, err = createWithKey(t, follower.ctl.Addr(), "bad key!", req)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "idempotency key") {
		t.Fatalf("malformed key: %v", err)
	}
}

// REST: the Idempotency-Key header makes a repeated POST answer the same
// body; without it the second POST is "already exists".
func TestRESTIdempotencyKey(t *testing.T) {
	c := newInmemCluster(t)
	registerHosts(t, c.members[1].ctl.Addr(), 3, 16, 64*gib)
	body := `{"name":"rest-1","vcpus":1,"memory":"2GiB","disk":"10GiB"}`
	h := http.Header{"Idempotency-Key": {"0b7c6a2e-rest"}}
	var bodies [][]byte
	for _, m := range c.members { // the leader and followers (forwarded) alike
		code, resp, err := apitest.DoWith(m.ctl.Addr(), http.MethodPost, "/v1/vms", body, h)
		if err != nil || code != 200 {
			t.Fatalf("POST via %s with Idempotency-Key: %d %s %v", m.id, code, resp, err)
		}
		bodies = append(bodies, resp)
	}
	for i := 1; i < len(bodies); i++ {
		if string(bodies[i]) != string(bodies[0]) {
			t.Fatalf("repeated POST answered\n%s\nfirst answer\n%s", bodies[i], bodies[0])
		}
	}
	if code, resp, _ := apitest.Post(c.members[0].ctl.Addr(), "/v1/vms", body); code != 409 {
		t.Fatalf("POST without a key after the create: %d %s, want 409", code, resp)
	}
	code, resp, _ := apitest.DoWith(c.members[0].ctl.Addr(), http.MethodPost, "/v1/vms", body, http.Header{"Idempotency-Key": {strings.Repeat("k", 129)}})
	if code != 400 || !strings.Contains(string(resp), "idempotency key is 129 characters long") {
		t.Fatalf("over-long key: %d %s", code, resp)
	}
}

// The DR writes take request ids too: a repeated policy create or center
// declaration is answered with the first outcome, not "already exists".
func TestDRIdempotencyKeys(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[1].ctl.Addr()
	for _, tc := range []struct{ method, path, body string }{
		{http.MethodPost, "/v1/policies", `{"name":"p1","targets":[{"role":"CENTER_ROLE_REMOTE_DR","intervalSeconds":"600","retention":{"keepLast":3}}]}`},
		{http.MethodPut, "/v1/centers/b1", `{"site":"b","role":"CENTER_ROLE_REMOTE_DR"}`},
	} {
		h := http.Header{"Idempotency-Key": {"dr" + strings.ReplaceAll(tc.path, "/", "-")}}
		var first []byte
		for i := 0; i < 2; i++ {
			code, resp, err := apitest.DoWith(addr, tc.method, tc.path, tc.body, h)
			if err != nil || code != 200 {
				t.Fatalf("%s %s (send %d): %d %s %v", tc.method, tc.path, i+1, code, resp, err)
			}
			if i == 0 {
				first = resp
			} else if string(resp) != string(first) {
				t.Fatalf("%s %s sent again answered\n%s\nfirst answer\n%s", tc.method, tc.path, resp, first)
			}
		}
	}
	if code, resp, _ := apitest.Post(addr, "/v1/policies", `{"name":"p1","targets":[{"role":"CENTER_ROLE_REMOTE_DR","intervalSeconds":"600","retention":{"keepLast":3}}]}`); code != 409 {
		t.Fatalf("a policy create without a key after the first: %d %s, want 409", code, resp)
	}
}
