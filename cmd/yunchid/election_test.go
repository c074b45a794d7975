package main

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/cmd/yunchid/clustertest"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// bgCLI is a yunchi process running in the background.
type bgCLI struct {
	name           string
	stdout, stderr *apitest.LockedBuffer
	done           chan struct{}
	code           int
}

func startCLI(t *testing.T, bin, addr string, args ...string) *bgCLI {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = cliEnv(addr)
	p := &bgCLI{name: strings.Join(args, " "), stdout: &apitest.LockedBuffer{}, stderr: &apitest.LockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		defer cancel()
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
	}()
	t.Cleanup(func() { cancel(); <-p.done })
	return p
}

func (p *bgCLI) wait(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("yunchi %s did not end", p.name)
	}
}

const electionProgress = "yunchi: no leader (election in progress): retrying for up to 20s…\n"

// TestCLIThroughElection: with the leader killed (kill -9) and a second
// controller down, no leader can be elected. The CLI, given all three
// addresses, keeps trying reads, a stop and a create (which nothing has
// proposed), with one progress line, and completes them once the second
// controller is back and an election is held: exit 0, the VM stopped, the
// new VM created once.
func TestCLIThroughElection(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	cli := buildCLI(t)
	c := clustertest.New(t)
	c.StartControllers(3)
	c.StartAgent("h1", "a1", 16, 32<<30, 1<<40)
	apitest.Eventually(t, 30*time.Second, "host h1 registered", func() bool {
		h, err := listHosts(c.Controllers[0].API)
		return err == nil && len(h.Hosts) == 1
	})
	if r := runCLI(t, cli, c.APIList(), "vm", "create", "web-1", "--cpu", "1", "--memory", "1GiB"); r.code != 0 {
		t.Fatalf("create web-1: exit %d: %s", r.code, r.stderr)
	}
	c.WaitConverged(30 * time.Second)

	leader := c.Leader()
	if leader == nil {
		t.Fatal("no leader")
	}
	var follower *clustertest.Controller
	for _, ctl := range c.Controllers {
		if ctl != leader {
			follower = ctl
			break
		}
	}
	leader.Kill()
	follower.Kill()
	// The dead leader first, as a user would list it.
	addrs := leader.API
	for _, ctl := range c.Controllers {
		if ctl != leader {
			addrs += "," + ctl.API
		}
	}
	list := startCLI(t, cli, addrs, "vm", "list")
	stop := startCLI(t, cli, addrs, "vm", "stop", "web-1")
	create := startCLI(t, cli, addrs, "vm", "create", "web-2", "--cpu", "1", "--memory", "1GiB")
	// Reads are served by any live controller, leader or not.
	list.wait(t)
	if list.code != 0 || !strings.Contains(list.stdout.String(), "web-1") {
		t.Fatalf("vm list: exit %d stdout %q stderr %q", list.code, list.stdout.String(), list.stderr.String())
	}
	// The writes wait; no leader can exist until the follower is back.
	apitest.Eventually(t, 30*time.Second, "the writes to report they wait for an election", func() bool {
		for _, p := range []*bgCLI{stop, create} {
			select {
			case <-p.done:
				t.Fatalf("yunchi %s ended with no leader: exit %d stdout %q stderr %q", p.name, p.code, p.stdout.String(), p.stderr.String())
			default:
			}
		}
		return stop.stderr.String() == electionProgress && create.stderr.String() == electionProgress
	})
	c.Restart(follower)
	for _, p := range []*bgCLI{stop, create} {
		p.wait(t)
		if p.code != 0 || p.stderr.String() != electionProgress {
			t.Fatalf("yunchi %s: exit %d stdout %q stderr %q", p.name, p.code, p.stdout.String(), p.stderr.String())
		}
	}
	l := c.Leader()
	if l == nil {
		t.Fatal("no leader after the writes")
	}
	vms, err := listVMs(l.API)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, v := range vms.Vms {
		count[v.Name]++
		if v.Name == "web-1" && v.Desired != yunchiv1.PowerState_POWER_STATE_STOPPED {
			t.Errorf("web-1 desired %v after the stop", v.Desired)
		}
	}
	if count["web-1"] != 1 || count["web-2"] != 1 {
		t.Errorf("vms %v: want web-1 and web-2 once each", count)
	}
}

// TestCLIRemoveLeader: `yunchi cluster remove` of the leader, asked through
// a follower, exits 0 and says leadership moved; the two others are the
// cluster; the removed controller keeps running, answers every command
// with where to go (exit 7), and its status says it was removed.
func TestCLIRemoveLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	cli := buildCLI(t)
	c := clustertest.New(t)
	c.StartControllers(3)
	leader := c.Leader()
	if leader == nil {
		t.Fatal("no leader")
	}
	var rest []*clustertest.Controller
	for _, ctl := range c.Controllers {
		if ctl != leader {
			rest = append(rest, ctl)
		}
	}
	r := runCLI(t, cli, rest[0].API, "-o", "json", "cluster", "remove", leader.ID)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("cluster remove %s: exit %d stderr %q", leader.ID, r.code, r.stderr)
	}
	var resp struct {
		Members []struct {
			ID     string `json:"id"`
			Leader bool   `json:"leader"`
		} `json:"members"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil {
		t.Fatalf("%v: %s", err, r.stdout)
	}
	newLeader := ""
	for _, m := range resp.Members {
		if m.Leader {
			newLeader = m.ID
		}
	}
	if len(resp.Members) != 2 || newLeader == "" || newLeader == leader.ID ||
		resp.Message != leader.ID+" removed; it was the leader, leadership moved to "+newLeader {
		t.Fatalf("cluster remove output: %s", r.stdout)
	}
	apitest.Eventually(t, 30*time.Second, "the two others to be the cluster", func() bool {
		for _, ctl := range rest {
			st, err := apitest.Status(ctl.API)
			if err != nil || !apitest.Formed(st, 2) || st.LeaderId != newLeader {
				return false
			}
		}
		return true
	})

	r = runCLI(t, cli, leader.API, "vm", "list")
	want := "yunchi: controller " + leader.ID + " was removed from the cluster; use one of: "
	if r.code != 7 || !strings.HasPrefix(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
		t.Fatalf("vm list on the removed controller: exit %d stderr %q", r.code, r.stderr)
	}
	for _, ctl := range rest {
		if !strings.Contains(r.stderr, ctl.API) {
			t.Errorf("%q does not name %s", r.stderr, ctl.API)
		}
	}
	r = runCLI(t, cli, leader.API, "cluster", "status")
	if r.code != 0 || !strings.Contains(r.stdout, leader.ID+" (removed)") || !strings.Contains(r.stdout, "was removed from the cluster") {
		t.Fatalf("cluster status on the removed controller: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	// Given every address, the CLI passes the removed controller over.
	r = runCLI(t, cli, c.APIList(), "cluster", "members")
	if r.code != 0 || strings.Contains(r.stdout, leader.ID+" ") {
		t.Fatalf("cluster members: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if !leader.Running() {
		t.Fatalf("the removed controller exited:\n%s", leader.Log())
	}
	apitest.Eventually(t, 10*time.Second, "the removed controller to log its removal", func() bool {
		return strings.Contains(leader.Log(), "this controller was removed from the cluster")
	})
	if n := strings.Count(leader.Log(), "removed from the cluster"); n != 1 {
		t.Errorf("the removed controller logged its removal %d times:\n%s", n, leader.Log())
	}
}
