//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/yunchi/yunchi/internal/benchkit"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	lv "libvirt.org/go/libvirt"

	yunchilibvirt "github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/qemuhost"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// fillPiece is the size of one write of the real disk's fill: each is
// one HMP command, which holds the domain's monitor while it runs.
const fillPiece = 64 << 20

// guestDisk writes into a running domain's root disk through QEMU's block
// layer (HMP qemu-io on the disk's device), as the guest's own writes
// land: QEMU's dirty bitmaps, the checkpoints of incremental backups, see
// them. The data of each write is read by QEMU from a file.
type guestDisk struct {
	dom    *lv.Domain
	device string // the disk's qdev path, e.g. virtio-disk0/virtio-backend
	file   string // the root disk's file on the host
	src    string // the file each write's data is put in
}

func openGuestDisk(conn *lv.Connect, vmID, src string) (*guestDisk, error) {
	// HMP reads the command as words: a path with quotes, backslashes or
	// white space would not reach qemu-io whole.
	if strings.ContainsAny(src, "\"\\ \t\n") {
		return nil, fmt.Errorf("data file %q: no quotes, backslashes or spaces allowed in its path", src)
	}
	dom, err := conn.LookupDomainByName(yunchilibvirt.DomainName(vmID))
	if err != nil {
		return nil, fmt.Errorf("domain of %s: %w", vmID, err)
	}
	device, file, err := qemuhost.RootDevice(dom)
	if err == nil && file == "" {
		err = errors.New("the domain's root disk is not a file")
	}
	if err != nil {
		dom.Free()
		return nil, err
	}
	g := &guestDisk{dom: dom, src: src, device: device, file: file}
	return g, nil
}

func (g *guestDisk) close() { g.dom.Free() }

// write puts data at off of the disk.
func (g *guestDisk) write(data []byte, off int64) error {
	if err := os.WriteFile(g.src, data, 0o600); err != nil {
		return err
	}
	cmd := fmt.Sprintf(`qemu-io -d %s "write -s %s %d %d"`, g.device, g.src, off, len(data))
	out, err := g.dom.QemuMonitorCommand(cmd, lv.DOMAIN_QEMU_MONITOR_COMMAND_HMP)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	// qemu-io's own messages go to QEMU's log: HMP answers only its own
	// errors. That the data landed is checked by the backups' figures.
	if s := strings.TrimSpace(out); s != "" {
		return fmt.Errorf("%s: %s", cmd, strings.Join(strings.Fields(s), " "))
	}
	return nil
}

// qemuCPU is the CPU time of the host's QEMU processes.
func qemuCPU(h *qemuhost.Host) time.Duration {
	var t time.Duration
	for _, pid := range h.QEMUPids() {
		t += procCPU(pid)
	}
	return t
}

// realThroughput: full and incremental backup of a -real-size qcow2 disk
// of a running guest on the real host, beside cp and sha256sum of the
// qcow2 file.
func (b *bench) realThroughput(ctx context.Context) error {
	size := b.cfg.realSizeBytes
	h := b.c.rh.Hosts()[0]
	const name = "tp-real"
	// An empty disk and a seed: the firmware finds nothing to boot and
	// idles, so no guest takes CPU from the backup; the disk is a qcow2
	// file of its own (no backing image).
	if _, err := b.c.vms.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: name, Vcpus: 1, Memory: "256MiB",
		Disk: fmt.Sprintf("%dMiB", max(size, minDisk)/mib), UserData: "#cloud-config\n", Constraints: []string{"host=" + devcluster.RealHostID(0)}}); err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	vm, err := b.c.waitVM(ctx, name, yunchiv1.VMPhase_VM_PHASE_RUNNING, 3*time.Minute)
	if err != nil {
		return err
	}
	conn, err := lv.NewConnect(h.URI())
	if err != nil {
		return err
	}
	defer conn.Close()
	g, err := openGuestDisk(conn, vm.Id, filepath.Join(b.dir, "guest-write"))
	if err != nil {
		return err
	}
	defer g.close()
	defer os.Remove(g.src)

	benchkit.Progress("%s: writing %d MiB of random data through QEMU into %s", name, size/mib, g.file)
	begun := time.Now()
	rng := b.rng()
	buf := make([]byte, fillPiece)
	for off := int64(0); off < size; off += fillPiece {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := buf[:min(fillPiece, size-off)]
		rng.Read(p)
		if err := g.write(p, off); err != nil {
			return err
		}
	}
	b.ls.Add("real_fill_s", "%s (%s MiB/s: random data written through QEMU, HMP qemu-io in %d MiB writes)", secs(time.Since(begun)), rate(size, time.Since(begun)), fillPiece/mib)

	benchkit.Progress("%s: full backup", name)
	q0 := qemuCPU(h)
	full, err := b.timedBackup(ctx, name, size, b.protect(ctx, name, benchPolicy))
	if err != nil {
		return err
	}
	d := full.point.Disks[0]
	if want := int64(size / chunkSize); d.NewChunks < want*9/10 {
		return fmt.Errorf("the full backup stored %d new chunks of %d: the data written through QEMU did not land (see QEMU's log under %s)", d.NewChunks, want, h.LV.Dir)
	}
	b.addBackup("real_full", full, size, fmt.Sprintf("; QEMU CPU %s s", secs(qemuCPU(h)-q0)))

	ps := changes(rand.New(b.rng()), size, b.cfg.change)
	for _, p := range ps {
		data := make([]byte, p.n)
		rng.Read(data)
		if err := g.write(data, p.off); err != nil {
			return err
		}
	}
	touched := chunksTouched(ps)
	b.ls.Add("real_change", "%s MiB in %d pieces, %d chunks touched (written through QEMU)", mibs(changeBytes(ps)), len(ps), touched)
	benchkit.Progress("%s: incremental backup", name)
	q0 = qemuCPU(h)
	incr, err := b.timedBackup(ctx, name, size, b.runBackup(ctx, name))
	if err != nil {
		return err
	}
	if d := incr.point.Disks[0]; !incr.point.Incremental || d.ReadChunks < int64(touched) {
		return fmt.Errorf("the incremental backup read %d chunks (incremental=%v), the change touched %d: the writes through QEMU did not land", d.ReadChunks, incr.point.Incremental, touched)
	}
	b.addBackup("real_incr", incr, size, fmt.Sprintf("; QEMU CPU %s s", secs(qemuCPU(h)-q0)))

	st, err := os.Stat(g.file)
	if err != nil {
		return err
	}
	b.ls.Add("real_qcow2_mib", "%s (the root disk's file: the data and qcow2's metadata)", mibs(st.Size()))
	if err := baselines(ctx, b.ls, b.cfg.dropCaches, "real", g.file, filepath.Join(b.dir, "copy"), st.Size()); err != nil {
		return err
	}
	return b.c.deleteVM(ctx, name)
}
