package api

import (
	"fmt"
	"math"
	"net"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/scheduler"
)

// Names are DNS labels (state.ValidName): they end up in domain names, URLs
// and log lines, so nothing that could be read as a path, markup or a quote
// gets in.
const maxNameLen = 63

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// checkName validates a VM, project, host or center name.
func checkName(what, s string) error {
	switch {
	case s == "":
		return invalid("%s is empty: give 1-%d lowercase letters, digits or '-'", what, maxNameLen)
	case len(s) > maxNameLen:
		return invalid("%s %.20q... is %d characters long: at most %d are allowed", what, s, len(s), maxNameLen)
	case !state.ValidName(s):
		return invalid("%s %q is not valid: use lowercase letters, digits and '-', starting and ending with a letter or digit", what, s)
	}
	return nil
}

// Host ids may also carry '.' and '_' (hostnames), but never '/' or spaces.
var hostIDRE = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?$`)

func checkHostID(s string) error {
	switch {
	case s == "":
		return invalid("host id is empty")
	case len(s) > 253:
		return invalid("host id is %d characters long: at most 253 are allowed", len(s))
	case !hostIDRE.MatchString(s):
		return invalid("host id %q is not valid: use letters, digits, '-', '.' and '_'", s)
	}
	return nil
}

// Binary units only: K, M, G and T alone are binary too, as in qemu and
// libvirt. The decimal spellings (KB, MB, GB, TB) are refused rather than
// read as powers of 1000: to most people "4GB" of memory means 4 GiB, and
// a VM that silently gets 3.73 GiB (not even a whole number of pages) is a
// worse answer than a one-line error with both exact spellings.
var units = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tib": 1 << 40,
}

// decimalUnits are refused with the binary spelling and the exact bytes.
var decimalUnits = map[string]struct {
	binary string
	mult   int64
}{
	"kb": {"KiB", 1000}, "mb": {"MiB", 1000 * 1000},
	"gb": {"GiB", 1000 * 1000 * 1000}, "tb": {"TiB", 1000 * 1000 * 1000 * 1000},
}

// ParseSize reads sizes such as "4GiB", "512MiB", "1.5TiB", "0" or a bare
// number of bytes; K/M/G/T alone are binary (as in qemu and libvirt). The
// result may be zero or negative: callers check the range they accept.
// Decimal units (GB...) are refused, naming both exact spellings.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("size is empty")
	}
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.' || t[i] == '-' || t[i] == '+') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	v, numErr := strconv.ParseFloat(num, 64)
	if d, ok := decimalUnits[unit]; ok {
		if numErr != nil || num == "" {
			return 0, fmt.Errorf("unit %q in size %q is decimal: sizes are binary, use %s", t[i:], s, d.binary)
		}
		return 0, fmt.Errorf("size %q is in decimal %s: write %s%s (binary, as sizes are here) or %s (bytes)",
			s, strings.TrimSpace(t[i:]), num, d.binary, strconv.FormatFloat(math.Round(v*float64(d.mult)), 'f', -1, 64))
	}
	mult, ok := units[unit]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q in size %q: use B, KiB, MiB, GiB or TiB", t[i:], s)
	}
	if numErr != nil || num == "" {
		return 0, fmt.Errorf("size %q is not a number followed by a unit, e.g. \"4GiB\"", s)
	}
	b := v * float64(mult)
	if math.Abs(b) > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(b), nil
}

// Limits on one VM; a request beyond them is a typo, not a capacity question.
const (
	minMemory   = 16 << 20
	maxMemory   = 16 << 40
	minDisk     = 1 << 30
	maxDisk     = 64 << 40
	maxVCPUs    = 512
	defaultDisk = 20 << 30
)

// checkSize parses a size field and checks it is within [min, max].
func checkSize(field, s string, min, max int64) (int64, error) {
	v, err := ParseSize(s)
	if err != nil {
		return 0, invalid("%s: %v", field, err)
	}
	if v < min || v > max {
		lo := scheduler.FormatBytes(min)
		if min == 0 {
			lo = "0"
		}
		return 0, invalid("%s %s is out of range: give %s to %s", field, oneLine(s), lo, scheduler.FormatBytes(max))
	}
	return v, nil
}

func checkHostPort(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" {
		return invalid("address %q is not host:port", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return invalid("address %q has no valid port", a)
	}
	return nil
}

// oneLine folds a message onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
