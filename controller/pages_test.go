package controller

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// TestListVMsPages (and hosts): a list answers at most page_size VMs (1000 when not
// given), in key order, with a token for the rest; following the tokens
// gives every VM once. One answer of a large cloud's VMs used to pass
// gRPC's 4 MiB message limit (at some 25,000 VMs), so `vm list` failed
// with "no capacity".
func TestListVMsPages(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.leader().ctl.Addr()
	registerHosts(t, addr, 3, 512, 1024*gib)
	const n = 1003
	for b := 0; b*100 < n; b++ {
		count := min(100, n-b*100)
		body := fmt.Sprintf(`{"name":"p%02d","vcpus":1,"memory":"16MiB","disk":"1GiB","count":%d}`, b, count)
		// As a client should: one key per batch, sent again while the
		// answer is "retry" (the test cluster's short raft timeouts can
		// lose leadership on a busy machine).
		h := http.Header{"Idempotency-Key": {fmt.Sprintf("pages-batch-%d", b)}}
		for try := 1; ; try++ {
			code, resp, err := apitest.DoWith(addr, http.MethodPost, "/v1/vms:batch", body, h)
			if err == nil && code == 200 {
				break
			}
			if err != nil || code != http.StatusServiceUnavailable || try == 20 {
				t.Fatalf("batch %d (try %d): %d %s %v", b, try, code, resp, err)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	page := func(query string) *yunchiv1.ListVMsResponse {
		t.Helper()
		code, body := apitest.Get(t, addr, "/v1/vms"+query)
		if code != 200 {
			t.Fatalf("GET /v1/vms%s: %d %s", query, code, body)
		}
		var p yunchiv1.ListVMsResponse
		if err := protojson.Unmarshal(body, &p); err != nil {
			t.Fatal(err)
		}
		return &p
	}
	first := page("")
	if len(first.Vms) != 1000 || first.NextPageToken == "" {
		t.Fatalf("default page: %d VMs, token %q; want 1000 and a token", len(first.Vms), first.NextPageToken)
	}
	var names []string
	token := ""
	for pages := 0; ; pages++ {
		p := page("?pageSize=300&pageToken=" + url.QueryEscape(token))
		if len(p.Vms) > 300 || pages > 4 {
			t.Fatalf("page %d: %d VMs (page size 300)", pages, len(p.Vms))
		}
		for _, v := range p.Vms {
			names = append(names, v.Name)
		}
		if token = p.NextPageToken; token == "" {
			break
		}
	}
	if len(names) != n || !slices.IsSorted(names) || len(slices.Compact(slices.Clone(names))) != n {
		t.Fatalf("pages gave %d names (sorted %v), want %d distinct in order", len(names), slices.IsSorted(names), n)
	}
	// Hosts page the same way, by id.
	var ids []string
	token = ""
	for pages := 0; ; pages++ {
		code, body := apitest.Get(t, addr, "/v1/hosts?pageSize=2&pageToken="+url.QueryEscape(token))
		var p yunchiv1.ListHostsResponse
		if err := protojson.Unmarshal(body, &p); code != 200 || err != nil || len(p.Hosts) > 2 || pages > 2 {
			t.Fatalf("hosts page %d: %d %s", pages, code, body)
		}
		for _, h := range p.Hosts {
			ids = append(ids, h.Id)
		}
		if token = p.NextPageToken; token == "" {
			break
		}
	}
	if len(ids) != 3 || !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != 3 {
		t.Fatalf("host pages gave %v, want the 3 hosts once each in order", ids)
	}
	for _, bad := range []struct{ query, msg string }{
		{"/v1/hosts?pageSize=9000", "page_size 9000 is out of range"},
		{"/v1/hosts?pageToken=!!", "is not one this API gave"},
	} {
		code, body := apitest.Get(t, addr, bad.query)
		if code != 400 || !strings.Contains(string(body), bad.msg) {
			t.Errorf("GET %s: %d %s; want 400 saying %q", bad.query, code, body, bad.msg)
		}
	}
	for _, bad := range []struct{ query, msg string }{
		{"?pageSize=5001", "page_size 5001 is out of range: give 1 to 5000"},
		{"?pageSize=-1", "page_size -1 is out of range"},
		{"?pageToken=bm90LWEtdG9rZW4", "is not one this API gave"},
	} {
		code, body := apitest.Get(t, addr, "/v1/vms"+bad.query)
		if code != 400 || !strings.Contains(string(body), bad.msg) {
			t.Errorf("GET /v1/vms%s: %d %s; want 400 saying %q", bad.query, code, body, bad.msg)
		}
	}
}
