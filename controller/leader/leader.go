// Package leader does what only the leader does, for as long as this
// controller is the leader: it publishes its own addresses in the member
// table and keeps host liveness (which hosts it heard, one
// RecordHeartbeats per period, marking silent hosts down, not counting
// time the process itself was stalled), backups (backups.go), and failover, failback and drills (recovery.go). Start runs the duties when this
// controller becomes the leader, Stop ends them and forgets what was
// heard when it steps down. Later leader duties (fencing, HA restart,
// backup scheduling) belong here too.
//
// Liveness that every controller agrees on: heartbeats reach the leader
// only (followers forward them) and are not written to the log one by
// one. The leader notes which hosts it heard from and, once per HostTTL/3,
// proposes one RecordHeartbeats command naming the ready hosts it did NOT
// hear from; Apply stamps the command's time (the leader's clock) on all
// the others. Every controller, and a new leader after a failover, then
// reads the same last heartbeat for each host, at most a period old. In
// the steady state the entry is a few dozen bytes whatever the number of
// hosts.
package leader

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Proposer puts a command through raft (the raft node).
type Proposer interface {
	Apply(ctx context.Context, cmd *statev1.Command) (state.Result, error)
}

// View is the part of the replicated state the duties read (*state.Store).
type View interface {
	LiveHostIDs() []string
	Member(id string) (*statev1.MemberRecord, bool)
}

// Self is what this controller publishes about itself.
type Self struct {
	ID, APIAddress, RaftAddress, Center string
}

// Tick is how often the leader looks at its duties; a look that comes
// StallAllowance later than that means the process was stalled.
const (
	Tick           = 500 * time.Millisecond
	StallAllowance = time.Second
)

// Duties are the leader's duties of one controller.
type Duties struct {
	prop Proposer
	view View
	self Self
	log  *slog.Logger
	// HostTTL is how long a host may stay silent before it is marked down.
	HostTTL time.Duration

	seen  *seenTable
	heard heardSet
	// Backups, when set, runs with the other duties (backups.go).
	Backups *Backups
	// Recovery, when set, drives failovers, failbacks and drills
	// (recovery.go).
	Recovery *Recovery

	mu      sync.Mutex // guards the fields below
	leading bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// New returns the duties of controller self, proposing through prop.
func New(prop Proposer, view View, self Self, lg *slog.Logger) *Duties {
	if lg == nil {
		lg = slog.Default()
	}
	return &Duties{prop: prop, view: view, self: self, log: lg, HostTTL: 10 * time.Second, seen: newSeenTable()}
}

// Start begins the duties (this controller became the leader): every
// host's TTL starts afresh, since heartbeats went to the old leader. It
// does nothing when they already run. They end with Stop or ctx.
func (d *Duties) Start(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.leading {
		return
	}
	// Only live hosts are ever checked for silence (a host that comes back
	// is touched by its registration), so only they need a fresh window.
	now := time.Now()
	d.seen.reset(d.view.LiveHostIDs(), now)
	d.heard.restart(now)
	ctx, d.cancel = context.WithCancel(ctx)
	d.done = make(chan struct{})
	d.leading = true
	d.log.Info("became leader", "id", d.self.ID)
	go func(done chan struct{}) {
		defer close(done)
		d.run(ctx)
	}(d.done)
}

// Stop ends the duties (this controller is no longer the leader), waits
// for them to return and forgets what was heard: a follower's table would
// be frozen at its last term.
func (d *Duties) Stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.leading {
		return
	}
	d.leading = false
	d.cancel()
	<-d.done
	d.seen.reset(nil, time.Time{})
	d.heard.restart(time.Time{})
	d.log.Info("no longer leader: leader duties stopped", "id", d.self.ID)
}

// Leading says whether the duties run.
func (d *Duties) Leading() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.leading
}

// Heard notes that host id was heard from now (a heartbeat with its stats
// and its guests' usage, or a registration with neither). Ignored when not
// leading. Like the stats, the usage is kept in memory only, never in the
// log: it is news, not state, and a new leader waits for the next beat.
func (d *Duties) Heard(id string, stats *yunchiv1.HostStats, vms []*yunchiv1.VMStats) {
	if !d.Leading() {
		return
	}
	d.seen.touch(id, time.Now(), stats, vms)
	d.heard.add(id)
}

// Stats is what host id reported in its last heartbeat to this leader; nil
// when none or when not leading.
func (d *Duties) Stats(id string) *yunchiv1.HostStats {
	if !d.Leading() {
		return nil
	}
	if s := d.seen.get(id); s != nil {
		return s.stats
	}
	return nil
}

// VMStats is what host id's running guests used, by its last heartbeat to
// this leader, and when that heartbeat came; nil when none or when not
// leading. The messages are shared: read them, never change them.
func (d *Duties) VMStats(id string) ([]*yunchiv1.VMStats, time.Time) {
	if !d.Leading() {
		return nil, time.Time{}
	}
	if s := d.seen.get(id); s != nil {
		return s.vms, s.at
	}
	return nil, time.Time{}
}

func (d *Duties) run(ctx context.Context) {
	tick := time.NewTicker(Tick)
	defer tick.Stop()
	waitStart := time.Now()
	for {
		// A wait on the ticker much longer than the tick means this process
		// did not run (SIGSTOP, a paused VM, swapping): it could not hear
		// heartbeats then, so that time does not count against the hosts.
		now := time.Now()
		if stalled := now.Sub(waitStart) - Tick; stalled > StallAllowance {
			d.seen.paused(now, stalled)
			d.log.Warn("this leader did not run for a while: that time does not count against host heartbeats",
				"stalled", stalled.Round(time.Millisecond))
		}
		d.publishSelf(ctx)
		// One list of live hosts per tick: recording heartbeats changes no
		// host's liveness, and only this loop marks hosts down.
		live := d.view.LiveHostIDs()
		d.recordHeartbeats(ctx, live)
		d.markSilentHostsDown(ctx, live)
		if d.Backups != nil {
			d.Backups.Tick(ctx, time.Now())
		}
		if d.Recovery != nil {
			d.Recovery.Tick(ctx, time.Now())
		}
		waitStart = time.Now()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (d *Duties) publishSelf(ctx context.Context) {
	m, ok := d.view.Member(d.self.ID)
	if ok && m.ApiAddress == d.self.APIAddress && m.Center == d.self.Center && m.RaftAddress == d.self.RaftAddress {
		return
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := d.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{
		Member: &statev1.MemberRecord{Id: d.self.ID, RaftAddress: d.self.RaftAddress, ApiAddress: d.self.APIAddress, Center: d.self.Center},
	}}}); err != nil && ctx.Err() == nil {
		d.log.Warn("could not publish own address", "err", err)
	}
}

// recordPeriod is how often the leader records heartbeats: a third of the
// TTL, so a follower's view lags the leader's by less than that.
func (d *Duties) recordPeriod() time.Duration { return max(d.HostTTL/3, 100*time.Millisecond) }

// recordHeartbeats proposes a RecordHeartbeats when a period has passed and
// some host was heard from in it (nothing heard: nothing to record; the
// down-marking does the rest).
func (d *Duties) recordHeartbeats(ctx context.Context, live []string) {
	heard, due := d.heard.take(time.Now(), d.recordPeriod())
	if !due || len(heard) == 0 {
		return
	}
	var silent []string
	for _, id := range live {
		if !heard[id] {
			silent = append(silent, id)
		}
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := d.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_RecordHeartbeats{RecordHeartbeats: &statev1.RecordHeartbeats{
		SilentHostIds: silent,
	}}}); err != nil {
		d.heard.putBack(heard)
		if ctx.Err() == nil {
			d.log.Warn("could not record heartbeats", "err", err)
		}
	}
}

func (d *Duties) markSilentHostsDown(ctx context.Context, live []string) {
	now := time.Now()
	ids, lastSeen := d.seen.silent(live, now, d.HostTTL)
	for i, id := range ids {
		// Marking one down waits for raft: a host heard since the pass
		// above stays up.
		if i > 0 {
			if seen := d.seen.get(id); seen == nil || seen.silentFor(now) < d.HostTTL {
				continue
			}
		}
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := d.prop.Apply(actx, &statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{
			HostId: id, State: statev1.HostState_HOST_STATE_DOWN,
		}}})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				d.log.Warn("could not mark host down", "host", id, "err", err)
			}
			return
		}
		d.log.Warn("host missed its heartbeats: marked down", "host", id, "last_seen", lastSeen[i])
	}
}
