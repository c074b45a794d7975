//go:build linux

package tinyimage

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"
)

// module is one kernel module file to put in the initramfs.
type module struct {
	name string // as modprobe names it: "virtio_pci"
	path string // on this machine, possibly compressed
}

// file is its name in the initramfs: uncompressed, since busybox insmod
// reads only plain .ko files.
func (m module) file() string { return m.name + ".ko" }

// moduleName turns "kernel/drivers/virtio/virtio-pci.ko.xz" into
// "virtio_pci".
func moduleName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// resolveModules lists want and everything they depend on, dependencies
// before their users, from dir's modules.dep. Modules built into the
// kernel (modules.builtin) need no file and are left out.
func resolveModules(dir string, want []string) ([]module, error) {
	deps := map[string][]string{} // module path -> its dependencies' paths
	byName := map[string]string{} // module name -> path
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("tinyimage: %w (apt-get install linux-image-cloud-amd64)", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		byName[moduleName(mod)] = mod
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("tinyimage: %s/modules.dep: %w", dir, err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[moduleName(l)] = true
		}
	}
	var out []module
	seen := map[string]bool{}
	var visit func(p string)
	visit = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, d := range deps[p] {
			visit(d)
		}
		out = append(out, module{name: moduleName(p), path: filepath.Join(dir, p)})
	}
	for _, name := range want {
		p, ok := byName[name]
		if !ok {
			if builtin[name] {
				continue
			}
			return nil, fmt.Errorf("tinyimage: kernel %s has no module %s", filepath.Base(dir), name)
		}
		visit(p)
	}
	return out, nil
}

// readModule returns a module's plain ELF contents, decompressing
// .ko.xz, .ko.zst and .ko.gz files (Debian compresses modules since
// kernel 6.5).
func readModule(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("tinyimage: %w", err)
	}
	defer f.Close()
	var r io.Reader
	switch {
	case strings.HasSuffix(p, ".ko"):
		r = f
	case strings.HasSuffix(p, ".ko.xz"):
		if r, err = xz.NewReader(f); err != nil {
			return nil, fmt.Errorf("tinyimage: %s: %w", p, err)
		}
	case strings.HasSuffix(p, ".ko.zst"):
		d, err := zstd.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("tinyimage: %s: %w", p, err)
		}
		defer d.Close()
		r = d
	case strings.HasSuffix(p, ".ko.gz"):
		if r, err = gzip.NewReader(f); err != nil {
			return nil, fmt.Errorf("tinyimage: %s: %w", p, err)
		}
	default:
		return nil, fmt.Errorf("tinyimage: %s: not a kernel module file (.ko, .ko.xz, .ko.zst, .ko.gz)", p)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("tinyimage: %s: %w", p, err)
	}
	if !bytes.HasPrefix(b, []byte("\x7fELF")) {
		return nil, fmt.Errorf("tinyimage: %s: not an ELF module", p)
	}
	return b, nil
}

// buildInitramfs returns the gzipped newc cpio archive the kernel unpacks
// as its root: busybox, the modules, the load list and this package's
// rootfs files.
func buildInitramfs(in inputs, mods []module) ([]byte, error) {
	var recs []cpio.Record
	for _, d := range []string{"bin", "dev", "etc", "etc/acpi", "etc/acpi/PWRF", "etc/tiny", "lib", "lib/modules", "mnt", "proc", "root", "run", "sbin", "sys", "tmp", "usr", "usr/bin", "usr/sbin"} {
		mode := uint64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		recs = append(recs, cpio.Directory(d, mode))
	}
	// The kernel opens /dev/console for init before anything mounts
	// devtmpfs: without the node init runs with no stdin/stdout.
	recs = append(recs, cpio.CharDev("dev/console", 0o600, 5, 1))
	bb, err := os.ReadFile(in.busybox)
	if err != nil {
		return nil, fmt.Errorf("tinyimage: %w", err)
	}
	recs = append(recs, file("bin/busybox", bb, 0o755), cpio.Symlink("bin/sh", "busybox"))
	var list bytes.Buffer
	for _, m := range mods {
		b, err := readModule(m.path)
		if err != nil {
			return nil, err
		}
		recs = append(recs, file("lib/modules/"+m.file(), b, 0o644))
		fmt.Fprintln(&list, m.file())
	}
	recs = append(recs, file("etc/tiny/modules", list.Bytes(), 0o644))
	if err := fs.WalkDir(files, "rootfs", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		mode := uint64(0o644)
		if bytes.HasPrefix(b, []byte("#!")) {
			mode = 0o755
		}
		recs = append(recs, file(strings.TrimPrefix(p, "rootfs/"), b, mode))
		return nil
	}); err != nil {
		return nil, fmt.Errorf("tinyimage: %w", err)
	}
	names := map[string]bool{}
	for i := range recs {
		if names[recs[i].Name] {
			return nil, fmt.Errorf("tinyimage: %s twice in the initramfs", recs[i].Name)
		}
		names[recs[i].Name] = true
		recs[i] = cpio.MakeReproducible(recs[i])
		recs[i].Ino = uint64(i + 1) // distinct: equal inodes read as hard links
		recs[i].NLink = 1
	}
	if !slices.ContainsFunc(recs, func(r cpio.Record) bool { return r.Name == "init" }) {
		return nil, fmt.Errorf("tinyimage: no /init in the initramfs")
	}
	var out bytes.Buffer
	zw, err := gzip.NewWriterLevel(&out, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	w := cpio.Newc.Writer(zw)
	if err := cpio.WriteRecords(w, recs); err != nil {
		return nil, fmt.Errorf("tinyimage: initramfs: %w", err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, fmt.Errorf("tinyimage: initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("tinyimage: initramfs: %w", err)
	}
	return out.Bytes(), nil
}

// file is a regular file record.
func file(name string, b []byte, perm uint64) cpio.Record {
	return cpio.StaticRecord(b, cpio.Info{Name: name, Mode: cpio.S_IFREG | perm})
}
