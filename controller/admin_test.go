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

// Admin changes that would overcommit, out-of-bounds ratios, reserved label
// keys and decimal or negative sizes are refused with one actionable line
// and change nothing; forced, an overcommit is shown (never as negative
// free) and the host takes no new VM.
func TestAdminChangesThatOvercommit(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[2].ctl.Addr()
	registerHosts(t, addr, 6, 16, 64*gib) // a1-h01, a2-h01, b1-h01, a1-h02, a2-h02, b1-h02
	for _, body := range []string{
		`{"name":"db-1","vcpus":2,"memory":"8GiB","constraints":["host=b1-h01"]}`,
		`{"name":"db-2","vcpus":2,"memory":"8GiB","constraints":["host=b1-h02"]}`,
	} {
		if code, b, err := apitest.Post(addr, "/v1/vms", body); err != nil || code != 200 {
			t.Fatalf("seed %s: %d %s %v", body, code, b, err)
		}
	}
	before := stateDump(t, addr)

	// (64 GiB - 2 GiB reserved) * 0.1 = 6.2 GiB < the 8 GiB each b1 host runs.
	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		msg                      string
	}{
		{"center ratio overcommits", "POST", "/v1/ratios", `{"scope":"center","name":"b1","memory":0.1}`, 400,
			`these ratios for center b1 would put 2 hosts below what they run: b1-h01 (memory: allocated 8 GiB > allocatable 6.2 GiB), b1-h02 (memory: allocated 8 GiB > allocatable 6.2 GiB); give --force (REST: "force": true) to accept the overcommit`},
		{"host ratio overcommits", "PATCH", "/v1/hosts/b1-h01", `{"memoryRatio":0.1}`, 400,
			`this change would put host b1-h01 below what it runs (memory: allocated 8 GiB > allocatable 6.2 GiB); give --force`},
		{"reservation overcommits", "PATCH", "/v1/hosts/b1-h02", `{"reserveMemory":"60GiB","reserveVcpus":16}`, 400,
			`this change would put host b1-h02 below what it runs (cpu: allocated 2 vCPU > allocatable 0 vCPU; memory: allocated 8 GiB > allocatable 4 GiB)`},
		{"tiny cpu ratio", "POST", "/v1/ratios", `{"scope":"center","name":"a1","cpu":1e-300}`, 400,
			"cpu ratio 1e-300 is out of range: give 0.1 to 64 (0 removes the setting)"},
		{"tiny memory ratio", "PATCH", "/v1/hosts/a1-h01", `{"memoryRatio":0.01}`, 400,
			"memory ratio 0.01 is out of range: give 0.1 to 4 (0 removes the setting)"},
		{"reserved label key", "PATCH", "/v1/hosts/a1-h01", `{"setLabels":{"center":"b1"}}`, 400,
			`label key "center" is reserved: constraints on center, site, rack, host read the host's own fields`},
		{"reserved label key host", "PATCH", "/v1/hosts/a1-h01", `{"setLabels":{"host":"x"}}`, 400, `label key "host" is reserved`},
		{"negative reserve memory", "PATCH", "/v1/hosts/a1-h01", `{"reserveMemory":"-1GiB"}`, 400,
			"reserve memory -1GiB is out of range: give 0 to 64 TiB"},
		{"negative reserve disk", "PATCH", "/v1/hosts/a1-h01", `{"reserveDisk":"-1"}`, 400, "reserve disk -1 is out of range: give 0 to"},
		{"decimal memory", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"4GB"}`, 400,
			`memory: size "4GB" is in decimal GB: write 4GiB (binary, as sizes are here) or 4000000000 (bytes)`},
		{"decimal disk", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"1GiB","disk":"1.5TB"}`, 400,
			`disk: size "1.5TB" is in decimal TB: write 1.5TiB (binary, as sizes are here) or 1500000000000 (bytes)`},
		{"decimal reserve", "PATCH", "/v1/hosts/a1-h01", `{"reserveMemory":"512 mb"}`, 400, `write 512MiB (binary, as sizes are here) or 512000000 (bytes)`},
		{"zero memory", "POST", "/v1/vms", `{"name":"ok-1","vcpus":1,"memory":"0"}`, 400, "memory 0 is out of range: give 16 MiB to 16 TiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, err := apitest.Do(addr, tc.method, tc.path, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			var e restError
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("error body is not JSON: %v: %s", err, body)
			}
			if code != tc.code || !strings.Contains(e.Message, tc.msg) || strings.Contains(e.Message, "\n") {
				t.Fatalf("%d %q, want %d saying %q", code, e.Message, tc.code, tc.msg)
			}
		})
	}
	if after := stateDump(t, addr); after != before {
		t.Fatalf("refused changes changed the state:\nbefore %s\nafter  %s", before, after)
	}
	// Over gRPC (what the CLI uses) the refusal is FAILED_PRECONDITION: exit 7.
	hc := yunchiv1.NewHostServiceClient(dial(t, addr))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	low := 0.1
	if _, err := hc.UpdateHost(ctx, &yunchiv1.UpdateHostRequest{Id: "b1-h01", MemoryRatio: &low}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("grpc overcommit: %v", err)
	}

	// Forced: applied, and shown.
	code, body, err := apitest.Do(addr, "PATCH", "/v1/hosts/b1-h01", `{"memoryRatio":0.1,"force":true}`)
	if err != nil || code != 200 {
		t.Fatalf("forced: %d %s %v", code, body, err)
	}
	var h yunchiv1.Host
	if err := protojson.Unmarshal(body, &h); err != nil {
		t.Fatal(err)
	}
	over := h.GetAllocated().GetMemoryBytes() - h.GetAllocatable().GetMemoryBytes()
	if over <= 0 || h.GetOvercommit().GetMemoryBytes() != over || h.GetFree().GetMemoryBytes() != 0 ||
		h.GetOvercommit().GetVcpus() != 0 || h.GetFree().GetVcpus() <= 0 {
		t.Fatalf("forced host: overcommit %v free %v (allocated %v allocatable %v)", h.GetOvercommit(), h.GetFree(), h.GetAllocated(), h.GetAllocatable())
	}
	var capa yunchiv1.Capacity
	if err := apitest.GetJSON(addr, "/v1/capacity?consistent=true", &capa); err != nil {
		t.Fatal(err)
	}
	var hosts yunchiv1.ListHostsResponse
	if err := apitest.GetJSON(addr, "/v1/hosts?consistent=true", &hosts); err != nil {
		t.Fatal(err)
	}
	var freeSum int64
	for _, x := range hosts.GetHosts() {
		if x.GetFree().GetMemoryBytes() < 0 {
			t.Fatalf("%s: negative free %d", x.GetId(), x.GetFree().GetMemoryBytes())
		}
		freeSum += x.GetFree().GetMemoryBytes()
	}
	if capa.GetHostsOvercommitted() != 1 || capa.GetOvercommit().GetMemoryBytes() != over || capa.GetFree().GetMemoryBytes() != freeSum {
		t.Fatalf("capacity: %d hosts overcommitted by %v, free %d (hosts' free sum %d)", capa.GetHostsOvercommitted(), capa.GetOvercommit(), capa.GetFree().GetMemoryBytes(), freeSum)
	}
	for _, cc := range capa.GetCenters() {
		want := int32(0)
		if cc.GetCenter() == "b1" {
			want = 1
		}
		if cc.GetHostsOvercommitted() != want {
			t.Fatalf("center %s: %d hosts overcommitted, want %d", cc.GetCenter(), cc.GetHostsOvercommitted(), want)
		}
	}
	// The scheduler takes nothing more there, however small.
	code, body, _ = apitest.Post(addr, "/v1/vms", `{"name":"tiny","vcpus":1,"memory":"16MiB","disk":"1GiB","constraints":["host=b1-h01"]}`)
	if code != 429 || !strings.Contains(string(body), "1 insufficient memory (need 16 MiB; none free: b1-h01, the least overcommitted, is over by ") {
		t.Fatalf("create on an overcommitted host: %d %s", code, body)
	}
	// A center-wide change, forced.
	if code, body, err := apitest.Post(addr, "/v1/ratios", `{"scope":"center","name":"b1","memory":0.1,"force":true}`); err != nil || code != 200 {
		t.Fatalf("forced ratio: %d %s %v", code, body, err)
	}
	if err := apitest.GetJSON(addr, "/v1/capacity?consistent=true", &capa); err != nil || capa.GetHostsOvercommitted() != 2 {
		t.Fatalf("capacity after forced ratio: %v %v", capa.GetHostsOvercommitted(), err)
	}
}
