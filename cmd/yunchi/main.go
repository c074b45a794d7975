// Command yunchi is the administrators' CLI for a Yunchi private cloud: it
// creates and controls VMs, shows hosts and capacity, and manages the raft
// cluster of controllers, all over the controllers' gRPC API.
//
// Exit codes (also in --help; scripts rely on them):
//
//	0 ok
//	1 other error (timeout, interrupted, internal)
//	2 usage error or invalid argument
//	3 not found
//	4 already exists
//	5 no capacity (ResourceExhausted)
//	6 controller unavailable (no leader, or no controller reachable)
//	7 failed precondition, or the VM failed (or its host is down), or a backup failed, during --wait
//	8 not authenticated (no token, or an unknown, revoked, expired or locked one)
//	9 permission denied (the role may not do this)
//	10 quota exceeded
//	11 audit verify found the audit trail altered, incomplete or out of order
//	12 dr status --check found an RPO violation
//	13 backup verify found damaged chunks or manifests
//	14 dr failover, failback or drill ended partial: some VMs failed or were skipped
//	15 dr failover, failback or drill failed (or the drill changed production)
//	16 dr failover, failback or drill still running when --wait-timeout passed
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run is the whole program minus os.Exit: errors go to stderr as one line,
// the result is the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp(stdout, stderr)
	return report(stderr, app.RunContext(ctx, reorderArgs(app, args)))
}
