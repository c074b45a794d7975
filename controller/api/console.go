package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Console sessions. The controller never dials an agent: every agent keeps
// a WatchConsoles stream open on every controller, so whichever controller
// a user's Console call reaches asks the VM's agent, over that stream, to
// open the console and dial back with ConsoleStream under a fresh session
// id; the controller then relays bytes between the two calls. Nothing of
// a session goes through raft: its audit records (attach, detach) go
// through the audit recorder.

// consoleAttachTimeout bounds how long a Console call waits for the agent
// to dial back with the console open.
const consoleAttachTimeout = 15 * time.Second

// consoleChunk bounds one relayed message (a console is a few bytes at a
// time; a paste may be more).
const consoleChunk = 64 << 10

// consoleBroker pairs users' Console calls with agents' ConsoleStream
// calls on this controller.
type consoleBroker struct {
	mu sync.Mutex
	// watchers are the agents' open WatchConsoles streams, by host id (an
	// agent that reconnected may briefly have two: the newest is asked).
	watchers map[string][]*consoleWatcher
	// pending are sessions asked of an agent and not yet dialled back.
	pending map[string]*consoleSession
}

type consoleWatcher struct {
	sessions chan *yunchiv1.ConsoleSession
}

// consoleSession is one session between its ask and its end.
type consoleSession struct {
	host string
	// agent receives the agent's stream when it dials back; the agent's
	// handler then waits on done until the relay ends.
	agent chan yunchiv1.AgentService_ConsoleStreamServer
	done  chan struct{}
}

func (b *consoleBroker) init() {
	if b.watchers == nil {
		b.watchers = map[string][]*consoleWatcher{}
		b.pending = map[string]*consoleSession{}
	}
}

func (b *consoleBroker) addWatcher(host string) *consoleWatcher {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	w := &consoleWatcher{sessions: make(chan *yunchiv1.ConsoleSession, 8)}
	b.watchers[host] = append(b.watchers[host], w)
	return w
}

func (b *consoleBroker) removeWatcher(host string, w *consoleWatcher) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ws := b.watchers[host]
	for i := range ws {
		if ws[i] == w {
			ws = append(ws[:i:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(b.watchers, host)
	} else {
		b.watchers[host] = ws
	}
}

// ask asks host's agent to open vmID's console; the session is pending
// until the agent dials back or the caller gives up (forget).
func (b *consoleBroker) ask(host, vmID string) (string, *consoleSession, error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", nil, status.Errorf(codes.Internal, "console: session id: %v", err)
	}
	id := hex.EncodeToString(raw[:])
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	ws := b.watchers[host]
	if len(ws) == 0 {
		return "", nil, status.Errorf(codes.Unavailable, "the agent of host %q is not connected to this controller: try another controller, or check the agent", host)
	}
	sess := &consoleSession{host: host, agent: make(chan yunchiv1.AgentService_ConsoleStreamServer, 1), done: make(chan struct{})}
	select {
	case ws[len(ws)-1].sessions <- &yunchiv1.ConsoleSession{SessionId: id, VmId: vmID}:
	default:
		return "", nil, status.Errorf(codes.Unavailable, "the agent of host %q has too many console sessions starting: try again", host)
	}
	b.pending[id] = sess
	return id, sess, nil
}

func (b *consoleBroker) forget(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.pending, id)
}

// claim hands the agent's stream to the session it dialled back for.
func (b *consoleBroker) claim(host, id string) (*consoleSession, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	sess, ok := b.pending[id]
	if !ok || sess.host != host {
		return nil, status.Error(codes.NotFound, "console session not found: it ended or was never asked of this host")
	}
	delete(b.pending, id)
	return sess, nil
}

// WatchConsoles streams the console sessions asked of this controller for
// VMs on the calling agent's host.
func (s *Server) WatchConsoles(req *yunchiv1.WatchConsolesRequest, stream yunchiv1.AgentService_WatchConsolesServer) error {
	if err := checkHostID(req.HostId); err != nil {
		return err
	}
	w := s.consoles.addWatcher(req.HostId)
	defer s.consoles.removeWatcher(req.HostId, w)
	for {
		select {
		case sess := <-w.sessions:
			if err := stream.Send(sess); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

// ConsoleStream is the agent's side of a session: its first frame names
// the host and session, then bytes flow both ways until either side ends.
func (s *Server) ConsoleStream(stream yunchiv1.AgentService_ConsoleStreamServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := checkHostID(first.HostId); err != nil {
		return err
	}
	sess, err := s.consoles.claim(first.HostId, first.SessionId)
	if err != nil {
		return err
	}
	if first.Error != "" {
		// The user's call is told through the first frame it reads.
		sess.agent <- &failedConsole{msg: first.Error, ctx: stream.Context()}
		return nil
	}
	sess.agent <- stream
	select {
	case <-sess.done:
	case <-stream.Context().Done():
	}
	return nil
}

// failedConsole stands for an agent that could not open the console.
type failedConsole struct {
	yunchiv1.AgentService_ConsoleStreamServer
	msg string
	ctx context.Context
}

// Console attaches the caller to a VM's serial console through its host's
// agent.
func (s *Server) Console(stream yunchiv1.VMService_ConsoleServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	v, err := s.findVM(first.Project, first.Name)
	if err != nil {
		return err
	}
	target := fmt.Sprintf("project/%s/vm/%s", v.Project, v.Name)
	begun := time.Now()
	var in, out atomic.Int64
	err = s.relayConsole(ctx, v, stream, &in, &out)
	code := status.Code(err)
	msg := fmt.Sprintf("console of %s on host %s: %d bytes in, %d out, %s", v.Name, v.HostId, in.Load(), out.Load(), time.Since(begun).Round(time.Millisecond))
	if err != nil && code != codes.Canceled {
		msg += ": " + status.Convert(err).Message()
	}
	if s.AuditRecorder != nil {
		s.AuditRecorder.Session(ctx, yunchiv1.VMService_Console_FullMethodName, target, code, msg)
	}
	if code == codes.Canceled {
		return nil
	}
	return err
}

func (s *Server) relayConsole(ctx context.Context, v *statev1.VMRecord, user yunchiv1.VMService_ConsoleServer, in, out *atomic.Int64) error {
	if v.Desired == statev1.PowerState_POWER_STATE_DELETED {
		return status.Errorf(codes.FailedPrecondition, "VM %q is being deleted", v.Name)
	}
	if v.Phase != statev1.VMPhase_VM_PHASE_RUNNING {
		return status.Errorf(codes.FailedPrecondition, "VM %q is not running (phase %s): start it first", v.Name, phaseToAPI(v.Phase))
	}
	id, sess, err := s.consoles.ask(v.HostId, v.Id)
	if err != nil {
		return err
	}
	defer close(sess.done)
	var agent yunchiv1.AgentService_ConsoleStreamServer
	t := time.NewTimer(consoleAttachTimeout)
	defer t.Stop()
	select {
	case agent = <-sess.agent:
	case <-t.C:
		s.consoles.forget(id)
		return status.Errorf(codes.Unavailable, "the agent of host %q did not open the console within %s", v.HostId, consoleAttachTimeout)
	case <-ctx.Done():
		s.consoles.forget(id)
		return status.FromContextError(ctx.Err()).Err()
	}
	if f, ok := agent.(*failedConsole); ok {
		return status.Errorf(codes.FailedPrecondition, "host %s cannot open the console of %s: %s", v.HostId, v.Name, f.msg)
	}
	// Tell the user the console is attached (an empty message) before any
	// output, so a client can say so.
	if err := user.Send(&yunchiv1.ConsoleOutput{}); err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() { // user -> agent
		for {
			m, err := user.Recv()
			if err != nil {
				errc <- err
				return
			}
			if len(m.Data) > consoleChunk {
				errc <- status.Errorf(codes.InvalidArgument, "console input of %d bytes in one message: at most %d", len(m.Data), consoleChunk)
				return
			}
			if len(m.Data) == 0 {
				continue
			}
			if err := agent.Send(&yunchiv1.ConsoleFrame{Data: m.Data}); err != nil {
				errc <- err
				return
			}
			in.Add(int64(len(m.Data)))
		}
	}()
	go func() { // agent -> user
		for {
			f, err := agent.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = status.Errorf(codes.Aborted, "the console of %s closed (the guest stopped, or another session took it over)", v.Name)
				}
				errc <- err
				return
			}
			if f.Error != "" {
				errc <- status.Errorf(codes.Aborted, "console of %s: %s", v.Name, f.Error)
				return
			}
			if err := user.Send(&yunchiv1.ConsoleOutput{Data: f.Data}); err != nil {
				errc <- err
				return
			}
			out.Add(int64(len(f.Data)))
		}
	}()
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, "detached")
	}
	return err
}
