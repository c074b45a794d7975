package clock

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFollowJumps: writing the file moves the clock, forward and back;
// removing it puts the clock right; durations stay monotonic throughout.
func TestFollowJumps(t *testing.T) {
	defer Set(0)
	path := filepath.Join(t.TempDir(), "offset")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Follow(ctx, path, 5*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()

	wait := func(want time.Duration) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for Offset() != want {
			if time.Now().After(deadline) {
				t.Fatalf("offset %v, want %v", Offset(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	start := Now()
	for _, c := range []struct {
		text string
		want time.Duration
	}{{"15m\n", 15 * time.Minute}, {"-1h", -time.Hour}, {"nonsense", -time.Hour}, {"", 0}} {
		if err := os.WriteFile(path, []byte(c.text), 0o600); err != nil {
			t.Fatal(err)
		}
		if c.text == "nonsense" {
			time.Sleep(50 * time.Millisecond) // read, and ignored
		}
		wait(c.want)
		if got := time.Until(Now()); got < c.want-time.Second || got > c.want+time.Second {
			t.Errorf("after %q: Now is %v from time.Now, want about %v", c.text, got, c.want)
		}
	}
	os.WriteFile(path, []byte("2h"), 0o600)
	wait(2 * time.Hour)
	os.Remove(path)
	wait(0)
	if d := Now().Sub(start); d < 0 || d > time.Minute {
		t.Errorf("a duration across jumps is %v: it must come from the monotonic clock", d)
	}
}
