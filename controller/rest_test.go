package controller

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// REST answers spell out zero amounts ("allocated": {"vcpus": "0", ...}, not
// "allocated": {}), and capacity shows raw capacity, allocatable and free side
// by side, in total and per center.
func TestRESTShowsZerosAndAllocatable(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[0].ctl.Addr()
	registerHosts(t, addr, 3, 16, 64*gib)

	code, body := apitest.Get(t, addr, "/v1/capacity")
	if code != 200 {
		t.Fatalf("capacity: %d %s", code, body)
	}
	var capa map[string]any
	if err := json.Unmarshal(body, &capa); err != nil {
		t.Fatal(err)
	}
	checkAmounts := func(where string, obj map[string]any) {
		t.Helper()
		for _, key := range []string{"capacity", "allocatable", "allocated", "free"} {
			r, _ := obj[key].(map[string]any)
			for _, dim := range []string{"vcpus", "memoryBytes", "diskBytes"} {
				if _, ok := r[dim]; !ok {
					t.Errorf("%s: %s lacks %s: %v", where, key, dim, r)
				}
			}
		}
		if a, _ := obj["allocated"].(map[string]any); a["vcpus"] != "0" {
			t.Errorf("%s: allocated vcpus = %v, want \"0\"", where, a["vcpus"])
		}
	}
	checkAmounts("total", capa)
	if capa["vms"] != float64(0) {
		t.Errorf("vms = %v, want 0", capa["vms"])
	}
	if t.Failed() {
		t.Logf("capacity: %s", body)
	}
	centers, _ := capa["centers"].([]any)
	if len(centers) != 3 {
		t.Fatalf("centers: %s", body)
	}
	for _, cc := range centers {
		m, _ := cc.(map[string]any)
		checkAmounts("center "+m["center"].(string), m)
	}

	code, body = apitest.Get(t, addr, "/v1/hosts/a1-h01")
	var host map[string]any
	if code != 200 || json.Unmarshal(body, &host) != nil {
		t.Fatalf("host: %d %s", code, body)
	}
	checkAmounts("host a1-h01", host)
	if host["vmCount"] != float64(0) {
		t.Errorf("host vmCount = %v, want 0", host["vmCount"])
	}
}

// The OpenAPI document names the API and its version: the v of the proto
// package (yunchi.v1), which is also the prefix of every REST path.
func TestOpenAPIInfo(t *testing.T) {
	c := newInmemCluster(t)
	code, body := apitest.Get(t, c.members[0].ctl.Addr(), "/openapi.json")
	var doc struct {
		Info struct {
			Title, Version, Description string
		}
		Paths map[string]any
	}
	if code != 200 || json.Unmarshal(body, &doc) != nil {
		t.Fatalf("openapi: %d", code)
	}
	pkg := string(yunchiv1.File_yunchi_v1_yunchi_proto.Package())
	version := pkg[strings.LastIndex(pkg, ".")+1:]
	if doc.Info.Version != version || doc.Info.Title == "" || strings.Contains(doc.Info.Title, ".proto") || doc.Info.Description == "" {
		t.Errorf("info = %+v, want version %q (package %s), a title and a description", doc.Info, version, pkg)
	}
	for p := range doc.Paths {
		if !strings.HasPrefix(p, "/"+version+"/") {
			t.Errorf("path %s is not under /%s/", p, version)
		}
	}
}

// REST reaches the gRPC services inside the process: the gateway does not
// dial the controller's advertised address (which may be a load balancer's
// or a NAT's, and costs a loopback round trip per request when it is this
// very port). Here the advertised address refuses connections, and REST
// still answers through the port the controller listens on.
func TestRESTDoesNotDialTheAdvertisedAddress(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := l.Addr().String()
	l.Close()

	c := &inmemCluster{t: t}
	m := &member{id: "a1", center: "a1", dir: t.TempDir(), advertise: refused}
	c.members = []*member{m}
	t.Cleanup(c.stopAll)
	c.start(m, true, nil)
	addr := m.ctl.lis.Addr().String()
	apitest.Eventually(t, 30*time.Second, "the controller to lead and vouch for its state", func() bool {
		code, _, err := apitest.Do(addr, "GET", "/healthz", "")
		return err == nil && code == 200 && m.ctl.Node().IsLeader()
	})
	registerHosts(t, addr, 1, 16, 64*gib)

	code, body := apitest.Get(t, addr, "/v1/hosts/a1-h01")
	if code != 200 {
		t.Fatalf("GET /v1/hosts/a1-h01 through %s (advertising %s): %d %s", addr, refused, code, body)
	}
	code, body, err = apitest.Post(addr, "/v1/vms", `{"name":"web1","vcpus":1,"memory":"1GiB","disk":"1GiB"}`)
	if err != nil || code != 200 {
		t.Fatalf("POST /v1/vms: %d %s %v", code, body, err)
	}
}
