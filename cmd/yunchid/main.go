// Command yunchid is Yunchi's daemon: `yunchid controller` runs one raft
// controller, `yunchid agent` the agent of one host, and `yunchid dev` the
// embedded default (3 controllers, 45 simulated hosts). It only parses
// flags and wires constructors.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/cmd/yunchid/devcluster"
	"github.com/yunchi/yunchi/controller"
	"github.com/yunchi/yunchi/controller/api"
	"github.com/yunchi/yunchi/internal/clock"
	"github.com/yunchi/yunchi/internal/pki"
	"github.com/yunchi/yunchi/internal/tinyimage"
	"github.com/yunchi/yunchi/scheduler"
)

func main() {
	app := &cli.App{
		Name:  "yunchid",
		Usage: "Yunchi (云池) daemon: controller, host agent, or the embedded dev cluster",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		},
		Before: func(c *cli.Context) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(c.String("log-level"))); err != nil {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", c.String("log-level"))
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
		Commands: []*cli.Command{controllerCmd(), agentCmd(), devCmd(), tinyImageCmd()},
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.RunContext(ctx, os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "yunchid: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		os.Exit(1)
	}
}

// agentLabels reads the agent's --label key=value flags. Keys that
// constraints read from the host's own fields are refused: such a label
// would be ignored.
func agentLabels(flags []string) (map[string]string, error) {
	labels := map[string]string{}
	for _, l := range flags {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: use key=value", l)
		}
		if scheduler.IsHostFieldKey(k) {
			return nil, fmt.Errorf("--label %q: key %q is reserved (constraints on %s read the host's own fields): use --center, --site, --rack or --host-id",
				l, k, strings.Join(scheduler.HostFieldKeys, ", "))
		}
		labels[k] = v
	}
	return labels, nil
}

// pressureWindow is --pressure-window as the scheduler's
// Options.PressureWindow: 0 on the command line is "never" (negative
// there).
func pressureWindow(n int) (int, error) {
	switch {
	case n < 0:
		return 0, fmt.Errorf("--pressure-window %d: want a number of decisions, or 0 to never spread under pressure", n)
	case n == 0:
		return -1, nil
	}
	return n, nil
}

// segmentSize reads --raft-segment-size.
func segmentSize(s string) (int, error) {
	n, err := api.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--raft-segment-size: %w", err)
	}
	if n < 64<<10 || n > 1<<30 {
		return 0, fmt.Errorf("--raft-segment-size %s is out of range: give 64KiB to 1GiB", s)
	}
	return int(n), nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func controllerCmd() *cli.Command {
	return &cli.Command{
		Name:  "controller",
		Usage: "run one raft controller (gRPC, REST, /metrics on --listen)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "id", Usage: "this controller's unique id, e.g. a1 (required)"},
			&cli.StringFlag{Name: "center", Usage: "data center this controller runs in (production, same-city DR, remote DR)"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8470", Usage: "API address: gRPC, REST, /metrics, /openapi.json"},
			&cli.StringFlag{Name: "advertise", Usage: "API address others dial (default: --listen)"},
			&cli.StringFlag{Name: "raft-listen", Value: "127.0.0.1:8480", Usage: "raft peer address"},
			&cli.StringFlag{Name: "raft-advertise", Usage: "raft address others dial (default: --raft-listen)"},
			&cli.StringFlag{Name: "data-dir", Usage: "where the raft log, stable store and snapshots live (required)"},
			&cli.StringFlag{Name: "image-dir", Usage: "where the bytes of images are kept (default: <data-dir>/images); only their metadata goes through raft"},
			&cli.StringFlag{Name: "backup-dir", Usage: "where the backup repositories this controller keeps live (default: <data-dir>/backups; a local disk or an NFS mount, see docs/dr.md)"},
			&cli.BoolFlag{Name: "bootstrap", Usage: "start a new cluster with this controller as its first voter"},
			&cli.StringFlag{Name: "join", Usage: "API address(es) of running controllers to join, comma-separated"},
			&cli.StringFlag{Name: "default-strategy", Value: "binpack", Usage: "placement strategy when a create names none: binpack or spread"},
			&cli.IntFlag{Name: "pressure-window", Value: scheduler.DefaultPressureWindow, Usage: "after a nearly full pool refuses a VM for lack of room, binpack spreads for this many decisions, which serves more requests in the same room (docs/performance.md, \"Under pressure\"); 0: never"},
			&cli.StringFlag{Name: "raft-segment-size", Value: "64MiB", Usage: "size of one raft log segment file, allocated in full when created (64KiB to 1GiB); smaller wastes less disk on a small data dir"},
			&cli.StringSliceFlag{Name: "cors-allow-origin", Usage: "origin (scheme://host[:port]) whose browser pages may write through the REST API (repeatable; default none: cross-origin writes are refused)"},
			&cli.BoolFlag{Name: "insecure", Usage: "plaintext API and raft, no certificates (default: TLS with the cluster CA in <data-dir>/tls)"},
			&cli.StringFlag{Name: "tls-cert", Usage: "the API's certificate (PEM) instead of the cluster CA's, e.g. the ministry's own; agents and controllers still use the cluster CA"},
			&cli.StringFlag{Name: "tls-key", Usage: "key (PEM) of --tls-cert"},
			&cli.StringFlag{Name: "join-token", Usage: "with --join, first start: the one-time token from: yunchi cluster join-token create (with --insecure: a sysadmin's API token, the bootstrap controller prints one)", EnvVars: []string{"YUNCHI_JOIN_TOKEN"}},
			&cli.StringFlag{Name: "ca-cert-hash", Usage: "with --join, first start: sha256:<hex> pin of the cluster CA, as the bootstrap controller printed it"},
			&cli.DurationFlag{Name: "dr-snapshot-interval", Value: controller.DefaultDRSnapshotInterval, Usage: "while this controller's center is declared remote DR, copy the cluster state into --dr-snapshot-dir this often, for: yunchid controller recover --from-snapshot (0: never)"},
			&cli.StringFlag{Name: "dr-snapshot-dir", Usage: "where the state copies are kept (default: <data-dir>/dr-snapshots)"},
			&cli.IntFlag{Name: "dr-snapshot-keep", Value: controller.DefaultDRSnapshotKeep, Usage: "how many state copies are kept (the oldest go first)"},
			&cli.Float64Flag{Name: "rate-limit", Value: 500, Usage: "requests per second each token may make (burst: twice that); over it a call gets 429 / RESOURCE_EXHAUSTED with Retry-After; 0: no limit"},
			// For fault tests only (the chaos harness's clock jumps):
			// hidden from help, never set in production.
			&cli.StringFlag{Name: "fault-clock-file", Hidden: true, Usage: "FILE holding a duration this controller's wall clock is shifted by, re-read every 100 ms (fault tests)"},
		},
		// recover's flags are its own: the ones above (--id, --data-dir)
		// are checked by Action, not by the parser, so that they are not
		// asked of recover.
		Subcommands: []*cli.Command{recoverCmd()},
		Action: func(c *cli.Context) error {
			for _, f := range []string{"id", "data-dir"} {
				if c.String(f) == "" {
					return fmt.Errorf("--%s is required", f)
				}
			}
			pressure, err := pressureWindow(c.Int("pressure-window"))
			if err != nil {
				return err
			}
			if c.Int("dr-snapshot-keep") < 1 {
				return fmt.Errorf("--dr-snapshot-keep %d: keep at least 1 copy", c.Int("dr-snapshot-keep"))
			}
			drInterval := c.Duration("dr-snapshot-interval")
			if drInterval <= 0 {
				drInterval = -1 // never
			}
			seg, err := segmentSize(c.String("raft-segment-size"))
			if err != nil {
				return err
			}
			if path := c.String("fault-clock-file"); path != "" {
				slog.Warn("wall clock follows a fault-test file (--fault-clock-file)", "file", path)
				go clock.Follow(c.Context, path, 100*time.Millisecond)
			}
			ctl, err := controller.New(controller.Config{
				LogSegmentSize:   seg,
				DefaultStrategy:  c.String("default-strategy"),
				PressureWindow:   pressure,
				CORSAllowOrigins: c.StringSlice("cors-allow-origin"),
				ID:               c.String("id"), Center: c.String("center"),
				Listen: c.String("listen"), Advertise: c.String("advertise"),
				RaftListen: c.String("raft-listen"), RaftAdvertise: c.String("raft-advertise"),
				DataDir: c.String("data-dir"), ImageDir: c.String("image-dir"), BackupDir: c.String("backup-dir"), Bootstrap: c.Bool("bootstrap"), Join: splitList(c.String("join")),
				Insecure: c.Bool("insecure"), TLSCert: c.String("tls-cert"), TLSKey: c.String("tls-key"),
				JoinToken: c.String("join-token"), CACertHash: c.String("ca-cert-hash"), Context: c.Context,
				RateLimit:          rateLimit(c.Float64("rate-limit")),
				DRSnapshotInterval: drInterval, DRSnapshotDir: c.String("dr-snapshot-dir"), DRSnapshotKeep: c.Int("dr-snapshot-keep"),
			})
			if err != nil {
				return err
			}
			if c.Bool("insecure") {
				slog.Warn("plaintext (--insecure): API and raft traffic, tokens included, cross the network unencrypted")
			} else if c.Bool("bootstrap") {
				fmt.Printf("cluster CA: %s (CA certificate for `yunchi --ca-cert`: %s)\n", ctl.CAHash(), filepath.Join(controller.TLSDir(c.String("data-dir")), pki.CACertFile))
				fmt.Printf("join: yunchid controller --join %s --join-token <yunchi cluster join-token create> --ca-cert-hash %s ...; yunchid agent --controllers %s --join-token <yunchi host join-token create> --ca-cert-hash %s --credentials-dir DIR ...\n",
					ctl.Addr(), ctl.CAHash(), ctl.Addr(), ctl.CAHash())
			}
			return ctl.Run(c.Context)
		},
	}
}

func agentCmd() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "run the agent of one host: register, heartbeat, run assigned VMs through libvirt",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "host-id", Required: true, Usage: "this host's unique id"},
			&cli.StringFlag{Name: "center", Required: true, Usage: "data center of this host"},
			&cli.StringFlag{Name: "site", Usage: "site (city) of this host"},
			&cli.StringFlag{Name: "rack", Usage: "rack of this host"},
			&cli.StringSliceFlag{Name: "label", Usage: "key=value label (repeatable)"},
			&cli.StringFlag{Name: "libvirt-uri", Value: "qemu:///system", Usage: "libvirt connection, e.g. test:///abs/path/node.xml"},
			&cli.Int64Flag{Name: "disk-bytes", Usage: "disk capacity to offer (default: the capacity of --pool)"},
			&cli.StringFlag{Name: "domain-type", Usage: "hypervisor type of the guests: kvm, qemu (TCG, no hardware virtualisation) or test (default: test for test:/// URIs, else kvm)"},
			&cli.StringFlag{Name: "pool", Value: libvirt.DefaultPool, Usage: "libvirt storage pool where VMs' root disks and cloud-init seeds are made"},
			&cli.StringFlag{Name: "pool-dir", Usage: "make --pool as a directory pool here if it does not exist (default: it must exist)"},
			&cli.StringFlag{Name: "shared-storage", Usage: "`NAME` of the shared storage --pool lives on (an NFS export or directory other hosts mount too), the same on every host sharing it; its disks outlive this host (default: local)"},
			&cli.StringFlag{Name: "network", Value: "user", Usage: "guests' network: user (user-mode NAT), none, or the name of a host bridge"},
			&cli.StringFlag{Name: "console-log-dir", Usage: "also log each guest's serial console to DIR/<domain name>.log (default: no log)"},
			&cli.StringFlag{Name: "image-dir", Value: agent.DefaultImageDir, Usage: "where images VMs boot from are cached (readable by QEMU)"},
			&cli.StringFlag{Name: "controllers", Value: "127.0.0.1:8470", Usage: "controller API addresses, comma-separated, tried in turn"},
			&cli.DurationFlag{Name: "heartbeat", Usage: "heartbeat interval (default: what the controller asks at registration)"},
			&cli.StringFlag{Name: "token-file", EnvVars: []string{"YUNCHI_HOST_TOKEN_FILE"}, Usage: "`FILE` holding this host's token (made with: yunchi token create --host ID); keep it mode 0600"},
			&cli.BoolFlag{Name: "insecure", Usage: "plaintext to the controllers, no certificate (default: mutual TLS)"},
			&cli.StringFlag{Name: "credentials-dir", Usage: "where the host's certificate and the cluster CA are kept (made at the first start)"},
			&cli.StringFlag{Name: "join-token", Usage: "first start: one-time token from `yunchi host join-token create`", EnvVars: []string{"YUNCHI_JOIN_TOKEN"}},
			&cli.StringFlag{Name: "ca-cert-hash", Usage: "first start: sha256:<hex> pin of the cluster CA, as the bootstrap controller printed it"},
			&cli.StringFlag{Name: "max-backup-rate", Usage: "cap on the bytes per second this host sends to each center's backup repository, e.g. 100MiB (the remote link is the scarce one; default: no cap)"},
			&cli.StringFlag{Name: "backup-scratch-dir", Usage: "where a running backup keeps its NBD socket and QEMU's scratch file (the old contents of blocks the guest overwrites meanwhile; give a disk with room; default: the system temp dir)"},
			&cli.StringFlag{Name: "disk-dir", Usage: "test:/// hosts only: keep each VM's root disk as a real sparse file here, so that backups and restores have bytes (default: none)"},
			&cli.StringFlag{Name: "status-listen", Usage: "`ADDR` (host:port) of a local status listener, plain HTTP without authentication (keep it on loopback): GET /domains (what libvirt runs, JSON), /metrics, /healthz (default: none)"},
			&cli.StringFlag{Name: "mirror-dir", Usage: "serve mirror exports (platinum: synchronous copies of other centers' VMs' root disks, over NBD with qemu-nbd) from files in `DIR`; give it room for those disks (default: none, this host keeps no mirrors)"},
			&cli.StringFlag{Name: "mirror-host", Value: "127.0.0.1", Usage: "`IP` the mirror exports listen on and are advertised at: this host's address on the network between the centers"},
			&cli.StringFlag{Name: "mirror-ports", Value: "10809-10909", Usage: "`FIRST-LAST` TCP ports of the mirror exports, one per mirrored VM"},
			&cli.StringFlag{Name: "mirror-cache", Value: agent.MirrorCacheWriteback, Usage: "qemu-nbd cache mode of the mirror exports: writeback (a write is acknowledged once in this host's page cache) or writethrough (once on its disk)"},
		},
		Action: func(c *cli.Context) error {
			labels, err := agentLabels(c.StringSlice("label"))
			if err != nil {
				return err
			}
			token, err := readTokenFile(c.String("token-file"))
			if err != nil {
				return err

			}
			var rate int64
			if v := c.String("max-backup-rate"); v != "" {
				if rate, err = api.ParseSize(strings.TrimSuffix(v, "/s")); err != nil || rate <= 0 {
					return fmt.Errorf("--max-backup-rate %q: give bytes per second, e.g. 100MiB", v)
				}
			}
			var mirror agent.MirrorExportConfig
			if dir := c.String("mirror-dir"); dir != "" {
				lo, hi, ok := strings.Cut(c.String("mirror-ports"), "-")
				plo, err1 := strconv.Atoi(lo)
				phi, err2 := strconv.Atoi(hi)
				if !ok || err1 != nil || err2 != nil {
					return fmt.Errorf("--mirror-ports %q: give FIRST-LAST, e.g. 10809-10909", c.String("mirror-ports"))
				}
				if dir, err = filepath.Abs(dir); err != nil {
					return fmt.Errorf("--mirror-dir: %w", err)
				}
				mirror = agent.MirrorExportConfig{Dir: dir, Host: c.String("mirror-host"), PortMin: plo, PortMax: phi, Cache: c.String("mirror-cache")}
			}
			var status *agent.StatusServer
			if addr := c.String("status-listen"); addr != "" {
				// Bound before joining or registering: a bad or busy address fails first.
				if status, err = agent.ListenStatus(addr); err != nil {
					return fmt.Errorf("--status-listen: %w", err)
				}
				defer status.Close()
			}
			var dial []grpc.DialOption
			if c.Bool("insecure") {
				if c.String("join-token") != "" {
					return errors.New("--insecure excludes --join-token: join tokens are for TLS clusters; give --token-file")
				}
				if token == "" {
					return errors.New("--insecure needs --token-file: the host's token from: yunchi token create --host ID")
				}
				slog.Warn("plaintext (--insecure): agent traffic crosses the network unencrypted")
			} else {
				if token != "" {
					return errors.New("--token-file is for --insecure clusters: with TLS the host's certificate (made at join) identifies it")
				}
				creds, err := agent.Credentials(c.Context, agent.JoinConfig{
					HostID: c.String("host-id"), Controllers: splitList(c.String("controllers")), Dir: c.String("credentials-dir"),
					JoinToken: c.String("join-token"), CAHash: c.String("ca-cert-hash"),
				})
				if err != nil {
					return err
				}
				dial = append(dial, grpc.WithTransportCredentials(creds))
			}
			drv, err := libvirt.OpenWithOptions(c.String("libvirt-uri"), libvirt.Options{
				DomainType: c.String("domain-type"), Pool: c.String("pool"), PoolDir: c.String("pool-dir"),
				Network: c.String("network"), ConsoleLogDir: c.String("console-log-dir"),
				DiskDir: c.String("disk-dir"), BackupDir: c.String("backup-scratch-dir"),
			})
			if err != nil {
				return err
			}
			defer drv.Close()
			hn, _ := os.Hostname()
			a := agent.New(agent.Config{
				HostID: c.String("host-id"), Hostname: hn, Center: c.String("center"), Site: c.String("site"),
				Rack: c.String("rack"), Labels: labels, DiskBytes: c.Int64("disk-bytes"),
				LibvirtURI: c.String("libvirt-uri"), Controllers: splitList(c.String("controllers")),
				HeartbeatInterval: c.Duration("heartbeat"), DialOptions: dial, Token: token,
				ImageDir: c.String("image-dir"), StoragePool: c.String("pool"), SharedStorage: c.String("shared-storage"),
				MaxBackupRate: rate, Mirror: mirror,
			}, drv)
			if status != nil {
				stop := status.Start(c.Context, c.String("host-id"), drv, slog.Default())
				defer stop() // before drv.Close
			}
			return a.Run(c.Context)
		},
	}
}

func devCmd() *cli.Command {
	return &cli.Command{
		Name:        "dev",
		Usage:       "run the embedded default: 3 controllers (a1, a2, b1) and 45 simulated hosts on libvirt's test driver",
		Description: devDescription,
		Subcommands: []*cli.Command{devCenterCmd()},
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Usage: "keep state here (default: a temp dir removed at exit)"},
			&cli.IntFlag{Name: "port", Value: 8470, Usage: "API port of the first controller; the others use the next two, raft the ones 10 above, the center control endpoint (yunchid dev center) 20 above"},
			&cli.IntFlag{Name: "hosts", Value: 45, Usage: "number of simulated hosts (with --real-hosts: 0 unless given)"},
			&cli.IntFlag{Name: "real-hosts", Usage: "also start N real hosts: private libvirtd + QEMU daemons on this machine (root), with the public image \"tiny\" to boot"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("yunchid dev takes no arguments (%q): its subcommand is center", c.Args().First())
			}
			hosts := c.Int("hosts")
			if c.Int("real-hosts") > 0 && !c.IsSet("hosts") {
				hosts = 0
			}
			return devcluster.Run(c.Context, devcluster.Config{
				DataDir: c.String("data-dir"), BasePort: c.Int("port"), Hosts: hosts, RealHosts: c.Int("real-hosts"), Out: os.Stdout,
			})
		},
	}
}

func tinyImageCmd() *cli.Command {
	return &cli.Command{
		Name:      "tiny-image",
		Usage:     "build the tiny test guest (a Debian kernel and busybox, boots in seconds under TCG) as a raw disk image at FILE",
		ArgsUsage: "FILE",
		Description: "Built from this machine's Debian packages (" + tinyimage.Packages + "), nothing downloaded.\n" +
			"The guest reads its cloud-init NoCloud seed and prints " + tinyimage.Marker + " hostname=<its hostname> on its serial console,\n" +
			"then keeps a shell there. Import it with: yunchi image import tiny --file FILE --public",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "cache-dir", Usage: "where built images are kept between runs (default: ~/.cache/yunchi)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("give the FILE to write, e.g. yunchid tiny-image /tmp/tiny.raw")
			}
			if why := tinyimage.Available(); why != "" {
				return errors.New(why)
			}
			cache := c.String("cache-dir")
			if cache == "" {
				d, err := os.UserCacheDir()
				if err != nil {
					return err
				}
				cache = filepath.Join(d, "yunchi")
			}
			path, err := tinyimage.Build(c.Context, cache)
			if err != nil {
				return err
			}
			in, err := os.Open(path)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := os.Create(c.Args().First())
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, in); err != nil {
				out.Close()
				return err
			}
			if err := out.Close(); err != nil {
				return err
			}
			fmt.Printf("wrote %s (raw)\n", c.Args().First())
			return nil
		},
	}
}

// readTokenFile reads a token from path ("": none); it refuses a file
// others may read.
func readTokenFile(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("--token-file %s is readable by others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty", path)
	}
	return tok, nil
}

// rateLimit turns --rate-limit (0: none) into Config.RateLimit (0: the
// default, below 0: none).
func rateLimit(v float64) float64 {
	if v <= 0 {
		return -1
	}
	return v
}
