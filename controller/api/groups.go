package api

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func groupToAPI(gv state.GroupView) *yunchiv1.PlacementGroup {
	g := gv.Group
	members := gv.Members
	if members == nil {
		members = []string{}
	}
	return &yunchiv1.PlacementGroup{
		Name: g.Name, Project: g.Project, Policy: policyToAPI(g.Policy), Level: levelToAPI(g.Level), Soft: g.Soft,
		MaxPerHost: g.MaxPerHost, Members: members, CreatedAt: ts(g.CreatedUnixNano),
	}
}

func (s *Server) CreateGroup(ctx context.Context, req *yunchiv1.CreateGroupRequest) (*yunchiv1.PlacementGroup, error) {
	if err := checkName("group name", req.Name); err != nil {
		return nil, err
	}
	project, err := projectOf(req.Project)
	if err != nil {
		return nil, err
	}
	rec := &statev1.PlacementGroupRecord{Name: req.Name, Project: project, Policy: policyFromAPI(req.Policy), Level: levelFromAPI(req.Level), Soft: req.Soft, MaxPerHost: req.MaxPerHost}
	if err := s.store.CheckCreatePlacementGroup(rec); err != nil {
		return nil, toStatus(err)
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_CreatePlacementGroup{CreatePlacementGroup: &statev1.CreatePlacementGroup{Group: rec}}}); err != nil {
		return nil, err
	}
	gv, _ := s.store.PlacementGroup(project, req.Name)
	s.log.Info("placement group created", "group", req.Name, "project", project, "policy", req.Policy)
	return groupToAPI(gv), nil
}

func (s *Server) findGroup(project, name string) (state.GroupView, error) {
	if err := checkName("group name", name); err != nil {
		return state.GroupView{}, err
	}
	p, err := projectOf(project)
	if err != nil {
		return state.GroupView{}, err
	}
	gv, ok := s.store.PlacementGroup(p, name)
	if !ok {
		return state.GroupView{}, status.Errorf(codes.NotFound, "placement group %q not found in project %q (see `yunchi group list`)", name, p)
	}
	return gv, nil
}

func (s *Server) GetGroup(ctx context.Context, req *yunchiv1.GetGroupRequest) (*yunchiv1.PlacementGroup, error) {
	gv, err := s.findGroup(req.Project, req.Name)
	if err != nil {
		return nil, err
	}
	return groupToAPI(gv), nil
}

func (s *Server) ListGroups(ctx context.Context, req *yunchiv1.ListGroupsRequest) (*yunchiv1.ListGroupsResponse, error) {
	if req.Project != "" {
		if err := checkName("project", req.Project); err != nil {
			return nil, err
		}
	}
	out := &yunchiv1.ListGroupsResponse{Groups: []*yunchiv1.PlacementGroup{}}
	for _, gv := range s.store.PlacementGroups(req.Project) {
		if auth.Sees(ctx, gv.Group.Project) {
			out.Groups = append(out.Groups, groupToAPI(gv))
		}
	}
	return out, nil
}

func (s *Server) DeleteGroup(ctx context.Context, req *yunchiv1.DeleteGroupRequest) (*yunchiv1.DeleteGroupResponse, error) {
	gv, err := s.findGroup(req.Project, req.Name)
	if err != nil {
		return nil, err
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_DeletePlacementGroup{DeletePlacementGroup: &statev1.DeletePlacementGroup{
		Project: gv.Group.Project, Name: gv.Group.Name,
	}}}); err != nil {
		return nil, err
	}
	s.log.Info("placement group deleted", "group", gv.Group.Name, "project", gv.Group.Project)
	return &yunchiv1.DeleteGroupResponse{}, nil
}
