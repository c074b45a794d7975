package images

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sumOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// filesUnder lists every regular file below dir (relative paths).
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

func readAll(t *testing.T, s *Store, sha string, off int64) ([]byte, error) {
	t.Helper()
	r, err := s.Open(sha, off)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// A file goes in whole, under its SHA-256 in DIR/sha256/ab/, and reads
// back from any offset.
func TestPutAndRead(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	data := randomBytes(2*ChunkSize+12345, 1)
	sha := sumOf(data)
	info, err := s.Put(bytes.NewReader(data), Expect{Size: int64(len(data)), SHA256: sha})
	if err != nil {
		t.Fatal(err)
	}
	if info.SHA256 != sha || info.Size != int64(len(data)) {
		t.Fatalf("Put = %+v", info)
	}
	if got := filesUnder(t, dir); len(got) != 1 || got[0] != filepath.Join("sha256", sha[:2], sha) {
		t.Fatalf("files %v", got)
	}
	if !s.Has(sha) || s.Has(sumOf([]byte("other"))) || s.Has("not-a-sha") {
		t.Fatal("Has is wrong")
	}
	if n, err := s.Size(sha); err != nil || n != int64(len(data)) {
		t.Fatalf("Size = %d, %v", n, err)
	}
	for _, off := range []int64{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 7, int64(len(data)) - 1, int64(len(data))} {
		got, err := readAll(t, s, sha, off)
		if err != nil || !bytes.Equal(got, data[off:]) {
			t.Fatalf("read from %d: %d bytes, %v", off, len(got), err)
		}
	}
	if _, err := s.Open(sha, int64(len(data))+1); err == nil {
		t.Fatal("an offset past the end was accepted")
	}
	if _, err := s.Open(sumOf([]byte("absent")), 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent: %v", err)
	}
	ents, err := s.List()
	if err != nil || len(ents) != 1 || ents[0].SHA256 != sha || ents[0].Size != int64(len(data)) {
		t.Fatalf("List = %v, %v", ents, err)
	}
	// The same bytes again: still one file.
	if _, err := s.Put(bytes.NewReader(data), Expect{}); err != nil {
		t.Fatal(err)
	}
	if got := filesUnder(t, dir); len(got) != 1 {
		t.Fatalf("files after a second put: %v", got)
	}
	if err := s.Remove(sha); err != nil || s.Has(sha) {
		t.Fatalf("Remove: %v", err)
	}
}

type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

// Bytes not as declared are refused with an *InputError, a failing source
// with its own error, and either way nothing is left in the store.
func TestPutRefusesAndLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	data := randomBytes(ChunkSize+5, 2)
	sha := sumOf(data)
	srcErr := errors.New("the client went away")
	for _, c := range []struct {
		name  string
		r     io.Reader
		want  Expect
		input bool   // an *InputError
		msg   string // in the message
	}{
		{"short", bytes.NewReader(data[:100]), Expect{Size: int64(len(data))}, true, "cut short"},
		{"long", bytes.NewReader(data), Expect{Size: 100}, true, "more bytes came than the 100"},
		{"sha mismatch", bytes.NewReader(data), Expect{SHA256: sumOf([]byte("x"))}, true, "the bytes have sha256 " + sha},
		{"bad sha", bytes.NewReader(data), Expect{SHA256: strings.ToUpper(sha)}, true, "is not a sha256"},
		{"empty", bytes.NewReader(nil), Expect{}, true, "empty"},
		{"format", bytes.NewReader(data), Expect{Check: func(io.ReaderAt, int64) error { return errors.New("not a disk") }}, true, "not a disk"},
		{"source", &failingReader{bytes.NewReader(data), srcErr}, Expect{}, false, srcErr.Error()},
	} {
		_, err := s.Put(c.r, c.want)
		var ie *InputError
		if err == nil || errors.As(err, &ie) != c.input || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v (input error: %v), want %q", c.name, err, errors.As(err, &ie), c.msg)
		}
		if !c.input && !errors.Is(err, srcErr) {
			t.Errorf("%s: the source's error is not returned as it is: %v", c.name, err)
		}
		if got := filesUnder(t, dir); len(got) != 0 {
			t.Fatalf("%s: left %v", c.name, got)
		}
	}
}

// Leftovers of an import a crash interrupted are dropped at start.
func TestOpenDropsUnfinishedImports(t *testing.T) {
	dir := t.TempDir()
	openStore(t, dir)
	if err := os.WriteFile(filepath.Join(dir, "tmp", "import-123"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	openStore(t, dir)
	if got := filesUnder(t, dir); len(got) != 0 {
		t.Fatalf("left %v", got)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// A byte flipped in a stored file is caught by the read of its chunk:
// the chunks before it are served, the bad one is not, and the file is
// removed (to be copied again).
func TestFlippedByteCaughtOnRead(t *testing.T) {
	s := openStore(t, t.TempDir())
	data := randomBytes(3*ChunkSize, 3)
	sha := sumOf(data)
	if _, err := s.Put(bytes.NewReader(data), Expect{}); err != nil {
		t.Fatal(err)
	}
	flipByte(t, s.Path(sha), ChunkSize+100)
	r, err := s.Open(sha, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	first := make([]byte, ChunkSize)
	if _, err := io.ReadFull(r, first); err != nil || !bytes.Equal(first, data[:ChunkSize]) {
		t.Fatalf("the intact first chunk: %v", err)
	}
	n, err := r.Read(make([]byte, ChunkSize))
	var ce *CorruptError
	if n != 0 || !errors.As(err, &ce) || ce.Offset != ChunkSize || ce.SHA256 != sha {
		t.Fatalf("the damaged chunk: %d bytes, %v", n, err)
	}
	if s.Has(sha) {
		t.Fatal("the damaged file is still in the store")
	}
}

// A file damaged while no controller ran (or cut short) is caught when
// first opened after start, before any byte is served.
func TestDamageFoundAtFirstOpenAfterStart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	a, b := randomBytes(ChunkSize+9, 4), randomBytes(2*ChunkSize, 5)
	for _, d := range [][]byte{a, b} {
		if _, err := s.Put(bytes.NewReader(d), Expect{}); err != nil {
			t.Fatal(err)
		}
	}
	flipByte(t, s.Path(sumOf(a)), 3)
	if err := os.Truncate(s.Path(sumOf(b)), ChunkSize); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir) // a restarted controller
	for _, sha := range []string{sumOf(a), sumOf(b)} {
		_, err := s2.Open(sha, 0)
		var ce *CorruptError
		if !errors.As(err, &ce) || ce.Offset != -1 {
			t.Fatalf("%s: %v", sha, err)
		}
		if s2.Has(sha) {
			t.Fatalf("%s is still in the store", sha)
		}
	}
	// An intact file verifies.
	c := randomBytes(100, 6)
	if _, err := s2.Put(bytes.NewReader(c), Expect{}); err != nil {
		t.Fatal(err)
	}
	if err := openStore(t, dir).Verify(sumOf(c)); err != nil {
		t.Fatal(err)
	}
}

// A peer copy cut off midway resumes from what it holds; the whole is
// verified before it enters the store, and a copy that does not match
// its name is discarded.
func TestResumeCopy(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	data := randomBytes(2*ChunkSize+77, 7)
	sha, size := sumOf(data), int64(len(data))

	p, err := s.Resume(sha, size)
	if err != nil || p.Offset() != 0 {
		t.Fatalf("Resume: %v, offset %d", err, p.Offset())
	}
	if _, err := s.Resume(sha, size); err == nil {
		t.Fatal("a second copy of the same image was let in")
	}
	if _, err := p.Write(data[:ChunkSize+3]); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err == nil {
		t.Fatal("an incomplete copy was committed")
	}
	p.Close() // the stream broke

	p, err = s.Resume(sha, size)
	if err != nil || p.Offset() != ChunkSize+3 {
		t.Fatalf("resume: %v, offset %d", err, p.Offset())
	}
	if _, err := p.Write(append(bytes.Clone(data[p.Offset():]), 'x')); err == nil {
		t.Fatal("more bytes than the image has were accepted")
	}
	p.Close()
	p, _ = s.Resume(sha, size)
	if _, err := p.Write(data[p.Offset():]); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(t, s, sha, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	if parts, _ := s.Partials(); len(parts) != 0 {
		t.Fatalf("partials left: %v", parts)
	}

	// Wrong bytes under a name: discarded whole.
	other := randomBytes(1000, 8)
	want := sumOf(randomBytes(1000, 9))
	p, err = s.Resume(want, 1000)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(other)
	var ie *InputError
	if err := p.Commit(); !errors.As(err, &ie) {
		t.Fatalf("mismatched copy: %v", err)
	}
	if s.Has(want) {
		t.Fatal("a mismatched copy entered the store")
	}
	p, err = s.Resume(want, 1000)
	if err != nil || p.Offset() != 0 {
		t.Fatalf("after a discarded copy: %v, offset %d", err, p.Offset())
	}
	p.Discard()
	if got := filesUnder(t, dir); len(got) != 1 {
		t.Fatalf("files %v, want the one image", got)
	}
}

// GC removes what is not wanted, but not what is pinned, recent, or being
// copied.
func TestGC(t *testing.T) {
	s := openStore(t, t.TempDir())
	var shas []string
	for i := range 4 {
		info, err := s.Put(bytes.NewReader(randomBytes(100, uint64(10+i))), Expect{})
		if err != nil {
			t.Fatal(err)
		}
		shas = append(shas, info.SHA256)
	}
	old := time.Now().Add(-time.Hour)
	for _, sha := range shas[:3] {
		os.Chtimes(s.Path(sha), old, old)
	}
	unpin := s.Pin(shas[1])
	partial := sumOf([]byte("partial"))
	p, _ := s.Resume(partial, 10)
	p.Write([]byte("abc"))
	p.Close()
	keep := func(sha string) bool { return sha == shas[0] }
	removed, err := s.GC(keep, time.Minute)
	if err != nil || len(removed) != 1 || removed[0] != shas[2] {
		t.Fatalf("GC removed %v, %v; want only %s", removed, err, shas[2])
	}
	if parts, _ := s.Partials(); len(parts) != 0 {
		t.Fatalf("unwanted partial kept: %v", parts)
	}
	unpin()
	if removed, _ := s.GC(keep, time.Minute); len(removed) != 1 || removed[0] != shas[1] {
		t.Fatalf("after unpinning: %v", removed)
	}
	if !s.Has(shas[0]) || !s.Has(shas[3]) {
		t.Fatal("GC removed a wanted or recent file")
	}
}
