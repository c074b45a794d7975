package images

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// qcow2Header builds a qcow2 header of version v for a disk of vsize
// bytes; edit changes it before it is returned.
func qcow2Header(v uint32, vsize uint64, edit func(h []byte)) []byte {
	h := make([]byte, 512)
	copy(h, qcow2Magic)
	be := binary.BigEndian
	be.PutUint32(h[4:], v)
	be.PutUint32(h[20:], 16) // 64 KiB clusters
	be.PutUint64(h[24:], vsize)
	if v == 3 {
		be.PutUint32(h[100:], 104)
	}
	if edit != nil {
		edit(h)
	}
	return h
}

func TestInspect(t *testing.T) {
	be := binary.BigEndian
	raw := bytes.Repeat([]byte{0xeb, 0x63, 0x90}, 1000)
	for _, c := range []struct {
		name     string
		data     []byte
		declared Format
		format   Format
		vsize    int64
		err      string
	}{
		{"qcow2 v2", qcow2Header(2, 1<<30, nil), Unknown, QCOW2, 1 << 30, ""},
		{"qcow2 v3 declared", qcow2Header(3, 5<<20, nil), QCOW2, QCOW2, 5 << 20, ""},
		{"raw", raw, Unknown, Raw, int64(len(raw)), ""},
		{"raw declared", raw, Raw, Raw, int64(len(raw)), ""},
		{"backing file", qcow2Header(3, 1<<30, func(h []byte) { be.PutUint64(h[8:], 0x200); be.PutUint32(h[16:], 8) }), Unknown, 0, 0, "names a backing file"},
		{"encrypted", qcow2Header(2, 1<<30, func(h []byte) { be.PutUint32(h[32:], 1) }), Unknown, 0, 0, "encrypted"},
		{"external data file", qcow2Header(3, 1<<30, func(h []byte) { be.PutUint64(h[72:], 1<<2) }), Unknown, 0, 0, "external file"},
		{"marked corrupt", qcow2Header(3, 1<<30, func(h []byte) { be.PutUint64(h[72:], 1<<1) }), Unknown, 0, 0, "marked corrupt"},
		{"version 4", qcow2Header(4, 1<<30, nil), Unknown, 0, 0, "qcow2 version 4 is not supported"},
		{"no virtual size", qcow2Header(3, 0, nil), Unknown, 0, 0, "virtual size 0"},
		{"bad cluster bits", qcow2Header(3, 1<<30, func(h []byte) { be.PutUint32(h[20:], 40) }), Unknown, 0, 0, "cluster bits 40"},
		{"cut short", qcow2Header(3, 1<<30, nil)[:50], Unknown, 0, 0, "cut short"},
		{"qcow2 declared raw", qcow2Header(3, 1<<30, nil), Raw, 0, 0, "declared raw but its bytes are a qcow2 image"},
		{"raw declared qcow2", raw, QCOW2, 0, 0, "declared qcow2 but its bytes have no qcow2 header"},
		{"vmdk", append([]byte("KDMV"), raw...), Unknown, 0, 0, "VMDK format"},
		{"vmdk descriptor", []byte("# Disk DescriptorFile\nparentFileNameHint=\"/etc/shadow\"\n"), Raw, 0, 0, "VMDK (descriptor) format"},
		{"unknown declared", raw, Format(7), 0, 0, "format 7 is unknown"},
	} {
		f, vsize, err := Inspect(bytes.NewReader(c.data), int64(len(c.data)), c.declared)
		switch {
		case c.err == "" && (err != nil || f != c.format || vsize != c.vsize):
			t.Errorf("%s: %v, %d, %v; want %v, %d", c.name, f, vsize, err, c.format, c.vsize)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || strings.Contains(err.Error(), "\n")):
			t.Errorf("%s: %v; want an error with %q", c.name, err, c.err)
		}
	}
	if _, _, err := Inspect(bytes.NewReader(nil), 0, Unknown); err == nil {
		t.Error("an empty image was accepted")
	}
}

// Images qemu-img makes: a plain qcow2 (both versions) and a raw file are
// accepted with their virtual sizes, an overlay naming a backing file is
// refused.
func TestInspectQemuImg(t *testing.T) {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("qemu-img is not installed (apt-get install qemu-utils)")
	}
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(qemuImg, args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v: %s", args, err, out)
		}
	}
	base, v2, overlay, raw := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "v2.qcow2"), filepath.Join(dir, "overlay.qcow2"), filepath.Join(dir, "disk.raw")
	run("create", "-q", "-f", "qcow2", base, "64M")
	run("create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "3G")
	run("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay)
	run("create", "-q", "-f", "raw", raw, "2M")
	for _, c := range []struct {
		path   string
		format Format
		vsize  int64
		err    string
	}{
		{base, QCOW2, 64 << 20, ""},
		{v2, QCOW2, 3 << 30, ""},
		{raw, Raw, 2 << 20, ""},
		{overlay, 0, 0, "backing file"},
	} {
		f, err := os.Open(c.path)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		got, vsize, err := Inspect(f, fi.Size(), Unknown)
		f.Close()
		if c.err == "" && (err != nil || got != c.format || vsize != c.vsize) || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: %v %d %v", filepath.Base(c.path), got, vsize, err)
		}
	}
}
