package scheduler

// ReasonCenter: the request names a center and the host is in another one.
const ReasonCenter Reason = "not in center"

// CenterFilter rules out hosts outside the center a request names; a request
// without a center may go anywhere.
type CenterFilter struct{}

var _ Filter = CenterFilter{}

func (CenterFilter) Name() string { return "Center" }

func (CenterFilter) Filter(req Request, h *Host) Reason {
	if req.Center != "" && h.Center != req.Center {
		return ReasonCenter
	}
	return Fit
}
