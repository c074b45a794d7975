package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// waitGoal is the state --wait waits for.
type waitGoal struct {
	want string // for messages: "running", "stopped", "deleted"
	done func(vm *yunchiv1.VM, gone bool) bool
	// after is the revision the action returned. A FAILED phase recorded at
	// or before it is an old failure the action is meant to clear, so it
	// only ends the wait at a later revision.
	after uint64
	// written is the revision of the write being waited on: the watch asks
	// the controller to have applied it first, so a follower that lags the
	// leader does not answer "not found" for a VM just created.
	written uint64
	// progress overrides the progress line, or returns "".
	progress func(vm *yunchiv1.VM) string
}

func startGoal(vm *yunchiv1.VM) waitGoal {
	return waitGoal{want: "running", after: vm.GetRevision(), done: func(vm *yunchiv1.VM, gone bool) bool {
		return !gone && vm.GetPhase() == yunchiv1.VMPhase_VM_PHASE_RUNNING
	}}
}

func stopGoal(vm *yunchiv1.VM) waitGoal {
	return waitGoal{want: "stopped", after: vm.GetRevision(), done: func(vm *yunchiv1.VM, gone bool) bool {
		return !gone && vm.GetPhase() == yunchiv1.VMPhase_VM_PHASE_STOPPED
	}}
}

// createdGoal is what --wait on a create waits for: running, or stopped with
// --stopped.
func createdGoal(vm *yunchiv1.VM, stopped bool) waitGoal {
	g := startGoal(vm)
	if stopped {
		g = stopGoal(vm)
	}
	g.after = 0 // a new VM: any FAILED is ours
	g.written = vm.GetRevision()
	return g
}

// rebootGoal: the API has no "reboot done" field, so the reboot counts as
// done at the first change after the request that finds the VM running
// (the agent's report that it carried out the reboot).
func rebootGoal(vm *yunchiv1.VM) waitGoal {
	after := vm.GetRevision()
	return waitGoal{
		want:  "running again",
		after: after,
		done: func(vm *yunchiv1.VM, gone bool) bool {
			return !gone && vm.GetPhase() == yunchiv1.VMPhase_VM_PHASE_RUNNING && vm.GetRevision() > after
		},
		progress: func(vm *yunchiv1.VM) string {
			if vm.GetRevision() <= after && vm.GetPhase() == yunchiv1.VMPhase_VM_PHASE_RUNNING {
				return "rebooting" + on(vm) + "…"
			}
			return ""
		},
	}
}

func deleteGoal(vm *yunchiv1.VM) waitGoal {
	return waitGoal{want: "deleted", after: vm.GetRevision(), done: func(_ *yunchiv1.VM, gone bool) bool { return gone }}
}

var errStreamEnded = errors.New("watch ended")

// waitVM follows the VM through WatchVM until g is reached, printing one line
// on stderr per visible change. It survives a controller going away: the
// watch starts again on the next controller, which sends the current state
// first. It returns the last VM seen and whether the VM is gone.
func (s *session) waitVM(name, project string, g waitGoal, timeout time.Duration) (*yunchiv1.VM, bool, error) {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	req := &yunchiv1.WatchVMRequest{Name: name, Project: project, MinRevision: g.written}

	var (
		last     *yunchiv1.VM
		lastLine string
		gone     bool
		failed   error
	)
	show := func(line string) {
		if line != lastLine {
			fmt.Fprintf(s.stderr, "%s: %s\n", name, line)
			lastLine = line
		}
	}
	backoff := 250 * time.Millisecond
	var lastErr error
	for {
		err := s.client.call(ctx, retrySafe, false, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			stream, err := yunchiv1.NewVMServiceClient(cc).WatchVM(ctx, req)
			if err != nil {
				return err
			}
			for {
				ev, err := stream.Recv()
				if err == io.EOF {
					return errStreamEnded
				}
				if err != nil {
					return err
				}
				if ev.GetVm() != nil {
					last = ev.GetVm()
				}
				line := ""
				if g.progress != nil && !ev.GetGone() {
					line = g.progress(last)
				}
				if line == "" {
					line = describe(last, ev.GetGone())
				}
				show(line)
				switch {
				case ev.GetGone() && g.done(last, true):
					gone = true
					return nil
				case ev.GetGone():
					return status.Errorf(codes.NotFound, "%s was deleted while waiting for it to be %s", name, g.want)
				case hostDown(last):
					// Nothing happens to the VM until its host is back, and
					// the phase shown is the last one the host reported:
					// neither success nor a reason to wait out the timeout.
					failed = s.hostDownError(name, g, last)
					return nil
				case g.done(last, false):
					return nil
				case last.GetPhase() == yunchiv1.VMPhase_VM_PHASE_FAILED && last.GetRevision() > g.after:
					failed = &vmFailedError{msg: name + " failed" + on(last) + ": " + orDefault(last.GetMessage(), "no reason given")}
					return nil
				}
			}
		})
		switch {
		case err == nil:
			return last, gone, failed
		case status.Code(err) == codes.NotFound && g.want == "deleted" && ctx.Err() == nil:
			show("deleted")
			return last, true, nil
		case ctx.Err() != nil || ranOut(ctx, err):
			return last, gone, s.waitAborted(name, g, last, lastErr, timeout)
		case err == errStreamEnded || status.Code(err) == codes.Unavailable:
			lastErr = err // the controller went away: watch again
		default:
			return last, gone, err
		}
		select {
		case <-ctx.Done():
			return last, gone, s.waitAborted(name, g, last, lastErr, timeout)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// hostDownError says that the VM's host is down, so the wait would only
// run out: a failed precondition (exit 7), the request standing.
func (s *session) hostDownError(name string, g waitGoal, vm *yunchiv1.VM) error {
	host := vm.GetHostId()
	heard := "no heartbeat recorded"
	if hb := vm.GetHostLastHeartbeat(); hb != nil {
		heard = "last heartbeat " + s.out.ago(hb)
	}
	return status.Errorf(codes.FailedPrecondition, "%s is down (%s): %s will be %s when %s is back; not waiting (the request stands, see 'yunchi vm show %s' and 'yunchi host show %s')",
		host, heard, name, g.want, host, name, host)
}

// awaited names what a wait is for: "web-1 to be running on a1-h07",
// "web-1 to be deleted from a1-h07", "web-1 to be running" (not placed).
func awaited(name string, g waitGoal, last *yunchiv1.VM) string {
	what := name + " to be " + g.want
	if h := last.GetHostId(); h != "" {
		if g.want == "deleted" {
			return what + " from " + h
		}
		return what + " on " + h
	}
	return what
}

func (s *session) waitAborted(name string, g waitGoal, last *yunchiv1.VM, lastErr error, timeout time.Duration) error {
	if s.ctx.Err() != nil {
		return fmt.Errorf("interrupted while waiting for %s; the request stands, see 'yunchi vm show %s'", awaited(name, g, last), name)
	}
	if status.Code(lastErr) == codes.Unavailable {
		return status.Errorf(codes.Unavailable, "gave up waiting for %s after %s: %s", awaited(name, g, last), timeout, status.Convert(lastErr).Message())
	}
	seen := ""
	if last != nil {
		seen = " (last seen: " + describe(last, false) + ")"
	}
	return fmt.Errorf("timed out after %s waiting for %s%s; it may still get there, see 'yunchi vm show %s'",
		timeout, awaited(name, g, last), seen, name)
}

// describe says where the VM is and where it is going, for progress lines:
// "placed on a1-h07, starting…", "running on a1-h07 (center a1)",
// "running on a1-h07 (host down)" (the phase its host last reported).
func describe(vm *yunchiv1.VM, gone bool) string {
	if gone {
		return "deleted"
	}
	if vm == nil {
		return "unknown"
	}
	if hostDown(vm) {
		vm = proto.Clone(vm).(*yunchiv1.VM)
		vm.HostCenter, vm.Conditions = "", nil
		return describe(vm, false) + " (host down)"
	}
	desired := vm.GetDesired()
	msg := ""
	if vm.GetMessage() != "" {
		msg = " (" + vm.GetMessage() + ")"
	}
	settled := func(word string) string {
		s := word + on(vm)
		if c := vm.GetHostCenter(); c != "" {
			s += " (center " + c + ")"
		}
		return s
	}
	switch vm.GetPhase() {
	case yunchiv1.VMPhase_VM_PHASE_PENDING:
		if vm.GetHostId() == "" {
			return "waiting for placement…" + msg
		}
		switch desired {
		case yunchiv1.PowerState_POWER_STATE_STOPPED:
			return "placed on " + vm.GetHostId() + ", defining (stays stopped)…" + msg
		case yunchiv1.PowerState_POWER_STATE_DELETED:
			return "deleting from " + vm.GetHostId() + "…" + msg
		}
		return "placed on " + vm.GetHostId() + ", starting…" + msg
	case yunchiv1.VMPhase_VM_PHASE_RUNNING:
		switch desired {
		case yunchiv1.PowerState_POWER_STATE_STOPPED:
			return "running" + on(vm) + ", stopping…"
		case yunchiv1.PowerState_POWER_STATE_DELETED:
			return "running" + on(vm) + ", deleting…"
		}
		return settled("running")
	case yunchiv1.VMPhase_VM_PHASE_STOPPED:
		switch desired {
		case yunchiv1.PowerState_POWER_STATE_RUNNING:
			return "stopped" + on(vm) + ", starting…"
		case yunchiv1.PowerState_POWER_STATE_DELETED:
			return "stopped" + on(vm) + ", deleting…"
		}
		return settled("stopped")
	case yunchiv1.VMPhase_VM_PHASE_FAILED:
		return "failed" + on(vm) + ": " + orDefault(vm.GetMessage(), "no reason given")
	case yunchiv1.VMPhase_VM_PHASE_DELETING:
		return "deleting" + from(vm) + "…" + msg
	}
	return phase(vm.GetPhase()) + on(vm) + msg
}

func on(vm *yunchiv1.VM) string {
	if vm.GetHostId() == "" {
		return ""
	}
	return " on " + vm.GetHostId()
}

func from(vm *yunchiv1.VM) string {
	if vm.GetHostId() == "" {
		return ""
	}
	return " from " + vm.GetHostId()
}
