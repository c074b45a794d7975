package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ChunkSize is the size of every chunk but the last of a disk.
const ChunkSize = 4 << 20

const (
	// minGrace: file times come from a clock coarser than time.Now (the
	// kernel's tick), so a grace shorter than this could remove a file
	// touched a moment ago.
	minGrace = time.Second
	// batch is how many directory entries are read (and, in GC, removed
	// under one hold of the lock) at a time.
	batch     = 1024
	badSuffix = ".bad"
)

// The kinds of errors, for errors.Is; the errors themselves say which
// chunk or manifest, and why, in one line.
var (
	// ErrNotFound: the chunk or manifest is not in the repository.
	ErrNotFound = errors.New("not in the backup repository")
	// ErrDamaged: its bytes do not hash to its name.
	ErrDamaged = errors.New("damaged")
	// ErrInvalid: the caller's input is wrong (bytes that do not match
	// their hash, a chunk too large, a malformed manifest); nothing was
	// stored.
	ErrInvalid = errors.New("invalid")
	// ErrMissingChunks: a manifest lists chunks the repository lacks.
	ErrMissingChunks = errors.New("chunks missing")
)

// Error is an error of one of the kinds above.
type Error struct {
	Kind error
	Msg  string
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Kind }

func errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// DamageError is a chunk or manifest whose bytes do not match its name
// (errors.Is(err, ErrDamaged)).
type DamageError struct {
	// What is "chunk" or "manifest"; Hash its name (hex).
	What, Hash string
	// Reason says what is wrong: "its 4194304 bytes hash to 1f2e...".
	Reason string
	// MovedAside: the chunk was renamed <hash>.bad.
	MovedAside bool
}

func (e *DamageError) Error() string {
	s := fmt.Sprintf("%s %s is damaged: %s", e.What, e.Hash, e.Reason)
	if e.MovedAside {
		s += "; moved aside, the next backup with these bytes stores it again"
	}
	return s
}

func (e *DamageError) Unwrap() error { return ErrDamaged }

// Hash is a chunk's (or manifest's) sha256.
type Hash [32]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// HashOf is the sha256 of b.
func HashOf(b []byte) Hash { return sha256.Sum256(b) }

// HashFromBytes takes a sha256 as sent on the wire (32 bytes).
func HashFromBytes(b []byte) (Hash, error) {
	var h Hash
	if len(b) != len(h) {
		return h, errorf(ErrInvalid, "a sha256 is 32 bytes, not %d", len(b))
	}
	copy(h[:], b)
	return h, nil
}

// ParseHash reads a sha256 written in hex (64 lowercase digits, as names
// in the repository and in the state are).
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 2*len(h) || strings.ToLower(s) != s {
		return h, errorf(ErrInvalid, "%.80q is not a sha256 (64 lowercase hex digits)", s)
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, errorf(ErrInvalid, "%.80q is not a sha256 (64 lowercase hex digits)", s)
	}
	return h, nil
}

// Repo is one repository. Its methods may be called concurrently.
type Repo struct {
	dir string
	// sweep is held shared by whatever looks at chunks and touches them
	// (Missing, PutChunk, PutManifest), exclusively by whatever removes
	// or renames them (GC, moving a damaged chunk aside) and by counting
	// (see doc.go).
	sweep sync.RWMutex
	// put serialises stores of chunks with the same second byte, so two
	// uploads of one chunk write it (and count it) once.
	put [256]sync.Mutex
	// maint lets one Verify or GC run at a time.
	maint chan struct{}

	// counts are the chunks and bytes under each chunks/<prefix>, exact
	// once counted (Stats counts each prefix under the exclusive lock;
	// stores add, removals subtract, under the lock too).
	countMu sync.Mutex
	counted atomic.Bool
	counts  [256]struct{ n, bytes atomic.Int64 }
}

// Open opens the repository in dir, creating its layout if needed, and
// checks that it can write there.
func Open(dir string) (*Repo, error) {
	if dir == "" {
		return nil, errors.New("backup repository: no directory given")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("backup repository %s: %v", dir, err)
	}
	r := &Repo{dir: abs, maint: make(chan struct{}, 1)}
	for _, d := range []string{abs, r.sub("chunks"), r.sub("manifests"), r.sub("tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("backup repository %s cannot be created: %v", abs, err)
		}
	}
	for i := range 256 {
		if err := os.Mkdir(r.prefixDir(byte(i)), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("backup repository %s cannot be created: %v", abs, err)
		}
	}
	f, err := os.CreateTemp(r.sub("tmp"), "probe-*")
	if err == nil {
		_, err = f.Write([]byte{0})
		if err == nil {
			err = f.Sync()
		}
		f.Close()
		os.Remove(f.Name())
	}
	if err == nil {
		err = errors.Join(syncDir(abs), syncDir(r.sub("chunks")))
	}
	if err != nil {
		return nil, fmt.Errorf("backup repository %s is not writable: %v", abs, err)
	}
	return r, nil
}

// Dir is the repository's directory.
func (r *Repo) Dir() string { return r.dir }

func (r *Repo) sub(name string) string     { return filepath.Join(r.dir, name) }
func (r *Repo) chunkPath(h Hash) string    { return filepath.Join(r.prefixDir(h[0]), h.String()) }
func (r *Repo) manifestPath(h Hash) string { return filepath.Join(r.dir, "manifests", h.String()) }

func (r *Repo) prefixDir(b byte) string {
	return filepath.Join(r.dir, "chunks", hex.EncodeToString([]byte{b}))
}

// count adds n chunks of size bytes (in all) to h's prefix.
func (r *Repo) count(h Hash, n int, size int64) {
	c := &r.counts[h[0]]
	c.n.Add(int64(n))
	c.bytes.Add(size)
}

func touch(p string, now time.Time) error { return os.Chtimes(p, now, now) }
func notExist(err error) bool             { return errors.Is(err, fs.ErrNotExist) }

// Missing returns the indexes of the hashes whose chunks the repository
// does not hold. It refreshes the time of those it holds, so that GC keeps
// them for a grace period: the caller need not send them.
func (r *Repo) Missing(hashes []Hash) []int {
	r.sweep.RLock()
	defer r.sweep.RUnlock()
	now := time.Now()
	var out []int
	for i, h := range hashes {
		// Any failure counts as missing: the caller sends the chunk,
		// and PutChunk reports what is wrong.
		if touch(r.chunkPath(h), now) != nil {
			out = append(out, i)
		}
	}
	return out
}

func checkChunk(h Hash, data []byte) error {
	switch {
	case len(data) == 0:
		return errorf(ErrInvalid, "chunk %s is empty: a chunk holds 1 to %d bytes", h, ChunkSize)
	case len(data) > ChunkSize:
		return errorf(ErrInvalid, "chunk %s is %d bytes long: a chunk holds at most %d", h, len(data), ChunkSize)
	}
	if got := HashOf(data); got != h {
		return errorf(ErrInvalid, "the %d bytes sent for chunk %s hash to %s: nothing stored", len(data), h, got)
	}
	return nil
}

// PutChunk stores a chunk after checking that data hashes to h. new is
// false when the repository held it already (it is not written again).
func (r *Repo) PutChunk(h Hash, data []byte) (new bool, err error) {
	if err := checkChunk(h, data); err != nil {
		return false, err
	}
	p := r.chunkPath(h)
	r.sweep.RLock()
	defer r.sweep.RUnlock()
	mu := &r.put[h[1]]
	mu.Lock()
	defer mu.Unlock()
	switch err := touch(p, time.Now()); {
	case err == nil:
		return false, nil
	case !notExist(err):
		return false, fmt.Errorf("store chunk %s: %w", h, err)
	}
	if err := r.writeFile(p, data); err != nil {
		return false, fmt.Errorf("store chunk %s: %w", h, err)
	}
	r.count(h, 1, int64(len(data)))
	return true, nil
}

// writeFile puts data at dest atomically and durably: a temporary file,
// fsynced, renamed, and the directory fsynced.
func (r *Repo) writeFile(dest string, data []byte) (err error) {
	f, err := os.CreateTemp(r.sub("tmp"), "put-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, dest); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dest))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	// Some file systems cannot fsync a directory (and make renames
	// durable without it).
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return err
	}
	return nil
}

// Chunk reads a chunk; see ReadChunk.
func (r *Repo) Chunk(h Hash) ([]byte, error) { return r.ReadChunk(h, nil) }

// ReadChunk reads a chunk into buf (grown if too small) and checks that
// its bytes hash to h. A chunk that does not is moved aside and reported
// as a *DamageError (errors.Is ErrDamaged), never returned; one that is
// not there is ErrNotFound.
func (r *Repo) ReadChunk(h Hash, buf []byte) ([]byte, error) {
	f, err := os.Open(r.chunkPath(h))
	if notExist(err) {
		return nil, errorf(ErrNotFound, "chunk %s is not in the backup repository", h)
	}
	if err != nil {
		return nil, fmt.Errorf("read chunk %s: %w", h, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read chunk %s: %w", h, err)
	}
	size := st.Size()
	if size == 0 || size > ChunkSize {
		return nil, r.damagedChunk(h, fmt.Sprintf("it is %d bytes long (a chunk holds 1 to %d)", size, ChunkSize))
	}
	if int64(cap(buf)) < size {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	if _, err := io.ReadFull(f, buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, r.damagedChunk(h, fmt.Sprintf("it ends before its %d bytes", size))
		}
		return nil, fmt.Errorf("read chunk %s: %w", h, err)
	}
	if got := HashOf(buf); got != h {
		return nil, r.damagedChunk(h, fmt.Sprintf("its %d bytes hash to %s", size, got))
	}
	return buf, nil
}

// damagedChunk moves a damaged chunk aside (<hash>.bad): the repository
// then lacks it, so the next backup that has its bytes sends them again.
func (r *Repo) damagedChunk(h Hash, reason string) error {
	e := &DamageError{What: "chunk", Hash: h.String(), Reason: reason}
	p := r.chunkPath(h)
	r.sweep.Lock()
	defer r.sweep.Unlock()
	if st, err := os.Lstat(p); err == nil && os.Rename(p, p+badSuffix) == nil {
		e.MovedAside = true
		r.count(h, -1, -st.Size())
		_ = syncDir(filepath.Dir(p))
	}
	return e
}

// chunkLen is the length of chunk i of a disk of size bytes.
func chunkLen(size int64, i int) int64 { return min(ChunkSize, size-int64(i)*ChunkSize) }

// Damage is a damaged chunk or manifest found by Verify (or a manifest GC
// could not read).
type Damage struct {
	Hash   string
	Reason string
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	// Chunks and bytes re-hashed, manifests read.
	Chunks, Bytes, Manifests int64
	// Chunks whose bytes do not match their name (moved aside), that
	// could not be read, or that a manifest lists and the repository
	// lacks (moved aside earlier, or removed by hand).
	DamagedChunks []Damage
	// Manifests whose bytes do not match their name or do not decode.
	DamagedManifests []Damage
	// MovedAside counts chunks found moved aside by earlier reads.
	MovedAside int64
}

func (r *Repo) lockMaint(ctx context.Context) (func(), error) {
	select {
	case r.maint <- struct{}{}:
		return func() { <-r.maint }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// eachEntry calls fn with dir's entries, batch by batch.
func eachEntry(dir string, fn func([]os.DirEntry) error) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	for {
		ents, err := d.ReadDir(batch)
		if len(ents) > 0 {
			if err := fn(ents); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// hashName is the hash a file in chunks/ or manifests/ is named by.
func hashName(name string) (Hash, bool) {
	h, err := ParseHash(name)
	return h, err == nil
}

// Verify re-hashes every chunk and manifest, one at a time, and checks
// that every chunk a manifest lists is there. progress (may be nil) is
// called after each file with the bytes done and the total. It stops
// with ctx's error when ctx ends. One Verify or GC runs at a time: it
// waits for the running one.
func (r *Repo) Verify(ctx context.Context, progress func(done, total int64)) (VerifyReport, error) {
	var rep VerifyReport
	unlock, err := r.lockMaint(ctx)
	if err != nil {
		return rep, err
	}
	defer unlock()
	// The total is for progress only: without a progress callback the
	// repository is not walked an extra time to count it.
	var total int64
	for i := range 256 {
		if progress == nil {
			break
		}
		if err := eachEntry(r.prefixDir(byte(i)), func(ents []os.DirEntry) error {
			for _, e := range ents {
				if _, ok := hashName(e.Name()); ok {
					if info, err := e.Info(); err == nil {
						total += info.Size()
					}
				}
			}
			return ctx.Err()
		}); err != nil {
			return rep, err
		}
	}
	if err := eachEntry(r.sub("manifests"), func(ents []os.DirEntry) error {
		for _, e := range ents {
			if _, ok := hashName(e.Name()); ok && progress != nil {
				if info, err := e.Info(); err == nil {
					total += info.Size()
				}
			}
		}
		return nil
	}); progress != nil && err != nil {
		return rep, err
	}
	var done int64
	report := func(n int64) {
		done += n
		if progress != nil {
			progress(done, max(done, total))
		}
	}
	damaged := map[Hash]bool{}
	buf := make([]byte, ChunkSize)
	for i := range 256 {
		if err := eachEntry(r.prefixDir(byte(i)), func(ents []os.DirEntry) error {
			for _, e := range ents {
				if err := ctx.Err(); err != nil {
					return err
				}
				h, ok := hashName(e.Name())
				if !ok {
					if strings.HasSuffix(e.Name(), badSuffix) {
						rep.MovedAside++
					}
					continue
				}
				if info, err := e.Info(); err == nil {
					report(info.Size())
				}
				data, err := r.ReadChunk(h, buf)
				var de *DamageError
				switch {
				case err == nil:
					rep.Chunks++
					rep.Bytes += int64(len(data))
				case errors.Is(err, ErrNotFound):
					// Moved aside by a read since the listing.
				case errors.As(err, &de):
					damaged[h] = true
					rep.DamagedChunks = append(rep.DamagedChunks, Damage{Hash: h.String(), Reason: de.Reason})
				default:
					damaged[h] = true
					rep.DamagedChunks = append(rep.DamagedChunks, Damage{Hash: h.String(), Reason: "unreadable: " + err.Error()})
				}
			}
			return nil
		}); err != nil {
			return rep, err
		}
	}
	err = eachEntry(r.sub("manifests"), func(ents []os.DirEntry) error {
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			h, ok := hashName(e.Name())
			if !ok {
				continue
			}
			if info, err := e.Info(); err == nil {
				report(info.Size())
			}
			// The chunks it lists that are missing count once the
			// manifest checked out whole.
			var missing []Hash
			missed := map[Hash]bool{}
			listed := map[Hash]bool{} // bounded: a repeat is only checked again
			_, err := r.scanStored(h, func(i int64, ch Hash) error {
				if i%4096 == 0 {
					if err := ctx.Err(); err != nil {
						return err
					}
				}
				if listed[ch] || damaged[ch] {
					return nil
				}
				if len(listed) >= statCache {
					clear(listed)
				}
				listed[ch] = true
				if _, err := os.Lstat(r.chunkPath(ch)); notExist(err) && !missed[ch] {
					missed[ch] = true
					missing = append(missing, ch)
				}
				return nil
			})
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			var de *DamageError
			switch {
			case err == nil:
			case errors.Is(err, ErrNotFound):
				continue
			case errors.As(err, &de):
				rep.DamagedManifests = append(rep.DamagedManifests, Damage{Hash: h.String(), Reason: de.Reason})
				continue
			default:
				rep.DamagedManifests = append(rep.DamagedManifests, Damage{Hash: h.String(), Reason: "unreadable: " + err.Error()})
				continue
			}
			rep.Manifests++
			for _, ch := range missing {
				if !damaged[ch] {
					damaged[ch] = true
					rep.DamagedChunks = append(rep.DamagedChunks, Damage{Hash: ch.String(), Reason: "missing (listed by manifest " + h.String() + ")"})
				}
			}
		}
		return nil
	})
	return rep, err
}

// GCReport is what GC did.
type GCReport struct {
	ChunksRemoved, BytesRemoved int64
	ChunksKept, BytesKept       int64
	ManifestsRemoved            int64
	ManifestsKept               int64
	// Manifests to keep that are missing or damaged: the chunks of a
	// damaged one that still decodes were kept.
	Unreadable []Damage
}

// GC removes the chunks that neither the manifests named in referenced
// (hex sha256: those of the retained restore points) nor any manifest
// younger than grace list, and the manifests not in referenced; it never
// removes a file younger than grace (a backup in flight, see doc.go). A
// grace under a second is taken as a second. A referenced manifest that
// cannot be read (an I/O error, not damage) stops GC before it removes
// anything. When ctx ends, GC stops with what it did so far.
func (r *Repo) GC(ctx context.Context, referenced []string, grace time.Duration) (GCReport, error) {
	var rep GCReport
	roots := map[Hash]bool{}
	for _, s := range referenced {
		h, err := ParseHash(s)
		if err != nil {
			return rep, errorf(ErrInvalid, "manifest to keep: %s", err)
		}
		roots[h] = true
	}
	unlock, err := r.lockMaint(ctx)
	if err != nil {
		return rep, err
	}
	defer unlock()
	cutoff := time.Now().Add(-max(grace, minGrace))
	old := func(t time.Time) bool { return t.Before(cutoff) }

	// Mark: the chunks of the manifests to keep and of young ones.
	if err := eachEntry(r.sub("manifests"), func(ents []os.DirEntry) error {
		for _, e := range ents {
			if h, ok := hashName(e.Name()); ok && !roots[h] {
				if info, err := e.Info(); err == nil && !old(info.ModTime()) {
					roots[h] = false // young: kept, its chunks marked
				}
			}
		}
		return nil
	}); err != nil {
		return rep, fmt.Errorf("list manifests: %w", err)
	}
	marked := map[Hash]struct{}{}
	for h, kept := range roots {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		_, err := r.scanStored(h, func(i int64, c Hash) error {
			if i%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			marked[c] = struct{}{}
			return nil
		})
		if cerr := ctx.Err(); cerr != nil {
			return rep, cerr
		}
		var de *DamageError
		switch {
		case err == nil:
		case errors.Is(err, ErrNotFound):
			if kept {
				rep.Unreadable = append(rep.Unreadable, Damage{Hash: h.String(), Reason: "missing"})
			}
		case errors.As(err, &de):
			// The chunks it named before the damage showed stay marked.
			rep.Unreadable = append(rep.Unreadable, Damage{Hash: h.String(), Reason: de.Reason})
		default:
			return rep, fmt.Errorf("garbage collection stopped before removing anything: manifest %s cannot be read: %w", h, err)
		}
	}

	// Sweep manifests first: no manifest left lists a removed chunk.
	type candidate struct {
		path string
		h    Hash
		size int64
		bad  bool
	}
	// remove removes the candidates still old under the exclusive lock.
	remove := func(cs []candidate, manifests bool) int {
		if len(cs) == 0 {
			return 0
		}
		r.sweep.Lock()
		defer r.sweep.Unlock()
		n := 0
		for _, c := range cs {
			st, err := os.Lstat(c.path)
			if err != nil || !old(st.ModTime()) {
				if err == nil && !manifests && !c.bad {
					rep.ChunksKept++
					rep.BytesKept += st.Size()
				} else if err == nil && manifests {
					rep.ManifestsKept++
				}
				continue
			}
			if os.Remove(c.path) != nil {
				continue
			}
			n++
			switch {
			case manifests:
				rep.ManifestsRemoved++
			case c.bad:
			default:
				rep.ChunksRemoved++
				rep.BytesRemoved += st.Size()
				r.count(c.h, -1, -st.Size())
			}
		}
		return n
	}
	if err := eachEntry(r.sub("manifests"), func(ents []os.DirEntry) error {
		var cs []candidate
		for _, e := range ents {
			h, ok := hashName(e.Name())
			if !ok {
				continue
			}
			if _, kept := roots[h]; kept {
				rep.ManifestsKept++
				continue
			}
			cs = append(cs, candidate{path: r.manifestPath(h), h: h})
		}
		remove(cs, true)
		return ctx.Err()
	}); err != nil {
		return rep, err
	}
	if rep.ManifestsRemoved > 0 {
		_ = syncDir(r.sub("manifests"))
	}

	// Sweep chunks, prefix by prefix.
	for i := range 256 {
		dir := r.prefixDir(byte(i))
		removed := 0
		if err := eachEntry(dir, func(ents []os.DirEntry) error {
			var cs []candidate
			for _, e := range ents {
				name := e.Name()
				h, ok := hashName(name)
				bad := false
				if !ok {
					if h, ok = hashName(strings.TrimSuffix(name, badSuffix)); !ok || !strings.HasSuffix(name, badSuffix) {
						continue // not ours
					}
					bad = true
				}
				info, err := e.Info()
				if err != nil {
					continue
				}
				if _, m := marked[h]; (m && !bad) || !old(info.ModTime()) {
					if !bad {
						rep.ChunksKept++
						rep.BytesKept += info.Size()
					}
					continue
				}
				cs = append(cs, candidate{path: filepath.Join(dir, name), h: h, bad: bad})
			}
			removed += remove(cs, false)
			return ctx.Err()
		}); err != nil {
			return rep, err
		}
		if removed > 0 {
			_ = syncDir(dir)
		}
	}

	// Partial writes left by a crash.
	_ = eachEntry(r.sub("tmp"), func(ents []os.DirEntry) error {
		for _, e := range ents {
			if info, err := e.Info(); err == nil && old(info.ModTime()) {
				os.Remove(filepath.Join(r.sub("tmp"), e.Name()))
			}
		}
		return nil
	})
	return rep, nil
}

// Stats are a repository's size.
type Stats struct {
	// Chunks and their bytes (after deduplication).
	Chunks, Bytes int64
	// FreeBytes is what its file system has free for it.
	FreeBytes int64
}

// Stats counts the chunks (once, then keeps the count up to date) and
// asks the file system for its free space.
func (r *Repo) Stats() (Stats, error) {
	var s Stats
	if err := r.countAll(); err != nil {
		return s, err
	}
	for i := range r.counts {
		s.Chunks += r.counts[i].n.Load()
		s.Bytes += r.counts[i].bytes.Load()
	}
	var st unix.Statfs_t
	if err := unix.Statfs(r.dir, &st); err != nil {
		return s, fmt.Errorf("free space of %s: %w", r.dir, err)
	}
	s.FreeBytes = int64(st.Bavail) * int64(st.Bsize)
	return s, nil
}

// countAll lists every prefix directory once, each under the exclusive
// lock, so that stores and removals (which count under the lock) are
// either in its listing or counted after it.
func (r *Repo) countAll() error {
	if r.counted.Load() {
		return nil
	}
	r.countMu.Lock()
	defer r.countMu.Unlock()
	if r.counted.Load() {
		return nil
	}
	for i := range 256 {
		if err := r.countPrefix(byte(i)); err != nil {
			return fmt.Errorf("count the chunks of %s: %w", r.dir, err)
		}
	}
	r.counted.Store(true)
	return nil
}

func (r *Repo) countPrefix(p byte) error {
	r.sweep.Lock()
	defer r.sweep.Unlock()
	var n, b int64
	err := eachEntry(r.prefixDir(p), func(ents []os.DirEntry) error {
		for _, e := range ents {
			if _, ok := hashName(e.Name()); !ok {
				continue
			}
			if info, err := e.Info(); err == nil {
				n++
				b += info.Size()
			}
		}
		return nil
	})
	r.counts[p].n.Store(n)
	r.counts[p].bytes.Store(b)
	return err
}
