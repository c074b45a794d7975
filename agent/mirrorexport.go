package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Mirror exports, the target side of a platinum VM's synchronous mirror.
// The VM's host copies its root disk with libvirt's block copy in
// synchronous-write mode (agent/libvirt/mirror.go) to an NBD export on a
// host of the same-city center: every write the guest sees completed has
// also been written there. This file is that other host's part: for each
// MirrorExport the leader lists, a raw sparse file the size of the VM's
// root disk (DIR/<vm id>.raw) served writable by qemu-nbd on a port of its
// own, restarted when it dies; when the export is no longer listed its
// server is stopped and the file kept, until a failover takes it over as
// the VM's disk (Takeover) or it is removed (Remove).
//
// A write qemu-nbd acknowledged is in the file (in this host's page cache
// with the default cache mode, on its disk with "writethrough"), so it
// survives qemu-nbd dying. The source's mirror job does not: on libvirt
// 9.0 QEMU's NBD client does not reconnect, and the job ends at the next
// write (agent/libvirt/mirror.go says what that means for zero loss); the
// server is started again so that the source's next StartMirror finds it
// on the same address.
//
// Each export's port and name are kept beside its file (DIR/<vm id>.json),
// so an agent that restarts serves an export on the port the source was
// given. qemu-nbd is the agent's child and dies with it: a restarted agent
// starts it again from the kept file.

const (
	// mirrorStartTimeout bounds waiting for qemu-nbd to listen.
	mirrorStartTimeout = 10 * time.Second
	// mirrorStopTimeout bounds waiting for qemu-nbd to end after SIGTERM
	// (it flushes the file first) before it is killed.
	mirrorStopTimeout = 10 * time.Second
	// mirrorRestartMin and mirrorRestartMax bound the wait before a
	// qemu-nbd that died is started again (doubling from the first).
	mirrorRestartMin = 100 * time.Millisecond
	mirrorRestartMax = 5 * time.Second
	// maxMirrorSize is the largest disk mirrored (64 TiB, the largest
	// disk a VM may have).
	maxMirrorSize = 64 << 40
)

// Cache modes of a mirror export's qemu-nbd. QEMU's mirror passes a
// guest's FUA writes on to the export as FUA writes, but not its flushes
// (it flushes the source disk only), and a Linux guest's fsync is a flush.
const (
	// MirrorCacheWriteback: an acknowledged write is in this host's page
	// cache (qemu-nbd's default, as the VM's own disk is on its host).
	// It survives qemu-nbd or the source's center failing, not this host
	// losing power.
	MirrorCacheWriteback = "writeback"
	// MirrorCacheWritethrough: every write is on this host's disk before
	// it is acknowledged, so what the guest flushed is on both disks, at
	// the cost of a flush per write.
	MirrorCacheWritethrough = "writethrough"
)

// MirrorExportConfig configures a host's mirror exports.
type MirrorExportConfig struct {
	// Dir holds the export files (required, an absolute path; made if
	// missing). Give it a file system with room for the mirrored disks.
	Dir string
	// Host is the IP address qemu-nbd listens on (required): the host's
	// address on the network between the centers, or a loopback address.
	Host string
	// PortMin..PortMax are the TCP ports the exports listen on, one each.
	PortMin, PortMax int
	// Cache is qemu-nbd's cache mode: MirrorCacheWriteback (default) or
	// MirrorCacheWritethrough.
	Cache  string
	Logger *slog.Logger
}

func (c MirrorExportConfig) validate() error {
	var errs []string
	if c.Dir == "" || !filepath.IsAbs(c.Dir) {
		errs = append(errs, fmt.Sprintf("dir %q is not an absolute path", c.Dir))
	}
	if net.ParseIP(c.Host) == nil {
		errs = append(errs, fmt.Sprintf("host %q is not an IP address", c.Host))
	}
	if c.PortMin < 1 || c.PortMax > 65535 || c.PortMin > c.PortMax {
		errs = append(errs, fmt.Sprintf("ports %d..%d: want 1 <= min <= max <= 65535", c.PortMin, c.PortMax))
	}
	switch c.Cache {
	case "", MirrorCacheWriteback, MirrorCacheWritethrough:
	default:
		errs = append(errs, fmt.Sprintf("cache %q: want %s or %s", c.Cache, MirrorCacheWriteback, MirrorCacheWritethrough))
	}
	if len(errs) > 0 {
		return fmt.Errorf("mirror exports: %s", strings.Join(errs, "; "))
	}
	return nil
}

// MirrorExports serves a host's mirror exports. Its methods may be called
// from several goroutines.
type MirrorExports struct {
	cfg MirrorExportConfig
	log *slog.Logger

	mu sync.Mutex
	// known are the exports with a file here (served or not), by VM id.
	known map[string]*mirrorExport
	// busy are VM ids an Apply, Takeover or Remove is working on (the
	// lock is not held while qemu-nbd starts or stops).
	busy   map[string]bool
	closed bool
}

// mirrorMeta is what is kept beside an export's file.
type mirrorMeta struct {
	VMID       string `json:"vm_id"`
	Export     string `json:"export_name"`
	SizeBytes  int64  `json:"size_bytes"`
	Port       int    `json:"port"`
	SourceHost string `json:"source_host,omitempty"`
	// TakenOver: the file was handed over as the VM's disk; it is not
	// served again until Remove.
	TakenOver bool `json:"taken_over,omitempty"`
}

// mirrorExport is one export's file and, while served, its supervisor.
type mirrorExport struct {
	meta mirrorMeta
	srv  *mirrorServer // nil: not served
}

// MirrorExportStatus is what a host reports of one export.
type MirrorExportStatus struct {
	VMID, Export string
	// Address is host:port of the NBD server (the MirrorRef's address).
	Address   string
	Path      string
	SizeBytes int64
	// Serving: qemu-nbd is asked to run (it may be restarting); false for
	// a file kept after its export was no longer listed, or taken over.
	Serving   bool
	TakenOver bool
	// Pid is qemu-nbd's while it runs (0: not running now); Restarts
	// counts how often it was started again after dying, LastError is
	// why it last failed ("" none).
	Pid       int
	Restarts  int
	LastError string
}

var (
	mirrorVMIDRe   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	mirrorExportRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$`)
)

// NewMirrorExports checks cfg, makes its dir and reads the exports whose
// files are there (kept by an earlier agent); none is served until Apply
// lists it.
func NewMirrorExports(cfg MirrorExportConfig) (*MirrorExports, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Cache == "" {
		cfg.Cache = MirrorCacheWriteback
	}
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		return nil, errors.New("mirror exports: need qemu-nbd (apt-get install qemu-utils)")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("mirror exports: %w", err)
	}
	m := &MirrorExports{cfg: cfg, log: cfg.Logger, known: map[string]*mirrorExport{}, busy: map[string]bool{}}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	metas, err := filepath.Glob(filepath.Join(cfg.Dir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("mirror exports: %w", err)
	}
	for _, p := range metas {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("mirror exports: %w", err)
		}
		var meta mirrorMeta
		if err := json.Unmarshal(b, &meta); err != nil || meta.VMID+".json" != filepath.Base(p) {
			m.log.Warn("mirror exports: ignoring a file that is not an export's", "file", p, "err", err)
			continue
		}
		m.known[meta.VMID] = &mirrorExport{meta: meta}
	}
	return m, nil
}

func (m *MirrorExports) path(vmID, ext string) string {
	return filepath.Join(m.cfg.Dir, vmID+ext)
}

// checkMirrorExport refuses an export that cannot be served as asked.
func checkMirrorExport(e *yunchiv1.MirrorExport) error {
	switch {
	case !mirrorVMIDRe.MatchString(e.GetVmId()):
		return fmt.Errorf("mirror export: vm id %q: want 1 to 128 letters, digits, '.', '_' or '-'", e.GetVmId())
	case !mirrorExportRe.MatchString(e.GetExportName()):
		return fmt.Errorf("mirror export of %s: export name %q: want 1 to 255 letters, digits, '.', '_', ':' or '-'", e.GetVmId(), e.GetExportName())
	case e.GetSizeBytes() <= 0 || e.GetSizeBytes()%512 != 0 || e.GetSizeBytes() > maxMirrorSize:
		return fmt.Errorf("mirror export of %s: size %d bytes: want a positive multiple of 512, at most 64 TiB", e.GetVmId(), e.GetSizeBytes())
	}
	return nil
}

// Apply makes the served exports those listed: each listed one is
// served (its file made, sparse, if missing) and Apply returns once its
// qemu-nbd listens; each served one no longer listed is stopped, its
// file kept. A listed export that is invalid, given twice, or taken over
// is refused with an error and changes nothing; the others are applied.
func (m *MirrorExports) Apply(ctx context.Context, exports []*yunchiv1.MirrorExport) error {
	byVM, other := m.ApplyEach(ctx, exports)
	ids := make([]string, 0, len(byVM))
	for id := range byVM {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	errs := other
	for _, id := range ids {
		errs = append(errs, byVM[id])
	}
	return oneLineErrors(errs)
}

// ApplyEach is Apply, with the errors of listed exports by their VM id
// (what the host reports of each) and the others (stopping an export no
// longer listed, a closed MirrorExports) apart.
func (m *MirrorExports) ApplyEach(ctx context.Context, exports []*yunchiv1.MirrorExport) (map[string]error, []error) {
	byVM := map[string]error{}
	var errs []error
	want := map[string]*yunchiv1.MirrorExport{}
	twice := map[string]bool{}
	for _, e := range exports {
		if err := checkMirrorExport(e); err != nil {
			byVM[e.GetVmId()] = err
			continue
		}
		if _, ok := want[e.GetVmId()]; ok {
			twice[e.GetVmId()] = true
		}
		want[e.GetVmId()] = e
	}
	for id := range twice {
		byVM[id] = fmt.Errorf("mirror export of %s: listed twice", id)
		delete(want, id)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return byVM, append(errs, errors.New("mirror exports: closed"))
	}
	var stop []string
	for id, x := range m.known {
		if x.srv != nil && want[id] == nil && !twice[id] {
			stop = append(stop, id)
		}
	}
	m.mu.Unlock()
	slices.Sort(stop)
	for _, id := range stop {
		if !m.claim(id) {
			errs = append(errs, fmt.Errorf("mirror export of %s: busy (another call is changing it)", id))
			continue
		}
		if err := m.stopServing(id); err != nil {
			errs = append(errs, err)
		}
		m.release(id)
	}
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if err := m.serve(ctx, want[id]); err != nil {
			byVM[id] = err
		}
	}
	return byVM, errs
}

// claim marks vmID busy; false if another call is working on it.
func (m *MirrorExports) claim(vmID string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.busy[vmID] {
		return false
	}
	m.busy[vmID] = true
	return true
}

func (m *MirrorExports) release(vmID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.busy, vmID)
}

// serve makes sure e is served as asked.
func (m *MirrorExports) serve(ctx context.Context, e *yunchiv1.MirrorExport) error {
	id := e.GetVmId()
	if !m.claim(id) {
		return fmt.Errorf("mirror export of %s: busy (another call is changing it)", id)
	}
	defer m.release(id)
	m.mu.Lock()
	var old mirrorMeta
	known, serving := m.known[id] != nil, false
	if known {
		old, serving = m.known[id].meta, m.known[id].srv != nil
	}
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return errors.New("mirror exports: closed")
	}
	if old.TakenOver {
		return fmt.Errorf("mirror export of %s: its file was taken over as the VM's disk; not served again until removed", id)
	}
	if serving {
		if old.Export == e.GetExportName() && old.SizeBytes == e.GetSizeBytes() {
			return nil
		}
		// Another name or size: the source's mirror must start over
		// anyway; serve the file again as now asked.
		if err := m.stopServing(id); err != nil {
			return err
		}
	}
	meta := mirrorMeta{VMID: id, Export: e.GetExportName(), SizeBytes: e.GetSizeBytes(), SourceHost: e.GetSourceHost(), Port: old.Port}
	if meta.Port == 0 {
		port, err := m.freePort(id)
		if err != nil {
			return fmt.Errorf("mirror export of %s: %w", id, err)
		}
		meta.Port = port
	}
	if err := m.prepareFile(meta); err != nil {
		return fmt.Errorf("mirror export of %s: %w", id, err)
	}
	if err := m.writeMeta(meta); err != nil {
		return fmt.Errorf("mirror export of %s: %w", id, err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errors.New("mirror exports: closed")
	}
	srv := m.newServer(meta)
	m.known[id] = &mirrorExport{meta: meta, srv: srv}
	m.mu.Unlock()
	m.log.Info("serving mirror export", "vm", id, "export", meta.Export, "address", m.address(meta.Port), "bytes", meta.SizeBytes, "source_host", meta.SourceHost)
	select {
	case err := <-srv.firstStart:
		if err != nil {
			// It keeps trying (the port may be free again soon);
			// the caller hears why it is not serving now.
			return fmt.Errorf("mirror export of %s: %w", id, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mirror export of %s: qemu-nbd not listening yet: %w", id, ctx.Err())
	}
}

// prepareFile makes the export's file the size asked: a new one sparse,
// an existing one (kept by an earlier agent or export) keeps its bytes.
func (m *MirrorExports) prepareFile(meta mirrorMeta) error {
	f, err := os.OpenFile(m.path(meta.VMID, ".raw"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err == nil && st.Size() != meta.SizeBytes {
		err = f.Truncate(meta.SizeBytes)
	}
	return errors.Join(err, f.Close())
}

// writeMeta replaces the export's kept metadata.
func (m *MirrorExports) writeMeta(meta mirrorMeta) error {
	b, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	tmp := m.path(meta.VMID, ".json.tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, m.path(meta.VMID, ".json"))
}

// freePort is the lowest port of the range no other export has and no
// one listens on now.
func (m *MirrorExports) freePort(vmID string) (int, error) {
	m.mu.Lock()
	taken := map[int]bool{}
	for id, x := range m.known {
		if id != vmID {
			taken[x.meta.Port] = true
		}
	}
	m.mu.Unlock()
	for p := m.cfg.PortMin; p <= m.cfg.PortMax; p++ {
		if taken[p] {
			continue
		}
		l, err := net.Listen("tcp", m.address(p))
		if err != nil {
			continue
		}
		l.Close()
		return p, nil
	}
	return 0, fmt.Errorf("no free port in %d..%d on %s", m.cfg.PortMin, m.cfg.PortMax, m.cfg.Host)
}

func (m *MirrorExports) address(port int) string {
	return net.JoinHostPort(m.cfg.Host, strconv.Itoa(port))
}

// stopServing stops the export's qemu-nbd, if served; the file stays.
func (m *MirrorExports) stopServing(vmID string) error {
	m.mu.Lock()
	x := m.known[vmID]
	var srv *mirrorServer
	if x != nil {
		srv, x.srv = x.srv, nil
	}
	m.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.stop()
	m.log.Info("stopped mirror export", "vm", vmID, "export", srv.meta.Export, "err", err)
	if err != nil {
		return fmt.Errorf("mirror export of %s: %w", vmID, err)
	}
	return nil
}

// Takeover stops serving the VM's export and returns its file, a raw
// image holding every write the VM's mirror acknowledged, for a failover
// to use as the VM's disk. The file is synced to disk first. It is not
// served again (Apply refuses it) until Remove; whoever takes it may move
// it (Remove then only forgets it). A second Takeover returns the same
// path.
func (m *MirrorExports) Takeover(vmID string) (string, error) {
	if !mirrorVMIDRe.MatchString(vmID) {
		return "", fmt.Errorf("mirror takeover: vm id %q: want 1 to 128 letters, digits, '.', '_' or '-'", vmID)
	}
	if !m.claim(vmID) {
		return "", fmt.Errorf("mirror takeover of %s: busy (another call is changing it)", vmID)
	}
	defer m.release(vmID)
	m.mu.Lock()
	x := m.known[vmID]
	var meta mirrorMeta
	if x != nil {
		meta = x.meta
	}
	m.mu.Unlock()
	if x == nil {
		return "", fmt.Errorf("mirror takeover of %s: no mirror of it on this host", vmID)
	}
	path := m.path(vmID, ".raw")
	if meta.TakenOver {
		return path, nil
	}
	if err := m.stopServing(vmID); err != nil {
		return "", fmt.Errorf("mirror takeover of %s: %w", vmID, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("mirror takeover of %s: %w", vmID, err)
	}
	err = errors.Join(f.Sync(), f.Close())
	if err != nil {
		return "", fmt.Errorf("mirror takeover of %s: sync: %w", vmID, err)
	}
	meta.TakenOver = true
	if err := m.writeMeta(meta); err != nil {
		return "", fmt.Errorf("mirror takeover of %s: %w", vmID, err)
	}
	m.mu.Lock()
	x.meta = meta
	m.mu.Unlock()
	m.log.Info("mirror taken over", "vm", vmID, "path", path)
	return path, nil
}

// Remove deletes a VM's export file and what is kept beside it. A served
// export is refused (Apply stops it once it is no longer listed); a VM
// with nothing here is not an error.
func (m *MirrorExports) Remove(vmID string) error {
	if !mirrorVMIDRe.MatchString(vmID) {
		return fmt.Errorf("remove mirror: vm id %q: want 1 to 128 letters, digits, '.', '_' or '-'", vmID)
	}
	if !m.claim(vmID) {
		return fmt.Errorf("remove mirror of %s: busy (another call is changing it)", vmID)
	}
	defer m.release(vmID)
	m.mu.Lock()
	serving := m.known[vmID] != nil && m.known[vmID].srv != nil
	m.mu.Unlock()
	if serving {
		return fmt.Errorf("remove mirror of %s: it is still served (still listed)", vmID)
	}
	var errs []error
	for _, ext := range []string{".raw", ".pid", ".json"} { // the metadata last: it names the file
		if err := os.Remove(m.path(vmID, ext)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := oneLineErrors(errs); err != nil {
		return fmt.Errorf("remove mirror of %s: %w", vmID, err)
	}
	m.mu.Lock()
	delete(m.known, vmID)
	m.mu.Unlock()
	return nil
}

// Status lists the exports with a file here, by VM id.
func (m *MirrorExports) Status() []MirrorExportStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]MirrorExportStatus, 0, len(m.known))
	for id, x := range m.known {
		s := MirrorExportStatus{VMID: id, Export: x.meta.Export, Address: m.address(x.meta.Port), Path: m.path(id, ".raw"),
			SizeBytes: x.meta.SizeBytes, Serving: x.srv != nil, TakenOver: x.meta.TakenOver}
		if x.srv != nil {
			s.Pid, s.Restarts, s.LastError = x.srv.state()
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b MirrorExportStatus) int { return strings.Compare(a.VMID, b.VMID) })
	return out
}

// Address is host:port of the VM's export, if it has one here.
func (m *MirrorExports) Address(vmID string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if x := m.known[vmID]; x != nil {
		return m.address(x.meta.Port), true
	}
	return "", false
}

// Close stops every qemu-nbd (the files stay); later calls fail.
func (m *MirrorExports) Close() error {
	m.mu.Lock()
	m.closed = true
	var ids []string
	for id, x := range m.known {
		if x.srv != nil {
			ids = append(ids, id)
		}
	}
	m.mu.Unlock()
	var errs []error
	for _, id := range ids {
		errs = append(errs, m.stopServing(id))
	}
	return oneLineErrors(errs)
}

// mirrorServer runs one export's qemu-nbd, starting it again when it
// dies, until stop.
type mirrorServer struct {
	meta                  mirrorMeta
	file, pidFile, listen string
	port                  int
	cache                 string
	log                   *slog.Logger

	firstStart chan error    // the first start's outcome
	quit       chan struct{} // closed by stop
	done       chan struct{} // closed when the supervisor has ended
	stopErr    error         // set before done closes

	mu       sync.Mutex
	pid      int
	restarts int
	lastErr  string
}

func (m *MirrorExports) newServer(meta mirrorMeta) *mirrorServer {
	s := &mirrorServer{meta: meta, file: m.path(meta.VMID, ".raw"), pidFile: m.path(meta.VMID, ".pid"),
		listen: m.cfg.Host, port: meta.Port, cache: m.cfg.Cache, log: m.log.With("vm", meta.VMID, "export", meta.Export),
		firstStart: make(chan error, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go s.supervise()
	return s
}

func (s *mirrorServer) state() (pid, restarts int, lastErr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid, s.restarts, s.lastErr
}

// args are qemu-nbd's: the file, raw, writable, one client at a time (the
// VM's QEMU), kept serving when that client goes (it reconnects).
func (s *mirrorServer) args() []string {
	return []string{
		"--persistent", "--shared=1", "--format=raw", "--cache=" + s.cache,
		// Zeroes the mirror writes become holes: the file stays sparse.
		"--discard=unmap",
		"--bind=" + s.listen, "--port=" + strconv.Itoa(s.port),
		"--export-name=" + s.meta.Export,
		// Written once it listens: the sign it is ready.
		"--pid-file=" + s.pidFile,
		"--", s.file,
	}
}

// supervise starts qemu-nbd and starts it again whenever it dies, waiting
// longer each time it dies young, until quit.
func (s *mirrorServer) supervise() {
	defer close(s.done)
	first := true
	delay := mirrorRestartMin
	for {
		p, err := s.start()
		if first {
			s.firstStart <- err
			first = false
		}
		if errors.Is(err, errStopped) {
			return
		}
		if err == nil {
			began := time.Now()
			select {
			case <-s.quit:
				s.stopErr = s.terminate(p)
				return
			case <-p.exited:
			}
			err = p.exitError()
			if time.Since(began) > time.Minute {
				delay = mirrorRestartMin
			}
		}
		s.mu.Lock()
		s.pid, s.lastErr = 0, err.Error()
		s.mu.Unlock()
		s.log.Warn("mirror export's qemu-nbd is not running; starting it again", "err", err, "in", delay)
		select {
		case <-s.quit:
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, mirrorRestartMax)
		s.mu.Lock()
		s.restarts++
		s.mu.Unlock()
	}
}

// errStopped: the server was stopped while its qemu-nbd started.
var errStopped = errors.New("stopped while starting")

// nbdProcess is one qemu-nbd run.
type nbdProcess struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once Wait returned; then err and stderr are set
	err    error
	stderr bytes.Buffer
}

// start runs qemu-nbd and returns once it listens (its pid file is
// written), or why it did not.
func (s *mirrorServer) start() (*nbdProcess, error) {
	if err := os.Remove(s.pidFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	p := &nbdProcess{cmd: exec.Command("qemu-nbd", s.args()...), exited: make(chan struct{})}
	p.cmd.Stderr = &p.stderr // read only after Wait
	p.cmd.SysProcAttr = nbdProcAttr()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu-nbd: %w", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	want := strconv.Itoa(p.cmd.Process.Pid)
	deadline := time.After(mirrorStartTimeout)
	for {
		if b, err := os.ReadFile(s.pidFile); err == nil && strings.TrimSpace(string(b)) == want {
			s.mu.Lock()
			s.pid = p.cmd.Process.Pid
			s.mu.Unlock()
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, p.exitError()
		case <-deadline:
			s.terminate(p)
			return nil, fmt.Errorf("qemu-nbd did not listen on %s within %v", net.JoinHostPort(s.listen, strconv.Itoa(s.port)), mirrorStartTimeout)
		case <-s.quit:
			s.stopErr = s.terminate(p)
			return nil, errStopped
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// exitError describes how the qemu-nbd ended (after exited).
func (p *nbdProcess) exitError() error {
	msg := strings.Join(strings.Fields(p.stderr.String()), " ")
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	if msg == "" && p.err != nil {
		msg = p.err.Error()
	}
	return fmt.Errorf("qemu-nbd (pid %d) exited: %s", p.cmd.Process.Pid, msg)
}

// terminate ends the qemu-nbd it started: SIGTERM (it flushes the file
// and closes its client), SIGKILL if it does not end in time.
func (s *mirrorServer) terminate(p *nbdProcess) error {
	defer func() {
		s.mu.Lock()
		s.pid = 0
		s.mu.Unlock()
	}()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(mirrorStopTimeout):
	}
	p.cmd.Process.Kill()
	<-p.exited
	return fmt.Errorf("qemu-nbd (pid %d) did not end within %v of SIGTERM; killed", p.cmd.Process.Pid, mirrorStopTimeout)
}

// stop ends the supervisor and its qemu-nbd and waits for both.
func (s *mirrorServer) stop() error {
	close(s.quit)
	<-s.done
	return s.stopErr
}

// oneLineErrors joins errors on one line ("a; b"), nil if all are nil.
func oneLineErrors(errs []error) error {
	var msgs []string
	for _, e := range errs {
		if e != nil {
			msgs = append(msgs, e.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "; "))
}
