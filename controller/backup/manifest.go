package backup

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Manifests as bytes. A manifest is stored, named and sent as the
// deterministic encoding of a yunchi.v1.BackupManifest, which for this
// message is fixed by its contents (it is what
// proto.MarshalOptions{Deterministic: true} writes; a test holds the two
// together):
//
//	0x08 varint(size_bytes)   left out for an empty disk
//	0x10 varint(chunk_size)   always ChunkSize
//	0x1a 0x20 <32 bytes>      a chunk's sha256, once per chunk, in order
//
// So a manifest is checked, read and written as a stream of 34-byte
// records and never held whole: a 64 TiB disk's is 570 MB. Anything else
// that would decode to the same message (fields out of order, unknown
// fields, varints longer than needed) is refused: its sha256 would not be
// the manifest's name.

const (
	// MaxDiskBytes is the largest disk a manifest describes (64 TiB, the
	// largest disk or volume a VM may have).
	MaxDiskBytes = 64 << 40
	// chunkRecord is the encoding of one chunk's entry: tag, length, sha256.
	chunkRecord = 2 + sha256.Size
	// MaxManifestBytes is the length of the manifest of a MaxDiskBytes
	// disk (its head is 13 bytes: two tags, varints of 7 and 4 bytes): the
	// longest manifest a repository takes.
	MaxManifestBytes = 13 + MaxDiskBytes/ChunkSize*chunkRecord
	// statCache bounds the chunks whose size a manifest's check remembers
	// (a disk's holes all name the zero chunk): 64 Ki entries, some 5 MiB.
	statCache = 1 << 16
)

// chunkCount is the number of chunks of a disk of size bytes.
func chunkCount(size int64) int64 { return (size + ChunkSize - 1) / ChunkSize }

// manifestHead is the encoding of a manifest's fields before its chunks.
func manifestHead(size int64) []byte {
	var b []byte
	if size != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(size))
	}
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	return protowire.AppendVarint(b, ChunkSize)
}

// ManifestLen is the length of the encoding of the manifest of a disk of
// size bytes (0 <= size <= MaxDiskBytes).
func ManifestLen(size int64) int64 {
	return int64(len(manifestHead(size))) + chunkCount(size)*chunkRecord
}

// EncodeManifest is the deterministic encoding of m, whose sha256 names it.
func EncodeManifest(m *yunchiv1.BackupManifest) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

// notCanonical is the error for bytes that are not a manifest's encoding.
func notCanonical(format string, args ...any) error {
	return errorf(ErrInvalid, "the manifest is not the deterministic encoding of a BackupManifest: "+format, args...)
}

// manifestScanner reads a manifest's encoding from a stream, a chunk at a
// time, checking its shape as it goes: the chunk size, a disk size of 0
// to MaxDiskBytes, as many chunks as that size needs, each named by 32
// bytes, and nothing else (errors are ErrInvalid). It does not look at
// the chunks themselves.
type manifestScanner struct {
	br *bufio.Reader
	// Size is the disk's size; Chunks how many chunks it lists.
	Size   int64
	Chunks int64
	next   int64
	rec    [chunkRecord]byte
}

// scanManifest reads and checks a manifest's head from r.
func scanManifest(r io.Reader) (*manifestScanner, error) {
	s := &manifestScanner{br: bufio.NewReaderSize(r, 64<<10)}
	var head []byte
	var size, chunkSize uint64
	sawSize, sawChunkSize := false, false
	for {
		b, err := s.br.Peek(1)
		if errors.Is(err, io.EOF) || (err == nil && b[0] == 0x1a) {
			break
		}
		if err != nil {
			return nil, err
		}
		at := len(head)
		tag, _ := s.br.ReadByte()
		head = append(head, tag)
		var v uint64
		for k := 0; ; k++ {
			c, err := s.br.ReadByte()
			if errors.Is(err, io.EOF) {
				return nil, notCanonical("it ends inside its head")
			}
			if err != nil {
				return nil, err
			}
			if k == 10 {
				return nil, notCanonical("a varint of its head is longer than 10 bytes")
			}
			head = append(head, c)
			v |= uint64(c&0x7f) << (7 * k)
			if c < 0x80 {
				break
			}
		}
		switch {
		case tag == 0x08 && !sawSize && !sawChunkSize:
			size, sawSize = v, true
		case tag == 0x10 && !sawChunkSize:
			chunkSize, sawChunkSize = v, true
		default:
			return nil, notCanonical("byte %d of its head is the tag 0x%02x", at, tag)
		}
	}
	s.Size = int64(size)
	switch {
	case chunkSize != ChunkSize:
		return nil, errorf(ErrInvalid, "the manifest's chunk size is %d: this repository's chunks are %d bytes", int64(chunkSize), ChunkSize)
	case s.Size < 0:
		return nil, errorf(ErrInvalid, "the manifest's disk size is negative (%d)", s.Size)
	case s.Size > MaxDiskBytes:
		return nil, errorf(ErrInvalid, "the manifest's disk is %d bytes: a repository takes disks of at most %d (64 TiB)", s.Size, int64(MaxDiskBytes))
	case !bytes.Equal(head, manifestHead(s.Size)):
		return nil, notCanonical("its head is % x, not % x", head, manifestHead(s.Size))
	}
	s.Chunks = chunkCount(s.Size)
	return s, nil
}

// Next returns the next chunk's hash; ok is false after the last one,
// once it checked that nothing follows it.
func (s *manifestScanner) Next() (h Hash, ok bool, err error) {
	i := s.next
	if i == s.Chunks {
		switch b, err := s.br.Peek(1); {
		case errors.Is(err, io.EOF):
			return h, false, nil
		case err != nil:
			return h, false, err
		case b[0] == 0x1a:
			return h, false, errorf(ErrInvalid, "the manifest lists more than %d chunks: a disk of %d bytes has %d", s.Chunks, s.Size, s.Chunks)
		default:
			return h, false, notCanonical("byte 0x%02x follows its last chunk", b[0])
		}
	}
	short := func() error {
		return errorf(ErrInvalid, "the manifest lists %d chunks: a disk of %d bytes has %d", i, s.Size, s.Chunks)
	}
	if _, err := io.ReadFull(s.br, s.rec[:2]); err != nil {
		if errors.Is(err, io.EOF) {
			return h, false, short()
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return h, false, notCanonical("it ends inside chunk %d", i)
		}
		return h, false, err
	}
	switch {
	case s.rec[0] != 0x1a:
		return h, false, notCanonical("chunk %d starts with 0x%02x", i, s.rec[0])
	case s.rec[1] >= 0x80:
		return h, false, errorf(ErrInvalid, "chunk %d of the manifest is named by more than 127 bytes: a sha256 is 32", i)
	case s.rec[1] != sha256.Size:
		return h, false, errorf(ErrInvalid, "chunk %d of the manifest is named by %d bytes: a sha256 is 32", i, s.rec[1])
	}
	if _, err := io.ReadFull(s.br, s.rec[2:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return h, false, notCanonical("it ends inside chunk %d", i)
		}
		return h, false, err
	}
	s.next++
	return Hash(s.rec[2:]), true, nil
}

// ManifestWriter takes a manifest's encoding in pieces, as PutManifest's
// stream brings it, into a temporary file of the repository: no copy of
// it is held in memory, and nothing of it is in manifests/ until Commit
// has checked it. Its methods are not safe for concurrent use.
type ManifestWriter struct {
	r            *Repo
	f            *os.File
	name         Hash
	length, n    int64
	h            hash.Hash
	closed, kept bool
}

// CreateManifest starts the manifest whose encoding is length bytes long
// and hashes to name. A length no manifest has (over MaxManifestBytes, a
// 64 TiB disk's) is refused (ErrInvalid). Commit or Abort it.
func (r *Repo) CreateManifest(name Hash, length int64) (*ManifestWriter, error) {
	switch min0 := ManifestLen(0); {
	case length < min0:
		return nil, errorf(ErrInvalid, "the manifest is said to be %d bytes long: a manifest has at least %d", length, min0)
	case length > MaxManifestBytes:
		return nil, errorf(ErrInvalid, "the manifest is said to be %d bytes long: at most %d (the manifest of a 64 TiB disk); nothing stored", length, int64(MaxManifestBytes))
	}
	f, err := os.CreateTemp(r.sub("tmp"), "manifest-*")
	if err != nil {
		return nil, fmt.Errorf("store manifest %s: %w", name, err)
	}
	return &ManifestWriter{r: r, f: f, name: name, length: length, h: sha256.New()}, nil
}

// Write adds the next piece. Bytes past the length said are refused
// (ErrInvalid).
func (w *ManifestWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, fmt.Errorf("manifest %s: written after it was committed or aborted", w.name)
	}
	if int64(len(p)) > w.length-w.n {
		return 0, errorf(ErrInvalid, "the manifest's bytes run past the %d it was said to have; nothing stored", w.length)
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("store manifest %s: %w", w.name, err)
	}
	return n, nil
}

// Received is how many bytes were written.
func (w *ManifestWriter) Received() int64 { return w.n }

// Commit checks the manifest and stores it under its name, which it
// returns (hex): it must be as long as said, hash to its name, be the
// deterministic encoding of a well-formed manifest (see manifestScanner),
// list chunks of the size their places need, and the repository must hold
// every one (else ErrMissingChunks). Every chunk listed is touched, so GC
// keeps it a grace period from now (doc.go). Nothing is stored unless all
// of that holds; the writer is done either way.
func (w *ManifestWriter) Commit() (string, error) {
	defer w.Abort()
	if w.closed {
		return "", fmt.Errorf("manifest %s: committed after it was committed or aborted", w.name)
	}
	if w.n != w.length {
		return "", errorf(ErrInvalid, "the manifest ended after %d of its %d bytes; nothing stored", w.n, w.length)
	}
	if got := Hash(w.h.Sum(nil)); got != w.name {
		return "", errorf(ErrInvalid, "the manifest's %d bytes hash to %s, not to its name %s; nothing stored", w.n, got, w.name)
	}
	if err := w.f.Sync(); err != nil {
		return "", fmt.Errorf("store manifest %s: %w", w.name, err)
	}
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		return "", fmt.Errorf("store manifest %s: %w", w.name, err)
	}
	s, err := scanManifest(w.f)
	if err != nil {
		return "", err
	}
	r := w.r
	r.sweep.RLock()
	defer r.sweep.RUnlock()
	if err := r.checkChunks(s); err != nil {
		return "", err
	}
	if err := w.f.Close(); err != nil {
		return "", fmt.Errorf("store manifest %s: %w", w.name, err)
	}
	w.closed = true
	// Absent, or damaged, or the same: replaced whole.
	if err := os.Rename(w.f.Name(), r.manifestPath(w.name)); err != nil {
		return "", fmt.Errorf("store manifest %s: %w", w.name, err)
	}
	w.kept = true
	if err := syncDir(filepath.Dir(r.manifestPath(w.name))); err != nil {
		return "", fmt.Errorf("store manifest %s: %w", w.name, err)
	}
	return w.name.String(), nil
}

// checkChunks reads the rest of s and checks that the repository holds
// every chunk it lists, of the size its place needs, touching each. The
// caller holds the sweep lock shared.
func (r *Repo) checkChunks(s *manifestScanner) error {
	now := time.Now()
	sizes := map[Hash]int64{} // -1: missing
	var missing, first int64 = 0, -1
	var firstHash Hash
	for i := int64(0); ; i++ {
		h, ok, err := s.Next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		size, seen := sizes[h]
		if !seen {
			p := r.chunkPath(h)
			st, err := os.Stat(p)
			switch {
			case notExist(err):
				size = -1
			case err != nil:
				return fmt.Errorf("look for chunk %s: %w", h, err)
			default:
				// Touched: GC keeps it a grace period from now (doc.go).
				if err := touch(p, now); err != nil {
					return fmt.Errorf("look for chunk %s: %w", h, err)
				}
				size = st.Size()
			}
			if len(sizes) >= statCache {
				clear(sizes)
			}
			sizes[h] = size
		}
		if size < 0 {
			if missing++; first < 0 {
				first, firstHash = i, h
			}
			continue
		}
		if want := chunkLen(s.Size, int(i)); size != want {
			return errorf(ErrInvalid, "chunk %d of the manifest (%s) holds %d bytes: chunk %d of a disk of %d bytes holds %d", i, h, size, i, s.Size, want)
		}
	}
	if missing > 0 {
		return errorf(ErrMissingChunks, "%d of the manifest's %d chunks are not in the backup repository (the first: chunk %d, %s): send them, then put the manifest again",
			missing, s.Chunks, first, firstHash)
	}
	return nil
}

// Abort drops what was written unless Commit stored it. It may be called
// any number of times, after Commit too.
func (w *ManifestWriter) Abort() {
	if w.kept {
		return
	}
	if !w.closed {
		w.closed = true
		w.f.Close()
	}
	os.Remove(w.f.Name())
	w.kept = true // nothing left to drop
}

// PutManifest stores an encoded manifest whole: CreateManifest, Write and
// Commit, named by the sha256 of encoded.
func (r *Repo) PutManifest(encoded []byte) (string, error) {
	w, err := r.CreateManifest(HashOf(encoded), int64(len(encoded)))
	if err != nil {
		return "", err
	}
	defer w.Abort()
	if _, err := w.Write(encoded); err != nil {
		return "", err
	}
	return w.Commit()
}

// ManifestReader reads a stored manifest's encoding, as GetManifest
// streams it. At the end, Read returns a *DamageError (errors.Is
// ErrDamaged) in place of io.EOF if the bytes read do not hash to the
// manifest's name: a reader that gets io.EOF got the manifest.
type ManifestReader struct {
	f          *os.File
	name       Hash
	size, read int64
	h          hash.Hash
}

// OpenManifest opens the manifest named sha (hex) for reading. It is
// ErrNotFound when absent, a *DamageError when longer than any manifest.
func (r *Repo) OpenManifest(sha string) (*ManifestReader, error) {
	h, err := ParseHash(sha)
	if err != nil {
		return nil, errorf(ErrInvalid, "manifest name %s", err)
	}
	f, size, err := r.openManifest(h)
	if err != nil {
		return nil, err
	}
	return &ManifestReader{f: f, name: h, size: size, h: sha256.New()}, nil
}

func (r *Repo) openManifest(h Hash) (*os.File, int64, error) {
	f, err := os.Open(r.manifestPath(h))
	if notExist(err) {
		return nil, 0, errorf(ErrNotFound, "manifest %s is not in the backup repository", h)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read manifest %s: %w", h, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("read manifest %s: %w", h, err)
	}
	if st.Size() > MaxManifestBytes {
		f.Close()
		return nil, 0, &DamageError{What: "manifest", Hash: h.String(), Reason: fmt.Sprintf("it is %d bytes long, more than any manifest", st.Size())}
	}
	return f, st.Size(), nil
}

// Size is the manifest's length when it was opened.
func (m *ManifestReader) Size() int64 { return m.size }

func (m *ManifestReader) Read(p []byte) (int, error) {
	n, err := m.f.Read(p)
	m.h.Write(p[:n])
	m.read += int64(n)
	if errors.Is(err, io.EOF) {
		if got := Hash(m.h.Sum(nil)); got != m.name {
			return n, &DamageError{What: "manifest", Hash: m.name.String(), Reason: fmt.Sprintf("its %d bytes hash to %s", m.read, got)}
		}
	}
	return n, err
}

func (m *ManifestReader) Close() error { return m.f.Close() }

// ManifestInfo describes a manifest read by ScanManifest.
type ManifestInfo struct {
	SizeBytes int64
	Chunks    int64
}

// ScanManifest reads the manifest named sha (hex) without holding it,
// calling fn with each chunk's hash in order, and checks that its bytes
// hash to its name and have a manifest's shape. The error is fn's, or
// ErrNotFound, or a *DamageError (errors.Is ErrDamaged), which may come
// after fn saw chunks of the manifest: a caller that must not act on a
// damaged manifest's chunks acts after it returns nil.
func (r *Repo) ScanManifest(sha string, fn func(i int64, h Hash) error) (ManifestInfo, error) {
	h, err := ParseHash(sha)
	if err != nil {
		return ManifestInfo{}, errorf(ErrInvalid, "manifest name %s", err)
	}
	return r.scanStored(h, fn)
}

// scanStored scans the stored manifest named h (see ScanManifest).
func (r *Repo) scanStored(h Hash, fn func(i int64, c Hash) error) (ManifestInfo, error) {
	var info ManifestInfo
	f, size, err := r.openManifest(h)
	if err != nil {
		return info, err
	}
	defer f.Close()
	hr := sha256.New()
	in := io.TeeReader(f, hr)
	damaged := func(reason string) error { return &DamageError{What: "manifest", Hash: h.String(), Reason: reason} }
	// badBytes: the manifest does not decode or does not check out; its
	// hash says whether it is damaged or was never a manifest (only
	// PutManifest writes manifests/, so that would be someone else's).
	badBytes := func(err error) error {
		if _, cerr := io.Copy(hr, f); cerr != nil {
			return fmt.Errorf("read manifest %s: %w", h, cerr)
		}
		if got := Hash(hr.Sum(nil)); got != h {
			return damaged(fmt.Sprintf("its %d bytes hash to %s", size, got))
		}
		return damaged(fmt.Sprintf("it does not decode: %v", err))
	}
	s, err := scanManifest(in)
	if err != nil {
		if errors.Is(err, ErrInvalid) {
			return info, badBytes(err)
		}
		return info, fmt.Errorf("read manifest %s: %w", h, err)
	}
	info = ManifestInfo{SizeBytes: s.Size, Chunks: s.Chunks}
	for i := int64(0); ; i++ {
		c, ok, err := s.Next()
		if errors.Is(err, ErrInvalid) {
			return info, badBytes(err)
		}
		if err != nil {
			return info, fmt.Errorf("read manifest %s: %w", h, err)
		}
		if !ok {
			break
		}
		if fn != nil {
			if err := fn(i, c); err != nil {
				return info, err
			}
		}
	}
	if got := Hash(hr.Sum(nil)); got != h {
		return info, damaged(fmt.Sprintf("its %d bytes hash to %s", size, got))
	}
	return info, nil
}

// Manifest reads the manifest named sha (hex) whole, checking that its
// bytes hash to that name and have a manifest's shape. It holds the
// manifest's chunks in memory (some 56 bytes a chunk): for large disks,
// ScanManifest.
func (r *Repo) Manifest(sha string) (*yunchiv1.BackupManifest, error) {
	var chunks [][]byte
	info, err := r.ScanManifest(sha, func(_ int64, h Hash) error {
		chunks = append(chunks, h[:])
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &yunchiv1.BackupManifest{SizeBytes: info.SizeBytes, ChunkSize: ChunkSize, Chunks: chunks}, nil
}
