package state

import (
	"errors"
	"fmt"
)

// Kind classifies why a command was rejected, so the API layer can map it to
// a status code without parsing messages.
type Kind int

const (
	KindInvalid Kind = iota + 1
	KindNotFound
	KindAlreadyExists
	// KindConflict: the command was decided on a view of the state that has
	// since changed (e.g. the chosen host filled up); deciding again may work.
	KindConflict
	KindFailedPrecondition
	// KindQuotaExceeded: the command would take a project or department
	// over its quota (Subject names which). Final: deciding again does not
	// help until VMs are deleted or the quota is raised.
	KindQuotaExceeded
)

// Error is a rejection by Apply, with a message a person can act on.
type Error struct {
	Kind Kind
	Msg  string
	// Subject is what the rejection is about, when it names one: the
	// quota's owner ("department:eco", "project:air") for
	// KindQuotaExceeded.
	Subject string
}

func (e *Error) Error() string { return e.Msg }

func errorf(k Kind, format string, args ...any) error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...)}
}

// KindOf returns the Kind of err, or 0 when err is not a state.Error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}
