package api

import (
	"context"
	"time"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// RunLeaderDuties does what only the leader does, while it is the leader:
// publish its own API address in the member table, record the heartbeats it
// heard (liveness.go), and mark hosts down when their heartbeats stop. It
// returns when ctx is done.
func (s *Server) RunLeaderDuties(ctx context.Context) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	wasLeader := false
	for {
		leader := s.node.IsLeader()
		if leader && !wasLeader {
			// Heartbeats went to the old leader: start every host's TTL afresh.
			var ids []string
			for _, hv := range s.store.Hosts() {
				ids = append(ids, hv.Host.Id)
			}
			now := time.Now()
			s.seen.reset(ids, now)
			s.heard.restart(now)
			s.log.Info("became leader", "id", s.self.ID)
		}
		if leader {
			s.publishSelf(ctx)
			s.recordHeartbeats(ctx)
			s.markSilentHostsDown(ctx)
		}
		wasLeader = leader
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (s *Server) publishSelf(ctx context.Context) {
	m, ok := s.store.Member(s.self.ID)
	if ok && m.ApiAddress == s.self.APIAddress && m.Center == s.self.Center && m.RaftAddress == s.node.Addr() {
		return
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.node.Apply(actx, &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{
		Member: &statev1.MemberRecord{Id: s.self.ID, RaftAddress: s.node.Addr(), ApiAddress: s.self.APIAddress, Center: s.self.Center},
	}}}); err != nil {
		s.log.Warn("could not publish own address", "err", err)
	}
}

func (s *Server) markSilentHostsDown(ctx context.Context) {
	now := time.Now()
	for _, id := range s.store.LiveHostIDs() {
		seen := s.seen.get(id)
		if seen == nil {
			s.seen.touch(id, now, nil) // registered through another leader
			continue
		}
		if now.Sub(seen.at) < s.HostTTL {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := s.node.Apply(actx, &statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{
			HostId: id, State: yunchiv1.HostState_HOST_STATE_DOWN,
		}}})
		cancel()
		if err != nil {
			s.log.Warn("could not mark host down", "host", id, "err", err)
			return
		}
		s.log.Warn("host missed its heartbeats: marked down", "host", id, "last_seen", seen.at)
	}
}
