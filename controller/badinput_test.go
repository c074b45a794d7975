package controller

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// stateDump is what must not change after a rejected request.
func stateDump(t *testing.T, addr string) string {
	t.Helper()
	read := func(path string) []byte {
		t.Helper()
		code, body := apitest.Get(t, addr, path+"?consistent=true")
		if code != 200 {
			t.Fatalf("state dump: GET %s: %d %s", path, code, body)
		}
		return body
	}
	vms, hosts := read("/v1/vms"), read("/v1/hosts")
	// last_seen moves with heartbeats; registration and allocation must not.
	var h struct {
		Hosts []map[string]any `json:"hosts"`
	}
	if err := json.Unmarshal(hosts, &h); err != nil {
		t.Fatalf("state dump: hosts: %v: %s", err, hosts)
	}
	for _, x := range h.Hosts {
		delete(x, "lastSeen")
	}
	hb, _ := json.Marshal(h)
	groups, ratios := read("/v1/groups"), read("/v1/ratios")
	return string(vms) + "\n" + string(hb) + "\n" + string(groups) + "\n" + string(ratios)
}

type restError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func TestBadInputIsRejectedAndChangesNothing(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[2].ctl.Addr() // a follower or the leader: both must answer alike
	registerHosts(t, addr, 3, 16, 64*gib)
	for _, seed := range []struct{ path, body string }{
		{"/v1/groups", `{"name":"keepers","policy":"GROUP_POLICY_ANTI_AFFINITY"}`},
		{"/v1/vms", `{"name":"keep-1","vcpus":1,"memory":"1GiB","group":"keepers"}`},
		{"/v1/ratios", `{"scope":"center","name":"a1","cpu":2}`},
	} {
		if code, body, err := apitest.Post(addr, seed.path, seed.body); err != nil || code != 200 {
			t.Fatalf("seed %s: %d %s %v", seed.path, code, body, err)
		}
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
		{"zero memory", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"0GiB"}`, 400, "memory 0GiB is out of range"},
		{"negative memory", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"-4GiB"}`, 400, "memory -4GiB is out of range"},
		{"unknown unit", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"4XB"}`, 400, `unknown unit "XB"`},
		{"no number", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"GiB"}`, 400, "not a number"},
		{"zero disk", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB","disk":"0"}`, 400, "disk"},
		{"tiny memory", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1KiB"}`, 400, "out of range"},
		{"unknown field", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB","colour":"red"}`, 400, "colour"},
		{"malformed json", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,`, 400, "request body is not valid JSON: unexpected end of input at offset 25"},
		{"trailing garbage", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB"}}`, 400, "request body is not valid JSON: unexpected data after the JSON value at offset 41"},
		{"form body as json", "POST", "/v1/vms", `name=ok-1&vcpus=1`, 400, "request body is not valid JSON: invalid character 'a' in literal null (expecting 'u') at offset 2"},
		{"wrong type", "POST", "/v1/vms", `{"name":"ok-1","vcpus":"two","memory":"1GiB"}`, 400, `request body: invalid value for int32 field vcpus: "two" (line 1, column 24)`},
		{"unknown query parameter", "GET", "/v1/vms?host=a1-h01", "", 400, `unknown query parameter "host" for GET /v1/vms: it accepts project, hostId, consistent`},
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

		// Placement: constraints, groups, strategy, batches.
		{"constraint without operator", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB","constraints":["cpu_model"]}`, 400, `constraint "cpu_model"`},
		{"constraint without value", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB","constraints":["rack!="]}`, 400, "constraint"},
		{"constraint in without values", "POST", "/v1/vms:batch", `{"name":"ok-1","vcpus":1,"memory":"1GiB","constraints":["center in ,"]}`, 400, "constraint"},
		{"unknown group", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB","group":"nope"}`, 404, `placement group "nope" not found`},
		{"bad group name", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB","group":"../g"}`, 400, "group name"},
		{"unknown strategy", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB","strategy":"random"}`, 400, "random"},
		{"count above 100", "POST", "/v1/vms:batch", `{"name":"ok","vcpus":1,"memory":"1GiB","count":101}`, 400, "count 101 is out of range"},
		{"negative count", "POST", "/v1/vms:batch", `{"name":"ok","vcpus":1,"memory":"1GiB","count":-1}`, 400, "count -1 is out of range"},
		{"count on single create", "POST", "/v1/vms", `{"name":"ok","vcpus":1,"memory":"1GiB","count":3}`, 400, "CreateVMs"},
		{"count makes names too long", "POST", "/v1/vms:batch", `{"name":"` + long[:62] + `","vcpus":1,"memory":"1GiB","count":10}`, 400, "shorter name"},
		{"batch with a taken name", "POST", "/v1/vms:batch", `{"name":"keep","vcpus":1,"memory":"1GiB","count":2}`, 409, "already exists"},
		{"batch no capacity", "POST", "/v1/vms:batch", `{"name":"huge","vcpus":1,"memory":"1TiB","count":2}`, 429, "hosts fit"},
		{"batch breaks anti-affinity", "POST", "/v1/vms:batch", `{"name":"many","vcpus":1,"memory":"1GiB","count":4,"group":"keepers"}`, 429, "anti-affinity"},

		// Groups.
		{"group without policy", "POST", "/v1/groups", `{"name":"g2"}`, 400, "policy is required"},
		{"group bad name", "POST", "/v1/groups", `{"name":"G 2","policy":"GROUP_POLICY_AFFINITY"}`, 400, "group name"},
		{"group negative max", "POST", "/v1/groups", `{"name":"g2","policy":"GROUP_POLICY_AFFINITY","maxPerHost":-1}`, 400, "max per host -1"},
		{"group exists", "POST", "/v1/groups", `{"name":"keepers","policy":"GROUP_POLICY_AFFINITY"}`, 409, "already exists"},
		{"group unknown policy", "POST", "/v1/groups", `{"name":"g2","policy":"affinity"}`, 400, `policy: "affinity" is not a valid value: use one of GROUP_POLICY_AFFINITY, GROUP_POLICY_ANTI_AFFINITY`},
		{"group unknown level", "POST", "/v1/groups", `{"name":"g2","policy":"GROUP_POLICY_AFFINITY","level":9}`, 400, "level"},
		{"missing group", "GET", "/v1/groups/nope", "", 404, `placement group "nope" not found`},
		{"delete missing group", "DELETE", "/v1/groups/nope", "", 404, "not found"},
		{"delete group with members", "DELETE", "/v1/groups/keepers", "", 400, "still has 1 member VMs (keep-1): delete them first"},

		// Host administration.
		{"host set unknown host", "PATCH", "/v1/hosts/nope", `{"owner":"tax"}`, 404, `host "nope" not found`},
		{"host set unknown state", "PATCH", "/v1/hosts/a1-h01", `{"state":"HOST_STATE_OFF"}`, 400, "use one of HOST_STATE_READY, HOST_STATE_DOWN, HOST_STATE_MAINTENANCE, HOST_STATE_DRAINING"},
		{"host set down", "PATCH", "/v1/hosts/a1-h01", `{"state":"HOST_STATE_DOWN"}`, 400, "derived from missed heartbeats"},
		{"host set bad label key", "PATCH", "/v1/hosts/a1-h01", `{"setLabels":{"Bad Key":"x"}}`, 400, `label key "Bad Key" is not valid`},
		{"host set bad label value", "PATCH", "/v1/hosts/a1-h01", `{"setLabels":{"tier":"gold<script>"}}`, 400, "value"},
		{"host set long label", "PATCH", "/v1/hosts/a1-h01", `{"setLabels":{"` + long + `":"x"}}`, 400, "at most 63"},
		{"host unlabel missing", "PATCH", "/v1/hosts/a1-h01", `{"removeLabels":["nope"]}`, 400, `has no label "nope"`},
		{"host set bad owner", "PATCH", "/v1/hosts/a1-h01", `{"owner":"Tax Dept"}`, 400, "owner project"},
		{"host cpu ratio too high", "PATCH", "/v1/hosts/a1-h01", `{"cpuRatio":65}`, 400, "cpu ratio 65 is out of range"},
		{"host negative memory ratio", "PATCH", "/v1/hosts/a1-h01", `{"memoryRatio":-1}`, 400, "memory ratio -1"},
		{"host reserve too much", "PATCH", "/v1/hosts/a1-h01", `{"reserveVcpus":17}`, 400, "exceeds host"},
		{"host reserve bad size", "PATCH", "/v1/hosts/a1-h01", `{"reserveMemory":"2XB"}`, 400, "reserve memory"},
		{"host mixed good and bad", "PATCH", "/v1/hosts/a1-h01", `{"owner":"tax","diskRatio":100}`, 400, "disk ratio"},

		// Ratios.
		{"ratio bad scope", "POST", "/v1/ratios", `{"scope":"rack","name":"r1","cpu":2}`, 400, "scope"},
		{"ratio no scope", "POST", "/v1/ratios", `{"name":"a1","cpu":2}`, 400, "scope is missing"},
		{"ratio unknown center", "POST", "/v1/ratios", `{"scope":"center","name":"zz","cpu":2}`, 400, `no host is in center "zz"`},
		{"ratio too high", "POST", "/v1/ratios", `{"scope":"center","name":"a1","cpu":64.5}`, 400, "out of range"},
		{"ratio negative", "POST", "/v1/ratios", `{"scope":"host_group","name":"gold","memory":-2}`, 400, "memory ratio -2"},
		{"ratio nothing set", "POST", "/v1/ratios", `{"scope":"center","name":"a1"}`, 400, "no ratio given"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body, err := apitest.Do(addr, tc.method, tc.path, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			var e restError
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("error body is not JSON: %v", err)
			}
			if code != tc.code {
				t.Fatalf("status %d, want %d (%s)", code, tc.code, e.Message)
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
	code, body, err := apitest.Post(addr, "/v1/vms", `{"name":"web-1","vcpus":2,"memory":"4GiB"}`)
	if err != nil || code != 200 {
		t.Fatalf("create: %d %s %v", code, body, err)
	}
	var vm map[string]any
	if err := json.Unmarshal(body, &vm); err != nil || vm["name"] != "web-1" || vm["hostId"] == "" {
		t.Fatalf("create answer: %s", body)
	}
	// Consistent read through a follower sees the write at once.
	for _, m := range c.members {
		code, body := apitest.Get(t, m.ctl.Addr(), "/v1/vms/web-1?consistent=true")
		if code != 200 || !strings.Contains(string(body), `"web-1"`) {
			t.Fatalf("%s consistent get: %d %s", m.id, code, body)
		}
	}
	code, body = apitest.Get(t, addr, "/openapi.json")
	if code != 200 || !strings.Contains(string(body), `"/v1/vms"`) {
		t.Fatalf("openapi: %d", code)
	}
	code, body = apitest.Get(t, addr, "/metrics")
	if code != 200 || !strings.Contains(string(body), "yunchi_raft_term") || !strings.Contains(string(body), "yunchi_grpc_requests_total") {
		t.Fatalf("metrics: %d %s", code, body)
	}
	code, body = apitest.Get(t, addr, "/v1/cluster/status")
	var st yunchiv1.ClusterStatus
	if code != 200 || protojson.Unmarshal(body, &st) != nil || len(st.GetMembers()) != 3 {
		t.Fatalf("status: %d %s", code, body)
	}
	code, body = apitest.Get(t, addr, "/v1/capacity")
	if code != 200 || !strings.Contains(string(body), `"a1"`) {
		t.Fatalf("capacity: %d %s", code, body)
	}
}
