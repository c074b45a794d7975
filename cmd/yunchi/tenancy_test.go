package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/yunchi/yunchi/internal/cliconfig"
)

// TestMain points the CLI at a config file of the test's own: no test
// reads, or writes, the config of the user running it.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "yunchi-cli-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("YUNCHI_CONFIG", filepath.Join(dir, "config.json"))
	os.Unsetenv("YUNCHI_TOKEN")
	os.Unsetenv("YUNCHI_ADDR")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// unsetenv unsets k for the rest of t (t.Setenv restores it).
func unsetenv(t *testing.T, k string) {
	t.Setenv(k, "")
	os.Unsetenv(k)
}

// `yunchi token current` prints the token later commands send: the
// stored one, unless --token or YUNCHI_TOKEN says otherwise; with none it
// fails with exit 8 on one line; it makes no call.
func TestTokenCurrent(t *testing.T) {
	t.Setenv("YUNCHI_CONFIG", filepath.Join(t.TempDir(), "config.json"))
	unsetenv(t, "YUNCHI_TOKEN")

	code, stdout, stderr := yunchi(t, "token", "current")
	if code != exitAuth || stdout != "" {
		t.Fatalf("no token: exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	if got := oneErrorLine(t, stderr); got != "no token: give --token or YUNCHI_TOKEN, or log in with yunchi login --addr HOST:PORT --token TOKEN" {
		t.Fatalf("no token: %q", got)
	}

	// What `yunchi login` (or `yunchid dev`) stores; the address is never dialled.
	if _, err := cliconfig.SaveLogin("127.0.0.1:1", "stored-token", "sysadmin"); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = yunchi(t, "token", "current")
	if code != 0 || stdout != "stored-token\n" || stderr != "" {
		t.Fatalf("stored: exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	code, stdout, _ = yunchi(t, "token", "current", "-o", "json")
	var j struct{ Secret string }
	if code != 0 || json.Unmarshal([]byte(stdout), &j) != nil || j.Secret != "stored-token" {
		t.Fatalf("json: exit %d stdout %q", code, stdout)
	}
	if code, stdout, _ = yunchi(t, "--token", "flag-token", "token", "current"); code != 0 || stdout != "flag-token\n" {
		t.Fatalf("--token: exit %d stdout %q", code, stdout)
	}
	t.Setenv("YUNCHI_TOKEN", "env-token")
	if code, stdout, _ = yunchi(t, "token", "current"); code != 0 || stdout != "env-token\n" {
		t.Fatalf("YUNCHI_TOKEN: exit %d stdout %q", code, stdout)
	}

	// Bad input: one line, exit 2.
	code, stdout, stderr = yunchi(t, "token", "current", "extra")
	if code != exitUsage || stdout != "" {
		t.Fatalf("extra argument: exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	oneErrorLine(t, stderr)
	code, _, stderr = yunchi(t, "token", "current", "-o", "yaml")
	if code != exitUsage {
		t.Fatalf("-o yaml: exit %d stderr %q", code, stderr)
	}
	oneErrorLine(t, stderr)

	// A config file that is not JSON: one line naming it, exit 2.
	if err := os.WriteFile(os.Getenv("YUNCHI_CONFIG"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	unsetenv(t, "YUNCHI_TOKEN")
	code, _, stderr = yunchi(t, "token", "current")
	if code != exitUsage {
		t.Fatalf("bad config: exit %d stderr %q", code, stderr)
	}
	oneErrorLine(t, stderr)
}
