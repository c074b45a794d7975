package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets this test binary serve as a raw raft follower process, as
// bench-controller does.
func TestMain(m *testing.M) {
	maybeRawFollower()
	os.Exit(m.Run())
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // 1..100 ms, given out of order
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	if got := percentile(ds, 0.5); got != 50*time.Millisecond {
		t.Errorf("p50 of 1..100 ms = %s, want 50ms", got)
	}
	if got := percentile(ds, 0.99); got != 99*time.Millisecond {
		t.Errorf("p99 of 1..100 ms = %s, want 99ms", got)
	}
	if got := percentile(nil, 0.99); got != 0 {
		t.Errorf("p99 of nothing = %s, want 0", got)
	}
	if ds[0] != 100*time.Millisecond {
		t.Errorf("percentile reordered its input")
	}
}

// The raw-raft half of the harness on a tiny run: the three nodes commit,
// and createEntrySize reads back, from a node's log, the size committed.
func TestRawRaftSmoke(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	raw, err := startRawRaft(ctx, dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			raw.close()
		}
	})
	l, err := raw.leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const size = 123
	r := runLoad(ctx, 2, 300*time.Millisecond, rawOp(l, size))
	if r.ok == 0 || r.failed != 0 {
		t.Fatalf("raw raft committed %d entries, %d failed (%s)", r.ok, r.failed, r.firstErr)
	}
	if r.p50 <= 0 || r.p99 < r.p50 {
		t.Errorf("latencies p50 %s p99 %s", r.p50, r.p99)
	}
	last := l.LastIndex()

	// The followers are processes of their own that take part: with one
	// gone the leader still commits, with both gone it cannot, and each
	// ends by itself, without error, once its input is closed.
	if len(raw.followers) != 2 {
		t.Fatalf("%d follower processes, want 2", len(raw.followers))
	}
	raw.followers[0].close()
	if err := l.Apply(make([]byte, size), 10*time.Second).Error(); err != nil {
		t.Fatalf("commit with one follower left: %v", err)
	}
	raw.followers[1].close()
	if err := l.Apply(make([]byte, size), 10*time.Second).Error(); err == nil {
		t.Fatal("committed with both followers gone")
	}
	for i, f := range raw.followers {
		if st := f.cmd.ProcessState; st == nil || !st.Success() {
			t.Errorf("follower %d ended with %v", i+2, st)
		}
	}
	raw.close()
	closed = true
	got, n, err := createEntrySize(filepath.Join(dir, "raw1"), 0, last)
	if err != nil {
		t.Fatal(err)
	}
	if got != size || n != min(r.ok, 1000) {
		t.Errorf("entry size %d from %d entries, want %d from %d", got, n, size, min(r.ok, 1000))
	}
}

func TestMeasureStateSmoke(t *testing.T) {
	f, err := measureState(1000, 10)
	if err != nil {
		t.Fatal(err)
	}
	if f.heapPerVM <= 0 || f.snapshotBytes <= 0 {
		t.Errorf("heap per VM %.0f, snapshot %d bytes: want both positive", f.heapPerVM, f.snapshotBytes)
	}
}

func TestMetric(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# HELP yunchi_vms VMs by phase.\n# TYPE yunchi_vms gauge\n"+
			"yunchi_vms{phase=\"pending\"} 3\nyunchi_vms{phase=\"running\"} 4\nyunchi_vms_other 100\n"+
			"go_memstats_heap_alloc_bytes 1.5e+06\n")
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	if v, err := metric(ctx, addr, "yunchi_vms"); err != nil || v != 7 {
		t.Errorf("yunchi_vms = %v, %v; want 7 (the sum of its series, not yunchi_vms_other)", v, err)
	}
	if v, err := metric(ctx, addr, "go_memstats_heap_alloc_bytes"); err != nil || v != 1.5e6 {
		t.Errorf("heap = %v, %v; want 1.5e6", v, err)
	}
	if _, err := metric(ctx, addr, "absent"); err == nil {
		t.Error("a missing metric gave no error")
	}
}

// merge pools rounds: counts add up, the rate is over the rounds' total
// time and the percentiles are of every latency together.
func TestMergeRounds(t *testing.T) {
	ms := func(v ...int) (out []time.Duration) {
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	a := result{ok: 3, failed: 1, lat: ms(1, 2, 3), el: time.Second, firstErr: "boom"}
	b := result{ok: 2, lat: ms(10, 20), el: time.Second}
	m := merge([]result{a, b})
	if m.ok != 5 || m.failed != 1 || m.perSec != 2.5 || m.firstErr != "boom" {
		t.Fatalf("merged %+v", m)
	}
	if m.p50 != 3*time.Millisecond || m.p99 != 20*time.Millisecond {
		t.Fatalf("merged p50 %s p99 %s, want 3ms and 20ms", m.p50, m.p99)
	}
	if e := merge(nil); e.ok != 0 || e.perSec != 0 || e.p50 != 0 {
		t.Fatalf("merge of nothing: %+v", e)
	}
}
