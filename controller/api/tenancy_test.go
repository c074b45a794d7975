package api

import (
	"context"
	"testing"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// A project's VM and group counts come from the store's counters; they
// are the numbers counting its records gives, for a project with a record
// and for the default project (which has none).
func TestProjectCounts(t *testing.T) {
	vm := func(id, project, group string) *statev1.VMRecord {
		return &statev1.VMRecord{Id: id, Name: id, Project: project, Group: group, Vcpus: 1, MemoryBytes: 1 << 30, DiskBytes: 1 << 30, HostId: "a1-h01"}
	}
	group := func(project, name string) *statev1.Command {
		return &statev1.Command{Cmd: &statev1.Command_CreatePlacementGroup{CreatePlacementGroup: &statev1.CreatePlacementGroup{Group: &statev1.PlacementGroupRecord{
			Name: name, Project: project, Policy: statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY}}}}
	}
	s, _, _ := newFakeServer(t,
		&statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
			Id: "a1-h01", Center: "a1", Capacity: &statev1.Resources{Vcpus: 64, MemoryBytes: 256 << 30, DiskBytes: 4 << 40}}}}},
		deptCmd("eco"), projectCmd("air", "eco"), projectCmd("soil", "eco"),
		group("air", "g1"), group("air", "g2"), group(state.DefaultProject, "g"),
		&statev1.Command{Cmd: &statev1.Command_PlaceVms{PlaceVms: &statev1.PlaceVMs{Vms: []*statev1.VMRecord{
			vm("v1", "air", "g1"), vm("v2", "air", ""), vm("v3", "air", "g2"), vm("v4", state.DefaultProject, "")}}}},
	)
	list, err := s.Tenancy().ListProjects(context.Background(), &yunchiv1.ListProjectsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]int32{"air": {3, 2}, state.DefaultProject: {1, 1}, "soil": {0, 0}}
	if len(list.Projects) != len(want) {
		t.Fatalf("projects %v", list.Projects)
	}
	for _, p := range list.Projects {
		w := want[p.Name]
		slow := [2]int32{int32(len(s.store.VMs(p.Name, ""))), int32(len(s.store.PlacementGroups(p.Name)))}
		if got := [2]int32{p.Vms, p.Groups}; got != w || slow != w {
			t.Errorf("%s: %d VMs and %d groups (counting the records: %v), want %v", p.Name, p.Vms, p.Groups, slow, w)
		}
	}
}
