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
