package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/backup"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// repoState is the state the repository service reads, as records.
type repoState struct {
	mu      sync.Mutex
	centers map[string]*statev1.CenterRecord
	jobs    map[string]*statev1.BackupJobRecord
	points  map[string]*statev1.RestorePointRecord
	readers map[string][]string // point -> hosts that may read it
}

func (st *repoState) Center(name string) (*statev1.CenterRecord, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	c, ok := st.centers[name]
	return c, ok
}

func (st *repoState) BackupJob(id string) (*statev1.BackupJobRecord, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	j, ok := st.jobs[id]
	if ok {
		j = proto.Clone(j).(*statev1.BackupJobRecord)
	}
	return j, ok
}

func (st *repoState) RestorePoint(id string) (*statev1.RestorePointRecord, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	p, ok := st.points[id]
	return p, ok
}

func (st *repoState) RestorePointsIn(center string) []*statev1.RestorePointRecord {
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []*statev1.RestorePointRecord
	for _, p := range st.points {
		if p.Center == center {
			out = append(out, p)
		}
	}
	return out
}

func (st *repoState) HostMayReadPoint(host, point string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Contains(st.readers[point], host)
}

func (st *repoState) setJob(j *statev1.BackupJobRecord) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.jobs[j.Id] = j
}

// addPoint records a point of one disk per manifest, readable by readers.
func (st *repoState) addPoint(id, center string, ms []*yunchiv1.BackupManifest, shas []string, readers ...string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	p := &statev1.RestorePointRecord{Id: id, VmId: "vm-1", Center: center, HostId: "h1"}
	for i, m := range ms {
		p.Disks = append(p.Disks, &statev1.DiskPoint{Name: "root", SizeBytes: m.SizeBytes, ManifestSha256: shas[i], Chunks: int64(len(m.Chunks))})
		p.SizeBytes += m.SizeBytes
	}
	st.points[id] = p
	st.readers[id] = readers
}

const repoMember = "c1"

type repoFixture struct {
	s    *BackupRepoServer
	st   *repoState
	cl   yunchiv1.BackupRepoServiceClient
	reg  *prometheus.Registry
	base string
}

// newRepoFixture serves the repository service of controller c1 on
// loopback: c1 keeps "near"'s repository; "far"'s is c2's; "bare" has
// none. Host h1 runs job-1 (to near).
func newRepoFixture(t *testing.T) *repoFixture {
	t.Helper()
	st := &repoState{
		centers: map[string]*statev1.CenterRecord{
			"near": {Name: "near", RepositoryMember: repoMember, Role: statev1.CenterRole_CENTER_ROLE_SAME_CITY_DR},
			"far":  {Name: "far", RepositoryMember: "c2", Role: statev1.CenterRole_CENTER_ROLE_REMOTE_DR},
			"bare": {Name: "bare"},
		},
		jobs: map[string]*statev1.BackupJobRecord{}, points: map[string]*statev1.RestorePointRecord{}, readers: map[string][]string{},
	}
	st.setJob(&statev1.BackupJobRecord{Id: "job-1", VmId: "vm-1", Center: "near", HostId: "h1",
		State: statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING, StartedUnixNano: time.Now().UnixNano()})
	base := t.TempDir()
	reg := prometheus.NewRegistry()
	s := NewBackupRepoServer(base, repoMember, st, reg, nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(MaxGRPCRequest))
	yunchiv1.RegisterBackupRepoServiceServer(gs, s)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &repoFixture{s: s, st: st, cl: yunchiv1.NewBackupRepoServiceClient(cc), reg: reg, base: base}
}

// testDisk is a disk's bytes cut into chunks of the given sizes (each
// from its own seed; a seed repeated repeats the chunk).
func testDisk(seeds []uint64, sizes []int) [][]byte {
	out := make([][]byte, len(seeds))
	for i, seed := range seeds {
		b := make([]byte, sizes[i])
		rng := rand.New(rand.NewPCG(seed, 7))
		for k := range b {
			b[k] = byte(rng.Uint32())
		}
		out[i] = b
	}
	return out
}

func manifestOf(chunks [][]byte) *yunchiv1.BackupManifest {
	m := &yunchiv1.BackupManifest{ChunkSize: backup.ChunkSize}
	for _, c := range chunks {
		h := backup.HashOf(c)
		m.Chunks = append(m.Chunks, h[:])
		m.SizeBytes += int64(len(c))
	}
	return m
}

func hashBytes(chunks [][]byte) [][]byte {
	var out [][]byte
	for _, c := range chunks {
		h := backup.HashOf(c)
		out = append(out, h[:])
	}
	return out
}

// sendChunks sends chunks in pieces of piece bytes after a header message.
func sendChunks(stream yunchiv1.BackupRepoService_PutChunksClient, chunks [][]byte, piece int) error {
	for _, c := range chunks {
		h := backup.HashOf(c)
		for off := 0; off < len(c); off += piece {
			end := min(off+piece, len(c))
			msg := &yunchiv1.PutChunkRequest{Data: c[off:end], End: end == len(c)}
			if off == 0 {
				msg.Sha256 = h[:]
			}
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
	}
	return nil
}

func (f *repoFixture) put(ctx context.Context, host, job string, chunks [][]byte) (*yunchiv1.PutChunksResponse, error) {
	stream, err := f.cl.PutChunks(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&yunchiv1.PutChunkRequest{HostId: host, JobId: job}); err != nil {
		return nil, err
	}
	if err := sendChunks(stream, chunks, maxBackupPiece); err != nil && err != io.EOF {
		return nil, err
	}
	return stream.CloseAndRecv()
}

func (f *repoFixture) missing(t *testing.T, job string, chunks [][]byte) []uint32 {
	t.Helper()
	resp, err := f.cl.HaveChunks(context.Background(), &yunchiv1.HaveChunksRequest{HostId: "h1", JobId: job, Chunks: hashBytes(chunks)})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Missing
}

func (f *repoFixture) putManifest(t *testing.T, job string, m *yunchiv1.BackupManifest) string {
	t.Helper()
	b, err := backup.EncodeManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.sendManifest(context.Background(), "h1", job, b, maxBackupPiece)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Sha256
}

// sendManifest streams an encoded manifest in pieces of piece bytes after
// a first message naming the host, the job, its sha256 and length.
func (f *repoFixture) sendManifest(ctx context.Context, host, job string, enc []byte, piece int) (*yunchiv1.PutManifestResponse, error) {
	h := backup.HashOf(enc)
	return f.sendManifestAs(ctx, &yunchiv1.PutManifestRequest{HostId: host, JobId: job, Sha256: h[:], Length: int64(len(enc))}, enc, piece)
}

func (f *repoFixture) sendManifestAs(ctx context.Context, head *yunchiv1.PutManifestRequest, enc []byte, piece int) (*yunchiv1.PutManifestResponse, error) {
	stream, err := f.cl.PutManifest(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(head); err != nil && err != io.EOF {
		return nil, err
	}
	for off := 0; off < len(enc); off += piece {
		if err := stream.Send(&yunchiv1.PutManifestRequest{Data: enc[off:min(off+piece, len(enc))]}); err != nil {
			break // io.EOF: the reason comes with the response
		}
	}
	return stream.CloseAndRecv()
}

// getManifest reads a point's manifest and checks the stream's shape:
// pieces of at most 1 MiB, the first saying the length of the whole.
func (f *repoFixture) getManifest(ctx context.Context, t *testing.T, host, point, sha string) ([]byte, error) {
	t.Helper()
	stream, err := f.cl.GetManifest(ctx, &yunchiv1.GetManifestRequest{HostId: host, PointId: point, Sha256: sha})
	if err != nil {
		return nil, err
	}
	var out []byte
	length := int64(-1)
	for {
		p, err := stream.Recv()
		if err == io.EOF {
			if int64(len(out)) != length {
				t.Errorf("the manifest stream said %d bytes, sent %d", length, len(out))
			}
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if len(p.Data) > maxBackupPiece {
			t.Errorf("a manifest piece of %d bytes", len(p.Data))
		}
		if length < 0 {
			length = p.Length
		} else if p.Length != 0 {
			t.Errorf("a piece after the first says length %d", p.Length)
		}
		out = append(out, p.Data...)
	}
}

// storedFiles lists the chunk and manifest files under the base directory.
func (f *repoFixture) storedFiles(t *testing.T) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(f.base, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func (f *repoFixture) chunkPath(center string, c []byte) string {
	h := backup.HashOf(c).String()
	return filepath.Join(f.base, center, "chunks", h[:2], h)
}

func (f *repoFixture) counter(t *testing.T, name, center string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "center" && l.GetValue() == center {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// readChunks reads chunks of a point and checks each piece's shape.
func readChunks(ctx context.Context, t *testing.T, cl yunchiv1.BackupRepoServiceClient, host, point string, hashes [][]byte) ([][]byte, error) {
	t.Helper()
	stream, err := cl.GetChunks(ctx, &yunchiv1.GetChunksRequest{HostId: host, PointId: point, Chunks: hashes})
	if err != nil {
		return nil, err
	}
	var out [][]byte
	var cur []byte
	for {
		p, err := stream.Recv()
		if err == io.EOF {
			if cur != nil {
				t.Errorf("the stream ended inside a chunk")
			}
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if len(p.Data) > maxBackupPiece || len(p.Data) == 0 {
			t.Errorf("a piece of %d bytes", len(p.Data))
		}
		if i := len(out); i >= len(hashes) || !bytes.Equal(p.Sha256, hashes[i]) {
			t.Fatalf("piece of chunk %x, expected chunk %d", p.Sha256, i)
		}
		cur = append(cur, p.Data...)
		if p.End {
			out = append(out, cur)
			cur = nil
		}
	}
}

func TestBackupRepoPutHaveManifestReadBack(t *testing.T) {
	f := newRepoFixture(t)
	ctx := context.Background()
	// Chunk 2 repeats chunk 0; the last is 1.5 MiB.
	disk := testDisk([]uint64{1, 2, 1, 3}, []int{backup.ChunkSize, backup.ChunkSize, backup.ChunkSize, 3 << 19})
	if miss := f.missing(t, "job-1", disk); !slices.Equal(miss, []uint32{0, 1, 2, 3}) {
		t.Fatalf("missing before = %v", miss)
	}
	// The first message may carry a piece too.
	stream, err := f.cl.PutChunks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h0 := backup.HashOf(disk[0])
	if err := stream.Send(&yunchiv1.PutChunkRequest{HostId: "h1", JobId: "job-1", Sha256: h0[:], Data: disk[0][:maxBackupPiece]}); err != nil {
		t.Fatal(err)
	}
	// 3 MiB in one message: more than a piece.
	stream.Send(&yunchiv1.PutChunkRequest{Data: disk[0][maxBackupPiece:], End: true})
	_, err = stream.CloseAndRecv()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "at most 1048576") {
		t.Fatalf("a 3 MiB piece: %v", err)
	}
	resp, err := f.put(ctx, "h1", "job-1", disk)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Chunks != 3 || resp.Bytes != 2*backup.ChunkSize+3<<19 {
		t.Fatalf("stored %d chunks, %d bytes; want 3 new, the repeated one once", resp.Chunks, resp.Bytes)
	}
	if miss := f.missing(t, "job-1", disk); len(miss) != 0 {
		t.Fatalf("missing after = %v", miss)
	}
	m := manifestOf(disk)
	sha := f.putManifest(t, "job-1", m)
	enc, _ := backup.EncodeManifest(m)
	if sha != backup.HashOf(enc).String() {
		t.Fatalf("manifest named %s, not the sha256 of its encoding", sha)
	}

	f.st.addPoint("rp-1", "near", []*yunchiv1.BackupManifest{m}, []string{sha}, "h2")
	gm, err := f.getManifest(ctx, t, "h2", "rp-1", sha)
	if err != nil {
		t.Fatal(err)
	}
	got := &yunchiv1.BackupManifest{}
	if err := proto.Unmarshal(gm, got); err != nil || !proto.Equal(got, m) || !bytes.Equal(gm, enc) {
		t.Fatalf("manifest read back differs (%v)", err)
	}
	chunks, err := readChunks(ctx, t, f.cl, "h2", "rp-1", got.Chunks)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.Join(chunks, nil), bytes.Join(disk, nil)) {
		t.Fatal("the disk read back differs from the one sent")
	}
	if r := f.counter(t, "yunchi_backup_chunks_received_total", "near"); r != 4 {
		t.Errorf("chunks received = %v, want 4", r)
	}
	if r := f.counter(t, "yunchi_backup_bytes_served_total", "near"); r != float64(len(bytes.Join(disk, nil))) {
		t.Errorf("bytes served = %v", r)
	}
	rs := f.s.Stats("near")
	if rs.Error != "" || rs.Member != repoMember || rs.Points != 1 || rs.Chunks != 3 || rs.StoredBytes != resp.Bytes || rs.LogicalBytes != m.SizeBytes || rs.FreeBytes <= 0 {
		t.Fatalf("stats %v", rs)
	}
	if rs := f.s.Stats("far"); !strings.Contains(rs.Error, `kept by controller "c2"`) {
		t.Fatalf("stats of a center kept elsewhere: %v", rs)
	}
}

func TestBackupRepoHashMismatchStoresNothing(t *testing.T) {
	f := newRepoFixture(t)
	disk := testDisk([]uint64{5}, []int{2 << 20})
	h := backup.HashOf(disk[0])
	bad := slices.Clone(disk[0])
	bad[3<<19] ^= 1 // in the second piece
	stream, err := f.cl.PutChunks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&yunchiv1.PutChunkRequest{HostId: "h1", JobId: "job-1", Sha256: h[:], Data: bad[:1<<20]})
	stream.Send(&yunchiv1.PutChunkRequest{Data: bad[1<<20:], End: true})
	_, err = stream.CloseAndRecv()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), h.String()) || !strings.Contains(err.Error(), "nothing stored") {
		t.Fatalf("wrong bytes: %v", err)
	}
	if miss := f.missing(t, "job-1", disk); !slices.Equal(miss, []uint32{0}) {
		t.Fatalf("missing = %v", miss)
	}
	for _, p := range f.storedFiles(t) {
		t.Errorf("stored: %s", p)
	}
}

func TestBackupRepoStreamCutMidwayResumes(t *testing.T) {
	f := newRepoFixture(t)
	const n = 8
	seeds, sizes := make([]uint64, n), make([]int, n)
	for i := range n {
		seeds[i], sizes[i] = uint64(100+i), backup.ChunkSize
	}
	sizes[n-1] = 12345
	disk := testDisk(seeds, sizes)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := f.cl.PutChunks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&yunchiv1.PutChunkRequest{HostId: "h1", JobId: "job-1"})
	if err := sendChunks(stream, disk[:n/2], maxBackupPiece); err != nil {
		t.Fatal(err)
	}
	rest := []uint32{4, 5, 6, 7}
	deadline := time.Now().Add(20 * time.Second)
	for !slices.Equal(f.missing(t, "job-1", disk), rest) {
		if time.Now().After(deadline) {
			t.Fatalf("the first half never arrived: missing %v", f.missing(t, "job-1", disk))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Half of the next chunk, then the link breaks.
	h := backup.HashOf(disk[n/2])
	if err := stream.Send(&yunchiv1.PutChunkRequest{Sha256: h[:], Data: disk[n/2][:maxBackupPiece]}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.Canceled {
		t.Fatalf("cut stream: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // the server's handler sees the cut
	if miss := f.missing(t, "job-1", disk); !slices.Equal(miss, rest) {
		t.Fatalf("after the cut missing = %v, want %v", miss, rest)
	}
	if tmp, _ := os.ReadDir(filepath.Join(f.base, "near", "tmp")); len(tmp) != 0 {
		t.Fatalf("partial files left: %v", tmp)
	}
	// Resume with what is missing.
	var todo [][]byte
	for _, i := range rest {
		todo = append(todo, disk[i])
	}
	resp, err := f.put(context.Background(), "h1", "job-1", todo)
	if err != nil || resp.Chunks != 4 {
		t.Fatalf("resume: %v %v", resp, err)
	}
	f.putManifest(t, "job-1", manifestOf(disk))
}

func TestBackupRepoRefusesWritesOutsideARunningJob(t *testing.T) {
	f := newRepoFixture(t)
	f.s.CatchUpWait = 100 * time.Millisecond // every case here is refused after the wait
	running := statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING
	f.st.setJob(&statev1.BackupJobRecord{Id: "job-other-host", Center: "near", HostId: "h9", State: running})
	f.st.setJob(&statev1.BackupJobRecord{Id: "job-failed", Center: "near", HostId: "h1", State: statev1.BackupJobState_BACKUP_JOB_STATE_FAILED})
	f.st.setJob(&statev1.BackupJobRecord{Id: "job-far", Center: "far", HostId: "h1", State: running})
	f.st.setJob(&statev1.BackupJobRecord{Id: "job-bare", Center: "bare", HostId: "h1", State: running})
	f.st.setJob(&statev1.BackupJobRecord{Id: "job-ghost", Center: "ghost", HostId: "h1", State: running})
	disk := testDisk([]uint64{9}, []int{1000})
	enc, _ := backup.EncodeManifest(manifestOf(disk))
	for _, tc := range []struct {
		job  string
		code codes.Code
		want string
	}{
		{"job-other-host", codes.FailedPrecondition, `is for host "h9", not "h1"`},
		{"job-none", codes.NotFound, `backup job "job-none" not found`},
		{"job-failed", codes.FailedPrecondition, "BACKUP_JOB_STATE_FAILED, not running"},
		{"job-far", codes.FailedPrecondition, `kept by controller "c2", not by this one (c1)`},
		{"job-bare", codes.FailedPrecondition, `center "bare" has no backup repository`},
		{"job-ghost", codes.FailedPrecondition, `center "ghost" is not declared`},
		{"", codes.InvalidArgument, "job_id is empty"},
	} {
		t.Run(tc.job, func(t *testing.T) {
			check := func(what string, err error) {
				t.Helper()
				if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
					t.Errorf("%s: %v, want %v with %q", what, err, tc.code, tc.want)
				}
			}
			_, err := f.cl.HaveChunks(context.Background(), &yunchiv1.HaveChunksRequest{HostId: "h1", JobId: tc.job, Chunks: hashBytes(disk)})
			check("HaveChunks", err)
			_, err = f.put(context.Background(), "h1", tc.job, disk)
			check("PutChunks", err)
			_, err = f.sendManifest(context.Background(), "h1", tc.job, enc, maxBackupPiece)
			check("PutManifest", err)
		})
	}
	for _, p := range f.storedFiles(t) {
		t.Errorf("stored: %s", p)
	}
	// The job ends while its stream runs: the next chunk is refused.
	stream, err := f.cl.PutChunks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&yunchiv1.PutChunkRequest{HostId: "h1", JobId: "job-1"})
	h := backup.HashOf(disk[0])
	stream.Send(&yunchiv1.PutChunkRequest{Sha256: h[:], Data: disk[0][:10]})
	time.Sleep(100 * time.Millisecond)
	f.st.setJob(&statev1.BackupJobRecord{Id: "job-1", Center: "near", HostId: "h1", State: statev1.BackupJobState_BACKUP_JOB_STATE_FAILED})
	stream.Send(&yunchiv1.PutChunkRequest{Data: disk[0][10:], End: true})
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "ended while") {
		t.Fatalf("job ended mid-stream: %v", err)
	}
	if _, err := os.Stat(f.chunkPath("near", disk[0])); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("chunk of an ended job stored: %v", err)
	}
}

func TestBackupRepoRefusesMalformedStreams(t *testing.T) {
	f := newRepoFixture(t)
	big := testDisk([]uint64{11}, []int{backup.ChunkSize + 1})[0]
	small := testDisk([]uint64{12}, []int{100})[0]
	hb, hs := backup.HashOf(big), backup.HashOf(small)
	for _, tc := range []struct {
		name string
		msgs []*yunchiv1.PutChunkRequest
		want string
	}{
		{"piece over 1 MiB", []*yunchiv1.PutChunkRequest{{Sha256: hb[:], Data: big[:maxBackupPiece+1], End: true}}, "at most 1048576"},
		{"chunk over 4 MiB", []*yunchiv1.PutChunkRequest{
			{Sha256: hb[:], Data: big[:1<<20]}, {Data: big[1<<20 : 2<<20]}, {Data: big[2<<20 : 3<<20]}, {Data: big[3<<20 : 4<<20]}, {Data: big[4<<20:], End: true}},
			"longer than 4194304"},
		{"hash of 31 bytes", []*yunchiv1.PutChunkRequest{{Sha256: hs[:31], Data: small, End: true}}, "a sha256 is 32 bytes, not 31"},
		{"piece naming no chunk", []*yunchiv1.PutChunkRequest{{Data: small, End: true}}, "names no chunk"},
		{"chunk before the last ended", []*yunchiv1.PutChunkRequest{{Sha256: hs[:], Data: small[:50]}, {Sha256: hb[:], Data: big[:10]}}, "before chunk " + hs.String() + " ended"},
		{"stream ends inside a chunk", []*yunchiv1.PutChunkRequest{{Sha256: hs[:], Data: small[:50]}}, "ended inside chunk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := f.cl.PutChunks(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			stream.Send(&yunchiv1.PutChunkRequest{HostId: "h1", JobId: "job-1"})
			for _, m := range tc.msgs {
				if stream.Send(m) != nil {
					break
				}
			}
			_, err = stream.CloseAndRecv()
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want INVALID_ARGUMENT with %q", err, tc.want)
			}
		})
	}
	for _, p := range f.storedFiles(t) {
		t.Errorf("stored: %s", p)
	}
	if _, err := f.cl.HaveChunks(context.Background(), &yunchiv1.HaveChunksRequest{HostId: "h1", JobId: "job-1", Chunks: [][]byte{{1, 2}}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("HaveChunks with a 2-byte hash: %v", err)
	}
}

func TestBackupRepoReadsOnlyThePointsChunks(t *testing.T) {
	f := newRepoFixture(t)
	d1 := testDisk([]uint64{21, 22}, []int{backup.ChunkSize, 500})
	d2 := testDisk([]uint64{23}, []int{600})
	if _, err := f.put(context.Background(), "h1", "job-1", append(slices.Clone(d1), d2...)); err != nil {
		t.Fatal(err)
	}
	m1, m2 := manifestOf(d1), manifestOf(d2)
	s1, s2 := f.putManifest(t, "job-1", m1), f.putManifest(t, "job-1", m2)
	f.st.addPoint("rp-1", "near", []*yunchiv1.BackupManifest{m1}, []string{s1}, "h2")
	f.st.addPoint("rp-2", "near", []*yunchiv1.BackupManifest{m2}, []string{s2}, "h3")
	f.st.addPoint("rp-far", "far", []*yunchiv1.BackupManifest{m2}, []string{s2}, "h2")
	ctx := context.Background()
	for _, tc := range []struct {
		name, host, point string
		chunks            [][]byte
		code              codes.Code
		want              string
	}{
		{"chunk of another point", "h2", "rp-1", hashBytes(d2), codes.PermissionDenied, "is not in restore point rp-1"},
		{"host may not read", "h3", "rp-1", hashBytes(d1), codes.PermissionDenied, `host "h3" may not read restore point rp-1`},
		{"unknown point", "h2", "rp-none", hashBytes(d1), codes.NotFound, "not found"},
		{"point kept elsewhere", "h2", "rp-far", hashBytes(d2), codes.FailedPrecondition, `kept by controller "c2"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readChunks(ctx, t, f.cl, tc.host, tc.point, tc.chunks)
			if len(got) != 0 || status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%d chunks, %v; want %v with %q", len(got), err, tc.code, tc.want)
			}
		})
	}
	if _, err := f.getManifest(ctx, t, "h2", "rp-1", s2); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("manifest of another point: %v", err)
	}
	if got, err := readChunks(ctx, t, f.cl, "h3", "rp-2", hashBytes(d2)); err != nil || !bytes.Equal(got[0], d2[0]) {
		t.Fatalf("allowed read: %v", err)
	}
}

func TestBackupRepoDamagedChunk(t *testing.T) {
	f := newRepoFixture(t)
	d1 := testDisk([]uint64{31, 32}, []int{backup.ChunkSize, 700})
	d2 := testDisk([]uint64{33}, []int{800})
	if _, err := f.put(context.Background(), "h1", "job-1", append(slices.Clone(d1), d2...)); err != nil {
		t.Fatal(err)
	}
	m1, m2 := manifestOf(d1), manifestOf(d2)
	f.st.addPoint("rp-1", "near", []*yunchiv1.BackupManifest{m1}, []string{f.putManifest(t, "job-1", m1)}, "h2")
	f.st.addPoint("rp-2", "near", []*yunchiv1.BackupManifest{m2}, []string{f.putManifest(t, "job-1", m2)}, "h2")
	corrupt := func(c []byte) {
		b := slices.Clone(c)
		b[len(b)/2] ^= 0x80
		if err := os.WriteFile(f.chunkPath("near", c), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()

	// Found by verify first.
	corrupt(d1[0])
	v, err := f.s.Verify(ctx, "near")
	if err != nil {
		t.Fatal(err)
	}
	h0 := backup.HashOf(d1[0]).String()
	if len(v.Damaged) != 1 || v.Damaged[0].Sha256 != h0 || !strings.Contains(v.Damaged[0].Error, "hash to") ||
		!slices.Equal(v.DamagedPoints, []string{"rp-1"}) || len(v.DamagedManifests) != 0 || v.ChunksChecked != 2 {
		t.Fatalf("verify: %v", v)
	}
	got, err := readChunks(ctx, t, f.cl, "h2", "rp-1", [][]byte{m1.Chunks[1], m1.Chunks[0]})
	if status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), h0) || len(got) != 1 || !bytes.Equal(got[0], d1[1]) {
		t.Fatalf("read of a damaged chunk: %d chunks, %v", len(got), err)
	}

	// Found by a read first.
	corrupt(d2[0])
	h2 := backup.HashOf(d2[0]).String()
	got, err = readChunks(ctx, t, f.cl, "h2", "rp-2", m2.Chunks)
	if status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), h2) || len(got) != 0 {
		t.Fatalf("read of a damaged chunk: %d chunks, %v", len(got), err)
	}
	v, err = f.s.Verify(ctx, "near")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, d := range v.Damaged {
		names[d.Sha256] = true
	}
	if !names[h0] || !names[h2] || !slices.Equal(v.DamagedPoints, []string{"rp-1", "rp-2"}) {
		t.Fatalf("verify after the read: %v", v)
	}
	// The next backup with those bytes heals them.
	if _, err := f.put(ctx, "h1", "job-1", [][]byte{d1[0], d2[0]}); err != nil {
		t.Fatal(err)
	}
	if v, err := f.s.Verify(ctx, "near"); err != nil || len(v.Damaged)+len(v.DamagedPoints) != 0 {
		t.Fatalf("verify after healing: %v %v", v, err)
	}
	// A missing manifest damages its point.
	p2, _ := f.st.RestorePoint("rp-2")
	os.Remove(filepath.Join(f.base, "near", "manifests", p2.Disks[0].ManifestSha256))
	if v, err := f.s.Verify(ctx, "near"); err != nil || !slices.Equal(v.DamagedPoints, []string{"rp-2"}) || len(v.DamagedManifests) != 1 {
		t.Fatalf("verify without a manifest: %v %v", v, err)
	}
}

func TestBackupRepoGCKeepsReferencedAndYoung(t *testing.T) {
	f := newRepoFixture(t)
	ctx := context.Background()
	// a (full) and b: point rp-1; e: only in m2, whose job ended; c: sent,
	// never listed; g: in m3 of job-2, still running.
	ch := testDisk([]uint64{41, 42, 43, 44, 45}, []int{backup.ChunkSize, 900, 1000, 1100, 1200})
	a, b, c, e, g := ch[0], ch[1], ch[2], ch[3], ch[4]
	if _, err := f.put(ctx, "h1", "job-1", [][]byte{a, b, c, e}); err != nil {
		t.Fatal(err)
	}
	m1, m2 := manifestOf([][]byte{a, b}), manifestOf([][]byte{a, e})
	s1, s2 := f.putManifest(t, "job-1", m1), f.putManifest(t, "job-1", m2)
	f.st.addPoint("rp-1", "near", []*yunchiv1.BackupManifest{m1}, []string{s1})
	f.st.setJob(&statev1.BackupJobRecord{Id: "job-1", Center: "near", HostId: "h1", State: statev1.BackupJobState_BACKUP_JOB_STATE_FAILED})
	job2 := &statev1.BackupJobRecord{Id: "job-2", Center: "near", HostId: "h1", State: statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING,
		StartedUnixNano: time.Now().Add(-3 * time.Hour).UnixNano()}
	f.st.setJob(job2)
	if _, err := f.put(ctx, "h1", "job-2", [][]byte{g}); err != nil {
		t.Fatal(err)
	}
	s3 := f.putManifest(t, "job-2", manifestOf([][]byte{g}))

	then := time.Now().Add(-2 * time.Hour)
	for _, p := range f.storedFiles(t) {
		os.Chtimes(p, then, then)
	}
	young := testDisk([]uint64{46}, []int{1300})[0]
	if _, err := f.put(ctx, "h1", "job-2", [][]byte{young}); err != nil {
		t.Fatal(err)
	}
	all := [][]byte{a, b, c, e, g, young}
	present := func() (out []bool) {
		for _, x := range all {
			_, err := os.Stat(f.chunkPath("near", x))
			out = append(out, err == nil)
		}
		return out
	}

	// job-2 started 3 h ago: nothing since then may go.
	r, err := f.s.CollectGarbage(ctx, "near")
	if err != nil || r.ChunksRemoved != 0 || r.ChunksKept != 6 {
		t.Fatalf("GC while a 3 h old backup runs: %v %v", r, err)
	}
	job2.StartedUnixNano = time.Now().UnixNano()
	f.st.setJob(job2)
	r, err = f.s.CollectGarbage(ctx, "near")
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, true, false, false, true, true}; !slices.Equal(present(), want) {
		t.Fatalf("chunks a b c e g young present: %v, want %v", present(), want)
	}
	if r.Center != "near" || r.ChunksRemoved != 2 || r.BytesRemoved != int64(len(c)+len(e)) || r.ChunksKept != 4 {
		t.Fatalf("report %v", r)
	}
	hasManifest := func(s string) bool {
		_, err := os.Stat(filepath.Join(f.base, "near", "manifests", s))
		return err == nil
	}
	if !hasManifest(s1) || hasManifest(s2) || !hasManifest(s3) {
		t.Fatalf("manifests: point's %v, ended job's %v, running job's %v", hasManifest(s1), hasManifest(s2), hasManifest(s3))
	}
	// The point still reads back whole.
	f.st.mu.Lock()
	f.st.readers["rp-1"] = []string{"h2"}
	f.st.mu.Unlock()
	got, err := readChunks(ctx, t, f.cl, "h2", "rp-1", m1.Chunks)
	if err != nil || !bytes.Equal(bytes.Join(got, nil), append(slices.Clone(a), b...)) {
		t.Fatalf("point after GC: %v", err)
	}
	// Once job-2 ends without a point, its manifest and chunks go too.
	job2.State = statev1.BackupJobState_BACKUP_JOB_STATE_FAILED
	f.st.setJob(job2)
	for _, p := range f.storedFiles(t) {
		os.Chtimes(p, then, then)
	}
	if r, err = f.s.CollectGarbage(ctx, "near"); err != nil || r.ChunksRemoved != 2 || r.ChunksKept != 2 || hasManifest(s3) {
		t.Fatalf("GC after job-2 ended: %v %v (manifest kept %v)", r, err, hasManifest(s3))
	}
	if _, err := f.s.CollectGarbage(ctx, "far"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("GC of a center kept elsewhere: %v", err)
	}
}

// zeroManifest stores the zero chunk and returns the manifest of a disk
// of n zero chunks (a sparse disk: every chunk is the same one).
func zeroManifest(t *testing.T, f *repoFixture, n int) *yunchiv1.BackupManifest {
	t.Helper()
	zero := make([]byte, backup.ChunkSize)
	if _, err := f.put(context.Background(), "h1", "job-1", [][]byte{zero}); err != nil {
		t.Fatal(err)
	}
	h := backup.HashOf(zero)
	m := &yunchiv1.BackupManifest{SizeBytes: int64(n) * backup.ChunkSize, ChunkSize: backup.ChunkSize, Chunks: make([][]byte, n)}
	for i := range m.Chunks {
		m.Chunks[i] = h[:]
	}
	return m
}

// A manifest over the 4 MiB a gRPC message may hold here (the disk of
// 130,000 chunks, 508 GiB) goes in and comes back in pieces of at most
// 1 MiB, byte for byte; its point's chunks read; a stored copy damaged
// since ends the read with DATA_LOSS.
func TestBackupRepoManifestOver4MiB(t *testing.T) {
	f := newRepoFixture(t)
	ctx := context.Background()
	m := zeroManifest(t, f, 130000)
	enc, err := backup.EncodeManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) <= MaxGRPCRequest || int64(len(enc)) != backup.ManifestLen(m.SizeBytes) {
		t.Fatalf("the manifest is %d bytes (ManifestLen %d): the test wants one over %d", len(enc), backup.ManifestLen(m.SizeBytes), MaxGRPCRequest)
	}
	sha := f.putManifest(t, "job-1", m)
	if sha != backup.HashOf(enc).String() {
		t.Fatalf("manifest named %s, not the sha256 of its encoding", sha)
	}
	f.st.addPoint("rp-1", "near", []*yunchiv1.BackupManifest{m}, []string{sha}, "h2")
	got, err := f.getManifest(ctx, t, "h2", "rp-1", sha)
	if err != nil || !bytes.Equal(got, enc) {
		t.Fatalf("manifest read back: %d bytes of %d, equal %v, %v", len(got), len(enc), bytes.Equal(got, enc), err)
	}
	chunks, err := readChunks(ctx, t, f.cl, "h2", "rp-1", m.Chunks[:1])
	if err != nil || len(chunks) != 1 || len(chunks[0]) != backup.ChunkSize {
		t.Fatalf("the point's chunk: %d chunks, %v", len(chunks), err)
	}

	p := filepath.Join(f.base, "near", "manifests", sha)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[3<<20] ^= 1 // in the fourth piece
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err = f.getManifest(ctx, t, "h2", "rp-1", sha)
	if status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), "manifest "+sha+" is damaged") || !strings.Contains(err.Error(), "rp-1") {
		t.Fatalf("read of a damaged manifest: %d bytes, %v; want DATA_LOSS naming it and the point", len(got), err)
	}
}

// A manifest stream that is not right is refused with a one-line reason
// and stores nothing: a piece over 1 MiB, a stream that ends early or is
// cut, bytes that do not decode or are not the deterministic encoding,
// that do not hash to the sha256 said, more bytes than said, a length no
// manifest has, a manifest listing chunks the repository lacks.
func TestBackupRepoRefusesBadManifestStreams(t *testing.T) {
	f := newRepoFixture(t)
	ctx := context.Background()
	big := zeroManifest(t, f, 40000) // 1.36 MB encoded
	enc, _ := backup.EncodeManifest(big)
	h := backup.HashOf(enc)
	head := func(sha []byte, length int64) *yunchiv1.PutManifestRequest {
		return &yunchiv1.PutManifestRequest{HostId: "h1", JobId: "job-1", Sha256: sha, Length: length}
	}
	garbage := []byte("this is not a manifest at all")
	hg := backup.HashOf(garbage)
	// The same fields out of order: proto would decode it.
	var swapped []byte
	swapped = protowire.AppendTag(swapped, 2, protowire.VarintType)
	swapped = protowire.AppendVarint(swapped, backup.ChunkSize)
	swapped = protowire.AppendTag(swapped, 1, protowire.VarintType)
	swapped = protowire.AppendVarint(swapped, uint64(big.SizeBytes))
	swapped = append(swapped, enc[len(enc)-40000*34:]...)
	if err := proto.Unmarshal(swapped, &yunchiv1.BackupManifest{}); err != nil {
		t.Fatal(err)
	}
	hs := backup.HashOf(swapped)
	absent := backup.HashOf([]byte("absent"))
	lacking, _ := backup.EncodeManifest(&yunchiv1.BackupManifest{SizeBytes: 10, ChunkSize: backup.ChunkSize, Chunks: [][]byte{absent[:]}})
	hl := backup.HashOf(lacking)
	other := backup.HashOf([]byte("other"))
	for _, tc := range []struct {
		name  string
		head  *yunchiv1.PutManifestRequest
		enc   []byte
		piece int
		code  codes.Code
		want  string
	}{
		{"piece over 1 MiB", head(h[:], int64(len(enc))), enc, maxBackupPiece + 1, codes.InvalidArgument, "holds 1048577 bytes: at most 1048576"},
		{"stream ends early", head(h[:], int64(len(enc))), enc[:len(enc)/2], maxBackupPiece, codes.InvalidArgument, fmt.Sprintf("ended after %d of its %d bytes", len(enc)/2, len(enc))},
		{"does not decode", head(hg[:], int64(len(garbage))), garbage, maxBackupPiece, codes.InvalidArgument, "not the deterministic encoding of a BackupManifest"},
		{"fields out of order", head(hs[:], int64(len(swapped))), swapped, maxBackupPiece, codes.InvalidArgument, "not the deterministic encoding of a BackupManifest"},
		{"sha256 not its", head(other[:], int64(len(enc))), enc, maxBackupPiece, codes.InvalidArgument, "hash to " + h.String() + ", not to its name " + other.String()},
		{"sha256 of 31 bytes", head(h[:31], int64(len(enc))), enc, maxBackupPiece, codes.InvalidArgument, "a sha256 is 32 bytes, not 31"},
		{"more bytes than said", head(h[:], int64(len(enc))-34), enc, maxBackupPiece, codes.InvalidArgument, "run past the"},
		{"longer than any manifest", head(h[:], backup.MaxManifestBytes+1), enc, maxBackupPiece, codes.InvalidArgument, "at most 570425357 (the manifest of a 64 TiB disk)"},
		{"no length", head(h[:], 0), enc, maxBackupPiece, codes.InvalidArgument, "said to be 0 bytes long"},
		{"chunks missing", head(hl[:], int64(len(lacking))), lacking, maxBackupPiece, codes.FailedPrecondition, "1 of the manifest's 1 chunks are not in the backup repository"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.sendManifestAs(ctx, tc.head, tc.enc, tc.piece)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("%v, want %v with %q", err, tc.code, tc.want)
			}
		})
	}
	stream, err := f.cl.PutManifest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "the stream is empty") {
		t.Fatalf("empty stream: %v", err)
	}
	// Cut midway: the handler sees the stream break.
	cctx, cancel := context.WithCancel(ctx)
	stream, err = f.cl.PutManifest(cctx)
	if err != nil {
		t.Fatal(err)
	}
	first := head(h[:], int64(len(enc)))
	first.Data = enc[:maxBackupPiece]
	if err := stream.Send(first); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	tmp := filepath.Join(f.base, "near", "tmp")
	for ents, _ := os.ReadDir(tmp); len(ents) == 0; ents, _ = os.ReadDir(tmp) {
		if time.Now().After(deadline) {
			t.Fatal("the cut stream's manifest never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.Canceled {
		t.Fatalf("cut stream: %v", err)
	}
	for ents, _ := os.ReadDir(tmp); len(ents) != 0; ents, _ = os.ReadDir(tmp) {
		if time.Now().After(deadline) {
			t.Fatalf("partial files left: %v", ents)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, p := range f.storedFiles(t) {
		if !strings.Contains(p, string(filepath.Separator)+"chunks"+string(filepath.Separator)) {
			t.Errorf("stored: %s", p)
		}
	}
	// The right stream after all that is taken.
	if _, err := f.sendManifest(ctx, "h1", "job-1", enc, maxBackupPiece); err != nil {
		t.Fatal(err)
	}
}

// A check waits for this controller to apply what the leader decided: a
// job that shows up here a moment after the host asks is accepted.
func TestBackupRepoWaitsForTheStateToCatchUp(t *testing.T) {
	f := newRepoFixture(t)
	go func() {
		time.Sleep(300 * time.Millisecond)
		f.st.setJob(&statev1.BackupJobRecord{Id: "job-late", VmId: "vm-1", Center: "near", HostId: "h1",
			State: statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING, StartedUnixNano: time.Now().UnixNano()})
	}()
	if _, err := f.cl.HaveChunks(context.Background(), &yunchiv1.HaveChunksRequest{HostId: "h1", JobId: "job-late", Chunks: [][]byte{make([]byte, 32)}}); err != nil {
		t.Fatalf("a job applied 300 ms late: %v", err)
	}
	f.s.CatchUpWait = 100 * time.Millisecond
	go func() {
		time.Sleep(500 * time.Millisecond)
		f.st.setJob(&statev1.BackupJobRecord{Id: "job-later", VmId: "vm-1", Center: "near", HostId: "h1",
			State: statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING, StartedUnixNano: time.Now().UnixNano()})
	}()
	if _, err := f.cl.HaveChunks(context.Background(), &yunchiv1.HaveChunksRequest{HostId: "h1", JobId: "job-later", Chunks: [][]byte{make([]byte, 32)}}); status.Code(err) != codes.NotFound {
		t.Fatalf("a job applied after the wait: %v, want NotFound", err)
	}
}
