package state

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

func shaOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// imgRec is a qcow2 image of 1 GiB virtual size, its bytes from seed.
func imgRec(project, name, seed string) *statev1.ImageRecord {
	return &statev1.ImageRecord{Name: name, Project: project, Public: project == "", Sha256: shaOf(seed), SizeBytes: 300 << 20,
		Format: statev1.ImageFormat_IMAGE_FORMAT_QCOW2, VirtualSizeBytes: gib, SourceMember: "c1", PeerKey: "key-" + seed}
}

func mkImage(r *statev1.ImageRecord) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_CreateImage{CreateImage: &statev1.CreateImage{Image: r}}}
}

func rmImage(project, name string, public bool) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_DeleteImage{DeleteImage: &statev1.DeleteImage{Project: project, Name: name, Public: public}}}
}

// vmOf is what the API records of image r for a VM.
func vmOf(r *statev1.ImageRecord) *statev1.VMImage {
	return &statev1.VMImage{Name: r.Name, Project: r.Project, Sha256: r.Sha256, Format: r.Format, SizeBytes: r.SizeBytes, VirtualSizeBytes: r.VirtualSizeBytes}
}

func imageVM(id, name, project, host string, img *statev1.ImageRecord) *statev1.VMRecord {
	vm := projVM(id, name, project, host, 1, gib, 2*gib)
	vm.Image = vmOf(img)
	vm.UserData = "#cloud-config\n"
	vm.SshAuthorizedKeys = []string{"ssh-ed25519 AAAAC3Nza alice@example"}
	return vm
}

// imageFixture: quotaFixture (projects air and water of eco) with image
// tiny in air and a public tiny and base. Indexes up to 23.
func imageFixture(t *testing.T) *Store {
	s := quotaFixture(t)
	mustApply(t, s, 21, mkImage(imgRec("air", "tiny", "air-tiny")))
	mustApply(t, s, 22, mkImage(imgRec("", "tiny", "public-tiny")))
	mustApply(t, s, 23, mkImage(imgRec("", "base", "public-base")))
	return s
}

func TestImageRecords(t *testing.T) {
	s := imageFixture(t)
	got, ok := s.Image("air", "tiny")
	if !ok || got.Sha256 != shaOf("air-tiny") || got.Revision != 21 || got.CreatedUnixNano != 21000 {
		t.Fatalf("air's tiny: %v %v", got, ok)
	}
	// A project's image hides the public one of the same name.
	if r, ok := s.GetImage("air", "tiny"); !ok || r.Project != "air" {
		t.Fatalf("tiny from air: %v", r)
	}
	if r, ok := s.GetImage("water", "tiny"); !ok || !r.Public {
		t.Fatalf("tiny from water: %v", r)
	}
	if r, ok := s.GetImage("", "tiny"); !ok || !r.Public {
		t.Fatalf("tiny without a project: %v", r)
	}
	if _, ok := s.GetImage("air", "none"); ok {
		t.Fatal("found an image that does not exist")
	}
	names := func(rs []*statev1.ImageRecord) string {
		var out []string
		for _, r := range rs {
			out = append(out, r.Project+"/"+r.Name)
		}
		return strings.Join(out, " ")
	}
	if l, more := s.ImagesPage("air", ImageKey{}, 100); names(l) != "/base /tiny air/tiny" || more {
		t.Fatalf("air's list: %s %v", names(l), more)
	}
	if l, _ := s.ImagesPage("water", ImageKey{}, 100); names(l) != "/base /tiny" {
		t.Fatalf("water's list: %s", names(l))
	}
	l, more := s.ImagesPage("", ImageKey{}, 2)
	if names(l) != "/base /tiny" || !more {
		t.Fatalf("first page: %s %v", names(l), more)
	}
	if l, more = s.ImagesPage("", ImageKey{Project: "", Name: "tiny"}, 2); names(l) != "air/tiny" || more {
		t.Fatalf("second page: %s %v", names(l), more)
	}
	if l := s.Images(); len(l) != 3 {
		t.Fatalf("Images: %s", names(l))
	}
	// The peer key is only good with its bytes.
	if !s.ImagePeerKeyOK(shaOf("air-tiny"), "key-air-tiny") || s.ImagePeerKeyOK(shaOf("air-tiny"), "key-public-tiny") || s.ImagePeerKeyOK(shaOf("air-tiny"), "") {
		t.Fatal("ImagePeerKeyOK is wrong")
	}

	// Bad input is refused and changes nothing.
	bad := func(edit func(r *statev1.ImageRecord)) *statev1.Command {
		r := imgRec("air", "new", "new")
		edit(r)
		return mkImage(r)
	}
	for _, c := range []struct {
		cmd   *statev1.Command
		kind  Kind
		parts []string
	}{
		{mkImage(imgRec("air", "tiny", "other")), KindAlreadyExists, []string{`image "tiny" of project "air" already exists`}},
		{mkImage(imgRec("", "base", "other")), KindAlreadyExists, []string{`public image "base" already exists`}},
		{mkImage(imgRec("nope", "x", "x")), KindNotFound, []string{`project "nope" not found`}},
		{mkImage(nil), KindInvalid, []string{"image is missing"}},
		{bad(func(r *statev1.ImageRecord) { r.Name = "Bad_Name" }), KindInvalid, []string{"image name"}},
		{bad(func(r *statev1.ImageRecord) { r.Public = true }), KindInvalid, []string{"belongs to no project"}},
		{bad(func(r *statev1.ImageRecord) { r.Sha256 = strings.ToUpper(r.Sha256) }), KindInvalid, []string{"sha256"}},
		{bad(func(r *statev1.ImageRecord) { r.SizeBytes = 0 }), KindInvalid, []string{"size 0"}},
		{bad(func(r *statev1.ImageRecord) { r.Format = statev1.ImageFormat_IMAGE_FORMAT_UNSPECIFIED }), KindInvalid, []string{"not qcow2 or raw"}},
		{bad(func(r *statev1.ImageRecord) { r.VirtualSizeBytes = -1 }), KindInvalid, []string{"virtual size"}},
		{bad(func(r *statev1.ImageRecord) { r.Format = statev1.ImageFormat_IMAGE_FORMAT_RAW }), KindInvalid, []string{"raw image"}},
		{bad(func(r *statev1.ImageRecord) { r.Description = strings.Repeat("x", MaxImageDescription+1) }), KindInvalid, []string{"description"}},
		{bad(func(r *statev1.ImageRecord) { r.PeerKey = "" }), KindInvalid, []string{"peer key"}},
		{rmImage("air", "none", false), KindNotFound, []string{`image "none" of project "air" not found`}},
		{rmImage("air", "UPPER", false), KindInvalid, []string{"image name"}},
	} {
		before := s.Snapshot()
		_, err := apply(t, s, 30, c.cmd)
		wantRefused(t, err, c.kind, c.parts...)
		unchanged(t, s, before)
	}
	// Public and project images of one name are told apart on delete.
	res := mustApply(t, s, 31, rmImage("ignored", "tiny", true))
	if res.Image == nil || !res.Image.Public {
		t.Fatalf("deleted %v", res.Image)
	}
	if r, ok := s.GetImage("water", "tiny"); ok {
		t.Fatalf("public tiny still found: %v", r)
	}
	if _, ok := s.Image("air", "tiny"); !ok {
		t.Fatal("deleting the public tiny deleted air's")
	}
}

// A VM made from an image holds it: the image is not deleted while the
// VM exists (the refusal names it), nor is its project; once the VM is
// gone the image goes.
func TestImageInUse(t *testing.T) {
	s := imageFixture(t)
	tiny, _ := s.Image("air", "tiny")
	base, _ := s.Image("", "base")
	mustApply(t, s, 30, placeMany(imageVM("v1", "web", "air", "h1", tiny), imageVM("v2", "db", "water", "h2", base)))
	vm, _ := s.VM("air", "web")
	if vm.Image.GetSha256() != tiny.Sha256 || vm.UserData != "#cloud-config\n" || len(vm.SshAuthorizedKeys) != 1 {
		t.Fatalf("recorded vm: %v", vm)
	}
	if s.ImageUse(tiny.Sha256) != 1 || s.ImageVMs(tiny) != 1 || s.ImageVMs(base) != 1 {
		t.Fatalf("use: %d %d %d", s.ImageUse(tiny.Sha256), s.ImageVMs(tiny), s.ImageVMs(base))
	}
	before := s.Snapshot()
	_, err := apply(t, s, 31, rmImage("air", "tiny", false))
	wantRefused(t, err, KindFailedPrecondition, `image "tiny" of project "air" is used by 1 VM(s) (air/web)`)
	_, err = apply(t, s, 31, rmImage("", "base", true))
	wantRefused(t, err, KindFailedPrecondition, `public image "base" is used by 1 VM(s) (water/db)`)
	unchanged(t, s, before)

	// A project with images is not deleted.
	mustApply(t, s, 32, mkImage(imgRec("water", "w", "water-w")))
	mustApply(t, s, 33, desired("v2", statev1.PowerState_POWER_STATE_DELETED, false))
	mustApply(t, s, 34, report("h2", &statev1.VMStatus{VmId: "v2", Gone: true}))
	_, err = apply(t, s, 35, &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: "water"}}})
	wantRefused(t, err, KindFailedPrecondition, `project "water" still has 1 image(s)`)
	mustApply(t, s, 36, rmImage("water", "w", false))
	mustApply(t, s, 37, &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: "water"}}})

	// The VM being deleted still holds its image; gone, it does not.
	mustApply(t, s, 38, desired("v1", statev1.PowerState_POWER_STATE_DELETED, false))
	_, err = apply(t, s, 39, rmImage("air", "tiny", false))
	wantRefused(t, err, KindFailedPrecondition, "used by 1 VM(s)")
	mustApply(t, s, 40, report("h1", &statev1.VMStatus{VmId: "v1", Gone: true}))
	if s.ImageUse(tiny.Sha256) != 0 || !s.ImageSHAs()[tiny.Sha256] {
		t.Fatalf("after the VM: use %d, referenced %v", s.ImageUse(tiny.Sha256), s.ImageSHAs()[tiny.Sha256])
	}
	mustApply(t, s, 41, rmImage("air", "tiny", false))
	mustApply(t, s, 42, rmImage("", "base", true))
	if shas := s.ImageSHAs(); shas[tiny.Sha256] || shas[base.Sha256] || len(shas) != 1 {
		t.Fatalf("referenced after the deletes: %v", shas)
	}
}

// PlaceVMs (version 7) re-checks a VM's image: still recorded with the
// same bytes, the VM's project's or public, and no larger than its disk.
func TestPlaceVMsRechecksImage(t *testing.T) {
	s := imageFixture(t)
	tiny, _ := s.Image("air", "tiny")
	public, _ := s.Image("", "tiny")
	gone := imgRec("air", "gone", "gone")
	replaced := proto.Clone(tiny).(*statev1.ImageRecord)
	replaced.Sha256 = shaOf("older bytes")
	small := imageVM("v1", "web", "air", "h1", tiny)
	small.DiskBytes = gib - 1
	mismatch := imageVM("v1", "web", "air", "h1", tiny)
	mismatch.Image.VirtualSizeBytes = 1
	for _, c := range []struct {
		vm    *statev1.VMRecord
		kind  Kind
		parts []string
	}{
		{imageVM("v1", "web", "air", "h1", gone), KindNotFound, []string{`image "gone" of project "air" for vm "web" not found`}},
		{imageVM("v1", "web", "air", "h1", replaced), KindNotFound, []string{"deleted or replaced meanwhile"}},
		{imageVM("v1", "web", "water", "h1", tiny), KindInvalid, []string{`vm "web" of project "water" cannot use image "tiny" of project "air"`}},
		{small, KindInvalid, []string{"smaller than"}},
		{mismatch, KindInvalid, []string{"does not match"}},
	} {
		before := s.Snapshot()
		_, err := apply(t, s, 30, placeMany(c.vm))
		wantRefused(t, err, c.kind, c.parts...)
		unchanged(t, s, before)
	}
	// A public image serves every project.
	mustApply(t, s, 30, placeMany(imageVM("v1", "web", "water", "h1", public)))
	// Commands written before version 7 apply as they did (no images then).
	old := placeMany(imageVM("v2", "old", "air", "h1", gone))
	old.Version, old.UnixNano = imagesV7-1, 31000
	if _, err := s.Apply(31, overWire(t, old)); err != nil {
		t.Fatalf("a version 6 PlaceVMs: %v", err)
	}
}

// Images and the counts derived from them survive a snapshot: restored,
// the state is the same, and still refuses what it refused.
func TestImagesSnapshotRoundTrip(t *testing.T) {
	s := imageFixture(t)
	tiny, _ := s.Image("air", "tiny")
	mustApply(t, s, 30, placeMany(imageVM("v1", "web", "air", "h1", tiny)))
	snap := overWire(t, s.Snapshot())
	if snap.FormatVersion != SnapshotVersion || len(snap.Images) != 3 || snap.Images[0].Name != "base" || snap.Images[2].Project != "air" {
		t.Fatalf("snapshot images: %v", snap.Images)
	}
	r := New()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(r.Snapshot(), s.Snapshot()) {
		t.Fatal("the restored state differs")
	}
	if r.ImageUse(tiny.Sha256) != 1 || r.ImageVMs(tiny) != 1 {
		t.Fatal("use counts were not rebuilt")
	}
	_, err := apply(t, r, 31, rmImage("air", "tiny", false))
	wantRefused(t, err, KindFailedPrecondition, "used by 1 VM(s)")
	mustApply(t, r, 32, rmImage("", "base", true))
	_, err = apply(t, r, 33, &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: "water"}}})
	if err != nil {
		t.Fatalf("water has no image: %v", err)
	}
	mustApply(t, r, 34, mkImage(imgRec("air", "other", "o")))
	mustApply(t, r, 35, desired("v1", statev1.PowerState_POWER_STATE_DELETED, false))
	mustApply(t, r, 36, report("h1", &statev1.VMStatus{VmId: "v1", Gone: true}))
	mustApply(t, r, 37, rmImage("air", "tiny", false))
	_, err = apply(t, r, 38, &statev1.Command{Cmd: &statev1.Command_DeleteProject{DeleteProject: &statev1.DeleteProject{Name: "air"}}})
	wantRefused(t, err, KindFailedPrecondition, "still has 1 image(s)")
}

// An image create sent again under its request id gets its first outcome
// (also from a restored snapshot), not "already exists"; the commands are
// audited like every other.
func TestImageRequestIDAndAudit(t *testing.T) {
	s := quotaFixture(t)
	sink := &memSink{}
	s.SetAuditSink(sink)
	cmd := func() *statev1.Command {
		c := withID(mkImage(imgRec("air", "tiny", "t")), "req-1", "h")
		c.Audit = &statev1.AuditContext{Actor: "alice", Action: "ImportImage", Target: "project/air/image/tiny"}
		return c
	}
	first := mustApply(t, s, 30, cmd())
	again := mustApply(t, s, 31, cmd())
	if first.Image == nil || !proto.Equal(first.Image, again.Image) || again.Image.Revision != 30 {
		t.Fatalf("first %v, again %v", first.Image, again.Image)
	}
	r := New()
	if err := r.Restore(overWire(t, s.Snapshot())); err != nil {
		t.Fatal(err)
	}
	if rec, ok := r.Request("req-1"); !ok || rec.Image.GetName() != "tiny" {
		t.Fatalf("remembered: %v", rec)
	}
	if res := mustApply(t, r, 32, cmd()); !proto.Equal(res.Image, first.Image) {
		t.Fatalf("after restore: %v", res.Image)
	}
	mustApply(t, s, 32, rmImage("air", "tiny", false))
	var actions []string
	for _, rec := range sink.recs {
		actions = append(actions, rec.Context.GetAction()+":"+rec.Result)
	}
	if len(sink.recs) != 2 || sink.recs[0].Context.Target != "project/air/image/tiny" || sink.recs[0].Result != "ok" {
		t.Fatalf("audit records: %v", actions)
	}
}
