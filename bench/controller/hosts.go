package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// simHosts are light simulated agents speaking the real AgentService
// protocol: RegisterHost, then Heartbeat every interval (with jitter),
// registering again when a controller no longer knows the host. They take
// no assignments: the VMs they are given stay pending, which is enough to
// measure creates. Each host sends its own host token (made beforehand by
// hostTokens) as a real agent does.
type simHosts struct {
	conns    []*grpc.ClientConn
	clients  []yunchiv1.AgentServiceClient
	beats    atomic.Int64
	failures atomic.Int64
	wg       sync.WaitGroup
}

// dialAll opens k connections to each controller address; calls rotate
// over them as agents spread over the controllers. Every call on them
// sends tok ("" none: the simulated hosts send their own per call).
func dialAll(addrs []string, k int, tok string) ([]*grpc.ClientConn, error) {
	var conns []*grpc.ClientConn
	for i := 0; i < k; i++ {
		for _, a := range addrs {
			cc, err := apitest.DialToken(a, tok)
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
	conns, err := dialAll(addrs, connsPerController, "")
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

// hostTokens makes a host token for each of facts through the
// TokenService at addrs, as the security administrator (token secadmin),
// par at once, with progress on stderr. It returns each host's outgoing
// metadata (authorization: Bearer <its token>), made once so that a
// heartbeat costs no more than a context.
func hostTokens(ctx context.Context, addrs []string, secadmin string, facts []*yunchiv1.HostFacts, par int) ([]metadata.MD, error) {
	conns, err := dialAll(addrs, 1, secadmin)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var clients []yunchiv1.TokenServiceClient
	for _, cc := range conns {
		clients = append(clients, yunchiv1.NewTokenServiceClient(cc))
	}
	mds := make([]metadata.MD, len(facts))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next, done atomic.Int64
		once       sync.Once
		firstErr   error
		wg         sync.WaitGroup
	)
	step := max(int64(len(facts))/10, 1)
	for w := 0; w < min(par, len(facts)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(facts) || ctx.Err() != nil {
					return
				}
				tok, err := createHostToken(ctx, clients, i, facts[i].Id)
				if err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
				mds[i] = metadata.Pairs("authorization", "Bearer "+tok)
				if d := done.Add(1); d%step == 0 || int(d) == len(facts) {
					progress("  host tokens: %d/%d", d, len(facts))
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return mds, ctx.Err()
}

// createHostToken makes one host token (no expiry), trying each
// connection in turn from k. A retry after a timeout may leave an unused
// token behind: harmless here.
func createHostToken(ctx context.Context, clients []yunchiv1.TokenServiceClient, k int, hostID string) (string, error) {
	req := &yunchiv1.CreateTokenRequest{HostId: hostID, Ttl: "0", Description: "bench simulated host"}
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := clients[(k+attempt)%len(clients)].CreateToken(cctx, req)
		cancel()
		if err == nil {
			return r.GetSecret(), nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if attempt > 50 {
			return "", fmt.Errorf("host token for %s: %w", hostID, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// register registers one host (md: its credentials), trying each
// connection in turn from k, until ctx ends.
func (s *simHosts) register(ctx context.Context, k int, f *yunchiv1.HostFacts, md metadata.MD) error {
	ctx = metadata.NewOutgoingContext(ctx, md)
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
// until ctx ends; host i sends mds[i] (from hostTokens). registered is
// closed once all are registered (or ctx ended); errc gets the first
// registration error.
func (s *simHosts) run(ctx context.Context, facts []*yunchiv1.HostFacts, mds []metadata.MD, interval time.Duration, par int, registered chan<- struct{}, errc chan<- error) {
	sem := make(chan struct{}, par)
	var regWG sync.WaitGroup
	var once sync.Once
	for i, f := range facts {
		regWG.Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sem <- struct{}{}
			err := s.register(ctx, i, f, mds[i])
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
			hctx := metadata.NewOutgoingContext(ctx, mds[i])
			for attempt := i; ; attempt++ {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				t.Reset(interval)
				c := s.clients[attempt%len(s.clients)]
				cctx, cancel := context.WithTimeout(hctx, 2*time.Second)
				r, err := c.Heartbeat(cctx, &yunchiv1.HeartbeatRequest{HostId: f.Id, Stats: &yunchiv1.HostStats{}})
				cancel()
				s.beats.Add(1)
				if err != nil {
					s.failures.Add(1)
					continue
				}
				if !r.Known {
					s.register(ctx, attempt, f, mds[i])
				}
			}
		}()
	}
	go func() { regWG.Wait(); close(registered) }()
}
