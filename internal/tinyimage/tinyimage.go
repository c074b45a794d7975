//go:build linux

// Package tinyimage builds, from Debian's packages only, a tiny bootable
// disk image for tests and `yunchid dev --real-hosts`: a raw disk holding
// one FAT filesystem with syslinux installed (so SeaBIOS boots it from a
// virtio-blk disk, with no direct kernel boot), Debian's cloud kernel and
// an initramfs of busybox-static and a few kernel modules.
//
// Booted, the guest finds its cloud-init NoCloud seed (a cdrom or disk
// whose filesystem is labelled cidata, as agent/cloudinit makes it), sets
// its hostname from the seed's meta-data and prints
//
//	YUNCHI-TINY-READY hostname=<hostname>
//
// on its serial console (ttyS0); before it, SeedMarker's line tells which
// device held the seed and the SHA-256 of its user-data. A busybox shell
// then answers on the console, and the ACPI power button powers the
// guest off at once, so a graceful shutdown works.
//
// Images are cached in a directory, named by a content key of every input
// (kernel, modules, busybox, syslinux, this package's own files), so a
// second Build with the same packages installed returns at once.
package tinyimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

const (
	// Marker starts the line the guest prints on ttyS0 once it is ready:
	// Marker + " hostname=" + its hostname.
	Marker = "YUNCHI-TINY-READY"
	// SeedMarker starts the line printed before it when a seed was found:
	// SeedMarker + " device=/dev/sr0 user-data-sha256=<hex>".
	SeedMarker = "YUNCHI-TINY-SEED"
	// Format is the image's format, for a libvirt disk's driver type.
	Format = "raw"
)

// Packages are the Debian packages the image is built from.
const Packages = "linux-image-cloud-amd64 busybox-static syslinux mtools dosfstools"

// formatVersion changes whenever the way the image is put together
// changes in a way the embedded files do not show.
const formatVersion = "tinyimage/1"

// modules are the kernel modules the guest loads (their dependencies come
// along): virtio devices, the IDE cdrom of the pc machine, the seed's
// filesystem, and the ACPI power button with the event device busybox
// acpid reads it through. Debian's cloud kernel has no AHCI driver: on a
// q35 machine attach the seed as a virtio disk or a virtio-scsi cdrom.
var modules = []string{
	"virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_balloon",
	"ata_piix", "sr_mod", "sd_mod", "isofs",
	"button", "evdev",
}

//go:embed rootfs syslinux.cfg
var files embed.FS

// inputs are the files an image is built from.
type inputs struct {
	kernel     string // /boot/vmlinuz-VERSION
	modulesDir string // /lib/modules/VERSION
	busybox    string
	syslinux   string // the mtools-based installer
	mkfsFat    string
	mcopy      string
}

// Available says why an image cannot be built here ("" when it can).
func Available() string {
	if _, err := findInputs(); err != nil {
		return err.Error()
	}
	return ""
}

// findInputs locates every input, or says which package is missing.
func findInputs() (inputs, error) {
	var in inputs
	var err error
	if in.kernel, in.modulesDir, err = findKernel("/boot", "/lib/modules"); err != nil {
		return in, err
	}
	if in.busybox, err = lookPath("busybox"); err != nil {
		return in, errors.New("tinyimage: no busybox (apt-get install busybox-static)")
	}
	if err := checkStatic(in.busybox); err != nil {
		return in, err
	}
	for _, t := range []struct {
		dst      *string
		bin, pkg string
	}{
		{&in.syslinux, "syslinux", "syslinux"},
		{&in.mkfsFat, "mkfs.fat", "dosfstools"},
		{&in.mcopy, "mcopy", "mtools"},
	} {
		if *t.dst, err = lookPath(t.bin); err != nil {
			return in, fmt.Errorf("tinyimage: no %s (apt-get install %s)", t.bin, t.pkg)
		}
	}
	return in, nil
}

// lookPath finds bin on PATH or in the sbin directories a non-root PATH
// may lack.
func lookPath(bin string) (string, error) {
	if p, err := exec.LookPath(bin); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, bin)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// findKernel picks the newest Debian cloud kernel in bootDir that has its
// modules in modulesRoot.
func findKernel(bootDir, modulesRoot string) (kernel, modulesDir string, err error) {
	paths, _ := filepath.Glob(filepath.Join(bootDir, "vmlinuz-*-cloud-amd64"))
	var versions []string
	for _, p := range paths {
		v := strings.TrimPrefix(filepath.Base(p), "vmlinuz-")
		if _, err := os.Stat(filepath.Join(modulesRoot, v, "modules.dep")); err == nil {
			versions = append(versions, v)
		}
	}
	if len(versions) == 0 {
		return "", "", fmt.Errorf("tinyimage: no Debian cloud kernel with its modules (%s/vmlinuz-*-cloud-amd64 and %s/*-cloud-amd64/modules.dep; apt-get install linux-image-cloud-amd64)", bootDir, modulesRoot)
	}
	slices.SortFunc(versions, compareVersions)
	v := versions[len(versions)-1]
	kernel = filepath.Join(bootDir, "vmlinuz-"+v)
	f, err := os.Open(kernel)
	if err != nil {
		return "", "", fmt.Errorf("tinyimage: kernel: %w", err)
	}
	f.Close()
	return kernel, filepath.Join(modulesRoot, v), nil
}

// compareVersions orders kernel versions ("6.1.0-9-cloud-amd64" before
// "6.1.0-10-cloud-amd64") by their numbers, then as text.
func compareVersions(a, b string) int {
	fa, fb := strings.FieldsFunc(a, notDigit), strings.FieldsFunc(b, notDigit)
	for i := 0; i < len(fa) && i < len(fb); i++ {
		na, _ := strconv.Atoi(fa[i])
		nb, _ := strconv.Atoi(fb[i])
		if na != nb {
			return na - nb
		}
	}
	if len(fa) != len(fb) {
		return len(fa) - len(fb)
	}
	return strings.Compare(a, b)
}

func notDigit(r rune) bool { return r < '0' || r > '9' }

// checkStatic refuses a busybox that is not statically linked: the
// initramfs has no C library for a dynamic one (Debian's busybox package).
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("tinyimage: busybox %s: %v (apt-get install busybox-static)", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("tinyimage: %s is dynamically linked (apt-get install busybox-static)", p)
		}
	}
	return nil
}

// Build returns the path of an image in cacheDir (made if missing),
// building it if no image of the same inputs is there yet. The image is
// a raw disk (Format); callers that boot it should use a copy or an
// overlay, as the guest may write to it.
func Build(ctx context.Context, cacheDir string) (string, error) {
	in, err := findInputs()
	if err != nil {
		return "", err
	}
	return build(ctx, cacheDir, in)
}

func build(ctx context.Context, cacheDir string, in inputs) (string, error) {
	mods, err := resolveModules(in.modulesDir, modules)
	if err != nil {
		return "", err
	}
	key, err := contentKey(in, mods)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("tinyimage: %w", err)
	}
	final := filepath.Join(cacheDir, "tiny-"+key[:16]+".img")
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("tinyimage: %w", err)
	}
	// Build beside the final file and rename: a reader never sees a
	// half-written image, and builders racing each other both succeed.
	work, err := os.MkdirTemp(cacheDir, ".tiny-build-")
	if err != nil {
		return "", fmt.Errorf("tinyimage: %w", err)
	}
	defer os.RemoveAll(work)
	initrd, err := buildInitramfs(in, mods)
	if err != nil {
		return "", err
	}
	img := filepath.Join(work, "disk.img")
	if err := buildDisk(ctx, in, initrd, work, img); err != nil {
		return "", err
	}
	if err := os.Chmod(img, 0o644); err != nil {
		return "", fmt.Errorf("tinyimage: %w", err)
	}
	if err := os.Rename(img, final); err != nil {
		return "", fmt.Errorf("tinyimage: %w", err)
	}
	return final, nil
}

// contentKey hashes everything the image is made of.
func contentKey(in inputs, mods []module) (string, error) {
	h := sha256.New()
	// Each input is its name and length, then its bytes: no two different
	// sets of inputs hash alike.
	field := func(name string, size int64, r io.Reader) error {
		fmt.Fprintf(h, "%s %d\n", name, size)
		if n, err := io.Copy(h, r); err != nil || n != size {
			return fmt.Errorf("tinyimage: %s: read %d of %d bytes: %v", name, n, size, err)
		}
		return nil
	}
	if err := field("format", int64(len(formatVersion)), strings.NewReader(formatVersion)); err != nil {
		return "", err
	}
	if err := fs.WalkDir(files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		return field("embed:"+p, int64(len(b)), bytes.NewReader(b))
	}); err != nil {
		return "", err
	}
	paths := []string{in.kernel, in.busybox, in.syslinux}
	for _, m := range mods {
		paths = append(paths, m.path)
	}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return "", fmt.Errorf("tinyimage: %w", err)
		}
		st, err := f.Stat()
		if err == nil {
			err = field(p, st.Size(), f)
		}
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// buildDisk makes img: a FAT filesystem spanning the whole disk (no
// partition table: SeaBIOS runs the filesystem's boot sector, which
// syslinux writes) with syslinux, the kernel, the initramfs and
// syslinux.cfg in it.
func buildDisk(ctx context.Context, in inputs, initrd []byte, work, img string) error {
	cfg, err := files.ReadFile("syslinux.cfg")
	if err != nil {
		return err
	}
	for name, b := range map[string][]byte{"initrd.gz": initrd, "syslinux.cfg": cfg} {
		if err := os.WriteFile(filepath.Join(work, name), b, 0o644); err != nil {
			return fmt.Errorf("tinyimage: %w", err)
		}
	}
	st, err := os.Stat(in.kernel)
	if err != nil {
		return fmt.Errorf("tinyimage: %w", err)
	}
	// The files, plus room for FAT tables, syslinux and slack; whole MiB.
	kib := (st.Size()+int64(len(initrd))+int64(len(cfg)))/1024 + 4096
	kib = (kib + 1023) / 1024 * 1024
	run := func(bin string, args ...string) error {
		cmd := exec.CommandContext(ctx, bin, args...)
		// mtools (mcopy, and syslinux through it) refuses images whose
		// geometry is not a floppy's or a partitioned disk's without this.
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("tinyimage: %s: %v: %s", filepath.Base(bin), err, strings.Join(strings.Fields(string(out)), " "))
		}
		return nil
	}
	// A fixed volume id keeps the image the same from build to build.
	if err := run(in.mkfsFat, "-C", "-n", "YUNCHITINY", "-i", "59554e43", img, strconv.FormatInt(kib, 10)); err != nil {
		return err
	}
	if err := run(in.syslinux, "--install", img); err != nil {
		return err
	}
	for _, f := range []struct{ src, dst string }{
		{in.kernel, "::/vmlinuz"},
		{filepath.Join(work, "initrd.gz"), "::/initrd.gz"},
		{filepath.Join(work, "syslinux.cfg"), "::/syslinux.cfg"},
	} {
		if err := run(in.mcopy, "-i", img, "-o", f.src, f.dst); err != nil {
			return err
		}
	}
	return nil
}
