package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// devCenterRun is one `yunchid dev ...` command line run in process, as
// main runs it: its output, its one-line error and its exit code.
type devCenterRun struct {
	stdout, err string
	code        int
}

func runDevCenter(t *testing.T, args ...string) devCenterRun {
	t.Helper()
	var out, errOut bytes.Buffer
	app := &cli.App{Name: "yunchid", Commands: []*cli.Command{devCmd()}, Writer: &out, ErrWriter: &errOut,
		ExitErrHandler: func(*cli.Context, error) {}} // the exit code is read from the error below
	err := app.RunContext(context.Background(), append([]string{"yunchid", "dev"}, args...))
	r := devCenterRun{stdout: out.String()}
	if err != nil {
		r.err, r.code = err.Error(), 1
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			r.code = ec.ExitCode()
		}
		if strings.Contains(strings.TrimSpace(r.err), "\n") {
			t.Errorf("yunchid dev %s: error of more than one line: %q", strings.Join(args, " "), r.err)
		}
	}
	t.Logf("yunchid dev %s: exit %d %s%s", strings.Join(args, " "), r.code, r.err, strings.TrimSpace(r.stdout))
	return r
}

func (r devCenterRun) want(t *testing.T, code int, contains string) {
	t.Helper()
	if r.code != code || !strings.Contains(r.err+r.stdout, contains) {
		t.Fatalf("exit %d (want %d), output %q, error %q (want it to say %q)", r.code, code, r.stdout, r.err, contains)
	}
}

// centersOf runs `dev center list -o json`.
func centersOf(t *testing.T, port string) map[string]devcluster.CenterStatus {
	t.Helper()
	r := runDevCenter(t, "center", "list", "--port", port, "-o", "json")
	var reply devcluster.ListReply
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &reply) != nil || len(reply.Centers) != 3 {
		t.Fatalf("center list -o json: exit %d %s %q", r.code, r.err, r.stdout)
	}
	out := map[string]devcluster.CenterStatus{}
	for _, c := range reply.Centers {
		out[c.Center] = c
	}
	return out
}

// TestDevCenterStopStart takes center a1 of the dev cluster down and back
// through `yunchid dev center`: down, its hosts go DOWN, its domains stay
// on their libvirt connections and the two other controllers take
// writes; up, its controller is a voter that caught up, its hosts are
// READY and the VM placed there before still runs on the domain it had.
func TestDevCenterStopStart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the dev cluster")
	}
	begun := time.Now()
	// yunchid dev logs the CLI in, here into a config of this test's own:
	// `dev center` finds the sysadmin's token there.
	t.Setenv("YUNCHI_CONFIG", filepath.Join(t.TempDir(), "yunchi-config.json"))
	t.Setenv("YUNCHI_TOKEN", "")
	base := freeBase(t)
	port := fmt.Sprint(base)
	ctlc := make(chan *devcluster.Control, 1)
	// 6 hosts: 4 in a1, 1 in a2, 1 in b1.
	addrs, _, out := runDev(t, devcluster.Config{DataDir: t.TempDir(), BasePort: base, Hosts: 6,
		Centers: func(c *devcluster.Control) { ctlc <- c }})
	centers := <-ctlc
	t.Logf("dev cluster ready in %s", time.Since(begun).Round(time.Millisecond))
	// a2's controller stays up throughout.
	conn, _ := adminConn(t, addrs[1], out)
	vms, hosts, cluster := yunchiv1.NewVMServiceClient(conn), yunchiv1.NewHostServiceClient(conn), yunchiv1.NewClusterServiceClient(conn)
	ctx := context.Background()

	list := centersOf(t, port)
	for _, id := range []string{"a1", "a2", "b1"} {
		if c := list[id]; c.State != devcluster.StateUp || c.Raft == "stopped" || c.Agents != c.Hosts || c.HostsReady != c.Hosts {
			t.Fatalf("center %s at the start: %+v", id, c)
		}
	}
	if list["a1"].Hosts != 4 {
		t.Fatalf("a1 has %d hosts, want 4", list["a1"].Hosts)
	}
	if r := runDevCenter(t, "center", "list", "--port", port); r.code != 0 || !strings.Contains(r.stdout, "CENTER") || strings.Count(r.stdout, " up ") != 3 {
		t.Fatalf("center list: exit %d %s\n%s", r.code, r.err, r.stdout)
	}

	// A VM in a1.
	if _, err := vms.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: "c1", Vcpus: 1, Memory: "512MiB", Center: "a1"}); err != nil {
		t.Fatal(err)
	}
	vm := waitVMPhase(t, vms, "c1", yunchiv1.VMPhase_VM_PHASE_RUNNING)
	host := vm.HostId
	if !strings.HasPrefix(host, "a1-") {
		t.Fatalf("c1 placed on %s, not in a1", host)
	}

	// Bad input changes nothing.
	runDevCenter(t, "center", "stop", "--port", port, "zz").want(t, 3, `unknown center "zz": the dev cluster's centers are a1, a2, b1`)
	runDevCenter(t, "center", "start", "--port", port, "b1").want(t, 7, "center b1 is up already")
	runDevCenter(t, "center", "stop", "--port", port).want(t, 2, "give one center")
	runDevCenter(t, "center", "stop", "--port", port, "--token", "yc_wrong", "a1").want(t, 8, "not authenticated")
	runDevCenter(t, "center", "list", "--port", port, "-o", "yaml").want(t, 2, `-o "yaml": use table or json`)

	// Down: flags after the center work too.
	stopped := time.Now()
	runDevCenter(t, "center", "stop", "a1", "--port", port).want(t, 0, "center a1 is down")
	runDevCenter(t, "center", "stop", "--port", port, "a1").want(t, 7, "center a1 is down already")
	runDevCenter(t, "center", "stop", "--port", port, "a2").want(t, 7, "cannot stop center a2: center a1 is down already, and with it down only 1 of 3 controllers would be left, short of the raft quorum of 2")
	list = centersOf(t, port)
	if c := list["a1"]; c.State != devcluster.StateDown || c.Raft != "stopped" || c.Agents != 0 {
		t.Fatalf("a1 after stop: %+v", c)
	}
	if c := list["a2"]; c.State != devcluster.StateUp || c.Agents != 1 {
		t.Fatalf("a2 after the refused stop: %+v", c)
	}
	// The host's libvirt connection keeps the domain, running.
	if st := domainState(t, centers, host, vm.Id); st != agent.StateRunning {
		t.Fatalf("c1's domain on %s while a1 is down: %v, want running", host, st)
	}
	// Its hosts go DOWN (missed heartbeats); a2's and b1's stay READY.
	apitest.Eventually(t, 30*time.Second, "a1's hosts DOWN", func() bool {
		resp, err := hosts.ListHosts(ctx, &yunchiv1.ListHostsRequest{})
		if err != nil {
			return false
		}
		down := 0
		for _, h := range resp.Hosts {
			a1 := strings.HasPrefix(h.Id, "a1-")
			switch {
			case a1 && h.State == yunchiv1.HostState_HOST_STATE_DOWN:
				down++
			case !a1 && h.State != yunchiv1.HostState_HOST_STATE_READY:
				t.Fatalf("host %s went %v", h.Id, h.State)
			}
		}
		return down == 4
	})
	t.Logf("a1's hosts DOWN %s after the stop", time.Since(stopped).Round(time.Millisecond))
	// The cluster still takes writes.
	if _, err := vms.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: "c2", Vcpus: 1, Memory: "512MiB", Center: "a2"}); err != nil {
		t.Fatal(err)
	}
	waitVMPhase(t, vms, "c2", yunchiv1.VMPhase_VM_PHASE_RUNNING)
	st, err := cluster.GetClusterStatus(ctx, &yunchiv1.GetClusterStatusRequest{})
	if err != nil || st.LeaderId == "" || st.LeaderId == "a1" {
		t.Fatalf("cluster status with a1 down: %v %v", st, err)
	}
	written := st.CommitIndex

	// Up.
	started := time.Now()
	runDevCenter(t, "center", "start", "--port", port, "a1").want(t, 0, "center a1 is up")
	t.Logf("start took %s", time.Since(started).Round(time.Millisecond))
	runDevCenter(t, "center", "start", "--port", port, "a1").want(t, 7, "center a1 is up already")
	list = centersOf(t, port)
	if c := list["a1"]; c.State != devcluster.StateUp || c.Agents != 4 || c.HostsReady != 4 || (c.Raft != "Follower" && c.Raft != "Leader") {
		t.Fatalf("a1 after start: %+v", c)
	}
	// Controller a1 is a voter again, and has what was written while it
	// was down.
	a1conn, _ := adminConn(t, addrs[0], out)
	a1st, err := yunchiv1.NewClusterServiceClient(a1conn).GetClusterStatus(ctx, &yunchiv1.GetClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	voter := false
	for _, m := range a1st.Members {
		voter = voter || (m.Id == "a1" && m.Suffrage == "voter")
	}
	if a1st.NodeId != "a1" || a1st.LeaderId == "" || !voter || a1st.AppliedIndex < written {
		t.Fatalf("a1 after start: node %s leader %q voter %v applied %d (the cluster had committed %d while it was down)", a1st.NodeId, a1st.LeaderId, voter, a1st.AppliedIndex, written)
	}
	// Its hosts are READY, and c1 runs where it ran, on the same domain.
	resp, err := hosts.ListHosts(ctx, &yunchiv1.ListHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range resp.Hosts {
		if h.State != yunchiv1.HostState_HOST_STATE_READY {
			t.Errorf("host %s is %v after the start", h.Id, h.State)
		}
	}
	vm = waitVMPhase(t, vms, "c1", yunchiv1.VMPhase_VM_PHASE_RUNNING)
	if vm.HostId != host {
		t.Fatalf("c1 runs on %s, was on %s", vm.HostId, host)
	}
	if st := domainState(t, centers, host, vm.Id); st != agent.StateRunning {
		t.Fatalf("c1's domain on %s after the start: %v", host, st)
	}
	// Another center, whose controller joined rather than bootstrapped,
	// goes down and comes back the same way.
	runDevCenter(t, "center", "stop", "--port", port, "b1").want(t, 0, "center b1 is down")
	runDevCenter(t, "center", "start", "--port", port, "b1").want(t, 0, "center b1 is up")
	if c := centersOf(t, port)["b1"]; c.State != devcluster.StateUp || c.HostsReady != 1 || (c.Raft != "Follower" && c.Raft != "Leader") {
		t.Fatalf("b1 after its start: %+v", c)
	}
	if took := time.Since(begun); took > 60*time.Second {
		t.Logf("the test took %s (aimed under 60s)", took.Round(time.Second))
	}
}

// domainState is the state of VM id's domain on simulated host h, as its
// libvirt connection holds it.
func domainState(t *testing.T, c *devcluster.Control, h, id string) agent.DomainState {
	t.Helper()
	doms, err := c.Domains(context.Background(), h)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range doms {
		if d.VMID == id {
			return d.State
		}
	}
	t.Fatalf("no domain of VM %s on %s (%d domains)", id, h, len(doms))
	return 0
}

func waitVMPhase(t *testing.T, vms yunchiv1.VMServiceClient, name string, phase yunchiv1.VMPhase) *yunchiv1.VM {
	t.Helper()
	var vm *yunchiv1.VM
	apitest.Eventually(t, 60*time.Second, "vm "+name+" "+phase.String(), func() bool {
		v, err := vms.GetVM(context.Background(), &yunchiv1.GetVMRequest{Name: name})
		vm = v
		return err == nil && v.Phase == phase
	})
	return vm
}

// Without a dev cluster, `yunchid dev center` says so in one line, with
// the exit code of an unavailable service; a malformed command line is a
// usage error.
func TestDevCenterWithoutDev(t *testing.T) {
	t.Setenv("YUNCHI_CONFIG", filepath.Join(t.TempDir(), "none.json"))
	t.Setenv("YUNCHI_TOKEN", "")
	base := apitest.FreePortOffset(t, []int{devcluster.ControlPortOffset}) // nothing listens there
	port := fmt.Sprint(base)
	addr := devcluster.ControlAddr(base)
	runDevCenter(t, "center", "list", "--port", port).want(t, 6, "no yunchid dev answers on "+addr+": start it with make dev")
	runDevCenter(t, "center", "stop", "--port", port, "--token", "yc_x", "a1").want(t, 6, "no yunchid dev answers on "+addr)
	runDevCenter(t, "center", "stop", "--port", port, "a1", "a2").want(t, 2, "give one center")
	runDevCenter(t, "center", "list", "--port", port, "--nope").want(t, 2, "flag provided but not defined")
	runDevCenter(t, "center", "list", "--port", "0").want(t, 2, "--port 0")
	runDevCenter(t, "centre").want(t, 1, "yunchid dev takes no arguments")
}
