package state

import (
	"testing"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

func i64(v int64) *int64 { return &v }

func setQuota(dept, project string, q *statev1.Quota, clear ...statev1.QuotaDimension) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_SetQuota{SetQuota: &statev1.SetQuota{Department: dept, Project: project, Quota: q, Clear: clear}}}
}

func projVM(id, name, project, host string, cpu int32, mem, disk int64) *statev1.VMRecord {
	return &statev1.VMRecord{Id: id, Name: name, Project: project, Vcpus: cpu, MemoryBytes: mem, DiskBytes: disk, HostId: host}
}

func wantUse(t *testing.T, s *Store, dept, project string, want Usage) {
	t.Helper()
	q, ok := s.Quota(dept, project)
	if !ok || q.Used != want {
		t.Fatalf("use of %s/%s = %+v (%v), want %+v", dept, project, q.Used, ok, want)
	}
}

// quotaFixture: three hosts (16 vCPU, 64 GiB, 1000 GiB each), department
// eco with projects air and water, quotas eco 16 vCPU / 64 GiB / 500 GiB
// / 10 VMs and air 8 vCPU. Indexes up to 20.
func quotaFixture(t *testing.T) *Store {
	s := threeHosts(t)
	mustApply(t, s, 10, mkDept("eco"))
	mustApply(t, s, 11, mkProject("air", "eco"))
	mustApply(t, s, 12, mkProject("water", "eco"))
	mustApply(t, s, 13, setQuota("eco", "", &statev1.Quota{Vcpus: i64(16), MemoryBytes: i64(64 * gib), DiskBytes: i64(500 * gib), Vms: i64(10)}))
	mustApply(t, s, 14, setQuota("eco", "air", &statev1.Quota{Vcpus: i64(8)}))
	return s
}

// Each dimension is enforced, for the project and for its department,
// with a message naming the limit, the use and the ask; a refusal changes
// nothing and is final (not a conflict to decide again).
func TestQuotaLimitsEachDimension(t *testing.T) {
	s := quotaFixture(t)
	mustApply(t, s, 21, placeMany(projVM("a1", "a1", "air", "h1", 6, 4*gib, 10*gib)))
	wantUse(t, s, "eco", "air", Usage{6, 4 * gib, 10 * gib, 1})
	wantUse(t, s, "eco", "", Usage{6, 4 * gib, 10 * gib, 1})

	before := s.Snapshot()
	_, err := apply(t, s, 22, placeMany(projVM("a2", "a2", "air", "h1", 4, gib, 10*gib)))
	wantRefused(t, err, KindQuotaExceeded, `quota exceeded: project "air" vCPU: limit 8, in use 6, asked 4`)
	if e := err.(*Error); e.Subject != "project:air" {
		t.Fatalf("subject %q", e.Subject)
	}
	unchanged(t, s, before)

	// water has no quota of its own: the department's applies.
	mustApply(t, s, 23, placeMany(projVM("w1", "w1", "water", "h2", 10, 8*gib, 10*gib)))
	_, err = apply(t, s, 24, placeMany(projVM("w2", "w2", "water", "h2", 2, gib, 10*gib)))
	wantRefused(t, err, KindQuotaExceeded, `quota exceeded: department "eco" vCPU: limit 16, in use 16, asked 2`)
	if e := err.(*Error); e.Subject != "department:eco" {
		t.Fatalf("subject %q", e.Subject)
	}
	// Memory, disk and count, each at its own edge.
	mustApply(t, s, 25, setQuota("eco", "", nil, statev1.QuotaDimension_QUOTA_DIMENSION_VCPUS))
	_, err = apply(t, s, 26, placeMany(projVM("w3", "w3", "water", "h3", 1, 60*gib, 10*gib)))
	wantRefused(t, err, KindQuotaExceeded, `department "eco" memory: limit 64 GiB, in use 12 GiB, asked 60 GiB`)
	_, err = apply(t, s, 26, placeMany(projVM("w3", "w3", "water", "h3", 1, gib, 481*gib)))
	wantRefused(t, err, KindQuotaExceeded, `department "eco" disk: limit 500 GiB, in use 20 GiB, asked 481 GiB`)
	mustApply(t, s, 26, placeMany(projVM("w3", "w3", "water", "h3", 1, gib, 480*gib))) // exactly at the limit
	mustApply(t, s, 27, setQuota("eco", "", &statev1.Quota{Vms: i64(3), DiskBytes: i64(1000 * gib)}))
	_, err = apply(t, s, 28, placeMany(projVM("w4", "w4", "water", "h3", 1, gib, 10*gib)))
	wantRefused(t, err, KindQuotaExceeded, `department "eco" VMs: limit 3, in use 3, asked 1`)
}

// A batch goes over as a whole or not at all; the VMs of the batch count
// together.
func TestQuotaBatchAllOrNothing(t *testing.T) {
	s := quotaFixture(t)
	before := s.Snapshot()
	_, err := apply(t, s, 21, placeMany(
		projVM("a1", "a1", "air", "h1", 4, gib, 10*gib),
		projVM("a2", "a2", "air", "h2", 4, gib, 10*gib),
		projVM("a3", "a3", "air", "h3", 4, gib, 10*gib)))
	wantRefused(t, err, KindQuotaExceeded, `project "air" vCPU: limit 8, in use 0, asked 12`)
	unchanged(t, s, before)
	mustApply(t, s, 22, placeMany(
		projVM("a1", "a1", "air", "h1", 4, gib, 10*gib),
		projVM("a2", "a2", "air", "h2", 4, gib, 10*gib)))
	wantUse(t, s, "eco", "air", Usage{8, 2 * gib, 20 * gib, 2})
}

// A VM being deleted still counts; once gone, its share is free again.
func TestQuotaDeletionFrees(t *testing.T) {
	s := quotaFixture(t)
	mustApply(t, s, 21, placeMany(projVM("a1", "a1", "air", "h1", 8, gib, 10*gib)))
	mustApply(t, s, 22, desired("a1", statev1.PowerState_POWER_STATE_DELETED, false))
	_, err := apply(t, s, 23, placeMany(projVM("a2", "a2", "air", "h1", 1, gib, 10*gib)))
	wantRefused(t, err, KindQuotaExceeded, `project "air" vCPU: limit 8, in use 8, asked 1`)
	mustApply(t, s, 24, report("h1", &statev1.VMStatus{VmId: "a1", Gone: true}))
	wantUse(t, s, "eco", "air", Usage{})
	wantUse(t, s, "eco", "", Usage{})
	mustApply(t, s, 25, placeMany(projVM("a2", "a2", "air", "h1", 8, gib, 10*gib)))
}

// Validation: negative limits, a project above its department, a
// department below one of its projects, unknown departments and projects
// of another department are refused and change nothing; a limit below
// what is in use is accepted and refuses only new VMs.
func TestSetQuotaRules(t *testing.T) {
	s := quotaFixture(t)
	mustApply(t, s, 20, mkDept("tax"))
	wantKind(t, s, 21, setQuota("eco", "", &statev1.Quota{Vcpus: i64(-1)}), KindInvalid)
	wantKind(t, s, 21, setQuota("eco", "air", &statev1.Quota{Vcpus: i64(17)}), KindFailedPrecondition)
	wantKind(t, s, 21, setQuota("eco", "air", &statev1.Quota{Vcpus: i64(4)}, statev1.QuotaDimension_QUOTA_DIMENSION_VCPUS), KindInvalid)
	wantKind(t, s, 21, setQuota("eco", "air", nil, statev1.QuotaDimension(99)), KindInvalid)
	wantKind(t, s, 21, setQuota("eco", "", &statev1.Quota{Vcpus: i64(7)}), KindFailedPrecondition)
	wantKind(t, s, 21, setQuota("nope", "", &statev1.Quota{Vcpus: i64(7)}), KindNotFound)
	wantKind(t, s, 21, setQuota("tax", "air", &statev1.Quota{Vcpus: i64(1)}), KindNotFound)
	wantKind(t, s, 21, setQuota("eco", "nope", &statev1.Quota{Vcpus: i64(1)}), KindNotFound)
	_, err := apply(t, s, 21, setQuota("eco", "", &statev1.Quota{Vcpus: i64(7)}))
	wantRefused(t, err, KindFailedPrecondition, `department "eco" vCPU quota 7 would be below its project "air"'s 8`)
	_, err = apply(t, s, 21, setQuota("eco", "air", &statev1.Quota{Vcpus: i64(20)}))
	wantRefused(t, err, KindFailedPrecondition, `project "air" vCPU quota 20 would be above department "eco"'s 16`)
	// Created with a quota: the same rules.
	wantKind(t, s, 21, &statev1.Command{Cmd: &statev1.Command_CreateProject{CreateProject: &statev1.CreateProject{Project: &statev1.ProjectRecord{
		Name: "soil", Department: "eco", Quota: &statev1.Quota{Vms: i64(11)}}}}}, KindFailedPrecondition)
	wantKind(t, s, 21, &statev1.Command{Cmd: &statev1.Command_CreateDepartment{CreateDepartment: &statev1.CreateDepartment{Department: &statev1.DepartmentRecord{
		Name: "edu", Quota: &statev1.Quota{Vms: i64(-2)}}}}}, KindInvalid)

	// Below use: the VMs stay, new ones are refused.
	mustApply(t, s, 22, placeMany(projVM("a1", "a1", "air", "h1", 6, gib, 10*gib)))
	res := mustApply(t, s, 23, setQuota("eco", "air", &statev1.Quota{Vcpus: i64(2), Vms: i64(5)}))
	if p := res.Project; p == nil || p.GetQuota().GetVcpus() != 2 || p.GetQuota().GetVms() != 5 {
		t.Fatalf("result %v", res)
	}
	wantUse(t, s, "eco", "air", Usage{6, gib, 10 * gib, 1})
	_, err = apply(t, s, 24, placeMany(projVM("a2", "a2", "air", "h1", 1, gib, 10*gib)))
	wantRefused(t, err, KindQuotaExceeded, `project "air" vCPU: limit 2, in use 6, asked 1`)
	// Unset dimensions stay; cleared ones go; all cleared is no quota.
	mustApply(t, s, 25, setQuota("eco", "air", nil, statev1.QuotaDimension_QUOTA_DIMENSION_VCPUS))
	if q, _ := s.Quota("eco", "air"); q.Limit.Vcpus != nil || q.Limit.GetVms() != 5 {
		t.Fatalf("after clearing vcpus: %v", q.Limit)
	}
	mustApply(t, s, 26, setQuota("eco", "air", nil, statev1.QuotaDimension_QUOTA_DIMENSION_VMS))
	if q, _ := s.Quota("eco", "air"); q.Limit != nil {
		t.Fatalf("after clearing all: %v", q.Limit)
	}
}

// The default department and projects without a record (the default
// project, and projects from before departments) take quotas too; the
// default project still cannot be deleted once it has a record.
func TestQuotaLegacyAndDefault(t *testing.T) {
	s := threeHosts(t)
	// Before departments: a VM in project "old", which has no record.
	if _, err := legacyApply(t, s, 5, place("o1", "o1", "h1", 2, gib)); err != nil {
		t.Fatal(err)
	}
	o := place("o2", "o2", "h1", 2, gib)
	o.GetPlaceVm().Vm.Project = "old"
	if _, err := legacyApply(t, s, 6, o); err != nil {
		t.Fatal(err)
	}
	wantUse(t, s, DefaultDepartment, "", Usage{4, 2 * gib, 20 * gib, 2})
	wantUse(t, s, DefaultDepartment, "old", Usage{2, gib, 10 * gib, 1})
	mustApply(t, s, 7, setQuota(DefaultDepartment, "", &statev1.Quota{Vcpus: i64(6)}))
	mustApply(t, s, 8, setQuota(DefaultDepartment, "old", &statev1.Quota{Vms: i64(1)}))
	mustApply(t, s, 9, setQuota(DefaultDepartment, DefaultProject, &statev1.Quota{Vcpus: i64(3)}))
	if d, ok := s.ProjectDepartment("old"); !ok || d != DefaultDepartment {
		t.Fatalf("old is in %q", d)
	}
	_, err := apply(t, s, 10, placeMany(projVM("o3", "o3", "old", "h2", 1, gib, 10*gib)))
	wantRefused(t, err, KindQuotaExceeded, `project "old" VMs: limit 1, in use 1, asked 1`)
	_, err = apply(t, s, 10, placeMany(projVM("d2", "d2", DefaultProject, "h2", 2, gib, 10*gib)))
	wantRefused(t, err, KindQuotaExceeded, `project "default" vCPU: limit 3, in use 2, asked 2`)
	mustApply(t, s, 11, placeMany(projVM("d2", "d2", DefaultProject, "h2", 1, gib, 10*gib)))
	_, err = apply(t, s, 12, setQuota(DefaultDepartment, "", &statev1.Quota{Vcpus: i64(2)}))
	wantRefused(t, err, KindFailedPrecondition, `below its project "default"'s 3`)
	wantKind(t, s, 12, &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: DefaultProject}}}, KindFailedPrecondition)
	if n := len(s.Departments()); n != 1 {
		t.Fatalf("%d departments, want default alone", n)
	}
	qs := s.Quotas("")
	if len(qs) != 3 || qs[0].Project != "" || qs[1].Project != DefaultProject || qs[2].Project != "old" {
		t.Fatalf("quotas %+v", qs)
	}
}

// Quotas and usage survive a snapshot and restore; usage is derived again
// from the VMs (projects restored first, so each VM counts in its
// department).
func TestQuotaSnapshotRoundTrip(t *testing.T) {
	s := quotaFixture(t)
	mustApply(t, s, 21, placeMany(projVM("a1", "a1", "air", "h1", 6, gib, 10*gib)))
	mustApply(t, s, 22, placeMany(projVM("w1", "w1", "water", "h2", 2, gib, 10*gib)))
	snap := overWire(t, s.Snapshot())
	r := New()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct{ d, p string }{{"eco", ""}, {"eco", "air"}, {"eco", "water"}, {DefaultDepartment, ""}} {
		a, _ := s.Quota(k.d, k.p)
		b, ok := r.Quota(k.d, k.p)
		if !ok || a.Used != b.Used || !proto.Equal(a.Limit, b.Limit) {
			t.Fatalf("%s/%s: %+v after restore, %+v before", k.d, k.p, b, a)
		}
	}
	wantUse(t, r, "eco", "", Usage{8, 2 * gib, 20 * gib, 2})
	_, err := apply(t, r, 23, placeMany(projVM("a2", "a2", "air", "h1", 3, gib, 10*gib)))
	wantRefused(t, err, KindQuotaExceeded, `project "air" vCPU: limit 8, in use 6, asked 3`)
}

// A quota refusal is remembered under its request id with its subject, so
// a retry gets the same answer, QuotaFailure detail included.
func TestQuotaRefusalRemembered(t *testing.T) {
	s := quotaFixture(t)
	cmd := withID(placeMany(projVM("a1", "a1", "air", "h1", 9, gib, 10*gib)), "req-1", "h")
	_, err := apply(t, s, 21, cmd)
	wantRefused(t, err, KindQuotaExceeded, "limit 8")
	_, err2 := apply(t, s, 22, withID(placeMany(projVM("a1", "a1", "air", "h1", 9, gib, 10*gib)), "req-1", "h"))
	e1, e2 := err.(*Error), err2.(*Error)
	if *e1 != *e2 || e2.Subject != "project:air" {
		t.Fatalf("replayed %+v, first %+v", e2, e1)
	}
}

// The leader's early check counts what the committed state uses, for
// the project and for the department.
func TestCheckQuota(t *testing.T) {
	s := quotaFixture(t)
	if err := s.CheckQuota("air", Usage{VCPUs: 8, VMs: 1}); err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, 21, placeMany(projVM("a1", "a1", "air", "h1", 7, gib, 10*gib)))
	err := s.CheckQuota("air", Usage{VCPUs: 2, VMs: 1})
	wantRefused(t, err, KindQuotaExceeded, `project "air" vCPU: limit 8, in use 7, asked 2`)
	mustApply(t, s, 22, placeMany(projVM("w1", "w1", "water", "h2", 8, gib, 10*gib)))
	err = s.CheckQuota("water", Usage{VCPUs: 2, VMs: 1})
	wantRefused(t, err, KindQuotaExceeded, `department "eco" vCPU: limit 16, in use 15, asked 2`)
}
