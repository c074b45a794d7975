package controller

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// stateDump is what must not change after a rejected request.
func stateDump(t *testing.T, addr string) string {
	t.Helper()
	_, vms := restGet(t, addr, "/v1/vms?consistent=true")
	_, hosts := restGet(t, addr, "/v1/hosts?consistent=true")
	// last_seen moves with heartbeats; registration and allocation must not.
	var h map[string]any
	json.Unmarshal(hosts, &h)
	for _, x := range h["hosts"].([]any) {
		delete(x.(map[string]any), "lastSeen")
	}
	hb, _ := json.Marshal(h)
	return string(vms) + "\n" + string(hb)
}

type restError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func TestBadInputIsRejectedAndChangesNothing(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[2].ctl.Addr() // a follower or the leader: both must answer alike
	registerHosts(t, addr, 3, 16, 64*gib)
	if code, body, err := restPost(addr, "/v1/vms", `{"name":"keep-1","vcpus":1,"memory":"1GiB"}`); err != nil || code != 200 {
		t.Fatalf("seed vm: %d %s %v", code, body, err)
	}
	before := stateDump(t, addr)

	long := strings.Repeat("a", 64)
	cases := []struct {
		name, method, path, body string
		code                     int
		msg                      string
	}{
		{"empty name", "POST", "/v1/vms", `{"name":"","vcpus":1,"memory":"1GiB"}`, 400, "vm name is empty"},
		{"too long name", "POST", "/v1/vms", `{"name":"` + long + `","vcpus":1,"memory":"1GiB"}`, 400, "at most 63"},
		{"path in name", "POST", "/v1/vms", `{"name":"../x","vcpus":1,"memory":"1GiB"}`, 400, `vm name "../x" is not valid`},
		{"space in name", "POST", "/v1/vms", `{"name":"a b","vcpus":1,"memory":"1GiB"}`, 400, "is not valid"},
		{"markup in name", "POST", "/v1/vms", `{"name":"<x>","vcpus":1,"memory":"1GiB"}`, 400, "is not valid"},
		{"quote in name", "POST", "/v1/vms", `{"name":"a\"b","vcpus":1,"memory":"1GiB"}`, 400, "is not valid"},
		{"single quote in name", "POST", "/v1/vms", `{"name":"a'b","vcpus":1,"memory":"1GiB"}`, 400, "is not valid"},
		{"upper case name", "POST", "/v1/vms", `{"name":"Web","vcpus":1,"memory":"1GiB"}`, 400, "lowercase"},
		{"bad project", "POST", "/v1/vms", `{"name":"ok-1","project":"../p","vcpus":1,"memory":"1GiB"}`, 400, "project"},
		{"zero cpus", "POST", "/v1/vms", `{"name":"ok-1","vcpus":0,"memory":"1GiB"}`, 400, "vcpus 0 is out of range"},
		{"negative cpus", "POST", "/v1/vms", `{"name":"ok-1","vcpus":-2,"memory":"1GiB"}`, 400, "vcpus -2"},
		{"too many cpus", "POST", "/v1/vms", `{"name":"ok-1","vcpus":100000,"memory":"1GiB"}`, 400, "out of range"},
		{"missing memory", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1}`, 400, "memory is required"},
		{"zero memory", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"0GiB"}`, 400, "greater than zero"},
		{"negative memory", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"-4GiB"}`, 400, "greater than zero"},
		{"unknown unit", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"4XB"}`, 400, `unknown unit "XB"`},
		{"no number", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"GiB"}`, 400, "not a number"},
		{"zero disk", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB","disk":"0"}`, 400, "disk"},
		{"tiny memory", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1KiB"}`, 400, "out of range"},
		{"unknown field", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB","colour":"red"}`, 400, "colour"},
		{"malformed json", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,`, 400, ""},
		{"wrong type", "POST", "/v1/vms", `{"name":"ok-1","vcpus":"two","memory":"1GiB"}`, 400, ""},
		{"unknown center", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB","center":"zz"}`, 400, `no host is in center "zz"`},
		{"duplicate name", "POST", "/v1/vms", `{"name":"keep-1","vcpus":1,"memory":"1GiB"}`, 409, "already exists"},
		{"no capacity", "POST", "/v1/vms", `{"name":"huge","vcpus":1,"memory":"1TiB"}`, 429, "hosts fit"},
		{"missing vm", "GET", "/v1/vms/nope", "", 404, `vm "nope" not found`},
		{"missing vm stop", "POST", "/v1/vms/nope:stop", "{}", 404, "not found"},
		{"missing vm delete", "DELETE", "/v1/vms/nope", "", 404, "not found"},
		{"bad name in path", "GET", "/v1/vms/a%20b", "", 400, "is not valid"},
		{"missing host", "GET", "/v1/hosts/nope", "", 404, `host "nope" not found`},
		{"bad host id", "GET", "/v1/hosts/a%3Cb", "", 400, "not valid"},
		{"vms of missing host", "GET", "/v1/vms?hostId=nope", "", 404, `host "nope" not found`},
		{"remove missing member", "DELETE", "/v1/cluster/members/zz", "", 404, "not a member"},
		{"join without addresses", "POST", "/v1/cluster/members", `{"id":"c9"}`, 400, "required"},
		{"join with bad address", "POST", "/v1/cluster/members", `{"id":"c9","raftAddress":"nohost","apiAddress":"x:1"}`, 400, "not host:port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, tc.method, "http://"+addr+tc.path, strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e restError
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatalf("error body is not JSON: %v", err)
			}
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.code, e.Message)
			}
			if e.Message == "" || !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("message %q does not say %q", e.Message, tc.msg)
			}
			if strings.Contains(e.Message, "\n") {
				t.Fatalf("message spans lines: %q", e.Message)
			}
		})
	}
	if after := stateDump(t, addr); after != before {
		t.Fatalf("rejected requests changed the state:\nbefore %s\nafter  %s", before, after)
	}

	// The same checks hold over gRPC, with the matching codes.
	vc := yunchiv1.NewVMServiceClient(dial(t, addr))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := vc.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: "a b", Vcpus: 1, Memory: "1GiB"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("grpc bad name: %v", err)
	}
	_, err = vc.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: "huge", Vcpus: 1, Memory: "1TiB"})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("grpc no capacity: %v", err)
	}
	_, err = vc.GetVM(ctx, &yunchiv1.GetVMRequest{Name: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("grpc missing vm: %v", err)
	}
	if after := stateDump(t, addr); after != before {
		t.Fatal("rejected gRPC requests changed the state")
	}
}

func TestRESTAndOpenAPIAndMetrics(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[1].ctl.Addr()
	registerHosts(t, addr, 3, 16, 64*gib)
	code, body, err := restPost(addr, "/v1/vms", `{"name":"web-1","vcpus":2,"memory":"4GiB"}`)
	if err != nil || code != 200 {
		t.Fatalf("create: %d %s %v", code, body, err)
	}
	var vm map[string]any
	if err := json.Unmarshal(body, &vm); err != nil || vm["name"] != "web-1" || vm["hostId"] == "" {
		t.Fatalf("create answer: %s", body)
	}
	// Consistent read through a follower sees the write at once.
	for _, m := range c.members {
		code, body := restGet(t, m.ctl.Addr(), "/v1/vms/web-1?consistent=true")
		if code != 200 || !strings.Contains(string(body), `"web-1"`) {
			t.Fatalf("%s consistent get: %d %s", m.id, code, body)
		}
	}
	code, body = restGet(t, addr, "/openapi.json")
	if code != 200 || !strings.Contains(string(body), `"/v1/vms"`) {
		t.Fatalf("openapi: %d", code)
	}
	code, body = restGet(t, addr, "/metrics")
	if code != 200 || !strings.Contains(string(body), "yunchi_raft_term") || !strings.Contains(string(body), "yunchi_grpc_requests_total") {
		t.Fatalf("metrics: %d %s", code, body)
	}
	code, body = restGet(t, addr, "/v1/cluster/status")
	var st yunchiv1.ClusterStatus
	if code != 200 || protojson.Unmarshal(body, &st) != nil || len(st.GetMembers()) != 3 {
		t.Fatalf("status: %d %s", code, body)
	}
	code, body = restGet(t, addr, "/v1/capacity")
	if code != 200 || !strings.Contains(string(body), `"a1"`) {
		t.Fatalf("capacity: %d %s", code, body)
	}
}
