package scheduler

// ReasonDisk: the host has less free disk than the request asks for.
const ReasonDisk Reason = "insufficient disk"

// DiskFilter rules out hosts with less free disk than requested.
type DiskFilter struct{}

var _ Filter = DiskFilter{}

func (DiskFilter) Name() string { return "Disk" }

func (DiskFilter) Filter(req Request, h *Host) Reason { return diskDim.fit(req, h) }
