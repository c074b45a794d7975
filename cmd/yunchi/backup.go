package main

// Restore points in the centers' backup repositories: yunchi backup list,
// restore, run, verify and gc.

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// backupPoll is how often backup run --wait looks for the new points.
const backupPoll = 500 * time.Millisecond

func backupCommand() *cli.Command {
	project := &cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "project of the VM (controller default: \"default\")"}
	center := func(usage string) cli.Flag { return &cli.StringFlag{Name: "center", Usage: usage} }
	return &cli.Command{
		Name:  "backup",
		Usage: "restore points of VMs in the centers' backup repositories: list, restore, run now, verify, collect garbage",
		Description: "Backups run by themselves as the VM's protection policy says (yunchi policy, yunchi dr status):\n" +
			"a crash-consistent copy of every disk, stored as sha256-addressed chunks in the target center's\n" +
			"repository, where chunks shared by points and VMs are stored once.",
		Subcommands: []*cli.Command{
			{
				Name:      "list",
				Aliases:   []string{"ls"},
				Usage:     "list a VM's restore points, newest first (also of a deleted VM, by the name it had)",
				ArgsUsage: "VM",
				Flags:     []cli.Flag{project, center("only this center's points (default: every center's)")},
				Action:    withSession(backupList),
			},
			{
				Name:      "restore",
				Usage:     "create a new VM from a restore point, placed in the center asked",
				ArgsUsage: "VM",
				UsageText: "yunchi backup restore VM [--point ID] [--center C] [--as NEW] [--project P] [--wait]\n\n" +
					"The new VM gets the point's shape and disks: its host rebuilds them from the repository,\n" +
					"checking every chunk, before it first starts. It counts against quotas like any VM.",
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "point", Usage: "the restore point ID (yunchi backup list; default: the VM's newest in any center, of two taken within a second the one in --center)"},
					center("the center to place the new VM in (default: the point's)"),
					&cli.StringFlag{Name: "as", Usage: "the new VM's name (default: VM-restored)"},
					project,
				}, waitFlags("running")...),
				Action: withSession(backupRestore),
			},
			{
				Name:      "run",
				Usage:     "back a VM up now, outside its schedule",
				ArgsUsage: "VM",
				UsageText: "yunchi backup run VM [--center C] [--project P] [--wait]\n\n" +
					"Starts a backup to every target center of the VM's policy, or to --center only. With --wait it\n" +
					"waits for a new restore point in each; a backup that fails ends the wait with its error\n" +
					"(exit code 7).",
				Flags: []cli.Flag{
					center("back up to this center only (default: every target of the VM's policy)"),
					project,
					&cli.BoolFlag{Name: "wait", Usage: "wait until each backup has made its restore point, printing progress on stderr"},
					&cli.DurationFlag{Name: "wait-timeout", Usage: "give up waiting after this long", Value: 10 * time.Minute},
				},
				Action: withSession(backupRun),
			},
			{
				Name:  "verify",
				Usage: "re-read every chunk of a center's repository and check its sha256",
				UsageText: "yunchi backup verify --center C\n\n" +
					"Prints what was checked, every damaged chunk and manifest, and the restore points that use\n" +
					"them (they cannot be restored). It reads the whole repository: no --timeout applies.",
				Description: fmt.Sprintf("Exits %d when anything is damaged.", exitBackupDamaged),
				Flags:       []cli.Flag{center("the center whose repository is checked")},
				Action:      withSession(backupVerify),
			},
			{
				Name:  "gc",
				Usage: "remove the chunks of a center's repository that no restore point uses",
				UsageText: "yunchi backup gc --center C\n\n" +
					"Chunks stored in the last hour are kept (a backup in flight may be about to use them).\n" +
					"No --timeout applies.",
				Flags:  []cli.Flag{center("the center whose repository is cleaned")},
				Action: withSession(backupGC),
			},
		},
	}
}

func backupList(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "VM")
	if err != nil {
		return err
	}
	req := &yunchiv1.ListRestorePointsRequest{Vm: args[0], Project: cCtx.String("project"), Center: cCtx.String("center")}
	resp, err := listPoints(s.ctx, s, req)
	if err != nil {
		return err
	}
	return s.out.print(resp, s.out.pointList(resp.GetPoints()))
}

func listPoints(ctx context.Context, s *session, req *yunchiv1.ListRestorePointsRequest) (*yunchiv1.ListRestorePointsResponse, error) {
	return do(ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListRestorePointsResponse, error) {
		return yunchiv1.NewBackupServiceClient(cc).ListRestorePoints(ctx, req)
	})
}

func backupRestore(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "VM")
	if err != nil {
		return err
	}
	req := &yunchiv1.RestoreVMRequest{Vm: args[0], Project: cCtx.String("project"), Point: cCtx.String("point"),
		Center: cCtx.String("center"), As: cCtx.String("as")}
	vm, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.VM, error) {
		return yunchiv1.NewBackupServiceClient(cc).RestoreVM(ctx, req)
	})
	if err != nil {
		return err
	}
	if cCtx.Bool("wait") {
		if rp := vm.GetRestoredFrom(); rp != "" {
			fmt.Fprintf(s.stderr, "%s: restoring from %s\n", vm.GetName(), rp)
		}
		vm, _, err = s.waitVM(vm.GetName(), orDefault(vm.GetProject(), req.Project), createdGoal(vm, false), cCtx.Duration("wait-timeout"))
		if err != nil {
			return err
		}
	}
	return s.out.print(vm, s.out.vmDetail(vm))
}

func backupRun(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "VM")
	if err != nil {
		return err
	}
	name, project, center := args[0], cCtx.String("project"), cCtx.String("center")
	wait := cCtx.Bool("wait")
	timeout := cCtx.Duration("wait-timeout")
	if wait && timeout <= 0 {
		return usagef("backup run: --wait-timeout must be positive")
	}
	// What is there before, so that --wait knows what is new: the points,
	// and each target's job as GetDRStatus tells it.
	var before map[string]bool
	var jobsBefore map[string]string
	if wait {
		pts, err := listPoints(s.ctx, s, &yunchiv1.ListRestorePointsRequest{Vm: name, Project: project, Center: center})
		if err != nil {
			return err
		}
		before = map[string]bool{}
		for _, p := range pts.GetPoints() {
			before[p.GetId()] = true
		}
		if jobsBefore, err = s.jobStates(s.ctx, name, project); err != nil {
			return err
		}
	}
	req := &yunchiv1.RunBackupRequest{Vm: name, Project: project, Center: center}
	resp, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.RunBackupResponse, error) {
		return yunchiv1.NewBackupServiceClient(cc).RunBackup(ctx, req)
	})
	if err != nil {
		return err
	}
	centers := resp.GetCenters()
	if !wait || len(centers) == 0 {
		return s.out.print(resp, func(w io.Writer) {
			if len(centers) == 0 {
				fmt.Fprintf(w, "vm %s: no backup started (no target center)\n", name)
				return
			}
			fmt.Fprintf(w, "vm %s: backup started to %s\n", name, strings.Join(centers, ", "))
		})
	}
	fmt.Fprintf(s.stderr, "%s: backing up to %s…\n", name, strings.Join(centers, ", "))
	made, err := s.waitBackups(name, project, center, centers, before, jobsBefore, timeout)
	if err != nil {
		return err
	}
	out := &yunchiv1.ListRestorePointsResponse{Points: made}
	return s.out.print(out, s.out.pointList(made))
}

// jobStates is each target center's backup job of the VM as GetDRStatus
// says, as one comparable string (jobState).
func (s *session) jobStates(ctx context.Context, vm, project string) (map[string]string, error) {
	ts, err := s.dr(ctx, vm, project)
	if err != nil {
		return nil, err
	}
	jobs := map[string]string{}
	for _, t := range ts {
		jobs[t.GetCenter()] = jobState(t)
	}
	return jobs, nil
}

// jobState is what tells one attempt of a target's job from the next: its
// state, attempts, error and next attempt.
func jobState(t *yunchiv1.TargetStatus) string {
	return fmt.Sprintf("%s\x00%d\x00%s\x00%d", t.GetJob(), t.GetAttempts(), t.GetLastError(), t.GetNextAttemptAt().AsTime().UnixNano())
}

// waitBackups polls until every center in centers has a restore point of
// the VM that was not in before, or one's job fails anew (a job state
// unlike jobsBefore, failed), or timeout passes.
func (s *session) waitBackups(vm, project, center string, centers []string, before map[string]bool, jobsBefore map[string]string, timeout time.Duration) ([]*yunchiv1.RestorePoint, error) {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	pending := slices.Clone(centers)
	var made []*yunchiv1.RestorePoint
	for {
		pts, err := listPoints(ctx, s, &yunchiv1.ListRestorePointsRequest{Vm: vm, Project: project, Center: center})
		if err != nil && ctx.Err() == nil {
			return made, err
		}
		for _, p := range pts.GetPoints() {
			i := slices.Index(pending, p.GetCenter())
			if i < 0 || before[p.GetId()] {
				continue
			}
			pending = slices.Delete(pending, i, i+1)
			made = append(made, p)
			fmt.Fprintf(s.stderr, "%s: %s: restore point %s (%s, %s new, %s, %s)\n", vm, p.GetCenter(), p.GetId(),
				scheduler.FormatBytes(p.GetSizeBytes()), scheduler.FormatBytes(p.GetNewBytes()), pointKind(p),
				(time.Duration(p.GetDurationMillis()) * time.Millisecond).String())
		}
		if len(pending) == 0 {
			return made, nil
		}
		if err == nil {
			st, err := s.dr(ctx, vm, project)
			if err != nil && ctx.Err() == nil {
				return made, err
			}
			for _, t := range st {
				if !slices.Contains(pending, t.GetCenter()) || t.GetJob() != "failed" {
					continue
				}
				// Failed anew, not the failure from before the run: exit 7,
				// as a VM that fails while --wait watches it.
				if jobState(t) != jobsBefore[t.GetCenter()] {
					return made, &vmFailedError{msg: fmt.Sprintf("backup of vm %s to %s failed: %s", vm, t.GetCenter(),
						orDefault(oneLine(t.GetLastError()), "no reason given"))}
				}
			}
		}
		select {
		case <-ctx.Done():
			if s.ctx.Err() != nil {
				return made, fmt.Errorf("interrupted while waiting for the backup of vm %s to %s; it goes on, see 'yunchi dr status --vm %s'", vm, strings.Join(pending, ", "), vm)
			}
			return made, fmt.Errorf("timed out after %s waiting for the backup of vm %s to %s; it may still finish, see 'yunchi dr status --vm %s'", timeout, vm, strings.Join(pending, ", "), vm)
		case <-time.After(backupPoll):
		}
	}
}

// dr is the VM's targets as GetDRStatus says.
func (s *session) dr(ctx context.Context, vm, project string) ([]*yunchiv1.TargetStatus, error) {
	st, err := do(ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DRStatus, error) {
		return yunchiv1.NewProtectionServiceClient(cc).GetDRStatus(ctx, &yunchiv1.GetDRStatusRequest{Project: project, Vm: vm, Consistent: true})
	})
	if err != nil {
		return nil, err
	}
	var out []*yunchiv1.TargetStatus
	for _, v := range st.GetVms() {
		if v.GetVm() == vm && (project == "" || v.GetProject() == project) {
			out = append(out, v.GetTargets()...)
		}
	}
	return out, nil
}

// backupDamagedError is backup verify finding damage.
type backupDamagedError struct{ msg string }

func (e *backupDamagedError) Error() string { return e.msg }

func needCenter(cCtx *cli.Context, what string) (string, error) {
	if _, err := needArgs(cCtx); err != nil {
		return "", err
	}
	c := cCtx.String("center")
	if c == "" {
		return "", usagef("backup %s: --center is required: the center whose repository to %s (see yunchi topology)", cCtx.Command.Name, what)
	}
	return c, nil
}

func backupVerify(cCtx *cli.Context, s *session) error {
	center, err := needCenter(cCtx, "check")
	if err != nil {
		return err
	}
	var r *yunchiv1.VerifyBackupsResponse
	// No per-call timeout: it reads every chunk of the repository.
	err = s.client.call(s.ctx, retrySafe, false, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		var err error
		r, err = yunchiv1.NewBackupServiceClient(cc).VerifyBackups(ctx, &yunchiv1.VerifyBackupsRequest{Center: center})
		return err
	})
	if err != nil {
		return err
	}
	if err := s.out.print(r, s.out.verifyResult(r)); err != nil {
		return err
	}
	if len(r.GetDamaged()) > 0 || len(r.GetDamagedManifests()) > 0 || len(r.GetDamagedPoints()) > 0 {
		return &backupDamagedError{msg: fmt.Sprintf("the repository of center %s is damaged: %s, %s; %s cannot be restored",
			orDefault(r.GetCenter(), center), plural(len(r.GetDamaged()), "damaged chunk"), plural(len(r.GetDamagedManifests()), "damaged manifest"),
			plural(len(r.GetDamagedPoints()), "restore point"))}
	}
	return nil
}

func backupGC(cCtx *cli.Context, s *session) error {
	center, err := needCenter(cCtx, "clean")
	if err != nil {
		return err
	}
	var r *yunchiv1.CollectGarbageResponse
	// No per-call timeout: it walks the whole repository. Sent again
	// elsewhere like a read: a second collection removes nothing more.
	err = s.client.call(s.ctx, retrySafe, false, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		var err error
		r, err = yunchiv1.NewBackupServiceClient(cc).CollectGarbage(ctx, &yunchiv1.CollectGarbageRequest{Center: center})
		return err
	})
	if err != nil {
		return err
	}
	return s.out.print(r, func(w io.Writer) {
		fmt.Fprintf(w, "center %s: %s removed (%s), %d kept\n", orDefault(r.GetCenter(), center),
			plural(int(r.GetChunksRemoved()), "chunk"), scheduler.FormatBytes(r.GetBytesRemoved()), r.GetChunksKept())
	})
}

// --- output ---

func pointKind(p *yunchiv1.RestorePoint) string {
	if p.GetIncremental() {
		return "incremental"
	}
	return "full"
}

func (p *printer) pointList(points []*yunchiv1.RestorePoint) func(io.Writer) {
	return func(w io.Writer) {
		if len(points) == 0 {
			fmt.Fprintln(w, "No restore points.")
			return
		}
		fmt.Fprintln(w, "ID\tCENTER\tTAKEN\tSIZE\tNEW BYTES\tKIND\tCHUNKS READ/TOTAL")
		for _, pt := range points {
			var read, total int64
			for _, d := range pt.GetDisks() {
				read += d.GetReadChunks()
				total += d.GetChunks()
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\n", pt.GetId(), pt.GetCenter(), p.timestamp(pt.GetTakenAt()),
				scheduler.FormatBytes(pt.GetSizeBytes()), scheduler.FormatBytes(pt.GetNewBytes()), pointKind(pt), read, total)
		}
	}
}

func (p *printer) verifyResult(r *yunchiv1.VerifyBackupsResponse) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "Center", r.GetCenter())
		took := (time.Duration(r.GetSeconds()*1e3) * time.Millisecond).String()
		kv(w, "Checked", fmt.Sprintf("%s, %s, in %s", plural(int(r.GetChunksChecked()), "chunk"), scheduler.FormatBytes(r.GetBytesChecked()), took))
		if len(r.GetDamaged()) == 0 && len(r.GetDamagedManifests()) == 0 && len(r.GetDamagedPoints()) == 0 {
			kv(w, "Damaged", "none")
			return
		}
		kv(w, "Damaged", fmt.Sprintf("%s, %s; %s cannot be restored", plural(len(r.GetDamaged()), "chunk"),
			plural(len(r.GetDamagedManifests()), "manifest"), plural(len(r.GetDamagedPoints()), "restore point")))
		if len(r.GetDamaged()) > 0 {
			fmt.Fprintln(w)
			fmt.Fprintln(w, "DAMAGED CHUNK\tERROR")
			for _, d := range r.GetDamaged() {
				fmt.Fprintf(w, "%s\t%s\n", d.GetSha256(), dash(oneLine(d.GetError())))
			}
		}
		if len(r.GetDamagedManifests()) > 0 {
			fmt.Fprintln(w)
			fmt.Fprintln(w, "DAMAGED MANIFEST")
			for _, m := range r.GetDamagedManifests() {
				fmt.Fprintln(w, m)
			}
		}
		if len(r.GetDamagedPoints()) > 0 {
			fmt.Fprintln(w)
			fmt.Fprintln(w, "RESTORE POINT THAT CANNOT BE RESTORED")
			for _, id := range r.GetDamagedPoints() {
				fmt.Fprintln(w, id)
			}
		}
	}
}
