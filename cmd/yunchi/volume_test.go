package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/internal/apitest"
)

// Mistakes on the command line are usage errors (exit 2, one line),
// found before any call.
func TestVolumeUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"volume", "create", "--size", "1GiB"}, "NAME"},
		{[]string{"volume", "create", "data"}, "--size is required"},
		{[]string{"volume", "create", "data", "--size", "lots"}, `--size: unknown unit "lots"`},
		{[]string{"volume", "create", "data", "--size", "100GB"}, "decimal"},
		{[]string{"volume", "attach", "data"}, "--vm is required"},
		{[]string{"volume", "attach", "--vm", "web"}, "NAME"},
		{[]string{"volume", "detach"}, "NAME"},
		{[]string{"volume", "delete"}, "NAME"},
		{[]string{"volume", "show"}, "NAME"},
		{[]string{"volume", "frob"}, `unknown command "frob"`},
	} {
		code, stdout, stderr := yunchi(t, append([]string{"--addr", "127.0.0.1:1"}, c.args...)...)
		if code != exitUsage || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", c.args, code, stdout, stderr)
			continue
		}
		if msg := oneErrorLine(t, stderr); !strings.Contains(msg, c.msg) {
			t.Errorf("%v: %q, want %q", c.args, msg, c.msg)
		}
	}
}

// startTestAgent runs an agent for host id on a simulated host (libvirt's
// test driver) against the controller at addr; it returns the driver.
func startTestAgent(t *testing.T, addr, id string) *libvirt.Driver {
	t.Helper()
	uri, err := libvirt.WriteTestNodeXML(filepath.Join(t.TempDir(), id+".xml"), libvirt.TestNode{CPUs: 16, MemoryBytes: 64 << 30})
	if err != nil {
		t.Fatal(err)
	}
	d, err := libvirt.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	a := agent.New(agent.Config{HostID: id, Center: "a1", Controllers: []string{addr}, DiskBytes: 500 << 30,
		HeartbeatInterval: 100 * time.Millisecond, ImageDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, d)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		d.Close()
	})
	return d
}

// Against a real controller and an agent on a simulated host: create,
// attach to a running VM with --wait, list and show (also as JSON),
// refusals with their exit codes, detach and delete with --wait.
func TestVolumeCommands(t *testing.T) {
	addr, ctl, _ := startController(t)
	d := startTestAgent(t, addr, "h1")
	apitest.Eventually(t, 10*time.Second, "h1 registered", func() bool { _, ok := ctl.Node().Store.Host("h1"); return ok })
	a := func(args ...string) []string { return append([]string{"--addr", addr}, args...) }
	must := func(args ...string) string {
		t.Helper()
		code, stdout, stderr := yunchi(t, a(args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d, %q", args, code, stderr)
		}
		return stdout
	}
	must("vm", "create", "web", "--memory", "256MiB", "--disk", "1GiB", "--wait")

	out := must("volume", "create", "data", "--size", "20GiB")
	for _, want := range []string{"Name: data", "Size: 20 GiB (21474836480 bytes)", "State: available", "Host: - (placed at its first attach)", "Guest device: /dev/disk/by-id/virtio-vol-"} {
		if !strings.Contains(words(out), want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	code, stdout, stderr := yunchi(t, a("volume", "attach", "data", "--vm", "web", "--wait", "-o", "json")...)
	var v struct {
		Id, Name, Vm, HostId, State string
		SizeBytes                   string `json:"sizeBytes"`
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &v) != nil || v.State != "VOLUME_STATE_ATTACHED" || v.Vm != "web" || v.HostId != "h1" || v.SizeBytes != "21474836480" {
		t.Fatalf("attach --wait: exit %d %q %q", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "data: attached") {
		t.Errorf("no progress on stderr: %q", stderr)
	}
	vms, _ := ctl.Node().Store.VM("default", "web")
	if ids, err := d.DomainVolumes(context.Background(), vms.Id); err != nil || !slices.Equal(ids, []string{v.Id}) {
		t.Fatalf("the domain has volumes %v (%v), want %s", ids, err, v.Id)
	}
	out = must("volume", "list")
	if !strings.Contains(words(out), "NAME PROJECT SIZE STATE VM HOST CENTER AGE") || !strings.Contains(words(out), "data default 20 GiB attached web h1 a1") {
		t.Fatalf("list:\n%s", out)
	}
	var list struct {
		Volumes []struct{ Name, State string }
	}
	if json.Unmarshal([]byte(must("volume", "list", "-o", "json")), &list); len(list.Volumes) != 1 || list.Volumes[0].State != "VOLUME_STATE_ATTACHED" {
		t.Fatalf("list json: %+v", list)
	}

	// Refusals: exit codes and one line each.
	must("volume", "create", "spare", "--size", "1GiB")
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{a("volume", "create", "data", "--size", "1GiB"), exitExists, `volume "data" already exists in project "default"`},
		{a("volume", "create", "big", "--size", "10TiB"), exitNoCapacity, "no room for a volume of 10 TiB"},
		{a("volume", "create", "odd", "--size", "1000"), exitUsage, "out of range"},
		{a("volume", "create", "x", "--size", "1GiB", "--project", "nope"), exitNotFound, `project "nope" not found`},
		{a("volume", "show", "nope"), exitNotFound, `volume "nope" not found in project "default"`},
		{a("volume", "attach", "spare", "--vm", "nope"), exitNotFound, `vm "nope" not found`},
		{a("volume", "delete", "data"), exitFailed, `volume "data" is attached to vm "web": detach it first`},
		{a("volume", "detach", "spare"), exitFailed, `volume "spare" is not attached to a VM`},
	} {
		code, stdout, stderr := yunchi(t, c.args...)
		if code != c.code || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d", c.args[2:], code, stdout, stderr, c.code)
			continue
		}
		if msg := oneErrorLine(t, stderr); !strings.Contains(msg, c.msg) {
			t.Errorf("%v: %q, want %q", c.args[2:], msg, c.msg)
		}
	}

	if out := must("volume", "detach", "data", "--wait"); out != "volume data detached\n" {
		t.Fatalf("detach: %q", out)
	}
	if ids, _ := d.DomainVolumes(context.Background(), vms.Id); len(ids) != 0 {
		t.Fatalf("the domain still has %v", ids)
	}
	if out := must("volume", "delete", "data", "--wait"); out != "volume data deleted\n" {
		t.Fatalf("delete: %q", out)
	}
	if ids, _ := d.ListVolumes(context.Background()); len(ids) != 0 {
		t.Fatalf("the pool still holds %v", ids)
	}
	// Never placed: gone at once.
	if out := must("volume", "delete", "spare"); out != "volume spare deleted\n" {
		t.Fatalf("delete of an unplaced volume: %q", out)
	}
	if code, _, _ := yunchi(t, a("volume", "show", "spare")...); code != exitNotFound {
		t.Fatalf("show after delete: exit %d", code)
	}
}
