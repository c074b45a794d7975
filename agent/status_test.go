package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/agent"
)

// statusServer serves d's status on a free loopback port until the test
// ends; it returns the base URL.
func statusServer(t *testing.T, d agent.Driver) string {
	t.Helper()
	s, err := agent.ListenStatus("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	stop := s.Start(context.Background(), "host-1", d, nil)
	t.Cleanup(stop)
	t.Cleanup(http.DefaultClient.CloseIdleConnections)
	return "http://" + s.Addr().String()
}

func get(t *testing.T, method, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// The JSON of GET /domains, field for field: decoding refuses any other.
type statusDomains struct {
	HostID  string `json:"host_id"`
	Domains []struct {
		VMID    string `json:"vm_id"`
		Project string `json:"project"`
		Name    string `json:"name"`
		State   string `json:"state"`
		Detail  string `json:"detail"`
		Active  bool   `json:"active"`
	} `json:"domains"`
}

func decodeDomains(t *testing.T, body string) statusDomains {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	var out statusDomains
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("GET /domains: %v in %s", err, body)
	}
	return out
}

// defineDomains defines the domains of a host through the real test driver,
// starting those in run.
func defineDomains(t *testing.T, d agent.Driver, run map[string]bool, specs ...agent.DomainSpec) {
	t.Helper()
	ctx := context.Background()
	for _, spec := range specs {
		if err := d.Define(ctx, spec); err != nil {
			t.Fatal(err)
		}
		if run[spec.VMID] {
			if err := d.Start(ctx, spec.VMID); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// GET /domains lists, from libvirt at request time, a defined (shut off,
// inactive) and a running (active) domain, with their metadata.
func TestStatusDomains(t *testing.T) {
	d := smallHost(t)
	base := statusServer(t, d)

	resp, body := get(t, "GET", base+"/domains")
	if resp.StatusCode != 200 || body != `{"host_id":"host-1","domains":[]}`+"\n" {
		t.Fatalf("empty host: %d %q", resp.StatusCode, body)
	}

	defineDomains(t, d, map[string]bool{vmB: true},
		agent.DomainSpec{VMID: vmA, Project: "default", Name: "db", VCPUs: 1, MemoryBytes: 256 << 20},
		agent.DomainSpec{VMID: vmB, Project: "tax", Name: "web", VCPUs: 1, MemoryBytes: 256 << 20})
	resp, body = get(t, "GET", base+"/domains")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /domains: %d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	got := decodeDomains(t, body)
	if got.HostID != "host-1" || len(got.Domains) != 2 {
		t.Fatalf("GET /domains = %s", body)
	}
	// Sorted by VM id: vmA < vmB.
	a, b := got.Domains[0], got.Domains[1]
	if a.VMID != vmA || a.Project != "default" || a.Name != "db" || a.State != "shut off" || a.Detail != "shut off" || a.Active {
		t.Errorf("defined domain = %+v", a)
	}
	if b.VMID != vmB || b.Project != "tax" || b.Name != "web" || b.State != "running" || b.Detail != "running" || !b.Active {
		t.Errorf("running domain = %+v", b)
	}

	// Read at request time: stopping shows at once.
	if err := d.Destroy(context.Background(), vmB); err != nil {
		t.Fatal(err)
	}
	_, body = get(t, "GET", base+"/domains")
	if got := decodeDomains(t, body); got.Domains[1].State != "shut off" || got.Domains[1].Active {
		t.Errorf("after destroy: %s", body)
	}

	if resp, body := get(t, "HEAD", base+"/domains"); resp.StatusCode != 200 || body != "" {
		t.Errorf("HEAD /domains: %d %q", resp.StatusCode, body)
	}
	if resp, body := get(t, "GET", base+"/healthz"); resp.StatusCode != 200 || body != "ok\n" {
		t.Errorf("GET /healthz: %d %q", resp.StatusCode, body)
	}
	if resp, _ := get(t, "GET", base+"/"); resp.StatusCode != 404 {
		t.Errorf("GET /: %d, want 404", resp.StatusCode)
	}
}

// GET /metrics counts the domains by state when scraped.
func TestStatusMetrics(t *testing.T) {
	d := smallHost(t)
	base := statusServer(t, d)
	defineDomains(t, d, map[string]bool{vmA: true},
		agent.DomainSpec{VMID: vmA, Project: "default", Name: "a", VCPUs: 1, MemoryBytes: 256 << 20},
		agent.DomainSpec{VMID: vmB, Project: "default", Name: "b", VCPUs: 1, MemoryBytes: 256 << 20},
		agent.DomainSpec{VMID: vmC, Project: "default", Name: "c", VCPUs: 1, MemoryBytes: 256 << 20})

	resp, body := get(t, "GET", base+"/metrics")
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	for _, want := range []string{
		"\nyunchi_agent_up 1\n",
		"\nyunchi_agent_libvirt_up 1\n",
		"\n# TYPE yunchi_agent_domains gauge\n",
		"\nyunchi_agent_domains{state=\"running\"} 1\n",
		"\nyunchi_agent_domains{state=\"shut off\"} 2\n",
		"\nyunchi_agent_domains{state=\"other\"} 0\n",
		"\ngo_goroutines ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /metrics lacks %q:\n%s", strings.TrimSpace(want), body)
		}
	}

	// Scraped, not cached.
	if err := d.Start(context.Background(), vmB); err != nil {
		t.Fatal(err)
	}
	if _, body := get(t, "GET", base+"/metrics"); !strings.Contains(body, "\nyunchi_agent_domains{state=\"running\"} 2\n") {
		t.Errorf("after a start, GET /metrics has no running=2:\n%s", body)
	}
}

// fakeDriver answers ListDomains only.
type fakeDriver struct {
	agent.Driver
	doms []agent.Domain
	err  error
}

func (f fakeDriver) ListDomains(context.Context) ([]agent.Domain, error) { return f.doms, f.err }

// A domain is active unless shut off: paused (which libvirt's test driver
// cannot make through the Driver interface) still holds the host.
func TestStatusPausedIsActive(t *testing.T) {
	base := statusServer(t, fakeDriver{doms: []agent.Domain{
		{VMID: vmA, Project: "p", Name: "a", State: agent.StateOther, Detail: "paused"},
		{VMID: vmB, Project: "p", Name: "b", State: agent.StateShutOff, Detail: "shut off"},
	}})
	got := decodeDomains(t, func() string { _, b := get(t, "GET", base+"/domains"); return b }())
	if a := got.Domains[0]; a.State != "other" || a.Detail != "paused" || !a.Active {
		t.Errorf("paused domain = %+v", a)
	}
	if b := got.Domains[1]; b.Active {
		t.Errorf("shut-off domain = %+v", b)
	}
}

// When libvirt cannot be read: /domains is 503 with a one-line JSON error,
// /metrics says libvirt is down and gives no domain counts (not zeros).
func TestStatusLibvirtError(t *testing.T) {
	base := statusServer(t, fakeDriver{err: errors.New("list domains: cannot connect\nto the hypervisor")})
	resp, body := get(t, "GET", base+"/domains")
	if resp.StatusCode != 503 || resp.Header.Get("Content-Type") != "application/json" ||
		body != `{"error":"list domains: cannot connect to the hypervisor"}`+"\n" {
		t.Errorf("GET /domains: %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	resp, body = get(t, "GET", base+"/metrics")
	if resp.StatusCode != 200 || !strings.Contains(body, "\nyunchi_agent_libvirt_up 0\n") || !strings.Contains(body, "\nyunchi_agent_up 1\n") ||
		strings.Contains(body, "yunchi_agent_domains{") {
		t.Errorf("GET /metrics with libvirt down: %d\n%s", resp.StatusCode, body)
	}
}

// Only GET and HEAD: anything else is 405 naming them in Allow.
func TestStatusMethodNotAllowed(t *testing.T) {
	base := statusServer(t, smallHost(t))
	for _, c := range []struct{ method, path string }{
		{"POST", "/domains"}, {"PUT", "/metrics"}, {"DELETE", "/healthz"}, {"PATCH", "/domains"},
	} {
		resp, body := get(t, c.method, base+c.path)
		if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s %s: %d Allow=%q %q", c.method, c.path, resp.StatusCode, resp.Header.Get("Allow"), body)
		}
	}
}

// Serve returns once its context ends, and the port is closed then.
func TestStatusClosesWhenContextEnds(t *testing.T) {
	d := smallHost(t)
	s, err := agent.ListenStatus("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, "host-1", d, nil) }()
	// A kept-alive connection must not hold the shutdown up.
	client := &http.Client{}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return within 10s of cancel")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after the context ended", addr)
	}
	if err := s.Serve(context.Background(), "host-1", d, nil); err == nil {
		t.Error("a second Serve did not fail")
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close after Serve: %v", err)
	}
}

// Start's stop closes the port and waits; so does the agent's context.
func TestStatusStartStops(t *testing.T) {
	d := smallHost(t)
	for _, byCtx := range []bool{false, true} {
		s, err := agent.ListenStatus("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		stop := s.Start(ctx, "host-1", d, nil)
		addr := s.Addr().String()
		if resp, body := get(t, "GET", "http://"+addr+"/healthz"); resp.StatusCode != 200 {
			t.Fatalf("GET /healthz: %d %q", resp.StatusCode, body)
		}
		http.DefaultClient.CloseIdleConnections()
		if byCtx {
			cancel()
			eventually(t, "the port closed after the context ended", func() bool {
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err == nil {
					c.Close()
				}
				return err != nil
			})
		}
		stop()
		cancel()
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Fatalf("byCtx=%v: %s still accepts connections after stop", byCtx, addr)
		}
	}
}

// A busy port or a malformed address fails at ListenStatus, before anything
// serves.
func TestStatusListenErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for addr, want := range map[string]string{
		busy.Addr().String(): "address already in use",
		"nonsense":           `"nonsense" is not host:port (e.g. 127.0.0.1:8490): missing port in address`,
		"127.0.0.1:99999":    `port "99999" is not a number from 0 to 65535`,
		"127.0.0.1:http":     `port "http" is not a number`,
		"http://127.0.0.1:1": "is not host:port",
		"":                   "is not host:port",
	} {
		s, err := agent.ListenStatus(addr)
		if err == nil {
			s.Close()
			t.Errorf("ListenStatus(%q) did not fail", addr)
			continue
		}
		if !strings.Contains(err.Error(), want) || bytes.ContainsRune([]byte(err.Error()), '\n') {
			t.Errorf("ListenStatus(%q) = %v; want one line saying %q", addr, err, want)
		}
	}
}
