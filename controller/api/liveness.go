package api

import (
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Liveness lives in controller/leader: the leader hears heartbeats and
// records them in the log once per period; every controller reads the
// replicated last heartbeat and state of a host from its own state. What
// a heartbeat says beyond that (host stats, guests' usage) only the
// leader has, in memory: followers answer without it.

// VMConditionHostDown is set on a VM whose host has missed its heartbeats.
const VMConditionHostDown = "host-down"

// hostInfo is what a VM's answer says about its host.
type hostInfo struct {
	center        string
	down          bool
	lastHeartbeat int64
	// vms is the guests' usage by the host's last heartbeat to this
	// leader, received at measured (none on followers).
	vms      []*yunchiv1.VMStats
	measured time.Time
}

func (s *Server) hostInfo(id string) hostInfo {
	hs, ok := s.store.HostSummary(id)
	if !ok {
		return hostInfo{}
	}
	return s.hostInfoOf(id, hs)
}

func (s *Server) hostInfoOf(id string, hs state.HostSummary) hostInfo {
	h := hostInfo{
		center:        hs.Center,
		down:          hs.State == statev1.HostState_HOST_STATE_DOWN,
		lastHeartbeat: hs.LastHeartbeatUnixNano,
	}
	if s.live != nil {
		h.vms, h.measured = s.live.VMStats(id)
	}
	return h
}

// usage is what the host last said VM id uses, stamped with when the
// leader received it; nil when it said nothing of it (the guest is not
// running there, or this controller is not the leader).
func (h hostInfo) usage(id string) *yunchiv1.VMUsage {
	for _, s := range h.vms {
		if s.GetVmId() == id && s.GetUsage() != nil {
			u := proto.Clone(s.GetUsage()).(*yunchiv1.VMUsage) // the leader's copy is shared
			u.MeasuredAt = timestamppb.New(h.measured)
			return u
		}
	}
	return nil
}

// maxVMStats bounds the guests one heartbeat may report the usage of.
const maxVMStats = 10000

// checkVMStats refuses a heartbeat whose guests' usage is not one entry
// per VM id.
func checkVMStats(hostID string, vms []*yunchiv1.VMStats) error {
	if len(vms) > maxVMStats {
		return invalid("host %s: heartbeat reports the usage of %d guests: at most %d are allowed", hostID, len(vms), maxVMStats)
	}
	seen := make(map[string]bool, len(vms))
	for _, v := range vms {
		id := v.GetVmId()
		switch {
		case id == "":
			return invalid("host %s: heartbeat reports usage without a vm id", hostID)
		case len(id) > maxVMIDLen:
			return invalid("host %s: heartbeat reports usage of a vm id %d bytes long: at most %d are allowed", hostID, len(id), maxVMIDLen)
		case seen[id]:
			return invalid("host %s: heartbeat reports the usage of vm %q twice", hostID, id)
		case v.GetUsage() == nil:
			return invalid("host %s: heartbeat names vm %q without its usage", hostID, id)
		}
		if err := checkText("host "+hostID+": heartbeat vm id", id); err != nil {
			return err
		}
		seen[id] = true
	}
	return nil
}

// maxVMIDLen: VM ids are UUIDs (36 bytes); room for other forms.
const maxVMIDLen = 128
