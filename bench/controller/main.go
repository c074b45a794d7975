// Command bench/controller is `make bench-controller`: the controller write
// path measured end to end (issue 7). It starts 3 `yunchid controller`
// processes on loopback, registers simulated hosts that speak the real
// agent protocol, and prints `name: value` lines, each figure beside its
// target and beside the physical limit measured in the same run (three
// hashicorp/raft nodes with the controllers' log store and transport,
// committing entries of a create command's size, no Yunchi code).
// Progress goes to stderr. Everything it starts is killed and every file
// it writes removed when it ends, also on an error or Ctrl-C.
//
// It is a separate program, not part of yunchid: load generation and the
// raw-raft cluster have no place in the product binary.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

type config struct {
	yunchid                  string
	duration, cpuWindow      time.Duration
	levels                   []int
	trials, hosts, vms       int
	realVMs                  int
	createHosts              int
	heartbeat                time.Duration
	skipFailover, skipHeartb bool
}

func main() {
	maybeRawFollower()
	var cfg config
	var levels string
	flag.StringVar(&cfg.yunchid, "yunchid", "bin/yunchid", "yunchid binary to run the controllers from")
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "length of each create load level")
	flag.StringVar(&levels, "clients", "1,16,256", "concurrent client counts, comma-separated")
	flag.IntVar(&cfg.trials, "trials", 20, "leader kill -9 trials (0 skips)")
	flag.IntVar(&cfg.hosts, "hosts", 10000, "simulated hosts heartbeating for the leader-CPU figure (0 skips)")
	flag.DurationVar(&cfg.heartbeat, "heartbeat", 5*time.Second, "heartbeat interval of those hosts")
	flag.DurationVar(&cfg.cpuWindow, "cpu-window", 20*time.Second, "how long leader CPU is sampled once all hosts are registered")
	flag.IntVar(&cfg.vms, "vms", 100000, "VMs in the in-process state for memory, snapshot and restore (0 skips)")
	flag.IntVar(&cfg.realVMs, "controller-vms", 100000, "VMs created on the controllers for the leader's memory per VM (0 skips)")
	flag.IntVar(&cfg.createHosts, "create-hosts", 45, "hosts the creates are placed on (as yunchid dev)")
	flag.Parse()
	for _, s := range strings.Split(levels, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "bench-controller: -clients %q: give positive numbers, comma-separated\n", levels)
			os.Exit(2)
		}
		cfg.levels = append(cfg.levels, n)
	}
	if cfg.duration <= 0 || cfg.trials < 0 || cfg.hosts < 0 || cfg.vms < 0 || cfg.realVMs < 0 || cfg.createHosts <= 0 || cfg.heartbeat <= 0 || cfg.cpuWindow <= 0 {
		fmt.Fprintln(os.Stderr, "bench-controller: -duration, -heartbeat, -cpu-window and -create-hosts must be positive; -trials, -hosts, -vms, -controller-vms not negative")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench-controller: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		os.Exit(1)
	}
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// line is one output figure.
type line struct{ name, value string }

// loadavg is /proc/loadavg's 1, 5 and 15 minute figures: how busy the
// machine was besides the benchmark.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) + " ms" }

func run(ctx context.Context, cfg config, out *os.File) (err error) {
	if _, err := os.Stat(cfg.yunchid); err != nil {
		return fmt.Errorf("yunchid binary %s: %w (run `make build` or give -yunchid)", cfg.yunchid, err)
	}
	dir, err := os.MkdirTemp("", "yunchi-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var lines []line
	add := func(name, format string, args ...any) {
		lines = append(lines, line{name, fmt.Sprintf(format, args...)})
	}
	// What the phases measure; emit turns it into the output lines, each
	// figure beside its target and the raw-raft limit. It runs also when a
	// phase fails or is interrupted: then with what was measured so far.
	type level struct {
		proto   string
		clients int
		r       result
	}
	var (
		created                        []level
		entrySize                      int
		failovers                      []time.Duration
		hbDone, memDone, sfDone        bool
		cpu, followerCPU               float64
		leaderRSS, beats, beatFailures int64
		rawRes                         = map[int]result{}
		// rawPaired is raw raft measured in alternation with each
		// protocol's one-client level.
		rawPaired = map[string]result{}
		sf        stateFigures
	)
	var mem struct {
		added, total int
		rss0, rss1   int64
	}
	emit := func() {
		if entrySize > 0 {
			add("create_command_bytes", "%d", entrySize)
		}
		for _, lv := range created {
			k := fmt.Sprintf("%s_%d", lv.proto, lv.clients)
			// The raw-raft figure beside it: a one-client level's own
			// rounds in alternation, else the level's at the end.
			rr, measured := rawPaired[lv.proto], lv.clients == 1
			if !measured || rr.ok == 0 {
				rr, measured = rawRes[lv.clients]
			}
			rawAt := func(f func(result) string) string {
				if !measured {
					return "raw raft not measured"
				}
				return "raw raft " + f(rr)
			}
			var tps, t50, t99 string
			if lv.clients >= 256 {
				tps, t99 = "target >= 3000; ", "target < 100 ms; "
			}
			if measured && lv.clients == 1 {
				t50 = fmt.Sprintf("target <= %s; ", ms(rr.p50+time.Millisecond))
			}
			add("creates_per_s_"+k, "%.0f (%s%s)", lv.r.perSec, tps, rawAt(func(r result) string { return fmt.Sprintf("%.0f", r.perSec) }))
			add("create_p50_"+k, "%s (%s%s)", ms(lv.r.p50), t50, rawAt(func(r result) string { return ms(r.p50) }))
			add("create_p99_"+k, "%s (%s%s)", ms(lv.r.p99), t99, rawAt(func(r result) string { return ms(r.p99) }))
			add("create_failed_"+k, "%d", lv.r.failed)
		}
		for _, n := range cfg.levels {
			if rr, ok := rawRes[n]; ok {
				add(fmt.Sprintf("raw_raft_commits_per_s_%d", n), "%.0f", rr.perSec)
				add(fmt.Sprintf("raw_raft_p50_%d", n), "%s", ms(rr.p50))
				add(fmt.Sprintf("raw_raft_p99_%d", n), "%s", ms(rr.p99))
			}
		}
		if len(failovers) > 0 {
			add("failover_first_write_p50", "%s (%d trials)", ms(percentile(failovers, 0.5)), len(failovers))
			add("failover_first_write_p99", "%s (target < 2000 ms)", ms(percentile(failovers, 0.99)))
		}
		if memDone {
			add("controller_vms", "%d (%d added for this figure)", mem.total, mem.added)
			add("controller_rss_bytes_per_vm", "%.0f (target <= 2048; leader RSS after minus before, per added VM)", float64(mem.rss1-mem.rss0)/float64(mem.added))
			add("controller_rss_bytes", "%d", mem.rss1)
		}
		if hbDone {
			add("heartbeat_hosts", "%d (every %s)", cfg.hosts, cfg.heartbeat)
			add("leader_cpu_cores", "%.3f (target < 0.5)", cpu)
			add("follower_cpu_cores", "%.3f (mean of the two)", followerCPU)
			add("heartbeats_per_s", "%.0f (%d failed)", float64(beats)/cfg.cpuWindow.Seconds(), beatFailures)
			add("leader_rss_bytes", "%d", leaderRSS)
		}
		if sfDone {
			add("state_vms", "%d (on %d hosts, in-process)", sf.vms, sf.hosts)
			add("state_heap_bytes_per_vm", "%.0f (target <= 2048; live Go heap after GC, in-process)", sf.heapPerVM)
			add("snapshot_take", "%s (Apply blocked meanwhile; sorting and encoding are in persist, beside Apply)", ms(sf.snapshotTake))
			add("snapshot_persist", "%s", ms(sf.snapshotPers))
			add("snapshot_bytes", "%d", sf.snapshotBytes)
			add("restore", "%s (target < 2000 ms)", ms(sf.restore))
		}
	}
	defer func() {
		emit()
		add("loadavg_at_end", "%s", loadavg())
		for _, l := range lines {
			fmt.Fprintf(out, "%s: %s\n", l.name, l.value)
		}
	}()

	add("cpus", "%d", runtime.NumCPU())
	add("loadavg_at_start", "%s", loadavg())
	progress("starting 3 controllers from %s in %s", cfg.yunchid, dir)
	cl, err := startCluster(ctx, cfg.yunchid, dir, 3)
	defer cl.killAll()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			for _, p := range cl.ctls {
				b, _ := os.ReadFile(p.logPath)
				if len(b) > 2000 {
					b = b[len(b)-2000:]
				}
				fmt.Fprintf(os.Stderr, "--- end of controller %s's log:\n%s\n", p.id, b)
			}
		}
	}()

	// Hosts for the creates: 8192 1-vCPU VMs each, so that capacity does not
	// run out even at 3,000 creates/s plus the memory figure's VMs,
	// heartbeating at the controller's default interval (2 s).
	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel()
	createHosts, err := newSimHosts(cl.apis(), 1)
	if err != nil {
		return err
	}
	defer func() { hcancel(); createHosts.close() }() // its goroutines end with hctx
	var facts []*yunchiv1.HostFacts
	for i := 0; i < cfg.createHosts; i++ {
		facts = append(facts, hostFacts(fmt.Sprintf("big%03d", i), 8192, 8192*(256<<20), 8192*(1<<30)))
	}
	progress("making %d host tokens", cfg.createHosts)
	mds, err := hostTokens(ctx, cl.apis(), cl.tokens.Secadmin, facts, 16)
	if err != nil {
		return err
	}
	registered, errc := make(chan struct{}), make(chan error, 1)
	createHosts.run(hctx, facts, mds, 2*time.Second, 8, registered, errc)
	select {
	case <-registered:
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
	progress("%d hosts registered", cfg.createHosts)

	leader, err := cl.waitLeader(ctx, 30*time.Second)
	if err != nil {
		return err
	}
	st, err := apitest.Status(leader.api)
	if err != nil {
		return err
	}
	lo := st.LastLogIndex

	// createOp is a create through protocol pr (to the leader of the
	// moment) for n clients, VM names starting with prefix, and what
	// closes its connections.
	createOp := func(pr string, n int, prefix string) (func(context.Context, int, int) error, func(), error) {
		if pr == "rest" {
			hc := restClient(n)
			return restCreate(hc, leader.api, cl.tokens.Sysadmin, prefix), hc.CloseIdleConnections, nil
		}
		conns, err := dialAll([]string{leader.api}, 4, cl.tokens.Sysadmin)
		if err != nil {
			return nil, nil, err
		}
		return grpcCreate(conns, prefix), func() {
			for _, c := range conns {
				c.Close()
			}
		}, nil
	}
	// Warm-up, not measured: without it the first level (one gRPC client)
	// also paid for the cluster's start (heaps growing, the scheduler's
	// cache filling, connections opening). Its creates are the entries the
	// size of a create command is read from.
	{
		op, closeFn, err := createOp("grpc", 16, "w0")
		if err != nil {
			return err
		}
		r := runLoad(ctx, 16, 2*time.Second, op)
		closeFn()
		progress("warm-up: %d created in 2 s (not measured), %d failed %s", r.ok, r.failed, r.firstErr)
	}
	if st, err = apitest.Status(leader.api); err != nil {
		return err
	}
	hi := st.LastLogIndex

	// The size of a create command: read it off a follower's log (stopped
	// for the moment, then restarted).
	var follower *proc
	for _, p := range cl.ctls {
		if p != leader {
			follower = p
			break
		}
	}
	if err := cl.waitFormed(ctx, 3, 60*time.Second); err != nil {
		return err
	}
	follower.stop()
	var sampled int
	entrySize, sampled, err = createEntrySize(follower.dataDir, lo, hi)
	if err != nil {
		return fmt.Errorf("create command size: %w", err)
	}
	progress("a create command is %d bytes in the raft log (median of %d entries)", entrySize, sampled)
	if err := follower.start(cl.bin); err != nil {
		return err
	}
	if err := cl.waitFormed(ctx, 3, 60*time.Second); err != nil {
		return err
	}
	if leader, err = cl.waitLeader(ctx, 30*time.Second); err != nil {
		return err
	}

	// The one-client figures are compared with raw raft committing
	// entries of the same size on the same disk, measured in alternation
	// with them (rounds of a fifth of the level each): this disk's commit
	// time drifts by half a millisecond over minutes, and a baseline
	// measured minutes later compared the create with another disk.
	// It is stopped after the levels, before the phases that measure the
	// controllers' CPU and memory.
	var raw1 *raft.Raft
	var paired *rawCluster
	stopPaired := func() {
		if paired != nil {
			paired.close()
			paired = nil
		}
	}
	defer stopPaired()
	if slices.Contains(cfg.levels, 1) {
		if paired, err = startRawRaft(ctx, filepath.Join(dir, "paired"), 3); err != nil {
			return fmt.Errorf("raw raft: %w", err)
		}
		if raw1, err = paired.leader(ctx); err != nil {
			return fmt.Errorf("raw raft: %w", err)
		}
	}
	var rawOne []result

	// Creates through gRPC and REST, clients talking to the leader.
	for _, pr := range []string{"grpc", "rest"} {
		for _, n := range cfg.levels {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			progress("creates through %s, %d clients, %s", pr, n, cfg.duration)
			rounds, paired := 1, n == 1 && raw1 != nil
			if paired {
				rounds = 5
			}
			slice := cfg.duration / time.Duration(rounds)
			var ys, raws []result
			for i := 0; i < rounds && ctx.Err() == nil; i++ {
				prefix := fmt.Sprintf("%s%d", pr[:1], n)
				if paired {
					prefix = fmt.Sprintf("%s1r%d", pr[:1], i)
				}
				op, closeFn, err := createOp(pr, n, prefix)
				if err != nil {
					return err
				}
				ys = append(ys, runLoad(ctx, n, slice, op))
				closeFn()
				if paired {
					raws = append(raws, runLoad(ctx, 1, slice, rawOp(raw1, entrySize)))
				}
			}
			r := merge(ys)
			if paired {
				rr := merge(raws)
				rawPaired[pr], rawOne = rr, append(rawOne, raws...)
				progress("  raw raft in alternation: %.0f commits/s, p50 %s, p99 %s", rr.perSec, ms(rr.p50), ms(rr.p99))
			}
			progress("  %d created (%.0f/s), %d failed %s", r.ok, r.perSec, r.failed, r.firstErr)
			created = append(created, level{pr, n, r})
		}
	}
	stopPaired()
	if len(rawOne) > 0 {
		rawRes[1] = merge(rawOne)
	}

	// Leader kill -9 to the first successful write.
	for i := 0; i < cfg.trials; i++ {
		d, err := failoverTrial(ctx, cl, i)
		if err != nil {
			return fmt.Errorf("failover trial %d: %w", i+1, err)
		}
		progress("failover trial %d/%d: first write %s after kill -9", i+1, cfg.trials, ms(d))
		failovers = append(failovers, d)
	}

	// Controller memory per VM: the leader's RSS before and after realVMs
	// more VMs (CreateVMs, 100 per call). RSS, not the Go heap: a running
	// controller cannot be made to collect, so its heap figures mix live
	// data with garbage; the live heap per VM is measured in process below.
	if cfg.realVMs > 0 {
		leader, err = cl.waitLeader(ctx, 30*time.Second)
		if err != nil {
			return err
		}
		mem.rss0, _ = leader.rssBytes()
		progress("creating %d VMs in batches of 100 for the memory figure", cfg.realVMs)
		if mem.added, err = createMany(ctx, leader.api, cl.tokens.Sysadmin, cfg.realVMs, 4); err != nil {
			return err
		}
		if err := cl.waitFormed(ctx, 3, 60*time.Second); err != nil {
			return err
		}
		mem.rss1, _ = leader.rssBytes()
		n, err := metric(ctx, leader.api, "yunchi_vms")
		if err == nil {
			mem.total = int(n)
		}
		progress("leader RSS %d -> %d bytes for %d more VMs", mem.rss0, mem.rss1, mem.added)
		memDone = mem.added > 0
	}

	// Leader CPU with many heartbeating hosts.
	if cfg.hosts > 0 {
		hb, err := newSimHosts(cl.apis(), 2)
		if err != nil {
			return err
		}
		defer func() { hcancel(); hb.close() }() // its goroutines end with hctx
		var hfacts []*yunchiv1.HostFacts
		for i := 0; i < cfg.hosts; i++ {
			hfacts = append(hfacts, hostFacts(fmt.Sprintf("sim%05d", i), 64, 256<<30, 4<<40))
		}
		progress("making %d host tokens", cfg.hosts)
		hmds, err := hostTokens(ctx, cl.apis(), cl.tokens.Secadmin, hfacts, 64)
		if err != nil {
			return err
		}
		progress("registering %d hosts heartbeating every %s", cfg.hosts, cfg.heartbeat)
		reg, errc := make(chan struct{}), make(chan error, 1)
		hb.run(hctx, hfacts, hmds, cfg.heartbeat, 64, reg, errc)
		select {
		case <-reg:
		case err := <-errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
		// One full interval so every host is on its steady heartbeat.
		progress("hosts registered; settling for %s, then sampling CPU for %s", cfg.heartbeat, cfg.cpuWindow)
		select {
		case <-time.After(cfg.heartbeat):
		case <-ctx.Done():
			return ctx.Err()
		}
		leader, err = cl.waitLeader(ctx, 30*time.Second)
		if err != nil {
			return err
		}
		var others []*proc
		for _, p := range cl.ctls {
			if p != leader {
				others = append(others, p)
			}
		}
		c0, err := leader.cpuSeconds()
		if err != nil {
			return err
		}
		var f0 float64
		for _, p := range others {
			v, _ := p.cpuSeconds()
			f0 += v
		}
		b0, e0 := hb.beats.Load(), hb.failures.Load()
		t0 := time.Now()
		select {
		case <-time.After(cfg.cpuWindow):
		case <-ctx.Done():
			return ctx.Err()
		}
		c1, err := leader.cpuSeconds()
		if err != nil {
			return err
		}
		var f1 float64
		for _, p := range others {
			v, _ := p.cpuSeconds()
			f1 += v
		}
		el := time.Since(t0).Seconds()
		cpu = (c1 - c0) / el
		followerCPU = (f1 - f0) / el / float64(len(others))
		beats, beatFailures = hb.beats.Load()-b0, hb.failures.Load()-e0
		leaderRSS, _ = leader.rssBytes()
		hbDone = true
		progress("leader CPU %.3f of a core; %d heartbeats (%d failed) in %.0f s", cpu, beats, beatFailures, el)
	}
	hcancel()
	progress("stopping the controllers")
	cl.stopAll()

	// The physical limit at the same concurrency.
	progress("raw raft: 3 nodes, %d-byte entries", entrySize)
	if err := rawLimit(ctx, dir, cfg, entrySize, rawRes); err != nil {
		return fmt.Errorf("raw raft: %w", err)
	}

	if cfg.vms > 0 {
		progress("in-process state: %d VMs", cfg.vms)
		if sf, err = measureState(cfg.vms, max(cfg.vms/100, 1)); err != nil {
			return fmt.Errorf("state at %d VMs: %w", cfg.vms, err)
		}
		sfDone = true
	}

	return nil
}

// failoverTrial kills the leader with SIGKILL, times the first create that
// succeeds on any live controller, then restarts the killed one and waits
// until all three are back and caught up.
func failoverTrial(ctx context.Context, cl *cluster, trial int) (time.Duration, error) {
	if err := cl.waitFormed(ctx, 3, 60*time.Second); err != nil {
		return 0, err
	}
	l := cl.leader()
	if l == nil {
		return 0, errors.New("no leader")
	}
	conns, err := dialAll(cl.apis(), 1, cl.tokens.Sysadmin)
	if err != nil {
		return 0, err
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var live []yunchiv1.VMServiceClient
	for i, p := range cl.ctls {
		if p != l {
			live = append(live, yunchiv1.NewVMServiceClient(conns[i]))
		}
	}
	l.kill()
	t0 := time.Now()
	// Each survivor is tried back to back in its own loop (each try bounded
	// by 250 ms), so the figure is not rounded up to a poll interval or to
	// another controller's timeout. A try that timed out may still have
	// been applied: its retry then says "already exists", a write too.
	name := fmt.Sprintf("failover-%d", trial)
	tctx, tcancel := context.WithTimeout(ctx, 60*time.Second)
	first := make(chan time.Duration, len(live))
	var wg sync.WaitGroup
	defer wg.Wait() // before the connections close
	for _, c := range live {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tctx.Err() == nil {
				cctx, cancel := context.WithTimeout(tctx, 250*time.Millisecond)
				_, err := c.CreateVM(cctx, &yunchiv1.CreateVMRequest{Name: name, Vcpus: 1, Memory: vmMemory, Disk: vmDisk})
				cancel()
				if err == nil || status.Code(err) == codes.AlreadyExists {
					first <- time.Since(t0)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	var d time.Duration
	defer tcancel() // runs before wg.Wait: the other loop ends at its next try
	select {
	case d = <-first:
	case <-tctx.Done():
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, errors.New("no write succeeded within 60 s of the leader's kill")
	}
	if err := l.start(cl.bin); err != nil {
		return 0, err
	}
	return d, cl.waitFormed(ctx, 3, 60*time.Second)
}
