package raftstore

// Measurements behind the backend choice (docs/raft-store.md):
//
//	go test -run '^$' -bench . -benchtime 2s ./controller/raftstore/
//
// Both candidates are measured in the same run on the same disk. The stores
// run exactly as raft would use them: every StoreLogs is durable (fsync)
// before it returns, which is what a commit waits for. Set RAFTSTORE_BENCH_DIR
// to measure on another disk (the default is the test's temporary directory).

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// benchStore is what both candidates offer (Store without Health, which
// only the chosen one has).
type benchStore interface {
	raft.LogStore
	raft.StableStore
	io.Closer
}

type backend struct {
	name string
	open func(dir string) (benchStore, error)
}

var backends = []backend{
	{"wal", func(dir string) (benchStore, error) { return Open(dir) }},
	{"boltdb", openBolt},
}

// openBolt opens the candidate that lost (raft-boltdb/v2); it lives here only
// so the comparison can be rerun.
func openBolt(dir string) (benchStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
}

// Command sizes: ~200 B is a typical encoded command (create a VM, record a
// placement, a host heartbeat); ~2 KiB is a large one (a host registering its
// inventory, a batch of placements).
var sizes = []struct {
	name  string
	bytes int
}{
	{"200B", 200},
	{"2KiB", 2048},
}

// Batches: raft hands the leader's log one StoreLogs per batch of proposals;
// 1 is a lone request, 64 is raft's default MaxAppendEntries (a busy leader).
var batches = []int{1, 64}

func benchDir(b *testing.B) string {
	b.Helper()
	root := os.Getenv("RAFTSTORE_BENCH_DIR")
	if root == "" {
		return b.TempDir()
	}
	dir, err := os.MkdirTemp(root, "raftstore-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func openBench(b *testing.B, be backend) benchStore {
	b.Helper()
	s, err := be.open(filepath.Join(benchDir(b), be.name))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// payloads returns n command bodies of the given size. Encoded protobuf barely
// compresses, so random bytes stand in for it.
func payloads(n, size int) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([][]byte, n)
	for i := range out {
		p := make([]byte, size)
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		out[i] = p
	}
	return out
}

// batchOf returns batch entries to be reused by every StoreLogs call, with
// next setting their indexes to follow the previous call's.
func batchOf(batch, size int) (logs []*raft.Log, next func(first uint64)) {
	data := payloads(batch, size)
	now := time.Now()
	logs = make([]*raft.Log, batch)
	for i := range logs {
		logs[i] = &raft.Log{Term: 1, Type: raft.LogCommand, Data: data[i], AppendedAt: now}
	}
	return logs, func(first uint64) {
		for i, l := range logs {
			l.Index = first + uint64(i)
		}
	}
}

func BenchmarkStoreLogs(b *testing.B) {
	for _, be := range backends {
		for _, sz := range sizes {
			for _, batch := range batches {
				b.Run(fmt.Sprintf("backend=%s/size=%s/batch=%d", be.name, sz.name, batch), func(b *testing.B) {
					s := openBench(b, be)
					logs, setIndex := batchOf(batch, sz.bytes)
					b.SetBytes(int64(batch * sz.bytes))
					next := uint64(1)
					calls := 0
					for b.Loop() {
						setIndex(next)
						if err := s.StoreLogs(logs); err != nil {
							b.Fatal(err)
						}
						next += uint64(batch)
						calls++
					}
					sec := b.Elapsed().Seconds()
					b.ReportMetric(float64(calls*batch)/sec, "entries/s")
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(calls*batch), "ns/entry")
				})
			}
		}
	}
}

// fillEntries is how many entries GetLog reads from: about raft's default
// TrailingLogs (10240), the log a node keeps behind its last snapshot.
const fillEntries = 10240

func BenchmarkGetLog(b *testing.B) {
	for _, be := range backends {
		for _, sz := range sizes {
			b.Run(fmt.Sprintf("backend=%s/size=%s", be.name, sz.name), func(b *testing.B) {
				s := openBench(b, be)
				logs, setIndex := batchOf(64, sz.bytes)
				for first := uint64(1); first <= fillEntries; first += 64 {
					setIndex(first)
					if err := s.StoreLogs(logs); err != nil {
						b.Fatal(err)
					}
				}
				r := rand.New(rand.NewPCG(3, 4))
				var l raft.Log
				reads := 0
				b.SetBytes(int64(sz.bytes))
				for b.Loop() {
					idx := 1 + r.Uint64N(fillEntries)
					if err := s.GetLog(idx, &l); err != nil {
						b.Fatal(err)
					}
					if l.Index != idx || len(l.Data) != sz.bytes {
						b.Fatalf("GetLog(%d) = index %d, %d bytes", idx, l.Index, len(l.Data))
					}
					reads++
				}
				b.ReportMetric(float64(reads)/b.Elapsed().Seconds(), "entries/s")
			})
		}
	}
}

// BenchmarkFsyncFloor is the disk's own price for one durable append, the
// floor under any store's StoreLogs on this machine: a write into a
// preallocated file and an fsync, the way raft-wal writes its segments. (An
// append that grows the file costs more: the fsync must also commit the new
// file size to the filesystem journal.)
func BenchmarkFsyncFloor(b *testing.B) {
	const fileSize = 64 << 20
	for _, sz := range sizes {
		b.Run("size="+sz.name, func(b *testing.B) {
			f, err := os.Create(filepath.Join(benchDir(b), "fsync"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Write(make([]byte, fileSize)); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			p := payloads(1, sz.bytes)[0]
			off := int64(0)
			b.SetBytes(int64(sz.bytes))
			for b.Loop() {
				if off+int64(len(p)) > fileSize {
					off = 0
				}
				if _, err := f.WriteAt(p, off); err != nil {
					b.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				off += int64(len(p))
			}
		})
	}
}

// BenchmarkTruncateFootprint measures disk use before and after raft's log
// compaction: write ~200 MiB of 2 KiB commands, then DeleteRange everything
// but the last TrailingLogs entries, as raft does after a snapshot. One op is
// the whole cycle on a fresh store; the figures are the MiB metrics.
func BenchmarkTruncateFootprint(b *testing.B) {
	const (
		entries  = 100_000
		trailing = 10240
		batch    = 64
	)
	for _, be := range backends {
		b.Run("backend="+be.name, func(b *testing.B) {
			var before, after int64
			for i := 0; i < b.N; i++ {
				dir := filepath.Join(benchDir(b), be.name)
				s, err := be.open(dir)
				if err != nil {
					b.Fatal(err)
				}
				logs, setIndex := batchOf(batch, 2048)
				for first := uint64(1); first <= entries; first += batch {
					setIndex(first)
					if err := s.StoreLogs(logs); err != nil {
						b.Fatal(err)
					}
				}
				last, err := s.LastIndex()
				if err != nil {
					b.Fatal(err)
				}
				before = dirBytes(b, dir)
				if err := s.DeleteRange(1, last-trailing); err != nil {
					b.Fatal(err)
				}
				// raft-wal deletes sealed segments in the background.
				time.Sleep(100 * time.Millisecond)
				after = dirBytes(b, dir)
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
				os.RemoveAll(dir)
			}
			b.ReportMetric(float64(before)/(1<<20), "MiB-written")
			b.ReportMetric(float64(after)/(1<<20), "MiB-after-truncate")
		})
	}
}

// dirBytes is the size of the files in dir (their length, preallocation
// included).
func dirBytes(b *testing.B, dir string) int64 {
	b.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n += fi.Size()
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}
