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
	"testing"
	"time"

	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/apitest"
	"github.com/yunchi/yunchi/internal/cliconfig"
)

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

// cliEnv is the environment of a yunchi run against addr: the test's own
// (YUNCHI_CONFIG, which the tests that run a dev cluster point at a file of
// their own), and as YUNCHI_TOKEN the token the apitest helpers send (the
// sysadmin's of a clustertest cluster), if any.
func cliEnv(addr string) []string {
	env := append(os.Environ(), "YUNCHI_ADDR="+addr)
	if tok := apitest.Token(); tok != "" {
		env = append(env, "YUNCHI_TOKEN="+tok)
	}
	return env
}

func runCLI(t *testing.T, bin, addr string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = cliEnv(addr)
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
	// The dev cluster logs the CLI in: into a config of this test's own,
	// never the user's. The CLI runs below use that login.
	cfgPath := filepath.Join(t.TempDir(), "yunchi-config.json")
	t.Setenv("YUNCHI_CONFIG", cfgPath)
	// A pid-derived base reached into the ephemeral range, where another
	// test's connection took a port first ("bind: address already in use").
	base := freeBase(t)
	addrs, _, out := runDev(t, devcluster.Config{DataDir: t.TempDir(), BasePort: base, Hosts: 9})
	addr := addrs[0]
	if !strings.Contains(out.String(), "9/9 hosts registered") {
		t.Fatalf("no progress shown:\n%s", out)
	}
	// It printed the three administrators' tokens and stored the
	// sysadmin's for the CLI.
	cfg, _, err := cliconfig.Load()
	if err != nil || cfg.Token == "" || cfg.User != "sysadmin" || !strings.Contains(out.String(), "sysadmin token: "+cfg.Token+"\n") {
		t.Fatalf("CLI not logged in as the printed sysadmin (config %+v, %v):\n%s", cfg, err, out)
	}
	for _, who := range []string{"secadmin", "auditor"} {
		if !strings.Contains(out.String(), who+" token: ") {
			t.Fatalf("no %s token printed:\n%s", who, out)
		}
	}
	if fi, err := os.Stat(cfgPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config file %s: %v %v", cfgPath, fi, err)
	}

	// Create and wait, through a follower-first address list.
	r := runCLI(t, cli, addrs[2]+","+addr, "vm", "create", "web-1", "--cpu", "2", "--memory", "4GiB", "--wait")
	if r.code != 0 {
		t.Fatalf("vm create: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr+r.stdout, "running") {
		t.Fatalf("no progress to running: %s %s", r.stdout, r.stderr)
	}
	// REST shows the same VM, running, on a host; without a token it says 401.
	if code, _, err := apitest.Do(addr, http.MethodGet, "/v1/vms", ""); err != nil || code != http.StatusUnauthorized {
		t.Fatalf("GET /v1/vms without a token: %d %v", code, err)
	}
	code, body, err := apitest.DoWith(addr, http.MethodGet, "/v1/vms", "", http.Header{"Authorization": {"Bearer " + cfg.Token}})
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /v1/vms: %d %v %s", code, err, body)
	}
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

	placementTour(t, cli, addrs)
	fmt.Fprint(io.Discard, out.String())
}

// vmHosts lists the VMs through the CLI: name -> host.
func vmHosts(t *testing.T, cli, addr string) map[string]string {
	t.Helper()
	r := runCLI(t, cli, addr, "vm", "list", "-o", "json", "--consistent")
	var list struct {
		Vms []struct{ Name, HostId string }
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil {
		t.Fatalf("vm list: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	out := map[string]string{}
	for _, v := range list.Vms {
		out[v.Name] = v.HostId
	}
	return out
}

// placementTour is the "done when" of placement groups, constraints,
// dry runs and host administration, through the real CLI binary.
func placementTour(t *testing.T, cli string, addrs []string) {
	addr := addrs[0]
	run := func(args ...string) cliResult {
		t.Helper()
		r := runCLI(t, cli, addrs[1]+","+addr, args...) // a follower first: writes are forwarded
		if r.code != 0 {
			t.Fatalf("%v: exit %d\nstdout %s\nstderr %s", args, r.code, r.stdout, r.stderr)
		}
		return r
	}
	run("group", "create", "g1", "--policy", "anti-affinity", "--level", "host")
	run("vm", "create", "app", "--count", "3", "--group", "g1", "--cpu", "1", "--memory", "1GiB", "--wait")
	vms := vmHosts(t, cli, addr)
	distinct := map[string]bool{}
	for _, n := range []string{"app-1", "app-2", "app-3"} {
		if vms[n] == "" {
			t.Fatalf("%s not created: %v", n, vms)
		}
		distinct[vms[n]] = true
	}
	if len(distinct) != 3 {
		t.Fatalf("anti-affinity group members share hosts: %v", vms)
	}
	r := run("group", "show", "g1", "--consistent")
	if !strings.Contains(r.stdout, "anti-affinity") || !strings.Contains(r.stdout, "app-1,app-2,app-3") {
		t.Fatalf("group show: %s", r.stdout)
	}

	// No host can take it: the counted explanation on one line, exit 5.
	r = runCLI(t, cli, addr, "vm", "create", "huge", "--cpu", "1", "--memory", "4TiB")
	if r.code != 5 || !strings.HasPrefix(r.stderr, "yunchi: 0/9 hosts fit: 9 insufficient memory (need 4 TiB; most free:") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Fatalf("no capacity: exit %d stderr %q", r.code, r.stderr)
	}

	// A dry run names a host, a score and runners-up, and creates nothing.
	before := vmHosts(t, cli, addr)
	r = run("vm", "create", "probe", "--cpu", "1", "--memory", "1GiB", "--dry-run")
	if !strings.Contains(r.stdout, "Dry run") || !strings.Contains(r.stdout, "RUNNERS-UP") {
		t.Fatalf("dry run: %s", r.stdout)
	}
	r = run("vm", "create", "probe", "--cpu", "1", "--memory", "1GiB", "--dry-run", "--count", "2", "--strategy", "spread", "-o", "json")
	var dry struct {
		DryRun    bool
		Decisions []struct {
			VmName, HostId string
			RunnersUp      []struct{ HostId string }
		}
	}
	if json.Unmarshal([]byte(r.stdout), &dry) != nil || !dry.DryRun || len(dry.Decisions) != 2 || dry.Decisions[0].HostId == "" || len(dry.Decisions[0].RunnersUp) == 0 {
		t.Fatalf("dry run json: %s", r.stdout)
	}
	if !strings.Contains(r.stdout, dry.Decisions[0].HostId) {
		t.Fatal("unreachable")
	}
	if after := vmHosts(t, cli, addr); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("dry run changed the vm list:\nbefore %v\nafter  %v", before, after)
	}

	// Host administration: a label steers placement; maintenance takes the
	// host out, and the explanation says so.
	target := vms["app-1"]
	run("host", "set", target, "--label", "cpu_model=kunpeng920", "--reserve-memory", "4GiB", "--cpu-ratio", "2")
	r = run("vm", "create", "arm", "--constraint", "cpu_model=kunpeng920", "--dry-run")
	if !strings.Contains(r.stdout, target) {
		t.Fatalf("constraint did not pick %s: %s", target, r.stdout)
	}
	r = run("host", "show", target, "--consistent")
	for _, want := range []string{"cpu_model=kunpeng920", "RESERVED", "ALLOCATABLE", "4 GiB", "host", "default", "ready"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("host show lacks %q: %s", want, r.stdout)
		}
	}
	run("host", "set", target, "--state", "maintenance")
	r = runCLI(t, cli, addr, "vm", "create", "arm", "--constraint", "cpu_model=kunpeng920", "--dry-run")
	if r.code != 5 || !strings.Contains(r.stderr, "0/9 hosts fit") || !strings.Contains(r.stderr, "1 in maintenance") {
		t.Fatalf("constraint onto a host in maintenance: exit %d %q", r.code, r.stderr)
	}
	r = run("host", "list", "--consistent")
	if !strings.Contains(r.stdout, "maintenance") || !strings.Contains(r.stdout, "FREE") {
		t.Fatalf("host list: %s", r.stdout)
	}
	run("host", "set", target, "--state", "ready", "--unlabel", "cpu_model")
	r = runCLI(t, cli, addr, "host", "set", target, "--cpu-ratio", "100")
	if r.code != 2 || !strings.Contains(r.stderr, "cpu ratio 100 is out of range") {
		t.Fatalf("bad ratio: exit %d %q", r.code, r.stderr)
	}

	// Ratios per center show up as the source of a host's ratio.
	run("ratio", "set", "--center", "b1", "--memory", "1.5")
	r = run("ratio", "list", "--consistent")
	if !strings.Contains(r.stdout, "center") || !strings.Contains(r.stdout, "1.5") {
		t.Fatalf("ratio list: %s", r.stdout)
	}
	r = run("host", "list", "--center", "b1", "-o", "json", "--consistent")
	var hl struct {
		Hosts []struct {
			Id           string
			RatioSources struct{ Memory string }
		}
	}
	if json.Unmarshal([]byte(r.stdout), &hl) != nil || len(hl.Hosts) == 0 || hl.Hosts[0].RatioSources.Memory != "center b1" {
		t.Fatalf("b1 hosts' memory ratio source: %s", r.stdout)
	}

	// A group with members cannot be deleted; without, it can.
	r = runCLI(t, cli, addr, "group", "delete", "g1")
	if r.code != 7 || !strings.Contains(r.stderr, "delete them first") {
		t.Fatalf("delete group with members: exit %d %q", r.code, r.stderr)
	}
	r = runCLI(t, cli, addr, "vm", "create", "x", "--group", "nope")
	if r.code != 3 || !strings.Contains(r.stderr, `placement group "nope" not found`) {
		t.Fatalf("unknown group: exit %d %q", r.code, r.stderr)
	}
	run("group", "create", "empty", "--policy", "affinity")
	run("group", "delete", "empty")
}
