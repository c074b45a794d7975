package scheduler

import (
	"fmt"
	"slices"
	"strings"
)

// Op is how a Constraint compares a host attribute with its values.
type Op int

const (
	OpEq    Op = iota // key=value
	OpNe              // key!=value
	OpIn              // key in v1,v2
	OpNotIn           // key notin v1,v2
)

var opNames = [...]string{"=", "!=", " in ", " notin "}

// Constraint limits where a request may go: a host attribute (center, site,
// rack, host for its ID; any other key names a label) compared with values.
type Constraint struct {
	Key    string
	Op     Op
	Values []string
}

// HostFieldKeys are the constraint keys that match a host's own fields
// (its center, site, rack and ID), never its labels: a label with one of
// these keys would be invisible to constraints.
var HostFieldKeys = []string{"center", "site", "rack", "host"}

// IsHostFieldKey reports whether a constraint on key reads a host field
// rather than a label (see HostFieldKeys).
func IsHostFieldKey(key string) bool { return slices.Contains(HostFieldKeys, key) }

// ParseConstraint parses "cpu_model=kunpeng920", "rack!=r3",
// "center in a1,a2" or "center notin b1". Keys center, site, rack and host
// match those fields of a host; any other key matches its Labels.
func ParseConstraint(s string) (Constraint, error) {
	in := strings.TrimSpace(s)
	var c Constraint
	var key, vals string
	if i := strings.Index(in, "!="); i >= 0 {
		c.Op, key, vals = OpNe, in[:i], in[i+2:]
	} else if i := strings.IndexByte(in, '='); i >= 0 {
		c.Op, key, vals = OpEq, in[:i], in[i+1:]
	} else if f := strings.Fields(in); len(f) >= 3 && (f[1] == "in" || f[1] == "notin") {
		c.Op = OpIn
		if f[1] == "notin" {
			c.Op = OpNotIn
		}
		key = f[0]
		vals = strings.TrimSpace(in[strings.Index(in, f[1])+len(f[1]):])
	} else {
		return Constraint{}, fmt.Errorf("constraint %q: want key=value, key!=value, \"key in v1,v2\" or \"key notin v1,v2\"", s)
	}
	c.Key = strings.TrimSpace(key)
	for _, v := range strings.Split(vals, ",") {
		if v = strings.TrimSpace(v); v != "" {
			c.Values = append(c.Values, v)
		}
	}
	if err := c.validate(); err != nil {
		return Constraint{}, fmt.Errorf("constraint %q: %v", s, err)
	}
	return c, nil
}

func (c Constraint) validate() error {
	switch {
	case c.Key == "" || strings.ContainsAny(c.Key, " \t=!,"):
		return fmt.Errorf("constraint key %q must be a non-empty word (center, site, rack, host or a label name)", c.Key)
	case c.Op < OpEq || c.Op > OpNotIn:
		return fmt.Errorf("constraint on %q has unknown operator %d", c.Key, int(c.Op))
	case len(c.Values) == 0:
		return fmt.Errorf("constraint on %q has no value", c.Key)
	case (c.Op == OpEq || c.Op == OpNe) && len(c.Values) != 1:
		return fmt.Errorf("constraint on %q: %s takes one value, got %d (use in/notin for several)", c.Key, strings.TrimSpace(opNames[c.Op]), len(c.Values))
	}
	for _, v := range c.Values {
		if v == "" {
			return fmt.Errorf("constraint on %q has an empty value", c.Key)
		}
	}
	return nil
}

func (c Constraint) String() string {
	op := "?"
	if c.Op >= OpEq && c.Op <= OpNotIn {
		op = opNames[c.Op]
	}
	return c.Key + op + strings.Join(c.Values, ",")
}

// attr returns the host attribute c.Key names, and whether the host has it.
func (c *Constraint) attr(h *Host) (string, bool) {
	switch c.Key {
	case "center":
		return h.Center, true
	case "site":
		return h.Site, true
	case "rack":
		return h.Rack, true
	case "host":
		return h.ID, true
	}
	v, ok := h.Labels[c.Key]
	return v, ok
}

// Match reports whether h satisfies c. A host without the label c names
// satisfies != and notin, and not = or in.
func (c *Constraint) Match(h *Host) bool {
	v, ok := c.attr(h)
	found := false
	if ok {
		for _, w := range c.Values {
			if v == w {
				found = true
				break
			}
		}
	}
	if c.Op == OpEq || c.Op == OpIn {
		return found
	}
	return !found
}

// reason is why a host that does not Match is ruled out, e.g.
// "label cpu_model is not kunpeng920" or "rack is r3".
func (c *Constraint) reason() Reason {
	subject := c.Key
	if !IsHostFieldKey(c.Key) {
		subject = "label " + c.Key
	}
	vals := strings.Join(c.Values, ",")
	switch {
	case c.Op == OpEq || (c.Op == OpIn && len(c.Values) == 1):
		return Reason(subject + " is not " + vals)
	case c.Op == OpIn:
		return Reason(subject + " is not one of " + vals)
	case c.Op == OpNe || len(c.Values) == 1:
		return Reason(subject + " is " + vals)
	default:
		return Reason(subject + " is one of " + vals)
	}
}

// Level is where a placement group's rule applies: the same or different
// hosts, racks or centers.
type Level int

const (
	LevelHost Level = iota
	LevelRack
	LevelCenter
)

var levelNames = [...]string{"host", "rack", "center"}

func (l Level) String() string {
	if l >= 0 && int(l) < len(levelNames) {
		return levelNames[l]
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// ParseLevel reads "host", "rack" or "center".
func ParseLevel(s string) (Level, error) {
	for i, n := range levelNames {
		if strings.EqualFold(strings.TrimSpace(s), n) {
			return Level(i), nil
		}
	}
	return 0, fmt.Errorf("unknown group level %q: want host, rack or center", s)
}

// Strategy is what the scorer prefers among the hosts that fit.
type Strategy int

const (
	// Binpack fills hosts before starting new ones, choosing the host whose
	// leftover stays most usable (the default).
	Binpack Strategy = iota
	// Spread puts each VM on the host with the most room.
	Spread
)

var strategyNames = [...]string{"binpack", "spread"}

func (s Strategy) String() string {
	if s >= 0 && int(s) < len(strategyNames) {
		return strategyNames[s]
	}
	return fmt.Sprintf("Strategy(%d)", int(s))
}

// ParseStrategy reads "binpack" or "spread".
func ParseStrategy(s string) (Strategy, error) {
	for i, n := range strategyNames {
		if strings.EqualFold(strings.TrimSpace(s), n) {
			return Strategy(i), nil
		}
	}
	return 0, fmt.Errorf("unknown strategy %q: want binpack or spread", s)
}

// Group is a placement group: affinity (together) or anti-affinity (apart)
// at a level, hard (a filter) or soft (a score preference).
type Group struct {
	Name       string
	Affinity   bool  // true: keep members together; false: keep them apart
	Level      Level // host, rack or center
	Hard       bool  // hard: a filter; soft: a score preference
	MaxPerHost int   // 0 = no limit; a hard per-host cap for members
	// Members says where existing members already are: host ID -> member
	// count. Hosts not in the cluster are ignored.
	Members map[string]int
}
