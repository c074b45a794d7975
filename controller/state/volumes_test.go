package state

import (
	"testing"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

func volRec(id, name, project string, size int64) *statev1.VolumeRecord {
	return &statev1.VolumeRecord{Id: id, Name: name, Project: project, SizeBytes: size}
}

func mkVolume(v *statev1.VolumeRecord) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_CreateVolume{CreateVolume: &statev1.CreateVolume{Volume: v}}}
}

func attachVol(project, name, vmID string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_AttachVolume{AttachVolume: &statev1.AttachVolume{Project: project, Name: name, VmId: vmID}}}
}

func detachVol(project, name string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_DetachVolume{DetachVolume: &statev1.DetachVolume{Project: project, Name: name}}}
}

func rmVolume(project, name string) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_DeleteVolume{DeleteVolume: &statev1.DeleteVolume{Project: project, Name: name}}}
}

func volReport(host string, st ...*statev1.VolumeStatus) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: host, Volumes: st}}}
}

// diskAllocated is what is allocated of a host's disk.
func diskAllocated(t *testing.T, s *Store, host string) int64 {
	t.Helper()
	f, ok := s.HostFacts(host)
	if !ok {
		t.Fatalf("host %s not found", host)
	}
	return f.Allocated.DiskBytes
}

func mustVolume(t *testing.T, s *Store, project, name string) *statev1.VolumeRecord {
	t.Helper()
	v, ok := s.Volume(project, name)
	if !ok {
		t.Fatalf("volume %s/%s not found", project, name)
	}
	return v
}

// volumeFixture: quotaFixture (h1, h2 in a1, h3 in b1, 1000 GiB of disk
// each; eco's disk quota 500 GiB) with VM a1 of air on h1 and a2 of air
// on h2 (10 GiB disks each). Indexes up to 21.
func volumeFixture(t *testing.T) *Store {
	s := quotaFixture(t)
	mustApply(t, s, 21, placeMany(projVM("a1", "a1", "air", "h1", 1, gib, 10*gib), projVM("a2", "a2", "air", "h2", 1, gib, 10*gib)))
	return s
}

// A volume counts against quotas from its create, against its host's
// capacity from its first attach (the VM's host), and off both only once
// its host reports it removed after a delete.
func TestVolumeLifecycle(t *testing.T) {
	s := volumeFixture(t)
	res := mustApply(t, s, 30, mkVolume(volRec("vol-1", "data", "air", 100*gib)))
	if v := res.Volume; v == nil || v.HostId != "" || v.Revision != 30 || v.CreatedUnixNano != 30000 {
		t.Fatalf("created: %v", v)
	}
	wantUse(t, s, "eco", "air", Usage{2, 2 * gib, 120 * gib, 2})
	wantUse(t, s, "eco", "", Usage{2, 2 * gib, 120 * gib, 2})
	if got := diskAllocated(t, s, "h1"); got != 10*gib {
		t.Fatalf("an unplaced volume took host disk: h1 allocated %d", got)
	}

	rev := s.HostRevision("h1")
	res = mustApply(t, s, 31, attachVol("air", "data", "a1"))
	if v := res.Volume; v.HostId != "h1" || v.VmId != "a1" || v.Center != "a1" || v.AttachedVmId != "" {
		t.Fatalf("attached: %v", v)
	}
	if got := diskAllocated(t, s, "h1"); got != 110*gib {
		t.Fatalf("h1 allocated %d after the attach, want 110 GiB", got)
	}
	if s.HostRevision("h1") == rev {
		t.Fatal("the attach did not move h1's revision: its agent would not hear of it")
	}
	if hv := s.HostVolumes("h1"); len(hv) != 1 || hv[0].Id != "vol-1" {
		t.Fatalf("h1's volumes: %v", hv)
	}
	// Attaching again to the same VM is a no-op.
	if res := mustApply(t, s, 32, attachVol("air", "data", "a1")); res.Volume.Revision != 31 {
		t.Fatalf("a repeated attach changed the volume: %v", res.Volume)
	}

	// The host reports; another host's report about it is ignored.
	mustApply(t, s, 33, volReport("h2", &statev1.VolumeStatus{VolumeId: "vol-1", AttachedVmId: "a2"}))
	if v := mustVolume(t, s, "air", "data"); v.AttachedVmId != "" {
		t.Fatalf("h2 reported on h1's volume: %v", v)
	}
	mustApply(t, s, 34, volReport("h1", &statev1.VolumeStatus{VolumeId: "vol-1", AttachedVmId: "a1"}))
	if v := mustVolume(t, s, "air", "data"); v.AttachedVmId != "a1" || v.Revision != 34 {
		t.Fatalf("after the report: %v", v)
	}

	// Deleting is refused while attached.
	before := s.Snapshot()
	_, err := apply(t, s, 35, rmVolume("air", "data"))
	wantRefused(t, err, KindFailedPrecondition, `volume "data" is attached to vm "a1": detach it first`)
	unchanged(t, s, before)

	mustApply(t, s, 36, detachVol("air", "data"))
	mustApply(t, s, 37, volReport("h1", &statev1.VolumeStatus{VolumeId: "vol-1"}))
	before = s.Snapshot()
	_, err = apply(t, s, 38, detachVol("air", "data"))
	wantRefused(t, err, KindFailedPrecondition, `volume "data" is not attached`)
	unchanged(t, s, before)
	// Detached, it stays on h1 (its bytes are there): a VM elsewhere is refused.
	_, err = apply(t, s, 39, attachVol("air", "data", "a2"))
	wantRefused(t, err, KindFailedPrecondition, `volume "data" lives on host h1`, "attach it to a VM on h1")
	unchanged(t, s, before)
	if got := diskAllocated(t, s, "h1"); got != 110*gib {
		t.Fatalf("h1 allocated %d with the volume detached, want 110 GiB", got)
	}

	res = mustApply(t, s, 40, rmVolume("air", "data"))
	if !res.Volume.Deleting {
		t.Fatalf("delete of a placed volume: %v", res.Volume)
	}
	mustApply(t, s, 41, rmVolume("air", "data")) // deleting twice is deleting once
	_, err = apply(t, s, 42, attachVol("air", "data", "a1"))
	wantRefused(t, err, KindFailedPrecondition, "being deleted")
	// Until the host removed it, it still counts everywhere.
	wantUse(t, s, "eco", "air", Usage{2, 2 * gib, 120 * gib, 2})
	if got := diskAllocated(t, s, "h1"); got != 110*gib {
		t.Fatalf("h1 allocated %d while the volume is being deleted", got)
	}
	mustApply(t, s, 43, volReport("h1", &statev1.VolumeStatus{VolumeId: "vol-1", Gone: true}))
	if _, ok := s.Volume("air", "data"); ok {
		t.Fatal("the volume is still there after its host removed it")
	}
	wantUse(t, s, "eco", "air", Usage{2, 2 * gib, 20 * gib, 2})
	if got := diskAllocated(t, s, "h1"); got != 10*gib {
		t.Fatalf("h1 allocated %d after the delete, want 10 GiB", got)
	}
	if hv := s.HostVolumes("h1"); len(hv) != 0 {
		t.Fatalf("h1 still lists %v", hv)
	}

	// A volume never placed goes at once, and so does what it counted.
	mustApply(t, s, 44, mkVolume(volRec("vol-2", "scratch", "air", 50*gib)))
	if res := mustApply(t, s, 45, rmVolume("air", "scratch")); res.Volume == nil || res.Volume.Name != "scratch" {
		t.Fatalf("delete answered %v", res.Volume)
	}
	if _, ok := s.Volume("air", "scratch"); ok {
		t.Fatal("an unplaced volume was not removed at once")
	}
	wantUse(t, s, "eco", "air", Usage{2, 2 * gib, 20 * gib, 2})
}

// Quotas and host capacity hold for volumes: a refusal says which limit
// and changes nothing.
func TestVolumeQuotaAndCapacity(t *testing.T) {
	s := volumeFixture(t)
	before := s.Snapshot()
	_, err := apply(t, s, 30, mkVolume(volRec("vol-1", "big", "air", 481*gib)))
	wantRefused(t, err, KindQuotaExceeded, `quota exceeded: department "eco" disk: limit 500 GiB, in use 20 GiB, asked 481 GiB`)
	unchanged(t, s, before)
	mustApply(t, s, 31, mkVolume(volRec("vol-1", "big", "air", 480*gib)))

	// Host capacity: the default project has no quota; h3 has 1000 GiB
	// of disk, 10 GiB of it taken by d1.
	mustApply(t, s, 32, placeMany(projVM("d1", "d1", DefaultProject, "h3", 1, gib, 10*gib)))
	mustApply(t, s, 33, mkVolume(volRec("vol-2", "huge", DefaultProject, 991*gib)))
	mustApply(t, s, 34, mkVolume(volRec("vol-3", "fits", DefaultProject, 990*gib)))
	before = s.Snapshot()
	_, err = apply(t, s, 35, attachVol(DefaultProject, "huge", "d1"))
	wantRefused(t, err, KindFailedPrecondition, `host h3 of vm "d1" has no room for volume "huge": disk allocated 10 GiB + 991 GiB > allocatable 1000 GiB`)
	unchanged(t, s, before)
	mustApply(t, s, 36, attachVol(DefaultProject, "fits", "d1"))
	if got := diskAllocated(t, s, "h3"); got != 1000*gib {
		t.Fatalf("h3 allocated %d, want all 1000 GiB", got)
	}
	// The full host takes no more VMs either: the volume's disk is allocated.
	_, err = apply(t, s, 37, placeMany(projVM("d2", "d2", DefaultProject, "h3", 1, gib, gib)))
	wantRefused(t, err, KindConflict, "no longer has room")
}

// Every bad command is refused with a message saying why, and changes
// nothing.
func TestVolumeRefusals(t *testing.T) {
	s := volumeFixture(t)
	mustApply(t, s, 30, mkVolume(volRec("vol-1", "data", "air", 10*gib)))
	b1only := volRec("vol-2", "b1only", "air", 10*gib)
	b1only.Center = "b1"
	mustApply(t, s, 31, mkVolume(b1only))
	mustApply(t, s, 32, placeMany(projVM("w1", "w1", "water", "h1", 1, gib, 10*gib), projVM("a3", "a3", "air", "h1", 1, gib, 10*gib)))
	mustApply(t, s, 33, attachVol("air", "data", "a1"))
	mustApply(t, s, 34, desired("a3", statev1.PowerState_POWER_STATE_DELETED, false))
	bad := func(edit func(v *statev1.VolumeRecord)) *statev1.Command {
		v := volRec("vol-9", "new", "air", 10*gib)
		edit(v)
		return mkVolume(v)
	}
	for _, c := range []struct {
		name string
		cmd  *statev1.Command
		kind Kind
		msg  string
	}{
		{"missing", mkVolume(nil), KindInvalid, "volume is missing"},
		{"bad name", bad(func(v *statev1.VolumeRecord) { v.Name = "Data_1" }), KindInvalid, `volume name "Data_1" is not valid`},
		{"bad project", bad(func(v *statev1.VolumeRecord) { v.Project = "" }), KindInvalid, `project "" is not valid`},
		{"no project", bad(func(v *statev1.VolumeRecord) { v.Project = "nope" }), KindNotFound, `project "nope" not found`},
		{"bad id", bad(func(v *statev1.VolumeRecord) { v.Id = "vol-0123456789abcdef0" }), KindInvalid, "volume id"},
		{"empty id", bad(func(v *statev1.VolumeRecord) { v.Id = "" }), KindInvalid, "volume id"},
		{"id taken", bad(func(v *statev1.VolumeRecord) { v.Id = "vol-1" }), KindAlreadyExists, "volume id vol-1 already exists"},
		{"name taken", bad(func(v *statev1.VolumeRecord) { v.Name = "data" }), KindAlreadyExists, `volume "data" already exists in project "air"`},
		{"too small", bad(func(v *statev1.VolumeRecord) { v.SizeBytes = 512 }), KindInvalid, "out of range"},
		{"too big", bad(func(v *statev1.VolumeRecord) { v.SizeBytes = MaxVolumeBytes + 512 }), KindInvalid, "out of range"},
		{"odd size", bad(func(v *statev1.VolumeRecord) { v.SizeBytes = gib + 1 }), KindInvalid, "512-byte sectors"},
		{"bad center", bad(func(v *statev1.VolumeRecord) { v.Center = "A1" }), KindInvalid, `center "A1" is not valid`},
		{"preplaced", bad(func(v *statev1.VolumeRecord) { v.HostId = "h1" }), KindInvalid, "placed nowhere"},
		{"preattached", bad(func(v *statev1.VolumeRecord) { v.VmId = "a1" }), KindInvalid, "placed nowhere"},
		{"attach unknown volume", attachVol("air", "nope", "a1"), KindNotFound, `volume "nope" not found in project "air"`},
		{"attach bad name", attachVol("air", "No", "a1"), KindInvalid, `volume name "No" is not valid`},
		{"attach unknown vm", attachVol("air", "data", "zz"), KindNotFound, "vm zz not found"},
		{"attach other project's vm", attachVol("air", "data", "w1"), KindInvalid, "a volume attaches to VMs of its own project"},
		{"attach elsewhere", attachVol("air", "data", "a2"), KindFailedPrecondition, `volume "data" is attached to vm "a1": detach it first`},
		{"attach deleting vm", attachVol("air", "b1only", "a3"), KindFailedPrecondition, `vm "a3" is being deleted`},
		{"attach wrong center", attachVol("air", "b1only", "a1"), KindFailedPrecondition, `volume "b1only" is for center b1, vm "a1" runs in center a1`},
		{"detach unknown", detachVol("water", "data"), KindNotFound, `volume "data" not found in project "water"`},
		{"delete unknown", rmVolume("air", "nope"), KindNotFound, `volume "nope" not found`},
	} {
		before := s.Snapshot()
		_, err := apply(t, s, 40, c.cmd)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		wantRefused(t, err, c.kind, c.msg)
		unchanged(t, s, before)
	}
	// A project without VMs but with a volume is still refused deletion,
	// for its volumes.
	mustApply(t, s, 50, mkProject("soil", "eco"))
	mustApply(t, s, 51, mkVolume(volRec("vol-5", "d", "soil", gib)))
	_, err := apply(t, s, 52, &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: "soil"}}})
	wantRefused(t, err, KindFailedPrecondition, `project "soil" still has 1 volume(s)`)
	mustApply(t, s, 53, rmVolume("soil", "d"))
	mustApply(t, s, 54, &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: "soil"}}})
}

func TestVolumesPerVMBounded(t *testing.T) {
	s := volumeFixture(t)
	for i := 0; i < MaxVolumesPerVM; i++ {
		name := "v" + string(rune('a'+i))
		mustApply(t, s, uint64(30+2*i), mkVolume(volRec("vol-"+name, name, "air", gib)))
		mustApply(t, s, uint64(31+2*i), attachVol("air", name, "a1"))
	}
	mustApply(t, s, 80, mkVolume(volRec("vol-x", "x", "air", gib)))
	before := s.Snapshot()
	_, err := apply(t, s, 81, attachVol("air", "x", "a1"))
	wantRefused(t, err, KindFailedPrecondition, `vm "a1" already has 16 volumes: at most 16`)
	unchanged(t, s, before)
	mustApply(t, s, 82, attachVol("air", "va", "a1")) // already there: fine
}

// A deleted VM leaves its volumes on the host, detached.
func TestVMDeletionDetachesVolumes(t *testing.T) {
	s := volumeFixture(t)
	mustApply(t, s, 30, mkVolume(volRec("vol-1", "data", "air", 10*gib)))
	mustApply(t, s, 31, attachVol("air", "data", "a1"))
	mustApply(t, s, 32, volReport("h1", &statev1.VolumeStatus{VolumeId: "vol-1", AttachedVmId: "a1"}))
	mustApply(t, s, 33, desired("a1", statev1.PowerState_POWER_STATE_DELETED, false))
	// While the VM is being deleted the volume is still on it.
	if v := mustVolume(t, s, "air", "data"); v.VmId != "a1" {
		t.Fatalf("volume of a VM being deleted: %v", v)
	}
	rev := s.HostRevision("h1")
	mustApply(t, s, 34, report("h1", &statev1.VMStatus{VmId: "a1", Gone: true}))
	v := mustVolume(t, s, "air", "data")
	if v.VmId != "" || v.AttachedVmId != "" || v.HostId != "h1" || v.Revision != 34 {
		t.Fatalf("volume of a deleted VM: %v", v)
	}
	if s.HostRevision("h1") == rev {
		t.Fatal("h1's revision did not move")
	}
	if got := diskAllocated(t, s, "h1"); got != 10*gib {
		t.Fatalf("h1 allocated %d: the volume's 10 GiB, without the VM", got)
	}
	// A report naming a VM the state does not know records no attachment.
	mustApply(t, s, 35, volReport("h1", &statev1.VolumeStatus{VolumeId: "vol-1", AttachedVmId: "a1", Message: "still there"}))
	if v := mustVolume(t, s, "air", "data"); v.AttachedVmId != "" || v.Message != "still there" {
		t.Fatalf("after a report about a gone VM: %v", v)
	}
	// Gone from the pool but not deleted: said so, and still counted.
	mustApply(t, s, 36, volReport("h1", &statev1.VolumeStatus{VolumeId: "vol-1", Gone: true}))
	if v := mustVolume(t, s, "air", "data"); v.Message != "missing from the host's storage pool" {
		t.Fatalf("after a gone report of a wanted volume: %v", v)
	}
}

// Volumes survive a snapshot and restore with everything derived from them
// (quota use, host allocation, per-host lists), and a request id's volume
// outcome is remembered.
func TestVolumeSnapshotRoundTrip(t *testing.T) {
	s := volumeFixture(t)
	mustApply(t, s, 30, mkVolume(volRec("vol-1", "data", "air", 10*gib)))
	mustApply(t, s, 31, attachVol("air", "data", "a1"))
	mustApply(t, s, 32, mkVolume(volRec("vol-2", "spare", "air", 20*gib)))
	mustApply(t, s, 33, mkVolume(volRec("vol-3", "old", "water", 30*gib)))
	mustApply(t, s, 34, placeMany(projVM("w1", "w1", "water", "h2", 1, gib, 10*gib)))
	mustApply(t, s, 35, attachVol("water", "old", "w1"))
	mustApply(t, s, 36, detachVol("water", "old"))
	cmd := rmVolume("water", "old")
	cmd.RequestId, cmd.RequestHash = "req-1", []byte("h")
	mustApply(t, s, 37, cmd)

	snap := overWire(t, s.Snapshot())
	if len(snap.Volumes) != 3 || snap.FormatVersion != SnapshotVersion {
		t.Fatalf("snapshot: %d volumes, format %d", len(snap.Volumes), snap.FormatVersion)
	}
	r := New()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(r.Snapshot(), s.Snapshot()) {
		t.Fatal("restored state differs")
	}
	for _, h := range []string{"h1", "h2", "h3"} {
		if a, b := diskAllocated(t, r, h), diskAllocated(t, s, h); a != b {
			t.Fatalf("%s: restored allocation %d, was %d", h, a, b)
		}
		if a, b := r.HostVolumes(h), s.HostVolumes(h); len(a) != len(b) {
			t.Fatalf("%s: restored volumes %v, were %v", h, a, b)
		}
	}
	for _, p := range []string{"air", "water", ""} {
		a, _ := r.Quota("eco", p)
		b, _ := s.Quota("eco", p)
		if a.Used != b.Used {
			t.Fatalf("quota use of %q: restored %+v, was %+v", p, a.Used, b.Used)
		}
	}
	// The request id answers with the deleting volume, also after restore.
	cmd = rmVolume("water", "old")
	cmd.RequestId, cmd.RequestHash = "req-1", []byte("h")
	res := mustApply(t, r, 38, cmd)
	if res.Volume == nil || !res.Volume.Deleting || res.Volume.Revision != 37 {
		t.Fatalf("replayed outcome: %v", res.Volume)
	}
	// The restored store goes on: the host's report removes the volume.
	mustApply(t, r, 39, volReport("h2", &statev1.VolumeStatus{VolumeId: "vol-3", Gone: true}))
	if got := diskAllocated(t, r, "h2"); got != 20*gib { // a2 and w1
		t.Fatalf("h2 allocated %d after the delete", got)
	}
}
