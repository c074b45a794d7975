package main

// Protection policies (yunchi policy), attaching them (yunchi vm protect,
// yunchi project protect) and what they achieve (yunchi dr status).

import (
	"context"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	"github.com/yunchi/yunchi/controller/state"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const targetSyntax = "ROLE_OR_CENTER:INTERVAL[:keep-last=N,keep-hourly=N,keep-daily=N][:rpo=DUR]"

func policyCommand() *cli.Command {
	return &cli.Command{
		Name:  "policy",
		Usage: "protection policies: where a VM's backups go, how often, how many are kept, and the RPO/RTO objectives",
		Description: "platinum, gold, silver and bronze are built in; others are made with yunchi policy create. A policy is\n" +
			"attached to a project (its VMs inherit it) or to one VM: yunchi project protect, yunchi vm protect.\n" +
			"yunchi dr status shows what each protected VM achieves against its objectives.",
		Subcommands: []*cli.Command{
			{
				Name:    "list",
				Aliases: []string{"ls"},
				Usage:   "list the policies, built-in first",
				Action:  withSession(policyList),
			},
			{
				Name:      "show",
				Aliases:   []string{"get"},
				Usage:     "show one policy and its targets",
				ArgsUsage: "NAME",
				Action:    withSession(policyShow),
			},
			{
				Name:      "create",
				Usage:     "create a policy",
				ArgsUsage: "NAME",
				UsageText: "yunchi policy create NAME --target " + targetSyntax + " ...\n" +
					"   [--rpo DUR] [--rto DUR] [--priority N] [--level 1-6] [--description D]\n\n" +
					"Each --target is one copy of the VM's disks: ROLE_OR_CENTER is same-city-dr or remote-dr (every\n" +
					"center of that role) or a center's name; INTERVAL is how often a backup goes there; keep-* say\n" +
					"which points are kept (the newest N, and the newest of each of the last N hours and days; at\n" +
					"least one); rpo is the objective for the age of the newest point there (default: INTERVAL).\n" +
					"Durations: 30s, 1m, 4h, 24h, 7d. Example:\n" +
					"   yunchi policy create payroll --target same-city-dr:1m:keep-last=60,keep-hourly=24,keep-daily=7 \\\n" +
					"      --target b1:24h:keep-daily=7 --rto 1h --level 5",
				Flags: []cli.Flag{
					&cli.StringSliceFlag{Name: "target", Usage: "a copy: " + targetSyntax + " (repeatable)"},
					&cli.StringFlag{Name: "rpo", Usage: "the policy's RPO objective (default: the largest of its targets')"},
					&cli.StringFlag{Name: "rto", Usage: "the policy's RTO objective: how long a restore may take"},
					&cli.IntFlag{Name: "priority", Usage: "0-100: higher goes first when more backups are due than start at once"},
					&cli.IntFlag{Name: "level", Usage: "GB/T 20988 disaster recovery level, 1-6", DefaultText: "none"},
					&cli.StringFlag{Name: "description", Usage: "one line of text"},
				},
				Action: withSession(policyCreate),
			},
			{
				Name:      "delete",
				Aliases:   []string{"rm"},
				Usage:     "delete a policy (refused for built-in ones and while it protects a VM or project)",
				ArgsUsage: "NAME",
				Action:    withSession(policyDelete),
			},
		},
	}
}

func policyList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListPoliciesResponse, error) {
		return yunchiv1.NewProtectionServiceClient(cc).ListPolicies(ctx, &yunchiv1.ListPoliciesRequest{})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tBUILTIN\tTARGETS\tRPO\tRTO\tLEVEL\tVMS\tPROJECTS")
		for _, p := range resp.GetPolicies() {
			var ts []string
			for _, t := range p.GetTargets() {
				if t.GetMirror() {
					ts = append(ts, targetWhere(t)+"/mirror")
					continue
				}
				ts = append(ts, targetWhere(t)+"/"+seconds(t.GetIntervalSeconds()))
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", p.GetName(), yesNo(p.GetBuiltin()), dash(strings.Join(ts, ", ")),
				seconds(p.GetRpoSeconds()), seconds(p.GetRtoSeconds()), level(p.GetLevel()), p.GetVms(), p.GetProjects())
		}
	})
}

func policyShow(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	p, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Policy, error) {
		return yunchiv1.NewProtectionServiceClient(cc).GetPolicy(ctx, &yunchiv1.GetPolicyRequest{Name: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(p, s.out.policyDetail(p))
}

func policyCreate(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	p, err := policyFromFlags(cCtx, args[0])
	if err != nil {
		return err
	}
	created, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Policy, error) {
		return yunchiv1.NewProtectionServiceClient(cc).CreatePolicy(ctx, &yunchiv1.CreatePolicyRequest{Policy: p})
	})
	if err != nil {
		return err
	}
	return s.out.print(created, s.out.policyDetail(created))
}

// policyFromFlags reads policy create's flags; every mistake is a usage
// error naming the bad part, found before anything is sent.
func policyFromFlags(cCtx *cli.Context, name string) (*yunchiv1.Policy, error) {
	if !state.ValidName(name) {
		return nil, usagef("policy create: name %q is not valid: use 1-63 lowercase letters, digits and '-', starting with a letter", name)
	}
	p := &yunchiv1.Policy{Name: name, Description: cCtx.String("description")}
	specs := cCtx.StringSlice("target")
	if len(specs) == 0 {
		return nil, usagef("policy create: give at least one --target %s, e.g. --target same-city-dr:1m:keep-last=60", targetSyntax)
	}
	if len(specs) > state.MaxPolicyTargets {
		return nil, usagef("policy create: %d targets: give at most %d", len(specs), state.MaxPolicyTargets)
	}
	seen := map[string]bool{}
	for _, spec := range specs {
		t, err := parseTarget(spec)
		if err != nil {
			return nil, usagef("policy create: --target %q: %v", spec, err)
		}
		w := targetWhere(t)
		if seen[w] {
			return nil, usagef("policy create: --target %q: %s is named twice", spec, w)
		}
		seen[w] = true
		p.Targets = append(p.Targets, t)
	}
	for _, f := range []struct {
		name string
		dst  *int64
	}{{"rpo", &p.RpoSeconds}, {"rto", &p.RtoSeconds}} {
		v := cCtx.String(f.name)
		if v == "" {
			continue
		}
		d, err := parseDuration(v)
		if err != nil {
			return nil, usagef("policy create: --%s: %v", f.name, err)
		}
		*f.dst = d
	}
	if cCtx.IsSet("priority") {
		n := cCtx.Int("priority")
		if n < 0 || n > 100 {
			return nil, usagef("policy create: --priority %d is out of range: give 0 to 100", n)
		}
		p.Priority = int32(n)
	}
	if cCtx.IsSet("level") {
		n := cCtx.Int("level")
		if n < 1 || n > 6 {
			return nil, usagef("policy create: --level %d is out of range: give a GB/T 20988 level, 1 to 6", n)
		}
		p.Level = int32(n)
	}
	if len(p.Description) > 1024 {
		return nil, usagef("policy create: --description is longer than 1024 bytes")
	}
	return p, nil
}

// parseTarget reads ROLE_OR_CENTER:INTERVAL[:keep-...][:rpo=DUR]; the
// optional parts may come in either order. Errors name the bad part.
func parseTarget(spec string) (*yunchiv1.PolicyTarget, error) {
	parts := strings.Split(spec, ":")
	if len(parts) < 2 {
		return nil, fmt.Errorf("want %s, e.g. same-city-dr:1m:keep-last=60", targetSyntax)
	}
	t := &yunchiv1.PolicyTarget{}
	switch where := parts[0]; where {
	case "same-city-dr":
		t.Role = yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR
	case "remote-dr":
		t.Role = yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR
	case "production":
		return nil, fmt.Errorf("backups go to DR centers: give same-city-dr, remote-dr or a center's name, not production")
	default:
		if r, ok := parseRole(where); ok {
			return nil, fmt.Errorf("write the role %q as %s", where, roleWord(r))
		}
		if !state.ValidName(where) {
			return nil, fmt.Errorf("%q is neither a role (same-city-dr, remote-dr) nor a center name (lowercase letters, digits and '-')", where)
		}
		t.Center = where
	}
	iv, err := parseDuration(parts[1])
	if err != nil {
		return nil, fmt.Errorf("interval: %v", err)
	}
	if iv < state.MinBackupInterval || iv > state.MaxBackupInterval {
		return nil, fmt.Errorf("interval %s is out of range: give %ds to 366d", parts[1], state.MinBackupInterval)
	}
	t.IntervalSeconds = iv
	var haveKeep, haveRPO bool
	for _, part := range parts[2:] {
		switch {
		case strings.HasPrefix(part, "rpo="):
			if haveRPO {
				return nil, fmt.Errorf("rpo is given twice")
			}
			haveRPO = true
			d, err := parseDuration(strings.TrimPrefix(part, "rpo="))
			if err != nil {
				return nil, fmt.Errorf("rpo: %v", err)
			}
			t.RpoSeconds = d
		case strings.HasPrefix(part, "keep-"):
			if haveKeep {
				return nil, fmt.Errorf("give the keep-* counts in one part, separated by commas: keep-last=N,keep-daily=N")
			}
			haveKeep = true
			r, err := parseRetention(part)
			if err != nil {
				return nil, err
			}
			t.Retention = r
		default:
			return nil, fmt.Errorf("%q is not valid: after INTERVAL give keep-last=N,keep-hourly=N,keep-daily=N and rpo=DUR", part)
		}
	}
	if !haveKeep {
		return nil, fmt.Errorf("say how many points to keep: add :keep-last=N (or keep-hourly=N, keep-daily=N)")
	}
	return t, nil
}

func parseRetention(part string) (*yunchiv1.Retention, error) {
	r := &yunchiv1.Retention{}
	seen := map[string]bool{}
	for _, kvs := range strings.Split(part, ",") {
		k, v, ok := strings.Cut(kvs, "=")
		var dst *int32
		switch k {
		case "keep-last":
			dst = &r.KeepLast
		case "keep-hourly":
			dst = &r.KeepHourly
		case "keep-daily":
			dst = &r.KeepDaily
		}
		if dst == nil || !ok {
			return nil, fmt.Errorf("%q is not valid: use keep-last=N, keep-hourly=N, keep-daily=N", kvs)
		}
		if seen[k] {
			return nil, fmt.Errorf("%s is given twice", k)
		}
		seen[k] = true
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > state.MaxRetentionKeep {
			return nil, fmt.Errorf("%s=%s: give a count from 0 to %d", k, v, state.MaxRetentionKeep)
		}
		*dst = int32(n)
	}
	if r.KeepLast == 0 && r.KeepHourly == 0 && r.KeepDaily == 0 {
		return nil, fmt.Errorf("%q keeps nothing: keep at least one point", part)
	}
	return r, nil
}

var daysRE = regexp.MustCompile(`^([0-9]+)d(.*)$`)

// parseDuration reads a Go duration with days: 30s, 1m, 4h, 1h30m, 7d,
// 1d12h; whole seconds, more than zero. The result is in seconds.
func parseDuration(s string) (int64, error) {
	bad := fmt.Errorf("%q is not a duration: use e.g. 30s, 1m, 4h, 24h, 7d", s)
	var d time.Duration
	rest, days := s, false
	if m := daysRE.FindStringSubmatch(s); m != nil {
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || n > 100*366 {
			return 0, bad
		}
		d, rest, days = time.Duration(n)*24*time.Hour, m[2], true
	}
	if rest != "" || !days {
		x, err := time.ParseDuration(rest)
		if err != nil || x < 0 || strings.HasPrefix(rest, "+") {
			return 0, bad
		}
		d += x
	}
	switch {
	case d <= 0:
		return 0, fmt.Errorf("%q: give a duration longer than zero", s)
	case d%time.Second != 0:
		return 0, fmt.Errorf("%q: give whole seconds", s)
	}
	return int64(d / time.Second), nil
}

func policyDelete(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DeletePolicyResponse, error) {
		return yunchiv1.NewProtectionServiceClient(cc).DeletePolicy(ctx, &yunchiv1.DeletePolicyRequest{Name: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) { fmt.Fprintf(w, "policy %s deleted\n", args[0]) })
}

// --- protect ---

func protectFlags(of string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "policy", Usage: "the protection policy (yunchi policy list); \"\" removes the " + of + "'s own"},
		&cli.BoolFlag{Name: "none", Usage: "remove the " + of + "'s own policy (as --policy \"\")"},
	}
}

// protectPolicy reads --policy and --none: the policy to attach, "" to
// remove.
func protectPolicy(cCtx *cli.Context, what string) (string, error) {
	set, none := cCtx.IsSet("policy"), cCtx.Bool("none")
	p := cCtx.String("policy")
	switch {
	case !set && !none:
		return "", usagef("%s: give --policy P (see yunchi policy list), or --none to remove the policy", what)
	case none && p != "":
		return "", usagef("%s: --policy %s and --none exclude each other", what, p)
	}
	return p, nil
}

func vmProtectCommand() *cli.Command {
	return &cli.Command{
		Name:      "protect",
		Usage:     "attach a protection policy to a VM (it overrides its project's), or remove it",
		ArgsUsage: "NAME",
		UsageText: "yunchi vm protect NAME --policy P [--project P]\n" +
			"yunchi vm protect NAME --none [--project P]   (the VM inherits its project's policy, if any)",
		Flags:  append(protectFlags("VM"), projectFlag()),
		Action: withSession(vmProtect),
	}
}

func vmProtect(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	policy, err := protectPolicy(cCtx, "vm protect")
	if err != nil {
		return err
	}
	req := &yunchiv1.ProtectVMRequest{Name: args[0], Project: cCtx.String("project"), Policy: policy}
	pr, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Protection, error) {
		return yunchiv1.NewProtectionServiceClient(cc).ProtectVM(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(pr, func(w io.Writer) {
		if pr.GetPolicy() == "" {
			fmt.Fprintf(w, "vm %s: its own policy removed (it inherits its project's, if any)\n", args[0])
			return
		}
		fmt.Fprintf(w, "vm %s protected by %s\n", args[0], pr.GetPolicy())
	})
}

func projectProtectCommand() *cli.Command {
	return &cli.Command{
		Name:      "protect",
		Usage:     "attach a protection policy to a project (its VMs without their own inherit it), or remove it",
		ArgsUsage: "PROJECT",
		UsageText: "yunchi project protect PROJECT --policy P\nyunchi project protect PROJECT --none",
		Flags:     protectFlags("project"),
		Action:    withSession(projectProtect),
	}
}

func projectProtect(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "PROJECT")
	if err != nil {
		return err
	}
	policy, err := protectPolicy(cCtx, "project protect")
	if err != nil {
		return err
	}
	req := &yunchiv1.ProtectProjectRequest{Project: args[0], Policy: policy}
	pr, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Protection, error) {
		return yunchiv1.NewProtectionServiceClient(cc).ProtectProject(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(pr, func(w io.Writer) {
		if pr.GetPolicy() == "" {
			fmt.Fprintf(w, "project %s: policy removed\n", args[0])
			return
		}
		fmt.Fprintf(w, "project %s protected by %s (its VMs without their own policy)\n", args[0], pr.GetPolicy())
	})
}

// --- dr status ---

func drCommand() *cli.Command {
	return &cli.Command{
		Name:  "dr",
		Usage: "disaster recovery: what protected VMs achieve against their RPO objectives; failover, failback and drills",
		Subcommands: append([]*cli.Command{
			{
				Name:  "status",
				Usage: "one row per protected VM and target: the newest restore point, RPO achieved and violations",
				UsageText: "yunchi dr status [--project P] [--vm NAME] [--check]\n\n" +
					"RPO achieved is the age of the newest restore point in the target center: what would be lost\n" +
					"if the production center failed now. A VIOLATION is a target whose newest point is older than\n" +
					"its objective.",
				Description: fmt.Sprintf("Exits 0 whatever it shows; with --check it exits %d when any target is in violation\n"+
					"(for scripts and monitoring).", exitRPOViolation),
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "only this project's VMs (default: every project you can see)"},
					&cli.StringFlag{Name: "vm", Usage: "only this VM (with --project, or in the default project)"},
					&cli.BoolFlag{Name: "check", Usage: fmt.Sprintf("exit %d when any target is in violation", exitRPOViolation)},
					consistentFlag(),
				},
				Action: withSession(drStatus),
			},
		}, recoveryCommands()...),
	}
}

// rpoViolationError is dr status --check finding a violation.
type rpoViolationError struct{ msg string }

func (e *rpoViolationError) Error() string { return e.msg }

func drStatus(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	req := &yunchiv1.GetDRStatusRequest{Project: cCtx.String("project"), Vm: cCtx.String("vm"), Consistent: cCtx.Bool("consistent")}
	st, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DRStatus, error) {
		return yunchiv1.NewProtectionServiceClient(cc).GetDRStatus(ctx, req)
	})
	if err != nil {
		return err
	}
	if err := s.out.print(st, s.out.drStatus(st)); err != nil {
		return err
	}
	if n, first := violations(st); cCtx.Bool("check") && n > 0 {
		return &rpoViolationError{msg: fmt.Sprintf("%s (first: %s)", plural(n, "RPO violation"), first)}
	}
	return nil
}

// violations counts the targets in violation and describes the first.
func violations(st *yunchiv1.DRStatus) (int, string) {
	n, first := 0, ""
	for _, v := range st.GetVms() {
		for _, t := range v.GetTargets() {
			if !t.GetViolation() {
				continue
			}
			n++
			if first == "" {
				achieved := "no point yet"
				if t.GetAchievedRpoSeconds() >= 0 && t.GetNewestPoint() != "" {
					achieved = "newest point " + fseconds(t.GetAchievedRpoSeconds()) + " old"
				}
				first = fmt.Sprintf("vm %s/%s in %s: %s, objective %s", v.GetProject(), v.GetVm(), t.GetCenter(), achieved, seconds(t.GetRpoObjectiveSeconds()))
			}
		}
	}
	return max(n, int(st.GetViolations())), first
}

func (p *printer) drStatus(st *yunchiv1.DRStatus) func(io.Writer) {
	return func(w io.Writer) {
		if len(st.GetVms()) == 0 {
			fmt.Fprintln(w, "No protected VMs (yunchi vm protect, yunchi project protect).")
			p.drRecoveryStatus(w, st)
			return
		}
		fmt.Fprintln(w, "VM\tPROJECT\tPOLICY\tCENTER\tNEWEST POINT\tRPO ACHIEVED/OBJECTIVE\tSTATE")
		targets := 0
		for _, v := range st.GetVms() {
			policy := v.GetPolicy()
			if v.GetSource() == "project" {
				policy += " (project)"
			}
			if len(v.GetTargets()) == 0 {
				fmt.Fprintf(w, "%s\t%s\t%s\t-\t-\t-\tno target center (see yunchi topology)\n", v.GetVm(), v.GetProject(), policy)
				continue
			}
			for _, t := range v.GetTargets() {
				targets++
				if t.GetMirror() != "" {
					// A synchronous mirror: no points, RPO 0 while mirroring.
					achieved := "-"
					if t.GetAchievedRpoSeconds() >= 0 {
						achieved = fseconds(t.GetAchievedRpoSeconds())
					}
					st := "mirror: " + t.GetMirror()
					if h := t.GetMirrorHost(); h != "" {
						st += " (on " + h + ")"
					}
					if t.GetViolation() {
						st = "VIOLATION: " + st
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s/%s\t%s\n", v.GetVm(), v.GetProject(), policy, dash(t.GetCenter()), "(mirror)",
						achieved, seconds(0), st)
					continue
				}
				newest := "-"
				if t.GetNewestPoint() != "" {
					newest = p.ago(t.GetNewestPointAt())
				}
				achieved := "-"
				if t.GetAchievedRpoSeconds() >= 0 && t.GetNewestPoint() != "" {
					achieved = fseconds(t.GetAchievedRpoSeconds())
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s/%s\t%s\n", v.GetVm(), v.GetProject(), policy, dash(t.GetCenter()), newest,
					achieved, seconds(t.GetRpoObjectiveSeconds()), p.targetState(t))
			}
		}
		n, _ := violations(st)
		fmt.Fprintf(w, "\n%s protected, %s: %s\n", plural(len(st.GetVms()), "VM"), plural(targets, "target"), orDefault(pluralOrNone(n, "violation"), "no violations"))
		p.drRecoveryStatus(w, st)
	}
}

// targetState is the STATE column: ok, VIOLATION, no point yet, or
// failed: the error; a backup running or failing is said beside.
func (p *printer) targetState(t *yunchiv1.TargetStatus) string {
	var s string
	switch {
	case t.GetViolation():
		s = "VIOLATION"
		if t.GetNewestPoint() == "" {
			s += ": no point yet"
		}
	case t.GetNewestPoint() == "":
		s = "no point yet"
	default:
		s = "ok"
	}
	switch t.GetJob() {
	case "failed":
		f := "failed: " + orDefault(oneLine(t.GetLastError()), "no reason given")
		var more []string
		if n := t.GetAttempts(); n > 0 {
			more = append(more, plural(int(n), "attempt"))
		}
		if at := t.GetNextAttemptAt(); at != nil {
			more = append(more, "next "+p.ago(at))
		}
		if len(more) > 0 {
			f += " (" + strings.Join(more, ", ") + ")"
		}
		if s == "ok" || s == "no point yet" {
			return f
		}
		return s + ", " + f
	case "running":
		return s + " (backing up)"
	}
	return s
}

func (p *printer) policyDetail(pl *yunchiv1.Policy) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "Name", pl.GetName())
		kv(w, "Built in", yesNo(pl.GetBuiltin()))
		kv(w, "Description", pl.GetDescription())
		kv(w, "RPO", seconds(pl.GetRpoSeconds()))
		kv(w, "RTO", seconds(pl.GetRtoSeconds()))
		kv(w, "Priority", strconv.Itoa(int(pl.GetPriority())))
		lv := level(pl.GetLevel())
		if lv != "-" {
			lv += " (GB/T 20988)"
		}
		kv(w, "Level", lv)
		kv(w, "Protects", plural(int(pl.GetVms()), "VM")+", "+plural(int(pl.GetProjects()), "project"))
		if !pl.GetBuiltin() {
			kv(w, "Created", p.timestamp(pl.GetCreatedAt()))
		}
		fmt.Fprintln(w)
		fmt.Fprintln(w, "TARGET\tINTERVAL\tRPO\tKEEP")
		for _, t := range pl.GetTargets() {
			if t.GetMirror() {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", targetLabel(t), "mirrored (synchronous)", "0", "-")
				continue
			}
			rpo := t.GetRpoSeconds()
			if rpo == 0 {
				rpo = t.GetIntervalSeconds()
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", targetLabel(t), seconds(t.GetIntervalSeconds()), seconds(rpo), retention(t.GetRetention()))
		}
	}
}

// targetWhere is "same-city-dr" or the center's name.
func targetWhere(t *yunchiv1.PolicyTarget) string {
	if t.GetCenter() != "" {
		return t.GetCenter()
	}
	return roleWord(t.GetRole())
}

// targetLabel is "every same-city-dr center" or "center b1".
func targetLabel(t *yunchiv1.PolicyTarget) string {
	if t.GetCenter() != "" {
		return "center " + t.GetCenter()
	}
	return "every " + roleWord(t.GetRole()) + " center"
}

// retention is "last 60, hourly 24, daily 7".
func retention(r *yunchiv1.Retention) string {
	var parts []string
	for _, x := range []struct {
		n    int32
		name string
	}{{r.GetKeepLast(), "last"}, {r.GetKeepHourly(), "hourly"}, {r.GetKeepDaily(), "daily"}} {
		if x.n > 0 {
			parts = append(parts, x.name+" "+strconv.Itoa(int(x.n)))
		}
	}
	return dash(strings.Join(parts, ", "))
}

// seconds prints a whole number of seconds the way durations are typed:
// "1m", "4h", "7d", "1h30m"; "-" for 0.
func seconds(n int64) string {
	if n <= 0 {
		return "-"
	}
	var b strings.Builder
	for _, u := range []struct {
		s    int64
		unit string
	}{{86400, "d"}, {3600, "h"}, {60, "m"}, {1, "s"}} {
		if n >= u.s {
			b.WriteString(strconv.FormatInt(n/u.s, 10) + u.unit)
			n %= u.s
		}
	}
	return b.String()
}

// fseconds is an age in seconds, to the second: "42s", "1m15s", "2h5m3s".
func fseconds(f float64) string {
	if f < 1 {
		return "0s"
	}
	return seconds(int64(math.Min(f, math.MaxInt64/2)))
}

func level(n int32) string {
	if n <= 0 {
		return "-"
	}
	return strconv.Itoa(int(n))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// plural is "1 VM", "3 VMs".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// pluralOrNone is plural, or "" for zero.
func pluralOrNone(n int, what string) string {
	if n == 0 {
		return ""
	}
	return plural(n, what)
}
