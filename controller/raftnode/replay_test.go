package raftnode

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/yunchi/yunchi/controller/state"
)

// testdata/v2 was recorded with the previous command and snapshot version
// (2, commit 771b90e): `yunchid dev --hosts 6` of that commit took web-1,
// db-1 (center b1), group g1 (anti-affinity, host) with app-1..3, a label,
// a reservation and maintenance on a1 hosts, a memory ratio for center b1,
// stop web-1 and delete app-2. log.bin holds the command entries of a1's
// raft log (per entry: uvarint index, uvarint term, uvarint length, data);
// snapshot.bin is that version's FSM snapshot after them; expected.json is
// what that version's REST API answered at the end (/v1/vms, /v1/hosts,
// /v1/groups, /v1/ratios), reduced to the facts compared here.

type expectedV2 struct {
	VMs map[string]struct {
		Host, Desired, Phase string
		Vcpus                int32
		MemoryBytes          int64
	}
	Hosts map[string]struct {
		State                                       string
		AdminLabels                                 map[string]string
		ReservedVcpus, AllocatableVcpus             int64
		ReservedMemoryBytes, AllocatableMemoryBytes int64
	}
	Groups map[string][]string
	Ratios []struct {
		Scope, Name  string
		CPU          float64 `json:"cpu"`
		Memory, Disk float64
	}
}

func readV2(t *testing.T) ([]*raft.Log, []byte, expectedV2) {
	t.Helper()
	dir := filepath.Join("testdata", "v2")
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
			t.Fatalf("log.bin is damaged after %d entries", len(logs))
		}
		logs = append(logs, &raft.Log{Index: idx, Term: term, Type: raft.LogCommand, Data: data})
	}
	snap, err := os.ReadFile(filepath.Join(dir, "snapshot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var exp expectedV2
	eb, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if err == nil {
		err = json.Unmarshal(eb, &exp)
	}
	if err != nil {
		t.Fatal(err)
	}
	return logs, snap, exp
}

// checkV2 compares a store with what version 2 answered.
func checkV2(t *testing.T, what string, st *state.Store, exp expectedV2) {
	t.Helper()
	vms := st.VMs("", "")
	if len(vms) != len(exp.VMs) {
		t.Errorf("%s: %d VMs, version 2 had %d", what, len(vms), len(exp.VMs))
	}
	for _, v := range vms {
		e, ok := exp.VMs[v.Name]
		if !ok || v.HostId != e.Host || v.Desired.String() != e.Desired || v.Phase.String() != e.Phase ||
			v.Vcpus != e.Vcpus || v.MemoryBytes != e.MemoryBytes {
			t.Errorf("%s: vm %s on %s %v %v %d vCPU %d B; version 2: %+v (known %v)", what, v.Name, v.HostId, v.Desired, v.Phase, v.Vcpus, v.MemoryBytes, e, ok)
		}
	}
	hosts := st.Hosts()
	if len(hosts) != len(exp.Hosts) {
		t.Errorf("%s: %d hosts, version 2 had %d", what, len(hosts), len(exp.Hosts))
	}
	for _, hv := range hosts {
		e := exp.Hosts[hv.Host.Id]
		alloc := hv.Sched.Allocatable()
		if hv.State.String() != e.State || !maps.Equal(hv.Host.AdminLabels, e.AdminLabels) ||
			hv.Sched.Reserved.VCPUs != e.ReservedVcpus || hv.Sched.Reserved.MemoryBytes != e.ReservedMemoryBytes ||
			alloc.VCPUs != e.AllocatableVcpus || alloc.MemoryBytes != e.AllocatableMemoryBytes {
			t.Errorf("%s: host %s %v labels %v reserved %+v allocatable %+v; version 2: %+v", what, hv.Host.Id, hv.State, hv.Host.AdminLabels, hv.Sched.Reserved, alloc, e)
		}
	}
	groups := st.PlacementGroups("")
	if len(groups) != len(exp.Groups) {
		t.Errorf("%s: %d groups, version 2 had %d", what, len(groups), len(exp.Groups))
	}
	for _, g := range groups {
		if !slices.Equal(g.Members, exp.Groups[g.Group.Name]) {
			t.Errorf("%s: group %s members %v; version 2: %v", what, g.Group.Name, g.Members, exp.Groups[g.Group.Name])
		}
	}
	ratios := st.Ratios()
	if len(ratios) != len(exp.Ratios) {
		t.Fatalf("%s: %d ratio settings, version 2 had %d", what, len(ratios), len(exp.Ratios))
	}
	for i, r := range ratios {
		e := exp.Ratios[i]
		if r.Scope != e.Scope || r.Name != e.Name || r.Ratios.GetCpu() != e.CPU || r.Ratios.GetMemory() != e.Memory || r.Ratios.GetDisk() != e.Disk {
			t.Errorf("%s: ratio setting %v; version 2: %+v", what, r, e)
		}
	}
}

// TestReplayPreviousVersion: a log and a snapshot written by the previous
// version replay to the state that version had: same VMs on the same hosts,
// same host settings, groups and ratios. A change to how commands apply, or
// to the formats, that would make an upgraded controller rebuild a
// different state from an existing log fails here.
func TestReplayPreviousVersion(t *testing.T) {
	logs, snap, exp := readV2(t)
	if len(logs) < 10 || len(exp.VMs) == 0 {
		t.Fatalf("fixture too small: %d entries, %d VMs", len(logs), len(exp.VMs))
	}
	replayed := &FSM{Store: state.New()}
	for _, l := range logs {
		if res, ok := replayed.Apply(l).(Result); !ok || res.Err != nil {
			t.Fatalf("entry %d: %+v (version 2 applied every entry of this log)", l.Index, res)
		}
	}
	checkV2(t, "log replayed", replayed.Store, exp)

	restored := &FSM{Store: state.New()}
	if err := restored.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatalf("restore the version 2 snapshot: %v", err)
	}
	checkV2(t, "snapshot restored", restored.Store, exp)
}
