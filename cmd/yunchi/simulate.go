package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/yunchi/yunchi/scheduler"
	"github.com/yunchi/yunchi/scheduler/sim"
)

func simulateCommand() *cli.Command {
	return &cli.Command{
		Name:  "simulate",
		Usage: "replay the Azure VM trace against the scheduler, offline (workloads W1/W2: docs/performance.md)",
		Description: "Runs workload fill (W1: pack until 5,000 rejections) or churn (W2: arrivals and\n" +
			"departures in trace time) on a simulated cluster of identical hosts, with Yunchi's\n" +
			"scheduler and, unless --baselines=false, the full-scan best-fit and log2(H)-sample\n" +
			"baselines (figures prefixed baseline_bestfit_ and baseline_sample_). Needs no\n" +
			"controller. Prints name: value lines, or one JSON object with -o json; progress\n" +
			"goes to stderr about once a second on long runs.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "trace", Usage: "trace directory: flav_map.txt, v1.interval_map.txt, v1.<name>.txt, v1.<name>.c<cut>.txt"},
			&cli.StringFlag{Name: "workload", Usage: "fill or churn"},
			&cli.IntFlag{Name: "hosts", Usage: "number of hosts H", DefaultText: "1000 for fill, 720 for churn"},
			&cli.StringFlag{Name: "host", Usage: "host shape <vcpus>c<memory GiB>g<disk GiB>d", Value: sim.FormatShape(sim.DefaultShape)},
			&cli.StringFlag{Name: "strategy", Usage: "Yunchi's strategy: binpack or spread", Value: "binpack"},
			&cli.Int64Flag{Name: "seed", Usage: "Yunchi's tie-break seed", Value: 1},
			&cli.BoolFlag{Name: "baselines", Usage: "also run the best-fit and sampling baselines", Value: true},
			&cli.BoolFlag{Name: "batch", Usage: "one all-or-nothing decision per tenant batch (Yunchi: PlaceBatch) instead of per request"},
			&cli.IntFlag{Name: "max-rejections", Usage: "fill stops after this many rejections", Value: sim.DefaultMaxRejections},
			&cli.IntFlag{Name: "pressure-window", Usage: "decisions Yunchi's binpack spreads for after a refusal in a nearly full pool (docs/performance.md, \"Under pressure\"); 0 turns it off", Value: scheduler.DefaultPressureWindow},
		},
		Action: simulate,
	}
}

func simulate(cCtx *cli.Context) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	out, err := newPrinter(cCtx.App.Writer, cCtx.String("output"))
	if err != nil {
		return err
	}
	s := sim.Settings{Baselines: cCtx.Bool("baselines"), Batch: cCtx.Bool("batch"), Seed: cCtx.Int64("seed")}
	dir := cCtx.String("trace")
	if dir == "" {
		return usagef("simulate: missing --trace DIR (the trace directory, e.g. ../shared/data/azure-vm-trace)")
	}
	switch w := cCtx.String("workload"); w {
	case sim.WorkloadFill, sim.WorkloadChurn:
		s.Workload = w
	case "":
		return usagef("simulate: missing --workload: want fill or churn")
	default:
		return usagef("simulate: unknown workload %q: want fill or churn", w)
	}
	s.Hosts = sim.DefaultFillHosts
	if s.Workload == sim.WorkloadChurn {
		s.Hosts = sim.DefaultChurnHosts
	}
	if cCtx.IsSet("hosts") {
		s.Hosts = cCtx.Int("hosts")
		if s.Hosts <= 0 {
			return usagef("simulate: --hosts must be positive, got %d", s.Hosts)
		}
	}
	if s.Shape, err = sim.ParseShape(cCtx.String("host")); err != nil {
		return usagef("simulate: --host: %v", err)
	}
	if s.Strategy, err = scheduler.ParseStrategy(cCtx.String("strategy")); err != nil {
		return usagef("simulate: --strategy: %v", err)
	}
	if s.MaxRejections = cCtx.Int("max-rejections"); s.MaxRejections <= 0 {
		return usagef("simulate: --max-rejections must be positive, got %d", s.MaxRejections)
	}
	switch w := cCtx.Int("pressure-window"); {
	case w < 0:
		return usagef("simulate: --pressure-window must be 0 (off) or more, got %d", w)
	case w == 0:
		s.PressureWindow = -1
	default:
		s.PressureWindow = w
	}
	if st, err := os.Stat(dir); err != nil {
		return usagef("simulate: --trace %s: no such directory", dir)
	} else if !st.IsDir() {
		return usagef("simulate: --trace %s: not a directory", dir)
	}
	tr, err := sim.LoadTrace(dir)
	if err != nil {
		return usagef("simulate: %v", err)
	}
	stderr := cCtx.App.ErrWriter
	s.Progress = func(status string) { fmt.Fprintf(stderr, "yunchi simulate: %s\n", status) }
	figs, err := sim.Run(tr, s)
	if err != nil {
		return fmt.Errorf("simulate: %v", err)
	}
	if out.json {
		return writeFiguresJSON(out.w, figs)
	}
	for _, f := range figs {
		if _, err := fmt.Fprintf(out.w, "%s: %s\n", f.Name, f.Text()); err != nil {
			return err
		}
	}
	return nil
}

// writeFiguresJSON writes the figures as one JSON object, in order.
func writeFiguresJSON(w io.Writer, figs []sim.Figure) error {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range figs {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.Name)
		v, err := json.Marshal(f.Value)
		if err != nil {
			return fmt.Errorf("figure %s: %v", f.Name, err)
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	var ind bytes.Buffer
	if err := json.Indent(&ind, b.Bytes(), "", "  "); err != nil {
		return err
	}
	ind.WriteByte('\n')
	_, err := w.Write(ind.Bytes())
	return err
}
