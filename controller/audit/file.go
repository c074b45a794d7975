// Package audit keeps and checks the audit trail (issue 8 item 7): the
// file store each controller's FSM appends to (File), the check of the
// hash chain (Verify, also offline over a stopped controller's data dir),
// who asked (WithContext, UnaryInterceptor) and the recording of denied
// requests and failed logins, which no command of their own carries
// (Recorder). Apply produces the records (controller/state/audit.go).
package audit

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// FileName is the trail's file in a controller's data dir: one JSON
// object per line (Line), in seq order, each with its seq, its previous
// record's hash and its own.
const FileName = "audit.jsonl"

// Line is a record as the file and exports hold it. time is for people
// only (the hash covers unix_nano).
type Line struct {
	Seq           uint64 `json:"seq"`
	Prev          string `json:"prev"`
	Hash          string `json:"hash"`
	Time          string `json:"time"`
	UnixNano      int64  `json:"unix_nano"`
	Index         uint64 `json:"index"`
	Kind          string `json:"kind"`
	EventUnixNano int64  `json:"event_unix_nano,omitempty"`
	RequestID     string `json:"request_id,omitempty"`
	Actor         string `json:"actor,omitempty"`
	Role          string `json:"role,omitempty"`
	Department    string `json:"department,omitempty"`
	Source        string `json:"source,omitempty"`
	TokenID       string `json:"token_id,omitempty"`
	Action        string `json:"action,omitempty"`
	Target        string `json:"target,omitempty"`
	Params        string `json:"params,omitempty"`
	Result        string `json:"result,omitempty"`
	Code          string `json:"code,omitempty"`
	Message       string `json:"message,omitempty"`
}

// LineOf is r as a file line.
func LineOf(r *statev1.AuditRecord) Line {
	c := r.GetContext()
	return Line{
		Seq: r.GetSeq(), Prev: hex.EncodeToString(r.GetPrevHash()), Hash: hex.EncodeToString(r.GetHash()),
		Time: time.Unix(0, r.GetUnixNano()).UTC().Format(time.RFC3339Nano), UnixNano: r.GetUnixNano(), Index: r.GetIndex(),
		Kind: r.GetKind(), EventUnixNano: r.GetEventUnixNano(), RequestID: r.GetRequestId(),
		Actor: c.GetActor(), Role: c.GetRole(), Department: c.GetDepartment(), Source: c.GetSource(), TokenID: c.GetTokenId(),
		Action: c.GetAction(), Target: c.GetTarget(), Params: c.GetParams(),
		Result: r.GetResult(), Code: r.GetCode(), Message: r.GetMessage(),
	}
}

// Record is the line as a record (hashes that are not hex stay empty,
// and then do not verify).
func (l Line) Record() *statev1.AuditRecord {
	prev, _ := hex.DecodeString(l.Prev)
	h, _ := hex.DecodeString(l.Hash)
	r := &statev1.AuditRecord{Seq: l.Seq, PrevHash: prev, Hash: h, UnixNano: l.UnixNano, Index: l.Index, Kind: l.Kind,
		EventUnixNano: l.EventUnixNano, RequestId: l.RequestID, Result: l.Result, Code: l.Code, Message: l.Message}
	if l.Actor != "" || l.Role != "" || l.Department != "" || l.Source != "" || l.TokenID != "" || l.Action != "" || l.Target != "" || l.Params != "" {
		r.Context = &statev1.AuditContext{Actor: l.Actor, Role: l.Role, Department: l.Department, Source: l.Source,
			TokenId: l.TokenID, Action: l.Action, Target: l.Target, Params: l.Params}
	}
	return r
}

// Marshal is the line's JSON with its newline.
func (l Line) Marshal() []byte {
	b, _ := json.Marshal(l) // strings and integers only: cannot fail
	return append(b, '\n')
}

// File is a controller's audit trail on disk: the FSM appends (through
// Append, under the state's lock, in seq order), readers scan a flushed
// prefix through their own descriptor. Writes are buffered: durability
// comes from the raft log, which replays what a crash lost (Append skips
// what the file already holds).
type File struct {
	path string
	log  *slog.Logger

	mu   sync.Mutex
	f    *os.File
	w    *bufio.Writer
	size int64 // bytes written, buffered included
	last uint64
	hash []byte
	err  error // the last write error (the trail is then incomplete here)
	// pending are the records not known to be on disk: appended since the
	// last successful flush, or refused by a failed write. After a write
	// error (a full disk) they are written again once the file can be
	// written (recoverLocked), so that the trail has no gap when space
	// comes back: a bufio.Writer's error is final, so the file is opened
	// anew. At most maxPending are kept; older ones are then missing here
	// until a restart replays the raft log.
	pending []*statev1.AuditRecord
	dropped bool
	// inBuf are the lines written into w that may still be in its buffer,
	// oldest first: once w has written a line out (it does when its
	// buffer fills), its record is on disk as far as this file can tell
	// and leaves pending.
	inBuf     []bufLine
	nextRetry time.Time
	// line is write's scratch buffer (bufio copies what it is given).
	line []byte
}

// bufLine is one line written into the buffered writer.
type bufLine struct {
	seq uint64
	n   int
}

// maxPending bounds the records kept in memory while the file cannot be
// written.
const maxPending = 100_000

// retryEvery is how often a failed file is tried again.
const retryEvery = time.Second

// OpenFile opens (or creates) the trail in dir. A last line cut short by a
// crash is dropped (the raft log replays it).
func OpenFile(dir string, lg *slog.Logger) (*File, error) {
	if lg == nil {
		lg = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: create %s: %w", dir, err)
	}
	a := &File{path: filepath.Join(dir, FileName), log: lg}
	if err := a.open(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *File) open() error {
	f, err := os.OpenFile(a.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit: open %s: %w", a.path, err)
	}
	size, last, err := lastLine(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: read %s: %w", a.path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("audit: %s: %w", a.path, err)
	}
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		f.Close()
		return err
	}
	a.f, a.w, a.size, a.last, a.hash = f, bufio.NewWriterSize(newWriteback(f, size), 64<<10), size, 0, nil
	a.inBuf = a.inBuf[:0]
	if last != nil {
		var l Line
		if err := json.Unmarshal(last, &l); err == nil {
			a.last, a.hash = l.Seq, l.Record().GetHash()
		}
	}
	return nil
}

// lastLine finds the end of the last complete line (the size to keep) and
// that line, reading backwards from the end in bounded steps.
func lastLine(f *os.File) (int64, []byte, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	end := st.Size()
	const step = 64 << 10
	var tail []byte
	for pos := end; pos > 0; {
		n := min(int64(step), pos)
		pos -= n
		buf := make([]byte, n)
		if _, err := f.ReadAt(buf, pos); err != nil {
			return 0, nil, err
		}
		tail = append(buf, tail...)
		// The last newline ends the last complete line; the one before it
		// starts it.
		nl := bytes.LastIndexByte(tail, '\n')
		if nl < 0 {
			if pos == 0 {
				return 0, nil, nil // no complete line
			}
			continue
		}
		start := bytes.LastIndexByte(tail[:nl], '\n')
		if start < 0 && pos > 0 {
			continue
		}
		return pos + int64(nl) + 1, tail[start+1 : nl], nil
	}
	return 0, nil, nil
}

var _ state.AuditSink = (*File)(nil)

// Append writes rec unless the file already holds its seq (a replay after
// a restart).
func (a *File) Append(rec *statev1.AuditRecord) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if rec.Seq <= a.last {
		return
	}
	if a.err != nil {
		a.keep(rec)
		a.recoverLocked()
		return
	}
	if a.last != 0 && rec.Seq != a.last+1 {
		a.log.Error("audit trail: a record does not follow the file's last one", "seq", rec.Seq, "last", a.last)
	}
	a.keep(rec)
	a.write(rec)
}

// keep remembers rec until a flush puts it on disk.
func (a *File) keep(rec *statev1.AuditRecord) {
	if len(a.pending) >= maxPending {
		if !a.dropped {
			a.log.Error("audit trail: too many records waiting for the disk; the oldest are missing here until a restart replays them", "path", a.path)
		}
		a.dropped = true
		a.pending = a.pending[1:]
	}
	a.pending = append(a.pending, rec)
}

// write buffers rec; an error marks the file failed.
func (a *File) write(rec *statev1.AuditRecord) {
	a.line = appendLine(a.line[:0], rec)
	b := a.line
	if _, err := a.w.Write(b); err != nil {
		a.failed(err)
		return
	}
	a.size += int64(len(b))
	a.last, a.hash = rec.Seq, rec.Hash
	a.inBuf = append(a.inBuf, bufLine{rec.Seq, len(b)})
	a.written()
}

// written drops from pending the records whose lines w has written out:
// all but the last lines that make up what it still buffers. Without it
// every record stayed in memory until the next flush (a snapshot, a
// read of the trail), up to maxPending, and then the trail logged that
// records were missing when none was.
func (a *File) written() {
	left, i := a.w.Buffered(), len(a.inBuf)
	for i > 0 && left > 0 {
		i--
		left -= a.inBuf[i].n
	}
	if i == 0 {
		return
	}
	out := a.inBuf[i-1].seq
	a.inBuf = a.inBuf[:copy(a.inBuf, a.inBuf[i:])]
	k := 0
	for k < len(a.pending) && a.pending[k].Seq <= out {
		k++
	}
	n := copy(a.pending, a.pending[k:])
	clear(a.pending[n:])
	a.pending = a.pending[:n]
}

func (a *File) failed(err error) {
	if a.err == nil {
		a.log.Error("audit trail: cannot write; records wait in memory until it can", "path", a.path, "err", err)
	}
	a.err = err
	a.nextRetry = time.Now().Add(retryEvery)
}

// flushLocked writes what is buffered; the pending records are then on
// disk.
func (a *File) flushLocked() error {
	if a.err != nil {
		a.recoverLocked()
		if a.err != nil {
			return a.err
		}
	}
	if err := a.w.Flush(); err != nil {
		a.failed(err)
		return err
	}
	a.pending, a.inBuf = a.pending[:0], a.inBuf[:0]
	return nil
}

// recoverLocked tries, at most every retryEvery, to write again after a
// write error: it opens the file anew (dropping a line cut short) and
// writes the pending records it does not hold.
func (a *File) recoverLocked() {
	if a.err == nil || time.Now().Before(a.nextRetry) {
		return
	}
	a.nextRetry = time.Now().Add(retryEvery)
	a.f.Close()
	if err := a.open(); err != nil {
		a.err = err
		return
	}
	prev := a.err
	a.err = nil
	// A copy: write drops from pending what it has written out.
	for _, rec := range slices.Clone(a.pending) {
		if rec.Seq > a.last {
			a.write(rec)
			if a.err != nil {
				return
			}
		}
	}
	if err := a.w.Flush(); err != nil {
		a.failed(err)
		return
	}
	a.pending, a.inBuf = a.pending[:0], a.inBuf[:0]
	if !a.dropped {
		a.log.Info("audit trail: writing again; no record missing", "path", a.path, "after", prev)
	}
}

// Archived rewrites the file without the records through seq.
func (a *File) Archived(through uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.dropThrough(through); err != nil {
		a.log.Error("audit trail: cannot drop archived records", "through", through, "err", err)
		a.err = err
	}
}

func (a *File) dropThrough(through uint64) error {
	if err := a.w.Flush(); err != nil {
		return err
	}
	src, err := os.Open(a.path)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(filepath.Dir(a.path), FileName+".archive-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	sc := bufio.NewScanner(src)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for sc.Scan() {
		var l struct {
			Seq uint64 `json:"seq"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Seq <= through {
			continue
		}
		w.Write(sc.Bytes())
		w.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		tmp.Close()
		return err
	}
	if err := errors.Join(w.Flush(), tmp.Sync(), tmp.Close()); err != nil {
		return err
	}
	return a.replace(tmp.Name())
}

// replace puts the file at path in place of the trail and reopens it;
// callers hold mu.
func (a *File) replace(path string) error {
	if err := os.Rename(path, a.path); err != nil {
		return err
	}
	a.f.Close()
	return a.open()
}

// maxLine bounds one line (params are cut to MaxParams).
const maxLine = 1 << 20

// Flush writes what is buffered.
func (a *File) Flush() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.flushLocked()
}

// Close flushes and closes the file.
func (a *File) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return errors.Join(a.w.Flush(), a.f.Sync(), a.f.Close())
}

// Last is the seq and hash of the file's last record.
func (a *File) Last() (uint64, []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last, a.hash
}

// Err is the last write error, if any.
func (a *File) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Reader returns the trail as written so far (flushed), through its own
// descriptor: appends after it, and a rewrite by an archive, do not
// change what it reads. The caller closes it.
func (a *File) Reader() (io.ReadCloser, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.flushLocked(); err != nil {
		return nil, err
	}
	f, err := os.Open(a.path)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, 0, a.size), f}, nil
}

// SnapshotReader is Reader for raftnode's FSM snapshot (called on the FSM
// goroutine, so no Append runs meanwhile: it ends at the view's head).
func (a *File) SnapshotReader() (io.ReadCloser, error) { return a.Reader() }

// Restore replaces the trail with the records r holds (a snapshot's),
// which must end at head.
func (a *File) Restore(r io.Reader, head *statev1.AuditHead) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	tmp, err := os.CreateTemp(filepath.Dir(a.path), FileName+".restore-*")
	if err != nil {
		return fmt.Errorf("audit: restore: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, r)
	if err == nil {
		err = errors.Join(tmp.Sync(), tmp.Close())
	} else {
		tmp.Close()
	}
	if err != nil {
		return fmt.Errorf("audit: restore: %w", err)
	}
	a.w.Flush()
	if err := a.replace(tmp.Name()); err != nil {
		return fmt.Errorf("audit: restore: %w", err)
	}
	if a.last != head.GetSeq() {
		a.log.Error("audit trail: the snapshot's records do not end at its head", "last", a.last, "head", head.GetSeq())
	}
	a.err = nil
	a.pending, a.inBuf, a.dropped = a.pending[:0], a.inBuf[:0], false
	return nil
}

// Scan calls fn for each record of the trail in file order (from a
// flushed prefix) until fn returns false or an error.
func (a *File) Scan(fn func(Line) (bool, error)) error {
	rc, err := a.Reader()
	if err != nil {
		return err
	}
	defer rc.Close()
	return ScanLines(rc, func(_ int, l Line, err error) (bool, error) {
		if err != nil {
			return true, nil // verify names unreadable lines; readers skip them
		}
		return fn(l)
	})
}

// ScanLines reads JSON lines, calling fn with each line's number (from 1)
// and the line or why it is not one.
func ScanLines(r io.Reader, fn func(n int, l Line, err error) (bool, error)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for n := 1; sc.Scan(); n++ {
		var l Line
		err := json.Unmarshal(sc.Bytes(), &l)
		more, ferr := fn(n, l, err)
		if ferr != nil {
			return ferr
		}
		if !more {
			return nil
		}
	}
	return sc.Err()
}
