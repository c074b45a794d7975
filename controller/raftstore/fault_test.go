package raftstore

import (
	"bytes"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/types"
)

// fullDisk is a file system (and metadata database) that answers ENOSPC to
// the writes chosen by its flags while they are set, like a data disk that
// filled up and is freed again later.
type fullDisk struct {
	real types.VFS
	// writes: segment WriteAt fails; torn: WriteAt writes all but the
	// last torn bytes and then fails; creates: creating
	// (preallocating) a segment fails; meta: committing the WAL metadata
	// fails.
	writes, creates, meta atomic.Bool
	torn                  atomic.Int64
}

func newFullDisk() *fullDisk { return &fullDisk{real: fs.New()} }

func (d *fullDisk) ListDir(dir string) ([]string, error) { return d.real.ListDir(dir) }
func (d *fullDisk) Delete(dir, name string) error        { return d.real.Delete(dir, name) }
func (d *fullDisk) OpenReader(dir, name string) (types.ReadableFile, error) {
	return d.real.OpenReader(dir, name)
}

func (d *fullDisk) OpenWriter(dir, name string) (types.WritableFile, error) {
	f, err := d.real.OpenWriter(dir, name)
	if err != nil {
		return nil, err
	}
	return &fullFile{WritableFile: f, d: d}, nil
}

func (d *fullDisk) Create(dir, name string, size uint64) (types.WritableFile, error) {
	if d.creates.Load() {
		return nil, enospc("fallocate " + name)
	}
	f, err := d.real.Create(dir, name, size)
	if err != nil {
		return nil, err
	}
	return &fullFile{WritableFile: f, d: d}, nil
}

func enospc(op string) error {
	return fmt.Errorf("%s: %w", op, syscall.ENOSPC)
}

type fullFile struct {
	types.WritableFile
	d *fullDisk
}

func (f *fullFile) WriteAt(p []byte, off int64) (int, error) {
	if f.d.writes.Load() {
		return 0, enospc("write")
	}
	if cut := int(f.d.torn.Load()); cut > 0 && len(p) > cut {
		n, err := f.WritableFile.WriteAt(p[:len(p)-cut], off)
		if err != nil {
			return n, err
		}
		return n, enospc("write")
	}
	return f.WritableFile.WriteAt(p, off)
}

type fullMeta struct {
	*metadb.BoltMetaDB
	d *fullDisk
}

func (m *fullMeta) CommitState(st types.PersistentState) error {
	if m.d.meta.Load() {
		return enospc("meta commit")
	}
	return m.BoltMetaDB.CommitState(st)
}

func openFull(t *testing.T, segmentSize int) (Store, *fullDisk) {
	t.Helper()
	d := newFullDisk()
	s, err := OpenWithOptions(t.TempDir(), Options{
		SegmentSize: segmentSize, RepairInterval: time.Nanosecond, vfs: d,
		newMeta: func() types.MetaStore { return &fullMeta{BoltMetaDB: &metadb.BoltMetaDB{}, d: d} },
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, d
}

func entry(i uint64) *raft.Log {
	return &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(i)}, 200)}
}

func entries(from, to uint64) []*raft.Log {
	var out []*raft.Log
	for i := from; i <= to; i++ {
		out = append(out, entry(i))
	}
	return out
}

// checkLog asserts the store holds exactly 1..last with the right data.
func checkLog(t *testing.T, s Store, last uint64) {
	t.Helper()
	if got, err := s.LastIndex(); err != nil || got != last {
		t.Fatalf("LastIndex = %d, %v; want %d", got, err, last)
	}
	for i := uint64(1); i <= last; i++ {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		if l.Index != i || !bytes.Equal(l.Data, entry(i).Data) {
			t.Fatalf("GetLog(%d) = index %d, %d bytes of %v; want entry %d", i, l.Index, len(l.Data), l.Data[:1], i)
		}
	}
}

// storeUntil calls StoreLogs the way raft does after a failure (the same
// entries again) until it succeeds, a bounded number of times.
func storeUntil(t *testing.T, s Store, logs []*raft.Log) {
	t.Helper()
	var err error
	for range 5 {
		if err = s.StoreLogs(logs); err == nil {
			return
		}
	}
	t.Fatalf("StoreLogs(%d..%d) after the disk has room again: %v", logs[0].Index, logs[len(logs)-1].Index, err)
}

// TestRecoversFromFailedAppend: a write that fails with ENOSPC leaves the
// store failed (Health says why and since when); once the disk has room, raft
// sending the same entries again succeeds and the log continues, with every
// entry stored before the failure intact. raft-wal v0.4.0 kept the failed
// entries in its in-memory tail and answered every later append with
// "non-monotonic append to segment".
func TestRecoversFromFailedAppend(t *testing.T) {
	s, d := openFull(t, 0)
	if err := s.StoreLogs(entries(1, 10)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	d.writes.Store(true)
	err := s.StoreLogs(entries(11, 13))
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("StoreLogs on a full disk: err = %v, want ENOSPC", err)
	}
	h := s.Health()
	if h.Healthy() || !errors.Is(h.Err, syscall.ENOSPC) || h.Since.IsZero() || h.Failures != 1 {
		t.Fatalf("Health on a full disk = %+v; want failing with ENOSPC since a time, 1 failure", h)
	}
	// Still full: raft's retries fail and the store stays failed.
	if err := s.StoreLogs(entries(11, 13)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("retry on a full disk: err = %v, want ENOSPC", err)
	}
	if h2 := s.Health(); h2.Healthy() || !h2.Since.Equal(h.Since) {
		t.Fatalf("Health after a second failure = %+v; want still failing since %v", h2, h.Since)
	}

	d.writes.Store(false)
	storeUntil(t, s, entries(11, 13))
	if err := s.StoreLogs(entries(14, 20)); err != nil {
		t.Fatalf("StoreLogs after recovery: %v", err)
	}
	checkLog(t, s, 20)
	if h := s.Health(); !h.Healthy() || h.Recoveries != 1 || !h.Since.IsZero() {
		t.Fatalf("Health after recovery = %+v; want healthy, 1 recovery", h)
	}
}

// TestRecoversFromFailedRotation: with preallocated segments a full disk
// shows when the next segment cannot be created (or the metadata that
// names it cannot be committed): raft-wal leaves its tail sealed and
// answers every later append with "sealed", also after a reopen when the
// metadata commit failed. Once the disk has room the store rotates and
// goes on.
func TestRecoversFromFailedRotation(t *testing.T) {
	for _, tc := range []struct {
		name string
		flag func(d *fullDisk) *atomic.Bool
	}{
		{"segment create", func(d *fullDisk) *atomic.Bool { return &d.creates }},
		{"metadata commit", func(d *fullDisk) *atomic.Bool { return &d.meta }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, d := openFull(t, 8<<10) // ~35 entries per segment
			full := tc.flag(d)
			full.Store(true)
			// Append until a rotation fails: the append after the one that
			// sealed the tail answers "sealed".
			var next uint64 = 1
			var err error
			for ; next <= 200; next++ {
				if err = s.StoreLogs([]*raft.Log{entry(next)}); err != nil {
					break
				}
			}
			if err == nil {
				t.Fatal("200 appends on a full disk all succeeded: the rotation never failed")
			}
			// The error kept is the disk's, not raft-wal's "sealed".
			if h := s.Health(); h.Healthy() || !errors.Is(h.Err, syscall.ENOSPC) {
				t.Fatalf("Health after a failed rotation = %+v; want failing with ENOSPC", h)
			}
			// Still full: the repair cannot rotate either.
			if err := s.StoreLogs([]*raft.Log{entry(next)}); err == nil {
				t.Fatal("StoreLogs succeeded while the disk is still full")
			}

			full.Store(false)
			storeUntil(t, s, []*raft.Log{entry(next)})
			if err := s.StoreLogs(entries(next+1, next+100)); err != nil {
				t.Fatalf("StoreLogs after recovery: %v", err)
			}
			checkLog(t, s, next+100)
			if h := s.Health(); !h.Healthy() {
				t.Fatalf("Health after recovery = %+v; want healthy", h)
			}
			// What the repair wrote survives a restart.
			st := s.(*store)
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			s2, err := OpenWithOptions(st.dir, st.opts)
			if err != nil {
				t.Fatalf("reopen after recovery: %v", err)
			}
			defer s2.Close()
			checkLog(t, s2, next+100)
			if err := s2.StoreLogs(entries(next+101, next+150)); err != nil {
				t.Fatalf("StoreLogs after restart: %v", err)
			}
		})
	}
}

// TestRepairDropsEntriesRaftDidNotSee: entries of a failed StoreLogs can
// be on disk after all (the data was written, the sync failed); raft did
// not see them stored and sends them again. The repaired store replaces
// them instead of refusing a non-monotonic append.
func TestRepairDropsEntriesRaftDidNotSee(t *testing.T) {
	s, _ := openFull(t, 0)
	if err := s.StoreLogs(entries(1, 10)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	st := s.(*store)
	// 11..12 reached the disk, but raft was told the write failed.
	if err := st.w.StoreLogs(entries(11, 12)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	st.fail(enospc("fsync"), true)
	storeUntil(t, s, entries(11, 14))
	checkLog(t, s, 14)
}

// TestRecoversFromTornSealingAppend: the append that fills a segment also
// writes its index; when that write is torn (the entries and part of the
// index reached the disk, not the commit frame, then ENOSPC), raft-wal's recovery would take the
// uncommitted index for a seal. The store retries the append in place
// instead of reopening, and the log (also after a restart) holds every
// entry with a valid index.
func TestRecoversFromTornSealingAppend(t *testing.T) {
	s, d := openFull(t, 8<<10) // ~35 entries per segment
	if err := s.StoreLogs(entries(1, 10)); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	// More than the segment holds: this append seals it, writing after the
	// entries an index of 60 offsets (an 8-byte frame header and 240 bytes)
	// and an 8-byte commit frame. The disk fills right after the header.
	batch := entries(11, 60)
	d.torn.Store(240 + 8)
	if err := s.StoreLogs(batch); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("torn StoreLogs: err = %v, want ENOSPC", err)
	}
	if h := s.Health(); h.Healthy() {
		t.Fatalf("Health after a torn write = %+v; want failing", h)
	}
	d.torn.Store(0)
	storeUntil(t, s, batch)
	if err := s.StoreLogs(entries(61, 100)); err != nil {
		t.Fatalf("StoreLogs after recovery: %v", err)
	}
	checkLog(t, s, 100)
	st := s.(*store)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s2, err := OpenWithOptions(st.dir, st.opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	checkLog(t, s2, 100)
}
