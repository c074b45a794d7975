// Package sim replays the public Azure VM trace against a placer, as defined
// in the shared benchmark definition (bench/azure-replay.md): workload W1
// "fill" (online packing until the cluster is full) and W2 "churn"
// (arrivals and departures in trace time). It drives Yunchi's scheduler
// through its Cluster API and two simple baselines of its own, and keeps its
// own per-host accounting so that a placer that overfills a host is caught.
//
// The package does no I/O except reading the trace files of one directory.
package sim

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/yunchi/yunchi/scheduler"
)

// GiB is 2^30 bytes. The trace's "GB" are treated as GiB.
const GiB = int64(1) << 30

// DiskPerRequest is the disk every request asks for (the trace has none).
const DiskPerRequest = 40 * GiB

// Never is the Lifetime of a VM that never departs (a Ck token).
const Never int64 = -1

// Request is one VM of the trace.
type Request struct {
	Name    string // "r<index>", for explanations
	Flavor  string // the flavor letter
	Arrival int64  // seconds from trace start (the line's timestamp)
	Batch   int    // index of its tenant batch (the |-delimited group), from 0
	scheduler.Resources
	// Lifetime in seconds, or Never. Departure is Arrival+Lifetime.
	Lifetime int64
}

// Trace is the request stream of one trace directory.
type Trace struct {
	Dir           string
	ArrivalsFile  string // base name, e.g. v1.dev.txt
	LifetimesFile string // base name, e.g. v1.dev.c2100000.txt
	Requests      []Request
	Batches       int
}

// Total is the sum of every request's resources.
func (t *Trace) Total() scheduler.Resources {
	var s scheduler.Resources
	for i := range t.Requests {
		s = s.Add(t.Requests[i].Resources)
	}
	return s
}

// Files are the names LoadTrace looks for in the directory.
const (
	FlavorFile   = "flav_map.txt"
	IntervalFile = "v1.interval_map.txt"
)

// FindTraceFiles returns the arrivals file (v1.*.txt) and its lifetimes file
// (v1.*.c*.txt, same stem) in dir: exactly one of each.
func FindTraceFiles(dir string) (arrivals, lifetimes string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", "", fmt.Errorf("trace directory %s: %v", dir, err)
	}
	var arr, life []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, "v1.") || !strings.HasSuffix(name, ".txt") || name == IntervalFile {
			continue
		}
		stem := strings.TrimSuffix(strings.TrimPrefix(name, "v1."), ".txt")
		if stem == "" {
			continue
		}
		if i := strings.LastIndex(stem, ".c"); i > 0 && isDigits(stem[i+2:]) {
			life = append(life, name)
		} else if !strings.Contains(stem, ".") {
			arr = append(arr, name)
		}
	}
	switch len(arr) {
	case 0:
		return "", "", fmt.Errorf("trace directory %s: no arrivals file v1.<name>.txt", dir)
	case 1:
	default:
		return "", "", fmt.Errorf("trace directory %s: %d arrivals files (%s); keep exactly one", dir, len(arr), strings.Join(arr, ", "))
	}
	arrivals = arr[0]
	prefix := strings.TrimSuffix(arrivals, ".txt") + ".c"
	var mine []string
	for _, l := range life {
		if strings.HasPrefix(l, prefix) {
			mine = append(mine, l)
		}
	}
	switch len(mine) {
	case 0:
		return "", "", fmt.Errorf("trace directory %s: no lifetimes file %s<cut>.txt for %s", dir, prefix, arrivals)
	case 1:
	default:
		return "", "", fmt.Errorf("trace directory %s: %d lifetimes files for %s (%s); keep exactly one", dir, len(mine), arrivals, strings.Join(mine, ", "))
	}
	return arrivals, mine[0], nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// LoadTrace reads the trace in dir: flav_map.txt, v1.interval_map.txt, the
// arrivals file and its lifetimes file. Errors are one line naming the file
// and line.
func LoadTrace(dir string) (*Trace, error) {
	arrivals, lifetimes, err := FindTraceFiles(dir)
	if err != nil {
		return nil, err
	}
	flavors, err := readFlavors(filepath.Join(dir, FlavorFile))
	if err != nil {
		return nil, err
	}
	bins, err := readIntervals(filepath.Join(dir, IntervalFile))
	if err != nil {
		return nil, err
	}
	arrLines, err := readLines(filepath.Join(dir, arrivals))
	if err != nil {
		return nil, err
	}
	lifeLines, err := readLines(filepath.Join(dir, lifetimes))
	if err != nil {
		return nil, err
	}
	t := &Trace{Dir: dir, ArrivalsFile: arrivals, LifetimesFile: lifetimes}
	if len(arrLines) != len(lifeLines) {
		return nil, fmt.Errorf("%s has %d lines but %s has %d; they must match line for line",
			lifetimes, len(lifeLines), arrivals, len(arrLines))
	}
	prevT := int64(math.MinInt64)
	for i := range arrLines {
		lineNo := i + 1
		ts, atoks, err := splitLine(arrLines[i])
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %v", arrivals, lineNo, err)
		}
		lts, ltoks, err := splitLine(lifeLines[i])
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %v", lifetimes, lineNo, err)
		}
		if ts != lts {
			return nil, fmt.Errorf("%s line %d: timestamp %d differs from %d in %s", lifetimes, lineNo, lts, ts, arrivals)
		}
		if ts < prevT {
			return nil, fmt.Errorf("%s line %d: timestamp %d is before the previous line's %d", arrivals, lineNo, ts, prevT)
		}
		prevT = ts
		if len(atoks) != len(ltoks) {
			return nil, fmt.Errorf("%s line %d: %d tokens but %s has %d on that line", lifetimes, lineNo, len(ltoks), arrivals, len(atoks))
		}
		open := false // a batch has begun on this line and not been closed by "|"
		for k, tok := range atoks {
			ltok := ltoks[k]
			if tok == "|" {
				if ltok != "|" {
					return nil, fmt.Errorf("%s line %d: token %d is %q where %s has \"|\"", lifetimes, lineNo, k+1, ltok, arrivals)
				}
				if open {
					t.Batches++
					open = false
				}
				continue
			}
			f, ok := flavors[tok]
			if !ok {
				return nil, fmt.Errorf("%s line %d: token %d: unknown flavor %q (not in %s)", arrivals, lineNo, k+1, tok, FlavorFile)
			}
			life, err := lifetime(ltok, bins)
			if err != nil {
				return nil, fmt.Errorf("%s line %d: token %d: %v", lifetimes, lineNo, k+1, err)
			}
			open = true
			t.Requests = append(t.Requests, Request{
				Name:      "r" + strconv.Itoa(len(t.Requests)),
				Flavor:    tok,
				Arrival:   ts,
				Batch:     t.Batches,
				Resources: scheduler.Resources{VCPUs: f.VCPUs, MemoryBytes: f.MemoryBytes, DiskBytes: DiskPerRequest},
				Lifetime:  life,
			})
		}
		if open { // a line that does not end in "|" closes its last batch
			t.Batches++
		}
	}
	if len(t.Requests) == 0 {
		return nil, fmt.Errorf("%s: no requests", arrivals)
	}
	return t, nil
}

// splitLine splits "T a,b,|,c,|" into T and its comma-separated tokens.
func splitLine(line string) (int64, []string, error) {
	tsText, rest, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok {
		return 0, nil, fmt.Errorf("want \"<seconds> <token>,<token>,...\", got %q", abbrev(line))
	}
	ts, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil || ts < 0 {
		return 0, nil, fmt.Errorf("timestamp %q is not a non-negative integer", tsText)
	}
	rest = strings.TrimSpace(rest)
	rest = strings.TrimSuffix(rest, ",")
	if rest == "" {
		return ts, nil, nil
	}
	toks := strings.Split(rest, ",")
	for k, tok := range toks {
		if tok == "" {
			return 0, nil, fmt.Errorf("token %d is empty", k+1)
		}
	}
	return ts, toks, nil
}

func abbrev(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

type flavor struct {
	VCPUs       int64
	MemoryBytes int64
}

// readFlavors reads "vcpu,memoryGB letter" rows.
func readFlavors(path string) (map[string]flavor, error) {
	lines, err := readLines(path)
	if err != nil {
		return nil, err
	}
	name := filepath.Base(path)
	m := map[string]flavor{}
	for i, line := range lines {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s line %d: want \"<vcpus>,<memoryGB> <letter>\", got %q", name, i+1, abbrev(line))
		}
		cpuText, memText, ok := strings.Cut(f[0], ",")
		if !ok {
			return nil, fmt.Errorf("%s line %d: want \"<vcpus>,<memoryGB> <letter>\", got %q", name, i+1, abbrev(line))
		}
		cpu, err := strconv.ParseInt(cpuText, 10, 64)
		if err != nil || cpu <= 0 {
			return nil, fmt.Errorf("%s line %d: vCPUs %q is not a positive integer", name, i+1, cpuText)
		}
		mem, err := strconv.ParseFloat(memText, 64)
		if err != nil || !(mem > 0) || mem > 1<<30 {
			return nil, fmt.Errorf("%s line %d: memory %q is not a positive number of GB", name, i+1, memText)
		}
		if _, dup := m[f[1]]; dup {
			return nil, fmt.Errorf("%s line %d: flavor %q defined twice", name, i+1, f[1])
		}
		if f[1] == "|" {
			return nil, fmt.Errorf("%s line %d: \"|\" cannot be a flavor name", name, i+1)
		}
		m[f[1]] = flavor{VCPUs: cpu, MemoryBytes: int64(math.Round(mem * float64(GiB)))}
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%s: no flavors", name)
	}
	return m, nil
}

// readIntervals reads "seconds bin" rows and returns, per bin, the smallest
// seconds value mapped to it.
func readIntervals(path string) (map[int]int64, error) {
	lines, err := readLines(path)
	if err != nil {
		return nil, err
	}
	name := filepath.Base(path)
	bins := map[int]int64{}
	for i, line := range lines {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s line %d: want \"<seconds> <bin>\", got %q", name, i+1, abbrev(line))
		}
		sec, err1 := strconv.ParseInt(f[0], 10, 64)
		bin, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil || sec < 0 || bin < 0 {
			return nil, fmt.Errorf("%s line %d: want two non-negative integers, got %q", name, i+1, abbrev(line))
		}
		if old, ok := bins[bin]; !ok || sec < old {
			bins[bin] = sec
		}
	}
	if len(bins) == 0 {
		return nil, fmt.Errorf("%s: no rows", name)
	}
	return bins, nil
}

// lifetime turns "Uk" into seconds and "Ck" into Never.
func lifetime(tok string, bins map[int]int64) (int64, error) {
	if len(tok) < 2 || (tok[0] != 'U' && tok[0] != 'C') || !isDigits(tok[1:]) {
		return 0, fmt.Errorf("lifetime %q: want U<bin> or C<bin>", tok)
	}
	k, err := strconv.Atoi(tok[1:])
	if err != nil {
		return 0, fmt.Errorf("lifetime %q: bin out of range", tok)
	}
	if tok[0] == 'C' {
		return Never, nil
	}
	if k == 0 {
		return 150, nil
	}
	sec, ok := bins[k]
	if !ok {
		return 0, fmt.Errorf("lifetime %q: bin %d is not in %s", tok, k, IntervalFile)
	}
	return sec, nil
}

// readLines returns the lines of a file (without newlines), dropping a
// trailing empty line.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s line %d: %v", path, len(lines)+1, err)
	}
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	return lines, nil
}
