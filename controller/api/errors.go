package api

import (
	"context"
	"errors"
	"sort"
	"strconv"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
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
	var lse *raftnode.LogStoreError
	switch {
	case errors.As(err, &nofit):
		return noFitStatus(nofit)
	case errors.As(err, &lse):
		return status.Errorf(codes.Unavailable, "%s: it is no longer the leader; retry (the change may or may not have been applied)", oneLine(lse.Error()))
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
		case state.KindQuotaExceeded:
			return quotaStatus(se)
		}
	}
	return status.Error(codes.Internal, err.Error())
}

// NoFitReason is the google.rpc.ErrorInfo reason of a placement that no
// host can take.
const NoFitReason = "NO_FIT"

// noFitStatus is RESOURCE_EXHAUSTED whose message is the one-line
// explanation ("0/45 hosts fit: 30 insufficient memory (...), 15 ...") and
// whose details carry it structured, as one google.rpc.ErrorInfo:
//
//	reason "NO_FIT", domain "yunchi.v1", metadata:
//	  "hosts"    the number of hosts considered,
//	  "fit"      "0",
//	  "vm"       the VM that did not fit (in a batch, the first that did not),
//	  "reason_1" .. "reason_N"  the reasons, most hosts first, each
//	             "<count> <reason>", e.g. "30 insufficient memory".
//
// REST clients get the same in the JSON body's "details".
func noFitStatus(e *scheduler.NoFitError) error {
	msg := oneLine(e.Error())
	md := map[string]string{
		"hosts": strconv.Itoa(e.Total),
		"fit":   "0",
	}
	if e.Request.Name != "" {
		md["vm"] = e.Request.Name
	}
	type rc struct {
		r string
		n int
	}
	var rs []rc
	for r, n := range e.Counts {
		rs = append(rs, rc{string(r), n})
	}
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].n != rs[j].n {
			return rs[i].n > rs[j].n
		}
		return rs[i].r < rs[j].r
	})
	for i, x := range rs {
		md["reason_"+strconv.Itoa(i+1)] = strconv.Itoa(x.n) + " " + x.r
	}
	st, err := status.New(codes.ResourceExhausted, msg).WithDetails(&errdetails.ErrorInfo{Reason: NoFitReason, Domain: "yunchi.v1", Metadata: md})
	if err != nil {
		return status.Error(codes.ResourceExhausted, msg)
	}
	return st.Err()
}
