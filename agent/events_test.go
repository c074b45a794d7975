package agent_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yunchi/yunchi/agent"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// lastTwo returns the phases and messages of the last two reports of id.
func lastTwo(c *controller, id string) (prev, last *yunchiv1.VMStatus) {
	r := c.reportsFor(id)
	if len(r) < 2 {
		return nil, nil
	}
	return r[len(r)-2], r[len(r)-1]
}

// A guest stopped behind the agent's back (virsh destroy; the test driver
// cannot crash one) is reported FAILED with libvirt's words at once, not
// at the next resync (a minute away here), then started again and
// reported RUNNING with a message that says so.
func TestEventReportsUnexpectedStopAtOnce(t *testing.T) {
	d := smallHost(t)
	c := newController()
	start(t, config(t, serve(t, c).addr), d) // resync: a minute

	c.put(vm(vmA, "web", running))
	eventually(t, "RUNNING reported", func() bool { return c.phase(vmA) == phaseRunning })
	before := len(c.reportsFor(vmA))

	destroyed := time.Now()
	if err := d.Destroy(context.Background(), vmA); err != nil {
		t.Fatal(err)
	}
	eventually(t, "FAILED then RUNNING reported", func() bool {
		prev, last := lastTwo(c, vmA)
		return len(c.reportsFor(vmA)) >= before+2 && prev.GetPhase() == phaseFailed && last.GetPhase() == phaseRunning
	})
	t.Logf("crash reported and guest restarted %v after it stopped", time.Since(destroyed).Round(time.Millisecond))
	if took := time.Since(destroyed); took > 10*time.Second {
		t.Errorf("took %v: the resync did it, not the event", took)
	}
	prev, last := lastTwo(c, vmA)
	// libvirt's event names the cause, or (when the reconcile that found
	// the stop began just before the event came) the domain's state does.
	if m := prev.GetMessage(); !strings.Contains(m, "guest stopped unexpectedly (stopped: destroyed)") &&
		!strings.Contains(m, "guest stopped unexpectedly (found shut off: destroyed)") {
		t.Errorf("FAILED message %q does not give libvirt's cause", prev.GetMessage())
	}
	if !strings.Contains(last.GetMessage(), "started again") || !strings.Contains(last.GetMessage(), "destroyed)") {
		t.Errorf("RUNNING message %q does not say the guest was started again after the stop", last.GetMessage())
	}
	if n := len(c.reportsFor(vmA)); n != before+2 {
		t.Errorf("%d reports after the stop, want 2: %v", n-before, c.reportsFor(vmA)[before:])
	}
	eventually(t, "domain running", domainIs(t, d, vmA, agent.StateRunning))

	// A stop asked by the controllers is no surprise.
	c.update(vmA, func(as *yunchiv1.Assignment) { as.Desired = stopped })
	eventually(t, "STOPPED reported", func() bool { return c.phase(vmA) == phaseStopped })
	if last := c.reportsFor(vmA); last[len(last)-1].GetMessage() != "" {
		t.Errorf("a requested stop reported with message %q", last[len(last)-1].GetMessage())
	}
}

// The guest is started again even when the controllers cannot hear of the
// stop; once they can, they are told it stopped and was started again.
func TestUnexpectedStopReportedOnceControllersAreBack(t *testing.T) {
	d := smallHost(t)
	c := newController()
	s := serve(t, c)
	start(t, config(t, s.addr), d)
	c.put(vm(vmA, "web", running))
	eventually(t, "RUNNING reported", func() bool { return c.phase(vmA) == phaseRunning })

	s.hung.Store(true)
	if err := d.Destroy(context.Background(), vmA); err != nil {
		t.Fatal(err)
	}
	eventually(t, "guest started again while the controller is away", domainIs(t, d, vmA, agent.StateRunning))
	s.hung.Store(false)
	eventually(t, "the restart reported", func() bool {
		r := c.reportsFor(vmA)
		last := r[len(r)-1]
		return last.GetPhase() == phaseRunning && strings.Contains(last.GetMessage(), "started again") &&
			strings.Contains(last.GetMessage(), "destroyed)")
	})
}

// noEvents is the real driver on a host that cannot report events.
type noEvents struct{ agent.Driver }

func (noEvents) Events(context.Context) (<-chan agent.DomainEvent, error) {
	return nil, agent.ErrNoEvents
}

// Without events, the resync finds the stop: it is reported (as found)
// and the guest started again.
func TestUnexpectedStopFoundByResync(t *testing.T) {
	d := smallHost(t)
	c := newController()
	cfg := config(t, serve(t, c).addr)
	cfg.ResyncInterval = 200 * time.Millisecond
	start(t, cfg, noEvents{d})
	c.put(vm(vmA, "web", running))
	eventually(t, "RUNNING reported", func() bool { return c.phase(vmA) == phaseRunning })
	if err := d.Destroy(context.Background(), vmA); err != nil {
		t.Fatal(err)
	}
	eventually(t, "FAILED then RUNNING reported", func() bool {
		prev, last := lastTwo(c, vmA)
		return prev.GetPhase() == phaseFailed && last.GetPhase() == phaseRunning
	})
	if prev, _ := lastTwo(c, vmA); !strings.Contains(prev.GetMessage(), "guest stopped unexpectedly (found shut off: destroyed)") {
		t.Errorf("FAILED message %q", prev.GetMessage())
	}
}

// flakyEvents ends each event watch after its first event, as a lost
// libvirt connection would, and counts the watches. The first watch ends
// at once, before any event: whether the guest's start comes before or
// after the agent's first watch is a race, and the test must not hang on
// an event that came before it.
type flakyEvents struct {
	agent.Driver
	watches atomic.Int32
}

func (f *flakyEvents) Events(ctx context.Context) (<-chan agent.DomainEvent, error) {
	if f.watches.Add(1) == 1 {
		out := make(chan agent.DomainEvent)
		close(out)
		return out, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	in, err := f.Driver.Events(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	out := make(chan agent.DomainEvent)
	go func() {
		defer close(out)
		defer cancel()
		ev, ok := <-in
		if ok {
			select {
			case out <- ev:
			case <-ctx.Done():
			}
		}
		cancel()
		for range in { // let the watch end before the channel closes
		}
	}()
	return out, nil
}

// A watch that ends is started again, and events keep waking the
// reconcile.
func TestEventWatchRestarted(t *testing.T) {
	d := &flakyEvents{Driver: smallHost(t)}
	c := newController()
	start(t, config(t, serve(t, c).addr), d)
	c.put(vm(vmA, "web", running))
	eventually(t, "RUNNING reported", func() bool { return c.phase(vmA) == phaseRunning })
	eventually(t, "the watch started again", func() bool { return d.watches.Load() >= 2 })
	for i := range 2 {
		n := len(c.reportsFor(vmA))
		if err := d.Destroy(context.Background(), vmA); err != nil {
			t.Fatal(err)
		}
		eventually(t, "stop reported and guest restarted", func() bool {
			r := c.reportsFor(vmA)
			return len(r) >= n+2 && r[len(r)-1].GetPhase() == phaseRunning
		})
		eventually(t, "running", domainIs(t, d, vmA, agent.StateRunning))
		t.Logf("round %d: %d watches", i, d.watches.Load())
	}
}

// failingStats is the real driver on a host whose stats fail.
type failingStats struct{ agent.Driver }

func (failingStats) Stats(context.Context) (map[string]agent.Usage, error) {
	return nil, errors.New("stats broke")
}

// Heartbeats carry the running guests' usage, by VM id; a host whose stats
// fail still heartbeats, without usage.
func TestHeartbeatCarriesUsage(t *testing.T) {
	for _, broken := range []bool{false, true} {
		t.Run(map[bool]string{false: "stats", true: "stats fail"}[broken], func(t *testing.T) {
			var d agent.Driver = smallHost(t)
			if broken {
				d = failingStats{d}
			}
			c := newController()
			start(t, config(t, serve(t, c).addr), d)
			c.put(vm(vmA, "web", running), vm(vmB, "db", stopped))
			eventually(t, "both reported", func() bool { return c.phase(vmA) == phaseRunning && c.phase(vmB) == phaseStopped })
			eventually(t, "a heartbeat after both", func() bool { return c.lastHeartbeat().GetStats().GetDomainsDefined() == 2 })
			hb := c.lastHeartbeat()
			var ids []string
			for _, s := range hb.GetVmStats() {
				if s.GetUsage() == nil {
					t.Errorf("vm %s without usage", s.GetVmId())
				}
				ids = append(ids, s.GetVmId())
			}
			want := []string{vmA} // the running one only
			if broken {
				want = nil
			}
			if strings.Join(ids, ",") != strings.Join(want, ",") {
				t.Errorf("heartbeat usage for %v, want %v", ids, want)
			}
		})
	}
}
