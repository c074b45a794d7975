package api

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func (s *Server) members() ([]*yunchiv1.Member, error) {
	f := s.node.Raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, toStatus(err)
	}
	leader := s.node.LeaderID()
	out := []*yunchiv1.Member{}
	for _, srv := range f.Configuration().Servers {
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
	st := s.node.Raft.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(st[k], 10, 64); return v }
	ms, err := s.members()
	if err != nil {
		return nil, err
	}
	out := &yunchiv1.ClusterStatus{
		NodeId: s.self.ID, NodeState: st["state"], LeaderId: s.node.LeaderID(),
		Term: u("term"), CommitIndex: u("commit_index"), AppliedIndex: u("applied_index"),
		LastLogIndex: u("last_log_index"), Members: ms,
	}
	if rec, ok := s.store.Member(out.LeaderId); ok {
		out.LeaderApiAddress = rec.ApiAddress
	}
	lh := s.node.LogStoreHealth()
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
	if err := s.node.Raft.AddVoter(raft.ServerID(req.Id), raft.ServerAddress(req.RaftAddress), 0, timeout).Error(); err != nil {
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

func (s *Server) RemoveMember(ctx context.Context, req *yunchiv1.RemoveMemberRequest) (*yunchiv1.ListMembersResponse, error) {
	if err := checkName("member id", req.Id); err != nil {
		return nil, err
	}
	ms, err := s.members()
	if err != nil {
		return nil, err
	}
	found := false
	for _, m := range ms {
		found = found || m.Id == req.Id
	}
	if !found {
		return nil, status.Errorf(codes.NotFound, "controller %q is not a member (see `yunchi cluster members`)", req.Id)
	}
	if err := s.node.Raft.RemoveServer(raft.ServerID(req.Id), 0, 10*time.Second).Error(); err != nil {
		return nil, toStatus(err)
	}
	if _, ok := s.store.Member(req.Id); ok {
		if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_RemoveMember{RemoveMember: &statev1.RemoveMember{Id: req.Id}}}); err != nil {
			return nil, err
		}
	}
	return s.ListMembers(ctx, nil)
}
