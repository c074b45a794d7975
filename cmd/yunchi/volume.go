package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/api"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// volumePoll is how often --wait looks at a volume.
const volumePoll = 200 * time.Millisecond

func volumeCommand() *cli.Command {
	project := &cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "project of the volume (controller default: \"default\")"}
	wait := func(what string) []cli.Flag {
		return []cli.Flag{
			&cli.BoolFlag{Name: "wait", Usage: "wait until the volume is " + what + ", printing progress on stderr"},
			&cli.DurationFlag{Name: "wait-timeout", Usage: "give up waiting after this long", Value: 2 * time.Minute},
		}
	}
	return &cli.Command{
		Name:  "volume",
		Usage: "data disks for VMs: created once, attached to one VM at a time (also while it runs)",
		Description: "A volume lives in the storage pool of one host: the host of the first VM it is attached to, if that\n" +
			"host has room for it; from then on it attaches to VMs on that host only. Its size counts against the\n" +
			"project's and department's disk quota from its create, and against its host's disk from its first attach.\n" +
			"The guest sees it as /dev/disk/by-id/virtio-<id> (the volume's id, see `yunchi volume show`).",
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create a volume (placed on a host at its first attach)",
				ArgsUsage: "NAME",
				UsageText: "yunchi volume create NAME --size SIZE [--center C] [--project P]",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "size", Usage: "its size, e.g. 100GiB (binary units: MiB, GiB, TiB)"},
					&cli.StringFlag{Name: "center", Usage: "the center it must live in (default: any)"},
					project,
				},
				Action: withSession(volumeCreate),
			},
			{
				Name:    "list",
				Aliases: []string{"ls"},
				Usage:   "list volumes",
				Flags:   []cli.Flag{&cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "this project's volumes (default: all you can see)"}, consistentFlag()},
				Action:  withSession(volumeList),
			},
			{
				Name:      "show",
				Aliases:   []string{"get"},
				Usage:     "show one volume",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{project, consistentFlag()},
				Action:    withSession(volumeShow),
			},
			{
				Name:      "attach",
				Usage:     "attach a volume to a VM of its project (hot-plugged into a running guest)",
				ArgsUsage: "NAME",
				UsageText: "yunchi volume attach NAME --vm VM [--project P] [--wait]",
				Flags:     append([]cli.Flag{&cli.StringFlag{Name: "vm", Usage: "the VM to attach it to"}, project}, wait("attached")...),
				Action:    withSession(volumeAttach),
			},
			{
				Name:      "detach",
				Usage:     "detach a volume from its VM (it stays on its host)",
				ArgsUsage: "NAME",
				Flags:     append([]cli.Flag{project}, wait("detached")...),
				Action:    withSession(volumeDetach),
			},
			{
				Name:      "delete",
				Aliases:   []string{"rm"},
				Usage:     "delete a volume and its data (refused while attached)",
				ArgsUsage: "NAME",
				Flags:     append([]cli.Flag{project}, wait("deleted")...),
				Action:    withSession(volumeDelete),
			},
		},
	}
}

func volumeCreate(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	if cCtx.String("size") == "" {
		return usagef("volume create: --size is required, e.g. --size 100GiB")
	}
	size, err := api.ParseSize(cCtx.String("size"))
	if err != nil {
		return usagef("volume create: --size: %v", err)
	}
	req := &yunchiv1.CreateVolumeRequest{Name: args[0], Project: cCtx.String("project"), SizeBytes: size, Center: cCtx.String("center")}
	// retryKeyed: a resend after a create that went through gets the same volume, not "already exists".
	v, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Volume, error) {
		return yunchiv1.NewVolumeServiceClient(cc).CreateVolume(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(v, s.out.volumeDetail(v))
}

func volumeList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	all := &yunchiv1.ListVolumesResponse{}
	err := allPages(s, func(ctx context.Context, cc grpc.ClientConnInterface, token string) (*yunchiv1.ListVolumesResponse, error) {
		return yunchiv1.NewVolumeServiceClient(cc).ListVolumes(ctx, &yunchiv1.ListVolumesRequest{
			Project: cCtx.String("project"), Consistent: cCtx.Bool("consistent"), PageSize: listPage, PageToken: token,
		})
	}, func(r *yunchiv1.ListVolumesResponse) { all.Volumes = append(all.Volumes, r.GetVolumes()...) })
	if err != nil {
		return err
	}
	return s.out.print(all, s.out.volumeList(all.GetVolumes()))
}

func volumeShow(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	req := &yunchiv1.GetVolumeRequest{Name: args[0], Project: cCtx.String("project"), Consistent: cCtx.Bool("consistent")}
	v, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Volume, error) {
		return yunchiv1.NewVolumeServiceClient(cc).GetVolume(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(v, s.out.volumeDetail(v))
}

func volumeAttach(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	if cCtx.String("vm") == "" {
		return usagef("volume attach: --vm is required: the VM to attach %s to", args[0])
	}
	req := &yunchiv1.AttachVolumeRequest{Name: args[0], Project: cCtx.String("project"), Vm: cCtx.String("vm")}
	v, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Volume, error) {
		return yunchiv1.NewVolumeServiceClient(cc).AttachVolume(ctx, req)
	})
	if err != nil {
		return err
	}
	if cCtx.Bool("wait") {
		if v, err = s.waitVolume(v, "attached", cCtx.Duration("wait-timeout"), func(v *yunchiv1.Volume) bool {
			return v.GetState() == yunchiv1.VolumeState_VOLUME_STATE_ATTACHED
		}); err != nil {
			return err
		}
	}
	return s.out.print(v, func(w io.Writer) {
		fmt.Fprintf(w, "volume %s %s to %s (%s)\n", v.GetName(), volumeVerb(v, "attached", "attaching"), v.GetVm(), serialPath(v))
	})
}

func volumeDetach(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	req := &yunchiv1.DetachVolumeRequest{Name: args[0], Project: cCtx.String("project")}
	v, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Volume, error) {
		return yunchiv1.NewVolumeServiceClient(cc).DetachVolume(ctx, req)
	})
	if err != nil {
		return err
	}
	if cCtx.Bool("wait") {
		if v, err = s.waitVolume(v, "detached", cCtx.Duration("wait-timeout"), func(v *yunchiv1.Volume) bool {
			return v.GetState() == yunchiv1.VolumeState_VOLUME_STATE_AVAILABLE
		}); err != nil {
			return err
		}
	}
	return s.out.print(v, func(w io.Writer) {
		fmt.Fprintf(w, "volume %s %s\n", v.GetName(), volumeVerb(v, "detached", "detaching"))
	})
}

func volumeDelete(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	req := &yunchiv1.DeleteVolumeRequest{Name: args[0], Project: cCtx.String("project")}
	// retryKeyed: a resend after a delete that went through gets its first answer, not "not found".
	v, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Volume, error) {
		return yunchiv1.NewVolumeServiceClient(cc).DeleteVolume(ctx, req)
	})
	if err != nil {
		return err
	}
	gone := v.GetHostId() == "" // never placed: gone at once
	if cCtx.Bool("wait") && !gone {
		if _, err = s.waitVolume(v, "deleted", cCtx.Duration("wait-timeout"), nil); err != nil {
			return err
		}
		gone = true
	}
	return s.out.print(v, func(w io.Writer) {
		if gone {
			fmt.Fprintf(w, "volume %s deleted\n", v.GetName())
		} else {
			fmt.Fprintf(w, "volume %s is being deleted from host %s\n", v.GetName(), v.GetHostId())
		}
	})
}

// volumeVerb says done once the volume is there, doing before.
func volumeVerb(v *yunchiv1.Volume, done, doing string) string {
	switch v.GetState() {
	case yunchiv1.VolumeState_VOLUME_STATE_ATTACHED, yunchiv1.VolumeState_VOLUME_STATE_AVAILABLE:
		return done
	}
	return doing
}

// serialPath is where the guest finds the volume.
func serialPath(v *yunchiv1.Volume) string { return "/dev/disk/by-id/virtio-" + v.GetId() }

// waitVolume polls the volume until done holds (nil done: until it is
// gone), printing each new state on stderr. It gives up after timeout.
func (s *session) waitVolume(v *yunchiv1.Volume, want string, timeout time.Duration, done func(*yunchiv1.Volume) bool) (*yunchiv1.Volume, error) {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	req := &yunchiv1.GetVolumeRequest{Name: v.GetName(), Project: v.GetProject(), Consistent: true}
	last := ""
	for {
		cur, err := do(ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Volume, error) {
			return yunchiv1.NewVolumeServiceClient(cc).GetVolume(ctx, req)
		})
		switch {
		case err == nil:
			v = cur
			line := volumeState(v.GetState())
			if v.GetMessage() != "" {
				line += ": " + v.GetMessage()
			}
			if line != last {
				fmt.Fprintf(s.stderr, "%s: %s\n", v.GetName(), line)
				last = line
			}
			if done != nil && done(v) {
				return v, nil
			}
		case status.Code(err) == codes.NotFound && done == nil:
			fmt.Fprintf(s.stderr, "%s: deleted\n", v.GetName())
			return v, nil
		case ctx.Err() == nil:
			return v, err
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return v, fmt.Errorf("volume %s not %s after %s: it is %s%s", v.GetName(), want, timeout, volumeState(v.GetState()), orEmpty(": ", v.GetMessage()))
			}
			return v, ctx.Err()
		case <-time.After(volumePoll):
		}
	}
}

func orEmpty(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

func volumeState(st yunchiv1.VolumeState) string { return enumWord(st.String(), "VOLUME_STATE_") }

func (p *printer) volumeList(vols []*yunchiv1.Volume) func(io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tPROJECT\tSIZE\tSTATE\tVM\tHOST\tCENTER\tAGE")
		for _, v := range vols {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.GetName(), v.GetProject(), scheduler.FormatBytes(v.GetSizeBytes()),
				volumeState(v.GetState()), dash(v.GetVm()), dash(v.GetHostId()), dash(v.GetCenter()), p.age(v.GetCreatedAt()))
		}
	}
}

func (p *printer) volumeDetail(v *yunchiv1.Volume) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "Name", v.GetName())
		kv(w, "Project", v.GetProject())
		kv(w, "ID", v.GetId())
		kv(w, "Size", scheduler.FormatBytes(v.GetSizeBytes())+" ("+strconv.FormatInt(v.GetSizeBytes(), 10)+" bytes)")
		kv(w, "State", volumeState(v.GetState()))
		kv(w, "VM", dash(v.GetVm()))
		kv(w, "Host", orDefault(v.GetHostId(), "- (placed at its first attach)"))
		kv(w, "Center", orDefault(v.GetCenter(), "- (any)"))
		kv(w, "Guest device", serialPath(v))
		kv(w, "Message", dash(v.GetMessage()))
		kv(w, "Created", p.timestamp(v.GetCreatedAt()))
		kv(w, "Updated", p.timestamp(v.GetUpdatedAt()))
		kv(w, "Revision", strconv.FormatUint(v.GetRevision(), 10))
	}
}
