package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// result is one load level: successes per second and latency percentiles.
type result struct {
	ok, failed int
	perSec     float64
	p50, p99   time.Duration
	firstErr   string
	// lat are the successful calls' latencies and el the level's length
	// (merge pools rounds of one level).
	lat []time.Duration
	el  time.Duration
}

// merge pools rounds of one level into one result, with the rate and
// percentiles of them all.
func merge(rs []result) result {
	var m result
	for _, r := range rs {
		m.ok += r.ok
		m.failed += r.failed
		m.lat = append(m.lat, r.lat...)
		m.el += r.el
		if m.firstErr == "" {
			m.firstErr = r.firstErr
		}
	}
	if m.el > 0 {
		m.perSec = float64(m.ok) / m.el.Seconds()
	}
	m.p50, m.p99 = percentile(m.lat, 0.50), percentile(m.lat, 0.99)
	return m
}

// runLoad runs clients goroutines calling op for d; op gets the client and
// sequence number and reports an error. Every goroutine ends at the
// deadline (each call carries a timeout).
func runLoad(ctx context.Context, clients int, d time.Duration, op func(ctx context.Context, client, seq int) error) result {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for seq := 0; ctx.Err() == nil; seq++ {
				t0 := time.Now()
				cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := op(cctx, c, seq)
				ccancel()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	r := result{ok: len(lat), failed: int(failed.Load()), lat: lat, el: el}
	if e, ok := firstErr.Load().(string); ok {
		r.firstErr = e
	}
	return merge([]result{r}) // the rate and percentiles
}

// percentile is the q-quantile of ds (nearest rank), 0 when empty.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// vmSize is what every benchmark VM asks for: 1 vCPU and a little memory
// and disk, so host capacity never runs out.
const vmMemory, vmDisk = "256MiB", "1GiB"

// grpcCreate returns an op creating one VM per call over conns.
func grpcCreate(conns []*grpc.ClientConn, prefix string) func(ctx context.Context, client, seq int) error {
	var cs []yunchiv1.VMServiceClient
	for _, cc := range conns {
		cs = append(cs, yunchiv1.NewVMServiceClient(cc))
	}
	return func(ctx context.Context, client, seq int) error {
		_, err := cs[client%len(cs)].CreateVM(ctx, &yunchiv1.CreateVMRequest{
			Name: fmt.Sprintf("%s-%d-%d", prefix, client, seq), Vcpus: 1, Memory: vmMemory, Disk: vmDisk,
		})
		return err
	}
}

// restCreate returns an op creating one VM per call with POST /v1/vms,
// authenticated with tok (the header value made once).
func restCreate(hc *http.Client, addr, tok, prefix string) func(ctx context.Context, client, seq int) error {
	url := "http://" + addr + "/v1/vms"
	// The body json.Marshal makes of {name, vcpus, memory, disk} (keys
	// sorted; names need no escaping), put together without reflection so
	// that the load generator, on the same cores, takes less from the
	// controllers. The controller parses it all the same.
	head, tail := `{"disk":"`+vmDisk+`","memory":"`+vmMemory+`","name":"`+prefix+"-", `","vcpus":1}`
	authz := "Bearer " + tok
	return func(ctx context.Context, client, seq int) error {
		body := make([]byte, 0, len(head)+len(tail)+24)
		body = append(body, head...)
		body = strconv.AppendInt(body, int64(client), 10)
		body = append(body, '-')
		body = strconv.AppendInt(body, int64(seq), 10)
		body = append(body, tail...)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", authz)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("POST /v1/vms: %d %s", resp.StatusCode, bytes.TrimSpace(b))
		}
		return nil
	}
}

func restClient(clients int) *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConns: clients, MaxIdleConnsPerHost: clients, IdleConnTimeout: 30 * time.Second}}
}
