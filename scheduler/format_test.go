package scheduler

import (
	"math"
	"testing"
)

const (
	KiB = int64(1) << (10 * (iota + 1))
	MiB
	GiB
	TiB
)

func TestFormatBytes(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1, "1 B"},
		{1023, "1023 B"},
		{1024, "1 KiB"},
		{1536, "1.5 KiB"},
		{768 * MiB, "768 MiB"},
		{1610612736, "1.5 GiB"},
		{1792 * MiB, "1.75 GiB"},
		{4294967296, "4 GiB"},
		{GiB + GiB/3, "1.33 GiB"},
		{64*GiB - 1, "64 GiB"}, // rounded, not truncated
		{MiB - 1, "1 MiB"},     // 1023.999 KiB rounds up into the next unit
		{14 * TiB, "14 TiB"},
		{700 * TiB, "700 TiB"},
		{1024 * TiB, "1 PiB"},
		{-1610612736, "-1.5 GiB"}, // an overcommitted host's free memory
		{math.MaxInt64, "8 EiB"},
		{math.MinInt64, "-8 EiB"},
	} {
		if got := FormatBytes(tc.n); got != tc.want {
			t.Errorf("FormatBytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
