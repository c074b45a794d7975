package raftnode

// Recovery of a cluster that lost its quorum for good (site A, with two of
// the three voters, is gone): a new data dir whose raft state is a
// one-voter cluster holding the state of a state copy (drcopy.go) or of a
// surviving controller's data dir. A controller started on it is the
// leader of that cluster; others join it as usual.
//
// This is hashicorp/raft's RecoverCluster, which its documentation gives
// for this case: "inject a new configuration with that server as the sole
// voter, and then join up other new clean-state peer servers". It restores
// the newest snapshot into the FSM, applies the log entries after it,
// writes a snapshot of the result with the new configuration and empties
// the log. Here it reads from the source (the copy, or the old data dir,
// left untouched) and writes into the new data dir.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/raftstore"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// keyCurrentTerm is where hashicorp/raft keeps a node's current term in
// its stable store (part of its on-disk format). A recovered node starts
// in the term of the state it holds: a node whose term is behind its own
// log's would, once elected, append entries of a lower term after entries
// of a higher one, and a joining peer holding only the snapshot would then
// count as more up to date than the leader.
var keyCurrentTerm = []byte("CurrentTerm")

// HasRaftState says whether dir holds a controller's raft state (a log or
// snapshots).
func HasRaftState(dir string) bool {
	for _, sub := range []string{"raft", "snapshots"} {
		ents, err := os.ReadDir(filepath.Join(dir, sub))
		if err == nil && len(ents) > 0 {
			return true
		}
	}
	return false
}

// Recovery is an opened source of a recovery: a state copy, or a stopped
// controller's data dir (held, so that it cannot start meanwhile, until
// Close).
type Recovery struct {
	copyPath string
	header   *CopyHeader

	dataDir string
	logs    raftstore.Store
	snaps   *raft.FileSnapshotStore
	// Of the data dir: its current term, last log index and the raft
	// configuration its snapshot and log hold last.
	term, last uint64
	servers    []CopyServer
}

// OpenCopyRecovery opens a state copy (checked whole: see VerifyCopy).
func OpenCopyRecovery(path string) (*Recovery, error) {
	h, err := VerifyCopy(path)
	if err != nil {
		return nil, err
	}
	return &Recovery{copyPath: path, header: h, servers: h.Servers}, nil
}

// OpenDataDirRecovery opens a stopped controller's data dir (waiting up to
// wait for its log store, which one process opens at a time). It refuses a
// data dir whose snapshot or log this binary cannot read whole: a newer
// format, a command version it does not know.
func OpenDataDirRecovery(dir string, wait time.Duration) (*Recovery, error) {
	if st, err := os.Stat(filepath.Join(dir, "raft")); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%s is not a controller's data dir (it has no raft directory)", dir)
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
			return nil, fmt.Errorf("%s: %w", dir, o.err)
		}
		logs = o.s
	case <-time.After(wait):
		go func() { // close it should it open later
			if o := <-ch; o.err == nil {
				o.s.Close()
			}
		}()
		return nil, fmt.Errorf("the raft log in %s is in use: stop that controller first", dir)
	}
	r := &Recovery{dataDir: dir, logs: logs}
	if err := r.readDataDir(); err != nil {
		logs.Close()
		return nil, err
	}
	return r, nil
}

func (r *Recovery) readDataDir() error {
	snaps, err := raft.NewFileSnapshotStoreWithLogger(r.dataDir, 2, hclog.NewNullLogger())
	if err != nil {
		return fmt.Errorf("open snapshots in %s: %w", r.dataDir, err)
	}
	r.snaps = snaps
	if r.term, err = r.logs.GetUint64(keyCurrentTerm); err != nil && err.Error() != "not found" {
		return fmt.Errorf("read the term in %s: %w", r.dataDir, err)
	}
	list, err := snaps.List()
	if err != nil {
		return fmt.Errorf("list snapshots in %s: %w", r.dataDir, err)
	}
	var after uint64
	if len(list) > 0 {
		meta, rc, err := snaps.Open(list[0].ID)
		if err != nil {
			return fmt.Errorf("open snapshot %s in %s: %w", list[0].ID, r.dataDir, err)
		}
		snap, _, err := ReadSnapshot(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("snapshot %s in %s: %w", list[0].ID, r.dataDir, err)
		}
		if f := snap.GetFormatVersion(); f > state.SnapshotVersion {
			return fmt.Errorf("the snapshot in %s is state format %d, newer than this yunchid reads (%d): recover with a newer yunchid", r.dataDir, f, state.SnapshotVersion)
		}
		after, r.last = meta.Index, meta.Index
		r.servers = copyServers(meta.Configuration)
		r.term = max(r.term, meta.Term)
	}
	first, err := r.logs.FirstIndex()
	if err != nil {
		return err
	}
	last, err := r.logs.LastIndex()
	if err != nil {
		return err
	}
	if last > after && first > after+1 && after > 0 {
		return fmt.Errorf("the log in %s starts at %d, after its snapshot at %d: entries are missing", r.dataDir, first, after)
	}
	for i := max(first, after+1); i <= last && i > 0; i++ {
		var l raft.Log
		if err := r.logs.GetLog(i, &l); err != nil {
			return fmt.Errorf("read log entry %d in %s: %w", i, r.dataDir, err)
		}
		r.last, r.term = l.Index, max(r.term, l.Term)
		switch l.Type {
		case raft.LogConfiguration:
			r.servers = copyServers(raft.DecodeConfiguration(l.Data))
		case raft.LogCommand:
			var cmd statev1.Command
			if err := proto.Unmarshal(l.Data, &cmd); err == nil && cmd.GetVersion() > state.CommandVersion {
				return fmt.Errorf("log entry %d in %s is command version %d, newer than this yunchid reads (%d): recover with a newer yunchid", i, r.dataDir, cmd.GetVersion(), state.CommandVersion)
			}
		}
	}
	if r.last == 0 {
		return fmt.Errorf("%s holds no raft state to recover", r.dataDir)
	}
	return nil
}

func copyServers(c raft.Configuration) []CopyServer {
	var out []CopyServer
	for _, s := range c.Servers {
		out = append(out, CopyServer{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	return out
}

// Header is the copy's header (nil for a data dir).
func (r *Recovery) Header() *CopyHeader { return r.header }

// Servers is the raft configuration the source holds last.
func (r *Recovery) Servers() []CopyServer { return r.servers }

// LastIndex is the raft index of the last entry the source holds.
func (r *Recovery) LastIndex() uint64 {
	if r.header != nil {
		return r.header.Index
	}
	return r.last
}

// Address is the raft address the source's configuration gives id ("" if
// it does not name it).
func (r *Recovery) Address(id string) string {
	for _, s := range r.servers {
		if s.ID == id {
			return s.Address
		}
	}
	return ""
}

// Close releases the source.
func (r *Recovery) Close() error {
	if r.logs != nil {
		return r.logs.Close()
	}
	return nil
}

// Into writes into dir, which must hold no raft state, a one-voter cluster
// of controller id at raft address addr whose state is the source's. fsm
// takes the state on the way (its store and audit trail are dir's: the
// snapshot written carries the trail); discard it afterwards, as
// RecoverCluster says: the controller started on dir restores its own. It
// returns the index and term the new cluster starts from.
func (r *Recovery) Into(dir, id, addr string, fsm *FSM) (index, term uint64, err error) {
	if HasRaftState(dir) {
		return 0, 0, fmt.Errorf("%s already holds raft state", dir)
	}
	if id == "" || addr == "" {
		return 0, 0, errors.New("recover: the new voter's id and raft address are required")
	}
	logs, err := raftstore.Open(filepath.Join(dir, "raft"))
	if err != nil {
		return 0, 0, fmt.Errorf("recover: open the new log store: %w", err)
	}
	defer logs.Close()
	dst, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
	if err != nil {
		return 0, 0, fmt.Errorf("recover: open the new snapshot store: %w", err)
	}
	src := recoverySnaps{dst: dst}
	var (
		srcLogs   raft.LogStore
		srcStable raft.StableStore
	)
	if r.header != nil {
		src.list, src.open = r.copySnapshot()
		empty := raft.NewInmemStore() // a copy has no log after its snapshot
		srcLogs, srcStable = empty, empty
		term = r.header.Term
	} else {
		src.list, src.open = r.snaps.List, r.snaps.Open
		// The old log is read, never changed: RecoverCluster's compaction
		// of it is skipped (the new data dir's log starts empty).
		ro := readOnlyLogs{r.logs}
		srcLogs, srcStable = ro, ro
		term = r.term
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft-recover/" + id, Level: hclog.Warn, Output: os.Stderr})
	// The transport only encodes the configuration into the snapshot's
	// metadata; nothing is sent.
	_, trans := raft.NewInmemTransport(raft.ServerAddress(addr))
	defer trans.Close()
	conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr)}}}
	if err := raft.RecoverCluster(rc, fsm, srcLogs, srcStable, src, trans, conf); err != nil {
		return 0, 0, fmt.Errorf("recover: %w", err)
	}
	list, err := dst.List()
	if err != nil || len(list) == 0 {
		return 0, 0, fmt.Errorf("recover: the new snapshot is missing (%v)", err)
	}
	index, term = list[0].Index, max(term, list[0].Term)
	if err := logs.SetUint64(keyCurrentTerm, term); err != nil {
		return 0, 0, fmt.Errorf("recover: store the term: %w", err)
	}
	return index, term, nil
}

// copySnapshot is the copy as a snapshot store's one snapshot.
func (r *Recovery) copySnapshot() (func() ([]*raft.SnapshotMeta, error), func(string) (*raft.SnapshotMeta, io.ReadCloser, error)) {
	h := r.header
	conf := raft.Configuration{}
	for _, s := range h.Servers {
		sf := raft.Nonvoter
		if s.Voter {
			sf = raft.Voter
		}
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: sf, ID: raft.ServerID(s.ID), Address: raft.ServerAddress(s.Address)})
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, ID: filepath.Base(r.copyPath), Index: h.Index, Term: h.Term,
		Configuration: conf, ConfigurationIndex: h.ConfigurationIndex, Size: h.Size}
	list := func() ([]*raft.SnapshotMeta, error) { return []*raft.SnapshotMeta{meta}, nil }
	open := func(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
		if id != meta.ID {
			return nil, nil, fmt.Errorf("no snapshot %s", id)
		}
		_, rc, err := openCopy(r.copyPath)
		if err != nil {
			return nil, nil, err
		}
		return meta, &drained{rc}, nil
	}
	return list, open
}

// drained reads its source to the end on Close: the copy's checksum is
// checked at the end, and the FSM stops reading at the end of the audit
// trail, which is the end of the snapshot.
type drained struct{ io.ReadCloser }

func (d *drained) Close() error {
	io.Copy(io.Discard, d.ReadCloser)
	return d.ReadCloser.Close()
}

// recoverySnaps is the snapshot store RecoverCluster sees: it reads the
// source's snapshots and creates the new one in the new data dir.
type recoverySnaps struct {
	list func() ([]*raft.SnapshotMeta, error)
	open func(id string) (*raft.SnapshotMeta, io.ReadCloser, error)
	dst  *raft.FileSnapshotStore
}

func (s recoverySnaps) List() ([]*raft.SnapshotMeta, error) { return s.list() }

func (s recoverySnaps) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) { return s.open(id) }

func (s recoverySnaps) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	return s.dst.Create(version, index, term, configuration, configurationIndex, trans)
}

// readOnlyLogs is a stopped controller's log store, read only.
type readOnlyLogs struct{ s raftstore.Store }

var errReadOnly = errors.New("recover: the source data dir is read only")

func (r readOnlyLogs) FirstIndex() (uint64, error)        { return r.s.FirstIndex() }
func (r readOnlyLogs) LastIndex() (uint64, error)         { return r.s.LastIndex() }
func (r readOnlyLogs) GetLog(i uint64, l *raft.Log) error { return r.s.GetLog(i, l) }
func (r readOnlyLogs) StoreLog(*raft.Log) error           { return errReadOnly }
func (r readOnlyLogs) StoreLogs([]*raft.Log) error        { return errReadOnly }
func (r readOnlyLogs) DeleteRange(uint64, uint64) error   { return nil } // the compaction RecoverCluster does: not here
func (r readOnlyLogs) Set([]byte, []byte) error           { return errReadOnly }
func (r readOnlyLogs) Get(k []byte) ([]byte, error)       { return r.s.Get(k) }
func (r readOnlyLogs) SetUint64([]byte, uint64) error     { return errReadOnly }
func (r readOnlyLogs) GetUint64(k []byte) (uint64, error) { return r.s.GetUint64(k) }
