package chaos

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// The VM registry is checked for linearizability one VM name at a time
// (Op.Key): names are unique per project and no VM operation reads or
// writes two names, so the history is linearizable exactly when every
// key's is (porcupine's P-compositionality), and each key's search is
// small enough to finish.
//
// One key's state is a small value: absent, or a VM with an id and a
// desired state. Two things make the model more than a register:
//
//   - A VM being deleted is removed later by the controllers on their own,
//     when its host's agent reports the domain gone; no client sees that
//     moment. The model keeps the state "deleting" until an answer says
//     which it is: a read or a start that finds nothing, or a create that
//     succeeds, means the record was purged before that point (purging is
//     one-way, so deciding it lazily loses nothing); already_exists,
//     failed_precondition or a read of the deleted VM mean it was not yet.
//
//   - An operation whose outcome is Unknown may or may not have happened.
//     It gets a return time after every other event and a Step that always
//     accepts it and applies its effect where the effect is legal, so
//     porcupine may place it anywhere after its call; placing it last is
//     "it never happened" as far as any answer saw. A create of unknown
//     outcome makes a VM whose id nobody was told: the model keeps "" as a
//     wildcard that the first later answer naming an id binds. The
//     wildcard never binds an id a definite create was given: ids are
//     unique, so that VM is the other create's.
//
// Gets of unknown outcome are left out (a read that answered nobody has no
// effect and says nothing). Answers the model has no rule for are an
// error, not a verdict: a workload that records a new kind of answer
// must teach the model what it means first.

// linState is one key's state. Desired "" is absent; Deleting is being
// deleted (and perhaps already purged, see above); ID "" with a desired
// state is a VM made by a create of unknown outcome, id not yet seen.
type linState struct {
	ID      string
	Desired string
}

func (s linState) String() string {
	if s.Desired == "" {
		return "absent"
	}
	id := s.ID
	if id == "" {
		id = "?"
	}
	return id + " " + s.Desired
}

// linOutcomes are the answers each kind may record (besides Unknown),
// those the model has a rule for. Rejected (no capacity, quota, a rate
// limit, or an answer the workload did not expect) is no effect, for
// every kind.
var linOutcomes = map[string][]string{
	OpCreate: {OK, AlreadyExists, Rejected, FailedPrecondition},
	OpGet:    {OK, NotFound, Rejected},
	OpStart:  {OK, NotFound, FailedPrecondition, Rejected},
	OpStop:   {OK, NotFound, FailedPrecondition, Rejected},
	OpDelete: {OK, NotFound, Rejected},
}

// linModel is the porcupine model of the registry. Inputs and outputs
// are both the Op (porcupine keeps them apart; the Op carries both).
// definite holds the ids definite creates were given, which a wildcard
// may not take.
func linModel(definite map[string]bool) porcupine.Model {
	return porcupine.Model{
		Partition: partitionByKey,
		Init:      func() interface{} { return linState{} },
		Step: func(state, input, output interface{}) (bool, interface{}) {
			return linStep(state.(linState), output.(Op), definite)
		},
		Equal: func(a, b interface{}) bool { return a.(linState) == b.(linState) },
		Hash: func(state interface{}) uint64 {
			s := state.(linState)
			h := fnv.New64a()
			h.Write([]byte(s.ID))
			h.Write([]byte{0})
			h.Write([]byte(s.Desired))
			return h.Sum64()
		},
		DescribeOperation: func(input, output interface{}) string { return describeLinOp(output.(Op)) },
		DescribeState:     func(state interface{}) string { return state.(linState).String() },
		DescribeOperationMetadata: func(info interface{}) string {
			if info == nil {
				return ""
			}
			return info.(string)
		},
	}
}

// partitionByKey splits a history by Op.Key, keys in sorted order so that
// partitions (and the visualisation's) come in the same order every time.
func partitionByKey(history []porcupine.Operation) [][]porcupine.Operation {
	byKey := map[string][]porcupine.Operation{}
	for _, o := range history {
		k := o.Input.(Op).Key()
		byKey[k] = append(byKey[k], o)
	}
	keys := sortedKeys(byKey)
	out := make([][]porcupine.Operation, len(keys))
	for i, k := range keys {
		out[i] = byKey[k]
	}
	return out
}

// bindID says whether an answer naming id fits a state whose VM has id
// have ("" binds, unless a definite create owns id), and the id to keep.
// An answer without an id fits any VM.
func bindID(have, id string, definite map[string]bool) (bool, string) {
	switch {
	case id == "":
		return true, have
	case have == id:
		return true, have
	case have == "" && !definite[id]:
		return true, id
	}
	return false, have
}

// linStep is the sequential specification of one key.
func linStep(s linState, op Op, definite map[string]bool) (bool, linState) {
	absent, deleting := s.Desired == "", s.Desired == Deleting
	live := !absent && !deleting
	gone := linState{}
	if op.Outcome == Unknown {
		switch op.Kind {
		case OpCreate:
			if absent || deleting { // deleting: purged, then created
				return true, linState{Desired: Running}
			}
		case OpStart, OpStop:
			if live {
				return true, linState{ID: s.ID, Desired: desiredOf(op.Kind)}
			}
		case OpDelete:
			if live {
				return true, linState{ID: s.ID, Desired: Deleting}
			}
		}
		return true, s // no effect here: already_exists, not_found, ...
	}
	switch op.Outcome {
	case Rejected:
		return true, s // nothing changed, whatever the state
	case NotFound: // get, start, stop, delete
		if live {
			return false, s
		}
		return true, gone // a VM being deleted was purged
	}
	switch op.Kind {
	case OpCreate:
		switch op.Outcome {
		case OK:
			if live {
				return false, s
			}
			desired := op.Desired
			if desired == "" {
				desired = Running
			}
			return true, linState{ID: op.VMID, Desired: desired}
		case AlreadyExists:
			return !absent, s // a VM being deleted still holds its name
		case FailedPrecondition:
			return true, s // about the project, not the VM: no effect
		}
	case OpGet:
		if absent || (op.Desired != "" && op.Desired != s.Desired) {
			return false, s // (an answer without a desired state says only "it exists")
		}
		ok, id := bindID(s.ID, op.VMID, definite)
		return ok, linState{ID: id, Desired: s.Desired}
	case OpStart, OpStop:
		switch op.Outcome {
		case OK:
			if !live {
				return false, s
			}
			ok, id := bindID(s.ID, op.VMID, definite)
			return ok, linState{ID: id, Desired: desiredOf(op.Kind)}
		case FailedPrecondition:
			return deleting, s
		}
	case OpDelete:
		if absent {
			return false, s
		}
		ok, id := bindID(s.ID, op.VMID, definite)
		return ok, linState{ID: id, Desired: Deleting} // deleting twice is OK again
	}
	return false, s // unreachable: CheckLinearizable refuses other answers
}

// desiredOf is the desired state start and stop set.
func desiredOf(kind string) string {
	if kind == OpStart {
		return Running
	}
	return Stopped
}

// describeLinOp is an op as the visualisation shows it:
// "get -> vm-3 stopped", "create -> unknown".
func describeLinOp(op Op) string {
	var b strings.Builder
	b.WriteString(op.Kind)
	b.WriteString(" -> ")
	b.WriteString(op.Outcome)
	if op.Outcome == OK {
		if op.VMID != "" {
			b.WriteString(" " + op.VMID)
		}
		if op.Desired != "" {
			b.WriteString(" " + op.Desired)
		}
	}
	return b.String()
}

// describeLinMeta is what the visualisation shows on hovering over an op:
// who asked whom, and how it went.
func describeLinMeta(op Op) string {
	s := fmt.Sprintf("client %d #%d via %s/%s, %d attempts, request %s, called %d", op.Client, op.Seq, op.Via, op.Transport, op.Attempts, op.RequestID, op.Call)
	if op.Outcome == Unknown {
		s += fmt.Sprintf(", gave up %d", op.Return)
	} else {
		s += fmt.Sprintf(", returned %d", op.Return)
	}
	if op.Err != "" {
		s += ": " + op.Err
	}
	return s
}

// LinResult is the verdict of CheckLinearizable.
type LinResult struct {
	// OK: porcupine found a linearization of every key. False when it
	// found a key without one (Illegal lists them) and when it ran out of
	// time (Timeout): no verdict is not a pass.
	OK      bool
	Timeout bool
	Illegal []string // keys without a linearization, sorted

	Keys       int // keys (VM names) checked
	Ops        int // operations checked
	Indefinite int // of which of unknown outcome (gets of unknown outcome are left out)

	model porcupine.Model
	info  porcupine.LinearizationInfo
}

// String is a one-line summary.
func (r LinResult) String() string {
	verdict := "linearizable"
	switch {
	case r.Timeout:
		verdict = "undecided (timed out)"
	case !r.OK:
		verdict = "NOT linearizable: " + strings.Join(r.Illegal, ", ")
	}
	return fmt.Sprintf("%d ops (%d of unknown outcome) on %d keys: %s", r.Ops, r.Indefinite, r.Keys, verdict)
}

// WriteVisualization writes porcupine's HTML view of the history and the
// (partial) linearizations it found to path: for a key without one, the
// longest prefixes it could order and the ops none of them could take.
func (r LinResult) WriteVisualization(path string) error {
	if r.model.Step == nil {
		return fmt.Errorf("no linearizability check to visualise")
	}
	return porcupine.VisualizePath(r.model, r.info, path)
}

// CheckLinearizable checks the VM operations of h (IsVMOp) against the
// registry's sequential specification, giving porcupine at most timeout
// (0: no limit). It fails only on a history the model cannot read: an
// answer it has no rule for.
func CheckLinearizable(h History, timeout time.Duration) (LinResult, error) {
	var ops []Op
	var bad []string
	var end int64
	definite := map[string]bool{}
	for _, op := range h {
		if !op.IsVMOp() {
			continue
		}
		end = max(end, op.Call, op.Return)
		if op.Outcome == Unknown {
			if op.Kind != OpGet {
				ops = append(ops, op)
			}
			continue
		}
		if !slices.Contains(linOutcomes[op.Kind], op.Outcome) {
			bad = append(bad, fmt.Sprintf("client %d #%d %s %s: %q", op.Client, op.Seq, op.Kind, op.Key(), op.Outcome))
			continue
		}
		if op.Kind == OpCreate && op.Outcome == OK && op.VMID != "" {
			definite[op.VMID] = true
		}
		ops = append(ops, op)
	}
	if len(bad) > 0 {
		return LinResult{}, fmt.Errorf("answers the linearizability model has no rule for: %s", strings.Join(bad, "; "))
	}

	// Unknown outcomes return after everything else: "infinity", kept
	// one past the last time so the visualisation stays readable.
	var r LinResult
	history := make([]porcupine.Operation, len(ops))
	keys := map[string]bool{}
	for i, op := range ops {
		ret := max(op.Return, op.Call)
		if op.Outcome == Unknown {
			ret = end + 1
			r.Indefinite++
		}
		keys[op.Key()] = true
		history[i] = porcupine.Operation{
			ClientId: lane(op.Client),
			Input:    op,
			Call:     op.Call,
			Output:   op,
			Return:   ret,
			Metadata: describeLinMeta(op),
		}
	}
	r.Keys, r.Ops = len(keys), len(ops)
	r.model = linModel(definite)
	res, info := porcupine.CheckOperationsVerbose(r.model, history, timeout)
	r.info = info
	switch res {
	case porcupine.Ok:
		r.OK = true
	case porcupine.Unknown:
		r.Timeout = true
	case porcupine.Illegal:
		r.Illegal = illegalKeys(history, info)
	}
	return r, nil
}

// illegalKeys names the partitions porcupine found no complete
// linearization of: those whose longest partial one is shorter than the
// partition (a linearizable partition's is all of it). Partitions come in
// partitionByKey's order.
func illegalKeys(history []porcupine.Operation, info porcupine.LinearizationInfo) []string {
	parts := partitionByKey(history)
	partials := info.PartialLinearizations()
	var out []string
	for i, part := range parts {
		if i >= len(partials) || len(part) == 0 {
			continue
		}
		longest := 0
		for _, p := range partials[i] {
			longest = max(longest, len(p))
		}
		if longest < len(part) {
			out = append(out, part[0].Input.(Op).Key())
		}
	}
	return out
}

// lane is a client's lane in porcupine's visualisation: the harness's
// final reads (client -1) get one of their own after every client's.
func lane(client int) int {
	if client < 0 {
		return 1000
	}
	return client
}
