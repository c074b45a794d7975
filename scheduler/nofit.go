package scheduler

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Shortfall is how near the hosts rejected for lack of one resource came to
// fitting: the amount requested and the largest amount one of them had free.
type Shortfall struct {
	Need, MostFree int64
	HostID         string // the host with MostFree; the smallest ID on a tie
}

// NoFitError is returned by Place and PlaceBatch when no host can take a
// request. Its message summarises why, on one line; its fields let a caller
// say more.
type NoFitError struct {
	Request Request
	Total   int // hosts considered: every host in the cluster
	// Counts is the number of hosts rejected per reason, each host counted
	// once, under the first filter that rejected it.
	Counts map[Reason]int
	// Shortfalls has, for each resource reason in Counts, the nearest miss.
	Shortfalls map[Reason]Shortfall
	// Batch is the size of the batch the request was part of (PlaceBatch),
	// and Index its position there; Batch is 0 for Place.
	Batch, Index int
}

// count records n hosts rejected for reason, whose free capacity is free;
// id is the one with the smallest ID among them.
func (e *NoFitError) count(reason Reason, n int, free Resources, id string) {
	if reason == Fit || n <= 0 {
		return
	}
	e.Counts[reason] += n
	dim, ok := dimensionOf(reason)
	if !ok {
		return
	}
	f := dim.of(free)
	sf, seen := e.Shortfalls[reason]
	if !seen || f > sf.MostFree || (f == sf.MostFree && id < sf.HostID) {
		e.Shortfalls[reason] = Shortfall{Need: dim.of(e.Request.Resources), MostFree: f, HostID: id}
	}
}

// Error reads like
//
//	0/45 hosts fit: 30 insufficient memory (need 64 GiB; most free: 48 GiB on a1-h12), 15 not in center a1
//
// with reasons by count, most first, then by name. In a batch it starts
// with the request that could not be placed:
//
//	request "db-3" (3 of 3): 0/2 hosts fit: 2 anti-affinity: group db already has a member on this host
func (e *NoFitError) Error() string {
	var b strings.Builder
	if e.Batch > 0 {
		if e.Request.Name != "" {
			fmt.Fprintf(&b, "request %q (%d of %d): ", e.Request.Name, e.Index+1, e.Batch)
		} else {
			fmt.Fprintf(&b, "request %d of %d: ", e.Index+1, e.Batch)
		}
	}
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
	if sf.MostFree < 0 {
		// Every host short of it is overcommitted there: say so rather
		// than print a negative free.
		return fmt.Sprintf(" (need %s; none free: %s, the least overcommitted, is over by %s)", d.format(sf.Need), sf.HostID, d.format(-sf.MostFree))
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
