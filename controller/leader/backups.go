package leader

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Backups is the leader's backup duty: from the protection policies in the
// state it decides which backups are due and records them as jobs (the
// VMs' hosts run them), gives up on jobs whose host went away, and removes
// the restore points retention no longer keeps.
//
// When a backup is due. A target's backup starts when its newest point is
// the target's interval old, less what the last backup took (and two
// seconds), so that the next point lands before the newest is an interval
// old: an every-minute target keeps its newest point under a minute old.
// A target without a point starts at once. A failed job is tried again at
// its next_unix_nano (the ReportBackup handler sets the backoff).
type Backups struct {
	prop Proposer
	view BackupView
	log  *slog.Logger

	// MaxRunning bounds the jobs running in the cluster at once, and
	// MaxPerHost those of one host: the rest wait for a later tick, by
	// policy priority, most overdue first.
	MaxRunning, MaxPerHost int
	// JobTimeout: a job running longer is given up (its host is asked
	// again later).
	JobTimeout time.Duration
	// RetentionEvery is how often retention runs.
	RetentionEvery time.Duration

	mu            sync.Mutex
	lastRetention time.Time
	// violating are the targets (vm/center) in violation at the last
	// look: a change either way is a cluster event.
	violating map[string]bool
}

// BackupView is the part of the state the backup duty reads (*state.Store).
type BackupView interface {
	ProtectedVMs(project string) []state.Protected
	BackupJobs() []*statev1.BackupJobRecord
	RestorePoints() []*statev1.RestorePointRecord
	VMByID(id string) (*statev1.VMRecord, bool)
	LiveHostIDs() []string
	Policy(name string) (*statev1.PolicyRecord, bool)
	Center(name string) (*statev1.CenterRecord, bool)
	EffectivePolicy(vm *statev1.VMRecord) (name, source string)
}

// NewBackups returns the backup duty.
func NewBackups(prop Proposer, view BackupView, lg *slog.Logger) *Backups {
	if lg == nil {
		lg = slog.Default()
	}
	return &Backups{prop: prop, view: view, log: lg, MaxRunning: 64, MaxPerHost: 2, JobTimeout: time.Hour, RetentionEvery: 30 * time.Second}
}

// NewJobID is a backup job's id: "bj-" and 16 hex digits.
func NewJobID() string { return "bj-" + randHex() }

// NewPointID is a restore point's id: "rp-" and 16 hex digits.
func NewPointID() string { return "rp-" + randHex() }

func randHex() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // the kernel's random source does not fail
	}
	return hex.EncodeToString(b[:])
}

// JobFor is a new backup job of a protected VM to one of its target
// centers, building on the newest point there (if any).
func JobFor(p state.Protected, t state.ProtectedTarget, attempts int32) *statev1.BackupJobRecord {
	j := &statev1.BackupJobRecord{Id: NewJobID(), VmId: p.VM.Id, Center: t.Center.Name, HostId: p.VM.HostId,
		Attempts: attempts, Policy: p.Policy.Name}
	if t.Newest != nil {
		j.BasePointId = t.Newest.Id
	}
	return j
}

// RetryAfter is how long after its attempts-th failure a job is tried
// again: 30 s doubling to 30 min.
func RetryAfter(attempts int32) time.Duration {
	d := 30 * time.Second
	for i := int32(1); i < attempts && d < 30*time.Minute; i++ {
		d *= 2
	}
	return min(d, 30*time.Minute)
}

// Due says when a target's next backup should start, given its newest
// point (nil: none, due at once) and interval.
func Due(newest *statev1.RestorePointRecord, interval time.Duration) time.Time {
	if newest == nil {
		return time.Time{}
	}
	lead := time.Duration(newest.DurationMillis)*time.Millisecond + 2*time.Second
	lead = min(lead, interval/2)
	return time.Unix(0, newest.TakenUnixNano).Add(interval - lead)
}

// Tick runs one pass: stale jobs, due jobs, and (every RetentionEvery)
// retention.
func (b *Backups) Tick(ctx context.Context, now time.Time) {
	live := map[string]bool{}
	for _, id := range b.view.LiveHostIDs() {
		live[id] = true
	}
	jobs := b.view.BackupJobs()
	running, perHost := 0, map[string]int{}
	for _, j := range jobs {
		if j.State != statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING {
			continue
		}
		vm, ok := b.view.VMByID(j.VmId)
		why := ""
		switch {
		case !live[j.HostId]:
			why = "host " + j.HostId + " is down"
		case !ok || vm.HostId != j.HostId:
			why = "the VM left host " + j.HostId
		case now.Sub(time.Unix(0, j.StartedUnixNano)) > b.JobTimeout:
			why = "no report from host " + j.HostId + " in " + b.JobTimeout.String()
		}
		if why != "" {
			b.giveUp(ctx, j, why, now)
			continue
		}
		running++
		perHost[j.HostId]++
	}
	// One pass over the protected VMs serves both (it reads every VM).
	prot := b.view.ProtectedVMs("")
	b.startDue(ctx, now, prot, live, running, perHost)
	b.watchRPO(ctx, now, prot)
	if mv, ok := b.view.(MirrorView); ok {
		b.placeMirrors(ctx, mv, prot)
	}
	b.mu.Lock()
	doRetention := now.Sub(b.lastRetention) >= b.RetentionEvery
	if doRetention {
		b.lastRetention = now
	}
	b.mu.Unlock()
	if doRetention {
		b.retain(ctx)
	}
}

// watchRPO records, as cluster events (system records in the audit trail,
// and a warning in the log), each protected target that starts or stops
// missing its RPO objective: its newest point older than the objective.
// A new leader starts from an empty set (it re-announces what is still
// violated).
func (b *Backups) watchRPO(ctx context.Context, now time.Time, prot []state.Protected) {
	cur := map[string]string{}
	for _, p := range prot {
		for _, t := range p.Targets {
			if t.Newest == nil {
				continue // not yet: the first backup runs
			}
			age := now.Sub(time.Unix(0, t.Newest.TakenUnixNano))
			if obj := time.Duration(state.TargetRPO(t.Target)) * time.Second; age > obj {
				cur["project/"+p.VM.Project+"/vm/"+p.VM.Name+"@"+t.Center.Name] = fmt.Sprintf(
					"RPO objective missed: newest point in %s is %s old, objective %s (policy %s)", t.Center.Name, age.Round(time.Second), obj, p.Policy.Name)
			}
		}
	}
	b.mu.Lock()
	var recs []*statev1.AuditRecord
	for k, msg := range cur {
		if !b.violating[k] {
			recs = append(recs, rpoEvent(k, "RPOViolation", "violation", msg))
		}
	}
	for k := range b.violating {
		if _, ok := cur[k]; !ok {
			recs = append(recs, rpoEvent(k, "RPORecovered", "ok", "RPO objective met again"))
		}
	}
	b.violating = map[string]bool{}
	for k := range cur {
		b.violating[k] = true
	}
	b.mu.Unlock()
	if len(recs) == 0 {
		return
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Context.Target < recs[j].Context.Target })
	for _, r := range recs {
		if r.Context.Action == "RPOViolation" {
			b.log.Warn("rpo violation", "target", r.Context.Target, "msg", r.Message)
		} else {
			b.log.Info("rpo recovered", "target", r.Context.Target)
		}
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := b.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_RecordAudit{RecordAudit: &statev1.RecordAudit{Records: recs}}}); err != nil && ctx.Err() == nil {
		b.log.Warn("could not record RPO events", "err", err)
	}
}

func rpoEvent(key, action, result, msg string) *statev1.AuditRecord {
	target, center, _ := strings.Cut(key, "@")
	return &statev1.AuditRecord{Kind: "system", Result: result, Message: msg,
		Context: &statev1.AuditContext{Actor: "system", Action: action, Target: target, Params: fmt.Sprintf(`{"center":%q}`, center)}}
}

func (b *Backups) giveUp(ctx context.Context, j *statev1.BackupJobRecord, why string, now time.Time) {
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := b.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_FinishBackup{FinishBackup: &statev1.FinishBackup{
		JobId: j.Id, Error: "backup given up: " + why, NextUnixNano: now.Add(RetryAfter(j.Attempts)).UnixNano(),
	}}})
	if err != nil && ctx.Err() == nil {
		b.log.Warn("could not give up a backup job", "job", j.Id, "err", err)
		return
	}
	b.log.Warn("backup given up", "job", j.Id, "vm", j.VmId, "center", j.Center, "why", why)
}

type dueJob struct {
	job      *statev1.BackupJobRecord
	priority int32
	due      time.Time
}

func (b *Backups) startDue(ctx context.Context, now time.Time, prot []state.Protected, live map[string]bool, running int, perHost map[string]int) {
	var due []dueJob
	for _, p := range prot {
		vm := p.VM
		if vm.HostId == "" || !live[vm.HostId] || vm.Phase == statev1.VMPhase_VM_PHASE_PENDING ||
			vm.Phase == statev1.VMPhase_VM_PHASE_DELETING || vm.Phase == statev1.VMPhase_VM_PHASE_FAILED && vm.Restore != nil {
			continue // not on a host that can run it (yet)
		}
		for _, t := range p.Targets {
			if t.Center.RepositoryMember == "" {
				continue
			}
			attempts := int32(1)
			if j := t.Job; j != nil {
				if j.State == statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING || now.UnixNano() < j.NextUnixNano {
					continue
				}
				attempts = j.Attempts + 1
			}
			at := Due(t.Newest, time.Duration(t.Target.IntervalSeconds)*time.Second)
			if now.Before(at) {
				continue
			}
			due = append(due, dueJob{JobFor(p, t, attempts), p.Policy.Priority, at})
		}
	}
	if len(due) == 0 {
		return
	}
	sort.SliceStable(due, func(i, k int) bool {
		if due[i].priority != due[k].priority {
			return due[i].priority > due[k].priority
		}
		return due[i].due.Before(due[k].due)
	})
	var start []*statev1.BackupJobRecord
	for _, d := range due {
		if running >= b.MaxRunning || len(start) >= state.MaxBackupJobsPerStart {
			break
		}
		if perHost[d.job.HostId] >= b.MaxPerHost {
			continue
		}
		perHost[d.job.HostId]++
		running++
		start = append(start, d.job)
	}
	if len(start) == 0 {
		return
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := b.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_StartBackups{StartBackups: &statev1.StartBackups{Jobs: start}}}); err != nil {
		if ctx.Err() == nil {
			b.log.Warn("could not start backups", "jobs", len(start), "err", err)
		}
		return
	}
	b.log.Debug("backups started", "jobs", len(start))
}

// retentionRule finds the rule that keeps a VM's points in a center: its
// policy's target for that center (by name, else by the center's role).
// The policy is the VM's now, or, for a VM that is gone or unprotected,
// the one that made the point. nil: no rule (the points stay).
func (b *Backups) retentionRule(vmID, policyAtBackup string, center *statev1.CenterRecord) *statev1.RetentionRule {
	name := policyAtBackup
	if vm, ok := b.view.VMByID(vmID); ok {
		if n, _ := b.view.EffectivePolicy(vm); n != "" {
			name = n
		}
	}
	p, ok := b.view.Policy(name)
	if !ok {
		return nil
	}
	for _, t := range p.Targets {
		if t.Center == center.Name {
			return t.Retention
		}
	}
	for _, t := range p.Targets {
		if t.Center == "" && t.Role == center.Role {
			return t.Retention
		}
	}
	return nil
}

// retain removes the points retention no longer keeps, per VM and center.
// Points without a rule (the policy is gone, or no longer names the
// center) stay: data is never dropped without a rule that says so.
func (b *Backups) retain(ctx context.Context) {
	groups := map[[2]string][]*statev1.RestorePointRecord{}
	for _, p := range b.view.RestorePoints() {
		k := [2]string{p.VmId, p.Center}
		groups[k] = append(groups[k], p)
	}
	// Points a running or failed job builds on are kept until it ends.
	base := map[string]bool{}
	for _, j := range b.view.BackupJobs() {
		base[j.BasePointId] = true
	}
	var drop []string
	for k, ps := range groups {
		c, ok := b.view.Center(k[1])
		if !ok {
			continue
		}
		rule := b.retentionRule(k[0], ps[0].Policy, c)
		if rule == nil {
			continue
		}
		_, gone := state.KeptPoints(ps, rule)
		for _, p := range gone {
			if !base[p.Id] {
				drop = append(drop, p.Id)
			}
		}
	}
	if len(drop) == 0 {
		return
	}
	sort.Strings(drop)
	for len(drop) > 0 {
		n := min(len(drop), 1000)
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := b.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_DeleteRestorePoints{DeleteRestorePoints: &statev1.DeleteRestorePoints{PointIds: drop[:n]}}})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				b.log.Warn("could not remove restore points retention drops", "points", n, "err", err)
			}
			return
		}
		b.log.Info("restore points removed by retention", "points", n)
		drop = drop[n:]
	}
}
