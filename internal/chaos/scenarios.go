package chaos

import (
	"fmt"
	"os"
	"time"

	"github.com/yunchi/yunchi/cmd/yunchid/clustertest"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Scenarios is the fault set of `make chaos`, in the order run; Short
// names those `make test` runs.
var Scenarios = []Scenario{
	{Name: "baseline", Controllers: 3},
	{Name: "kill-leader", Controllers: 3, Leader: true, Inject: killLeader},
	{Name: "kill-follower", Controllers: 3, Inject: killFollower},
	{Name: "freeze-leader", Controllers: 3, Leader: true, Inject: freezeLeader},
	{Name: "partition-leader", Controllers: 3, Leader: true, Inject: partitionLeader},
	{Name: "partition-leader-minority", Controllers: 5, Leader: true, Inject: partitionLeaderMinority},
	{Name: "partition-center", Controllers: 3, Agent: true, Inject: partitionCenter},
	{Name: "agent-crash", Controllers: 3, Agent: true, Inject: agentCrash},
	{Name: "agent-partition", Controllers: 3, Agent: true, Inject: agentPartition},
	{Name: "follower-disk-full", Controllers: 3, Setup: smallDisks, Inject: followerDiskFull},
	{Name: "clock-jump", Controllers: 3, Leader: true, Inject: clockJump},
}

// Short is the set `make test` runs: leader and follower crashes, a
// partition of the leader, an agent crash.
var Short = []string{"kill-leader", "kill-follower", "partition-leader", "agent-crash"}

func (r *Run) leader() *clustertest.Controller {
	for range 50 {
		if l := r.C.Leader(); l != nil {
			return l
		}
		sleepMs(100)
	}
	r.T.Fatal("no leader to inject a fault into")
	return nil
}

func (r *Run) follower() *clustertest.Controller {
	l := r.leader()
	for _, c := range r.C.Alive() {
		if c != l {
			return c
		}
	}
	r.T.Fatal("no follower")
	return nil
}

func killLeader(r *Run) (string, func()) {
	l := r.leader()
	l.Kill()
	return "kill -9 leader " + l.ID, func() { r.C.Restart(l) }
}

func killFollower(r *Run) (string, func()) {
	f := r.follower()
	f.Kill()
	return "kill -9 follower " + f.ID, func() { r.C.Restart(f) }
}

func freezeLeader(r *Run) (string, func()) {
	l := r.leader()
	l.Freeze()
	return "SIGSTOP leader " + l.ID, l.Thaw
}

// others is every node (controllers and hosts) but those named.
func (r *Run) others(except ...string) []string {
	skip := map[string]bool{}
	for _, e := range except {
		skip[e] = true
	}
	var out []string
	for _, c := range r.C.Controllers {
		if !skip[c.ID] {
			out = append(out, c.ID)
		}
	}
	for _, a := range r.C.Agents {
		if !skip[a.HostID] {
			out = append(out, a.HostID)
		}
	}
	return out
}

func (r *Run) heal() {
	if err := r.C.Net.Heal(); err != nil {
		r.T.Errorf("heal the network: %v", err)
	}
}

// partitionLeader cuts the leader off from every other controller and
// host; the test's clients still reach it (and must get no wrong answer
// from it).
func partitionLeader(r *Run) (string, func()) {
	l := r.leader()
	if err := r.C.Net.Cut([]string{l.ID}, r.others(l.ID)); err != nil {
		r.T.Fatal(err)
	}
	return "leader " + l.ID + " cut from the other controllers and the hosts", r.heal
}

// partitionLeaderMinority: five controllers, the leader and one follower
// on one side, three on the other, hosts with the majority.
func partitionLeaderMinority(r *Run) (string, func()) {
	l := r.leader()
	var f string
	for _, c := range r.C.Controllers {
		if c.ID != l.ID {
			f = c.ID
			break
		}
	}
	minority := []string{l.ID, f}
	if err := r.C.Net.Cut(minority, r.others(minority...)); err != nil {
		r.T.Fatal(err)
	}
	return fmt.Sprintf("leader %s and follower %s cut from the three others and the hosts", l.ID, f), r.heal
}

// partitionCenter cuts the remote center b1 (its controller and host) off
// from the rest.
func partitionCenter(r *Run) (string, func()) {
	var side []string
	for _, c := range r.C.Controllers {
		if c.Center == "b1" {
			side = append(side, c.ID)
		}
	}
	for _, h := range hosts {
		if h.center == "b1" {
			side = append(side, h.id)
			r.faultHost = h.id
		}
	}
	if err := r.C.Net.Cut(side, r.others(side...)); err != nil {
		r.T.Fatal(err)
	}
	return fmt.Sprintf("center b1 (%v) cut from a1 and a2", side), r.heal
}

func (r *Run) agent(id string) *clustertest.Agent {
	for _, a := range r.C.Agents {
		if a.HostID == id {
			return a
		}
	}
	r.T.Fatalf("no agent %s", id)
	return nil
}

// busiestHost is the host with the most VMs meant to run (h1 if none
// runs any), so that an agent fault hits VMs.
func (r *Run) busiestHost() string {
	best, n := hosts[0].id, 0
	if s, err := r.snapshot(r.leaderAPI(), false); err == nil {
		count := map[string]int{}
		for _, vm := range s.VMs {
			if vm.Desired == yunchiv1.PowerState_POWER_STATE_RUNNING {
				count[vm.HostId]++
			}
		}
		for _, h := range hosts {
			if count[h.id] > n {
				best, n = h.id, count[h.id]
			}
		}
	}
	return best
}

// agentCrash kills the agent of the host running the most VMs (its
// test-driver domains die with it, as a host's would in a crash) and
// starts it again: it must define and start its VMs again from the
// controllers' assignments.
func agentCrash(r *Run) (string, func()) {
	r.faultHost = r.busiestHost()
	a := r.agent(r.faultHost)
	a.Kill()
	return "kill -9 agent " + a.HostID, func() { r.C.RestartAgent(a) }
}

// agentPartition cuts the host running the most VMs off from every
// controller while its VMs run.
func agentPartition(r *Run) (string, func()) {
	r.faultHost = r.busiestHost()
	var ctls []string
	for _, c := range r.C.Controllers {
		ctls = append(ctls, c.ID)
	}
	if err := r.C.Net.Cut([]string{r.faultHost}, ctls); err != nil {
		r.T.Fatal(err)
	}
	return "host " + r.faultHost + " cut from every controller", r.heal
}

// diskSize is the tmpfs each controller's data dir gets in the disk-full
// scenario: room for the run with 1 MiB raft segments.
const diskSize = 48 << 20

func smallDisks(r *Run) {
	for i := 1; i <= 3; i++ {
		apitest.MountTmpfs(r.T, r.C.DataDir(fmt.Sprintf("c%d", i)), diskSize)
	}
}

// followerDiskFull fills a follower's data disk; healing removes the
// filler.
func followerDiskFull(r *Run) (string, func()) {
	f := r.follower()
	path := apitest.FillDisk(r.T, r.C.DataDir(f.ID))
	return "data disk of follower " + f.ID + " full", func() {
		if err := os.Remove(path); err != nil {
			r.T.Errorf("remove filler: %v", err)
		}
	}
}

func sleepMs(n int) { time.Sleep(time.Duration(n) * time.Millisecond) }

// clockJump moves the leader's wall clock 15 minutes ahead (past the
// request ids' 10 minutes) and, on healing, back again; a follower's clock
// goes 15 minutes back meanwhile.
func clockJump(r *Run) (string, func()) {
	l, f := r.leader(), r.follower()
	for id, off := range map[string]string{l.ID: "15m", f.ID: "-15m"} {
		if err := os.WriteFile(r.clockFile(id), []byte(off), 0o600); err != nil {
			r.T.Fatal(err)
		}
	}
	return fmt.Sprintf("wall clock of leader %s 15 min ahead, of follower %s 15 min behind", l.ID, f.ID), func() {
		for _, id := range []string{l.ID, f.ID} {
			if err := os.Remove(r.clockFile(id)); err != nil {
				r.T.Errorf("clock back: %v", err)
			}
		}
	}
}
