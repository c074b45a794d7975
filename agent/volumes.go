package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Volumes. The assignments list every volume placed on the host: which
// VM's domain should have it (at most one), or that it is to be deleted.
// Each pass makes the domains of the assigned VMs match (attach where
// missing, detach where not wanted), removes deleted volumes from the pool
// once no domain has them, and reports each volume whose observed state
// (the VM whose domain has it, what went wrong) differs from what the
// controller last recorded. A new domain is defined with its volumes
// (DomainSpec.Volumes) rather than hot-plugged after its start.

// maxVolumeMessage bounds what a volume status says.
const maxVolumeMessage = 512

// unplugWait is how long a running guest is given to release a disk
// before the agent asks it again: asking while an unplug is pending only
// makes QEMU refuse.
const unplugWait = 30 * time.Second

// volumesOf lists, by VM id, the volumes the assignments want on it.
func volumesOf(set *yunchiv1.Assignments) map[string][]VolumeSpec {
	out := map[string][]VolumeSpec{}
	for _, v := range set.GetVolumes() {
		if v.GetVmId() != "" && !v.GetDeleted() {
			out[v.GetVmId()] = append(out[v.GetVmId()], VolumeSpec{ID: v.GetVolumeId(), SizeBytes: v.GetSizeBytes()})
		}
	}
	for _, l := range out {
		sort.Slice(l, func(i, j int) bool { return l[i].ID < l[j].ID })
	}
	return out
}

// reconcileVolumes brings the host's volumes in line with set, live
// being the VMs whose domains may hold volumes (assigned, not being
// deleted). It returns the statuses to report and false if something
// should be retried soon.
func (a *Agent) reconcileVolumes(ctx context.Context, set *yunchiv1.Assignments, live map[string]bool) ([]*yunchiv1.VolumeStatus, bool) {
	vols := set.GetVolumes()
	if len(vols) == 0 {
		return nil, true
	}
	ok := true
	// What each relevant domain has: those a volume is asked onto or was
	// last seen on. A VM without a domain (not defined yet) has none.
	has := map[string]map[string]bool{}
	look := func(vm string) {
		ids, err := a.d.DomainVolumes(ctx, vm)
		if err != nil && !errors.Is(err, ErrDomainNotFound) {
			a.log.Warn("reconcile: cannot read a domain's volumes", "vm", vm, "err", err)
			ok = false
		}
		if err != nil {
			delete(has, vm)
			return
		}
		m := map[string]bool{}
		for _, id := range ids {
			m[id] = true
		}
		has[vm] = m
	}
	var vms []string
	seen := map[string]bool{}
	for _, v := range vols {
		for _, vm := range []string{v.GetVmId(), v.GetAttachedVmId()} {
			if vm != "" && live[vm] && !seen[vm] {
				seen[vm] = true
				vms = append(vms, vm)
			}
		}
	}
	sort.Strings(vms)
	for _, vm := range vms {
		look(vm)
	}
	holders := func(id string) []string {
		var out []string
		for _, vm := range vms {
			if has[vm][id] {
				out = append(out, vm)
			}
		}
		return out
	}

	var out []*yunchiv1.VolumeStatus
	for _, v := range vols {
		id := v.GetVolumeId()
		log := a.log.With("volume", id, "name", v.GetName(), "project", v.GetProject())
		var problems []error
		fail := func(err error) {
			if ctx.Err() == nil {
				log.Warn("cannot carry out volume assignment", "err", err)
			}
			problems = append(problems, err)
			ok = false
		}
		want := v.GetVmId()
		if v.GetDeleted() || !live[want] {
			want = ""
		}
		// Off every domain but the wanted one.
		for _, vm := range holders(id) {
			if vm == want {
				continue
			}
			if err := a.detachVolume(ctx, vm, id); err != nil {
				fail(err)
			}
			look(vm)
			if !has[vm][id] {
				delete(a.unplugAsked, vm+"/"+id)
				log.Info("detached volume", "vm", vm)
			}
		}
		if want != "" && has[want] != nil && !has[want][id] {
			if err := a.d.AttachVolume(ctx, want, VolumeSpec{ID: id, SizeBytes: v.GetSizeBytes()}); err != nil {
				fail(err)
			} else {
				log.Info("attached volume", "vm", want)
				delete(a.unplugAsked, want+"/"+id)
			}
			look(want)
		}
		st := &yunchiv1.VolumeStatus{VolumeId: id}
		if h := holders(id); len(h) > 0 {
			st.AttachedVmId = h[0]
			for _, vm := range h {
				if vm == want {
					st.AttachedVmId = vm
				}
			}
		}
		if v.GetDeleted() && st.AttachedVmId == "" && len(problems) == 0 {
			if err := a.d.DeleteVolume(ctx, id); err != nil {
				fail(err)
			} else {
				log.Info("deleted volume")
				st.Gone = true
			}
		}
		if len(problems) == 0 && st.AttachedVmId != "" && st.AttachedVmId != want {
			// Look again soon (the reconcile loop's retry), not at the
			// next resync.
			problems = append(problems, fmt.Errorf("waiting for the guest to release the disk"))
			ok = false
		}
		if len(problems) > 0 {
			st.Message = truncate(oneLine(errors.Join(problems...).Error()), maxVolumeMessage)
		}
		if ctx.Err() != nil {
			return nil, true
		}
		behind := st.Gone || st.AttachedVmId != v.GetAttachedVmId() || st.Message != v.GetMessage()
		// A set that left before the controllers applied the last report
		// still shows the old state: what was sent is not sent again
		// before a resync interval has passed.
		last, sent := a.volSent[id]
		if behind && (!sent || !last.same(st) || time.Since(last.at) >= a.cfg.ResyncInterval) {
			out = append(out, st)
		}
	}
	for id := range a.volSent {
		if !slices.ContainsFunc(vols, func(v *yunchiv1.VolumeAssignment) bool { return v.GetVolumeId() == id }) {
			delete(a.volSent, id)
		}
	}
	return out, ok
}

// sentVolume is a volume status the controllers acknowledged, and when.
type sentVolume struct {
	attached, message string
	gone              bool
	at                time.Time
}

func (s sentVolume) same(st *yunchiv1.VolumeStatus) bool {
	return s.attached == st.GetAttachedVmId() && s.message == st.GetMessage() && s.gone == st.GetGone()
}

// detachVolume takes a volume off vm's domain; a running guest that was
// asked to release it a short while ago is left to do so.
func (a *Agent) detachVolume(ctx context.Context, vm, id string) error {
	k := vm + "/" + id
	if at, ok := a.unplugAsked[k]; ok && time.Since(at) < unplugWait {
		return nil
	}
	for k, at := range a.unplugAsked {
		if time.Since(at) >= unplugWait {
			delete(a.unplugAsked, k)
		}
	}
	a.unplugAsked[k] = time.Now()
	if err := a.d.DetachVolume(ctx, vm, id); err != nil && !errors.Is(err, ErrDomainNotFound) {
		return err
	}
	return nil
}

// truncate cuts s to at most n bytes, on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xc0 == 0x80 {
		n--
	}
	return s[:n]
}
