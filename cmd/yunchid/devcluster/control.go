package devcluster

// The control endpoint through which `yunchid dev center` (another
// terminal) stops and starts centers: plain HTTP with JSON on loopback
// only, at --port+20 (8490 for `make dev`), and only for the sysadmin's
// token, the one dev prints and logs the yunchi CLI in with.

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ControlPortOffset is how far above --port the control endpoint listens.
const ControlPortOffset = 20

// ControlAddr is the control endpoint of the dev cluster started with
// --port basePort.
func ControlAddr(basePort int) string {
	return fmt.Sprintf("127.0.0.1:%d", basePort+ControlPortOffset)
}

// controlHeader marks the endpoint's answers: something else listening on
// the port is told apart from a dev cluster.
const controlHeader = "Yunchi-Dev-Control"

// CenterReply is the answer to a stop or start.
type CenterReply struct {
	Message string       `json:"message"`
	Center  CenterStatus `json:"center"`
}

// ListReply is the answer to a list.
type ListReply struct {
	Centers []CenterStatus `json:"centers"`
}

type errorReply struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

var httpStatusOf = map[string]int{
	CodeNotFound:           http.StatusNotFound,
	CodeFailedPrecondition: http.StatusConflict,
	CodeUnavailable:        http.StatusServiceUnavailable,
	CodeUnauthenticated:    http.StatusUnauthorized,
	CodeInvalid:            http.StatusBadRequest,
	CodeInternal:           http.StatusInternalServerError,
}

// listenControl binds the control endpoint (before anything starts: a
// busy port fails dev at once).
func listenControl(basePort int) (net.Listener, error) {
	addr := ControlAddr(basePort)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("the center control endpoint (--port + %d): %w", ControlPortOffset, err)
	}
	return l, nil
}

// serveControl serves c on l until the returned server is closed.
func serveControl(l net.Listener, c *Control, lg *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/centers", func(w http.ResponseWriter, r *http.Request) {
		list, err := c.List()
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, ListReply{Centers: list})
	})
	act := func(do func(string) (string, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			id := r.PathValue("center")
			msg, err := do(id)
			if err != nil {
				writeError(w, err)
				return
			}
			reply := CenterReply{Message: msg}
			if list, err := c.List(); err == nil {
				for _, s := range list {
					if s.Center == id {
						reply.Center = s
					}
				}
			}
			writeJSON(w, http.StatusOK, reply)
		}
	}
	mux.Handle("POST /v1/centers/{center}/stop", act(c.Stop))
	mux.Handle("POST /v1/centers/{center}/start", act(c.Start))
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(lg.Handler(), slog.LevelWarn),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(controlHeader, "1")
			if !c.authorized(r) {
				writeError(w, centerErr(CodeUnauthenticated, "not authenticated: give the sysadmin token yunchid dev printed (yunchid dev logs the yunchi CLI in with it)"))
				return
			}
			mux.ServeHTTP(w, r)
		}),
	}
	go srv.Serve(l) // returns when srv is closed
	return srv
}

// authorized: the request carries the sysadmin's token.
func (c *Control) authorized(r *http.Request) bool {
	c.mu.Lock()
	want := c.token
	c.mu.Unlock()
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var ce *CenterError
	if !errors.As(err, &ce) {
		ce = &CenterError{Code: CodeInternal, Msg: err.Error()}
	}
	code, ok := httpStatusOf[ce.Code]
	if !ok {
		code = http.StatusInternalServerError
	}
	writeJSON(w, code, errorReply{Error: ce.Msg, Code: ce.Code})
}

// CodeNotRunning is the client's: nothing answers at the control address.
const CodeNotRunning = "not_running"

// Client talks to the control endpoint of a dev cluster.
type Client struct {
	Addr, Token string
}

// List is every center's status.
func (cl Client) List(ctx context.Context) ([]CenterStatus, error) {
	var r ListReply
	if err := cl.call(ctx, http.MethodGet, "/v1/centers", &r); err != nil {
		return nil, err
	}
	return r.Centers, nil
}

// Stop takes center id down.
func (cl Client) Stop(ctx context.Context, id string) (CenterReply, error) {
	var r CenterReply
	err := cl.call(ctx, http.MethodPost, "/v1/centers/"+url.PathEscape(id)+"/stop", &r)
	return r, err
}

// Start brings center id back; it answers once it is (StartTimeout).
func (cl Client) Start(ctx context.Context, id string) (CenterReply, error) {
	var r CenterReply
	err := cl.call(ctx, http.MethodPost, "/v1/centers/"+url.PathEscape(id)+"/start", &r)
	return r, err
}

// call does one request; its errors are *CenterError.
func (cl Client) call(ctx context.Context, method, path string, out any) error {
	// A start waits up to StartTimeout on the other side.
	ctx, cancel := context.WithTimeout(ctx, StartTimeout+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+cl.Addr+path, nil)
	if err != nil {
		return centerErr(CodeInvalid, "%v", err)
	}
	req.Header.Set("Authorization", "Bearer "+cl.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return centerErr(CodeNotRunning, "no yunchid dev answers on %s: start it with make dev (or give the --port it runs with)", cl.Addr)
		}
		return centerErr(CodeUnavailable, "yunchid dev on %s: %v", cl.Addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return centerErr(CodeUnavailable, "yunchid dev on %s: %v", cl.Addr, err)
	}
	if resp.Header.Get(controlHeader) == "" {
		return centerErr(CodeNotRunning, "%s answers, but not as yunchid dev (HTTP %d): give the --port yunchid dev runs with", cl.Addr, resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorReply
		if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
			return centerErr(CodeInternal, "yunchid dev on %s: HTTP %d: %s", cl.Addr, resp.StatusCode, bytes.TrimSpace(body))
		}
		return &CenterError{Code: e.Code, Msg: e.Error}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return centerErr(CodeInternal, "yunchid dev on %s: bad answer: %v", cl.Addr, err)
	}
	return nil
}
