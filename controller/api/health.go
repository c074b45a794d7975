package api

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/auth"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// unhealthyReason is the one-line reason this controller cannot vouch for
// its local state, "" when it can. While its raft log store cannot write
// (a full data disk), raft cannot append here, so its state stops
// following the leader's.
func (s *Server) unhealthyReason() string {
	h := s.member.LogStoreHealth()
	if h.Healthy() {
		return ""
	}
	msg := fmt.Sprintf("controller %s cannot write its raft log since %s: %v; its state may be stale: use another controller",
		s.self.ID, h.Since.UTC().Format(time.RFC3339), h.Err)
	return strings.ReplaceAll(msg, "\n", "; ")
}

// alwaysServed are the calls a controller answers even when it cannot
// vouch for its state: they report on the controller and the cluster.
var alwaysServed = map[string]bool{
	yunchiv1.ClusterService_GetClusterStatus_FullMethodName: true,
	yunchiv1.ClusterService_ListMembers_FullMethodName:      true,
	healthpb.Health_Check_FullMethodName:                    true,
	healthpb.Health_Watch_FullMethodName:                    true,
	healthpb.Health_List_FullMethodName:                     true,
}

// StaleReadInterceptor refuses local reads with UNAVAILABLE while this
// controller cannot write its raft log: its state may be behind, and a
// client given several controllers moves on to the next. Writes and
// consistent reads still go on to LeaderInterceptor (they are decided on
// the leader); status and health always answer.
func (s *Server) StaleReadInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if alwaysServed[info.FullMethod] || auth.Mutating(info.FullMethod) {
		return handler(ctx, req)
	}
	if cr, ok := req.(consistentReader); ok && cr.GetConsistent() {
		return handler(ctx, req)
	}
	if r := s.unhealthyReason(); r != "" {
		return nil, status.Error(codes.Unavailable, r)
	}
	return handler(ctx, req)
}

// StaleStreamInterceptor refuses streams served from local state (VM
// watches, an agent's assignments) for the same reason.
func (s *Server) StaleStreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !alwaysServed[info.FullMethod] {
		if r := s.unhealthyReason(); r != "" {
			return status.Error(codes.Unavailable, r)
		}
	}
	return handler(srv, ss)
}

// RunHealth keeps the gRPC health service's overall status ("")
// NOT_SERVING while the controller cannot vouch for its state, SERVING
// otherwise, checking twice a second until ctx is done.
func (s *Server) RunHealth(ctx context.Context) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	last, set := "", false
	for {
		if r := s.unhealthyReason(); r != last || !set {
			st := healthpb.HealthCheckResponse_SERVING
			if r != "" {
				st = healthpb.HealthCheckResponse_NOT_SERVING
				s.log.Warn("not serving local reads", "reason", r)
			} else if last != "" {
				s.log.Info("serving local reads again")
			}
			s.setHealth(st)
			last, set = r, true
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (s *Server) setHealth(st healthpb.HealthCheckResponse_ServingStatus) {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	if s.health == nil {
		return
	}
	s.health.SetServingStatus("", st)
}

// newHealthServer is the gRPC health service, SERVING until RunHealth
// says otherwise.
func (s *Server) newHealthServer() *health.Server {
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.healthMu.Lock()
	s.health = hs
	s.healthMu.Unlock()
	return hs
}
