package chaos

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vmOp is a VM op on p/<name> for the hand-written histories.
func vmOp(kind, name string, call, ret int64, outcome, id, desired string) Op {
	return Op{Kind: kind, Project: "p", Name: name, Call: call, Return: ret, Outcome: outcome, VMID: id, Desired: desired}
}

// numbered gives every op its own client and a sequence number, as the
// workload would.
func numbered(ops ...Op) History {
	for i := range ops {
		ops[i].Client, ops[i].Seq = i, i
	}
	return ops
}

func TestLinearizableHandWritten(t *testing.T) {
	cases := []struct {
		name string
		h    History
		ok   bool
	}{
		{"lifecycle", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpGet, "web", 20, 30, OK, "X", Running),
			vmOp(OpStop, "web", 40, 50, OK, "X", Stopped),
			vmOp(OpGet, "web", 60, 70, OK, "X", Stopped),
			vmOp(OpStart, "web", 80, 90, OK, "X", Running),
			vmOp(OpCreate, "web", 85, 95, AlreadyExists, "", ""),
			vmOp(OpGet, "web", 100, 110, OK, "X", Running),
			vmOp(OpDelete, "web", 120, 130, OK, "X", Deleting),
			vmOp(OpDelete, "web", 135, 138, OK, "X", Deleting), // deleting twice is OK again
			vmOp(OpGet, "web", 140, 150, OK, "X", Deleting),
			vmOp(OpGet, "web", 160, 170, NotFound, "", ""),
			vmOp(OpCreate, "web", 180, 190, OK, "Y", Running),
			vmOp(OpGet, "web", 200, 210, OK, "Y", Running),
		), true},
		{"concurrent start and stop, reads either way", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpStop, "web", 20, 60, OK, "X", Stopped),
			vmOp(OpStart, "web", 30, 50, OK, "X", Running),
			vmOp(OpGet, "web", 40, 45, OK, "X", Stopped),
			vmOp(OpGet, "web", 70, 80, OK, "X", Running),
		), true},
		{"rejected create changes nothing", numbered(
			vmOp(OpCreate, "web", 0, 10, Rejected, "", ""),
			vmOp(OpGet, "web", 20, 30, NotFound, "", ""),
		), true},
		{"unknown create that happened", numbered(
			vmOp(OpCreate, "web", 0, 10, Unknown, "", ""),
			vmOp(OpGet, "web", 20, 30, OK, "Z", Running),
			vmOp(OpStop, "web", 40, 50, OK, "Z", Stopped),
			vmOp(OpGet, "web", 60, 70, OK, "Z", Stopped),
		), true},
		{"unknown create that did not happen", numbered(
			vmOp(OpCreate, "web", 0, 10, Unknown, "", ""),
			vmOp(OpGet, "web", 20, 30, NotFound, "", ""),
			vmOp(OpCreate, "web", 40, 50, OK, "Y", Running),
			vmOp(OpGet, "web", 60, 70, OK, "Y", Running),
		), true},
		{"unknown delete that happened, then purge", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpDelete, "web", 20, 30, Unknown, "", ""),
			vmOp(OpGet, "web", 40, 50, OK, "X", Running),
			vmOp(OpGet, "web", 60, 70, NotFound, "", ""),
		), true},
		{"unknown get is left out", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpGet, "web", 20, 30, Unknown, "", ""),
		), true},
		{"purge of a deleting VM", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpDelete, "web", 20, 30, OK, "X", Deleting),
			vmOp(OpGet, "web", 40, 50, OK, "X", Deleting),
			vmOp(OpStart, "web", 60, 70, FailedPrecondition, "", ""),
			vmOp(OpCreate, "web", 80, 90, AlreadyExists, "", ""),
			vmOp(OpGet, "web", 100, 110, NotFound, "", ""), // purged
			vmOp(OpStart, "web", 120, 130, NotFound, "", ""),
			vmOp(OpCreate, "web", 140, 150, OK, "Y", Running),
			vmOp(OpGet, "web", 160, 170, OK, "Y", Running),
		), true},
		{"purge seen only by a create", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpDelete, "web", 20, 30, OK, "X", Deleting),
			vmOp(OpCreate, "web", 40, 50, OK, "Y", Running),
			vmOp(OpGet, "web", 60, 70, OK, "Y", Running),
		), true},

		// Anomalies.
		{"stale read", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpStop, "web", 20, 30, OK, "X", Stopped),
			vmOp(OpGet, "web", 40, 50, OK, "X", Running),
		), false},
		{"lost acknowledged create", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpGet, "web", 20, 30, NotFound, "", ""),
		), false},
		{"create appears twice", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpCreate, "web", 20, 30, OK, "Y", Running),
		), false},
		{"stopped after an acknowledged start", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpStop, "web", 20, 30, OK, "X", Stopped),
			vmOp(OpStart, "web", 40, 50, OK, "X", Running),
			vmOp(OpGet, "web", 60, 70, OK, "X", Stopped),
		), false},
		{"deleted VM alive again", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpDelete, "web", 20, 30, OK, "X", Deleting),
			vmOp(OpGet, "web", 40, 50, OK, "X", Deleting),
			vmOp(OpGet, "web", 60, 70, OK, "X", Running),
		), false},
		{"purged VM back", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpDelete, "web", 20, 30, OK, "X", Deleting),
			vmOp(OpGet, "web", 40, 50, NotFound, "", ""),
			vmOp(OpGet, "web", 60, 70, OK, "X", Deleting),
		), false},
		{"start of a deleting VM succeeds", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpDelete, "web", 20, 30, OK, "X", Deleting),
			vmOp(OpStart, "web", 40, 50, OK, "X", Running),
		), false},
		{"unknown create seen with two ids", numbered(
			vmOp(OpCreate, "web", 0, 10, Unknown, "", ""),
			vmOp(OpGet, "web", 20, 30, OK, "Z", Running),
			vmOp(OpGet, "web", 40, 50, OK, "W", Running),
		), false},
		{"unknown create cannot take a definite create's id", numbered(
			vmOp(OpCreate, "web", 0, 10, OK, "X", Running),
			vmOp(OpDelete, "web", 20, 30, OK, "X", Deleting),
			vmOp(OpGet, "web", 40, 50, NotFound, "", ""),
			vmOp(OpCreate, "web", 60, 70, Unknown, "", ""),
			vmOp(OpGet, "web", 80, 90, OK, "X", Running),
		), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := CheckLinearizable(c.h, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r.OK != c.ok || r.Timeout {
				t.Fatalf("got %s, want OK=%v", r, c.ok)
			}
			if !c.ok && (len(r.Illegal) != 1 || r.Illegal[0] != "p/web") {
				t.Errorf("illegal keys %v, want [p/web]", r.Illegal)
			}
			if r.Keys != 1 {
				t.Errorf("keys %d, want 1", r.Keys)
			}
		})
	}
}

// TestLinearizableOtherKeysAndOps: an anomaly on one key names that key
// alone, and ops other than the registry's are not the model's business.
func TestLinearizableOtherKeysAndOps(t *testing.T) {
	h := numbered(
		vmOp(OpCreate, "a", 0, 10, OK, "A", Running),
		vmOp(OpCreate, "b", 0, 10, OK, "B", Running),
		vmOp(OpGet, "a", 20, 30, OK, "A", Running),
		vmOp(OpGet, "b", 20, 30, NotFound, "", ""), // lost
		Op{Kind: OpSetQuota, Project: "p", Limit: 3, Call: 5, Return: 6, Outcome: "whatever"},
	)
	r, err := CheckLinearizable(h, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || strings.Join(r.Illegal, ",") != "p/b" || r.Keys != 2 || r.Ops != 4 {
		t.Fatalf("got %s (%+v), want p/b alone illegal of 4 ops on 2 keys", r, r.Illegal)
	}
	path := filepath.Join(t.TempDir(), "lin.html")
	if err := r.WriteVisualization(path); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || !strings.Contains(string(b), "not_found") {
		t.Errorf("visualisation lacks the ops (err %v)", err)
	}
}

// TestLinearizableUnreadableAnswer: an answer the model has no rule for
// is an error, not a verdict.
func TestLinearizableUnreadableAnswer(t *testing.T) {
	_, err := CheckLinearizable(numbered(vmOp(OpGet, "web", 0, 10, AlreadyExists, "", "")), time.Second)
	if err == nil || !strings.Contains(err.Error(), "p/web") {
		t.Fatalf("err %v, want one naming p/web", err)
	}
}

// TestLinearizableTimeout: a search porcupine cannot finish in time is
// reported as such, not as a pass. Many concurrent starts and stops
// followed by a read that fits none of their orders make it try every
// subset of them.
func TestLinearizableTimeout(t *testing.T) {
	ops := []Op{vmOp(OpCreate, "web", 0, 10, OK, "X", Running)}
	for i := range 40 {
		kind, desired := OpStart, Running
		if i%2 == 1 {
			kind, desired = OpStop, Stopped
		}
		ops = append(ops, vmOp(kind, "web", 20, 1000, OK, "X", desired))
	}
	ops = append(ops, vmOp(OpGet, "web", 2000, 2010, OK, "X", Deleting))
	r, err := CheckLinearizable(numbered(ops...), 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || !r.Timeout {
		t.Fatalf("got %s, want a timeout", r)
	}
}

// genHistory runs a sequential model of the registry and records ops
// around its linearization points: op i takes effect at time t_i (t
// increasing) and is called up to window before and returns up to window
// after, so ops overlap at random. Between ops, VMs being deleted are
// purged at random, unseen. A fraction of ops end Unknown, half of those
// having taken effect. The history is linearizable by construction.
func genHistory(rng *rand.Rand, n int, keys []string, window int64, unknown float64) History {
	type vm struct{ id, desired string }
	state := map[string]vm{}
	kinds := []string{OpCreate, OpCreate, OpGet, OpGet, OpGet, OpStart, OpStop, OpStop, OpDelete}
	var h History
	var t int64
	ids := 0
	for i := range n {
		t += 1 + rng.Int63n(window/4)
		for _, k := range keys {
			if state[k].desired == Deleting && rng.Intn(4) == 0 {
				delete(state, k)
			}
		}
		k := keys[rng.Intn(len(keys))]
		s := state[k]
		op := Op{Client: i % 16, Seq: i, Kind: kinds[rng.Intn(len(kinds))], Project: "p", Name: k,
			Call: t - rng.Int63n(window), Return: t + rng.Int63n(window), Attempts: 1}
		next := s
		switch {
		case op.Kind == OpCreate && s.desired != "":
			op.Outcome = AlreadyExists
		case op.Kind == OpCreate && rng.Intn(10) == 0:
			op.Outcome = Rejected
		case op.Kind == OpCreate:
			ids++
			next = vm{fmt.Sprintf("vm-%d", ids), Running}
			op.Outcome, op.VMID, op.Desired = OK, next.id, Running
		case s.desired == "":
			op.Outcome = NotFound
		case op.Kind == OpGet:
			op.Outcome, op.VMID, op.Desired = OK, s.id, s.desired
		case op.Kind == OpDelete:
			next.desired = Deleting
			op.Outcome, op.VMID, op.Desired = OK, s.id, Deleting
		case s.desired == Deleting:
			op.Outcome = FailedPrecondition
		default: // start, stop
			next.desired = desiredOf(op.Kind)
			op.Outcome, op.VMID, op.Desired = OK, s.id, next.desired
		}
		if rng.Float64() < unknown {
			op.Outcome, op.VMID, op.Desired = Unknown, "", ""
			op.Return = t + window + rng.Int63n(window) // gave up
			if rng.Intn(2) == 0 {
				next = s // never happened
			}
		}
		if next.desired == "" {
			delete(state, k)
		} else {
			state[k] = next
		}
		h = append(h, op)
	}
	return h
}

// TestLinearizableGenerated checks generated histories of a few hundred
// ops: clean ones pass, and each with one planted read of a VM after an
// acknowledged delete (alive again) fails on that key.
func TestLinearizableGenerated(t *testing.T) {
	keys := []string{"a", "b", "c", "d", "e"}
	for seed := int64(1); seed <= 8; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewSource(seed))
			h := genHistory(rng, 400, keys, 60, 0.05)
			r, err := CheckLinearizable(h, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if !r.OK || r.Ops < 350 || r.Indefinite == 0 {
				t.Fatalf("clean history: %s", r)
			}

			// Plant: after everything returned, a read of a VM whose
			// create and delete were both acknowledged sees it running.
			created := map[string]bool{}
			var victim Op
			for _, op := range h {
				if op.Outcome == OK && op.Kind == OpCreate {
					created[op.VMID] = true
				}
				if op.Outcome == OK && op.Kind == OpDelete && created[op.VMID] {
					victim = op
				}
			}
			if victim.VMID == "" {
				t.Fatal("no acknowledged delete of an acknowledged create to plant on")
			}
			var end int64
			for _, op := range h {
				end = max(end, op.Return)
			}
			bad := append(History{}, h...)
			bad = append(bad, Op{Client: 99, Seq: 9999, Kind: OpGet, Project: "p", Name: victim.Name,
				Call: end + 10, Return: end + 20, Outcome: OK, VMID: victim.VMID, Desired: Running})
			r, err = CheckLinearizable(bad, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r.OK || r.Timeout || strings.Join(r.Illegal, ",") != victim.Key() {
				t.Fatalf("planted read of %s on %s: %s", victim.VMID, victim.Key(), r)
			}
		})
	}
}
