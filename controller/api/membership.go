package api

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// A controller removed from the cluster keeps its process and its API but
// takes part in nothing: raft no longer replicates to it and it holds no
// election. Every call but GetClusterStatus is answered with where to go
// instead; GetClusterStatus answers node_state "Removed". Adding it back
// (`yunchi cluster join`) makes it a member again.

// MemberInterceptor answers every unary call on a removed controller with
// notAMember (GetClusterStatus excepted). It runs before leader forwarding.
func (s *Server) MemberInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if info.FullMethod != yunchiv1.ClusterService_GetClusterStatus_FullMethodName && s.member.Removed() {
		return nil, s.notAMember(info.FullMethod)
	}
	return handler(ctx, req)
}

// MemberStreamInterceptor is MemberInterceptor for streams (WatchVM, the
// agents' assignment stream).
func (s *Server) MemberStreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s.member.Removed() {
		return s.notAMember(info.FullMethod)
	}
	return handler(srv, ss)
}

// notAMember is a removed controller's answer: FAILED_PRECONDITION to
// clients (asking it again cannot help; the message names the controllers
// to use), UNAVAILABLE to agents (which move to their next controller on
// UNAVAILABLE). Both carry the reason NOT_A_MEMBER.
func (s *Server) notAMember(fullMethod string) error {
	code := codes.FailedPrecondition
	if strings.HasPrefix(fullMethod, "/"+yunchiv1.AgentService_ServiceDesc.ServiceName+"/") {
		code = codes.Unavailable
	}
	addrs := strings.Join(s.remainingAPIAddresses(), ",")
	msg := fmt.Sprintf("controller %s was removed from the cluster; use one of: %s", s.self.ID, addrs)
	if addrs == "" {
		msg = fmt.Sprintf("controller %s was removed from the cluster; use another controller", s.self.ID)
	}
	return withReason(status.New(code, msg), NotAMemberReason, map[string]string{"members": addrs})
}

// remainingAPIAddresses are the API addresses of the members in this
// node's latest configuration, as far as it knows them.
func (s *Server) remainingAPIAddresses() []string {
	ms, err := s.members()
	if err != nil {
		return nil
	}
	var out []string
	for _, m := range ms {
		if m.Id != s.self.ID && m.ApiAddress != "" {
			out = append(out, m.ApiAddress)
		}
	}
	return out
}

// WatchMembership logs, once each, when this controller finds itself
// removed from the cluster and when it is a member again. It returns when
// ctx is done.
func (s *Server) WatchMembership(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	removed := false
	for {
		if now := s.member.Removed(); now != removed {
			removed = now
			if removed {
				s.log.Warn("this controller was removed from the cluster: it answers every call with the remaining members' addresses; `yunchi cluster join` adds it back",
					"members", strings.Join(s.remainingAPIAddresses(), ","))
			} else {
				s.log.Info("this controller is a member of the cluster again")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
