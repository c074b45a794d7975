package docs_test

// The doc runner: every ```sh block of README.md and docs/*.md runs, in
// order, literally, as a new user following the page would run it. See
// TestDocsRun for the conventions a doc writer uses.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Conventions, written in the markdown itself:
//
//   - Only fenced blocks marked ```sh run; other blocks (```, ```json …) are
//     text. Each line of a block is one command (a line ending in \ goes on
//     to the next); blank lines and lines that are only a comment are skipped.
//   - A command expected to fail says so in its comment: `# exit code 5: …`
//     (anywhere in the trailing comment). The runner requires exactly that
//     code; every other command must exit 0.
//   - An HTML comment right before a block (blank lines between allowed)
//     gives a directive:
//     <!-- doc-test: skip REASON -->   the block does not run (the reason is
//     required and shown in the test log);
//     <!-- doc-test: root-libvirt -->  the block runs this machine's own
//     libvirtd and QEMU guests (docs/install.md's rehearsal): it runs as
//     root only, with libvirt and QEMU installed and no libvirtd running
//     yet, and is skipped with a log line otherwise. After the page, every
//     domain and storage pool of the libvirtd it started is destroyed and
//     undefined before its processes are killed, also on failure.
//     <!-- doc-test: dev-cluster -->   the block needs `yunchid dev` running,
//     as after `make dev`: the runner starts one (once per file, before the
//     first such block, and waits for its 45 hosts to be ready) and stops
//     it with SIGINT, as Ctrl-C does. As for a reader, it logs the CLI in
//     as the sysadmin (in the page's fresh HOME, below): `yunchi` needs no
//     token flag, and curl gets one with TOKEN=$(yunchi token current).
//   - Blocks that use ../shared (the trace beside a clone) run when the
//     repository has ../shared, and are skipped with a log line otherwise.
//
// How the runner runs a file: one bash process per file, so `export`, `cd`
// and variables carry from command to command as in a terminal; a fresh
// working directory laid out like a clone after `make build` (bin/yunchi,
// bin/yunchid freshly built, ../shared linked when the repository has one),
// a fresh HOME (empty but for a ~/.curlrc with fail-with-body, so that a
// curl answered with an HTTP error fails) and TMPDIR, and a PATH without any yunchi or yunchid
// (the page must say how to reach bin/). Everything bash starts (daemons run
// with &) is in one process group, killed when the test ends, also on
// failure.
//
// Ports: the pages use fixed loopback ports (8470-8472 for `yunchid dev`,
// 9470-9482 by hand). So that the test never meets a developer's running
// `make dev`, each file's ports are shifted by one offset, chosen so that
// every port the file names (and the dev cluster's raft ports) is free:
// "127.0.0.1:P" becomes "127.0.0.1:P+offset" in every command, the dev
// cluster runs with --port 8470+offset, and YUNCHI_ADDR is set to its first
// controller (standing in for the CLI's default 127.0.0.1:8470).

const commandTimeout = 3 * time.Minute

type command struct {
	line     int // 1-based line in the file
	text     string
	wantCode int
}

type block struct {
	line        int // line of the opening fence
	skip        string
	devCluster  bool
	rootLibvirt bool
	cmds        []command
}

var (
	fenceOpen  = regexp.MustCompile("^```([A-Za-z0-9_-]*)\\s*$")
	directive  = regexp.MustCompile(`^<!--\s*doc-test:\s*(.*?)\s*-->\s*$`)
	exitCodeRe = regexp.MustCompile(`(?:^|\s)#.*\bexit code (\d+)`)
	loopbackRe = regexp.MustCompile(`127\.0\.0\.1:(\d+)`)
)

// parse returns the runnable blocks of one markdown file.
func parse(name string, data []byte) ([]block, error) {
	var blocks []block
	lines := strings.Split(string(data), "\n")
	var pending *block // directives seen since the last non-blank line
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if m := directive.FindStringSubmatch(l); m != nil {
			if pending == nil {
				pending = &block{}
			}
			switch d := m[1]; {
			case d == "dev-cluster":
				pending.devCluster = true
			case d == "root-libvirt":
				pending.rootLibvirt = true
			case strings.HasPrefix(d, "skip"):
				reason := strings.TrimSpace(strings.TrimPrefix(d, "skip"))
				if reason == "" {
					return nil, fmt.Errorf("%s:%d: doc-test: skip needs a reason", name, i+1)
				}
				pending.skip = reason
			default:
				return nil, fmt.Errorf("%s:%d: unknown doc-test directive %q (want: skip REASON, dev-cluster, root-libvirt)", name, i+1, d)
			}
			continue
		}
		m := fenceOpen.FindStringSubmatch(l)
		if m == nil {
			if strings.TrimSpace(l) != "" {
				pending = nil
			}
			continue
		}
		b := block{line: i + 1}
		if pending != nil {
			b.skip, b.devCluster, b.rootLibvirt = pending.skip, pending.devCluster, pending.rootLibvirt
		}
		pending = nil
		runs := m[1] == "sh"
		var cur *command
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			if !runs {
				continue
			}
			t := lines[i]
			if cur == nil {
				if s := strings.TrimSpace(t); s == "" || strings.HasPrefix(s, "#") {
					continue
				}
				if strings.Contains(t, "<<") {
					return nil, fmt.Errorf("%s:%d: here-documents are not supported by the doc runner", name, i+1)
				}
				cur = &command{line: i + 1, text: t}
			} else {
				cur.text += "\n" + t
			}
			if strings.HasSuffix(t, "\\") {
				continue
			}
			if m := exitCodeRe.FindStringSubmatch(cur.text); m != nil {
				cur.wantCode, _ = strconv.Atoi(m[1])
			}
			b.cmds = append(b.cmds, *cur)
			cur = nil
		}
		if i == len(lines) {
			return nil, fmt.Errorf("%s:%d: code block never closed", name, b.line)
		}
		if cur != nil {
			return nil, fmt.Errorf("%s:%d: the last command ends in a backslash", name, cur.line)
		}
		if runs {
			blocks = append(blocks, b)
		}
	}
	return blocks, nil
}

func TestParse(t *testing.T) {
	md := "# t\n\n<!-- doc-test: skip needs a terminal -->\n```sh\nmake dev\n```\n\n" +
		"<!-- doc-test: dev-cluster -->\n\n```sh\n# only a comment\nyunchi a \\\n  --b   # c\n\nyunchi huge   # exit code 5: no fit\n```\n\n```\nnot run\n```\n"
	blocks, err := parse("t.md", []byte(md))
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 2 || blocks[0].skip != "needs a terminal" || blocks[0].devCluster || !blocks[1].devCluster || blocks[1].skip != "" {
		t.Fatalf("blocks %+v", blocks)
	}
	want := []command{{line: 12, text: "yunchi a \\\n  --b   # c"}, {line: 15, text: "yunchi huge   # exit code 5: no fit", wantCode: 5}}
	if fmt.Sprint(blocks[1].cmds) != fmt.Sprint(want) {
		t.Fatalf("commands %+v, want %+v", blocks[1].cmds, want)
	}
	for _, bad := range []string{"<!-- doc-test: skip -->\n```sh\nx\n```\n", "<!-- doc-test: maybe -->\n", "```sh\nx\n"} {
		if _, err := parse("bad.md", []byte(bad)); err == nil {
			t.Errorf("parse accepted %q", bad)
		}
	}
}

func TestDocsRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds both binaries and runs every documented command")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"README.md"}
	more, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(more)
	for _, f := range more {
		rel, _ := filepath.Rel(root, f)
		files = append(files, rel)
	}
	parsed := map[string][]block{}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if parsed[f], err = parse(f, data); err != nil {
			t.Fatal(err)
		}
	}
	bin := buildBinaries(t, root)
	for _, f := range files {
		if len(parsed[f]) == 0 {
			continue
		}
		t.Run(f, func(t *testing.T) { runFile(t, root, bin, f, parsed[f]) })
	}
}

// buildBinaries builds bin/yunchid and bin/yunchi (CGO_ENABLED=0) as
// `make build` does, into a directory the test removes.
func buildBinaries(t *testing.T, root string) string {
	dir := filepath.Join(t.TempDir(), "bin")
	for _, b := range []struct{ name, cgo string }{{"yunchid", "1"}, {"yunchi", "0"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.name), "./cmd/"+b.name)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.name, err, out)
		}
	}
	return dir
}

// cleanPath drops every PATH entry that holds a yunchi or yunchid, so a
// page that forgets to put bin/ on PATH fails instead of finding an old copy.
func cleanPath() string {
	var keep []string
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		if _, err := os.Stat(filepath.Join(d, "yunchi")); err == nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "yunchid")); err == nil {
			continue
		}
		keep = append(keep, d)
	}
	return strings.Join(keep, string(os.PathListSeparator))
}

// shell is one bash process running a page's commands in turn.
type shell struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	mark  string
}

func startShell(t *testing.T, dir string, env []string) *shell {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "--noprofile", "--norc")
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	rb := make([]byte, 8)
	rand.Read(rb)
	s := &shell{t: t, cmd: cmd, stdin: stdin, lines: make(chan string, 1024), mark: "__doc_test_done_" + hex.EncodeToString(rb)}
	go func() {
		defer close(s.lines)
		br := bufio.NewReader(r)
		for {
			l, err := br.ReadString('\n')
			if l != "" {
				s.lines <- strings.TrimSuffix(l, "\n")
			}
			if err != nil {
				r.Close()
				return
			}
		}
	}()
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		stdin.Close()
		// Everything the page started with & is in bash's process group.
		syscall.Kill(-pgid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		// Daemons get 10 s to stop on SIGTERM, then SIGKILL.
		for i := 0; i < 100 && syscall.Kill(-pgid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		syscall.Kill(-pgid, syscall.SIGKILL)
	})
	return s
}

// run runs one command and returns its exit code and output (stdout and
// stderr interleaved). ok is false if it did not finish in time.
func (s *shell) run(text string) (code int, out string, ok bool) {
	// The braces keep cd/export in this shell; stdin is /dev/null so no
	// command eats the rest of the script.
	fmt.Fprintf(s.stdin, "{ %s\n} < /dev/null\nprintf '\\n%s %%d\\n' $?\n", text, s.mark)
	var b strings.Builder
	timeout := time.After(commandTimeout)
	for {
		select {
		case l, open := <-s.lines:
			if !open {
				return -1, b.String() + "(bash exited)", false
			}
			if rest, found := strings.CutPrefix(l, s.mark+" "); found {
				code, _ = strconv.Atoi(rest)
				return code, strings.TrimSuffix(b.String(), "\n"), true
			}
			b.WriteString(l + "\n")
		case <-timeout:
			return -1, b.String(), false
		}
	}
}

// devCluster is `yunchid dev` as `make dev` runs it.
type devCluster struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startDev(t *testing.T, bin, dir string, env []string, port int) *devCluster {
	t.Helper()
	logPath := filepath.Join(dir, "yunchid-dev.log")
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "yunchid"), "dev", "--port", strconv.Itoa(port))
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &devCluster{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); lf.Close(); close(d.done) }()
	t.Cleanup(func() { d.stop() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(2 * time.Minute)
	// Ready, it prints the administrators' tokens (and logs the CLI in,
	// in the page's fresh HOME); the runner reads as the sysadmin.
	for {
		if _, rest, found := strings.Cut(d.output(), "sysadmin token: "); found {
			if tok, _, complete := strings.Cut(rest, "\n"); complete && strings.Contains(d.output(), "Ctrl-C stops everything.") {
				apitest.UseToken(t, tok)
				break
			}
		}
		select {
		case <-d.done:
			t.Fatalf("yunchid dev exited before it was ready:\n%s", d.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("yunchid dev on %s: no sysadmin token printed in 2m:\n%s", addr, d.output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	for {
		var c yunchiv1.Capacity
		if err := apitest.GetJSON(addr, "/v1/capacity", &c); err == nil {
			ready := int32(0)
			for _, cc := range c.GetCenters() {
				ready += cc.GetHostsReady()
			}
			if ready == 45 {
				return d
			}
		}
		select {
		case <-d.done:
			t.Fatalf("yunchid dev exited before it was ready:\n%s", d.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("yunchid dev on %s: 45 ready hosts not reached in 2m:\n%s", addr, d.output())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (d *devCluster) output() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}

// stop is Ctrl-C: SIGINT to the process group, SIGKILL after 30 s.
func (d *devCluster) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	syscall.Kill(-d.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
}

func runFile(t *testing.T, root, bin, file string, blocks []block) {
	tmp := t.TempDir()
	work := filepath.Join(tmp, "yunchi") // the clone
	home := filepath.Join(tmp, "home")
	tmpdir := filepath.Join(tmp, "tmp")
	for _, d := range []string{work, home, tmpdir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(bin, filepath.Join(work, "bin")); err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(root, "..", "shared")
	haveShared := false
	if fi, err := os.Stat(shared); err == nil && fi.IsDir() {
		haveShared = true
		abs, _ := filepath.Abs(shared)
		if err := os.Symlink(abs, filepath.Join(tmp, "shared")); err != nil {
			t.Fatal(err)
		}
	}

	// One port offset for the file (see the comment at the top).
	set := map[int]bool{}
	needDev := false
	for _, b := range blocks {
		if b.skip != "" {
			continue
		}
		needDev = needDev || b.devCluster
		for _, c := range b.cmds {
			for _, m := range loopbackRe.FindAllStringSubmatch(c.text, -1) {
				p, _ := strconv.Atoi(m[1])
				set[p] = true
			}
		}
	}
	if needDev {
		for i := 0; i < 3; i++ {
			set[8470+i], set[8480+i] = true, true
		}
		set[8490] = true // the dev cluster's control endpoint (yunchid dev center)
	}
	var ports []int
	for p := range set {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	off := apitest.FreePortOffset(t, ports)
	shift := func(s string) string {
		return loopbackRe.ReplaceAllStringFunc(s, func(m string) string {
			p, _ := strconv.Atoi(strings.TrimPrefix(m, "127.0.0.1:"))
			return fmt.Sprintf("127.0.0.1:%d", p+off)
		})
	}

	// curl reads ~/.curlrc: a curl in the docs that gets an HTTP error (a
	// 415 for a missing Content-Type, say) fails the page, as a person
	// reading the answer would notice; -s alone would exit 0.
	if err := os.WriteFile(filepath.Join(home, ".curlrc"), []byte("fail-with-body\nshow-error\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"HOME=" + home, "PATH=" + cleanPath(), "TMPDIR=" + tmpdir, "LANG=C.UTF-8", "TERM=dumb"}
	if needDev {
		// All three controllers, as `yunchid dev` logs the CLI in: a page
		// may take one down (yunchid dev center stop).
		env = append(env, fmt.Sprintf("YUNCHI_ADDR=127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d", 8470+off, 8471+off, 8472+off), fmt.Sprintf("YUNCHI_DEV_PORT=%d", 8470+off))
	}
	sh := startShell(t, work, env)
	libvirtWhy := rootLibvirtMissing()
	for _, b := range blocks {
		if b.rootLibvirt && libvirtWhy == "" {
			// Runs before the shell's cleanup (LIFO): the guests and pools
			// go while libvirtd still runs.
			t.Cleanup(func() { cleanLibvirt(t) })
			// QEMU runs as libvirt-qemu: it must get through the test's
			// temp dirs (0700) to the disks a page keeps under $TMPDIR,
			// as it gets through /var/lib on a server.
			for d := tmpdir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
				if err := os.Chmod(d, 0o711); err != nil {
					t.Fatal(err)
				}
			}
			break
		}
	}
	var dev *devCluster
	for _, b := range blocks {
		where := fmt.Sprintf("%s:%d", file, b.line)
		if b.skip != "" {
			t.Logf("%s: block skipped: %s", where, b.skip)
			continue
		}
		if b.rootLibvirt && libvirtWhy != "" {
			t.Logf("%s: block skipped: %s", where, libvirtWhy)
			continue
		}
		if !haveShared && blockUses(b, "../shared/") {
			t.Logf("%s: block skipped: it needs ../shared beside the repository, which is absent", where)
			continue
		}
		if b.devCluster && dev == nil {
			dev = startDev(t, bin, work, env, 8470+off)
		}
		for _, c := range b.cmds {
			text := shift(c.text)
			code, out, finished := sh.run(text)
			if !finished {
				t.Fatalf("%s:%d (block at line %d): did not finish in %v: %s\noutput:\n%s", file, c.line, b.line, commandTimeout, text, out)
			}
			if code != c.wantCode {
				msg := fmt.Sprintf("%s:%d (block at line %d): exit code %d, want %d: %s\noutput:\n%s", file, c.line, b.line, code, c.wantCode, text, out)
				if off != 0 {
					msg += fmt.Sprintf("\n(loopback ports shifted by %+d)", off)
				}
				t.Fatal(msg)
			}
			t.Logf("%s:%d: exit %d as expected: %s", file, c.line, code, strings.SplitN(text, "\n", 2)[0])
		}
	}
	if dev != nil {
		dev.stop()
	}
}

// systemSocket is the system libvirtd's socket.
const systemSocket = "/run/libvirt/libvirt-sock"

// rootLibvirtMissing says why root-libvirt blocks cannot run here ("" when
// they can).
func rootLibvirtMissing() string {
	if os.Geteuid() != 0 {
		return "needs root (it runs this machine's libvirtd)"
	}
	for _, b := range []string{"libvirtd", "virtlogd", "virsh", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(b); err != nil {
			return "needs " + b + " (apt-get install libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils)"
		}
	}
	if _, err := os.Stat(systemSocket); err == nil {
		return "a libvirtd runs on this machine already: the page would start its own"
	}
	return ""
}

// cleanLibvirt destroys and undefines every domain and storage pool of the
// libvirtd a page started (none ran before it: rootLibvirtMissing).
func cleanLibvirt(t *testing.T) {
	if _, err := os.Stat(systemSocket); err != nil {
		return
	}
	virsh := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "virsh", append([]string{"-c", "qemu:///system"}, args...)...).Output()
		return string(out)
	}
	for _, d := range strings.Fields(virsh("list", "--all", "--name")) {
		virsh("destroy", d)
		virsh("undefine", d, "--checkpoints-metadata", "--snapshots-metadata")
		t.Logf("removed domain %s the page left", d)
	}
	for _, p := range strings.Fields(virsh("pool-list", "--all", "--name")) {
		virsh("pool-destroy", p)
		virsh("pool-undefine", p)
		t.Logf("removed storage pool %s the page left", p)
	}
}

func blockUses(b block, s string) bool {
	for _, c := range b.cmds {
		if strings.Contains(c.text, s) {
			return true
		}
	}
	return false
}
