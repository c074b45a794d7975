//go:build linux

// Package libvirthost runs private libvirtd "hosts" side by side on one
// machine, for tests and `yunchid dev`: each host is a libvirtd and its
// virtlogd in a mount namespace of their own, with private copies of
// /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and
// /run/libvirt bind-mounted over the real paths (the recipe of
// ../shared/testing/multihost.md). Two hosts can each run a domain named
// vm1; each is reached at its own socket (Host.URI). Everything a host
// starts, QEMU processes included, is stopped by pid when it stops: the
// processes of its mount namespace, not processes found by name.
package libvirthost

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// privateDirs are the paths each host gets its own copy of.
var privateDirs = []string{"/etc/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt", "/run/libvirt"}

// Available says why hosts cannot be started here ("" when they can).
func Available() string {
	if os.Geteuid() != 0 {
		return "private libvirtd hosts need root"
	}
	for _, bin := range []string{"libvirtd", "virtlogd", "qemu-system-x86_64", "unshare", "nsenter", "mount"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Sprintf("private libvirtd hosts need %s (apt-get install libvirt-daemon-system qemu-system-x86 qemu-utils)", bin)
		}
	}
	return ""
}

// Host is one private libvirtd.
type Host struct {
	Dir string // its private copies and logs
	// URI connects to it: qemu:///system through its own socket.
	URI string

	holder   *exec.Cmd // keeps the mount namespace while the daemons start
	virtlogd *exec.Cmd
	libvirtd *exec.Cmd
	ns       string // the mount namespace, as /proc/PID/ns/mnt reads
}

// Start starts a host whose files live in dir (made if missing) and waits
// until libvirtd answers on its socket, or ctx ends.
func Start(ctx context.Context, dir string) (_ *Host, err error) {
	if why := Available(); why != "" {
		return nil, errors.New(why)
	}
	startReaper()
	h := &Host{Dir: dir}
	defer func() {
		if err != nil {
			h.Stop()
		}
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for _, p := range privateDirs {
		if err := os.MkdirAll(p, 0o755); err != nil { // the mount point (an empty /run/libvirt at most)
			return nil, err
		}
		if p == "/run/libvirt" {
			// Runtime state starts empty: a copy of the machine's could
			// hold the socket of a libvirtd running there (or one that
			// died), which the wait below would take for this host's.
			if err := os.MkdirAll(h.private(p), 0o755); err != nil {
				return nil, err
			}
			continue
		}
		if err := copyTree(p, h.private(p), machineDefinitions); err != nil {
			return nil, fmt.Errorf("libvirthost: copy %s: %w", p, err)
		}
	}
	if err := testQemuConf(h.private("/etc/libvirt/qemu.conf")); err != nil {
		return nil, err
	}
	// A process that holds a new mount namespace; the mounts and daemons
	// join it with nsenter.
	h.holder = exec.Command("unshare", "--mount", "--propagation", "private", "--", "sleep", "infinity")
	h.holder.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := h.holder.Start(); err != nil {
		return nil, fmt.Errorf("libvirthost: unshare: %w", err)
	}
	nsPath := fmt.Sprintf("/proc/%d/ns/mnt", h.holder.Process.Pid)
	if err := waitFor(ctx, func() bool {
		own, _ := os.Readlink("/proc/self/ns/mnt")
		ns, err := os.Readlink(nsPath)
		h.ns = ns
		return err == nil && ns != own
	}); err != nil {
		return nil, fmt.Errorf("libvirthost: the new mount namespace did not appear: %w", err)
	}
	enter := func(args ...string) *exec.Cmd {
		return exec.Command("nsenter", append([]string{"--mount=" + nsPath, "--"}, args...)...)
	}
	for _, p := range privateDirs {
		if out, err := enter("mount", "--bind", h.private(p), p).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("libvirthost: bind %s: %v: %s", p, err, strings.TrimSpace(string(out)))
		}
	}
	logFile, err := os.OpenFile(filepath.Join(dir, "daemons.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	// Pid files of their own: the default ones (/run/virtlogd.pid,
	// /run/libvirtd.pid) are outside the private dirs, and a second host
	// would find them locked.
	h.virtlogd = enter("virtlogd", "--pid-file", filepath.Join(dir, "virtlogd.pid"))
	h.libvirtd = enter("libvirtd", "--pid-file", filepath.Join(dir, "libvirtd.pid"))
	for _, c := range []*exec.Cmd{h.virtlogd, h.libvirtd} {
		c.Stdout, c.Stderr = logFile, logFile
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			return nil, fmt.Errorf("libvirthost: start %s: %w", c.Args[3], err)
		}
		if c == h.virtlogd {
			sock := filepath.Join(h.private("/run/libvirt"), "virtlogd-sock")
			if err := waitFor(ctx, func() bool { return accepts(sock) }); err != nil {
				return nil, fmt.Errorf("libvirthost: virtlogd did not start (see %s): %w", logFile.Name(), err)
			}
		}
	}
	sock := filepath.Join(h.private("/run/libvirt"), "libvirt-sock")
	if err := waitFor(ctx, func() bool { return accepts(sock) }); err != nil {
		return nil, fmt.Errorf("libvirthost: libvirtd did not start (see %s): %w", logFile.Name(), err)
	}
	h.URI = "qemu:///system?socket=" + sock
	return h, nil
}

// private is where the host keeps its copy of path.
func (h *Host) private(path string) string {
	return filepath.Join(h.Dir, "root", path)
}

// Stop ends every process of the host's mount namespace (libvirtd,
// virtlogd, QEMU guests, the holder), by pid, and waits for them.
func (h *Host) Stop() error {
	var pids []int
	if h.ns != "" {
		pids = processesIn(h.ns)
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, c := range []*exec.Cmd{h.libvirtd, h.virtlogd, h.holder} {
		if c != nil && c.Process != nil {
			c.Process.Kill()
			c.Wait()
		}
	}
	// Processes not our children (QEMU, daemonised by libvirtd) are
	// reaped by init; wait until they are gone. Not only out of the
	// namespace: a process leaves it (its /proc/PID/ns/mnt unreadable)
	// while it is still exiting, and a killed QEMU took long enough
	// to free its memory that a test found it running after Stop.
	deadline := time.Now().Add(10 * time.Second)
	for h.ns != "" {
		for _, pid := range processesIn(h.ns) {
			if !slices.Contains(pids, pid) {
				pids = append(pids, pid) // started meanwhile
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if !slices.ContainsFunc(pids, Running) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("libvirthost: processes of %s still running after 10 s", h.Dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// Running says whether pid is a live process: not gone, and not a zombie
// (pid 1 here may not reap an orphan).
func Running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && !bytes.HasPrefix(b[i+1:], []byte(" Z"))
}

// QEMUPids lists the host's running QEMU processes (zombies excluded: pid
// 1 here may not reap a killed guest's QEMU).
func (h *Host) QEMUPids() []int {
	var out []int
	for _, pid := range processesIn(h.ns) {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || !strings.HasPrefix(string(comm), "qemu-system") {
			continue
		}
		if Running(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// processesIn lists the processes whose mount namespace is ns.
func processesIn(ns string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && l == ns {
			out = append(out, pid)
		}
	}
	return out
}

// testQemuConf sets what test hosts need in a host's qemu.conf: QEMU as
// root (it opens files in the test's temp dirs), no cgroup controllers
// (none are delegated here), and QEMU in the host's own mount namespace
// rather than one per domain, so that Stop finds and ends it.
func testQemuConf(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, l := range []string{
		"\n# libvirthost: a test host",
		`user = "root"`,
		`group = "root"`,
		"cgroup_controllers = [ ]",
		"namespaces = [ ]",
	} {
		fmt.Fprintln(w, l)
	}
	return errors.Join(w.Flush(), f.Close())
}

// machineDefinitions says which parts of /etc/libvirt a host does not
// copy: the domains and storage pools the machine's own libvirtd defines
// (and their autostart links). A host starts with none, whatever that
// libvirtd holds at the moment (docs/install.md's rehearsal defines a
// domain there while other tests start hosts).
func machineDefinitions(src, rel string, d fs.DirEntry) bool {
	if src != "/etc/libvirt" {
		return false
	}
	switch dir, name := filepath.Split(rel); {
	case rel == "storage" || rel == "qemu/autostart":
		return true
	case dir == "qemu/" && !d.IsDir() && strings.HasSuffix(name, ".xml"):
		return true
	}
	return false
}

// copyTree copies the directory src (absent: an empty one) to dst,
// regular files, directories and symlinks, keeping modes; what skip
// (src, the path relative to src, the entry) names is left out, a
// directory with all below it.
func copyTree(src, dst string, skip func(src, rel string, d fs.DirEntry) bool) error {
	if _, err := os.Stat(src); errors.Is(err, fs.ErrNotExist) {
		return os.MkdirAll(dst, 0o755)
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if skip != nil && rel != "." && skip(src, rel, d) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		to := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(to, info.Mode().Perm())
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case info.Mode().IsRegular():
			return copyFile(p, to, info.Mode().Perm())
		}
		return nil // sockets, pipes: not copied
	})
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

// waitFor polls ok every 20 ms until it holds or ctx ends.
// accepts says whether a unix socket takes connections (a daemon is
// listening on it, not merely a file left there).
func accepts(sock string) bool {
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func waitFor(ctx context.Context, ok func() bool) error {
	for !ok() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// FlatImage reads a disk image's guest-visible bytes (its backing chain
// flattened) with qemu-img convert, through a file in dir.
func FlatImage(path, dir string) ([]byte, error) {
	out := filepath.Join(dir, "flat.raw")
	defer os.Remove(out)
	if b, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", path, out).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("qemu-img convert %s: %v: %s", path, err, b)
	}
	return os.ReadFile(out)
}
