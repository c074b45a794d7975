package api

import (
	"context"
	"sort"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// Limits on a reservation: beyond them it is a typo.
const (
	maxReserveVCPUs  = 1024
	maxReserveMemory = 64 << 40
	maxReserveDisk   = 1 << 50
)

// checkRatios validates the ratios given (nil: not given), cpu first.
func checkRatios(cpu, memory, disk *float64) error {
	for i, r := range []*float64{cpu, memory, disk} {
		if r != nil {
			if err := state.CheckRatio([]string{"cpu", "memory", "disk"}[i], *r); err != nil {
				return toStatus(err)
			}
		}
	}
	return nil
}

// UpdateHost records what an admin decides about a host: state, labels,
// owner, reservation, host-level ratios. Everything is validated before
// anything is written; Apply checks again.
func (s *Server) UpdateHost(ctx context.Context, req *yunchiv1.UpdateHostRequest) (*yunchiv1.Host, error) {
	hv, err := s.findHost(req.Id)
	if err != nil {
		return nil, err
	}
	cmd := &statev1.UpdateHost{HostId: req.Id, SetLabels: req.SetLabels, RemoveLabels: req.RemoveLabels, Owner: req.Owner,
		CpuRatio: req.CpuRatio, MemoryRatio: req.MemoryRatio, DiskRatio: req.DiskRatio}
	switch req.State {
	case yunchiv1.HostState_HOST_STATE_UNSPECIFIED, yunchiv1.HostState_HOST_STATE_READY,
		yunchiv1.HostState_HOST_STATE_MAINTENANCE, yunchiv1.HostState_HOST_STATE_DRAINING:
		cmd.AdminState = req.State
	case yunchiv1.HostState_HOST_STATE_DOWN:
		return nil, invalid("state down is derived from missed heartbeats and cannot be set: use ready, maintenance or draining")
	default:
		return nil, invalid("unknown host state %d: use ready, maintenance or draining", req.State)
	}
	if len(req.SetLabels) > 64 {
		return nil, invalid("%d labels at once: at most 64", len(req.SetLabels))
	}
	keys := make([]string, 0, len(req.SetLabels))
	for k := range req.SetLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := state.CheckLabel(k, req.SetLabels[k]); err != nil {
			return nil, toStatus(err)
		}
	}
	for _, k := range req.RemoveLabels {
		if err := state.CheckLabel(k, ""); err != nil {
			return nil, toStatus(err)
		}
	}
	if req.Owner != nil && *req.Owner != "" {
		if err := checkName("owner project", *req.Owner); err != nil {
			return nil, err
		}
	}
	if err := checkRatios(req.CpuRatio, req.MemoryRatio, req.DiskRatio); err != nil {
		return nil, err
	}
	if req.ReserveVcpus != nil || req.ReserveMemory != nil || req.ReserveDisk != nil {
		cur := hv.Sched.Reserved
		r := &yunchiv1.Resources{Vcpus: cur.VCPUs, MemoryBytes: cur.MemoryBytes, DiskBytes: cur.DiskBytes}
		if req.ReserveVcpus != nil {
			if *req.ReserveVcpus < 0 || *req.ReserveVcpus > maxReserveVCPUs {
				return nil, invalid("reserve vcpus %d is out of range: give 0 to %d", *req.ReserveVcpus, maxReserveVCPUs)
			}
			r.Vcpus = *req.ReserveVcpus
		}
		if req.ReserveMemory != nil {
			if r.MemoryBytes, err = parseSizeOrZero("reserve memory", *req.ReserveMemory, maxReserveMemory); err != nil {
				return nil, err
			}
		}
		if req.ReserveDisk != nil {
			if r.DiskBytes, err = parseSizeOrZero("reserve disk", *req.ReserveDisk, maxReserveDisk); err != nil {
				return nil, err
			}
		}
		cmd.Reserved = r
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_UpdateHost{UpdateHost: cmd}}); err != nil {
		return nil, err
	}
	hv, _ = s.store.Host(req.Id)
	s.log.Info("host updated", "host", req.Id, "state", hv.State, "owner", hv.Host.Owner)
	return hostToAPI(hv, s.seen.get(req.Id)), nil
}

func (s *Server) SetRatios(ctx context.Context, req *yunchiv1.SetRatiosRequest) (*yunchiv1.RatioSetting, error) {
	switch req.Scope {
	case state.ScopeCenter:
		if err := checkName("center", req.Name); err != nil {
			return nil, err
		}
		if err := s.checkCenterExists(req.Name); err != nil {
			return nil, err
		}
	case state.ScopeHostGroup:
		if req.Name == "" {
			return nil, invalid("host group name is empty")
		}
		if err := state.CheckLabel(state.HostGroupLabel, req.Name); err != nil {
			return nil, invalid("host group %q is not valid: use letters, digits, '_', '.' and '-'", req.Name)
		}
	case "":
		return nil, invalid("scope is missing: give center or host_group")
	default:
		return nil, invalid("scope %q is not valid: give center or host_group", req.Scope)
	}
	if req.Cpu == nil && req.Memory == nil && req.Disk == nil {
		return nil, invalid("no ratio given: set at least one of cpu, memory, disk")
	}
	if err := checkRatios(req.Cpu, req.Memory, req.Disk); err != nil {
		return nil, err
	}
	v, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_SetRatios{SetRatios: &statev1.SetRatios{
		Scope: req.Scope, Name: req.Name, Cpu: req.Cpu, Memory: req.Memory, Disk: req.Disk,
	}}})
	if err != nil {
		return nil, err
	}
	rec := v.(*statev1.RatioRecord)
	s.log.Info("ratios set", "scope", rec.Scope, "name", rec.Name, "ratios", rec.Ratios.String())
	return &yunchiv1.RatioSetting{Scope: rec.Scope, Name: rec.Name, Ratios: rec.Ratios}, nil
}

func (s *Server) ListRatios(ctx context.Context, req *yunchiv1.ListRatiosRequest) (*yunchiv1.ListRatiosResponse, error) {
	d := scheduler.DefaultRatios
	out := &yunchiv1.ListRatiosResponse{
		Defaults: &yunchiv1.Ratios{Cpu: d.CPU, Memory: d.Memory, Disk: d.Disk},
		Settings: []*yunchiv1.RatioSetting{},
	}
	for _, r := range s.store.Ratios() {
		out.Settings = append(out.Settings, &yunchiv1.RatioSetting{Scope: r.Scope, Name: r.Name, Ratios: r.Ratios})
	}
	return out, nil
}
