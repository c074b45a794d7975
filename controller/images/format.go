package images

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Format is what an image file holds.
type Format int

const (
	// Unknown: not decided (an import that names no format is told from
	// its bytes).
	Unknown Format = iota
	QCOW2
	Raw
)

func (f Format) String() string {
	switch f {
	case QCOW2:
		return "qcow2"
	case Raw:
		return "raw"
	}
	return "unknown"
}

// qcow2 header fields (QEMU's docs/interop/qcow2.txt), big-endian.
const (
	qcow2Magic          = "QFI\xfb"
	qcow2OffVersion     = 4
	qcow2OffBacking     = 8
	qcow2OffClusterBits = 20
	qcow2OffSize        = 24
	qcow2OffCrypt       = 32
	qcow2V2HeaderLen    = 72
	qcow2OffIncompat    = 72 // version 3 on
	qcow2V3HeaderLen    = 104
	// Incompatible feature bits (version 3).
	qcow2Corrupt      = 1 << 1
	qcow2ExternalData = 1 << 2
)

// otherFormats are images QEMU reads that are neither qcow2 nor raw:
// refused with a hint rather than stored as raw (a VMDK descriptor even
// names other files, which QEMU would open).
var otherFormats = []struct {
	magic string
	at    int
	name  string
}{
	{"QED\x00", 0, "QED"},
	{"KDMV", 0, "VMDK"},
	{"# Disk DescriptorFile", 0, "VMDK (descriptor)"},
	{"vhdxfile", 0, "VHDX"},
	{"conectix", 0, "VHD"},
	{"\x7f\x10\xda\xbe", 64, "VDI"},
}

// Inspect tells the format of an image of size bytes read through r, and
// the disk size a guest sees: a qcow2 header's virtual size, or a raw
// file's own size. declared is what the importer said it is (Unknown:
// tell it from the bytes); bytes that disagree with it are refused.
//
// A qcow2 image is refused when it names a backing file or an external
// data file (QEMU would open a file of the host's for it), is encrypted,
// or is marked corrupt; other formats QEMU reads (VMDK, VHDX, ...) are
// refused rather than taken for raw.
func Inspect(r io.ReaderAt, size int64, declared Format) (Format, int64, error) {
	if size <= 0 {
		return Unknown, 0, errors.New("image is empty")
	}
	head := make([]byte, min(size, 512))
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return Unknown, 0, fmt.Errorf("read the image header: %w", err)
	}
	isQCOW2 := bytes.HasPrefix(head, []byte(qcow2Magic))
	switch {
	case declared == Raw && isQCOW2:
		return Unknown, 0, errors.New("the image was declared raw but its bytes are a qcow2 image: import it as qcow2 (or leave the format out)")
	case declared == QCOW2 && !isQCOW2:
		return Unknown, 0, errors.New("the image was declared qcow2 but its bytes have no qcow2 header: import it as raw, or convert it with qemu-img convert -O qcow2")
	case declared != Unknown && declared != Raw && declared != QCOW2:
		return Unknown, 0, fmt.Errorf("image format %d is unknown: use qcow2 or raw", declared)
	}
	if isQCOW2 {
		vsize, err := inspectQCOW2(head)
		if err != nil {
			return Unknown, 0, err
		}
		return QCOW2, vsize, nil
	}
	for _, o := range otherFormats {
		if len(head) >= o.at+len(o.magic) && string(head[o.at:o.at+len(o.magic)]) == o.magic {
			return Unknown, 0, fmt.Errorf("the image is in %s format; only qcow2 and raw are supported: convert it with qemu-img convert -O qcow2 IN OUT", o.name)
		}
	}
	return Raw, size, nil
}

func inspectQCOW2(h []byte) (int64, error) {
	if len(h) < qcow2V2HeaderLen {
		return 0, fmt.Errorf("qcow2 header is cut short (%d bytes)", len(h))
	}
	be := binary.BigEndian
	version := be.Uint32(h[qcow2OffVersion:])
	if version != 2 && version != 3 {
		return 0, fmt.Errorf("qcow2 version %d is not supported: use version 2 or 3 (qemu-img convert -O qcow2)", version)
	}
	if be.Uint64(h[qcow2OffBacking:]) != 0 {
		return 0, errors.New("the qcow2 image names a backing file: an image must stand alone (flatten it with qemu-img convert -O qcow2)")
	}
	if cb := be.Uint32(h[qcow2OffClusterBits:]); cb < 9 || cb > 21 {
		return 0, fmt.Errorf("qcow2 cluster bits %d are out of range (9-21): not a valid qcow2 image", cb)
	}
	if be.Uint32(h[qcow2OffCrypt:]) != 0 {
		return 0, errors.New("the qcow2 image is encrypted: import an unencrypted image")
	}
	if version == 3 {
		if len(h) < qcow2V3HeaderLen {
			return 0, fmt.Errorf("qcow2 version 3 header is cut short (%d bytes)", len(h))
		}
		inc := be.Uint64(h[qcow2OffIncompat:])
		if inc&qcow2ExternalData != 0 {
			return 0, errors.New("the qcow2 image keeps its data in an external file: an image must stand alone (qemu-img convert -O qcow2)")
		}
		if inc&qcow2Corrupt != 0 {
			return 0, errors.New("the qcow2 image is marked corrupt: repair it with qemu-img check -r all")
		}
	}
	vsize := be.Uint64(h[qcow2OffSize:])
	if vsize == 0 || vsize > 1<<62 {
		return 0, fmt.Errorf("qcow2 virtual size %d is not valid", vsize)
	}
	return int64(vsize), nil
}
