package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// metric reads a gauge from a controller's /metrics: the sum of its
// series (one for an unlabelled gauge).
func metric(ctx context.Context, addr, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sum, found := 0.0, false
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexAny(rest, "} ")+1:])
		if rest[0] == ' ' {
			f = strings.Fields(rest)
		}
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %s: %w", addr, line, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		return 0, fmt.Errorf("%s has no %s", addr, name)
	}
	return sum, sc.Err()
}

// createMany creates n VMs on the leader through CreateVMs, 100 per call,
// par calls at once, as the holder of tok, and returns how many were
// created.
func createMany(ctx context.Context, addr, tok string, n, par int) (int, error) {
	conns, err := dialAll([]string{addr}, 1, tok)
	if err != nil {
		return 0, err
	}
	defer conns[0].Close()
	c := yunchiv1.NewVMServiceClient(conns[0])
	var next, created atomic.Int64
	var once sync.Once
	var firstErr error
	var wg sync.WaitGroup
	for w := 0; w < par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := next.Add(1) - 1
				if int(k)*100 >= n || ctx.Err() != nil {
					return
				}
				count := min(100, n-int(k)*100)
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				r, err := c.CreateVMs(cctx, &yunchiv1.CreateVMRequest{
					Name: fmt.Sprintf("mem%d", k), Vcpus: 1, Memory: vmMemory, Disk: vmDisk, Count: int32(count),
				})
				cancel()
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("CreateVMs: %w", err) })
					return
				}
				created.Add(int64(len(r.Vms)))
			}
		}()
	}
	wg.Wait()
	return int(created.Load()), firstErr
}
