package raftnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/raftstore"
	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/internal/clock"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Config says where a controller's raft lives.
type Config struct {
	ID string
	// RaftBind is the TCP address raft listens on; RaftAdvertise the one
	// peers dial (defaults to RaftBind).
	RaftBind, RaftAdvertise string
	// DataDir holds the log (raft/), the stable store and snapshots/.
	DataDir string
	// Bootstrap starts a new single-voter cluster when DataDir has no state.
	Bootstrap bool
	// Transport replaces TCP (tests use raft.InmemTransport); its
	// LocalAddr is then the advertised address.
	Transport raft.Transport
	// TLS: raft over mutual TLS between controllers (nil: plain TCP).
	TLS *PeerTLS
	// Tuning for tests; zero keeps the production timeouts below.
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout time.Duration
	SnapshotThreshold                                     uint64
	// LogSegmentSize is the size of one raft log segment file (zero: 64 MiB);
	// tests that fill a small disk use small segments.
	LogSegmentSize int
	Logger         *slog.Logger
	// Audit is the audit trail's file, carried in snapshots (nil: none).
	Audit AuditFile
}

// Production raft timeouts. A follower that hears nothing from the leader
// for a randomised HeartbeatTimeout..2×HeartbeatTimeout stands for
// election, so after a leader dies the cluster elects another within about
// 1 s, and the first write succeeds well under the 2 s target (raft's
// defaults of 1 s gave a p99 of 2.6 s). The leader sends heartbeats every
// HeartbeatTimeout/10 (50 ms) on their own goroutine and connection path,
// so a follower starts a spurious election only if ten in a row are lost
// or late: a stall of half a second, far beyond GC pauses or scheduling
// delays on a busy 2-core machine (loopback and LAN round trips are well
// under 1 ms). Pre-vote (raft ≥ 1.7) keeps a follower that did time out
// from disturbing a healthy leader. ElectionTimeout bounds a candidate's
// split-vote retry. The lease is as long as raft allows (it must not exceed
// HeartbeatTimeout): it only decides when a leader cut off from a quorum
// steps down, reads never rely on it (consistent reads use a barrier), so
// a long lease costs nothing and spares step-downs when the leader itself
// is briefly starved of CPU.
const (
	HeartbeatTimeout   = 500 * time.Millisecond
	ElectionTimeout    = 500 * time.Millisecond
	LeaderLeaseTimeout = 500 * time.Millisecond
)

// Node is one raft member with its FSM.
type Node struct {
	Raft  *raft.Raft
	Store *state.Store
	id    string
	addr  raft.ServerAddress
	trans raft.Transport
	logs  raftstore.Store
	log   *slog.Logger
	// caughtUpTerm is the term in which CaughtUp last saw a barrier through.
	caughtUpTerm atomic.Uint64
}

// Open starts raft for cfg over store.
func Open(cfg Config, store *state.Store) (*Node, error) {
	if cfg.ID == "" {
		return nil, errors.New("raft: node id is required")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("raft: data dir is required")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("raft: create data dir: %w", err)
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft/" + cfg.ID, Level: hclog.Warn, Output: os.Stderr,
		Exclude: demoteStopNoise(lg.With("raft", cfg.ID))})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hl
	// A removed controller keeps running as a follower outside the
	// configuration (see Removed) and says so to every caller, rather than
	// shutting raft down under its own API: a leader is never the one to
	// remove itself (the API hands leadership over first), and a follower
	// is not shut down by raft on removal anyway.
	rc.ShutdownOnRemove = false
	// Many proposals are in flight at once (placement pipelines its
	// decisions): let the leader write up to 512 of them with one disk
	// write and send them in one AppendEntries, and queue them for that
	// without a hand-off per command.
	rc.MaxAppendEntries = 512
	rc.BatchApplyCh = true
	rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout
	if cfg.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	}
	if cfg.ElectionTimeout > 0 {
		rc.ElectionTimeout = cfg.ElectionTimeout
	}
	if cfg.LeaderLeaseTimeout > 0 {
		rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	}
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
		rc.TrailingLogs = cfg.SnapshotThreshold
	}

	logs, err := openLogs(filepath.Join(cfg.DataDir, "raft"), raftstore.Options{SegmentSize: cfg.LogSegmentSize, Logger: lg})
	if err != nil {
		return nil, fmt.Errorf("raft: open log store: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hl)
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("raft: open snapshot store: %w", err)
	}
	trans := cfg.Transport
	if trans == nil {
		adv := cfg.RaftAdvertise
		if adv == "" {
			adv = cfg.RaftBind
		}
		tcpAddr, err := net.ResolveTCPAddr("tcp", adv)
		if err != nil {
			logs.Close()
			return nil, fmt.Errorf("raft: advertise address %q: %w", adv, err)
		}
		if cfg.TLS != nil {
			var st *tlsStream
			if st, err = newTLSStream(cfg.RaftBind, tcpAddr, cfg.TLS); err == nil {
				trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: st, MaxPool: 3, Timeout: 10 * time.Second, Logger: hl})
			}
		} else {
			trans, err = raft.NewTCPTransportWithLogger(cfg.RaftBind, tcpAddr, 3, 10*time.Second, hl)
		}
		if err != nil {
			logs.Close()
			return nil, fmt.Errorf("raft: listen on %s: %w", cfg.RaftBind, err)
		}
	}
	n := &Node{Store: store, id: cfg.ID, addr: trans.LocalAddr(), trans: trans, logs: logs, log: lg}
	if cfg.Bootstrap {
		has, err := raft.HasExistingState(logs, logs, snaps)
		if err != nil {
			n.closeStores()
			return nil, fmt.Errorf("raft: read existing state: %w", err)
		}
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: n.addr, Suffrage: raft.Voter}}}
			if err := raft.BootstrapCluster(rc, logs, logs, snaps, trans, conf); err != nil {
				n.closeStores()
				return nil, fmt.Errorf("raft: bootstrap: %w", err)
			}
			lg.Info("bootstrapped a new cluster", "id", cfg.ID, "raft", n.addr)
		}
	}
	// Raft reads back every entry it has just written: the leader to send
	// it to each follower, a follower to apply it. The cache answers those
	// reads from memory (it keeps only entries the store has accepted), so
	// the disk is written, not read, on the write path.
	cached, err := raft.NewLogCache(logCacheEntries, logs)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("raft: log cache: %w", err)
	}
	// The FSM answers (copies what a create made) only while this node
	// leads: followers' answers are never read.
	var self atomic.Pointer[raft.Raft]
	fsm := &FSM{Store: store, Audit: cfg.Audit, Answers: func() bool {
		r := self.Load()
		return r != nil && r.State() == raft.Leader
	}}
	r, err := raft.NewRaft(rc, fsm, cached, logs, snaps, trans)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("raft: start: %w", err)
	}
	n.Raft = r
	self.Store(r)
	return n, nil
}

// openLogs opens the raft log store (tests wrap it to watch raft's reads).
var openLogs = raftstore.OpenWithOptions

// logCacheEntries is how many of the newest log entries raft reads from
// memory: several full AppendEntries batches (MaxAppendEntries), so a
// follower that falls a little behind is still sent entries from memory.
const logCacheEntries = 4096

// demoteStopNoise is the raft logger's filter for what raft's TCP
// transport reports as ERROR although it is how a node, or a peer, stops:
//
//   - "failed to decode incoming command: transport shutdown": raft.Shutdown
//     stops the node's raft before it closes the transport, so a heartbeat a
//     peer sends in between waits for an answer nobody gives. No order of
//     calls from outside raft avoids it for a node stopped while its peers
//     run (the transport keeps no list of its incoming connections to close
//     first). It goes to debug on lg.
//   - "failed to decode incoming command: ... connection reset by peer": the
//     peer at the other end stopped (or crashed) with our reply unread. It
//     goes to lg at WARN, naming what it means; raft's own election logs
//     follow if that peer was the leader.
//
// Everything else raft says is printed as before.
func demoteStopNoise(lg *slog.Logger) func(hclog.Level, string, ...any) bool {
	return func(level hclog.Level, msg string, args ...any) bool {
		if msg != "failed to decode incoming command" {
			return false
		}
		for i := 0; i+1 < len(args); i += 2 {
			err, ok := args[i+1].(error)
			if !ok || args[i] != "error" {
				continue
			}
			switch {
			case errors.Is(err, raft.ErrTransportShutdown):
				lg.Debug("raft transport: an incoming command was cut off by this node's shutdown", "err", err)
				return true
			case errors.Is(err, syscall.ECONNRESET):
				lg.Warn("raft transport: a peer closed its connection abruptly (it stopped or crashed)", "err", err)
				return true
			}
		}
		return false
	}
}

func (n *Node) closeStores() {
	if c, ok := n.trans.(io.Closer); ok {
		c.Close()
	}
	n.logs.Close()
}

// ID is this node's raft server id.
func (n *Node) ID() string { return n.id }

// Addr is this node's advertised raft address.
func (n *Node) Addr() string { return string(n.addr) }

// IsLeader says whether this node is the leader now.
func (n *Node) IsLeader() bool { return n.Raft.State() == raft.Leader }

// LogStoreHealth says whether this node's raft log store can write. While
// it cannot, raft cannot append here: a follower falls behind (its state
// goes stale), a leader steps down. The store repairs itself once writes
// work again.
func (n *Node) LogStoreHealth() raftstore.Health { return n.logs.Health() }

// LeaderID returns the current leader's id ("" when there is none).
func (n *Node) LeaderID() string {
	_, id := n.Raft.LeaderWithID()
	return string(id)
}

// Removed says whether this node was removed from the cluster: its latest
// raft configuration lists servers, but not this one. A node that has not
// joined yet (empty configuration) is not removed; one added back is no
// longer removed.
func (n *Node) Removed() bool {
	c, err := n.Configuration()
	if err != nil || len(c.Servers) == 0 {
		return false
	}
	for _, s := range c.Servers {
		if string(s.ID) == n.id {
			return false
		}
	}
	return true
}

// Configuration is this node's latest raft configuration.
func (n *Node) Configuration() (raft.Configuration, error) {
	f := n.Raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return raft.Configuration{}, err
	}
	return f.Configuration(), nil
}

// AddVoter adds (or re-adds) a voter to the configuration (leader only).
func (n *Node) AddVoter(id, addr string, timeout time.Duration) error {
	return n.Raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout).Error()
}

// RemoveServer takes a server out of the configuration (leader only).
func (n *Node) RemoveServer(id string, timeout time.Duration) error {
	return n.Raft.RemoveServer(raft.ServerID(id), 0, timeout).Error()
}

// LeadershipTransfer hands leadership to the most up-to-date voter
// (leader only).
func (n *Node) LeadershipTransfer() error { return n.Raft.LeadershipTransfer().Error() }

// Stats is raft's own status map (state, term, commit_index, ...).
func (n *Node) Stats() map[string]string { return n.Raft.Stats() }

// Indexes are the current term and this node's commit and applied index.
func (n *Node) Indexes() (term, commit, applied uint64) {
	return n.Raft.CurrentTerm(), n.Raft.CommitIndex(), n.Raft.AppliedIndex()
}

// ErrTimeout is returned when raft did not accept a command in time (its
// queue stayed full: the leader is overloaded). Once accepted, Apply waits
// for the commit; raft ends that wait itself if leadership is lost.
var ErrTimeout = errors.New("raft: command not accepted in time")

// Apply proposes cmd (stamped with the leader's clock, the command version
// and the request id ctx carries, see state.WithRequest) and waits for it to be applied. The error is the FSM's
// rejection (a *state.Error) or a raft error such as raft.ErrNotLeader.
func (n *Node) Apply(ctx context.Context, cmd *statev1.Command) (state.Result, error) {
	cmd.Version = state.CommandVersion
	cmd.UnixNano = clock.Now().UnixNano()
	// The API request's idempotency key, if it has one: Apply answers a
	// key it already holds with the first outcome.
	if ri, ok := state.RequestFrom(ctx); ok {
		cmd.RequestId, cmd.RequestHash = ri.ID, ri.Hash
	}
	// Who asked (the API request's caller, action and target): Apply
	// records the command in the audit trail with it.
	if ac := state.AuditFrom(ctx); ac != nil && ac.Action != "" && cmd.Audit == nil {
		cmd.Audit = ac
		state.MarkAuditHandled(ctx)
	}
	b, err := proto.Marshal(cmd)
	if err != nil {
		return state.Result{}, fmt.Errorf("encode command: %w", err)
	}
	// A context already done proposes nothing (raft would read the
	// negative time left as "no timeout").
	if err := ctx.Err(); err != nil {
		return state.Result{}, err
	}
	f := n.Raft.Apply(b, timeoutOf(ctx, 10*time.Second))
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrEnqueueTimeout) {
			return state.Result{}, ErrTimeout
		}
		if h := n.logs.Health(); !h.Healthy() && !isRaftError(err) {
			return state.Result{}, &LogStoreError{Node: n.id, Err: err}
		}
		return state.Result{}, err
	}
	res, ok := f.Response().(*Result)
	if !ok {
		return state.Result{}, fmt.Errorf("unexpected FSM response %T", f.Response())
	}
	return takeAnswer(res)
}

// takeAnswer takes the answer out of res: the leader's log cache holds the
// future (its response too) for logCacheEntries entries, and a batch's
// answer is a copy of every record it made. An entry committed while this
// node led but applied after it stepped down was applied unanswered: the
// change is made, and the caller hears what raft says of any request
// caught in a change of leader.
func takeAnswer(res *Result) (state.Result, error) {
	v, err := res.Value, res.Err
	if res.Unanswered && err == nil {
		err = raft.ErrLeadershipLost
	}
	*res = Result{}
	return v, err
}

// LogStoreError is Apply's error when this node, the leader, could not write
// the entry to its own log (its data disk is full, say): raft steps down,
// and the entry may or may not be committed by the next leader.
type LogStoreError struct {
	Node string
	Err  error
}

func (e *LogStoreError) Error() string {
	return fmt.Sprintf("controller %s could not write to its raft log: %v", e.Node, e.Err)
}

func (e *LogStoreError) Unwrap() error { return e.Err }

// isRaftError says whether err is one of raft's own outcomes for a
// command (not a log store failure passed through).
func isRaftError(err error) bool {
	for _, r := range []error{raft.ErrNotLeader, raft.ErrLeadershipLost, raft.ErrAbortedByRestore, raft.ErrRaftShutdown,
		raft.ErrLeadershipTransferInProgress, raft.ErrEnqueueTimeout} {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

// Barrier waits until every entry committed before it is applied here
// (leader only), which makes the next local read linearizable.
func (n *Node) Barrier(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return n.Raft.Barrier(timeoutOf(ctx, 5*time.Second)).Error()
}

// CaughtUp returns once this leader has applied every entry of earlier
// terms (a new leader applies them only after its first commit): it waits
// on a barrier the first time it is asked in a term and answers at once
// after that. A lookup in the state then sees every committed command.
func (n *Node) CaughtUp(ctx context.Context) error {
	term := n.Raft.CurrentTerm()
	if n.caughtUpTerm.Load() == term {
		return nil
	}
	if err := n.Barrier(ctx); err != nil {
		return err
	}
	n.caughtUpTerm.Store(term)
	return nil
}

// timeoutOf is the time left before ctx's deadline, def when it has none:
// raft takes a timeout, not a context.
func timeoutOf(ctx context.Context, def time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Nanosecond) // 0 or less would mean no timeout
	}
	return def
}

// Shutdown stops raft and closes the stores.
func (n *Node) Shutdown() error {
	err := n.Raft.Shutdown().Error()
	n.closeStores()
	return err
}

// WatchLeadership calls fn(true) when this node becomes the leader and
// fn(false) when it stops being it (and once at the start with the state
// then), in order, from one goroutine, until ctx is done. It listens to
// raft's state-change observations rather than polling; an observation is
// only a cue to look again, so one dropped while fn runs loses nothing
// (a flip and back within one fn call is seen as no change).
func (n *Node) WatchLeadership(ctx context.Context, fn func(leader bool)) {
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.RaftState)
		return ok
	})
	n.Raft.RegisterObserver(obs)
	defer n.Raft.DeregisterObserver(obs)
	was := n.IsLeader()
	fn(was)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		if now := n.IsLeader(); now != was {
			was = now
			fn(now)
		}
	}
}

// WaitChange waits, within ctx, for the next change this node applies,
// and reports whether one came. A follower uses it to wait for a
// credential created through the leader a moment ago that its log does
// not hold yet: read your own writes, for authentication. A leader that
// has caught up returns false at once (it applied every entry before
// answering the client that asked for it); a new one first catches up
// (CaughtUp) and reports true: until its first commit in the term it has
// not applied the entries of earlier terms, such as a token made before
// the election.
func (n *Node) WaitChange(ctx context.Context) bool {
	if n.Raft.State() == raft.Leader {
		if n.caughtUpTerm.Load() == n.Raft.CurrentTerm() {
			return false
		}
		return n.CaughtUp(ctx) == nil
	}
	select {
	case <-n.Store.Changed():
		return true
	case <-ctx.Done():
		return false
	}
}
