//go:build linux

package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/internal/benchkit"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const (
	failoverPrefix = "fo"
	// failoverData is the random data in each failover VM's 1 GiB disk:
	// its first point has something to copy, the restore something to
	// read, without making the phase about throughput.
	failoverData = 4 * mib
	// lostCenter is the center taken down; the run brings its VMs up in
	// sameCity.
	lostCenter = "a1"
	// failoverTarget and goldRPO are issue 12's objectives: every VM
	// running within 2 minutes of `dr failover`, gold losing under a
	// minute.
	failoverTarget = 120
	goldRPO        = 60
	// runPollEvery is how often GetDRRun is polled; runTimeout bounds the
	// wait for the run's end.
	runPollEvery = 200 * time.Millisecond
	runTimeout   = 5 * time.Minute
)

// failover: -failover-vms VMs in a1 protected with gold; once each has a
// point in a2, a1 is stopped and `dr failover` started; the run is
// polled until it ends. It runs last: a1 stays down.
func (b *bench) failover(ctx context.Context) error {
	n := b.cfg.failoverVMs
	benchkit.Progress("failover: creating %d VMs (1 vCPU, %s, 1 GiB disk with %s MiB of random data) on simulated hosts of %s", n, vmMemory, mibs(failoverData), lostCenter)
	resp, err := b.c.vms.CreateVMs(ctx, &yunchiv1.CreateVMRequest{Name: failoverPrefix, Count: int32(n), Vcpus: 1, Memory: vmMemory, Disk: "1GiB",
		Center: lostCenter, Constraints: []string{"simulated=true"}, Strategy: "spread"})
	if err != nil {
		return fmt.Errorf("create %d VMs: %w", n, err)
	}
	names := map[string]bool{}
	for _, v := range resp.Vms {
		vm, err := b.c.waitVM(ctx, v.Name, yunchiv1.VMPhase_VM_PHASE_RUNNING, 3*time.Minute)
		if err != nil {
			return err
		}
		if err := fillRandom(ctx, b.c.simDisk(vm), failoverData, b.rng()); err != nil {
			return err
		}
		names[v.Name] = true
	}
	protected := time.Now()
	for name := range names {
		if err := b.protect(ctx, name, "gold")(); err != nil {
			return err
		}
	}
	benchkit.Progress("failover: %d VMs protected with gold; waiting for each one's first point in %s", n, sameCity)
	if err := b.waitFirstPoints(ctx, names, 10*time.Minute); err != nil {
		return err
	}
	benchkit.Progress("failover: every VM has a point in %s, %s after protection", sameCity, time.Since(protected).Round(time.Millisecond))

	// From here on talk to a2's controller: a1's goes down with its
	// center (a non-leader controller forwards to the leader).
	conn, err := grpc.NewClient(b.c.addrs[1], b.c.opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	rc, vms := yunchiv1.NewRecoveryServiceClient(conn), yunchiv1.NewVMServiceClient(conn)
	ctl := devcluster.Client{Addr: devcluster.ControlAddr(b.c.base), Token: b.c.token}
	benchkit.Progress("failover: stopping center %s", lostCenter)
	stopped, err := ctl.Stop(ctx, lostCenter)
	if err != nil {
		return fmt.Errorf("stop center %s: %w", lostCenter, err)
	}
	benchkit.Progress("failover: %s", stopped.Message)

	// The stop can take the leader with it: a call refused while the
	// other two elect one is tried again (bounded), and the time counted
	// from the first call.
	called := time.Now()
	var run *yunchiv1.DRRun
	for {
		run, err = rc.Failover(ctx, &yunchiv1.FailoverRequest{FromCenter: lostCenter})
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable || time.Since(called) > 30*time.Second {
			return fmt.Errorf("dr failover --from %s: %w", lostCenter, err)
		}
		if err := sleep(ctx, runPollEvery); err != nil {
			return err
		}
	}
	benchkit.Progress("failover: run %s started (%d VMs to %s)", run.Id, len(run.Vms), run.ToCenter)
	deadline, lastProgress := called.Add(runTimeout), time.Now()
	for run.State == "running" {
		if time.Now().After(deadline) {
			return fmt.Errorf("failover run %s still running %s after it was started (%d of %d VMs running)", run.Id, runTimeout, run.VmsDone, len(run.Vms))
		}
		if err := sleep(ctx, runPollEvery); err != nil {
			return err
		}
		r, err := rc.GetDRRun(ctx, &yunchiv1.GetDRRunRequest{Id: run.Id})
		if err != nil {
			if status.Code(err) == codes.Unavailable {
				continue // an election: the next poll
			}
			return fmt.Errorf("dr run %s: %w", run.Id, err)
		}
		run = r
		if time.Since(lastProgress) >= 5*time.Second {
			lastProgress = time.Now()
			benchkit.Progress("failover: %d of %d VMs running after %s", run.VmsDone, len(run.Vms), time.Since(called).Round(time.Second))
		}
	}
	wall := time.Since(called)
	benchkit.Progress("failover: run %s %s after %s: %s", run.Id, run.State, wall.Round(time.Millisecond), run.Message)

	// Ours running in a2, as the VM API sees them; the run's failures
	// with their reasons.
	running, ours := 0, 0
	var failed []string
	for _, e := range run.Vms {
		if e.Step == "failed" || e.Step == "skipped" {
			failed = append(failed, fmt.Sprintf("%s %s on %s: %s", e.Vm, e.Step, e.Host, e.Reason))
			benchkit.Progress("failover: %s %s (host %s, rto %d ms): %s", e.Vm, e.Step, e.Host, e.RtoMillis, e.Reason)
		}
		if !names[e.Vm] {
			continue
		}
		ours++
		vm, err := vms.GetVM(ctx, &yunchiv1.GetVMRequest{Name: e.Vm})
		if err == nil && vm.Phase == yunchiv1.VMPhase_VM_PHASE_RUNNING && vm.HostCenter == run.ToCenter {
			running++
		}
	}
	b.ls.Add("failover_vms", "%d (gold, 1 vCPU, %s, 1 GiB disk with %s MiB of random data; the run has %d VMs, %d of them the bench's)", n, vmMemory, mibs(failoverData), len(run.Vms), ours)
	b.ls.Add("failover_vms_running", "%d (of the bench's, running in %s by GetVM after the run; the run: %s, %d done, %d failed, %d skipped)", running, run.ToCenter, run.State, run.VmsDone, run.VmsFailed, run.VmsSkipped)
	b.ls.Add("failover_all_running_seconds", "%.2f (the run's elapsed_millis: its start to the last VM running)", float64(run.ElapsedMillis)/1000)
	b.ls.Add("failover_wall_seconds", "%s (measured here: the Failover call to GetDRRun seeing the run end, polled every %s)", secs(wall), runPollEvery)
	b.ls.Add("failover_rto_p50_ms", "%d", run.RtoP50Millis)
	b.ls.Add("failover_rto_p99_ms", "%d", run.RtoP99Millis)
	b.ls.Add("failover_rto_max_ms", "%d", run.RtoMaxMillis)
	b.ls.Add("failover_max_data_loss_s", "%.1f (the oldest point used, its age when the run started)", float64(run.MaxDataLossMillis)/1000)
	if len(failed) > 0 {
		b.ls.Add("failover_failed_vms", "%d (%s)", len(failed), strings.Join(failed, "; "))
	}
	b.ls.Add("failover_target_seconds", "%d", failoverTarget)
	b.ls.Add("failover_gold_rpo_s", "%d", goldRPO)
	if run.State != "succeeded" || running != ours {
		return fmt.Errorf("failover run %s %s: %d of %d VMs running in %s: %s", run.Id, run.State, running, ours, run.ToCenter, run.Message)
	}
	return nil
}

// waitFirstPoints waits until each named VM has a point in sameCity,
// saying how many have one every 10 s.
func (b *bench) waitFirstPoints(ctx context.Context, names map[string]bool, timeout time.Duration) error {
	deadline, lastProgress := time.Now().Add(timeout), time.Now()
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
		if have == len(names) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d VMs have a point in %s %s after they were protected", have, len(names), sameCity, timeout)
		}
		if time.Since(lastProgress) >= 10*time.Second {
			lastProgress = time.Now()
			benchkit.Progress("failover: %d of %d VMs have a point in %s", have, len(names), sameCity)
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
}
