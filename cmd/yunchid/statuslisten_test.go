package main

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// `yunchid agent --status-listen` with a bad or busy address stops at once,
// with a one-line error naming the flag, before joining or dialing anything.
func TestAgentStatusListenFlag(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for addr, want := range map[string]string{
		"nonsense":           `--status-listen: "nonsense" is not host:port`,
		"127.0.0.1:70000":    `--status-listen: "127.0.0.1:70000": port "70000" is not a number from 0 to 65535`,
		busy.Addr().String(): "--status-listen: listen tcp " + busy.Addr().String() + ": bind: address already in use",
	} {
		app := &cli.App{Name: "yunchid", Commands: []*cli.Command{agentCmd()}}
		// --controllers names a closed port: were the flag not refused
		// first, the agent would try to join there and fail otherwise.
		err := app.RunContext(context.Background(), []string{"yunchid", "agent", "--host-id", "h1", "--center", "c1",
			"--controllers", "127.0.0.1:1", "--credentials-dir", t.TempDir(), "--join-token", "x", "--status-listen", addr})
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("--status-listen %s: %v; want one line saying %q", addr, err, want)
		}
	}
}
