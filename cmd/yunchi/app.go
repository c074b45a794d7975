package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

const defaultAddr = "127.0.0.1:8470"

// newApp builds the command tree. It writes only to stdout and stderr and
// never exits the process: run turns its error into the exit code.
func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:      "yunchi",
		HelpName:  "yunchi",
		Usage:     "manage VMs, hosts and the controller cluster of a Yunchi private cloud",
		UsageText: "yunchi [global options] command [command options] [arguments...]",
		Description: "Talks gRPC to the controllers listed in --addr, trying them in turn.\n" +
			"Global options may also follow the command: yunchi vm list -o json.\n\n" + exitCodesHelp,
		Writer:      stdout,
		ErrWriter:   stderr,
		HideVersion: true,
		// Repeatable flags take one value each: "--constraint 'center in a1,a2'"
		// must not be split at the comma.
		DisableSliceFlagSeparator: true,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "addr",
				Usage:   "controller API addresses host:port, comma-separated, tried in turn (with several, a call waits up to 20s for a leader election)",
				EnvVars: []string{"YUNCHI_ADDR"},
				Value:   defaultAddr,
			},
			&cli.StringFlag{
				Name:    "token",
				Usage:   "bearer token sent with every call (default: the one yunchi login stored)",
				EnvVars: []string{"YUNCHI_TOKEN"},
			},
			&cli.StringFlag{
				Name:    "ca-cert",
				Usage:   "CA certificate (PEM) the controllers' TLS certificate is verified by: the cluster CA, <data-dir>/tls/ca.crt",
				EnvVars: []string{"YUNCHI_CA_CERT"},
			},
			&cli.BoolFlag{
				Name:  "insecure",
				Usage: "plaintext, no TLS (a cluster run with --insecure); without --ca-cert or --insecure, loopback addresses are dialed in plaintext (yunchid dev) and others with TLS verified by the system's CAs",
			},
			&cli.StringFlag{
				Name:    "output",
				Aliases: []string{"o"},
				Usage:   "output format: table or json",
				Value:   "table",
			},
			&cli.DurationFlag{
				Name:  "timeout",
				Usage: "time limit for each call to a controller (0: none)",
				Value: 30 * time.Second,
			},
			&cli.DurationFlag{
				Name:  "connect-timeout",
				Usage: "time limit for connecting to one controller before trying the next",
				Value: 5 * time.Second,
			},
		},
		Before: func(cCtx *cli.Context) error {
			_, err := newPrinter(nil, cCtx.String("output"))
			return err
		},
		Commands: []*cli.Command{
			vmCommand(),
			imageCommand(),
			volumeCommand(),
			hostCommand(),
			groupCommand(),
			ratioCommand(),
			quotaCommand(),
			capacityCommand(),
			clusterCommand(),
			topologyCommand(),
			centerCommand(),
			policyCommand(),
			drCommand(),
			backupCommand(),
			deptCommand(),
			projectCommand(),
			userCommand(),
			tokenCommand(),
			loginCommand(),
			logoutCommand(),
			whoamiCommand(),
			auditCommand(),
			simulateCommand(),
		},
		// Errors are printed by run, once; urfave/cli must never os.Exit.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	app.Action = groupAction
	app.OnUsageError = onUsageError
	for _, c := range app.Commands {
		setupCommand(c)
	}
	return app
}

// setupCommand gives every command the same usage-error handling and makes
// command groups reject unknown subcommands instead of showing help.
func setupCommand(c *cli.Command) {
	c.OnUsageError = onUsageError
	if len(c.Subcommands) > 0 && c.Action == nil {
		c.Action = groupAction
	}
	for _, s := range c.Subcommands {
		setupCommand(s)
	}
}

// groupAction runs for "yunchi" or "yunchi vm" without a known subcommand.
func groupAction(cCtx *cli.Context) error {
	if cCtx.Args().Present() {
		name := cCtx.Args().First()
		msg := fmt.Sprintf("%sunknown command %q", where(cCtx), name)
		if s := suggest(name, commandNames(cCtx)); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		return usagef("%s; see '%s --help'", msg, commandPath(cCtx))
	}
	if cCtx.Command == nil || cCtx.Command.Name == cCtx.App.Name {
		return cli.ShowAppHelp(cCtx)
	}
	return cli.ShowSubcommandHelp(cCtx)
}

func commandNames(cCtx *cli.Context) []string {
	var cmds []*cli.Command
	if cCtx.Command != nil && len(cCtx.Command.Subcommands) > 0 {
		cmds = cCtx.Command.Subcommands
	} else {
		cmds = cCtx.App.Commands
	}
	var names []string
	for _, c := range cmds {
		names = append(names, c.Names()...)
	}
	return names
}

// commandPath is the full command, "yunchi vm create".
func commandPath(cCtx *cli.Context) string {
	if cCtx.Command != nil && cCtx.Command.HelpName != "" {
		return cCtx.Command.HelpName
	}
	return "yunchi"
}

// where prefixes usage messages: "vm create: ", or "" at the top level
// (the line already starts with "yunchi: ").
func where(cCtx *cli.Context) string {
	if p, ok := strings.CutPrefix(commandPath(cCtx), "yunchi "); ok {
		return p + ": "
	}
	return ""
}

// onUsageError turns a flag parse error into one line with a pointer to help.
func onUsageError(cCtx *cli.Context, err error, _ bool) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		msg = "unknown flag " + flagDashes(name)
		if cCtx.Command != nil {
			var names []string
			for _, f := range cCtx.Command.Flags {
				names = append(names, f.Names()...)
			}
			if s := suggest(name, names); s != "" {
				msg += fmt.Sprintf(" (did you mean %s?)", flagDashes(s))
			}
		}
	}
	return usagef("%s%s; see '%s --help'", where(cCtx), msg, commandPath(cCtx))
}

func flagDashes(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// needArgs checks the positional arguments: exactly the names given.
func needArgs(cCtx *cli.Context, names ...string) ([]string, error) {
	args := cCtx.Args().Slice()
	usage := strings.TrimSpace(commandPath(cCtx) + " " + cCtx.Command.ArgsUsage)
	if len(args) < len(names) {
		return nil, usagef("%smissing %s; usage: %s", where(cCtx), names[len(args)], usage)
	}
	if len(args) > len(names) {
		return nil, usagef("%sunexpected argument %q; usage: %s", where(cCtx), args[len(names)], usage)
	}
	return args, nil
}

// suggest returns the candidate closest to s, if it is close enough to be a typo.
func suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if len(c) < 2 {
			continue
		}
		if d := editDistance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// session is what a command needs to do its work: a context, a client for
// the controllers and a printer. Built from the global flags.
type session struct {
	ctx    context.Context
	client *client
	out    *printer
	stderr io.Writer
}

// withSession wraps a command action: it builds the session from the global
// flags and closes the connections afterwards.
func withSession(fn func(cCtx *cli.Context, s *session) error) cli.ActionFunc {
	return func(cCtx *cli.Context) error {
		out, err := newPrinter(cCtx.App.Writer, cCtx.String("output"))
		if err != nil {
			return err
		}
		addr, token, err := loginCredentials(cCtx)
		if err != nil {
			return err
		}
		addrs, err := parseAddrs(addr)
		if err != nil {
			return err
		}
		timeout, connect := cCtx.Duration("timeout"), cCtx.Duration("connect-timeout")
		if timeout < 0 || connect <= 0 {
			return usagef("--timeout and --connect-timeout must be positive")
		}
		tr, err := newTransport(addrs, cCtx.String("ca-cert"), cCtx.Bool("insecure"), cCtx.App.ErrWriter)
		if err != nil {
			return err
		}
		c := newClient(addrs, token, timeout, connect)
		c.tr = tr
		c.progress = cCtx.App.ErrWriter
		defer c.Close()
		return fn(cCtx, &session{ctx: cCtx.Context, client: c, out: out, stderr: cCtx.App.ErrWriter})
	}
}

// reorderArgs lets flags follow positional arguments and lets global flags
// follow the command, which urfave/cli v2 does not: "vm create web-1 --cpu 2
// -o json" becomes "-o json vm create --cpu 2 web-1". Everything after "--"
// and after an unknown subcommand is left in place.
func reorderArgs(app *cli.App, args []string) []string {
	if len(args) == 0 {
		return args
	}
	global := app.Flags
	levels := [][]string{nil} // flags for the root, then one per command
	var path, positional []string
	cmds, flags := app.Commands, app.Flags
	i := 1
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if len(a) > 1 && a[0] == '-' {
			name, inline := flagName(a)
			lvl := len(levels) - 1
			f := findFlag(flags, name)
			if f == nil && lvl > 0 {
				if f = findFlag(global, name); f != nil {
					lvl = 0
				}
			}
			levels[lvl] = append(levels[lvl], a)
			if f != nil && !inline && takesValue(f) && i+1 < len(args) {
				i++
				levels[lvl] = append(levels[lvl], args[i])
			}
			continue
		}
		if len(positional) == 0 {
			if c := findCommand(cmds, a); c != nil {
				path = append(path, a)
				levels = append(levels, nil)
				cmds, flags = c.Subcommands, c.Flags
				continue
			}
			if len(cmds) > 0 {
				break // unknown subcommand or "help": leave the rest alone
			}
		}
		positional = append(positional, a)
	}
	for _, a := range levels[len(levels)-1] {
		if a == "-h" || a == "--help" || a == "-help" {
			// With arguments, urfave/cli takes "-h NAME" as help on a
			// subcommand NAME: show the command's own help instead.
			positional = nil
		}
	}
	out := []string{args[0]}
	out = append(out, levels[0]...)
	for k, name := range path {
		out = append(out, name)
		out = append(out, levels[k+1]...)
	}
	if i < len(args) && args[i] == "--" {
		// Positionals from before "--" move behind it, so that flag
		// parsing, which stops at the first positional, still sees "--".
		out = append(out, "--")
		out = append(out, positional...)
		return append(out, args[i+1:]...)
	}
	out = append(out, positional...)
	return append(out, args[i:]...)
}

func flagName(a string) (name string, inline bool) {
	name = strings.TrimLeft(a, "-")
	if n, _, ok := strings.Cut(name, "="); ok {
		return n, true
	}
	return name, false
}

func findFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	if name == "h" || name == "help" {
		return cli.HelpFlag
	}
	return nil
}

func takesValue(f cli.Flag) bool {
	if tv, ok := f.(interface{ TakesValue() bool }); ok {
		return tv.TakesValue()
	}
	return false
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}
