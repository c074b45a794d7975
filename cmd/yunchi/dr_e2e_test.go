package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/internal/apitest"
)

// startCenterAgent is startTestAgent for a host of the given center, whose
// VM disks are real files (so that backups have bytes to copy).
func startCenterAgent(t *testing.T, addr, id, center string) *libvirt.Driver {
	t.Helper()
	uri, err := libvirt.WriteTestNodeXML(filepath.Join(t.TempDir(), id+".xml"), libvirt.TestNode{CPUs: 16, MemoryBytes: 64 << 30})
	if err != nil {
		t.Fatal(err)
	}
	d, err := libvirt.OpenWithOptions(uri, libvirt.Options{DiskDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	a := agent.New(agent.Config{HostID: id, Center: center, Controllers: []string{addr}, DiskBytes: 500 << 30,
		HeartbeatInterval: 100 * time.Millisecond, ImageDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, d)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		d.Close()
	})
	return d
}

func writeAt(t *testing.T, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// checkDisk checks that the file at path is size bytes: prefix, then
// zeros. The disk is large and mostly a hole: only its data regions are
// read (SEEK_DATA, SEEK_HOLE).
func checkDisk(t *testing.T, path string, size int64, prefix []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Size() != size {
		t.Fatalf("%s: %v, want %d bytes (%v)", path, st.Size(), size, err)
	}
	got := make([]byte, len(prefix))
	if _, err := io.ReadFull(f, got); err != nil || !bytes.Equal(got, prefix) {
		t.Fatalf("%s: the first %d bytes differ (%v)", path, len(prefix), err)
	}
	buf, zeros := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(len(prefix)); off < size; {
		data, err := f.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			return // a hole to the end
		} else if err != nil {
			t.Fatal(err)
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Seek(data, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		for off = data; off < hole; {
			n, err := f.Read(buf[:min(int64(len(buf)), hole-off)])
			if !bytes.Equal(buf[:n], zeros[:n]) {
				t.Fatalf("%s: bytes %d-%d are not all 0", path, off, off+int64(n))
			}
			off += int64(n)
			if err != nil {
				t.Fatal(err)
			}
		}
	}
}

// lseek's whence for the next data and the next hole (Linux).
const seekData, seekHole = 3, 4

// Against a real controller (c1, in center a1, keeping a1's repository
// in its data directory)
// and agents on simulated hosts in three centers: declare the centers,
// read the topology, make and attach policies, back a VM up to a1 and
// restore it into a2, verify and collect a1's repository, and the
// refusals with their exit codes. Needs the controller's DR handlers and
// the agents' backups.
func TestDRAgainstController(t *testing.T) {
	addr, ctl, _ := startController(t)
	drivers := map[string]*libvirt.Driver{}
	for _, h := range []struct{ id, center string }{{"a1-h1", "a1"}, {"a2-h1", "a2"}, {"b1-h1", "b1"}} {
		drivers[h.center] = startCenterAgent(t, addr, h.id, h.center)
	}
	apitest.Eventually(t, 10*time.Second, "hosts registered", func() bool {
		for _, id := range []string{"a1-h1", "a2-h1", "b1-h1"} {
			if _, ok := ctl.Node().Store.Host(id); !ok {
				return false
			}
		}
		return true
	})
	a := func(args ...string) []string { return append([]string{"--addr", addr}, args...) }
	must := func(args ...string) string {
		t.Helper()
		code, stdout, stderr := yunchi(t, a(args...)...)
		if strings.Contains(stderr, "unknown service") || strings.Contains(stderr, "not implemented") {
			t.Fatalf("%v: not implemented yet (controller or agent): %s", args, stderr)
		}
		if code != 0 {
			t.Fatalf("%v: exit %d, %q", args, code, stderr)
		}
		return stdout
	}
	has := func(what, out string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(words(out), w) {
				t.Errorf("%s lacks %q:\n%s", what, w, out)
			}
		}
	}

	// Before any is declared: the hosts' centers, undeclared.
	has("topology", must("topology"), "a1 - undeclared 尚未声明 1/1", "a2 - undeclared", "b1 - undeclared", "WARNING:")
	must("center", "set", "a1", "--site", "shanghai", "--role", "production", "--repository", "c1", "--description", "main hall")
	must("center", "set", "a2", "--site", "shanghai", "--role", "same-city-dr")
	has("center set", must("center", "set", "b1", "--site", "hangzhou", "--role", "异地灾备"), "Role: remote-dr (异地灾备)", "Repository: none")
	out := must("topology")
	has("topology", out,
		"hangzhou b1 1/1 0", "shanghai a1, a2 2/2 1",
		"a1 shanghai production 生产中心 1/1 0/", "a2 shanghai same-city-dr 同城灾备 1/1", "b1 hangzhou remote-dr 异地灾备 1/1",
		"a1 c1", "a2 none", "b1 none")
	if !regexp.MustCompile(`a1 shanghai production 生产中心 1/1 0/\d+ .* c1`).MatchString(words(out)) {
		t.Errorf("a1's voter c1 not shown:\n%s", out)
	}

	// Policies: the built-in ones, a custom one to a1 (c1 keeps its
	// repository), attached to a VM.
	has("policy list", must("policy", "list"), "gold yes same-city-dr/1m, remote-dr/1h 1m", "silver yes", "bronze yes remote-dr/1d")
	has("policy create", must("policy", "create", "local", "--target", "a1:1m:keep-last=3", "--rto", "1h", "--level", "3"),
		"Name: local", "Built in: no", "RPO: 1m", "RTO: 1h", "Level: 3 (GB/T 20988)", "center a1 1m 1m last 3")
	must("vm", "create", "web", "--memory", "256MiB", "--disk", "1GiB", "--center", "a1", "--wait")
	// Known data, before the leader may back web up by its policy.
	vm, _ := ctl.Node().Store.VM("default", "web")
	disk, ok := drivers["a1"].SimDiskPath(vm.Id)
	if !ok {
		t.Fatalf("web's disk file is not on a1-h1")
	}
	first := bytes.Repeat([]byte("yunchi: two sites three centers\n"), 256<<10) // 8 MiB
	writeAt(t, disk, first, 0)
	if out := must("vm", "protect", "web", "--policy", "local"); out != "vm web protected by local\n" {
		t.Errorf("vm protect: %q", out)
	}
	must("dept", "create", "finance")
	must("project", "create", "tax", "--dept", "finance")
	if out := must("project", "protect", "tax", "--policy", "silver"); !strings.HasPrefix(out, "project tax protected by silver") {
		t.Errorf("project protect: %q", out)
	}
	has("policy list", must("policy", "list"), "local no a1/1m 1m 1h 3 1 0", "silver yes same-city-dr/4h, remote-dr/1d 4h 4h 4 0 1")
	has("dr status", must("dr", "status", "--vm", "web"), "web default local a1")

	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{a("center", "set", "a2", "--site", "shanghai", "--role", "same-city-dr", "--repository", "c1"), exitUsage, `"c1" is in center "a1", not "a2"`},
		{a("center", "delete", "a2"), exitFailed, `center "a2" still has hosts`},
		{a("center", "delete", "zz"), exitNotFound, `center "zz" not found`},
		{a("policy", "create", "gold", "--target", "a1:1h:keep-last=1"), exitExists, `policy "gold" is built in`},
		{a("policy", "create", "far", "--target", "zz:1h:keep-last=1"), exitNotFound, `center "zz" is not declared`},
		{a("policy", "delete", "local"), exitFailed, "local"},
		{a("vm", "protect", "nope", "--policy", "gold"), exitNotFound, `vm "nope" not found`},
		{a("vm", "protect", "web", "--policy", "diamond"), exitNotFound, "diamond"},
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

	// Backups now, to a1: the known data, then one chunk of it changed;
	// the first point restored into a2 has the first data.
	out = must("backup", "run", "web", "--center", "a1", "--wait", "--wait-timeout", "2m")
	has("backup run", out, "ID CENTER TAKEN SIZE NEW BYTES KIND CHUNKS READ/TOTAL", " a1 ", "1 GiB")
	id := regexp.MustCompile(`rp-[0-9a-f]{16}`).FindString(out)
	if id == "" {
		t.Fatalf("no point id in:\n%s", out)
	}
	checkDisk(t, disk, 1<<30, first)                           // what the first point holds
	writeAt(t, disk, bytes.Repeat([]byte{0xa5}, 4<<20), 4<<20) // the second chunk
	out = must("backup", "run", "web", "--center", "a1", "--wait", "--wait-timeout", "2m")
	has("second backup", out, " a1 ", "1 GiB 4 MiB")
	has("backup list", must("backup", "list", "web", "--center", "a1"), id+" a1", "/256")
	has("dr status", must("dr", "status", "--vm", "web"), "web default local a1", " ok")
	out = must("backup", "restore", "web", "--point", id, "--center", "a2", "--as", "web-back", "--wait")
	has("backup restore", out, "Name: web-back", "Phase: running", "Host center: a2")
	back, _ := ctl.Node().Store.VM("default", "web-back")
	restored, ok := drivers["a2"].SimDiskPath(back.Id)
	if !ok {
		t.Fatalf("web-back's disk file is not on a2-h1")
	}
	checkDisk(t, restored, 1<<30, first)

	has("backup verify", must("backup", "verify", "--center", "a1"), "Center: a1", "Damaged: none")
	has("backup gc", must("backup", "gc", "--center", "a1"), "center a1:", "removed")

	// Detached, the policy can go.
	must("vm", "protect", "web", "--none")
	if out := must("policy", "delete", "local"); out != "policy local deleted\n" {
		t.Errorf("policy delete: %q", out)
	}
}
