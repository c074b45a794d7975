package api

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func (s *Server) members() ([]*yunchiv1.Member, error) {
	conf, err := s.member.Configuration()
	if err != nil {
		return nil, toStatus(err)
	}
	leader := s.prop.LeaderID()
	out := []*yunchiv1.Member{}
	for _, srv := range conf.Servers {
		m := &yunchiv1.Member{
			Id: string(srv.ID), RaftAddress: string(srv.Address),
			Suffrage: "voter", Leader: string(srv.ID) == leader,
		}
		if srv.Suffrage != raft.Voter {
			m.Suffrage = "nonvoter"
		}
		if rec, ok := s.store.Member(m.Id); ok {
			m.ApiAddress, m.Center = rec.ApiAddress, rec.Center
		}
		out = append(out, m)
	}
	return out, nil
}

func (s *Server) GetClusterStatus(ctx context.Context, _ *yunchiv1.GetClusterStatusRequest) (*yunchiv1.ClusterStatus, error) {
	st := s.member.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(st[k], 10, 64); return v }
	ms, err := s.members()
	if err != nil {
		return nil, err
	}
	nodeState := st["state"]
	if s.member.Removed() {
		nodeState = "Removed"
	}
	out := &yunchiv1.ClusterStatus{
		NodeId: s.self.ID, NodeState: nodeState, LeaderId: s.prop.LeaderID(),
		Term: u("term"), CommitIndex: u("commit_index"), AppliedIndex: u("applied_index"),
		LastLogIndex: u("last_log_index"), Members: ms,
	}
	if rec, ok := s.store.Member(out.LeaderId); ok {
		out.LeaderApiAddress = rec.ApiAddress
	}
	out.Warnings = quorumWarnings(votersOf(ms))
	lh := s.member.LogStoreHealth()
	out.LogStoreWriteFailures = lh.Failures
	if !lh.Healthy() {
		out.LogStoreError = strings.ReplaceAll(lh.Err.Error(), "\n", "; ")
		out.LogStoreFailingSince = timestamppb.New(lh.Since)
	}
	return out, nil
}

func (s *Server) ListMembers(ctx context.Context, _ *yunchiv1.ListMembersRequest) (*yunchiv1.ListMembersResponse, error) {
	ms, err := s.members()
	if err != nil {
		return nil, err
	}
	return &yunchiv1.ListMembersResponse{Members: ms}, nil
}

// JoinCluster adds a controller as a voter (leader only; followers forward).
// Joining again with the same id and address is a no-op, so a restarted
// controller can always ask.
func (s *Server) JoinCluster(ctx context.Context, req *yunchiv1.JoinClusterRequest) (*yunchiv1.Member, error) {
	if err := checkName("member id", req.Id); err != nil {
		return nil, err
	}
	if req.RaftAddress == "" || req.ApiAddress == "" {
		return nil, invalid("raft_address and api_address are required (host:port)")
	}
	for _, a := range []string{req.RaftAddress, req.ApiAddress} {
		if err := checkHostPort(a); err != nil {
			return nil, err
		}
	}
	if req.Center != "" {
		if err := checkName("center", req.Center); err != nil {
			return nil, err
		}
	}
	timeout := 10 * time.Second
	if err := s.member.AddVoter(req.Id, req.RaftAddress, timeout); err != nil {
		return nil, toStatus(err)
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{
		Member: &statev1.MemberRecord{Id: req.Id, RaftAddress: req.RaftAddress, ApiAddress: req.ApiAddress, Center: req.Center},
	}}}); err != nil {
		return nil, err
	}
	s.log.Info("controller joined", "id", req.Id, "raft", req.RaftAddress, "api", req.ApiAddress, "center", req.Center)
	return &yunchiv1.Member{Id: req.Id, RaftAddress: req.RaftAddress, ApiAddress: req.ApiAddress, Center: req.Center, Suffrage: "voter"}, nil
}

// RemoveMember takes a controller out of the cluster (leader only;
// followers forward): out of the raft configuration, and its member record
// out of the state. The leader does not remove itself: it hands leadership
// to the most up-to-date voter first and has the new leader remove it, so
// the call completes and the cluster never waits for an election. The last
// voter cannot be removed. Asking again for a controller already out of the
// configuration removes what is left of it (its record).
func (s *Server) RemoveMember(ctx context.Context, req *yunchiv1.RemoveMemberRequest) (*yunchiv1.ListMembersResponse, error) {
	if err := checkName("member id", req.Id); err != nil {
		return nil, err
	}
	conf, err := s.member.Configuration()
	if err != nil {
		return nil, toStatus(err)
	}
	var target *raft.Server
	voters := 0
	for _, srv := range conf.Servers {
		if srv.Suffrage == raft.Voter {
			voters++
		}
		if string(srv.ID) == req.Id {
			target = &srv
		}
	}
	_, hasRecord := s.store.Member(req.Id)
	switch {
	case target == nil && !hasRecord:
		return nil, status.Errorf(codes.NotFound, "controller %q is not a member (see `yunchi cluster members`)", req.Id)
	case target != nil && target.Suffrage == raft.Voter && voters == 1:
		return nil, status.Errorf(codes.FailedPrecondition, "controller %s is the only voter: removing it would leave no cluster", req.Id)
	case target != nil && req.Id == s.self.ID:
		return s.removeLeader(ctx, req)
	}
	msg := req.Id + " removed"
	if target != nil {
		if err := s.member.RemoveServer(string(target.ID), 10*time.Second); err != nil {
			return nil, toStatus(err)
		}
	} else {
		msg = req.Id + " was already out of the raft configuration; its member record is removed"
	}
	if hasRecord {
		if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_RemoveMember{RemoveMember: &statev1.RemoveMember{Id: req.Id}}}); err != nil {
			return nil, err
		}
	}
	s.log.Info("controller removed", "id", req.Id)
	ms, err := s.members()
	if err != nil {
		return nil, err
	}
	return &yunchiv1.ListMembersResponse{Members: ms, Message: msg}, nil
}

// removeLeader removes this controller, the leader: it transfers
// leadership, waits to hear from the new leader and asks it to do the
// removal (as a forwarded call, so it cannot bounce back).
func (s *Server) removeLeader(ctx context.Context, req *yunchiv1.RemoveMemberRequest) (*yunchiv1.ListMembersResponse, error) {
	if err := s.member.LeadershipTransfer(); err != nil {
		return nil, notProposed("controller %s is the leader and could not hand leadership over before its removal (%v); nothing was removed: retry", s.self.ID, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	leader := s.prop.LeaderID()
	for leader == "" || leader == s.self.ID {
		select {
		case <-wctx.Done():
			return nil, notProposed("controller %s handed leadership over, but no new leader was heard of in time; nothing was removed: retry", s.self.ID)
		case <-tick.C:
		}
		leader = s.prop.LeaderID()
	}
	s.log.Info("leadership handed over before removing this controller", "new_leader", leader)
	conn, err := s.fwd.leaderConn()
	if err != nil {
		return nil, err
	}
	in, _ := metadata.FromIncomingContext(ctx)
	resp, err := yunchiv1.NewClusterServiceClient(conn).RemoveMember(metadata.NewOutgoingContext(ctx, s.forwardMD(ctx, in)), req)
	if err != nil {
		p := status.Convert(err).Proto() // keeps the code and details (NOT_PROPOSED)
		p.Message = fmt.Sprintf("leadership moved from %s to %s, but the removal failed there: %s", s.self.ID, leader, p.Message)
		return nil, status.ErrorProto(p)
	}
	resp.Message = fmt.Sprintf("%s removed; it was the leader, leadership moved to %s", req.Id, leader)
	return resp, nil
}
