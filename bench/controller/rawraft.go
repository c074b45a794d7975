package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/yunchi/yunchi/controller/raftstore"
	"github.com/yunchi/yunchi/internal/apitest"
)

// The physical limit: hashicorp/raft alone, 3 voters on loopback, each
// with the controllers' log store (raft-wal through controller/raftstore)
// and TCP transport, committing entries of the size a create command has.
// The FSM only counts: no Yunchi code decides or applies anything.
//
// The leader runs in this process, so a commit is measured from raft.Apply
// with no request hop in front (that hop is part of the 1 ms a create may
// add). The followers run in processes of their own, as the controllers'
// followers do: a follower in the leader's process is woken by the Go
// runtime already running, and measured 0.3 to 0.37 ms faster per commit
// at one client (p50 0.74 to 0.78 ms against 1.05 to 1.11 ms, four rounds
// in alternation) than one in another process, which the kernel must wake
// for every entry.
type countFSM struct{ n uint64 }

func (f *countFSM) Apply(*raft.Log) any { f.n++; return nil }
func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) {
	return nopSnap{}, nil
}
func (f *countFSM) Restore(rc io.ReadCloser) error { return rc.Close() }

type nopSnap struct{}

func (nopSnap) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (nopSnap) Release()                             {}

// rawNode is one raw raft voter in this process.
type rawNode struct {
	r     *raft.Raft
	logs  raftstore.Store
	trans *raft.NetworkTransport
}

func (n *rawNode) close() {
	if n.r != nil {
		n.r.Shutdown().Error()
	}
	n.trans.Close()
	n.logs.Close()
}

// openRawNode opens a voter's log store in dir and its transport on a free
// loopback port; start starts its raft.
func openRawNode(dir string) (*rawNode, error) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	logs, err := raftstore.OpenWithOptions(filepath.Join(dir, "raft"), raftstore.Options{Logger: quiet})
	if err != nil {
		return nil, err
	}
	trans, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 3, 10*time.Second, rawLogger)
	if err != nil {
		logs.Close()
		return nil, err
	}
	return &rawNode{logs: logs, trans: trans}, nil
}

// start runs the node's raft as id; boot, if given, is the cluster's first
// configuration (one node bootstraps; the others learn it from the leader).
func (n *rawNode) start(dir string, id raft.ServerID, boot []raft.Server) error {
	rc := raft.DefaultConfig()
	rc.LocalID = id
	rc.Logger = rawLogger
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, rawLogger)
	if err != nil {
		return err
	}
	if boot != nil {
		if err := raft.BootstrapCluster(rc, n.logs, n.logs, snaps, n.trans, raft.Configuration{Servers: boot}); err != nil {
			return err
		}
	}
	n.r, err = raft.NewRaft(rc, &countFSM{}, n.logs, n.logs, snaps, n.trans)
	return err
}

var rawLogger = hclog.New(&hclog.LoggerOptions{Name: "raw-raft", Level: hclog.Error, Output: os.Stderr})

// rawFollowerEnv, set to a data directory, makes this program a raw raft
// follower (runRawFollower) instead of the benchmark.
const rawFollowerEnv = "YUNCHI_BENCH_RAW_FOLLOWER"

// runRawFollower runs one follower voter with its data in dir, named id:
// it prints its raft address on stdout, then serves until its standard
// input ends (the benchmark closes it, or exits), and exits.
func runRawFollower(dir, id string) error {
	n, err := openRawNode(dir)
	if err != nil {
		return err
	}
	defer n.close()
	if err := n.start(dir, raft.ServerID(id), nil); err != nil {
		return err
	}
	fmt.Printf("%s\n", n.trans.LocalAddr())
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// maybeRawFollower runs this program as a raw raft follower, and exits,
// when rawFollowerEnv says so.
func maybeRawFollower() {
	dir := os.Getenv(rawFollowerEnv)
	if dir == "" {
		return
	}
	if err := runRawFollower(dir, os.Getenv(rawFollowerEnv+"_ID")); err != nil {
		fmt.Fprintf(os.Stderr, "bench-controller: raw raft follower: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// rawFollower is a follower process.
type rawFollower struct {
	cmd   *exec.Cmd
	stdin io.Closer
}

// startRawFollower starts this program as a follower with its data in dir
// and returns it with its raft address.
func startRawFollower(ctx context.Context, dir, id string) (*rawFollower, raft.ServerAddress, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	// The variable makes main (or a test binary's TestMain) a follower.
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), rawFollowerEnv+"="+dir, rawFollowerEnv+"_ID="+id)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, "", err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	f := &rawFollower{cmd: cmd, stdin: in}
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		addr <- strings.TrimSpace(line)
		io.Copy(io.Discard, out)
	}()
	select {
	case a := <-addr:
		if a == "" {
			f.close()
			return nil, "", fmt.Errorf("raw raft follower %s ended before it listened", id)
		}
		return f, raft.ServerAddress(a), nil
	case <-ctx.Done():
		f.close()
		return nil, "", ctx.Err()
	case <-time.After(30 * time.Second):
		f.close()
		return nil, "", fmt.Errorf("raw raft follower %s did not listen within 30 s", id)
	}
}

// close ends the follower (its input closes; killed if still running 10 s
// later) and waits for it.
func (f *rawFollower) close() {
	f.stdin.Close()
	done := make(chan struct{})
	go func() { f.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		f.cmd.Process.Kill()
		<-done
	}
}

// rawCluster is the leader's node in this process and the followers'
// processes; the data of voter i is in dir/raw<i>.
type rawCluster struct {
	lead      *rawNode
	followers []*rawFollower
}

func (c *rawCluster) close() {
	if c.lead != nil {
		c.lead.close()
	}
	for _, f := range c.followers {
		f.close()
	}
}

// startRawRaft starts a raw raft cluster of n voters with its data under
// dir: raw1 in this process, bootstrapping, and the others as follower
// processes.
func startRawRaft(ctx context.Context, dir string, n int) (_ *rawCluster, err error) {
	c := &rawCluster{}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	var servers []raft.Server
	for i := 2; i <= n; i++ {
		id := fmt.Sprintf("raw%d", i)
		d := filepath.Join(dir, id)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		f, addr, err := startRawFollower(ctx, d, id)
		if err != nil {
			return nil, err
		}
		c.followers = append(c.followers, f)
		servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: addr, Suffrage: raft.Voter})
	}
	d := filepath.Join(dir, "raw1")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	if c.lead, err = openRawNode(d); err != nil {
		return nil, err
	}
	// Only raw1 knows the configuration, so only raw1 stands for election.
	servers = append([]raft.Server{{ID: "raw1", Address: c.lead.trans.LocalAddr(), Suffrage: raft.Voter}}, servers...)
	if err := c.lead.start(d, "raw1", servers); err != nil {
		return nil, err
	}
	return c, nil
}

// leader waits until raw1 leads and has committed a barrier (a majority
// has caught up).
func (c *rawCluster) leader(ctx context.Context) (*raft.Raft, error) {
	l := c.lead.r
	err := apitest.Poll(ctx, 30*time.Second, "raw raft's raw1 to lead", func() bool { return l.State() == raft.Leader })
	if err != nil {
		return nil, err
	}
	// One barrier so the first measured entry does not pay for startup.
	return l, l.Barrier(10 * time.Second).Error()
}

// rawLimit runs the raw-raft cluster at each of cfg's client counts for
// cfg.duration, committing size-byte entries, into res.
func rawLimit(ctx context.Context, dir string, cfg config, size int, res map[int]result) error {
	raw, err := startRawRaft(ctx, dir, 3)
	if err != nil {
		return err
	}
	defer raw.close()
	l, err := raw.leader(ctx)
	if err != nil {
		return err
	}
	for _, n := range cfg.levels {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if _, done := res[n]; done {
			continue // measured in alternation with the creates
		}
		r := runLoad(ctx, n, cfg.duration, rawOp(l, size))
		progress("raw raft, %d clients: %.0f commits/s, p50 %s, p99 %s, %d failed %s", n, r.perSec, ms(r.p50), ms(r.p99), r.failed, r.firstErr)
		res[n] = r
	}
	return nil
}

// rawOp commits one entry of size bytes per call on the leader.
func rawOp(l *raft.Raft, size int) func(ctx context.Context, client, seq int) error {
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i)
	}
	return func(ctx context.Context, client, seq int) error {
		return l.Apply(data, 10*time.Second).Error()
	}
}

// createEntrySize reads the raft log a stopped controller left in dataDir
// and returns the median size of the last (up to) 1000 command entries at
// or below index hi and above lo: the create commands of the load phases.
func createEntrySize(dataDir string, lo, hi uint64) (int, int, error) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	logs, err := raftstore.OpenWithOptions(filepath.Join(dataDir, "raft"), raftstore.Options{Logger: quiet})
	if err != nil {
		return 0, 0, err
	}
	defer logs.Close()
	first, err := logs.FirstIndex()
	if err != nil {
		return 0, 0, err
	}
	var sizes []int
	for i := hi; i > lo && i >= first && len(sizes) < 1000; i-- {
		var l raft.Log
		if err := logs.GetLog(i, &l); err != nil {
			if errors.Is(err, raft.ErrLogNotFound) {
				continue
			}
			return 0, 0, err
		}
		if l.Type == raft.LogCommand {
			sizes = append(sizes, len(l.Data))
		}
	}
	if len(sizes) == 0 {
		return 0, 0, fmt.Errorf("no command entries in the log between index %d and %d", lo, hi)
	}
	slices.Sort(sizes)
	return sizes[len(sizes)/2], len(sizes), nil
}
