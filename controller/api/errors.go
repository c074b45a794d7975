package api

import (
	"context"
	"errors"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/raftnode"
	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/scheduler"
)

// toStatus turns an internal error into a google.rpc.Status with the code
// a client can act on: retry elsewhere (Unavailable), fix the request
// (InvalidArgument), and so on. Status errors pass through unchanged.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var nofit *scheduler.NoFitError
	switch {
	case errors.As(err, &nofit):
		return status.Error(codes.ResourceExhausted, nofit.Error())
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrAbortedByRestore):
		return status.Error(codes.Unavailable, "the controller lost leadership while handling the request: retry (it may or may not have been applied)")
	case errors.Is(err, raft.ErrRaftShutdown):
		return status.Error(codes.Unavailable, "the controller is shutting down: retry against another controller")
	case errors.Is(err, raftnode.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.Unavailable, "the cluster did not commit the change in time (is a majority of controllers up?): retry")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request canceled")
	}
	var se *state.Error
	if errors.As(err, &se) {
		switch se.Kind {
		case state.KindInvalid:
			return status.Error(codes.InvalidArgument, se.Msg)
		case state.KindNotFound:
			return status.Error(codes.NotFound, se.Msg)
		case state.KindAlreadyExists:
			return status.Error(codes.AlreadyExists, se.Msg)
		case state.KindConflict:
			return status.Error(codes.Aborted, se.Msg+": retry")
		case state.KindFailedPrecondition:
			return status.Error(codes.FailedPrecondition, se.Msg)
		}
	}
	return status.Error(codes.Internal, err.Error())
}
