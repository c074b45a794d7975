package api

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// consoleServer serves s's VM and agent services on loopback and returns
// clients of both.
func consoleServer(t *testing.T, s *Server) (yunchiv1.VMServiceClient, yunchiv1.AgentServiceClient) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	yunchiv1.RegisterVMServiceServer(gs, s)
	yunchiv1.RegisterAgentServiceServer(gs, s)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return yunchiv1.NewVMServiceClient(cc), yunchiv1.NewAgentServiceClient(cc)
}

func consoleState(phase statev1.VMPhase) []*statev1.Command {
	return []*statev1.Command{
		{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
			Id: "h1", Hostname: "h1", Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 16 << 30, DiskBytes: 100 << 30},
		}}}},
		{Cmd: &statev1.Command_PlaceVm{PlaceVm: &statev1.PlaceVM{Vm: &statev1.VMRecord{
			Id: "vm-1", Name: "web", Project: state.DefaultProject, Vcpus: 1, MemoryBytes: 1 << 30, DiskBytes: 10 << 30, HostId: "h1",
			Desired: statev1.PowerState_POWER_STATE_RUNNING,
		}}}},
		{Cmd: &statev1.Command_ReportVmStatus{ReportVmStatus: &statev1.ReportVMStatus{HostId: "h1", Statuses: []*statev1.VMStatus{
			{VmId: "vm-1", Phase: phase},
		}}}},
	}
}

// fakeConsoleAgent answers console sessions of host as an agent does, over
// the real protocol: each session's input comes back upper-cased, or, with
// fail set, the agent says it cannot open the console.
func fakeConsoleAgent(t *testing.T, ctx context.Context, s *Server, ac yunchiv1.AgentServiceClient, host, fail string, ended chan<- string) {
	t.Helper()
	w, err := ac.WatchConsoles(ctx, &yunchiv1.WatchConsolesRequest{HostId: host})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			sess, err := w.Recv()
			if err != nil {
				return
			}
			go func() {
				cs, err := ac.ConsoleStream(ctx)
				if err != nil {
					return
				}
				if err := cs.Send(&yunchiv1.ConsoleFrame{HostId: host, SessionId: sess.SessionId, Error: fail}); err != nil || fail != "" {
					return
				}
				_ = cs.Send(&yunchiv1.ConsoleFrame{Data: []byte("login: ")})
				for {
					f, err := cs.Recv()
					if err != nil {
						ended <- sess.VmId
						return
					}
					if err := cs.Send(&yunchiv1.ConsoleFrame{Data: []byte(strings.ToUpper(string(f.Data)))}); err != nil {
						return
					}
				}
			}()
		}
	}()
	// The watch counts once the server holds the stream: wait for it.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		s.consoles.mu.Lock()
		n := len(s.consoles.watchers[host])
		s.consoles.mu.Unlock()
		if n > 0 {
			return
		}
	}
	t.Fatal("the agent's console watch never reached the server")
}

func readUntil(t *testing.T, c yunchiv1.VMService_ConsoleClient, want string) {
	t.Helper()
	var got strings.Builder
	for !strings.Contains(got.String(), want) {
		m, err := c.Recv()
		if err != nil {
			t.Fatalf("console output %q, then %v; want %q", got.String(), err, want)
		}
		got.Write(m.Data)
	}
}

// A console session relays bytes both ways between the user's call and
// the agent's, and detaching ends the agent's side too.
func TestConsoleRelaysBothWays(t *testing.T) {
	s, _, _ := newFakeServer(t, consoleState(statev1.VMPhase_VM_PHASE_RUNNING)...)
	vc, ac := consoleServer(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ended := make(chan string, 1)
	fakeConsoleAgent(t, ctx, s, ac, "h1", "", ended)

	c, err := vc.Console(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(&yunchiv1.ConsoleInput{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	if m, err := c.Recv(); err != nil || len(m.Data) != 0 {
		t.Fatalf("first answer %v, %v; want the empty attached message", m, err)
	}
	readUntil(t, c, "login: ")
	if err := c.Send(&yunchiv1.ConsoleInput{Data: []byte("root\r")}); err != nil {
		t.Fatal(err)
	}
	readUntil(t, c, "ROOT\r")
	if err := c.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recv(); err != io.EOF {
		t.Fatalf("after detaching: %v, want the call to end cleanly", err)
	}
	select {
	case id := <-ended:
		if id != "vm-1" {
			t.Fatalf("agent session of %s ended, want vm-1", id)
		}
	case <-ctx.Done():
		t.Fatal("the agent's side did not end after the user detached")
	}
}

// Each way a session cannot start is a clear error, and nothing waits on.
func TestConsoleRefusals(t *testing.T) {
	for _, c := range []struct {
		name   string
		phase  statev1.VMPhase
		agent  bool
		fail   string
		vm     string
		code   codes.Code
		substr string
	}{
		{"no such VM", statev1.VMPhase_VM_PHASE_RUNNING, true, "", "nope", codes.NotFound, "nope"},
		{"not running", statev1.VMPhase_VM_PHASE_STOPPED, true, "", "web", codes.FailedPrecondition, "not running"},
		{"agent not connected here", statev1.VMPhase_VM_PHASE_RUNNING, false, "", "web", codes.Unavailable, "not connected to this controller"},
		{"agent cannot open it", statev1.VMPhase_VM_PHASE_RUNNING, true, "domain has no serial console", "web", codes.FailedPrecondition, "domain has no serial console"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, _, _ := newFakeServer(t, consoleState(c.phase)...)
			vc, ac := consoleServer(t, s)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if c.agent {
				fakeConsoleAgent(t, ctx, s, ac, "h1", c.fail, make(chan string, 1))
			}
			cs, err := vc.Console(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := cs.Send(&yunchiv1.ConsoleInput{Name: c.vm}); err != nil {
				t.Fatal(err)
			}
			_, err = cs.Recv()
			if status.Code(err) != c.code || !strings.Contains(status.Convert(err).Message(), c.substr) {
				t.Fatalf("got %v, want %s mentioning %q", err, c.code, c.substr)
			}
			s.consoles.mu.Lock()
			pending := len(s.consoles.pending)
			s.consoles.mu.Unlock()
			if pending != 0 {
				t.Fatalf("%d sessions left pending", pending)
			}
		})
	}
}

// An agent cannot claim a session asked of another host.
func TestConsoleSessionBelongsToItsHost(t *testing.T) {
	s, _, _ := newFakeServer(t, consoleState(statev1.VMPhase_VM_PHASE_RUNNING)...)
	if _, err := s.consoles.claim("h1", "no-such-session"); status.Code(err) != codes.NotFound {
		t.Fatalf("claim of an unknown session: %v, want NotFound", err)
	}
	s.consoles.addWatcher("h1")
	id, _, err := s.consoles.ask("h1", "vm-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.consoles.claim("h2", id); status.Code(err) != codes.NotFound {
		t.Fatalf("h2 claimed h1's session: %v", err)
	}
	if _, err := s.consoles.claim("h1", id); err != nil {
		t.Fatalf("h1 cannot claim its own session: %v", err)
	}
}
