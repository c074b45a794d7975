package libvirt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/yunchi/yunchi/agent"
)

// memSource is a disk in memory handed out as a restore does: in order,
// in pieces of piece bytes, all-zero pieces skipped. failAt, if set, makes
// Fill fail once it reaches that offset.
type memSource struct {
	b      []byte
	piece  int
	failAt int64
	// backwards hands the second piece before the first.
	backwards bool
}

func (m *memSource) SizeBytes() int64 { return int64(len(m.b)) }

func (m *memSource) Fill(ctx context.Context, write func(off int64, p []byte) error) error {
	type piece struct {
		off int64
		p   []byte
	}
	var pieces []piece
	for off := 0; off < len(m.b); off += m.piece {
		p := m.b[off:min(off+m.piece, len(m.b))]
		if !bytes.Equal(p, make([]byte, len(p))) {
			pieces = append(pieces, piece{int64(off), p})
		}
	}
	if m.backwards && len(pieces) > 1 {
		pieces[0], pieces[1] = pieces[1], pieces[0]
	}
	for _, pc := range pieces {
		if m.failAt > 0 && pc.off >= m.failAt {
			return errors.New("chunk 7 damaged")
		}
		if err := write(pc.off, pc.p); err != nil {
			return err
		}
	}
	return nil
}

// pattern fills n bytes with a pattern that differs per offset and seed.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31) ^ seed
	}
	return b
}

// readView reads every byte of a view's root disk, in 4 MiB pieces.
func readView(t *testing.T, ctx context.Context, v agent.BackupView) []byte {
	t.Helper()
	disks := v.Disks()
	if len(disks) != 1 || disks[0].Name != "root" {
		t.Fatalf("disks %+v, want root only", disks)
	}
	out := make([]byte, disks[0].SizeBytes)
	for off := int64(0); off < int64(len(out)); off += 4 << 20 {
		if err := v.ReadAt(ctx, "root", out[off:min(off+4<<20, int64(len(out)))], off); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func simSpec(id string, size int64) agent.DomainSpec {
	return agent.DomainSpec{VMID: id, Project: "p", Name: id, VCPUs: 1, MemoryBytes: 256 << 20, DiskBytes: size}
}

// On a test-driver host with a disk dir: Define makes the root disk a
// sparse file of the disk's size, a backup view is a full view of it
// (data extents from the file system, every byte read back), a restore
// fills a new VM's file byte for byte (skipped pieces stay holes), and
// Undefine removes the files.
func TestSimDiskBackupAndRestore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openSim(t, Options{DiskDir: dir})
	const size = 16 << 20
	if err := d.Define(ctx, simSpec("vm1", size)); err != nil {
		t.Fatal(err)
	}
	path, ok := d.SimDiskPath("vm1")
	if !ok || path != filepath.Join(dir, "vm1.img") {
		t.Fatalf("disk path %q, %v", path, ok)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != size {
		t.Fatalf("disk file: %v, %v", st, err)
	}
	x := definedXML(t, d, "vm1", 0)
	if disk := x.Devices.Disks[0]; disk.Source.File.File != path || disk.Driver.Type != "raw" {
		t.Errorf("root disk %+v %+v, want the file, raw", disk.Source.File, disk.Driver)
	}

	// A fresh disk holds no data.
	v, err := d.BeginBackup(ctx, agent.BackupRequest{VMID: "vm1", Since: "cp0", Checkpoint: "cp1"})
	if err != nil {
		t.Fatal(err)
	}
	if ext, err := v.Changed(ctx, "root"); err != nil || len(ext) != 0 {
		t.Fatalf("changed on an empty disk: %v, %v", ext, err)
	}
	if err := v.Close(ctx, true); err != nil {
		t.Fatal(err)
	}

	// Data written into the file (what a guest would have written).
	want := make([]byte, size)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct{ off, n int64 }{{0, 1 << 20}, {8 << 20, 64 << 10}, {size - 4096, 4096}} {
		copy(want[w.off:], pattern(int(w.n), byte(w.off>>16)))
		if _, err := f.WriteAt(want[w.off:w.off+w.n], w.off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	v, err = d.BeginBackup(ctx, agent.BackupRequest{VMID: "vm1", Since: "cp1", Checkpoint: "cp2"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Incremental() || v.Checkpoint() != "" {
		t.Errorf("incremental %v, checkpoint %q: a file view is full and makes none", v.Incremental(), v.Checkpoint())
	}
	ext, err := v.Changed(ctx, "root")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ext) != fmt.Sprint([]agent.Extent{{Offset: 0, Length: 1 << 20}, {Offset: 8 << 20, Length: 64 << 10}, {Offset: size - 4096, Length: 4096}}) {
		t.Errorf("changed %v", ext)
	}
	got := readView(t, ctx, v)
	if !bytes.Equal(got, want) {
		t.Fatal("the view's bytes differ from the file's")
	}
	if _, err := v.Changed(ctx, "data"); err == nil {
		t.Error("a disk the view does not have accepted")
	}
	if err := v.ReadAt(ctx, "root", make([]byte, 2), size-1); err == nil {
		t.Error("a read past the end accepted")
	}
	if err := v.Close(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx, true); err != nil {
		t.Errorf("second close: %v", err)
	}
	if err := v.ReadAt(ctx, "root", make([]byte, 1), 0); err == nil {
		t.Error("a read after close accepted")
	}

	// Restore into a new VM.
	spec := simSpec("vm2", size)
	spec.RootSource = &memSource{b: got, piece: 4 << 20}
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	path2, ok := d.SimDiskPath("vm2")
	if !ok {
		t.Fatal("no disk file for the restored VM")
	}
	if b, err := os.ReadFile(path2); err != nil || !bytes.Equal(b, want) {
		t.Fatalf("restored disk differs from the source (%v)", err)
	}
	v, err = d.BeginBackup(ctx, agent.BackupRequest{VMID: "vm2"})
	if err != nil {
		t.Fatal(err)
	}
	// The pieces the source skipped (all zero) are holes: the data
	// extents are its pieces with data.
	var wantExt []agent.Extent
	for off := int64(0); off < size; off += 4 << 20 {
		if bytes.Equal(got[off:off+4<<20], make([]byte, 4<<20)) {
			continue
		}
		if k := len(wantExt) - 1; k >= 0 && wantExt[k].Offset+wantExt[k].Length == off {
			wantExt[k].Length += 4 << 20
		} else {
			wantExt = append(wantExt, agent.Extent{Offset: off, Length: 4 << 20})
		}
	}
	if ext, err := v.Changed(ctx, "root"); err != nil || fmt.Sprint(ext) != fmt.Sprint(wantExt) {
		t.Errorf("restored disk's data extents %v (%v), want %v", ext, err, wantExt)
	}
	v.Close(ctx, false)

	for _, id := range []string{"vm1", "vm2"} {
		if err := d.Undefine(ctx, id); err != nil {
			t.Fatal(err)
		}
		if p, ok := d.SimDiskPath(id); ok {
			t.Errorf("%s left after undefine", p)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("disk dir not empty: %v", entries)
	}
}

// The restore rules on a disk file: a Define whose source fails leaves
// no file and no domain; a file left before the domain existed is made
// again from the source; once the domain exists its file is kept as it is.
func TestSimDiskRestoreRebuildRule(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openSim(t, Options{DiskDir: dir})
	const size = 16 << 20
	src := pattern(size, 9)
	spec := simSpec("r1", size)

	spec.RootSource = &memSource{b: src, piece: 1 << 20, failAt: 8 << 20}
	if err := d.Define(ctx, spec); err == nil || !strings.Contains(err.Error(), "chunk 7 damaged") {
		t.Fatalf("define with a failing source: %v", err)
	}
	if _, ok := d.SimDiskPath("r1"); ok {
		t.Error("a failed restore left its file")
	}
	if doms, _ := d.ListDomains(ctx); len(doms) != 0 {
		t.Errorf("a failed restore defined %+v", doms)
	}

	// A file left by a Define that died before defining the domain.
	path := filepath.Join(dir, "r1.img")
	if err := os.WriteFile(path, []byte("half written"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec.RootSource = &memSource{b: src, piece: 1 << 20}
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, src) {
		t.Fatal("the stale file was not rebuilt from the source")
	}
	// Defined now: the disk is the VM's, a second Define keeps it.
	f, _ := os.OpenFile(path, os.O_WRONLY, 0)
	f.WriteAt([]byte("guest data"), 0)
	f.Close()
	spec.RootSource = &memSource{b: pattern(size, 1), piece: 1 << 20}
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.HasPrefix(b, []byte("guest data")) || !bytes.Equal(b[10:], src[10:]) {
		t.Error("Define of a defined VM rewrote its disk")
	}
}

// Bad input gets a one-line error and changes nothing.
func TestBackupAndRestoreBadInput(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openSim(t, Options{DiskDir: dir})
	src := &memSource{b: pattern(1<<20, 3), piece: 1 << 20}
	for name, spec := range map[string]agent.DomainSpec{
		"source larger than the disk": {VMID: "b1", VCPUs: 1, MemoryBytes: 1 << 20, DiskBytes: 512 << 10, RootSource: src},
		"source without a disk":       {VMID: "b1", VCPUs: 1, MemoryBytes: 1 << 20, RootSource: src},
		"source and base image":       {VMID: "b1", VCPUs: 1, MemoryBytes: 1 << 20, DiskBytes: 1 << 20, RootSource: src, BaseImage: "/x.qcow2", BaseFormat: "qcow2"},
		"vm id not a file name":       {VMID: "a/b", VCPUs: 1, MemoryBytes: 1 << 20, DiskBytes: 1 << 20},
		"pieces out of order":         {VMID: "b1", VCPUs: 1, MemoryBytes: 1 << 20, DiskBytes: 4 << 20, RootSource: &memSource{b: pattern(4<<20, 1), piece: 1 << 20, backwards: true}},
	} {
		err := d.Define(ctx, spec)
		if err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("bad input left files: %v", entries)
	}
	if doms, _ := d.ListDomains(ctx); len(doms) != 0 {
		t.Errorf("bad input defined %+v", doms)
	}

	if err := d.Define(ctx, simSpec("b2", 1<<20)); err != nil {
		t.Fatal(err)
	}
	for name, req := range map[string]agent.BackupRequest{
		"no vm":                 {},
		"slash in a checkpoint": {VMID: "b2", Checkpoint: "a/b"},
		"newline in since":      {VMID: "b2", Since: "a\nb"},
		"same checkpoints":      {VMID: "b2", Since: "c", Checkpoint: "c"},
		"long checkpoint":       {VMID: "b2", Checkpoint: strings.Repeat("c", 201)},
	} {
		if v, err := d.BeginBackup(ctx, req); err == nil || strings.Contains(err.Error(), "\n") {
			if v != nil {
				v.Close(ctx, false)
			}
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := d.BeginBackup(ctx, agent.BackupRequest{VMID: "nope"}); !errors.Is(err, agent.ErrDomainNotFound) {
		t.Errorf("backup of an unknown VM: %v", err)
	}

	// Without a disk dir a test-driver host has nothing to back up, and
	// cannot hold a restored disk.
	plain := openSim(t, Options{})
	if err := plain.Define(ctx, simSpec("p1", 1<<20)); err != nil {
		t.Fatal(err)
	}
	if _, err := plain.BeginBackup(ctx, agent.BackupRequest{VMID: "p1"}); err == nil || !strings.Contains(err.Error(), "disk dir") {
		t.Errorf("backup on a test-driver host without a disk dir: %v", err)
	}
	spec := simSpec("p2", 1<<20)
	spec.RootSource = src
	if err := plain.Define(ctx, spec); err == nil || !strings.Contains(err.Error(), "disk dir") {
		t.Errorf("restore on a test-driver host without a disk dir: %v", err)
	}
	if _, ok := plain.SimDiskPath("p1"); ok {
		t.Error("a disk path without a disk dir")
	}
	// A disk dir is for test-driver hosts only, and absolute.
	for _, c := range []struct{ uri, dir string }{{"qemu:///system", dir}, {"test:///default", "rel/dir"}} {
		if d, err := OpenWithOptions(c.uri, Options{DiskDir: c.dir}); err == nil {
			d.Close()
			t.Errorf("disk dir %q on %s accepted", c.dir, c.uri)
		}
	}
}
