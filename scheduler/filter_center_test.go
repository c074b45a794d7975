package scheduler

import "testing"

func TestCenterFilter(t *testing.T) {
	for _, tc := range []struct {
		name       string
		reqCenter  string
		hostCenter string
		want       Reason
	}{
		{"any center", "", "a1", Fit},
		{"any center, host without one", "", "", Fit},
		{"same center", "a1", "a1", Fit},
		{"other center", "a1", "b1", ReasonCenter},
		{"host without center", "a1", "", ReasonCenter},
		{"case matters", "a1", "A1", ReasonCenter},
	} {
		req := Request{Resources: Resources{1, GiB, GiB}, Center: tc.reqCenter}
		h := Host{ID: "h1", Center: tc.hostCenter, Ready: true}
		if got := (CenterFilter{}).Filter(req, &h); got != tc.want {
			t.Errorf("%s: Filter = %q, want %q", tc.name, got, tc.want)
		}
	}
}
