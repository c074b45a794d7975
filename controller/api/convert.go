package api

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

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
		Desired: v.Desired, Phase: v.Phase, Message: v.Message, RebootSeq: v.RebootSeq,
		CreatedAt: ts(v.CreatedUnixNano), UpdatedAt: ts(v.UpdatedUnixNano), Revision: v.Revision,
		Group: v.Group, Constraints: v.Constraints,
	}
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
func freeAndOvercommit(allocatable, allocated scheduler.Resources) (free, over *yunchiv1.Resources) {
	d := allocatable.Sub(allocated)
	free = &yunchiv1.Resources{Vcpus: max(d.VCPUs, 0), MemoryBytes: max(d.MemoryBytes, 0), DiskBytes: max(d.DiskBytes, 0)}
	if d.VCPUs < 0 || d.MemoryBytes < 0 || d.DiskBytes < 0 {
		over = &yunchiv1.Resources{Vcpus: max(-d.VCPUs, 0), MemoryBytes: max(-d.MemoryBytes, 0), DiskBytes: max(-d.DiskBytes, 0)}
	}
	return free, over
}

func resToAPI(r scheduler.Resources) *yunchiv1.Resources {
	return &yunchiv1.Resources{Vcpus: r.VCPUs, MemoryBytes: r.MemoryBytes, DiskBytes: r.DiskBytes}
}

func hostToAPI(hv state.HostView, stats *yunchiv1.HostStats) *yunchiv1.Host {
	h := hv.Host
	sh := hv.Sched
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
		Labels: labels, AdminLabels: h.AdminLabels, Capacity: h.Capacity, Allocated: hv.Allocated,
		Reserved: resToAPI(sh.Reserved), Allocatable: resToAPI(alloc),
		Free: free, Overcommit: over,
		State: hv.State, VmCount: int32(hv.VMs), Owner: h.Owner,
		Ratios:       &yunchiv1.Ratios{Cpu: sh.Ratios.CPU, Memory: sh.Ratios.Memory, Disk: sh.Ratios.Disk},
		RatioSources: &yunchiv1.RatioSources{Cpu: hv.Sources.CPU, Memory: hv.Sources.Memory, Disk: hv.Sources.Disk},
		HostRatios:   h.Ratios,
		CpuModel:     h.CpuModel, AgentVersion: h.AgentVersion, RegisteredAt: ts(h.RegisteredUnixNano),
	}
	// Last seen is the replicated record, the same on every controller;
	// stats are the leader's own (nil elsewhere).
	out.LastSeen = ts(h.LastHeartbeatUnixNano)
	out.Stats = stats
	return out
}
