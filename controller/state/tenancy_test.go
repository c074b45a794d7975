package state

import (
	"bytes"
	"testing"
	"time"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

func mkDept(name string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_CreateDepartment{CreateDepartment: &statev1.CreateDepartment{Department: &statev1.DepartmentRecord{Name: name}}}}
}

func mkProject(name, dept string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_CreateProject{CreateProject: &statev1.CreateProject{Project: &statev1.ProjectRecord{Name: name, Department: dept}}}}
}

func mkUser(name, dept string, role statev1.Role, projects ...string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_CreateUser{CreateUser: &statev1.CreateUser{User: &statev1.UserRecord{Name: name, Department: dept, Role: role, Projects: projects}}}}
}

func mkToken(id, user string, expires int64) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_CreateToken{CreateToken: &statev1.CreateToken{Token: &statev1.TokenRecord{
		Id: id, User: user, SecretHash: bytes.Repeat([]byte{7}, 32), ExpiresUnixNano: expires}}}}
}

func wantKind(t *testing.T, s *Store, index uint64, cmd *statev1.Command, k Kind) {
	t.Helper()
	before := s.Snapshot()
	if _, err := apply(t, s, index, cmd); KindOf(err) != k {
		t.Fatalf("apply %d: %v, want kind %d", index, err, k)
	}
	unchanged(t, s, before)
}

func TestTenancyLifecycle(t *testing.T) {
	s := threeHosts(t) // indexes 1-3
	mustApply(t, s, 10, mkDept("eco"))
	wantKind(t, s, 11, mkDept("eco"), KindAlreadyExists)
	wantKind(t, s, 11, mkDept("default"), KindAlreadyExists)
	wantKind(t, s, 11, mkDept("Eco!"), KindInvalid)
	mustApply(t, s, 12, mkProject("air", "eco"))
	wantKind(t, s, 13, mkProject("air", "eco"), KindAlreadyExists)
	wantKind(t, s, 13, mkProject("default", "eco"), KindAlreadyExists)
	wantKind(t, s, 13, mkProject("river", "nope"), KindNotFound)
	if d, ok := s.ProjectDepartment("air"); !ok || d != "eco" {
		t.Fatalf("air is in %q %v", d, ok)
	}
	if d, ok := s.ProjectDepartment("default"); !ok || d != DefaultDepartment {
		t.Fatalf("default project is in %q %v", d, ok)
	}

	// Users: cluster roles have no department; department roles need one
	// and only its projects.
	mustApply(t, s, 14, mkUser("root", "", statev1.Role_ROLE_SYSADMIN))
	wantKind(t, s, 15, mkUser("sec", "eco", statev1.Role_ROLE_SECADMIN), KindInvalid)
	wantKind(t, s, 15, mkUser("alice", "eco", statev1.Role_ROLE_MEMBER, "default"), KindNotFound) // default's project
	wantKind(t, s, 15, mkUser("alice", "eco", statev1.Role_ROLE_HOST), KindInvalid)
	mustApply(t, s, 16, mkUser("alice", "eco", statev1.Role_ROLE_MEMBER, "air"))
	wantKind(t, s, 17, mkUser("alice", "eco", statev1.Role_ROLE_MEMBER), KindAlreadyExists)

	// VMs and groups only go into projects that exist (version 5 on).
	vm := vmRec("i1", "v1", "h1", "", 1, gib)
	vm.Project = "air"
	mustApply(t, s, 18, placeMany(vm))
	ghost := vmRec("i2", "v2", "h1", "", 1, gib)
	ghost.Project = "ghost"
	wantKind(t, s, 19, placeMany(ghost), KindNotFound)

	// Deleting refuses while something remains.
	wantKind(t, s, 20, &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: "air"}}}, KindFailedPrecondition)
	wantKind(t, s, 20, &statev1.Command{Cmd: &statev1.Command_DeleteDepartment{DeleteDepartment: &statev1.DeleteDepartment{Name: "eco"}}}, KindFailedPrecondition)
	wantKind(t, s, 20, &statev1.Command{Cmd: &statev1.Command_DeleteDepartment{DeleteDepartment: &statev1.DeleteDepartment{Name: "default"}}}, KindFailedPrecondition)
	wantKind(t, s, 20, &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: "default"}}}, KindFailedPrecondition)
	mustApply(t, s, 21, desired("i1", statev1.PowerState_POWER_STATE_DELETED, false))
	mustApply(t, s, 22, report("h1", &statev1.VMStatus{VmId: "i1", Gone: true}))
	mustApply(t, s, 23, &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: "air"}}})
	if u, _ := s.User("alice"); len(u.Projects) != 0 {
		t.Fatalf("alice still in %v after air was deleted", u.Projects)
	}
	wantKind(t, s, 24, &statev1.Command{Cmd: &statev1.Command_DeleteDepartment{DeleteDepartment: &statev1.DeleteDepartment{Name: "eco"}}}, KindFailedPrecondition) // alice
	mustApply(t, s, 25, &statev1.Command{Cmd: &statev1.Command_DeleteUser{DeleteUser: &statev1.DeleteUser{Name: "alice"}}})
	mustApply(t, s, 26, &statev1.Command{Cmd: &statev1.Command_DeleteDepartment{DeleteDepartment: &statev1.DeleteDepartment{Name: "eco"}}})
	if _, ok := s.Department("eco"); ok {
		t.Fatal("eco still there")
	}
}

// A VM put into any project before departments existed keeps that project,
// in department default; it cannot be re-created elsewhere.
func TestLegacyProjectsAreInDefault(t *testing.T) {
	s := threeHosts(t)
	vm := vmRec("i1", "v1", "h1", "", 1, gib)
	vm.Project = "tax"
	cmd := placeMany(vm)
	cmd.Version, cmd.UnixNano = 4, 10_000
	if _, err := s.Apply(10, overWire(t, cmd)); err != nil {
		t.Fatalf("a version 4 create into any project: %v", err)
	}
	if d, ok := s.ProjectDepartment("tax"); !ok || d != DefaultDepartment {
		t.Fatalf("tax is in %q %v, want default", d, ok)
	}
	mustApply(t, s, 11, mkDept("eco"))
	wantKind(t, s, 12, mkProject("tax", "eco"), KindAlreadyExists)
	found := false
	for _, p := range s.Projects(DefaultDepartment) {
		found = found || p.Name == "tax"
	}
	if !found {
		t.Fatalf("tax not listed in default: %v", s.Projects(DefaultDepartment))
	}
}

func TestTokensAndLockout(t *testing.T) {
	s := New()
	mustApply(t, s, 1, mkUser("sec", "", statev1.Role_ROLE_SECADMIN))
	mustApply(t, s, 2, mkToken("t1", "sec", 0))
	wantKind(t, s, 3, mkToken("t1", "sec", 0), KindAlreadyExists)
	wantKind(t, s, 3, mkToken("t2", "nobody", 0), KindNotFound)
	wantKind(t, s, 3, mkToken("t2", "sec", 1), KindInvalid) // expired before created (time 3000)
	short := mkToken("t3", "sec", 0)
	short.GetCreateToken().Token.SecretHash = []byte("x")
	wantKind(t, s, 3, short, KindInvalid)
	res := mustApply(t, s, 4, &statev1.Command{Cmd: &statev1.Command_RevokeToken{RevokeToken: &statev1.RevokeToken{Id: "t1"}}})
	if res.Token.RevokedUnixNano != 4000 {
		t.Fatalf("revoked at %d", res.Token.RevokedUnixNano)
	}
	if tk, _, _ := s.Credential("t1"); tk.RevokedUnixNano == 0 {
		t.Fatal("credential not revoked")
	}

	// Lockout: MaxLoginFailures within the window lock the user.
	fail := &statev1.Command{Cmd: &statev1.Command_RecordLoginFailures{RecordLoginFailures: &statev1.RecordLoginFailures{
		Failures: []*statev1.LoginFailure{{User: "sec", TokenId: "t1", Reason: "revoked"}, {User: "ghost", TokenId: "zz"}}}}}
	base := uint64(1_000_000)
	for i := 0; i < MaxLoginFailures-1; i++ {
		mustApply(t, s, base+uint64(i), fail)
	}
	if u, _ := s.User("sec"); u.LockedUntilUnixNano != 0 || len(u.FailuresUnixNano) != MaxLoginFailures-1 {
		t.Fatalf("after %d failures: %+v", MaxLoginFailures-1, u)
	}
	mustApply(t, s, base+10, fail)
	u, _ := s.User("sec")
	if want := int64(base+10)*1000 + int64(LockoutDuration); u.LockedUntilUnixNano != want {
		t.Fatalf("locked until %d, want %d", u.LockedUntilUnixNano, want)
	}
	mustApply(t, s, base+11, &statev1.Command{Cmd: &statev1.Command_UpdateUser{UpdateUser: &statev1.UpdateUser{Name: "sec", Unlock: true}}})
	if u, _ := s.User("sec"); u.LockedUntilUnixNano != 0 {
		t.Fatal("unlock did not unlock")
	}
	// Failures older than the window do not count.
	s2 := New()
	mustApply(t, s2, 1, mkUser("op", "", statev1.Role_ROLE_OPERATOR))
	step := uint64(LoginFailureWindow/time.Microsecond) / uint64(MaxLoginFailures-1) // index*1000 ns = command time
	for i := 0; i < 2*MaxLoginFailures; i++ {
		mustApply(t, s2, 2+uint64(i)*step, fail)
		mustApply(t, s2, 3+uint64(i)*step, &statev1.Command{Cmd: &statev1.Command_RecordLoginFailures{RecordLoginFailures: &statev1.RecordLoginFailures{Failures: []*statev1.LoginFailure{{User: "op"}}}}})
	}
	if u, _ := s2.User("op"); u.LockedUntilUnixNano != 0 {
		t.Fatalf("failures spread beyond the window locked op: %+v", u)
	}
	// Deleting a user revokes its tokens.
	mustApply(t, s, base+12, mkToken("t5", "sec", 0))
	mustApply(t, s, base+13, &statev1.Command{Cmd: &statev1.Command_DeleteUser{DeleteUser: &statev1.DeleteUser{Name: "sec"}}})
	if tk, u, _ := s.Credential("t5"); tk.RevokedUnixNano == 0 || u != nil {
		t.Fatalf("token of a deleted user: %+v user %v", tk, u)
	}
}

// A project's placement groups count as its use after a snapshot is
// restored as they did before: a controller restored from a snapshot and
// one that replayed the log agree on whether the project may be deleted.
func TestRestoreCountsGroupsInProjectUse(t *testing.T) {
	s := threeHosts(t)
	mustApply(t, s, 10, mkDept("eco"))
	mustApply(t, s, 11, mkProject("air", "eco"))
	g := createGroup("g", statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY, 0, false, 0)
	g.GetCreatePlacementGroup().Group.Project = "air"
	mustApply(t, s, 12, g)
	r := New()
	if err := r.Restore(s.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if a, b := s.ProjectUse("air"), r.ProjectUse("air"); a != 1 || b != a {
		t.Fatalf("project use: %d replayed, %d restored", a, b)
	}
	del := &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: "air"}}}
	wantKind(t, r, 13, del, KindFailedPrecondition)
}
