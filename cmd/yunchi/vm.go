package main

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

func projectFlag() cli.Flag {
	return &cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "project of the VM (controller default: \"default\")"}
}

func consistentFlag() cli.Flag {
	return &cli.BoolFlag{Name: "consistent", Usage: "read through the leader (linearizable) instead of the answering node's state"}
}

func waitFlags(what string) []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "wait", Usage: "wait until the VM is " + what + ", printing progress on stderr"},
		&cli.DurationFlag{Name: "wait-timeout", Usage: "give up waiting after this long", Value: 5 * time.Minute},
	}
}

func vmCommand() *cli.Command {
	return &cli.Command{
		Name:  "vm",
		Usage: "create, list and control virtual machines",
		Subcommands: []*cli.Command{
			vmCreateCommand(),
			{
				Name:    "list",
				Aliases: []string{"ls"},
				Usage:   "list VMs",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "only VMs of this project"},
					&cli.StringFlag{Name: "host", Usage: "only VMs placed on this host ID"},
					consistentFlag(),
				},
				Action: withSession(vmList),
			},
			{
				Name:      "show",
				Aliases:   []string{"get"},
				Usage:     "show one VM",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{projectFlag(), consistentFlag()},
				Action:    withSession(vmShow),
			},
			vmActionCommand("start", "start a stopped VM", "running", retryKeyed, startGoal,
				func(c yunchiv1.VMServiceClient) vmRPC { return c.StartVM }),
			vmActionCommand("stop", "stop a running VM", "stopped", retryKeyed, stopGoal,
				func(c yunchiv1.VMServiceClient) vmRPC { return c.StopVM }),
			vmActionCommand("reboot", "reboot a running VM", "running again", retryKeyed, rebootGoal,
				func(c yunchiv1.VMServiceClient) vmRPC { return c.RebootVM }),
			vmActionCommand("delete", "delete a VM and its disk", "gone", retryKeyed, deleteGoal,
				func(c yunchiv1.VMServiceClient) vmRPC { return c.DeleteVM }),
			vmConsoleCommand(),
			vmProtectCommand(),
		},
	}
}

func vmCreateCommand() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "create a VM and place it on a host",
		ArgsUsage: "NAME",
		UsageText: "yunchi vm create NAME [--cpu N] [--memory SIZE] [--disk SIZE] [--center C] [--project P] [--stopped] [--wait]\n" +
			"   [--constraint EXPR ...] [--group G] [--strategy binpack|spread] [--count N] [--dry-run]\n" +
			"   [--image NAME] [--user-data FILE] [--ssh-key KEY_OR_FILE ...]\n\n" +
			"Sizes take a binary unit: 512MiB, 4GiB, 1TiB. NAME: lowercase letters, digits and '-'.\n" +
			"Constraints: cpu_model=kunpeng920, rack!=r3, 'center in a1,a2', 'center notin b1'\n" +
			"(keys center, site, rack, host, or any host label).\n" +
			"--count N creates NAME-1 .. NAME-N, all or none. --dry-run shows where they would go and creates nothing.\n" +
			"--image boots from an image (the project's of that name, else the public one; see yunchi image list): the disk\n" +
			"is a copy-on-write overlay of it, by default of its virtual size. --user-data and --ssh-key go to cloud-init.",
		Flags: append([]cli.Flag{
			&cli.IntFlag{Name: "cpu", Aliases: []string{"vcpus"}, Usage: "number of vCPUs", Value: 1},
			&cli.StringFlag{Name: "memory", Usage: "memory size", Value: "1GiB"},
			&cli.StringFlag{Name: "disk", Usage: "disk size (default 20GiB; with --image, the image's virtual size)"},
			&cli.StringFlag{Name: "image", Usage: "image to boot from (yunchi image list)"},
			&cli.StringFlag{Name: "user-data", Usage: "cloud-init user-data FILE for the guest (at most 64 KiB)"},
			&cli.StringSliceFlag{Name: "ssh-key", Usage: "SSH public key for the guest: the key itself or a FILE holding one per line (repeatable)"},
			&cli.StringFlag{Name: "center", Usage: "only place on hosts of this center (default: any)"},
			projectFlag(),
			&cli.BoolFlag{Name: "stopped", Usage: "define the VM but leave it stopped"},
			&cli.StringSliceFlag{Name: "constraint", Usage: "placement constraint EXPR (repeatable; all must hold)"},
			&cli.StringFlag{Name: "group", Usage: "placement group to join (create it first: yunchi group create)"},
			&cli.StringFlag{Name: "strategy", Usage: "binpack (fill hosts up) or spread (prefer emptier hosts); default binpack"},
			&cli.IntFlag{Name: "count", Usage: "create this many VMs, NAME-1 .. NAME-N, all or none (1-100)", Value: 1},
			&cli.BoolFlag{Name: "dry-run", Usage: "show where the VMs would go, with scores and runners-up; create nothing"},
		}, waitFlags("running (stopped with --stopped)")...),
		Action: withSession(vmCreate),
	}
}

func vmCreate(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	cpu := cCtx.Int("cpu")
	if cpu > math.MaxInt32 || cpu < math.MinInt32 {
		return usagef("--cpu %d: out of range", cpu)
	}
	req := &yunchiv1.CreateVMRequest{
		Name:        args[0],
		Project:     cCtx.String("project"),
		Vcpus:       int32(cpu),
		Memory:      cCtx.String("memory"),
		Disk:        cCtx.String("disk"),
		Center:      cCtx.String("center"),
		Stopped:     cCtx.Bool("stopped"),
		Constraints: cCtx.StringSlice("constraint"),
		Group:       cCtx.String("group"),
		Strategy:    cCtx.String("strategy"),
		DryRun:      cCtx.Bool("dry-run"),
		Image:       cCtx.String("image"),
	}
	if path := cCtx.String("user-data"); path != "" {
		b, err := readSmallFile(path, 64<<10)
		if err != nil {
			return usagef("vm create: --user-data: %v", err)
		}
		req.UserData = string(b)
	}
	keys, err := sshKeys(cCtx.StringSlice("ssh-key"))
	if err != nil {
		return usagef("vm create: --ssh-key: %v", err)
	}
	req.SshAuthorizedKeys = keys
	count := cCtx.Int("count")
	if count < 1 || count > 100 {
		return usagef("vm create: --count %d is out of range: give 1 to 100", count)
	}
	if req.Strategy != "" {
		if _, err := scheduler.ParseStrategy(req.Strategy); err != nil {
			return usagef("vm create: --strategy %q is not valid: use binpack or spread", req.Strategy)
		}
	}
	if count > 1 || req.DryRun {
		req.Count = int32(count)
		return vmCreateMany(cCtx, s, req)
	}
	vm, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.VM, error) {
		return yunchiv1.NewVMServiceClient(cc).CreateVM(ctx, req)
	})
	if err != nil {
		return err
	}
	if cCtx.Bool("wait") {
		vm, _, err = s.waitVM(vm.GetName(), orDefault(vm.GetProject(), req.Project), createdGoal(vm, req.Stopped), cCtx.Duration("wait-timeout"))
		if err != nil {
			return err
		}
	}
	return s.out.print(vm, s.out.vmDetail(vm))
}

func vmList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	all := &yunchiv1.ListVMsResponse{}
	err := allPages(s, func(ctx context.Context, cc grpc.ClientConnInterface, token string) (*yunchiv1.ListVMsResponse, error) {
		return yunchiv1.NewVMServiceClient(cc).ListVMs(ctx, &yunchiv1.ListVMsRequest{
			Project: cCtx.String("project"), HostId: cCtx.String("host"), Consistent: cCtx.Bool("consistent"),
			PageSize: listPage, PageToken: token,
		})
	}, func(r *yunchiv1.ListVMsResponse) { all.Vms = append(all.Vms, r.GetVms()...) })
	if err != nil {
		return err
	}
	return s.out.print(all, s.out.vmList(all.GetVms()))
}

func vmShow(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	req := &yunchiv1.GetVMRequest{Name: args[0], Project: cCtx.String("project"), Consistent: cCtx.Bool("consistent")}
	vm, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.VM, error) {
		return yunchiv1.NewVMServiceClient(cc).GetVM(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(vm, s.out.vmDetail(vm))
}

type vmRPC func(ctx context.Context, in *yunchiv1.VMActionRequest, opts ...grpc.CallOption) (*yunchiv1.VM, error)

// vmActionCommand builds start, stop, reboot and delete: one RPC on a named
// VM, then optionally a wait for the goal state.
func vmActionCommand(name, usage, waitWhat string, r retry, goal func(*yunchiv1.VM) waitGoal, rpc func(yunchiv1.VMServiceClient) vmRPC) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "NAME",
		Flags:     append([]cli.Flag{projectFlag()}, waitFlags(waitWhat)...),
		Action: withSession(func(cCtx *cli.Context, s *session) error {
			args, err := needArgs(cCtx, "NAME")
			if err != nil {
				return err
			}
			req := &yunchiv1.VMActionRequest{Name: args[0], Project: cCtx.String("project")}
			vm, err := do(s.ctx, s.client, r, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.VM, error) {
				return rpc(yunchiv1.NewVMServiceClient(cc))(ctx, req)
			})
			if err != nil {
				return err
			}
			gone := false
			if cCtx.Bool("wait") {
				g := goal(vm)
				g.written = vm.GetRevision()
				vm, gone, err = s.waitVM(orDefault(vm.GetName(), req.Name), orDefault(vm.GetProject(), req.Project), g, cCtx.Duration("wait-timeout"))
				if err != nil {
					return err
				}
			}
			if gone && !s.out.json {
				_, err := fmt.Fprintf(s.out.w, "vm %s deleted\n", req.Name)
				return err
			}
			return s.out.print(vm, s.out.vmDetail(vm))
		}),
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// vmCreateMany creates --count VMs in one call (all or none), or with
// --dry-run shows where they would go.
func vmCreateMany(cCtx *cli.Context, s *session, req *yunchiv1.CreateVMRequest) error {
	resp, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.CreateVMsResponse, error) {
		return yunchiv1.NewVMServiceClient(cc).CreateVMs(ctx, req)
	})
	if err != nil {
		return err
	}
	if resp.GetDryRun() {
		return s.out.print(resp, s.out.decisions(resp))
	}
	if cCtx.Bool("wait") {
		for i, vm := range resp.GetVms() {
			done, _, err := s.waitVM(vm.GetName(), orDefault(vm.GetProject(), req.Project), createdGoal(vm, req.Stopped), cCtx.Duration("wait-timeout"))
			if err != nil {
				return err
			}
			resp.Vms[i] = done
		}
	}
	return s.out.print(resp, s.out.vmList(resp.GetVms()))
}

// --- usage, printed beside allocation by vm show (output.go) ---

// cpuUsed is " (CPU time used: 1m2s)"; "" without usage.
func cpuUsed(u *yunchiv1.VMUsage) string {
	if u == nil {
		return ""
	}
	d := time.Duration(min(u.GetCpuTimeNs(), math.MaxInt64))
	if d < time.Minute {
		d = d.Round(10 * time.Millisecond)
	} else {
		d = d.Round(time.Second)
	}
	return " (CPU time used: " + d.String() + ")"
}

// memoryUsed is " (guest has 1 GiB, 300 MiB of it unused)": the balloon's
// size and what the guest leaves unused, when it says.
func memoryUsed(u *yunchiv1.VMUsage) string {
	if u.GetMemoryBytes() <= 0 {
		return ""
	}
	s := " (guest has " + scheduler.FormatBytes(u.GetMemoryBytes())
	if u.GetMemoryUnusedBytes() > 0 {
		s += ", " + scheduler.FormatBytes(u.GetMemoryUnusedBytes()) + " of it unused"
	}
	return s + ")"
}

// diskUsed is " (read 5 MiB, written 7 MiB)" since the guest started.
func diskUsed(u *yunchiv1.VMUsage) string {
	if u == nil {
		return ""
	}
	return " (read " + formatUbytes(u.GetDiskReadBytes()) + ", written " + formatUbytes(u.GetDiskWriteBytes()) + ")"
}

// netUsed is "received 1.2 MiB, sent 300 KiB" since the guest started.
func netUsed(u *yunchiv1.VMUsage) string {
	return "received " + formatUbytes(u.GetNetRxBytes()) + ", sent " + formatUbytes(u.GetNetTxBytes())
}

func formatUbytes(n uint64) string { return scheduler.FormatBytes(int64(min(n, math.MaxInt64))) }

// hostMemoryUse is what host show prints beside the observed free memory:
// how much is in use out of the capacity, and how much is allocated to VMs.
func hostMemoryUse(h *yunchiv1.Host) string {
	capa, free := h.GetCapacity().GetMemoryBytes(), h.GetStats().GetMemoryFreeBytes()
	s := " ("
	if capa > 0 && free <= capa {
		s += "in use " + scheduler.FormatBytes(capa-free) + " of " + scheduler.FormatBytes(capa) + "; "
	}
	return s + "allocated to VMs " + scheduler.FormatBytes(h.GetAllocated().GetMemoryBytes()) + ")"
}
