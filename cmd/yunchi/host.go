package main

import (
	"context"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func hostCommand() *cli.Command {
	return &cli.Command{
		Name:  "host",
		Usage: "list and inspect hypervisor hosts",
		Subcommands: []*cli.Command{
			{
				Name:    "list",
				Aliases: []string{"ls"},
				Usage:   "list hosts with their state and allocation",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "center", Usage: "only hosts of this center"},
					consistentFlag(),
				},
				Action: withSession(hostList),
			},
			{
				Name:      "show",
				Aliases:   []string{"get"},
				Usage:     "show one host",
				ArgsUsage: "ID",
				Flags:     []cli.Flag{consistentFlag()},
				Action:    withSession(hostShow),
			},
		},
	}
}

func hostList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	req := &yunchiv1.ListHostsRequest{Center: cCtx.String("center"), Consistent: cCtx.Bool("consistent")}
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListHostsResponse, error) {
		return yunchiv1.NewHostServiceClient(cc).ListHosts(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, s.out.hostList(resp.GetHosts()))
}

func hostShow(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "ID")
	if err != nil {
		return err
	}
	req := &yunchiv1.GetHostRequest{Id: args[0], Consistent: cCtx.Bool("consistent")}
	h, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Host, error) {
		return yunchiv1.NewHostServiceClient(cc).GetHost(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(h, s.out.hostDetail(h))
}
