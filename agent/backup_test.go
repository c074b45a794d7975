package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/agent"
	"github.com/yunchi/yunchi/agent/libvirt"
	"github.com/yunchi/yunchi/controller/api"
	"github.com/yunchi/yunchi/controller/backup"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

const cs = agent.BackupChunkSize

// backupLedger is the leader's side of backup jobs in the controller
// test double (guarded by controller.mu): a job is listed until it is
// reported, or for ever with keepListing (a leader behind the reports).
type backupLedger struct {
	jobs        []*yunchiv1.BackupJob
	reports     []*yunchiv1.ReportBackupRequest
	keepListing bool
	records     *repoRecords // what the repositories are told
}

func (l *backupLedger) listed() []*yunchiv1.BackupJob {
	var out []*yunchiv1.BackupJob
	for _, j := range l.jobs {
		out = append(out, proto.Clone(j).(*yunchiv1.BackupJob))
	}
	return out
}

func (c *controller) putBackup(jobs ...*yunchiv1.BackupJob) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, j := range jobs {
		c.bk.jobs = append(c.bk.jobs, proto.Clone(j).(*yunchiv1.BackupJob))
		c.bk.records.started(j)
	}
	c.changed()
}

func (c *controller) keepListingBackups() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bk.keepListing = true
}

// backupReports returns the reports of job id, oldest first.
func (c *controller) backupReports(id string) []*yunchiv1.ReportBackupRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*yunchiv1.ReportBackupRequest
	for _, r := range c.bk.reports {
		if r.GetJobId() == id {
			out = append(out, r)
		}
	}
	return out
}

func (c *controller) ReportBackup(ctx context.Context, req *yunchiv1.ReportBackupRequest) (*yunchiv1.ReportBackupResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bk.reports = append(c.bk.reports, proto.Clone(req).(*yunchiv1.ReportBackupRequest))
	c.bk.records.reported(req)
	if !c.bk.keepListing {
		c.bk.jobs = slices.DeleteFunc(c.bk.jobs, func(j *yunchiv1.BackupJob) bool { return j.GetJobId() == req.GetJobId() })
	}
	c.changed()
	return &yunchiv1.ReportBackupResponse{}, nil
}

func (s *server) ReportBackup(ctx context.Context, req *yunchiv1.ReportBackupRequest) (*yunchiv1.ReportBackupResponse, error) {
	if err := s.unavailable(ctx); err != nil {
		return nil, err
	}
	return s.c.ReportBackup(ctx, req)
}

// repoRecords are the records the repository service reads from the
// replicated state (api.RepoState), kept by the controller test double:
// centers dc2 and dc3, both kept by controller "c1"; a job is RUNNING
// from when it is listed until it is reported (then failed, or gone); a
// job reported without error becomes a restore point (named by the job id) the host may read.
type repoRecords struct {
	mu     sync.Mutex
	jobs   map[string]*statev1.BackupJobRecord
	points map[string]*statev1.RestorePointRecord
}

func newRepoRecords() *repoRecords {
	return &repoRecords{jobs: map[string]*statev1.BackupJobRecord{}, points: map[string]*statev1.RestorePointRecord{}}
}

func (st *repoRecords) Center(name string) (*statev1.CenterRecord, bool) {
	if name != "dc2" && name != "dc3" {
		return nil, false
	}
	return &statev1.CenterRecord{Name: name, RepositoryMember: "c1"}, true
}

func (st *repoRecords) BackupJob(id string) (*statev1.BackupJobRecord, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	j, ok := st.jobs[id]
	if ok {
		j = proto.Clone(j).(*statev1.BackupJobRecord)
	}
	return j, ok
}

func (st *repoRecords) RestorePoint(id string) (*statev1.RestorePointRecord, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	p, ok := st.points[id]
	return p, ok
}

func (st *repoRecords) RestorePointsIn(center string) []*statev1.RestorePointRecord {
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

func (st *repoRecords) HostMayReadPoint(host, point string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	p, ok := st.points[point]
	return ok && p.HostId == host
}

func (st *repoRecords) started(j *yunchiv1.BackupJob) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.jobs[j.GetJobId()] = &statev1.BackupJobRecord{Id: j.GetJobId(), VmId: j.GetVmId(), Center: j.GetCenter(), HostId: "host-1",
		State: statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING, StartedUnixNano: time.Now().UnixNano()}
}

func (st *repoRecords) reported(r *yunchiv1.ReportBackupRequest) {
	st.mu.Lock()
	defer st.mu.Unlock()
	j := st.jobs[r.GetJobId()]
	if j == nil {
		return
	}
	if r.GetError() != "" {
		j.State = statev1.BackupJobState_BACKUP_JOB_STATE_FAILED
		return
	}
	delete(st.jobs, j.Id) // done: the point is its record
	p := &statev1.RestorePointRecord{Id: j.Id, VmId: j.VmId, Center: j.Center, HostId: r.GetHostId(), TakenUnixNano: r.GetTakenUnixNano()}
	for _, d := range r.GetDisks() {
		p.Disks = append(p.Disks, &statev1.DiskPoint{Name: d.GetName(), SizeBytes: d.GetSizeBytes(), ManifestSha256: d.GetManifestSha256(), Chunks: d.GetChunks()})
	}
	st.points[j.Id] = p
}

// testRepo is a center's backup repository as the agents meet it:
// controller/api's BackupRepoServer over a controller/backup repository
// in a temporary directory, reading repoRecords. Interceptors around the
// real handlers see what passes and inject the faults the tests order.
type testRepo struct {
	addr string
	srv  *api.BackupRepoServer
	base string

	mu        sync.Mutex
	streams   [][][32]byte // per PutChunks stream, the chunks whose last piece reached the service
	received  int64        // chunk bytes that reached the service, pieces of cut chunks included
	asked     [][32]byte   // chunks asked by GetChunks
	getCalls  [][][32]byte // chunks asked, per GetChunks call
	getChunks int          // GetChunks calls
	getMans   int          // GetManifest calls
	// manifestRecv is the manifest bytes that reached the service;
	// manifestPieces the length of each PutManifest message's piece.
	manifestRecv   int64
	manifestPieces []int
	// cutAfter: the next PutChunks stream breaks after that many pieces
	// (0: none).
	cutAfter       int
	refuseManifest bool
	// cutGetAfter: the next GetChunks stream breaks after sending that
	// many pieces (0: none).
	cutGetAfter int
	// flip: a byte of this chunk is flipped on its way to the agent.
	flip *[32]byte
}

func serveRepo(t *testing.T, st *repoRecords) *testRepo {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &testRepo{addr: lis.Addr().String(), base: t.TempDir()}
	r.srv = api.NewBackupRepoServer(r.base, "c1", st, nil, slog.New(slog.NewTextHandler(t.Output(), nil)))
	srv := grpc.NewServer(grpc.UnaryInterceptor(r.unary), grpc.StreamInterceptor(r.stream))
	yunchiv1.RegisterBackupRepoServiceServer(srv, r.srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return r
}

func (r *testRepo) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(ctx, req)
}

func (r *testRepo) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	r.mu.Lock()
	w := &repoStream{ServerStream: ss, r: r}
	if strings.HasSuffix(info.FullMethod, "/GetChunks") {
		w.cut, r.cutGetAfter = r.cutGetAfter, 0
	}
	if strings.HasSuffix(info.FullMethod, "/PutChunks") {
		w.cut, r.cutAfter = r.cutAfter, 0
		r.streams = append(r.streams, nil)
		w.n = len(r.streams) - 1
	}
	if strings.HasSuffix(info.FullMethod, "/GetManifest") {
		r.getMans++
	}
	refuse := r.refuseManifest && strings.HasSuffix(info.FullMethod, "/PutManifest")
	r.mu.Unlock()
	if refuse {
		return status.Error(codes.FailedPrecondition, "manifest refused by the test")
	}
	return handler(srv, w)
}

// repoStream watches one stream of the repository service.
type repoStream struct {
	grpc.ServerStream
	r      *testRepo
	n      int      // PutChunks: the stream's place in r.streams
	cut    int      // pieces to pass before the stream breaks (0: no break)
	pieces int      // pieces passed
	cur    [32]byte // the chunk being passed
}

func (s *repoStream) RecvMsg(m any) error {
	if s.cut > 0 && s.pieces == s.cut {
		return status.Error(codes.Unavailable, "stream cut by the test")
	}
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	switch m := m.(type) {
	case *yunchiv1.PutChunkRequest:
		s.pieces++
		r.received += int64(len(m.GetData()))
		if len(m.GetSha256()) == 32 {
			s.cur = [32]byte(m.GetSha256())
		}
		if m.GetEnd() {
			r.streams[s.n] = append(r.streams[s.n], s.cur)
		}
	case *yunchiv1.PutManifestRequest:
		r.manifestRecv += int64(len(m.GetData()))
		r.manifestPieces = append(r.manifestPieces, len(m.GetData()))
	case *yunchiv1.GetChunksRequest:
		r.getChunks++
		var call [][32]byte
		for _, c := range m.GetChunks() {
			call = append(call, [32]byte(c))
		}
		r.asked = append(r.asked, call...)
		r.getCalls = append(r.getCalls, call)
	}
	return nil
}

func (s *repoStream) SendMsg(m any) error {
	if p, ok := m.(*yunchiv1.ChunkPiece); ok {
		if s.cut > 0 && s.pieces == s.cut {
			return status.Error(codes.Unavailable, "stream cut by the test")
		}
		s.pieces++
		s.r.mu.Lock()
		flip := s.r.flip
		s.r.mu.Unlock()
		if flip != nil && bytes.Equal(p.GetSha256(), flip[:]) {
			p = proto.Clone(p).(*yunchiv1.ChunkPiece)
			p.Data[len(p.Data)/2] ^= 0xff
			m = p
		}
	}
	return s.ServerStream.SendMsg(m)
}

func (r *testRepo) repo(t *testing.T, center string) *backup.Repo {
	t.Helper()
	repo, err := r.srv.Repo(center)
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

// manifest reads a stored manifest.
func (r *testRepo) manifest(t *testing.T, sha string) *yunchiv1.BackupManifest {
	t.Helper()
	m, err := r.repo(t, "dc2").Manifest(sha)
	if err != nil {
		t.Fatalf("manifest %s: %v", sha, err)
	}
	return m
}

// readBack is the disk a stored manifest describes, from the stored
// chunks (each checked by the repository as it is read).
func (r *testRepo) readBack(t *testing.T, sha string) []byte {
	t.Helper()
	m := r.manifest(t, sha)
	var out []byte
	for i, c := range m.GetChunks() {
		b, err := r.repo(t, "dc2").Chunk(backup.Hash(c))
		if err != nil {
			t.Fatalf("manifest %s chunk %d: %v", sha[:12], i, err)
		}
		out = append(out, b...)
	}
	if int64(len(out)) != m.GetSizeBytes() {
		t.Fatalf("manifest %s: chunks make %d bytes, its size is %d", sha[:12], len(out), m.GetSizeBytes())
	}
	return out
}

// corrupt flips a byte of a stored chunk of dc2's repository.
func (r *testRepo) corrupt(t *testing.T, sum [32]byte) {
	t.Helper()
	p := filepath.Join(r.base, "dc2", "chunks", hex.EncodeToString(sum[:1]), hex.EncodeToString(sum[:]))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// stats are the chunks and bytes the repository of center holds.
func (r *testRepo) stats(t *testing.T, center string) backup.Stats {
	t.Helper()
	s, err := r.repo(t, center).Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// passed is, per PutChunks stream, the chunks that reached the service.
func (r *testRepo) passed() [][][32]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.streams)
}

func (r *testRepo) receivedBytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.received
}

func (r *testRepo) manifestBytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.manifestRecv
}

// storedTimes counts, for each chunk, the streams that passed it whole.
func (r *testRepo) storedTimes() map[[32]byte]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[[32]byte]int{}
	for _, s := range r.streams {
		for _, c := range s {
			out[c]++
		}
	}
	return out
}

// diskHost is a simulated host whose VMs' root disks are real sparse
// files: agent/libvirt's test driver with Options.DiskDir, which makes a
// VM's disk at Define (filled from a restore's source) and gives full
// views of it. What the simulated disks lack, it adds for the tests:
// checkpoints (a view given as Since the checkpoint the last kept view
// made is incremental, listing what the test wrote since), a gate holding
// BeginBackup, and counts of views, reads and the pieces a restore writes.
type diskHost struct {
	agent.Driver
	real *libvirt.Driver

	reads  atomic.Int64 // ReadAt calls
	begins atomic.Int32

	mu sync.Mutex
	// gate, when set, holds every BeginBackup until it is closed.
	gate        chan struct{}
	checkpoints map[string]string         // VM -> checkpoint kept
	changed     map[string][]agent.Extent // VM -> written since that checkpoint
	closes      []bool                    // Close's keep, in order
	begun       []string                  // VM of each view, in order
	active      map[string]int            // views open, by VM
	maxActive   int                       // most views open at once
	maxPerVM    int
	filled      map[string][]agent.Extent // VM -> pieces its restore wrote
}

func newDiskHost(t *testing.T) *diskHost {
	t.Helper()
	uri, err := libvirt.WriteTestNodeXML(filepath.Join(t.TempDir(), "node.xml"), libvirt.TestNode{CPUs: 8, MemoryBytes: 32 << 30})
	if err != nil {
		t.Fatal(err)
	}
	d, err := libvirt.OpenWithOptions(uri, libvirt.Options{DiskDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return &diskHost{Driver: d, real: d, checkpoints: map[string]string{}, changed: map[string][]agent.Extent{},
		active: map[string]int{}, filled: map[string][]agent.Extent{}}
}

// path is vm's disk file, which need not exist.
func (h *diskHost) path(t *testing.T, vm string) string {
	t.Helper()
	p, _ := h.real.SimDiskPath(vm)
	if p == "" {
		t.Fatalf("no disk path for %s", vm)
	}
	return p
}

// write writes p into vm's disk at off, as a guest would.
func (h *diskHost) write(t *testing.T, vm string, off int64, p []byte) {
	t.Helper()
	f, err := os.OpenFile(h.path(t, vm), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.changed[vm] = append(h.changed[vm], agent.Extent{Offset: off, Length: int64(len(p))})
	h.mu.Unlock()
}

func (h *diskHost) contents(t *testing.T, vm string) []byte {
	t.Helper()
	b, err := os.ReadFile(h.path(t, vm))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (h *diskHost) Define(ctx context.Context, spec agent.DomainSpec) error {
	if spec.RootSource != nil {
		spec.RootSource = &seenSource{DiskSource: spec.RootSource, h: h, vm: spec.VMID}
	}
	return h.Driver.Define(ctx, spec)
}

// seenSource records the pieces a restore writes.
type seenSource struct {
	agent.DiskSource
	h  *diskHost
	vm string
}

func (s *seenSource) Fill(ctx context.Context, write func(off int64, p []byte) error) error {
	return s.DiskSource.Fill(ctx, func(off int64, p []byte) error {
		s.h.mu.Lock()
		s.h.filled[s.vm] = append(s.h.filled[s.vm], agent.Extent{Offset: off, Length: int64(len(p))})
		s.h.mu.Unlock()
		return write(off, p)
	})
}

func (h *diskHost) BeginBackup(ctx context.Context, req agent.BackupRequest) (agent.BackupView, error) {
	h.begins.Add(1)
	h.mu.Lock()
	gate := h.gate
	h.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// The simulated disks make no checkpoints: the view is asked for none.
	real, err := h.Driver.BeginBackup(ctx, agent.BackupRequest{VMID: req.VMID})
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	v := &seenView{BackupView: real, h: h, vm: req.VMID, checkpoint: req.Checkpoint}
	if req.Since != "" && h.checkpoints[req.VMID] == req.Since {
		v.incremental = true
		v.changed = mergeExtents(h.changed[req.VMID])
	}
	h.begun = append(h.begun, req.VMID)
	h.active[req.VMID]++
	n := 0
	for _, k := range h.active {
		n += k
	}
	h.maxActive = max(h.maxActive, n)
	h.maxPerVM = max(h.maxPerVM, h.active[req.VMID])
	return v, nil
}

func (h *diskHost) closed() []bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.closes)
}

// mergeExtents sorts extents and merges those that meet.
func mergeExtents(ext []agent.Extent) []agent.Extent {
	ext = slices.Clone(ext)
	slices.SortFunc(ext, func(a, b agent.Extent) int { return int(a.Offset - b.Offset) })
	var out []agent.Extent
	for _, e := range ext {
		if n := len(out); n > 0 && e.Offset <= out[n-1].Offset+out[n-1].Length {
			out[n-1].Length = max(out[n-1].Length, e.Offset+e.Length-out[n-1].Offset)
			continue
		}
		out = append(out, e)
	}
	return out
}

// seenView is the driver's full view of a disk file, with the test's
// checkpoints: incremental, it lists what the test wrote since.
type seenView struct {
	agent.BackupView
	h           *diskHost
	vm          string
	incremental bool
	changed     []agent.Extent
	checkpoint  string
}

func (v *seenView) Incremental() bool  { return v.incremental }
func (v *seenView) Checkpoint() string { return v.checkpoint }

func (v *seenView) Changed(ctx context.Context, disk string) ([]agent.Extent, error) {
	if v.incremental {
		return v.changed, nil
	}
	return v.BackupView.Changed(ctx, disk)
}

func (v *seenView) ReadAt(ctx context.Context, disk string, p []byte, off int64) error {
	v.h.reads.Add(1)
	return v.BackupView.ReadAt(ctx, disk, p, off)
}

func (v *seenView) Close(ctx context.Context, keep bool) error {
	err := v.BackupView.Close(ctx, keep)
	h := v.h
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closes = append(h.closes, keep)
	h.active[v.vm]--
	if keep && v.checkpoint != "" {
		h.checkpoints[v.vm] = v.checkpoint
		h.changed[v.vm] = nil
	}
	return err
}

// backupEnv is a host agent with file disks, its controller and the
// repository of center dc2.
type backupEnv struct {
	c       *controller
	srv     *server
	records *repoRecords
	repo    *testRepo
	h       *diskHost
}

func newBackupEnv(t *testing.T, mod func(*agent.Config)) *backupEnv {
	t.Helper()
	c := newController()
	s := serve(t, c)
	records := newRepoRecords()
	c.bk.records = records
	e := &backupEnv{c: c, srv: s, records: records, repo: serveRepo(t, records), h: newDiskHost(t)}
	cfg := config(t, s.addr)
	if mod != nil {
		mod(&cfg)
	}
	start(t, cfg, e.h)
	return e
}

// runningVM makes a running VM with a root disk of size bytes.
func (e *backupEnv) runningVM(t *testing.T, id string, size int64) {
	t.Helper()
	as := vm(id, "vm-"+id[:4], running)
	as.DiskBytes = size
	e.c.put(as)
	eventually(t, id+" running", func() bool { return e.c.phase(id) == phaseRunning })
}

// backup runs job and returns its report.
func (e *backupEnv) backup(t *testing.T, job *yunchiv1.BackupJob) *yunchiv1.ReportBackupRequest {
	t.Helper()
	e.c.putBackup(job)
	waitFor(t, "report of "+job.GetJobId(), func() bool { return len(e.c.backupReports(job.GetJobId())) > 0 })
	return e.c.backupReports(job.GetJobId())[0]
}

func (e *backupEnv) job(id, vmID string) *yunchiv1.BackupJob {
	return &yunchiv1.BackupJob{JobId: id, VmId: vmID, Center: "dc2", RepositoryAddress: e.repo.addr, Checkpoint: "cp-" + id}
}

// after makes job an increment on the point prev made (the double names
// points by their job id), from its checkpoint when withCheckpoint.
func after(job *yunchiv1.BackupJob, prev *yunchiv1.ReportBackupRequest, withCheckpoint bool) *yunchiv1.BackupJob {
	job.BasePointId = prev.GetJobId()
	if withCheckpoint {
		job.BaseCheckpoint = prev.GetCheckpoint()
	}
	for _, d := range prev.GetDisks() {
		job.BaseDisks = append(job.BaseDisks, &yunchiv1.DiskRef{Name: d.GetName(), SizeBytes: d.GetSizeBytes(), ManifestSha256: d.GetManifestSha256()})
	}
	return job
}

// waitFor is eventually with room for the disk work of backups and
// restores (tens of MiB hashed, stored and synced) on a loaded machine.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func okReport(t *testing.T, r *yunchiv1.ReportBackupRequest) *yunchiv1.BackupDiskResult {
	t.Helper()
	if r.GetError() != "" {
		t.Fatalf("backup %s failed: %s", r.GetJobId(), r.GetError())
	}
	if len(r.GetDisks()) != 1 || r.GetDisks()[0].GetName() != "root" {
		t.Fatalf("backup %s: disks %v, want root only", r.GetJobId(), r.GetDisks())
	}
	if r.GetTakenUnixNano() == 0 || r.GetHostId() != "host-1" {
		t.Fatalf("backup %s: taken %d, host %q", r.GetJobId(), r.GetTakenUnixNano(), r.GetHostId())
	}
	return r.GetDisks()[0]
}

// sparseDisk writes the layout the backup tests share into vm's disk of
// 10 chunks and 1 MiB: data in chunks 0, 2, 3 (a few bytes), 5 (chunk 0's
// bytes again) and the short last one; chunks 1, 4, 6-9 are holes.
func sparseDisk(t *testing.T, e *backupEnv, vm string) int64 {
	size := int64(10*cs + 1<<20)
	e.runningVM(t, vm, size)
	a := randomBytes(t, cs)
	e.h.write(t, vm, 0, a)
	e.h.write(t, vm, 2*cs, randomBytes(t, cs))
	e.h.write(t, vm, 3*cs+5, []byte("a few bytes"))
	e.h.write(t, vm, 5*cs, a)
	e.h.write(t, vm, 10*cs, randomBytes(t, 1<<20))
	return size
}

// A full backup reads only the chunks holding data, stores every distinct
// chunk once (the zero chunk too, once), and its manifest gives back the
// disk byte for byte.
func TestBackupFullStoresNonZeroChunksOnce(t *testing.T) {
	e := newBackupEnv(t, nil)
	sparseDisk(t, e, vmA)
	r := e.backup(t, e.job("j1", vmA))
	d := okReport(t, r)

	if d.GetChunks() != 11 || d.GetReadChunks() != 5 {
		t.Errorf("chunks %d read %d, want 11 and 5 (the holes are not read)", d.GetChunks(), d.GetReadChunks())
	}
	if n := e.h.reads.Load(); n != 5 {
		t.Errorf("%d reads of the disk, want 5", n)
	}
	// 0 (=5), 2, 3, the last, and the zero chunk.
	wantBytes := int64(4*cs + 1<<20)
	if d.GetNewChunks() != 5 || d.GetNewBytes() != wantBytes {
		t.Errorf("new chunks %d bytes %d, want 5 and %d", d.GetNewChunks(), d.GetNewBytes(), wantBytes)
	}
	for sum, n := range e.repo.storedTimes() {
		if n != 1 {
			t.Errorf("chunk %x stored %d times", sum[:6], n)
		}
	}
	if got := len(e.repo.storedTimes()); got != 5 {
		t.Errorf("%d chunks in the repository, want 5", got)
	}
	if got := e.repo.receivedBytes(); got != wantBytes {
		t.Errorf("%d chunk bytes sent, want %d (nothing twice)", got, wantBytes)
	}
	if st := e.repo.stats(t, "dc2"); st.Chunks != 5 || st.Bytes != wantBytes {
		t.Errorf("the repository holds %d chunks of %d bytes, want 5 of %d", st.Chunks, st.Bytes, wantBytes)
	}
	if !bytes.Equal(e.repo.readBack(t, d.GetManifestSha256()), e.h.contents(t, vmA)) {
		t.Fatal("the manifest does not read back to the disk")
	}
	m := e.repo.manifest(t, d.GetManifestSha256())
	if m.GetChunkSize() != cs || m.GetSizeBytes() != 10*cs+1<<20 {
		t.Errorf("manifest chunk size %d size %d", m.GetChunkSize(), m.GetSizeBytes())
	}
	if r.GetIncremental() || r.GetCheckpoint() != "cp-j1" {
		t.Errorf("incremental %v checkpoint %q, want a full view that kept cp-j1", r.GetIncremental(), r.GetCheckpoint())
	}
	if c := e.h.closed(); !slices.Equal(c, []bool{true}) {
		t.Errorf("view closed with keep %v, want [true]", c)
	}
}

// A second backup of a disk with 2 chunks changed (a full view, as on a
// host without checkpoints) sends exactly those 2 chunks.
func TestBackupAfterChangeSendsOnlyChangedChunks(t *testing.T) {
	e := newBackupEnv(t, nil)
	sparseDisk(t, e, vmA)
	r1 := e.backup(t, e.job("j1", vmA))
	okReport(t, r1)
	streams := len(e.repo.passed())

	e.h.write(t, vmA, 2*cs+100, randomBytes(t, 1000)) // data changed
	e.h.write(t, vmA, 8*cs, randomBytes(t, cs))       // a hole filled
	r2 := e.backup(t, after(e.job("j2", vmA), r1, false))
	d := okReport(t, r2)

	if d.GetNewChunks() != 2 || d.GetNewBytes() != 2*cs {
		t.Errorf("new chunks %d bytes %d, want 2 and %d", d.GetNewChunks(), d.GetNewBytes(), 2*cs)
	}
	var sent int
	for _, s := range e.repo.passed()[streams:] {
		sent += len(s)
	}
	if sent != 2 {
		t.Errorf("%d chunks stored by the second backup, want 2", sent)
	}
	if d.GetReadChunks() != 6 || r2.GetIncremental() {
		t.Errorf("read %d chunks, incremental %v: want the 6 with data, full view", d.GetReadChunks(), r2.GetIncremental())
	}
	if st := e.repo.stats(t, "dc2"); st.Chunks != 7 {
		t.Errorf("the repository holds %d chunks, want the first 5 and 2 new", st.Chunks)
	}
	if !bytes.Equal(e.repo.readBack(t, d.GetManifestSha256()), e.h.contents(t, vmA)) {
		t.Fatal("the second manifest does not read back to the disk")
	}
}

// From the checkpoint of the previous point, only the chunks the view
// says changed are read; the others keep the base manifest's hashes.
func TestBackupIncrementalReadsOnlyChangedChunks(t *testing.T) {
	e := newBackupEnv(t, nil)
	sparseDisk(t, e, vmA)
	r1 := e.backup(t, e.job("j1", vmA))
	okReport(t, r1)
	reads := e.h.reads.Load()

	e.h.write(t, vmA, 3*cs+cs-10, []byte("0123456789"))
	e.h.write(t, vmA, 7*cs+4096, randomBytes(t, 8192))
	r2 := e.backup(t, after(e.job("j2", vmA), r1, true))
	d := okReport(t, r2)

	if !r2.GetIncremental() || r2.GetCheckpoint() != "cp-j2" {
		t.Errorf("incremental %v checkpoint %q, want true and cp-j2", r2.GetIncremental(), r2.GetCheckpoint())
	}
	if d.GetReadChunks() != 2 || e.h.reads.Load()-reads != 2 {
		t.Errorf("read_chunks %d, disk reads %d: want only the 2 changed", d.GetReadChunks(), e.h.reads.Load()-reads)
	}
	if d.GetNewChunks() != 2 {
		t.Errorf("new chunks %d, want 2", d.GetNewChunks())
	}
	if !bytes.Equal(e.repo.readBack(t, d.GetManifestSha256()), e.h.contents(t, vmA)) {
		t.Fatal("the incremental manifest does not read back to the disk")
	}
}

// An incremental backup makes sure the chunks it takes from its base
// without reading them are still in the repository: one set aside (a
// damaged chunk is) is read from the disk and sent again, so the new point
// is whole.
func TestBackupIncrementalHealsMissingBaseChunk(t *testing.T) {
	e := newBackupEnv(t, nil)
	sparseDisk(t, e, vmA)
	r1 := e.backup(t, e.job("j1", vmA))
	okReport(t, r1)
	c2 := sha256.Sum256(e.h.contents(t, vmA)[2*cs : 3*cs])
	name := hex.EncodeToString(c2[:])
	if err := os.Remove(filepath.Join(e.repo.base, "dc2", "chunks", name[:2], name)); err != nil {
		t.Fatal(err)
	}
	e.h.write(t, vmA, 7*cs+4096, randomBytes(t, 8192))
	d := okReport(t, e.backup(t, after(e.job("j2", vmA), r1, true)))
	if d.GetReadChunks() != 2 || d.GetNewChunks() != 2 {
		t.Errorf("read %d, new %d chunks: want the changed one and the missing base one", d.GetReadChunks(), d.GetNewChunks())
	}
	if !bytes.Equal(e.repo.readBack(t, d.GetManifestSha256()), e.h.contents(t, vmA)) {
		t.Fatal("the incremental manifest does not read back to the disk")
	}
}

// A stream cut midway is resumed: the repository is asked again and only
// the chunks it still lacks are sent; each is stored once.
func TestBackupStreamCutResumes(t *testing.T) {
	e := newBackupEnv(t, nil)
	size := int64(5 * cs)
	e.runningVM(t, vmA, size)
	data := randomBytes(t, int(size))
	e.h.write(t, vmA, 0, data)
	e.repo.mu.Lock()
	e.repo.cutAfter = 6 // chunk 0's 4 pieces, then 2 of chunk 1
	e.repo.mu.Unlock()
	d := okReport(t, e.backup(t, e.job("j1", vmA)))

	var sums [][32]byte
	for i := range 5 {
		sums = append(sums, sha256.Sum256(data[i*cs:(i+1)*cs]))
	}
	streams := e.repo.passed()
	received := e.repo.receivedBytes()
	if st := e.repo.stats(t, "dc2"); st.Chunks != 5 || st.Bytes != size {
		t.Errorf("the repository holds %d chunks of %d bytes, want 5 of %d", st.Chunks, st.Bytes, size)
	}
	if len(streams) != 2 || !slices.Equal(streams[0], sums[:1]) || !slices.Equal(streams[1], sums[1:]) {
		t.Fatalf("streams stored %d chunks then %v, want chunk 0, then chunks 1-4 after the cut", len(streams[0]), streams[1:])
	}
	if want := size + 2<<20; received != want {
		t.Errorf("%d bytes received, want %d (the disk and the 2 pieces cut)", received, want)
	}
	if d.GetNewChunks() != 5 {
		t.Errorf("new chunks %d, want 5", d.GetNewChunks())
	}
	if !bytes.Equal(e.repo.readBack(t, d.GetManifestSha256()), data) {
		t.Fatal("the manifest does not read back to the disk")
	}
}

// waitLog is a real limiter that records what it was asked.
type waitLog struct {
	*rate.Limiter
	center string
	bytes  atomic.Int64
}

func (w *waitLog) WaitN(ctx context.Context, n int) error {
	w.bytes.Add(int64(n))
	return w.Limiter.WaitN(ctx, n)
}

// --max-backup-rate: every byte sent waits on its target center's
// limiter, one limiter per center shared by the jobs to it.
func TestBackupRateLimiterConsultedPerCenter(t *testing.T) {
	var mu sync.Mutex
	made := map[string]*waitLog{}
	madeTimes := 0
	t.Cleanup(agent.SetBackupLimiter(func(center string, bytesPerSec int64) interface {
		WaitN(context.Context, int) error
	} {
		mu.Lock()
		defer mu.Unlock()
		madeTimes++
		if bytesPerSec != 256<<20 {
			t.Errorf("limiter made with rate %d", bytesPerSec)
		}
		w := &waitLog{Limiter: rate.NewLimiter(rate.Limit(bytesPerSec), 1<<20), center: center}
		made[center] = w
		return w
	}))
	e := newBackupEnv(t, func(c *agent.Config) { c.MaxBackupRate = 256 << 20 })
	remote := serveRepo(t, e.records)
	for _, id := range []string{vmA, vmB, vmC} {
		e.runningVM(t, id, 2*cs)
		e.h.write(t, id, 0, randomBytes(t, 2*cs))
	}
	jc := e.job("j3", vmC)
	jc.Center, jc.RepositoryAddress = "dc3", remote.addr
	e.c.putBackup(e.job("j1", vmA), e.job("j2", vmB), jc)
	for _, id := range []string{"j1", "j2", "j3"} {
		waitFor(t, "report of "+id, func() bool { return len(e.c.backupReports(id)) > 0 })
		okReport(t, e.c.backupReports(id)[0])
	}
	mu.Lock()
	defer mu.Unlock()
	if madeTimes != 2 || made["dc2"] == nil || made["dc3"] == nil {
		t.Fatalf("limiters made %d times for %v, want one for dc2 and one for dc3", madeTimes, made)
	}
	// Chunks and manifests alike.
	ml := backup.ManifestLen(2 * cs)
	if got, chunks, mans := made["dc2"].bytes.Load(), e.repo.receivedBytes(), e.repo.manifestBytes(); got != chunks+mans || chunks != 4*cs || mans != 2*ml {
		t.Errorf("dc2's limiter was asked for %d bytes, %d chunk bytes and %d manifest bytes were sent (want %d and %d)", got, chunks, mans, 4*cs, 2*ml)
	}
	if got, chunks, mans := made["dc3"].bytes.Load(), remote.receivedBytes(), remote.manifestBytes(); got != chunks+mans || chunks != 2*cs || mans != ml {
		t.Errorf("dc3's limiter was asked for %d bytes, %d chunk bytes and %d manifest bytes were sent (want %d and %d)", got, chunks, mans, 2*cs, ml)
	}
}

// Jobs run at most MaxBackups at once and one per VM at a time, each
// once: a job still listed after its report is not run again.
func TestBackupJobLimitsAndRunOnce(t *testing.T) {
	e := newBackupEnv(t, nil) // MaxBackups: 2 by default
	gate := make(chan struct{})
	e.h.mu.Lock()
	e.h.gate = gate
	e.h.mu.Unlock()
	for _, id := range []string{vmA, vmB, vmC} {
		e.runningVM(t, id, cs)
		e.h.write(t, id, 0, randomBytes(t, 100))
	}
	e.c.keepListingBackups()
	e.c.putBackup(e.job("j1", vmA), e.job("j2", vmA), e.job("j3", vmB), e.job("j4", vmC))
	eventually(t, "two jobs begun", func() bool { return e.h.begins.Load() == 2 })
	time.Sleep(200 * time.Millisecond) // room for a wrong third
	if n := e.h.begins.Load(); n != 2 {
		t.Fatalf("%d backups begun while 2 hold, want 2", n)
	}
	close(gate)
	for _, id := range []string{"j1", "j2", "j3", "j4"} {
		waitFor(t, "report of "+id, func() bool { return len(e.c.backupReports(id)) > 0 })
		okReport(t, e.c.backupReports(id)[0])
	}
	for range 3 { // new sets, all still listing the four jobs
		e.c.put(vm(vmA, "vm-"+vmA[:4], running))
		time.Sleep(50 * time.Millisecond)
	}
	e.h.mu.Lock()
	defer e.h.mu.Unlock()
	if e.h.maxActive != 2 || e.h.maxPerVM != 1 {
		t.Errorf("at most %d views open at once, %d of one VM: want 2 and 1", e.h.maxActive, e.h.maxPerVM)
	}
	if len(e.h.begun) != 4 {
		t.Errorf("%d backups begun for 4 jobs (%v)", len(e.h.begun), e.h.begun)
	}
	for _, id := range []string{"j1", "j2", "j3", "j4"} {
		if n := len(e.c.backupReports(id)); n != 1 {
			t.Errorf("job %s reported %d times", id, n)
		}
	}
}

// A backup that fails leaves the VM running, drops the view's new
// checkpoint and reports one line saying why; a job with bad fields is
// refused without touching anything.
func TestBackupFailureReportedVMUntouched(t *testing.T) {
	e := newBackupEnv(t, nil)
	e.runningVM(t, vmA, cs)
	e.h.write(t, vmA, 0, randomBytes(t, 100))
	e.repo.mu.Lock()
	e.repo.refuseManifest = true
	e.repo.mu.Unlock()
	r := e.backup(t, e.job("j1", vmA))
	if !strings.Contains(r.GetError(), "put manifest") || strings.Contains(r.GetError(), "\n") || len(r.GetDisks()) != 0 || r.GetCheckpoint() != "" {
		t.Errorf("report %v, want one line about the manifest and no result", r)
	}
	if c := e.h.closed(); !slices.Equal(c, []bool{false}) {
		t.Errorf("view closed with keep %v, want [false]", c)
	}
	if !domainIs(t, e.h, vmA, agent.StateRunning)() {
		t.Error("the VM is not running after its backup failed")
	}

	r = e.backup(t, e.job("j2", vmB)) // no such domain
	if !strings.Contains(r.GetError(), "begin backup") {
		t.Errorf("backup of a VM without a domain: error %q", r.GetError())
	}

	bad := e.job("j3", vmA)
	bad.RepositoryAddress = ""
	bad.BaseDisks = []*yunchiv1.DiskRef{{Name: "root", ManifestSha256: "nope"}}
	begins := e.h.begins.Load()
	r = e.backup(t, bad)
	for _, want := range []string{"invalid backup job", "repository_address is empty", `manifest_sha256 "nope"`, "without base_point_id"} {
		if !strings.Contains(r.GetError(), want) {
			t.Errorf("error %q does not say %q", r.GetError(), want)
		}
	}
	if e.h.begins.Load() != begins {
		t.Error("an invalid job began a backup")
	}
}

// A report the controllers do not take is tried again until they do;
// the job is not run again meanwhile.
func TestBackupReportRetriedUntilDelivered(t *testing.T) {
	e := newBackupEnv(t, nil)
	gate := make(chan struct{})
	e.h.mu.Lock()
	e.h.gate = gate
	e.h.mu.Unlock()
	e.runningVM(t, vmA, cs)
	e.h.write(t, vmA, 0, randomBytes(t, 100))
	e.c.putBackup(e.job("j1", vmA))
	eventually(t, "backup begun", func() bool { return e.h.begins.Load() == 1 })
	e.srv.hung.Store(true) // every call fails: the report cannot be delivered
	close(gate)
	waitFor(t, "view closed", func() bool { return len(e.h.closed()) == 1 })
	time.Sleep(time.Second) // a few tries fail
	if n := len(e.c.backupReports("j1")); n != 0 {
		t.Fatalf("%d reports delivered to a hung controller", n)
	}
	e.srv.hung.Store(false)
	waitFor(t, "report of j1", func() bool { return len(e.c.backupReports("j1")) > 0 })
	okReport(t, e.c.backupReports("j1")[0])
	time.Sleep(100 * time.Millisecond)
	if n, b := len(e.c.backupReports("j1")), e.h.begins.Load(); n != 1 || b != 1 {
		t.Errorf("%d reports and %d backups begun, want 1 and 1", n, b)
	}
}

// restoreVM is a VM whose root disk is rebuilt from the point of report r.
func restoreVM(id string, repoAddr string, r *yunchiv1.ReportBackupRequest) *yunchiv1.Assignment {
	d := r.GetDisks()[0]
	as := vm(id, "restored", running)
	as.DiskBytes = d.GetSizeBytes()
	as.Restore = &yunchiv1.RestoreRef{PointId: r.GetJobId(), Center: "dc2", RepositoryAddress: repoAddr,
		Disks: []*yunchiv1.DiskRef{{Name: "root", SizeBytes: d.GetSizeBytes(), ManifestSha256: d.GetManifestSha256()}}}
	return as
}

// A restored disk is the backed-up disk byte for byte; zero chunks are
// not fetched.
func TestRestoreRoundTrip(t *testing.T) {
	e := newBackupEnv(t, nil)
	sparseDisk(t, e, vmA)
	r := e.backup(t, e.job("j1", vmA))
	okReport(t, r)

	e.c.put(restoreVM(vmB, e.repo.addr, r))
	waitFor(t, "restored VM running", func() bool { return e.c.phase(vmB) == phaseRunning })
	if !bytes.Equal(e.h.contents(t, vmB), e.h.contents(t, vmA)) {
		t.Fatal("the restored disk differs from the backed-up one")
	}
	zero := sha256.Sum256(make([]byte, cs))
	e.repo.mu.Lock()
	defer e.repo.mu.Unlock()
	if slices.Contains(e.repo.asked, zero) {
		t.Error("the zero chunk was fetched")
	}
	if len(e.repo.asked) != 4 { // 0 (also 5), 2, 3, the last
		t.Errorf("%d chunks fetched, want the 4 distinct ones with data", len(e.repo.asked))
	}
}

// A restore stream cut midway resumes from the first chunk not yet
// written, and the disk comes out whole.
func TestRestoreStreamCutResumes(t *testing.T) {
	e, data, r := restoreSetup(t)
	e.repo.mu.Lock()
	e.repo.cutGetAfter = 6 // chunk 0's 4 pieces, then 2 of chunk 1
	e.repo.mu.Unlock()
	e.c.put(restoreVM(vmB, e.repo.addr, r))
	waitFor(t, "restored VM running", func() bool { return e.c.phase(vmB) == phaseRunning })
	if !bytes.Equal(e.h.contents(t, vmB), data) {
		t.Fatal("the restored disk differs from the backed-up one")
	}
	var sums [][32]byte
	for i := range 6 {
		sums = append(sums, sha256.Sum256(data[i*cs:(i+1)*cs]))
	}
	e.repo.mu.Lock()
	calls := slices.Clone(e.repo.getCalls)
	e.repo.mu.Unlock()
	if len(calls) != 2 || !slices.Equal(calls[0], sums) || !slices.Equal(calls[1], sums[1:]) {
		t.Fatalf("GetChunks asked %d chunks, then %v; want all 6, then chunks 1-5 after the cut", len(calls[0]), calls[1:])
	}
}

// A restore meeting a chunk damaged in the repository stops there: the
// repository refuses to send it, nothing is written from that chunk on,
// the VM is failed with the chunk named, no domain is defined, and the
// restore is not tried again at once.
func TestRestoreRefusesChunkDamagedInRepository(t *testing.T) {
	e, data, r := restoreSetup(t)
	e.repo.corrupt(t, sha256.Sum256(data[3*cs:4*cs]))
	restoreRefused(t, e, r, "is damaged")
}

// A chunk whose bytes do not match the manifest on arrival (damaged on
// the way, or by a repository that did not check) is refused by the agent
// itself, before it is written.
func TestRestoreRefusesChunkNotMatchingManifest(t *testing.T) {
	e, data, r := restoreSetup(t)
	bad := sha256.Sum256(data[3*cs : 4*cs])
	e.repo.mu.Lock()
	e.repo.flip = &bad
	e.repo.mu.Unlock()
	restoreRefused(t, e, r, "does not match the manifest: its 4194304 bytes hash to")
}

// restoreSetup backs up vmA's disk of 6 random chunks.
func restoreSetup(t *testing.T) (*backupEnv, []byte, *yunchiv1.ReportBackupRequest) {
	e := newBackupEnv(t, nil)
	size := int64(6 * cs)
	e.runningVM(t, vmA, size)
	data := randomBytes(t, int(size))
	e.h.write(t, vmA, 0, data)
	r := e.backup(t, e.job("j1", vmA))
	okReport(t, r)
	return e, data, r
}

// restoreRefused restores vmA's point as vmB and checks that it stops at
// chunk 3, saying why.
func restoreRefused(t *testing.T, e *backupEnv, r *yunchiv1.ReportBackupRequest, why string) {
	t.Helper()
	e.c.put(restoreVM(vmB, e.repo.addr, r))
	waitFor(t, "restored VM failed", func() bool { return e.c.phase(vmB) == phaseFailed })
	reports := e.c.reportsFor(vmB)
	msg := reports[len(reports)-1].GetMessage()
	if !strings.Contains(msg, "chunk 3 (sha256 ") || !strings.Contains(msg, why) {
		t.Fatalf("failure message %q does not name chunk 3 and say %q", msg, why)
	}
	e.h.mu.Lock()
	filled := slices.Clone(e.h.filled[vmB])
	e.h.mu.Unlock()
	want := []agent.Extent{{Offset: 0, Length: cs}, {Offset: cs, Length: cs}, {Offset: 2 * cs, Length: cs}}
	if !slices.Equal(filled, want) {
		t.Errorf("the restore wrote %v, want chunks 0-2 and nothing from the damaged one on", filled)
	}
	if _, ok := domains(t, e.h)[vmB]; ok {
		t.Error("a domain was defined for a VM whose restore failed")
	}
	if _, err := os.Stat(e.h.path(t, vmB)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the half-restored disk was left: %v", err)
	}
	e.repo.mu.Lock()
	calls := e.repo.getChunks
	e.repo.mu.Unlock()
	for range 3 {
		e.c.put(vm(vmC, "other", stopped)) // new sets: reconciles
		time.Sleep(50 * time.Millisecond)
	}
	e.repo.mu.Lock()
	defer e.repo.mu.Unlock()
	if e.repo.getChunks != calls {
		t.Errorf("the damaged restore was fetched again at once (%d GetChunks calls, then %d)", calls, e.repo.getChunks)
	}
}

// A restore that cannot be right (its disk size is not the point's) fails
// the VM with the reason, before anything is fetched or defined.
func TestRestoreBadRefFails(t *testing.T) {
	e := newBackupEnv(t, nil)
	e.runningVM(t, vmA, cs)
	e.h.write(t, vmA, 0, randomBytes(t, 100))
	r := e.backup(t, e.job("j1", vmA))
	okReport(t, r)
	e.repo.mu.Lock()
	gets := e.repo.getMans
	e.repo.mu.Unlock()

	as := restoreVM(vmB, e.repo.addr, r)
	as.DiskBytes = 2 * cs
	e.c.put(as)
	eventually(t, "VM failed", func() bool { return e.c.phase(vmB) == phaseFailed })
	reports := e.c.reportsFor(vmB)
	if msg := reports[len(reports)-1].GetMessage(); !strings.Contains(msg, "disk_bytes 8388608 is not the root disk's 4194304") {
		t.Errorf("failure message %q", msg)
	}
	e.repo.mu.Lock()
	defer e.repo.mu.Unlock()
	if e.repo.getMans != gets {
		t.Error("the repository was asked for a restore that cannot be right")
	}
	if _, err := os.Stat(e.h.path(t, vmB)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a disk was made for the refused restore: %v", err)
	}
}

// The agent encodes a manifest as proto's deterministic encoding (the
// repository names it by that and takes no other), in pieces of at most
// 1 MiB, and decodes it back in place.
func TestBackupManifestEncoding(t *testing.T) {
	for _, size := range []int64{0, 1, cs, cs + 1, 40000 * cs, 40000*cs - 7} {
		n := (size + cs - 1) / cs
		m := &yunchiv1.BackupManifest{SizeBytes: size, ChunkSize: cs}
		for i := range n {
			h := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
			m.Chunks = append(m.Chunks, h[:])
		}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		pieces := agent.ManifestPieces(size, m.Chunks)
		for i, p := range pieces {
			if len(p) == 0 || len(p) > 1<<20 {
				t.Fatalf("size %d: piece %d of %d bytes", size, i, len(p))
			}
		}
		got := bytes.Join(pieces, nil)
		if !bytes.Equal(got, want) || int64(len(got)) != backup.ManifestLen(size) {
			t.Fatalf("size %d: the agent's encoding (%d bytes) differs from proto's (%d bytes)", size, len(got), len(want))
		}
		sum := sha256.Sum256(got)
		back, err := agent.CheckManifest(got, hex.EncodeToString(sum[:]), size)
		if err != nil || !proto.Equal(back, m) {
			t.Fatalf("size %d: decoded back: %v", size, err)
		}
		if _, err := agent.CheckManifest(got, hex.EncodeToString(sum[:]), size+cs); err == nil {
			t.Fatalf("size %d: checked out against another disk size", size)
		}
	}
}

// dataExtents lists where a sparse file holds data (SEEK_DATA/SEEK_HOLE).
func dataExtents(t *testing.T, path string) []agent.Extent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	var out []agent.Extent
	for off := int64(0); off < st.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, agent.Extent{Offset: data, Length: hole - data})
		off = hole
	}
	return out
}

// A disk too large for its manifest to fit one gRPC message (600 GiB and
// 1 MiB: 153,601 chunks, a 5.2 MB manifest, over the 4 MiB a message may
// hold) backs up and restores through the repository service: the
// manifest travels in pieces of at most 1 MiB both ways. The disk is a
// sparse file with data in three chunks; the restored one holds the same
// bytes there and nothing anywhere else.
func TestBackupRestoreManifestOver4MiB(t *testing.T) {
	e := newBackupEnv(t, nil)
	size := int64(600<<30 + 1<<20)
	n := (size + cs - 1) / cs
	if ml := backup.ManifestLen(size); ml <= 4<<20 {
		t.Fatalf("the manifest of %d bytes fits a message: the test wants a larger disk", ml)
	}
	e.runningVM(t, vmA, size)
	writes := []struct {
		off int64
		p   []byte
	}{
		{0, randomBytes(t, cs)},
		{300<<30 + 5, []byte("a few bytes in the middle")},
		{size - 1<<20, randomBytes(t, 1<<20)},
	}
	for _, w := range writes {
		e.h.write(t, vmA, w.off, w.p)
	}
	r := e.backup(t, e.job("j1", vmA))
	d := okReport(t, r)
	if d.GetChunks() != n || d.GetReadChunks() != 3 || d.GetNewChunks() != 4 {
		t.Errorf("chunks %d read %d new %d, want %d, 3 and 4 (the 3 with data and the zero chunk)", d.GetChunks(), d.GetReadChunks(), d.GetNewChunks(), n)
	}
	st, err := os.Stat(filepath.Join(e.repo.base, "dc2", "manifests", d.GetManifestSha256()))
	if err != nil || st.Size() != backup.ManifestLen(size) {
		t.Fatalf("stored manifest: %v, %v; want %d bytes", st, err, backup.ManifestLen(size))
	}
	e.repo.mu.Lock()
	pieces := slices.Clone(e.repo.manifestPieces)
	e.repo.mu.Unlock()
	if len(pieces) < 5 || slices.Max(pieces) > 1<<20 {
		t.Errorf("the manifest came in %d pieces of at most %d bytes, want 5 or more of at most 1 MiB", len(pieces), slices.Max(pieces))
	}

	e.c.put(restoreVM(vmB, e.repo.addr, r))
	waitFor(t, "restored VM running", func() bool { return e.c.phase(vmB) == phaseRunning })
	pa, pb := e.h.path(t, vmA), e.h.path(t, vmB)
	sa, err := os.Stat(pa)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := os.Stat(pb)
	if err != nil || sb.Size() != sa.Size() {
		t.Fatalf("restored disk: %v, %v; want %d bytes", sb, err, sa.Size())
	}
	fa, err := os.Open(pa)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(pb)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	// The chunks with data, byte for byte.
	for _, off := range []int64{0, 300 << 30, size - 1<<20} {
		l := min(cs, size-off)
		a, b := make([]byte, l), make([]byte, l)
		if _, err := fa.ReadAt(a, off); err != nil {
			t.Fatal(err)
		}
		if _, err := fb.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("the restored disk differs in the chunk at %d", off)
		}
	}
	// Nothing elsewhere: the rest reads as zeroes.
	for _, x := range dataExtents(t, pb) {
		inData := false
		for _, off := range []int64{0, 300 << 30, size - 1<<20} {
			inData = inData || (x.Offset >= off && x.Offset+x.Length <= off+cs)
		}
		if !inData {
			t.Fatalf("the restored disk holds data at %d+%d, outside the chunks backed up with data", x.Offset, x.Length)
		}
	}
	e.repo.mu.Lock()
	defer e.repo.mu.Unlock()
	if len(e.repo.asked) != 3 {
		t.Errorf("%d chunks fetched, want the 3 with data", len(e.repo.asked))
	}
}
