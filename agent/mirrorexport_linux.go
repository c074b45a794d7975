package agent

import "syscall"

// nbdProcAttr makes a mirror export's qemu-nbd die with the agent: a
// restarted agent serves the file again on the same port.
func nbdProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
