package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Backups. The leader lists in every Assignments message the backup jobs
// the host is to run (BackupJob), each until the host reports it
// (ReportBackup). A job takes a crash-consistent view of the VM's disks
// (Driver.BeginBackup), cuts each disk into fixed 4 MiB chunks named by
// their sha256, asks the target center's repository which of them it
// lacks and streams only those, then stores each disk's manifest (the
// chunks' hashes in order). An incremental view (the driver kept the
// checkpoint of the previous point) reads only the chunks it says
// changed, the others keep the base manifest's hashes; a full view
// reads only the chunks that hold data, the others are the zero chunk.
// A job runs to its end once started, whatever the next Assignments say,
// and a job id is run once: the leader lists it until it is reported.
// A failed job leaves the VM untouched: its view is closed without
// keeping the new checkpoint, and the error is reported.

const (
	// BackupChunkSize is the size of a chunk (the last one of a disk is
	// shorter).
	BackupChunkSize = 4 << 20
	// backupPieceSize: chunk bytes travel in pieces of at most this much,
	// well under gRPC's 4 MiB message limit.
	backupPieceSize = 1 << 20
	// backupBatch chunks are asked about (HaveChunks) and sent together;
	// one batch is read while the one before it is sent, so at most two
	// batches (8 chunks, 32 MiB each) are held in memory per disk.
	backupBatch = 8
	// backupRetries bounds the retries of one repository call (or one
	// batch's upload) that failed for a reason that may pass.
	backupRetries = 5
	// reportAttempts bounds the tries of one ReportBackup; a result not
	// delivered is sent again when the job is listed again.
	reportAttempts = 8
	// jobMemory is how long a reported job id is remembered (never run
	// again), long after the leader stops listing it.
	jobMemory = time.Hour
	// DefaultMaxBackups is the default for Config.MaxBackups.
	DefaultMaxBackups = 2
	// viewCloseTimeout bounds closing a view after its job was cut short.
	viewCloseTimeout = 5 * time.Second
	// maxBackupDisk is the largest disk a repository takes a manifest of
	// (64 TiB, the largest disk a VM may have).
	maxBackupDisk = 64 << 40
	// manifestRecord is the encoding of one chunk's entry in a manifest.
	manifestRecord = 2 + sha256.Size
	// manifestCheckRate: a repository checks a manifest's chunks (one
	// file each) at least this fast; the wait for its answer grows with
	// the manifest.
	manifestCheckRate = 20000 // chunks a second
)

// byteLimiter paces the bytes sent to one center's repository.
type byteLimiter interface {
	WaitN(ctx context.Context, n int) error
}

// newBackupLimiter makes the limiter of one target center (replaced by
// tests to see it consulted). The burst is one piece: WaitN is asked for
// a piece at a time and fails for more than the burst.
var newBackupLimiter = func(center string, bytesPerSec int64) byteLimiter {
	return rate.NewLimiter(rate.Limit(bytesPerSec), backupPieceSize)
}

// zeroChunk is BackupChunkSize zero bytes, read only: what a chunk
// without data holds, sent (once per repository) without reading it.
var zeroChunk = make([]byte, BackupChunkSize)

// zeroSum is the sha256 of the first n bytes of zeroChunk; the full
// chunk's is computed once.
var fullZeroSum = sync.OnceValue(func() [32]byte { return sha256.Sum256(zeroChunk) })

func zeroSum(n int64) [32]byte {
	if n == BackupChunkSize {
		return fullZeroSum()
	}
	return sha256.Sum256(zeroChunk[:n])
}

// chunkCount is the number of chunks of a disk of size bytes.
func chunkCount(size, chunkSize int64) int {
	return int((size + chunkSize - 1) / chunkSize)
}

// repoConns holds one connection per repository address, dialled like
// the controllers (same transport credentials and host token).
type repoConns struct {
	opts []grpc.DialOption

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newRepoConns(extra []grpc.DialOption) *repoConns {
	return &repoConns{opts: dialOptions(extra), conns: map[string]*grpc.ClientConn{}}
}

func (r *repoConns) client(addr string) (yunchiv1.BackupRepoServiceClient, error) {
	if addr == "" {
		return nil, errors.New("no repository address")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns == nil {
		return nil, errors.New("agent stopped")
	}
	conn, ok := r.conns[addr]
	if !ok {
		var err error
		conn, err = grpc.NewClient(addr, r.opts...)
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", addr, err)
		}
		r.conns[addr] = conn
	}
	return yunchiv1.NewBackupRepoServiceClient(conn), nil
}

func (r *repoConns) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// repoRetryable tells whether a repository call that failed may succeed
// if tried again (the repository or the network), rather than being
// refused for what it asked.
func repoRetryable(err error) bool {
	var stop stopError
	if errors.As(err, &stop) {
		return false
	}
	switch status.Code(err) {
	case codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.PermissionDenied,
		codes.Unauthenticated, codes.FailedPrecondition, codes.OutOfRange, codes.Unimplemented, codes.DataLoss:
		return false
	}
	return true
}

// retryRepo runs fn, each try bounded by rpcTimeout, retrying with
// backoff up to backupRetries times while the failure may pass.
func retryRepo(ctx context.Context, log *slog.Logger, what string, fn func(context.Context) error) error {
	return retryCall(ctx, log, what, rpcTimeout, fn)
}

// retryStream is retryRepo for a stream whose length depends on what it
// carries: no bound on a try, fn guards its stream against stalls.
func retryStream(ctx context.Context, log *slog.Logger, what string, fn func(context.Context) error) error {
	return retryCall(ctx, log, what, 0, fn)
}

func retryCall(ctx context.Context, log *slog.Logger, what string, timeout time.Duration, fn func(context.Context) error) error {
	bo := newBackoff()
	for try := 0; ; try++ {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if timeout > 0 {
			actx, cancel = context.WithTimeout(ctx, timeout)
		}
		err := fn(actx)
		cancel()
		if err == nil || ctx.Err() != nil || try >= backupRetries || !repoRetryable(err) {
			return err
		}
		d := bo.next()
		log.Warn(what+" failed; retrying", "err", err, "in", d.Round(time.Millisecond))
		if !sleep(ctx, d) {
			return err
		}
	}
}

// stallGuard cancels a stream that makes no progress: armed around each
// send or receive, it fires when one takes longer than rpcTimeout (a
// repository that stopped reading, a connection gone silent). Waits for
// the rate limiter are not covered.
type stallGuard struct {
	t     *time.Timer
	fired atomic.Bool
	d     time.Duration // the wait last armed for
}

func newStallGuard(cancel context.CancelFunc) *stallGuard {
	g := &stallGuard{}
	g.t = time.AfterFunc(time.Hour, func() { g.fired.Store(true); cancel() })
	g.t.Stop()
	return g
}

func (g *stallGuard) arm()    { g.armFor(rpcTimeout) }
func (g *stallGuard) disarm() { g.t.Stop() }

// armFor arms the guard for a step that may take d (the repository's
// check of a large manifest).
func (g *stallGuard) armFor(d time.Duration) {
	g.d = d
	g.t.Reset(d)
}

// explain adds why a stream cut by the guard ended.
func (g *stallGuard) explain(err error) error {
	if err != nil && g.fired.Load() {
		return fmt.Errorf("no progress within %v: %w", g.d, err)
	}
	return err
}

// backupRunner starts and tracks the host's backup jobs.
type backupRunner struct {
	a   *Agent
	max int

	mu       sync.Mutex
	jobs     map[string]*jobState // by job id: running, or run and not yet forgotten
	busyVM   map[string]string    // VM id -> job id running
	running  int
	limiters map[string]byteLimiter // by target center
	wg       sync.WaitGroup
}

// jobState is what the agent remembers of a job it took.
type jobState struct {
	vm string
	// result is the report once the job has ended; delivered once the
	// controllers took it.
	result    *yunchiv1.ReportBackupRequest
	reporting bool
	delivered bool
	ended     time.Time
}

func newBackupRunner(a *Agent, maxJobs int) *backupRunner {
	return &backupRunner{a: a, max: maxJobs, jobs: map[string]*jobState{}, busyVM: map[string]string{}, limiters: map[string]byteLimiter{}}
}

// limiter is the limiter shared by every job to center (nil: no cap).
func (b *backupRunner) limiter(center string) byteLimiter {
	if b.a.cfg.MaxBackupRate <= 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.limiters[center]
	if !ok {
		l = newBackupLimiter(center, b.a.cfg.MaxBackupRate)
		b.limiters[center] = l
	}
	return l
}

// start starts the jobs of set the host has not taken yet, as far as the
// limits allow (one per VM, b.max at once): the others start when a
// running job ends, or with a later set. A job whose result was not
// delivered is reported again. It does not block.
func (b *backupRunner) start(ctx context.Context, set *yunchiv1.Assignments) {
	if set == nil || ctx.Err() != nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	listed := make(map[string]bool, len(set.GetBackups()))
	for _, job := range set.GetBackups() {
		id := job.GetJobId()
		if id == "" {
			b.a.log.Warn("backup job without a job id; ignoring it", "vm", job.GetVmId())
			continue
		}
		listed[id] = true
		if j, ok := b.jobs[id]; ok {
			if j.result != nil && !j.delivered && !j.reporting {
				j.reporting = true
				b.wg.Go(func() { b.deliver(ctx, id, j) })
			}
			continue
		}
		if err := validateJob(job); err != nil {
			// Refused without touching anything; reported so that the
			// leader stops listing it.
			j := &jobState{vm: job.GetVmId(), reporting: true, ended: time.Now(),
				result: &yunchiv1.ReportBackupRequest{HostId: b.a.cfg.HostID, JobId: id, Error: oneLine("invalid backup job: " + err.Error())}}
			b.jobs[id] = j
			b.a.log.Warn("refusing backup job", "job", id, "vm", job.GetVmId(), "err", err)
			b.wg.Go(func() { b.deliver(ctx, id, j) })
			continue
		}
		if _, busy := b.busyVM[job.GetVmId()]; busy || b.running >= b.max {
			continue
		}
		j := &jobState{vm: job.GetVmId()}
		b.jobs[id] = j
		b.busyVM[j.vm] = id
		b.running++
		job := proto.Clone(job).(*yunchiv1.BackupJob)
		b.wg.Go(func() { b.run(ctx, job, j) })
	}
	for id, j := range b.jobs {
		if j.delivered && !listed[id] && time.Since(j.ended) > jobMemory {
			delete(b.jobs, id)
		}
	}
}

// run carries out one job, reports it, and starts what waited for it.
func (b *backupRunner) run(ctx context.Context, job *yunchiv1.BackupJob, j *jobState) {
	res := b.a.backup(ctx, job, b.limiter(job.GetCenter()))
	b.mu.Lock()
	delete(b.busyVM, j.vm)
	b.running--
	if ctx.Err() != nil {
		// Shutting down: what was cut short is no result; a restarted
		// agent runs the job again (the leader still lists it).
		delete(b.jobs, job.GetJobId())
		b.mu.Unlock()
		return
	}
	j.result, j.reporting, j.ended = res, true, time.Now()
	b.mu.Unlock()
	b.deliver(ctx, job.GetJobId(), j)
	b.start(ctx, b.a.latest())
}

// deliver sends a job's result, a bounded number of tries.
func (b *backupRunner) deliver(ctx context.Context, id string, j *jobState) {
	log := b.a.log.With("job", id, "vm", j.vm)
	bo := newBackoff()
	var err error
	for try := 1; ; try++ {
		err = b.a.ctl.call(ctx, "backup report", rpcTimeout, func(ctx context.Context, c yunchiv1.AgentServiceClient) error {
			_, err := c.ReportBackup(ctx, j.result)
			return err
		})
		if err == nil || ctx.Err() != nil || !controllerFault(err) || try >= reportAttempts {
			break
		}
		if !sleep(ctx, bo.next()) {
			break
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	j.reporting = false
	switch {
	case err == nil:
		j.delivered = true
		log.Debug("reported backup", "error", j.result.GetError())
	case ctx.Err() != nil:
	case !controllerFault(err):
		// The controllers refused it (the leader no longer has the job
		// running, say): sending it again would not help.
		j.delivered = true
		log.Warn("backup report refused", "err", err)
	default:
		log.Warn("cannot report backup; will send it again while the job is listed", "err", err)
	}
}

// validateJob refuses jobs no backup can be made for.
func validateJob(job *yunchiv1.BackupJob) error {
	var errs []error
	if job.GetVmId() == "" {
		errs = append(errs, errors.New("vm_id is empty"))
	}
	if job.GetRepositoryAddress() == "" {
		errs = append(errs, errors.New("repository_address is empty"))
	}
	for _, d := range job.GetBaseDisks() {
		if !sha256Hex.MatchString(d.GetManifestSha256()) {
			errs = append(errs, fmt.Errorf("base disk %q: manifest_sha256 %q is not 64 lowercase hex digits", d.GetName(), d.GetManifestSha256()))
		}
		if d.GetSizeBytes() < 0 {
			errs = append(errs, fmt.Errorf("base disk %q: size_bytes %d is negative", d.GetName(), d.GetSizeBytes()))
		}
	}
	if len(job.GetBaseDisks()) > 0 && job.GetBasePointId() == "" {
		errs = append(errs, errors.New("base_disks given without base_point_id"))
	}
	return joinOneLine(errs)
}

// joinOneLine joins errors into one line ("; " between them), nil for none.
func joinOneLine(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	msgs := make([]string, len(errs))
	for i, err := range errs {
		msgs[i] = err.Error()
	}
	return errors.New(strings.Join(msgs, "; "))
}

// backup runs one job and returns its report (with the error on failure).
func (a *Agent) backup(ctx context.Context, job *yunchiv1.BackupJob, lim byteLimiter) *yunchiv1.ReportBackupRequest {
	begun := time.Now()
	log := a.log.With("job", job.GetJobId(), "vm", job.GetVmId(), "center", job.GetCenter())
	res := &yunchiv1.ReportBackupRequest{HostId: a.cfg.HostID, JobId: job.GetJobId()}
	fail := func(err error) *yunchiv1.ReportBackupRequest {
		res.Error = oneLine(err.Error())
		res.Disks, res.Incremental, res.Checkpoint = nil, false, ""
		res.DurationMillis = time.Since(begun).Milliseconds()
		if ctx.Err() == nil {
			log.Warn("backup failed", "err", res.Error)
		}
		return res
	}
	repo, err := a.repos.client(job.GetRepositoryAddress())
	if err != nil {
		return fail(err)
	}
	// A mirrored VM's mirror is stopped for the backup and held off
	// until its view is closed (deferred below, so run after the view's
	// Close): a disk has one block job at a time.
	defer a.pauseMirror(ctx, job.GetVmId(), log)()
	view, err := a.d.BeginBackup(ctx, BackupRequest{VMID: job.GetVmId(), Since: job.GetBaseCheckpoint(), Checkpoint: job.GetCheckpoint()})
	if err != nil {
		return fail(fmt.Errorf("begin backup: %w", err))
	}
	res.TakenUnixNano = time.Now().UnixNano()
	kept := false
	defer func() {
		if !kept {
			// The VM keeps running as it was; dropping the new checkpoint
			// makes the next backup start from the base again.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), viewCloseTimeout)
			defer cancel()
			if err := view.Close(cctx, false); err != nil {
				log.Warn("cannot close backup view", "err", err)
			}
		}
	}()
	incremental := true
	for _, disk := range view.Disks() {
		db := &diskBackup{a: a, log: log.With("disk", disk.Name), job: job, view: view, repo: repo, lim: lim, disk: disk}
		dr, err := db.run(ctx)
		if err != nil {
			return fail(fmt.Errorf("disk %s: %w", disk.Name, err))
		}
		res.Disks = append(res.Disks, dr)
		incremental = incremental && db.incremental
	}
	if len(res.Disks) == 0 {
		return fail(errors.New("the backup view has no disks"))
	}
	res.Incremental = incremental
	kept = true
	if err := view.Close(ctx, true); err != nil {
		// The manifests are stored and were read from one point in time:
		// the point is good. Only the checkpoint is in doubt, so the next
		// backup is told of none and makes a full view.
		log.Warn("cannot keep the backup checkpoint; the next backup will be full", "err", err)
	} else {
		res.Checkpoint = view.Checkpoint()
	}
	res.DurationMillis = time.Since(begun).Milliseconds()
	var newBytes int64
	for _, d := range res.Disks {
		newBytes += d.GetNewBytes()
	}
	log.Info("backup done", "incremental", res.Incremental, "new_bytes", newBytes, "took", time.Since(begun).Round(time.Millisecond))
	return res
}

// diskBackup is the backup of one disk of a view.
type diskBackup struct {
	a    *Agent
	log  *slog.Logger
	job  *yunchiv1.BackupJob
	view BackupView
	repo yunchiv1.BackupRepoServiceClient
	lim  byteLimiter
	disk BackupDisk

	incremental bool // only the changed chunks were read
	// Counted by the uploader.
	newChunks, newBytes int64
}

// chunkEntry is a chunk whose presence in the repository is to be
// ensured, with its bytes.
type chunkEntry struct {
	sum    [32]byte
	data   []byte
	pooled bool // data is a read buffer, to be reused
}

func (db *diskBackup) run(ctx context.Context) (*yunchiv1.BackupDiskResult, error) {
	name, size := db.disk.Name, db.disk.SizeBytes
	if size < 0 {
		return nil, fmt.Errorf("size %d is negative", size)
	}
	if size > maxBackupDisk {
		return nil, fmt.Errorf("the disk is %d bytes: backups take disks of at most %d (64 TiB)", size, int64(maxBackupDisk))
	}
	n := chunkCount(size, BackupChunkSize)
	base, err := db.baseManifest(ctx)
	if err != nil {
		return nil, err
	}
	ext, err := db.view.Changed(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("changed extents: %w", err)
	}
	for i := 1; i < len(ext); i++ {
		if ext[i].Offset < ext[i-1].Offset+ext[i-1].Length {
			return nil, fmt.Errorf("changed extents not sorted and disjoint at %d", ext[i].Offset)
		}
	}
	db.incremental = db.view.Incremental() && base != nil
	// An incremental view says what changed, not where data is: without a
	// base manifest every chunk is read.
	readAll := db.view.Incremental() && base == nil

	sums := make([][]byte, n)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	batches := make(chan []chunkEntry)
	free := make(chan []byte, 2*backupBatch)
	var readErr error
	var read int64
	var reused []int // chunks taken from the base manifest, not read
	go func() {
		defer close(batches)
		allocated := 0
		getBuf := func() ([]byte, error) {
			select {
			case b := <-free:
				return b, nil
			default:
			}
			if allocated < 2*backupBatch {
				allocated++
				return make([]byte, BackupChunkSize), nil
			}
			select {
			case b := <-free:
				return b, nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}
		queued := map[[32]byte]bool{}
		var batch []chunkEntry
		send := func() bool {
			select {
			case batches <- batch:
				batch = nil
				return true
			case <-ctx.Done():
				return false
			}
		}
		for i := range n {
			off := int64(i) * BackupChunkSize
			l := min(BackupChunkSize, size-off)
			changed := overlaps(ext, off, l)
			var e chunkEntry
			switch {
			case db.incremental && !changed:
				sums[i] = base.GetChunks()[i]
				reused = append(reused, i)
				continue
			case !readAll && !db.incremental && !changed:
				e = chunkEntry{sum: zeroSum(l), data: zeroChunk[:l]}
			default:
				buf, err := getBuf()
				if err != nil {
					readErr = err
					return
				}
				if err := db.view.ReadAt(ctx, name, buf[:l], off); err != nil {
					readErr = fmt.Errorf("read at %d: %w", off, err)
					cancel(readErr)
					return
				}
				read++
				e = chunkEntry{sum: sha256.Sum256(buf[:l]), data: buf[:l], pooled: true}
			}
			sums[i] = append([]byte(nil), e.sum[:]...)
			if queued[e.sum] {
				if e.pooled {
					free <- e.data[:cap(e.data)]
				}
				continue
			}
			queued[e.sum] = true
			batch = append(batch, e)
			if len(batch) == backupBatch && !send() {
				return
			}
		}
		if len(batch) > 0 {
			send()
		}
	}()
	var upErr error
	for batch := range batches {
		if upErr == nil {
			if upErr = db.upload(ctx, batch); upErr != nil {
				cancel(upErr)
			}
		}
		for _, e := range batch {
			if e.pooled {
				free <- e.data[:cap(e.data)]
			}
		}
	}
	switch {
	case upErr != nil:
		return nil, upErr
	case readErr != nil:
		return nil, readErr
	case ctx.Err() != nil:
		return nil, context.Cause(ctx)
	}
	healed, err := db.healReused(ctx, sums, reused)
	if err != nil {
		return nil, err
	}
	read += healed
	sha, err := db.putManifest(ctx, size, sums)
	if err != nil {
		return nil, err
	}
	return &yunchiv1.BackupDiskResult{
		Name: name, SizeBytes: size, ManifestSha256: sha, Chunks: int64(n),
		NewChunks: db.newChunks, NewBytes: db.newBytes, ReadChunks: read,
	}, nil
}

// healReused makes sure the repository still holds the chunks an
// incremental backup took from its base manifest without reading them: a
// chunk the repository set aside as damaged (or lost) is read from the
// view and sent again, so the point is whole and the next backups stop
// building on the hole. It returns how many chunks it read.
func (db *diskBackup) healReused(ctx context.Context, sums [][]byte, reused []int) (int64, error) {
	var read int64
	for len(reused) > 0 {
		part := reused[:min(len(reused), 4096)]
		reused = reused[len(part):]
		req := &yunchiv1.HaveChunksRequest{HostId: db.a.cfg.HostID, JobId: db.job.GetJobId()}
		for _, i := range part {
			req.Chunks = append(req.Chunks, sums[i])
		}
		var resp *yunchiv1.HaveChunksResponse
		err := retryRepo(ctx, db.log, "check base chunks", func(ctx context.Context) error {
			var err error
			resp, err = db.repo.HaveChunks(ctx, req)
			return err
		})
		if err != nil {
			return read, fmt.Errorf("check base chunks: %w", err)
		}
		for _, k := range resp.GetMissing() {
			if int(k) >= len(part) {
				return read, fmt.Errorf("check base chunks: the repository answered index %d of %d", k, len(part))
			}
			i := part[k]
			off := int64(i) * BackupChunkSize
			l := min(BackupChunkSize, db.disk.SizeBytes-off)
			buf := make([]byte, l)
			if err := db.view.ReadAt(ctx, db.disk.Name, buf, off); err != nil {
				return read, fmt.Errorf("read at %d: %w", off, err)
			}
			read++
			sum := sha256.Sum256(buf)
			sums[i] = sum[:]
			db.log.Warn("a chunk of the base point is missing from the repository: sent again", "chunk", i, "sha256", hex.EncodeToString(sum[:])[:12])
			if err := db.upload(ctx, []chunkEntry{{sum: sum, data: buf}}); err != nil {
				return read, err
			}
		}
	}
	return read, nil
}

// overlaps tells whether [off, off+l) meets one of the sorted, disjoint
// extents.
func overlaps(ext []Extent, off, l int64) bool {
	i := sort.Search(len(ext), func(i int) bool { return ext[i].Offset+ext[i].Length > off })
	return i < len(ext) && ext[i].Offset < off+l && ext[i].Length > 0
}

// baseManifest is the base point's manifest of this disk, when the job
// names one of the same size that checks out, else nil (every chunk is
// then known from this view alone).
func (db *diskBackup) baseManifest(ctx context.Context) (*yunchiv1.BackupManifest, error) {
	var ref *yunchiv1.DiskRef
	for _, d := range db.job.GetBaseDisks() {
		if d.GetName() == db.disk.Name {
			ref = d
		}
	}
	if ref == nil || db.job.GetBasePointId() == "" {
		return nil, nil
	}
	if ref.GetSizeBytes() != db.disk.SizeBytes {
		db.log.Info("disk size changed since the base point; not using its manifest", "base_size", ref.GetSizeBytes(), "size", db.disk.SizeBytes)
		return nil, nil
	}
	m, err := getManifest(ctx, db.repo, db.log, &yunchiv1.GetManifestRequest{HostId: db.a.cfg.HostID, PointId: db.job.GetBasePointId(), Sha256: ref.GetManifestSha256()}, ref.GetSizeBytes())
	if err != nil {
		if repoRetryable(err) {
			return nil, fmt.Errorf("base manifest: %w", err)
		}
		// Gone, refused or not checking out: the repository will still
		// say which chunks it lacks, only more is read.
		db.log.Warn("base manifest not available; reading the disk as without a base", "point", db.job.GetBasePointId(), "err", err)
		return nil, nil
	}
	return m, nil
}

// Manifests travel as their deterministic encoding (the repository names
// them by its sha256 and takes no other), in pieces of at most
// backupPieceSize: a 64 TiB disk's is 570 MB, far over a gRPC message.
// For a BackupManifest that encoding is fixed by its contents:
//
//	0x08 varint(size_bytes)   left out for an empty disk
//	0x10 varint(chunk_size)   always BackupChunkSize
//	0x1a 0x20 <32 bytes>      a chunk's sha256, once per chunk, in order
//
// (what proto.MarshalOptions{Deterministic: true} writes; a test holds
// the two together), so the agent encodes a manifest piece by piece as it
// sends it, and decodes one received in place: neither is ever held twice.

// manifestHead is the encoding of a manifest's fields before its chunks.
func manifestHead(size int64) []byte {
	var b []byte
	if size != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(size))
	}
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	return protowire.AppendVarint(b, BackupChunkSize)
}

// manifestLen is the length of the encoding of the manifest of a disk of
// size bytes.
func manifestLen(size int64) int64 {
	return int64(len(manifestHead(size))) + int64(chunkCount(size, BackupChunkSize))*manifestRecord
}

// encodeManifest hands piece the encoding of the manifest of a disk of
// size bytes whose chunks hash to sums, in order, in pieces of at most
// backupPieceSize. The buffer is reused once piece returns.
func encodeManifest(size int64, sums [][]byte, piece func([]byte) error) error {
	buf := make([]byte, 0, backupPieceSize)
	buf = append(buf, manifestHead(size)...)
	for _, sum := range sums {
		if len(buf)+manifestRecord > backupPieceSize {
			if err := piece(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
		buf = append(buf, 0x1a, sha256.Size)
		buf = append(buf, sum...)
	}
	return piece(buf)
}

// checkManifest checks a manifest's encoding against its name and the
// disk's size and decodes it in place: the chunks' hashes are slices of
// raw.
func checkManifest(raw []byte, wantSHA string, size int64) (*yunchiv1.BackupManifest, error) {
	sum := sha256.Sum256(raw)
	if got := hex.EncodeToString(sum[:]); got != wantSHA {
		return nil, fmt.Errorf("manifest hashes to %s, not %s", got[:12], short(wantSHA))
	}
	if want := manifestLen(size); int64(len(raw)) != want {
		return nil, fmt.Errorf("manifest is %d bytes long: that of a disk of %d bytes is %d", len(raw), size, want)
	}
	head := manifestHead(size)
	if !bytes.Equal(raw[:len(head)], head) {
		return nil, fmt.Errorf("manifest starts % x: not the manifest of a disk of %d bytes in %d-byte chunks", raw[:len(head)], size, BackupChunkSize)
	}
	m := &yunchiv1.BackupManifest{SizeBytes: size, ChunkSize: BackupChunkSize, Chunks: make([][]byte, chunkCount(size, BackupChunkSize))}
	for i, off := 0, len(head); i < len(m.Chunks); i, off = i+1, off+manifestRecord {
		rec := raw[off : off+manifestRecord : off+manifestRecord]
		if rec[0] != 0x1a || rec[1] != sha256.Size {
			return nil, fmt.Errorf("manifest chunk %d: not a sha256 (% x)", i, rec[:2])
		}
		m.Chunks[i] = rec[2:]
	}
	return m, nil
}

// getManifest fetches a restore point's manifest of a disk of size bytes
// and checks it against its name and the disk (a manifest that does not
// check out is a stopError).
func getManifest(ctx context.Context, repo yunchiv1.BackupRepoServiceClient, log *slog.Logger, req *yunchiv1.GetManifestRequest, size int64) (*yunchiv1.BackupManifest, error) {
	if size < 0 || size > maxBackupDisk {
		return nil, stopError{fmt.Errorf("a disk of %d bytes has no manifest: disks are 0 to %d bytes", size, int64(maxBackupDisk))}
	}
	var raw []byte
	err := retryStream(ctx, log, "get manifest", func(ctx context.Context) error {
		var err error
		raw, err = fetchManifest(ctx, repo, req, manifestLen(size))
		return err
	})
	if err != nil {
		return nil, err
	}
	m, err := checkManifest(raw, req.GetSha256(), size)
	if err != nil {
		return nil, stopError{err}
	}
	return m, nil
}

// fetchManifest receives a manifest's encoding, which must be want bytes
// long, into one buffer.
func fetchManifest(ctx context.Context, repo yunchiv1.BackupRepoServiceClient, req *yunchiv1.GetManifestRequest, want int64) ([]byte, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	guard := newStallGuard(cancel)
	defer guard.disarm()
	stream, err := repo.GetManifest(sctx, req)
	if err != nil {
		return nil, err
	}
	var raw []byte
	for first := true; ; first = false {
		guard.arm()
		p, err := stream.Recv()
		guard.disarm()
		switch {
		case errors.Is(err, io.EOF) && first:
			return nil, errors.New("the repository sent no manifest")
		case errors.Is(err, io.EOF) && int64(len(raw)) != want:
			return nil, fmt.Errorf("the manifest stream ended after %d of its %d bytes", len(raw), want)
		case errors.Is(err, io.EOF):
			return raw, nil
		case err != nil:
			return nil, guard.explain(err)
		}
		if first {
			if p.GetLength() != want {
				return nil, stopError{fmt.Errorf("the repository's manifest is %d bytes long: that of a disk of this size is %d", p.GetLength(), want)}
			}
			raw = make([]byte, 0, want)
		}
		if int64(len(raw)+len(p.GetData())) > want {
			return nil, stopError{fmt.Errorf("the repository sent more than the manifest's %d bytes", want)}
		}
		raw = append(raw, p.GetData()...)
	}
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}

// upload makes the repository hold every chunk of batch: it asks which
// it lacks and sends those; a call or stream that breaks is resumed by
// asking again, so only what is still missing is sent.
func (db *diskBackup) upload(ctx context.Context, batch []chunkEntry) error {
	pending := batch
	counted := false
	bo := newBackoff()
	for retry := 0; ; retry++ {
		err := db.tryUpload(ctx, &pending, &counted)
		if err == nil || ctx.Err() != nil {
			return err
		}
		if retry >= backupRetries || !repoRetryable(err) {
			return fmt.Errorf("sending chunks: %w", err)
		}
		d := bo.next()
		db.log.Warn("sending chunks failed; resuming", "err", err, "chunks_left", len(pending), "in", d.Round(time.Millisecond))
		if !sleep(ctx, d) {
			return err
		}
	}
}

func (db *diskBackup) tryUpload(ctx context.Context, pending *[]chunkEntry, counted *bool) error {
	req := &yunchiv1.HaveChunksRequest{HostId: db.a.cfg.HostID, JobId: db.job.GetJobId()}
	for _, e := range *pending {
		req.Chunks = append(req.Chunks, e.sum[:])
	}
	actx, cancel := context.WithTimeout(ctx, rpcTimeout)
	resp, err := db.repo.HaveChunks(actx, req)
	cancel()
	if err != nil {
		return fmt.Errorf("have chunks: %w", err)
	}
	var missing []chunkEntry
	seen := map[uint32]bool{}
	for _, i := range resp.GetMissing() {
		if int(i) >= len(*pending) || seen[i] {
			return status.Errorf(codes.Internal, "have chunks: the repository answered index %d of %d", i, len(*pending))
		}
		seen[i] = true
		missing = append(missing, (*pending)[i])
	}
	if !*counted {
		// What the repository lacked before this job sent anything.
		*counted = true
		for _, e := range missing {
			db.newChunks++
			db.newBytes += int64(len(e.data))
		}
	}
	*pending = missing
	if len(missing) == 0 {
		return nil
	}
	return db.putChunks(ctx, missing)
}

// putChunks streams chunks in pieces, paced by the center's limiter.
func (db *diskBackup) putChunks(ctx context.Context, chunks []chunkEntry) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	guard := newStallGuard(cancel)
	defer guard.disarm()
	stream, err := db.repo.PutChunks(sctx)
	if err != nil {
		return fmt.Errorf("put chunks: %w", err)
	}
	first := true
	for _, e := range chunks {
		for off := 0; off < len(e.data); off += backupPieceSize {
			p := e.data[off:min(off+backupPieceSize, len(e.data))]
			if db.lim != nil {
				if err := db.lim.WaitN(sctx, len(p)); err != nil {
					return fmt.Errorf("put chunks: rate limit: %w", err)
				}
			}
			req := &yunchiv1.PutChunkRequest{Data: p, End: off+len(p) == len(e.data)}
			if first {
				req.HostId, req.JobId, first = db.a.cfg.HostID, db.job.GetJobId(), false
			}
			if off == 0 {
				req.Sha256 = e.sum[:]
			}
			guard.arm()
			err := stream.Send(req)
			guard.disarm()
			if errors.Is(err, io.EOF) {
				// The repository ended the stream: its reason comes with
				// the response.
				guard.arm()
				_, err = stream.CloseAndRecv()
				guard.disarm()
				if err == nil {
					err = errors.New("the repository ended the stream early")
				}
			}
			if err != nil {
				return fmt.Errorf("put chunks: %w", guard.explain(err))
			}
		}
	}
	guard.arm()
	_, err = stream.CloseAndRecv()
	guard.disarm()
	if err != nil {
		return fmt.Errorf("put chunks: %w", guard.explain(err))
	}
	return nil
}

// putManifest stores the manifest of the disk (size bytes, chunks hashing
// to sums) in pieces, encoded deterministically so that its sha256 names
// it, and returns that name. The manifest is encoded as it is sent (and
// once before, for its name), never held whole; its bytes are paced by the
// center's limiter like chunks.
func (db *diskBackup) putManifest(ctx context.Context, size int64, sums [][]byte) (string, error) {
	h := sha256.New()
	encodeManifest(size, sums, func(p []byte) error {
		h.Write(p)
		return nil
	})
	sum := h.Sum(nil)
	want := hex.EncodeToString(sum)
	var got string
	err := retryStream(ctx, db.log, "put manifest", func(ctx context.Context) error {
		var err error
		got, err = db.sendManifest(ctx, size, sums, sum)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("put manifest: %w", err)
	}
	if got != want {
		return "", fmt.Errorf("put manifest: the repository names it %s, its sha256 is %s", short(got), want[:12])
	}
	return want, nil
}

// sendManifest is one try of putManifest.
func (db *diskBackup) sendManifest(ctx context.Context, size int64, sums [][]byte, sum []byte) (string, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	guard := newStallGuard(cancel)
	defer guard.disarm()
	stream, err := db.repo.PutManifest(sctx)
	if err != nil {
		return "", err
	}
	first := true
	err = encodeManifest(size, sums, func(p []byte) error {
		if db.lim != nil {
			if err := db.lim.WaitN(sctx, len(p)); err != nil {
				return fmt.Errorf("rate limit: %w", err)
			}
		}
		req := &yunchiv1.PutManifestRequest{Data: p}
		if first {
			req.HostId, req.JobId, req.Sha256, req.Length, first = db.a.cfg.HostID, db.job.GetJobId(), sum, manifestLen(size), false
		}
		guard.arm()
		defer guard.disarm()
		return stream.Send(req)
	})
	// io.EOF: the repository ended the stream, its reason comes with the
	// response.
	if err != nil && !errors.Is(err, io.EOF) {
		return "", guard.explain(err)
	}
	// The repository checks every chunk the manifest lists before it
	// answers.
	guard.armFor(rpcTimeout + time.Duration(len(sums)/manifestCheckRate)*time.Second)
	resp, err := stream.CloseAndRecv()
	guard.disarm()
	if err != nil {
		return "", guard.explain(err)
	}
	return resp.GetSha256(), nil
}
