package scheduler

import "testing"

func TestReadyFilter(t *testing.T) {
	req := Request{Resources: Resources{1, GiB, GiB}}
	for _, tc := range []struct {
		name string
		host Host
		want Reason
	}{
		{"ready", Host{ID: "h1", Ready: true}, Fit},
		{"down", Host{ID: "h1"}, ReasonNotReady},
	} {
		if got := (ReadyFilter{}).Filter(req, &tc.host); got != tc.want {
			t.Errorf("%s: Filter = %q, want %q", tc.name, got, tc.want)
		}
	}
}
