package main

import (
	"context"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func capacityCommand() *cli.Command {
	return &cli.Command{
		Name:   "capacity",
		Usage:  "show free and allocated resources, per center and in total",
		Flags:  []cli.Flag{consistentFlag()},
		Action: withSession(capacity),
	}
}

func capacity(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	req := &yunchiv1.GetCapacityRequest{Consistent: cCtx.Bool("consistent")}
	c, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Capacity, error) {
		return yunchiv1.NewCapacityServiceClient(cc).GetCapacity(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(c, s.out.capacity(c))
}
