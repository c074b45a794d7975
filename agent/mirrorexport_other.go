//go:build !linux

package agent

import "syscall"

// nbdProcAttr: only Linux can tie a child's life to its parent's.
func nbdProcAttr() *syscall.SysProcAttr { return nil }
