package main

import (
	"context"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:  "cluster",
		Usage: "inspect and change the raft cluster of controllers",
		Subcommands: []*cli.Command{
			{
				Name:   "status",
				Usage:  "leader, term, commit and applied index, and members",
				Action: withSession(clusterStatus),
			},
			{
				Name:   "members",
				Usage:  "list the controllers in the cluster",
				Action: withSession(clusterMembers),
			},
			{
				Name:      "join",
				Usage:     "add a controller to the cluster",
				UsageText: "yunchi cluster join --id ID --raft-addr HOST:PORT --api-addr HOST:PORT [--center C]",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "id", Usage: "node ID of the new controller (required)"},
					&cli.StringFlag{Name: "raft-addr", Usage: "its raft address host:port (required)"},
					&cli.StringFlag{Name: "api-addr", Usage: "its API address host:port (required)"},
					&cli.StringFlag{Name: "center", Usage: "its center"},
				},
				Action: withSession(clusterJoin),
			},
			{
				Name:      "remove",
				Usage:     "remove a controller from the cluster",
				ArgsUsage: "ID",
				Action:    withSession(clusterRemove),
			},
			joinTokenCommand(yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER),
		},
	}
}

func clusterStatus(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	st, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ClusterStatus, error) {
		return yunchiv1.NewClusterServiceClient(cc).GetClusterStatus(ctx, &yunchiv1.GetClusterStatusRequest{})
	})
	if err != nil {
		return err
	}
	return s.out.print(st, s.out.clusterStatus(st))
}

func clusterMembers(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListMembersResponse, error) {
		return yunchiv1.NewClusterServiceClient(cc).ListMembers(ctx, &yunchiv1.ListMembersRequest{})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, s.out.members(resp.GetMembers()))
}

func clusterJoin(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	for _, f := range []string{"id", "raft-addr", "api-addr"} {
		if cCtx.String(f) == "" {
			return usagef("%s--%s is required; see '%s --help'", where(cCtx), f, commandPath(cCtx))
		}
	}
	req := &yunchiv1.JoinClusterRequest{
		Id:          cCtx.String("id"),
		RaftAddress: cCtx.String("raft-addr"),
		ApiAddress:  cCtx.String("api-addr"),
		Center:      cCtx.String("center"),
	}
	m, err := do(s.ctx, s.client, retryNever, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Member, error) {
		return yunchiv1.NewClusterServiceClient(cc).JoinCluster(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(m, s.out.members([]*yunchiv1.Member{m}))
}

func clusterRemove(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "ID")
	if err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retryNever, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListMembersResponse, error) {
		return yunchiv1.NewClusterServiceClient(cc).RemoveMember(ctx, &yunchiv1.RemoveMemberRequest{Id: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, s.out.removed(resp))
}
