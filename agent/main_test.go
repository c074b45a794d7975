package agent_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run if goroutines of the agent or of gRPC outlive the
// tests: every agent, stream and server must be stopped by its test.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left running after the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

func leakedGoroutines(wait time.Duration) string {
	deadline := time.Now().Add(wait)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			// libvirt's event loop runs for the life of the process, by
			// design (agent/libvirt/events.go).
			if strings.Contains(g, "agent_test.TestMain") || strings.Contains(g, "libvirt.EventRunDefaultImpl") {
				continue
			}
			if strings.Contains(g, "github.com/yunchi/yunchi/agent") || strings.Contains(g, "google.golang.org/grpc") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
