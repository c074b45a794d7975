// Package clock is the controllers' wall clock: time.Now, shifted by an
// offset that fault tests set to make a controller's clock jump (the chaos
// harness's clock-jump scenario). Production never sets it. Only wall-clock
// readings go through here (the time a command is stamped with, token and
// lock expiry); durations are measured with time.Now's monotonic reading
// and are immune to jumps by design.
package clock

import (
	"context"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

var offset atomic.Int64

// Now is the wall clock (with time.Now's monotonic reading, so durations
// between two Nows stay true across a jump).
func Now() time.Time {
	if d := offset.Load(); d != 0 {
		return time.Now().Add(time.Duration(d))
	}
	return time.Now()
}

// Offset is the shift in effect.
func Offset() time.Duration { return time.Duration(offset.Load()) }

// Set shifts the clock by d from now on.
func Set(d time.Duration) { offset.Store(int64(d)) }

// Follow sets the offset from the file at path (a Go duration such as
// "15m" or "-1h"; absent or empty: no offset), read every period until ctx
// ends: a test writes the file to make the clock jump. A file that does not
// parse leaves the offset as it was.
func Follow(ctx context.Context, path string, period time.Duration) {
	read := func() {
		b, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			Set(0)
			return
		}
		if err != nil {
			return
		}
		s := strings.TrimSpace(string(b))
		if s == "" {
			Set(0)
			return
		}
		if d, err := time.ParseDuration(s); err == nil {
			Set(d)
		}
	}
	read()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			read()
		}
	}
}
