package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/yunchi/yunchi/controller"
)

// WaitAdminTokens returns the tokens a bootstrap controller wrote, and
// says why when there are none: the controller ended, or the file is not
// what a controller writes.
func TestWaitAdminTokens(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) {
		if err := os.WriteFile(filepath.Join(dir, controller.AdminTokensFile), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"sysadmin":"yc_a_b","secadmin":"yc_c_d","auditor":"yc_e_f"}`)
	toks, err := WaitAdminTokens(context.Background(), nil, dir, time.Minute)
	if err != nil || toks.Sysadmin != "yc_a_b" || toks.Secadmin != "yc_c_d" || toks.Auditor != "yc_e_f" {
		t.Fatalf("tokens %+v, %v", toks, err)
	}

	write("{")
	if _, err := WaitAdminTokens(context.Background(), nil, dir, time.Minute); err == nil || !strings.Contains(err.Error(), controller.AdminTokensFile) {
		t.Fatalf("malformed file: %v", err)
	}

	// No file, and the process that should write it has ended.
	p, err := Start("true", nil, filepath.Join(t.TempDir(), "log"), false)
	if err != nil {
		t.Fatal(err)
	}
	<-p.done
	if _, err := WaitAdminTokens(context.Background(), p, t.TempDir(), time.Minute); err == nil || !strings.Contains(err.Error(), "ended") {
		t.Fatalf("ended process: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := WaitAdminTokens(ctx, nil, t.TempDir(), time.Minute); err != context.Canceled {
		t.Fatalf("cancelled: %v", err)
	}
}
