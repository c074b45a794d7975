package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
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

// `yunchid agent` refuses a backup rate that is no size, and a disk dir
// on a real hypervisor's URI, before joining or dialing anything.
func TestAgentBackupFlags(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("yc_x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-backup-rate", "fast"}, `--max-backup-rate "fast": give bytes per second, e.g. 100MiB`},
		{[]string{"--max-backup-rate", "0"}, `--max-backup-rate "0": give bytes per second`},
		{[]string{"--max-backup-rate", "100MB"}, `--max-backup-rate "100MB"`},
		{[]string{"--disk-dir", t.TempDir(), "--libvirt-uri", "qemu:///system?socket=/nonexistent"}, "only for test-driver hosts"},
	} {
		app := &cli.App{Name: "yunchid", Commands: []*cli.Command{agentCmd()}}
		args := append([]string{"yunchid", "agent", "--host-id", "h1", "--center", "c1", "--controllers", "127.0.0.1:1",
			"--insecure", "--token-file", tok}, tc.args...)
		err := app.RunContext(context.Background(), args)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v; want one line saying %q", tc.args, err, tc.want)
		}
	}
}
