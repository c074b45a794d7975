package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// helpTexts walks every command and yields each text shown by --help with
// where it comes from; flag usages are the ones named "... --flag".
func helpTexts(prefix string, cmds []*cli.Command, flags []cli.Flag, yield func(where, text string)) {
	for _, f := range flags {
		if df, ok := f.(cli.DocGenerationFlag); ok {
			yield(prefix+" --"+f.Names()[0], df.GetUsage())
		}
	}
	for _, c := range cmds {
		where := prefix + " " + c.Name
		yield(where+" (usage)", c.Usage)
		yield(where+" (usage text)", c.UsageText)
		yield(where+" (description)", c.Description)
		helpTexts(where, c.Subcommands, c.Flags, yield)
	}
}

// A backquoted word in a flag's usage is urfave/cli's placeholder syntax:
// `--group yunchi group create` is what it printed for "(see `yunchi group
// create`)". No usage may contain one by accident.
func TestHelpHasNoBackquotePlaceholders(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	helpTexts("yunchi", app.Commands, app.Flags, func(where, text string) {
		isFlag := strings.Contains(where, " --")
		if isFlag && strings.Contains(text, "`") {
			t.Errorf("%s: backquote in %q (urfave/cli turns `x` into the flag's placeholder)", where, text)
		}
	})
	code, stdout, _ := yunchi(t, "vm", "create", "--help")
	if code != 0 || strings.Contains(stdout, "--group yunchi") {
		t.Errorf("vm create --help: exit %d, placeholder in:\n%s", code, stdout)
	}
}

// Every *.md file the help cites must exist in a clone (paths relative to
// the repository root).
func TestHelpCitesFilesThatExist(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	md := regexp.MustCompile(`[A-Za-z0-9_./-]+\.md\b`)
	app := newApp(io.Discard, io.Discard)
	helpTexts("yunchi", app.Commands, app.Flags, func(where, text string) {
		for _, p := range md.FindAllString(text, -1) {
			if strings.HasPrefix(p, "../") {
				t.Errorf("%s cites %s, outside the repository", where, p)
				continue
			}
			if _, err := os.Stat(filepath.Join(root, p)); err != nil {
				t.Errorf("%s cites %s, which a clone does not have", where, p)
			}
		}
	})
}

// Help that names an exit code names the one the command exits with.
func TestHelpNamesTheRightExitCodes(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	find := func(path ...string) *cli.Command {
		cmds := app.Commands
		var c *cli.Command
		for _, name := range path {
			c = nil
			for _, x := range cmds {
				if x.Name == name {
					c = x
				}
			}
			if c == nil {
				t.Fatalf("no command %v", path)
			}
			cmds = c.Subcommands
		}
		return c
	}
	if d := find("audit", "verify").Description; !strings.Contains(d, fmt.Sprintf("%d when it is not", exitAuditBroken)) {
		t.Errorf("audit verify help: %q, want exit code %d", d, exitAuditBroken)
	}
	q := find("quota", "set")
	if h := q.UsageText + q.Description; !strings.Contains(h, fmt.Sprintf("(exit code %d)", exitQuota)) {
		t.Errorf("quota set help: %q, want exit code %d", h, exitQuota)
	}
}
