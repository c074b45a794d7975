package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func newAuthCluster(t *testing.T) *inmemCluster {
	c := &inmemCluster{t: t, auth: true}
	for _, id := range []string{"a1", "a2", "b1"} {
		c.members = append(c.members, &member{id: id, center: id, dir: t.TempDir()})
	}
	c.form(nil)
	return c
}

func bearer(tok string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

// A revoked token stops working on every controller within a second of
// the revocation's answer; so does a deleted user's. Failed logins lock
// the user everywhere after state.MaxLoginFailures, and the auditor sees
// who did what.
func TestRevocationAndLockoutOnEveryController(t *testing.T) {
	c := newAuthCluster(t)
	leader := c.leader()
	lc := dial(t, leader.ctl.Addr())
	sec := bearer(c.admins.Secadmin)
	deps, projs, users, toks := yunchiv1.NewDepartmentServiceClient(lc), yunchiv1.NewProjectServiceClient(lc), yunchiv1.NewUserServiceClient(lc), yunchiv1.NewTokenServiceClient(lc)
	if _, err := deps.CreateDepartment(sec, &yunchiv1.CreateDepartmentRequest{Name: "eco"}); err != nil {
		t.Fatal(err)
	}
	if _, err := projs.CreateProject(sec, &yunchiv1.CreateProjectRequest{Name: "air", Department: "eco"}); err != nil {
		t.Fatal(err)
	}
	if _, err := users.CreateUser(sec, &yunchiv1.CreateUserRequest{Name: "alice", Role: "member", Department: "eco", Projects: []string{"air"}}); err != nil {
		t.Fatal(err)
	}
	mk := func() *yunchiv1.CreateTokenResponse {
		r, err := toks.CreateToken(sec, &yunchiv1.CreateTokenRequest{User: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	whoami := func(m *member, tok string) error {
		ctx, cancel := context.WithTimeout(bearer(tok), 5*time.Second)
		defer cancel()
		_, err := yunchiv1.NewTokenServiceClient(dial(t, m.ctl.Addr())).WhoAmI(ctx, &yunchiv1.WhoAmIRequest{})
		return err
	}
	r := mk()
	for _, m := range c.members {
		if err := whoami(m, r.Secret); err != nil {
			t.Fatalf("%s before revocation: %v", m.id, err)
		}
	}
	if _, err := toks.RevokeToken(sec, &yunchiv1.RevokeTokenRequest{Id: r.Token.Id}); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	for _, m := range c.members {
		for whoami(m, r.Secret) == nil {
			if time.Since(revoked) > time.Second {
				t.Fatalf("%s still takes the token %v after its revocation", m.id, time.Since(revoked))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Logf("revoked token refused by all 3 controllers within %v", time.Since(revoked))

	// Lockout: wrong secrets of alice's token, sent to a follower, lock
	// her on every controller (the follower sends the refused calls to
	// the leader, which counts them); the right token is then refused too.
	r2 := mk()
	wrong := r2.Secret[:len(r2.Secret)-1] + map[bool]string{true: "b", false: "a"}[strings.HasSuffix(r2.Secret, "a")]
	var follower *member
	for _, m := range c.members {
		if m != leader {
			follower = m
		}
	}
	for i := 0; i < state.MaxLoginFailures; i++ {
		if err := whoami(follower, wrong); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("wrong secret %d: %v", i, err)
		}
	}
	apitest.Eventually(t, 10*time.Second, "alice locked on every controller", func() bool {
		for _, m := range c.members {
			err := whoami(m, r2.Secret)
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "locked") {
				return false
			}
		}
		return true
	})
	if _, err := users.UpdateUser(sec, &yunchiv1.UpdateUserRequest{Name: "alice", Unlock: true}); err != nil {
		t.Fatal(err)
	}
	apitest.Eventually(t, 10*time.Second, "alice unlocked", func() bool { return whoami(leader, r2.Secret) == nil })

	// The trail names the actors: the secadmin's writes, alice's failures.
	ac := yunchiv1.NewAuditServiceClient(lc)
	apitest.Eventually(t, 10*time.Second, "the failed logins in the audit trail", func() bool {
		l, err := ac.ListAudit(bearer(c.admins.Auditor), &yunchiv1.ListAuditRequest{User: "alice"})
		if err != nil {
			return false
		}
		n := 0
		for _, rec := range l.Records {
			if rec.Kind == "login_failed" {
				n++
			}
		}
		return n >= state.MaxLoginFailures
	})
	l, err := ac.ListAudit(bearer(c.admins.Auditor), &yunchiv1.ListAuditRequest{User: "secadmin", Action: "CreateUser"})
	if err != nil || len(l.Records) != 1 || l.Records[0].Role != "ROLE_SECADMIN" || l.Records[0].Target != "user/alice" {
		t.Fatalf("secadmin's CreateUser in the trail: %v %v", l, err)
	}
	// A denial on a follower is in the trail too.
	if _, err := yunchiv1.NewHostServiceClient(dial(t, follower.ctl.Addr())).ListHosts(bearer(r2.Secret), &yunchiv1.ListHostsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a member listing hosts: %v", err)
	}
	apitest.Eventually(t, 10*time.Second, "the follower's denial in the trail", func() bool {
		l, err := ac.ListAudit(bearer(c.admins.Auditor), &yunchiv1.ListAuditRequest{User: "alice", Action: "ListHosts"})
		return err == nil && len(l.Records) == 1 && l.Records[0].Kind == "denied"
	})
	// A write refused before the log (bad input here) is recorded too.
	if _, err := yunchiv1.NewVMServiceClient(lc).CreateVM(bearer(r2.Secret), &yunchiv1.CreateVMRequest{Name: "big", Vcpus: -1}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad create: %v", err)
	}
	apitest.Eventually(t, 10*time.Second, "the refused create in the trail", func() bool {
		l, err := ac.ListAudit(bearer(c.admins.Auditor), &yunchiv1.ListAuditRequest{User: "alice", Action: "CreateVM"})
		return err == nil && len(l.Records) == 1 && l.Records[0].Kind == "rejected" && l.Records[0].Code == "InvalidArgument" && l.Records[0].Target == "project/air/vm/big"
	})
	for _, rec := range l.Records {
		if strings.Contains(rec.String(), r.Secret[20:]) || strings.Contains(rec.String(), r2.Secret[20:]) {
			t.Fatal("a token's secret is in the audit trail")
		}
	}
}

// Without a token, every RPC but the public ones answers UNAUTHENTICATED
// (REST: 401), on every controller.
func TestNoTokenNoAccess(t *testing.T) {
	c := newAuthCluster(t)
	for _, m := range c.members {
		conn := dial(t, m.ctl.Addr())
		for _, method := range auth.Methods() {
			rule, _ := auth.RuleFor(method)
			code := grpcCall(conn, method, context.Background(), scopedRequest(t, method, rule, false))
			if code != codes.Unauthenticated {
				t.Errorf("%s on %s without a token: %v", method, m.id, code)
			}
		}
		if code, _, _ := apitest.Do(m.ctl.Addr(), "POST", "/v1/vms", `{"name":"x"}`); code != 401 {
			t.Errorf("REST create on %s without a token: %d", m.id, code)
		}
	}
}
