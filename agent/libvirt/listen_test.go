package libvirt

import (
	"context"
	"errors"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A server's socket file appears when it binds, before it listens: a dial
// then is refused. waitListening waits for the listen (CI met qemu-nbd in
// between: "connect: connection refused" on a shut-off VM's backup).
func TestWaitListeningWaitsForListen(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err = waitListening(ctx, sock, nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("bound, not listening: %v, want the wait to time out", err)
	}
	if err := syscall.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := waitListening(ctx, sock, nil); err != nil {
		t.Fatalf("listening: %v", err)
	}
	exited := make(chan struct{})
	close(exited)
	if err := waitListening(ctx, filepath.Join(t.TempDir(), "none.sock"), exited); !errors.Is(err, errExited) {
		t.Fatalf("server gone: %v", err)
	}
}
