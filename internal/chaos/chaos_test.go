package chaos

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/yunchi/yunchi/cmd/yunchid/clustertest"
)

var (
	full     = flag.Bool("chaos.full", false, "run every scenario with the full workload (make chaos); default: the short set of make test")
	seedFlag = flag.Int64("chaos.seed", 0, "seed of the clients' choices (0: from the clock; printed, to replay a run)")
	runFlag  = flag.String("chaos.run", "", "run only the scenarios whose name matches this regexp")
	outDir   = flag.String("chaos.out", "", "directory for failed runs' histories and visualisations (default: the test's temp dir, removed)")
)

func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// TestChaos runs the fault scenarios (the short set unless -chaos.full)
// under the workload and prints each one's figures as name: value lines.
// Any violation fails it, with the history kept and the seed printed.
func TestChaos(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = time.Now().UnixNano() % 1_000_000
	}
	cfg := Config{Seed: seed, Workload: 14 * time.Second, FaultAt: 3 * time.Second, FaultFor: 5 * time.Second, Clients: 8, Names: 16, OutDir: *outDir}
	if !*full {
		cfg.Workload, cfg.FaultAt, cfg.FaultFor, cfg.Clients = 9*time.Second, 2*time.Second, 3*time.Second, 6
	}
	var match *regexp.Regexp
	if *runFlag != "" {
		var err error
		if match, err = regexp.Compile(*runFlag); err != nil {
			t.Fatalf("-chaos.run: %v", err)
		}
	}
	fmt.Printf("chaos_seed: %d\n", seed)
	total := 0
	for _, sc := range Scenarios {
		if match != nil && !match.MatchString(sc.Name) || match == nil && !*full && !slices.Contains(Short, sc.Name) {
			continue
		}
		t.Run(sc.Name, func(t *testing.T) {
			start := time.Now()
			res := RunScenario(t, sc, cfg)
			fmt.Printf("== scenario %s\n", sc.Name)
			for _, l := range res.Lines {
				fmt.Printf("%s.%s: %s\n", sc.Name, l[0], l[1])
			}
			fmt.Printf("%s.duration_s: %.1f\n", sc.Name, time.Since(start).Seconds())
			total += len(res.Violations)
		})
	}
	fmt.Printf("chaos_violations_total: %d\n", total)
}
