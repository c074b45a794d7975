package scheduler

// ReasonMemory: the host has less free memory than the request asks for.
const ReasonMemory Reason = "insufficient memory"

// MemoryFilter rules out hosts with less free memory than requested.
type MemoryFilter struct{}

var _ Filter = MemoryFilter{}

func (MemoryFilter) Name() string { return "Memory" }

func (MemoryFilter) Filter(req Request, h *Host) Reason { return memoryDim.fit(req, h) }
