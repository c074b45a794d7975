package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
)

// lockedBuffer collects the dev cluster's output from its goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "yunchi")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/yunchi/yunchi/cmd/yunchi")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build yunchi: %v\n%s", err, out)
	}
	return bin
}

type cliResult struct {
	stdout, stderr string
	code           int
}

func runCLI(t *testing.T, bin, addr string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "YUNCHI_ADDR="+addr)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return cliResult{so.String(), se.String(), code}
}

func TestHostsMatchTheEnvironmentCloud(t *testing.T) {
	specs := devcluster.Hosts(45)
	var mem, disk int64
	perCenter := map[string]int{}
	ids := map[string]bool{}
	for _, h := range specs {
		mem += h.MemoryBytes
		disk += h.DiskBytes
		perCenter[h.Center]++
		if ids[h.ID] {
			t.Fatalf("duplicate host id %s", h.ID)
		}
		ids[h.ID] = true
	}
	if len(specs) != 45 || mem != 14<<40 || disk != 700*1000*1000*1000*1000 {
		t.Fatalf("%d hosts, %d bytes memory, %d bytes disk", len(specs), mem, disk)
	}
	if perCenter["a1"] != 21 || perCenter["a2"] != 12 || perCenter["b1"] != 12 {
		t.Fatalf("hosts per center: %v", perCenter)
	}
}

// TestDevClusterWithCLI runs the embedded dev cluster (fewer hosts, other
// ports) and drives it with the real CLI binary and REST, as the README's
// tour does.
func TestDevClusterWithCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the dev cluster")
	}
	cli := buildCLI(t)
	base := 20000 + os.Getpid()%20000
	out := &lockedBuffer{}
	ready := make(chan []string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- devcluster.Run(ctx, devcluster.Config{
			DataDir: t.TempDir(), BasePort: base, Hosts: 9, Out: out,
			Ready: func(a []string) { ready <- a },
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("dev cluster: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("dev cluster did not stop within 30s")
		}
	})
	var addrs []string
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("dev cluster stopped: %v\n%s", err, out)
	case <-time.After(120 * time.Second):
		t.Fatalf("dev cluster not ready in 120s:\n%s", out)
	}
	addr := addrs[0]
	if !strings.Contains(out.String(), "9/9 hosts registered") {
		t.Fatalf("no progress shown:\n%s", out)
	}

	// Create and wait, through a follower-first address list.
	r := runCLI(t, cli, addrs[2]+","+addr, "vm", "create", "web-1", "--cpu", "2", "--memory", "4GiB", "--wait")
	if r.code != 0 {
		t.Fatalf("vm create: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr+r.stdout, "running") {
		t.Fatalf("no progress to running: %s %s", r.stdout, r.stderr)
	}
	// REST shows the same VM, running, on a host.
	resp, err := http.Get("http://" + addr + "/v1/vms")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var list struct {
		Vms []struct{ Name, HostId, Phase string }
	}
	if err := json.Unmarshal(body, &list); err != nil || len(list.Vms) != 1 || list.Vms[0].Name != "web-1" || list.Vms[0].HostId == "" || list.Vms[0].Phase != "VM_PHASE_RUNNING" {
		t.Fatalf("GET /v1/vms: %s", body)
	}
	if !strings.Contains(r.stdout, list.Vms[0].HostId) {
		t.Fatalf("CLI output does not name host %s: %s", list.Vms[0].HostId, r.stdout)
	}

	// Cluster status: 3 voters, one per center, and a leader.
	r = runCLI(t, cli, addr, "cluster", "status", "-o", "json")
	var st struct {
		LeaderId string
		Members  []struct{ Id, Center, Suffrage string }
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil {
		t.Fatalf("cluster status: %d %s %s", r.code, r.stdout, r.stderr)
	}
	centers := map[string]bool{}
	for _, m := range st.Members {
		if m.Suffrage == "voter" {
			centers[m.Center] = true
		}
	}
	if st.LeaderId == "" || len(st.Members) != 3 || !centers["a1"] || !centers["a2"] || !centers["b1"] {
		t.Fatalf("cluster status: %+v", st)
	}
	r = runCLI(t, cli, addr, "cluster", "status")
	if r.code != 0 || !strings.Contains(r.stdout, st.LeaderId) {
		t.Fatalf("cluster status table: %d %s", r.code, r.stdout)
	}

	// Errors: one line, the right exit code, nothing changed.
	r = runCLI(t, cli, addr, "vm", "create", "huge", "--cpu", "2", "--memory", "8TiB")
	if r.code != 5 || !strings.Contains(r.stderr, "hosts fit") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Fatalf("no capacity: exit %d stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, cli, addr, "vm", "create", "web-1", "--cpu", "1", "--memory", "1GiB")
	if r.code != 4 {
		t.Fatalf("duplicate: exit %d stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, cli, addr, "vm", "show", "nope")
	if r.code != 3 {
		t.Fatalf("missing vm: exit %d stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, cli, addr, "vm", "create", "../x", "--cpu", "1", "--memory", "1GiB")
	if r.code != 2 {
		t.Fatalf("bad name: exit %d stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, cli, "127.0.0.1:1", "vm", "list")
	if r.code != 6 {
		t.Fatalf("unreachable: exit %d stderr %q", r.code, r.stderr)
	}

	// Lists in JSON parse; hosts and capacity add up.
	for _, args := range [][]string{{"vm", "list"}, {"host", "list"}, {"capacity"}, {"cluster", "members"}, {"vm", "show", "web-1"}} {
		r = runCLI(t, cli, addr, append(args, "-o", "json")...)
		var v any
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil {
			t.Fatalf("%v -o json: exit %d %q %q", args, r.code, r.stdout, r.stderr)
		}
	}

	// Stop, start, reboot, delete with --wait.
	for _, args := range [][]string{{"vm", "stop", "web-1", "--wait"}, {"vm", "start", "web-1", "--wait"}, {"vm", "reboot", "web-1"}, {"vm", "delete", "web-1", "--wait"}} {
		r = runCLI(t, cli, addr, args...)
		if r.code != 0 {
			t.Fatalf("%v: exit %d %s %s", args, r.code, r.stdout, r.stderr)
		}
	}
	r = runCLI(t, cli, addr, "vm", "list", "-o", "json")
	if strings.Contains(r.stdout, "web-1") {
		t.Fatalf("deleted vm still listed: %s", r.stdout)
	}
	fmt.Fprint(io.Discard, out.String())
}
