package raftnode

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/yunchi/yunchi/controller/raftstore"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// readCounting is a log store that counts raft's reads of log entries.
type readCounting struct {
	raftstore.Store
	reads *atomic.Int64
}

func (s readCounting) GetLog(index uint64, l *raft.Log) error {
	s.reads.Add(1)
	return s.Store.GetLog(index, l)
}

func (readCounting) IsMonotonic() bool { return true }

// TestWritePathDoesNotReadTheLogFromDisk: once a cluster runs, raft sends
// the entries it has just written to the followers, and the followers
// apply them, without reading them back from the log store: every read
// costs a disk read on the write path, which under load is what the
// leader does most.
func TestWritePathDoesNotReadTheLogFromDisk(t *testing.T) {
	var reads atomic.Int64
	orig := openLogs
	openLogs = func(dir string, o raftstore.Options) (raftstore.Store, error) {
		s, err := orig(dir, o)
		if err != nil {
			return nil, err
		}
		return readCounting{Store: s, reads: &reads}, nil
	}
	t.Cleanup(func() { openLogs = orig })

	fast := func(id string, trans raft.Transport, boot bool) Config {
		return Config{ID: id, DataDir: t.TempDir(), Bootstrap: boot, Transport: trans,
			HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond, LeaderLeaseTimeout: 250 * time.Millisecond}
	}
	a1, t1 := raft.NewInmemTransport("n1:7000")
	a2, t2 := raft.NewInmemTransport("n2:7000")
	t1.Connect(a2, t2)
	t2.Connect(a1, t1)
	s1, s2 := state.New(), state.New()
	n1, err := Open(fast("n1", t1, true), s1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n1.Shutdown() })
	n2, err := Open(fast("n2", t2, false), s2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n2.Shutdown() })
	waitLeads(t, n1)
	deadline := time.Now().Add(10 * time.Second)
	if err := n1.Raft.AddVoter("n2", a2, 0, 10*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n1.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	// Until n2 has the log so far: it starts from nothing, so catching up
	// reads the bootstrap entries; that is not the write path.
	for n2.Raft.AppliedIndex() < n1.Raft.AppliedIndex() {
		if time.Now().After(deadline.Add(20 * time.Second)) {
			t.Fatalf("follower applied %d of %d", n2.Raft.AppliedIndex(), n1.Raft.AppliedIndex())
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := reads.Load()

	const hosts = 200
	var wg sync.WaitGroup
	errs := make(chan error, hosts)
	for i := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("h%03d", i)
			_, err := n1.Apply(ctx, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
				Id: id, Hostname: id, Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 1 << 34, DiskBytes: 1 << 40},
			}}}})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// The follower has applied every entry once its state holds every
	// host (raft's applied index moves before its FSM runs).
	for i := range hosts {
		for {
			if _, ok := s2.Host(fmt.Sprintf("h%03d", i)); ok {
				break
			}
			if time.Now().After(deadline.Add(50 * time.Second)) {
				t.Fatalf("the follower lacks host %d", i)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if n := reads.Load() - before; n != 0 {
		t.Fatalf("raft read %d log entries back from the store while replicating and applying %d new ones", n, hosts)
	}
}
