package leader

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// MirrorView is what choosing mirror hosts reads besides BackupView
// (*state.Store).
type MirrorView interface {
	Hosts() []state.HostView
	MirroredVMIDs() []string
}

// RealHypervisor says whether a host runs VMs on QEMU (a simulated host,
// libvirt's test driver, has no block copy to mirror with).
func RealHypervisor(h *statev1.HostRecord) bool {
	return strings.HasPrefix(h.GetHypervisor(), "QEMU")
}

// placeMirrors keeps a mirror host for every VM whose policy mirrors it
// (platinum): a ready host on a real hypervisor in the policy's mirror
// center (not the VM's own, not fenced), the one keeping the fewest
// mirrors; it drops the mirror of a VM no longer protected so, or no
// longer on a real host. A mirror host that goes down or is fenced is
// replaced (the new one gets a full copy).
func (b *Backups) placeMirrors(ctx context.Context, mv MirrorView, prot []state.Protected) {
	// Every host, read only when some VM wants a mirror: this runs every
	// tick, and most clouds have hosts by the thousand and few platinum
	// VMs.
	var hosts map[string]state.HostView
	for _, p := range prot {
		if len(p.MirrorCenters) > 0 {
			hosts = map[string]state.HostView{}
			for _, h := range mv.Hosts() {
				hosts[h.Host.Id] = h
			}
			break
		}
	}
	load := map[string]int{}
	for _, p := range prot {
		if m := p.VM.GetMirror(); m != nil {
			load[m.HostId]++
		}
	}
	wanted := map[string]bool{}
	for _, p := range prot {
		vm := p.VM
		if len(p.MirrorCenters) == 0 {
			continue
		}
		src, ok := hosts[vm.HostId]
		if !ok || !RealHypervisor(src.Host) || vm.Phase == statev1.VMPhase_VM_PHASE_DELETING || vm.DrRun != "" {
			continue
		}
		var center *statev1.CenterRecord
		for _, c := range p.MirrorCenters {
			if c.Name != src.Host.Center && c.FencedBy == "" {
				center = c
				break
			}
		}
		if center == nil {
			continue
		}
		wanted[vm.Id] = true
		if m := vm.GetMirror(); m != nil {
			if h, ok := hosts[m.HostId]; ok && h.Host.Center == center.Name && h.Facts.State == statev1.HostState_HOST_STATE_READY {
				continue // keeps it
			}
		}
		var cands []string
		for id, h := range hosts {
			if h.Host.Center == center.Name && h.Facts.State == statev1.HostState_HOST_STATE_READY && RealHypervisor(h.Host) {
				cands = append(cands, id)
			}
		}
		if len(cands) == 0 {
			continue // dr status says there is no mirror host yet
		}
		sort.Slice(cands, func(i, j int) bool {
			if load[cands[i]] != load[cands[j]] {
				return load[cands[i]] < load[cands[j]]
			}
			return cands[i] < cands[j]
		})
		if b.setMirror(ctx, vm.Id, cands[0]) == nil {
			load[cands[0]]++
			b.log.Info("mirror host chosen", "vm", vm.Name, "host", cands[0], "center", center.Name)
		}
	}
	for _, id := range mv.MirroredVMIDs() {
		if !wanted[id] {
			if b.setMirror(ctx, id, "") == nil {
				b.log.Info("mirror dropped", "vm", id)
			}
		}
	}
}

func (b *Backups) setMirror(ctx context.Context, vmID, hostID string) error {
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := b.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_SetMirror{SetMirror: &statev1.SetMirror{VmId: vmID, HostId: hostID}}})
	if err != nil && ctx.Err() == nil {
		b.log.Warn("could not set a VM's mirror host", "vm", vmID, "host", hostID, "err", err)
	}
	return err
}
