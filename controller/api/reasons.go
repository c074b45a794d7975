package api

import (
	"context"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// Reasons of the google.rpc.ErrorInfo (domain "yunchi.v1") that some
// answers carry in their details, for clients to act on without reading
// the message. REST shows them in the JSON body's "details".
const (
	// NotProposedReason marks an UNAVAILABLE answer given before the
	// request was proposed to raft: no leader was known, the leader could
	// not be connected to, or a forwarded call reached a controller that is
	// no longer the leader. Nothing was or will be applied, so any request
	// (a create too) may be sent again. UNAVAILABLE without it may come
	// after the proposal (leadership lost while committing, a connection
	// that broke after the request left): only idempotent requests should
	// be sent again then.
	NotProposedReason = "NOT_PROPOSED"
	// NotAMemberReason: this controller was removed from the cluster. The
	// metadata "members" lists the API addresses of the remaining members,
	// comma-separated.
	NotAMemberReason = "NOT_A_MEMBER"
)

const errorDomain = "yunchi.v1"

// withReason is st with one google.rpc.ErrorInfo in its details.
func withReason(st *status.Status, reason string, md map[string]string) error {
	d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: errorDomain, Metadata: md})
	if err != nil {
		return st.Err()
	}
	return d.Err()
}

// notProposed is UNAVAILABLE marked NOT_PROPOSED.
func notProposed(format string, args ...any) error {
	return withReason(status.Newf(codes.Unavailable, format, args...), NotProposedReason, nil)
}

// connectWait bounds how long a forwarding controller waits to connect to
// the leader before answering that it is unreachable.
const connectWait = 2 * time.Second

// awaitReady connects conn if it is not connected and waits (at most
// connectWait, and within ctx) until it is. False means the connection is
// down: a call not yet sent on it can be answered NOT_PROPOSED.
func awaitReady(ctx context.Context, conn *grpc.ClientConn) bool {
	ctx, cancel := context.WithTimeout(ctx, connectWait)
	defer cancel()
	conn.Connect()
	for {
		st := conn.GetState()
		switch st {
		case connectivity.Ready:
			return true
		case connectivity.TransientFailure:
			// Raft says this leader is alive: reconnect now rather than
			// after gRPC's backoff (up to two minutes), for the next call.
			conn.ResetConnectBackoff()
			return false
		case connectivity.Shutdown:
			return false
		}
		if !conn.WaitForStateChange(ctx, st) {
			return false
		}
	}
}
