package scheduler

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Rejection is why one host cannot take the request: the Reason of the
// first filter that ruled it out.
type Rejection struct {
	HostID string
	Reason Reason
}

// Shortfall is how near the hosts rejected for lack of one resource came to
// fitting: the amount requested and the largest amount one of them had free.
type Shortfall struct {
	Need, MostFree int64
	HostID         string // the host with MostFree; the smallest ID on a tie
}

// NoFitError is returned by Place when no host can take the request. Its
// message summarises why; its fields let a caller say more.
type NoFitError struct {
	Request Request
	Total   int // hosts considered
	// Counts is the number of hosts rejected per reason, each host counted
	// once, under the first filter that rejected it.
	Counts map[Reason]int
	// Rejections has one entry per host, sorted by host ID.
	Rejections []Rejection
	// Shortfalls has, for each resource reason in Counts, the nearest miss.
	Shortfalls map[Reason]Shortfall
}

// explain builds the NoFitError for hosts, none of which passes s's filters.
// It runs the filters again rather than recording reasons during Place, so
// placements that succeed, the common case, allocate nothing for it.
func (s *Scheduler) explain(req Request, hosts []Host) *NoFitError {
	e := &NoFitError{
		Request:    req,
		Total:      len(hosts),
		Counts:     map[Reason]int{},
		Rejections: make([]Rejection, 0, len(hosts)),
		Shortfalls: map[Reason]Shortfall{},
	}
	for i := range hosts {
		h := &hosts[i]
		r := s.reject(req, h)
		e.Rejections = append(e.Rejections, Rejection{h.ID, r})
		e.Counts[r]++
		d, ok := dimensionOf(r)
		if !ok {
			continue
		}
		free := d.of(h.Free())
		sf, seen := e.Shortfalls[r]
		if !seen || free > sf.MostFree || (free == sf.MostFree && h.ID < sf.HostID) {
			e.Shortfalls[r] = Shortfall{Need: d.of(req.Resources), MostFree: free, HostID: h.ID}
		}
	}
	slices.SortFunc(e.Rejections, func(a, b Rejection) int { return strings.Compare(a.HostID, b.HostID) })
	return e
}

// Error reads like
//
//	0/45 hosts fit: 30 insufficient memory (need 64 GiB; most free: 48 GiB on a1-h12), 15 not in center a1
//
// with reasons by count, most first, then by name.
func (e *NoFitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "0/%d hosts fit: ", e.Total)
	if e.Total == 0 {
		b.WriteString("no hosts registered")
		return b.String()
	}
	reasons := make([]Reason, 0, len(e.Counts))
	for r := range e.Counts {
		reasons = append(reasons, r)
	}
	slices.SortFunc(reasons, func(a, b Reason) int {
		if e.Counts[a] != e.Counts[b] {
			return e.Counts[b] - e.Counts[a]
		}
		return strings.Compare(string(a), string(b))
	})
	for i, r := range reasons {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(e.Counts[r]))
		b.WriteByte(' ')
		b.WriteString(string(r))
		b.WriteString(e.detail(r))
	}
	return b.String()
}

// detail is what follows a reason in the message: the center asked for, or
// for a resource the need and the nearest miss.
func (e *NoFitError) detail(r Reason) string {
	if r == ReasonCenter {
		return " " + e.Request.Center
	}
	d, ok := dimensionOf(r)
	sf, found := e.Shortfalls[r]
	if !ok || !found {
		return ""
	}
	need, free := d.format(sf.Need), d.format(sf.MostFree)
	if need == free {
		// Rounded alike (64 GiB needed, 64 GiB less a byte free): print the
		// exact amounts rather than a contradiction.
		need = strconv.FormatInt(sf.Need, 10) + " " + d.unit
		free = strconv.FormatInt(sf.MostFree, 10) + " " + d.unit
	}
	return fmt.Sprintf(" (need %s; most free: %s on %s)", need, free, sf.HostID)
}
