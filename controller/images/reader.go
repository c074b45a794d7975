package images

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// Reader reads one stored file, verifying every chunk it touches (see
// the package comment). It is an io.Reader from the offset Open was
// given, and an io.ReaderAt.
type Reader struct {
	s    *Store
	sha  string
	f    *os.File
	sums *fileSums
	off  int64
	buf  []byte
}

// Open opens the file of sha for reading from offset (0 to its size). A
// file not verified since this process started is hashed whole first: a
// mismatch removes it and returns a *CorruptError. ErrNotFound: the store
// lacks it.
func (s *Store) Open(sha string, offset int64) (*Reader, error) {
	if err := checkSHA(sha); err != nil {
		return nil, err
	}
	f, err := os.Open(s.Path(sha))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	sums, err := s.verified(sha, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if offset < 0 || offset > sums.size {
		f.Close()
		return nil, inputErrorf("offset %d is outside image %s (%d bytes)", offset, sha, sums.size)
	}
	return &Reader{s: s, sha: sha, f: f, sums: sums, off: offset}, nil
}

// Verify hashes the whole stored file of sha now (whatever is known of
// it): nil when it is intact; a *CorruptError (the file removed) when not.
func (s *Store) Verify(sha string) error {
	if err := checkSHA(sha); err != nil {
		return err
	}
	f, err := os.Open(s.Path(sha))
	if errors.Is(err, fs.ErrNotExist) {
		return ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	defer f.Close()
	s.mu.Lock()
	delete(s.sums, sha)
	s.mu.Unlock()
	_, err = s.verified(sha, f)
	return err
}

// verified returns the chunk sums of the file of sha (open as f), hashing
// the whole file if they are not known yet.
func (s *Store) verified(sha string, f *os.File) (*fileSums, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	s.mu.Lock()
	sums := s.sums[sha]
	s.mu.Unlock()
	if sums == nil {
		s.vmu.Lock()
		defer s.vmu.Unlock()
		s.mu.Lock()
		sums = s.sums[sha]
		s.mu.Unlock()
	}
	if sums == nil {
		got, fresh, err := hashFile(f, fi.Size())
		if err != nil {
			return nil, fmt.Errorf("image store: verify %s: %w", sha, err)
		}
		if got != sha {
			return nil, s.corrupt(sha, f, -1, "its sha256 is "+got)
		}
		s.mu.Lock()
		s.sums[sha] = fresh
		s.mu.Unlock()
		sums = fresh
	}
	if fi.Size() != sums.size {
		return nil, s.corrupt(sha, f, -1, fmt.Sprintf("%d bytes, %d were stored", fi.Size(), sums.size))
	}
	return sums, nil
}

// corrupt removes the file of sha if it is still the one open as f (not
// already replaced by a fresh copy) and returns the error saying so.
func (s *Store) corrupt(sha string, f *os.File, off int64, reason string) error {
	open, err1 := f.Stat()
	cur, err2 := os.Stat(s.Path(sha))
	if err1 == nil && err2 == nil && os.SameFile(open, cur) {
		s.mu.Lock()
		delete(s.sums, sha)
		s.mu.Unlock()
		os.Remove(s.Path(sha))
	}
	e := &CorruptError{SHA256: sha, Offset: off, Reason: reason}
	s.log.Warn("image store: removed a damaged file; it will be copied again", "sha256", sha, "reason", reason, "offset", off)
	return e
}

// Size is the file's size.
func (r *Reader) Size() int64 { return r.sums.size }

// Close closes the file.
func (r *Reader) Close() error { return r.f.Close() }

// Read reads on from where the last Read (or Open's offset) stopped.
func (r *Reader) Read(p []byte) (int, error) {
	if r.off >= r.sums.size {
		return 0, io.EOF
	}
	n, err := r.ReadAt(p, r.off)
	r.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// ReadAt reads len(p) bytes at off, each chunk they lie in verified.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, inputErrorf("negative offset %d", off)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= r.sums.size {
			return n, io.EOF
		}
		chunk, err := r.chunk(pos / ChunkSize)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], chunk[pos%ChunkSize:])
	}
	return n, nil
}

// chunk reads and verifies chunk i.
func (r *Reader) chunk(i int64) ([]byte, error) {
	if r.buf == nil {
		r.buf = make([]byte, ChunkSize)
	}
	start := i * ChunkSize
	size := min(ChunkSize, r.sums.size-start)
	b := r.buf[:size]
	if _, err := r.f.ReadAt(b, start); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, r.s.corrupt(r.sha, r.f, start, "the file is shorter than stored")
		}
		return nil, fmt.Errorf("image store: read %s: %w", r.sha, err)
	}
	if int(i) >= len(r.sums.chunks) {
		return nil, r.s.corrupt(r.sha, r.f, start, "no checksum for the chunk")
	}
	sum := sha256.Sum256(b)
	if !bytes.Equal(sum[:], r.sums.chunks[i][:]) {
		return nil, r.s.corrupt(r.sha, r.f, start, "sha256 mismatch")
	}
	return b, nil
}
