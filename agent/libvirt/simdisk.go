package libvirt

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	lv "libvirt.org/go/libvirt"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/internal/sparse"
)

// Simulated disks. libvirt's test driver keeps volumes in memory and has no
// bytes behind them, so a simulated host given Options.DiskDir keeps each
// VM's root disk as a sparse file DIR/<vm id>.img of the disk's size:
// Define makes it (filled from a restore's source), Undefine removes it,
// and backups read it. No guest writes it (test-driver domains run
// nothing): it changes only when a test writes it (SimDiskPath), and a
// backup view reads it as it is.

// simDisks says whether root disks are files in DiskDir.
func (d *Driver) simDisks() bool { return d.testDriver && d.diskDir != "" }

// simDiskPath is vmID's disk file; vm ids that are not plain file names
// are refused.
func (d *Driver) simDiskPath(vmID string) (string, error) {
	if vmID == "" || vmID == "." || vmID == ".." || strings.ContainsAny(vmID, "/\x00") || len(vmID) > 200 || !isXMLText(vmID) {
		return "", fmt.Errorf("vm id %q: not usable as a disk file name (no '/', at most 200 bytes)", vmID)
	}
	return filepath.Join(d.diskDir, vmID+".img"), nil
}

// SimDiskPath is the file holding vmID's root disk on a test-driver host
// with a disk dir, and whether it exists. For tests.
func (d *Driver) SimDiskPath(vmID string) (string, bool) {
	if !d.simDisks() {
		return "", false
	}
	path, err := d.simDiskPath(vmID)
	if err != nil {
		return "", false
	}
	st, err := os.Stat(path)
	return path, err == nil && st.Mode().IsRegular()
}

// ensureSimDisk makes vmID's disk file (sparse, spec.DiskBytes long,
// filled from spec.RootSource) unless it exists; created says whether it
// did. A restore's file left by a Define that failed before the domain
// existed may be half written: it is made again.
func (d *Driver) ensureSimDisk(ctx context.Context, spec agent.DomainSpec, domainExists bool) (_ string, created bool, err error) {
	path, err := d.simDiskPath(spec.VMID)
	if err != nil {
		return "", false, err
	}
	if spec.RootSource != nil && !domainExists {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", false, fmt.Errorf("remove stale disk file: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return path, false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("disk file: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("disk file: %w", cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if err := f.Truncate(spec.DiskBytes); err != nil {
		return "", false, fmt.Errorf("disk file: %w", err)
	}
	if spec.RootSource != nil {
		err := fillFrom(ctx, spec.RootSource, spec.DiskBytes, func(off int64, p []byte) error {
			if sparse.IsZero(p) {
				return nil // a hole reads as zeroes already
			}
			_, err := f.WriteAt(p, off)
			return err
		}, nil)
		if err != nil {
			return "", false, fmt.Errorf("restore into %s: %w", path, err)
		}
	}
	return path, true, nil
}

// fillFrom runs src.Fill, checking that its pieces come in order and
// within size, and hands them to write; hole (if set) is told of every
// gap, the tail included.
func fillFrom(ctx context.Context, src agent.DiskSource, size int64, write func(off int64, p []byte) error, hole func(n int64) error) error {
	var pos int64
	err := src.Fill(ctx, func(off int64, p []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if off < pos || off > size || int64(len(p)) > size-off {
			return fmt.Errorf("piece %d+%d out of order or past the disk's %d bytes", off, len(p), size)
		}
		if off > pos && hole != nil {
			if err := hole(off - pos); err != nil {
				return err
			}
		}
		if err := write(off, p); err != nil {
			return err
		}
		pos = off + int64(len(p))
		return nil
	})
	if err == nil && pos < size && hole != nil {
		err = hole(size - pos)
	}
	return err
}

// removeSimDisk removes vmID's disk file; a missing one is fine.
func (d *Driver) removeSimDisk(vmID string) error {
	if !d.simDisks() {
		return nil
	}
	path, err := d.simDiskPath(vmID)
	if err != nil {
		return nil // no such file can have been made
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove disk file: %w", err)
	}
	return nil
}

// beginSimBackup opens a full view of a simulated VM's disk file.
func (d *Driver) beginSimBackup(ctx context.Context, req agent.BackupRequest) (agent.BackupView, error) {
	name := domainName(req.VMID)
	if err := d.withDomain(req.VMID, func(*lv.Domain) error { return nil }); err != nil {
		return nil, err
	}
	path, err := d.simDiskPath(req.VMID)
	if err != nil {
		return nil, fmt.Errorf("backup of %s: %w", name, err)
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("backup of %s: the domain has no root disk", name)
	}
	if err != nil {
		return nil, fmt.Errorf("backup of %s: %w", name, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("backup of %s: %w", name, err)
	}
	return &simView{vmID: req.VMID, f: f, size: st.Size()}, nil
}

// simView is a full view of a disk file: no checkpoints.
type simView struct {
	vmID string
	size int64

	mu sync.RWMutex // f; writers: Close, and Changed (it moves f's offset)
	f  *os.File
}

var _ agent.BackupView = (*simView)(nil)

func (v *simView) Disks() []agent.BackupDisk {
	return []agent.BackupDisk{{Name: rootDiskName, SizeBytes: v.size}}
}

func (v *simView) Incremental() bool  { return false }
func (v *simView) Checkpoint() string { return "" }

// file returns the open file, or an error once the view is closed.
func (v *simView) file(disk string) (*os.File, error) {
	if err := checkViewDisk(v.vmID, disk); err != nil {
		return nil, err
	}
	if v.f == nil {
		return nil, fmt.Errorf("backup of %s: the view is closed", domainName(v.vmID))
	}
	return v.f, nil
}

// Changed implements agent.BackupView: the file's data extents, as the
// file system tells them (SEEK_DATA, SEEK_HOLE).
func (v *simView) Changed(ctx context.Context, disk string) ([]agent.Extent, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	f, err := v.file(disk)
	if err != nil {
		return nil, err
	}
	var out []agent.Extent
	for off := int64(0); off < v.size; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		data, end, err := sparse.NextData(f, off, v.size)
		if err != nil {
			return nil, fmt.Errorf("backup of %s: find data: %w", domainName(v.vmID), err)
		}
		if data >= v.size {
			break // no data from off on
		}
		out = append(out, agent.Extent{Offset: data, Length: end - data})
		off = end
	}
	return out, nil
}

// ReadAt implements agent.BackupView.
func (v *simView) ReadAt(ctx context.Context, disk string, p []byte, off int64) error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	f, err := v.file(disk)
	if err != nil {
		return err
	}
	if off < 0 || off > v.size || int64(len(p)) > v.size-off {
		return fmt.Errorf("backup of %s: read %d+%d outside the disk (%d bytes)", domainName(v.vmID), off, len(p), v.size)
	}
	if _, err := f.ReadAt(p, off); err != nil {
		return fmt.Errorf("backup of %s: %w", domainName(v.vmID), err)
	}
	return nil
}

// Close implements agent.BackupView; there is no checkpoint to keep or
// drop.
func (v *simView) Close(ctx context.Context, keep bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.f == nil {
		return nil
	}
	err := v.f.Close()
	v.f = nil
	return err
}
