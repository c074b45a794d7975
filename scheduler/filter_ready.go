package scheduler

// ReasonNotReady: the host is down or otherwise not taking VMs.
const ReasonNotReady Reason = "not ready"

// ReadyFilter rules out hosts that are not ready.
type ReadyFilter struct{}

var _ Filter = ReadyFilter{}

func (ReadyFilter) Name() string { return "Ready" }

func (ReadyFilter) Filter(_ Request, h *Host) Reason {
	if !h.Ready {
		return ReasonNotReady
	}
	return Fit
}
