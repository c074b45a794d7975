//go:build linux

package libvirthost

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The guests' reaper. libvirtd daemonises QEMU, so a guest's QEMU is an
// orphan that init must reap; libvirt reports a guest stopped only once its
// QEMU is gone, zombie included. Where pid 1 reaps slowly (in containers
// such as this machine's it took about 1.5 s) a killed guest would be
// reported that much late, which a real host (systemd reaps at once) never
// sees. So the process that starts hosts makes itself the child subreaper
// of everything they start, and reaps the QEMU processes that end, and
// only those: its other children are waited for by whoever started them
// (os/exec), and reaping them here would steal their exit status.

var reaperOnce sync.Once

func startReaper() {
	reaperOnce.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return // init reaps, slowly: nothing is wrong, only later
		}
		sig := make(chan os.Signal, 16)
		signal.Notify(sig, syscall.SIGCHLD)
		go func() {
			for range sig {
				reapQEMU()
			}
		}()
	})
}

// reapQEMU waits for every QEMU zombie whose parent is this process.
func reapQEMU() {
	self := os.Getpid()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(st)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		comm, rest := s[open+1:close], strings.Fields(s[close+1:])
		if len(rest) < 2 || rest[0] != "Z" || !strings.HasPrefix(comm, "qemu-system") {
			continue
		}
		if ppid, err := strconv.Atoi(rest[1]); err != nil || ppid != self {
			continue
		}
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	}
}
