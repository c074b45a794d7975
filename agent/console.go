package agent

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Console relay. The controller never dials an agent, so the agent keeps a
// WatchConsoles stream open on every controller (a user's console call may
// reach any of them); when one asks for a session, the agent opens the
// domain's console through its driver and dials that controller back with
// a ConsoleStream, then copies bytes both ways until either side ends.

// consoleReadChunk is the most one frame carries from the console.
const consoleReadChunk = 16 << 10

// consoleLoops keeps one WatchConsoles stream per controller until ctx ends.
func (a *Agent) consoleLoops(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range a.ctl.clients {
		wg.Go(func() { a.consoleLoop(ctx, i) })
	}
	wg.Wait()
}

func (a *Agent) consoleLoop(ctx context.Context, i int) {
	client, addr := a.ctl.clients[i], a.ctl.addrs[i]
	bo := newBackoff()
	for {
		err := a.watchConsoles(ctx, client, bo)
		if ctx.Err() != nil {
			return
		}
		d := bo.next()
		if status.Code(err) == codes.Unimplemented {
			d = time.Minute // an older controller: look again now and then
		}
		a.log.Debug("console stream broken; reconnecting", "controller", addr, "err", err, "in", d.Round(time.Millisecond))
		if !sleep(ctx, d) {
			return
		}
	}
}

func (a *Agent) watchConsoles(ctx context.Context, client yunchiv1.AgentServiceClient, bo *backoff) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.WatchConsoles(ctx, &yunchiv1.WatchConsolesRequest{HostId: a.cfg.HostID})
	if err != nil {
		return err
	}
	for {
		sess, err := stream.Recv()
		if err != nil {
			return err
		}
		bo.reset()
		go a.serveConsole(ctx, client, sess)
	}
}

// serveConsole carries one session: the domain's console to the controller
// and back.
func (a *Agent) serveConsole(ctx context.Context, client yunchiv1.AgentServiceClient, sess *yunchiv1.ConsoleSession) {
	log := a.log.With("vm", sess.GetVmId(), "session", sess.GetSessionId())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.ConsoleStream(ctx)
	if err != nil {
		log.Warn("cannot dial the controller back for a console session", "err", err)
		return
	}
	first := &yunchiv1.ConsoleFrame{HostId: a.cfg.HostID, SessionId: sess.GetSessionId()}
	con, err := a.openConsole(ctx, sess.GetVmId())
	if err != nil {
		first.Error = oneLine(err.Error())
		log.Warn("cannot open console", "err", first.Error)
		_ = stream.Send(first)
		_ = stream.CloseSend()
		return
	}
	defer con.Close()
	if err := stream.Send(first); err != nil {
		log.Warn("console session ended before it began", "err", err)
		return
	}
	log.Info("console attached")
	done := make(chan struct{}, 2)
	go func() { // controller -> console
		defer func() { done <- struct{}{} }()
		for {
			f, err := stream.Recv()
			if err != nil {
				return
			}
			if _, err := con.Write(f.GetData()); err != nil {
				return
			}
		}
	}()
	go func() { // console -> controller
		defer func() { done <- struct{}{} }()
		buf := make([]byte, consoleReadChunk)
		for {
			n, err := con.Read(buf)
			if n > 0 {
				if serr := stream.Send(&yunchiv1.ConsoleFrame{Data: append([]byte(nil), buf[:n]...)}); serr != nil {
					return
				}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					_ = stream.Send(&yunchiv1.ConsoleFrame{Error: oneLine(err.Error())})
				}
				_ = stream.CloseSend()
				return
			}
		}
	}()
	<-done
	log.Info("console detached")
}

// openConsole opens a managed domain's console, refusing VM ids the
// controllers have not assigned to this host.
func (a *Agent) openConsole(ctx context.Context, vmID string) (io.ReadWriteCloser, error) {
	if set := a.latest(); set != nil {
		for _, as := range set.GetVms() {
			if as.GetVmId() == vmID {
				return a.d.OpenConsole(ctx, vmID)
			}
		}
	}
	return nil, errors.New("no such VM assigned to this host")
}
