package controller

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// BenchmarkCreateLoad is the controller's write path under load: 3
// in-process controllers (raft logs on disk), 45 hosts, and 1, 16 or 256
// concurrent gRPC clients on the leader each creating 1-vCPU VMs one after
// another. It reports creates/s and the p50 and p99 latency of one create.
//
//	go test ./controller/ -run '^$' -bench CreateLoad -benchtime 5s
func BenchmarkCreateLoad(b *testing.B) { benchmarkCreateLoad(b, false) }

// BenchmarkCreateLoadREST is BenchmarkCreateLoad through the REST API
// (POST /v1/vms with a JSON body, one keep-alive HTTP/1.1 connection per
// client).
//
//	go test ./controller/ -run '^$' -bench CreateLoadREST -benchtime 5s
func BenchmarkCreateLoadREST(b *testing.B) { benchmarkCreateLoad(b, true) }

func benchmarkCreateLoad(b *testing.B, rest bool) {
	c := newInmemClusterTTL(b, 0)
	// Room for every create of a long or repeated run (-benchtime 5s,
	// -count): 45 hosts of 1,000 GiB held 45,000 of these 1 GiB VMs, and a
	// second round of 30,000 creates ran out of disk half-way.
	registerHostsDisk(b, c.members[0].ctl.Addr(), 45, 4096, 16384*gib, 1<<20*gib)
	l := c.leader()
	if l == nil {
		b.Fatal("no leader")
	}
	conns := make([]*grpc.ClientConn, 8)
	for i := range conns {
		conns[i] = dial(b, l.ctl.Addr())
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}}
	b.Cleanup(hc.CloseIdleConnections)
	var seq atomic.Int64
	for _, clients := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			var (
				next   atomic.Int64
				mu     sync.Mutex
				lats   []time.Duration
				failed atomic.Int64
				first  atomic.Value // the first failure's error text
				wg     sync.WaitGroup
			)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < clients; i++ {
				vc := yunchiv1.NewVMServiceClient(conns[i%len(conns)])
				create := func(ctx context.Context, name string) error {
					_, err := vc.CreateVM(ctx, &yunchiv1.CreateVMRequest{Name: name, Vcpus: 1, Memory: "256MiB", Disk: "1GiB"})
					return err
				}
				if rest {
					create = func(ctx context.Context, name string) error {
						body := fmt.Sprintf(`{"name":%q,"vcpus":1,"memory":"256MiB","disk":"1GiB"}`, name)
						req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+l.ctl.Addr()+"/v1/vms", bytes.NewReader([]byte(body)))
						if err != nil {
							return err
						}
						req.Header.Set("Content-Type", "application/json")
						resp, err := hc.Do(req)
						if err != nil {
							return err
						}
						defer resp.Body.Close()
						b, _ := io.ReadAll(resp.Body)
						if resp.StatusCode != http.StatusOK {
							return fmt.Errorf("POST /v1/vms: %d %s", resp.StatusCode, b)
						}
						return nil
					}
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					var mine []time.Duration
					for next.Add(1) <= int64(b.N) {
						name := fmt.Sprintf("load-%d", seq.Add(1))
						ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
						t0 := time.Now()
						err := create(ctx, name)
						d := time.Since(t0)
						cancel()
						if err != nil {
							failed.Add(1)
							first.CompareAndSwap(nil, err.Error())
							continue
						}
						mine = append(mine, d)
					}
					mu.Lock()
					lats = append(lats, mine...)
					mu.Unlock()
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d of %d creates failed; the first: %v", n, b.N, first.Load())
			}
			slices.Sort(lats)
			pct := func(p float64) float64 {
				return float64(lats[min(len(lats)-1, int(float64(len(lats))*p))].Microseconds()) / 1000
			}
			b.ReportMetric(float64(len(lats))/elapsed.Seconds(), "creates/s")
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
		})
	}
}
