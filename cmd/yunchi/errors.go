package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes. Scripts depend on these: never renumber, only add. The same
// table is in the --help text (exitCodesHelp).
const (
	exitOK            = 0  // success
	exitError         = 1  // any other error (timeout, interrupted, internal)
	exitUsage         = 2  // bad command line, or the controller said InvalidArgument
	exitNotFound      = 3  // NotFound: no such VM, host or member
	exitExists        = 4  // AlreadyExists
	exitNoCapacity    = 5  // ResourceExhausted: no host has room
	exitUnavailable   = 6  // Unavailable: no leader, or no controller reachable
	exitFailed        = 7  // FailedPrecondition, or the VM went FAILED (or its host down) or a backup failed during --wait
	exitAuth          = 8  // Unauthenticated: no token, or one that is unknown, revoked, expired or locked
	exitDenied        = 9  // PermissionDenied: the role may not do this
	exitQuota         = 10 // ResourceExhausted with a quota failure: a department or project quota
	exitAuditBroken   = 11 // audit verify: the trail is altered, incomplete or out of order
	exitRPOViolation  = 12 // dr status --check: a protected VM's newest point is older than its RPO objective
	exitBackupDamaged = 13 // backup verify: a chunk or manifest of the repository is damaged
	exitRunPartial    = 14 // dr failover/failback/drill: the run ended partial (some VMs failed or were skipped)
	exitRunFailed     = 15 // dr failover/failback/drill: the run failed, or a drill changed production
	exitRunTimeout    = 16 // dr failover/failback/drill: --wait-timeout passed with the run still going
)

const exitCodesHelp = `EXIT CODES:
   0  ok
   1  other error (timeout, interrupted, internal)
   2  usage error or invalid argument
   3  not found
   4  already exists
   5  no capacity
   6  controller unavailable (no leader, or no controller reachable)
   7  failed precondition, or the VM failed (or its host is down), or a backup failed, during --wait
   8  not authenticated (no token, or an unknown, revoked, expired or locked one)
   9  permission denied (your role may not do this)
  10  quota exceeded (a department's or project's; see yunchi quota show)
  11  audit verify found the audit trail altered, incomplete or out of order
  12  dr status --check found an RPO violation
  13  backup verify found damaged chunks or manifests
  14  dr failover, failback or drill ended partial: some VMs failed or were skipped
  15  dr failover, failback or drill failed (or the drill changed production)
  16  dr failover, failback or drill still running when --wait-timeout passed`

// usageError is a mistake on the command line, found before any call.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// vmFailedError is a VM that reached FAILED, or a backup that failed,
// while we waited on it.
type vmFailedError struct{ msg string }

func (e *vmFailedError) Error() string { return e.msg }

// exitCode maps an error to the process exit code.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ue *usageError
	var fe *vmFailedError
	var ae *auditBrokenError
	var rv *rpoViolationError
	var bd *backupDamagedError
	var rp *runPartialError
	var rf *runFailedError
	var rt *runTimeoutError
	var ce cli.ExitCoder
	switch {
	case errors.As(err, &ae):
		return exitAuditBroken
	case errors.As(err, &rv):
		return exitRPOViolation
	case errors.As(err, &bd):
		return exitBackupDamaged
	case errors.As(err, &rp):
		return exitRunPartial
	case errors.As(err, &rf):
		return exitRunFailed
	case errors.As(err, &rt):
		return exitRunTimeout
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &fe):
		return exitFailed
	case errors.As(err, &ce):
		// urfave/cli's own errors ("No help topic for ..."): always usage.
		return exitUsage
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.InvalidArgument, codes.OutOfRange:
			return exitUsage
		case codes.NotFound:
			return exitNotFound
		case codes.AlreadyExists:
			return exitExists
		case codes.ResourceExhausted:
			if quotaFailure(st) {
				return exitQuota
			}
			return exitNoCapacity
		case codes.Unavailable:
			return exitUnavailable
		case codes.Unauthenticated:
			return exitAuth
		case codes.PermissionDenied:
			return exitDenied
		case codes.FailedPrecondition:
			return exitFailed
		}
	}
	return exitError
}

// quotaFailure says whether st is a quota exceeded (a google.rpc.QuotaFailure
// detail) rather than no host having room.
func quotaFailure(st *status.Status) bool {
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.QuotaFailure); ok {
			return true
		}
	}
	return false
}

// errorMessage is the one line printed after "yunchi: ". For gRPC errors it
// is the controller's message, never "rpc error: code = ...".
func errorMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		msg := st.Message()
		switch {
		case st.Code() == codes.Canceled || errors.Is(err, context.Canceled):
			msg = "interrupted"
		case msg == "":
			msg = strings.ToLower(splitCamel(st.Code().String()))
		}
		return oneLine(msg)
	}
	if errors.Is(err, context.Canceled) {
		return "interrupted"
	}
	return oneLine(err.Error())
}

// report prints err as one line on stderr and returns the exit code.
func report(stderr io.Writer, err error) int {
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "yunchi: %s\n", errorMessage(err))
	return exitCode(err)
}

// oneLine joins the words of s with single spaces: no newlines, no runs of
// blanks, nothing at either end.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// splitCamel turns "FailedPrecondition" into "Failed Precondition".
func splitCamel(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return b.String()
}
