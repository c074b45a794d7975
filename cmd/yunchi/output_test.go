package main

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

// A time to come (a token's expiry) reads "in …", not "0s ago"; a time
// past, or a creation stamp a moment ahead of this clock, reads "… ago".
func TestTimestampFutureAndPast(t *testing.T) {
	now := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	p := &printer{now: func() time.Time { return now }}
	for _, c := range []struct {
		at   time.Time
		want string
	}{
		{now.Add(90 * 24 * time.Hour), "2027-02-28T09:00:00Z (in 90d)"},
		{now.Add(30 * time.Minute), "2026-11-30T09:30:00Z (in 30m)"},
		{now.Add(90*24*time.Hour - 900*time.Millisecond), "2027-02-28T08:59:59Z (in 90d)"},
		{now.Add(20 * time.Second), "2026-11-30T09:00:20Z (in 20s)"},
		{now.Add(300 * time.Millisecond), "2026-11-30T09:00:00Z (0s ago)"},
		{now.Add(-3 * time.Hour), "2026-11-30T06:00:00Z (3h ago)"},
	} {
		if got := p.timestamp(timestamppb.New(c.at)); got != c.want {
			t.Errorf("timestamp(%v) = %q, want %q", c.at, got, c.want)
		}
	}
	if got := p.age(timestamppb.New(now.Add(time.Hour))); got != "0s" {
		t.Errorf("age of a future time = %q, want 0s", got)
	}
}
