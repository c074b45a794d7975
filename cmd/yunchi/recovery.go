package main

// Failover, failback and drills (yunchi dr failover, dr failback, dr drill,
// dr runs, dr show): runs the leader drives through raft. The CLI starts
// one, follows it with GetDRRun (a progress line on stderr per VM step),
// and prints its report: each VM's measured RTO and data-loss window, and
// the totals. The exit code says how the run ended (succeeded 0, partial
// 14, failed 15, still running when --wait-timeout passed 16).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/state"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// drPoll is how often a run is asked for while --wait follows it. A
// variable so that tests need not wait half a second per step.
var drPoll = 500 * time.Millisecond

// Run kinds and states as DRRun spells them.
const (
	kindFailover = "failover"
	kindFailback = "failback"
	kindDrill    = "drill"

	runPlan      = "plan"
	runRunning   = "running"
	runSucceeded = "succeeded"
	runPartial   = "partial"
	runFailed    = "failed"
)

func recoveryCommands() []*cli.Command {
	project := func(usage string) cli.Flag {
		return &cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: usage}
	}
	return []*cli.Command{
		{
			Name:  "failover",
			Usage: "declare a center lost: fence it and bring its protected VMs up in a DR center from their newest points",
			UsageText: "yunchi dr failover --from CENTER [--to CENTER] [--dry-run] [--wait=false] [--wait-timeout 10m]\n\n" +
				"The lost center's hosts are fenced first (their agents, if they come back, stop the old VMs instead of\n" +
				"running them again), then every protected VM whose primary center it is starts in the DR center from\n" +
				"its newest restore point (or its synchronous mirror), in policy priority order, within the DR center's\n" +
				"capacity and the quotas. VMs that cannot fit are skipped with the scheduler's reason. --dry-run prints\n" +
				"the plan with the expected RTO and data loss and changes nothing. Once it is back: yunchi dr failback.",
			Description: runExitCodes,
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "from", Usage: "the lost center (required)"},
				&cli.StringFlag{Name: "to", Usage: "the DR center (default: the same-city DR center of --from's site, else a remote one)"},
			}, runFlags()...),
			Action: withSession(drFailover),
		},
		{
			Name:  "failback",
			Usage: "return the VMs failed over from a center once it is back: copy their changes home, switch each over with a short stop",
			UsageText: "yunchi dr failback --to CENTER [--dry-run] [--wait=false] [--wait-timeout 10m]\n\n" +
				"For each VM failed over from CENTER: a copy of its DR-side disks goes home while it still runs, then\n" +
				"it stops, the last changes follow, and it starts at home. The report gives each switch-over's downtime.\n" +
				"The fence on CENTER is lifted.",
			Description: runExitCodes,
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "to", Usage: "the home center the VMs return to (required; its hosts must be ready)"},
			}, runFlags()...),
			Action: withSession(drFailback),
		},
		{
			Name:  "drill",
			Usage: "rehearse a failover without touching production: clones in an isolated project, measured, removed, reported",
			UsageText: "yunchi dr drill --center CENTER [--to CENTER] [--project P] [--dry-run] [--every 30d]\n" +
				"   [--wait=false] [--wait-timeout 10m] [--format text|json|html] [--out FILE]\n" +
				"yunchi dr drill list|show|schedules|unschedule ...\n\n" +
				"Clones of CENTER's protected VMs are restored from their newest points into an isolated drill project\n" +
				"in the DR center (no network shared with production, names that cannot clash), checked to start, and\n" +
				"removed; each VM's RTO and RPO are measured and production is checked unchanged. The report is kept:\n" +
				"yunchi dr drill list, yunchi dr drill show ID --format html for the auditor's file. --every repeats\n" +
				"the drill on a schedule (Go durations or days: 720h, 30d), starting with one now.",
			Description: runExitCodes + fmt.Sprintf("\nA drill that changed production exits %d.", exitRunFailed),
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "center", Usage: "the production center drilled (required)"},
				&cli.StringFlag{Name: "to", Usage: "the DR center the clones are restored into (default: as for a failover)"},
				project("only this project's VMs (default: every project's)"),
				&cli.StringFlag{Name: "every", Usage: "repeat the drill this often (e.g. 30d, 720h); the first one starts now"},
			}, runFlags()...),
			Action: withSession(drDrill),
			Subcommands: []*cli.Command{
				{
					Name:    "list",
					Aliases: []string{"ls"},
					Usage:   "list the drills, newest first",
					Flags:   []cli.Flag{project("only drills of this project")},
					Action:  withSession(drDrillList),
				},
				{
					Name:      "show",
					Aliases:   []string{"get"},
					Usage:     "show one drill's report",
					ArgsUsage: "ID",
					Flags:     reportFlags(),
					Action:    withSession(drDrillShow),
				},
				{
					Name:   "schedules",
					Usage:  "list the drill schedules (yunchi dr drill --every)",
					Action: withSession(drDrillSchedules),
				},
				{
					Name:      "unschedule",
					Usage:     "delete a drill schedule (drills already run keep their reports)",
					ArgsUsage: "ID",
					Action:    withSession(drDrillUnschedule),
				},
			},
		},
		{
			Name:  "runs",
			Usage: "list failovers, failbacks and drills, newest first",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "kind", Usage: "only runs of this kind: failover, failback or drill"},
				project("only runs of this project"),
			},
			Action: withSession(drRuns),
		},
		{
			Name:      "show",
			Aliases:   []string{"get"},
			Usage:     "show the report of one failover, failback or drill",
			ArgsUsage: "ID",
			Flags:     reportFlags(),
			Action:    withSession(drShow),
		},
	}
}

var runExitCodes = fmt.Sprintf("Exits 0 when every VM got there, %d when the run ended partial (some VMs failed or were skipped),\n"+
	"%d when it failed, and %d when --wait-timeout passed with the run still going (it goes on).",
	exitRunPartial, exitRunFailed, exitRunTimeout)

func reportFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "format", Usage: "text, json (the API's DRRun, as -o json) or html (a self-contained report for the auditor's file)", DefaultText: "text"},
		&cli.StringFlag{Name: "out", Usage: "write the report to this file instead of stdout"},
	}
}

func runFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.BoolFlag{Name: "dry-run", Usage: "print the plan with the expected RTO and data loss; change nothing"},
		&cli.BoolFlag{Name: "wait", Value: true, Usage: "follow the run to its end, a line on stderr per VM step, then print the report (--wait=false: start it and return)"},
		&cli.DurationFlag{Name: "wait-timeout", Value: 10 * time.Minute, Usage: "stop following after this long (the run goes on)"},
	}, reportFlags()...)
}

// --- exit codes ---

// runPartialError is a run that ended partial: some VMs failed or were
// skipped.
type runPartialError struct{ msg string }

func (e *runPartialError) Error() string { return e.msg }

// runFailedError is a run that failed, or a drill that changed production.
type runFailedError struct{ msg string }

func (e *runFailedError) Error() string { return e.msg }

// runTimeoutError is --wait-timeout passing with the run still going.
type runTimeoutError struct{ msg string }

func (e *runTimeoutError) Error() string { return e.msg }

// --- flags ---

// reportOut is how and where a run's report is written: --format (or -o
// json) and --out.
type reportOut struct {
	format string // text, json or html
	path   string // "" = stdout
}

func reportTarget(cCtx *cli.Context, s *session) (reportOut, error) {
	cmd := where(cCtx)
	r := reportOut{format: cCtx.String("format"), path: cCtx.String("out")}
	switch r.format {
	case "":
		r.format = "text"
		if s.out.json {
			r.format = "json"
		}
	case "text", "html":
		if s.out.json {
			return r, usagef("%s--format %s and -o json exclude each other", cmd, r.format)
		}
	case "json":
	default:
		return r, usagef("%s--format %q is not valid: use text, json or html", cmd, r.format)
	}
	if r.path != "" {
		// Checked before anything starts: a report that cannot be written
		// is found out now, not after the run.
		if fi, err := os.Stat(r.path); err == nil && fi.IsDir() {
			return r, usagef("%s--out %s is a directory: give a file name", cmd, r.path)
		}
		dir := filepath.Dir(r.path)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return r, usagef("%s--out %s: directory %s does not exist", cmd, r.path, dir)
		}
	}
	return r, nil
}

// centerFlag reads a center's name: required ones must be given; any
// given must be a valid name.
func centerFlag(cCtx *cli.Context, name, what string, required bool) (string, error) {
	c := cCtx.String(name)
	switch {
	case c == "" && required:
		return "", usagef("%s--%s is required: %s (see yunchi topology)", where(cCtx), name, what)
	case c != "" && !state.ValidName(c):
		return "", usagef("%s--%s %q is not a center name: lowercase letters, digits and '-' (see yunchi topology)", where(cCtx), name, c)
	}
	return c, nil
}

// runOptions are the flags every run command shares.
type runOptions struct {
	dryRun  bool
	wait    bool
	timeout time.Duration
	out     reportOut
}

func readRunOptions(cCtx *cli.Context, s *session) (runOptions, error) {
	o := runOptions{dryRun: cCtx.Bool("dry-run"), wait: cCtx.Bool("wait"), timeout: cCtx.Duration("wait-timeout")}
	if o.timeout <= 0 {
		return o, usagef("%s--wait-timeout must be positive", where(cCtx))
	}
	var err error
	o.out, err = reportTarget(cCtx, s)
	return o, err
}

// --- failover, failback, drill ---

func drFailover(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	from, err := centerFlag(cCtx, "from", "the lost center", true)
	if err != nil {
		return err
	}
	to, err := centerFlag(cCtx, "to", "", false)
	if err != nil {
		return err
	}
	if to == from {
		return usagef("dr failover: --to %s is the center failed over from: give a DR center, or leave --to out", to)
	}
	o, err := readRunOptions(cCtx, s)
	if err != nil {
		return err
	}
	req := &yunchiv1.FailoverRequest{FromCenter: from, ToCenter: to, DryRun: o.dryRun}
	return s.startRun(o, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DRRun, error) {
		return yunchiv1.NewRecoveryServiceClient(cc).Failover(ctx, req)
	})
}

func drFailback(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	to, err := centerFlag(cCtx, "to", "the home center the VMs return to", true)
	if err != nil {
		return err
	}
	o, err := readRunOptions(cCtx, s)
	if err != nil {
		return err
	}
	req := &yunchiv1.FailbackRequest{ToCenter: to, DryRun: o.dryRun}
	return s.startRun(o, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DRRun, error) {
		return yunchiv1.NewRecoveryServiceClient(cc).Failback(ctx, req)
	})
}

func drDrill(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	center, err := centerFlag(cCtx, "center", "the production center drilled", true)
	if err != nil {
		return err
	}
	to, err := centerFlag(cCtx, "to", "", false)
	if err != nil {
		return err
	}
	if to == center {
		return usagef("dr drill: --to %s is the center drilled: give a DR center, or leave --to out", to)
	}
	o, err := readRunOptions(cCtx, s)
	if err != nil {
		return err
	}
	req := &yunchiv1.DrillRequest{Center: center, ToCenter: to, Project: cCtx.String("project"), DryRun: o.dryRun}
	if cCtx.IsSet("every") {
		every := cCtx.String("every")
		n, err := parseDuration(every)
		if err != nil {
			return usagef("dr drill: --every: %v", err)
		}
		if o.dryRun {
			return usagef("dr drill: --every and --dry-run exclude each other: a dry run schedules nothing")
		}
		// As a Go duration: the controller reads those as well as days.
		req.Every = (time.Duration(n) * time.Second).String()
	}
	return s.startRun(o, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DRRun, error) {
		return yunchiv1.NewRecoveryServiceClient(cc).StartDrill(ctx, req)
	})
}

// startRun sends the request (keyed: a resend returns the first outcome,
// never a second run), then prints the plan (dry run), or follows the run
// to its end and prints its report.
func (s *session) startRun(o runOptions, start func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DRRun, error)) error {
	run, err := do(s.ctx, s.client, retryKeyed, start)
	if err != nil {
		return err
	}
	if o.dryRun || run.GetState() == runPlan {
		return o.out.write(s, run)
	}
	if sc := run.GetSchedule(); sc != "" {
		fmt.Fprintf(s.stderr, "drill schedule %s made: it repeats (see yunchi dr drill schedules)\n", sc)
	}
	if !o.wait {
		if o.out.format == "text" && o.out.path == "" {
			return s.out.print(run, func(w io.Writer) {
				fmt.Fprintf(w, "%s; follow it with yunchi dr show %s\n", startedLine(run), run.GetId())
			})
		}
		return o.out.write(s, run)
	}
	fmt.Fprintln(s.stderr, startedLine(run))
	last, waitErr := s.followRun(run, o.timeout)
	var timedOut *runTimeoutError
	if waitErr != nil && !errors.As(waitErr, &timedOut) && s.ctx.Err() == nil {
		return waitErr // no report: nothing was learnt about the run
	}
	// The report, also of a run still going when the wait ended.
	if err := o.out.write(s, last); err != nil {
		return err
	}
	if waitErr != nil {
		return waitErr
	}
	return runOutcome(last)
}

// startedLine is "failover dr-… started: 3 VMs from a1 to a2".
func startedLine(run *yunchiv1.DRRun) string {
	n := plural(len(run.GetVms()), "VM")
	switch run.GetKind() {
	case kindFailback:
		return fmt.Sprintf("failback %s started: %s back to %s", run.GetId(), n, run.GetToCenter())
	case kindDrill:
		line := fmt.Sprintf("drill %s started: %s of %s cloned into %s", run.GetId(), n, run.GetFromCenter(), run.GetToCenter())
		if p := run.GetDrillProject(); p != "" {
			line += " (project " + p + ")"
		}
		return line
	}
	return fmt.Sprintf("%s %s started: %s from %s to %s", orDefault(run.GetKind(), "run"), run.GetId(), n, run.GetFromCenter(), run.GetToCenter())
}

// followRun asks for the run every drPoll until it ends, printing a line
// on stderr per VM step. The run is the leader's: a controller that does
// not answer for a while (an election, the lost center's voter) only
// delays the next look. It returns the last state seen.
func (s *session) followRun(run *yunchiv1.DRRun, timeout time.Duration) (*yunchiv1.DRRun, error) {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	prog := newRunProgress(s.stderr, run)
	prog.show(run)
	last, warned := run, false
	for last.GetState() == runRunning {
		select {
		case <-ctx.Done():
			return last, s.followAborted(last, timeout)
		case <-time.After(drPoll):
		}
		cur, err := getRun(ctx, s, run.GetId())
		switch {
		case err == nil:
			last = cur
			prog.show(cur)
		case ctx.Err() != nil:
			return last, s.followAborted(last, timeout)
		case status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded:
			if !warned {
				warned = true
				fmt.Fprintf(s.stderr, "yunchi: no answer about %s (%s); still asking…\n", run.GetId(), errorMessage(err))
			}
		default:
			return last, err
		}
	}
	return last, nil
}

func (s *session) followAborted(run *yunchiv1.DRRun, timeout time.Duration) error {
	what := fmt.Sprintf("%s %s (%s)", run.GetKind(), run.GetId(), progressCount(run))
	if s.ctx.Err() != nil {
		return fmt.Errorf("interrupted while waiting for %s; it goes on, see 'yunchi dr show %s'", what, run.GetId())
	}
	return &runTimeoutError{msg: fmt.Sprintf("timed out after %s waiting for %s; it goes on, see 'yunchi dr show %s'", timeout, what, run.GetId())}
}

// progressCount is "2 of 3 VMs running" (drill: "clones started").
func progressCount(run *yunchiv1.DRRun) string {
	total := len(run.GetVms())
	if total == 0 {
		total = int(run.GetVmsDone() + run.GetVmsFailed() + run.GetVmsSkipped())
	}
	if run.GetKind() == kindDrill {
		return fmt.Sprintf("%d of %s started", run.GetVmsDone(), plural(total, "clone"))
	}
	return fmt.Sprintf("%d of %s running", run.GetVmsDone(), plural(total, "VM"))
}

// runOutcome is the error (and exit code) a finished run ends the command
// with: none when it succeeded.
func runOutcome(run *yunchiv1.DRRun) error {
	what := run.GetKind() + " " + run.GetId()
	counts := progressCount(run)
	var more []string
	if n := run.GetVmsFailed(); n > 0 {
		more = append(more, fmt.Sprintf("%d failed", n))
	}
	if n := run.GetVmsSkipped(); n > 0 {
		more = append(more, fmt.Sprintf("%d skipped", n))
	}
	if len(more) > 0 {
		counts += ", " + strings.Join(more, ", ")
	}
	if m := oneLine(run.GetMessage()); m != "" {
		counts += ": " + m
	}
	if run.GetKind() == kindDrill && productionChanged(run) {
		return &runFailedError{msg: fmt.Sprintf("%s changed production: %s", what, oneLine(run.GetProductionCheck()))}
	}
	switch run.GetState() {
	case runSucceeded:
		return nil
	case runPartial:
		return &runPartialError{msg: fmt.Sprintf("%s partial: %s", what, counts)}
	case runFailed:
		return &runFailedError{msg: fmt.Sprintf("%s failed: %s", what, counts)}
	}
	return fmt.Errorf("%s ended in state %q, which this yunchi does not know", what, run.GetState())
}

// productionChanged: the drill's check ran and found production changed.
func productionChanged(run *yunchiv1.DRRun) bool {
	return !run.GetProductionUnchanged() && run.GetProductionCheck() != ""
}

func getRun(ctx context.Context, s *session, id string) (*yunchiv1.DRRun, error) {
	return do(ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DRRun, error) {
		return yunchiv1.NewRecoveryServiceClient(cc).GetDRRun(ctx, &yunchiv1.GetDRRunRequest{Id: id})
	})
}

// --- progress ---

// runProgress prints one line per VM per step reached.
type runProgress struct {
	w       io.Writer
	kind    string
	step    map[string]string // VM key: the step last shown
	arrived map[string]bool   // the VM's running line is shown
	label   func(v *yunchiv1.DRRunVM) string
}

func newRunProgress(w io.Writer, run *yunchiv1.DRRun) *runProgress {
	return &runProgress{w: w, kind: run.GetKind(), step: map[string]string{}, arrived: map[string]bool{}, label: vmLabeler(run)}
}

func vmKey(v *yunchiv1.DRRunVM) string { return v.GetProject() + "/" + v.GetVm() }

// vmLabeler names a run's VMs by name, with the project when two projects
// have one of the same name.
func vmLabeler(run *yunchiv1.DRRun) func(v *yunchiv1.DRRunVM) string {
	projects := map[string]map[string]bool{}
	for _, v := range run.GetVms() {
		if projects[v.GetVm()] == nil {
			projects[v.GetVm()] = map[string]bool{}
		}
		projects[v.GetVm()][v.GetProject()] = true
	}
	return func(v *yunchiv1.DRRunVM) string {
		if len(projects[v.GetVm()]) > 1 {
			return v.GetProject() + "/" + v.GetVm()
		}
		return v.GetVm()
	}
}

func (p *runProgress) show(run *yunchiv1.DRRun) {
	for _, v := range run.GetVms() {
		k, step := vmKey(v), v.GetStep()
		if p.step[k] == step {
			continue
		}
		p.step[k] = step
		for _, line := range p.lines(v, run) {
			fmt.Fprintf(p.w, "%s: %s\n", p.label(v), line)
		}
	}
}

func (p *runProgress) lines(v *yunchiv1.DRRunVM, run *yunchiv1.DRRun) []string {
	k := vmKey(v)
	switch v.GetStep() {
	case "pending", "":
		return nil
	case "precopy":
		return []string{"copying its disks to " + orDefault(run.GetToCenter(), "its home center") + " while it runs…"}
	case "stopping":
		return []string{"stopping in " + orDefault(v.GetFromCenter(), "the DR center") + " for the switch-over…"}
	case "final-copy":
		return []string{"copying the last changes…"}
	case "starting":
		if p.kind == kindDrill && v.GetClone() != "" {
			return []string{"starting clone " + v.GetClone() + " " + placeOf(v) + "…"}
		}
		return []string{"starting " + placeOf(v) + "…"}
	case "running", "done":
		var out []string
		if !p.arrived[k] {
			p.arrived[k] = true
			out = append(out, arrivedLine(p.kind, v))
		}
		if v.GetStep() == "done" && p.kind == kindDrill {
			out = append(out, "clone removed")
		}
		return out
	case "failed":
		return []string{"failed: " + orDefault(oneLine(v.GetReason()), "no reason given")}
	case "skipped":
		return []string{"skipped: " + orDefault(oneLine(v.GetReason()), "no reason given")}
	}
	return []string{v.GetStep()}
}

// placeOf is "on a2-h03", or "in a2" before a host is known.
func placeOf(v *yunchiv1.DRRunVM) string {
	if h := v.GetHost(); h != "" {
		return "on " + h
	}
	if c := v.GetCenter(); c != "" {
		return "in " + c
	}
	return "in the target center"
}

// arrivedLine: "running on a2-h03 after 4.2s (data loss 38s)".
func arrivedLine(kind string, v *yunchiv1.DRRunVM) string {
	what := "running "
	if kind == kindDrill {
		what = "clone " + orDefault(v.GetClone(), "-") + " running "
	}
	line := what + placeOf(v) + " after " + millis(v.GetRtoMillis())
	loss := fseconds(float64(v.GetDataLossMillis()) / 1000)
	if v.GetMirror() {
		loss += ", from its mirror"
	}
	switch kind {
	case kindFailback:
		return line + " (downtime " + millis(v.GetDowntimeMillis()) + ")"
	case kindDrill:
		return line + " (RPO " + loss + ")"
	}
	return line + " (data loss " + loss + ")"
}

// millis is a measured time, to a tenth of a second below a minute:
// "4.2s", "1m5s"; "-" for none.
func millis(ms int64) string {
	if ms <= 0 {
		return "-"
	}
	d := time.Duration(ms) * time.Millisecond
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return seconds(int64(d.Round(time.Second) / time.Second))
}

// dataLoss is a VM's data-loss window: "38s", "0s (mirror)", "-" without
// a point.
func dataLoss(v *yunchiv1.DRRunVM) string {
	switch {
	case v.GetMirror():
		return fseconds(float64(v.GetDataLossMillis())/1000) + " (mirror)"
	case v.GetPoint() == "" && v.GetDataLossMillis() == 0:
		return "-"
	}
	return fseconds(float64(v.GetDataLossMillis()) / 1000)
}

// outcome is a VM's end (or where it is): "running", "failed: reason".
func outcome(v *yunchiv1.DRRunVM) string {
	switch s := v.GetStep(); s {
	case "failed", "skipped":
		return s + ": " + orDefault(oneLine(v.GetReason()), "no reason given")
	case "":
		return "-"
	default:
		return s
	}
}

// --- output ---

// write prints the run as its report (or its plan) in the format asked,
// to stdout or --out.
func (r reportOut) write(s *session, run *yunchiv1.DRRun) error {
	var buf bytes.Buffer
	switch r.format {
	case "json":
		p := &printer{w: &buf, json: true, now: s.out.now}
		if err := p.print(run, nil); err != nil {
			return err
		}
	case "html":
		if err := renderRunHTML(&buf, run, s.out.now()); err != nil {
			return err
		}
	default:
		p := &printer{w: &buf, now: s.out.now}
		table := p.runReport(run)
		if run.GetState() == runPlan {
			table = p.runPlan(run)
		}
		if err := p.print(run, table); err != nil {
			return err
		}
	}
	if r.path == "" {
		_, err := s.out.w.Write(buf.Bytes())
		return err
	}
	if err := writeFileAtomic(r.path, buf.Bytes()); err != nil {
		return err
	}
	fmt.Fprintf(s.stderr, "report written to %s\n", r.path)
	return nil
}

// writeFileAtomic writes a whole file or none: a temporary file beside
// it, renamed over it.
func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".yunchi-report-*")
	if err != nil {
		return fmt.Errorf("--out %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("--out %s: %w", path, err)
	}
	return nil
}

// runTitle is "failover dr-… from a1 to a2".
func runTitle(run *yunchiv1.DRRun) string {
	switch run.GetKind() {
	case kindFailback:
		t := "failback " + run.GetId()
		if f := run.GetFromCenter(); f != "" {
			t += " from " + f
		}
		return t + " to " + run.GetToCenter()
	case kindDrill:
		return "drill " + run.GetId() + " of " + run.GetFromCenter() + " in " + run.GetToCenter()
	}
	return run.GetKind() + " " + run.GetId() + " from " + run.GetFromCenter() + " to " + run.GetToCenter()
}

// runPlan prints a dry run: what would happen to each VM and what is
// expected of it.
func (p *printer) runPlan(run *yunchiv1.DRRun) func(io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintf(w, "Dry run: nothing was changed. The plan of %s:\n", planScope(run))
		if len(run.GetVms()) == 0 {
			fmt.Fprintln(w, "No protected VMs to move.")
			return
		}
		fmt.Fprintln(w)
		failback := run.GetKind() == kindFailback
		if failback {
			fmt.Fprintln(w, "VM\tPROJECT\tPOLICY\tNOW IN\tEXPECTED RTO\tTARGET")
		} else {
			fmt.Fprintln(w, "VM\tPROJECT\tPOLICY\tPOINT AGE (DATA LOSS)\tEXPECTED RTO\tTARGET")
		}
		label := vmLabeler(run)
		var starts, skipped int
		var worstLoss, longestRTO int64
		for _, v := range run.GetVms() {
			target := planTarget(run, v)
			if v.GetStep() == "skipped" || v.GetStep() == "failed" {
				skipped++
			} else {
				starts++
				worstLoss = max(worstLoss, v.GetExpectedDataLossSeconds())
				longestRTO = max(longestRTO, v.GetExpectedRtoSeconds())
			}
			second := expectedLoss(v)
			if failback {
				second = dash(v.GetFromHost())
				if c := v.GetFromCenter(); c != "" {
					second += " (" + c + ")"
				}
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", label(v), dash(v.GetProject()), dash(v.GetPolicy()), second, seconds(v.GetExpectedRtoSeconds()), target)
		}
		verb := "would start in " + orDefault(run.GetToCenter(), "the DR center")
		if run.GetKind() == kindDrill {
			verb = "would be cloned into " + orDefault(run.GetToCenter(), "the DR center")
		}
		fmt.Fprintf(w, "\n%s %s", plural(starts, "VM"), verb)
		if skipped > 0 {
			fmt.Fprintf(w, ", %d skipped", skipped)
		}
		if !failback && starts > 0 {
			loss := "0s"
			if worstLoss > 0 {
				loss = seconds(worstLoss)
			}
			fmt.Fprintf(w, "; worst expected data loss %s", loss)
		}
		if starts > 0 {
			fmt.Fprintf(w, ", longest expected RTO %s", seconds(longestRTO))
		}
		fmt.Fprintln(w)
	}
}

// planScope is "a failover from a1 to a2", "a drill of a1 in a2 (project
// tax)".
func planScope(run *yunchiv1.DRRun) string {
	var s string
	switch run.GetKind() {
	case kindFailback:
		s = "a failback to " + orDefault(run.GetToCenter(), "-")
		if f := run.GetFromCenter(); f != "" {
			s += " from " + f
		}
	case kindDrill:
		s = "a drill of " + orDefault(run.GetFromCenter(), "-") + " in " + orDefault(run.GetToCenter(), "-")
	default:
		s = "a " + orDefault(run.GetKind(), "run") + " from " + orDefault(run.GetFromCenter(), "-") + " to " + orDefault(run.GetToCenter(), "-")
	}
	if pr := run.GetProject(); pr != "" {
		s += " (project " + pr + ")"
	}
	return s
}

// expectedLoss is the plan's POINT AGE column: the newest point's age now.
func expectedLoss(v *yunchiv1.DRRunVM) string {
	switch {
	case v.GetMirror():
		return "0s (mirror)"
	case v.GetPoint() == "":
		return "no point"
	case v.GetExpectedDataLossSeconds() <= 0:
		return "0s"
	}
	return seconds(v.GetExpectedDataLossSeconds())
}

// planTarget is where the plan puts the VM, or why it is skipped.
func planTarget(run *yunchiv1.DRRun, v *yunchiv1.DRRunVM) string {
	if s := v.GetStep(); s == "skipped" || s == "failed" {
		return "skipped: " + orDefault(oneLine(v.GetReason()), "no reason given")
	}
	center := orDefault(v.GetCenter(), run.GetToCenter())
	if h := v.GetHost(); h != "" {
		if center != "" {
			return h + " (" + center + ")"
		}
		return h
	}
	return dash(center)
}

// runReport prints a run: what it was, one row per VM with its measured
// RTO and data-loss window (failback: downtime), then the totals.
func (p *printer) runReport(run *yunchiv1.DRRun) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "Run", runTitle(run))
		kv(w, "State", run.GetState())
		optKV(w, "Project", run.GetProject())
		optKV(w, "Drill project", run.GetDrillProject())
		optKV(w, "Schedule", run.GetSchedule())
		optKV(w, "Requested by", run.GetRequestedBy())
		kv(w, "Started", p.timestamp(run.GetStartedAt()))
		if run.GetFinishedAt() != nil {
			kv(w, "Finished", p.timestamp(run.GetFinishedAt()))
		}
		optKV(w, "Message", oneLine(run.GetMessage()))
		if len(run.GetVms()) > 0 {
			fmt.Fprintln(w)
			p.runVMs(w, run)
		}
		fmt.Fprintln(w)
		for _, t := range runTotals(run) {
			kv(w, t.en, t.value)
		}
	}
}

func (p *printer) runVMs(w io.Writer, run *yunchiv1.DRRun) {
	label := vmLabeler(run)
	switch run.GetKind() {
	case kindFailback:
		fmt.Fprintln(w, "VM\tPROJECT\tPOLICY\tFROM\tHOST\tRTO\tDOWNTIME\tOUTCOME")
		for _, v := range run.GetVms() {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", label(v), dash(v.GetProject()), dash(v.GetPolicy()),
				dash(v.GetFromCenter()), dash(v.GetHost()), millis(v.GetRtoMillis()), millis(v.GetDowntimeMillis()), outcome(v))
		}
	case kindDrill:
		fmt.Fprintln(w, "VM\tPROJECT\tPOLICY\tPOINT\tCLONE\tHOST\tRTO\tRPO (DATA LOSS)\tOUTCOME")
		for _, v := range run.GetVms() {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", label(v), dash(v.GetProject()), dash(v.GetPolicy()), pointOf(v),
				dash(v.GetClone()), dash(v.GetHost()), millis(v.GetRtoMillis()), dataLoss(v), outcome(v))
		}
	default:
		fmt.Fprintln(w, "VM\tPROJECT\tPOLICY\tPOINT\tHOST\tRTO\tDATA LOSS\tOUTCOME")
		for _, v := range run.GetVms() {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", label(v), dash(v.GetProject()), dash(v.GetPolicy()), pointOf(v),
				dash(v.GetHost()), millis(v.GetRtoMillis()), dataLoss(v), outcome(v))
		}
	}
}

// pointOf is where the VM came back from: "rp-… (a2)", "mirror".
func pointOf(v *yunchiv1.DRRunVM) string {
	switch {
	case v.GetMirror():
		return "mirror"
	case v.GetPoint() == "":
		return "-"
	case v.GetPointCenter() != "":
		return v.GetPoint() + " (" + v.GetPointCenter() + ")"
	}
	return v.GetPoint()
}

// total is one line of a report's totals, in English and Chinese (the
// HTML report shows both).
type total struct{ zh, en, value string }

func runTotals(run *yunchiv1.DRRun) []total {
	count := fmt.Sprintf("%d/%d", run.GetVmsDone(), len(run.GetVms()))
	if len(run.GetVms()) == 0 {
		count = fmt.Sprintf("%d", run.GetVmsDone())
	}
	var more []string
	if n := run.GetVmsFailed(); n > 0 {
		more = append(more, fmt.Sprintf("%d failed", n))
	}
	if n := run.GetVmsSkipped(); n > 0 {
		more = append(more, fmt.Sprintf("%d skipped", n))
	}
	if len(more) > 0 {
		count += " (" + strings.Join(more, ", ") + ")"
	}
	rto := "-"
	if run.GetRtoMaxMillis() > 0 {
		rto = fmt.Sprintf("p50 %s, p99 %s, max %s", millis(run.GetRtoP50Millis()), millis(run.GetRtoP99Millis()), millis(run.GetRtoMaxMillis()))
	}
	out := []total{}
	switch run.GetKind() {
	case kindDrill:
		out = append(out, total{"已启动的克隆", "Clones started", count})
	default:
		out = append(out, total{"已运行的虚拟机", "VMs running", count})
	}
	out = append(out, total{"恢复时间", "RTO", rto}, total{"用时", "Elapsed", millis(run.GetElapsedMillis())})
	switch run.GetKind() {
	case kindFailback:
		var longest int64
		for _, v := range run.GetVms() {
			longest = max(longest, v.GetDowntimeMillis())
		}
		out = append(out, total{"最长停机时间", "Longest downtime", millis(longest)})
	case kindDrill:
		out = append(out, total{"最差恢复点", "Worst RPO (data loss)", worstLoss(run)},
			total{"生产未受影响", "Production unchanged", productionText(run)})
	default:
		out = append(out, total{"最大数据丢失", "Worst data loss", worstLoss(run)})
	}
	return out
}

func worstLoss(run *yunchiv1.DRRun) string {
	if run.GetVmsDone() == 0 && run.GetMaxDataLossMillis() == 0 {
		return "-"
	}
	return fseconds(float64(run.GetMaxDataLossMillis()) / 1000)
}

// productionText is "yes (checked: …)", "NO: …", or not checked (yet).
func productionText(run *yunchiv1.DRRun) string {
	check := oneLine(run.GetProductionCheck())
	switch {
	case run.GetProductionUnchanged() && check != "":
		return "yes (checked: " + check + ")"
	case run.GetProductionUnchanged():
		return "yes"
	case check != "":
		return "NO: " + check
	case run.GetState() == runRunning:
		return "not checked yet"
	}
	return "not checked"
}

func optKV(w io.Writer, k, v string) {
	if v != "" {
		kv(w, k, v)
	}
}

// --- lists, show, schedules ---

func drShow(cCtx *cli.Context, s *session) error {
	return showRun(cCtx, s, "")
}

func drDrillShow(cCtx *cli.Context, s *session) error {
	return showRun(cCtx, s, kindDrill)
}

// showRun prints one run's report; kind, if set, is the only kind shown.
func showRun(cCtx *cli.Context, s *session, kind string) error {
	args, err := needArgs(cCtx, "ID")
	if err != nil {
		return err
	}
	out, err := reportTarget(cCtx, s)
	if err != nil {
		return err
	}
	run, err := getRun(s.ctx, s, args[0])
	if err != nil {
		return err
	}
	if kind != "" && run.GetKind() != kind {
		return status.Errorf(codes.NotFound, "%s is a %s, not a %s: see 'yunchi dr show %s'", args[0], run.GetKind(), kind, args[0])
	}
	return out.write(s, run)
}

func drRuns(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	kind := cCtx.String("kind")
	if kind != "" && !slices.Contains([]string{kindFailover, kindFailback, kindDrill}, kind) {
		return usagef("dr runs: --kind %q is not valid: use failover, failback or drill", kind)
	}
	return s.listRuns(&yunchiv1.ListDRRunsRequest{Kind: kind, Project: cCtx.String("project")})
}

func drDrillList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	return s.listRuns(&yunchiv1.ListDRRunsRequest{Kind: kindDrill, Project: cCtx.String("project")})
}

func (s *session) listRuns(req *yunchiv1.ListDRRunsRequest) error {
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListDRRunsResponse, error) {
		return yunchiv1.NewRecoveryServiceClient(cc).ListDRRuns(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, s.out.runList(resp.GetRuns(), req.GetKind() == kindDrill))
}

func (p *printer) runList(runs []*yunchiv1.DRRun, drills bool) func(io.Writer) {
	return func(w io.Writer) {
		if len(runs) == 0 {
			if drills {
				fmt.Fprintln(w, "No drills (yunchi dr drill --center C starts one).")
			} else {
				fmt.Fprintln(w, "No failovers, failbacks or drills.")
			}
			return
		}
		if drills {
			fmt.Fprintln(w, "ID\tSTATE\tCENTER\tTO\tPROJECT\tSTARTED\tSTARTED/FAILED/SKIPPED\tRTO P50/MAX\tWORST RPO\tPRODUCTION UNCHANGED")
		} else {
			fmt.Fprintln(w, "ID\tKIND\tSTATE\tFROM\tTO\tPROJECT\tSTARTED\tDONE/FAILED/SKIPPED\tRTO P50/MAX\tWORST DATA LOSS")
		}
		for _, r := range runs {
			counts := fmt.Sprintf("%d/%d/%d", r.GetVmsDone(), r.GetVmsFailed(), r.GetVmsSkipped())
			rto := "-"
			if r.GetRtoMaxMillis() > 0 {
				rto = millis(r.GetRtoP50Millis()) + "/" + millis(r.GetRtoMaxMillis())
			}
			if drills {
				prod := "-"
				switch {
				case r.GetProductionUnchanged():
					prod = "yes"
				case productionChanged(r):
					prod = "NO"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.GetId(), r.GetState(), dash(r.GetFromCenter()), dash(r.GetToCenter()),
					dash(r.GetProject()), p.ago(r.GetStartedAt()), counts, rto, worstLoss(r), prod)
				continue
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.GetId(), r.GetKind(), r.GetState(), dash(r.GetFromCenter()), dash(r.GetToCenter()),
				dash(r.GetProject()), p.ago(r.GetStartedAt()), counts, rto, worstLoss(r))
		}
	}
}

func drDrillSchedules(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListDrillSchedulesResponse, error) {
		return yunchiv1.NewRecoveryServiceClient(cc).ListDrillSchedules(ctx, &yunchiv1.ListDrillSchedulesRequest{})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) {
		if len(resp.GetSchedules()) == 0 {
			fmt.Fprintln(w, "No drill schedules (yunchi dr drill --center C --every 30d makes one).")
			return
		}
		fmt.Fprintln(w, "ID\tCENTER\tTO\tPROJECT\tEVERY\tNEXT\tCREATED BY")
		for _, sc := range resp.GetSchedules() {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sc.GetId(), sc.GetCenter(), dash(sc.GetToCenter()), orDefault(sc.GetProject(), "every project"),
				seconds(sc.GetEverySeconds()), s.out.timestamp(sc.GetNextAt()), dash(sc.GetCreatedBy()))
		}
	})
}

func drDrillUnschedule(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "ID")
	if err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DeleteDrillScheduleResponse, error) {
		return yunchiv1.NewRecoveryServiceClient(cc).DeleteDrillSchedule(ctx, &yunchiv1.DeleteDrillScheduleRequest{Id: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) { fmt.Fprintf(w, "drill schedule %s deleted\n", args[0]) })
}

// --- dr status ---

// drRecoveryStatus is dr status's part on recovery: the newest successful
// drill of each project, then a warning per fenced center.
func (p *printer) drRecoveryStatus(w io.Writer, st *yunchiv1.DRStatus) {
	if len(st.GetDrills()) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "PROJECT\tLAST SUCCESSFUL DRILL\tCENTER\tFINISHED")
		for _, d := range st.GetDrills() {
			if d.GetRun() == "" {
				fmt.Fprintf(w, "%s\tnever\t-\t-\n", d.GetProject())
				continue
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", d.GetProject(), d.GetRun(), dash(d.GetCenter()), dash(p.timestamp(d.GetFinishedAt())))
		}
	}
	if len(st.GetFencedCenters()) > 0 {
		fmt.Fprintln(w)
	}
	for _, c := range st.GetFencedCenters() {
		fmt.Fprintf(w, "WARNING: center %s is fenced (failed over); run yunchi dr failback --to %s once it is back\n", c, c)
	}
}
