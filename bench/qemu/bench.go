//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/yunchi/yunchi/internal/benchkit"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	lv "libvirt.org/go/libvirt"

	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/qemuhost"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// perQEMUOverhead is what one TCG QEMU process takes beyond its guest's
// memory, for the burst's memory check (measured ~60-90 MiB RSS here).
const perQEMUOverhead = 160 << 20

// run measures and prints the figures, also those of a run cut short.
func run(ctx context.Context, cfg config, out io.Writer) (err error) {
	dir, err := os.MkdirTemp(cfg.tmpDir, "yunchi-bench-qemu-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var ls lines
	header(&ls, cfg)
	defer func() {
		ls.Add("mem_available_mib_at_end", "%d", benchkit.MemAvailableMiB())
		ls.Add("loadavg_at_end", "%s", benchkit.Loadavg())
		ls.Print(out)
	}()

	rec := newRecorder(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	benchkit.Progress("starting the dev cluster (3 controllers, 1 real host) in %s", dir)
	cl, err := startCluster(ctx, dir, cfg.cacheDir, rec)
	if err != nil {
		return err
	}
	defer func() {
		ls.Add("host_marked_down", "%d (times a controller marked the host down: heartbeats more than 10 s apart)", rec.hostDowns())
		benchkit.Progress("stopping the dev cluster (its agent, libvirtd and guests)")
		err = errors.Join(err, cl.close())
	}()
	h := cl.rh.Hosts()[0]
	if err := makeRoom(ctx, cl.conn, h.ID, max(cfg.burst, 1), cfg.memoryBytes); err != nil {
		return err
	}
	yc := newYunchiClient(cl.conn, h.ID, rec, cfg.memory)

	// 1. Cold: the first VM makes the host fetch the image.
	benchkit.Progress("cold VM: the host fetches image %q first", devcluster.TinyImage)
	cold, err := yc.one(ctx, "cold")
	if err != nil {
		return err
	}
	ls.Add("yunchi_cold_first_vm_ms", "%s (create to RUNNING with the image fetch to the host; left out below)", msf(cold.total()))
	vm, err := yc.vms.GetVM(ctx, &yunchiv1.GetVMRequest{Name: "cold"})
	if err != nil {
		return err
	}
	img, err := yunchiv1.NewImageServiceClient(cl.conn).GetImage(ctx, &yunchiv1.GetImageRequest{Name: devcluster.TinyImage})
	if err != nil {
		return err
	}
	if img.Format != yunchiv1.ImageFormat_IMAGE_FORMAT_RAW {
		return fmt.Errorf("image %s is %s; the baseline expects raw", img.Name, img.Format)
	}
	if err := yc.remove(ctx, "cold"); err != nil {
		return err
	}
	b := &baseline{h: h, image: filepath.Join(h.ImageDir, img.Sha256+".raw"), diskBytes: vm.DiskBytes, memory: cfg.memoryBytes}
	if _, err := os.Stat(b.image); err != nil {
		return fmt.Errorf("the agent's cached image: %w", err)
	}
	conn, err := lv.NewConnect(h.URI())
	if err != nil {
		return err
	}
	defer conn.Close()
	var made []*lvVM // every baseline VM, cleaned up also on an error
	defer func() {
		if cerr := cleanupAll(made); cerr != nil {
			err = errors.Join(err, fmt.Errorf("baseline clean-up: %w", cerr))
		}
		lvFailed := 0
		for _, v := range made {
			lvFailed += v.failedStarts
		}
		ls.Add("start_failures", "Yunchi %d, libvirt alone %d (VMs whose first start failed and that were started at the next try)", yc.failures.Load(), lvFailed)
		if yc.failures.Load() > 0 || lvFailed > 0 {
			// libvirtd's own words on why, for whoever reads the run.
			b, _ := os.ReadFile(filepath.Join(h.LV.Dir, "daemons.log"))
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			benchkit.Progress("end of the host's libvirtd log:\n%s", b)
		}
	}()
	warm, err := b.render("warm", 0, true)
	if err != nil {
		return err
	}
	made = append(made, warm)
	if err := warm.run(conn); err != nil {
		return err
	}
	ls.Add("libvirt_first_vm_ms", "%s (libvirt alone's first define+start; left out below)", msf(warm.defineDur+warm.startDur))
	if err := warm.cleanup(); err != nil {
		return err
	}

	// 2. One after the other, Yunchi and libvirt alone in turn.
	var ys []vmTimes
	var ld, lsd []time.Duration // libvirt's define, define+start
	var lstart []time.Duration
	for i := range cfg.seq {
		if err := ctx.Err(); err != nil {
			return err
		}
		yFirst := i%2 == 0 // neither always right after the other's clean-up
		for k := range 2 {
			if (k == 0) == yFirst {
				name := fmt.Sprintf("seq-%d", i)
				t, err := yc.one(ctx, name)
				if err != nil {
					return err
				}
				ys = append(ys, t)
				if err := yc.remove(ctx, name); err != nil {
					return err
				}
				continue
			}
			v, err := b.render("seq", i, true)
			if err != nil {
				return err
			}
			made = append(made, v)
			if err := v.run(conn); err != nil {
				return err
			}
			ld, lstart, lsd = append(ld, v.defineDur), append(lstart, v.startDur), append(lsd, v.defineDur+v.startDur)
			if err := v.cleanup(); err != nil {
				return err
			}
		}
		if err := waitNoGuests(ctx, h); err != nil {
			return err
		}
		benchkit.Progress("one at a time: %d/%d (Yunchi %s, libvirt %s)", i+1, cfg.seq, msf(ys[len(ys)-1].total()), msf(lsd[len(lsd)-1]))
	}
	seqFigures(&ls, cfg, ys, ld, lstart, lsd)

	// 3. At once: VMs that boot nothing, then (-burst-image) from the image.
	if cfg.burst == 0 {
		return nil
	}
	shapes := []bool{false}
	if cfg.burstImage {
		shapes = append(shapes, true)
	}
	for _, booted := range shapes {
		if err := measureBursts(ctx, &ls, cfg, yc, b, conn, booted, &made); err != nil {
			return err
		}
	}
	return nil
}

// measureBursts measures cfg.bursts rounds of cfg.burst VMs at once, each
// way, and adds the figures.
func measureBursts(ctx context.Context, ls *lines, cfg config, yc *yunchiClient, b *baseline, conn *lv.Connect, booted bool, made *[]*lvVM) error {
	need := int64(cfg.burst) * (cfg.memoryBytes + perQEMUOverhead)
	if avail := benchkit.MemAvailableMiB() << 20; avail > 0 && avail < need {
		return fmt.Errorf("%d VMs of %s need about %d MiB, only %d MiB available: give a smaller -burst or -memory", cfg.burst, cfg.memory, need>>20, avail>>20)
	}
	what := "empty disk + seed, nothing to boot"
	if booted {
		what = "from the image, booting"
	}
	var bs burstSamples
	for r := range cfg.bursts {
		kind := fmt.Sprintf("%s%d", shapeName(booted), r)
		yunchi := func() error {
			benchkit.Progress("at once (%s), round %d/%d: Yunchi, %d VMs in one CreateVMs", what, r+1, cfg.bursts, cfg.burst)
			ts, err := yc.many(ctx, "y"+kind, cfg.burst, booted)
			if err != nil {
				return err
			}
			bf := burstOf(ts)
			bs.yAll, bs.yAPI = append(bs.yAll, bf.all), append(bs.yAPI, bf.api)
			bs.yFirstDef, bs.yLastStart, bs.yReport = append(bs.yFirstDef, bf.firstDefined), append(bs.yLastStart, bf.lastStarted), append(bs.yReport, bf.lastReport)
			names := make([]string, len(ts))
			for i, t := range ts {
				names[i] = t.name
				if t.haveDefined && t.haveStarted {
					bs.yStart = append(bs.yStart, t.started.Sub(t.defined))
				}
			}
			benchkit.Progress("  all running after %s; deleting", secs(bf.all))
			return yc.remove(ctx, names...)
		}
		// libvirt alone: way w (all at once, a connection each; 4 at a
		// time on one connection, as the agent; one after the other).
		lvWay := func(w int) func() error {
			return func() error {
				benchkit.Progress("at once (%s), round %d/%d: libvirt alone, %d define+starts %s", what, r+1, cfg.bursts, cfg.burst, lvWays[w].what)
				vms, err := b.renderN(fmt.Sprintf("%s-%s", lvWays[w].name, kind), cfg.burst, booted)
				if err != nil {
					return err
				}
				*made = append(*made, vms...)
				var d time.Duration
				if w == 0 {
					d, err = b.burstAtOnce(ctx, vms)
				} else {
					d, err = b.burstPool(ctx, conn, vms, lvWays[w].width)
				}
				if err != nil {
					return err
				}
				bs.lAll[w] = append(bs.lAll[w], d)
				for _, v := range vms {
					bs.lDefine[w], bs.lStart[w] = append(bs.lDefine[w], v.defineDur), append(bs.lStart[w], v.startDur)
				}
				benchkit.Progress("  all running after %s; destroying", secs(d))
				return cleanupAll(vms)
			}
		}
		// Each round starts with another of the three, so that none is
		// always the one run right after (or before) the same other.
		steps := []func() error{yunchi, lvWay(0), lvWay(1), lvWay(2)}
		for k := range steps {
			if err := steps[(k+r)%len(steps)](); err != nil {
				return err
			}
			if err := waitNoGuests(ctx, b.h); err != nil {
				return err
			}
		}
	}
	burstFigures(ls, cfg, booted, what, bs)
	return nil
}

// shapeName names a burst's VMs in figures: "idle" (nothing to boot) or
// "boot" (from the image).
func shapeName(booted bool) string {
	if booted {
		return "boot"
	}
	return "idle"
}

// seqFigures adds the one-at-a-time figures.
func seqFigures(ls *lines, cfg config, ys []vmTimes, ld, lstart, lsd []time.Duration) {
	var tot, api, toDef, start, report []time.Duration
	for _, t := range ys {
		tot = append(tot, t.total())
		api = append(api, t.returned.Sub(t.call))
		if t.haveDefined && t.haveStarted {
			toDef = append(toDef, t.defined.Sub(t.returned))
			start = append(start, t.started.Sub(t.defined))
			report = append(report, t.running.Sub(t.started))
		}
	}
	n := len(ys)
	ls.Add("seq_vms", "%d each way, one at a time (p99 of %d is the slowest)", n, n)
	ls.Add("yunchi_create_to_running_p50_ms", "%s", msf(percentile(tot, 0.5)))
	ls.Add("yunchi_create_to_running_p99_ms", "%s", msf(percentile(tot, 0.99)))
	ls.Add("libvirt_define_start_p50_ms", "%s", msf(percentile(lsd, 0.5)))
	ls.Add("libvirt_define_start_p99_ms", "%s", msf(percentile(lsd, 0.99)))
	ls.Add("yunchi_added_per_vm_p50_ms", "%s (target < 50: Yunchi p50 minus libvirt p50)", msf(percentile(tot, 0.5)-percentile(lsd, 0.5)))
	ls.Add("yunchi_added_per_vm_p99_ms", "%s (Yunchi p99 minus libvirt p99)", msf(percentile(tot, 0.99)-percentile(lsd, 0.99)))
	ls.Add("yunchi_api_create_p50_ms", "%s (CreateVM call to answer: placement, raft commit)", msf(percentile(api, 0.5)))
	ls.Add("yunchi_to_agent_defined_p50_ms", "%s (answer to the agent's Define returned: assignment stream, reconcile, volumes, seed, define; libvirt alone's define %s)",
		msf(percentile(toDef, 0.5)), msf(percentile(ld, 0.5)))
	ls.Add("yunchi_agent_start_p50_ms", "%s (the agent's Start; libvirt alone's start %s)", msf(percentile(start, 0.5)), msf(percentile(lstart, 0.5)))
	ls.Add("yunchi_started_to_api_running_p50_ms", "%s (status report, raft commit, WatchVM)", msf(percentile(report, 0.5)))
}

// burst is one burst's figures, from the CreateVMs call.
type burst struct {
	all, api, firstDefined, lastStarted, lastReport time.Duration
}

func burstOf(ts []vmTimes) burst {
	var b burst
	var firstDef, lastStart, lastRun time.Time
	for _, t := range ts {
		b.all = max(b.all, t.total())
		b.api = t.returned.Sub(t.call)
		if t.haveDefined && (firstDef.IsZero() || t.defined.Before(firstDef)) {
			firstDef = t.defined
		}
		if t.haveStarted && t.started.After(lastStart) {
			lastStart = t.started
		}
		if t.running.After(lastRun) {
			lastRun = t.running
		}
	}
	if len(ts) > 0 {
		call := ts[0].call
		if !firstDef.IsZero() {
			b.firstDefined = firstDef.Sub(call)
		}
		if !lastStart.IsZero() {
			b.lastStarted = lastStart.Sub(call)
			b.lastReport = lastRun.Sub(lastStart)
		}
	}
	return b
}

// burstFigures adds the at-once figures (medians over the rounds; each
// round's value in brackets).
// lvWays are the ways libvirt alone makes a burst.
var lvWays = [3]struct {
	name, what string
	width      int
}{
	{"atonce", "all at once, a connection each", 0},
	{"4wide", "4 at a time on one connection (as the agent)", 4},
	{"serial", "one after the other on one connection", 1},
}

// burstSamples are the bursts' figures, one per round, and per VM over
// all rounds (yStart: the agent's Start; lDefine, lStart: libvirt alone's
// define and start), libvirt alone's by way (lvWays).
type burstSamples struct {
	yAll, yAPI, yFirstDef, yLastStart, yReport, yStart []time.Duration
	lAll, lDefine, lStart                              [3][]time.Duration
}

func burstFigures(ls *lines, cfg config, booted bool, what string, bs burstSamples) {
	n := cfg.burst
	k := fmt.Sprintf("burst%d_%s", n, shapeName(booted))
	med := func(ds []time.Duration) time.Duration { return percentile(ds, 0.5) }
	each := func(ds []time.Duration) string {
		if len(ds) < 2 {
			return ""
		}
		var s []string
		for _, d := range ds {
			s = append(s, secs(d))
		}
		return " [" + strings.Join(s, ", ") + "]"
	}
	ls.Add(k+"_vms", "%d each way, created at once (%s); %d round(s), medians", n, what, cfg.bursts)
	ls.Add("yunchi_"+k+"_all_running_s", "%s%s (one CreateVMs call to the last VM RUNNING in WatchVM)", secs(med(bs.yAll)), each(bs.yAll))
	best := 0
	for w, way := range lvWays {
		ls.Add("libvirt_"+k+"_"+way.name+"_all_running_s", "%s%s (%s)", secs(med(bs.lAll[w])), each(bs.lAll[w]), way.what)
		if med(bs.lAll[w]) < med(bs.lAll[best]) {
			best = w
		}
	}
	added := func(w int) string { return msf((med(bs.yAll) - med(bs.lAll[w])) / time.Duration(n)) }
	ls.Add("yunchi_"+k+"_added_per_vm_ms", "%s (target < 50: Yunchi minus libvirt alone's fastest way, %s, per VM)", added(best), lvWays[best].name)
	for w, way := range lvWays {
		ls.Add("yunchi_"+k+"_added_per_vm_vs_"+way.name+"_ms", "%s", added(w))
	}
	ls.Add("yunchi_"+k+"_api_create_ms", "%s (the CreateVMs call)", msf(med(bs.yAPI)))
	ls.Add("yunchi_"+k+"_first_defined_ms", "%s (call to the agent's first Define returned)", msf(med(bs.yFirstDef)))
	ls.Add("yunchi_"+k+"_last_started_s", "%s (call to the agent's last Start returned)", secs(med(bs.yLastStart)))
	ls.Add("yunchi_"+k+"_last_started_to_all_running_ms", "%s (status report, raft commit, WatchVM)", msf(med(bs.yReport)))
	ls.Add("yunchi_"+k+"_agent_start_p50_ms", "%s (per VM: the agent's Start)", msf(med(bs.yStart)))
	for w, way := range lvWays {
		ls.Add("libvirt_"+k+"_"+way.name+"_define_start_p50_ms", "%s + %s (per VM: define, start)", msf(med(bs.lDefine[w])), msf(med(bs.lStart[w])))
	}
}

// makeRoom lets n VMs of memory bytes and 1 vCPU each fit on the host:
// nothing reserved for the host OS (the host is a test host), and a CPU
// ratio raised as far as needed (a test host has few CPUs; the default
// ratio is 4).
func makeRoom(ctx context.Context, cc grpc.ClientConnInterface, id string, n int, memory int64) error {
	hs := yunchiv1.NewHostServiceClient(cc)
	host, err := hs.GetHost(ctx, &yunchiv1.GetHostRequest{Id: id, Consistent: true})
	if err != nil {
		return err
	}
	vcpus, mem := host.Capacity.GetVcpus(), host.Capacity.GetMemoryBytes()
	if int64(n)*memory > mem {
		return fmt.Errorf("%d VMs of %d MiB do not fit in host %s's %d MiB: give a smaller -burst or -memory", n, memory>>20, id, mem>>20)
	}
	ratio := max(math.Ceil(float64(n)/float64(vcpus)), host.Ratios.GetCpu())
	if ratio > 64 {
		return fmt.Errorf("%d 1-vCPU VMs on host %s (%d vCPUs) need a CPU ratio of %.0f, above the maximum 64", n, id, vcpus, ratio)
	}
	zero, none := int64(0), "0"
	if _, err := hs.UpdateHost(ctx, &yunchiv1.UpdateHostRequest{Id: id, CpuRatio: &ratio, ReserveVcpus: &zero, ReserveMemory: &none}); err != nil {
		return fmt.Errorf("host %s: CPU ratio %.0f, nothing reserved: %w", id, ratio, err)
	}
	benchkit.Progress("host %s: %d vCPUs, %d MiB, nothing reserved, CPU ratio %.0f: room for %d VMs", id, vcpus, mem>>20, ratio, n)
	return nil
}

// waitNoGuests waits until the host runs no QEMU: what one step made is
// gone before the next is timed.
func waitNoGuests(ctx context.Context, h *qemuhost.Host) error {
	deadline := time.Now().Add(time.Minute)
	for {
		pids := h.QEMUPids()
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("host %s still runs %d QEMU processes a minute after clean-up", h.ID, len(pids))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// percentile is the nearest-rank q-quantile of ds (0 for none).
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func msf(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) }
func secs(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 2, 64)
}
