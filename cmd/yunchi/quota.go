package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

func quotaCommand() *cli.Command {
	return &cli.Command{
		Name:  "quota",
		Usage: "limits on what the VMs of a department and of its projects take",
		Subcommands: []*cli.Command{
			{
				Name:  "set",
				Usage: "set a department's or project's quota",
				UsageText: "yunchi quota set --dept D [--project P] [--cpu N] [--memory 64GiB] [--disk 2TiB] [--vms N] [--clear DIM]...\n\n" +
					"Without --project: the department's quota (security admins). With it: that project's,\n" +
					"never above the department's in any dimension (department admins may set these).\n" +
					"Dimensions left out stay as they are; \"unlimited\" as a value, or --clear cpu|memory|disk|vms,\n" +
					"removes a limit. A limit may be set below what is in use: the VMs stay, new ones are refused\n" +
					"(exit code 10) until enough are deleted. Deleting VMs count until they are gone.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "dept", Aliases: []string{"department"}, Usage: "the department"},
					&cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "a project of the department (default: the department's own quota)"},
					&cli.StringFlag{Name: "cpu", Usage: "vCPUs, or unlimited"},
					&cli.StringFlag{Name: "memory", Usage: "memory with a binary unit (64GiB), or unlimited"},
					&cli.StringFlag{Name: "disk", Usage: "disk with a binary unit (2TiB), or unlimited"},
					&cli.StringFlag{Name: "vms", Usage: "number of VMs, or unlimited"},
					&cli.StringSliceFlag{Name: "clear", Usage: "remove the limit of a dimension: cpu, memory, disk or vms (repeatable)"},
				},
				Action: withSession(quotaSet),
			},
			{
				Name:    "show",
				Aliases: []string{"list", "ls"},
				Usage:   "show limits and use per department and project",
				UsageText: "yunchi quota show [--dept D] [--project P]\n\n" +
					"Each cell is used/limit (\"unlimited\" when there is none).",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "dept", Aliases: []string{"department"}, Usage: "only this department and its projects"},
					&cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "only this project of --dept"},
					consistentFlag(),
				},
				Action: withSession(quotaShow),
			},
		},
	}
}

func quotaSet(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	req := &yunchiv1.SetQuotaRequest{Department: cCtx.String("dept"), Project: cCtx.String("project")}
	if req.Department == "" {
		return usagef("quota set: give --dept D (the department, also for a project's quota)")
	}
	clear := map[string]bool{}
	for _, c := range cCtx.StringSlice("clear") {
		c = strings.ToLower(strings.TrimSpace(c))
		switch c {
		case "cpu", "vcpus", "memory", "disk", "vms":
			if c == "vcpus" {
				c = "cpu"
			}
			clear[c] = true
		default:
			return usagef("quota set: --clear %q: give cpu, memory, disk or vms", c)
		}
	}
	count := func(name string, dst **int64) error {
		if !cCtx.IsSet(name) {
			return nil
		}
		v := strings.TrimSpace(cCtx.String(name))
		if strings.EqualFold(v, "unlimited") {
			clear[name] = true
			return nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return usagef("quota set: --%s %q: give a whole number, 0 or more, or unlimited", name, v)
		}
		*dst = &n
		return nil
	}
	size := func(name string, dst **string) {
		if !cCtx.IsSet(name) {
			return
		}
		v := strings.TrimSpace(cCtx.String(name))
		if strings.EqualFold(v, "unlimited") {
			clear[name] = true
			return
		}
		*dst = &v // the controller parses and checks it, as for VM sizes
	}
	if err := count("cpu", &req.Vcpus); err != nil {
		return err
	}
	if err := count("vms", &req.Vms); err != nil {
		return err
	}
	size("memory", &req.Memory)
	size("disk", &req.Disk)
	for _, d := range []string{"cpu", "memory", "disk", "vms"} {
		if !clear[d] {
			continue
		}
		set := (d == "cpu" && req.Vcpus != nil) || (d == "memory" && req.Memory != nil) || (d == "disk" && req.Disk != nil) || (d == "vms" && req.Vms != nil)
		if set {
			return usagef("quota set: %s is both set and cleared: do one", d)
		}
		req.Clear = append(req.Clear, d)
	}
	if req.Vcpus == nil && req.Memory == nil && req.Disk == nil && req.Vms == nil && len(req.Clear) == 0 {
		return usagef("quota set: nothing to set; give --cpu, --memory, --disk, --vms or --clear")
	}
	q, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Quota, error) {
		return yunchiv1.NewQuotaServiceClient(cc).SetQuota(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(q, func(w io.Writer) { quotaRows(w, []*yunchiv1.Quota{q}) })
}

func quotaShow(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	dept, project := cCtx.String("dept"), cCtx.String("project")
	if project != "" {
		if dept == "" {
			return usagef("quota show: --project needs --dept D, the project's department")
		}
		q, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Quota, error) {
			return yunchiv1.NewQuotaServiceClient(cc).GetQuota(ctx, &yunchiv1.GetQuotaRequest{Department: dept, Project: project, Consistent: cCtx.Bool("consistent")})
		})
		if err != nil {
			return err
		}
		return s.out.print(q, func(w io.Writer) { quotaRows(w, []*yunchiv1.Quota{q}) })
	}
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListQuotasResponse, error) {
		return yunchiv1.NewQuotaServiceClient(cc).ListQuotas(ctx, &yunchiv1.ListQuotasRequest{Department: dept, Consistent: cCtx.Bool("consistent")})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) { quotaRows(w, resp.GetQuotas()) })
}

// usedOf is "used/limit" for one dimension.
func usedOf(used int64, limit *int64, bytes bool) string {
	f := func(n int64) string {
		if bytes {
			return scheduler.FormatBytes(n)
		}
		return strconv.FormatInt(n, 10)
	}
	l := "unlimited"
	if limit != nil {
		l = f(*limit)
	}
	return f(used) + "/" + l
}

func quotaRows(w io.Writer, qs []*yunchiv1.Quota) {
	fmt.Fprintln(w, "DEPARTMENT\tPROJECT\tVCPUS\tMEMORY\tDISK\tVMS")
	for _, q := range qs {
		l, u := q.GetLimit(), q.GetUsed()
		if l == nil {
			l = &yunchiv1.QuotaLimits{}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", q.GetDepartment(), dash(q.GetProject()),
			usedOf(u.GetVcpus(), l.Vcpus, false), usedOf(u.GetMemoryBytes(), l.MemoryBytes, true),
			usedOf(u.GetDiskBytes(), l.DiskBytes, true), usedOf(u.GetVms(), l.Vms, false))
	}
}
