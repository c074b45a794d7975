package raftnode

// State copies for disaster recovery (issue 12): the controller of the
// remote-DR center keeps, in a directory of its own, the last few copies of
// the replicated state, one every interval, so that losing site A (two of
// the three voters) leaves the remote center what `yunchid controller
// recover --from-snapshot` needs to rebuild a one-controller cluster.
//
// A copy is taken locally: the remote controller is a voter (or a
// follower) that receives every entry through raft already, so a raft
// snapshot of its own state holds everything it has applied. A copy sent
// by the leader would cross the same link as the log does, as a whole
// state rather than the entries since the last one, and reach the remote
// center no sooner than those entries: it would hold no more once written
// here (see the runbook, docs/dr.md).

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// CopyFormat is the format of the state copies this binary writes, and the
// newest it reads.
//
// A copy is one file: the line "YUNCHI-STATE-COPY <format>", a line of
// JSON (CopyHeader), the raft snapshot exactly as the FSM persisted it
// (Size bytes: the state, then the audit trail; see fsm.go), and the
// SHA-256 of everything before it (32 bytes).
const CopyFormat = 1

const (
	copyMagic  = "YUNCHI-STATE-COPY"
	copyPrefix = "yunchi-state-"
	copySuffix = ".snap"
	copyTemp   = ".tmp-" + copyPrefix
	// copyTimeLayout names copies so that their names sort by time.
	copyTimeLayout = "20060102T150405.000Z"
	// maxHeader bounds the JSON line a reader accepts.
	maxHeader = 1 << 20
)

// CopyHeader is what a state copy says about itself.
type CopyHeader struct {
	Format int `json:"format"`
	// Controller and Center took the copy.
	Controller string    `json:"controller"`
	Center     string    `json:"center,omitempty"`
	TakenAt    time.Time `json:"taken_at"`
	// Index and Term are the raft index and term of the last entry the
	// copy includes.
	Index uint64 `json:"index"`
	Term  uint64 `json:"term"`
	// Servers is the raft configuration then (ConfigurationIndex is where
	// the log committed it).
	Servers            []CopyServer `json:"servers"`
	ConfigurationIndex uint64       `json:"configuration_index"`
	// Size is the snapshot's length in bytes.
	Size int64 `json:"size"`
	// StateFormat is the state snapshot format of the binary that wrote
	// the copy (state.SnapshotVersion).
	StateFormat int `json:"state_format"`
	// Leader is the leader the controller knew when it took the copy, and
	// LeaderContactMillis how long before that it last heard from it (0
	// when it was the leader itself): how current the copy was.
	Leader              string `json:"leader,omitempty"`
	LeaderContactMillis int64  `json:"leader_contact_ms,omitempty"`
}

// CopyServer is one server of the raft configuration a copy records.
type CopyServer struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Voter   bool   `json:"voter"`
}

// CopyName is the file name of a copy taken at t of the state at index.
func CopyName(t time.Time, index uint64) string {
	return copyPrefix + t.UTC().Format(copyTimeLayout) + "-" + strconv.FormatUint(index, 10) + copySuffix
}

// ListCopies returns the paths of the copies in dir, oldest first.
func ListCopies(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); e.Type().IsRegular() && strings.HasPrefix(n, copyPrefix) && strings.HasSuffix(n, copySuffix) {
			out = append(out, filepath.Join(dir, n))
		}
	}
	slices.Sort(out) // names sort by the time they were taken
	return out, nil
}

// NewestCopy returns the newest copy in dir that verifies, with the reasons
// newer ones were passed over (damaged or unreadable).
func NewestCopy(dir string) (path string, h *CopyHeader, skipped []error, err error) {
	list, err := ListCopies(dir)
	if err != nil {
		return "", nil, nil, fmt.Errorf("list state copies: %w", err)
	}
	for i := len(list) - 1; i >= 0; i-- {
		h, err := VerifyCopy(list[i])
		if err == nil {
			return list[i], h, skipped, nil
		}
		skipped = append(skipped, err)
	}
	if len(skipped) > 0 {
		return "", nil, skipped, fmt.Errorf("none of the %d state copies in %s verifies (newest: %v)", len(skipped), dir, skipped[0])
	}
	return "", nil, nil, fmt.Errorf("%s holds no state copies (%s*%s)", dir, copyPrefix, copySuffix)
}

// VerifyCopy reads a whole copy: its header, its checksum, and the state
// in it, which this binary must be able to read.
func VerifyCopy(path string) (*CopyHeader, error) {
	h, rc, err := openCopy(path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	snap, trail, err := ReadSnapshot(rc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if trail != nil {
		if _, err := io.Copy(io.Discard, trail); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	if _, err := io.Copy(io.Discard, rc); err != nil { // the end: the checksum
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f := snap.GetFormatVersion(); f > state.SnapshotVersion {
		return nil, fmt.Errorf("%s holds state format %d, newer than this yunchid reads (%d): recover with a newer yunchid", path, f, state.SnapshotVersion)
	}
	return h, nil
}

// openCopy reads a copy's header and returns a reader of its snapshot that
// fails at the end if the file's checksum does not match, or if bytes
// follow it.
func openCopy(path string) (*CopyHeader, io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	h, body, err := readCopyHeader(path, f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return h, &copyReader{path: path, f: f, r: io.LimitReader(body, h.Size), body: body, sum: body.sum}, nil
}

// hashingReader hashes what is read through it.
type hashingReader struct {
	*bufio.Reader
	sum hash.Hash
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.Reader.Read(p)
	h.sum.Write(p[:n])
	return n, err
}

func readCopyHeader(path string, f *os.File) (*CopyHeader, *hashingReader, error) {
	br := bufio.NewReaderSize(f, 1<<20)
	sum := sha256.New()
	first, err := br.ReadSlice('\n')
	if err != nil || !strings.HasPrefix(string(first), copyMagic+" ") {
		if string(first) == snapshotMagic {
			return nil, nil, fmt.Errorf("%s is a raft snapshot of a data dir, not a Yunchi state copy: recover with --from-data-dir and that controller's data dir", path)
		}
		return nil, nil, fmt.Errorf("%s is not a Yunchi state copy (it does not start with %q)", path, copyMagic)
	}
	format, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(string(first), copyMagic+" ")))
	if err != nil || format < 1 {
		return nil, nil, fmt.Errorf("%s is not a Yunchi state copy (bad format line %q)", path, strings.TrimSpace(string(first)))
	}
	if format > CopyFormat {
		return nil, nil, fmt.Errorf("%s is a state copy of format %d, newer than this yunchid reads (%d): recover with a newer yunchid", path, format, CopyFormat)
	}
	sum.Write(first)
	line, err := readLine(br, maxHeader)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: damaged state copy header: %w", path, err)
	}
	sum.Write(line)
	var h CopyHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return nil, nil, fmt.Errorf("%s: damaged state copy header: %w", path, err)
	}
	if h.Format != format || h.Size <= 0 || h.Index == 0 {
		return nil, nil, fmt.Errorf("%s: damaged state copy header (format %d, size %d, index %d)", path, h.Format, h.Size, h.Index)
	}
	return &h, &hashingReader{Reader: br, sum: sum}, nil
}

// readLine reads one line (with its newline) of at most max bytes.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		part, err := br.ReadSlice('\n')
		line = append(line, part...)
		if len(line) > max {
			return nil, fmt.Errorf("line longer than %d bytes", max)
		}
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, err
		}
	}
}

// copyReader reads a copy's snapshot and checks the checksum at its end.
type copyReader struct {
	path string
	f    *os.File
	r    io.Reader
	body *hashingReader
	sum  hash.Hash
	done bool
}

func (c *copyReader) Read(p []byte) (int, error) {
	if c.done {
		return 0, io.EOF
	}
	n, err := c.r.Read(p)
	if err != io.EOF {
		if err != nil {
			err = fmt.Errorf("%s: %w", c.path, err)
		}
		return n, err
	}
	c.done = true
	want := c.sum.Sum(nil)
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c.body.Reader, got); err != nil {
		return n, fmt.Errorf("%s is cut short (no checksum at its end): the copy is damaged", c.path)
	}
	if string(got) != string(want) {
		return n, fmt.Errorf("%s does not match its checksum: the copy is damaged", c.path)
	}
	if _, err := c.body.Reader.ReadByte(); err != io.EOF {
		return n, fmt.Errorf("%s has bytes after its checksum: the copy is damaged", c.path)
	}
	return n, io.EOF
}

func (c *copyReader) Close() error { return c.f.Close() }

// writeCopy writes a copy into dir atomically (a temporary file, synced,
// renamed, the directory synced): a crash leaves the previous copies and
// at most a temporary file, which the next copier removes. It returns the
// copy's path.
func writeCopy(ctx context.Context, dir string, h *CopyHeader, snap io.Reader) (string, error) {
	hdr, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, copyTemp+"*")
	if err != nil {
		return "", fmt.Errorf("write state copy: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	sum := sha256.New()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	w := io.MultiWriter(bw, sum)
	fmt.Fprintf(w, "%s %d\n", copyMagic, h.Format)
	w.Write(append(hdr, '\n'))
	n, err := io.Copy(w, ctxReader{ctx, snap})
	if err != nil {
		return "", fmt.Errorf("write state copy: %w", err)
	}
	if n != h.Size {
		return "", fmt.Errorf("write state copy: the snapshot has %d bytes, its metadata says %d", n, h.Size)
	}
	bw.Write(sum.Sum(nil))
	if err := bw.Flush(); err != nil {
		return "", fmt.Errorf("write state copy: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("write state copy: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("write state copy: %w", err)
	}
	path := filepath.Join(dir, CopyName(h.TakenAt, h.Index))
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("write state copy: %w", err)
	}
	ok = true
	if err := syncDir(dir); err != nil {
		return "", fmt.Errorf("write state copy: %w", err)
	}
	return path, nil
}

// ctxReader stops a long copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// DRCopies configures a controller's state copies.
type DRCopies struct {
	// Dir holds the copies (made mode 0700 if missing: a copy holds the
	// whole state, tokens' hashes included).
	Dir string
	// Interval between two copies; Keep is how many are kept (the oldest
	// go first).
	Interval time.Duration
	Keep     int
	// ID and Center are this controller's; it takes copies while Center
	// is declared a remote-DR center.
	ID, Center string
	// DataDir is this controller's: when raft has nothing new to
	// snapshot, the copy is its newest snapshot there.
	DataDir string
}

// DRCopier takes a node's state copies (DRCopies).
type DRCopier struct {
	node *Node
	cfg  DRCopies
	log  *slog.Logger

	mu   sync.Mutex // one copy at a time
	last uint64     // index of the newest copy this process wrote
}

// NewDRCopier returns the copier of node n; Run takes the copies.
func NewDRCopier(n *Node, cfg DRCopies, lg *slog.Logger) *DRCopier {
	if lg == nil {
		lg = slog.Default()
	}
	return &DRCopier{node: n, cfg: cfg, log: lg}
}

// Active says whether this controller keeps copies now: its center is
// declared a remote-DR center. The topology is the replicated record of
// where the remote center is, so a controller that is moved or added there
// starts copying without anyone passing it a flag, and one whose center's
// role changes stops.
func (c *DRCopier) Active() bool {
	ce, ok := c.node.Store.Center(c.cfg.Center)
	return ok && ce.GetRole() == statev1.CenterRole_CENTER_ROLE_REMOTE_DR
}

// roleCheck is how often Run looks whether the copier is active.
const roleCheck = time.Second

// Run takes a copy once the controller's center is remote DR, then one
// every interval after the newest (also across restarts: the newest copy
// on disk counts), until ctx ends. A failed copy is tried again after a
// tenth of the interval (at least a second, at most a minute).
func (c *DRCopier) Run(ctx context.Context) {
	c.removeTemps() // of a copy cut short by a crash
	var next time.Time
	if list, err := ListCopies(c.cfg.Dir); err == nil && len(list) > 0 {
		if t, ok := copyTime(list[len(list)-1]); ok {
			next = t.Add(c.cfg.Interval)
		}
	}
	tick := time.NewTicker(roleCheck)
	defer tick.Stop()
	active := false
	for {
		if now := c.Active(); now != active {
			active = now
			if active {
				c.log.Info("this controller's center is remote DR: it keeps copies of the cluster state", "dir", c.cfg.Dir, "every", c.cfg.Interval, "keep", c.cfg.Keep)
			} else {
				c.log.Info("this controller's center is no longer remote DR: it stops copying the cluster state")
			}
		}
		if active && !time.Now().Before(next) {
			if _, err := c.Copy(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				retry := min(max(c.cfg.Interval/10, time.Second), time.Minute)
				c.log.Warn("could not copy the cluster state for DR; will retry", "in", retry, "err", err)
				next = time.Now().Add(retry)
			} else {
				next = time.Now().Add(c.cfg.Interval)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// copyTime is the time in a copy's name.
func copyTime(path string) (time.Time, bool) {
	s := strings.TrimPrefix(filepath.Base(path), copyPrefix)
	if len(s) < len(copyTimeLayout) {
		return time.Time{}, false
	}
	t, err := time.Parse(copyTimeLayout, s[:len(copyTimeLayout)])
	return t, err == nil
}

func (c *DRCopier) removeTemps() {
	ents, err := os.ReadDir(c.cfg.Dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), copyTemp) {
			os.Remove(filepath.Join(c.cfg.Dir, e.Name()))
		}
	}
}

// CopyInfo describes one copy taken.
type CopyInfo struct {
	Path   string
	Header CopyHeader
	// Took is the time from asking raft for the snapshot to the copy being
	// durable; Skipped: nothing was applied since the last copy, none was
	// written.
	Took    time.Duration
	Skipped bool
}

// Copy takes a copy now: raft snapshots this node's state (a user
// snapshot: raft writes it into the data dir as it does its own, and may
// compact the log behind it as usual), and the snapshot is written into the
// copy directory with its index, term, configuration and time; the oldest
// copies beyond Keep are removed.
func (c *DRCopier) Copy(ctx context.Context) (CopyInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := os.MkdirAll(c.cfg.Dir, 0o700); err != nil {
		return CopyInfo{}, err
	}
	start := time.Now()
	meta, rc, err := c.snapshot()
	if err != nil {
		return CopyInfo{}, err
	}
	defer rc.Close()
	if meta.Index == c.last {
		return CopyInfo{Skipped: true, Header: CopyHeader{Index: meta.Index}}, nil
	}
	h := CopyHeader{
		Format: CopyFormat, Controller: c.cfg.ID, Center: c.cfg.Center, TakenAt: time.Now().UTC(),
		Index: meta.Index, Term: meta.Term, ConfigurationIndex: meta.ConfigurationIndex, Size: meta.Size,
		StateFormat: state.SnapshotVersion, Leader: c.node.LeaderID(),
	}
	for _, s := range meta.Configuration.Servers {
		h.Servers = append(h.Servers, CopyServer{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	if !c.node.IsLeader() {
		if lc := c.node.Raft.LastContact(); !lc.IsZero() {
			h.LeaderContactMillis = time.Since(lc).Milliseconds()
		}
	}
	path, err := writeCopy(ctx, c.cfg.Dir, &h, rc)
	if err != nil {
		return CopyInfo{}, err
	}
	c.last = meta.Index
	info := CopyInfo{Path: path, Header: h, Took: time.Since(start)}
	c.prune()
	c.log.Info("copied the cluster state for DR", "file", path, "index", h.Index, "term", h.Term, "bytes", h.Size, "took", info.Took.Round(time.Millisecond))
	return info, nil
}

// snapshot asks raft for a snapshot of the state now; when nothing was
// applied since raft's newest snapshot, that one is the state now.
func (c *DRCopier) snapshot() (*raft.SnapshotMeta, io.ReadCloser, error) {
	f := c.node.Raft.Snapshot()
	err := f.Error() // waits for it: Open does not
	if err == nil {
		return f.Open()
	}
	if !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil, nil, fmt.Errorf("snapshot the state: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(c.cfg.DataDir, 2, hclog.NewNullLogger())
	if err != nil {
		return nil, nil, fmt.Errorf("open this controller's snapshots: %w", err)
	}
	list, err := snaps.List()
	if err != nil || len(list) == 0 {
		return nil, nil, fmt.Errorf("open this controller's snapshots: none to copy (%v)", err)
	}
	return snaps.Open(list[0].ID)
}

// prune removes the oldest copies beyond Keep.
func (c *DRCopier) prune() {
	list, err := ListCopies(c.cfg.Dir)
	if err != nil || len(list) <= c.cfg.Keep {
		return
	}
	for _, p := range list[:len(list)-c.cfg.Keep] {
		if err := os.Remove(p); err != nil {
			c.log.Warn("could not remove an old state copy", "file", p, "err", err)
		}
	}
	syncDir(c.cfg.Dir)
}
