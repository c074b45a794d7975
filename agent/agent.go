// Package agent runs on each hypervisor host: it registers the host with the
// controllers, heartbeats, and makes the host's domains match the
// assignments the controllers stream to it, reporting what it observes.
//
// The agent keeps no state of its own on disk. What it must remember across
// restarts lives with the domains (libvirt metadata: VM id, reboot requests
// carried out), so a restarted agent adopts the domains it finds.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/internal/bearer"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Version is sent to the controllers as the agent version; set it with
// -ldflags "-X github.com/yunchi/yunchi/agent.Version=...".
var Version = "dev"

// Defaults for the zero values of Config.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultResyncInterval    = 30 * time.Second
	DefaultStopTimeout       = 60 * time.Second
	DefaultImageDir          = "/var/lib/yunchi/images"
)

// Config is the agent's configuration.
type Config struct {
	// HostID identifies the host to the controllers (required, stable).
	HostID string
	// Hostname overrides the hostname libvirt reports.
	Hostname string
	// Where the host is, for placement.
	Center, Site, Rack string
	Labels             map[string]string
	// DiskBytes is the disk capacity to announce; 0 means the sum over the
	// host's active storage pools.
	DiskBytes int64
	// LibvirtURI is reported to the controllers (the driver is opened by the
	// caller).
	LibvirtURI string
	// Controllers are host:port addresses, tried in turn (required).
	Controllers []string
	// HeartbeatInterval; 0 means what the controller asks at registration,
	// or DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// ResyncInterval is how often the host is reconciled against the last
	// assignments even when none arrive (someone may have used virsh); 0
	// means DefaultResyncInterval.
	ResyncInterval time.Duration
	// StopTimeout is how long a guest gets to shut down before it is powered
	// off; 0 means DefaultStopTimeout.
	StopTimeout time.Duration
	// DialOptions are added to the gRPC dial options (after the default
	// insecure transport, so transport credentials given here win).
	DialOptions []grpc.DialOption
	// StoragePool names the libvirt pool VMs' disks are made in, as told to
	// the controllers; SharedStorage, when set, says that pool lives on
	// storage other hosts mount too, by a name the same on all of them.
	StoragePool, SharedStorage string
	// ImageDir is where images VMs boot from are cached (DIR/<sha256>.<format>);
	// "" means DefaultImageDir.
	ImageDir string
	// Token is the host token sent with every call (clusters without
	// certificates); "" sends none.
	Token string
	// MaxBackups bounds the backup jobs running at once (agent/backup.go);
	// 0 means DefaultMaxBackups.
	MaxBackups int
	// MaxBackupRate caps the bytes per second sent to each target center's
	// backup repository, shared by the jobs to that center; 0 = no cap.
	MaxBackupRate int64
	// Mirror configures the mirror exports this host serves for VMs of
	// other centers (platinum, agent/mirror.go); Mirror.Dir "" = none (a
	// host that cannot serve them, or is kept out: the controllers are
	// told so for each export they ask). Its Logger defaults to the
	// agent's.
	Mirror MirrorExportConfig
	Logger *slog.Logger
}

func (c Config) validate() error {
	var errs []error
	if c.HostID == "" {
		errs = append(errs, errors.New("HostID is empty"))
	}
	if len(c.Controllers) == 0 {
		errs = append(errs, errors.New("no controller addresses"))
	}
	if c.DiskBytes < 0 {
		errs = append(errs, fmt.Errorf("DiskBytes %d is negative", c.DiskBytes))
	}
	if c.MaxBackups < 0 {
		errs = append(errs, fmt.Errorf("MaxBackups %d is negative", c.MaxBackups))
	}
	if c.MaxBackupRate < 0 {
		errs = append(errs, fmt.Errorf("MaxBackupRate %d is negative", c.MaxBackupRate))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	return nil
}

// Agent is one host's agent. Run it once.
type Agent struct {
	cfg Config
	d   Driver
	log *slog.Logger
	ctl *controllers // set by Run
	// runCtx is Run's context, for work that outlives one reconcile (image
	// fetches).
	runCtx context.Context
	images *imageCache
	// Backups and restores (backup.go, restore.go); repos is set by Run.
	backups      *backupRunner
	repos        *repoConns
	restoreFails restoreFailures

	hbInterval   atomic.Int64 // time.Duration
	needRegister atomic.Bool

	// The latest assignments, handed from the watch to the reconcile loop.
	setMu      sync.Mutex
	set        *yunchiv1.Assignments
	acceptAny  bool // after (re-)registration: accept a set older than the last
	setChanged chan struct{}

	// Touched by the reconcile loop only.
	rebootDone map[string]uint64     // VM id -> reboot request carried out
	lastSent   map[string]sentStatus // VM id -> last status the controller acknowledged
	known      map[string]bool       // VM ids whose domain this process has seen
	// unplugAsked: when a running guest was last asked to release a
	// volume ("vm/volume"), forgotten once it did (volumes.go).
	unplugAsked map[string]time.Time
	// volSent: the last status of each volume the controllers
	// acknowledged.
	volSent map[string]sentVolume

	// ev is what lifecycle events told, and unexpected stops (events.go).
	ev hostEvents

	// Synchronous mirrors (mirror.go): the driver's mirroring (nil: it
	// cannot), the VMs' mirrors, and the exports served here (nil: none;
	// set by Run). exportsMu orders applying the exports against taking
	// one over; exportsSent (the exports loop's own) is what the
	// controllers took last.
	mirrorer       Mirrorer
	mw             mirrors
	exports        *MirrorExports
	exportsMu      sync.Mutex
	exportsChanged chan struct{}
	exportsResend  atomic.Bool
	exportsSent    []*yunchiv1.MirrorExportStatus
	// exportsUnlisted: since when each export here is neither listed nor
	// restored from (the exports loop's own).
	exportsUnlisted map[string]time.Time
}

// New returns an agent for the host behind d.
func New(cfg Config, d Driver) *Agent {
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = DefaultResyncInterval
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.ImageDir == "" {
		cfg.ImageDir = DefaultImageDir
	}
	if cfg.MaxBackups <= 0 {
		cfg.MaxBackups = DefaultMaxBackups
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{
		cfg:         cfg,
		d:           d,
		log:         log.With("host", cfg.HostID),
		setChanged:  make(chan struct{}, 1),
		rebootDone:  map[string]uint64{},
		lastSent:    map[string]sentStatus{},
		known:       map[string]bool{},
		unplugAsked: map[string]time.Time{},
		volSent:     map[string]sentVolume{},
		mw:          newMirrors(),

		exportsChanged: make(chan struct{}, 1),
	}
	a.mirrorer, _ = d.(Mirrorer)
	a.images = newImageCache(cfg.ImageDir, a)
	a.backups = newBackupRunner(a, cfg.MaxBackups)
	a.runCtx = context.Background()
	a.hbInterval.Store(int64(DefaultHeartbeatInterval))
	if cfg.HeartbeatInterval > 0 {
		a.hbInterval.Store(int64(cfg.HeartbeatInterval))
	}
	return a
}

// Run registers the host, then heartbeats, watches assignments and
// reconciles until ctx ends. It returns nil on a clean shutdown and an error
// only for a configuration it cannot run with. Domains are left as they are
// when it returns.
func (a *Agent) Run(ctx context.Context) error {
	if a.d == nil {
		return errors.New("agent: nil driver")
	}
	if err := a.cfg.validate(); err != nil {
		return err
	}
	opts := a.cfg.DialOptions
	if a.cfg.Token != "" {
		opts = append(append([]grpc.DialOption(nil), opts...), grpc.WithPerRPCCredentials(bearer.Token(a.cfg.Token)))
	}
	ctl, err := dialControllers(a.cfg.Controllers, opts, a.log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer ctl.close()
	a.ctl = ctl
	a.runCtx = ctx
	a.repos = newRepoConns(opts)
	defer a.repos.close()
	if a.cfg.Mirror.Dir != "" {
		mc := a.cfg.Mirror
		if mc.Logger == nil {
			mc.Logger = a.log
		}
		exports, err := NewMirrorExports(mc)
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		a.exports = exports
		defer func() {
			// Its qemu-nbd servers end with the agent (the files stay):
			// the next agent serves them again on the same ports.
			if err := exports.Close(); err != nil {
				a.log.Warn("stopping mirror exports", "err", err)
			}
		}()
	}

	a.log.Info("agent starting", "controllers", a.cfg.Controllers, "libvirt", a.cfg.LibvirtURI, "version", Version)
	if a.registerUntilDone(ctx) {
		var wg sync.WaitGroup
		wg.Go(func() { a.heartbeatLoop(ctx) })
		wg.Go(func() { a.watchLoop(ctx) })
		wg.Go(func() { a.reconcileLoop(ctx) })
		wg.Go(func() { a.eventsLoop(ctx) })
		wg.Go(func() { a.consoleLoops(ctx) })
		wg.Go(func() { a.mirrorLoop(ctx) })
		wg.Go(func() { a.exportsLoop(ctx) })
		wg.Wait()
	}
	a.backups.wg.Wait() // cut short by ctx: their views closed, nothing reported
	a.log.Info("agent stopped")
	return nil
}

// registerUntilDone registers with backoff; false means ctx ended first.
func (a *Agent) registerUntilDone(ctx context.Context) bool {
	bo := newBackoff()
	for {
		err := a.register(ctx)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		d := bo.next()
		a.log.Warn("registration failed; retrying", "err", err, "in", d.Round(time.Millisecond))
		if !sleep(ctx, d) {
			return false
		}
	}
}

func (a *Agent) register(ctx context.Context) error {
	nf, err := a.d.NodeFacts(ctx)
	if err != nil {
		return fmt.Errorf("read node facts: %w", err)
	}
	facts := &yunchiv1.HostFacts{
		Id:       a.cfg.HostID,
		Hostname: nf.Hostname,
		Center:   a.cfg.Center,
		Site:     a.cfg.Site,
		Rack:     a.cfg.Rack,
		Labels:   maps.Clone(a.cfg.Labels),
		Capacity: &yunchiv1.Resources{
			Vcpus:       nf.VCPUs,
			MemoryBytes: nf.MemoryBytes,
			DiskBytes:   nf.DiskBytes,
		},
		CpuModel:     nf.CPUModel,
		AgentVersion: Version,
		LibvirtUri:   a.cfg.LibvirtURI,
		Hypervisor:   nf.Hypervisor, LibvirtVersion: nf.LibvirtVersion,
		StoragePool: a.cfg.StoragePool, SharedStorage: a.cfg.SharedStorage,
	}
	if a.cfg.Hostname != "" {
		facts.Hostname = a.cfg.Hostname
	}
	if a.cfg.DiskBytes > 0 {
		facts.Capacity.DiskBytes = a.cfg.DiskBytes
	}
	var resp *yunchiv1.RegisterHostResponse
	err = a.ctl.call(ctx, "registration", rpcTimeout, func(ctx context.Context, c yunchiv1.AgentServiceClient) error {
		var err error
		resp, err = c.RegisterHost(ctx, &yunchiv1.RegisterHostRequest{Facts: facts})
		return err
	})
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if a.cfg.HeartbeatInterval <= 0 && resp.GetHeartbeatIntervalMs() > 0 {
		a.hbInterval.Store(int64(time.Duration(resp.GetHeartbeatIntervalMs()) * time.Millisecond))
	}
	a.setMu.Lock()
	a.acceptAny = true
	a.setMu.Unlock()
	a.needRegister.Store(false)
	a.log.Info("host registered", "vcpus", facts.Capacity.Vcpus, "memory_bytes", facts.Capacity.MemoryBytes,
		"disk_bytes", facts.Capacity.DiskBytes, "heartbeat", time.Duration(a.hbInterval.Load()))
	return nil
}

func (a *Agent) heartbeatLoop(ctx context.Context) {
	t := time.NewTimer(time.Duration(a.hbInterval.Load()))
	defer t.Stop()
	var failedSince time.Time
	var lastWarned time.Time
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := a.beat(ctx)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		switch {
		case err != nil && failures == 0:
			failedSince, lastWarned = now, now
			a.log.Warn("heartbeat not delivered; retrying every interval", "err", err)
		case err != nil && now.Sub(lastWarned) >= failureLogEvery:
			lastWarned = now
			a.log.Warn("heartbeats still not delivered", "for", now.Sub(failedSince).Round(time.Second),
				"failed_beats", failures+1, "err", err)
		case err != nil:
			a.log.Debug("heartbeat failed", "err", err)
		case failures > 0:
			a.log.Info("heartbeat recovered", "after", now.Sub(failedSince).Round(time.Millisecond), "failed_beats", failures)
		}
		if err != nil {
			failures++
		} else {
			failures = 0
		}
		t.Reset(time.Duration(a.hbInterval.Load()))
	}
}

// heartbeatTimeout bounds one heartbeat attempt on one controller: a
// controller that takes longer than an interval to take a heartbeat has
// failed it, and the next controller is tried at once. The controller's
// host TTL is several intervals (5 by default), so an agent whose
// controller freezes reaches another one well before its host is
// marked down (the flat rpcTimeout alone would outlast the default TTL).
func (a *Agent) heartbeatTimeout() time.Duration {
	return min(max(time.Duration(a.hbInterval.Load()), minAttemptTimeout), rpcTimeout)
}

// beat sends one heartbeat, registering first when the controllers have
// forgotten the host.
func (a *Agent) beat(ctx context.Context) error {
	if a.needRegister.Load() {
		if err := a.register(ctx); err != nil {
			return err
		}
	}
	stats := &yunchiv1.HostStats{}
	doms, err := a.d.ListDomains(ctx)
	if err != nil {
		return fmt.Errorf("list domains: %w", err)
	}
	stats.DomainsDefined = int32(len(doms))
	for _, d := range doms {
		if d.State == StateRunning {
			stats.DomainsRunning++
		}
	}
	if free, err := a.d.FreeMemoryBytes(ctx); err == nil {
		stats.MemoryFreeBytes = &free
	}
	vmStats := a.vmStats(ctx)
	var resp *yunchiv1.HeartbeatResponse
	err = a.ctl.call(ctx, "heartbeat", a.heartbeatTimeout(), func(ctx context.Context, c yunchiv1.AgentServiceClient) error {
		var err error
		resp, err = c.Heartbeat(ctx, &yunchiv1.HeartbeatRequest{HostId: a.cfg.HostID, Stats: stats, VmStats: vmStats})
		return err
	})
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	if !resp.GetKnown() {
		a.log.Warn("controllers do not know this host; registering again")
		a.needRegister.Store(true)
		return a.register(ctx)
	}
	return nil
}

// errMoved ends a stream whose controller the agent has moved away from.
var errMoved = errors.New("moved to another controller")

// watchLoop keeps one WatchAssignments stream open, moving to the next
// controller with backoff whenever it breaks.
func (a *Agent) watchLoop(ctx context.Context) {
	bo := newBackoff()
	for {
		i, client, away := a.ctl.current()
		addr := a.ctl.addrs[i]
		err := a.watch(ctx, client, addr, away, bo)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errMoved) {
			a.log.Info("moving assignment stream to another controller", "from", addr)
			continue
		}
		if status.Code(err) == codes.NotFound {
			a.needRegister.Store(true)
		}
		a.ctl.failed(i, false)
		d := bo.next()
		a.log.Warn("assignment stream broken; reconnecting", "controller", addr, "err", err, "in", d.Round(time.Millisecond))
		if !sleep(ctx, d) {
			return
		}
	}
}

// watch holds one stream on one controller until it breaks, or until the
// agent moves away from that controller (away is cancelled: the heartbeats
// or another call found it failing, hung included, so the stream follows).
func (a *Agent) watch(ctx context.Context, client yunchiv1.AgentServiceClient, addr string, away context.Context, bo *backoff) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(away, func() { cancel(errMoved) })()
	stream, err := client.WatchAssignments(ctx, &yunchiv1.WatchAssignmentsRequest{HostId: a.cfg.HostID})
	if err != nil {
		if cause := context.Cause(ctx); cause == errMoved {
			return cause
		}
		return err
	}
	for first := true; ; first = false {
		set, err := stream.Recv()
		if err != nil {
			if cause := context.Cause(ctx); cause == errMoved {
				return cause
			}
			return err
		}
		if first {
			a.log.Info("watching assignments", "controller", addr, "index", set.GetIndex())
			bo.reset()
			// Perhaps another controller, or one that lost news: what
			// was acknowledged of mirrors is sent again.
			a.mw.resend.Store(true)
			a.exportsResend.Store(true)
		}
		a.offer(set)
	}
}

// offer hands a set to the reconcile loop. A set older than the one in hand
// comes from a lagging controller after a switch and would undo newer
// decisions, so it is dropped.
func (a *Agent) offer(set *yunchiv1.Assignments) {
	a.setMu.Lock()
	if a.set != nil && !a.acceptAny && set.GetIndex() != 0 && set.GetIndex() < a.set.GetIndex() {
		a.setMu.Unlock()
		a.log.Info("ignoring older assignments", "index", set.GetIndex(), "have", a.set.GetIndex())
		return
	}
	a.set, a.acceptAny = set, false
	a.setMu.Unlock()
	select {
	case a.setChanged <- struct{}{}:
	default:
	}
	select {
	case a.exportsChanged <- struct{}{}:
	default:
	}
	// Backups start here rather than in the reconcile loop, which may be
	// busy for long (a restore fills a disk within a define).
	a.backups.start(a.runCtx, set)
}

// wake makes the reconcile loop run soon against the latest set.
func (a *Agent) wake() {
	select {
	case a.setChanged <- struct{}{}:
	default:
	}
}

func (a *Agent) latest() *yunchiv1.Assignments {
	a.setMu.Lock()
	defer a.setMu.Unlock()
	return a.set
}
