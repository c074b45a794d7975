package api

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func ts(unixNano int64) *timestamppb.Timestamp {
	if unixNano == 0 {
		return nil
	}
	return timestamppb.New(time.Unix(0, unixNano))
}

func vmToAPI(v *statev1.VMRecord, hostCenter string) *yunchiv1.VM {
	return &yunchiv1.VM{
		Id: v.Id, Name: v.Name, Project: v.Project,
		Vcpus: v.Vcpus, MemoryBytes: v.MemoryBytes, DiskBytes: v.DiskBytes,
		Center: v.Center, HostId: v.HostId, HostCenter: hostCenter,
		Desired: v.Desired, Phase: v.Phase, Message: v.Message, RebootSeq: v.RebootSeq,
		CreatedAt: ts(v.CreatedUnixNano), UpdatedAt: ts(v.UpdatedUnixNano), Revision: v.Revision,
	}
}

func sub(a, b *yunchiv1.Resources) *yunchiv1.Resources {
	return &yunchiv1.Resources{
		Vcpus:       a.GetVcpus() - b.GetVcpus(),
		MemoryBytes: a.GetMemoryBytes() - b.GetMemoryBytes(),
		DiskBytes:   a.GetDiskBytes() - b.GetDiskBytes(),
	}
}

func addTo(a, b *yunchiv1.Resources) {
	a.Vcpus += b.GetVcpus()
	a.MemoryBytes += b.GetMemoryBytes()
	a.DiskBytes += b.GetDiskBytes()
}

func hostToAPI(hv state.HostView, seen *hostSeen) *yunchiv1.Host {
	h := hv.Host
	out := &yunchiv1.Host{
		Id: h.Id, Hostname: h.Hostname, Center: h.Center, Site: h.Site, Rack: h.Rack,
		Labels: h.Labels, Capacity: h.Capacity, Allocated: hv.Allocated,
		Free: sub(h.Capacity, hv.Allocated), State: h.State, VmCount: int32(hv.VMs),
		CpuModel: h.CpuModel, AgentVersion: h.AgentVersion, RegisteredAt: ts(h.RegisteredUnixNano),
	}
	if seen != nil {
		out.LastSeen = timestamppb.New(seen.at)
		out.Stats = seen.stats
	}
	return out
}
