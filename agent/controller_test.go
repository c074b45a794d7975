package agent_test

import (
	"context"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/agent"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// controller is the controllers' side of the agent protocol, small enough to
// read: the test sets the assignments, it records what the agent says, and it
// applies reports the way the real controller does (phase recorded, VM
// forgotten once the agent says it is gone). Several servers may serve one
// controller, like the members of one raft cluster.
type controller struct {
	mu            sync.Mutex
	index         uint64
	vms           map[string]*yunchiv1.Assignment
	forgotten     bool // answer heartbeats with known=false until the next registration
	registrations []*yunchiv1.HostFacts
	heartbeats    []*yunchiv1.HeartbeatRequest
	reports       []*yunchiv1.VMStatus
	watchers      map[chan struct{}]bool
	// Volumes placed on the host, and what the agent reported of them.
	vols       map[string]*yunchiv1.VolumeAssignment
	volReports []*yunchiv1.VolumeStatus
	// Backup jobs listed to the host, and what it reported (backup_test.go).
	bk backupLedger
	// Mirror exports listed to the host, and each report of them
	// (mirror_test.go).
	exports       []*yunchiv1.MirrorExport
	exportReports [][]*yunchiv1.MirrorExportStatus
}

func newController() *controller {
	return &controller{vms: map[string]*yunchiv1.Assignment{}, watchers: map[chan struct{}]bool{}, vols: map[string]*yunchiv1.VolumeAssignment{}}
}

// changed bumps the index and wakes the streams; c.mu is held.
func (c *controller) changed() {
	c.index++
	for w := range c.watchers {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

func (c *controller) RegisterHost(ctx context.Context, req *yunchiv1.RegisterHostRequest) (*yunchiv1.RegisterHostResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.registrations = append(c.registrations, proto.Clone(req.GetFacts()).(*yunchiv1.HostFacts))
	c.forgotten = false
	return &yunchiv1.RegisterHostResponse{
		Host:                &yunchiv1.Host{Id: req.GetFacts().GetId(), State: yunchiv1.HostState_HOST_STATE_READY},
		HeartbeatIntervalMs: 20,
	}, nil
}

func (c *controller) Heartbeat(ctx context.Context, req *yunchiv1.HeartbeatRequest) (*yunchiv1.HeartbeatResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.heartbeats = append(c.heartbeats, proto.Clone(req).(*yunchiv1.HeartbeatRequest))
	return &yunchiv1.HeartbeatResponse{Known: !c.forgotten && len(c.registrations) > 0}, nil
}

func (c *controller) ReportVMStatus(ctx context.Context, req *yunchiv1.ReportVMStatusRequest) (*yunchiv1.ReportVMStatusResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range req.GetStatuses() {
		c.reports = append(c.reports, proto.Clone(st).(*yunchiv1.VMStatus))
		as := c.vms[st.GetVmId()]
		if as == nil {
			continue
		}
		if st.GetGone() {
			delete(c.vms, st.GetVmId())
		} else {
			as.Phase = st.GetPhase()
		}
	}
	if len(req.GetMirrorExports()) > 0 {
		var rep []*yunchiv1.MirrorExportStatus
		for _, e := range req.GetMirrorExports() {
			rep = append(rep, proto.Clone(e).(*yunchiv1.MirrorExportStatus))
		}
		c.exportReports = append(c.exportReports, rep)
	}
	for _, st := range req.GetVolumes() {
		c.volReports = append(c.volReports, proto.Clone(st).(*yunchiv1.VolumeStatus))
		v := c.vols[st.GetVolumeId()]
		switch {
		case v == nil:
		case st.GetGone() && v.GetDeleted():
			delete(c.vols, st.GetVolumeId())
		default:
			v.AttachedVmId, v.Message = st.GetAttachedVmId(), st.GetMessage()
		}
	}
	c.changed()
	return &yunchiv1.ReportVMStatusResponse{}, nil
}

func (c *controller) snapshot() *yunchiv1.Assignments {
	c.mu.Lock()
	defer c.mu.Unlock()
	set := &yunchiv1.Assignments{Index: c.index}
	for _, as := range c.vms {
		set.Vms = append(set.Vms, proto.Clone(as).(*yunchiv1.Assignment))
	}
	sort.Slice(set.Vms, func(i, j int) bool { return set.Vms[i].GetVmId() < set.Vms[j].GetVmId() })
	for _, v := range c.vols {
		set.Volumes = append(set.Volumes, proto.Clone(v).(*yunchiv1.VolumeAssignment))
	}
	sort.Slice(set.Volumes, func(i, j int) bool { return set.Volumes[i].GetVolumeId() < set.Volumes[j].GetVolumeId() })
	set.Backups = c.bk.listed()
	for _, e := range c.exports {
		set.MirrorExports = append(set.MirrorExports, proto.Clone(e).(*yunchiv1.MirrorExport))
	}
	return set
}

// putVolume adds or replaces a volume of the host.
func (c *controller) putVolume(v *yunchiv1.VolumeAssignment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.vols[v.GetVolumeId()] = proto.Clone(v).(*yunchiv1.VolumeAssignment)
	c.changed()
}

// updateVolume changes one volume in place.
func (c *controller) updateVolume(id string, fn func(*yunchiv1.VolumeAssignment)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fn(c.vols[id])
	c.changed()
}

// volume is the controller's record of a volume (nil: none).
func (c *controller) volume(id string) *yunchiv1.VolumeAssignment {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v := c.vols[id]; v != nil {
		return proto.Clone(v).(*yunchiv1.VolumeAssignment)
	}
	return nil
}

// volumeReports returns what was reported of one volume, oldest first.
func (c *controller) volumeReports(id string) []*yunchiv1.VolumeStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*yunchiv1.VolumeStatus
	for _, st := range c.volReports {
		if st.GetVolumeId() == id {
			out = append(out, st)
		}
	}
	return out
}

// put adds or replaces assignments.
func (c *controller) put(as ...*yunchiv1.Assignment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range as {
		c.vms[a.GetVmId()] = proto.Clone(a).(*yunchiv1.Assignment)
	}
	c.changed()
}

// update changes one assignment in place.
func (c *controller) update(id string, fn func(*yunchiv1.Assignment)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fn(c.vms[id])
	c.changed()
}

// drop removes an assignment without a word to the agent, as when a VM is
// deleted while its host's agent is down.
func (c *controller) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.vms, id)
	c.changed()
}

func (c *controller) forgetHost() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgotten = true
}

func (c *controller) assignment(id string) *yunchiv1.Assignment {
	c.mu.Lock()
	defer c.mu.Unlock()
	if as := c.vms[id]; as != nil {
		return proto.Clone(as).(*yunchiv1.Assignment)
	}
	return nil
}

func (c *controller) phase(id string) yunchiv1.VMPhase {
	return c.assignment(id).GetPhase()
}

func (c *controller) registered() []*yunchiv1.HostFacts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.registrations)
}

func (c *controller) lastHeartbeat() *yunchiv1.HeartbeatRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.heartbeats) == 0 {
		return nil
	}
	return c.heartbeats[len(c.heartbeats)-1]
}

// reportsFor returns the statuses reported for one VM, oldest first.
func (c *controller) reportsFor(id string) []*yunchiv1.VMStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*yunchiv1.VMStatus
	for _, st := range c.reports {
		if st.GetVmId() == id {
			out = append(out, st)
		}
	}
	return out
}

// server is one gRPC endpoint of a controller, like one raft member.
type server struct {
	yunchiv1.UnimplementedAgentServiceServer
	c    *controller
	addr string
	stop func()
	// hung makes the member useless without closing anything: unary calls
	// fail, open streams go silent (a partitioned or wedged controller).
	hung atomic.Bool
	// frozen makes it answer nothing at all, as under SIGSTOP: unary calls
	// wait until the caller gives up, open streams go silent.
	frozen atomic.Bool
}

var errHung = status.Error(codes.Unavailable, "controller hung")

// unavailable is what s does instead of serving a call: nil when it serves.
func (s *server) unavailable(ctx context.Context) error {
	if s.frozen.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	if s.hung.Load() {
		return errHung
	}
	return nil
}

func (s *server) RegisterHost(ctx context.Context, req *yunchiv1.RegisterHostRequest) (*yunchiv1.RegisterHostResponse, error) {
	if err := s.unavailable(ctx); err != nil {
		return nil, err
	}
	return s.c.RegisterHost(ctx, req)
}

func (s *server) Heartbeat(ctx context.Context, req *yunchiv1.HeartbeatRequest) (*yunchiv1.HeartbeatResponse, error) {
	if err := s.unavailable(ctx); err != nil {
		return nil, err
	}
	return s.c.Heartbeat(ctx, req)
}

func (s *server) ReportVMStatus(ctx context.Context, req *yunchiv1.ReportVMStatusRequest) (*yunchiv1.ReportVMStatusResponse, error) {
	if err := s.unavailable(ctx); err != nil {
		return nil, err
	}
	return s.c.ReportVMStatus(ctx, req)
}

func (s *server) WatchAssignments(req *yunchiv1.WatchAssignmentsRequest, stream grpc.ServerStreamingServer[yunchiv1.Assignments]) error {
	wake := make(chan struct{}, 1)
	s.c.mu.Lock()
	s.c.watchers[wake] = true
	s.c.mu.Unlock()
	defer func() {
		s.c.mu.Lock()
		delete(s.c.watchers, wake)
		s.c.mu.Unlock()
	}()
	for {
		if !s.hung.Load() && !s.frozen.Load() {
			if err := stream.Send(s.c.snapshot()); err != nil {
				return err
			}
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-wake:
		}
	}
}

// serve starts a gRPC server for c on 127.0.0.1; it is stopped at the end of
// the test if not before.
func serve(t *testing.T, c *controller) *server {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{c: c, addr: lis.Addr().String()}
	srv := grpc.NewServer()
	yunchiv1.RegisterAgentServiceServer(srv, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	s.stop = sync.OnceFunc(func() {
		srv.Stop()
		<-done
	})
	t.Cleanup(s.stop)
	return s
}

// spy is the real driver, counting the calls that must not happen twice.
type spy struct {
	agent.Driver
	defines, starts, reboots atomic.Int32
}

func (s *spy) Define(ctx context.Context, spec agent.DomainSpec) error {
	s.defines.Add(1)
	return s.Driver.Define(ctx, spec)
}

func (s *spy) Start(ctx context.Context, id string) error {
	s.starts.Add(1)
	return s.Driver.Start(ctx, id)
}

func (s *spy) Reboot(ctx context.Context, id string) error {
	s.reboots.Add(1)
	return s.Driver.Reboot(ctx, id)
}
