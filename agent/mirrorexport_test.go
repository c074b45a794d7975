package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/internal/nbd"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// freePortRange returns n consecutive loopback ports that are free now.
func freePortRange(t *testing.T, n int) (int, int) {
	t.Helper()
	for try := 0; try < 50; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		base := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if base+n > 65535 {
			continue
		}
		ok := true
		for p := base; p < base+n && ok; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				continue
			}
			l.Close()
		}
		if ok {
			return base, base + n - 1
		}
	}
	t.Fatal("no free port range")
	return 0, 0
}

// mirrorExports makes a MirrorExports on loopback with n ports, stopped
// at cleanup.
func mirrorExports(t *testing.T, dir string, n int) (*agent.MirrorExports, agent.MirrorExportConfig) {
	t.Helper()
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("mirror exports need qemu-nbd and qemu-io (apt-get install qemu-utils)")
	}
	lo, hi := freePortRange(t, n)
	cfg := agent.MirrorExportConfig{Dir: dir, Host: "127.0.0.1", PortMin: lo, PortMax: hi}
	m, err := agent.NewMirrorExports(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, cfg
}

// nbdWrite writes pattern at off through the export, as an NBD client
// (qemu-io, the same block layer the source's QEMU uses).
func nbdWrite(t *testing.T, addr, export string, pattern byte, off, n int64) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("qemu-io", "--image-opts", "-c", fmt.Sprintf("write -P %d %d %d", pattern, off, n),
		fmt.Sprintf("driver=nbd,server.type=inet,server.host=%s,server.port=%s,export=%s", host, port, export)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "wrote") {
		t.Fatalf("qemu-io write to %s: %v: %s", addr, err, out)
	}
}

func statusOf(t *testing.T, m *agent.MirrorExports, vmID string) agent.MirrorExportStatus {
	t.Helper()
	for _, s := range m.Status() {
		if s.VMID == vmID {
			return s
		}
	}
	t.Fatalf("no export of %s in %+v", vmID, m.Status())
	return agent.MirrorExportStatus{}
}

func refused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return true
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

func readAt(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// An export is a sparse raw file of its size served writable over NBD
// under its name; what a client writes is in the file; Takeover stops the
// server (by its pid) and hands over the file with the writes, which is
// then not served again; Remove deletes it.
func TestMirrorExportServeTakeoverRemove(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	m, _ := mirrorExports(t, dir, 4)
	exp := &yunchiv1.MirrorExport{VmId: "vm-1", ExportName: "mirror-vm-1", SizeBytes: 64 << 20, SourceHost: "h1"}
	if err := m.Apply(ctx, []*yunchiv1.MirrorExport{exp}); err != nil {
		t.Fatal(err)
	}
	st := statusOf(t, m, "vm-1")
	if !st.Serving || !alive(st.Pid) || st.SizeBytes != 64<<20 || st.Path != filepath.Join(dir, "vm-1.raw") {
		t.Fatalf("status %+v", st)
	}
	if addr, ok := m.Address("vm-1"); !ok || addr != st.Address {
		t.Fatalf("address %q %v, status says %q", addr, ok, st.Address)
	}
	var fst syscall.Stat_t
	if err := syscall.Stat(st.Path, &fst); err != nil || fst.Size != 64<<20 || fst.Blocks != 0 {
		t.Fatalf("export file: size %d, %d blocks, %v: want a sparse 64 MiB file", fst.Size, fst.Blocks, err)
	}
	// Its NBD export: the size, writable, one client at a time.
	c, err := nbd.Dial(ctx, "tcp", st.Address, nbd.Options{Export: "mirror-vm-1"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != 64<<20 || c.ReadOnly() {
		t.Errorf("export size %d, read-only %v", c.Size(), c.ReadOnly())
	}
	c.Close()
	if _, err := nbd.Dial(ctx, "tcp", st.Address, nbd.Options{Export: "other"}); err == nil {
		t.Error("an export of another name was served")
	}
	// Applying the same list again changes nothing.
	if err := m.Apply(ctx, []*yunchiv1.MirrorExport{exp}); err != nil {
		t.Fatal(err)
	}
	if again := statusOf(t, m, "vm-1"); again.Pid != st.Pid || again.Restarts != 0 {
		t.Fatalf("a second Apply restarted the server: %+v then %+v", st, again)
	}

	nbdWrite(t, st.Address, "mirror-vm-1", 0xab, 1<<20, 64<<10)
	nbdWrite(t, st.Address, "mirror-vm-1", 0xcd, 64<<20-4096, 4096)

	path, err := m.Takeover("vm-1")
	if err != nil || path != st.Path {
		t.Fatalf("takeover: %q, %v", path, err)
	}
	if alive(st.Pid) || !refused(st.Address) {
		t.Fatalf("qemu-nbd (pid %d) still running or %s still listening after takeover", st.Pid, st.Address)
	}
	if got := readAt(t, path, 1<<20, 64<<10); !bytes.Equal(got, bytes.Repeat([]byte{0xab}, 64<<10)) {
		t.Error("the taken-over file lacks the first write")
	}
	if got := readAt(t, path, 64<<20-4096, 4096); !bytes.Equal(got, bytes.Repeat([]byte{0xcd}, 4096)) {
		t.Error("the taken-over file lacks the last write")
	}
	if got := readAt(t, path, 0, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Error("an unwritten block is not zero")
	}
	if again, err := m.Takeover("vm-1"); err != nil || again != path {
		t.Errorf("second takeover: %q, %v", again, err)
	}
	// Still listed (the leader has not caught up): not served again.
	err = m.Apply(ctx, []*yunchiv1.MirrorExport{exp})
	if err == nil || !strings.Contains(err.Error(), "taken over") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("apply after takeover: %v", err)
	}
	if st := statusOf(t, m, "vm-1"); st.Serving || !st.TakenOver || !refused(st.Address) {
		t.Fatalf("after takeover: %+v", st)
	}
	if err := m.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove("vm-1"); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("files left after remove: %v", ents)
	}
	if _, err := m.Takeover("vm-1"); err == nil || !strings.Contains(err.Error(), "no mirror") {
		t.Errorf("takeover of a removed export: %v", err)
	}
}

// A qemu-nbd that dies is started again on the same port, serving the
// same file; writes acknowledged before it died are in the file.
func TestMirrorExportRestartsDeadServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, _ := mirrorExports(t, t.TempDir(), 2)
	if err := m.Apply(ctx, []*yunchiv1.MirrorExport{{VmId: "vm-2", ExportName: "e2", SizeBytes: 16 << 20}}); err != nil {
		t.Fatal(err)
	}
	st := statusOf(t, m, "vm-2")
	nbdWrite(t, st.Address, "e2", 0x11, 0, 4096)
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	var now agent.MirrorExportStatus
	for {
		now = statusOf(t, m, "vm-2")
		if now.Pid != 0 && now.Pid != st.Pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-nbd not started again: %+v", now)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if now.Address != st.Address || now.Restarts != 1 || !strings.Contains(now.LastError, "exited") {
		t.Fatalf("after the restart: %+v (before: %+v)", now, st)
	}
	nbdWrite(t, now.Address, "e2", 0x22, 4096, 4096)
	if got := readAt(t, now.Path, 0, 8192); !bytes.Equal(got, append(bytes.Repeat([]byte{0x11}, 4096), bytes.Repeat([]byte{0x22}, 4096)...)) {
		t.Error("the file lacks a write from before or after the restart")
	}
}

// An export no longer listed is stopped and its file kept; an agent
// restarted (a new MirrorExports on the same dir) serves the kept file on
// the same port with its bytes; Remove refuses a served export.
func TestMirrorExportUnlistedAndRestartedAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	m, cfg := mirrorExports(t, dir, 4)
	a := &yunchiv1.MirrorExport{VmId: "a", ExportName: "ea", SizeBytes: 8 << 20}
	b := &yunchiv1.MirrorExport{VmId: "b", ExportName: "eb", SizeBytes: 8 << 20}
	if err := m.Apply(ctx, []*yunchiv1.MirrorExport{a, b}); err != nil {
		t.Fatal(err)
	}
	sa, sb := statusOf(t, m, "a"), statusOf(t, m, "b")
	if sa.Address == sb.Address {
		t.Fatalf("two exports on one address %s", sa.Address)
	}
	nbdWrite(t, sa.Address, "ea", 0x5a, 0, 4096)
	if err := m.Remove("a"); err == nil || !strings.Contains(err.Error(), "still served") {
		t.Fatalf("remove of a served export: %v", err)
	}
	if err := m.Apply(ctx, []*yunchiv1.MirrorExport{b}); err != nil {
		t.Fatal(err)
	}
	if now := statusOf(t, m, "a"); now.Serving || alive(sa.Pid) || !refused(sa.Address) {
		t.Fatalf("unlisted export still served: %+v", now)
	}
	if _, err := os.Stat(sa.Path); err != nil {
		t.Fatalf("unlisted export's file: %v", err)
	}
	if now := statusOf(t, m, "b"); now.Pid != sb.Pid {
		t.Fatalf("the listed export was restarted: %+v", now)
	}

	// The agent restarts.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if !refused(sb.Address) {
		t.Fatal("Close left a server listening")
	}
	if err := m.Apply(ctx, []*yunchiv1.MirrorExport{b}); err == nil {
		t.Fatal("Apply after Close accepted")
	}
	m2, err := agent.NewMirrorExports(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m2.Close() })
	if err := m2.Apply(ctx, []*yunchiv1.MirrorExport{a, b}); err != nil {
		t.Fatal(err)
	}
	if na, nb := statusOf(t, m2, "a"), statusOf(t, m2, "b"); na.Address != sa.Address || nb.Address != sb.Address {
		t.Fatalf("ports moved: %s %s, were %s %s", na.Address, nb.Address, sa.Address, sb.Address)
	}
	if got := readAt(t, sa.Path, 0, 4096); !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, 4096)) {
		t.Error("the kept file lost its bytes")
	}
}

// Bad input gets a one-line error and changes nothing; the valid exports
// of the same list are served.
func TestMirrorExportBadInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("mirror exports need qemu-nbd (apt-get install qemu-utils)")
	}
	for _, cfg := range []agent.MirrorExportConfig{
		{Dir: "rel", Host: "127.0.0.1", PortMin: 10000, PortMax: 10001},
		{Dir: "/tmp/x", Host: "localhost", PortMin: 10000, PortMax: 10001},
		{Dir: "/tmp/x", Host: "127.0.0.1", PortMin: 10001, PortMax: 10000},
		{Dir: "/tmp/x", Host: "127.0.0.1", PortMin: 10000, PortMax: 10001, Cache: "none"},
	} {
		if _, err := agent.NewMirrorExports(cfg); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("config %+v: %v", cfg, err)
		}
	}
	dir := t.TempDir()
	m, _ := mirrorExports(t, dir, 2)
	good := &yunchiv1.MirrorExport{VmId: "ok", ExportName: "ok", SizeBytes: 1 << 20}
	for _, bad := range []*yunchiv1.MirrorExport{
		{VmId: "../etc", ExportName: "x", SizeBytes: 1 << 20},
		{VmId: "", ExportName: "x", SizeBytes: 1 << 20},
		{VmId: "v", ExportName: "a b", SizeBytes: 1 << 20},
		{VmId: "v", ExportName: "", SizeBytes: 1 << 20},
		{VmId: "v", ExportName: "x", SizeBytes: 0},
		{VmId: "v", ExportName: "x", SizeBytes: 1000},
		{VmId: "v", ExportName: "x", SizeBytes: 1 << 50},
	} {
		err := m.Apply(ctx, []*yunchiv1.MirrorExport{bad})
		if err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v", bad, err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("bad exports left files: %v", ents)
	}
	err := m.Apply(ctx, []*yunchiv1.MirrorExport{good, {VmId: "twice", ExportName: "t1", SizeBytes: 1 << 20}, {VmId: "twice", ExportName: "t2", SizeBytes: 1 << 20}})
	if err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Fatalf("an export listed twice: %v", err)
	}
	if st := m.Status(); len(st) != 1 || st[0].VMID != "ok" || !st[0].Serving {
		t.Fatalf("status %+v: want only the valid export served", st)
	}
	for _, id := range []string{"", "a/b"} {
		if _, err := m.Takeover(id); err == nil {
			t.Errorf("takeover %q accepted", id)
		}
		if err := m.Remove(id); err == nil {
			t.Errorf("remove %q accepted", id)
		}
	}
}

// With every port of the range taken by someone else, Apply says so and
// serves nothing.
func TestMirrorExportNoFreePort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, cfg := mirrorExports(t, t.TempDir(), 1)
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", cfg.PortMin))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = m.Apply(ctx, []*yunchiv1.MirrorExport{{VmId: "v", ExportName: "x", SizeBytes: 1 << 20}})
	if err == nil || !strings.Contains(err.Error(), "no free port") {
		t.Fatalf("apply with no free port: %v", err)
	}
	if st := m.Status(); len(st) != 0 {
		t.Fatalf("status %+v", st)
	}
}
