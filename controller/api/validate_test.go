package api

import (
	"strings"
	"testing"
)

// Size refusals are one line even when the size has a line break inside
// (found while writing FuzzParseSize: the decimal unit and the out-of-range
// size were printed as given).
func TestSizeErrorsAreOneLine(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"4\nGB", `size "4\nGB" is in decimal GB: write 4GiB (binary, as sizes are here) or 4000000000 (bytes)`},
		{"512 mb", `size "512 mb" is in decimal mb: write 512MiB`},
		{"1 \n B", "memory 1 B is out of range: give 16 MiB to 16 TiB"},
		{" 0\r\n", "memory 0 is out of range: give 16 MiB to 16 TiB"},
	} {
		_, err := checkSize("memory", tc.in, minMemory, maxMemory)
		if err == nil || strings.ContainsAny(err.Error(), "\n\r") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("checkSize(%q): %v, want one line saying %q", tc.in, err, tc.want)
		}
	}
}
