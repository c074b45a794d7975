package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/yunchi/yunchi/internal/apitest"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/yunchi/yunchi/controller/raftstore"
)

// The physical limit: hashicorp/raft alone, 3 voters on loopback in this
// process, each with the controllers' log store (raft-wal through
// controller/raftstore) and TCP transport, committing entries of the size
// a create command has. The FSM only counts: no Yunchi code decides or
// applies anything.
type countFSM struct{ n uint64 }

func (f *countFSM) Apply(*raft.Log) any { f.n++; return nil }
func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) {
	return nopSnap{}, nil
}
func (f *countFSM) Restore(rc io.ReadCloser) error { return rc.Close() }

type nopSnap struct{}

func (nopSnap) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (nopSnap) Release()                             {}

type rawNode struct {
	r     *raft.Raft
	logs  raftstore.Store
	trans *raft.NetworkTransport
}

type rawCluster struct{ nodes []*rawNode }

func (c *rawCluster) close() {
	for _, n := range c.nodes {
		if n.r != nil {
			n.r.Shutdown().Error()
		}
		n.trans.Close()
		n.logs.Close()
	}
}

func startRawRaft(ctx context.Context, dir string, n int) (*rawCluster, error) {
	hl := hclog.New(&hclog.LoggerOptions{Name: "rawraft", Level: hclog.Error, Output: os.Stderr})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := &rawCluster{}
	var servers []raft.Server
	for i := 0; i < n; i++ {
		d := filepath.Join(dir, fmt.Sprintf("raw%d", i+1))
		logs, err := raftstore.OpenWithOptions(filepath.Join(d, "raft"), raftstore.Options{Logger: quiet})
		if err != nil {
			c.close()
			return nil, err
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			logs.Close()
			c.close()
			return nil, err
		}
		addr := l.Addr().String()
		l.Close()
		tcpAddr, _ := net.ResolveTCPAddr("tcp", addr)
		trans, err := raft.NewTCPTransportWithLogger(addr, tcpAddr, 3, 10*time.Second, hl)
		if err != nil {
			logs.Close()
			c.close()
			return nil, err
		}
		c.nodes = append(c.nodes, &rawNode{logs: logs, trans: trans})
		servers = append(servers, raft.Server{ID: raft.ServerID(fmt.Sprintf("raw%d", i+1)), Address: trans.LocalAddr(), Suffrage: raft.Voter})
	}
	for i, nd := range c.nodes {
		rc := raft.DefaultConfig()
		rc.LocalID = servers[i].ID
		rc.Logger = hl
		snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(dir, fmt.Sprintf("raw%d", i+1)), 2, hl)
		if err != nil {
			c.close()
			return nil, err
		}
		if i == 0 {
			if err := raft.BootstrapCluster(rc, nd.logs, nd.logs, snaps, nd.trans, raft.Configuration{Servers: servers}); err != nil {
				c.close()
				return nil, err
			}
		}
		r, err := raft.NewRaft(rc, &countFSM{}, nd.logs, nd.logs, snaps, nd.trans)
		if err != nil {
			c.close()
			return nil, err
		}
		nd.r = r
	}
	return c, nil
}

// leader waits for a leader with every voter caught up.
func (c *rawCluster) leader(ctx context.Context) (*raft.Raft, error) {
	var l *raft.Raft
	err := apitest.Poll(ctx, 30*time.Second, "a raw raft leader", func() bool {
		for _, n := range c.nodes {
			if n.r.State() == raft.Leader {
				l = n.r
				return true
			}
		}
		return false
	})
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
