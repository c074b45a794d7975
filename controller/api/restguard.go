package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/yunchi/yunchi/scheduler"
)

// The REST input rules live here, in one place, in front of grpc-gateway:
//
//   - a request body is at most MaxRequestBody bytes: refused with 413 from
//     its Content-Length before anything is read, and a body without one
//     (chunked) is read at most that far;
//   - a body the route binds must be application/json (415 otherwise), and a
//     route that binds none takes no body (400);
//   - the path must be a route (404) and the method one it serves (405 with
//     Allow); OPTIONS answers Allow and CORS preflights;
//   - every query parameter must name a field the route takes from the query
//     (400 naming the unknown ones and the accepted ones);
//   - a browser page of another origin may not write (403) unless its origin
//     is in the controller's allow-list (--cors-allow-origin).
//
// The routes are read from the google.api.http options of the proto, the
// same options grpc-gateway was generated from, and a path is matched by a
// grpc-gateway mux holding those templates, so the guard and the gateway
// cannot disagree about which route a request is.

// MaxRequestBody is the largest REST request body a controller reads. Real
// requests are well under a KiB; the limit keeps a huge body from costing
// the controller (and raft) memory.
const MaxRequestBody = 1 << 20

// MaxGRPCRequest is the largest gRPC request a controller accepts (the
// gRPC default, stated here so it stays above MaxRequestBody: a REST body
// that passes becomes a smaller protobuf message).
const MaxGRPCRequest = 4 << 20

// HTTPOptions are the REST settings of a controller.
type HTTPOptions struct {
	// AllowOrigins are the origins ("https://portal.example.gov.cn") whose
	// browser pages may call the REST API, writes included. Requests from
	// other origins may read but not write.
	AllowOrigins []string
}

// CheckOrigin validates one --cors-allow-origin value and returns it in the
// form browsers send in the Origin header.
func CheckOrigin(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || strings.Contains(s, "*") {
		return "", fmt.Errorf("CORS origin %q is not an origin: want scheme://host[:port], e.g. https://portal.example.gov.cn", s)
	}
	return strings.ToLower(u.Scheme + "://" + u.Host), nil
}

// restRoute is one REST binding of a gRPC method.
type restRoute struct {
	method, template string
	// body is "" (none), "*" (the whole request) or a field name.
	body string
	// pathFields are the top-level fields bound from the path.
	pathFields map[protoreflect.Name]bool
	req        protoreflect.MessageDescriptor
}

// restRoutes lists the REST bindings of every method of the services in
// files.
func restRoutes(files ...protoreflect.FileDescriptor) ([]*restRoute, error) {
	var out []*restRoute
	for _, f := range files {
		for i := 0; i < f.Services().Len(); i++ {
			sd := f.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				md := sd.Methods().Get(j)
				rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
				if rule == nil {
					continue
				}
				for _, b := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
					r, err := newRestRoute(b, md.Input())
					if err != nil {
						return nil, fmt.Errorf("%s: %w", md.FullName(), err)
					}
					out = append(out, r)
				}
			}
		}
	}
	return out, nil
}

var pathVar = regexp.MustCompile(`\{([^}=]+)(=[^}]*)?\}`)

func newRestRoute(b *annotations.HttpRule, req protoreflect.MessageDescriptor) (*restRoute, error) {
	r := &restRoute{body: b.GetBody(), req: req, pathFields: map[protoreflect.Name]bool{}}
	switch p := b.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		r.method, r.template = http.MethodGet, p.Get
	case *annotations.HttpRule_Post:
		r.method, r.template = http.MethodPost, p.Post
	case *annotations.HttpRule_Put:
		r.method, r.template = http.MethodPut, p.Put
	case *annotations.HttpRule_Patch:
		r.method, r.template = http.MethodPatch, p.Patch
	case *annotations.HttpRule_Delete:
		r.method, r.template = http.MethodDelete, p.Delete
	case *annotations.HttpRule_Custom:
		r.method, r.template = p.Custom.GetKind(), p.Custom.GetPath()
	default:
		return nil, errors.New("http rule without a pattern")
	}
	for _, m := range pathVar.FindAllStringSubmatch(r.template, -1) {
		top := protoreflect.Name(strings.SplitN(m[1], ".", 2)[0])
		if req.Fields().ByName(top) == nil {
			return nil, fmt.Errorf("path %s binds %q, which %s does not have", r.template, m[1], req.FullName())
		}
		r.pathFields[top] = true
	}
	return r, nil
}

// queryField is the field a query key sets, or nil when the route does not
// take that key from the query. Keys are field paths in proto or JSON
// spelling ("host_id", "hostId", "a.b"), as grpc-gateway reads them, with an
// optional map key ("labels[k]").
func (rt *restRoute) queryField(key string) protoreflect.FieldDescriptor {
	if rt.body == "*" {
		return nil
	}
	if m := mapKeySuffix.FindStringSubmatch(key); m != nil {
		key = m[1]
	}
	md := rt.req
	parts := strings.Split(key, ".")
	for i, p := range parts {
		fd := md.Fields().ByName(protoreflect.Name(p))
		if fd == nil {
			fd = md.Fields().ByJSONName(p)
		}
		if fd == nil {
			return nil
		}
		if i == 0 && (rt.pathFields[fd.Name()] || string(fd.Name()) == rt.body) {
			return nil
		}
		if i == len(parts)-1 {
			return fd
		}
		if fd.Message() == nil || fd.IsList() || fd.IsMap() {
			return nil
		}
		md = fd.Message()
	}
	return nil
}

var mapKeySuffix = regexp.MustCompile(`^(.*)\[(.*)\]$`)

// queryNames are the query parameters the route takes, in JSON spelling.
func (rt *restRoute) queryNames() []string {
	var out []string
	if rt.body == "*" {
		return nil
	}
	fs := rt.req.Fields()
	for i := 0; i < fs.Len(); i++ {
		fd := fs.Get(i)
		if rt.pathFields[fd.Name()] || string(fd.Name()) == rt.body {
			continue
		}
		out = append(out, fd.JSONName())
	}
	return out
}

func (rt *restRoute) String() string { return rt.method + " " + rt.template }

// restGuard applies the rules above, then hands the request to next (the
// gateway).
type restGuard struct {
	next    http.Handler
	gw      *runtime.ServeMux // renders errors as every other REST error
	routes  []*restRoute
	probe   *runtime.ServeMux // the route templates, to match paths
	methods []string          // every method some route uses
	// literal holds, by method and path, the routes whose template has no
	// variables (POST /v1/vms), as the probe itself matched each path at
	// start: match answers those without running the probe.
	literal map[string]map[string]*restRoute
	origins map[string]bool
	maxBody int64
}

type probeKey struct{}

func newRESTGuard(next http.Handler, gw *runtime.ServeMux, opts HTTPOptions, files ...protoreflect.FileDescriptor) (*restGuard, error) {
	routes, err := restRoutes(files...)
	if err != nil {
		return nil, err
	}
	g := &restGuard{next: next, gw: gw, routes: routes, origins: map[string]bool{}, maxBody: MaxRequestBody}
	for _, o := range opts.AllowOrigins {
		c, err := CheckOrigin(o)
		if err != nil {
			return nil, err
		}
		g.origins[c] = true
	}
	g.probe = runtime.NewServeMux(
		runtime.WithDisablePathLengthFallback(),
		runtime.WithDisableHTTPMethodOverride(),
		runtime.WithRoutingErrorHandler(func(context.Context, *runtime.ServeMux, runtime.Marshaler, http.ResponseWriter, *http.Request, int) {}),
	)
	for _, rt := range routes {
		if err := g.probe.HandlePath(rt.method, rt.template, func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
			*r.Context().Value(probeKey{}).(**restRoute) = rt
		}); err != nil {
			return nil, fmt.Errorf("%s: %w", rt, err)
		}
		if !slices.Contains(g.methods, rt.method) {
			g.methods = append(g.methods, rt.method)
		}
	}
	sort.Strings(g.methods)
	g.literal = map[string]map[string]*restRoute{}
	for _, rt := range routes {
		if strings.ContainsAny(rt.template, "{*") {
			continue
		}
		// The probe's answer for this method and path, so that the map
		// cannot disagree with it (another template could match too).
		u, err := url.Parse(rt.template)
		if err != nil || u.RawPath != "" {
			continue
		}
		if hit := g.probeMatch(rt.method, &http.Request{URL: u}); hit != nil {
			if g.literal[rt.method] == nil {
				g.literal[rt.method] = map[string]*restRoute{}
			}
			g.literal[rt.method][u.Path] = hit
		}
	}
	return g, nil
}

// match is the route serving method on r's path, or nil.
func (g *restGuard) match(method string, r *http.Request) *restRoute {
	// The probe matches r.URL.Path when RawPath is empty (nothing escaped
	// unusually), so a literal route found for that path is its answer.
	if r.URL.RawPath == "" {
		if rt := g.literal[method][r.URL.Path]; rt != nil {
			return rt
		}
	}
	return g.probeMatch(method, r)
}

// probeMatch asks the probe mux which route serves method on r's path.
func (g *restGuard) probeMatch(method string, r *http.Request) *restRoute {
	var hit *restRoute
	pr := (&http.Request{Method: method, URL: r.URL, Header: http.Header{}, Body: http.NoBody, Host: r.Host}).
		WithContext(context.WithValue(r.Context(), probeKey{}, &hit))
	g.probe.ServeHTTP(discardWriter{}, pr)
	return hit
}

// allowed lists the methods r's path serves.
func (g *restGuard) allowed(r *http.Request) []string {
	var out []string
	for _, m := range g.methods {
		if g.match(m, r) != nil {
			out = append(out, m)
		}
	}
	return out
}

type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (discardWriter) WriteHeader(int)             {}

func (g *restGuard) fail(w http.ResponseWriter, r *http.Request, httpStatus int, code codes.Code, format string, args ...any) {
	_, m := runtime.MarshalerForRequest(g.gw, r)
	runtime.HTTPError(r.Context(), g.gw, m, w, r, &runtime.HTTPStatusError{
		HTTPStatus: httpStatus, Err: status.Errorf(code, format, args...),
	})
}

// notRouted answers a request no route serves: 405 with Allow when the path
// is a route for other methods, else 404. The gateway's routing errors come
// here too.
func (g *restGuard) notRouted(w http.ResponseWriter, r *http.Request) {
	if allow := g.allowed(r); len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(append(allow, http.MethodOptions), ", "))
		g.fail(w, r, http.StatusMethodNotAllowed, codes.Unimplemented, "method %s is not allowed on %s: use %s", r.Method, r.URL.Path, strings.Join(allow, " or "))
		return
	}
	g.fail(w, r, http.StatusNotFound, codes.NotFound, "no REST route %s (the routes are listed in /openapi.json)", r.URL.Path)
}

func isWrite(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

func (g *restGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	okOrigin := origin != "" && g.origins[strings.ToLower(origin)]
	if len(g.origins) > 0 {
		w.Header().Add("Vary", "Origin")
	}
	if okOrigin {
		w.Header().Set("Access-Control-Allow-Origin", origin)
	}
	if r.Method == http.MethodOptions {
		g.options(w, r, origin, okOrigin)
		return
	}
	if origin != "" && !okOrigin && isWrite(r.Method) {
		g.fail(w, r, http.StatusForbidden, codes.PermissionDenied, "cross-origin %s from %s refused: that origin is not in the controller's --cors-allow-origin list", r.Method, origin)
		return
	}
	rt := g.match(r.Method, r)
	if rt == nil {
		g.notRouted(w, r)
		return
	}
	if err := g.checkQuery(rt, r); err != "" {
		g.fail(w, r, http.StatusBadRequest, codes.InvalidArgument, "%s", err)
		return
	}
	if !g.readBody(w, r, rt) {
		return
	}
	g.next.ServeHTTP(w, withPeer(r))
}

// withPeer gives r's context the HTTP client as its gRPC peer. The
// gateway's unary calls run in this process (localconn.go) with r's
// context, where the access interceptor, the rate limiter and the audit
// trail read the caller's address from the peer: without it a REST call
// was recorded with no source address.
func withPeer(r *http.Request) *http.Request {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return r
	}
	return r.WithContext(peer.NewContext(r.Context(), &peer.Peer{Addr: net.TCPAddrFromAddrPort(ap)}))
}

func (g *restGuard) options(w http.ResponseWriter, r *http.Request, origin string, okOrigin bool) {
	allow := g.allowed(r)
	if len(allow) == 0 {
		g.notRouted(w, r)
		return
	}
	h := w.Header()
	h.Set("Allow", strings.Join(append(slices.Clone(allow), http.MethodOptions), ", "))
	if origin != "" && r.Header.Get("Access-Control-Request-Method") != "" {
		if !okOrigin {
			g.fail(w, r, http.StatusForbidden, codes.PermissionDenied, "cross-origin requests from %s are refused: that origin is not in the controller's --cors-allow-origin list", origin)
			return
		}
		h.Set("Access-Control-Allow-Methods", strings.Join(allow, ", "))
		h.Set("Access-Control-Allow-Headers", "Content-Type")
		h.Set("Access-Control-Max-Age", "600")
	}
	w.WriteHeader(http.StatusNoContent)
}

// checkQuery says what is wrong with r's query for rt, or "".
func (g *restGuard) checkQuery(rt *restRoute, r *http.Request) string {
	if r.URL.RawQuery == "" {
		return ""
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return fmt.Sprintf("the query string of %s is not valid: %v", r.URL.Path, err)
	}
	var unknown []string
	for k := range q {
		if rt.queryField(k) == nil {
			unknown = append(unknown, strconv.Quote(k))
		}
	}
	if len(unknown) == 0 {
		return ""
	}
	sort.Strings(unknown)
	names := rt.queryNames()
	if len(names) == 0 {
		where := "it has none"
		if rt.body == "*" {
			where = "its fields go in the JSON body"
		}
		return fmt.Sprintf("%s takes no query parameters (got %s): %s", rt, strings.Join(unknown, ", "), where)
	}
	what := "unknown query parameter"
	if len(unknown) > 1 {
		what += "s"
	}
	return fmt.Sprintf("%s %s for %s: it accepts %s", what, strings.Join(unknown, ", "), rt, strings.Join(names, ", "))
}

// readBody checks r's body against rt and the limit and reads it into
// memory (at most maxBody bytes), so that nothing after it can be made to
// read more. It answers the request itself and reports false when the body
// is refused.
func (g *restGuard) readBody(w http.ResponseWriter, r *http.Request, rt *restRoute) bool {
	if r.ContentLength > g.maxBody {
		g.fail(w, r, http.StatusRequestEntityTooLarge, codes.InvalidArgument, "request body of %s (%d bytes) is larger than the %s limit", scheduler.FormatBytes(r.ContentLength), r.ContentLength, scheduler.FormatBytes(g.maxBody))
		return false
	}
	if rt.body == "" {
		if r.ContentLength > 0 {
			g.fail(w, r, http.StatusBadRequest, codes.InvalidArgument, "%s takes no request body", rt)
			return false
		}
	} else if ct := r.Header.Get("Content-Type"); ct != "" || r.ContentLength != 0 {
		if msg := checkJSONContentType(ct); msg != "" {
			g.fail(w, r, http.StatusUnsupportedMediaType, codes.InvalidArgument, "%s", msg)
			return false
		}
	}
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return true
	}
	b, err := readAllSized(http.MaxBytesReader(w, r.Body, g.maxBody), r.ContentLength)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			g.fail(w, r, http.StatusRequestEntityTooLarge, codes.InvalidArgument, "request body is larger than the %s limit", scheduler.FormatBytes(g.maxBody))
		} else {
			g.fail(w, r, http.StatusBadRequest, codes.InvalidArgument, "reading the request body: %v", err)
		}
		return false
	}
	if rt.body == "" && len(bytes.TrimSpace(b)) > 0 {
		g.fail(w, r, http.StatusBadRequest, codes.InvalidArgument, "%s takes no request body", rt)
		return false
	}
	r.Body = newReadBody(b)
	r.ContentLength = int64(len(b))
	return true
}

// readAllSized is io.ReadAll with room for a body of the declared size
// (-1 when unknown) from the start, so that a body with a Content-Length
// is read into one allocation.
func readAllSized(r io.Reader, size int64) ([]byte, error) {
	room := int64(512) // io.ReadAll's start
	if size >= 0 {
		room = size + 1 // the +1 for the read that finds the end
	}
	b := make([]byte, 0, room)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}

// readBody is a request body the guard has read into memory. The REST
// codec takes its bytes as they are (restCodec.decode) instead of reading
// them into another buffer.
type readBody struct {
	bytes.Reader
	b []byte
}

func newReadBody(b []byte) *readBody {
	rb := &readBody{b: b}
	rb.Reset(b)
	return rb
}

func (*readBody) Close() error { return nil }

// take returns the bytes not read yet and leaves the body at its end.
func (rb *readBody) take() []byte {
	rest := rb.b[len(rb.b)-rb.Len():]
	rb.Reset(nil)
	return rest
}

// checkJSONContentType says what is wrong with a request's Content-Type
// for a JSON body, or "".
func checkJSONContentType(ct string) string {
	if ct == "" {
		return "the request has a body but no Content-Type: send it as application/json"
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return fmt.Sprintf("Content-Type %q is not accepted: the request body must be application/json", ct)
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return fmt.Sprintf("Content-Type %q is not accepted: JSON bodies are UTF-8 (charset=utf-8 or none)", ct)
	}
	return ""
}
