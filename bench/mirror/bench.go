//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	lv "libvirt.org/go/libvirt"

	"github.com/yunchi/yunchi/agent"
	yunchilibvirt "github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/internal/benchkit"
	"github.com/yunchi/yunchi/internal/libvirthost"
	"github.com/yunchi/yunchi/internal/qemuhost"
	"github.com/yunchi/yunchi/internal/tinyimage"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const (
	writeSize = 4 << 10
	// fillPiece is the size of one write of the disk's fill: each is one
	// HMP command, which holds the domain's monitor while it runs.
	fillPiece = 16 << 20
	benchVM   = "bench-mirror"
	// logWait bounds waiting for qemu-io's lines to reach QEMU's log
	// (through virtlogd).
	logWait = 10 * time.Second
)

// mode is one state of the disk: unmirrored, or mirrored to an export.
type mode struct {
	name    string
	exports *agent.MirrorExports // nil: unmirrored
	target  yunchilibvirt.MirrorTarget
}

// series are one kind of write's figures, in µs.
type series struct{ lat, rtt []float64 }

func run(ctx context.Context, cfg config, out io.Writer) (err error) {
	tmp, err := os.MkdirTemp(cfg.tmpDir, "ybm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var ls benchkit.Lines
	ls.Add("cpus", "%d", runtime.NumCPU())
	ls.Add("loadavg_at_start", "%s", benchkit.Loadavg())

	benchkit.Progress("starting a private libvirtd under %s", tmp)
	h, err := libvirthost.Start(ctx, filepath.Join(tmp, "h"))
	if err != nil {
		return err
	}
	defer func() {
		if serr := h.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	consoleDir := filepath.Join(tmp, "console")
	d, err := yunchilibvirt.OpenWithOptions(h.URI, yunchilibvirt.Options{DomainType: "qemu", Network: yunchilibvirt.NetworkNone,
		Pool: "bench", PoolDir: filepath.Join(tmp, "pool"), ConsoleLogDir: consoleDir})
	if err != nil {
		return err
	}
	defer d.Close()
	benchkit.Progress("building (or finding) the tiny image in %s", cfg.cacheDir)
	img, err := tinyimage.Build(ctx, cfg.cacheDir)
	if err != nil {
		return err
	}
	imgSt, err := os.Stat(img)
	if err != nil {
		return err
	}
	size := int64(cfg.diskMiB) << 20
	// The writes stay clear of the image's blocks (the guest booted from
	// them), past the first 4 MiB boundary after them.
	low := (imgSt.Size() + 8<<20) &^ (4<<20 - 1)
	if low+64<<20 > size {
		return fmt.Errorf("-disk %d: give at least %d MiB (the image has %d bytes, and 64 MiB past it are written)", cfg.diskMiB, (low+64<<20)>>20, imgSt.Size())
	}
	if err := d.Define(ctx, agent.DomainSpec{VMID: benchVM, Project: "bench", Name: "mirror", VCPUs: 1, MemoryBytes: 128 << 20, DiskBytes: size,
		BaseImage: img, BaseFormat: tinyimage.Format, Seed: &agent.Seed{InstanceID: "bench-mirror", Hostname: "bench"}}); err != nil {
		return err
	}
	benchkit.Progress("booting the guest (TCG)")
	began := time.Now()
	if err := d.Start(ctx, benchVM); err != nil {
		return err
	}
	defer d.Destroy(context.Background(), benchVM)
	// A booted, idle Linux guest, as production VMs are; its disk's
	// cache mode is checked below (writeback: a write completes once in
	// the host's page cache, only FUA writes and flushes wait for the
	// disk).
	if err := waitFile(ctx, filepath.Join(consoleDir, yunchilibvirt.DomainName(benchVM)+".log"), tinyimage.Marker+" hostname=bench", 5*time.Minute); err != nil {
		return err
	}
	ls.Add("guest_boot_s", "%.1f", time.Since(began).Seconds())

	modes := []*mode{{name: "plain"}}
	for _, c := range []struct{ name, cache string }{{"mirror", agent.MirrorCacheWriteback}, {"mirror_wt", agent.MirrorCacheWritethrough}} {
		port, err := freePort()
		if err != nil {
			return err
		}
		m, err := agent.NewMirrorExports(agent.MirrorExportConfig{Dir: filepath.Join(tmp, c.name), Host: "127.0.0.1", PortMin: port, PortMax: port, Cache: c.cache})
		if err != nil {
			return err
		}
		defer m.Close()
		export := "bench-" + c.cache
		if err := m.Apply(ctx, []*yunchiv1.MirrorExport{{VmId: benchVM, ExportName: export, SizeBytes: size, SourceHost: "bench"}}); err != nil {
			return err
		}
		addr, _ := m.Address(benchVM)
		modes = append(modes, &mode{name: c.name, exports: m, target: yunchilibvirt.MirrorTarget{Address: addr, Export: export}})
	}

	conn, err := lv.NewConnect(h.URI)
	if err != nil {
		return err
	}
	defer conn.Close()
	g, err := openGuest(conn, filepath.Join(h.Dir, "root", "var", "log", "libvirt", "qemu", yunchilibvirt.DomainName(benchVM)+".log"))
	if err != nil {
		return err
	}
	defer g.dom.Free()
	cache, err := g.cacheMode()
	if err != nil {
		return err
	}
	if cache != "writeback" {
		return fmt.Errorf("the booted guest's disk has cache mode %q, want writeback (the write cache on)", cache)
	}
	ls.Add("guest_disk_cache", "%s (QEMU's cache mode of the guest's virtio disk, from HMP info block)", cache)

	// Every cluster of the qcow2 file allocated first: the writes
	// measured overwrite data, as a database's do, rather than each
	// paying for a cluster's allocation.
	benchkit.Progress("filling the %d MiB disk past the image", cfg.diskMiB)
	for off := low; off < size; off += fillPiece {
		if err := g.fill(off, min(fillPiece, size-off)); err != nil {
			return err
		}
	}
	rng := rand.New(rand.NewPCG(cfg.seed, 0x6d6972726f72))
	got := map[string]*series{}
	var ready []float64
	for r := 0; r < cfg.rounds; r++ {
		n := cfg.writes / cfg.rounds
		if r < cfg.writes%cfg.rounds {
			n++
		}
		for k := range modes {
			m := modes[(r+k)%len(modes)]
			if m.exports != nil {
				began := time.Now()
				if err := d.StartMirror(ctx, benchVM, m.target); err != nil {
					return err
				}
				if err := waitMirroring(ctx, d); err != nil {
					return err
				}
				ready = append(ready, float64(time.Since(began).Microseconds())/1000)
			}
			benchkit.Progress("round %d/%d: %s, %d writes and %d FUA writes of 4 KiB", r+1, cfg.rounds, m.name, n, n)
			var lastOff int64
			var lastPattern byte
			for _, fua := range []bool{false, true} {
				name := m.name
				if fua {
					name += "_fua"
				}
				s := got[name]
				if s == nil {
					s = &series{}
					got[name] = s
				}
				if err := g.skipLog(); err != nil {
					return err
				}
				for i := 0; i < n; i++ {
					lastOff, lastPattern = low+rng.Int64N((size-low)/writeSize)*writeSize, byte(1+rng.IntN(255))
					rtt, err := g.write(lastOff, lastPattern, fua)
					if err != nil {
						return err
					}
					s.rtt = append(s.rtt, float64(rtt.Nanoseconds())/1000)
				}
				lat, err := g.latencies(ctx, n)
				if err != nil {
					return err
				}
				s.lat = append(s.lat, lat...)
			}
			if m.exports != nil {
				if err := m.stop(ctx, d, lastOff, lastPattern); err != nil {
					return err
				}
			}
		}
	}

	ls.Add("setup", "1 TCG guest booted from the tiny image, idle; its root disk a qcow2 overlay of %d MiB on %s, written whole past the image first (the writes overwrite data); exports: qemu-nbd on a raw sparse file on loopback (writeback, writethrough); %d rounds, the disk's states in turn", cfg.diskMiB, fsType(tmp), cfg.rounds)
	ls.Add("measured_by", "QEMU's own timing of each 4 KiB write at a random offset (HMP qemu-io -C on the virtio disk's block backend); rtt adds the libvirt and monitor round trip")
	ls.Add("writes_per_series", "%d", cfg.writes)
	ls.Add("mirror_ready_p50_ms", "%.1f (StartMirror to the mirroring phase, the %d MiB disk copied)", percentile(ready, 0.5), cfg.diskMiB)
	for _, name := range []string{"plain", "mirror", "mirror_wt", "plain_fua", "mirror_fua", "mirror_wt_fua"} {
		s := got[name]
		ls.Add(name+"_write_p50_us", "%.0f", percentile(s.lat, 0.5))
		ls.Add(name+"_write_p99_us", "%.0f", percentile(s.lat, 0.99))
	}
	for _, c := range []struct{ prefix, base, mirrored string }{
		{"", "plain", "mirror"}, {"wt_", "plain", "mirror_wt"}, {"fua_", "plain_fua", "mirror_fua"}, {"wt_fua_", "plain_fua", "mirror_wt_fua"},
	} {
		b, m := got[c.base].lat, got[c.mirrored].lat
		ls.Add(c.prefix+"overhead_p50_us", "%.0f", percentile(m, 0.5)-percentile(b, 0.5))
		ls.Add(c.prefix+"overhead_p99_us", "%.0f", percentile(m, 0.99)-percentile(b, 0.99))
		ls.Add(c.prefix+"overhead_ratio", "%.2f (p50 mirrored / p50 unmirrored)", percentile(m, 0.5)/percentile(b, 0.5))
	}
	ls.Add("plain_rtt_p50_us", "%.0f", percentile(got["plain"].rtt, 0.5))
	ls.Add("mirror_rtt_p50_us", "%.0f", percentile(got["mirror"].rtt, 0.5))
	ls.Add("loadavg_at_end", "%s", benchkit.Loadavg())
	ls.Print(out)
	return nil
}

// stop checks the mirror stayed in its mirroring phase, stops it, and
// checks its export holds the last write.
func (m *mode) stop(ctx context.Context, d *yunchilibvirt.Driver, off int64, pattern byte) error {
	st, err := d.MirrorStatus(ctx, benchVM)
	if err != nil {
		return err
	}
	if st.Phase != yunchilibvirt.MirrorMirroring {
		return fmt.Errorf("%s: the mirror left its mirroring phase during the writes (%+v): the figures would not be a mirror's", m.name, st)
	}
	if err := d.StopMirror(ctx, benchVM); err != nil {
		return err
	}
	path := m.exports.Status()[0].Path
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, writeSize)
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	if !bytes.Equal(b, bytes.Repeat([]byte{pattern}, writeSize)) {
		return fmt.Errorf("%s: the export lacks the last mirrored write (at %d)", m.name, off)
	}
	return nil
}

func waitMirroring(ctx context.Context, d *yunchilibvirt.Driver) error {
	for {
		st, err := d.MirrorStatus(ctx, benchVM)
		if err != nil {
			return err
		}
		switch st.Phase {
		case yunchilibvirt.MirrorMirroring:
			return nil
		case yunchilibvirt.MirrorNone:
			return errors.New("the mirror job ended before its mirroring phase")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// guest writes into the running domain's root disk through QEMU (HMP
// qemu-io on the disk's device) and reads qemu-io's timing of each write
// from QEMU's log.
type guest struct {
	dom    *lv.Domain
	device string // the disk's qdev path, e.g. virtio-disk0/virtio-backend
	log    string
	logOff int64
}

func openGuest(conn *lv.Connect, log string) (*guest, error) {
	dom, err := conn.LookupDomainByName(yunchilibvirt.DomainName(benchVM))
	if err != nil {
		return nil, err
	}
	device, _, err := qemuhost.RootDevice(dom)
	if err != nil {
		dom.Free()
		return nil, err
	}
	g := &guest{dom: dom, log: log, device: device}
	return g, nil
}

// write writes 4 KiB of pattern at off, FUA if asked; it returns when
// QEMU has completed the write, with the round trip.
func (g *guest) write(off int64, pattern byte, fua bool) (time.Duration, error) {
	flags := "-C"
	if fua {
		flags += " -f"
	}
	cmd := fmt.Sprintf(`qemu-io -d %s "write %s -P %d %d %d"`, g.device, flags, pattern, off, writeSize)
	began := time.Now()
	out, err := g.dom.QemuMonitorCommand(cmd, lv.DOMAIN_QEMU_MONITOR_COMMAND_HMP)
	rtt := time.Since(began)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", cmd, err)
	}
	// qemu-io's own lines go to QEMU's log: HMP answers only its errors.
	if s := strings.TrimSpace(out); s != "" {
		return 0, fmt.Errorf("%s: %s", cmd, strings.Join(strings.Fields(s), " "))
	}
	return rtt, nil
}

// fill writes n bytes of data at off.
func (g *guest) fill(off, n int64) error {
	cmd := fmt.Sprintf(`qemu-io -d %s "write -P 90 %d %d"`, g.device, off, n)
	out, err := g.dom.QemuMonitorCommand(cmd, lv.DOMAIN_QEMU_MONITOR_COMMAND_HMP)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if s := strings.TrimSpace(out); s != "" {
		return fmt.Errorf("%s: %s", cmd, strings.Join(strings.Fields(s), " "))
	}
	return nil
}

// cacheMode is QEMU's cache mode of the root disk's device, from HMP
// info block ("writeback": the device's write cache is on).
func (g *guest) cacheMode() (string, error) {
	out, err := g.dom.QemuMonitorCommand("info block", lv.DOMAIN_QEMU_MONITOR_COMMAND_HMP)
	if err != nil {
		return "", fmt.Errorf("info block: %w", err)
	}
	return parseCacheMode(out, g.device)
}

// parseCacheMode finds, in HMP info block's text, the cache mode of the
// drive attached to device.
func parseCacheMode(out, device string) (string, error) {
	attached := false
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 0:
		case !strings.HasPrefix(l, " "): // a drive's first line
			attached = false
		case len(f) >= 3 && f[0] == "Attached" && f[1] == "to:":
			attached = strings.HasSuffix(f[2], "/"+device) || f[2] == device
		case attached && len(f) >= 3 && f[0] == "Cache" && f[1] == "mode:":
			return strings.Join(f[2:], " "), nil
		}
	}
	return "", fmt.Errorf("info block names no cache mode for %s", device)
}

// waitFile waits until the file holds text.
func waitFile(ctx context.Context, path, text string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), text) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%q not in %s after %v", text, path, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// skipLog starts reading QEMU's log at its end.
func (g *guest) skipLog() error {
	st, err := os.Stat(g.log)
	if err != nil {
		return err
	}
	g.logOff = st.Size()
	return nil
}

// latencies reads the next n writes' timings (µs) from QEMU's log.
func (g *guest) latencies(ctx context.Context, n int) ([]float64, error) {
	deadline := time.Now().Add(logWait)
	var out []float64
	for {
		f, err := os.Open(g.log)
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(io.NewSectionReader(f, g.logOff, math.MaxInt64-g.logOff))
		f.Close()
		if err != nil {
			return nil, err
		}
		// Whole lines only: the last may still be being written.
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			b = b[:i+1]
			g.logOff += int64(len(b))
			for _, l := range strings.Split(string(b), "\n") {
				if us, ok := parseReport(l); ok {
					out = append(out, us)
				}
			}
		}
		if len(out) >= n {
			if len(out) > n {
				return nil, fmt.Errorf("%w: %d timings for %d writes", errNoLines, len(out), n)
			}
			return out, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: %d timings of %d writes after %v (%s)", errNoLines, len(out), n, logWait, g.log)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// parseReport reads one write's latency (µs) from qemu-io's machine
// readable report: "bytes,ops,time,bytes/s,ops/s"; one op a line, so the
// latency is 1/(ops/s) (its time field has 10 ms steps only).
func parseReport(l string) (float64, bool) {
	f := strings.Split(strings.TrimSpace(l), ",")
	if len(f) != 5 || f[1] != "1" || f[0] != strconv.Itoa(writeSize) {
		return 0, false
	}
	ops, err := strconv.ParseFloat(f[4], 64)
	if err != nil || ops <= 0 || math.IsInf(ops, 0) {
		return 0, false
	}
	return 1e6 / ops, true
}

// percentile is the nearest-rank q-quantile of xs (0 for none).
func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// fsType names the file system of dir, from /proc/self/mounts (the
// longest mount point holding it).
func fsType(dir string) string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "unknown"
	}
	best, typ := "", "unknown"
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		if mp := f[1]; (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > len(best) {
			best, typ = mp, f[2]
		}
	}
	return typ
}
