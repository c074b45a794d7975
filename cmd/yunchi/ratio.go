package main

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func ratioCommand() *cli.Command {
	return &cli.Command{
		Name:  "ratio",
		Usage: "allocation (overcommit) ratios per center and host group",
		Subcommands: []*cli.Command{
			{
				Name:  "set",
				Usage: "set a center's or a host group's ratios",
				UsageText: "yunchi ratio set (--center C | --host-group G) [--cpu X] [--memory Y] [--disk Z] [--force]\n\n" +
					"A host group is the hosts labelled host_group=G (yunchi host set ID --label host_group=G).\n" +
					"Precedence: host > host group > center > default (cpu 4, memory 1, disk 1).\n" +
					"Ratios: cpu 0.1-64, memory 0.1-4, disk 0.1-16; 0 removes the setting for that dimension.\n" +
					"A change that would leave hosts below what they already run is refused, naming them, unless --force is given.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "center", Usage: "the center to set"},
					&cli.StringFlag{Name: "host-group", Usage: "the host group to set"},
					&cli.Float64Flag{Name: "cpu", Usage: "CPU ratio"},
					&cli.Float64Flag{Name: "memory", Usage: "memory ratio"},
					&cli.Float64Flag{Name: "disk", Usage: "disk ratio"},
					&cli.BoolFlag{Name: "force", Usage: "accept a change that overcommits hosts (allocated > allocatable)"},
				},
				Action: withSession(ratioSet),
			},
			{
				Name:    "list",
				Aliases: []string{"ls"},
				Usage:   "list the defaults and every center and host group setting",
				Flags:   []cli.Flag{consistentFlag()},
				Action:  withSession(ratioList),
			},
		},
	}
}

func ratioSet(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	req := &yunchiv1.SetRatiosRequest{}
	switch c, g := cCtx.IsSet("center"), cCtx.IsSet("host-group"); {
	case c && g:
		return usagef("ratio set: give --center or --host-group, not both")
	case c:
		req.Scope, req.Name = "center", cCtx.String("center")
	case g:
		req.Scope, req.Name = "host_group", cCtx.String("host-group")
	default:
		return usagef("ratio set: give --center C or --host-group G")
	}
	for _, f := range []struct {
		name string
		dst  **float64
	}{{"cpu", &req.Cpu}, {"memory", &req.Memory}, {"disk", &req.Disk}} {
		if cCtx.IsSet(f.name) {
			v := cCtx.Float64(f.name)
			*f.dst = &v
		}
	}
	if req.Cpu == nil && req.Memory == nil && req.Disk == nil {
		return usagef("ratio set: nothing to set; give --cpu, --memory or --disk")
	}
	req.Force = cCtx.Bool("force")
	r, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.RatioSetting, error) {
		return yunchiv1.NewRatioServiceClient(cc).SetRatios(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(r, func(w io.Writer) { ratioRows(w, nil, []*yunchiv1.RatioSetting{r}) })
}

func ratioList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	req := &yunchiv1.ListRatiosRequest{Consistent: cCtx.Bool("consistent")}
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListRatiosResponse, error) {
		return yunchiv1.NewRatioServiceClient(cc).ListRatios(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) { ratioRows(w, resp.GetDefaults(), resp.GetSettings()) })
}

// ratio prints a ratio, "-" when not set (inherited).
func ratio(v float64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

func ratioRows(w io.Writer, defaults *yunchiv1.Ratios, settings []*yunchiv1.RatioSetting) {
	fmt.Fprintln(w, "SCOPE\tNAME\tCPU\tMEMORY\tDISK")
	if defaults != nil {
		fmt.Fprintf(w, "default\t-\t%s\t%s\t%s\n", ratio(defaults.GetCpu()), ratio(defaults.GetMemory()), ratio(defaults.GetDisk()))
	}
	for _, r := range settings {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.GetScope(), r.GetName(), ratio(r.GetRatios().GetCpu()), ratio(r.GetRatios().GetMemory()), ratio(r.GetRatios().GetDisk()))
	}
}
