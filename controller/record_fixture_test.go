package controller

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/raftnode"
	"github.com/yunchi/yunchi/controller/raftstore"
	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/internal/apitest"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// TestRecordFixture records a raft log and snapshot of this version for
// controller/raftnode's replay test (TestReplayPreviousVersion): the next
// version checks that it rebuilds the same state from them. It is kept in
// the tree so that a later version can run it at its predecessor:
//
//	git worktree add /tmp/prev <previous commit>
//	cd /tmp/prev && YUNCHI_RECORD_FIXTURE=/tmp/prev/controller/raftnode/testdata/vN \
//	    go test ./controller -run '^TestRecordFixture$' -count=1 -v
//
// then copy testdata/vN (log.bin, snapshot.bin, expected.json) into the new
// version's controller/raftnode/testdata. It starts 3 controllers (raft in
// memory, the API on free loopback ports 17000-17999), registers 6
// simulated hosts through the AgentService and drives the public gRPC API
// through every command kind: see the steps below. log.bin holds the
// command entries of the leader's raft log (per entry: uvarint index,
// uvarint term, uvarint length, data), snapshot.bin the FSM snapshot after
// them (as raftnode's FSM persists it), expected.json what the API answered
// at the end, the request ids Apply remembers with their outcome, and the
// log entries Apply rejected.
func TestRecordFixture(t *testing.T) {
	out := os.Getenv("YUNCHI_RECORD_FIXTURE")
	if out == "" {
		t.Skip("records controller/raftnode/testdata/vN: YUNCHI_RECORD_FIXTURE=<out dir> go test ./controller -run '^TestRecordFixture$' -count=1 -v (a relative dir is relative to controller/)")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	r := newRecorder(t)
	r.run()
	r.write(out)
}

// fixture is expected.json; controller/raftnode/replay_test.go reads it
// (keep the two in step).
type fixture struct {
	Version int `json:"commandVersion"`
	// By VM name (names are unique across the fixture's projects).
	VMs   map[string]fixtureVM   `json:"vms"`
	Hosts map[string]fixtureHost `json:"hosts"`
	// Group name -> member VM names (sorted), as version 2 had it.
	Groups map[string][]string `json:"groups"`
	// Group name -> "project policy level soft max_per_host".
	GroupRules map[string]string `json:"groupRules"`
	Ratios     []fixtureRatio    `json:"ratios"`
	// Controller member records: id -> center.
	Members map[string]string `json:"members"`
	// Request id -> the outcome Apply remembers for it.
	Requests map[string]fixtureRequest `json:"requests"`
	// Log index -> state.Kind of the command entries Apply rejected.
	Rejected map[string]int `json:"rejected"`
}

type fixtureVM struct {
	Project, Host, Desired, Phase string
	Vcpus                         int32
	MemoryBytes, DiskBytes        int64
	Group, Center                 string
	Constraints                   []string
	// From the store: the API does not show it.
	Strategy  string
	RebootSeq uint64
}

type fixtureHost struct {
	State, Center, Rack, Owner                  string
	AdminLabels                                 map[string]string
	ReservedVcpus, AllocatableVcpus             int64
	ReservedMemoryBytes, AllocatableMemoryBytes int64
	ReservedDiskBytes, AllocatableDiskBytes     int64
	AllocatedVcpus, AllocatedMemoryBytes        int64
	HostRatios                                  fixtureRatio
}

type fixtureRatio struct {
	Scope, Name  string  `json:",omitempty"`
	CPU          float64 `json:"cpu"`
	Memory, Disk float64
}

type fixtureRequest struct {
	Index     uint64
	Hash      string   // hex
	ErrorKind int      `json:",omitempty"`
	Error     string   `json:",omitempty"`
	VMs       []string `json:",omitempty"` // names, in command order
	VMList    bool     `json:",omitempty"`
	Host      string   `json:",omitempty"`
	Ratio     string   `json:",omitempty"` // scope/name
	Group     string   `json:",omitempty"`
}

type recorder struct {
	t       *testing.T
	members []*member
	leader  *member
	via     string // a follower: writes through it are forwarded
	ctx     context.Context
	// keyed calls made, by idempotency key, to send again at the end
	keyed map[string]func(context.Context) error
	keys  []string

	hbMu     sync.Mutex
	silent   map[string]bool
	hbStop   chan struct{}
	hbDone   chan struct{}
	hostTTL  time.Duration
	hostsIDs []string
}

func newRecorder(t *testing.T) *recorder {
	return &recorder{t: t, ctx: context.Background(), keyed: map[string]func(context.Context) error{},
		silent: map[string]bool{}, hostTTL: 3 * time.Second}
}

// start starts m with its API on a free port in 17000-17999 and raft in
// memory.
func (r *recorder) start(m *member, bootstrap bool, join []string) {
	t := r.t
	_, m.trans = raft.NewInmemTransport(raft.ServerAddress("inmem-" + m.id + ":7000"))
	for _, o := range r.members {
		if o != m && o.trans != nil {
			m.trans.Connect(o.trans.LocalAddr(), o.trans)
			o.trans.Connect(m.trans.LocalAddr(), m.trans)
		}
	}
	base := 17000 + rand.IntN(1000)
	var ctl *Controller
	var err error
	for i := 0; i < 1000; i++ {
		port := 17000 + (base-17000+i)%1000
		ctl, err = New(Config{Insecure: true,
			ID: m.id, Center: m.center, Listen: fmt.Sprintf("127.0.0.1:%d", port), DataDir: m.dir,
			Bootstrap: bootstrap, Join: join, RaftTransport: m.trans, FastRaft: true, HostTTL: r.hostTTL, NoAuth: true,
		})
		if err == nil || !strings.Contains(err.Error(), "listen on") {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.ctl, m.cancel, m.done = ctl, cancel, make(chan struct{})
	go func() { defer close(m.done); ctl.Run(ctx) }()
}

func (r *recorder) stop(m *member) {
	if m.ctl != nil && m.cancel != nil {
		m.cancel()
		<-m.done
		m.cancel = nil
	}
}

// form starts a1 (bootstrap), then a2 and b1 joining it: UpsertMember of
// the leader itself and of each joiner.
func (r *recorder) form() {
	t := r.t
	for _, id := range []string{"a1", "a2", "b1"} {
		r.members = append(r.members, &member{id: id, center: id, dir: filepath.Join(t.TempDir(), id)})
	}
	t.Cleanup(func() {
		for _, m := range r.members {
			r.stop(m)
		}
	})
	for i, m := range r.members {
		if i == 0 {
			r.start(m, true, nil)
			apitest.Eventually(t, 30*time.Second, "a1 leads", func() bool { return m.ctl.Node().IsLeader() })
		} else {
			r.start(m, false, []string{r.members[0].ctl.Addr()})
		}
	}
	apitest.Eventually(t, 30*time.Second, "3 voters with a leader, seen by every node", func() bool {
		for _, n := range r.members {
			st, err := apitest.Status(n.ctl.Addr())
			if err != nil || !apitest.Formed(st, 3) {
				return false
			}
		}
		return true
	})
	for _, m := range r.members {
		if m.ctl.Node().IsLeader() {
			r.leader = m
		}
	}
	if r.leader == nil {
		t.Fatal("no leader")
	}
	for _, m := range r.members {
		if m != r.leader {
			r.via = m.ctl.Addr()
			break
		}
	}
}

func (r *recorder) callCtx(key string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
	if key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", key)
	}
	return ctx, cancel
}

// do makes one call (with an idempotency key unless key is ""); want is the
// gRPC code expected. A keyed call is remembered to be sent again later.
func (r *recorder) do(what, key string, want codes.Code, call func(context.Context) error) {
	r.t.Helper()
	ctx, cancel := r.callCtx(key)
	err := call(ctx)
	cancel()
	if status.Code(err) != want {
		r.t.Fatalf("%s: %v, want %v", what, err, want)
	}
	r.t.Logf("%s (key %q): %v", what, key, status.Code(err))
	if key != "" {
		r.keyed[key] = call
		r.keys = append(r.keys, key)
	}
}

type hostSpec struct {
	id, center, rack, cpuModel string
	labels                     map[string]string
}

var fixtureHosts = []hostSpec{
	{"a1-h01", "a1", "r1", "kunpeng920", map[string]string{"disk": "ssd"}},
	{"a1-h02", "a1", "r2", "kunpeng920", nil},
	{"a1-h03", "a1", "r3", "xeon-6248", nil},
	{"a2-h01", "a2", "r1", "kunpeng920", map[string]string{"disk": "hdd"}},
	{"a2-h02", "a2", "r2", "xeon-6248", nil},
	{"b1-h01", "b1", "r1", "xeon-6248", nil},
}

// heartbeats keeps every host that is not silent heartbeating (through the
// leader) until hbStop.
func (r *recorder) heartbeats() {
	ac := yunchiv1.NewAgentServiceClient(dial(r.t, r.leader.ctl.Addr()))
	r.hbStop, r.hbDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(r.hbDone)
		for {
			for _, id := range r.hostsIDs {
				r.hbMu.Lock()
				s := r.silent[id]
				r.hbMu.Unlock()
				if s {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				ac.Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: id})
				cancel()
			}
			select {
			case <-r.hbStop:
				return
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()
}

func (r *recorder) setSilent(id string, s bool) {
	r.hbMu.Lock()
	r.silent[id] = s
	r.hbMu.Unlock()
}

func (r *recorder) hostState(id string) yunchiv1.HostState {
	ctx, cancel := r.callCtx("")
	defer cancel()
	h, err := yunchiv1.NewHostServiceClient(dial(r.t, r.leader.ctl.Addr())).GetHost(ctx, &yunchiv1.GetHostRequest{Id: id, Consistent: true})
	if err != nil {
		r.t.Fatal(err)
	}
	return h.State
}

// report sends what an agent would about some VMs of one host.
func (r *recorder) report(host string, sts ...*yunchiv1.VMStatus) {
	r.t.Helper()
	ac := yunchiv1.NewAgentServiceClient(dial(r.t, r.via))
	r.do("report on "+host, "", codes.OK, func(ctx context.Context) error {
		_, err := ac.ReportVMStatus(ctx, &yunchiv1.ReportVMStatusRequest{HostId: host, Statuses: sts})
		return err
	})
}

func (r *recorder) vm(name, project string) *statev1.VMRecord {
	r.t.Helper()
	st := r.leader.ctl.Node().Store
	apitest.Eventually(r.t, 10*time.Second, "vm "+name+" on the leader", func() bool {
		_, ok := st.VM(project, name)
		return ok
	})
	v, _ := st.VM(project, name)
	return v
}

func (r *recorder) run() {
	t := r.t
	r.form()
	t.Logf("leader %s, calls through %s", r.leader.id, r.via)
	vms := yunchiv1.NewVMServiceClient(dial(t, r.via))
	hosts := yunchiv1.NewHostServiceClient(dial(t, r.via))
	ratios := yunchiv1.NewRatioServiceClient(dial(t, r.via))
	groups := yunchiv1.NewGroupServiceClient(dial(t, r.via))
	agent := yunchiv1.NewAgentServiceClient(dial(t, r.via))
	f64 := func(v float64) *float64 { return &v }
	i64 := func(v int64) *int64 { return &v }
	str := func(v string) *string { return &v }

	// RegisterHost: 6 hosts, 3 centers, racks r1-r3, two CPU models.
	for _, h := range fixtureHosts {
		r.hostsIDs = append(r.hostsIDs, h.id)
		r.do("register "+h.id, "", codes.OK, func(ctx context.Context) error {
			_, err := agent.RegisterHost(ctx, &yunchiv1.RegisterHostRequest{Facts: &yunchiv1.HostFacts{
				Id: h.id, Hostname: h.id + ".sim", Center: h.center, Site: "s1", Rack: h.rack, Labels: h.labels,
				CpuModel: h.cpuModel, AgentVersion: "fixture",
				Capacity: &yunchiv1.Resources{Vcpus: 16, MemoryBytes: 64 * gib, DiskBytes: 1000 * gib},
			}})
			return err
		})
	}
	// RecordHeartbeats from now on; SetHostState: b1-h01 falls silent
	// until marked down, then heartbeats again (ready).
	r.heartbeats()
	t.Cleanup(func() {
		if r.hbStop != nil {
			close(r.hbStop)
			<-r.hbDone
		}
	})
	r.setSilent("b1-h01", true)
	apitest.Eventually(t, 20*time.Second, "b1-h01 marked down", func() bool {
		return r.hostState("b1-h01") == yunchiv1.HostState_HOST_STATE_DOWN
	})
	r.setSilent("b1-h01", false)
	apitest.Eventually(t, 20*time.Second, "b1-h01 ready again", func() bool {
		return r.hostState("b1-h01") == yunchiv1.HostState_HOST_STATE_READY
	})

	// CreatePlacementGroup: anti-affinity per host, affinity per rack, and
	// one to delete.
	group := func(name, key string, policy yunchiv1.GroupPolicy, level yunchiv1.GroupLevel, maxPerHost int32) {
		r.do("create group "+name, key, codes.OK, func(ctx context.Context) error {
			_, err := groups.CreateGroup(ctx, &yunchiv1.CreateGroupRequest{Name: name, Policy: policy, Level: level, MaxPerHost: maxPerHost})
			return err
		})
	}
	group("web-aa", "k-group-web-aa", yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY, yunchiv1.GroupLevel_GROUP_LEVEL_HOST, 0)
	group("db-aff", "", yunchiv1.GroupPolicy_GROUP_POLICY_AFFINITY, yunchiv1.GroupLevel_GROUP_LEVEL_RACK, 2)
	group("tmp", "k-group-tmp", yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY, yunchiv1.GroupLevel_GROUP_LEVEL_CENTER, 0)

	create := func(what, key string, want codes.Code, req *yunchiv1.CreateVMRequest) {
		r.do(what, key, want, func(ctx context.Context) error {
			var err error
			if req.Count > 1 {
				_, err = vms.CreateVMs(ctx, req)
			} else {
				_, err = vms.CreateVM(ctx, req)
			}
			return err
		})
	}
	// PlaceVM (single creates) and PlaceVMs (batches), with constraints,
	// groups and strategies.
	create("create web-1", "k-create-web-1", codes.OK, &yunchiv1.CreateVMRequest{Name: "web-1", Vcpus: 2, Memory: "4GiB", Disk: "20GiB",
		Group: "web-aa", Constraints: []string{"cpu_model=kunpeng920"}})
	create("create app-1..3", "k-batch-app", codes.OK, &yunchiv1.CreateVMRequest{Name: "app", Count: 3, Vcpus: 1, Memory: "2GiB", Disk: "10GiB",
		Group: "web-aa", Strategy: "spread"})
	create("create db-1", "k-create-db-1", codes.OK, &yunchiv1.CreateVMRequest{Name: "db-1", Vcpus: 4, Memory: "8GiB", Disk: "100GiB",
		Group: "db-aff", Constraints: []string{"rack!=r3", "center in a1,a2"}})
	create("create db-2", "", codes.OK, &yunchiv1.CreateVMRequest{Name: "db-2", Vcpus: 4, Memory: "8GiB", Disk: "100GiB", Group: "db-aff"})
	create("create cache-1..2", "", codes.OK, &yunchiv1.CreateVMRequest{Name: "cache", Count: 2, Vcpus: 1, Memory: "1GiB", Disk: "5GiB",
		Constraints: []string{"center in a2,b1", "disk!=ssd"}, Strategy: "spread", Stopped: true})
	create("create batch-1", "", codes.OK, &yunchiv1.CreateVMRequest{Name: "batch-1", Vcpus: 2, Memory: "2GiB", Disk: "10GiB",
		Center: "a1", Strategy: "binpack"})
	// Rejected before the log (not remembered): a name taken, and no fit.
	create("create web-1 again (another key)", "k-create-web-1-dup", codes.AlreadyExists, &yunchiv1.CreateVMRequest{Name: "web-1", Vcpus: 2, Memory: "4GiB", Disk: "20GiB"})
	create("create huge (no fit)", "k-create-huge", codes.ResourceExhausted, &yunchiv1.CreateVMRequest{Name: "huge", Vcpus: 200, Memory: "4GiB"})

	// ReportVMStatus: the agents start what should run.
	for _, name := range []string{"web-1", "app-1", "app-2", "app-3", "db-1", "db-2", "batch-1"} {
		v := r.vm(name, state.DefaultProject)
		r.report(v.HostId, &yunchiv1.VMStatus{VmId: v.Id, Phase: yunchiv1.VMPhase_VM_PHASE_RUNNING, Message: "started"})
	}
	for _, name := range []string{"cache-1", "cache-2"} {
		v := r.vm(name, state.DefaultProject)
		r.report(v.HostId, &yunchiv1.VMStatus{VmId: v.Id, Phase: yunchiv1.VMPhase_VM_PHASE_STOPPED, Message: "defined"})
	}

	// SetVMDesired: stop, start, reboot, delete.
	action := func(what, key string, want codes.Code, name string, fn func(context.Context, *yunchiv1.VMActionRequest) error) {
		r.do(what+" "+name, key, want, func(ctx context.Context) error { return fn(ctx, &yunchiv1.VMActionRequest{Name: name}) })
	}
	stop := func(ctx context.Context, req *yunchiv1.VMActionRequest) error {
		_, err := vms.StopVM(ctx, req)
		return err
	}
	start := func(ctx context.Context, req *yunchiv1.VMActionRequest) error {
		_, err := vms.StartVM(ctx, req)
		return err
	}
	reboot := func(ctx context.Context, req *yunchiv1.VMActionRequest) error {
		_, err := vms.RebootVM(ctx, req)
		return err
	}
	del := func(ctx context.Context, req *yunchiv1.VMActionRequest) error {
		_, err := vms.DeleteVM(ctx, req)
		return err
	}
	action("stop", "k-stop-web-1", codes.OK, "web-1", stop)
	action("start", "", codes.OK, "cache-1", start)
	action("reboot", "k-reboot-app-1", codes.OK, "app-1", reboot)
	action("delete", "k-delete-app-2", codes.OK, "app-2", del)
	action("delete", "", codes.OK, "cache-2", del)
	// Rejected by Apply with a key (remembered): reboot a stopped VM.
	action("reboot (stopped)", "k-reboot-web-1", codes.FailedPrecondition, "web-1", reboot)
	for _, rep := range []struct {
		name  string
		phase yunchiv1.VMPhase
		seq   uint64
		gone  bool
	}{
		{"web-1", yunchiv1.VMPhase_VM_PHASE_STOPPED, 0, false},
		{"cache-1", yunchiv1.VMPhase_VM_PHASE_RUNNING, 0, false},
		{"app-1", yunchiv1.VMPhase_VM_PHASE_RUNNING, 1, false},
		{"app-2", yunchiv1.VMPhase_VM_PHASE_UNSPECIFIED, 0, true}, // deleted: gone
	} {
		v := r.vm(rep.name, state.DefaultProject)
		r.report(v.HostId, &yunchiv1.VMStatus{VmId: v.Id, Phase: rep.phase, ObservedRebootSeq: rep.seq, Gone: rep.gone})
	}
	apitest.Eventually(t, 10*time.Second, "app-2 gone", func() bool {
		_, ok := r.leader.ctl.Node().Store.VM(state.DefaultProject, "app-2")
		return !ok
	})

	// UpdateHost: labels (set, remove), reservation, maintenance,
	// draining, owner, host ratios.
	update := func(what, key string, want codes.Code, req *yunchiv1.UpdateHostRequest) {
		r.do(what, key, want, func(ctx context.Context) error { _, err := hosts.UpdateHost(ctx, req); return err })
	}
	update("label a1-h01", "k-label-a1-h01", codes.OK, &yunchiv1.UpdateHostRequest{Id: "a1-h01", SetLabels: map[string]string{"tier": "gold", "scratch": "x"}})
	update("unlabel a1-h01", "", codes.OK, &yunchiv1.UpdateHostRequest{Id: "a1-h01", RemoveLabels: []string{"scratch"}})
	update("host group a2-h01", "", codes.OK, &yunchiv1.UpdateHostRequest{Id: "a2-h01", SetLabels: map[string]string{"host_group": "gpu", "cpu_model": "kunpeng920-v2"}})
	update("reserve a1-h02", "k-reserve-a1-h02", codes.OK, &yunchiv1.UpdateHostRequest{Id: "a1-h02", ReserveVcpus: i64(2), ReserveMemory: str("4GiB"), ReserveDisk: str("50GiB")})
	update("maintenance a1-h03", "", codes.OK, &yunchiv1.UpdateHostRequest{Id: "a1-h03", State: yunchiv1.HostState_HOST_STATE_MAINTENANCE})
	update("draining a2-h02", "", codes.OK, &yunchiv1.UpdateHostRequest{Id: "a2-h02", State: yunchiv1.HostState_HOST_STATE_DRAINING})
	update("ready a2-h02", "", codes.OK, &yunchiv1.UpdateHostRequest{Id: "a2-h02", State: yunchiv1.HostState_HOST_STATE_READY})
	update("ratios a2-h02", "k-ratio-a2-h02", codes.OK, &yunchiv1.UpdateHostRequest{Id: "a2-h02", CpuRatio: f64(8), MemoryRatio: f64(1.5)})
	update("owner b1-h01", "k-owner-b1-h01", codes.OK, &yunchiv1.UpdateHostRequest{Id: "b1-h01", Owner: str("team-a")})

	// SetRatios: a center, a host group, and a setting made then removed.
	set := func(what, key string, req *yunchiv1.SetRatiosRequest) {
		r.do(what, key, codes.OK, func(ctx context.Context) error { _, err := ratios.SetRatios(ctx, req); return err })
	}
	set("ratio center b1", "k-ratio-b1", &yunchiv1.SetRatiosRequest{Scope: "center", Name: "b1", Memory: f64(1.5)})
	set("ratio host_group gpu", "", &yunchiv1.SetRatiosRequest{Scope: "host_group", Name: "gpu", Cpu: f64(6), Disk: f64(2)})
	set("ratio center a2", "", &yunchiv1.SetRatiosRequest{Scope: "center", Name: "a2", Cpu: f64(2)})
	set("ratio center a2 removed", "k-ratio-a2-clear", &yunchiv1.SetRatiosRequest{Scope: "center", Name: "a2", Cpu: f64(0)})

	// A VM of the owner's project on its dedicated host (center b1).
	create("create team-vm-1", "k-create-team", codes.OK, &yunchiv1.CreateVMRequest{Name: "team-vm-1", Project: "team-a", Vcpus: 2, Memory: "2GiB", Disk: "10GiB", Center: "b1"})
	// A batch with constraints on labels an admin set.
	create("create gold-1..2", "k-batch-gold", codes.OK, &yunchiv1.CreateVMRequest{Name: "gold", Count: 2, Vcpus: 1, Memory: "1GiB", Disk: "5GiB",
		Constraints: []string{"tier notin silver", "cpu_model in kunpeng920,kunpeng920-v2"}})

	// DeletePlacementGroup: one empty (applied), one with members
	// (rejected by Apply, remembered).
	r.do("delete group tmp", "k-delete-group-tmp", codes.OK, func(ctx context.Context) error {
		_, err := groups.DeleteGroup(ctx, &yunchiv1.DeleteGroupRequest{Name: "tmp"})
		return err
	})
	r.do("delete group web-aa (members)", "k-delete-group-web-aa", codes.FailedPrecondition, func(ctx context.Context) error {
		_, err := groups.DeleteGroup(ctx, &yunchiv1.DeleteGroupRequest{Name: "web-aa"})
		return err
	})

	// Every keyed call again, same key, same request: the first outcome,
	// and nothing new in the log.
	st := r.leader.ctl.Node().Store
	before := st.Index()
	for _, key := range r.keys {
		call := r.keyed[key]
		ctx, cancel := r.callCtx(key)
		err := call(ctx)
		cancel()
		rec, remembered := st.Request(key)
		switch {
		case remembered && rec.ErrorKind != 0 && status.Code(err) == codes.OK:
			t.Fatalf("key %s again: ok, first outcome was %q", key, rec.Error)
		case remembered && rec.ErrorKind == 0 && err != nil:
			t.Fatalf("key %s again: %v, first outcome was a success", key, err)
		}
	}
	if st.Index() != before {
		// Not fatal: a RecordHeartbeats may have come meanwhile.
		t.Logf("index %d -> %d while keys were sent again", before, st.Index())
	}

	// RemoveMember: the follower not used for calls leaves, with a key.
	var gone *member
	for _, m := range r.members {
		if m != r.leader && m.ctl.Addr() != r.via {
			gone = m
		}
	}
	cluster := yunchiv1.NewClusterServiceClient(dial(t, r.via))
	r.do("remove member "+gone.id, "k-remove-"+gone.id, codes.OK, func(ctx context.Context) error {
		_, err := cluster.RemoveMember(ctx, &yunchiv1.RemoveMemberRequest{Id: gone.id})
		return err
	})
	r.stop(gone)

	// Let a few more RecordHeartbeats through, then settle.
	time.Sleep(2 * r.hostTTL / 3)
	var addrs []string
	for _, m := range r.members {
		if m != gone {
			addrs = append(addrs, m.ctl.Addr())
		}
	}
	apitest.Eventually(t, 30*time.Second, "controllers to apply everything committed", func() bool { return apitest.Converged(addrs) })
}

// write stops the controllers and writes the fixture.
func (r *recorder) write(out string) {
	t := r.t
	if !r.leader.ctl.Node().IsLeader() {
		t.Fatalf("%s is no longer the leader: record again", r.leader.id)
	}
	exp := r.expected()
	live := r.leader.ctl.Node().Store
	// Heartbeats went on until now: no host is marked down before the
	// controllers stop (RecordHeartbeats after the answers above change
	// nothing they show).
	close(r.hbStop)
	<-r.hbDone
	r.hbStop = nil
	for _, m := range r.members {
		r.stop(m)
	}

	// The leader's log, command entries only.
	logs, err := raftstore.Open(filepath.Join(r.leader.dir, "raft"))
	if err != nil {
		t.Fatal(err)
	}
	first, err1 := logs.FirstIndex()
	last, err2 := logs.LastIndex()
	if err1 != nil || err2 != nil || first != 1 {
		t.Fatalf("log %d..%d: %v %v (a log that starts after 1 was compacted: record again)", first, last, err1, err2)
	}
	var bin bytes.Buffer
	var entries []*raft.Log
	for i := first; i <= last; i++ {
		var l raft.Log
		if err := logs.GetLog(i, &l); err != nil {
			t.Fatal(err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		entries = append(entries, &l)
		bin.Write(binary.AppendUvarint(nil, l.Index))
		bin.Write(binary.AppendUvarint(nil, l.Term))
		bin.Write(binary.AppendUvarint(nil, uint64(len(l.Data))))
		bin.Write(l.Data)
	}
	logs.Close()

	// The snapshot, as the FSM persists it.
	fsnap, err := (&raftnode.FSM{Store: live}).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := fsnap.Persist(sink); err != nil {
		t.Fatal(err)
	}

	// Check the fixture: the log replays to the same state as the live
	// store, and the snapshot restores to it.
	replayed := &raftnode.FSM{Store: state.New()}
	exp.Rejected = map[string]int{}
	kinds := map[string]int{}
	for _, l := range entries {
		var cmd statev1.Command
		if err := proto.Unmarshal(l.Data, &cmd); err != nil {
			t.Fatal(err)
		}
		name := string(cmd.ProtoReflect().WhichOneof(cmd.ProtoReflect().Descriptor().Oneofs().ByName("cmd")).Name())
		kinds[name]++
		if cmd.Version != state.CommandVersion {
			t.Fatalf("entry %d has command version %d", l.Index, cmd.Version)
		}
		res := replayed.Apply(l).(*raftnode.Result)
		if res.Err != nil {
			exp.Rejected[fmt.Sprint(l.Index)] = int(state.KindOf(res.Err))
			t.Logf("entry %d (%s, request %q) rejected: %v", l.Index, name, cmd.RequestId, res.Err)
		}
	}
	want := live.Snapshot()
	if got := replayed.Store.Snapshot(); !proto.Equal(got, want) {
		t.Fatalf("the log replays to another state than the leader's")
	}
	restored := &raftnode.FSM{Store: state.New()}
	if err := restored.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(restored.Store.Snapshot(), want) {
		t.Fatal("the snapshot restores to another state than the leader's")
	}
	var names []string
	for k := range kinds {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		t.Logf("log.bin: %3d %s", kinds[k], k)
	}
	t.Logf("log.bin: %d command entries, %d rejected; %d request ids remembered", len(entries), len(exp.Rejected), len(exp.Requests))

	eb, err := json.MarshalIndent(exp, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"log.bin": bin.Bytes(), "snapshot.bin": sink.Bytes(), "expected.json": append(eb, '\n')} {
		if err := os.WriteFile(filepath.Join(out, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote %s", out)
}

// expected is what the API answers now (through the leader), with what it
// does not show (strategy, reboot count, members, request ids) from the
// leader's store.
func (r *recorder) expected() *fixture {
	t := r.t
	addr := r.leader.ctl.Addr()
	ctx, cancel := r.callCtx("")
	defer cancel()
	st := r.leader.ctl.Node().Store
	exp := &fixture{Version: state.CommandVersion, VMs: map[string]fixtureVM{}, Hosts: map[string]fixtureHost{},
		Groups: map[string][]string{}, GroupRules: map[string]string{}, Members: map[string]string{}, Requests: map[string]fixtureRequest{}}

	vl, err := yunchiv1.NewVMServiceClient(dial(t, addr)).ListVMs(ctx, &yunchiv1.ListVMsRequest{Consistent: true})
	if err != nil || vl.NextPageToken != "" {
		t.Fatalf("list vms: %v (more pages: %q)", err, vl.GetNextPageToken())
	}
	for _, v := range vl.Vms {
		rec, _ := st.VM(v.Project, v.Name)
		if _, dup := exp.VMs[v.Name]; dup {
			t.Fatalf("vm name %s in two projects", v.Name)
		}
		exp.VMs[v.Name] = fixtureVM{
			Project: v.Project, Host: v.HostId, Desired: v.Desired.String(), Phase: v.Phase.String(),
			Vcpus: v.Vcpus, MemoryBytes: v.MemoryBytes, DiskBytes: v.DiskBytes, Group: v.Group, Center: v.Center,
			Constraints: v.Constraints, Strategy: rec.GetStrategy(), RebootSeq: v.RebootSeq,
		}
	}
	hl, err := yunchiv1.NewHostServiceClient(dial(t, addr)).ListHosts(ctx, &yunchiv1.ListHostsRequest{Consistent: true})
	if err != nil || hl.NextPageToken != "" {
		t.Fatalf("list hosts: %v", err)
	}
	for _, h := range hl.Hosts {
		labels := h.AdminLabels
		if labels == nil {
			labels = map[string]string{}
		}
		exp.Hosts[h.Id] = fixtureHost{
			State: h.State.String(), Center: h.Center, Rack: h.Rack, Owner: h.Owner, AdminLabels: labels,
			ReservedVcpus: h.Reserved.GetVcpus(), ReservedMemoryBytes: h.Reserved.GetMemoryBytes(), ReservedDiskBytes: h.Reserved.GetDiskBytes(),
			AllocatableVcpus: h.Allocatable.GetVcpus(), AllocatableMemoryBytes: h.Allocatable.GetMemoryBytes(), AllocatableDiskBytes: h.Allocatable.GetDiskBytes(),
			AllocatedVcpus: h.Allocated.GetVcpus(), AllocatedMemoryBytes: h.Allocated.GetMemoryBytes(),
			HostRatios: fixtureRatio{CPU: h.HostRatios.GetCpu(), Memory: h.HostRatios.GetMemory(), Disk: h.HostRatios.GetDisk()},
		}
	}
	gl, err := yunchiv1.NewGroupServiceClient(dial(t, addr)).ListGroups(ctx, &yunchiv1.ListGroupsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gl.Groups {
		members := slices.Clone(g.Members)
		if members == nil {
			members = []string{}
		}
		slices.Sort(members)
		exp.Groups[g.Name] = members
		exp.GroupRules[g.Name] = groupRule(g.Project, g.Policy.String(), g.Level.String(), g.Soft, g.MaxPerHost)
	}
	rl, err := yunchiv1.NewRatioServiceClient(dial(t, addr)).ListRatios(ctx, &yunchiv1.ListRatiosRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rl.Settings {
		exp.Ratios = append(exp.Ratios, fixtureRatio{Scope: s.Scope, Name: s.Name, CPU: s.Ratios.GetCpu(), Memory: s.Ratios.GetMemory(), Disk: s.Ratios.GetDisk()})
	}
	for _, m := range st.Members() {
		exp.Members[m.Id] = m.Center
	}
	for _, key := range r.keys {
		rec, ok := st.Request(key)
		if !ok {
			continue // refused before the log
		}
		fr := fixtureRequest{Index: rec.Index, Hash: hex.EncodeToString(rec.Hash), ErrorKind: int(rec.ErrorKind), Error: rec.Error, VMList: rec.VmList}
		for _, v := range rec.Vms {
			fr.VMs = append(fr.VMs, v.Name)
		}
		switch {
		case rec.Host != nil:
			fr.Host = rec.Host.Id
		case rec.Ratio != nil:
			fr.Ratio = rec.Ratio.Scope + "/" + rec.Ratio.Name
		case rec.Group != nil:
			fr.Group = rec.Group.Name
		}
		exp.Requests[key] = fr
	}
	return exp
}

// groupRule is how expected.json writes a group's settings.
func groupRule(project, policy, level string, soft bool, maxPerHost int32) string {
	return fmt.Sprintf("%s %s %s soft=%v max=%d", project, policy, level, soft, maxPerHost)
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct{ bytes.Buffer }

func (s *memSink) ID() string    { return "fixture" }
func (s *memSink) Cancel() error { return nil }
func (s *memSink) Close() error  { return nil }
