//go:build linux

package tinyimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"
)

// The markers the Go constants name are the ones /init prints.
func TestInitPrintsTheMarkers(t *testing.T) {
	b, err := files.ReadFile("rootfs/init")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{Marker + " hostname=%s", SeedMarker + " device="} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("rootfs/init does not print %q", want)
		}
	}
}

// Modules come with their dependencies, each before the modules using
// it, once; built-in modules are skipped; a missing one is an error.
func TestResolveModules(t *testing.T) {
	dir := t.TempDir()
	dep := strings.Join([]string{
		"kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio_ring.ko:",
		"kernel/drivers/virtio/virtio-pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko:",
		"kernel/fs/isofs/isofs.ko: kernel/drivers/cdrom/cdrom.ko",
		"kernel/drivers/cdrom/cdrom.ko:",
	}, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/acpi/button.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mods, err := resolveModules(dir, []string{"virtio_blk", "virtio_pci", "button", "isofs"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.name)
	}
	want := []string{"virtio_ring", "virtio", "virtio_blk", "virtio_pci_modern_dev", "virtio_pci", "cdrom", "isofs"}
	if !slices.Equal(names, want) {
		t.Errorf("load order %q, want %q", names, want)
	}
	if got := mods[4].path; got != filepath.Join(dir, "kernel/drivers/virtio/virtio-pci.ko.xz") {
		t.Errorf("virtio_pci from %s", got)
	}
	if _, err := resolveModules(dir, []string{"virtio_blk", "nosuch"}); err == nil || !strings.Contains(err.Error(), "no module nosuch") {
		t.Errorf("missing module: %v", err)
	}
}

// Compressed modules are put in the initramfs decompressed; a file that
// is not a module is refused.
func TestReadModule(t *testing.T) {
	dir := t.TempDir()
	elfBytes := append([]byte("\x7fELF"), bytes.Repeat([]byte("module body "), 100)...)
	write := func(name string, compress func(io.Writer) (io.WriteCloser, error)) string {
		var buf bytes.Buffer
		w, err := compress(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(elfBytes); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := func(w io.Writer) (io.WriteCloser, error) { return nopCloser{w}, nil }
	paths := []string{
		write("a.ko", plain),
		write("b.ko.xz", func(w io.Writer) (io.WriteCloser, error) { return xz.NewWriter(w) }),
		write("c.ko.zst", func(w io.Writer) (io.WriteCloser, error) { return zstd.NewWriter(w) }),
		write("d.ko.gz", func(w io.Writer) (io.WriteCloser, error) { return gzip.NewWriter(w), nil }),
	}
	for _, p := range paths {
		b, err := readModule(p)
		if err != nil || !bytes.Equal(b, elfBytes) {
			t.Errorf("%s: %d bytes, %v; want the module back", filepath.Base(p), len(b), err)
		}
	}
	notELF := filepath.Join(dir, "e.ko")
	if err := os.WriteFile(notELF, []byte("text"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readModule(notELF); err == nil || !strings.Contains(err.Error(), "not an ELF module") {
		t.Errorf("non-ELF module: %v", err)
	}
	if _, err := readModule(write("f.ko.bz2", plain)); err == nil || !strings.Contains(err.Error(), "not a kernel module file") {
		t.Errorf("unknown compression: %v", err)
	}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// A missing kernel or a dynamic busybox is reported with the package that
// brings the right one.
func TestMissingInputsNameTheirPackage(t *testing.T) {
	boot, mods := t.TempDir(), t.TempDir()
	if _, _, err := findKernel(boot, mods); err == nil || !strings.Contains(err.Error(), "apt-get install linux-image-cloud-amd64") {
		t.Errorf("no kernel: %v", err)
	}
	// A kernel without its modules does not count either.
	if err := os.WriteFile(filepath.Join(boot, "vmlinuz-6.1.0-9-cloud-amd64"), []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := findKernel(boot, mods); err == nil {
		t.Error("a kernel without modules was accepted")
	}
	for _, v := range []string{"6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64"} {
		if err := os.WriteFile(filepath.Join(boot, "vmlinuz-"+v), []byte("k"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(mods, v), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mods, v, "modules.dep"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	k, m, err := findKernel(boot, mods)
	if err != nil || filepath.Base(k) != "vmlinuz-6.1.0-10-cloud-amd64" || m != filepath.Join(mods, "6.1.0-10-cloud-amd64") {
		t.Errorf("picked %s %s, %v; want the newest, 6.1.0-10", k, m, err)
	}
	// The test binary is dynamically linked (cgo) or static (pure Go):
	// find a dynamic executable to refuse.
	for _, p := range []string{"/bin/ls", "/usr/bin/env"} {
		if err := checkStatic(p); err != nil {
			if !strings.Contains(err.Error(), "apt-get install busybox-static") {
				t.Errorf("dynamic %s: %v", p, err)
			}
			return
		}
	}
	t.Error("no dynamic executable refused")
}

// The initramfs holds /init, the console node, busybox, every module in
// the load list (decompressed), and rootfs files with their modes.
func TestInitramfs(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	in, err := findInputs()
	if err != nil {
		t.Fatal(err)
	}
	mods, err := resolveModules(in.modulesDir, modules)
	if err != nil {
		t.Fatal(err)
	}
	gz, err := buildInitramfs(in, mods)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs: %d KiB gzipped, %d modules", len(gz)>>10, len(mods))
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]cpio.Record{}
	for _, r := range recs {
		byName[r.Name] = r
	}
	content := func(name string) []byte {
		r, ok := byName[name]
		if !ok {
			t.Fatalf("no %s in the initramfs", name)
		}
		b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, mode := range map[string]uint64{
		"init":                      cpio.S_IFREG | 0o755,
		"bin/busybox":               cpio.S_IFREG | 0o755,
		"etc/inittab":               cpio.S_IFREG | 0o644,
		"etc/acpi/PWRF/00000080":    cpio.S_IFREG | 0o755,
		"dev/console":               cpio.S_IFCHR | 0o600,
		"tmp":                       cpio.S_IFDIR | 0o1777,
		"lib/modules/isofs.ko":      cpio.S_IFREG | 0o644,
		"lib/modules/virtio_blk.ko": cpio.S_IFREG | 0o644,
	} {
		if r, ok := byName[name]; !ok || r.Mode != mode {
			t.Errorf("%s: mode %o (present %v), want %o", name, r.Mode, ok, mode)
		}
	}
	if c := byName["dev/console"]; c.Rmajor != 5 || c.Rminor != 1 {
		t.Errorf("dev/console is %d:%d, want 5:1", c.Rmajor, c.Rminor)
	}
	list := strings.Fields(string(content("etc/tiny/modules")))
	if len(list) != len(mods) {
		t.Fatalf("load list %q, want %d modules", list, len(mods))
	}
	for _, m := range list {
		if b := content("lib/modules/" + m); !bytes.HasPrefix(b, []byte("\x7fELF")) {
			t.Errorf("%s is not an ELF module", m)
		}
	}
	for _, m := range modules {
		if !slices.Contains(list, m+".ko") {
			t.Errorf("%s is not loaded", m)
		}
	}
	if slices.Index(list, "virtio_ring.ko") > slices.Index(list, "virtio_blk.ko") {
		t.Errorf("virtio_blk loads before its dependency virtio_ring: %q", list)
	}
	bb, err := os.ReadFile(in.busybox)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(content("bin/busybox"), bb) {
		t.Error("bin/busybox differs from the host's")
	}
}

// A build that fails, early (cancelled) or late (a tool fails after the
// disk was made), leaves nothing in the cache; a cache path that is a file
// is refused.
func TestBuildFailureLeavesNothing(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	cache := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if p, err := Build(ctx, cache); err == nil {
		t.Fatalf("cancelled build made %s", p)
	}
	in, err := findInputs()
	if err != nil {
		t.Fatal(err)
	}
	in.mcopy = "/bin/false"
	if p, err := build(context.Background(), cache, in); err == nil || !strings.Contains(err.Error(), "tinyimage: false: exit status 1") {
		t.Fatalf("build with a failing mcopy: %q, %v", p, err)
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 0 {
		t.Errorf("left in the cache: %v", ents)
	}
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(context.Background(), notDir); err == nil {
		t.Error("a file as cache directory was accepted")
	}
}

func TestCompareVersions(t *testing.T) {
	ordered := []string{"5.10.0-30-cloud-amd64", "6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64", "6.1.0-10-cloud-amd64+b1", "6.12.0-1-cloud-amd64"}
	for i := range ordered {
		for j := range ordered {
			c := compareVersions(ordered[i], ordered[j])
			if (i < j && c >= 0) || (i > j && c <= 0) || (i == j && c != 0) {
				t.Errorf("compare(%s, %s) = %d", ordered[i], ordered[j], c)
			}
		}
	}
}
