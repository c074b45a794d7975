package raftnode

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Each testdata/vN holds a raft log and a snapshot written by an older
// version, and what that version's API answered at the end. log.bin holds
// the command entries of one controller's raft log (per entry: uvarint
// index, uvarint term, uvarint length, data); snapshot.bin is that
// version's FSM snapshot after them; expected.json the answers, reduced to
// the facts compared here.
//
// testdata/v2 (command and snapshot version 2, commit 771b90e) was taken
// with `yunchid dev --hosts 6` of that commit: web-1, db-1 (center b1),
// group g1 (anti-affinity, host) with app-1..3, a label, a reservation and
// maintenance on a1 hosts, a memory ratio for center b1, stop web-1 and
// delete app-2.
//
// testdata/v3 (command version 3, snapshot version 2, commit f29ccb6) was
// recorded by controller.TestRecordFixture (controller/record_fixture_test.go,
// see there to record the next one): 3 controllers, one removed at the
// end; 6 hosts in centers a1, a2, b1 on racks r1-r3 with cpu models, one
// marked down and back; every command kind: single and batch creates with
// constraints, an anti-affinity and an affinity group, spread and binpack,
// stop, start, reboot, delete, agent reports (a deleted VM gone), host
// labels, reservation, maintenance, draining, owner and ratios, center and
// host group ratios (one removed), a group created and deleted; 22 calls
// with idempotency keys: 20 reached the log and are remembered (two of them
// rejected by Apply: reboot of a stopped VM, delete of a group with
// members), two were refused before it (name taken, no fit). expected.json
// adds to v2's facts the remembered request ids with their outcome and the
// entries Apply rejected.

// expected is expected.json of every version; fields a version's file does
// not have are zero and compared only from version 3 on.
type expected struct {
	VMs map[string]struct {
		Host, Desired, Phase   string
		Vcpus                  int32
		MemoryBytes, DiskBytes int64
		// Version 3 on.
		Project, Group, Center, Strategy string
		Constraints                      []string
		RebootSeq                        uint64
	}
	Hosts map[string]struct {
		State                                       string
		AdminLabels                                 map[string]string
		ReservedVcpus, AllocatableVcpus             int64
		ReservedMemoryBytes, AllocatableMemoryBytes int64
		// Version 3 on.
		Center, Rack, Owner                     string
		ReservedDiskBytes, AllocatableDiskBytes int64
		AllocatedVcpus, AllocatedMemoryBytes    int64
		HostRatios                              expectedRatio
	}
	// Group name -> member names.
	Groups map[string][]string
	Ratios []expectedRatio
	// Version 3 on: group name -> its rules; member id -> center; request
	// id -> the outcome Apply remembered; log index -> state.Kind of the
	// entries Apply rejected (none before version 3).
	GroupRules map[string]string
	Members    map[string]string
	Requests   map[string]expectedRequest
	Rejected   map[string]int
}

type expectedRatio struct {
	Scope, Name  string
	CPU          float64 `json:"cpu"`
	Memory, Disk float64
}

type expectedRequest struct {
	Index              uint64
	Hash               string
	ErrorKind          int
	Error              string
	VMs                []string
	Host, Ratio, Group string
}

// outcome is how a result is compared with what was remembered.
func (r expectedRequest) outcome() string {
	if r.ErrorKind != 0 {
		return fmt.Sprintf("error %d: %s", r.ErrorKind, r.Error)
	}
	return fmt.Sprintf("vms %v host %q ratio %q group %q", r.VMs, r.Host, r.Ratio, r.Group)
}

func outcome(res state.Result, err error) string {
	if err != nil {
		return fmt.Sprintf("error %d: %s", state.KindOf(err), err)
	}
	var r expectedRequest
	for _, v := range res.VMs {
		r.VMs = append(r.VMs, v.Name)
	}
	if res.Host != nil {
		r.Host = res.Host.Id
	}
	if res.Ratio != nil {
		r.Ratio = res.Ratio.Scope + "/" + res.Ratio.Name
	}
	if res.Group != nil {
		r.Group = res.Group.Name
	}
	return r.outcome()
}

func readFixture(t *testing.T, version string) ([]*raft.Log, []byte, expected) {
	t.Helper()
	dir := filepath.Join("testdata", version)
	b, err := os.ReadFile(filepath.Join(dir, "log.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var logs []*raft.Log
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		idx, err1 := binary.ReadUvarint(r)
		term, err2 := binary.ReadUvarint(r)
		n, err3 := binary.ReadUvarint(r)
		data := make([]byte, n)
		_, err4 := io.ReadFull(r, data)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			t.Fatalf("%s/log.bin is damaged after %d entries", version, len(logs))
		}
		logs = append(logs, &raft.Log{Index: idx, Term: term, Type: raft.LogCommand, Data: data})
	}
	snap, err := os.ReadFile(filepath.Join(dir, "snapshot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var exp expected
	eb, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if err == nil {
		err = json.Unmarshal(eb, &exp)
	}
	if err != nil {
		t.Fatal(err)
	}
	return logs, snap, exp
}

// check compares a store with what an older version answered; v3 compares
// the facts expected.json has from version 3 on too.
func check(t *testing.T, what string, st *state.Store, exp expected, v3 bool) {
	t.Helper()
	vms := st.VMs("", "")
	if len(vms) != len(exp.VMs) {
		t.Errorf("%s: %d VMs, expected %d", what, len(vms), len(exp.VMs))
	}
	for _, v := range vms {
		e, ok := exp.VMs[v.Name]
		if !ok || v.HostId != e.Host || v.Desired.String() != e.Desired || v.Phase.String() != e.Phase ||
			v.Vcpus != e.Vcpus || v.MemoryBytes != e.MemoryBytes ||
			v3 && (v.Project != e.Project || v.DiskBytes != e.DiskBytes || v.Group != e.Group || v.Center != e.Center ||
				v.Strategy != e.Strategy || !slices.Equal(v.Constraints, e.Constraints) || v.RebootSeq != e.RebootSeq) {
			t.Errorf("%s: vm %s/%s on %s %v %v %d vCPU %d B, disk %d B, group %q, center %q, strategy %q, constraints %q, reboot %d; expected %+v (known %v)",
				what, v.Project, v.Name, v.HostId, v.Desired, v.Phase, v.Vcpus, v.MemoryBytes, v.DiskBytes, v.Group, v.Center, v.Strategy, v.Constraints, v.RebootSeq, e, ok)
		}
	}
	hosts := st.Hosts()
	if len(hosts) != len(exp.Hosts) {
		t.Errorf("%s: %d hosts, expected %d", what, len(hosts), len(exp.Hosts))
	}
	for _, hv := range hosts {
		e := exp.Hosts[hv.Host.Id]
		f, alloc := hv.Facts, hv.Facts.Allocatable()
		hr := hv.Host.Ratios
		if hv.Facts.State.String() != e.State || !maps.Equal(hv.Host.AdminLabels, e.AdminLabels) ||
			f.Reserved.VCPUs != e.ReservedVcpus || f.Reserved.MemoryBytes != e.ReservedMemoryBytes ||
			alloc.VCPUs != e.AllocatableVcpus || alloc.MemoryBytes != e.AllocatableMemoryBytes ||
			v3 && (hv.Host.Center != e.Center || hv.Host.Rack != e.Rack || hv.Host.Owner != e.Owner ||
				f.Reserved.DiskBytes != e.ReservedDiskBytes || alloc.DiskBytes != e.AllocatableDiskBytes ||
				f.Allocated.VCPUs != e.AllocatedVcpus || f.Allocated.MemoryBytes != e.AllocatedMemoryBytes ||
				hr.GetCpu() != e.HostRatios.CPU || hr.GetMemory() != e.HostRatios.Memory || hr.GetDisk() != e.HostRatios.Disk) {
			t.Errorf("%s: host %s %v labels %v owner %q reserved %+v allocatable %+v allocated %+v ratios %v; expected %+v",
				what, hv.Host.Id, hv.Facts.State, hv.Host.AdminLabels, hv.Host.Owner, f.Reserved, alloc, f.Allocated, hr, e)
		}
	}
	groups := st.PlacementGroups("")
	if len(groups) != len(exp.Groups) {
		t.Errorf("%s: %d groups, expected %d", what, len(groups), len(exp.Groups))
	}
	for _, g := range groups {
		r := g.Group
		rules := fmt.Sprintf("%s %v %v soft=%v max=%d", r.Project, r.Policy, r.Level, r.Soft, r.MaxPerHost)
		if !slices.Equal(g.Members, exp.Groups[r.Name]) || v3 && rules != exp.GroupRules[r.Name] {
			t.Errorf("%s: group %s members %v (%s); expected %v (%s)", what, r.Name, g.Members, rules, exp.Groups[r.Name], exp.GroupRules[r.Name])
		}
	}
	ratios := st.Ratios()
	if len(ratios) != len(exp.Ratios) {
		t.Fatalf("%s: %d ratio settings, expected %d", what, len(ratios), len(exp.Ratios))
	}
	for i, r := range ratios {
		e := exp.Ratios[i]
		if r.Scope != e.Scope || r.Name != e.Name || r.Ratios.GetCpu() != e.CPU || r.Ratios.GetMemory() != e.Memory || r.Ratios.GetDisk() != e.Disk {
			t.Errorf("%s: ratio setting %v; expected %+v", what, r, e)
		}
	}
	if !v3 {
		return
	}
	members := map[string]string{}
	for _, m := range st.Members() {
		members[m.Id] = m.Center
	}
	if !maps.Equal(members, exp.Members) {
		t.Errorf("%s: members %v; expected %v", what, members, exp.Members)
	}
	for id, e := range exp.Requests {
		r, ok := st.Request(id)
		if !ok || r.Index != e.Index || hex.EncodeToString(r.Hash) != e.Hash || int(r.ErrorKind) != e.ErrorKind {
			t.Errorf("%s: request id %s remembered %v: %v; expected %+v", what, id, ok, r, e)
		}
	}
	if n := st.RequestCount(); n != len(exp.Requests) {
		t.Errorf("%s: %d request ids remembered, expected %d", what, n, len(exp.Requests))
	}
}

// repeatRequests applies again, after the log, each entry that carried a
// remembered request id (same id, same hash): Apply must answer with the
// first outcome and change nothing. The same id with another hash is
// refused.
func repeatRequests(t *testing.T, what string, st *state.Store, logs []*raft.Log, exp expected) {
	t.Helper()
	next := logs[len(logs)-1].Index
	repeated := 0
	for _, l := range logs {
		var cmd statev1.Command
		if err := proto.Unmarshal(l.Data, &cmd); err != nil {
			t.Fatal(err)
		}
		e, ok := exp.Requests[cmd.RequestId]
		if !ok || l.Index != e.Index {
			continue
		}
		if hex.EncodeToString(cmd.RequestHash) != e.Hash {
			t.Fatalf("entry %d: request %s hash %x, expected.json has %s", l.Index, cmd.RequestId, cmd.RequestHash, e.Hash)
		}
		next++
		res, err := st.Apply(next, &cmd)
		if got := outcome(res, err); got != e.outcome() {
			t.Errorf("%s: request id %s again: %s; first outcome %s", what, cmd.RequestId, got, e.outcome())
		}
		repeated++
		if repeated == 1 {
			other := proto.Clone(&cmd).(*statev1.Command)
			other.RequestHash = append([]byte("other"), other.RequestHash...)
			next++
			_, err := st.Apply(next, other)
			if state.KindOf(err) != state.KindInvalid || !strings.Contains(fmt.Sprint(err), "already used for a different request") {
				t.Errorf("%s: request id %s with another hash: %v, want refused", what, cmd.RequestId, err)
			}
		}
	}
	if repeated != len(exp.Requests) {
		t.Errorf("%s: %d remembered request ids found in the log, expected.json has %d", what, repeated, len(exp.Requests))
	}
}

// TestReplayPreviousVersion: a log and a snapshot written by an earlier
// version replay to the state that version had: same VMs on the same
// hosts, same host settings, groups and ratios, and from version 3 the same
// remembered request ids, answered with their first outcome. A change to
// how commands apply, or to the formats, that would make an upgraded
// controller rebuild a different state from an existing log fails here.
func TestReplayPreviousVersion(t *testing.T) {
	for _, version := range []string{"v2", "v3"} {
		t.Run(version, func(t *testing.T) {
			v3 := version != "v2"
			logs, snap, exp := readFixture(t, version)
			if len(logs) < 10 || len(exp.VMs) == 0 || v3 && len(exp.Requests) == 0 {
				t.Fatalf("fixture too small: %d entries, %d VMs, %d request ids", len(logs), len(exp.VMs), len(exp.Requests))
			}
			replayed := &FSM{Store: state.New()}
			for _, l := range logs {
				res, ok := replayed.Apply(l).(*Result)
				want := exp.Rejected[fmt.Sprint(l.Index)]
				if !ok || int(state.KindOf(res.Err)) != want || want == 0 && res.Err != nil {
					t.Fatalf("entry %d: %+v (%s applied it with error kind %d, 0 = applied)", l.Index, res, version, want)
				}
			}
			check(t, "log replayed", replayed.Store, exp, v3)

			restored := &FSM{Store: state.New()}
			if err := restored.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
				t.Fatalf("restore the %s snapshot: %v", version, err)
			}
			check(t, "snapshot restored", restored.Store, exp, v3)
			if !v3 {
				return
			}
			repeatRequests(t, "log replayed", replayed.Store, logs, exp)
			check(t, "log replayed, requests repeated", replayed.Store, exp, v3)
			repeatRequests(t, "snapshot restored", restored.Store, logs, exp)
			check(t, "snapshot restored, requests repeated", restored.Store, exp, v3)
		})
	}
}
