package images

import (
	"fmt"
	"os"
)

// Partial is a copy of an image from a peer, in DIR/partial until it is
// complete. A copy cut off midway stays there: the next Resume of the
// same image carries on from its end. Commit verifies the whole file's
// SHA-256 before it enters the store; a mismatch discards it.
type Partial struct {
	s    *Store
	sha  string
	size int64
	f    *os.File
	off  int64
	done bool
}

// Resume opens the partial copy of image sha (size bytes), creating it
// empty, positioned at its end. One copy of an image at a time.
func (s *Store) Resume(sha string, size int64) (*Partial, error) {
	if err := checkSHA(sha); err != nil {
		return nil, err
	}
	if size <= 0 {
		return nil, inputErrorf("image size %d is not positive", size)
	}
	s.mu.Lock()
	if s.copying[sha] {
		s.mu.Unlock()
		return nil, fmt.Errorf("a copy of image %s is already in progress", sha)
	}
	s.copying[sha] = true
	s.mu.Unlock()
	release := func() {
		s.mu.Lock()
		delete(s.copying, sha)
		s.mu.Unlock()
	}
	f, err := os.OpenFile(s.partialPath(sha), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		release()
		return nil, fmt.Errorf("image store: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		release()
		return nil, fmt.Errorf("image store: %w", err)
	}
	off := fi.Size()
	if off > size {
		// Longer than the image: not a prefix of it. Start over.
		if err := f.Truncate(0); err != nil {
			f.Close()
			release()
			return nil, fmt.Errorf("image store: %w", err)
		}
		off = 0
	}
	return &Partial{s: s, sha: sha, size: size, f: f, off: off}, nil
}

// Offset is how many bytes the copy holds: where to fetch from.
func (p *Partial) Offset() int64 { return p.off }

// Write appends b (the bytes at Offset).
func (p *Partial) Write(b []byte) (int, error) {
	if p.done {
		return 0, fmt.Errorf("copy of image %s is closed", p.sha)
	}
	if p.off+int64(len(b)) > p.size {
		return 0, inputErrorf("more bytes came than image %s has (%d)", p.sha, p.size)
	}
	n, err := p.f.WriteAt(b, p.off)
	p.off += int64(n)
	if err != nil {
		return n, fmt.Errorf("image store: %w", err)
	}
	return n, nil
}

// Commit moves the complete, verified copy into the store. A copy whose
// bytes do not hash to its name is discarded (*InputError): the next
// Resume starts from nothing.
func (p *Partial) Commit() error {
	if p.done {
		return fmt.Errorf("copy of image %s is closed", p.sha)
	}
	if p.off != p.size {
		return fmt.Errorf("copy of image %s is incomplete: %d of %d bytes", p.sha, p.off, p.size)
	}
	if err := p.f.Sync(); err != nil {
		return fmt.Errorf("image store: sync: %w", err)
	}
	got, sums, err := hashFile(p.f, p.size)
	if err != nil {
		return fmt.Errorf("image store: verify the copy of %s: %w", p.sha, err)
	}
	if got != p.sha {
		p.Discard()
		return inputErrorf("the copied bytes of image %s hash to %s: discarded", p.sha, got)
	}
	p.done = true
	defer p.release()
	if err := p.s.install(p.f, p.s.partialPath(p.sha), p.sha); err != nil {
		return err
	}
	p.s.mu.Lock()
	p.s.sums[p.sha] = sums
	p.s.mu.Unlock()
	return nil
}

// Close leaves the partial copy for a later Resume.
func (p *Partial) Close() error {
	if p.done {
		return nil
	}
	p.done = true
	defer p.release()
	return p.f.Close()
}

// Discard removes the partial copy.
func (p *Partial) Discard() error {
	if p.done {
		return nil
	}
	p.done = true
	defer p.release()
	p.f.Close()
	err := os.Remove(p.s.partialPath(p.sha))
	if os.IsNotExist(err) {
		return nil
	}
	return err
}

func (p *Partial) release() {
	p.s.mu.Lock()
	delete(p.s.copying, p.sha)
	p.s.mu.Unlock()
}
