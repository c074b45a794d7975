//go:build linux

package main

import (
	"context"
	"fmt"
	"github.com/yunchi/yunchi/internal/benchkit"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// vmTimes is one VM created through Yunchi: when the create was called
// and returned, when the agent logged it defined and started the domain,
// and when WatchVM showed it RUNNING.
type vmTimes struct {
	name, id                             string
	call, returned                       time.Time
	defined, started, running            time.Time
	haveDefined, haveStarted, haveRunnin bool
}

func (t vmTimes) total() time.Duration { return t.running.Sub(t.call) }

// The VMs that boot nothing: an empty root disk of emptyDisk and a seed
// with userData.
const (
	emptyDisk     = "1GiB"
	emptyDiskSize = 1 << 30
	userData      = "#cloud-config\n"
)

// burstTimeout bounds the wait for all of a burst to run (or be gone):
// 50 booting TCG guests on 2 cores take minutes.
const burstTimeout = 15 * time.Minute

// yunchiClient creates VMs through the API.
type yunchiClient struct {
	vms    yunchiv1.VMServiceClient
	hosts  yunchiv1.HostServiceClient
	hostID string // the one host
	rec    *recorder
	memory string
	// vmTimeout bounds one VM's wait for RUNNING or gone.
	vmTimeout time.Duration
	// failures counts VMs seen FAILED before they ran.
	failures atomic.Int32
}

func newYunchiClient(cc grpc.ClientConnInterface, hostID string, rec *recorder, memory string) *yunchiClient {
	return &yunchiClient{vms: yunchiv1.NewVMServiceClient(cc), hosts: yunchiv1.NewHostServiceClient(cc), hostID: hostID,
		rec: rec, memory: memory, vmTimeout: 3 * time.Minute}
}

// hostReady waits until the controllers hold the host READY: one whose
// heartbeats came late (libvirtd busy with what a baseline left) is
// marked down, and creates are refused until its next heartbeat.
func (c *yunchiClient) hostReady(ctx context.Context) error {
	begun := time.Now()
	for {
		h, err := c.hosts.GetHost(ctx, &yunchiv1.GetHostRequest{Id: c.hostID, Consistent: true})
		if err == nil && h.State == yunchiv1.HostState_HOST_STATE_READY {
			if d := time.Since(begun); d > time.Second {
				benchkit.Progress("  host %s was down; ready again after %s", c.hostID, d.Round(time.Millisecond))
			}
			return nil
		}
		if time.Since(begun) > time.Minute {
			return fmt.Errorf("host %s not ready within a minute (state %s, %v)", c.hostID, h.GetState(), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// request asks for VM name: from the image (booted = true), or with an
// empty disk and cloud-init user data (a seed, and firmware that finds
// nothing to boot and idles).
func (c *yunchiClient) request(name string, booted bool) *yunchiv1.CreateVMRequest {
	r := &yunchiv1.CreateVMRequest{Name: name, Vcpus: 1, Memory: c.memory}
	if booted {
		r.Image = devcluster.TinyImage
	} else {
		r.Disk, r.UserData = emptyDisk, userData
	}
	return r
}

// one creates VM name and waits until it runs.
func (c *yunchiClient) one(ctx context.Context, name string) (vmTimes, error) {
	if err := c.hostReady(ctx); err != nil {
		return vmTimes{}, err
	}
	t := vmTimes{name: name, call: time.Now()}
	vm, err := c.vms.CreateVM(ctx, c.request(name, true))
	if err != nil {
		return t, fmt.Errorf("create %s: %w", name, err)
	}
	t.returned, t.id = time.Now(), vm.Id
	if t.running, err = c.waitRunning(ctx, name, vm.Revision, c.vmTimeout); err != nil {
		return t, err
	}
	c.fill(&t)
	return t, nil
}

// many creates count VMs NAME-1..NAME-count in one CreateVMs call and
// waits until all run.
func (c *yunchiClient) many(ctx context.Context, name string, count int, booted bool) ([]vmTimes, error) {
	if err := c.hostReady(ctx); err != nil {
		return nil, err
	}
	req := c.request(name, booted)
	req.Count = int32(count)
	call := time.Now()
	resp, err := c.vms.CreateVMs(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("create %d VMs: %w", count, err)
	}
	returned := time.Now()
	out := make([]vmTimes, len(resp.Vms))
	errs := make([]error, len(resp.Vms))
	var wg sync.WaitGroup
	for i, vm := range resp.Vms {
		out[i] = vmTimes{name: vm.Name, id: vm.Id, call: call, returned: returned}
		wg.Go(func() { out[i].running, errs[i] = c.waitRunning(ctx, vm.Name, vm.Revision, burstTimeout) })
	}
	// Progress: how many the agent has started, every 10 s.
	waited := make(chan struct{})
	go func() {
		tick := time.NewTicker(10 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-waited:
				return
			case <-tick.C:
				started := 0
				for _, t := range out {
					if _, ok := c.rec.when("started domain", t.id); ok {
						started++
					}
				}
				benchkit.Progress("  %s: the agent has started %d of %d", time.Since(call).Round(time.Second), started, len(out))
			}
		}
	}()
	wg.Wait()
	close(waited)
	if err := firstErrors(errs); err != nil {
		return out, err
	}
	for i := range out {
		c.fill(&out[i])
	}
	return out, nil
}

// firstErrors sums errs up in one line: how many, and the first.
func firstErrors(errs []error) error {
	n, first := 0, error(nil)
	for _, err := range errs {
		if err != nil {
			n++
			if first == nil {
				first = err
			}
		}
	}
	if n == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d VMs: %w", n, len(errs), first)
}

// fill adds the agent's times.
func (c *yunchiClient) fill(t *vmTimes) {
	t.defined, t.haveDefined = c.rec.when("defined domain", t.id)
	t.started, t.haveStarted = c.rec.when("started domain", t.id)
	t.haveRunnin = true
}

// waitRunning follows the VM until WatchVM shows it RUNNING, and says
// when that was seen. A VM reported FAILED is waited for too (the agent
// tries again at its next pass, as it would for a user), and counted.
// rev is the create's: the controller answering may be a follower
// (leadership moves on a loaded machine), which must have applied the
// create first.
func (c *yunchiClient) waitRunning(ctx context.Context, name string, rev uint64, timeout time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stream, err := c.vms.WatchVM(ctx, &yunchiv1.WatchVMRequest{Name: name, MinRevision: rev})
	if err != nil {
		return time.Time{}, fmt.Errorf("watch %s: %w", name, err)
	}
	var last *yunchiv1.VM
	failed := false
	for {
		ev, err := stream.Recv()
		if err != nil {
			return time.Time{}, fmt.Errorf("%s not running (last seen %s %q): %w", name, last.GetPhase(), last.GetMessage(), err)
		}
		last = ev.Vm
		switch {
		case ev.Gone:
			return time.Time{}, fmt.Errorf("%s deleted while waiting for it to run", name)
		case ev.Vm.GetPhase() == yunchiv1.VMPhase_VM_PHASE_RUNNING:
			return time.Now(), nil
		case ev.Vm.GetPhase() == yunchiv1.VMPhase_VM_PHASE_FAILED && !failed:
			failed = true
			c.failures.Add(1)
			benchkit.Progress("  %s reported FAILED (%s); waiting for the agent to try again", name, ev.Vm.GetMessage())
		}
	}
}

// remove deletes the VMs and waits until they are gone (the agent has
// destroyed and undefined their domains and removed their volumes).
func (c *yunchiClient) remove(ctx context.Context, names ...string) error {
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, burstTimeout)
			defer cancel()
			stream, err := c.vms.WatchVM(ctx, &yunchiv1.WatchVMRequest{Name: name})
			if err != nil {
				errs[i] = fmt.Errorf("watch %s: %w", name, err)
				return
			}
			if _, err := stream.Recv(); err != nil { // the VM as it is: the watch is on
				errs[i] = fmt.Errorf("watch %s: %w", name, err)
				return
			}
			if _, err := c.vms.DeleteVM(ctx, &yunchiv1.VMActionRequest{Name: name}); err != nil {
				errs[i] = fmt.Errorf("delete %s: %w", name, err)
				return
			}
			for {
				ev, err := stream.Recv()
				if err != nil {
					errs[i] = fmt.Errorf("%s not gone: %w", name, err)
					return
				}
				if ev.Gone {
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErrors(errs)
}
