package api

import (
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Liveness lives in controller/leader: the leader hears heartbeats and
// records them in the log once per period; every controller reads the
// replicated last heartbeat and state of a host from its own state.

// VMConditionHostDown is set on a VM whose host has missed its heartbeats.
const VMConditionHostDown = "host-down"

// hostInfo is what a VM's answer says about its host.
type hostInfo struct {
	center        string
	down          bool
	lastHeartbeat int64
}

func (s *Server) hostInfo(id string) hostInfo {
	hv, ok := s.store.Host(id)
	if !ok {
		return hostInfo{}
	}
	return hostInfoOf(hv)
}

func hostInfoOf(hv state.HostView) hostInfo {
	return hostInfo{
		center:        hv.Host.Center,
		down:          hv.Host.State == statev1.HostState_HOST_STATE_DOWN,
		lastHeartbeat: hv.Host.LastHeartbeatUnixNano,
	}
}
