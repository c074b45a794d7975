package api

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func checkFacts(f *yunchiv1.HostFacts) error {
	if f == nil {
		return invalid("host facts are missing")
	}
	if err := checkHostID(f.Id); err != nil {
		return err
	}
	if err := checkName("center", f.Center); err != nil {
		return err
	}
	for _, t := range []struct{ what, value string }{
		{"hostname", f.Hostname}, {"cpu model", f.CpuModel}, {"agent version", f.AgentVersion},
		{"libvirt uri", f.LibvirtUri}, {"hypervisor", f.Hypervisor}, {"libvirt version", f.LibvirtVersion},
		{"storage pool", f.StoragePool},
	} {
		if err := checkText("host "+f.Id+": "+t.what, t.value); err != nil {
			return err
		}
	}
	if f.SharedStorage != "" {
		if err := checkName("host "+f.Id+": shared storage", f.SharedStorage); err != nil {
			return err
		}
	}
	c := f.Capacity
	if c.GetVcpus() <= 0 || c.GetMemoryBytes() <= 0 || c.GetDiskBytes() < 0 {
		return invalid("host %s reports no usable capacity (vcpus %d, memory %d bytes)", f.Id, c.GetVcpus(), c.GetMemoryBytes())
	}
	return nil
}

func (s *Server) RegisterHost(ctx context.Context, req *yunchiv1.RegisterHostRequest) (*yunchiv1.RegisterHostResponse, error) {
	f := req.Facts
	if err := checkFacts(f); err != nil {
		return nil, err
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
		Id: f.Id, Hostname: f.Hostname, Center: f.Center, Site: f.Site, Rack: f.Rack, Labels: f.Labels,
		Capacity: resFromAPI(f.Capacity), CpuModel: f.CpuModel, AgentVersion: f.AgentVersion,
		Hypervisor: f.Hypervisor, LibvirtVersion: f.LibvirtVersion,
		StoragePool: f.StoragePool, SharedStorage: f.SharedStorage,
	}}}}); err != nil {
		return nil, err
	}
	s.live.Heard(f.Id, nil, nil)
	hv, _ := s.store.Host(f.Id)
	s.log.Info("host registered", "host", f.Id, "center", f.Center)
	return &yunchiv1.RegisterHostResponse{Host: hostToAPI(hv, s.live.Stats(f.Id)), HeartbeatIntervalMs: s.HeartbeatInterval.Milliseconds()}, nil
}

func (s *Server) Heartbeat(ctx context.Context, req *yunchiv1.HeartbeatRequest) (*yunchiv1.HeartbeatResponse, error) {
	if err := checkHostID(req.HostId); err != nil {
		return nil, err
	}
	if err := checkVMStats(req.HostId, req.VmStats); err != nil {
		return nil, err
	}
	live, ok := s.store.HostLiveness(req.HostId)
	if !ok {
		return &yunchiv1.HeartbeatResponse{Known: false}, nil
	}
	s.live.Heard(req.HostId, req.Stats, req.VmStats)
	if live != statev1.HostState_HOST_STATE_READY {
		if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{
			HostId: req.HostId, State: statev1.HostState_HOST_STATE_READY,
		}}}); err != nil {
			return nil, err
		}
		s.log.Info("host is back", "host", req.HostId)
	}
	return &yunchiv1.HeartbeatResponse{Known: true}, nil
}

func (s *Server) ReportVMStatus(ctx context.Context, req *yunchiv1.ReportVMStatusRequest) (*yunchiv1.ReportVMStatusResponse, error) {
	if err := checkHostID(req.HostId); err != nil {
		return nil, err
	}
	if err := checkVolumeStatuses(req.HostId, req.Volumes); err != nil {
		return nil, err
	}
	if len(req.Statuses) == 0 && len(req.Volumes) == 0 && len(req.MirrorExports) == 0 {
		return &yunchiv1.ReportVMStatusResponse{}, nil
	}
	var exports []*statev1.MirrorExportReport
	for _, e := range req.MirrorExports {
		if e.GetVmId() == "" || len(e.Address) > 300 || len(e.Error) > 4096 {
			return nil, invalid("mirror export status: give the vm id, an address of at most 300 bytes and an error of at most 4 KiB")
		}
		exports = append(exports, &statev1.MirrorExportReport{VmId: e.VmId, Address: e.Address, Error: oneLine(e.Error)})
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{
		HostId: req.HostId, Statuses: statusesFromAPI(req.Statuses), Volumes: volumeStatusesFromAPI(req.Volumes),
		MirrorExports: exports,
	}}}); err != nil {
		return nil, err
	}
	return &yunchiv1.ReportVMStatusResponse{}, nil
}

// WatchAssignments streams the full desired set for a host whenever it
// changes. Served from local state: any controller can feed an agent.
func (s *Server) WatchAssignments(req *yunchiv1.WatchAssignmentsRequest, stream yunchiv1.AgentService_WatchAssignmentsServer) error {
	if err := checkHostID(req.HostId); err != nil {
		return err
	}
	if err := s.waitForHost(stream.Context(), req.HostId); err != nil {
		return err
	}
	first, lastRev := true, uint64(0)
	for {
		changed := s.store.Changed()
		// A change elsewhere in the cluster costs this stream one lookup;
		// the host's VMs are read only when one of them changed.
		if rev := s.store.HostRevision(req.HostId); first || rev != lastRev {
			msg := &yunchiv1.Assignments{Index: s.store.Index()}
			for _, v := range s.store.VMs("", req.HostId) {
				a := &yunchiv1.Assignment{
					VmId: v.Id, Name: v.Name, Project: v.Project, Vcpus: v.Vcpus,
					MemoryBytes: v.MemoryBytes, DiskBytes: v.DiskBytes, Desired: powerToAPI(v.Desired),
					RebootSeq: v.RebootSeq, Phase: phaseToAPI(v.Phase),
					UserData: v.UserData, SshAuthorizedKeys: v.SshAuthorizedKeys,
				}
				if img := v.Image; img != nil {
					a.Image = &yunchiv1.ImageRef{Sha256: img.Sha256, Format: formatToAPI(img.Format), SizeBytes: img.SizeBytes, VirtualSizeBytes: img.VirtualSizeBytes}
				}
				a.Restore = s.restoreRef(v.Restore)
				a.Isolated = v.Isolated
				if m := v.GetMirror(); m.GetAddress() != "" {
					a.Mirror = &yunchiv1.MirrorRef{Address: m.Address, ExportName: m.ExportName, TargetHost: m.HostId, Center: m.Center}
				}
				msg.Vms = append(msg.Vms, a)
			}
			msg.Volumes = volumeAssignments(s.store.HostVolumes(req.HostId))
			for _, v := range s.drView().MirrorsOn(req.HostId) {
				msg.MirrorExports = append(msg.MirrorExports, &yunchiv1.MirrorExport{
					VmId: v.Id, ExportName: v.Mirror.ExportName, SizeBytes: v.DiskBytes, SourceHost: v.HostId})
			}
			msg.Backups = s.backupAssignments(req.HostId)
			if err := stream.Send(msg); err != nil {
				return err
			}
			first, lastRev = false, rev
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// waitForHost gives this node a moment to apply the registration of a host
// that registered through another controller (the write went to the leader;
// this follower may not have applied it yet) before answering NotFound.
func (s *Server) waitForHost(ctx context.Context, id string) error {
	found, err := s.awaitState(ctx, 5*time.Second, func() bool {
		_, ok := s.store.Host(id)
		return ok
	})
	if err == nil && !found {
		err = status.Errorf(codes.NotFound, "host %q is not registered: register it first (the agent does so when it starts)", id)
	}
	return err
}
