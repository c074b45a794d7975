package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// simHosts are light simulated agents speaking the real AgentService
// protocol: RegisterHost, then Heartbeat every interval (with jitter),
// registering again when a controller no longer knows the host. They take
// no assignments: the VMs they are given stay pending, which is enough to
// measure creates.
type simHosts struct {
	conns    []*grpc.ClientConn
	clients  []yunchiv1.AgentServiceClient
	beats    atomic.Int64
	failures atomic.Int64
	wg       sync.WaitGroup
}

// dialAll opens k connections to each controller address; calls rotate
// over them as agents spread over the controllers.
func dialAll(addrs []string, k int) ([]*grpc.ClientConn, error) {
	var conns []*grpc.ClientConn
	for i := 0; i < k; i++ {
		for _, a := range addrs {
			cc, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return nil, err
			}
			conns = append(conns, cc)
		}
	}
	return conns, nil
}

func newSimHosts(addrs []string, connsPerController int) (*simHosts, error) {
	conns, err := dialAll(addrs, connsPerController)
	if err != nil {
		return nil, err
	}
	s := &simHosts{conns: conns}
	for _, cc := range conns {
		s.clients = append(s.clients, yunchiv1.NewAgentServiceClient(cc))
	}
	return s, nil
}

func (s *simHosts) close() {
	s.wg.Wait()
	for _, c := range s.conns {
		c.Close()
	}
}

func hostFacts(id string, vcpus, mem, disk int64) *yunchiv1.HostFacts {
	return &yunchiv1.HostFacts{
		Id: id, Hostname: id, Center: "a1", Site: "bench", Rack: "r1",
		Capacity: &yunchiv1.Resources{Vcpus: vcpus, MemoryBytes: mem, DiskBytes: disk},
		CpuModel: "bench", AgentVersion: "bench", LibvirtUri: "test:///bench",
	}
}

// register registers one host, trying each connection in turn from k,
// until ctx ends.
func (s *simHosts) register(ctx context.Context, k int, f *yunchiv1.HostFacts) error {
	for attempt := 0; ; attempt++ {
		c := s.clients[(k+attempt)%len(s.clients)]
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.RegisterHost(cctx, &yunchiv1.RegisterHostRequest{Facts: f})
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt > 50 {
			return fmt.Errorf("register host %s: %w", f.Id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// run registers the hosts (at most par registrations at once) and then
// heartbeats each every interval, the first after a random part of it,
// until ctx ends. registered is closed once all are registered (or ctx
// ended); errc gets the first registration error.
func (s *simHosts) run(ctx context.Context, facts []*yunchiv1.HostFacts, interval time.Duration, par int, registered chan<- struct{}, errc chan<- error) {
	sem := make(chan struct{}, par)
	var regWG sync.WaitGroup
	var once sync.Once
	for i, f := range facts {
		regWG.Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sem <- struct{}{}
			err := s.register(ctx, i, f)
			<-sem
			regWG.Done()
			if err != nil {
				if ctx.Err() == nil {
					once.Do(func() { errc <- err })
				}
				return
			}
			t := time.NewTimer(rand.N(interval))
			defer t.Stop()
			for attempt := i; ; attempt++ {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				t.Reset(interval)
				c := s.clients[attempt%len(s.clients)]
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				r, err := c.Heartbeat(cctx, &yunchiv1.HeartbeatRequest{HostId: f.Id, Stats: &yunchiv1.HostStats{}})
				cancel()
				s.beats.Add(1)
				if err != nil {
					s.failures.Add(1)
					continue
				}
				if !r.Known {
					s.register(ctx, attempt, f)
				}
			}
		}()
	}
	go func() { regWG.Wait(); close(registered) }()
}
