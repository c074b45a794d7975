package api

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// The raft log has types of its own (proto/yunchi/state/v1) so that the
// public API can change without changing how an old log replays. These
// convert between the two; enums go by value name, checked for every
// value in convert_test.go.

func powerToAPI(p statev1.PowerState) yunchiv1.PowerState   { return yunchiv1.PowerState(p) }
func powerFromAPI(p yunchiv1.PowerState) statev1.PowerState { return statev1.PowerState(p) }
func phaseToAPI(p statev1.VMPhase) yunchiv1.VMPhase         { return yunchiv1.VMPhase(p) }
func phaseFromAPI(p yunchiv1.VMPhase) statev1.VMPhase       { return statev1.VMPhase(p) }
func hostStateToAPI(s statev1.HostState) yunchiv1.HostState {
	return yunchiv1.HostState(s)
}
func hostStateFromAPI(s yunchiv1.HostState) statev1.HostState {
	return statev1.HostState(s)
}
func policyToAPI(p statev1.GroupPolicy) yunchiv1.GroupPolicy   { return yunchiv1.GroupPolicy(p) }
func policyFromAPI(p yunchiv1.GroupPolicy) statev1.GroupPolicy { return statev1.GroupPolicy(p) }
func levelToAPI(l statev1.GroupLevel) yunchiv1.GroupLevel      { return yunchiv1.GroupLevel(l) }
func levelFromAPI(l yunchiv1.GroupLevel) statev1.GroupLevel    { return statev1.GroupLevel(l) }

// recResToAPI converts recorded resources (nil stays nil).
func recResToAPI(r *statev1.Resources) *yunchiv1.Resources {
	if r == nil {
		return nil
	}
	return &yunchiv1.Resources{Vcpus: r.Vcpus, MemoryBytes: r.MemoryBytes, DiskBytes: r.DiskBytes}
}

func resFromAPI(r *yunchiv1.Resources) *statev1.Resources {
	if r == nil {
		return nil
	}
	return &statev1.Resources{Vcpus: r.Vcpus, MemoryBytes: r.MemoryBytes, DiskBytes: r.DiskBytes}
}

// recRatiosToAPI converts recorded ratios (nil stays nil).
func recRatiosToAPI(r *statev1.Ratios) *yunchiv1.Ratios {
	if r == nil {
		return nil
	}
	return &yunchiv1.Ratios{Cpu: r.Cpu, Memory: r.Memory, Disk: r.Disk}
}

func statusesFromAPI(in []*yunchiv1.VMStatus) []*statev1.VMStatus {
	out := make([]*statev1.VMStatus, len(in))
	for i, st := range in {
		out[i] = &statev1.VMStatus{VmId: st.GetVmId(), Phase: phaseFromAPI(st.GetPhase()), Message: st.GetMessage(),
			ObservedRebootSeq: st.GetObservedRebootSeq(), Gone: st.GetGone(),
			MirrorPhase: st.GetMirrorPhase(), MirrorError: oneLine(st.GetMirrorError())}
	}
	return out
}

func ts(unixNano int64) *timestamppb.Timestamp {
	if unixNano == 0 {
		return nil
	}
	return timestamppb.New(time.Unix(0, unixNano))
}

// vmToAPI is v as the API shows it, with what its host's liveness says
// about it (computed here, never stored in the record).
func vmToAPI(v *statev1.VMRecord, host hostInfo) *yunchiv1.VM {
	out := &yunchiv1.VM{
		Id: v.Id, Name: v.Name, Project: v.Project,
		Vcpus: v.Vcpus, MemoryBytes: v.MemoryBytes, DiskBytes: v.DiskBytes,
		Center: v.Center, HostId: v.HostId, HostCenter: host.center,
		Desired: powerToAPI(v.Desired), Phase: phaseToAPI(v.Phase), Message: v.Message, RebootSeq: v.RebootSeq,
		CreatedAt: ts(v.CreatedUnixNano), UpdatedAt: ts(v.UpdatedUnixNano), Revision: v.Revision,
		Group: v.Group, Constraints: state.ConstraintTexts(v),
		Image: v.Image.GetName(), ImageSha256: v.Image.GetSha256(), SshAuthorizedKeys: v.SshAuthorizedKeys,
		RestoredFrom: v.RestoredFrom, HomeCenter: v.HomeCenter, DrRun: v.DrRun,
	}
	out.Usage = host.usage(v.Id)
	if host.down {
		out.Conditions = []string{VMConditionHostDown}
		out.HostLastHeartbeat = ts(host.lastHeartbeat)
	}
	return out
}

func addTo(a, b *yunchiv1.Resources) {
	a.Vcpus += b.GetVcpus()
	a.MemoryBytes += b.GetMemoryBytes()
	a.DiskBytes += b.GetDiskBytes()
}

// freeAndOvercommit splits allocatable - allocated into what is left (never
// negative) and, where allocated exceeds allocatable, by how much (nil when
// nowhere): free is never silently negative.
func freeAndOvercommit(allocatable, allocated state.Resources) (free, over *yunchiv1.Resources) {
	d := allocatable.Sub(allocated)
	free = &yunchiv1.Resources{Vcpus: max(d.VCPUs, 0), MemoryBytes: max(d.MemoryBytes, 0), DiskBytes: max(d.DiskBytes, 0)}
	if d.VCPUs < 0 || d.MemoryBytes < 0 || d.DiskBytes < 0 {
		over = &yunchiv1.Resources{Vcpus: max(-d.VCPUs, 0), MemoryBytes: max(-d.MemoryBytes, 0), DiskBytes: max(-d.DiskBytes, 0)}
	}
	return free, over
}

func resToAPI(r state.Resources) *yunchiv1.Resources {
	return &yunchiv1.Resources{Vcpus: r.VCPUs, MemoryBytes: r.MemoryBytes, DiskBytes: r.DiskBytes}
}

func hostToAPI(hv state.HostView, stats *yunchiv1.HostStats) *yunchiv1.Host {
	h := hv.Host
	sh := hv.Facts
	alloc := sh.Allocatable()
	free, over := freeAndOvercommit(alloc, sh.Allocated)
	labels := map[string]string{}
	for k, v := range h.Labels {
		labels[k] = v
	}
	for k, v := range h.AdminLabels {
		labels[k] = v
	}
	out := &yunchiv1.Host{
		Id: h.Id, Hostname: h.Hostname, Center: h.Center, Site: h.Site, Rack: h.Rack,
		Labels: labels, AdminLabels: h.AdminLabels, Capacity: recResToAPI(h.Capacity), Allocated: resToAPI(sh.Allocated),
		Reserved: resToAPI(sh.Reserved), Allocatable: resToAPI(alloc),
		Free: free, Overcommit: over,
		State: hostStateToAPI(hv.Facts.State), VmCount: int32(hv.VMs), Owner: h.Owner,
		Ratios:       &yunchiv1.Ratios{Cpu: sh.Ratios.CPU, Memory: sh.Ratios.Memory, Disk: sh.Ratios.Disk},
		RatioSources: &yunchiv1.RatioSources{Cpu: hv.Sources.CPU, Memory: hv.Sources.Memory, Disk: hv.Sources.Disk},
		HostRatios:   recRatiosToAPI(h.Ratios),
		CpuModel:     h.CpuModel, AgentVersion: h.AgentVersion, RegisteredAt: ts(h.RegisteredUnixNano),
		Hypervisor: h.Hypervisor, LibvirtVersion: h.LibvirtVersion,
		StoragePool: h.StoragePool, SharedStorage: h.SharedStorage,
	}
	// Last seen is the replicated record, the same on every controller;
	// stats are the leader's own (nil elsewhere).
	out.LastSeen = ts(h.LastHeartbeatUnixNano)
	out.Stats = stats
	return out
}
