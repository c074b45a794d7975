// Package raftstore opens the controller's durable raft storage: the
// replicated log (raft.LogStore) and the node's own term and vote
// (raft.StableStore).
//
// The backend is hashicorp/raft-wal; docs/raft-store.md records the
// measurements against raft-boltdb/v2 that chose it and the command that
// reproduces them (bench_test.go).
package raftstore

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
)

// Store is everything raft keeps on disk. Close releases the files; the
// store must not be used afterwards.
type Store interface {
	raft.LogStore
	raft.StableStore
	io.Closer
}

var _ Store = (*walStore)(nil)

// walStore closes the WAL's metadata database, which raft-wal v0.4.0's
// Close leaves open (fixed upstream in hashicorp/raft-wal#28, after v0.4.0).
// Left open, its file lock makes the next Open of the same dir in this
// process wait forever.
type walStore struct {
	*wal.WAL
	meta *metadb.BoltMetaDB
}

func (s *walStore) Close() error {
	return errors.Join(s.WAL.Close(), s.meta.Close())
}

// Open opens the store kept in dir, creating dir (mode 0700: the log holds
// every command the cluster has accepted) and an empty store when they do not
// exist. An existing store is recovered: entries whose StoreLogs returned
// before a crash are there after Open.
//
// Only one Store may have dir open at a time: a second Open, from this
// process or another, waits until the first is closed.
func Open(dir string) (Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("raftstore: create %s: %w", dir, err)
	}
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(dir, wal.WithMetaStore(meta))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("raftstore: open %s: %w", dir, err), meta.Close())
	}
	return &walStore{WAL: w, meta: meta}, nil
}
