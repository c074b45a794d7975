package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Restores. An assignment with a restore names a point in a center's
// repository: the VM's root disk is built from that point's manifest
// before its domain is first defined (DomainSpec.RootSource, filled by
// the driver). Every chunk is checked against the manifest before it is
// written, and a chunk that does not check out ends the restore there,
// with nothing written past it: the VM is reported failed with the
// chunk's name, and the restore is not tried again for a while (the
// repository's copy is damaged; verifying it is the repository's
// business, not a loop's). Zero chunks are not fetched: what the driver
// does not write reads as zero.

// restoreBatchBytes bounds the chunk bytes asked in one GetChunks call
// (and held in memory).
const restoreBatchBytes = 32 << 20

// restoreFailures remembers restores that failed, by VM, so that the
// next reconciles report the failure instead of fetching again.
type restoreFailures struct {
	mu sync.Mutex
	m  map[string]restoreFailure
}

type restoreFailure struct {
	point string
	err   error
	at    time.Time
}

func (f *restoreFailures) get(vm, point string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl, ok := f.m[vm]
	if !ok || fl.point != point {
		return nil
	}
	if time.Since(fl.at) >= failedImageRetry {
		delete(f.m, vm) // time to try again
		return nil
	}
	return fl.err
}

func (f *restoreFailures) put(vm, point string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]restoreFailure{}
	}
	f.m[vm] = restoreFailure{point: point, err: err, at: time.Now()}
}

// restoreSource is the root disk of a restore point: a DiskSource.
type restoreSource struct {
	a     *Agent
	log   *slog.Logger
	vm    string
	ref   *yunchiv1.RestoreRef
	disk  *yunchiv1.DiskRef
	fails *restoreFailures
}

// restoreSource checks an assignment's restore and returns the source of
// its root disk, or the error of a recent failed attempt. A restore from
// the VM's mirror (a platinum failover) reads this host's export of it
// instead (mirror.go).
func (a *Agent) restoreSource(as *yunchiv1.Assignment) (DiskSource, error) {
	r := as.GetRestore()
	if r.GetFromMirror() {
		return a.mirrorSource(as)
	}
	var root *yunchiv1.DiskRef
	for _, d := range r.GetDisks() {
		if d.GetName() == "root" {
			root = d
		}
	}
	switch {
	case r.GetPointId() == "":
		return nil, errors.New("restore: point_id is empty")
	case r.GetRepositoryAddress() == "":
		return nil, fmt.Errorf("restore from point %s: repository_address is empty", r.GetPointId())
	case root == nil:
		return nil, fmt.Errorf("restore from point %s: the point has no root disk", r.GetPointId())
	case !sha256Hex.MatchString(root.GetManifestSha256()):
		return nil, fmt.Errorf("restore from point %s: manifest_sha256 %q is not 64 lowercase hex digits", r.GetPointId(), root.GetManifestSha256())
	case root.GetSizeBytes() <= 0:
		return nil, fmt.Errorf("restore from point %s: root disk size %d", r.GetPointId(), root.GetSizeBytes())
	case as.GetDiskBytes() != root.GetSizeBytes():
		return nil, fmt.Errorf("restore from point %s: disk_bytes %d is not the root disk's %d", r.GetPointId(), as.GetDiskBytes(), root.GetSizeBytes())
	case as.GetImage() != nil:
		return nil, fmt.Errorf("restore from point %s: the assignment also names an image", r.GetPointId())
	}
	if err := a.restoreFails.get(as.GetVmId(), r.GetPointId()); err != nil {
		return nil, err
	}
	return &restoreSource{
		a: a, vm: as.GetVmId(), ref: r, disk: root, fails: &a.restoreFails,
		log: a.log.With("vm", as.GetVmId(), "point", r.GetPointId(), "center", r.GetCenter()),
	}, nil
}

func (s *restoreSource) SizeBytes() int64 { return s.disk.GetSizeBytes() }

// Fill fetches the point's root disk and writes its non-zero chunks in
// order, each checked against the manifest first.
func (s *restoreSource) Fill(ctx context.Context, write func(off int64, p []byte) error) error {
	begun := time.Now()
	err := s.fill(ctx, write)
	if err != nil {
		err = fmt.Errorf("restore from point %s: %w", s.ref.GetPointId(), err)
		if ctx.Err() == nil {
			s.fails.put(s.vm, s.ref.GetPointId(), err)
			s.log.Warn("restore failed", "err", err)
		}
		return err
	}
	s.log.Info("root disk restored", "size_bytes", s.disk.GetSizeBytes(), "took", time.Since(begun).Round(time.Millisecond))
	return nil
}

// stopError is a failure that trying again cannot mend: a chunk or a
// manifest that does not check out, a write that failed.
type stopError struct{ err error }

func (e stopError) Error() string { return e.err.Error() }
func (e stopError) Unwrap() error { return e.err }

func (s *restoreSource) fill(ctx context.Context, write func(off int64, p []byte) error) error {
	repo, err := s.a.repos.client(s.ref.GetRepositoryAddress())
	if err != nil {
		return err
	}
	m, err := getManifest(ctx, repo, s.log, &yunchiv1.GetManifestRequest{HostId: s.a.cfg.HostID, PointId: s.ref.GetPointId(), Sha256: s.disk.GetManifestSha256()}, s.disk.GetSizeBytes())
	if err != nil {
		return fmt.Errorf("get manifest: %w", err)
	}
	f := &chunkFill{s: s, repo: repo, m: m, write: write}
	f.zeroFull = zeroSum(m.GetChunkSize())
	f.zeroLast = zeroSum(f.length(len(m.GetChunks()) - 1))
	n := len(m.GetChunks())
	bo := newBackoff()
	failures := 0
	for f.next < n {
		before := f.next
		err := f.batch(ctx)
		if err == nil {
			continue
		}
		var stop stopError
		if ctx.Err() != nil || errors.As(err, &stop) || !repoRetryable(err) {
			return err
		}
		if f.next > before {
			failures = 0 // resumed from where it broke, and it moved on
			bo.reset()
		}
		if failures++; failures > backupRetries {
			return fmt.Errorf("%d tries without progress: %w", failures, err)
		}
		d := bo.next()
		s.log.Warn("fetching chunks failed; resuming", "from_chunk", f.next, "err", err, "in", d.Round(time.Millisecond))
		if !sleep(ctx, d) {
			return err
		}
	}
	return nil
}

// chunkFill writes a manifest's chunks in order; next is the first one
// not yet written.
type chunkFill struct {
	s                  *restoreSource
	repo               yunchiv1.BackupRepoServiceClient
	m                  *yunchiv1.BackupManifest
	write              func(off int64, p []byte) error
	zeroFull, zeroLast [32]byte
	next               int
}

func (f *chunkFill) length(i int) int64 {
	cs := f.m.GetChunkSize()
	return min(cs, f.m.GetSizeBytes()-int64(i)*cs)
}

func (f *chunkFill) zero(i int) bool {
	z := f.zeroFull
	if i == len(f.m.GetChunks())-1 {
		z = f.zeroLast
	}
	return bytes.Equal(f.m.GetChunks()[i], z[:])
}

// batch fetches the chunks from next on, up to restoreBatchBytes of
// distinct ones, and writes them in order as they arrive.
func (f *chunkFill) batch(ctx context.Context) error {
	chunks := f.m.GetChunks()
	n := len(chunks)
	for f.next < n && f.zero(f.next) {
		f.next++
	}
	if f.next == n {
		return nil
	}
	// The chunks to ask, each once, and which position first needs each.
	var ask [][]byte
	var first []int
	index := map[[32]byte]int{}
	var total int64
	end := f.next
	for ; end < n; end++ {
		if f.zero(end) {
			continue
		}
		key := [32]byte(chunks[end])
		if _, ok := index[key]; ok {
			continue
		}
		if l := f.length(end); len(ask) == 0 || total+l <= restoreBatchBytes {
			index[key] = len(ask)
			ask = append(ask, chunks[end])
			first = append(first, end)
			total += l
		} else {
			break
		}
	}
	got := make([][]byte, len(ask))
	flush := func() error {
		for ; f.next < end; f.next++ {
			i := f.next
			if f.zero(i) {
				continue
			}
			d := got[index[[32]byte(chunks[i])]]
			if d == nil {
				return nil
			}
			if err := f.write(int64(i)*f.m.GetChunkSize(), d); err != nil {
				return stopError{fmt.Errorf("write chunk %d: %w", i, err)}
			}
		}
		return nil
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	guard := newStallGuard(cancel)
	defer guard.disarm()
	s := f.s
	stream, err := f.repo.GetChunks(sctx, &yunchiv1.GetChunksRequest{HostId: s.a.cfg.HostID, PointId: s.ref.GetPointId(), Chunks: ask})
	if err != nil {
		return fmt.Errorf("get chunks: %w", err)
	}
	var cur []byte
	for k := 0; k < len(ask); {
		guard.arm()
		p, err := stream.Recv()
		guard.disarm()
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("the stream ended after %d of %d chunks", k, len(ask))
		}
		if status.Code(err) == codes.DataLoss {
			// The repository checks each chunk before sending it: this
			// one is damaged or gone there.
			return stopError{fmt.Errorf("chunk %d (sha256 %x): the repository refused it: %s", first[k], ask[k][:6], status.Convert(err).Message())}
		}
		if err != nil {
			return fmt.Errorf("get chunks: %w", guard.explain(err))
		}
		i, want := first[k], f.length(first[k])
		if len(p.GetSha256()) > 0 && !bytes.Equal(p.GetSha256(), ask[k]) {
			return stopError{fmt.Errorf("chunk %d (sha256 %x): the repository sent %x instead", i, ask[k][:6], p.GetSha256()[:min(6, len(p.GetSha256()))])}
		}
		if cur == nil {
			cur = make([]byte, 0, want)
		}
		if int64(len(cur)+len(p.GetData())) > want {
			return stopError{fmt.Errorf("chunk %d (sha256 %x): the repository sent more than its %d bytes", i, ask[k][:6], want)}
		}
		cur = append(cur, p.GetData()...)
		if !p.GetEnd() {
			continue
		}
		if sum := sha256.Sum256(cur); int64(len(cur)) != want || !bytes.Equal(sum[:], ask[k]) {
			return stopError{fmt.Errorf("chunk %d (sha256 %x) does not match the manifest: its %d bytes hash to %x; nothing written from there on",
				i, ask[k][:6], len(cur), sum[:6])}
		}
		got[k], cur = cur, nil
		k++
		if err := flush(); err != nil {
			return err
		}
	}
	return nil
}
