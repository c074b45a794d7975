package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// joinTokenCommand is `yunchi host join-token create` and `yunchi cluster
// join-token create`: a one-time token for an agent or a controller to join
// a TLS cluster with.
func joinTokenCommand(kind yunchiv1.JoinTokenKind) *cli.Command {
	what, joiner := "an agent", "yunchid agent --join-token TOKEN --ca-cert-hash HASH --credentials-dir DIR"
	if kind == yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER {
		what, joiner = "a controller", "yunchid controller --join ADDR --join-token TOKEN --ca-cert-hash HASH"
	}
	return &cli.Command{
		Name:  "join-token",
		Usage: "one-time tokens " + what + " joins a TLS cluster with",
		Subcommands: []*cli.Command{{
			Name:      "create",
			Usage:     "make a one-time join token for " + what + " (shown once): " + joiner,
			UsageText: "yunchi " + map[bool]string{true: "cluster", false: "host"}[kind == yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER] + " join-token create [--ttl 1h] [--description TEXT]",
			Flags: []cli.Flag{
				&cli.DurationFlag{Name: "ttl", Value: time.Hour, Usage: "how long the token can be used (1s to 168h)"},
				&cli.StringFlag{Name: "description", Usage: "what the token is for"},
			},
			Action: withSession(func(cCtx *cli.Context, s *session) error {
				if _, err := needArgs(cCtx); err != nil {
					return err
				}
				ttl := cCtx.Duration("ttl")
				if ttl < time.Second || ttl > 7*24*time.Hour {
					return usagef("--ttl %s is out of range: give 1s to 168h", ttl)
				}
				jt, err := do(s.ctx, s.client, retryNever, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.JoinToken, error) {
					return yunchiv1.NewClusterServiceClient(cc).CreateJoinToken(ctx, &yunchiv1.CreateJoinTokenRequest{
						Kind: kind, TtlSeconds: int64(ttl / time.Second), Description: cCtx.String("description"),
					})
				})
				if err != nil {
					return err
				}
				return s.out.print(jt, func(w io.Writer) {
					fmt.Fprintf(w, "token:         %s\n", jt.Token)
					fmt.Fprintf(w, "ca-cert-hash:  %s\n", jt.CaCertHash)
					fmt.Fprintf(w, "expires:       %s\n", s.out.timestamp(jt.Expires))
					fmt.Fprintf(w, "(shown once; it works once)\n")
				})
			}),
		}},
	}
}
