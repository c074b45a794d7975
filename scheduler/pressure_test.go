package scheduler

import (
	"errors"
	"fmt"
	"testing"
)

// pressurePool is 20 hosts at 98.6% of their vCPU (half their memory):
// 18 full, "roomy" with 16 vCPU free and "tight" with 2. Best fit sends a
// 1-vCPU request to tight; Spread sends it to roomy.
func pressurePool(extra ...Host) []Host {
	hosts := []Host{
		host("roomy", "a1", Resources{48, 128 * GiB, TiB}),
		host("tight", "a1", Resources{62, 128 * GiB, TiB}),
	}
	for i := range 18 {
		hosts = append(hosts, host(fmt.Sprintf("full-%02d", i), "a1", Resources{64, 128 * GiB, TiB}))
	}
	return append(hosts, extra...)
}

var one = Request{Name: "one", Resources: Resources{1, GiB, 40 * GiB}}

func placeOn(t *testing.T, c *Cluster, req Request, want string) {
	t.Helper()
	p, err := c.Place(req)
	if err != nil {
		t.Fatalf("Place(%s): %v", req.Name, err)
	}
	if p.HostID != want {
		t.Fatalf("Place(%s) = %s, want %s (decision %d, under pressure to %d)", req.Name, p.HostID, want, c.decisions, c.pressureUntil)
	}
}

func refuse(t *testing.T, c *Cluster, req Request) {
	t.Helper()
	var nf *NoFitError
	if _, err := c.Place(req); !errors.As(err, &nf) {
		t.Fatalf("Place(%s) = %v, want a NoFitError", req.Name, err)
	}
}

// TestPressureSpreadsAfterRefusal: once the full pool refuses a request for
// lack of vCPU, the next DefaultPressureWindow decisions take the host with the
// most room; then best fit again.
func TestPressureSpreadsAfterRefusal(t *testing.T) {
	c := mustCluster(t, pressurePool(), Options{Seed: 1})
	placeOn(t, c, one, "tight") // before any refusal: best fit
	refuse(t, c, Request{Name: "big", Resources: Resources{32, GiB, 40 * GiB}})
	for i := range DefaultPressureWindow {
		placeOn(t, c, Request{Name: fmt.Sprintf("one-%d", i), Resources: one.Resources}, "roomy")
	}
	placeOn(t, c, one, "tight")
	if n := c.PressureDecisions(); n != DefaultPressureWindow {
		t.Errorf("PressureDecisions = %d, want %d", n, DefaultPressureWindow)
	}
	// A refusal under pressure extends it from there.
	refuse(t, c, Request{Name: "big", Resources: Resources{32, GiB, 40 * GiB}})
	placeOn(t, c, one, "roomy")
}

// TestPressureFromBatch: a batch refused for lack of room counts too; here
// with a window of 2 set in the options, so two decisions spread.
func TestPressureFromBatch(t *testing.T) {
	c := mustCluster(t, pressurePool(), Options{Seed: 1, PressureWindow: 2})
	_, err := c.PlaceBatch([]Request{one, {Name: "big", Resources: Resources{32, GiB, 40 * GiB}}})
	var nf *NoFitError
	if !errors.As(err, &nf) {
		t.Fatalf("PlaceBatch = %v, want a NoFitError", err)
	}
	placeOn(t, c, one, "roomy")
	placeOn(t, c, one, "roomy")
	placeOn(t, c, one, "tight")
}

// TestNoPressure: refusals that say nothing about the pool running out leave
// best fit alone: a request larger than any host in a cluster two thirds
// used, one refused by location only, any refusal with the window turned
// off, and any refusal under Spread.
func TestNoPressure(t *testing.T) {
	var empty []Host
	for i := range 10 {
		empty = append(empty, host(fmt.Sprintf("empty-%02d", i), "a1", Resources{}))
	}
	c := mustCluster(t, pressurePool(empty...), Options{Seed: 1})
	refuse(t, c, Request{Name: "huge", Resources: Resources{128, GiB, 40 * GiB}})
	placeOn(t, c, one, "tight")

	c = mustCluster(t, pressurePool(), Options{Seed: 1})
	refuse(t, c, Request{Name: "elsewhere", Resources: one.Resources, Center: "b9"})
	placeOn(t, c, one, "tight")

	c = mustCluster(t, pressurePool(), Options{Seed: 1, PressureWindow: -1})
	refuse(t, c, Request{Name: "big", Resources: Resources{32, GiB, 40 * GiB}})
	placeOn(t, c, one, "tight")

	c = mustCluster(t, pressurePool(), Options{Seed: 1, Strategy: Spread})
	refuse(t, c, Request{Name: "big", Resources: Resources{32, GiB, 40 * GiB}})
	placeOn(t, c, one, "roomy")
	if n := c.PressureDecisions(); n != 0 {
		t.Errorf("Spread cluster: PressureDecisions = %d, want 0", n)
	}
}
