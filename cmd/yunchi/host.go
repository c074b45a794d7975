package main

import (
	"context"
	"strings"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func hostCommand() *cli.Command {
	return &cli.Command{
		Name:  "host",
		Usage: "list and inspect hypervisor hosts",
		Subcommands: []*cli.Command{
			joinTokenCommand(yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_HOST),
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
			{
				Name:      "set",
				Usage:     "change a host's state, labels, owner, reservation or ratios",
				ArgsUsage: "ID",
				UsageText: "yunchi host set ID [--state ready|maintenance|draining] [--label k=v ...] [--unlabel k ...] [--owner P]\n" +
					"   [--reserve-cpu N] [--reserve-memory SIZE] [--reserve-disk SIZE] [--cpu-ratio X] [--memory-ratio Y] [--disk-ratio Z] [--force]\n\n" +
					"Down is derived from missed heartbeats and cannot be set. --owner \"\" shares the host again.\n" +
					"Labels center, site, rack and host are reserved (constraints read the host's own fields).\n" +
					"Ratios: cpu 0.1-64, memory 0.1-4, disk 0.1-16; 0 removes the host's own ratio (it inherits host group > center > default).\n" +
					"A change that would leave the host below what it already runs is refused unless --force is given.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "state", Usage: "ready, maintenance or draining"},
					&cli.StringSliceFlag{Name: "label", Usage: "set an admin label key=value (repeatable)"},
					&cli.StringSliceFlag{Name: "unlabel", Usage: "remove an admin label (repeatable)"},
					&cli.StringFlag{Name: "owner", Usage: "dedicate the host to this project (\"\": shared)"},
					&cli.Int64Flag{Name: "reserve-cpu", Usage: "vCPUs kept for the host OS"},
					&cli.StringFlag{Name: "reserve-memory", Usage: "memory kept for the host OS, e.g. 2GiB"},
					&cli.StringFlag{Name: "reserve-disk", Usage: "disk kept for the host OS, e.g. 0"},
					&cli.Float64Flag{Name: "cpu-ratio", Usage: "host CPU allocation ratio"},
					&cli.Float64Flag{Name: "memory-ratio", Usage: "host memory allocation ratio"},
					&cli.Float64Flag{Name: "disk-ratio", Usage: "host disk allocation ratio"},
					&cli.BoolFlag{Name: "force", Usage: "accept a change that overcommits the host (allocated > allocatable)"},
				},
				Action: withSession(hostSet),
			},
		},
	}
}

func hostList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	all := &yunchiv1.ListHostsResponse{}
	err := allPages(s, func(ctx context.Context, cc grpc.ClientConnInterface, token string) (*yunchiv1.ListHostsResponse, error) {
		return yunchiv1.NewHostServiceClient(cc).ListHosts(ctx, &yunchiv1.ListHostsRequest{
			Center: cCtx.String("center"), Consistent: cCtx.Bool("consistent"), PageSize: listPage, PageToken: token,
		})
	}, func(r *yunchiv1.ListHostsResponse) { all.Hosts = append(all.Hosts, r.GetHosts()...) })
	if err != nil {
		return err
	}
	return s.out.print(all, s.out.hostList(all.GetHosts()))
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

func hostSet(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "ID")
	if err != nil {
		return err
	}
	req := &yunchiv1.UpdateHostRequest{Id: args[0]}
	changed := false
	if cCtx.IsSet("state") {
		st, ok := map[string]yunchiv1.HostState{
			"ready":       yunchiv1.HostState_HOST_STATE_READY,
			"maintenance": yunchiv1.HostState_HOST_STATE_MAINTENANCE,
			"draining":    yunchiv1.HostState_HOST_STATE_DRAINING,
		}[strings.ToLower(cCtx.String("state"))]
		if !ok {
			return usagef("host set: --state %q is not valid: use ready, maintenance or draining (down is derived from heartbeats)", cCtx.String("state"))
		}
		req.State, changed = st, true
	}
	for _, l := range cCtx.StringSlice("label") {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return usagef("host set: --label %q: want key=value, e.g. cpu_model=kunpeng920", l)
		}
		if req.SetLabels == nil {
			req.SetLabels = map[string]string{}
		}
		req.SetLabels[k], changed = v, true
	}
	for _, k := range cCtx.StringSlice("unlabel") {
		req.RemoveLabels, changed = append(req.RemoveLabels, k), true
	}
	if cCtx.IsSet("owner") {
		o := cCtx.String("owner")
		req.Owner, changed = &o, true
	}
	if cCtx.IsSet("reserve-cpu") {
		n := cCtx.Int64("reserve-cpu")
		req.ReserveVcpus, changed = &n, true
	}
	if cCtx.IsSet("reserve-memory") {
		m := cCtx.String("reserve-memory")
		req.ReserveMemory, changed = &m, true
	}
	if cCtx.IsSet("reserve-disk") {
		d := cCtx.String("reserve-disk")
		req.ReserveDisk, changed = &d, true
	}
	for _, f := range []struct {
		name string
		dst  **float64
	}{{"cpu-ratio", &req.CpuRatio}, {"memory-ratio", &req.MemoryRatio}, {"disk-ratio", &req.DiskRatio}} {
		if cCtx.IsSet(f.name) {
			v := cCtx.Float64(f.name)
			*f.dst, changed = &v, true
		}
	}
	if !changed {
		return usagef("host set: nothing to change; give --state, --label, --unlabel, --owner, --reserve-* or --*-ratio")
	}
	req.Force = cCtx.Bool("force")
	h, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Host, error) {
		return yunchiv1.NewHostServiceClient(cc).UpdateHost(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(h, s.out.hostDetail(h))
}
