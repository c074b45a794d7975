package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/api"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// errorReason is the google.rpc.ErrorInfo reason in err's details, "" if none.
func errorReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.Reason
		}
	}
	return ""
}

// TestRemoveLeader: removing the leader, asked through a follower, hands
// leadership over and succeeds, saying so; the two others form the cluster
// and forget the removed member's record; the removed controller answers
// every call with where to go (FAILED_PRECONDITION to clients, UNAVAILABLE
// to agents, reason NOT_A_MEMBER) and its status says "Removed". Then a
// follower is removed, the last voter cannot be, and the removed leader,
// joined again, is a member again.
func TestRemoveLeader(t *testing.T) {
	c := newInmemCluster(t)
	old := c.leader()
	if old == nil {
		t.Fatal("no leader")
	}
	var via *member
	for _, m := range c.members {
		if m != old {
			via = m
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := yunchiv1.NewClusterServiceClient(dial(t, via.ctl.Addr())).RemoveMember(ctx, &yunchiv1.RemoveMemberRequest{Id: old.id})
	if err != nil {
		t.Fatalf("remove leader %s through %s: %v", old.id, via.id, err)
	}
	if len(resp.Members) != 2 {
		t.Fatalf("members after the removal: %v", resp.Members)
	}
	newLeader := ""
	for _, m := range resp.Members {
		if m.Id == old.id {
			t.Fatalf("removed %s still listed: %v", old.id, resp.Members)
		}
		if m.Leader {
			newLeader = m.Id
		}
	}
	if want := old.id + " removed; it was the leader, leadership moved to " + newLeader; newLeader == "" || resp.Message != want {
		t.Fatalf("message %q, want %q", resp.Message, want)
	}

	var rest []*member
	var restAddrs []string
	for _, m := range c.members {
		if m != old {
			rest = append(rest, m)
			restAddrs = append(restAddrs, m.ctl.Addr())
		}
	}
	apitest.Eventually(t, 30*time.Second, "the two others to form the cluster without the record of "+old.id, func() bool {
		for _, m := range rest {
			st, err := apitest.Status(m.ctl.Addr())
			if err != nil || !apitest.Formed(st, 2) || st.LeaderId != newLeader {
				return false
			}
			if _, ok := m.ctl.Node().Store.Member(old.id); ok {
				return false
			}
		}
		return true
	})

	// The removed controller says so, and where to go.
	st, err := apitest.Status(old.ctl.Addr())
	if err != nil || st.NodeState != "Removed" {
		t.Fatalf("status of the removed controller: %v %v", st, err)
	}
	_, err = yunchiv1.NewVMServiceClient(dial(t, old.ctl.Addr())).ListVMs(ctx, &yunchiv1.ListVMsRequest{})
	msg := status.Convert(err).Message()
	if status.Code(err) != codes.FailedPrecondition || errorReason(err) != api.NotAMemberReason ||
		!strings.HasPrefix(msg, "controller "+old.id+" was removed from the cluster; use one of: ") {
		t.Fatalf("list on the removed controller: %v", err)
	}
	for _, a := range restAddrs {
		if !strings.Contains(msg, a) {
			t.Errorf("message %q does not name %s", msg, a)
		}
	}
	code, body := apitest.Get(t, old.ctl.Addr(), "/v1/vms")
	if code != 400 || !strings.Contains(string(body), "was removed from the cluster") {
		t.Errorf("REST list on the removed controller: %d %s", code, body)
	}
	code, body, err = apitest.Post(old.ctl.Addr(), "/v1/vms", `{"name":"x","vcpus":1,"memory":"1GiB"}`)
	if err != nil || code != 400 || !strings.Contains(string(body), "was removed from the cluster") {
		t.Errorf("REST create on the removed controller: %d %s %v", code, body, err)
	}
	_, err = yunchiv1.NewAgentServiceClient(dial(t, old.ctl.Addr())).Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: "a1-h01"})
	if status.Code(err) != codes.Unavailable || errorReason(err) != api.NotAMemberReason {
		t.Errorf("agent heartbeat on the removed controller: %v", err)
	}

	// A follower next: a plain removal.
	var follower *member
	for _, m := range rest {
		if m.id != newLeader {
			follower = m
		}
	}
	cc := yunchiv1.NewClusterServiceClient(dial(t, restAddrs[0]))
	resp, err = cc.RemoveMember(ctx, &yunchiv1.RemoveMemberRequest{Id: follower.id})
	if err != nil || resp.Message != follower.id+" removed" || len(resp.Members) != 1 || resp.Members[0].Id != newLeader {
		t.Fatalf("remove follower %s: %v %v", follower.id, resp, err)
	}
	// The last voter stays; an unknown id is not found.
	var lead *member
	for _, m := range rest {
		if m.id == newLeader {
			lead = m
		}
	}
	cc = yunchiv1.NewClusterServiceClient(dial(t, lead.ctl.Addr()))
	_, err = cc.RemoveMember(ctx, &yunchiv1.RemoveMemberRequest{Id: newLeader})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "only voter") {
		t.Fatalf("remove the last voter: %v", err)
	}
	_, err = cc.RemoveMember(ctx, &yunchiv1.RemoveMemberRequest{Id: "zz9"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("remove a non-member: %v", err)
	}

	// Joined again, the removed controller is a member and serves again.
	if _, err := cc.JoinCluster(ctx, &yunchiv1.JoinClusterRequest{
		Id: old.id, RaftAddress: string(old.trans.LocalAddr()), ApiAddress: old.ctl.Addr(), Center: old.center,
	}); err != nil {
		t.Fatalf("join %s again: %v", old.id, err)
	}
	apitest.Eventually(t, 30*time.Second, old.id+" to be a member again", func() bool {
		st, err := apitest.Status(old.ctl.Addr())
		if err != nil || st.NodeState == "Removed" || !apitest.Formed(st, 2) {
			return false
		}
		_, err = yunchiv1.NewVMServiceClient(dial(t, old.ctl.Addr())).ListVMs(ctx, &yunchiv1.ListVMsRequest{})
		return err == nil
	})
}
