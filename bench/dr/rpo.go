//go:build linux

package main

import (
	"cmp"
	"context"
	"fmt"
	"github.com/yunchi/yunchi/internal/benchkit"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const (
	// rpoSampleEvery is how often the RPO is sampled.
	rpoSampleEvery = 5 * time.Second
	// rpoObjective is gold's same-city objective.
	rpoObjective = 60.0
	rpoPrefix    = "rpo"
)

// rpo: -rpo-vms VMs protected with gold; the age of each one's newest
// same-city point, sampled every 5 s for -rpo-duration after the first
// full round.
func (b *bench) rpo(ctx context.Context) error {
	n := b.cfg.rpoVMs
	benchkit.Progress("rpo: creating %d VMs with 1 GiB disks on simulated hosts of a1", n)
	resp, err := b.c.vms.CreateVMs(ctx, &yunchiv1.CreateVMRequest{Name: rpoPrefix, Count: int32(n), Vcpus: 1, Memory: vmMemory, Disk: "1GiB",
		Center: "a1", Constraints: []string{"simulated=true"}, Strategy: "spread"})
	if err != nil {
		return fmt.Errorf("create %d VMs: %w", n, err)
	}
	hosts := map[string]bool{}
	var disks []string
	for _, v := range resp.Vms {
		vm, err := b.c.waitVM(ctx, v.Name, yunchiv1.VMPhase_VM_PHASE_RUNNING, 3*time.Minute)
		if err != nil {
			return err
		}
		hosts[vm.HostId] = true
		path := b.c.simDisk(vm)
		if err := fillRandom(ctx, path, b.cfg.rpoDataBytes, b.rng()); err != nil {
			return err
		}
		disks = append(disks, path)
	}
	names := map[string]bool{}
	protected := time.Now()
	for _, v := range resp.Vms {
		names[v.Name] = true
		if err := b.protect(ctx, v.Name, "gold")(); err != nil {
			return err
		}
	}
	benchkit.Progress("rpo: %d VMs on %d hosts protected with gold; waiting for each one's first point in %s", n, len(hosts), sameCity)
	deadline := time.Now().Add(10 * time.Minute)
	for {
		st, err := b.c.prot.GetDRStatus(ctx, &yunchiv1.GetDRStatusRequest{})
		if err != nil {
			return fmt.Errorf("dr status: %w", err)
		}
		have := 0
		for _, t := range sameCityTargets(st, names) {
			if t.NewestPoint != "" {
				have++
			}
		}
		if have == n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d VMs have a point in %s 10 minutes after they were protected", have, n, sameCity)
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
	firstRound := time.Since(protected)
	benchkit.Progress("rpo: first round done in %s; sampling every %s for %s", firstRound.Round(time.Millisecond), rpoSampleEvery, b.cfg.rpoDuration)

	// A 1 MiB write in a few disks before each sample: each disk gets
	// about one a minute, so most backups have a chunk to send.
	rng := rand.New(b.rng())
	data := b.rng()
	perTick := max(1, int(math.Ceil(float64(n)*rpoSampleEvery.Seconds()/60)))
	var ages []float64
	var violations, statusViolationsMax int
	violating := map[string]bool{}
	seen := map[string]map[string]bool{} // VM -> newest points seen
	begun := time.Now()
	tick := time.NewTicker(rpoSampleEvery)
	defer tick.Stop()
	for time.Since(begun) < b.cfg.rpoDuration {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		for range perTick {
			off := rng.Int64N(b.cfg.rpoDataBytes/mib) * mib
			if err := writePieces(disks[rng.IntN(len(disks))], []piece{{off, mib}}, data); err != nil {
				return err
			}
		}
		st, err := b.c.prot.GetDRStatus(ctx, &yunchiv1.GetDRStatusRequest{})
		if err != nil {
			return fmt.Errorf("dr status: %w", err)
		}
		ts := sameCityTargets(st, names)
		if len(ts) != n {
			return fmt.Errorf("dr status lists %d of the %d gold VMs' %s targets", len(ts), n, sameCity)
		}
		for vm, t := range ts {
			ages = append(ages, t.AchievedRpoSeconds)
			if t.AchievedRpoSeconds > rpoObjective {
				violations++
				violating[vm] = true
			}
			if seen[vm] == nil {
				seen[vm] = map[string]bool{}
			}
			seen[vm][t.NewestPoint] = true
		}
		statusViolationsMax = max(statusViolationsMax, int(st.Violations))
	}
	window := time.Since(begun)
	points := 0
	for _, s := range seen {
		points += len(s)
	}
	b.ls.Add("rpo_vms", "%d (gold, on %d simulated hosts of a1; %s MiB of random data in each 1 GiB disk, a 1 MiB write in %d disks every %s)", n, len(hosts), mibs(b.cfg.rpoDataBytes), perTick, rpoSampleEvery)
	b.ls.Add("rpo_first_round_s", "%s (protect to every VM's first point in %s)", secs(firstRound), sameCity)
	b.ls.Add("rpo_samples", "%d (every %s for %s, after the first round)", len(ages), rpoSampleEvery, window.Round(time.Second))
	b.ls.Add("rpo_age_p50_s", "%.1f (age of the newest %s point, GetDRStatus achieved_rpo_seconds; objective %.0f)", percentile(ages, 0.5), sameCity, rpoObjective)
	b.ls.Add("rpo_age_p99_s", "%.1f", percentile(ages, 0.99))
	b.ls.Add("rpo_age_max_s", "%.1f", percentile(ages, 1))
	b.ls.Add("rpo_violations", "%d samples over %.0f s, of %d VMs (GetDRStatus violations at most %d at once)", violations, rpoObjective, len(violating), statusViolationsMax)
	b.ls.Add("rpo_points_seen", "%d (distinct newest points over the samples: %.1f per VM per minute)", points, float64(points)/float64(n)/window.Minutes())
	return nil
}

// sameCityTargets are the same-city targets of the named VMs in st, by VM.
func sameCityTargets(st *yunchiv1.DRStatus, names map[string]bool) map[string]*yunchiv1.TargetStatus {
	out := map[string]*yunchiv1.TargetStatus{}
	for _, v := range st.Vms {
		if !names[v.Vm] || !strings.EqualFold(v.Policy, "gold") {
			continue
		}
		for _, t := range v.Targets {
			if t.Center == sameCity {
				out[v.Vm] = t
			}
		}
	}
	return out
}

// percentile is the nearest-rank q-quantile of xs (zero for none).
func percentile[T cmp.Ordered](xs []T, q float64) T {
	var zero T
	if len(xs) == 0 {
		return zero
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}
