package raftnode

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/yunchi/yunchi/controller/raftstore"
	"github.com/yunchi/yunchi/controller/state"
)

// ReplayDataDir rebuilds the state a stopped controller's data dir holds,
// without raft or the network: its newest snapshot, then every command of
// its log after it, applied to a fresh store (with no audit sink). Offline
// audit verification takes the chain's head from it. The data dir must not
// be in use (its log store allows one opener; this waits up to wait for
// it).
func ReplayDataDir(dir string, wait time.Duration) (*state.Store, error) {
	if st, err := os.Stat(filepath.Join(dir, "raft")); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%s is not a controller's data dir (it has no raft directory)", dir)
	}
	store := state.New()
	fsm := &FSM{Store: store} // no audit file: only the state is rebuilt
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
	if err != nil {
		return nil, fmt.Errorf("open snapshots in %s: %w", dir, err)
	}
	list, err := snaps.List()
	if err != nil {
		return nil, fmt.Errorf("list snapshots in %s: %w", dir, err)
	}
	var after uint64
	if len(list) > 0 {
		meta, rc, err := snaps.Open(list[0].ID)
		if err != nil {
			return nil, fmt.Errorf("open snapshot %s: %w", list[0].ID, err)
		}
		if err := fsm.Restore(rc); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", list[0].ID, err)
		}
		after = meta.Index
	}
	type opened struct {
		s   raftstore.Store
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		s, err := raftstore.Open(filepath.Join(dir, "raft"))
		ch <- opened{s, err}
	}()
	var logs raftstore.Store
	select {
	case o := <-ch:
		if o.err != nil {
			return nil, o.err
		}
		logs = o.s
	case <-time.After(wait):
		return nil, fmt.Errorf("the raft log in %s is in use: stop that controller first, or verify a copy of its data dir", dir)
	}
	defer logs.Close()
	first, err := logs.FirstIndex()
	if err != nil {
		return nil, err
	}
	last, err := logs.LastIndex()
	if err != nil {
		return nil, err
	}
	for i := max(first, after+1); i <= last && i > 0; i++ {
		var l raft.Log
		if err := logs.GetLog(i, &l); err != nil {
			if errors.Is(err, raft.ErrLogNotFound) {
				continue
			}
			return nil, fmt.Errorf("read log entry %d: %w", i, err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		fsm.Apply(&l) // an entry that is not a command changes nothing
	}
	return store, nil
}
