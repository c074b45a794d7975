// Package images is a controller's store of image files, named by the
// lowercase hex SHA-256 of their bytes (content-addressed: an image
// imported twice is stored once). Only their metadata is replicated
// (controller/state); each controller keeps the bytes in its own store,
// beside its data directory:
//
//	DIR/sha256/ab/abcdef...   complete, verified files
//	DIR/partial/abcdef...     copies from a peer, resumed where they stopped
//	DIR/tmp/                  imports being received (emptied at start)
//
// A file enters the store only whole and verified: written to a temporary
// file while its SHA-256 is computed, checked against what the importer
// declared (size, hash, format), synced, renamed into place and its
// directory synced.
//
// Verification on read: the store keeps, in memory, the SHA-256 of every
// 1 MiB chunk of each file, computed while the file was written or, for a
// file already there at start, by hashing the whole file the first time it
// is opened (which also checks the file's name, its SHA-256). Every read
// checks the chunks it touches against them. A file that fails (flipped
// bits, cut short, grown) is removed at once and the read fails with a
// *CorruptError: no byte of it is served, and the controller's replication
// loop copies the image again from a peer.
package images

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ChunkSize is the unit of verification (and of transfer, in the API).
const ChunkSize = 1 << 20

// ErrNotFound: the store does not hold the file (yet).
var ErrNotFound = errors.New("image bytes are not in this store")

// InputError is bytes refused for what they are (size, hash or format
// not as declared), as opposed to a failure of the store.
type InputError struct{ Msg string }

func (e *InputError) Error() string { return e.Msg }

func inputErrorf(format string, args ...any) error {
	return &InputError{Msg: fmt.Sprintf(format, args...)}
}

// CorruptError is a stored file that failed verification; it was removed.
type CorruptError struct {
	SHA256 string
	Offset int64 // where the bad chunk starts (-1: the whole file)
	Reason string
}

func (e *CorruptError) Error() string {
	if e.Offset < 0 {
		return fmt.Sprintf("stored copy of image %s failed verification (%s) and was removed", e.SHA256, e.Reason)
	}
	return fmt.Sprintf("stored copy of image %s failed verification (%s in the chunk at offset %d) and was removed", e.SHA256, e.Reason, e.Offset)
}

// ValidSHA256 says whether s is a lowercase hex SHA-256.
func ValidSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Store is one directory of image files. Its methods are safe for
// concurrent use.
type Store struct {
	dir string
	log *slog.Logger

	mu sync.Mutex
	// sums are the verified chunk sums of each file.
	sums map[string]*fileSums
	// pins keep files from GC (imports not yet recorded).
	pins map[string]int
	// copying marks the partial files a Partial has open.
	copying map[string]bool
	// vmu serialises the first verification of files (hashing a whole
	// file once, not once per concurrent reader).
	vmu sync.Mutex
}

type fileSums struct {
	size   int64
	chunks [][sha256.Size]byte
}

// Open opens (creating) the store in dir and drops imports a previous
// process left unfinished.
func Open(dir string, lg *slog.Logger) (*Store, error) {
	if lg == nil {
		lg = slog.Default()
	}
	if dir == "" {
		return nil, errors.New("image store: no directory given")
	}
	for _, d := range []string{"sha256", "partial", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	tmp := filepath.Join(dir, "tmp")
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	for _, e := range ents {
		os.RemoveAll(filepath.Join(tmp, e.Name()))
	}
	return &Store{dir: dir, log: lg, sums: map[string]*fileSums{}, pins: map[string]int{}, copying: map[string]bool{}}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Path is where the file of sha lives (whether or not it is there).
func (s *Store) Path(sha string) string { return filepath.Join(s.dir, "sha256", sha[:2], sha) }

func (s *Store) partialPath(sha string) string { return filepath.Join(s.dir, "partial", sha) }

func checkSHA(sha string) error {
	if !ValidSHA256(sha) {
		return inputErrorf("%.80q is not a sha256 (64 lowercase hex digits)", sha)
	}
	return nil
}

// Has says whether the store holds the complete file of sha.
func (s *Store) Has(sha string) bool {
	if !ValidSHA256(sha) {
		return false
	}
	fi, err := os.Stat(s.Path(sha))
	return err == nil && fi.Mode().IsRegular()
}

// Size is the size of the stored file of sha.
func (s *Store) Size(sha string) (int64, error) {
	if err := checkSHA(sha); err != nil {
		return 0, err
	}
	fi, err := os.Stat(s.Path(sha))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Remove deletes the file of sha and any partial copy of it.
func (s *Store) Remove(sha string) error {
	if err := checkSHA(sha); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.sums, sha)
	s.mu.Unlock()
	err := os.Remove(s.Path(sha))
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if perr := s.removePartial(sha); perr != nil && err == nil {
		err = perr
	}
	return err
}

func (s *Store) removePartial(sha string) error {
	s.mu.Lock()
	busy := s.copying[sha]
	s.mu.Unlock()
	if busy {
		return nil // its Partial decides
	}
	err := os.Remove(s.partialPath(sha))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// Pin keeps the file of sha from GC until the returned func is called
// (an import between storing its bytes and its record being applied).
func (s *Store) Pin(sha string) (unpin func()) {
	s.mu.Lock()
	s.pins[sha]++
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.pins[sha]--; s.pins[sha] <= 0 {
				delete(s.pins, sha)
			}
			s.mu.Unlock()
		})
	}
}

// Pinned says whether sha is pinned.
func (s *Store) Pinned(sha string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pins[sha] > 0
}

// Entry is a stored file.
type Entry struct {
	SHA256  string
	Size    int64
	ModTime time.Time
}

// List returns the complete files the store holds.
func (s *Store) List() ([]Entry, error) {
	var out []Entry
	root := filepath.Join(s.dir, "sha256")
	prefixes, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	for _, p := range prefixes {
		if !p.IsDir() || len(p.Name()) != 2 {
			continue
		}
		files, err := os.ReadDir(filepath.Join(root, p.Name()))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			name := f.Name()
			if !ValidSHA256(name) || name[:2] != p.Name() || !f.Type().IsRegular() {
				continue
			}
			fi, err := f.Info()
			if err != nil {
				continue // removed meanwhile
			}
			out = append(out, Entry{SHA256: name, Size: fi.Size(), ModTime: fi.ModTime()})
		}
	}
	return out, nil
}

// Partials lists the SHA-256s of partial copies.
func (s *Store) Partials() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "partial"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if ValidSHA256(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// GC removes the files and partial copies keep does not want, unless
// pinned or, for complete files, changed less than grace ago (an import
// whose record is still on its way). It returns what it removed.
func (s *Store) GC(keep func(sha string) bool, grace time.Duration) ([]string, error) {
	ents, err := s.List()
	if err != nil {
		return nil, err
	}
	var removed []string
	now := time.Now()
	for _, e := range ents {
		if keep(e.SHA256) || s.Pinned(e.SHA256) || now.Sub(e.ModTime) < grace {
			continue
		}
		if err := s.Remove(e.SHA256); err != nil {
			return removed, err
		}
		removed = append(removed, e.SHA256)
	}
	parts, err := s.Partials()
	if err != nil {
		return removed, err
	}
	for _, sha := range parts {
		if keep(sha) || s.Pinned(sha) {
			continue
		}
		if err := s.removePartial(sha); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// Expect is what an import declares about its bytes.
type Expect struct {
	// Size must match when > 0.
	Size int64
	// SHA256 must match when not "".
	SHA256 string
	// Check, when set, inspects the complete bytes before they are
	// stored (the format); its error refuses them.
	Check func(r io.ReaderAt, size int64) error
}

// Info is a stored file.
type Info struct {
	SHA256 string
	Size   int64
}

// Put stores the bytes r yields, all or nothing. An error of r is
// returned as it is; bytes not as want declares give an *InputError.
// Nothing is left behind on failure.
func (s *Store) Put(r io.Reader, want Expect) (Info, error) {
	if want.SHA256 != "" {
		if err := checkSHA(want.SHA256); err != nil {
			return Info{}, err
		}
	}
	f, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "import-*")
	if err != nil {
		return Info{}, fmt.Errorf("image store: %w", err)
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	h := sha256.New()
	cs := &chunkSummer{h: sha256.New()}
	src := r
	if want.Size > 0 {
		src = io.LimitReader(r, want.Size+1) // one more: a longer stream is refused
	}
	n, err := io.CopyBuffer(io.MultiWriter(fileWriter{f}, h, cs), readerOnly{src}, make([]byte, ChunkSize))
	if err != nil {
		var we *writeError
		if errors.As(err, &we) {
			return Info{}, fmt.Errorf("image store: %w", we.err)
		}
		return Info{}, err
	}
	switch {
	case n == 0:
		return Info{}, inputErrorf("the image is empty")
	case want.Size > 0 && n > want.Size:
		return Info{}, inputErrorf("more bytes came than the %d the import declared", want.Size)
	case want.Size > 0 && n != want.Size:
		return Info{}, inputErrorf("%d bytes came, the import declared %d: the upload was cut short", n, want.Size)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if want.SHA256 != "" && sum != want.SHA256 {
		return Info{}, inputErrorf("the bytes have sha256 %s, the import declared %s: the file changed or was damaged on the way", sum, want.SHA256)
	}
	if want.Check != nil {
		if err := want.Check(f, n); err != nil {
			return Info{}, &InputError{Msg: err.Error()}
		}
	}
	if err := s.install(f, tmp, sum); err != nil {
		return Info{}, err
	}
	done = true
	s.mu.Lock()
	s.sums[sum] = cs.result(n)
	s.mu.Unlock()
	return Info{SHA256: sum, Size: n}, nil
}

// readerOnly hides WriterTo/ReaderFrom so that CopyBuffer uses its buffer
// and the MultiWriter (write errors are then told from read errors).
type readerOnly struct{ r io.Reader }

func (r readerOnly) Read(p []byte) (int, error) { return r.r.Read(p) }

// writeError marks a failure to write the file (not of the source).
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// install syncs f (at tmp), closes it and renames it to the file of sha,
// syncing the directory. It closes f either way.
func (s *Store) install(f *os.File, tmp, sha string) error {
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("image store: sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	dest := s.Path(sha)
	if err := os.MkdirAll(filepath.Dir(dest), 0o700); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	// A file already there under this name may be one found corrupt but
	// not yet read: the fresh, verified bytes replace it.
	if err := os.Rename(tmp, dest); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	if err := syncDir(filepath.Dir(dest)); err != nil {
		return fmt.Errorf("image store: sync directory: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// chunkSummer is a writer that hashes each ChunkSize piece of what it is
// given.
type chunkSummer struct {
	h      hashWriter
	n      int
	chunks [][sha256.Size]byte
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
	Reset()
}

func (c *chunkSummer) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		k := min(len(p), ChunkSize-c.n)
		c.h.Write(p[:k])
		c.n += k
		p = p[k:]
		if c.n == ChunkSize {
			c.flush()
		}
	}
	return total, nil
}

func (c *chunkSummer) flush() {
	var s [sha256.Size]byte
	copy(s[:], c.h.Sum(nil))
	c.chunks = append(c.chunks, s)
	c.h.Reset()
	c.n = 0
}

func (c *chunkSummer) result(size int64) *fileSums {
	if c.n > 0 {
		c.flush()
	}
	return &fileSums{size: size, chunks: c.chunks}
}

// fileWriter makes f's write errors recognisable in Put.
type fileWriter struct{ f *os.File }

func (w fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		err = &writeError{err}
	}
	return n, err
}

// hashFile reads the whole of f, returning its SHA-256 and chunk sums.
func hashFile(f *os.File, size int64) (string, *fileSums, error) {
	h := sha256.New()
	cs := &chunkSummer{h: sha256.New()}
	n, err := io.CopyBuffer(io.MultiWriter(h, cs), readerOnly{io.NewSectionReader(f, 0, size)}, make([]byte, ChunkSize))
	if err != nil {
		return "", nil, err
	}
	if n != size {
		return "", nil, fmt.Errorf("read %d of %d bytes", n, size)
	}
	return hex.EncodeToString(h.Sum(nil)), cs.result(size), nil
}
