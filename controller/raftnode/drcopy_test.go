package raftnode_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/audit"
	"github.com/yunchi/yunchi/controller/raftnode"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// drNode is one controller of an in-memory three-site cluster.
type drNode struct {
	id, center, dir string
	trans           *raft.InmemTransport
	node            *raftnode.Node
	trail           *audit.File
}

// fast: short raft timeouts, yet long enough for a busy machine under -race
// (a two-voter cluster steps down when its joiner is slow for a lease).
var fast = raftnode.Config{HeartbeatTimeout: 200 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond, LeaderLeaseTimeout: 200 * time.Millisecond}

// openNode opens a raft node on dir over trans, with its own audit trail.
func openNode(t *testing.T, id, dir string, trans raft.Transport, bootstrap bool) (*raftnode.Node, *audit.File) {
	t.Helper()
	trail, err := audit.OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := state.New()
	store.SetAuditSink(trail)
	cfg := fast
	cfg.ID, cfg.DataDir, cfg.Bootstrap, cfg.Transport, cfg.Audit = id, dir, bootstrap, trans, trail
	n, err := raftnode.Open(cfg, store)
	if err != nil {
		trail.Close()
		t.Fatal(err)
	}
	return n, trail
}

func (d *drNode) stop() {
	if d.node != nil {
		d.node.Shutdown()
		d.trail.Close()
		d.node = nil
	}
}

// threeSites starts a1 (bootstrap), a2 and b1, declares their centers (b1
// remote DR) and returns them with the leader a1.
func threeSites(t *testing.T) []*drNode {
	t.Helper()
	root := t.TempDir()
	var nodes []*drNode
	for _, id := range []string{"a1", "a2", "b1"} {
		_, trans := raft.NewInmemTransport(raft.ServerAddress(id + ":8480"))
		nodes = append(nodes, &drNode{id: id, center: id, dir: filepath.Join(root, id), trans: trans})
	}
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				a.trans.Connect(b.trans.LocalAddr(), b.trans)
			}
		}
	}
	for i, d := range nodes {
		d.node, d.trail = openNode(t, d.id, d.dir, d.trans, i == 0)
		t.Cleanup(d.stop)
	}
	waitLeader(t, nodes[0].node)
	for _, d := range nodes[1:] {
		if err := nodes[0].node.AddVoter(d.id, string(d.trans.LocalAddr()), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range nodes {
		apply(t, nodes[0].node, &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{
			Member: &statev1.MemberRecord{Id: d.id, Center: d.center, RaftAddress: string(d.trans.LocalAddr()), ApiAddress: "127.0.0.1:1"},
		}}})
	}
	for _, c := range []struct {
		name, site string
		role       statev1.CenterRole
	}{{"a1", "a", statev1.CenterRole_CENTER_ROLE_PRODUCTION}, {"a2", "a", statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR}, {"b1", "b", statev1.CenterRole_CENTER_ROLE_REMOTE_DR}} {
		apply(t, nodes[0].node, &statev1.Command{Cmd: &statev1.Command_SetCenter{SetCenter: &statev1.SetCenter{
			Center: &statev1.CenterRecord{Name: c.name, Site: c.site, Role: c.role},
		}}})
	}
	return nodes
}

func waitLeader(t *testing.T, n *raftnode.Node) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !n.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatalf("%s is not the leader after 10s", n.ID())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := n.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func apply(t *testing.T, n *raftnode.Node, cmd *statev1.Command) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.Apply(state.WithAudit(ctx, &statev1.AuditContext{Actor: "test", Action: "Test"}), cmd); err != nil {
		t.Fatalf("apply %T: %v", cmd.Cmd, err)
	}
}

func registerHost(t *testing.T, n *raftnode.Node, id string) {
	t.Helper()
	apply(t, n, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
		Id: id, Hostname: id, Center: "a1", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 1 << 34, DiskBytes: 1 << 40},
	}}}})
}

// waitApplied waits until n has applied index.
func waitApplied(t *testing.T, n *raftnode.Node, index uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.Raft.AppliedIndex() < index {
		if time.Now().After(deadline) {
			t.Fatalf("%s applied %d, not %d, after 10s", n.ID(), n.Raft.AppliedIndex(), index)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recoverInto runs a recovery into a new data dir (as `yunchid controller
// recover` does) and opens the recovered node on it.
func recoverInto(t *testing.T, rec *raftnode.Recovery, id, addr string) (*raftnode.Node, *audit.File, *raft.InmemTransport, uint64, uint64) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "recovered")
	trail, err := audit.OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := state.New()
	store.SetAuditSink(trail)
	index, term, err := rec.Into(dir, id, addr, &raftnode.FSM{Store: store, Audit: trail})
	trail.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, trans := raft.NewInmemTransport(raft.ServerAddress(addr))
	n, tr := openNode(t, id, dir, trans, false)
	t.Cleanup(func() { n.Shutdown(); tr.Close() })
	waitLeader(t, n)
	return n, tr, trans, index, term
}

// Site A is lost (a1 and a2 stop hard after b1 took a copy and more was
// written): b1 is rebuilt as a one-voter cluster from its copy, and from
// its own data dir. From the copy it holds every host registered before
// the copy and none after; from its data dir every host it had
// replicated. Either leads, takes writes in a term above the copy's, and
// its audit trail verifies.
func TestSiteLossRecoverFromCopyAndDataDir(t *testing.T) {
	nodes := threeSites(t)
	a1, b1 := nodes[0], nodes[2]
	const before, after = 40, 25
	for i := range before {
		registerHost(t, a1.node, fmt.Sprintf("before-%02d", i))
	}
	waitApplied(t, b1.node, a1.node.Raft.LastIndex())
	copies := filepath.Join(b1.dir, "dr-snapshots")
	cp := raftnode.NewDRCopier(b1.node, raftnode.DRCopies{Dir: copies, Interval: time.Hour, Keep: 3, ID: "b1", Center: "b1", DataDir: b1.dir}, nil)
	if !cp.Active() {
		t.Fatal("b1's center is remote DR, but its copier is not active")
	}
	info, err := cp.Copy(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("copy of %d hosts: %d bytes in %v (index %d, term %d)", before, info.Header.Size, info.Took, info.Header.Index, info.Header.Term)
	if again, err := cp.Copy(context.Background()); err != nil || !again.Skipped {
		t.Fatalf("a second copy with nothing new: %+v, %v; want it skipped", again, err)
	}
	for i := range after {
		registerHost(t, a1.node, fmt.Sprintf("after-%02d", i))
	}
	waitApplied(t, b1.node, a1.node.Raft.LastIndex())
	// Site A goes, then b1 stops (its data dir is read by the second recovery).
	for _, d := range nodes {
		d.trans.DisconnectAll()
	}
	for _, d := range nodes {
		d.stop()
	}

	path, h, skipped, err := raftnode.NewestCopy(copies)
	if err != nil || len(skipped) > 0 || path != info.Path {
		t.Fatalf("newest copy: %s, %v, %v; want %s", path, skipped, err, info.Path)
	}
	if h.Controller != "b1" || len(h.Servers) != 3 || h.Index != info.Header.Index {
		t.Fatalf("copy header %+v", h)
	}
	check := func(t *testing.T, n *raftnode.Node, wantAfter int) {
		t.Helper()
		for i := range before {
			if _, ok := n.Store.Host(fmt.Sprintf("before-%02d", i)); !ok {
				t.Errorf("host before-%02d (registered before the copy) is missing", i)
			}
		}
		got := 0
		for i := range after {
			if _, ok := n.Store.Host(fmt.Sprintf("after-%02d", i)); ok {
				got++
			}
		}
		if got != wantAfter {
			t.Errorf("%d hosts registered after the copy are there, want %d", got, wantAfter)
		}
		cfg, err := n.Configuration()
		if err != nil || len(cfg.Servers) != 1 || string(cfg.Servers[0].ID) != "b1" {
			t.Fatalf("configuration %+v, %v: want b1 alone", cfg, err)
		}
		registerHost(t, n, "new-after-recovery") // it leads and takes writes
		if _, ok := n.Store.Host("new-after-recovery"); !ok {
			t.Fatal("the write after recovery is not applied")
		}
	}
	t.Run("from the copy", func(t *testing.T) {
		start := time.Now()
		rec, err := raftnode.OpenCopyRecovery(path)
		if err != nil {
			t.Fatal(err)
		}
		defer rec.Close()
		n, tr, ntrans, index, term := recoverInto(t, rec, "b1", rec.Address("b1"))
		t.Logf("recovered from the copy and leading in %v", time.Since(start))
		if index != h.Index || term < h.Term {
			t.Fatalf("recovered at index %d term %d; the copy is at %d, term %d", index, term, h.Index, h.Term)
		}
		if got := n.Raft.CurrentTerm(); got <= h.Term {
			t.Fatalf("the recovered leader is in term %d, not above the copy's %d", got, h.Term)
		}
		check(t, n, 0)
		t.Logf("lost: %d hosts registered after the copy (raft entries %d..%d)", after, h.Index+1, h.Index+after)
		verifyTrail(t, n, tr)
		// Site A comes back: a2, on a fresh data dir, joins and gets the state.
		_, trans := raft.NewInmemTransport("a2-new:8480")
		trans.Connect(ntrans.LocalAddr(), ntrans)
		ntrans.Connect(trans.LocalAddr(), trans)
		a2, a2trail := openNode(t, "a2", filepath.Join(t.TempDir(), "a2"), trans, false)
		t.Cleanup(func() { a2.Shutdown(); a2trail.Close() })
		if err := n.AddVoter("a2", "a2-new:8480", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		registerHost(t, n, "after-join")
		waitApplied(t, a2, n.Raft.LastIndex())
		for _, id := range []string{"before-00", fmt.Sprintf("before-%02d", before-1), "new-after-recovery", "after-join"} {
			if _, ok := a2.Store.Host(id); !ok {
				t.Errorf("a2, joined after the recovery, lacks host %s", id)
			}
		}
	})
	t.Run("from b1's data dir", func(t *testing.T) {
		start := time.Now()
		rec, err := raftnode.OpenDataDirRecovery(b1.dir, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer rec.Close()
		n, tr, _, index, _ := recoverInto(t, rec, "b1", rec.Address("b1"))
		t.Logf("recovered from the data dir and leading in %v", time.Since(start))
		if index != rec.LastIndex() {
			t.Fatalf("recovered at index %d, b1's log ends at %d", index, rec.LastIndex())
		}
		check(t, n, after)
		verifyTrail(t, n, tr)
	})
	// The sources were read, never written: b1's data dir still holds the
	// old three-voter configuration, and the copy verifies.
	rec, err := raftnode.OpenDataDirRecovery(b1.dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Servers()) != 3 {
		t.Fatalf("b1's data dir now has configuration %+v", rec.Servers())
	}
	rec.Close()
	if _, err := raftnode.VerifyCopy(path); err != nil {
		t.Fatal(err)
	}
}

func verifyTrail(t *testing.T, n *raftnode.Node, f *audit.File) {
	t.Helper()
	if err := n.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	r, err := f.Reader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rep, err := audit.Verify(r, n.Store.AuditHead())
	if err != nil || !rep.OK() {
		t.Fatalf("audit trail after recovery: %+v %v", rep, err)
	}
	if rep.Records == 0 {
		t.Fatal("the recovered audit trail is empty")
	}
}

// The copier copies only while its center is remote DR, once at first and
// then every interval, keeps the newest Keep, and after a restart waits an
// interval after the newest copy on disk.
func TestDRCopierSchedule(t *testing.T) {
	dir := t.TempDir()
	_, trans := raft.NewInmemTransport("b1:8480")
	n, trail := openNode(t, "b1", filepath.Join(dir, "b1"), trans, true)
	t.Cleanup(func() { n.Shutdown(); trail.Close() })
	waitLeader(t, n)
	copies := filepath.Join(dir, "copies")
	run := func(interval time.Duration) (stop func()) {
		cp := raftnode.NewDRCopier(n, raftnode.DRCopies{Dir: copies, Interval: interval, Keep: 2, ID: "b1", Center: "b1", DataDir: filepath.Join(dir, "b1")}, nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); cp.Run(ctx) }()
		return func() { cancel(); <-done }
	}
	count := func() int {
		l, _ := raftnode.ListCopies(copies)
		return len(l)
	}
	stop := run(300 * time.Millisecond)
	// Writes go on, so that every copy has something new.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for i := 0; ctx.Err() == nil; i++ {
			n.Apply(ctx, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
				Id: fmt.Sprintf("h%d", i), Hostname: "h", Center: "b1", Capacity: &statev1.Resources{Vcpus: 1, MemoryBytes: 1 << 30, DiskBytes: 1 << 30}}}}})
			time.Sleep(20 * time.Millisecond)
		}
	}()
	time.Sleep(1500 * time.Millisecond)
	if c := count(); c != 0 {
		t.Fatalf("%d copies before b1's center is declared remote DR", c)
	}
	apply(t, n, &statev1.Command{Cmd: &statev1.Command_SetCenter{SetCenter: &statev1.SetCenter{
		Center: &statev1.CenterRecord{Name: "b1", Site: "b", Role: statev1.CenterRole_CENTER_ROLE_REMOTE_DR}}}})
	deadline := time.Now().Add(10 * time.Second)
	for count() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d copies 10s after the role was declared", count())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if c := count(); c != 2 {
		t.Fatalf("%d copies kept, want 2", c)
	}
	stop()
	list, _ := raftnode.ListCopies(copies)
	for _, p := range list {
		if _, err := raftnode.VerifyCopy(p); err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(copies)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp") {
			t.Fatalf("temporary file %s left", e.Name())
		}
	}
	// A restart with an hour's interval: the newest copy is recent, so none.
	newest := list[len(list)-1]
	stop = run(time.Hour)
	time.Sleep(1500 * time.Millisecond)
	stop()
	list2, _ := raftnode.ListCopies(copies)
	if list2[len(list2)-1] != newest {
		t.Fatalf("a copy was taken at restart although the newest is recent: %v", list2)
	}
	// The role changes: copies stop.
	apply(t, n, &statev1.Command{Cmd: &statev1.Command_SetCenter{SetCenter: &statev1.SetCenter{
		Center: &statev1.CenterRecord{Name: "b1", Site: "b", Role: statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR}}}})
	os.RemoveAll(copies)
	stop = run(100 * time.Millisecond)
	time.Sleep(1500 * time.Millisecond)
	stop()
	if c := count(); c != 0 {
		t.Fatalf("%d copies after b1's center stopped being remote DR", c)
	}
}

// A damaged copy is refused, naming why; NewestCopy passes over it to an
// older one that verifies.
func TestDamagedCopy(t *testing.T) {
	dir := t.TempDir()
	_, trans := raft.NewInmemTransport("b1:8480")
	n, trail := openNode(t, "b1", filepath.Join(dir, "b1"), trans, true)
	t.Cleanup(func() { n.Shutdown(); trail.Close() })
	waitLeader(t, n)
	copies := filepath.Join(dir, "copies")
	cp := raftnode.NewDRCopier(n, raftnode.DRCopies{Dir: copies, Interval: time.Hour, Keep: 5, ID: "b1", Center: "b1", DataDir: filepath.Join(dir, "b1")}, nil)
	var infos []raftnode.CopyInfo
	for i := range 2 {
		registerHost(t, n, fmt.Sprintf("h%d", i))
		info, err := cp.Copy(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		infos = append(infos, info)
		time.Sleep(2 * time.Millisecond) // distinct names
	}
	good, err := os.ReadFile(infos[1].Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"bit flip", flip(good, len(good)/2), "does not match its checksum"},
		{"cut short", good[:len(good)-10], "damaged"},
		{"trailing bytes", append(bytes.Clone(good), 'x'), "bytes after its checksum"},
		{"not a copy", []byte("hello\n"), "is not a Yunchi state copy"},
		{"empty", nil, "is not a Yunchi state copy"},
		{"newer format", bytes.Replace(good, []byte("YUNCHI-STATE-COPY 1\n"), []byte("YUNCHI-STATE-COPY 9\n"), 1), "format 9, newer than this yunchid reads (1)"},
		{"raft snapshot", []byte("YCSNAP4\n\x00"), "is a raft snapshot of a data dir"},
	} {
		if err := os.WriteFile(infos[1].Path, tc.b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := raftnode.VerifyCopy(infos[1].Path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v; want one line with %q", tc.name, err, tc.want)
		}
		path, _, skipped, err := raftnode.NewestCopy(copies)
		if err != nil || path != infos[0].Path || len(skipped) != 1 {
			t.Errorf("%s: newest copy %s (skipped %v, %v), want the older %s", tc.name, path, skipped, err, infos[0].Path)
		}
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x40
	return c
}

// The figures of the runbook (docs/dr.md): a copy's size and the time to
// take it and to recover from it, at the 环保云's scale with room to spare:
// 45 hosts, 10,000 VMs (2,000 with -short) and an audit trail of 100,000
// records (20,000).
func TestDRCopyAtScale(t *testing.T) {
	nVMs, nAudit := 10_000, 100_000
	if testing.Short() {
		nVMs, nAudit = 2_000, 20_000
	}
	dir := t.TempDir()
	_, trans := raft.NewInmemTransport("b1:8480")
	n, trail := openNode(t, "b1", filepath.Join(dir, "b1"), trans, true)
	t.Cleanup(func() { n.Shutdown(); trail.Close() })
	waitLeader(t, n)
	for i := range 45 {
		apply(t, n, &statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
			Id: fmt.Sprintf("h%02d", i), Hostname: "h", Center: []string{"a1", "a2", "b1"}[i%3],
			Capacity: &statev1.Resources{Vcpus: 1024, MemoryBytes: 64 << 40, DiskBytes: 1 << 50}}}}})
	}
	const batch = 100
	for b := 0; b < nVMs/batch; b++ {
		var vms []*statev1.VMRecord
		for i := range batch {
			k := b*batch + i
			vms = append(vms, &statev1.VMRecord{Id: fmt.Sprintf("vm-%06d", k), Name: fmt.Sprintf("app-%06d", k), Project: state.DefaultProject,
				Vcpus: 2, MemoryBytes: 4 << 30, DiskBytes: 40 << 30, HostId: fmt.Sprintf("h%02d", k%45), Center: []string{"a1", "a2", "b1"}[(k%45)%3]})
		}
		apply(t, n, &statev1.Command{Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: vms}}})
	}
	for b := 0; b < nAudit/batch; b++ {
		var recs []*statev1.AuditRecord
		for range batch {
			recs = append(recs, &statev1.AuditRecord{Kind: "denied", Result: "denied", Code: "PermissionDenied", Message: "only auditors read the audit trail",
				Context: &statev1.AuditContext{Actor: "user-17", Role: "ROLE_MEMBER", Department: "air", Source: "10.20.30.40:51234",
					Action: "CreateVM", Target: "project/air/vm/web-1", Params: `{"name":"web-1","project":"air","vcpus":2,"memory":"4GiB","disk":"40GiB"}`}})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := n.Apply(ctx, &statev1.Command{Cmd: &statev1.Command_RecordAudit{RecordAudit: &statev1.RecordAudit{Records: recs}}}); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	cp := raftnode.NewDRCopier(n, raftnode.DRCopies{Dir: filepath.Join(dir, "copies"), Interval: time.Hour, Keep: 2, ID: "b1", Center: "b1", DataDir: filepath.Join(dir, "b1")}, nil)
	info, err := cp.Copy(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rec, err := raftnode.OpenCopyRecovery(info.Path)
	if err != nil {
		t.Fatal(err)
	}
	verify := time.Since(start)
	rn, _, _, _, _ := recoverInto(t, rec, "b1", "b1-new:8480")
	took := time.Since(start)
	if got := len(rn.Store.Snapshot().GetVms()); got != nVMs {
		t.Fatalf("recovered %d VMs, want %d", got, nVMs)
	}
	if got := rn.Store.AuditHead().GetSeq(); got < uint64(nAudit) {
		t.Fatalf("recovered audit head %d, want at least %d", got, nAudit)
	}
	t.Logf("45 hosts, %d VMs, %d audit records: copy %.1f MiB (the state %.1f MiB, the rest the audit trail) taken in %v; recovery: verify %v, recover and lead %v",
		nVMs, nAudit, float64(info.Header.Size)/(1<<20), float64(proto.Size(rn.Store.Snapshot()))/(1<<20),
		info.Took.Round(time.Millisecond), verify.Round(time.Millisecond), took.Round(time.Millisecond))
}
