// Package benchkit is what the benchmark programs under bench/ share:
// their `name: value` output, progress lines on stderr, how busy the
// machine was, and the ports and output of the dev cluster they run in
// process. Not part of any product binary.
package benchkit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Progress prints one progress line, with the time, on stderr.
func Progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// Loadavg is /proc/loadavg's 1, 5 and 15 minute figures: how busy the
// machine was besides the benchmark.
func Loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// MemAvailableMiB is /proc/meminfo's MemAvailable, in MiB (0: unknown).
func MemAvailableMiB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
			kib, _ := strconv.ParseInt(f[1], 10, 64)
			return kib >> 10
		}
	}
	return 0
}

// Lines are the output figures, printed in the order added.
type Lines struct{ l [][2]string }

// Add appends the figure name with its value.
func (ls *Lines) Add(name, format string, args ...any) {
	ls.l = append(ls.l, [2]string{name, fmt.Sprintf(format, args...)})
}

// Print writes the figures, one `name: value` line each.
func (ls *Lines) Print(w io.Writer) {
	for _, l := range ls.l {
		fmt.Fprintf(w, "%s: %s\n", l[0], l[1])
	}
}

// ParseLines reads `name: value` output back (tests of the programs).
func ParseLines(out string) (map[string]string, error) {
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, ok := strings.Cut(l, ": ")
		if !ok {
			return nil, fmt.Errorf("output line %q is not name: value", l)
		}
		got[k] = v
	}
	return got, nil
}

// FreeBasePort finds a base port for a dev cluster: base..base+2 (API)
// and base+10..base+12 (raft) all free now, below the ephemeral range.
func FreeBasePort() (int, error) {
	for range 100 {
		base := 20000 + rand.IntN(12000)
		ok := true
		for _, off := range []int{0, 1, 2, 10, 11, 12} {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+off))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, errors.New("no free ports for a dev cluster")
}

// DevOutput passes the dev cluster's lines on to stderr as progress,
// except the administrators' tokens.
func DevOutput() io.WriteCloser {
	r, w := io.Pipe()
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			l := sc.Text()
			if strings.Contains(l, " token: ") {
				continue
			}
			Progress("%s", l)
		}
		io.Copy(io.Discard, r)
	}()
	return w
}
