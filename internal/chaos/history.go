// Package chaos is Yunchi's fault harness: a cluster of real yunchid
// processes in network namespaces with faults injected (harness.go), a
// workload of clients that record every operation (workload.go), and the
// checkers that judge a run: linearizability of the VM registry with
// porcupine (linearizability.go) and the invariants every state must hold
// (invariants.go). Every checker has a test that feeds it the anomaly it
// exists to catch.
package chaos

import (
	"encoding/json"
	"os"
)

// Kinds of operations on the VM registry (the linearizability model's
// inputs) and on the rest of the cluster.
const (
	OpCreate = "create" // create a VM (Name, VCPUs, MemoryBytes)
	OpGet    = "get"    // consistent read of one VM
	OpStart  = "start"  // desired power state: running
	OpStop   = "stop"   // desired power state: stopped
	OpDelete = "delete" // desired power state: deleted (the record goes when its agent reports the domain gone)

	OpCreateGroup = "create_group"
	OpDeleteGroup = "delete_group"
	OpSetQuota    = "set_quota" // raises the VMs limit of a project (limits only grow in the workload)
)

// Outcomes: what the cluster answered, after the client's retries with the
// same request id.
const (
	OK                 = "ok"
	NotFound           = "not_found"
	AlreadyExists      = "already_exists"
	FailedPrecondition = "failed_precondition" // e.g. starting a VM that is being deleted
	Rejected           = "rejected"            // no capacity, quota exceeded: nothing changed
	Unknown            = "unknown"             // no definite answer before the run ended: may or may not have happened
)

// Desired power states as the model sees them.
const (
	Running  = "running"
	Stopped  = "stopped"
	Deleting = "deleted"
)

// Op is one logical operation of a workload client: its first invocation
// and its final answer (retries with the same request id are one Op).
// Times are nanoseconds since the run started, from one monotonic clock.
type Op struct {
	Client    int    `json:"client"`
	Seq       int    `json:"seq"`
	Kind      string `json:"kind"`
	Project   string `json:"project"`
	Name      string `json:"name"` // the VM (or group) the op is about
	Via       string `json:"via"`  // controller first asked (id)
	Transport string `json:"transport"`
	RequestID string `json:"request_id,omitempty"`
	Attempts  int    `json:"attempts"`
	Call      int64  `json:"call"`
	Return    int64  `json:"return"` // for Unknown: when the client gave up (the checker treats it as never returned)

	// Inputs.
	VCPUs       int32 `json:"vcpus,omitempty"`
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	Limit       int64 `json:"limit,omitempty"` // set_quota: the VMs limit set

	// Outcome, and what an OK answer said about the VM.
	Outcome  string `json:"outcome"`
	Err      string `json:"err,omitempty"`
	VMID     string `json:"vm_id,omitempty"`
	Desired  string `json:"desired,omitempty"`
	HostID   string `json:"host_id,omitempty"`
	Revision uint64 `json:"revision,omitempty"`
}

// Key is what the linearizability model partitions by: one VM name.
func (o Op) Key() string { return o.Project + "/" + o.Name }

// IsVMOp says whether the op is on the VM registry.
func (o Op) IsVMOp() bool {
	switch o.Kind {
	case OpCreate, OpGet, OpStart, OpStop, OpDelete:
		return true
	}
	return false
}

// History is every operation of a run.
type History []Op

// WriteFile writes the history as JSON lines.
func (h History) WriteFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, op := range h {
		if err := enc.Encode(op); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
