package libvirt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/internal/nbd"
)

// Backups. BeginBackup opens a point-in-time view of a VM's root disk, the
// only disk of a restore point for now: attached volumes are not part of
// one yet, so they are left out of backups (backup='no', checkpoint='no').
//
// A running domain (real QEMU) is backed up with libvirt's pull-mode
// backup: QEMU copies each block the guest overwrites to a scratch file
// before the write lands (so reads see the disk as it was when the backup
// began) and serves that view over NBD on a unix socket, which the view
// reads with internal/nbd. A checkpoint made with the backup (a dirty
// bitmap in the qcow2 file) records what the guest writes from then on;
// the next backup, given it as Since, exports the blocks written since
// (qemu:dirty-bitmap) and reads only those. Ending a pull-mode backup is
// virDomainAbortJob: libvirt then stops the NBD server and removes the
// scratch file.
//
// A shut-off domain: libvirt 9.0 runs backup jobs, and creates or deletes
// checkpoints, of running domains only ("cannot create checkpoint for
// inactive domain"). The view exports the disk file with qemu-nbd,
// read-only; nothing writes a shut-off domain's disk, and qemu-nbd's
// image lock keeps QEMU from opening it for writing, so a Start during the
// view fails (the agent tries again later) and the reads are point-in-time.
// No checkpoint can be made; but when Since names a checkpoint whose
// bitmap is in the qcow2 file, the view is incremental from it (qemu-nbd
// exports that bitmap) and carries it forward as its own checkpoint: the
// bitmap still records everything written after this view too (it was
// made earlier), a superset of what the next backup must read, which is
// all an incremental backup needs. Otherwise the view is full.
//
// A raw root disk (a restored VM's) or a qcow2 v2 one (made before Yunchi
// asked libvirt for v3) has no bitmaps: its views are full and make no
// checkpoint.
//
// On test-driver hosts disks are sparse files (Options.DiskDir, simdisk.go).

const (
	// rootDiskName names the root disk in restore points.
	rootDiskName = "root"
	// backupExport is the NBD export name of the root disk's view, and
	// backupBitmap the name of the dirty bitmap exported with it.
	backupExport = "root"
	backupBitmap = "yunchi-backup"
	// backupDirPrefix starts the name of every directory a view keeps
	// its socket and scratch file in; a backup job left by an agent that
	// stopped is recognised by it.
	backupDirPrefix = "yunchi-backup-"
	backupSocket    = "nbd.sock"
	backupScratch   = "scratch.qcow2"
	// backupEndTimeout bounds waiting for libvirt to end a backup job.
	backupEndTimeout = 30 * time.Second
	// nbdStartTimeout bounds waiting for qemu-nbd to listen.
	nbdStartTimeout = 10 * time.Second
)

// checkBackupRequest refuses a request that cannot be carried out as
// asked, before anything is made.
func checkBackupRequest(req agent.BackupRequest) error {
	if req.VMID == "" {
		return errors.New("backup: empty vm id")
	}
	for _, c := range []struct{ what, name string }{{"since", req.Since}, {"checkpoint", req.Checkpoint}} {
		if c.name == "" {
			continue
		}
		if len(c.name) > 200 || !isXMLText(c.name) || strings.ContainsAny(c.name, "/\n\t\r") || c.name == "." || c.name == ".." {
			return fmt.Errorf("backup of %s: %s checkpoint name %q: at most 200 bytes of XML text, no '/' or white space other than spaces", domainName(req.VMID), c.what, c.name)
		}
	}
	if req.Checkpoint != "" && req.Checkpoint == req.Since {
		return fmt.Errorf("backup of %s: the new checkpoint %q is the since checkpoint", domainName(req.VMID), req.Checkpoint)
	}
	return nil
}

// BeginBackup implements agent.Driver.
func (d *Driver) BeginBackup(ctx context.Context, req agent.BackupRequest) (agent.BackupView, error) {
	if err := checkBackupRequest(req); err != nil {
		return nil, err
	}
	if d.testDriver {
		if d.diskDir == "" {
			return nil, fmt.Errorf("backup of %s: a test-driver host without a disk dir has no disk contents to back up", domainName(req.VMID))
		}
		return d.beginSimBackup(ctx, req)
	}
	if !d.claimBackup(req.VMID) {
		return nil, fmt.Errorf("backup of %s: another backup view of it is open", domainName(req.VMID))
	}
	var view *nbdView
	err := d.withDomain(req.VMID, func(dom *lv.Domain) error {
		var err error
		view, err = d.beginBackup(ctx, dom, req)
		return err
	})
	if err != nil {
		d.releaseBackup(req.VMID)
		return nil, err
	}
	return view, nil
}

// claimBackup marks vmID as having an open view in this process; false
// if it has one already.
func (d *Driver) claimBackup(vmID string) bool {
	d.backupMu.Lock()
	defer d.backupMu.Unlock()
	if d.backups[vmID] {
		return false
	}
	if d.backups == nil {
		d.backups = map[string]bool{}
	}
	d.backups[vmID] = true
	return true
}

func (d *Driver) releaseBackup(vmID string) {
	d.backupMu.Lock()
	defer d.backupMu.Unlock()
	delete(d.backups, vmID)
}

// rootDiskInfo is the domain's root disk as its definition has it.
type rootDiskInfo struct {
	path, format string
	// bitmaps: the file can keep checkpoints' dirty bitmaps (qcow2 v3;
	// root disks made before Yunchi asked for v3 are v2).
	bitmaps bool
	others  []string // the other disks' targets
}

// qcow2Version reads the version in a qcow2 file's header; 0 if the file
// cannot be read or is not qcow2.
func qcow2Version(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	var hdr [8]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil || !bytes.Equal(hdr[:4], qcow2Magic) {
		return 0
	}
	return int(binary.BigEndian.Uint32(hdr[4:]))
}

// domainRootDisk reads the root disk (vda, a file) from the domain's live
// XML, and QEMU's user and group from its DAC label (-1 when unknown).
func domainRootDisk(dom *lv.Domain) (root rootDiskInfo, uid, gid int, err error) {
	uid, gid = -1, -1
	doc, err := dom.GetXMLDesc(0)
	if err != nil {
		return root, uid, gid, wrap("read domain xml", err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(doc); err != nil {
		return root, uid, gid, fmt.Errorf("parse domain xml: %w", err)
	}
	if x.Devices != nil {
		for _, disk := range x.Devices.Disks {
			if disk.Target == nil {
				continue
			}
			if disk.Target.Dev != rootTarget {
				root.others = append(root.others, disk.Target.Dev)
				continue
			}
			if disk.Source == nil || disk.Source.File == nil || disk.Source.File.File == "" {
				return root, uid, gid, errors.New("the root disk is not a file")
			}
			root.path = disk.Source.File.File
			root.format = "raw"
			if disk.Driver != nil && disk.Driver.Type != "" {
				root.format = disk.Driver.Type
			}
		}
	}
	if root.path == "" {
		return root, uid, gid, errors.New("the domain has no root disk")
	}
	if root.format != "raw" && root.format != "qcow2" {
		return root, uid, gid, fmt.Errorf("root disk format %q: want qcow2 or raw", root.format)
	}
	// A file the agent cannot read is taken to be v3: libvirt says so if
	// it is not.
	root.bitmaps = root.format == "qcow2" && qcow2Version(root.path) != 2
	for _, l := range x.SecLabel {
		// "+UID:+GID": libvirt's DAC label of a running domain.
		if l.Model != "dac" {
			continue
		}
		u, g, ok := strings.Cut(l.Label, ":")
		if !ok {
			continue
		}
		un, uerr := strconv.Atoi(strings.TrimPrefix(u, "+"))
		gn, gerr := strconv.Atoi(strings.TrimPrefix(g, "+"))
		if uerr == nil && gerr == nil && un >= 0 && gn >= 0 {
			uid, gid = un, gn
		}
	}
	return root, uid, gid, nil
}

// beginBackup opens the view of a real domain: pull-mode backup if it
// runs, qemu-nbd on its disk file if it is shut off.
func (d *Driver) beginBackup(ctx context.Context, dom *lv.Domain, req agent.BackupRequest) (_ *nbdView, err error) {
	name := domainName(req.VMID)
	active, err := dom.IsActive()
	if err != nil {
		return nil, wrap("state of "+name, err)
	}
	root, uid, gid, err := domainRootDisk(dom)
	if err != nil {
		return nil, fmt.Errorf("backup of %s: %w", name, err)
	}
	dir, err := os.MkdirTemp(d.backupDir, backupDirPrefix)
	if err != nil {
		return nil, fmt.Errorf("backup of %s: %w", name, err)
	}
	v := &nbdView{d: d, vmID: req.VMID, dir: dir}
	defer func() {
		if err != nil {
			v.Close(context.WithoutCancel(ctx), false)
		}
	}()
	// Since names a checkpoint only if the domain still has it (and
	// only a qcow2 disk can have one).
	since := ""
	if req.Since != "" && root.bitmaps {
		if ok, err := hasCheckpoint(dom, req.Since); err != nil {
			return nil, err
		} else if ok {
			since = req.Since
		}
	}
	if !active {
		return v, d.beginOffline(ctx, v, root, since)
	}
	// QEMU makes the socket (and, through libvirt, the scratch file) in
	// the directory: it must be QEMU's if QEMU runs as another user.
	if uid >= 0 && uid != os.Geteuid() {
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("backup of %s: give QEMU (uid %d) the backup dir: %w", name, uid, err)
		}
	}
	if err := clearStaleBackupJob(ctx, dom, name); err != nil {
		return nil, err
	}
	newCP := ""
	if req.Checkpoint != "" && root.bitmaps {
		newCP = req.Checkpoint
		// Checkpoint names are the caller's, one per backup: one that
		// exists already was made by an earlier attempt of this backup
		// that did not finish, and goes.
		if err := deleteCheckpoint(dom, newCP, name); err != nil {
			return nil, err
		}
	}
	sock := filepath.Join(dir, backupSocket)
	begin := func(since string) error {
		bx, cx, err := pullBackupXML(sock, filepath.Join(dir, backupScratch), root.others, since, newCP)
		if err != nil {
			return err
		}
		return dom.BackupBegin(bx, cx, 0)
	}
	err = begin(since)
	if since != "" && isCode(err, lv.ERR_CHECKPOINT_INCONSISTENT) {
		// The bitmap of Since is broken (QEMU was killed while it was in
		// use): a full backup instead.
		since = ""
		err = begin("")
	}
	if err != nil {
		return nil, wrap("begin backup of "+name, err)
	}
	v.job = true
	v.incremental, v.since = since != "", since
	v.checkpoint, v.madeCheckpoint = newCP, newCP != ""
	if v.incremental {
		v.dirtyContext = nbd.ContextDirtyBitmap + backupBitmap
	}
	if err := v.dial(ctx, sock); err != nil {
		return nil, fmt.Errorf("backup of %s: %w", name, err)
	}
	return v, nil
}

// pullBackupXML renders the pull-mode backup of the root disk (the other
// disks left out) and, if newCP is set, the checkpoint made with it.
func pullBackupXML(sock, scratch string, others []string, since, newCP string) (backupXML, checkpointXML string, err error) {
	root := libvirtxml.DomainBackupPullDisk{
		Name: rootTarget, Backup: "yes", ExportName: backupExport,
		Driver:  &libvirtxml.DomainBackupDiskDriver{Type: "qcow2"},
		Scratch: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: scratch}},
	}
	if since != "" {
		root.ExportBitmap = backupBitmap
	}
	disks := []libvirtxml.DomainBackupPullDisk{root}
	cpDisks := []libvirtxml.DomainCheckpointDisk{{Name: rootTarget, Checkpoint: "bitmap"}}
	for _, t := range others {
		disks = append(disks, libvirtxml.DomainBackupPullDisk{Name: t, Backup: "no"})
		cpDisks = append(cpDisks, libvirtxml.DomainCheckpointDisk{Name: t, Checkpoint: "no"})
	}
	b := libvirtxml.DomainBackup{
		Incremental: since,
		Pull: &libvirtxml.DomainBackupPull{
			Server: &libvirtxml.DomainBackupPullServer{UNIX: &libvirtxml.DomainBackupPullServerUNIX{Socket: sock}},
			Disks:  &libvirtxml.DomainBackupPullDisks{Disks: disks},
		},
	}
	if backupXML, err = b.Marshal(); err != nil {
		return "", "", fmt.Errorf("backup xml: %w", err)
	}
	if newCP == "" {
		return backupXML, "", nil
	}
	cp := libvirtxml.DomainCheckpoint{
		Name:        newCP,
		Description: "Yunchi backup checkpoint: the blocks written since this backup",
		Disks:       &libvirtxml.DomainCheckpointDisks{Disks: cpDisks},
	}
	if checkpointXML, err = cp.Marshal(); err != nil {
		return "", "", fmt.Errorf("checkpoint xml: %w", err)
	}
	return backupXML, checkpointXML, nil
}

func hasCheckpoint(dom *lv.Domain, name string) (bool, error) {
	cp, err := dom.CheckpointLookupByName(name, 0)
	if isCode(err, lv.ERR_NO_DOMAIN_CHECKPOINT) {
		return false, nil
	}
	if err != nil {
		return false, wrap("look up checkpoint "+name, err)
	}
	cp.Free()
	return true, nil
}

// deleteCheckpoint deletes the checkpoint (its metadata and its bitmap;
// libvirt folds the bitmap into its neighbours as needed); a missing one
// is fine.
func deleteCheckpoint(dom *lv.Domain, cp, domName string) error {
	c, err := dom.CheckpointLookupByName(cp, 0)
	if isCode(err, lv.ERR_NO_DOMAIN_CHECKPOINT) {
		return nil
	}
	if err != nil {
		return wrap("look up checkpoint "+cp+" of "+domName, err)
	}
	defer c.Free()
	err = c.Delete(0)
	if isCode(err, lv.ERR_NO_DOMAIN_CHECKPOINT) {
		return nil
	}
	if active, aerr := dom.IsActive(); err != nil && aerr == nil && !active {
		// libvirt 9.0 deletes checkpoints of running domains only.
		return fmt.Errorf("delete checkpoint %s of %s: the domain is shut off, and libvirt deletes checkpoints of running domains only: it stays", cp, domName)
	}
	return wrap("delete checkpoint "+cp+" of "+domName, err)
}

// clearStaleBackupJob ends a backup job a Yunchi agent started and never
// ended (it stopped while a view was open: libvirt keeps the job, which
// would block every later backup). The caller holds the VM's claim, so no
// view of this process has it. A job Yunchi did not start is an error.
func clearStaleBackupJob(ctx context.Context, dom *lv.Domain, name string) error {
	doc, err := dom.BackupGetXMLDesc(0)
	if isCode(err, lv.ERR_NO_DOMAIN_BACKUP) {
		return nil
	}
	if err != nil {
		return wrap("read backup job of "+name, err)
	}
	var b libvirtxml.DomainBackup
	if err := b.Unmarshal(doc); err != nil {
		return fmt.Errorf("backup of %s: parse its running backup job: %w", name, err)
	}
	sock := ""
	if b.Pull != nil && b.Pull.Server != nil && b.Pull.Server.UNIX != nil {
		sock = b.Pull.Server.UNIX.Socket
	}
	dir := filepath.Dir(sock)
	if sock == "" || filepath.Base(sock) != backupSocket || !strings.HasPrefix(filepath.Base(dir), backupDirPrefix) {
		return fmt.Errorf("backup of %s: the domain runs a backup job Yunchi did not start; end it first (virsh domjobabort)", name)
	}
	if err := endBackupJob(ctx, dom, name); err != nil {
		return err
	}
	os.RemoveAll(dir)
	return nil
}

// endBackupJob ends the domain's backup job and waits until libvirt has
// let go of it (NBD server stopped, scratch file removed).
func endBackupJob(ctx context.Context, dom *lv.Domain, name string) error {
	ctx, cancel := context.WithTimeout(ctx, backupEndTimeout)
	defer cancel()
	err := dom.AbortJob()
	for {
		_, gerr := dom.BackupGetXMLDesc(0)
		if isCode(gerr, lv.ERR_NO_DOMAIN_BACKUP, lv.ERR_OPERATION_INVALID) {
			return nil // no job (any more), or no running domain to have one
		}
		if gerr != nil {
			return wrap("read backup job of "+name, gerr)
		}
		if err != nil && !isCode(err, lv.ERR_OPERATION_INVALID) {
			return wrap("end backup job of "+name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("end backup job of %s: still running: %w", name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if err != nil {
			err = dom.AbortJob() // it was not cancellable yet
		}
	}
}

// beginOffline serves a shut-off domain's root disk with qemu-nbd,
// read-only, incremental from since when its bitmap is usable.
func (d *Driver) beginOffline(ctx context.Context, v *nbdView, root rootDiskInfo, since string) error {
	name := domainName(v.vmID)
	sock := filepath.Join(v.dir, backupSocket)
	err := v.startQemuNBD(ctx, root, since, sock)
	if err != nil && since != "" {
		// A bitmap left inconsistent (QEMU killed while using it), or
		// one qemu-nbd cannot export: a full view.
		since = ""
		err = v.startQemuNBD(ctx, root, "", sock)
	}
	if err != nil {
		return fmt.Errorf("backup of %s (shut off): %w", name, err)
	}
	v.incremental = since != ""
	// Carried forward (see the top of the file); never deleted by Close.
	v.checkpoint = since
	if v.incremental {
		v.dirtyContext = nbd.ContextDirtyBitmap + since
	}
	if err := v.dial(ctx, sock); err != nil {
		return fmt.Errorf("backup of %s (shut off): %w", name, err)
	}
	return nil
}

// dial connects the view's NBD client to the export at sock.
func (v *nbdView) dial(ctx context.Context, sock string) (err error) {
	contexts := []string{nbd.ContextAllocation}
	if v.dirtyContext != "" {
		contexts = append(contexts, v.dirtyContext)
	}
	v.client, err = nbd.Dial(ctx, "unix", sock, nbd.Options{Export: backupExport, MetaContexts: contexts})
	return err
}

// startQemuNBD runs qemu-nbd on the disk file, read-only, until Close;
// it returns once the socket is there.
func (v *nbdView) startQemuNBD(ctx context.Context, root rootDiskInfo, bitmap, sock string) error {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		return errors.New("reading a shut-off domain's disk needs qemu-nbd (apt-get install qemu-utils)")
	}
	os.Remove(sock)
	args := []string{"--read-only", "--persistent", "--format=" + root.format, "--export-name=" + backupExport, "--socket=" + sock}
	if bitmap != "" {
		args = append(args, "--bitmap="+bitmap)
	}
	cmd := exec.Command("qemu-nbd", append(args, "--", root.path)...)
	var stderr bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &stderr, n: 4096}
	// qemu-nbd dies with the agent rather than holding the disk's lock.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start qemu-nbd: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}
	ctx, cancel := context.WithTimeout(ctx, nbdStartTimeout)
	defer cancel()
	switch err := waitListening(ctx, sock, exited); {
	case err == nil:
		v.stopNBD = stop
		return nil
	case errors.Is(err, errExited):
		return fmt.Errorf("qemu-nbd: %s", oneLine(stderr.String()))
	default:
		stop()
		return fmt.Errorf("qemu-nbd did not listen: %w", err)
	}
}

var errExited = errors.New("the server exited")

// waitListening returns once a unix socket accepts connections, errExited
// if exited is closed first, or ctx's error. The socket file alone is not
// enough: a server binds (the file appears) before it listens, and a dial
// in between is refused.
func waitListening(ctx context.Context, sock string, exited <-chan struct{}) error {
	for {
		if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// limitedWriter keeps the first n bytes written to it.
type limitedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
	n  int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := l.n - l.w.Len(); room > 0 {
		l.w.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// nbdView is a backup view read over NBD: a libvirt pull-mode backup
// (job) or qemu-nbd on a shut-off domain's disk (stopNBD).
type nbdView struct {
	d      *Driver
	vmID   string
	dir    string // the socket's and scratch file's; removed by Close
	client *nbd.Client

	incremental bool
	// dirtyContext is the NBD metadata context of the blocks changed
	// since Since (incremental views).
	dirtyContext string
	// since is deleted when the backup is kept; checkpoint is the view's
	// (made by it if madeCheckpoint, then deleted when it is not kept).
	since, checkpoint string
	madeCheckpoint    bool
	job               bool   // a libvirt backup job to end
	stopNBD           func() // stops qemu-nbd

	mu     sync.Mutex
	closed bool
}

var _ agent.BackupView = (*nbdView)(nil)

func (v *nbdView) Disks() []agent.BackupDisk {
	return []agent.BackupDisk{{Name: rootDiskName, SizeBytes: v.client.Size()}}
}

func (v *nbdView) Incremental() bool  { return v.incremental }
func (v *nbdView) Checkpoint() string { return v.checkpoint }

func checkViewDisk(vmID, disk string) error {
	if disk != rootDiskName {
		return fmt.Errorf("backup of %s: no disk %q in the view (only %q)", domainName(vmID), disk, rootDiskName)
	}
	return nil
}

// Changed implements agent.BackupView: the dirty extents of the exported
// bitmap (incremental), or the extents that may hold data (full: not
// known to read as zeroes).
func (v *nbdView) Changed(ctx context.Context, disk string) ([]agent.Extent, error) {
	if err := checkViewDisk(v.vmID, disk); err != nil {
		return nil, err
	}
	meta, flag, set := nbd.ContextAllocation, uint32(nbd.StateZero), false
	if v.incremental {
		meta, flag, set = v.dirtyContext, nbd.StateDirty, true
	}
	ext, err := v.client.BlockStatus(ctx, meta, 0, v.client.Size())
	if err != nil {
		return nil, fmt.Errorf("backup of %s: %w", domainName(v.vmID), err)
	}
	var out []agent.Extent
	for _, e := range ext {
		if (e.Flags&flag != 0) != set {
			continue
		}
		if k := len(out) - 1; k >= 0 && out[k].Offset+out[k].Length == e.Offset {
			out[k].Length += e.Length
		} else {
			out = append(out, agent.Extent{Offset: e.Offset, Length: e.Length})
		}
	}
	return out, nil
}

// ReadAt implements agent.BackupView.
func (v *nbdView) ReadAt(ctx context.Context, disk string, p []byte, off int64) error {
	if err := checkViewDisk(v.vmID, disk); err != nil {
		return err
	}
	if err := v.client.ReadAt(ctx, p, off); err != nil {
		return fmt.Errorf("backup of %s: %w", domainName(v.vmID), err)
	}
	return nil
}

// Close implements agent.BackupView. A second Close does nothing.
func (v *nbdView) Close(ctx context.Context, keep bool) error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return nil
	}
	v.closed = true
	v.mu.Unlock()
	defer v.d.releaseBackup(v.vmID)
	name := domainName(v.vmID)
	var errs []error
	if v.client != nil {
		v.client.Close()
	}
	if v.stopNBD != nil {
		v.stopNBD()
	}
	drop := ""
	switch {
	case keep && v.since != "" && v.since != v.checkpoint:
		drop = v.since
	case !keep && v.madeCheckpoint:
		drop = v.checkpoint
	}
	if v.job || drop != "" {
		err := v.d.withDomain(v.vmID, func(dom *lv.Domain) error {
			var errs []error
			if v.job {
				errs = append(errs, endBackupJob(ctx, dom, name))
			}
			if drop != "" {
				errs = append(errs, deleteCheckpoint(dom, drop, name))
			}
			return errors.Join(errs...)
		})
		if !errors.Is(err, agent.ErrDomainNotFound) { // undefined: job and checkpoints went with it
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(v.dir); err != nil {
		errs = append(errs, fmt.Errorf("backup of %s: %w", name, err))
	}
	return oneLineJoin(errs...)
}

// oneLineJoin joins errors on one line ("a; b"), nil if all are nil.
func oneLineJoin(errs ...error) error {
	var msgs []string
	var first error
	for _, e := range errs {
		if e == nil {
			continue
		}
		if first == nil {
			first = e
		}
		msgs = append(msgs, e.Error())
	}
	if first == nil {
		return nil
	}
	if len(msgs) == 1 {
		return first
	}
	return fmt.Errorf("%w (and: %s)", first, strings.Join(msgs[1:], "; "))
}
