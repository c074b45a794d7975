package scheduler

import (
	"strconv"
	"strings"
)

var byteUnits = []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}

// FormatBytes prints n in the largest binary unit it reaches, with at most
// two decimals: 4294967296 -> "4 GiB", 1610612736 -> "1.5 GiB", 512 -> "512 B".
func FormatBytes(n int64) string {
	sign := ""
	u := uint64(n)
	if n < 0 {
		sign, u = "-", uint64(-(n+1))+1 // no overflow at math.MinInt64
	}
	unit := 0
	for unit+1 < len(byteUnits) && u >= 1<<(10*(unit+1)) {
		unit++
	}
	if unit == 0 {
		return sign + strconv.FormatUint(u, 10) + " B"
	}
	v := strconv.FormatFloat(float64(u)/float64(uint64(1)<<(10*unit)), 'f', 2, 64)
	// 1023.999 MiB rounds to "1024.00": that is 1 GiB.
	if v == "1024.00" && unit+1 < len(byteUnits) {
		v, unit = "1.00", unit+1
	}
	v = strings.TrimSuffix(strings.TrimRight(v, "0"), ".")
	return sign + v + " " + byteUnits[unit]
}

func formatVCPUs(n int64) string { return strconv.FormatInt(n, 10) + " vCPU" }
