package backup

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func openRepo(t testing.TB) *Repo {
	t.Helper()
	r, err := Open(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// chunkData is n bytes that differ with seed.
func chunkData(seed uint64, n int) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func mustPut(t testing.TB, r *Repo, data []byte) Hash {
	t.Helper()
	h := HashOf(data)
	if _, err := r.PutChunk(h, data); err != nil {
		t.Fatal(err)
	}
	return h
}

// disk stores a disk of the given chunks' bytes and returns its manifest.
func disk(t testing.TB, r *Repo, chunks ...[]byte) *yunchiv1.BackupManifest {
	t.Helper()
	m := &yunchiv1.BackupManifest{ChunkSize: ChunkSize}
	for _, c := range chunks {
		h := mustPut(t, r, c)
		m.Chunks = append(m.Chunks, h[:])
		m.SizeBytes += int64(len(c))
	}
	return m
}

func putManifest(t testing.TB, r *Repo, m *yunchiv1.BackupManifest) string {
	t.Helper()
	b, err := EncodeManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	sha, err := r.PutManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	return sha
}

// files lists the regular files under dir (relative paths).
func files(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// age sets the times of every file under dir to d ago.
func age(t testing.TB, dir string, d time.Duration) {
	t.Helper()
	then := time.Now().Add(-d)
	for _, f := range files(t, dir) {
		if err := os.Chtimes(filepath.Join(dir, f), then, then); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenCreatesLayoutAndRefusesUnwritable(t *testing.T) {
	r := openRepo(t)
	for _, d := range []string{"chunks/00", "chunks/ff", "manifests", "tmp"} {
		if st, err := os.Stat(filepath.Join(r.Dir(), d)); err != nil || !st.IsDir() {
			t.Fatalf("%s: %v", d, err)
		}
	}
	if fs := files(t, r.Dir()); len(fs) != 0 {
		t.Fatalf("Open left files: %v", fs)
	}
	// Opening again is fine.
	if _, err := Open(r.Dir()); err != nil {
		t.Fatal(err)
	}
	// A file where the directory should be.
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(filepath.Join(f, "repo"))
	if err == nil || !strings.Contains(err.Error(), "backup repository") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Open under a file: %v", err)
	}
	if _, err := Open(""); err == nil {
		t.Fatal("Open(\"\") worked")
	}
}

func TestPutChunkStoresOnceAndReadsBack(t *testing.T) {
	r := openRepo(t)
	data := chunkData(1, ChunkSize)
	h := HashOf(data)
	isNew, err := r.PutChunk(h, data)
	if err != nil || !isNew {
		t.Fatalf("first put: new=%v err=%v", isNew, err)
	}
	p := filepath.Join(r.Dir(), "chunks", h.String()[:2], h.String())
	st1, err := os.Stat(p)
	if err != nil {
		t.Fatalf("chunk not at %s: %v", p, err)
	}
	ino := st1.Sys()
	isNew, err = r.PutChunk(h, data)
	if err != nil || isNew {
		t.Fatalf("second put: new=%v err=%v", isNew, err)
	}
	st2, _ := os.Stat(p)
	if !os.SameFile(st1, st2) {
		t.Fatalf("chunk rewritten (%v, %v)", ino, st2.Sys())
	}
	got, err := r.Chunk(h)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v (equal %v)", err, bytes.Equal(got, data))
	}
	if fs := files(t, filepath.Join(r.Dir(), "tmp")); len(fs) != 0 {
		t.Fatalf("tmp not empty: %v", fs)
	}
	s, err := r.Stats()
	if err != nil || s.Chunks != 1 || s.Bytes != ChunkSize || s.FreeBytes <= 0 {
		t.Fatalf("stats %+v, %v", s, err)
	}
	// A short last chunk.
	short := chunkData(2, 1000)
	mustPut(t, r, short)
	if s, _ := r.Stats(); s.Chunks != 2 || s.Bytes != ChunkSize+1000 {
		t.Fatalf("stats after a second chunk %+v", s)
	}
	if _, err := r.Chunk(HashOf([]byte("absent"))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent chunk: %v", err)
	}
}

func TestPutChunkRefusesBadInput(t *testing.T) {
	r := openRepo(t)
	data := chunkData(3, 4096)
	h := HashOf(data)
	wrong := slices.Clone(data)
	wrong[100] ^= 1
	big := chunkData(4, ChunkSize+1)
	for _, tc := range []struct {
		name string
		h    Hash
		data []byte
		want string
	}{
		{"hash mismatch", h, wrong, "hash to " + HashOf(wrong).String()},
		{"too big", HashOf(big), big, "at most 4194304"},
		{"empty", HashOf(nil), nil, "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.PutChunk(tc.h, tc.data)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.h.String()) {
				t.Fatalf("err = %v, want ErrInvalid naming %s and %q", err, tc.h, tc.want)
			}
		})
	}
	if fs := files(t, r.Dir()); len(fs) != 0 {
		t.Fatalf("refused puts left files: %v", fs)
	}
}

func TestDamagedChunkIsNeverReturnedAndHeals(t *testing.T) {
	r := openRepo(t)
	data := chunkData(5, ChunkSize)
	h := mustPut(t, r, data)
	p := r.chunkPath(h)
	bad := slices.Clone(data)
	bad[ChunkSize/2] ^= 0x40
	if err := os.WriteFile(p, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := r.Chunk(h)
	var de *DamageError
	if got != nil || !errors.Is(err, ErrDamaged) || !errors.As(err, &de) || de.Hash != h.String() || !de.MovedAside ||
		!strings.Contains(err.Error(), h.String()) {
		t.Fatalf("damaged read: %d bytes, %v", len(got), err)
	}
	if _, err := os.Stat(p + ".bad"); err != nil {
		t.Fatalf("not moved aside: %v", err)
	}
	if miss := r.Missing([]Hash{h}); !slices.Equal(miss, []int{0}) {
		t.Fatalf("Missing after damage = %v", miss)
	}
	if s, _ := r.Stats(); s.Chunks != 0 {
		t.Fatalf("stats count a damaged chunk: %+v", s)
	}
	// The next backup with these bytes stores them again.
	if isNew, err := r.PutChunk(h, data); err != nil || !isNew {
		t.Fatalf("heal: %v %v", isNew, err)
	}
	if got, err := r.Chunk(h); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after healing: %v", err)
	}
	// A truncated chunk too.
	if err := os.Truncate(p, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Chunk(h); !errors.Is(err, ErrDamaged) {
		t.Fatalf("truncated chunk: %v", err)
	}
}

func TestMissingRefreshesPresentChunks(t *testing.T) {
	r := openRepo(t)
	a := mustPut(t, r, chunkData(6, 100))
	b := HashOf([]byte("never stored"))
	age(t, r.Dir(), 2*time.Hour)
	if miss := r.Missing([]Hash{a, b, a}); !slices.Equal(miss, []int{1}) {
		t.Fatalf("Missing = %v, want [1]", miss)
	}
	st, _ := os.Stat(r.chunkPath(a))
	if time.Since(st.ModTime()) > time.Minute {
		t.Fatalf("present chunk not refreshed: %v", st.ModTime())
	}
}

func TestPutManifest(t *testing.T) {
	r := openRepo(t)
	c0, c1, last := chunkData(10, ChunkSize), chunkData(11, ChunkSize), chunkData(12, 12345)
	m := disk(t, r, c0, c1, c0, last)
	sha := putManifest(t, r, m)
	raw, err := os.ReadFile(filepath.Join(r.Dir(), "manifests", sha))
	if err != nil {
		t.Fatal(err)
	}
	if HashOf(raw).String() != sha {
		t.Fatal("the manifest's name is not the sha256 of its bytes")
	}
	got, err := r.Manifest(sha)
	if err != nil || got.SizeBytes != m.SizeBytes || len(got.Chunks) != 4 || !bytes.Equal(got.Chunks[2], m.Chunks[0]) {
		t.Fatalf("Manifest: %v %v", got, err)
	}
	// Putting it again is fine and names it the same.
	if again := putManifest(t, r, m); again != sha {
		t.Fatalf("second put named %s, first %s", again, sha)
	}
	// An empty disk has no chunks.
	if _, err := r.PutManifest(mustEncode(t, &yunchiv1.BackupManifest{ChunkSize: ChunkSize})); err != nil {
		t.Fatalf("empty disk: %v", err)
	}

	absent := HashOf([]byte("absent"))
	absent2 := HashOf([]byte("absent2"))
	for _, tc := range []struct {
		name string
		m    *yunchiv1.BackupManifest
		kind error
		want string
	}{
		{"chunk size", &yunchiv1.BackupManifest{ChunkSize: 1 << 20, SizeBytes: 1, Chunks: m.Chunks[:1]}, ErrInvalid, "chunk size is 1048576"},
		{"count", &yunchiv1.BackupManifest{ChunkSize: ChunkSize, SizeBytes: ChunkSize + 1, Chunks: m.Chunks[:1]}, ErrInvalid, "lists 1 chunks: a disk of 4194305 bytes has 2"},
		{"hash length", &yunchiv1.BackupManifest{ChunkSize: ChunkSize, SizeBytes: 5, Chunks: [][]byte{{1, 2, 3}}}, ErrInvalid, "named by 3 bytes"},
		{"negative", &yunchiv1.BackupManifest{ChunkSize: ChunkSize, SizeBytes: -1}, ErrInvalid, "negative"},
		{"missing", &yunchiv1.BackupManifest{ChunkSize: ChunkSize, SizeBytes: 3 * ChunkSize, Chunks: [][]byte{m.Chunks[0], absent[:], absent2[:]}},
			ErrMissingChunks, "2 of the manifest's 3 chunks are not in the backup repository (the first: chunk 1, " + absent.String()},
		{"short chunk in the middle", &yunchiv1.BackupManifest{ChunkSize: ChunkSize, SizeBytes: 2 * ChunkSize, Chunks: [][]byte{m.Chunks[3], m.Chunks[0]}},
			ErrInvalid, "chunk 0 of the manifest (" + Hash(m.Chunks[3]).String() + ") holds 12345 bytes"},
		{"full chunk at the end", &yunchiv1.BackupManifest{ChunkSize: ChunkSize, SizeBytes: ChunkSize + 10, Chunks: [][]byte{m.Chunks[0], m.Chunks[1]}},
			ErrInvalid, "holds 4194304 bytes: chunk 1 of a disk of 4194314 bytes holds 10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.PutManifest(mustEncode(t, tc.m))
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %v with %q", err, tc.kind, tc.want)
			}
		})
	}
	if _, err := r.PutManifest([]byte{0xff, 0xff}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("garbage manifest: %v", err)
	}
	if n := len(files(t, filepath.Join(r.Dir(), "manifests"))); n != 2 {
		t.Fatalf("%d manifests stored, want 2 (refused ones stored?)", n)
	}

	// Reading back checks the name.
	if _, err := r.Manifest("xyz"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := r.Manifest(absent.String()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent manifest: %v", err)
	}
	raw[len(raw)-1] ^= 1
	if err := os.WriteFile(filepath.Join(r.Dir(), "manifests", sha), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Manifest(sha); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), sha) {
		t.Fatalf("damaged manifest: %v", err)
	}
	// Putting it again repairs it.
	putManifest(t, r, m)
	if _, err := r.Manifest(sha); err != nil {
		t.Fatalf("after putting again: %v", err)
	}
}

func mustEncode(t testing.TB, m *yunchiv1.BackupManifest) []byte {
	t.Helper()
	b, err := EncodeManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVerify(t *testing.T) {
	r := openRepo(t)
	c := [][]byte{chunkData(20, ChunkSize), chunkData(21, ChunkSize), chunkData(22, ChunkSize), chunkData(23, 777)}
	putManifest(t, r, disk(t, r, c[0], c[3]))
	putManifest(t, r, disk(t, r, c[0], c[1], c[3]))
	usesGone := putManifest(t, r, disk(t, r, c[2], c[3]))
	broken := putManifest(t, r, disk(t, r, c[3]))

	h1, h2 := HashOf(c[1]), HashOf(c[2])
	b := slices.Clone(c[1])
	b[7] ^= 1
	if err := os.WriteFile(r.chunkPath(h1), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(r.chunkPath(h2)); err != nil {
		t.Fatal(err)
	}
	mp := filepath.Join(r.Dir(), "manifests", broken)
	if err := os.WriteFile(mp, []byte("not a manifest"), 0o600); err != nil {
		t.Fatal(err)
	}

	var calls, lastDone, lastTotal int64
	rep, err := r.Verify(context.Background(), func(done, total int64) { calls++; lastDone, lastTotal = done, total })
	if err != nil {
		t.Fatal(err)
	}
	if rep.Chunks != 2 || rep.Bytes != ChunkSize+777 || rep.Manifests != 3 {
		t.Fatalf("checked %+v", rep)
	}
	damaged := map[string]string{}
	for _, d := range rep.DamagedChunks {
		damaged[d.Hash] = d.Reason
	}
	if len(damaged) != 2 || !strings.Contains(damaged[h1.String()], "hash to") || !strings.Contains(damaged[h2.String()], "missing (listed by manifest "+usesGone) {
		t.Fatalf("damaged chunks %v", rep.DamagedChunks)
	}
	if len(rep.DamagedManifests) != 1 || rep.DamagedManifests[0].Hash != broken {
		t.Fatalf("damaged manifests %v", rep.DamagedManifests)
	}
	if calls == 0 || lastDone != lastTotal {
		t.Fatalf("progress: %d calls, last %d/%d", calls, lastDone, lastTotal)
	}

	// The damaged chunk was moved aside: a second run names it as missing.
	rep, err = r.Verify(context.Background(), nil)
	if err != nil || rep.MovedAside != 1 || len(rep.DamagedChunks) != 2 {
		t.Fatalf("second run: %+v %v", rep, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Verify(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled verify: %v", err)
	}
}

func TestGCKeepsExactlyReferencedAndYoung(t *testing.T) {
	r := openRepo(t)
	c := make([][]byte, 6)
	for i := range c {
		c[i] = chunkData(uint64(30+i), ChunkSize/4)
	}
	// Disk sizes must match their chunks: use single short chunks, or
	// full ones; short chunks only at the end.
	kept := putManifest(t, r, disk(t, r, c[0]))
	dropped := putManifest(t, r, disk(t, r, c[1]))
	orphan := mustPut(t, r, c[2])
	damagedKept := putManifest(t, r, disk(t, r, c[3]))
	age(t, r.Dir(), 2*time.Hour)
	// Young: a chunk sent for a backup in flight, and a manifest put by
	// one (its old chunk is kept with it).
	young := mustPut(t, r, c[4])
	inFlight := putManifest(t, r, disk(t, r, c[5]))
	then := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(r.chunkPath(HashOf(c[5])), then, then); err != nil {
		t.Fatal(err)
	}
	// An old partial write.
	tmp := filepath.Join(r.Dir(), "tmp", "put-123")
	if err := os.WriteFile(tmp, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(tmp, then, then)
	// A kept manifest that got damaged but still decodes: its chunks are
	// kept.
	mp := filepath.Join(r.Dir(), "manifests", damagedKept)
	raw, _ := os.ReadFile(mp)
	raw = append(raw, 0x50, 0x01) // field 10 varint 1: decodes, hash differs
	os.WriteFile(mp, raw, 0o600)
	os.Chtimes(mp, then, then)

	rep, err := r.GC(context.Background(), []string{kept, damagedKept, HashOf([]byte("gone")).String()}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	has := func(h Hash) bool { _, err := os.Stat(r.chunkPath(h)); return err == nil }
	for i, want := range []bool{true, false, false, true, true, true} {
		if got := has(HashOf(c[i])); got != want {
			t.Errorf("chunk %d present = %v, want %v", i, got, want)
		}
	}
	if has(orphan) || !has(young) {
		t.Errorf("orphan present %v, young present %v", has(orphan), has(young))
	}
	hasM := func(s string) bool { _, err := os.Stat(filepath.Join(r.Dir(), "manifests", s)); return err == nil }
	if !hasM(kept) || hasM(dropped) || !hasM(inFlight) || !hasM(damagedKept) {
		t.Errorf("manifests: kept %v dropped %v in flight %v damaged %v", hasM(kept), hasM(dropped), hasM(inFlight), hasM(damagedKept))
	}
	if _, err := os.Stat(tmp); err == nil {
		t.Error("old partial write kept")
	}
	want := GCReport{ChunksRemoved: 2, BytesRemoved: 2 * ChunkSize / 4, ChunksKept: 4, BytesKept: 4 * ChunkSize / 4, ManifestsRemoved: 1, ManifestsKept: 3}
	got := rep
	got.Unreadable = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("report %+v, want %+v", got, want)
	}
	if len(rep.Unreadable) != 2 {
		t.Errorf("unreadable %v, want the damaged and the missing manifest", rep.Unreadable)
	}
	if s, _ := r.Stats(); s.Chunks != 4 || s.Bytes != 4*ChunkSize/4 {
		t.Errorf("stats after GC %+v", s)
	}
	if _, err := r.GC(context.Background(), []string{"nope"}, time.Hour); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad name: %v", err)
	}
}

// TestGCRacesPutManifest: manifests put while GC removes the old chunks
// they list either fail (listing what is missing) or are stored with every
// chunk present; never a stored manifest missing a chunk.
func TestGCRacesPutManifest(t *testing.T) {
	r := openRepo(t)
	const n = 200
	ms := make([]*yunchiv1.BackupManifest, n)
	for i := range ms {
		ms[i] = disk(t, r, chunkData(uint64(1000+i), 512))
	}
	for round := range 3 {
		age(t, r.Dir(), 2*time.Hour)
		var wg sync.WaitGroup
		stored := make([]string, n)
		for i := range ms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if sha, err := r.PutManifest(mustEncode(t, ms[i])); err == nil {
					stored[i] = sha
				} else if !errors.Is(err, ErrMissingChunks) {
					t.Error(err)
				}
			}()
		}
		if _, err := r.GC(context.Background(), nil, time.Second); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		okCount := 0
		for i, sha := range stored {
			if sha == "" {
				continue
			}
			okCount++
			if _, err := r.Chunk(Hash(ms[i].Chunks[0])); err != nil {
				t.Fatalf("round %d: manifest %d stored but its chunk: %v", round, i, err)
			}
		}
		t.Logf("round %d: %d of %d manifests stored during GC", round, okCount, n)
		// No manifest left in the repository lists a removed chunk.
		if rep, err := r.Verify(context.Background(), nil); err != nil || len(rep.DamagedChunks)+len(rep.DamagedManifests) != 0 {
			t.Fatalf("round %d: verify after GC: %+v %v", round, rep, err)
		}
		// Put back what GC removed.
		for i := range ms {
			mustPut(t, r, chunkData(uint64(1000+i), 512))
		}
	}
}

func BenchmarkPutChunk(b *testing.B) {
	r := openRepo(b)
	data := chunkData(99, ChunkSize)
	b.SetBytes(ChunkSize)
	for i := 0; b.Loop(); i++ {
		// A new chunk each time, hashed as the agent does (not timed):
		// the time is the repository's check, write, fsync and rename.
		b.StopTimer()
		data[0], data[1], data[2], data[3] = byte(i), byte(i>>8), byte(i>>16), byte(i>>24)
		h := HashOf(data)
		b.StartTimer()
		if isNew, err := r.PutChunk(h, data); err != nil || !isNew {
			b.Fatal(isNew, err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	r := openRepo(b)
	const n = 16
	for i := range n {
		mustPut(b, r, chunkData(uint64(200+i), ChunkSize))
	}
	b.SetBytes(n * ChunkSize)
	for b.Loop() {
		rep, err := r.Verify(context.Background(), nil)
		if err != nil || rep.Chunks != n {
			b.Fatal(rep, err)
		}
	}
}
