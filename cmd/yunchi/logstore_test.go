package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// TestClusterStatusShowsLogStore: `cluster status` says when the answering
// controller cannot write its raft log, since when and why, and that it
// recovered afterwards.
func TestClusterStatusShowsLogStore(t *testing.T) {
	now := time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC)
	p := &printer{now: func() time.Time { return now }}
	for _, tc := range []struct {
		st   *yunchiv1.ClusterStatus
		want []string
	}{
		{&yunchiv1.ClusterStatus{NodeId: "b1"}, []string{"Raft log:\tok\n"}},
		{&yunchiv1.ClusterStatus{NodeId: "b1", LogStoreWriteFailures: 3}, []string{"Raft log:\tok (3 failed writes since start, recovered)"}},
		{&yunchiv1.ClusterStatus{
			NodeId: "b1", LogStoreWriteFailures: 1,
			LogStoreError:        "write /data/raft/00001.wal: no space left on device",
			LogStoreFailingSince: timestamppb.New(now.Add(-90 * time.Second)),
		}, []string{"Raft log:\tCANNOT WRITE since 2026-11-30T04:58:30Z (1m ago): write /data/raft/00001.wal: no space left on device", "state may be stale"}},
	} {
		var b bytes.Buffer
		p.clusterStatus(tc.st)(&b)
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("cluster status output lacks %q:\n%s", w, b.String())
			}
		}
	}
}
