package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/yunchi/yunchi/cmd/yunchid/clustertest"
	"github.com/yunchi/yunchi/internal/apitest"
)

// Starting `yunchid dev` and pressing Ctrl-C logs no error: the leader
// stops first, and raft's "transport shutdown" decode failure of a node
// being stopped is debug, not ERROR. Three rounds, because whether a
// heartbeat is in flight at the moment a node stops is up to timing.
func TestDevStartAndCtrlCLogNoErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("runs yunchid dev three times")
	}
	bin := clustertest.Binary(t)
	// yunchid dev logs the CLI in: into a config of this test's own.
	t.Setenv("YUNCHI_CONFIG", filepath.Join(t.TempDir(), "yunchi-config.json"))
	for round := 1; round <= 3; round++ {
		dir := t.TempDir()
		logPath := filepath.Join(dir, "dev.log")
		lf, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		base := freeBase(t)
		cmd := exec.Command(bin, "dev", "--port", fmt.Sprint(base), "--data-dir", filepath.Join(dir, "data"))
		cmd.Stdout, cmd.Stderr = lf, lf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var waitErr error
		exited := make(chan struct{})
		go func() { waitErr = cmd.Wait(); lf.Close(); close(exited) }()
		t.Cleanup(func() {
			select {
			case <-exited:
			default:
				cmd.Process.Kill()
				<-exited
			}
		})
		output := func() string { b, _ := os.ReadFile(logPath); return string(b) }
		deadline := time.Now().Add(2 * time.Minute)
		for !strings.Contains(output(), "yunchi dev: ready") || !strings.Contains(output(), "Ctrl-C stops everything.") { // the last line of its greeting
			if time.Now().After(deadline) {
				t.Fatalf("round %d: not ready in 2m:\n%s", round, output())
			}
			time.Sleep(100 * time.Millisecond)
		}
		// It prints the sysadmin's token once ready.
		_, rest, found := strings.Cut(output(), "sysadmin token: ")
		tok, _, _ := strings.Cut(rest, "\n")
		if !found || tok == "" {
			t.Fatalf("round %d: no sysadmin token printed:\n%s", round, output())
		}
		apitest.UseToken(t, tok)
		// Use it a little, as a person would before Ctrl-C: a few VMs
		// through a follower, so raft has traffic in flight.
		// A create may meet an election on a loaded machine (503): retry.
		for i := 1; i <= 5; i++ {
			body := fmt.Sprintf(`{"name":"v-%d","vcpus":1,"memory":"1GiB"}`, i)
			apitest.Eventually(t, time.Minute, "create "+body, func() bool {
				code, _, err := apitest.Post(fmt.Sprintf("127.0.0.1:%d", base+1), "/v1/vms", body)
				return err == nil && (code == 200 || code == 409) // 409: an earlier try went through
			})
		}
		cmd.Process.Signal(syscall.SIGINT) // Ctrl-C
		select {
		case <-exited:
			if waitErr != nil {
				t.Fatalf("round %d: yunchid dev exited with %v after Ctrl-C:\n%s", round, waitErr, output())
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d: yunchid dev did not stop within 60s of Ctrl-C:\n%s", round, output())
		}
		for _, l := range strings.Split(output(), "\n") {
			if strings.Contains(l, "[ERROR]") || strings.Contains(l, "level=ERROR") {
				t.Errorf("round %d: %s", round, l)
			}
		}
	}
}
