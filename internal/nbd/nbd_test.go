package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// A scripted NBD server: a correct handshake (or the bytes given instead),
// then each request handed to serve, which writes whatever reply the test
// wants, well-formed or not. It talks over net.Pipe; nothing is listened on.
type script struct {
	size      uint64
	handshake []byte // if set: sent instead of the handshake, then the pipe closes
	keepOpen  bool   // ... or stays open until the client closes it
	noGo      bool   // answer NBD_OPT_GO with NBD_REP_ERR_UNSUP (NBD_OPT_EXPORT_NAME follows)
	blockSize [3]uint32
	serve     func(req request, w io.Writer) error
}

type request struct {
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
}

// dialScript runs s on one end of a pipe and hands the other to Handshake.
func dialScript(t *testing.T, s script, o Options) (*Client, error) {
	t.Helper()
	cli, srv := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer srv.Close()
		if s.handshake != nil {
			drained := make(chan struct{})
			go func() { io.Copy(io.Discard, srv); close(drained) }() // the client's side, unread otherwise
			srv.Write(s.handshake)
			if s.keepOpen {
				<-drained
			}
			return
		}
		if err := s.serverHandshake(srv); err != nil {
			return
		}
		var h [28]byte
		for {
			if _, err := io.ReadFull(srv, h[:]); err != nil {
				return
			}
			r := request{binary.BigEndian.Uint16(h[6:]), binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint64(h[16:]), binary.BigEndian.Uint32(h[24:])}
			if r.typ == cmdDisc || s.serve == nil || s.serve(r, srv) != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		cli.Close()
		srv.Close()
		<-done
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return Handshake(ctx, cli, o)
}

func (s script) serverHandshake(c net.Conn) error {
	var b []byte
	b = binary.BigEndian.AppendUint64(b, magicNBD)
	b = binary.BigEndian.AppendUint64(b, magicOpt)
	b = binary.BigEndian.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	if _, err := c.Write(b); err != nil {
		return err
	}
	var cflags [4]byte
	if _, err := io.ReadFull(c, cflags[:]); err != nil {
		return err
	}
	reply := func(opt, typ uint32, data []byte) error {
		var b []byte
		b = binary.BigEndian.AppendUint64(b, magicOptReply)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		_, err := c.Write(append(b, data...))
		return err
	}
	for {
		var h [16]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return err
		}
		opt := binary.BigEndian.Uint32(h[8:])
		data := make([]byte, binary.BigEndian.Uint32(h[12:]))
		if _, err := io.ReadFull(c, data); err != nil {
			return err
		}
		switch opt {
		case optStructuredRepl:
			reply(opt, repAck, nil)
		case optSetMetaContext:
			// Each query is selected, with ids 1, 2, ...
			n := binary.BigEndian.Uint32(data)
			q := data[4+n:]
			count := binary.BigEndian.Uint32(q)
			q = q[4:]
			for i := uint32(0); i < count; i++ {
				l := binary.BigEndian.Uint32(q)
				reply(opt, repMetaContext, append(binary.BigEndian.AppendUint32(nil, i+1), q[4:4+l]...))
				q = q[4+l:]
			}
			reply(opt, repAck, nil)
		case optGo:
			if s.noGo {
				reply(opt, repErrUnsup, nil)
				continue
			}
			info := binary.BigEndian.AppendUint16(nil, infoExport)
			info = binary.BigEndian.AppendUint64(info, s.size)
			info = binary.BigEndian.AppendUint16(info, 1|transmitReadOnly)
			reply(opt, repInfo, info)
			if s.blockSize[0] != 0 {
				bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
				for _, v := range s.blockSize {
					bs = binary.BigEndian.AppendUint32(bs, v)
				}
				reply(opt, repInfo, bs)
			}
			return reply(opt, repAck, nil)
		case optExportName:
			var b []byte
			b = binary.BigEndian.AppendUint64(b, s.size)
			b = binary.BigEndian.AppendUint16(b, 1)
			_, err := c.Write(b) // no zeroes: both sides said so
			return err
		default:
			reply(opt, repErrUnsup, nil)
		}
	}
}

// Reply builders.
func chunk(flags, typ uint16, cookie uint64, payload []byte) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint32(b, magicStructReply)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

func dataChunk(flags uint16, cookie, off uint64, data []byte) []byte {
	return chunk(flags, chunkOffsetData, cookie, append(binary.BigEndian.AppendUint64(nil, off), data...))
}

func holeChunk(flags uint16, cookie, off uint64, n uint32) []byte {
	return chunk(flags, chunkOffsetHole, cookie, binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, off), n))
}

func statusChunk(flags uint16, cookie uint64, id uint32, ext ...uint32) []byte {
	p := binary.BigEndian.AppendUint32(nil, id)
	for _, e := range ext {
		p = binary.BigEndian.AppendUint32(p, e)
	}
	return chunk(flags, chunkBlockStatus, cookie, p)
}

func errorChunk(flags uint16, cookie uint64, errno uint32, msg string) []byte {
	p := binary.BigEndian.AppendUint32(nil, errno)
	p = binary.BigEndian.AppendUint16(p, uint16(len(msg)))
	return chunk(flags, chunkErrBit+1, cookie, append(p, msg...))
}

func noneChunk(cookie uint64) []byte { return chunk(replyFlagDone, chunkNone, cookie, nil) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A server that answers block status for less than asked (one 1 MiB
// extent at a time, the last one running past the request): the client
// asks again from where the answer stopped, and returns the extents of
// exactly the asked range, neighbours with equal flags merged. Chunks of
// the other negotiated context are skipped.
func TestShortBlockStatusAnswers(t *testing.T) {
	var asked []uint64
	c, err := dialScript(t, script{size: 16 << 20, serve: func(r request, w io.Writer) error {
		asked = append(asked, r.off)
		flags := uint32(0)
		if r.off/(1<<20)%4 == 1 { // 1 MiB dirty in every 4
			flags = StateDirty
		}
		b := statusChunk(0, r.cookie, 2, 1<<20, 0)
		b = append(b, statusChunk(replyFlagDone, r.cookie, 1, 1<<20, flags)...)
		_, err := w.Write(b)
		return err
	}}, Options{MetaContexts: []string{"qemu:dirty-bitmap:b", ContextAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	ext, err := c.BlockStatus(testCtx(t), "qemu:dirty-bitmap:b", 512<<10, 6<<20)
	if err != nil {
		t.Fatal(err)
	}
	// Asked at 0.5 MiB: the server answers 0.5-1.5 (clean, off 0.5 is in
	// block 0), 1.5-2.5 (block 1: dirty), 2.5-3.5, 3.5-4.5, 4.5-5.5 (block
	// 4: clean), 5.5-6.5 (block 5: dirty, clipped at 6.5).
	want := []Extent{{512 << 10, 1 << 20, 0}, {1536 << 10, 1 << 20, StateDirty}, {2560 << 10, 3 << 20, 0}, {5632 << 10, 1 << 20, StateDirty}}
	if len(ext) != len(want) {
		t.Fatalf("extents %v, want %v", ext, want)
	}
	for i := range want {
		if ext[i] != want[i] {
			t.Fatalf("extents %v, want %v", ext, want)
		}
	}
	if len(asked) != 6 {
		t.Errorf("%d requests (%v), want 6", len(asked), asked)
	}
}

// Data and hole chunks in any order, a server error that leaves the
// connection usable, and the old NBD_OPT_EXPORT_NAME ending of a
// handshake for a server without NBD_OPT_GO.
func TestReadChunksErrorsAndFallback(t *testing.T) {
	data := bytes.Repeat([]byte("yunchi!"), 1<<16)[:256<<10]
	fail := true
	c, err := dialScript(t, script{size: 1 << 20, noGo: true, serve: func(r request, w io.Writer) error {
		if r.typ == cmdRead && fail {
			fail = false
			_, err := w.Write(errorChunk(replyFlagDone, r.cookie, 5, "disk\non fire"))
			return err
		}
		half := r.length / 2
		b := holeChunk(0, r.cookie, r.off+uint64(half), half)
		b = append(b, dataChunk(0, r.cookie, r.off, data[:half])...)
		b = append(b, noneChunk(r.cookie)...)
		_, err := w.Write(b)
		return err
	}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	p := bytes.Repeat([]byte{0xff}, 256<<10)
	err = c.ReadAt(ctx, p, 0)
	var se *Error
	if !errors.As(err, &se) || se.Errno != 5 || se.Message != "disk on fire" || !strings.Contains(err.Error(), "EIO") {
		t.Fatalf("error %v, want EIO with the server's message on one line", err)
	}
	if err := c.ReadAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p[:128<<10], data[:128<<10]) || !bytes.Equal(p[128<<10:], make([]byte, 128<<10)) {
		t.Fatal("data then hole not assembled")
	}
	if err := c.Close(); err != nil {
		t.Error(err)
	}
}

// Reads are split at the server's maximum payload, and unaligned reads go
// through whole minimum blocks.
func TestReadSplitsAndAligns(t *testing.T) {
	const size = 1 << 20
	disk := make([]byte, size)
	for i := range disk {
		disk[i] = byte(i * 7)
	}
	var reqs []request
	c, err := dialScript(t, script{size: size, blockSize: [3]uint32{512, 4096, 64 << 10}, serve: func(r request, w io.Writer) error {
		reqs = append(reqs, r)
		if r.off%512 != 0 || r.length%512 != 0 || r.length > 64<<10 {
			_, err := w.Write(errorChunk(replyFlagDone, r.cookie, 22, "unaligned"))
			return err
		}
		_, err := w.Write(dataChunk(replyFlagDone, r.cookie, r.off, disk[r.off:r.off+uint64(r.length)]))
		return err
	}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	for _, rd := range []struct{ off, n int64 }{{0, size}, {100, 1000}, {511, 70 << 10}, {size - 3, 3}} {
		reqs = reqs[:0]
		p := make([]byte, rd.n)
		if err := c.ReadAt(ctx, p, rd.off); err != nil {
			t.Fatalf("read %d+%d: %v", rd.off, rd.n, err)
		}
		if !bytes.Equal(p, disk[rd.off:rd.off+rd.n]) {
			t.Fatalf("read %d+%d: wrong bytes", rd.off, rd.n)
		}
		if rd.off == 0 && len(reqs) != size/(64<<10) {
			t.Errorf("1 MiB read in %d requests, want 16", len(reqs))
		}
	}
}

// Every malformed reply gives an error, promptly, never a panic or a hang;
// the connection is then done with, and says so.
func TestMalformedReplies(t *testing.T) {
	const size = 1 << 20
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	for _, tc := range []struct {
		name  string
		reply func(r request) []byte
	}{
		{"bad magic", func(r request) []byte { return be32(0xdeadbeef) }},
		{"wrong cookie", func(r request) []byte { return noneChunk(r.cookie + 1) }},
		{"data outside the read", func(r request) []byte { return dataChunk(replyFlagDone, r.cookie, r.off+4096, make([]byte, 4096)) }},
		{"data before the read", func(r request) []byte { return dataChunk(replyFlagDone, r.cookie, r.off-1, make([]byte, 10)) }},
		{"overlapping chunks", func(r request) []byte {
			return append(dataChunk(0, r.cookie, r.off, make([]byte, 4096)), holeChunk(replyFlagDone, r.cookie, r.off+4095, 1)...)
		}},
		{"too little data", func(r request) []byte { return dataChunk(replyFlagDone, r.cookie, r.off, make([]byte, 100)) }},
		{"zero-length hole", func(r request) []byte { return holeChunk(replyFlagDone, r.cookie, r.off, 0) }},
		{"short hole chunk", func(r request) []byte { return chunk(replyFlagDone, chunkOffsetHole, r.cookie, make([]byte, 8)) }},
		{"short data chunk", func(r request) []byte { return chunk(replyFlagDone, chunkOffsetData, r.cookie, make([]byte, 8)) }},
		{"unknown chunk type", func(r request) []byte { return chunk(replyFlagDone, 77, r.cookie, nil) }},
		{"none with payload", func(r request) []byte { return chunk(replyFlagDone, chunkNone, r.cookie, make([]byte, 3)) }},
		{"none without done", func(r request) []byte { return chunk(0, chunkNone, r.cookie, nil) }},
		{"simple reply to a structured read", func(r request) []byte {
			return append(append(be32(magicSimpleReply), be32(0)...), binary.BigEndian.AppendUint64(nil, r.cookie)...)
		}},
		{"error message longer than its chunk", func(r request) []byte {
			return chunk(replyFlagDone, chunkErrBit+1, r.cookie, []byte{0, 0, 0, 5, 0xff, 0xff, 'x'})
		}},
		{"error chunk with error 0", func(r request) []byte { return errorChunk(replyFlagDone, r.cookie, 0, "") }},
		{"huge error chunk", func(r request) []byte {
			b := chunk(replyFlagDone, chunkErrBit+1, r.cookie, nil)
			binary.BigEndian.PutUint32(b[16:], 1<<31)
			return b
		}},
		{"huge data chunk", func(r request) []byte {
			b := chunk(replyFlagDone, chunkOffsetData, r.cookie, binary.BigEndian.AppendUint64(nil, r.off))
			binary.BigEndian.PutUint32(b[16:], 0xffffffff)
			return b
		}},
		{"truncated mid-chunk", func(r request) []byte { return dataChunk(replyFlagDone, r.cookie, r.off, make([]byte, 4096))[:100] }},
		{"silence", func(r request) []byte { return nil }},
		{"block status for another context", func(r request) []byte { return statusChunk(replyFlagDone, r.cookie, 9, 4096, 0) }},
		{"block status twice", func(r request) []byte {
			return append(statusChunk(0, r.cookie, 1, 4096, 0), statusChunk(replyFlagDone, r.cookie, 1, 4096, 0)...)
		}},
		{"block status zero-length extent", func(r request) []byte { return statusChunk(replyFlagDone, r.cookie, 1, 0, 0) }},
		{"block status ragged", func(r request) []byte { return chunk(replyFlagDone, chunkBlockStatus, r.cookie, make([]byte, 10)) }},
		{"block status extents past the request", func(r request) []byte {
			return statusChunk(replyFlagDone, r.cookie, 1, r.length, 0, 4096, 1)
		}},
		{"block status missing", func(r request) []byte { return noneChunk(r.cookie) }},
		{"block status simple success", func(r request) []byte {
			return append(append(be32(magicSimpleReply), be32(0)...), binary.BigEndian.AppendUint64(nil, r.cookie)...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			silent := make(chan struct{})
			c, err := dialScript(t, script{size: size, serve: func(r request, w io.Writer) error {
				b := tc.reply(r)
				if len(b) == 0 {
					<-silent
					return io.EOF
				}
				w.Write(b)
				if strings.HasPrefix(tc.name, "truncated") {
					return io.EOF // hang up
				}
				return nil
			}}, Options{MetaContexts: []string{ContextAllocation}})
			if err != nil {
				t.Fatal(err)
			}
			defer close(silent)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			if strings.HasPrefix(tc.name, "block status") {
				_, err = c.BlockStatus(ctx, ContextAllocation, 8192, 8192)
			} else {
				err = c.ReadAt(ctx, make([]byte, 8192), 8192)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if time.Since(start) > 2*time.Second {
				t.Errorf("took %v", time.Since(start))
			}
			if strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "nbd: ") {
				t.Errorf("error %q: want one line starting nbd:", err)
			}
			t.Log(err)
			if err2 := c.ReadAt(testCtx(t), make([]byte, 1), 0); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("next call: %v, want the same error", err2)
			}
		})
	}
}

// Handshakes that go wrong end with an error naming what was wrong.
func TestBadHandshakes(t *testing.T) {
	be64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	for _, tc := range []struct {
		name     string
		b        []byte
		want     string
		keepOpen bool
	}{
		{"not nbd", []byte("HTTP/1.1 400 Bad Request\r\n\r\n"), "not an NBD server", false},
		{"oldstyle", append(be64(magicNBD), be64(magicOldstyle)...), "oldstyle", false},
		{"not fixed newstyle", append(append(be64(magicNBD), be64(magicOpt)...), 0, 0), "fixed newstyle", false},
		{"hang up", be64(magicNBD), "closed the connection", false},
		{"bad option reply", append(append(append(be64(magicNBD), be64(magicOpt)...), 0, 1), append(be64(12345), make([]byte, 12)...)...), "option reply magic", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dialScript(t, script{handshake: tc.b, keepOpen: tc.keepOpen}, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "nbd: handshake: ") {
				t.Fatalf("error %v, want nbd: handshake: ...%s", err, tc.want)
			}
		})
	}
	for _, o := range []Options{{Export: strings.Repeat("x", 5000)}, {MetaContexts: []string{"nocolon"}}} {
		cli, srv := net.Pipe()
		srv.Close()
		if _, err := Handshake(testCtx(t), cli, o); err == nil {
			t.Errorf("%.40v accepted", o)
		}
	}
}

// A cancelled context ends a call that waits on the server.
func TestContextEndsWait(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	c, err := dialScript(t, script{size: 4096, serve: func(r request, w io.Writer) error {
		<-block
		return io.EOF
	}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	err = c.ReadAt(ctx, make([]byte, 4096), 0)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	block <- struct{}{}
	c, err = dialScript(t, script{size: 4096, serve: func(r request, w io.Writer) error {
		<-block
		return io.EOF
	}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want context.DeadlineExceeded", err)
	}
}

// Arbitrary bytes as the reply to a read and to a block status request:
// an error or a result, promptly, never a panic.
func FuzzReply(f *testing.F) {
	f.Add([]byte{}, false)
	f.Add(noneChunk(1), false)
	f.Add(dataChunk(replyFlagDone, 1, 0, make([]byte, 512)), false)
	f.Add(append(holeChunk(0, 1, 0, 256), dataChunk(replyFlagDone, 1, 256, make([]byte, 256))...), false)
	f.Add(statusChunk(replyFlagDone, 1, 1, 512, 3), true)
	f.Add(errorChunk(replyFlagDone, 1, 5, "x"), true)
	f.Fuzz(func(t *testing.T, reply []byte, status bool) {
		c, err := dialScript(t, script{size: 512, serve: func(r request, w io.Writer) error {
			w.Write(reply)
			return io.EOF
		}}, Options{MetaContexts: []string{ContextAllocation}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if status {
			ext, err := c.BlockStatus(ctx, ContextAllocation, 0, 512)
			if err == nil {
				var n int64
				for _, e := range ext {
					if e.Offset != n || e.Length <= 0 {
						t.Fatalf("extents %v", ext)
					}
					n += e.Length
				}
				if n != 512 {
					t.Fatalf("extents %v cover %d bytes", ext, n)
				}
			}
		} else {
			c.ReadAt(ctx, make([]byte, 512), 0)
		}
	})
}

// Arbitrary bytes as the server's handshake.
func FuzzHandshake(f *testing.F) {
	var ok bytes.Buffer
	binary.Write(&ok, binary.BigEndian, []uint64{magicNBD, magicOpt})
	ok.Write([]byte{0, 3})
	f.Add(ok.Bytes())
	f.Add(append(ok.Bytes(), chunk(0, 0, 0, nil)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := dialScript(t, script{handshake: b}, Options{MetaContexts: []string{ContextAllocation}})
		if err == nil {
			c.Close()
		}
	})
}
