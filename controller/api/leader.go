package api

import (
	"context"
	"time"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// dutyTick is how often the leader looks at its duties; a look that comes
// stallAllowance later than that means the process was stalled.
const (
	dutyTick       = 500 * time.Millisecond
	stallAllowance = time.Second
)

// RunLeaderDuties does what only the leader does, while it is the leader:
// publish its own API address in the member table, record the heartbeats it
// heard (liveness.go), and mark hosts down when their heartbeats stop. It
// returns when ctx is done.
func (s *Server) RunLeaderDuties(ctx context.Context) {
	tick := time.NewTicker(dutyTick)
	defer tick.Stop()
	wasLeader := false
	waitStart := time.Now()
	for {
		leader := s.node.IsLeader()
		// A wait on the ticker much longer than the tick means this process
		// did not run (SIGSTOP, a paused VM, swapping): it could not hear
		// heartbeats then, so that time does not count against the hosts.
		now := time.Now()
		if stalled := now.Sub(waitStart) - dutyTick; leader && wasLeader && stalled > stallAllowance {
			s.seen.paused(now, stalled)
			s.log.Warn("this leader did not run for a while: that time does not count against host heartbeats",
				"stalled", stalled.Round(time.Millisecond))
		}
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
		waitStart = time.Now()
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
		if seen.silentFor(now) < s.HostTTL {
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
