// Package daemon runs the processes of a Yunchi deployment for tests and
// benchmarks (controllers and agents started from the yunchid binary): their
// output appended to a log file, signalled by pid, waited for. It has no
// policy of its own; cmd/yunchid/clustertest and bench/controller build on it.
package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/yunchi/yunchi/controller"
)

// Proc is one started process.
type Proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs bin with args, stdout and stderr appended to logPath. With
// dieWithParent the kernel kills the process should the caller die first
// (a benchmark killed with SIGKILL leaves no daemons behind).
func Start(bin string, args []string, logPath string, dieWithParent bool) (*Proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if dieWithParent {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &Proc{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); lf.Close(); close(p.done) }()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Running says whether the process is still up (false for a nil Proc).
func (p *Proc) Running() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() {
	if p.Running() {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// Freeze stops the process with SIGSTOP: its sockets stay open but it
// answers nothing, like a hung process. Thaw, Stop and Kill end that.
func (p *Proc) Freeze() {
	if p.Running() {
		p.cmd.Process.Signal(syscall.SIGSTOP)
	}
}

// Thaw lets a frozen process run again (SIGCONT).
func (p *Proc) Thaw() {
	if p.Running() {
		p.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Stop sends SIGTERM and waits up to 10 s, then SIGKILL. A frozen process
// is thawed first, or it could not act on SIGTERM.
func (p *Proc) Stop() {
	if !p.Running() {
		return
	}
	p.Thaw()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.Kill()
	}
}

// WaitAdminTokens waits up to d for a bootstrap controller to write the
// administrator tokens into its data dir (controller.AdminTokensFile) and
// returns them. It gives up early if p (the controller, may be nil) ends.
func WaitAdminTokens(ctx context.Context, p *Proc, dataDir string, d time.Duration) (controller.AdminTokens, error) {
	var alive func() bool
	if p != nil {
		alive = p.Running
	}
	return controller.WaitAdminTokens(ctx, dataDir, d, alive)
}
