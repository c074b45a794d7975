package state

import (
	"crypto/subtle"
	"fmt"
	"math"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Images (image.proto), version 7 on: the records of the images VMs boot
// from. Only metadata is replicated; each controller keeps the bytes in
// its own content-addressed store (controller/images). An image belongs
// to a project, or is public (project "", public true) and usable from
// every project; a project's image of a name hides a public one of the
// same name. A VM records the image it was made from (VMRecord.image:
// name, project, sha256), and an image is not deleted while a VM uses
// it.

// imagesV7 is the first command version with images: PlaceVMs then
// re-checks that a VM's image is still recorded, with the same bytes.
const imagesV7 = 7

// MaxImageDescription bounds an image's description.
const MaxImageDescription = 1024

// imageUseKey identifies an image record and its bytes: a VM made from
// an image that was deleted and imported again under the same name (other
// bytes) does not hold up the new one.
func imageUseKey(project, name, sha string) string { return nameKey(project, name) + "@" + sha }

func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// imageWhat names an image in messages.
func imageWhat(project, name string) string {
	if project == "" {
		return fmt.Sprintf("public image %q", name)
	}
	return fmt.Sprintf("image %q of project %q", name, project)
}

// checkImage validates an image record. Callers hold mu.
func checkImage(r *statev1.ImageRecord) error {
	switch {
	case r == nil:
		return errorf(KindInvalid, "image is missing")
	case !ValidName(r.Name):
		return errorf(KindInvalid, "image name %q is not valid: use 1-63 lowercase letters, digits and '-'", r.Name)
	case r.Public && r.Project != "":
		return errorf(KindInvalid, "public image %q names project %q: a public image belongs to no project", r.Name, r.Project)
	case !r.Public && !ValidName(r.Project):
		return errorf(KindInvalid, "image %q: project %q is not valid", r.Name, r.Project)
	case !validSHA256(r.Sha256):
		return errorf(KindInvalid, "image %q: sha256 %.80q is not 64 lowercase hex digits", r.Name, r.Sha256)
	case r.SizeBytes <= 0:
		return errorf(KindInvalid, "image %q: size %d is not positive", r.Name, r.SizeBytes)
	case r.Format != statev1.ImageFormat_IMAGE_FORMAT_QCOW2 && r.Format != statev1.ImageFormat_IMAGE_FORMAT_RAW:
		return errorf(KindInvalid, "image %q: format %v is not qcow2 or raw", r.Name, r.Format)
	case r.VirtualSizeBytes <= 0:
		return errorf(KindInvalid, "image %q: virtual size %d is not positive", r.Name, r.VirtualSizeBytes)
	case r.Format == statev1.ImageFormat_IMAGE_FORMAT_RAW && r.VirtualSizeBytes != r.SizeBytes:
		return errorf(KindInvalid, "raw image %q: virtual size %d is not its size %d", r.Name, r.VirtualSizeBytes, r.SizeBytes)
	case len(r.Description) > MaxImageDescription:
		return errorf(KindInvalid, "image %q: description is %d bytes long: at most %d", r.Name, len(r.Description), MaxImageDescription)
	case r.SourceMember == "" || r.PeerKey == "":
		return errorf(KindInvalid, "image %q: the controller holding its bytes and their peer key are required", r.Name)
	}
	return nil
}

func (s *Store) applyCreateImage(index uint64, now int64, c *statev1.CreateImage) (*statev1.ImageRecord, error) {
	r := c.GetImage()
	if err := checkImage(r); err != nil {
		return nil, err
	}
	if !r.Public && s.projectDept(r.Project) == "" {
		return nil, errorf(KindNotFound, "project %q not found", r.Project)
	}
	key := nameKey(r.Project, r.Name)
	if _, ok := s.images[key]; ok {
		return nil, errorf(KindAlreadyExists, "%s already exists (see `yunchi image list`)", imageWhat(r.Project, r.Name))
	}
	rec := proto.Clone(r).(*statev1.ImageRecord)
	rec.CreatedUnixNano = now
	rec.Revision = index
	s.addImage(rec)
	return proto.Clone(rec).(*statev1.ImageRecord), nil
}

// addImage stores rec, a record no View holds; callers hold mu.
func (s *Store) addImage(rec *statev1.ImageRecord) {
	s.images[nameKey(rec.Project, rec.Name)] = rec
	if !rec.Public {
		s.projectImages[rec.Project]++
	}
}

func (s *Store) applyDeleteImage(c *statev1.DeleteImage) (*statev1.ImageRecord, error) {
	project := c.GetProject()
	if c.GetPublic() {
		project = ""
	}
	if !ValidName(c.GetName()) {
		return nil, errorf(KindInvalid, "image name %q is not valid", c.GetName())
	}
	key := nameKey(project, c.GetName())
	rec, ok := s.images[key]
	if !ok {
		return nil, errorf(KindNotFound, "%s not found (see `yunchi image list`)", imageWhat(project, c.GetName()))
	}
	if n := s.imageUse[imageUseKey(rec.Project, rec.Name, rec.Sha256)]; n > 0 {
		names := s.imageUserNames(rec)
		if len(names) > 5 {
			names = append(names[:5:5], "...")
		}
		return nil, errorf(KindFailedPrecondition, "%s is used by %d VM(s) (%s): delete them first", imageWhat(project, rec.Name), n, strings.Join(names, ", "))
	}
	delete(s.images, key)
	if !rec.Public {
		if s.projectImages[rec.Project]--; s.projectImages[rec.Project] <= 0 {
			delete(s.projectImages, rec.Project)
		}
	}
	return rec, nil // records are replaced, never changed: no clone needed
}

// imageUserNames lists the VMs made from rec, "project/name", sorted.
// Callers hold mu.
func (s *Store) imageUserNames(rec *statev1.ImageRecord) []string {
	var names []string
	for _, v := range s.vms {
		if img := v.GetImage(); img != nil && img.Name == rec.Name && img.Project == rec.Project && img.Sha256 == rec.Sha256 {
			names = append(names, v.Project+"/"+v.Name)
		}
	}
	sort.Strings(names)
	return names
}

// useImage counts (sign +1) or releases (-1) vm's use of its image.
// Callers hold mu.
func (s *Store) useImage(vm *statev1.VMRecord, sign int) {
	img := vm.GetImage()
	if img == nil {
		return
	}
	k := imageUseKey(img.Project, img.Name, img.Sha256)
	if s.imageUse[k] += sign; s.imageUse[k] <= 0 {
		delete(s.imageUse, k)
	}
	if s.shaUse[img.Sha256] += sign; s.shaUse[img.Sha256] <= 0 {
		delete(s.shaUse, img.Sha256)
	}
}

// checkVMImage is the version 7 rule for a VM placed from an image: the
// image is still recorded with the same bytes (it may have been deleted,
// or deleted and imported again, since the leader decided), is the VM's
// project's or public, and the VM's disk holds it. Callers hold mu.
func (s *Store) checkVMImage(vm *statev1.VMRecord) error {
	img := vm.GetImage()
	if img == nil {
		return nil
	}
	rec, ok := s.images[nameKey(img.Project, img.Name)]
	if !ok || rec.Sha256 != img.Sha256 {
		return errorf(KindNotFound, "%s for vm %q not found: it was deleted or replaced meanwhile (see `yunchi image list`)", imageWhat(img.Project, img.Name), vm.Name)
	}
	switch {
	case img.Project != "" && img.Project != vm.Project:
		return errorf(KindInvalid, "vm %q of project %q cannot use %s", vm.Name, vm.Project, imageWhat(img.Project, img.Name))
	case img.Format != rec.Format || img.SizeBytes != rec.SizeBytes || img.VirtualSizeBytes != rec.VirtualSizeBytes:
		return errorf(KindInvalid, "vm %q: what it records of %s does not match the image", vm.Name, imageWhat(img.Project, img.Name))
	case vm.DiskBytes < rec.VirtualSizeBytes:
		return errorf(KindInvalid, "vm %q: disk of %d bytes is smaller than %s (%d bytes)", vm.Name, vm.DiskBytes, imageWhat(img.Project, img.Name), rec.VirtualSizeBytes)
	}
	return nil
}

// checkProjectImages refuses to delete a project that still has images.
// Callers hold mu.
func (s *Store) checkProjectImages(project string) error {
	if n := s.projectImages[project]; n > 0 {
		return errorf(KindFailedPrecondition, "project %q still has %d image(s): delete them first (yunchi image delete)", project, n)
	}
	return nil
}

// ImageKey orders images in lists and pages: public ones (project "")
// first, then by project, then name.
type ImageKey struct{ Project, Name string }

// Less reports whether k sorts before o.
func (k ImageKey) Less(o ImageKey) bool {
	if k.Project != o.Project {
		return k.Project < o.Project
	}
	return k.Name < o.Name
}

// Image returns the image named exactly so (project "": the public one).
func (s *Store) Image(project, name string) (*statev1.ImageRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.images[nameKey(project, name)]
	if !ok {
		return nil, false
	}
	return proto.Clone(r).(*statev1.ImageRecord), true
}

// GetImage resolves an image name for project: the project's image of
// that name, else the public one.
func (s *Store) GetImage(project, name string) (*statev1.ImageRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.images[nameKey(project, name)]
	if !ok || project == "" {
		r, ok = s.images[nameKey("", name)]
	}
	if !ok {
		return nil, false
	}
	return proto.Clone(r).(*statev1.ImageRecord), true
}

// ImagesPage lists up to limit images whose key sorts after after (the
// zero key: from the start), in key order: the public ones and, when
// project is set, that project's (every project's when it is ""); more
// says whether any follow.
func (s *Store) ImagesPage(project string, after ImageKey, limit int) (out []*statev1.ImageRecord, more bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	first := after == ImageKey{}
	var sel []*statev1.ImageRecord
	for _, r := range s.images {
		if (project == "" || r.Project == project || r.Public) && (first || after.Less(ImageKey{r.Project, r.Name})) {
			sel = append(sel, r)
		}
	}
	sort.Slice(sel, func(i, j int) bool {
		return ImageKey{sel[i].Project, sel[i].Name}.Less(ImageKey{sel[j].Project, sel[j].Name})
	})
	if len(sel) > limit {
		sel, more = sel[:limit], true
	}
	out = make([]*statev1.ImageRecord, len(sel))
	for i, r := range sel {
		out[i] = proto.Clone(r).(*statev1.ImageRecord)
	}
	return out, more
}

// Images lists every image record, sorted (public first).
func (s *Store) Images() []*statev1.ImageRecord {
	out, _ := s.ImagesPage("", ImageKey{}, math.MaxInt)
	return out
}

// ImageUse is how many VMs were made from the bytes sha.
func (s *Store) ImageUse(sha string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.shaUse[sha]
}

// ImageVMs is how many VMs were made from image record r.
func (s *Store) ImageVMs(r *statev1.ImageRecord) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.imageUse[imageUseKey(r.Project, r.Name, r.Sha256)]
}

// ImageSHAs is every image content hash the state refers to: of the image
// records and of the VMs (whose hosts may still fetch it).
func (s *Store) ImageSHAs() map[string]bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]bool, len(s.images)+len(s.shaUse))
	for _, r := range s.images {
		out[r.Sha256] = true
	}
	for sha := range s.shaUse {
		out[sha] = true
	}
	return out
}

// ImagePeerKeyOK says whether key is the peer key of an image record with
// the bytes sha (controllers fetch bytes from one another with it).
func (s *Store) ImagePeerKeyOK(sha, key string) bool {
	if key == "" {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	ok := false
	for _, r := range s.images {
		if r.Sha256 == sha && subtle.ConstantTimeCompare([]byte(r.PeerKey), []byte(key)) == 1 {
			ok = true
		}
	}
	return ok
}
