package agent_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yunchi/yunchi/agent"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// sideBySide is the real driver, holding each of the first hold Defines
// until hold are in flight (or 2 s have passed), and recording the most
// Defines in flight at once and the ids defined; Start fails once for the
// ids in failStart.
type sideBySide struct {
	agent.Driver
	hold      int
	failStart map[string]bool

	mu               sync.Mutex
	calls, in, most  int
	defined, started map[string]int
}

func (s *sideBySide) Define(ctx context.Context, spec agent.DomainSpec) error {
	s.mu.Lock()
	s.calls++
	held := s.calls <= s.hold
	s.in++
	s.most = max(s.most, s.in)
	s.defined[spec.VMID]++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.in--
		s.mu.Unlock()
	}()
	for deadline := time.Now().Add(2 * time.Second); held && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		s.mu.Lock()
		all := s.in >= s.hold
		s.mu.Unlock()
		if all {
			break
		}
	}
	return s.Driver.Define(ctx, spec)
}

func (s *sideBySide) Start(ctx context.Context, id string) error {
	s.mu.Lock()
	s.started[id]++
	fail := s.failStart[id] && s.started[id] == 1
	s.mu.Unlock()
	if fail {
		return errors.New("start refused for the test")
	}
	return s.Driver.Start(ctx, id)
}

// VMs handed over together get their domains made side by side, at most
// agent.NewDomainWorkers at once, each defined once; running and stopped
// ones end as asked and are reported so; an invalid one and one whose
// start fails are reported FAILED, and the latter runs at the next pass.
func TestNewDomainsMadeSideBySide(t *testing.T) {
	d := &sideBySide{Driver: smallHost(t), hold: agent.NewDomainWorkers,
		defined: map[string]int{}, started: map[string]int{}, failStart: map[string]bool{"vm-03": true}}
	c := newController()
	start(t, config(t, serve(t, c).addr), d)

	var batch []*yunchiv1.Assignment
	want := map[string]yunchiv1.VMPhase{}
	for i := range 10 {
		id, desired, phase := fmt.Sprintf("vm-%02d", i), running, phaseRunning
		if i%3 == 2 {
			desired, phase = stopped, phaseStopped
		}
		batch = append(batch, vm(id, fmt.Sprintf("n%d", i), desired))
		want[id] = phase
	}
	bad := vm("vm-bad", "bad", running)
	bad.Vcpus = 0
	batch = append(batch, bad)
	c.put(batch...)

	eventually(t, "every VM reported as asked", func() bool {
		for id, phase := range want {
			if c.phase(id) != phase {
				return false
			}
		}
		return c.phase("vm-bad") == phaseFailed
	})
	doms := domains(t, d)
	for id, phase := range want {
		state := agent.StateRunning
		if phase == phaseStopped {
			state = agent.StateShutOff
		}
		if doms[id].State != state {
			t.Errorf("%s: domain %+v, want %s", id, doms[id], state)
		}
	}
	if _, ok := doms["vm-bad"]; ok {
		t.Error("a domain was defined for the invalid assignment")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.most != agent.NewDomainWorkers {
		t.Errorf("at most %d defines in flight, want %d: the new domains were not made side by side, or more at once than allowed", d.most, agent.NewDomainWorkers)
	}
	for id := range want {
		if d.defined[id] != 1 {
			t.Errorf("%s defined %d times, want once", id, d.defined[id])
		}
	}
	if d.started["vm-03"] != 2 {
		t.Errorf("vm-03 started %d times, want 2 (refused, then again)", d.started["vm-03"])
	}
	var failed bool
	for _, r := range c.reportsFor("vm-03") {
		failed = failed || r.GetPhase() == phaseFailed && strings.Contains(r.GetMessage(), "start refused for the test")
	}
	if !failed {
		t.Errorf("vm-03's failed start was not reported: %v", c.reportsFor("vm-03"))
	}
}
