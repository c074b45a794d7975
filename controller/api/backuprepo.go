package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/backup"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Backup repositories. A controller keeps the repository of every center
// whose record names it (CenterRecord.repository_member), one
// controller/backup.Repo per center under its base directory
// (BASE/<center>/), and serves BackupRepoService to the agents, which dial
// it directly (nothing here goes through raft or the leader). Writes
// (HaveChunks, PutChunks, PutManifest) are for a running backup job of the
// calling host to a center kept here; reads (GetManifest, GetChunks) for a
// restore point the calling host may read, and only the chunks and
// manifests of that point. Chunk bytes travel in pieces of at most 1 MiB;
// each chunk is checked against its sha256 when its last piece arrives and
// stored then, so a broken stream keeps every chunk it completed and the
// agent resumes by asking HaveChunks again. Manifests travel in pieces of
// at most 1 MiB too (a 64 TiB disk's is 570 MB, and gRPC messages are at
// most 4 MiB here): one is stored whole once its stream ended and it
// checked out, or not at all.

const (
	// maxBackupPiece bounds the data of one message of PutChunks,
	// GetChunks, PutManifest and GetManifest.
	maxBackupPiece = 1 << 20
	// DefaultBackupGCGrace: unreferenced chunks and manifests younger than
	// this are kept (a backup in flight may be about to use them).
	DefaultBackupGCGrace = time.Hour
	// backupPointCache is how many restore points' chunk sets GetChunks
	// keeps (a restore reads its point in many calls).
	backupPointCache = 8
	// maxBackupJobsSeen bounds the jobs remembered for GC (running ones
	// are kept, ended ones dropped when it is reached).
	maxBackupJobsSeen = 4096
	maxBackupJobID    = 128
)

// RepoState is what the backup repository service reads from the
// replicated state (*state.Store implements it).
type RepoState interface {
	Center(name string) (*statev1.CenterRecord, bool)
	BackupJob(id string) (*statev1.BackupJobRecord, bool)
	RestorePoint(id string) (*statev1.RestorePointRecord, bool)
	RestorePointsIn(center string) []*statev1.RestorePointRecord
	HostMayReadPoint(hostID, pointID string) bool
}

// BackupRepoServer serves BackupRepoService for the centers this
// controller keeps, and verifies and collects their repositories for the
// public BackupService.
type BackupRepoServer struct {
	yunchiv1.UnimplementedBackupRepoServiceServer

	base, member string
	st           RepoState
	log          *slog.Logger

	// CatchUpWait bounds how long a check waits for this controller to
	// apply what the leader decided (zero: DefaultCatchUpWait).
	CatchUpWait time.Duration
	// GCGrace is CollectGarbage's grace period (zero: DefaultBackupGCGrace),
	// widened to cover the oldest running backup this controller has seen.
	GCGrace time.Duration

	mu    sync.Mutex
	repos map[string]*backup.Repo
	// jobs are the backup jobs that wrote here (for GC: the manifests they
	// put before their point is recorded, and when they started).
	jobs map[string]*repoJob
	// points caches the chunk sets of recently read restore points.
	points     map[string]map[backup.Hash]struct{}
	pointOrder []string

	received, receivedBytes, served, servedBytes *prometheus.CounterVec
}

type repoJob struct {
	center    string
	manifests []string
}

// NewBackupRepoServer serves the repositories of the centers whose
// repository_member is member, under base (BASE/<center>/, created when
// first used). Its metrics are registered with reg when reg is not nil.
func NewBackupRepoServer(base, member string, st RepoState, reg prometheus.Registerer, lg *slog.Logger) *BackupRepoServer {
	if lg == nil {
		lg = slog.Default()
	}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"center"})
	}
	s := &BackupRepoServer{
		base: base, member: member, st: st, log: lg,
		repos: map[string]*backup.Repo{}, jobs: map[string]*repoJob{}, points: map[string]map[backup.Hash]struct{}{},
		received:      counter("yunchi_backup_chunks_received_total", "Backup chunks received from agents and verified, by the center of the repository (new or already stored)."),
		receivedBytes: counter("yunchi_backup_bytes_received_total", "Bytes of the backup chunks received from agents and verified, by center."),
		served:        counter("yunchi_backup_chunks_served_total", "Backup chunks read (and verified) for agents, by center."),
		servedBytes:   counter("yunchi_backup_bytes_served_total", "Bytes of the backup chunks read for agents, by center."),
	}
	if reg != nil {
		reg.MustRegister(s.received, s.receivedBytes, s.served, s.servedBytes)
	}
	return s
}

// Repo is the repository of a center kept here, opened when first asked
// for. The error is a status saying where to go instead.
func (s *BackupRepoServer) Repo(center string) (*backup.Repo, error) {
	c, ok := s.st.Center(center)
	switch {
	case !ok:
		return nil, status.Errorf(codes.FailedPrecondition, "center %q is not declared: declare it with a repository member to back up to it", center)
	case c.RepositoryMember == "":
		return nil, status.Errorf(codes.FailedPrecondition, "center %q has no backup repository: set its repository member to the controller that should keep it", center)
	case c.RepositoryMember != s.member:
		return nil, status.Errorf(codes.FailedPrecondition, "the backup repository of center %q is kept by controller %q, not by this one (%s): call that controller", center, c.RepositoryMember, s.member)
	case !state.ValidName(center):
		// Names are checked when declared; this one would not make a
		// directory name.
		return nil, status.Errorf(codes.FailedPrecondition, "center name %q cannot name a repository directory", center)
	case s.base == "":
		return nil, status.Errorf(codes.FailedPrecondition, "controller %s keeps the backup repository of center %q but was given no directory for repositories", s.member, center)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.repos[center]; r != nil {
		return r, nil
	}
	r, err := backup.Open(filepath.Join(s.base, center))
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "the backup repository of center %q cannot be used: %s", center, oneLine(err.Error()))
	}
	s.repos[center] = r
	return r, nil
}

// backupStatus turns a repository error into the status a client acts on.
func backupStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	msg := oneLine(err.Error())
	switch {
	case errors.Is(err, backup.ErrInvalid):
		return status.Error(codes.InvalidArgument, msg)
	case errors.Is(err, backup.ErrMissingChunks):
		return status.Error(codes.FailedPrecondition, msg)
	case errors.Is(err, backup.ErrNotFound):
		return status.Error(codes.NotFound, msg)
	case errors.Is(err, backup.ErrDamaged):
		return status.Error(codes.DataLoss, msg)
	case errors.Is(err, syscall.ENOSPC):
		return status.Errorf(codes.ResourceExhausted, "the backup repository is full (%s): collect garbage, free space or retain fewer points", msg)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, msg)
}

// DefaultCatchUpWait bounds how long a check waits for this controller to
// apply what the leader decided (a job, a restored VM's placement) before
// it refuses: the host heard of it through its own controller, which may
// be ahead of this one.
const DefaultCatchUpWait = 5 * time.Second

// catchUp polls ok until it holds or the catch-up wait passes.
func (s *BackupRepoServer) catchUp(ok func() bool) bool {
	wait := s.CatchUpWait
	if wait <= 0 {
		wait = DefaultCatchUpWait
	}
	for deadline := time.Now().Add(wait); ; time.Sleep(50 * time.Millisecond) {
		if ok() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// writeAccess checks that a write is for a running backup job of the
// calling host to a center kept here.
func (s *BackupRepoServer) writeAccess(hostID, jobID string) (*statev1.BackupJobRecord, *backup.Repo, error) {
	if err := checkHostID(hostID); err != nil {
		return nil, nil, err
	}
	switch {
	case jobID == "":
		return nil, nil, invalid("job_id is empty: name the backup job the write is for")
	case len(jobID) > maxBackupJobID:
		return nil, nil, invalid("job_id is %d characters long: at most %d", len(jobID), maxBackupJobID)
	}
	// The leader started the job and the host heard of it through its
	// own controller; this one may not have applied it yet.
	var job *statev1.BackupJobRecord
	ok := false
	// A job this controller knows already is as it will stay (a new
	// attempt gets a new id): only an unknown one is waited for.
	s.catchUp(func() bool {
		job, ok = s.st.BackupJob(jobID)
		return ok
	})
	switch {
	case !ok:
		return nil, nil, status.Errorf(codes.NotFound, "backup job %q not found: it ended or was never started; drop it", jobID)
	case job.HostId != hostID:
		return nil, nil, status.Errorf(codes.FailedPrecondition, "backup job %q is for host %q, not %q", jobID, job.HostId, hostID)
	case job.State != statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING:
		return nil, nil, status.Errorf(codes.FailedPrecondition, "backup job %q is %s, not running: only a running job may write (the leader starts the next attempt)", jobID, job.State)
	}
	r, err := s.Repo(job.Center)
	if err != nil {
		return nil, nil, err
	}
	s.noteJob(job, "")
	return job, r, nil
}

// noteJob remembers a job that wrote here, and a manifest it put.
func (s *BackupRepoServer) noteJob(job *statev1.BackupJobRecord, manifest string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[job.Id]
	if j == nil {
		if len(s.jobs) >= maxBackupJobsSeen {
			s.pruneJobsLocked("")
		}
		j = &repoJob{center: job.Center}
		s.jobs[job.Id] = j
	}
	if manifest != "" && !slices.Contains(j.manifests, manifest) {
		j.manifests = append(j.manifests, manifest)
	}
}

// pruneJobsLocked forgets the jobs that no longer run and returns the
// manifests of those of center that do, and the start of the oldest.
func (s *BackupRepoServer) pruneJobsLocked(center string) (manifests []string, oldest time.Time) {
	for id, j := range s.jobs {
		rec, ok := s.st.BackupJob(id)
		if !ok || rec.State != statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING {
			delete(s.jobs, id)
			continue
		}
		if j.center != center {
			continue
		}
		manifests = append(manifests, j.manifests...)
		if t := time.Unix(0, rec.StartedUnixNano); rec.StartedUnixNano > 0 && (oldest.IsZero() || t.Before(oldest)) {
			oldest = t
		}
	}
	return manifests, oldest
}

func hashesOf(chunks [][]byte) ([]backup.Hash, error) {
	out := make([]backup.Hash, len(chunks))
	for i, c := range chunks {
		h, err := backup.HashFromBytes(c)
		if err != nil {
			return nil, invalid("chunk %d: %s", i, err)
		}
		out[i] = h
	}
	return out, nil
}

// HaveChunks answers which of the chunks the repository lacks; those it
// holds are kept for the GC grace period from now (the agent will not
// send them).
func (s *BackupRepoServer) HaveChunks(ctx context.Context, req *yunchiv1.HaveChunksRequest) (*yunchiv1.HaveChunksResponse, error) {
	_, repo, err := s.writeAccess(req.HostId, req.JobId)
	if err != nil {
		return nil, err
	}
	hashes, err := hashesOf(req.Chunks)
	if err != nil {
		return nil, err
	}
	miss := repo.Missing(hashes)
	out := &yunchiv1.HaveChunksResponse{Missing: make([]uint32, len(miss))}
	for i, m := range miss {
		out.Missing[i] = uint32(m)
	}
	return out, nil
}

var chunkBufs = sync.Pool{New: func() any { b := make([]byte, 0, backup.ChunkSize); return &b }}

// PutChunks stores the chunks of the stream, each when its last piece
// arrives and its bytes match its sha256. A refused piece ends the
// stream; the chunks completed before it stay stored.
func (s *BackupRepoServer) PutChunks(stream yunchiv1.BackupRepoService_PutChunksServer) error {
	msg, err := stream.Recv()
	if err == io.EOF {
		return invalid("the stream is empty: its first message names the host and the backup job")
	}
	if err != nil {
		return err
	}
	job, repo, err := s.writeAccess(msg.HostId, msg.JobId)
	if err != nil {
		return err
	}
	bp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bp)
	var (
		cur          backup.Hash
		open         bool
		buf          = (*bp)[:0]
		out          yunchiv1.PutChunksResponse
		recv, nbytes int64
	)
	defer func() {
		s.received.WithLabelValues(job.Center).Add(float64(recv))
		s.receivedBytes.WithLabelValues(job.Center).Add(float64(nbytes))
	}()
	for {
		if len(msg.Sha256) > 0 {
			h, err := backup.HashFromBytes(msg.Sha256)
			if err != nil {
				return invalid("the sha256 of a chunk: %s; nothing of it stored", err)
			}
			if open {
				return invalid("chunk %s starts before chunk %s ended (%d bytes received): set end on a chunk's last piece; nothing of it stored", h, cur, len(buf))
			}
			cur, open, buf = h, true, buf[:0]
		} else if !open && (len(msg.Data) > 0 || msg.End) {
			return invalid("a piece names no chunk: set sha256 on the first piece of each chunk")
		}
		if len(msg.Data) > maxBackupPiece {
			return invalid("a piece of chunk %s holds %d bytes: at most %d; nothing of the chunk stored", cur, len(msg.Data), maxBackupPiece)
		}
		if len(buf)+len(msg.Data) > backup.ChunkSize {
			return invalid("chunk %s is longer than %d bytes; nothing of it stored", cur, backup.ChunkSize)
		}
		buf = append(buf, msg.Data...)
		if msg.End && open {
			// The job may have ended (failed by the leader) while the
			// stream ran.
			if j, ok := s.st.BackupJob(job.Id); !ok || j.State != statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING {
				return status.Errorf(codes.FailedPrecondition, "backup job %q ended while its chunks were being sent; chunk %s not stored", job.Id, cur)
			}
			isNew, err := repo.PutChunk(cur, buf)
			if err != nil {
				return backupStatus(err)
			}
			recv++
			nbytes += int64(len(buf))
			if isNew {
				out.Chunks++
				out.Bytes += int64(len(buf))
			}
			open = false
		}
		msg, err = stream.Recv()
		if err == io.EOF {
			if open {
				return invalid("the stream ended inside chunk %s (%d bytes received, no piece with end): that chunk is not stored", cur, len(buf))
			}
			return stream.SendAndClose(&out)
		}
		if err != nil {
			return err
		}
	}
}

// PutManifest receives a disk's manifest in pieces (at most 1 MiB each)
// into a temporary file of the repository, so that none is held in memory
// (a 64 TiB disk's is 570 MB), and when the stream ends stores it if it
// checks out: as long as the first message said, hashing to the sha256 it
// named, a well-formed manifest in the deterministic encoding, and every
// chunk it lists in the repository. It answers the manifest's name (that
// sha256, hex), which the restore point records. A stream refused, cut or
// ended early stores nothing.
func (s *BackupRepoServer) PutManifest(stream yunchiv1.BackupRepoService_PutManifestServer) error {
	msg, err := stream.Recv()
	if err == io.EOF {
		return invalid("the stream is empty: its first message names the host, the backup job, and the manifest's sha256 and length")
	}
	if err != nil {
		return err
	}
	job, repo, err := s.writeAccess(msg.HostId, msg.JobId)
	if err != nil {
		return err
	}
	name, err := backup.HashFromBytes(msg.Sha256)
	if err != nil {
		return invalid("the manifest's sha256: %s; nothing stored", err)
	}
	w, err := repo.CreateManifest(name, msg.Length)
	if err != nil {
		return backupStatus(err)
	}
	defer w.Abort()
	for {
		if len(msg.Data) > maxBackupPiece {
			return invalid("a piece of manifest %s holds %d bytes: at most %d; nothing stored", name, len(msg.Data), maxBackupPiece)
		}
		if _, err := w.Write(msg.Data); err != nil {
			return backupStatus(err)
		}
		msg, err = stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	// The job may have ended (failed by the leader) while the stream ran.
	if j, ok := s.st.BackupJob(job.Id); !ok || j.State != statev1.BackupJobState_BACKUP_JOB_STATE_RUNNING {
		return status.Errorf(codes.FailedPrecondition, "backup job %q ended while its manifest was being sent; manifest %s not stored", job.Id, name)
	}
	sha, err := w.Commit()
	if err != nil {
		return backupStatus(err)
	}
	s.noteJob(job, sha)
	return stream.SendAndClose(&yunchiv1.PutManifestResponse{Sha256: sha})
}

// readAccess checks that the calling host may read a restore point kept
// here.
func (s *BackupRepoServer) readAccess(hostID, pointID string) (*statev1.RestorePointRecord, *backup.Repo, error) {
	if err := checkHostID(hostID); err != nil {
		return nil, nil, err
	}
	if pointID == "" {
		return nil, nil, invalid("point_id is empty: name the restore point to read")
	}
	p, ok := s.st.RestorePoint(pointID)
	if !ok {
		return nil, nil, status.Errorf(codes.NotFound, "restore point %.80q not found", pointID)
	}
	if !s.catchUp(func() bool { return s.st.HostMayReadPoint(hostID, pointID) }) {
		return nil, nil, status.Errorf(codes.PermissionDenied, "host %q may not read restore point %s: only the host backing up or restoring its VM may", hostID, pointID)
	}
	r, err := s.Repo(p.Center)
	if err != nil {
		return nil, nil, err
	}
	return p, r, nil
}

// GetManifest streams one of a restore point's manifests in pieces of at
// most 1 MiB, the first saying its length, from its file (none is held in
// memory). The bytes are hashed as they go: a copy found damaged at the
// end ends the stream with DATA_LOSS in place of OK (the client checks the
// sha256 of the whole too).
func (s *BackupRepoServer) GetManifest(req *yunchiv1.GetManifestRequest, stream yunchiv1.BackupRepoService_GetManifestServer) error {
	p, repo, err := s.readAccess(req.HostId, req.PointId)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(p.Disks, func(d *statev1.DiskPoint) bool { return d.ManifestSha256 == req.Sha256 }) {
		return status.Errorf(codes.PermissionDenied, "manifest %.80q is not one of restore point %s's", req.Sha256, p.Id)
	}
	mr, err := repo.OpenManifest(req.Sha256)
	if err != nil {
		return pointDataLoss(p, err)
	}
	defer mr.Close()
	bp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bp)
	buf := (*bp)[:maxBackupPiece]
	for first := true; ; first = false {
		n, rerr := io.ReadFull(mr, buf)
		if n > 0 || first {
			msg := &yunchiv1.GetManifestResponse{Data: buf[:n]}
			if first {
				msg.Length = mr.Size()
			}
			// SendMsg encodes the piece before it returns: the buffer
			// may be reused.
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, io.EOF), errors.Is(rerr, io.ErrUnexpectedEOF):
			return nil
		case errors.Is(rerr, backup.ErrDamaged):
			s.log.Warn("damaged backup manifest", "center", p.Center, "point", p.Id, "err", rerr)
			return pointDataLoss(p, rerr)
		default:
			return backupStatus(rerr)
		}
	}
}

// pointDataLoss: a chunk or manifest a recorded point needs is missing or
// damaged (DATA_LOSS); other errors keep their codes.
func pointDataLoss(p *statev1.RestorePointRecord, err error) error {
	if errors.Is(err, backup.ErrNotFound) || errors.Is(err, backup.ErrDamaged) {
		return status.Errorf(codes.DataLoss, "restore point %s in center %s: %s", p.Id, p.Center, oneLine(err.Error()))
	}
	return backupStatus(err)
}

// pointChunks is the set of chunks a point's manifests list.
func (s *BackupRepoServer) pointChunks(p *statev1.RestorePointRecord, repo *backup.Repo) (map[backup.Hash]struct{}, error) {
	s.mu.Lock()
	set := s.points[p.Id]
	s.mu.Unlock()
	if set != nil {
		return set, nil
	}
	set = map[backup.Hash]struct{}{}
	for _, d := range p.Disks {
		// A damaged manifest adds chunks before its damage shows: the set
		// is dropped then.
		if _, err := repo.ScanManifest(d.ManifestSha256, func(_ int64, c backup.Hash) error {
			set[c] = struct{}{}
			return nil
		}); err != nil {
			return nil, pointDataLoss(p, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.points[p.Id]; !ok {
		if len(s.pointOrder) >= backupPointCache {
			delete(s.points, s.pointOrder[0])
			s.pointOrder = s.pointOrder[1:]
		}
		s.points[p.Id] = set
		s.pointOrder = append(s.pointOrder, p.Id)
	}
	return set, nil
}

// GetChunks streams chunks of a restore point in the order asked, each
// verified whole before its first piece is sent; every piece carries its
// chunk's sha256. A chunk missing or damaged ends the stream with
// DATA_LOSS naming it, after the chunks before it.
func (s *BackupRepoServer) GetChunks(req *yunchiv1.GetChunksRequest, stream yunchiv1.BackupRepoService_GetChunksServer) error {
	p, repo, err := s.readAccess(req.HostId, req.PointId)
	if err != nil {
		return err
	}
	hashes, err := hashesOf(req.Chunks)
	if err != nil {
		return err
	}
	set, err := s.pointChunks(p, repo)
	if err != nil {
		return err
	}
	for _, h := range hashes {
		if _, ok := set[h]; !ok {
			return status.Errorf(codes.PermissionDenied, "chunk %s is not in restore point %s: a host reads only the chunks of the points it may read", h, p.Id)
		}
	}
	bp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bp)
	var n, nbytes int64
	defer func() {
		s.served.WithLabelValues(p.Center).Add(float64(n))
		s.servedBytes.WithLabelValues(p.Center).Add(float64(nbytes))
	}()
	for _, h := range hashes {
		data, err := repo.ReadChunk(h, *bp)
		if err != nil {
			if errors.Is(err, backup.ErrDamaged) {
				s.log.Warn("damaged backup chunk moved aside", "center", p.Center, "point", p.Id, "err", err)
			}
			return pointDataLoss(p, err)
		}
		for off := 0; off < len(data); off += maxBackupPiece {
			end := min(off+maxBackupPiece, len(data))
			// SendMsg encodes the piece before it returns: the buffer
			// may be reused.
			if err := stream.Send(&yunchiv1.ChunkPiece{Sha256: h[:], Data: data[off:end], End: end == len(data)}); err != nil {
				return err
			}
		}
		n++
		nbytes += int64(len(data))
	}
	return nil
}

// Verify re-hashes every chunk and manifest of a center's repository and
// names the damaged ones and the restore points that use them.
func (s *BackupRepoServer) Verify(ctx context.Context, center string) (*yunchiv1.VerifyBackupsResponse, error) {
	repo, err := s.Repo(center)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	rep, err := repo.Verify(ctx, nil)
	if err != nil {
		return nil, backupStatus(err)
	}
	out := &yunchiv1.VerifyBackupsResponse{Center: center, ChunksChecked: rep.Chunks, BytesChecked: rep.Bytes}
	bad := map[backup.Hash]bool{}
	for _, d := range rep.DamagedChunks {
		out.Damaged = append(out.Damaged, &yunchiv1.DamagedChunk{Sha256: d.Hash, Error: d.Reason})
		if h, err := backup.ParseHash(d.Hash); err == nil {
			bad[h] = true
		}
	}
	badManifest := map[string]bool{}
	for _, d := range rep.DamagedManifests {
		badManifest[d.Hash] = true
		out.DamagedManifests = append(out.DamagedManifests, d.Hash)
		s.log.Warn("damaged backup manifest", "center", center, "manifest", d.Hash, "reason", d.Reason)
	}
	for _, p := range s.st.RestorePointsIn(center) {
		if s.pointDamaged(p, repo, bad, badManifest, out) {
			out.DamagedPoints = append(out.DamagedPoints, p.Id)
		}
	}
	slices.Sort(out.DamagedManifests)
	slices.Sort(out.DamagedPoints)
	out.Seconds = time.Since(start).Seconds()
	s.log.Info("backup repository verified", "center", center, "chunks", out.ChunksChecked, "bytes", out.BytesChecked,
		"damaged_chunks", len(out.Damaged), "damaged_manifests", len(out.DamagedManifests), "damaged_points", len(out.DamagedPoints))
	return out, nil
}

// errStopScan ends a scan of a manifest that found what it looked for.
var errStopScan = errors.New("stop scanning")

// pointDamaged: a manifest of p is damaged or missing (added to out), or
// lists a damaged chunk.
func (s *BackupRepoServer) pointDamaged(p *statev1.RestorePointRecord, repo *backup.Repo, bad map[backup.Hash]bool, badManifest map[string]bool, out *yunchiv1.VerifyBackupsResponse) bool {
	damaged := false
	for _, d := range p.Disks {
		if badManifest[d.ManifestSha256] {
			damaged = true
			continue
		}
		usesBad := false
		_, err := repo.ScanManifest(d.ManifestSha256, func(_ int64, c backup.Hash) error {
			if bad[c] {
				usesBad = true
				return errStopScan
			}
			return nil
		})
		switch {
		case usesBad:
			damaged = true
		case err != nil:
			// Missing (the only damage Repo.Verify cannot see), or damaged
			// since.
			badManifest[d.ManifestSha256] = true
			out.DamagedManifests = append(out.DamagedManifests, d.ManifestSha256)
			damaged = true
		}
	}
	return damaged
}

// CollectGarbage removes from a center's repository the chunks and
// manifests no restore point recorded there (nor a backup running) uses
// and that are older than the grace period.
func (s *BackupRepoServer) CollectGarbage(ctx context.Context, center string) (*yunchiv1.CollectGarbageResponse, error) {
	repo, err := s.Repo(center)
	if err != nil {
		return nil, err
	}
	keep := map[string]bool{}
	var referenced []string
	for _, p := range s.st.RestorePointsIn(center) {
		for _, d := range p.Disks {
			if _, err := backup.ParseHash(d.ManifestSha256); err != nil {
				s.log.Warn("restore point names a manifest that is not a sha256", "point", p.Id, "manifest", d.ManifestSha256)
				continue
			}
			if !keep[d.ManifestSha256] {
				keep[d.ManifestSha256] = true
				referenced = append(referenced, d.ManifestSha256)
			}
		}
	}
	grace := s.GCGrace
	if grace <= 0 {
		grace = DefaultBackupGCGrace
	}
	s.mu.Lock()
	running, oldest := s.pruneJobsLocked(center)
	s.mu.Unlock()
	// The manifests of running backups (their points are not recorded
	// yet) are kept with their chunks, and nothing such a backup may have
	// relied on since it started is old enough to go.
	referenced = append(referenced, running...)
	if !oldest.IsZero() {
		if d := time.Since(oldest) + time.Minute; d > grace {
			grace = d
		}
	}
	rep, err := repo.GC(ctx, referenced, grace)
	if err != nil {
		return nil, backupStatus(err)
	}
	for _, u := range rep.Unreadable {
		if keep[u.Hash] {
			s.log.Warn("manifest of a restore point missing or damaged during garbage collection", "center", center, "manifest", u.Hash, "reason", u.Reason)
		}
	}
	s.log.Info("backup repository garbage collected", "center", center, "chunks_removed", rep.ChunksRemoved, "bytes_removed", rep.BytesRemoved,
		"chunks_kept", rep.ChunksKept, "manifests_removed", rep.ManifestsRemoved, "grace", grace)
	return &yunchiv1.CollectGarbageResponse{Center: center, ChunksRemoved: rep.ChunksRemoved, BytesRemoved: rep.BytesRemoved, ChunksKept: rep.ChunksKept}, nil
}

// Stats describes a center's repository for the topology view: this
// controller as its member, its points and their logical size, its chunks
// and bytes and its file system's free space (Error says why what is
// missing could not be measured). The address is the caller's to fill.
func (s *BackupRepoServer) Stats(center string) *yunchiv1.Repository {
	out := &yunchiv1.Repository{Member: s.member}
	for _, p := range s.st.RestorePointsIn(center) {
		out.Points++
		out.LogicalBytes += p.SizeBytes
	}
	repo, err := s.Repo(center)
	if err != nil {
		out.Error = status.Convert(err).Message()
		return out
	}
	st, err := repo.Stats()
	if err != nil {
		out.Error = fmt.Sprintf("measure the repository: %s", oneLine(err.Error()))
		return out
	}
	out.Chunks, out.StoredBytes, out.FreeBytes = st.Chunks, st.Bytes, st.FreeBytes
	return out
}
