package backup

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// The encoding the repository checks and streams is what
// proto.MarshalOptions{Deterministic: true} writes, for every shape of
// disk, and ManifestLen is its length.
func TestManifestEncodingIsProtos(t *testing.T) {
	if got := ManifestLen(MaxDiskBytes); got != MaxManifestBytes {
		t.Fatalf("ManifestLen(64 TiB) = %d, MaxManifestBytes %d", got, int64(MaxManifestBytes))
	}
	for _, size := range []int64{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 10*ChunkSize + 5, 600 << 30} {
		n := chunkCount(size)
		m := &yunchiv1.BackupManifest{SizeBytes: size, ChunkSize: ChunkSize}
		for i := range n {
			h := HashOf([]byte{byte(i), byte(i >> 8), byte(i >> 16)})
			m.Chunks = append(m.Chunks, h[:])
		}
		enc, err := EncodeManifest(m)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(enc)) != ManifestLen(size) {
			t.Fatalf("size %d: encoding of %d bytes, ManifestLen %d", size, len(enc), ManifestLen(size))
		}
		s, err := scanManifest(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		var i int64
		for {
			h, ok, err := s.Next()
			if err != nil {
				t.Fatalf("size %d chunk %d: %v", size, i, err)
			}
			if !ok {
				break
			}
			if !bytes.Equal(h[:], m.Chunks[i]) {
				t.Fatalf("size %d: chunk %d read back differs", size, i)
			}
			i++
		}
		if s.Size != size || s.Chunks != n || i != n {
			t.Fatalf("size %d: scanned size %d, %d chunks of %d", size, s.Size, i, s.Chunks)
		}
	}
}

// A manifest put in pieces is stored only when whole and right; what is
// refused leaves nothing, not even in tmp/.
func TestManifestWriterInPieces(t *testing.T) {
	r := openRepo(t)
	c0, last := chunkData(60, ChunkSize), chunkData(61, 1000)
	m := disk(t, r, c0, c0, c0, last)
	enc := mustEncode(t, m)
	name := HashOf(enc)
	put := func(name Hash, length int64, pieces ...[]byte) (string, error) {
		w, err := r.CreateManifest(name, length)
		if err != nil {
			return "", err
		}
		defer w.Abort()
		for _, p := range pieces {
			if _, err := w.Write(p); err != nil {
				return "", err
			}
		}
		return w.Commit()
	}
	big := make([]byte, 0, 16)
	big = protowire.AppendTag(big, 1, protowire.VarintType)
	big = protowire.AppendVarint(big, MaxDiskBytes+ChunkSize)
	big = protowire.AppendTag(big, 2, protowire.VarintType)
	big = protowire.AppendVarint(big, ChunkSize)
	for _, tc := range []struct {
		name   string
		h      Hash
		length int64
		pieces [][]byte
		want   string
	}{
		{"ends early", name, int64(len(enc)), [][]byte{enc[:10], enc[10:50]}, "ended after 50 of its"},
		{"runs past", name, int64(len(enc)) - 1, [][]byte{enc[:10], enc[10:]}, "run past the"},
		{"hash", HashOf([]byte("x")), int64(len(enc)), [][]byte{enc}, "not to its name"},
		{"too long", name, MaxManifestBytes + 1, nil, "at most 570425357"},
		{"disk over 64 TiB", HashOf(big), int64(len(big)), [][]byte{big}, "disks of at most 70368744177664 (64 TiB)"},
		{"trailing bytes", HashOf(append(enc[:len(enc):len(enc)], 0x1a)), int64(len(enc)) + 1, [][]byte{enc, {0x1a}}, "lists more than 4 chunks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := put(tc.h, tc.length, tc.pieces...)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want ErrInvalid with %q", err, tc.want)
			}
		})
	}
	if fs := files(t, filepath.Join(r.Dir(), "manifests")); len(fs) != 0 {
		t.Fatalf("refused manifests stored: %v", fs)
	}
	if fs := files(t, filepath.Join(r.Dir(), "tmp")); len(fs) != 0 {
		t.Fatalf("refused manifests left in tmp: %v", fs)
	}
	sha, err := put(name, int64(len(enc)), enc[:7], enc[7:40], enc[40:])
	if err != nil || sha != name.String() {
		t.Fatalf("put in pieces: %s %v", sha, err)
	}
	if fs := files(t, filepath.Join(r.Dir(), "tmp")); len(fs) != 0 {
		t.Fatalf("left in tmp: %v", fs)
	}

	// Read back as a stream: the same bytes, then io.EOF.
	mr, err := r.OpenManifest(sha)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(mr)
	mr.Close()
	if err != nil || !bytes.Equal(got, enc) || mr.Size() != int64(len(enc)) {
		t.Fatalf("read back %d bytes (size %d), %v", len(got), mr.Size(), err)
	}
	// Damaged: the bytes come, and ErrDamaged in place of io.EOF.
	p := filepath.Join(r.Dir(), "manifests", sha)
	bad := bytes.Clone(enc)
	bad[len(bad)-1] ^= 1
	if err := os.WriteFile(p, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	mr, err = r.OpenManifest(sha)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(mr)
	mr.Close()
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), sha) {
		t.Fatalf("read of a damaged manifest: %v", err)
	}
	var seen int64
	if _, err := r.ScanManifest(sha, func(int64, Hash) error { seen++; return nil }); !errors.Is(err, ErrDamaged) {
		t.Fatalf("scan of a damaged manifest: %v (after %d chunks)", err, seen)
	}
	if _, err := r.OpenManifest(HashOf([]byte("absent")).String()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent manifest: %v", err)
	}
}
