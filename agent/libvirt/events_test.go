package libvirt

import (
	"context"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
)

// nextEvent waits up to 5 s for the next event on ch.
func nextEvent(t *testing.T, ch <-chan agent.DomainEvent) agent.DomainEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("event channel closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5 s")
	}
	panic("unreachable")
}

// noEvent checks that nothing arrives on ch for a while.
func noEvent(t *testing.T, ch <-chan agent.DomainEvent) {
	t.Helper()
	select {
	case ev := <-ch:
		t.Fatalf("unexpected event %+v", ev)
	case <-time.After(100 * time.Millisecond):
	}
}

// The test driver reports lifecycle events like a real host: each change
// of a managed domain arrives with its VM id, state and libvirt's words,
// domains without Yunchi's metadata are not reported, two Drivers in one
// process (two simulated hosts) each see their own domains only, and the
// channel closes when ctx ends.
func TestEventsFromTestDriver(t *testing.T) {
	d1, _ := openTestNode(t, TestNode{CPUs: 4, MemoryBytes: 8 << 30})
	d2, _ := openTestNode(t, TestNode{CPUs: 4, MemoryBytes: 8 << 30})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch1, err := d1.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	ch2, err := d2.Events(ctx2)
	if err != nil {
		t.Fatal(err)
	}

	// A domain that is not Yunchi's, on the same host: never reported.
	foreign, err := (&libvirtxml.Domain{Type: "test", Name: "not-ours", Memory: &libvirtxml.DomainMemory{Value: 65536, Unit: "KiB"},
		OS: &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Type: "hvm"}}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := d1.conn.DomainDefineXML(foreign)
	if err != nil {
		t.Fatal(err)
	}
	if err := dom.Create(); err != nil {
		t.Fatal(err)
	}
	dom.Free()
	noEvent(t, ch1)

	spec := agent.DomainSpec{VMID: "vm-1", Project: "p", Name: "web", VCPUs: 1, MemoryBytes: 64 << 20}
	for _, step := range []struct {
		do     func() error
		state  agent.DomainState
		detail string
	}{
		{func() error { return d1.Define(ctx, spec) }, agent.StateOther, "defined: added"},
		{func() error { return d1.Start(ctx, "vm-1") }, agent.StateRunning, "started: booted"},
		{func() error { return d1.Destroy(ctx, "vm-1") }, agent.StateShutOff, "stopped: destroyed"},
		{func() error { return d1.Start(ctx, "vm-1") }, agent.StateRunning, "started: booted"},
		{func() error { return d1.Stop(ctx, "vm-1", time.Second) }, agent.StateShutOff, "stopped: shutdown"},
		{func() error { return d1.Undefine(ctx, "vm-1") }, agent.StateShutOff, "undefined: removed"},
	} {
		if err := step.do(); err != nil {
			t.Fatal(err)
		}
		// The test driver's graceful shutdown also says "shutdown:
		// finished" first; anything else in between is a failure.
		ev := nextEvent(t, ch1)
		if step.detail == "stopped: shutdown" && ev.Detail == "shutdown: finished" {
			ev = nextEvent(t, ch1)
		}
		if ev.VMID != "vm-1" || ev.State != step.state || ev.Detail != step.detail {
			t.Fatalf("event %+v, want vm-1 %v %q", ev, step.state, step.detail)
		}
	}
	noEvent(t, ch2) // the other host saw none of it

	// The other host's own domain is reported there, and only there.
	if err := d2.Define(ctx, agent.DomainSpec{VMID: "vm-2", VCPUs: 1, MemoryBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, ch2); ev.VMID != "vm-2" || ev.Detail != "defined: added" {
		t.Fatalf("host 2: %+v", ev)
	}
	noEvent(t, ch1)

	// Ending ctx closes the channel; the other watch goes on.
	cancel()
	deadline := time.After(5 * time.Second)
	for closed := false; !closed; {
		select {
		case _, ok := <-ch1:
			closed = !ok
		case <-deadline:
			t.Fatal("channel not closed within 5 s of ctx's end")
		}
	}
	if err := d2.Start(ctx2, "vm-2"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, ch2); ev.VMID != "vm-2" || ev.State != agent.StateRunning {
		t.Fatalf("host 2 after host 1's watch ended: %+v", ev)
	}
}

// Watches of one Driver share libvirt's one registration per connection:
// concurrent watches each get every event, one ending leaves the others
// going, watching again after all ended works, and a Driver closed under
// a watch does not crash it.
func TestEventsConcurrentWatchesAndClose(t *testing.T) {
	d, _ := openTestNode(t, TestNode{CPUs: 4, MemoryBytes: 8 << 30})
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	chA, err := d.Events(ctxA)
	if err != nil {
		t.Fatal(err)
	}
	chB, err := d.Events(ctxB)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := d.Define(ctx, agent.DomainSpec{VMID: "vm-1", VCPUs: 1, MemoryBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []<-chan agent.DomainEvent{chA, chB} {
		if ev := nextEvent(t, ch); ev.VMID != "vm-1" || ev.Detail != "defined: added" {
			t.Fatalf("%+v", ev)
		}
	}
	cancelA()
	for range chA {
	}
	if err := d.Start(ctx, "vm-1"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, chB); ev.Detail != "started: booted" {
		t.Fatalf("B after A ended: %+v", ev)
	}
	noEvent(t, chB)
	cancelB()
	for range chB {
	}

	ctxC, cancelC := context.WithCancel(context.Background())
	defer cancelC()
	chC, err := d.Events(ctxC)
	if err != nil {
		t.Fatalf("watching again: %v", err)
	}
	if err := d.Destroy(ctx, "vm-1"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, chC); ev.Detail != "stopped: destroyed" {
		t.Fatalf("%+v", ev)
	}
	noEvent(t, chC)

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	cancelC()
	select {
	case <-chC:
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after Close and ctx's end")
	}
}

// A watch asked with a context already ended is refused and registers
// nothing.
func TestEventsEndedContext(t *testing.T) {
	d, _ := openTestNode(t, TestNode{CPUs: 4, MemoryBytes: 8 << 30})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if ch, err := d.Events(ctx); err == nil || ch != nil {
		t.Fatalf("Events on an ended context: %v, %v", ch, err)
	}
}

func TestEventStateWords(t *testing.T) {
	for _, c := range []struct {
		ev     int
		detail int
		state  agent.DomainState
		words  string
	}{
		{5, 2, agent.StateShutOff, "stopped: crashed"}, // VIR_DOMAIN_EVENT_STOPPED, _CRASHED
		{5, 5, agent.StateShutOff, "stopped: failed"},
		{2, 0, agent.StateRunning, "started: booted"},
		{3, 0, agent.StateOther, "suspended: paused"},
		{8, 0, agent.StateOther, "crashed: panicked"},
		{5, 99, agent.StateShutOff, "stopped"},
		{42, 0, agent.StateOther, "event 42"},
	} {
		st, words := eventState(lvEvent(c.ev), c.detail)
		if st != c.state || words != c.words {
			t.Errorf("event %d/%d: %v %q, want %v %q", c.ev, c.detail, st, words, c.state, c.words)
		}
	}
}

func lvEvent(n int) lv.DomainEventType { return lv.DomainEventType(n) }
