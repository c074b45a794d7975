package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// quotaFailure is the QuotaFailure detail of err, if any.
func quotaFailure(err error) *errdetails.QuotaFailure {
	for _, d := range status.Convert(err).Details() {
		if qf, ok := d.(*errdetails.QuotaFailure); ok {
			return qf
		}
	}
	return nil
}

// TestConcurrentCreatesAtQuotaEdge: 100 clients create 1-vCPU VMs at once
// through all three controllers into the default project, whose
// department allows 40 vCPUs; the hosts have room for all of them.
// Afterwards, on every controller's own state: the department uses
// exactly 40 vCPUs (never more), every acknowledged VM exists once, every
// one refused for the quota does not exist, and each refusal carries a
// QuotaFailure naming the department.
func TestConcurrentCreatesAtQuotaEdge(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[0].ctl.Addr()
	registerHosts(t, addr, 6, 64, 64*gib)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const limit, n = 40, 100
	qc := yunchiv1.NewQuotaServiceClient(dial(t, c.members[1].ctl.Addr())) // a follower: forwarded
	if _, err := qc.SetQuota(ctx, &yunchiv1.SetQuotaRequest{Department: "default", Vcpus: proto.Int64(limit)}); err != nil {
		t.Fatalf("set quota: %v", err)
	}
	clients := make([]yunchiv1.VMServiceClient, len(c.members))
	for i, m := range c.members {
		clients[i] = yunchiv1.NewVMServiceClient(dial(t, m.ctl.Addr()))
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		acked    = map[string]bool{}
		rejected = map[string]error{}
		unknown  = map[string]error{}
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := &yunchiv1.CreateVMRequest{Name: fmt.Sprintf("q-%03d", i), Vcpus: 1, Memory: "1GiB", Disk: "1GiB"}
			_, err := clients[i%3].CreateVM(ctx, req)
			mu.Lock()
			defer mu.Unlock()
			switch code := status.Code(err); {
			case err == nil:
				acked[req.Name] = true
			case code == codes.ResourceExhausted:
				qf := quotaFailure(err)
				if qf == nil || len(qf.Violations) != 1 || qf.Violations[0].Subject != "department:default" ||
					!strings.HasPrefix(status.Convert(err).Message(), `quota exceeded: department "default" vCPU: limit 40, in use `) {
					t.Errorf("%s: refused without the quota failure: %v (%v)", req.Name, err, qf)
				}
				rejected[req.Name] = err
			case code == codes.Unavailable:
				unknown[req.Name] = err // a leader change: at most once
			default:
				t.Errorf("%s: %v", req.Name, err)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d creates acknowledged, %d refused for the quota, %d unknown", len(acked), len(rejected), len(unknown))
	if len(acked) > limit {
		t.Fatalf("%d creates acknowledged, quota %d", len(acked), limit)
	}
	if len(unknown) == 0 && len(acked) != limit {
		t.Fatalf("%d creates acknowledged, want exactly the quota %d", len(acked), limit)
	}

	waitConverged(t, c.members)
	for _, m := range c.members {
		a := m.ctl.Addr()
		checkInvariants(t, a, acked)
		for _, v := range listVMs(t, a).Vms {
			if err, ok := rejected[v.Name]; ok {
				t.Errorf("%s: vm %s exists, but its create was refused: %v", m.id, v.Name, err)
			} else if !acked[v.Name] && unknown[v.Name] == nil {
				t.Errorf("%s: vm %s exists, but nobody created it", m.id, v.Name)
			}
		}
		var q yunchiv1.Quota
		if err := apitest.GetJSON(a, "/v1/quotas/default", &q); err != nil {
			t.Fatal(err)
		}
		used := q.GetUsed().GetVcpus()
		if used > limit || (len(unknown) == 0 && used != limit) || used < int64(len(acked)) {
			t.Errorf("%s: department default uses %d vCPUs (quota %d, %d acknowledged)", m.id, used, limit, len(acked))
		}
	}
}

// Over REST, a create over a quota is 429 with the QuotaFailure in the
// google.rpc.Status body; the quota and its use read back as JSON.
func TestQuotaOverREST(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[0].ctl.Addr()
	registerHosts(t, addr, 3, 64, 64*gib)
	code, body, err := apitest.Post(addr, "/v1/quotas", `{"department":"default","project":"default","vms":"1","memory":"8GiB"}`)
	if err != nil || code != 200 {
		t.Fatalf("set quota: %d %s %v", code, body, err)
	}
	var q yunchiv1.Quota
	if err := protojson.Unmarshal(body, &q); err != nil || q.GetLimit().GetVms() != 1 || q.GetLimit().GetMemoryBytes() != 8*gib || q.GetLimit().Vcpus != nil {
		t.Fatalf("set quota answered %s (%v)", body, err)
	}
	if code, body, _ := apitest.Post(addr, "/v1/vms", `{"name":"one","vcpus":1,"memory":"1GiB"}`); code != 200 {
		t.Fatalf("first create: %d %s", code, body)
	}
	code, body, _ = apitest.Post(addr, "/v1/vms", `{"name":"two","vcpus":1,"memory":"1GiB"}`)
	var st struct {
		Code    int
		Message string
		Details []struct {
			Type       string `json:"@type"`
			Violations []struct{ Subject, Description string }
		}
	}
	if err := json.Unmarshal(body, &st); err != nil || code != 429 {
		t.Fatalf("second create: %d %s", code, body)
	}
	want := `quota exceeded: project "default" VMs: limit 1, in use 1, asked 1`
	if st.Message != want || len(st.Details) != 1 || !strings.HasSuffix(st.Details[0].Type, "google.rpc.QuotaFailure") ||
		len(st.Details[0].Violations) != 1 || st.Details[0].Violations[0].Subject != "project:default" || st.Details[0].Violations[0].Description != want {
		t.Fatalf("second create: %s", body)
	}
	code, body = apitest.Get(t, addr, "/v1/quotas")
	var list yunchiv1.ListQuotasResponse
	if err := protojson.Unmarshal(body, &list); err != nil || code != 200 || len(list.Quotas) != 2 {
		t.Fatalf("list: %d %s", code, body)
	}
	if p := list.Quotas[1]; p.Project != "default" || p.GetUsed().GetVms() != 1 || p.GetUsed().GetMemoryBytes() != gib {
		t.Fatalf("project row %v", p)
	}
	// Bad input: one line, 400, nothing changed.
	for _, b := range []string{`{"department":"default","memory":"8GB"}`, `{"department":"default","vcpus":"-1"}`, `{"department":"default"}`, `{"department":"default","clear":["gpu"]}`} {
		if code, body, _ := apitest.Post(addr, "/v1/quotas", b); code != 400 || strings.Contains(string(body), `\n`) {
			t.Errorf("%s: %d %s", b, code, body)
		}
	}
	if code, body := apitest.Get(t, addr, "/v1/quotas/nope"); code != 404 {
		t.Errorf("unknown department: %d %s", code, body)
	}
}
