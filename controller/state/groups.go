package state

import (
	"maps"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// MaxPerHostLimit bounds a group's max_per_host.
const MaxPerHostLimit = 1000

// CheckCreatePlacementGroup says whether a group g could be created now:
// the checks Apply makes, for the API to make before proposing.
func (s *Store) CheckCreatePlacementGroup(g *statev1.PlacementGroupRecord) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.checkCreateGroup(g)
}

// checkCreateGroup validates g against the state. Callers hold mu.
func (s *Store) checkCreateGroup(g *statev1.PlacementGroupRecord) error {
	switch {
	case g == nil:
		return errorf(KindInvalid, "placement group is missing")
	case !ValidName(g.Name):
		return errorf(KindInvalid, "group name %q is not valid: use 1-63 lowercase letters, digits and '-'", g.Name)
	case !ValidName(g.Project):
		return errorf(KindInvalid, "project %q is not valid", g.Project)
	case g.Policy == statev1.GroupPolicy_GROUP_POLICY_UNSPECIFIED:
		return errorf(KindInvalid, "group policy is required: affinity (keep members together) or anti-affinity (keep them apart)")
	case g.Policy != statev1.GroupPolicy_GROUP_POLICY_AFFINITY && g.Policy != statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY:
		return errorf(KindInvalid, "group policy %d is unknown: use affinity or anti-affinity", g.Policy)
	case g.Level < statev1.GroupLevel_GROUP_LEVEL_UNSPECIFIED || g.Level > statev1.GroupLevel_GROUP_LEVEL_CENTER:
		return errorf(KindInvalid, "group level %d is unknown: use host, rack or center", g.Level)
	case g.MaxPerHost < 0 || g.MaxPerHost > MaxPerHostLimit:
		return errorf(KindInvalid, "max per host %d is out of range: give 0 (no limit) to %d", g.MaxPerHost, MaxPerHostLimit)
	}
	if _, ok := s.groups[nameKey(g.Project, g.Name)]; ok {
		return errorf(KindAlreadyExists, "placement group %q already exists in project %q", g.Name, g.Project)
	}
	return nil
}

func (s *Store) applyCreatePlacementGroup(now int64, c *statev1.CreatePlacementGroup, projectMustExist bool) (*statev1.PlacementGroupRecord, error) {
	g := c.GetGroup()
	if err := s.checkCreateGroup(g); err != nil {
		return nil, err
	}
	if projectMustExist && s.projectDept(g.Project) == "" {
		return nil, errorf(KindNotFound, "project %q not found", g.Project)
	}
	key := nameKey(g.Project, g.Name)
	rec := proto.Clone(g).(*statev1.PlacementGroupRecord)
	if rec.Level == statev1.GroupLevel_GROUP_LEVEL_UNSPECIFIED {
		rec.Level = statev1.GroupLevel_GROUP_LEVEL_HOST
	}
	rec.CreatedUnixNano = now
	s.groups[key] = rec
	s.projectUse[rec.Project]++
	return proto.Clone(rec).(*statev1.PlacementGroupRecord), nil
}

func (s *Store) applyDeletePlacementGroup(c *statev1.DeletePlacementGroup) (*statev1.PlacementGroupRecord, error) {
	key := nameKey(c.GetProject(), c.GetName())
	g, ok := s.groups[key]
	if !ok {
		return nil, errorf(KindNotFound, "placement group %q not found in project %q (see `yunchi group list`)", c.GetName(), c.GetProject())
	}
	if names := s.groupMemberNames(g); len(names) > 0 {
		shown := names
		if len(shown) > 5 {
			shown = append(shown[:5:5], "...")
		}
		return nil, errorf(KindFailedPrecondition, "placement group %q still has %d member VMs (%s): delete them first", g.Name, len(names), strings.Join(shown, ", "))
	}
	delete(s.groups, key)
	if s.projectUse[g.Project]--; s.projectUse[g.Project] <= 0 {
		delete(s.projectUse, g.Project)
	}
	return proto.Clone(g).(*statev1.PlacementGroupRecord), nil
}

// groupMemberNames lists the VMs in g, sorted. Callers hold mu.
func (s *Store) groupMemberNames(g *statev1.PlacementGroupRecord) []string {
	var names []string
	for _, v := range s.vms {
		if v.Group == g.Name && v.Project == g.Project {
			names = append(names, v.Name)
		}
	}
	sort.Strings(names)
	return names
}

// GroupView is a placement group with its members.
type GroupView struct {
	Group   *statev1.PlacementGroupRecord
	Members []string // VM names, sorted
}

// PlacementGroup returns one group.
func (s *Store) PlacementGroup(project, name string) (GroupView, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	g, ok := s.groups[nameKey(project, name)]
	if !ok {
		return GroupView{}, false
	}
	return GroupView{proto.Clone(g).(*statev1.PlacementGroupRecord), s.groupMemberNames(g)}, true
}

// HasPlacementGroup reports whether project has a group called name,
// without listing its members.
func (s *Store) HasPlacementGroup(project, name string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.groups[nameKey(project, name)]
	return ok
}

// PlacementGroups lists the groups of a project ("" = all), sorted by
// project then name.
func (s *Store) PlacementGroups(project string) []GroupView {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []GroupView
	for _, g := range s.groups {
		if project == "" || g.Project == project {
			out = append(out, GroupView{proto.Clone(g).(*statev1.PlacementGroupRecord), s.groupMemberNames(g)})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Group.Project != out[j].Group.Project {
			return out[i].Group.Project < out[j].Group.Project
		}
		return out[i].Group.Name < out[j].Group.Name
	})
	return out
}

// groupFacts is g with where its members are now. Callers hold mu.
func (s *Store) groupFacts(g *statev1.PlacementGroupRecord) *GroupFacts {
	members := maps.Clone(s.groupHosts[nameKey(g.Project, g.Name)])
	if members == nil {
		members = map[string]int{}
	}
	level := g.Level
	if level == statev1.GroupLevel_GROUP_LEVEL_UNSPECIFIED {
		level = statev1.GroupLevel_GROUP_LEVEL_HOST
	}
	return &GroupFacts{
		Name: g.Name, Project: g.Project, Policy: g.Policy, Level: level,
		Soft: g.Soft, MaxPerHost: int(g.MaxPerHost), Members: members,
	}
}

// levelName is how messages name a group level: "host", "rack", "center".
func levelName(l statev1.GroupLevel) string {
	switch l {
	case statev1.GroupLevel_GROUP_LEVEL_RACK:
		return "rack"
	case statev1.GroupLevel_GROUP_LEVEL_CENTER:
		return "center"
	}
	return "host"
}
