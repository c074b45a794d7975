package main

// `yunchid dev center list|stop|start`: take one center of a running
// `yunchid dev` down and bring it back, from another terminal, through
// the dev cluster's control endpoint (devcluster/control.go).

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/cliconfig"
)

// Exit codes of `yunchid dev center`, the same numbers as the yunchi
// CLI's for the same cases. Scripts depend on them.
const (
	devExitError       = 1 // anything else (a start that did not complete)
	devExitUsage       = 2 // bad command line
	devExitNotFound    = 3 // no such center
	devExitUnavailable = 6 // no yunchid dev answers, or it is starting or stopping
	devExitFailed      = 7 // the center is up or down already, or raft's quorum forbids the stop
	devExitAuth        = 8 // not the dev cluster's sysadmin token
)

const devCenterExitCodes = `EXIT CODES:
   0  done
   1  other error (e.g. a start whose controller or hosts were not back within 60s)
   2  usage error
   3  unknown center
   6  no yunchid dev answers (or it is still starting, or stopping)
   7  refused: the center is up or down already, or stopping it would cost the controllers their raft quorum
   8  not authenticated (not the sysadmin token yunchid dev printed)`

// devDescription is the help of `yunchid dev`.
const devDescription = `Three controllers, one voter per center (a1 production, a2 same-city DR,
b1 remote DR), and simulated hosts spread over the three centers, each a real
agent on its own connection to libvirt's test driver (VM disks are sparse
files under <data-dir>/hosts). It logs the yunchi CLI in as the sysadmin and
prints the three administrators' tokens. Ctrl-C stops everything.

Ports: the controllers' API at --port, --port+1, --port+2 (8470-8472), raft
10 above (8480-8482), and the center control endpoint at --port+20 (8490),
on 127.0.0.1 only.

Taking a center down while dev runs, from another terminal:

   yunchid dev center stop a1     its agents stop (no heartbeats, reports or
                                  reconciling) and so does its controller; its
                                  simulated hosts keep their domains running,
                                  as a center cut off by a network failure
                                  would; the other two controllers keep the
                                  quorum and the cluster takes writes; the
                                  center's hosts go DOWN after 10s of silence
   yunchid dev center start a1    its controller starts again on the same data
                                  dir (a voter again, from its raft state), a
                                  new agent on each host reconciles against
                                  what it is assigned now; returns once the
                                  controller has caught up and the hosts are
                                  READY
   yunchid dev center list        each center: up or down, its controller's
                                  raft state, agents, hosts READY (-o json)

Only one center may be down at a time: with two of three controllers gone the
cluster would have no quorum, and stop refuses. These commands need the
sysadmin token (the yunchi CLI's login, which dev stored; or --token) and the
--port dev runs with.`

// devCenterCmd is `yunchid dev center`.
func devCenterCmd() *cli.Command {
	flags := func(output bool) []cli.Flag {
		f := []cli.Flag{
			&cli.IntFlag{Name: "port", Value: devcluster.DefaultBasePort, EnvVars: []string{"YUNCHI_DEV_PORT"}, Usage: "the --port yunchid dev runs with (its control endpoint is at 127.0.0.1:<port+20>)"},
			&cli.StringFlag{Name: "token", EnvVars: []string{"YUNCHI_TOKEN"}, Usage: "the sysadmin token yunchid dev printed (default: the yunchi CLI's login, which yunchid dev stored)"},
		}
		if output {
			f = append(f, &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"})
		}
		return f
	}
	onUsage := func(_ *cli.Context, err error, _ bool) error {
		return cli.Exit("yunchid: "+err.Error(), devExitUsage)
	}
	act := func(name string, do func(c *cli.Context, cl devcluster.Client, out io.Writer, args []string) error) *cli.Command {
		return &cli.Command{
			Name: name, Flags: flags(true), OnUsageError: onUsage,
			Action: func(c *cli.Context) error {
				args, err := interspersed(c)
				var cl devcluster.Client
				var noToken string
				if err == nil {
					cl, noToken, err = devClient(c)
				}
				if err == nil {
					err = devCheckOutput(c.String("output"))
				}
				if err == nil {
					err = do(c, cl, c.App.Writer, args)
				}
				if ce := (*devcluster.CenterError)(nil); noToken != "" && errors.As(err, &ce) && ce.Code == devcluster.CodeUnauthenticated {
					err = &devcluster.CenterError{Code: ce.Code, Msg: noToken}
				}
				return devExit(err)
			},
		}
	}
	list := act("list", func(c *cli.Context, cl devcluster.Client, out io.Writer, args []string) error {
		if len(args) > 0 {
			return devUsagef("list takes no arguments (%q)", args[0])
		}
		centers, err := cl.List(c.Context)
		if err != nil {
			return err
		}
		if c.String("output") == "json" {
			return devWriteJSON(out, devcluster.ListReply{Centers: centers})
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CENTER\tSITE\tROLE\tSTATE\tSINCE\tCONTROLLER\tRAFT\tAGENTS\tHOSTS READY")
		for _, s := range centers {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%d/%d\n", s.Center, s.Site, s.Role, s.State, s.Since.Local().Format(time.TimeOnly),
				s.Controller, s.Raft, s.Agents, s.Hosts, s.HostsReady, s.Hosts)
		}
		return tw.Flush()
	})
	list.Usage = "show each center of the running yunchid dev: up or down, its controller's raft state, its agents and hosts READY"
	change := func(name string, do func(devcluster.Client, *cli.Context, string) (devcluster.CenterReply, error)) *cli.Command {
		cmd := act(name, func(c *cli.Context, cl devcluster.Client, out io.Writer, args []string) error {
			if len(args) != 1 {
				return devUsagef("give one center, e.g. yunchid dev center %s a1", name)
			}
			r, err := do(cl, c, args[0])
			if err != nil {
				return err
			}
			if c.String("output") == "json" {
				return devWriteJSON(out, r)
			}
			_, err = fmt.Fprintln(out, r.Message)
			return err
		})
		cmd.ArgsUsage = "CENTER"
		return cmd
	}
	stop := change("stop", func(cl devcluster.Client, c *cli.Context, id string) (devcluster.CenterReply, error) {
		return cl.Stop(c.Context, id)
	})
	stop.Usage = "take a center down: stop its agents (their domains keep running) and its controller, as a network failure cutting it off would"
	start := change("start", func(cl devcluster.Client, c *cli.Context, id string) (devcluster.CenterReply, error) {
		return cl.Start(c.Context, id)
	})
	start.Usage = "bring a center back: its controller on the same data dir, a new agent on each of its hosts; returns once they are back"
	return &cli.Command{
		Name:        "center",
		Usage:       "take one center of a running yunchid dev down and bring it back (another terminal)",
		Description: "Talks to the running yunchid dev on 127.0.0.1:<--port + 20> with the sysadmin token.\n\n" + devCenterExitCodes,
		Subcommands: []*cli.Command{list, stop, start},
	}
}

// devClient is the control endpoint client of the command's flags: the
// token from --token, YUNCHI_TOKEN or the yunchi CLI's login. Without one
// it still asks (a dev cluster that is not running says so first); why
// the answer is then "not authenticated" is said by noToken.
func devClient(c *cli.Context) (devcluster.Client, string, error) {
	port := c.Int("port")
	if port <= 0 || port+devcluster.ControlPortOffset > 65535 {
		return devcluster.Client{}, "", devUsagef("--port %d: give the --port yunchid dev runs with (default 8470)", port)
	}
	cl := devcluster.Client{Addr: devcluster.ControlAddr(port), Token: c.String("token")}
	if cl.Token != "" {
		return cl, "", nil
	}
	cfg, path, err := cliconfig.Load()
	if err != nil {
		return cl, "", err
	}
	cl.Token = cfg.Token
	noToken := ""
	if cl.Token == "" {
		noToken = fmt.Sprintf("no token: yunchi is not logged in (%s); give --token with the sysadmin token yunchid dev printed", path)
	}
	return cl, noToken, nil
}

// interspersed returns the command's arguments, applying the flags given
// among them: urfave/cli stops reading flags at the first argument, and
// `yunchid dev center stop a1 --port 9000` should work as well as
// `yunchid dev center stop --port 9000 a1`.
func interspersed(c *cli.Context) ([]string, error) {
	known := map[string]string{} // name or alias -> name (an alias has storage of its own until urfave normalizes)
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			known[n] = f.Names()[0]
		}
	}
	var pos []string
	args := c.Args().Slice()
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if known[name] == "" || known[name] == "help" {
			return nil, devUsagef("flag provided but not defined: %s", a)
		}
		if !hasVal {
			if i+1 == len(args) {
				return nil, devUsagef("flag needs an argument: %s", a)
			}
			i++
			val = args[i]
		}
		if err := c.Set(known[name], val); err != nil {
			return nil, devUsagef("invalid value %q for flag %s: %v", val, a, err)
		}
	}
	return pos, nil
}

func devCheckOutput(o string) error {
	if o != "table" && o != "json" {
		return devUsagef("-o %q: use table or json", o)
	}
	return nil
}

func devWriteJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// devUsageError is a mistake on the command line.
type devUsageError struct{ msg string }

func (e *devUsageError) Error() string { return e.msg }

func devUsagef(format string, args ...any) error {
	return &devUsageError{fmt.Sprintf(format, args...)}
}

// devExit turns err into one line on stderr and its exit code.
func devExit(err error) error {
	if err == nil {
		return nil
	}
	code := devExitError
	var ue *devUsageError
	var ce *devcluster.CenterError
	switch {
	case errors.As(err, &ue):
		code = devExitUsage
	case errors.As(err, &ce):
		switch ce.Code {
		case devcluster.CodeNotFound:
			code = devExitNotFound
		case devcluster.CodeNotRunning, devcluster.CodeUnavailable:
			code = devExitUnavailable
		case devcluster.CodeFailedPrecondition:
			code = devExitFailed
		case devcluster.CodeUnauthenticated:
			code = devExitAuth
		case devcluster.CodeInvalid:
			code = devExitUsage
		}
	}
	return cli.Exit("yunchid: "+strings.ReplaceAll(err.Error(), "\n", " "), code)
}
