package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// busyVM is a running VM with the usage the leader answers for it.
func busyVM(f *fakeController) {
	vm := cannedVM("busy-1", yunchiv1.VMPhase_VM_PHASE_RUNNING, "a1-h07", 3)
	vm.Usage = &yunchiv1.VMUsage{
		CpuTimeNs: uint64(75*time.Minute + 4*time.Second + 300*time.Millisecond), MemoryBytes: 4 << 30, MemoryUnusedBytes: 1536 << 20,
		DiskReadBytes: 5 << 20, DiskWriteBytes: 7 << 30, NetRxBytes: 1000, NetTxBytes: 3 << 10,
		MeasuredAt: timestamppb.New(time.Now().Add(-3 * time.Second)),
	}
	f.mu.Lock()
	f.vms["busy-1"] = vm
	f.mu.Unlock()
}

// vm show prints a guest's usage beside what it was allocated, and when it
// was measured; a VM without usage (stopped, or answered by a follower)
// shows its allocation alone.
func TestVMShowUsage(t *testing.T) {
	f := startFake(t)
	busyVM(f)
	code, out, stderr := yunchi(t, "--addr", f.addr, "vm", "show", "busy-1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"vCPUs:", "2 (CPU time used: 1h15m4s)",
		"Memory:", "4 GiB (guest has 4 GiB, 1.5 GiB of it unused)",
		"Disk:", "40 GiB (read 5 MiB, written 7 GiB)",
		"Network:", "received 1000 B, sent 3 KiB",
		"Usage measured:", "(3s ago)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("vm show lacks %q:\n%s", want, out)
		}
	}

	_, out, _ = yunchi(t, "--addr", f.addr, "vm", "show", "web-1")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "Memory:") && strings.TrimSpace(strings.TrimPrefix(line, "Memory:")) != "4 GiB" ||
			strings.HasPrefix(line, "Network:") || strings.HasPrefix(line, "Usage measured:") || strings.Contains(line, "CPU time") {
			t.Errorf("VM without usage: %q", line)
		}
	}
}

// -o json carries the usage as the API gives it.
func TestVMShowUsageJSON(t *testing.T) {
	f := startFake(t)
	busyVM(f)
	code, out, stderr := yunchi(t, "--addr", f.addr, "-o", "json", "vm", "show", "busy-1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var vm struct {
		Usage map[string]any `json:"usage"`
	}
	if err := json.Unmarshal([]byte(out), &vm); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for k, want := range map[string]string{"cpuTimeNs": "4504300000000", "memoryBytes": "4294967296",
		"memoryUnusedBytes": "1610612736", "diskReadBytes": "5242880", "diskWriteBytes": "7516192768",
		"netRxBytes": "1000", "netTxBytes": "3072"} {
		if vm.Usage[k] != want {
			t.Errorf("usage.%s = %v, want %s in %s", k, vm.Usage[k], want, out)
		}
	}
	if _, ok := vm.Usage["measuredAt"]; !ok {
		t.Errorf("no usage.measuredAt in %s", out)
	}
}

// host show prints the observed free memory beside what is in use and
// what is allocated to VMs.
func TestHostShowMemoryUse(t *testing.T) {
	f := startFake(t)
	_, out, _ := yunchi(t, "--addr", f.addr, "host", "show", "a1-h07")
	if want := "Memory free (observed):  200 GiB (in use 56 GiB of 256 GiB; allocated to VMs 40 GiB)"; !strings.Contains(out, want) {
		t.Errorf("host show lacks %q:\n%s", want, out)
	}
	_, out, _ = yunchi(t, "--addr", f.addr, "host", "show", "b2-h01")
	if want := "Memory free (observed):  not reported\n"; !strings.Contains(out, want) {
		t.Errorf("host show lacks %q:\n%s", want, out)
	}
}
