//go:build linux

package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// qemuNBD exports img (qcow2) read-only with qemu-nbd on a unix socket in
// a temp dir, with extra args; the server is killed by pid at cleanup.
func qemuNBD(t *testing.T, img string, args ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	var stderr bytes.Buffer
	cmd := exec.Command("qemu-nbd", append([]string{"--socket=" + sock, "--persistent", "--read-only", "--format=qcow2"}, append(args, img)...)...)
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		select {
		case <-exited:
			t.Fatalf("qemu-nbd exited: %s", strings.TrimSpace(stderr.String()))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("qemu-nbd made no socket in 10 s")
		}
	}
}

func needQemuUtils(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"qemu-nbd", "qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (apt-get install qemu-utils)", bin)
		}
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// write is one qemu-io write: pattern byte at off, n bytes.
type write struct {
	pattern byte
	off, n  int64
}

func qemuIO(t *testing.T, img string, ws []write, want []byte) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, w := range ws {
		args = append(args, "-c", fmt.Sprintf("write -P %d %d %d", w.pattern, w.off, w.n))
		copy(want[w.off:w.off+w.n], bytes.Repeat([]byte{w.pattern}, int(w.n)))
	}
	run(t, "qemu-io", append(args, img)...)
}

const (
	kib = 1 << 10
	mib = 1 << 20
)

// A qcow2 written by qemu-io, then given a dirty bitmap, then written
// again, read back through qemu-nbd: every byte as written (the 64 MiB
// read is split at the 32 MiB maximum; unaligned reads too), allocation
// reports data exactly on the written clusters and holes elsewhere, and
// the bitmap is dirty exactly on the clusters written after it was added.
func TestQemuNBDReadAndBlockStatus(t *testing.T) {
	needQemuUtils(t)
	const size = 64 * mib
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, fmt.Sprint(size))
	want := make([]byte, size)
	qemuIO(t, img, []write{{0x11, 0, 1 * mib}, {0x22, 40 * mib, 128 * kib}, {0x66, size - 64*kib, 64 * kib}}, want)
	run(t, "qemu-img", "bitmap", "-f", "qcow2", "--add", "--granularity", "65536", img, "b0")
	qemuIO(t, img, []write{{0x33, 8 * mib, 64 * kib}, {0x44, 20*mib + 4*kib, 4 * kib}, {0x55, 40*mib + 64*kib, 64 * kib}}, want)

	sock := qemuNBD(t, img, "--export-name=root", "--bitmap=b0")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dirty := ContextDirtyBitmap + "b0"
	c, err := Dial(ctx, "unix", sock, Options{Export: "root", MetaContexts: []string{ContextAllocation, dirty}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != size || !c.ReadOnly() {
		t.Fatalf("size %d, read-only %v", c.Size(), c.ReadOnly())
	}
	mb, pref, maxP := c.BlockSizes()
	t.Logf("block sizes: min %d, preferred %d, max payload %d", mb, pref, maxP)

	got := make([]byte, size)
	start := time.Now()
	if err := c.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("read 64 MiB in %v", time.Since(start))
	if !bytes.Equal(got, want) {
		t.Fatal("the export's bytes differ from what qemu-io wrote")
	}
	for _, r := range []struct{ off, n int64 }{{20*mib + 4000, 300}, {1*mib - 1, 2}, {size - 1, 1}, {3, 40*mib + 100*kib}, {0, 0}} {
		p := make([]byte, r.n)
		if err := c.ReadAt(ctx, p, r.off); err != nil {
			t.Fatalf("read %d+%d: %v", r.off, r.n, err)
		}
		if !bytes.Equal(p, want[r.off:r.off+r.n]) {
			t.Fatalf("read %d+%d: wrong bytes", r.off, r.n)
		}
	}

	alloc, err := c.BlockStatus(ctx, ContextAllocation, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	var data []Extent
	var covered int64
	for _, e := range alloc {
		if e.Offset != covered {
			t.Fatalf("allocation extents not consecutive at %d: %+v", covered, alloc)
		}
		covered += e.Length
		if e.Flags&StateHole == 0 {
			// Allocated: data, or zeroes written (a 4 KiB write
			// allocates its whole 64 KiB cluster).
			if k := len(data) - 1; k >= 0 && data[k].Offset+data[k].Length == e.Offset {
				data[k].Length += e.Length
			} else {
				data = append(data, Extent{Offset: e.Offset, Length: e.Length})
			}
		} else if e.Flags&StateZero == 0 {
			t.Errorf("hole %+v does not read as zeroes", e)
		}
	}
	wantData := []Extent{{0, 1 * mib, 0}, {8 * mib, 64 * kib, 0}, {20 * mib, 64 * kib, 0}, {40 * mib, 128 * kib, 0}, {size - 64*kib, 64 * kib, 0}}
	if covered != size || fmt.Sprint(data) != fmt.Sprint(wantData) {
		t.Errorf("data extents %v (covering %d), want %v", data, covered, wantData)
	}

	dirtyExt, err := c.BlockStatus(ctx, dirty, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	var dirtyData []Extent
	for _, e := range dirtyExt {
		if e.Flags&StateDirty != 0 {
			dirtyData = append(dirtyData, Extent{Offset: e.Offset, Length: e.Length})
		}
	}
	wantDirty := []Extent{{8 * mib, 64 * kib, 0}, {20 * mib, 64 * kib, 0}, {40*mib + 64*kib, 64 * kib, 0}}
	if fmt.Sprint(dirtyData) != fmt.Sprint(wantDirty) {
		t.Errorf("dirty extents %v, want %v", dirtyData, wantDirty)
	}
	// A range inside: clipped to it.
	part, err := c.BlockStatus(ctx, dirty, 8*mib+4*kib, 8*kib)
	if err != nil || len(part) != 1 || part[0] != (Extent{8*mib + 4*kib, 8 * kib, StateDirty}) {
		t.Errorf("dirty status of 8 KiB inside a dirty cluster: %v, %v", part, err)
	}

	// Bad requests are refused before anything is sent; the connection
	// stays usable.
	if err := c.ReadAt(ctx, make([]byte, 2), size-1); err == nil {
		t.Error("read past the end accepted")
	}
	if _, err := c.BlockStatus(ctx, "base:nothing", 0, 4096); err == nil {
		t.Error("block status of a context not negotiated accepted")
	}
	if err := c.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Errorf("read after refused requests: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	if err := c.ReadAt(ctx, make([]byte, 1), 0); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("read after close: %v", err)
	}

	// The handshake names what the server lacks.
	for _, o := range []struct {
		opts Options
		want string
	}{
		{Options{Export: "nope"}, `no export "nope"`},
		{Options{Export: "root", MetaContexts: []string{ContextDirtyBitmap + "missing"}}, `does not offer metadata context "qemu:dirty-bitmap:missing"`},
	} {
		c, err := Dial(ctx, "unix", sock, o.opts)
		if err == nil {
			c.Close()
			t.Errorf("%+v: handshake succeeded", o.opts)
			continue
		}
		if !strings.Contains(err.Error(), o.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%+v: %v, want one line with %q", o.opts, err, o.want)
		}
	}
	if _, err := Dial(ctx, "unix", filepath.Join(t.TempDir(), "none.sock"), Options{}); err == nil || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("dial of a missing socket: %v", err)
	}
}

// Reading a 256 MiB export with data in every cluster, in 4 MiB pieces (the
// backup chunk size) and in 32 MiB pieces: a throughput figure, and every
// piece checked against its pattern.
func TestQemuNBDThroughput(t *testing.T) {
	needQemuUtils(t)
	if testing.Short() {
		t.Skip("short")
	}
	const size = 256 * mib
	img := filepath.Join(t.TempDir(), "big.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, fmt.Sprint(size))
	ws := []write{}
	want := make([]byte, size)
	for off := int64(0); off < size; off += 32 * mib {
		ws = append(ws, write{byte(off/(32*mib)) + 1, off, 32 * mib})
	}
	qemuIO(t, img, ws, want)
	sock := qemuNBD(t, img)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", sock, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, piece := range []int64{4 * mib, 32 * mib} {
		buf := make([]byte, piece)
		start := time.Now()
		for off := int64(0); off < size; off += piece {
			if err := c.ReadAt(ctx, buf, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, want[off:off+piece]) {
				t.Fatalf("piece at %d differs", off)
			}
		}
		d := time.Since(start)
		t.Logf("%d MiB in %d MiB reads: %v, %.0f MiB/s", size/mib, piece/mib, d, float64(size)/mib/d.Seconds())
	}
}
