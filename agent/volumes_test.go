package agent_test

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/yunchi/yunchi/agent"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const (
	vol1 = "vol-00000000000000a1"
	vol2 = "vol-00000000000000b2"
	vol3 = "vol-00000000000000c3"
)

func volume(id, vm string) *yunchiv1.VolumeAssignment {
	return &yunchiv1.VolumeAssignment{VolumeId: id, Name: "n" + id[len(id)-2:], Project: "default", SizeBytes: 1 << 30, VmId: vm}
}

// domainVolumes is what a domain has attached, per the driver.
func domainVolumes(t *testing.T, d agent.Driver, vm string) []string {
	t.Helper()
	ids, err := d.DomainVolumes(context.Background(), vm)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// poolVolumes lists the volumes in the host's pool.
type volumeLister interface {
	ListVolumes(ctx context.Context) ([]string, error)
}

func poolVolumes(t *testing.T, d volumeLister) []string {
	t.Helper()
	ids, err := d.ListVolumes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// defineSpy records the volumes of each Define.
type defineSpy struct {
	agent.Driver
	mu      sync.Mutex
	defined map[string][]agent.VolumeSpec
}

func (s *defineSpy) Define(ctx context.Context, spec agent.DomainSpec) error {
	s.mu.Lock()
	s.defined[spec.VMID] = slices.Clone(spec.Volumes)
	s.mu.Unlock()
	return s.Driver.Define(ctx, spec)
}

// A volume is attached to its VM's domain, running or stopped, moved off
// it when detached, removed from the pool when deleted, and each change
// is reported once; a new domain is defined with its volumes; a deleted
// VM's volume stays in the pool.
func TestVolumes(t *testing.T) {
	lvd := smallHost(t)
	d := &defineSpy{Driver: lvd, defined: map[string][]agent.VolumeSpec{}}
	c := newController()
	start(t, config(t, serve(t, c).addr), d)
	c.put(vm(vmA, "web", running), vm(vmB, "db", stopped))
	eventually(t, "both VMs reported", func() bool { return c.phase(vmA) == phaseRunning && c.phase(vmB) == phaseStopped })

	// Onto a running VM and onto a stopped one.
	c.putVolume(volume(vol1, vmA))
	c.putVolume(volume(vol2, vmB))
	eventually(t, "both attached and reported", func() bool {
		return c.volume(vol1).GetAttachedVmId() == vmA && c.volume(vol2).GetAttachedVmId() == vmB
	})
	if got := domainVolumes(t, lvd, vmA); !slices.Equal(got, []string{vol1}) {
		t.Fatalf("web's volumes: %v", got)
	}
	if got := domainVolumes(t, lvd, vmB); !slices.Equal(got, []string{vol2}) {
		t.Fatalf("db's volumes: %v", got)
	}
	if got := poolVolumes(t, lvd); !slices.Equal(got, []string{vol1, vol2}) {
		t.Fatalf("pool: %v", got)
	}

	// Moved from web to db: detached, then attached.
	c.updateVolume(vol1, func(v *yunchiv1.VolumeAssignment) { v.VmId = vmB })
	eventually(t, "moved and reported", func() bool { return c.volume(vol1).GetAttachedVmId() == vmB })
	if got := domainVolumes(t, lvd, vmA); len(got) != 0 {
		t.Fatalf("web still has %v", got)
	}
	if got := domainVolumes(t, lvd, vmB); !slices.Equal(got, []string{vol1, vol2}) {
		t.Fatalf("db's volumes: %v", got)
	}

	// Detached and deleted: gone from the domain and the pool.
	c.updateVolume(vol1, func(v *yunchiv1.VolumeAssignment) { v.VmId = "" })
	eventually(t, "detached and reported", func() bool {
		v := c.volume(vol1)
		return v.GetAttachedVmId() == "" && !slices.Contains(domainVolumes(t, lvd, vmB), vol1)
	})
	c.updateVolume(vol1, func(v *yunchiv1.VolumeAssignment) { v.Deleted = true })
	eventually(t, "deleted and reported gone", func() bool { return c.volume(vol1) == nil })
	if got := poolVolumes(t, lvd); !slices.Equal(got, []string{vol2}) {
		t.Fatalf("pool after the delete: %v", got)
	}
	// A deleted volume still on a domain comes off it first.
	c.updateVolume(vol2, func(v *yunchiv1.VolumeAssignment) { v.Deleted = true })
	eventually(t, "vol2 gone", func() bool { return c.volume(vol2) == nil })
	if got := domainVolumes(t, lvd, vmB); len(got) != 0 {
		t.Fatalf("db keeps %v after its volume's delete", got)
	}
	if got := poolVolumes(t, lvd); len(got) != 0 {
		t.Fatalf("pool after both deletes: %v", got)
	}

	// A VM defined with a volume already wanted on it gets it at define.
	c.putVolume(volume(vol3, vmC))
	c.put(vm(vmC, "cache", running))
	eventually(t, "cache running with its volume", func() bool {
		return c.phase(vmC) == phaseRunning && c.volume(vol3).GetAttachedVmId() == vmC
	})
	d.mu.Lock()
	specs := d.defined[vmC]
	d.mu.Unlock()
	if len(specs) != 1 || specs[0] != (agent.VolumeSpec{ID: vol3, SizeBytes: 1 << 30}) {
		t.Fatalf("cache defined with volumes %v", specs)
	}
	// Each change was reported once: no report repeats what the
	// controller already has.
	for _, id := range []string{vol1, vol2, vol3} {
		r := c.volumeReports(id)
		for i := 1; i < len(r); i++ {
			if r[i].GetAttachedVmId() == r[i-1].GetAttachedVmId() && r[i].GetMessage() == r[i-1].GetMessage() && r[i].GetGone() == r[i-1].GetGone() {
				t.Errorf("%s reported the same twice: %v", id, r)
			}
		}
	}

	// Deleting the VM leaves its volume in the pool (data outlive VMs).
	c.update(vmC, func(as *yunchiv1.Assignment) { as.Desired = deleted })
	eventually(t, "cache gone", func() bool { return c.assignment(vmC) == nil })
	if got := poolVolumes(t, lvd); !slices.Equal(got, []string{vol3}) {
		t.Fatalf("pool after the VM's delete: %v", got)
	}
}
