package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// detachKey is Ctrl-], as in telnet and virsh console.
const detachKey = 0x1d

func vmConsoleCommand() *cli.Command {
	return &cli.Command{
		Name:      "console",
		Usage:     "attach to a VM's serial console (Ctrl-] detaches)",
		ArgsUsage: "NAME",
		UsageText: "yunchi vm console NAME [--project P] [--send TEXT] [--expect TEXT [--expect-timeout D]]\n\n" +
			"Keystrokes go to the guest; Ctrl-] detaches. Without a terminal, standard input is sent as it is.\n" +
			"For scripts: --send types TEXT once attached (Go escapes such as \\r and \\n are read),\n" +
			"--expect detaches with exit code 0 as soon as the console has printed TEXT (exit 1 if not within --expect-timeout).",
		Flags: []cli.Flag{
			projectFlag(),
			&cli.StringFlag{Name: "send", Usage: "type this once attached (\\r, \\n and other Go escapes are read)"},
			&cli.StringFlag{Name: "expect", Usage: "detach (exit 0) once the console has printed this text"},
			&cli.DurationFlag{Name: "expect-timeout", Usage: "give up waiting for --expect after this long (exit 1)", Value: time.Minute},
		},
		Action: withSession(vmConsole),
	}
}

// errDetached ends a session the user detached from.
var errDetached = errors.New("detached")

// consoleEnded wraps an error after the console was attached, so that the
// client does not try the session again on another controller.
type consoleEnded struct{ err error }

func (e *consoleEnded) Error() string { return e.err.Error() }

func vmConsole(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	send, expect := cCtx.String("send"), cCtx.String("expect")
	if send != "" {
		u, err := strconv.Unquote(`"` + send + `"`)
		if err != nil {
			return usagef("--send %q: not a string with Go escapes: %v", send, err)
		}
		send = u
	}
	if cCtx.Duration("expect-timeout") <= 0 {
		return usagef("--expect-timeout must be positive")
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	if expect != "" {
		ctx, cancel = context.WithTimeout(ctx, cCtx.Duration("expect-timeout"))
		defer cancel()
	}
	stdin := os.Stdin
	interactive := expect == "" && term.IsTerminal(int(stdin.Fd()))

	req := &yunchiv1.ConsoleInput{Name: args[0], Project: cCtx.String("project")}
	var seen bytes.Buffer // the tail of the output, for --expect
	found := false
	err = s.client.call(ctx, retrySafe, false, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		stream, err := yunchiv1.NewVMServiceClient(cc).Console(sctx)
		if err != nil {
			return err
		}
		if err := stream.Send(req); err != nil {
			return err
		}
		if _, err := stream.Recv(); err != nil { // the empty "attached" message
			if err == io.EOF {
				return errors.New("the controller ended the console session before it began")
			}
			return err
		}
		// Attached: from here on, nothing is tried again elsewhere.
		if interactive {
			fmt.Fprintf(s.stderr, "Connected to %s's console. Press Ctrl-] to detach.\r\n", args[0])
			old, err := term.MakeRaw(int(stdin.Fd()))
			if err == nil {
				defer term.Restore(int(stdin.Fd()), old)
			}
		}
		if send != "" {
			if err := stream.Send(&yunchiv1.ConsoleInput{Data: []byte(send)}); err != nil {
				return &consoleEnded{err}
			}
		}
		var detached atomic.Bool
		if expect == "" {
			go func() {
				if errors.Is(pumpInput(stdin, interactive, stream), errDetached) {
					detached.Store(true)
					stop()
				}
			}()
		}
		for {
			out, err := stream.Recv()
			if err != nil {
				if detached.Load() {
					return errDetached
				}
				if ctx.Err() != nil && expect != "" {
					return &consoleEnded{fmt.Errorf("the console did not print %q within %s", expect, cCtx.Duration("expect-timeout"))}
				}
				if err == io.EOF {
					return &consoleEnded{errors.New("the console session ended")}
				}
				return &consoleEnded{err}
			}
			if _, err := s.out.w.Write(out.Data); err != nil {
				return &consoleEnded{err}
			}
			if expect != "" {
				seen.Write(out.Data)
				if bytes.Contains(seen.Bytes(), []byte(expect)) {
					found = true
					return nil
				}
				if n := seen.Len(); n > 64<<10 {
					seen.Next(n - len(expect))
				}
			}
		}
	})
	if interactive {
		fmt.Fprint(s.stderr, "\r\n")
	}
	switch {
	case errors.Is(err, errDetached), err == nil && (found || expect == ""):
		return nil
	}
	var ce *consoleEnded
	if errors.As(err, &ce) {
		return ce.err
	}
	return err
}

// pumpInput sends stdin to the console until EOF or, on a terminal,
// Ctrl-] (errDetached).
func pumpInput(stdin io.Reader, interactive bool, stream yunchiv1.VMService_ConsoleClient) error {
	buf := make([]byte, 4096)
	for {
		n, err := stdin.Read(buf)
		if n > 0 {
			data := buf[:n]
			detach := false
			if interactive {
				if i := bytes.IndexByte(data, detachKey); i >= 0 {
					data, detach = data[:i], true
				}
			}
			if len(data) > 0 {
				if serr := stream.Send(&yunchiv1.ConsoleInput{Data: append([]byte(nil), data...)}); serr != nil {
					return serr
				}
			}
			if detach {
				return errDetached
			}
		}
		if err != nil {
			return err // EOF: keep showing output until the session ends
		}
	}
}
