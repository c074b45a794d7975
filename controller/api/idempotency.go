package api

import (
	"context"
	"crypto/sha256"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/state"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// idempotencyKey is the gRPC metadata key of a request id; REST sends it
// as the Idempotency-Key header, which the gateway passes on under this
// name. Not x-request-id: proxies and tracing set that one per hop or per
// user action, and reusing it across different requests would be refused.
const idempotencyKey = "idempotency-key"

// maxIdempotencyKey bounds a key's length (a UUID is 36).
const maxIdempotencyKey = 128

// idempotent lists the mutating calls that accept a request id. Agents'
// calls (register, heartbeat, status) are idempotent by nature and take none.
var idempotent = map[string]bool{
	yunchiv1.VMService_CreateVM_FullMethodName:          true,
	yunchiv1.VMService_CreateVMs_FullMethodName:         true,
	yunchiv1.VMService_StartVM_FullMethodName:           true,
	yunchiv1.VMService_StopVM_FullMethodName:            true,
	yunchiv1.VMService_RebootVM_FullMethodName:          true,
	yunchiv1.VMService_DeleteVM_FullMethodName:          true,
	yunchiv1.HostService_UpdateHost_FullMethodName:      true,
	yunchiv1.RatioService_SetRatios_FullMethodName:      true,
	yunchiv1.GroupService_CreateGroup_FullMethodName:    true,
	yunchiv1.GroupService_DeleteGroup_FullMethodName:    true,
	yunchiv1.QuotaService_SetQuota_FullMethodName:       true,
	yunchiv1.ClusterService_JoinCluster_FullMethodName:  true,
	yunchiv1.ClusterService_RemoveMember_FullMethodName: true,
	yunchiv1.ImageService_DeleteImage_FullMethodName:    true,
	yunchiv1.VolumeService_CreateVolume_FullMethodName:  true,
	yunchiv1.VolumeService_AttachVolume_FullMethodName:  true,
	yunchiv1.VolumeService_DetachVolume_FullMethodName:  true,
	yunchiv1.VolumeService_DeleteVolume_FullMethodName:  true,
	// Two sites, three centers (dr.go). RunBackup's answer is not rebuilt
	// from the outcome: its handler runs again and Apply answers the id
	// with the first outcome (no second set of jobs).
	yunchiv1.TopologyService_SetCenter_FullMethodName:        true,
	yunchiv1.TopologyService_DeleteCenter_FullMethodName:     true,
	yunchiv1.ProtectionService_CreatePolicy_FullMethodName:   true,
	yunchiv1.ProtectionService_DeletePolicy_FullMethodName:   true,
	yunchiv1.ProtectionService_ProtectVM_FullMethodName:      true,
	yunchiv1.ProtectionService_ProtectProject_FullMethodName: true,
	yunchiv1.BackupService_RestoreVM_FullMethodName:          true,
	yunchiv1.BackupService_RunBackup_FullMethodName:          true,
}

// checkIdempotencyKey validates the key values of one request.
func checkIdempotencyKey(vals []string) (string, error) {
	if len(vals) != 1 {
		return "", invalid("%d idempotency keys given: send one per request", len(vals))
	}
	k := vals[0]
	if k == "" || len(k) > maxIdempotencyKey {
		return "", invalid("idempotency key is %d characters long: give 1 to %d (a UUID is fine)", len(k), maxIdempotencyKey)
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return "", invalid("idempotency key %.40q has character %q: use letters, digits, '-', '_', '.' or ':' (a UUID is fine)", k, c)
		}
	}
	return k, nil
}

// requestHash identifies what was asked, so that a key sent again with a
// different request is refused rather than answered with another's result.
func requestHash(method string, req any) ([]byte, error) {
	h := sha256.New()
	h.Write([]byte(method))
	h.Write([]byte{0})
	if m, ok := req.(proto.Message); ok {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			return nil, invalid("cannot encode the request: %v", err)
		}
		h.Write(b)
	}
	return h.Sum(nil), nil
}

// IdempotencyInterceptor gives a mutating call that carries a request id
// the first outcome of that id. It runs on the leader (after
// LeaderInterceptor): it looks the id up before the handler decides
// anything (a retried create is not placed again, nor refused as "already
// exists"), and otherwise passes the id to the commands the handler
// proposes, which Apply remembers (or, if the same id is already in the
// log, answers with the first outcome).
func (s *Server) IdempotencyInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !idempotent[info.FullMethod] {
		return handler(ctx, req)
	}
	vals := metadata.ValueFromIncomingContext(ctx, idempotencyKey)
	if len(vals) == 0 {
		return handler(ctx, req)
	}
	id, err := checkIdempotencyKey(vals)
	if err != nil {
		return nil, err
	}
	hash, err := requestHash(info.FullMethod, req)
	if err != nil {
		return nil, err
	}
	// LeaderInterceptor, before this, has caught a new leader up with
	// earlier terms' entries (until then an id in the log would look
	// unknown here): every method here is mutating.
	if resp, ok, err := s.replay(info.FullMethod, id, hash); ok {
		s.log.Info("request id seen before: answering with its first outcome", "method", info.FullMethod, "id", id)
		return resp, err
	}
	resp, err := handler(state.WithRequest(ctx, id, hash), req)
	if err != nil {
		// The same id may have been applied meanwhile (an earlier send
		// still in flight when this one arrived): its outcome is the answer.
		if r, ok, rerr := s.replay(info.FullMethod, id, hash); ok {
			return r, rerr
		}
	}
	return resp, err
}

// replay answers a request from the remembered outcome of its id. ok is
// false when the id is unknown, or when the method's answer cannot be
// rebuilt from the outcome (the handler then runs, and Apply still does
// not apply the id twice).
func (s *Server) replay(method, id string, hash []byte) (any, bool, error) {
	r, ok := s.store.Request(id)
	if !ok {
		return nil, false, nil
	}
	if string(r.Hash) != string(hash) {
		return nil, true, toStatus(state.ReusedRequestID(id))
	}
	res, err := state.Outcome(r)
	if err != nil {
		return nil, true, toStatus(err)
	}
	vms := res.VMs
	switch method {
	case yunchiv1.VMService_CreateVM_FullMethodName, yunchiv1.VMService_StartVM_FullMethodName,
		yunchiv1.VMService_StopVM_FullMethodName, yunchiv1.VMService_RebootVM_FullMethodName,
		yunchiv1.VMService_DeleteVM_FullMethodName:
		if len(vms) == 1 {
			return s.vmOut(vms[0]), true, nil
		}
	case yunchiv1.VMService_CreateVMs_FullMethodName:
		if len(vms) > 0 {
			out := &yunchiv1.CreateVMsResponse{}
			for _, vm := range vms {
				v := s.vmOut(vm)
				out.Vms = append(out.Vms, v)
				// Scores and runners-up were the first answer's only.
				out.Decisions = append(out.Decisions, &yunchiv1.PlacementDecision{VmName: vm.Name, HostId: vm.HostId, HostCenter: v.HostCenter})
			}
			return out, true, nil
		}
	case yunchiv1.RatioService_SetRatios_FullMethodName:
		if rec := res.Ratio; rec != nil {
			return &yunchiv1.RatioSetting{Scope: rec.Scope, Name: rec.Name, Ratios: recRatiosToAPI(rec.Ratios)}, true, nil
		}
	case yunchiv1.GroupService_CreateGroup_FullMethodName:
		if rec := res.Group; rec != nil {
			gv, found := s.store.PlacementGroup(rec.Project, rec.Name)
			if !found {
				gv = state.GroupView{Group: rec}
			}
			return groupToAPI(gv), true, nil
		}
	case yunchiv1.GroupService_DeleteGroup_FullMethodName:
		return &yunchiv1.DeleteGroupResponse{}, true, nil
	case yunchiv1.ImageService_DeleteImage_FullMethodName:
		if rec := res.Image; rec != nil {
			return s.imageOut(rec), true, nil
		}
	case yunchiv1.VolumeService_CreateVolume_FullMethodName, yunchiv1.VolumeService_AttachVolume_FullMethodName,
		yunchiv1.VolumeService_DetachVolume_FullMethodName, yunchiv1.VolumeService_DeleteVolume_FullMethodName:
		// The volume as the first outcome left it (its VM named as now).
		if rec := res.Volume; rec != nil {
			return s.volumeOut(rec), true, nil
		}
	case yunchiv1.BackupService_RestoreVM_FullMethodName:
		if len(vms) == 1 {
			return s.vmOut(vms[0]), true, nil
		}
	case yunchiv1.TopologyService_SetCenter_FullMethodName:
		if rec := res.Center; rec != nil {
			return centerToAPI(rec), true, nil
		}
	case yunchiv1.TopologyService_DeleteCenter_FullMethodName:
		return &yunchiv1.DeleteCenterResponse{}, true, nil
	case yunchiv1.ProtectionService_CreatePolicy_FullMethodName:
		if rec := res.Policy; rec != nil {
			return protectionPolicyToAPI(rec, 0, 0), true, nil
		}
	case yunchiv1.ProtectionService_DeletePolicy_FullMethodName:
		return &yunchiv1.DeletePolicyResponse{}, true, nil
	case yunchiv1.ProtectionService_ProtectVM_FullMethodName:
		if len(vms) == 1 {
			return &yunchiv1.Protection{Project: vms[0].Project, Vm: vms[0].Name, Policy: vms[0].ProtectionPolicy}, true, nil
		}
	case yunchiv1.ProtectionService_ProtectProject_FullMethodName:
		if rec := res.Project; rec != nil {
			return &yunchiv1.Protection{Project: rec.Name, Policy: rec.ProtectionPolicy}, true, nil
		}
	case yunchiv1.QuotaService_SetQuota_FullMethodName:
		// The quota as it is now (the limits the request set, and today's use).
		if rec := res.Department; rec != nil {
			if q, err := s.quotaOut(rec.Name, ""); err == nil {
				return q, true, nil
			}
		}
		if rec := res.Project; rec != nil {
			if q, err := s.quotaOut(rec.Department, rec.Name); err == nil {
				return q, true, nil
			}
		}
	case yunchiv1.HostService_UpdateHost_FullMethodName:
		if rec := res.Host; rec != nil {
			if hv, found := s.store.Host(rec.Id); found {
				return hostToAPI(hv, s.live.Stats(rec.Id)), true, nil
			}
		}
	}
	return nil, false, nil
}
