package controller

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// restRequest sends one REST request with the given Content-Type and
// Origin ("" leaves the header out) and returns the status, headers and
// google.rpc.Status message of the answer.
func restRequest(t *testing.T, addr, method, path, ctype, origin, body string) (int, http.Header, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e restError
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("%s %s: %d answer is not a google.rpc.Status: %s", method, path, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, resp.Header, e.Message
}

// The REST input rules of issue 6 (items 6, 7, 8, 11) against a real
// cluster: each request is refused with its code and a one-line message,
// and nothing changes.
func TestRESTInputRulesChangeNothing(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[2].ctl.Addr()
	registerHosts(t, addr, 3, 16, 64*gib)
	if code, body, err := apitest.Post(addr, "/v1/vms", `{"name":"keep-1","vcpus":1,"memory":"1GiB"}`); err != nil || code != 200 {
		t.Fatalf("seed: %d %s %v", code, body, err)
	}
	before := stateDump(t, addr)
	create := `{"name":"csrf-1","vcpus":1,"memory":"1GiB"}`
	const js = "application/json"
	cases := []struct {
		name, method, path, ctype, origin, body string
		code                                    int
		msg                                     string
		allow                                   string
	}{
		{"text/plain create", "POST", "/v1/vms", "text/plain", "", create, 415, `Content-Type "text/plain" is not accepted: the request body must be application/json`, ""},
		{"text/plain from a page", "POST", "/v1/vms", "text/plain;charset=UTF-8", "https://evil.example", create, 403, "cross-origin POST from https://evil.example refused", ""},
		{"form create", "POST", "/v1/vms", "application/x-www-form-urlencoded", "", "name=csrf-1&vcpus=1&memory=1GiB", 415, "must be application/json", ""},
		{"json from another origin", "POST", "/v1/vms", js, "https://evil.example", create, 403, "not in the controller's --cors-allow-origin list", ""},
		{"delete from another origin", "DELETE", "/v1/vms/keep-1", "", "https://evil.example", "", 403, "cross-origin DELETE", ""},
		{"trailing garbage", "POST", "/v1/vms", js, "", create + `x`, 400, "unexpected data after the JSON value at offset 43", ""},
		{"two values", "POST", "/v1/vms", js, "", create + create, 400, "send exactly one JSON object", ""},
		{"query on create", "POST", "/v1/vms?name=csrf-2", js, "", create, 400, `POST /v1/vms takes no query parameters (got "name")`, ""},
		{"body on delete", "DELETE", "/v1/vms/keep-1", js, "", `{"project":"default"}`, 400, "DELETE /v1/vms/{name} takes no request body", ""},
		{"wrong method", "PUT", "/v1/vms", js, "", create, 405, "method PUT is not allowed on /v1/vms: use GET or POST", "GET, POST, OPTIONS"},
		{"wrong method on a member", "GET", "/v1/cluster/members/c9", "", "", "", 405, "use DELETE", "DELETE, OPTIONS"},
		{"unknown path", "POST", "/v1/vm", js, "", create, 404, "no REST route /v1/vm", ""},
		{"unknown filter", "GET", "/v1/vms?host=h2", "", "", "", 400, `unknown query parameter "host" for GET /v1/vms: it accepts project, hostId, consistent`, ""},
		{"unknown filter on delete", "DELETE", "/v1/vms/keep-1?force=true", "", "", "", 400, `unknown query parameter "force" for DELETE /v1/vms/{name}: it accepts project`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, hdr, msg := restRequest(t, addr, tc.method, tc.path, tc.ctype, tc.origin, tc.body)
			if code != tc.code {
				t.Fatalf("status %d, want %d (%s)", code, tc.code, msg)
			}
			if !strings.Contains(msg, tc.msg) || strings.Contains(msg, "\n") {
				t.Fatalf("message %q, want one line with %q", msg, tc.msg)
			}
			if got := hdr.Get("Allow"); got != tc.allow {
				t.Fatalf("Allow %q, want %q", got, tc.allow)
			}
		})
	}
	if after := stateDump(t, addr); after != before {
		t.Fatalf("refused requests changed the state:\nbefore %s\nafter  %s", before, after)
	}

	// What the rules let through still works: a filter in either spelling,
	// JSON with a charset, an action with no body.
	for _, q := range []string{"hostId", "host_id"} {
		var l yunchiv1.ListVMsResponse
		if err := apitest.GetJSON(addr, "/v1/vms?"+q+"=nope-h&consistent=true", &l); err == nil || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), `nope-h\" not found`) {
			t.Fatalf("filter %s: %v", q, err)
		}
	}
	if code, _, msg := restRequest(t, addr, "POST", "/v1/vms", "application/json; charset=utf-8", "", `{"name":"ok-1","vcpus":1,"memory":"1GiB"}`); code != 200 {
		t.Fatalf("create with charset: %d %s", code, msg)
	}
	if code, _, msg := restRequest(t, addr, "POST", "/v1/vms/ok-1:stop", "", "", ""); code != 200 {
		t.Fatalf("stop without a body: %d %s", code, msg)
	}
}

// A controller started with --cors-allow-origin lets that origin's pages
// write, answers its preflight, and still refuses every other origin.
func TestCORSAllowList(t *testing.T) {
	const portal = "https://portal.example.gov.cn"
	_, trans := raft.NewInmemTransport(raft.ServerAddress("inmem-c1:7000"))
	ctl, err := New(Config{Insecure: true, ID: "c1", Listen: "127.0.0.1:0", DataDir: t.TempDir(), Bootstrap: true, FastRaft: true, RaftTransport: trans, CORSAllowOrigins: []string{portal}, NoAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ctl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	addr := ctl.Addr()
	apitest.Eventually(t, 20*time.Second, "a leader", func() bool {
		st, err := apitest.Status(addr)
		return err == nil && st.LeaderId != ""
	})

	code, hdr, msg := restRequest(t, addr, "OPTIONS", "/v1/groups", "", portal, "")
	if code != 204 || hdr.Get("Allow") != "GET, POST, OPTIONS" {
		t.Fatalf("options: %d %v %s", code, hdr, msg)
	}
	req, _ := http.NewRequest("OPTIONS", "http://"+addr+"/v1/groups", nil)
	req.Header.Set("Origin", portal)
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "content-type")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != portal ||
		resp.Header.Get("Access-Control-Allow-Methods") != "GET, POST" || resp.Header.Get("Access-Control-Allow-Headers") != "Content-Type" {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	code, hdr, msg = restRequest(t, addr, "POST", "/v1/groups", "application/json", portal, `{"name":"g1","policy":"GROUP_POLICY_AFFINITY"}`)
	if code != 200 || hdr.Get("Access-Control-Allow-Origin") != portal {
		t.Fatalf("write from the allowed origin: %d %v %s", code, hdr, msg)
	}
	code, hdr, msg = restRequest(t, addr, "POST", "/v1/groups", "application/json", "https://portal.example.gov.cn.evil.example", `{"name":"g2","policy":"GROUP_POLICY_AFFINITY"}`)
	if code != 403 || hdr.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("write from another origin: %d %v %s", code, hdr, msg)
	}
	var gs yunchiv1.ListGroupsResponse
	if err := apitest.GetJSON(addr, "/v1/groups", &gs); err != nil || len(gs.Groups) != 1 || gs.Groups[0].Name != "g1" {
		t.Fatalf("groups: %v %v", &gs, err)
	}

	if _, err := New(Config{Insecure: true, ID: "c2", Listen: "127.0.0.1:0", DataDir: t.TempDir(), CORSAllowOrigins: []string{"*"}}); err == nil ||
		!strings.Contains(err.Error(), `--cors-allow-origin: CORS origin "*" is not an origin`) {
		t.Fatalf("wildcard origin: %v", err)
	}
}

// Every REST binding in the proto is served: a request for it is never
// answered as an unknown route or a wrong method.
func TestEveryRESTRouteIsServed(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[0].ctl.Addr()
	vars := regexp.MustCompile(`\{[^}]*\}`)
	n := 0
	svcs := yunchiv1.File_yunchi_v1_yunchi_proto.Services()
	for i := 0; i < svcs.Len(); i++ {
		ms := svcs.Get(i).Methods()
		for j := 0; j < ms.Len(); j++ {
			rule, _ := proto.GetExtension(ms.Get(j).Options(), annotations.E_Http).(*annotations.HttpRule)
			if rule == nil {
				continue
			}
			var method, tmpl string
			switch {
			case rule.GetGet() != "":
				method, tmpl = "GET", rule.GetGet()
			case rule.GetPost() != "":
				method, tmpl = "POST", rule.GetPost()
			case rule.GetPatch() != "":
				method, tmpl = "PATCH", rule.GetPatch()
			case rule.GetDelete() != "":
				method, tmpl = "DELETE", rule.GetDelete()
			case rule.GetPut() != "":
				method, tmpl = "PUT", rule.GetPut()
			default:
				t.Fatalf("%s: a binding this test does not know", ms.Get(j).FullName())
			}
			body, ctype := "", ""
			if rule.GetBody() != "" {
				body, ctype = "{}", "application/json"
			}
			path := vars.ReplaceAllString(tmpl, "nope")
			if strings.HasSuffix(path, ":watch") {
				continue // a stream that waits; its route is checked by its 404 below
			}
			code, _, msg := restRequest(t, addr, method, path, ctype, "", body)
			if code == 405 || code == 501 || strings.Contains(msg, "no REST route") {
				t.Errorf("%s %s (%s): %d %s", method, path, ms.Get(j).FullName(), code, msg)
			}
			n++
		}
	}
	if code, _, msg := restRequest(t, addr, "GET", "/v1/vms/nope:watch", "", "", ""); code != 404 || strings.Contains(msg, "no REST route") {
		t.Errorf("watch: %d %s", code, msg)
	}
	if n < 20 {
		t.Fatalf("only %d routes checked", n)
	}
}

// A huge body is refused with 413 before it is read: with a Content-Length
// at once, sent chunked after at most the limit. The controller's memory
// does not grow with the body, and nothing changes.
func TestHugeBodyIsRefusedUnread(t *testing.T) {
	c := newInmemCluster(t)
	addr := c.members[1].ctl.Addr()
	registerHosts(t, addr, 3, 16, 64*gib)
	before := stateDump(t, addr)
	const size = 64 << 20
	for _, chunkedBody := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunkedBody), func(t *testing.T) {
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			allocBefore := ms.TotalAlloc
			code, msg := sendHugeBody(t, addr, size, chunkedBody)
			runtime.ReadMemStats(&ms)
			grown := ms.TotalAlloc - allocBefore
			t.Logf("%d KiB allocated while refusing a %d MiB body", grown>>10, size>>20)
			// The server reads at most 1 MiB; everything this process
			// allocated meanwhile (client, server, raft) stays far below
			// the body.
			if code != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "larger than the 1 MiB limit") || grown > 16<<20 {
				t.Fatalf("answer %d %q after %d MiB allocated; want 413 naming the 1 MiB limit, and at most 16 MiB for a %d MiB body", code, msg, grown>>20, size>>20)
			}
		})
	}
	if after := stateDump(t, addr); after != before {
		t.Fatal("a refused body changed the state")
	}
}

// sendHugeBody writes a POST /v1/vms of size bytes (one JSON object whose
// name is nearly all of it, so a reader that buffers has to take it all)
// over a raw connection, generating it as it goes, and returns the answer.
// The writer stops when the server stops reading.
func sendHugeBody(t *testing.T, addr string, size int, chunkedBody bool) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	hdr := "POST /v1/vms HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\n"
	if chunkedBody {
		hdr += "Transfer-Encoding: chunked\r\n\r\n"
	} else {
		hdr += fmt.Sprintf("Content-Length: %d\r\n\r\n", size)
	}
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		if _, err := io.WriteString(conn, hdr); err != nil {
			return
		}
		// {"name":"aaa...aaa"}: valid JSON, size bytes long.
		head, tail := `{"name":"`, `"}`
		chunk := []byte(strings.Repeat("a", 32<<10))
		for sent := 0; sent < size; {
			part := chunk[:min(len(chunk), size-sent)]
			switch {
			case sent == 0:
				part = append([]byte(head), part[len(head):]...)
			case sent+len(part) == size:
				part = append(part[:len(part)-len(tail):len(part)-len(tail)], tail...)
			}
			if chunkedBody {
				if _, err := fmt.Fprintf(conn, "%x\r\n", len(part)); err != nil {
					return
				}
			}
			if _, err := conn.Write(part); err != nil {
				return // the server closed: it does not read the rest
			}
			if chunkedBody {
				if _, err := io.WriteString(conn, "\r\n"); err != nil {
					return
				}
			}
			sent += len(part)
		}
		if chunkedBody {
			io.WriteString(conn, "0\r\n\r\n")
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	conn.Close()
	<-wrote
	var e restError
	json.Unmarshal(b, &e)
	return resp.StatusCode, e.Message
}
