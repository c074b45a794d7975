package api

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/yunchi/yunchi/controller/placement"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// benchPlacer places every VM on host h1 at once, so that a benchmark
// measures the API layers and nothing of placement or raft.
type benchPlacer struct{}

func (benchPlacer) Place(_ context.Context, sp placement.Spec) ([]*statev1.VMRecord, []placement.Decision, error) {
	return []*statev1.VMRecord{{Id: "4b26353a-6e99-4ded-b03d-fce6bf82db77", Name: sp.Names[0], Project: sp.Project, Vcpus: int32(sp.Resources.VCPUs),
		MemoryBytes: sp.Resources.MemoryBytes, DiskBytes: sp.Resources.DiskBytes, Center: "a1", HostId: "h1", Desired: sp.Desired}}, nil, nil
}

func (benchPlacer) Decide(placement.Spec) ([]placement.Decision, error) { return nil, nil }

// BenchmarkRESTCreateVM is what the REST API adds to a create on the
// leader, without the HTTP connection (net/http's) and without placement
// and raft (a placer that answers at once): the guard, grpc-gateway, the
// JSON codec, the in-process call through the interceptors, the response.
//
//	go test ./controller/api/ -run '^$' -bench RESTCreateVM -benchmem
func BenchmarkRESTCreateVM(b *testing.B) {
	st := state.New()
	p := &fakeProposer{store: st, leader: "c1", self: "c1"}
	m := &fakeMembership{conf: voters("c1", "c2", "c3"), stats: map[string]string{"state": "Leader"}}
	s := NewServer(p, m, st, nil, nil, Self{ID: "c1", APIAddress: "c1:8000"}, slog.New(slog.DiscardHandler))
	b.Cleanup(s.Close)
	s.placer = benchPlacer{}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	mt := NewMetrics(s)
	gs := s.NewGRPCServer(mt)
	b.Cleanup(gs.Stop)
	h, err := s.NewHTTPHandler(ctx, mt, HTTPOptions{})
	if err != nil {
		b.Fatal(err)
	}
	head, tail := []byte(`{"disk":"1GiB","memory":"256MiB","name":"r-`), []byte(`","vcpus":1}`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		body := append(strconv.AppendInt(append([]byte(nil), head...), int64(i), 10), tail...)
		req := httptest.NewRequest(http.MethodPost, "/v1/vms", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("POST /v1/vms: %d %s", w.Code, w.Body)
		}
	}
}
