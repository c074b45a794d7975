// Package controller wires one Yunchi controller: raft (raftnode) over the
// replicated state (state), the API (api) on one TCP port, and the leader's
// duties. cmd/yunchid only parses flags and calls New and Run.
package controller

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/yunchi/yunchi/controller/api"
	"github.com/yunchi/yunchi/controller/audit"
	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/images"
	"github.com/yunchi/yunchi/controller/leader"
	"github.com/yunchi/yunchi/controller/placement"
	"github.com/yunchi/yunchi/controller/raftnode"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// Config of one controller.
type Config struct {
	ID     string
	Center string
	// Listen is the API address (gRPC, REST, /metrics); Advertise is what
	// clients and peers dial (defaults to the bound address).
	Listen, Advertise string
	// RaftListen / RaftAdvertise: raft's own TCP port.
	RaftListen, RaftAdvertise string
	DataDir                   string
	// ImageDir holds the bytes of images (controller/images); default
	// DataDir/images. Only their metadata goes through raft.
	ImageDir string
	// BackupDir holds the backup repositories this controller keeps (one
	// per center whose repository it is named for: BackupDir/<center>;
	// controller/backup); default DataDir/backups. A local disk or an NFS
	// mount sized as docs/dr.md says.
	BackupDir string
	// Bootstrap a new cluster (when DataDir holds no state yet).
	Bootstrap bool
	// Join asks these controllers (API addresses) to add this one as a voter.
	Join []string
	// RaftTransport replaces TCP (tests).
	RaftTransport raft.Transport
	// Fast raft timeouts, for tests and the dev cluster on loopback.
	FastRaft bool
	// LogSegmentSize of the raft log (zero: 64 MiB); tests on a small disk.
	LogSegmentSize    int
	HeartbeatInterval time.Duration
	HostTTL           time.Duration
	// DefaultStrategy places VMs whose request names no strategy:
	// "binpack" (the default: fill hosts up) or "spread".
	DefaultStrategy string
	// PressureWindow is the scheduler's Options.PressureWindow (0: the
	// default; negative: binpack never spreads under pressure).
	PressureWindow int
	// CORSAllowOrigins are the origins (scheme://host[:port]) whose browser
	// pages may write through the REST API; none by default.
	CORSAllowOrigins []string
	Logger           *slog.Logger

	// Insecure: plaintext API and raft (the dev cluster, tests, an
	// explicit --insecure). Otherwise TLS: see controller/tls.go.
	Insecure bool
	// TLSCert/TLSKey: the ministry's own certificate for the API (the
	// cluster CA still signs controllers and agents).
	TLSCert, TLSKey string
	// JoinToken: with TLS, a joining controller's one-time join token
	// (yunchi cluster join-token create); with Insecure, a sysadmin's API
	// token for its JoinCluster call. CACertHash: the pin of the cluster
	// CA a joiner verifies the cluster by (TLS).
	JoinToken, CACertHash string
	// Context bounds New's wait for a joiner's credentials (nil:
	// Background; the wait is at most two minutes either way).
	Context context.Context
	// AdminTokensOut receives, once, the tokens of the administrator
	// accounts the bootstrap controller creates (nil: stdout).
	AdminTokensOut io.Writer
	// RateLimit is the requests per second each token (or host, or
	// address without credentials) may make, burst twice that: 0 is
	// auth.DefaultRate, below 0 none.
	RateLimit float64
	// NoAuth lets every API call through with no caller. Only Go code can
	// set it (no flag does): tests of behaviour that predates
	// authentication.
	NoAuth bool

	// DRSnapshotInterval is how often this controller copies the cluster
	// state into DRSnapshotDir while its center is declared remote DR
	// (raftnode.DRCopier): 0 is DefaultDRSnapshotInterval, below 0 never.
	// DRSnapshotDir defaults to DataDir/dr-snapshots; DRSnapshotKeep (0:
	// DefaultDRSnapshotKeep) is how many copies are kept.
	DRSnapshotInterval time.Duration
	DRSnapshotDir      string
	DRSnapshotKeep     int
}

// Defaults of the state copies for DR: one every 5 minutes, the last 12
// (an hour) kept.
const (
	DefaultDRSnapshotInterval = 5 * time.Minute
	DefaultDRSnapshotKeep     = 12
)

// Controller is a running controller.
type Controller struct {
	cfg  Config
	lis  net.Listener
	node *raftnode.Node
	api  *api.Server
	// placer decides placements; its reservations live for one term.
	placer *placement.Engine
	// duties run while this controller is the leader.
	duties *leader.Duties
	log    *slog.Logger
	// trail is the audit trail's file (closed after raft).
	trail *audit.File
	// sec is the TLS material (nil: plaintext).
	sec *security
	// drCopies copies the state for DR (nil: never).
	drCopies *raftnode.DRCopier
}

// auditTrail is the API's view of the trail: the file, and the head
// the state holds.
type auditTrail struct {
	*audit.File
	store *state.Store
}

func (t auditTrail) WithHead(fn func(*statev1.AuditHead)) { t.store.WithAuditHead(fn) }

// Recorder records denied requests and failed logins (for the
// authentication interceptor).
func (c *Controller) Recorder() *audit.Recorder { return c.api.AuditRecorder }

// New opens the listener and raft; Run serves.
func New(cfg Config) (*Controller, error) {
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	lg = lg.With("controller", cfg.ID)
	if cfg.ID == "" {
		return nil, errors.New("controller id is required (--id)")
	}
	if cfg.DRSnapshotKeep < 0 {
		return nil, fmt.Errorf("--dr-snapshot-keep %d: keep at least 1 copy", cfg.DRSnapshotKeep)
	}
	if cfg.Bootstrap && len(cfg.Join) > 0 {
		return nil, errors.New("--bootstrap and --join exclude each other: bootstrap the first controller, join the others to it")
	}
	strategy := scheduler.Binpack
	if cfg.DefaultStrategy != "" {
		st, err := scheduler.ParseStrategy(cfg.DefaultStrategy)
		if err != nil {
			return nil, fmt.Errorf("--default-strategy: %w", err)
		}
		strategy = st
	}
	for _, o := range cfg.CORSAllowOrigins {
		if _, err := api.CheckOrigin(o); err != nil {
			return nil, fmt.Errorf("--cors-allow-origin: %w", err)
		}
	}
	var sec *security
	if !cfg.Insecure {
		if cfg.DataDir == "" {
			return nil, errors.New("--data-dir is required")
		}
		var err error
		if sec, err = setupTLS(cfg, lg); err != nil {
			return nil, err
		}
	} else if cfg.TLSCert != "" || cfg.CACertHash != "" {
		return nil, errors.New("--insecure excludes --tls-cert and --ca-cert-hash (with --insecure, --join-token is a sysadmin's API token)")
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if cfg.Advertise == "" {
		cfg.Advertise = lis.Addr().String()
	}
	rc := raftnode.Config{
		ID: cfg.ID, RaftBind: cfg.RaftListen, RaftAdvertise: cfg.RaftAdvertise,
		DataDir: cfg.DataDir, Bootstrap: cfg.Bootstrap, Transport: cfg.RaftTransport, Logger: lg,
		LogSegmentSize: cfg.LogSegmentSize,
	}
	if sec != nil {
		rc.TLS = sec.peer
		lis = tls.NewListener(lis, sec.api)
	}
	if cfg.FastRaft {
		// The lease as long as the heartbeat timeout: with 150 ms a leader
		// on a loaded 2-core machine (CI under -race) stepped down when its
		// followers' goroutines were not scheduled for a moment ("failed
		// to contact quorum" after 218 ms), and a test's write failed.
		rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = 300*time.Millisecond, 300*time.Millisecond, 300*time.Millisecond
	}
	// The audit trail: Apply appends to it, snapshots carry it.
	trail, err := audit.OpenFile(cfg.DataDir, lg)
	if err != nil {
		lis.Close()
		return nil, err
	}
	imageDir := cfg.ImageDir
	if imageDir == "" && cfg.DataDir != "" {
		imageDir = filepath.Join(cfg.DataDir, "images")
	}
	var imgs *images.Store
	if imageDir != "" {
		if imgs, err = images.Open(imageDir, lg); err != nil {
			lis.Close()
			trail.Close()
			return nil, err
		}
	}
	store := state.New()
	store.SetAuditSink(trail)
	rc.Audit = trail
	node, err := raftnode.Open(rc, store)
	if err != nil {
		lis.Close()
		trail.Close()
		return nil, err
	}
	placer := placement.New(node, node.Store, lg)
	placer.PressureWindow = cfg.PressureWindow
	duties := leader.New(node, node.Store, leader.Self{ID: cfg.ID, APIAddress: cfg.Advertise, RaftAddress: node.Addr(), Center: cfg.Center}, lg)
	if cfg.HostTTL > 0 {
		duties.HostTTL = cfg.HostTTL
	}
	duties.Backups = leader.NewBackups(node, node.Store, lg)
	duties.Recovery = leader.NewRecovery(node, node.Store, placer, lg)
	srv := api.NewServer(node, node, node.Store, placer, duties, api.Self{ID: cfg.ID, APIAddress: cfg.Advertise, Center: cfg.Center}, lg)
	if cfg.HeartbeatInterval > 0 {
		srv.HeartbeatInterval = cfg.HeartbeatInterval
	}
	srv.DefaultStrategy = strategy
	srv.Audit = auditTrail{trail, store}
	srv.Images = imgs
	srv.AuditRecorder = audit.NewRecorder(srv.SubmitAuditBatch, lg)
	if sec != nil {
		srv.TLS = &api.TLS{CA: sec.ca, Dial: sec.dial}
	}
	c := &Controller{cfg: cfg, lis: lis, node: node, api: srv, placer: placer, duties: duties, log: lg, trail: trail, sec: sec}
	if cfg.DRSnapshotInterval >= 0 && cfg.DataDir != "" {
		dc := raftnode.DRCopies{Dir: cfg.DRSnapshotDir, Interval: cmp.Or(cfg.DRSnapshotInterval, DefaultDRSnapshotInterval),
			Keep: cmp.Or(cfg.DRSnapshotKeep, DefaultDRSnapshotKeep), ID: cfg.ID, Center: cfg.Center, DataDir: cfg.DataDir}
		if dc.Dir == "" {
			dc.Dir = filepath.Join(cfg.DataDir, "dr-snapshots")
		}
		c.drCopies = raftnode.NewDRCopier(node, dc, lg)
	}
	srv.Auth = &auth.Authorizer{Store: node.Store, Recorder: srv.AuditRecorder, Log: lg, Disabled: cfg.NoAuth, WaitChange: node.WaitChange,
		Leader: node.IsLeader}
	switch {
	case cfg.NoAuth: // no callers to tell apart: tests of what predates authentication
	case cfg.RateLimit == 0:
		srv.Auth.Limiter = &auth.Limiter{PerSecond: auth.DefaultRate, Burst: auth.DefaultBurst}
	case cfg.RateLimit > 0:
		srv.Auth.Limiter = &auth.Limiter{PerSecond: cfg.RateLimit, Burst: max(1, int(2*cfg.RateLimit))}
	}
	if sec != nil {
		srv.Auth.PeerIdentity = peerIdentity
	}
	if !cfg.NoAuth {
		srv.Auth.Escalate = srv.Escalate
	}
	return c, nil
}

// Addr is the API address clients dial.
func (c *Controller) Addr() string { return c.cfg.Advertise }

// Node exposes raft (tests, status).
func (c *Controller) Node() *raftnode.Node { return c.node }

// Run serves until ctx is done, then shuts down raft and the API.
func (c *Controller) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := api.NewMetrics(c.api)
	backupDir := c.cfg.BackupDir
	if backupDir == "" && c.cfg.DataDir != "" {
		backupDir = filepath.Join(c.cfg.DataDir, "backups")
	}
	if backupDir != "" {
		rs := api.NewBackupRepoServer(backupDir, c.cfg.ID, c.node.Store, m.Registry, c.log)
		c.api.Repos, c.api.RepoService = rs, rs
	}
	gs := c.api.NewGRPCServer(m)
	h, err := c.api.NewHTTPHandler(ctx, m, api.HTTPOptions{AllowOrigins: c.cfg.CORSAllowOrigins})
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)

	// gRPC connections go to gRPC's own transport, the rest to hs.
	grpcLis, httpLis := api.Split(c.lis)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(httpLis) }()
	go gs.Serve(grpcLis) // returns when gs stops or the port closes
	// Leader duties run while this controller leads; placement
	// reservations are the leader's: a new term (won or lost) starts
	// without any.
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		c.node.WatchLeadership(ctx, func(isLeader bool) {
			c.placer.Reset()
			if isLeader {
				c.duties.Start(ctx)
				if c.cfg.Bootstrap {
					go c.announceAdmins(ctx)
				}
			} else {
				c.duties.Stop()
			}
		})
		c.duties.Stop()
	}()
	go c.api.WatchMembership(ctx)
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		c.api.AuditRecorder.Run(ctx)
	}()
	go c.api.RunHealth(ctx)
	imagesDone := make(chan struct{})
	go func() {
		defer close(imagesDone)
		c.api.RunImages(ctx)
	}()
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		c.api.RunBackupGC(ctx)
	}()
	copiesDone := make(chan struct{})
	go func() {
		defer close(copiesDone)
		if c.drCopies != nil {
			c.drCopies.Run(ctx)
		}
	}()
	if len(c.cfg.Join) > 0 {
		go c.join(ctx)
	}
	c.log.Info("controller serving", "api", c.cfg.Advertise, "raft", c.node.Addr(), "center", c.cfg.Center)

	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	hs.Shutdown(sctx) // ends REST; open gRPC streams end with the raft shutdown below
	gs.Stop()
	c.api.Close()
	cancel()
	<-imagesDone
	<-gcDone
	<-copiesDone // its snapshot is raft's: before raft stops
	// Raft's shutdown fails the duties' proposals still waiting, so they
	// stop promptly after it.
	<-recorded // its last flush runs before raft stops
	serr := c.node.Shutdown()
	<-watched
	if cerr := c.trail.Close(); cerr != nil && serr == nil {
		serr = fmt.Errorf("close the audit trail: %w", cerr)
	}
	if serr != nil && err == nil {
		err = serr
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// join asks each address in turn to add this controller, until one does.
func (c *Controller) join(ctx context.Context) {
	req := &yunchiv1.JoinClusterRequest{Id: c.cfg.ID, RaftAddress: c.node.Addr(), ApiAddress: c.cfg.Advertise, Center: c.cfg.Center}
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		for _, addr := range c.cfg.Join {
			creds := insecure.NewCredentials()
			if c.sec != nil {
				creds = c.sec.dial
			}
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
			if err != nil {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			// Without TLS the joiner is let in by a sysadmin's token; with
			// TLS by its controller certificate (the join token was spent
			// getting it).
			if c.sec == nil && c.cfg.JoinToken != "" {
				cctx = metadata.AppendToOutgoingContext(cctx, "authorization", "Bearer "+c.cfg.JoinToken)
			}
			_, err = yunchiv1.NewClusterServiceClient(conn).JoinCluster(cctx, req)
			cancel()
			conn.Close()
			if err == nil {
				c.log.Info("joined the cluster", "via", addr)
				return
			}
			c.log.Warn("join failed, will retry", "via", addr, "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

// announceAdmins creates the administrator accounts on a new cluster
// (bootstrapAdmins) and prints their tokens, once, to AdminTokensOut.
func (c *Controller) announceAdmins(ctx context.Context) {
	for attempt := 0; ctx.Err() == nil && c.node.IsLeader(); attempt++ {
		toks, err := c.bootstrapAdmins(ctx)
		if err == nil {
			if toks != nil {
				out := c.cfg.AdminTokensOut
				if out == nil {
					out = os.Stdout
				}
				// Printed, not logged: tokens never go to a log.
				fmt.Fprintf(out, "sysadmin token: %s\nsecadmin token: %s\nauditor token: %s\n(shown once; also in %s, mode 0600)\n",
					toks.Sysadmin, toks.Secadmin, toks.Auditor, filepath.Join(c.cfg.DataDir, AdminTokensFile))
				c.log.Info("administrator accounts created", "users", "sysadmin, secadmin, auditor", "tokens_file", filepath.Join(c.cfg.DataDir, AdminTokensFile))
			}
			return
		}
		c.log.Warn("could not create the administrator accounts yet; retrying", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
