package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// yunchi runs the program in-process. Not parallel: urfave/cli keeps some
// package-level state.
func yunchi(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"yunchi"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// oneErrorLine checks stderr is exactly "yunchi: <msg>\n" with nothing of
// gRPC's own formatting in it.
func oneErrorLine(t *testing.T, stderr string) string {
	t.Helper()
	if !strings.HasPrefix(stderr, "yunchi: ") || strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Fatalf("stderr is not one 'yunchi: ' line: %q", stderr)
	}
	if strings.Contains(stderr, "rpc error") || strings.Contains(stderr, "code =") || strings.Contains(stderr, "goroutine") {
		t.Fatalf("stderr leaks gRPC/Go internals: %q", stderr)
	}
	return strings.TrimSuffix(strings.TrimPrefix(stderr, "yunchi: "), "\n")
}

func TestExitCodes(t *testing.T) {
	f := startFake(t)
	down := startFake(t)
	down.setUnavailable(true)
	dead := deadAddr(t)

	tests := []struct {
		name string
		args []string
		code int
		msg  string // exact message after "yunchi: "; "" = success
		pre  string // or a prefix of it
	}{
		{name: "ok", args: []string{"--addr", f.addr, "vm", "show", "web-1"}, code: 0},
		{name: "not found", args: []string{"--addr", f.addr, "vm", "show", "nope"}, code: 3,
			msg: `vm "nope" not found in project "default"`},
		{name: "host not found", args: []string{"--addr", f.addr, "host", "show", "zz-h99"}, code: 3,
			msg: `host "zz-h99" not found`},
		{name: "already exists", args: []string{"--addr", f.addr, "vm", "create", "taken"}, code: 4,
			msg: `vm "taken" already exists in project "default"`},
		{name: "member exists", args: []string{"--addr", f.addr, "cluster", "join", "--id", "c2", "--raft-addr", "x:1", "--api-addr", "x:2"}, code: 4,
			msg: `member "c2" already in the cluster`},
		{name: "no capacity", args: []string{"--addr", f.addr, "vm", "create", "huge", "--cpu", "64", "--memory", "512GiB"}, code: 5,
			msg: "no host has 64 vCPUs and 512 GiB memory free (best: a1-h03 with 12 vCPUs free)"},
		{name: "invalid name", args: []string{"--addr", f.addr, "vm", "create", "Web_1"}, code: 2,
			msg: `invalid name "Web_1": use lowercase letters, digits and '-'`},
		{name: "invalid size", args: []string{"--addr", f.addr, "vm", "create", "web-9", "--memory", "lots"}, code: 2,
			msg: `invalid memory "lots": want a size like 4GiB`},
		{name: "failed precondition", args: []string{"--addr", f.addr, "vm", "start", "locked"}, code: 7,
			msg: `vm "locked" is being deleted`},
		{name: "remove leader", args: []string{"--addr", f.addr, "cluster", "remove", "c1"}, code: 0},
		{name: "internal", args: []string{"--addr", f.addr, "vm", "create", "boom"}, code: 1,
			msg: "raft apply: disk full"},
		{name: "call timeout", args: []string{"--addr", f.addr, "--timeout", "200ms", "vm", "show", "hang"}, code: 1,
			msg: "no answer from " + f.addr + " within 200ms (--timeout)"},
		{name: "no leader", args: []string{"--addr", down.addr, "vm", "list"}, code: 6,
			msg: "no leader: election in progress"},
		{name: "unreachable", args: []string{"--addr", dead, "vm", "list"}, code: 6,
			msg: "no controller available: " + dead + ": connect: connection refused"},
		{name: "all unreachable", args: []string{"--addr", dead + "," + dead, "capacity"}, code: 6,
			pre: "no controller available: " + dead + ": connect: connection refused; " + dead},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := yunchi(t, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.code, stderr)
			}
			if tt.code == 0 {
				if stderr != "" || stdout == "" {
					t.Fatalf("stdout %q stderr %q", stdout, stderr)
				}
				return
			}
			got := oneErrorLine(t, stderr)
			if tt.msg != "" && got != tt.msg {
				t.Errorf("message %q, want %q", got, tt.msg)
			}
			if tt.pre != "" && !strings.HasPrefix(got, tt.pre) {
				t.Errorf("message %q, want prefix %q", got, tt.pre)
			}
			if stdout != "" {
				t.Errorf("stdout on error: %q", stdout)
			}
		})
	}
}

func TestExitCodeMapping(t *testing.T) {
	for c, want := range map[codes.Code]int{
		codes.InvalidArgument: 2, codes.NotFound: 3, codes.AlreadyExists: 4, codes.ResourceExhausted: 5,
		codes.Unavailable: 6, codes.FailedPrecondition: 7, codes.Internal: 1, codes.PermissionDenied: 9,
		codes.Unauthenticated: 8, codes.DeadlineExceeded: 1,
	} {
		if got := exitCode(status.Error(c, "x")); got != want {
			t.Errorf("%v: exit %d, want %d", c, got, want)
		}
	}
	if got := exitCode(&vmFailedError{"x"}); got != 7 {
		t.Errorf("vm failed: exit %d, want 7", got)
	}
	if got := errorMessage(status.Error(codes.NotFound, "")); got != "not found" {
		t.Errorf("empty status message: %q", got)
	}
}

// Usage errors are found before any call: the address is dead, so a call
// would exit 6 instead of 2.
func TestUsageErrors(t *testing.T) {
	dead := deadAddr(t)
	tests := []struct {
		args []string
		msg  string
	}{
		{[]string{"vm", "create"}, "vm create: missing NAME; usage: yunchi vm create NAME"},
		{[]string{"vm", "show"}, "vm show: missing NAME; usage: yunchi vm show NAME"},
		{[]string{"vm", "delete", "--wait"}, "vm delete: missing NAME; usage: yunchi vm delete NAME"},
		{[]string{"host", "show"}, "host show: missing ID; usage: yunchi host show ID"},
		{[]string{"cluster", "remove"}, "cluster remove: missing ID; usage: yunchi cluster remove ID"},
		{[]string{"vm", "show", "a", "b"}, `vm show: unexpected argument "b"; usage: yunchi vm show NAME`},
		{[]string{"vm", "list", "extra"}, `vm list: unexpected argument "extra"; usage: yunchi vm list`},
		{[]string{"vm", "create", "web-1", "--bogus"}, "vm create: unknown flag --bogus; see 'yunchi vm create --help'"},
		{[]string{"vm", "create", "web-1", "--memroy", "4GiB"}, "vm create: unknown flag --memroy (did you mean --memory?); see 'yunchi vm create --help'"},
		{[]string{"vm", "create", "web-1", "--cpu", "two"}, `vm create: invalid value "two" for flag -cpu: parse error; see 'yunchi vm create --help'`},
		{[]string{"-x", "vm", "list"}, "unknown flag -x; see 'yunchi --help'"},
		{[]string{"-o", "yaml", "vm", "list"}, `invalid --output "yaml": want table or json`},
		{[]string{"vm", "list", "--output", "xml"}, `invalid --output "xml": want table or json`},
		{[]string{"vm", "lst"}, `vm: unknown command "lst" (did you mean "list"?); see 'yunchi vm --help'`},
		{[]string{"bogus"}, `unknown command "bogus"; see 'yunchi --help'`},
		{[]string{"help", "bogus"}, "No help topic for 'bogus'"},
		{[]string{"cluster", "join", "--raft-addr", "x:1"}, "cluster join: --id is required; see 'yunchi cluster join --help'"},
		{[]string{"--addr", "nohost", "vm", "list"}, `invalid --addr "nohost": want host:port`},
		{[]string{"--addr", " , ", "vm", "list"}, "--addr: no controller address given"},
		{[]string{"vm", "create", "app", "--count", "0"}, "vm create: --count 0 is out of range: give 1 to 100"},
		{[]string{"vm", "create", "app", "--count", "101"}, "vm create: --count 101 is out of range: give 1 to 100"},
		{[]string{"vm", "create", "app", "--strategy", "random"}, `vm create: --strategy "random" is not valid: use binpack or spread`},
		{[]string{"host", "set", "h1"}, "host set: nothing to change; give --state, --label, --unlabel, --owner, --reserve-* or --*-ratio"},
		{[]string{"host", "set", "h1", "--state", "down"}, `host set: --state "down" is not valid: use ready, maintenance or draining (down is derived from heartbeats)`},
		{[]string{"host", "set", "h1", "--label", "novalue"}, `host set: --label "novalue": want key=value, e.g. cpu_model=kunpeng920`},
		{[]string{"group", "create", "g1"}, "group create: --policy is required: affinity or anti-affinity"},
		{[]string{"group", "create", "g1", "--policy", "apart"}, `group create: --policy "apart" is not valid: use affinity or anti-affinity`},
		{[]string{"group", "create", "g1", "--policy", "affinity", "--level", "row"}, `group create: --level "row" is not valid: use host, rack or center`},
		{[]string{"ratio", "set", "--cpu", "2"}, "ratio set: give --center C or --host-group G"},
		{[]string{"ratio", "set", "--center", "a1"}, "ratio set: nothing to set; give --cpu, --memory or --disk"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			args := tt.args
			if !strings.HasPrefix(strings.Join(args, " "), "--addr") {
				args = append([]string{"--addr", dead}, args...)
			}
			code, stdout, stderr := yunchi(t, args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", code, stderr)
			}
			if got := oneErrorLine(t, stderr); got != tt.msg {
				t.Errorf("message %q\n        want %q", got, tt.msg)
			}
			if stdout != "" {
				t.Errorf("stdout on usage error: %q", stdout)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	code, stdout, stderr := yunchi(t, "--help")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d stderr %q", code, stderr)
	}
	for _, want := range []string{"EXIT CODES", "5  no capacity", "6  controller unavailable", "--addr", "YUNCHI_ADDR", "YUNCHI_TOKEN"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	for _, args := range [][]string{{}, {"vm"}, {"vm", "create", "--help"}, {"vm", "create", "web-1", "-h"}, {"help", "cluster"}} {
		code, stdout, stderr := yunchi(t, args...)
		if code != 0 || stderr != "" || !strings.Contains(stdout, "USAGE") {
			t.Errorf("%v: exit %d stderr %q stdout %q", args, code, stderr, stdout)
		}
	}
}

func TestJSONOutput(t *testing.T) {
	f := startFake(t)
	tests := []struct {
		args []string
		keys []string
	}{
		{[]string{"vm", "list"}, []string{"vms"}},
		{[]string{"vm", "list", "--host", "nowhere"}, nil}, // empty list: {}
		{[]string{"vm", "show", "web-1"}, []string{"name", "phase", "memoryBytes", "hostId"}},
		{[]string{"host", "list", "--consistent"}, []string{"hosts"}},
		{[]string{"host", "show", "a1-h07"}, []string{"id", "capacity", "labels"}},
		{[]string{"capacity"}, []string{"capacity", "free", "centers"}},
		{[]string{"cluster", "status"}, []string{"leaderId", "term", "commitIndex", "appliedIndex", "members"}},
		{[]string{"cluster", "members"}, []string{"members"}},
		{[]string{"cluster", "join", "--id", "c4", "--raft-addr", "10.0.0.4:8471", "--api-addr", "10.0.0.4:8470", "--center", "a1"}, []string{"id", "apiAddress"}},
		{[]string{"cluster", "remove", "c3"}, []string{"members", "message"}},
		{[]string{"vm", "create", "web-2", "--cpu", "2", "--memory", "4GiB"}, []string{"name", "phase"}},
	}
	for _, tt := range tests {
		for _, pos := range []string{"before", "after"} {
			t.Run(strings.Join(tt.args, " ")+"/-o "+pos, func(t *testing.T) {
				var args []string
				if pos == "before" {
					args = append([]string{"--addr", f.addr, "-o", "json"}, tt.args...)
				} else {
					args = append(append([]string{}, tt.args...), "--addr", f.addr, "--output=json")
				}
				code, stdout, stderr := yunchi(t, args...)
				if code != 0 {
					t.Fatalf("exit %d: %s", code, stderr)
				}
				var m map[string]any
				if err := json.Unmarshal([]byte(stdout), &m); err != nil {
					t.Fatalf("not JSON: %v\n%s", err, stdout)
				}
				for _, k := range tt.keys {
					if _, ok := m[k]; !ok {
						t.Errorf("no %q in %s", k, stdout)
					}
				}
			})
		}
	}

	// Spot-check values: the API's JSON, enums by name, int64 as strings.
	_, stdout, _ := yunchi(t, "--addr", f.addr, "-o", "json", "vm", "show", "web-1")
	var vm map[string]any
	json.Unmarshal([]byte(stdout), &vm)
	if vm["phase"] != "VM_PHASE_RUNNING" || vm["memoryBytes"] != "4294967296" || vm["vcpus"] != 2.0 {
		t.Errorf("vm JSON: %s", stdout)
	}
	_, stdout, _ = yunchi(t, "--addr", f.addr, "-o", "json", "vm", "show", "app-3")
	var downVM struct {
		Conditions        []string `json:"conditions"`
		HostLastHeartbeat string   `json:"hostLastHeartbeat"`
	}
	json.Unmarshal([]byte(stdout), &downVM)
	if !reflect.DeepEqual(downVM.Conditions, []string{"host-down"}) || downVM.HostLastHeartbeat == "" {
		t.Errorf("vm on a down host, JSON: %s", stdout)
	}
	_, stdout, _ = yunchi(t, "--addr", f.addr, "-o", "json", "cluster", "status")
	var st struct {
		LeaderID string `json:"leaderId"`
		Members  []struct {
			ID     string `json:"id"`
			Leader bool   `json:"leader"`
		} `json:"members"`
	}
	json.Unmarshal([]byte(stdout), &st)
	if st.LeaderID != "c1" || len(st.Members) != 3 || !st.Members[0].Leader {
		t.Errorf("cluster status JSON: %s", stdout)
	}
}

func TestTableOutput(t *testing.T) {
	f := startFake(t)
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"vm", "show", "web-1"}, []string{"Name:", "web-1", "Phase:", "running", "Memory:", "4 GiB", "Disk:", "40 GiB", "Host:", "a1-h07", "Center constraint:", "any"}},
		{[]string{"vm", "list"}, []string{"NAME", "PHASE", "MEMORY", "web-1", "running", "db-1", "stopped", "4 GiB", "1h"}},
		{[]string{"vm", "list"}, []string{"app-3", "running (host down)", "b2-h01"}},
		{[]string{"vm", "show", "app-3"}, []string{"Phase:", "running (host down)", "Conditions:", "host-down", "Host:", "b2-h01 (down, last heartbeat 1h ago)"}},
		{[]string{"host", "list"}, []string{"ID", "STATE", "a1-h07", "ready", "b2-h01", "down", "tax", "242/252", "214 GiB/254 GiB"}},
		{[]string{"host", "show", "a1-h07"}, []string{"Labels:", "gpu=none,tier=gold", "Owner:", "shared", "RESOURCE", "RESERVED", "ALLOCATABLE", "RATIO FROM", "center a1", "252", "254 GiB", "4 TiB", "Domains running:", "Memory free (observed):  200 GiB", "Hypervisor:", "QEMU 7.2.0 (libvirt 9.0.0)"}},
		{[]string{"host", "show", "b2-h01"}, []string{"Domains defined:", "Memory free (observed):  not reported"}},
		{[]string{"capacity"}, []string{"CENTER", "VCPUS FREE/ALLOCATABLE", "MEMORY FREE/ALLOCATABLE", "a1", "b2", "TOTAL", "86/96", "344 GiB/384 GiB"}},
		{[]string{"cluster", "status"}, []string{"Leader:", "c1 (10.0.0.1:8470)", "Term:", "4", "Commit index:", "1207", "Applied index:", "1206", "SUFFRAGE", "nonvoter", "*"}},
		{[]string{"cluster", "members"}, []string{"ID", "CENTER", "API ADDRESS", "10.0.0.2:8470", "voter"}},
		{[]string{"cluster", "remove", "c1"}, []string{"c1 removed; it was the leader, leadership moved to c2", "c2", "10.0.0.2:8470", "*"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := yunchi(t, append([]string{"--addr", f.addr}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stdout, w) {
					t.Errorf("output lacks %q:\n%s", w, stdout)
				}
			}
		})
	}
}

func TestAddrFallback(t *testing.T) {
	t.Run("dead then live", func(t *testing.T) {
		f := startFake(t)
		code, stdout, stderr := yunchi(t, "--addr", deadAddr(t)+","+f.addr, "vm", "show", "web-1")
		if code != 0 || !strings.Contains(stdout, "web-1") {
			t.Fatalf("exit %d stdout %q stderr %q", code, stdout, stderr)
		}
	})
	t.Run("no leader then live, read", func(t *testing.T) {
		down, f := startFake(t), startFake(t)
		down.setUnavailable(true)
		code, _, stderr := yunchi(t, "--addr", down.addr+","+f.addr, "vm", "list")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		if down.callCount("ListVMs") != 1 || f.callCount("ListVMs") != 1 {
			t.Errorf("calls: down %d, live %d", down.callCount("ListVMs"), f.callCount("ListVMs"))
		}
	})
	t.Run("dead then live, create", func(t *testing.T) {
		f := startFake(t)
		code, _, stderr := yunchi(t, "--addr", deadAddr(t)+","+f.addr, "vm", "create", "web-5")
		if code != 0 || f.callCount("CreateVM") != 1 {
			t.Fatalf("exit %d calls %d: %s", code, f.callCount("CreateVM"), stderr)
		}
	})
	t.Run("create is sent again with its key", func(t *testing.T) {
		// A connected controller answered Unavailable: it may have been
		// a connection that broke after the request left, so the resend
		// carries the same idempotency key and cannot create twice.
		down, f := startFake(t), startFake(t)
		down.setUnavailable(true)
		code, _, stderr := yunchi(t, "--addr", down.addr+","+f.addr, "vm", "create", "web-6")
		if code != 0 || f.callCount("CreateVM") != 1 {
			t.Fatalf("exit %d, second controller got %d creates: %s", code, f.callCount("CreateVM"), stderr)
		}
		down.mu.Lock()
		f.mu.Lock()
		defer down.mu.Unlock()
		defer f.mu.Unlock()
		if len(down.keys) != 1 || len(f.keys) != 1 || f.keys[0] == "" || down.keys[0] != f.keys[0] {
			t.Errorf("keys: first send %q, resend %q; want the same key", down.keys, f.keys)
		}
	})
	t.Run("env", func(t *testing.T) {
		f := startFake(t)
		t.Setenv("YUNCHI_ADDR", deadAddr(t)+", "+f.addr)
		if code, _, stderr := yunchi(t, "capacity"); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
	})
}

func TestToken(t *testing.T) {
	f := startFake(t)
	f.script("web-1", ev(cannedVM("web-1", yunchiv1.VMPhase_VM_PHASE_RUNNING, "a1-h07", 13)))

	// unary and streaming calls both carry the token
	if code, _, stderr := yunchi(t, "--addr", f.addr, "--token", "s3cret", "vm", "start", "web-1", "--wait"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	t.Setenv("YUNCHI_TOKEN", "from-env")
	if code, _, stderr := yunchi(t, "--addr", f.addr, "vm", "list"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	t.Setenv("YUNCHI_TOKEN", "")
	if code, _, stderr := yunchi(t, "--addr", f.addr, "vm", "list"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	f.mu.Lock()
	got := f.auth
	f.mu.Unlock()
	want := []string{"Bearer s3cret", "Bearer s3cret", "Bearer from-env", ""}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("authorization metadata %q, want %q", got, want)
	}
}

func TestWait(t *testing.T) {
	const (
		pending  = yunchiv1.VMPhase_VM_PHASE_PENDING
		running  = yunchiv1.VMPhase_VM_PHASE_RUNNING
		stopped  = yunchiv1.VMPhase_VM_PHASE_STOPPED
		failed   = yunchiv1.VMPhase_VM_PHASE_FAILED
		deleting = yunchiv1.VMPhase_VM_PHASE_DELETING
	)
	withMsg := func(vm *yunchiv1.VM, msg string) *yunchiv1.VM { vm.Message = msg; return vm }
	withDesired := func(vm *yunchiv1.VM, d yunchiv1.PowerState) *yunchiv1.VM { vm.Desired = d; return vm }

	t.Run("create until running", func(t *testing.T) {
		f := startFake(t)
		f.script("web-7",
			ev(cannedVM("web-7", pending, "", 10)),
			ev(cannedVM("web-7", pending, "a1-h07", 11)),
			ev(cannedVM("web-7", pending, "a1-h07", 12)), // no visible change: no line
			ev(cannedVM("web-7", running, "a1-h07", 13)),
		)
		code, stdout, stderr := yunchi(t, "--addr", f.addr, "vm", "create", "web-7", "--cpu", "2", "--memory", "4GiB", "--wait")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		want := "web-7: waiting for placement…\nweb-7: placed on a1-h07, starting…\nweb-7: running on a1-h07 (center a1)\n"
		if stderr != want {
			t.Errorf("progress:\n%s\nwant:\n%s", stderr, want)
		}
		if !strings.Contains(stdout, "running") || !strings.Contains(stdout, "a1-h07") {
			t.Errorf("stdout: %s", stdout)
		}
	})
	t.Run("create fails", func(t *testing.T) {
		f := startFake(t)
		f.script("web-8",
			ev(cannedVM("web-8", pending, "a1-h07", 11)),
			ev(withMsg(cannedVM("web-8", failed, "a1-h07", 12), "libvirt: cannot allocate memory")),
		)
		code, stdout, stderr := yunchi(t, "--addr", f.addr, "vm", "create", "web-8", "--wait")
		if code != 7 {
			t.Fatalf("exit %d, want 7: %s", code, stderr)
		}
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		if last := lines[len(lines)-1]; last != "yunchi: web-8 failed on a1-h07: libvirt: cannot allocate memory" {
			t.Errorf("last line %q", last)
		}
		if stdout != "" {
			t.Errorf("stdout %q", stdout)
		}
	})
	t.Run("create stopped, json", func(t *testing.T) {
		f := startFake(t)
		f.script("web-9",
			ev(withDesired(cannedVM("web-9", pending, "a1-h07", 11), yunchiv1.PowerState_POWER_STATE_STOPPED)),
			ev(withDesired(cannedVM("web-9", stopped, "a1-h07", 12), yunchiv1.PowerState_POWER_STATE_STOPPED)),
		)
		code, stdout, stderr := yunchi(t, "--addr", f.addr, "-o", "json", "vm", "create", "web-9", "--stopped", "--wait")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var vm map[string]any
		if err := json.Unmarshal([]byte(stdout), &vm); err != nil || vm["phase"] != "VM_PHASE_STOPPED" {
			t.Errorf("stdout %s (%v)", stdout, err)
		}
		if !strings.Contains(stderr, "web-9: stopped on a1-h07 (center a1)") {
			t.Errorf("progress %q", stderr)
		}
	})
	t.Run("start clears an old failure", func(t *testing.T) {
		f := startFake(t)
		old := withMsg(cannedVM("old", failed, "a1-h07", 20), "out of memory")
		f.setAction("old", old)
		f.script("old",
			ev(old), // the failure the start is meant to clear
			ev(cannedVM("old", pending, "a1-h07", 21)),
			ev(cannedVM("old", running, "a1-h07", 22)),
		)
		code, _, stderr := yunchi(t, "--addr", f.addr, "vm", "start", "old", "--wait")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
	})
	t.Run("stop", func(t *testing.T) {
		f := startFake(t)
		stopping := withDesired(cannedVM("web-1", running, "a1-h07", 13), yunchiv1.PowerState_POWER_STATE_STOPPED)
		f.setAction("web-1", stopping)
		f.script("web-1", ev(stopping), ev(withDesired(cannedVM("web-1", stopped, "a1-h07", 14), yunchiv1.PowerState_POWER_STATE_STOPPED)))
		code, _, stderr := yunchi(t, "--addr", f.addr, "vm", "stop", "web-1", "--wait")
		if code != 0 || stderr != "web-1: running on a1-h07, stopping…\nweb-1: stopped on a1-h07 (center a1)\n" {
			t.Fatalf("exit %d: %q", code, stderr)
		}
	})
	t.Run("reboot waits for a later change", func(t *testing.T) {
		f := startFake(t)
		f.setAction("web-1", cannedVM("web-1", running, "a1-h07", 13))
		f.script("web-1", ev(cannedVM("web-1", running, "a1-h07", 13)), ev(cannedVM("web-1", running, "a1-h07", 14)))
		code, _, stderr := yunchi(t, "--addr", f.addr, "vm", "reboot", "web-1", "--wait")
		if code != 0 || stderr != "web-1: rebooting on a1-h07…\nweb-1: running on a1-h07 (center a1)\n" {
			t.Fatalf("exit %d: %q", code, stderr)
		}
	})
	t.Run("delete until gone", func(t *testing.T) {
		f := startFake(t)
		del := withDesired(cannedVM("web-1", deleting, "a1-h07", 13), yunchiv1.PowerState_POWER_STATE_DELETED)
		f.setAction("web-1", del)
		f.script("web-1", ev(del), &yunchiv1.VMEvent{Vm: del, Gone: true})
		code, stdout, stderr := yunchi(t, "--addr", f.addr, "vm", "delete", "web-1", "--wait")
		if code != 0 || stderr != "web-1: deleting from a1-h07…\nweb-1: deleted\n" || stdout != "vm web-1 deleted\n" {
			t.Fatalf("exit %d: stdout %q stderr %q", code, stdout, stderr)
		}
	})
	t.Run("delete, already gone", func(t *testing.T) {
		f := startFake(t) // no watch script: WatchVM answers NotFound
		f.setAction("db-1", withDesired(cannedVM("db-1", deleting, "a1-h02", 8), yunchiv1.PowerState_POWER_STATE_DELETED))
		code, _, stderr := yunchi(t, "--addr", f.addr, "vm", "delete", "db-1", "--wait")
		if code != 0 || stderr != "db-1: deleted\n" {
			t.Fatalf("exit %d: %q", code, stderr)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		f := startFake(t)
		f.script("slow", ev(cannedVM("slow", pending, "a1-h07", 11)))
		code, _, stderr := yunchi(t, "--addr", f.addr, "vm", "create", "slow", "--wait", "--wait-timeout", "300ms")
		if code != 1 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		want := "yunchi: timed out after 300ms waiting for slow to be running on a1-h07 (last seen: placed on a1-h07, starting…); it may still get there, see 'yunchi vm show slow'"
		if len(lines) != 2 || lines[1] != want {
			t.Errorf("stderr %q", stderr)
		}
	})
	// A VM whose host is down: nothing happens until the host is back, and
	// its phase is the host's last report. The wait says so at once (exit
	// 7, the request stands) instead of running out its timeout.
	t.Run("host down", func(t *testing.T) {
		const downMsg = "a1-h07 is down (last heartbeat 1h ago): web-1 will be %s when a1-h07 is back; not waiting (the request stands, see 'yunchi vm show web-1' and 'yunchi host show a1-h07')"
		deleting := withDesired(cannedVM("web-1", deleting, "a1-h07", 13), yunchiv1.PowerState_POWER_STATE_DELETED)
		stopping := withDesired(cannedVM("web-1", running, "a1-h07", 13), yunchiv1.PowerState_POWER_STATE_STOPPED)
		down := func(vm *yunchiv1.VM) *yunchiv1.VM {
			vm = onDownHost(proto.Clone(vm).(*yunchiv1.VM))
			vm.HostCenter = "a1"
			return vm
		}
		for _, tt := range []struct {
			name   string
			args   []string
			action *yunchiv1.VM
			events []*yunchiv1.VMEvent
			want   string // stderr
		}{
			{"delete", []string{"vm", "delete", "web-1"}, down(deleting), []*yunchiv1.VMEvent{ev(down(deleting))},
				"web-1: deleting from a1-h07… (host down)\nyunchi: " + fmt.Sprintf(downMsg, "deleted") + "\n"},
			{"stop, the host goes down meanwhile", []string{"vm", "stop", "web-1"}, stopping, []*yunchiv1.VMEvent{ev(stopping), ev(down(stopping))},
				"web-1: running on a1-h07, stopping…\nweb-1: running on a1-h07, stopping… (host down)\nyunchi: " + fmt.Sprintf(downMsg, "stopped") + "\n"},
			// The last report says running, but nobody can vouch for it now.
			{"start, last reported running", []string{"vm", "start", "web-1"}, down(cannedVM("web-1", running, "a1-h07", 13)),
				[]*yunchiv1.VMEvent{ev(down(cannedVM("web-1", running, "a1-h07", 13)))},
				"web-1: running on a1-h07 (host down)\nyunchi: " + fmt.Sprintf(downMsg, "running") + "\n"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				f := startFake(t)
				f.setAction("web-1", tt.action)
				f.script("web-1", tt.events...)
				// The script leaves the watch open: only the host-down
				// answer ends the wait before the (long) timeout.
				code, stdout, stderr := yunchi(t, append([]string{"--addr", f.addr}, append(tt.args, "--wait", "--wait-timeout", "30s")...)...)
				if code != 7 || stderr != tt.want || stdout != "" {
					t.Fatalf("exit %d\nstdout %q\nstderr %q\nwant   %q", code, stdout, stderr, tt.want)
				}
			})
		}
	})
	t.Run("watch moves to the next controller", func(t *testing.T) {
		a, b := startFake(t), startFake(t)
		a.script("web-3", ev(cannedVM("web-3", pending, "a1-h07", 11)))
		a.setWatchErr("web-3", status.Error(codes.Unavailable, "controller shutting down"))
		b.script("web-3", ev(cannedVM("web-3", pending, "a1-h07", 11)), ev(cannedVM("web-3", running, "a1-h07", 12)))
		code, _, stderr := yunchi(t, "--addr", a.addr+","+b.addr, "vm", "create", "web-3", "--wait")
		if code != 0 || stderr != "web-3: placed on a1-h07, starting…\nweb-3: running on a1-h07 (center a1)\n" {
			t.Fatalf("exit %d: %q", code, stderr)
		}
	})
}

func TestReorderArgs(t *testing.T) {
	app := newApp(nil, nil)
	tests := []struct{ in, want string }{
		{"vm create web-1 --cpu 2 --memory 4GiB --wait", "vm create --cpu 2 --memory 4GiB --wait web-1"},
		{"vm list -o json", "-o json vm list"},
		{"vm show web-1 --addr=a:1 -p prod", "--addr=a:1 vm show -p prod web-1"},
		{"--addr a:1 vm show web-1 --consistent", "--addr a:1 vm show --consistent web-1"},
		{"vm show -- -odd", "vm show -- -odd"},
		{"vm show web-1 -- -odd", "vm show -- web-1 -odd"},
		{"help vm create", "help vm create"},
		{"vm bogus --x", "vm bogus --x"},
		{"cluster remove c3 --bogus", "cluster remove --bogus c3"},
	}
	for _, tt := range tests {
		got := strings.Join(reorderArgs(app, append([]string{"yunchi"}, strings.Fields(tt.in)...))[1:], " ")
		if got != tt.want {
			t.Errorf("%q -> %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestBytesize: sizes in tables are scheduler.FormatBytes, the form the
// controller's placement explanations use too.
func TestBytesize(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 512: "512 B", 1 << 10: "1 KiB", 4 << 30: "4 GiB", 1536 << 20: "1.5 GiB",
		1 << 40: "1 TiB", 3<<30 + 1: "3 GiB", 2684354560: "2.5 GiB", -(2 << 30): "-2 GiB",
	} {
		if got := scheduler.FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// The CLI must build without cgo: admins copy one static binary around.
func TestBuildsWithoutCgo(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not on PATH; cannot check CGO_ENABLED=0 build")
	}
	cmd := exec.Command(gobin, "build", "-o", filepath.Join(t.TempDir(), "yunchi"), ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build ./cmd/yunchi: %v\n%s", err, out)
	}
}
