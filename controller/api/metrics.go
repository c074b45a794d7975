package api

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Metrics are the controller's Prometheus series, served at /metrics.
type Metrics struct {
	Registry *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// NewMetrics registers request metrics and collectors that read raft and
// state when scraped (no background polling).
func NewMetrics(s *Server) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "yunchi_grpc_requests_total", Help: "gRPC (and REST) requests handled, by method and status code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "yunchi_grpc_request_seconds", Help: "Time to handle a unary request.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"method"}),
	}
	reg.MustRegister(m.requests, m.latency, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(&stateCollector{s: s})
	if p, ok := s.placer.(interface{ PressureDecisions() uint64 }); ok {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "yunchi_scheduler_pressure_decisions_total",
			Help: "Placement decisions made under pressure: binpack spreading after a nearly full pool refused a VM for lack of room (controller flag --pressure-window)."},
			func() float64 { return float64(p.PressureDecisions()) }))
	}
	if r := s.AuditRecorder; r != nil {
		reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "yunchi_audit_dropped_total",
				Help: "Denied-request and failed-login audit records dropped because the queue was full (each loss is also recorded as a \"dropped\" record)."},
				func() float64 { return float64(r.Dropped()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "yunchi_audit_queued",
				Help: "Denied-request and failed-login audit records waiting to be recorded through raft."},
				func() float64 { return float64(r.Queued()) }))
	}
	return m
}

// UnaryInterceptor counts and times unary calls.
func (m *Metrics) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.requests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	m.latency.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	return resp, err
}

// StreamInterceptor counts streams when they end.
func (m *Metrics) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	m.requests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return err
}

var (
	descRaftState  = prometheus.NewDesc("yunchi_raft_is_leader", "1 when this controller is the raft leader.", nil, nil)
	descRaftTerm   = prometheus.NewDesc("yunchi_raft_term", "Current raft term.", nil, nil)
	descCommit     = prometheus.NewDesc("yunchi_raft_commit_index", "Raft commit index.", nil, nil)
	descApplied    = prometheus.NewDesc("yunchi_raft_applied_index", "Raft index applied to the state.", nil, nil)
	descHosts      = prometheus.NewDesc("yunchi_hosts", "Hosts by state.", []string{"state"}, nil)
	descVMs        = prometheus.NewDesc("yunchi_vms", "VMs by phase.", []string{"phase"}, nil)
	descCapacity   = prometheus.NewDesc("yunchi_capacity", "Pool capacity by resource (vcpus, memory_bytes, disk_bytes).", []string{"resource"}, nil)
	descAllocated  = prometheus.NewDesc("yunchi_allocated", "Allocated resources by resource.", []string{"resource"}, nil)
	descLogHealthy = prometheus.NewDesc("yunchi_raft_log_store_healthy",
		"1 when this controller's last raft log write succeeded, 0 while it cannot write its log (a full data disk): its state may then be stale.", nil, nil)
	descRPO = prometheus.NewDesc("yunchi_dr_rpo_seconds",
		"Age of the newest restore point of a protected VM in a target center (-1: none yet): the data its loss would cost.", []string{"project", "vm", "center", "policy"}, nil)
	descRPOObjective = prometheus.NewDesc("yunchi_dr_rpo_objective_seconds",
		"The RPO objective of a protected VM's target center.", []string{"project", "vm", "center", "policy"}, nil)
	descRPOViolations = prometheus.NewDesc("yunchi_dr_rpo_violations",
		"Protected VM targets whose newest point is older than the objective (or whose first backup failed).", nil, nil)
	descLogFailures = prometheus.NewDesc("yunchi_raft_log_store_write_failures_total",
		"Raft log store writes (and reopens) that failed since this controller started.", nil, nil)
	descLogRecoveries = prometheus.NewDesc("yunchi_raft_log_store_recoveries_total",
		"Times the raft log store could write again after failing.", nil, nil)
)

type stateCollector struct{ s *Server }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRaftState, descRaftTerm, descCommit, descApplied, descHosts, descVMs, descCapacity, descAllocated,
		descLogHealthy, descLogFailures, descLogRecoveries, descRPO, descRPOObjective, descRPOViolations} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	term, commit, applied := c.s.member.Indexes()
	leader := 0.0
	if c.s.prop.IsLeader() {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descRaftState, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(descRaftTerm, prometheus.GaugeValue, float64(term))
	ch <- prometheus.MustNewConstMetric(descCommit, prometheus.GaugeValue, float64(commit))
	ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(applied))
	lh := c.s.member.LogStoreHealth()
	healthy := 0.0
	if lh.Healthy() {
		healthy = 1
	}
	ch <- prometheus.MustNewConstMetric(descLogHealthy, prometheus.GaugeValue, healthy)
	ch <- prometheus.MustNewConstMetric(descLogFailures, prometheus.CounterValue, float64(lh.Failures))
	ch <- prometheus.MustNewConstMetric(descLogRecoveries, prometheus.CounterValue, float64(lh.Recoveries))
	hosts := map[string]float64{}
	capa, alloc := &yunchiv1.Resources{}, &yunchiv1.Resources{}
	for _, hv := range c.s.store.Hosts() {
		hosts[hv.Host.State.String()]++
		addTo(capa, recResToAPI(hv.Host.Capacity))
		addTo(alloc, resToAPI(hv.Facts.Allocated))
	}
	for k, v := range hosts {
		ch <- prometheus.MustNewConstMetric(descHosts, prometheus.GaugeValue, v, k)
	}
	vms := map[string]float64{}
	for _, v := range c.s.store.VMs("", "") {
		vms[v.Phase.String()]++
	}
	for k, v := range vms {
		ch <- prometheus.MustNewConstMetric(descVMs, prometheus.GaugeValue, v, k)
	}
	for _, r := range []struct {
		name string
		c, a int64
	}{{"vcpus", capa.Vcpus, alloc.Vcpus}, {"memory_bytes", capa.MemoryBytes, alloc.MemoryBytes}, {"disk_bytes", capa.DiskBytes, alloc.DiskBytes}} {
		ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(r.c), r.name)
		ch <- prometheus.MustNewConstMetric(descAllocated, prometheus.GaugeValue, float64(r.a), r.name)
	}
	if dv, ok := c.s.store.(DRView); ok {
		now, violations := time.Now(), 0.0
		for _, p := range dv.ProtectedVMs("") {
			for _, t := range p.Targets {
				st := targetStatus(t, now)
				if st.Violation {
					violations++
				}
				ch <- prometheus.MustNewConstMetric(descRPO, prometheus.GaugeValue, st.AchievedRpoSeconds, p.VM.Project, p.VM.Name, st.Center, p.Policy.Name)
				ch <- prometheus.MustNewConstMetric(descRPOObjective, prometheus.GaugeValue, float64(st.RpoObjectiveSeconds), p.VM.Project, p.VM.Name, st.Center, p.Policy.Name)
			}
		}
		ch <- prometheus.MustNewConstMetric(descRPOViolations, prometheus.GaugeValue, violations)
	}
}
