package raftnode

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// The transport's "transport shutdown" decode failure, which every node
// stopped while its peers run logs, goes to debug; a reset connection (a
// peer stopped) to WARN; raft's other errors, the same message with another
// cause included, stay errors.
func TestShutdownNoiseIsDebug(t *testing.T) {
	var raftOut, slogOut bytes.Buffer
	lg := slog.New(slog.NewTextHandler(&slogOut, &slog.HandlerOptions{Level: slog.LevelDebug}))
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft/t", Level: hclog.Warn, Output: &raftOut, Exclude: demoteStopNoise(lg)})

	hl.Error("failed to decode incoming command", "error", raft.ErrTransportShutdown)
	if raftOut.Len() != 0 {
		t.Errorf("shutdown noise logged by raft: %s", raftOut.String())
	}
	if !strings.Contains(slogOut.String(), "level=DEBUG") || !strings.Contains(slogOut.String(), "transport shutdown") {
		t.Errorf("shutdown noise not at debug: %q", slogOut.String())
	}

	slogOut.Reset()
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	hl.Error("failed to decode incoming command", "error", reset)
	if raftOut.Len() != 0 || !strings.Contains(slogOut.String(), "level=WARN") || !strings.Contains(slogOut.String(), "connection reset") {
		t.Errorf("reset connection: raft %q, slog %q", raftOut.String(), slogOut.String())
	}

	for _, keep := range []struct {
		msg string
		err error
	}{
		{"failed to decode incoming command", io.ErrUnexpectedEOF},
		{"failed to appendEntries to", raft.ErrTransportShutdown},
	} {
		raftOut.Reset()
		hl.Error(keep.msg, "error", keep.err)
		if !strings.Contains(raftOut.String(), "[ERROR]") || !strings.Contains(raftOut.String(), keep.msg) {
			t.Errorf("%s (%v) dropped: %q", keep.msg, keep.err, raftOut.String())
		}
	}
}
