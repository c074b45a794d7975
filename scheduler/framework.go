package scheduler

// A Filter rules out hosts that cannot take a request. Filters see hosts one
// at a time and must not modify them; Filter must be deterministic (no clock,
// no randomness), so the same input always gives the same placement.
type Filter interface {
	// Name identifies the filter in logs and metrics.
	Name() string
	// Filter returns Fit when h can take req, otherwise the Reason it cannot,
	// phrased so a person knows what to change.
	Filter(req Request, h *Host) Reason
}

// A Scorer rates a host that passed every filter. Like a Filter it must not
// modify the host and must be deterministic.
type Scorer interface {
	// Name identifies the scorer in logs and metrics.
	Name() string
	// Score rates h for req from 0 (worst) to MaxScore (best). It is only
	// called for hosts that passed every filter.
	Score(req Request, h *Host) float64
}

// MaxScore is the best score a Scorer gives and a Placement carries.
const MaxScore = 100

// WeightedScorer is a Scorer with its weight in the combined score.
type WeightedScorer struct {
	Scorer
	Weight float64
}

// Reason says why a host cannot take a request.
type Reason string

// Fit is the Reason a Filter returns for a host that passes it.
const Fit Reason = ""
