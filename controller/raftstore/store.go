// Package raftstore opens the controller's durable raft storage: the
// replicated log (raft.LogStore) and the node's own term and vote
// (raft.StableStore).
//
// The backend is hashicorp/raft-wal; docs/raft-store.md records the
// measurements against raft-boltdb/v2 that chose it and the command that
// reproduces them (bench_test.go).
//
// A write that fails (a full disk: ENOSPC) marks the store failed: Health
// says since when and why. raft retries the write (a follower's leader sends
// the entries again, a leader that stepped down gets them from the next
// one). A failed append is simply retried (raft-wal v0.4.2 rolls its tail
// back); a failure that leaves raft-wal's memory unlike its disk (a failed
// segment rotation, a failed truncation) makes the next write reopen the WAL
// from disk first. Once the disk has room the store is healthy again without
// a restart. docs/raft-store.md has the details.
package raftstore

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
)

// Store is everything raft keeps on disk. Close releases the files; the
// store must not be used afterwards.
type Store interface {
	raft.LogStore
	raft.StableStore
	io.Closer
	// Health tells whether the last write reached the disk.
	Health() Health
}

// Health is the state of the store's writes.
type Health struct {
	// Err is the last write's error while the store is failing, nil when it
	// is healthy.
	Err error
	// Since is when the current run of failures began (zero when healthy).
	Since time.Time
	// Failures counts failed writes (and failed reopens) since Open.
	Failures uint64
	// Recoveries counts the times the store became healthy again.
	Recoveries uint64
}

// Healthy says whether the last write succeeded.
func (h Health) Healthy() bool { return h.Err == nil }

// Options tune Open. The zero value is the production setting.
type Options struct {
	// SegmentSize is the size of one WAL segment file (raft-wal preallocates
	// it); zero keeps raft-wal's 64 MiB. Tests use small segments.
	SegmentSize int
	// RepairInterval is the least time between two attempts to reopen a
	// failed store; zero means one second.
	RepairInterval time.Duration
	// Logger receives one line when the store fails and one when it recovers.
	Logger *slog.Logger

	// vfs replaces the real file system and newMeta the metadata database
	// (tests inject write failures).
	vfs     types.VFS
	newMeta func() types.MetaStore
}

var (
	_         Store                  = (*store)(nil)
	_         raft.MonotonicLogStore = (*store)(nil)
	errClosed                        = wal.ErrClosed
)

// store wraps a raft-wal WAL. Every call holds mu for reading, except the
// reopen after a failure, which holds it for writing and swaps the WAL:
// raft uses the store from several goroutines (its main loop stores,
// replication and snapshot goroutines read).
type store struct {
	dir  string
	opts Options
	log  *slog.Logger

	mu   sync.RWMutex
	w    *wal.WAL // nil after a failed reopen, until the next one succeeds
	open bool     // false once Close was called

	// pending is an entry rotateSealedTail deleted and could not store
	// again (guarded by mu: set and cleared under the exclusive lock).
	pending *raft.Log

	hmu        sync.Mutex
	reopen     bool // the next write reopens the WAL first
	failErr    error
	since      time.Time
	failures   uint64
	recoveries uint64
	nextRepair time.Time
}

// Open opens the store kept in dir, creating dir (mode 0700: the log holds
// every command the cluster has accepted) and an empty store when they do not
// exist. An existing store is recovered: entries whose StoreLogs returned
// before a crash are there after Open.
//
// Only one Store may have dir open at a time: a second Open, from this
// process or another, waits until the first is closed.
func Open(dir string) (Store, error) { return OpenWithOptions(dir, Options{}) }

// OpenWithOptions is Open with tuning (see Options).
func OpenWithOptions(dir string, o Options) (Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("raftstore: create %s: %w", dir, err)
	}
	if o.RepairInterval <= 0 {
		o.RepairInterval = time.Second
	}
	lg := o.Logger
	if lg == nil {
		lg = slog.Default()
	}
	s := &store{dir: dir, opts: o, log: lg, open: true}
	w, err := s.openWAL()
	if err != nil {
		return nil, err
	}
	s.w = w
	return s, nil
}

// openWAL opens (or recovers) the WAL in s.dir. raft-wal v0.4.2's Close
// also closes its metadata database (v0.4.0's did not: its file lock then
// made the next open in this process wait forever).
func (s *store) openWAL() (*wal.WAL, error) {
	var meta types.MetaStore = &metadb.BoltMetaDB{}
	if s.opts.newMeta != nil {
		meta = s.opts.newMeta()
	}
	var sf types.SegmentFiler // nil: raft-wal's own, on the real file system
	if s.opts.vfs != nil {
		sf = segment.NewFiler(s.dir, s.opts.vfs)
	}
	w, err := wal.Open(s.dir, wal.WithMetaStore(meta), wal.WithSegmentSize(s.opts.SegmentSize), wal.WithSegmentFiler(sf))
	if err != nil {
		// A failed Open leaves the metadata database (and its lock) open.
		return nil, errors.Join(fmt.Errorf("raftstore: open %s: %w", s.dir, err), meta.Close())
	}
	return w, nil
}

// Health reports the store's write health.
func (s *store) Health() Health {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	return Health{Err: s.failErr, Since: s.since, Failures: s.failures, Recoveries: s.recoveries}
}

// fail records a failed write. reopen says the WAL's in-memory state may
// no longer match the disk, so the next write reopens it first.
func (s *store) fail(err error, reopen bool) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	s.failures++
	s.reopen = s.reopen || reopen
	if s.failErr == nil {
		s.since = time.Now()
		s.log.Error("raft log store: a write failed; this controller cannot accept log entries until it works again (it retries by itself)", "dir", s.dir, "err", err)
	}
	s.failErr = err
}

func (s *store) recovered() {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if s.failErr == nil {
		return
	}
	s.log.Warn("raft log store: writes work again", "dir", s.dir, "failing_since", s.since, "failures", s.failures)
	s.failErr, s.since = nil, time.Time{}
	s.recoveries++
}

// state is what the write path needs to know, read at once.
func (s *store) state() (failing, reopen bool, nextRepair time.Time) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	return s.failErr != nil, s.reopen, s.nextRepair
}

// errFailing is what a write answers while the store waits for its next
// reopen attempt.
func (s *store) errFailing() error {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	return fmt.Errorf("raft log store failing since %s: %w", s.since.UTC().Format(time.RFC3339), s.failErr)
}

// read runs a read against the current WAL.
func (s *store) read(fn func(w *wal.WAL) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.open {
		return errClosed
	}
	if s.w == nil {
		return s.errFailing()
	}
	return fn(s.w)
}

// write runs a log write. reopenOnErr says a failure of this kind leaves
// raft-wal's in-memory state unlike the disk (a truncation whose metadata
// commit or segment creation failed); a sealed tail (its background
// rotation failed, which raft-wal only logs) always does.
//
// A failed append does not: raft-wal v0.4.2 rolls its tail back, and the
// same WAL is simply tried again. It must not be reopened then: a torn
// append that was sealing the segment leaves an index frame after the last
// commit, which raft-wal's recovery takes for a seal, with an index that was
// never written.
//
// When a reopen is due, the next write does it first (at once after a
// sealed tail, then at most once per RepairInterval) and runs fn with
// reopened set, under the exclusive lock.
func (s *store) write(reopenOnErr bool, fn func(w *wal.WAL, reopened bool) error) error {
	s.mu.RLock()
	if !s.open {
		s.mu.RUnlock()
		return errClosed
	}
	failing, reopen, _ := s.state()
	if s.w != nil && !reopen && s.pending == nil {
		err := fn(s.w, false)
		s.mu.RUnlock()
		if err == nil {
			if failing {
				s.recovered()
			}
			return nil
		}
		sealed := errors.Is(err, wal.ErrSealed)
		s.fail(err, reopenOnErr || sealed)
		if !sealed {
			return err
		}
		// Repair now, so that the error kept is the real one (no space
		// for the next segment, say), not "sealed".
	} else {
		s.mu.RUnlock()
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.open {
		return errClosed
	}
	if _, reopen, next := s.state(); reopen || s.w == nil {
		if time.Now().Before(next) {
			return s.errFailing()
		}
		if err := s.reopenLocked(); err != nil {
			s.fail(err, true)
			s.hmu.Lock()
			s.nextRepair = time.Now().Add(s.opts.RepairInterval)
			s.hmu.Unlock()
			return err
		}
		s.hmu.Lock()
		s.reopen = false
		s.hmu.Unlock()
	}
	if s.pending != nil {
		// An entry rotateSealedTail took out and could not store again.
		if err := s.w.StoreLogs([]*raft.Log{s.pending}); err != nil {
			s.fail(err, errors.Is(err, wal.ErrSealed))
			return err
		}
		s.pending = nil
	}
	if err := fn(s.w, true); err != nil {
		s.fail(err, reopenOnErr || errors.Is(err, wal.ErrSealed))
		return err
	}
	s.recovered()
	return nil
}

// reopenLocked closes the WAL and opens it again from disk: raft-wal's
// recovery rebuilds the in-memory state from the metadata and the segment
// files. mu is held for writing.
func (s *store) reopenLocked() error {
	if s.w != nil {
		if err := s.w.Close(); err != nil {
			s.log.Warn("raft log store: closing the failed WAL", "err", err)
		}
		s.w = nil
	}
	w, err := s.openWAL()
	if err != nil {
		return err
	}
	s.w = w
	return nil
}

// StoreLogs appends entries. After a reopen, the WAL may hold entries raft
// was told had failed, or the recovered tail segment may be sealed with its
// rotation undone (the metadata commit or the next segment's creation
// failed): both are reconciled here.
func (s *store) StoreLogs(logs []*raft.Log) error {
	return s.write(false, func(w *wal.WAL, reopened bool) error {
		if reopened && len(logs) > 0 {
			if err := dropTailFrom(w, logs[0].Index); err != nil {
				return err
			}
		}
		err := w.StoreLogs(logs)
		if reopened && errors.Is(err, wal.ErrSealed) {
			if err = s.rotateSealedTail(w); err == nil {
				err = w.StoreLogs(logs)
			}
		}
		return err
	})
}

// StoreLog appends one entry.
func (s *store) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// dropTailFrom deletes entries from index on, when the WAL has them: raft
// did not see them stored (the write that carried them failed), so the
// entries raft now stores replace them, as raft itself replaces a
// conflicting suffix.
func dropTailFrom(w *wal.WAL, index uint64) error {
	last, err := w.LastIndex()
	if err != nil || last < index {
		return err
	}
	return w.DeleteRange(index, last)
}

// rotateSealedTail starts a new tail segment when the recovered tail is
// sealed (raft-wal v0.4.2 does not rotate at Open): the last entry is read,
// deleted (which seals the tail in the metadata and creates a new segment)
// and stored again. If storing it again fails, the entry is kept in memory
// (reads see it) and stored first by the next write. mu is held for
// writing.
func (s *store) rotateSealedTail(w *wal.WAL) error {
	last, err := w.LastIndex()
	if err != nil {
		return err
	}
	if last == 0 {
		return wal.ErrSealed
	}
	var l raft.Log
	if err := w.GetLog(last, &l); err != nil {
		return err
	}
	if err := w.DeleteRange(last, last); err != nil {
		return err
	}
	if err := w.StoreLogs([]*raft.Log{&l}); err != nil {
		s.pending = &l
		return err
	}
	return nil
}

// DeleteRange deletes entries min..max (a prefix or a suffix).
func (s *store) DeleteRange(min, max uint64) error {
	return s.write(true, func(w *wal.WAL, _ bool) error { return w.DeleteRange(min, max) })
}

// FirstIndex is the first index stored (0 for none).
func (s *store) FirstIndex() (uint64, error) {
	var i uint64
	err := s.read(func(w *wal.WAL) (err error) { i, err = w.FirstIndex(); return })
	return i, err
}

// LastIndex is the last index stored (0 for none).
func (s *store) LastIndex() (uint64, error) {
	var i uint64
	err := s.read(func(w *wal.WAL) (err error) {
		i, err = w.LastIndex()
		if p := s.pending; err == nil && p != nil && p.Index > i {
			i = p.Index
		}
		return err
	})
	return i, err
}

// GetLog reads one entry.
func (s *store) GetLog(index uint64, l *raft.Log) error {
	return s.read(func(w *wal.WAL) error {
		if p := s.pending; p != nil && p.Index == index {
			*l = *p
			return nil
		}
		return w.GetLog(index, l)
	})
}

// IsMonotonic tells raft the log has no gaps (raft-wal's contract).
func (s *store) IsMonotonic() bool { return true }

// Set stores a stable value.
func (s *store) Set(k, v []byte) error {
	return s.writeStable(func(w *wal.WAL) error { return w.Set(k, v) })
}

// SetUint64 stores a stable number.
func (s *store) SetUint64(k []byte, v uint64) error {
	return s.writeStable(func(w *wal.WAL) error { return w.SetUint64(k, v) })
}

// writeStable writes the term or vote. They live in the metadata database,
// which often still has room when the log cannot grow, so a failing log
// does not hold them back: raft panics when it cannot save its term or
// vote (the process then exits and a supervisor restarts it). Only when
// the WAL is not open (a reopen failed) is it reopened first, at once.
func (s *store) writeStable(fn func(w *wal.WAL) error) error {
	s.mu.RLock()
	if s.open && s.w != nil {
		err := fn(s.w)
		s.mu.RUnlock()
		if err != nil {
			s.fail(err, false)
		}
		return err
	}
	s.mu.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.open {
		return errClosed
	}
	if s.w == nil {
		if err := s.reopenLocked(); err != nil {
			s.fail(err, true)
			return err
		}
	}
	err := fn(s.w)
	if err != nil {
		s.fail(err, false)
	}
	return err
}

// Get reads a stable value.
func (s *store) Get(k []byte) ([]byte, error) {
	var v []byte
	err := s.read(func(w *wal.WAL) (err error) { v, err = w.Get(k); return })
	return v, err
}

// GetUint64 reads a stable number.
func (s *store) GetUint64(k []byte) (uint64, error) {
	var v uint64
	err := s.read(func(w *wal.WAL) (err error) { v, err = w.GetUint64(k); return })
	return v, err
}

// Close closes the WAL and its metadata database.
func (s *store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.open {
		return nil
	}
	s.open = false
	if s.w == nil {
		return nil
	}
	err := s.w.Close()
	s.w = nil
	return err
}
