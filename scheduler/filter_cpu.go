package scheduler

// ReasonCPU: the host has fewer free vCPUs than the request asks for.
const ReasonCPU Reason = "insufficient vCPU"

// CPUFilter rules out hosts with fewer free vCPUs than requested.
type CPUFilter struct{}

var _ Filter = CPUFilter{}

func (CPUFilter) Name() string { return "CPU" }

func (CPUFilter) Filter(req Request, h *Host) Reason { return cpuDim.fit(req, h) }
