package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// StatusServer is the agent's optional local status listener (yunchid agent
// --status-listen): plain, unauthenticated HTTP for operators and test
// harnesses, answering from the driver at request time:
//
//	GET /domains  {"host_id": ..., "domains": [{"vm_id", "project", "name",
//	              "state", "detail", "active"}, ...]}; 503 {"error": ...}
//	              when the hypervisor cannot be read
//	GET /metrics  Prometheus: yunchi_agent_up, yunchi_agent_libvirt_up,
//	              yunchi_agent_domains{state}, Go runtime and process
//	GET /healthz  200 ok
//
// Only GET and HEAD are served (405 with Allow otherwise). It shows what the
// host runs, not what the controllers asked for: with libvirt's test driver
// the domains live inside the agent process, where only this listener sees
// them.
type StatusServer struct {
	ln net.Listener

	mu      sync.Mutex
	serving bool
}

// statusShutdownGrace bounds how long Serve waits for requests in flight
// once its context ends.
const statusShutdownGrace = 5 * time.Second

// ListenStatus binds addr (host:port; port 0 picks a free one) for a
// StatusServer, so that a bad or busy address fails before the agent starts.
func ListenStatus(addr string) (*StatusServer, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%q is not host:port (e.g. 127.0.0.1:8490): %w", addr, unwrapAddrErr(err))
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return nil, fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &StatusServer{ln: ln}, nil
}

// unwrapAddrErr drops the *net.AddrError's repetition of the address.
func unwrapAddrErr(err error) error {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return errors.New(ae.Err)
	}
	return err
}

// Addr is the bound address (with the port picked for port 0).
func (s *StatusServer) Addr() net.Addr { return s.ln.Addr() }

// Close releases the listener of a StatusServer that is not serving; after
// Serve it is a no-op (Serve closes the listener itself).
func (s *StatusServer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serving {
		return nil
	}
	s.serving = true // no Serve after Close
	return s.ln.Close()
}

// Serve answers for hostID from d until ctx ends, then closes the listener,
// waits (a few seconds at most) for requests in flight and returns nil. It
// returns an error at once if the server was closed or already serving, or
// if accepting fails.
func (s *StatusServer) Serve(ctx context.Context, hostID string, d Driver, log *slog.Logger) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("status server closed or already serving")
	}
	s.serving = true
	s.mu.Unlock()
	if log == nil {
		log = slog.Default()
	}
	srv := &http.Server{
		Handler:           StatusHandler(hostID, d),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(s.ln) }()
	log.Info("status listener serving", "addr", s.ln.Addr().String())
	select {
	case err := <-served:
		srv.Close()
		return fmt.Errorf("status listener: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), statusShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("status listener: requests still in flight at shutdown", "err", err)
		srv.Close()
	}
	<-served // http.ErrServerClosed
	return nil
}

// Start runs Serve in the background until ctx ends or stop is called;
// stop returns once the listener is closed and the requests in flight are
// answered (or statusShutdownGrace has passed), so that the driver can be
// closed after it. A serving failure is logged.
func (s *StatusServer) Start(ctx context.Context, hostID string, d Driver, log *slog.Logger) (stop func()) {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Serve(ctx, hostID, d, log); err != nil {
			log.Error("status listener stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// StatusHandler is the StatusServer's handler, on its own (tests, embedding).
func StatusHandler(hostID string, d Driver) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(&domainCollector{d: d})
	mux := http.NewServeMux()
	// "GET" patterns also match HEAD; other methods get 405 with
	// "Allow: GET, HEAD" from the mux.
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /domains", func(w http.ResponseWriter, r *http.Request) {
		doms, err := d.ListDomains(r.Context())
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, struct {
				Error string `json:"error"`
			}{oneLine(err.Error())})
			return
		}
		out := StatusDomains{HostID: hostID, Domains: make([]StatusDomain, 0, len(doms))}
		for _, dom := range doms {
			out.Domains = append(out.Domains, StatusDomain{
				VMID: dom.VMID, Project: dom.Project, Name: dom.Name,
				State: dom.State.String(), Detail: dom.Detail, Active: domainActive(dom),
			})
		}
		slices.SortFunc(out.Domains, func(a, b StatusDomain) int { return strings.Compare(a.VMID, b.VMID) })
		writeJSON(w, http.StatusOK, out)
	})
	return mux
}

// StatusDomains is the body of GET /domains.
type StatusDomains struct {
	HostID  string         `json:"host_id"`
	Domains []StatusDomain `json:"domains"`
}

// StatusDomain is one managed domain in GET /domains.
type StatusDomain struct {
	VMID    string `json:"vm_id"`
	Project string `json:"project"`
	Name    string `json:"name"`
	// State is DomainState.String(): "running", "shut off" or "other".
	State string `json:"state"`
	// Detail is the hypervisor's own state ("paused", "crashed", ...).
	Detail string `json:"detail"`
	// Active: the domain consumes the host (see domainActive).
	Active bool `json:"active"`
}

// domainActive reports whether a domain is active in libvirt's sense
// (virDomainIsActive): anything but shut off (running, paused, shutting
// down, suspended, or crashed and kept) still has its hypervisor process
// and consumes the host.
func domainActive(d Domain) bool { return d.State != StateShutOff }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v) // one line, newline-terminated
}

var (
	descAgentUp   = prometheus.NewDesc("yunchi_agent_up", "1 while the agent runs.", nil, nil)
	descLibvirtUp = prometheus.NewDesc("yunchi_agent_libvirt_up",
		"1 when this scrape could list the host's domains, 0 when the hypervisor could not be read (yunchi_agent_domains is then absent).", nil, nil)
	descDomains = prometheus.NewDesc("yunchi_agent_domains",
		`Domains Yunchi manages on this host, by state ("running", "shut off", "other"), listed at scrape time.`, []string{"state"}, nil)
)

// domainCollector lists the domains when scraped (no background polling).
type domainCollector struct{ d Driver }

func (c *domainCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descAgentUp
	ch <- descLibvirtUp
	ch <- descDomains
}

func (c *domainCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descAgentUp, prometheus.GaugeValue, 1)
	doms, err := c.d.ListDomains(context.Background())
	if err != nil {
		ch <- prometheus.MustNewConstMetric(descLibvirtUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descLibvirtUp, prometheus.GaugeValue, 1)
	// Every state has its series, 0 included: absent means unknown.
	counts := map[string]float64{StateRunning.String(): 0, StateShutOff.String(): 0, StateOther.String(): 0}
	for _, dom := range doms {
		counts[dom.State.String()]++
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(descDomains, prometheus.GaugeValue, n, st)
	}
}
