package api

import (
	"context"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Limits on a reservation: beyond them it is a typo.
const (
	maxReserveVCPUs  = 1024
	maxReserveMemory = 64 << 40
	maxReserveDisk   = 1 << 50
)

// UpdateHost records what an admin decides about a host: state, labels,
// owner, reservation, host-level ratios. Everything is validated before
// anything is written; Apply checks again.
func (s *Server) UpdateHost(ctx context.Context, req *yunchiv1.UpdateHostRequest) (*yunchiv1.Host, error) {
	hv, err := s.findHost(req.Id)
	if err != nil {
		return nil, err
	}
	cmd := &statev1.UpdateHost{HostId: req.Id, AdminState: hostStateFromAPI(req.State), SetLabels: req.SetLabels, RemoveLabels: req.RemoveLabels,
		Owner: req.Owner, CpuRatio: req.CpuRatio, MemoryRatio: req.MemoryRatio, DiskRatio: req.DiskRatio, Force: req.Force}
	// Sizes arrive as text ("2GiB"): parsing them is the API's part; the
	// rest is checked by the state, as Apply will.
	if req.ReserveVcpus != nil || req.ReserveMemory != nil || req.ReserveDisk != nil {
		cur := hv.Facts.Reserved
		r := &statev1.Resources{Vcpus: cur.VCPUs, MemoryBytes: cur.MemoryBytes, DiskBytes: cur.DiskBytes}
		if req.ReserveVcpus != nil {
			if *req.ReserveVcpus < 0 || *req.ReserveVcpus > maxReserveVCPUs {
				return nil, invalid("reserve vcpus %d is out of range: give 0 to %d", *req.ReserveVcpus, maxReserveVCPUs)
			}
			r.Vcpus = *req.ReserveVcpus
		}
		if req.ReserveMemory != nil {
			if r.MemoryBytes, err = checkSize("reserve memory", *req.ReserveMemory, 0, maxReserveMemory); err != nil {
				return nil, err
			}
		}
		if req.ReserveDisk != nil {
			if r.DiskBytes, err = checkSize("reserve disk", *req.ReserveDisk, 0, maxReserveDisk); err != nil {
				return nil, err
			}
		}
		cmd.Reserved = r
	}
	if err := s.store.CheckUpdateHost(cmd); err != nil {
		return nil, toStatus(err)
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_UpdateHost{UpdateHost: cmd}}); err != nil {
		return nil, err
	}
	hv, _ = s.store.Host(req.Id)
	s.log.Info("host updated", "host", req.Id, "state", hv.Facts.State, "owner", hv.Host.Owner)
	return hostToAPI(hv, s.live.Stats(req.Id)), nil
}

func (s *Server) SetRatios(ctx context.Context, req *yunchiv1.SetRatiosRequest) (*yunchiv1.RatioSetting, error) {
	cmd := &statev1.SetRatios{Scope: req.Scope, Name: req.Name, Cpu: req.Cpu, Memory: req.Memory, Disk: req.Disk, Force: req.Force}
	if err := s.store.CheckSetRatios(cmd); err != nil {
		return nil, toStatus(err)
	}
	// A center with no host is a typo, not a setting for later.
	if req.Scope == state.ScopeCenter {
		if err := s.checkCenterExists(req.Name); err != nil {
			return nil, err
		}
	}
	res, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_SetRatios{SetRatios: cmd}})
	if err != nil {
		return nil, err
	}
	rec := res.Ratio
	s.log.Info("ratios set", "scope", rec.Scope, "name", rec.Name, "ratios", rec.Ratios.String())
	return &yunchiv1.RatioSetting{Scope: rec.Scope, Name: rec.Name, Ratios: recRatiosToAPI(rec.Ratios)}, nil
}

func (s *Server) ListRatios(ctx context.Context, req *yunchiv1.ListRatiosRequest) (*yunchiv1.ListRatiosResponse, error) {
	d := state.DefaultRatios
	out := &yunchiv1.ListRatiosResponse{
		Defaults: &yunchiv1.Ratios{Cpu: d.CPU, Memory: d.Memory, Disk: d.Disk},
		Settings: []*yunchiv1.RatioSetting{},
	}
	for _, r := range s.store.Ratios() {
		out.Settings = append(out.Settings, &yunchiv1.RatioSetting{Scope: r.Scope, Name: r.Name, Ratios: recRatiosToAPI(r.Ratios)})
	}
	return out, nil
}
