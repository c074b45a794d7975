package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Image cache. A VM made from an image boots from a copy-on-write overlay of
// the image's file, which the agent keeps in Config.ImageDir under its
// SHA-256 (DIR/<sha256>.<format>). The first VM that needs an image starts
// a fetch from the controllers (AgentService.FetchImage) in the background:
// the bytes go to DIR/<sha256>.part, a broken stream resumes from what the
// part file holds, and the file becomes the image only once its SHA-256 is
// the one the controllers recorded; a file that does not hash right is
// thrown away and fetched again. Until then the VM stays pending, with the
// progress in its message. A cached file is hashed again the first time
// this process uses it, so a file damaged on disk is never booted.

// fetchAttempts bounds fetches of one image that end in a wrong hash before
// the VM is reported failed (a stream that breaks is resumed, not counted).
// The image is then not fetched again for failedImageRetry: the copies on
// the controllers are damaged, and they repair themselves from each other
// (controller/images), not within one reconcile.
const (
	fetchAttempts    = 3
	failedImageRetry = time.Minute
)

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

type imageCache struct {
	dir string
	a   *Agent

	mu       sync.Mutex
	verified map[string]string // sha256 -> path, hashed by this process
	fetches  map[string]*imageFetch
	failed   map[string]imageFailure // sha256 -> the last fetch's failure
}

// imageFailure is a fetch that gave up, and when.
type imageFailure struct {
	err error
	at  time.Time
}

// imageFetch is one image being fetched.
type imageFetch struct {
	ref      *yunchiv1.ImageRef
	done     chan struct{}
	err      error // set before done closes
	received int64 // guarded by imageCache.mu
}

func newImageCache(dir string, a *Agent) *imageCache {
	return &imageCache{dir: dir, a: a, verified: map[string]string{}, fetches: map[string]*imageFetch{}, failed: map[string]imageFailure{}}
}

func formatExt(f yunchiv1.ImageFormat) (string, error) {
	switch f {
	case yunchiv1.ImageFormat_IMAGE_FORMAT_QCOW2:
		return "qcow2", nil
	case yunchiv1.ImageFormat_IMAGE_FORMAT_RAW:
		return "raw", nil
	}
	return "", fmt.Errorf("image format %s is not one this agent boots (qcow2, raw)", f)
}

// ensure returns the path of the image's verified file, or "" and a
// progress note while it is being fetched (starting the fetch if none
// runs), or the error that ended the last fetch.
func (c *imageCache) ensure(ctx context.Context, ref *yunchiv1.ImageRef) (path, format, note string, err error) {
	sha := ref.GetSha256()
	if !sha256Hex.MatchString(sha) {
		return "", "", "", fmt.Errorf("image sha256 %q is not 64 lowercase hex digits", sha)
	}
	if ref.GetSizeBytes() <= 0 {
		return "", "", "", fmt.Errorf("image %s has size %d", sha[:12], ref.GetSizeBytes())
	}
	format, err = formatExt(ref.GetFormat())
	if err != nil {
		return "", "", "", err
	}
	final := filepath.Join(c.dir, sha+"."+format)
	c.mu.Lock()
	if p, ok := c.verified[sha]; ok {
		c.mu.Unlock()
		if _, err := os.Stat(p); err == nil {
			return p, format, "", nil
		}
		c.mu.Lock()
		delete(c.verified, sha) // removed behind our back: fetch it again
	}
	f, running := c.fetches[sha]
	if running {
		select {
		case <-f.done:
			delete(c.fetches, sha)
			if f.err != nil {
				c.failed[sha] = imageFailure{err: f.err, at: time.Now()}
				c.mu.Unlock()
				return "", "", "", f.err
			}
			c.mu.Unlock()
			return c.ensure(ctx, ref)
		default:
			pct := 100 * f.received / ref.GetSizeBytes()
			c.mu.Unlock()
			return "", format, fmt.Sprintf("fetching image %s (%d%%)", sha[:12], pct/10*10), nil
		}
	}
	if fl, ok := c.failed[sha]; ok {
		if time.Since(fl.at) < failedImageRetry {
			c.mu.Unlock()
			return "", "", "", fl.err
		}
		delete(c.failed, sha) // time to try again
	}
	c.mu.Unlock()
	// A file from an earlier run: hash it once before trusting it.
	if ok, err := fileHasHash(final, sha, ref.GetSizeBytes()); err == nil && ok {
		c.mu.Lock()
		c.verified[sha] = final
		c.mu.Unlock()
		return final, format, "", nil
	} else if err == nil {
		c.a.log.Warn("cached image does not hash to its name; fetching it again", "image", sha, "path", final)
		_ = os.Remove(final)
	}
	c.mu.Lock()
	if _, ok := c.fetches[sha]; ok {
		// Another VM's reconcile (new domains are made several at once)
		// started the fetch while this one hashed: one fetch per image.
		c.mu.Unlock()
		return "", format, fmt.Sprintf("fetching image %s (0%%)", sha[:12]), nil
	}
	f = &imageFetch{ref: ref, done: make(chan struct{})}
	c.fetches[sha] = f
	c.mu.Unlock()
	go func() {
		f.err = c.fetch(f, final)
		if f.err == nil {
			c.mu.Lock()
			c.verified[sha] = final
			c.mu.Unlock()
		}
		close(f.done)
		c.a.wake()
	}()
	return "", format, fmt.Sprintf("fetching image %s (0%%)", sha[:12]), nil
}

// fileHasHash reports whether path exists with size bytes hashing to sha
// (false, nil: exists but wrong; an error: cannot tell, e.g. missing).
func fileHasHash(path, sha string, size int64) (bool, error) {
	fh, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(h, fh)
	if err != nil {
		return false, err
	}
	return n == size && hex.EncodeToString(h.Sum(nil)) == sha, nil
}

// fetch brings one image into final, resuming broken streams, until its
// bytes hash right or fetchAttempts complete copies did not.
func (c *imageCache) fetch(f *imageFetch, final string) error {
	ctx := c.a.runCtx
	sha, size := f.ref.GetSha256(), f.ref.GetSizeBytes()
	log := c.a.log.With("image", sha)
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	part := filepath.Join(c.dir, sha+".part")
	bo := newBackoff()
	begun := time.Now()
	for attempt := 1; ; {
		have, err := c.fetchOnce(ctx, f, part, size)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			d := bo.next()
			log.Warn("image fetch interrupted; resuming", "have_bytes", have, "size_bytes", size, "err", err, "in", d.Round(time.Millisecond))
			if !sleep(ctx, d) {
				return ctx.Err()
			}
			continue
		}
		bo.reset()
		ok, err := fileHasHash(part, sha, size)
		if err != nil {
			return fmt.Errorf("image %s: %w", sha[:12], err)
		}
		if ok {
			if err := syncAndRename(part, final); err != nil {
				return fmt.Errorf("image %s: %w", sha[:12], err)
			}
			log.Info("image fetched and verified", "size_bytes", size, "took", time.Since(begun).Round(time.Millisecond))
			return nil
		}
		_ = os.Remove(part)
		if attempt >= fetchAttempts {
			return fmt.Errorf("image %s: %d copies fetched did not match its sha256 (corrupt on the controllers?)", sha[:12], attempt)
		}
		log.Warn("fetched image does not match its sha256; fetching it again", "attempt", attempt)
		attempt++
	}
}

// fetchOnce appends to part from where it ends until size bytes are there
// or the stream breaks; it returns how many bytes part holds.
func (c *imageCache) fetchOnce(ctx context.Context, f *imageFetch, part string, size int64) (int64, error) {
	fh, err := os.OpenFile(part, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	defer fh.Close()
	have, err := fh.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, err
	}
	if have > size { // not this image's beginning: start again
		if err := fh.Truncate(0); err != nil {
			return 0, err
		}
		have, _ = fh.Seek(0, io.SeekStart)
	}
	c.progress(f, have)
	if have == size {
		return have, nil
	}
	_, client, _ := c.a.ctl.current()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.FetchImage(sctx, &yunchiv1.FetchImageRequest{HostId: c.a.cfg.HostID, Sha256: f.ref.GetSha256(), Offset: have})
	if err != nil {
		return have, err
	}
	for have < size {
		ch, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("stream ended at %d of %d bytes", have, size)
			}
			return have, err
		}
		if ch.GetOffset() != have {
			return have, fmt.Errorf("chunk at offset %d, expected %d", ch.GetOffset(), have)
		}
		if ch.GetSizeBytes() != size {
			return have, fmt.Errorf("the controller says the image has %d bytes, the assignment %d", ch.GetSizeBytes(), size)
		}
		if have+int64(len(ch.GetData())) > size {
			return have, fmt.Errorf("chunk runs past the image's %d bytes", size)
		}
		if _, err := fh.Write(ch.GetData()); err != nil {
			return have, err
		}
		have += int64(len(ch.GetData()))
		c.progress(f, have)
	}
	return have, fh.Sync()
}

func (c *imageCache) progress(f *imageFetch, have int64) {
	c.mu.Lock()
	old := 10 * f.received / f.ref.GetSizeBytes()
	f.received = have
	now := 10 * have / f.ref.GetSizeBytes()
	c.mu.Unlock()
	if now != old {
		c.a.wake() // a new tenth: the VM's message says so
	}
}

func syncAndRename(from, to string) error {
	fh, err := os.Open(from)
	if err != nil {
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return err
	}
	fh.Close()
	if err := os.Rename(from, to); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(to))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
