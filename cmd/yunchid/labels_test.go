package main

import (
	"strings"
	"testing"
)

// An agent label with a key constraints read from the host's own fields
// (center, site, rack, host) would be ignored: the agent refuses to start.
func TestAgentLabelsRefuseReservedKeys(t *testing.T) {
	for _, k := range []string{"center", "site", "rack", "host"} {
		_, err := agentLabels([]string{"gpu=none", k + "=b1"})
		if err == nil || !strings.Contains(err.Error(), `key "`+k+`" is reserved`) || !strings.Contains(err.Error(), "use --center, --site, --rack or --host-id") {
			t.Fatalf("--label %s=b1: %v", k, err)
		}
	}
	got, err := agentLabels([]string{"gpu=none", "center_zone=x"})
	if err != nil || len(got) != 2 || got["gpu"] != "none" || got["center_zone"] != "x" {
		t.Fatalf("ordinary labels: %v %v", got, err)
	}
}

// --raft-segment-size: binary sizes within 64 KiB..1 GiB; anything else is
// refused with the range, before anything is created.
func TestRaftSegmentSize(t *testing.T) {
	for in, want := range map[string]int{"64MiB": 64 << 20, "64KiB": 64 << 10, "1GiB": 1 << 30} {
		if got, err := segmentSize(in); err != nil || got != want {
			t.Errorf("segmentSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"1KiB": "out of range: give 64KiB to 1GiB", "2GiB": "out of range", "-1MiB": "--raft-segment-size",
		"4GB": "decimal", "lots": "--raft-segment-size",
	} {
		if _, err := segmentSize(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("segmentSize(%q) = %v; want an error saying %q", in, err, msg)
		}
	}
}

// --pressure-window: 0 turns spreading under pressure off (the scheduler's
// negative), a positive count passes through, a negative one is refused.
func TestPressureWindowFlag(t *testing.T) {
	for in, want := range map[int]int{0: -1, 1: 1, 100: 100} {
		if got, err := pressureWindow(in); err != nil || got != want {
			t.Errorf("pressureWindow(%d) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := pressureWindow(-1); err == nil || !strings.Contains(err.Error(), "--pressure-window -1: want a number of decisions") {
		t.Errorf("pressureWindow(-1): %v", err)
	}
}
