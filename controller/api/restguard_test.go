package api

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// chunked is a body of unknown length (sent chunked): the guard cannot
// judge it by its Content-Length.
type chunked struct{ io.Reader }

// TestRESTGuard: what the guard lets through to the gateway, and what it
// answers itself (never reaching the gateway).
func TestRESTGuard(t *testing.T) {
	const allowed = "https://portal.example.gov.cn"
	big := strings.Repeat("x", MaxRequestBody+1)
	cases := []struct {
		name, method, path, ctype, origin, body string
		stream                                  bool // send the body chunked
		hdr                                     map[string]string
		code                                    int // 0: passed to the gateway
		msg                                     string
		respHdr                                 map[string]string
	}{
		{name: "json create", method: "POST", path: "/v1/vms", ctype: "application/json", body: `{"name":"a"}`},
		{name: "json with charset", method: "POST", path: "/v1/vms", ctype: "application/json; charset=UTF-8", body: `{"name":"a"}`},
		{name: "empty action without type", method: "POST", path: "/v1/vms/a:stop"},
		{name: "get with filter", method: "GET", path: "/v1/vms?hostId=h2&project=p"},
		{name: "get with proto spelling", method: "GET", path: "/v1/vms?host_id=h2&consistent=true"},
		{name: "delete", method: "DELETE", path: "/v1/vms/a"},
		{name: "get with empty json type", method: "GET", path: "/v1/vms", ctype: "text/plain"},
		{name: "read from another origin", method: "GET", path: "/v1/vms", origin: "https://evil.example"},
		{name: "write from allowed origin", method: "POST", path: "/v1/vms", ctype: "application/json", origin: allowed, body: `{}`,
			respHdr: map[string]string{"Access-Control-Allow-Origin": allowed, "Vary": "Origin"}},
		{name: "chunked small body", method: "POST", path: "/v1/vms", ctype: "application/json", body: `{"name":"a"}`, stream: true},

		{name: "text/plain", method: "POST", path: "/v1/vms", ctype: "text/plain", body: `{"name":"a"}`, code: 415, msg: `Content-Type "text/plain" is not accepted: the request body must be application/json`},
		{name: "form", method: "POST", path: "/v1/vms", ctype: "application/x-www-form-urlencoded", body: `a=b`, code: 415, msg: "must be application/json"},
		{name: "multipart", method: "POST", path: "/v1/vms", ctype: "multipart/form-data; boundary=x", body: `--x--`, code: 415, msg: "must be application/json"},
		{name: "no type", method: "POST", path: "/v1/vms", body: `{"name":"a"}`, code: 415, msg: "no Content-Type"},
		{name: "latin1", method: "POST", path: "/v1/vms", ctype: "application/json; charset=latin1", body: `{}`, code: 415, msg: "UTF-8"},
		{name: "text/plain empty action", method: "POST", path: "/v1/vms/a:stop", ctype: "text/plain", code: 415, msg: "must be application/json"},
		{name: "too long by length", method: "POST", path: "/v1/vms", ctype: "application/json", body: big, code: 413, msg: "request body of 1 MiB (1048577 bytes) is larger than the 1 MiB limit"},
		{name: "too long chunked", method: "POST", path: "/v1/vms", ctype: "application/json", body: big, stream: true, code: 413, msg: "request body is larger than the 1 MiB limit"},
		{name: "unknown query parameter", method: "GET", path: "/v1/vms?host=h2", code: 400, msg: `unknown query parameter "host" for GET /v1/vms: it accepts project, hostId, consistent`},
		{name: "two unknown", method: "GET", path: "/v1/hosts?zone=a&cente=b", code: 400, msg: `unknown query parameters "cente", "zone" for GET /v1/hosts: it accepts center, consistent`},
		{name: "path field in query", method: "GET", path: "/v1/vms/a?name=b", code: 400, msg: `unknown query parameter "name" for GET /v1/vms/{name}: it accepts project, consistent`},
		{name: "query on a body route", method: "POST", path: "/v1/vms?dryRun=true", ctype: "application/json", body: `{}`, code: 400, msg: `POST /v1/vms takes no query parameters (got "dryRun"): its fields go in the JSON body`},
		{name: "query where none", method: "GET", path: "/v1/cluster/status?verbose=1", code: 400, msg: `GET /v1/cluster/status takes no query parameters (got "verbose"): it has none`},
		{name: "bad escape", method: "GET", path: "/v1/vms?hostId=%zz", code: 400, msg: "query string"},
		{name: "body on a get", method: "GET", path: "/v1/vms", ctype: "application/json", body: `{"hostId":"h2"}`, code: 400, msg: "GET /v1/vms takes no request body"},
		{name: "chunked body on a delete", method: "DELETE", path: "/v1/vms/a", ctype: "application/json", body: `{"project":"p"}`, stream: true, code: 400, msg: "DELETE /v1/vms/{name} takes no request body"},
		{name: "wrong method", method: "PUT", path: "/v1/vms", code: 405, msg: "method PUT is not allowed on /v1/vms: use GET or POST",
			respHdr: map[string]string{"Allow": "GET, POST, OPTIONS"}},
		{name: "wrong method on item", method: "POST", path: "/v1/hosts/h1", ctype: "application/json", body: `{}`, code: 405, msg: "use GET or PATCH",
			respHdr: map[string]string{"Allow": "GET, PATCH, OPTIONS"}},
		{name: "unknown path", method: "GET", path: "/v1/nothing", code: 404, msg: "no REST route /v1/nothing"},
		{name: "write from another origin", method: "POST", path: "/v1/vms", ctype: "application/json", origin: "https://evil.example", body: `{"name":"a"}`, code: 403, msg: "cross-origin POST from https://evil.example refused"},
		{name: "delete from another origin", method: "DELETE", path: "/v1/vms/a", origin: "null", code: 403, msg: "cross-origin DELETE from null refused"},
		{name: "preflight allowed", method: "OPTIONS", path: "/v1/vms", origin: allowed, hdr: map[string]string{"Access-Control-Request-Method": "POST"}, code: 204,
			respHdr: map[string]string{"Access-Control-Allow-Origin": allowed, "Access-Control-Allow-Methods": "GET, POST", "Access-Control-Allow-Headers": "Content-Type", "Allow": "GET, POST, OPTIONS"}},
		{name: "preflight refused", method: "OPTIONS", path: "/v1/vms", origin: "https://evil.example", hdr: map[string]string{"Access-Control-Request-Method": "POST"}, code: 403, msg: "cross-origin requests from https://evil.example are refused",
			respHdr: map[string]string{"Access-Control-Allow-Origin": ""}},
		{name: "plain options", method: "OPTIONS", path: "/v1/vms:batch", code: 204, respHdr: map[string]string{"Allow": "POST, OPTIONS"}},
		{name: "options unknown path", method: "OPTIONS", path: "/v1/nothing", code: 404, msg: "no REST route"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got *http.Request
			var gotBody []byte
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = r
				gotBody, _ = io.ReadAll(r.Body)
				w.WriteHeader(299)
			})
			g, err := newRESTGuard(next, runtime.NewServeMux(), HTTPOptions{AllowOrigins: []string{allowed}}, yunchiv1.File_yunchi_v1_yunchi_proto)
			if err != nil {
				t.Fatal(err)
			}
			var body io.Reader = strings.NewReader(tc.body)
			if tc.stream {
				body = chunked{body}
			}
			req := httptest.NewRequest(tc.method, tc.path, body)
			if tc.stream {
				req.ContentLength = -1
			}
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			for k, v := range tc.hdr {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			g.ServeHTTP(rec, req)
			resp := rec.Result()
			for k, v := range tc.respHdr {
				if h := resp.Header.Get(k); h != v {
					t.Errorf("header %s: %q, want %q", k, h, v)
				}
			}
			if tc.code == 0 {
				if got == nil {
					t.Fatalf("refused with %d: %s", resp.StatusCode, rec.Body)
				}
				if string(gotBody) != tc.body {
					t.Fatalf("the gateway got body %q, want %q", gotBody, tc.body)
				}
				return
			}
			if got != nil {
				t.Fatalf("passed to the gateway, want %d", tc.code)
			}
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.code, rec.Body)
			}
			if tc.code == 204 {
				return
			}
			var st struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
				t.Fatalf("error body is not a google.rpc.Status: %v: %s", err, rec.Body)
			}
			if !strings.Contains(st.Message, tc.msg) || strings.Contains(st.Message, "\n") {
				t.Fatalf("message %q, want one line with %q", st.Message, tc.msg)
			}
		})
	}
}

func TestCheckOrigin(t *testing.T) {
	for in, want := range map[string]string{
		"https://portal.example.gov.cn":      "https://portal.example.gov.cn",
		"HTTP://Portal.Example:8080/":        "http://portal.example:8080",
		"*":                                  "",
		"portal.example":                     "",
		"https://portal.example/app":         "",
		"ftp://portal.example":               "",
		"https://u@portal.example":           "",
		"https://*.example.gov.cn":           "",
		"https://portal.example.gov.cn?x=1":  "",
		"https://portal.example.gov.cn#frag": "",
	} {
		got, err := CheckOrigin(in)
		if want == "" {
			if err == nil || !strings.Contains(err.Error(), "scheme://host[:port]") {
				t.Errorf("%q: %q, %v; want a refusal", in, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", in, got, err, want)
		}
	}
}
