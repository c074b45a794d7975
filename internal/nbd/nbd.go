// Package nbd is a client for the Network Block Device protocol
// (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md), as
// much of it as reading a backup export takes: the fixed newstyle
// handshake, structured replies, metadata contexts (base:allocation,
// qemu:dirty-bitmap:NAME), NBD_CMD_READ, NBD_CMD_BLOCK_STATUS and
// NBD_CMD_DISC. It reads only (no writes, no TLS) and keeps one request in
// flight; reads are split at the server's maximum payload (32 MiB at
// most) and land straight in the caller's buffer.
//
// A server that breaks the protocol gets a one-line error, never a panic
// or a hang (every call honours its context): the connection is then
// unusable, since where the next message starts is unknown, and every
// later call returns the same error.
package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Magic numbers.
const (
	magicNBD          = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt          = 0x49484156454f5054 // "IHAVEOPT"
	magicOldstyle     = 0x00420281861253
	magicOptReply     = 0x3e889045565a9
	magicRequest      = 0x25609513
	magicSimpleReply  = 0x67446698
	magicStructReply  = 0x668e33ef
	flagFixedNewstyle = 1 << 0 // handshake and client flag
	flagNoZeroes      = 1 << 1 // handshake and client flag
)

// Options, option replies and information types.
const (
	optExportName     = 1
	optGo             = 7
	optStructuredRepl = 8
	optSetMetaContext = 10

	repAck         = 1
	repInfo        = 3
	repMetaContext = 4
	repErrBit      = 1 << 31
	repErrUnsup    = repErrBit + 1
	repErrUnknown  = repErrBit + 6

	infoExport    = 0
	infoBlockSize = 3
)

// Commands and structured reply chunks.
const (
	cmdRead        = 0
	cmdDisc        = 2
	cmdBlockStatus = 7

	replyFlagDone = 1

	chunkNone        = 0
	chunkOffsetData  = 1
	chunkOffsetHole  = 2
	chunkBlockStatus = 5
	chunkErrBit      = 1 << 15
	chunkErrorOffset = chunkErrBit + 2

	transmitReadOnly = 1 << 1
)

// Flags of metadata contexts' extents.
const (
	// StateHole (base:allocation): the extent is not allocated.
	StateHole = 1 << 0
	// StateZero (base:allocation): the extent reads as zeroes.
	StateZero = 1 << 1
	// StateDirty (qemu:dirty-bitmap:NAME): the extent is dirty in the bitmap.
	StateDirty = 1 << 0
)

// Metadata context names.
const (
	ContextAllocation = "base:allocation"
	// ContextDirtyBitmap is the prefix of the context of an exported dirty
	// bitmap; the bitmap's export name follows.
	ContextDirtyBitmap = "qemu:dirty-bitmap:"
)

// Limits that keep a broken or hostile server from making the client
// allocate or wait for absurd amounts.
const (
	// MaxRead is the most one read request asks for (the protocol's
	// interoperable maximum payload).
	MaxRead = 32 << 20
	// maxString is the protocol's limit on strings (names, messages).
	maxString = 4096
	// maxOptReply bounds an option reply's payload.
	maxOptReply = 64 << 10
	// maxStatusChunk bounds a block status chunk: 2^20 descriptors.
	maxStatusChunk = 4 + 8<<20
	// maxErrorChunk bounds an error chunk: message and offset.
	maxErrorChunk = 6 + maxString + 8
	// maxStatusLength is the most one block status request asks about.
	maxStatusLength = 1 << 31
	// discTimeout bounds sending NBD_CMD_DISC on Close.
	discTimeout = time.Second
)

// Options choose what the handshake asks for.
type Options struct {
	// Export is the export's name ("" = the server's default export).
	Export string
	// MetaContexts are the metadata contexts BlockStatus can query;
	// the handshake fails if the server does not offer one of them.
	MetaContexts []string
}

// Extent is a range of the export with its flags in one metadata context.
type Extent struct {
	Offset, Length int64
	Flags          uint32
}

// Error is an error the server reported for a request.
type Error struct {
	Op      string // "read 0+4096"
	Errno   uint32 // NBD_EIO, NBD_EINVAL, ...
	Message string // the server's words, if any
}

func (e *Error) Error() string {
	s := fmt.Sprintf("nbd: %s: server error %s", e.Op, errnoName(e.Errno))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

func errnoName(n uint32) string {
	names := map[uint32]string{1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC", 75: "EOVERFLOW", 95: "ENOTSUP", 108: "ESHUTDOWN"}
	if s, ok := names[n]; ok {
		return fmt.Sprintf("%s (%d)", s, n)
	}
	return fmt.Sprintf("%d", n)
}

// ErrProtocol is wrapped by errors about a server that broke the protocol.
var ErrProtocol = errors.New("protocol violation")

func protoErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, a...))
}

// Client is one connection to an export, in the transmission phase. It is
// safe for concurrent use; requests are sent one at a time.
type Client struct {
	mu     sync.Mutex
	conn   net.Conn
	r      *bufio.Reader
	broken error // set once the stream is out of step; returned by every call
	closed bool

	size       int64
	flags      uint16
	noZeroes   bool
	structured bool
	contexts   map[string]uint32 // selected metadata contexts by name
	minBlock   int64
	prefBlock  int64
	maxPayload int64
	maxRead    int64 // what one read asks for: maxPayload, capped, aligned

	cookie uint64
	hdr    [32]byte
	bounce []byte // unaligned reads
	spans  []span // read coverage
	descs  []byte // block status payload
	exts   []Extent
}

type span struct{ off, end int64 }

// Dial connects to an NBD server at address on network ("unix" or "tcp")
// and completes the handshake.
func Dial(ctx context.Context, network, address string, o Options) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", address, err)
	}
	c, err := Handshake(ctx, conn, o)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Handshake negotiates over conn (fixed newstyle: structured replies, the
// metadata contexts, then NBD_OPT_GO with a block size request) and
// returns the client in the transmission phase. It owns conn from then on:
// conn is closed if the handshake fails.
func Handshake(ctx context.Context, conn net.Conn, o Options) (_ *Client, err error) {
	if len(o.Export) > maxString {
		conn.Close()
		return nil, fmt.Errorf("nbd: export name of %d bytes, at most %d", len(o.Export), maxString)
	}
	for _, m := range o.MetaContexts {
		if len(m) > maxString || !strings.Contains(m, ":") || !utf8.ValidString(m) {
			conn.Close()
			return nil, fmt.Errorf("nbd: metadata context %q: want namespace:name, at most %d bytes", m, maxString)
		}
	}
	c := &Client{conn: conn, r: bufio.NewReaderSize(conn, 64<<10), contexts: map[string]uint32{}}
	stop := c.watch(ctx)
	defer func() {
		stop()
		if err != nil {
			conn.Close()
			err = wrapErr(ctx, "handshake", err)
		} else {
			conn.SetDeadline(time.Time{})
		}
	}()
	if err := c.greet(); err != nil {
		return nil, err
	}
	if err := c.negotiateStructured(); err != nil {
		return nil, err
	}
	if len(o.MetaContexts) > 0 {
		if !c.structured {
			return nil, errors.New("the server has no structured replies, so no metadata contexts")
		}
		if err := c.setMetaContexts(o.Export, o.MetaContexts); err != nil {
			return nil, err
		}
	}
	if err := c.goExport(o.Export); err != nil {
		return nil, err
	}
	return c, nil
}

// watch makes conn's I/O end when ctx does: at its deadline, or at once
// when it is cancelled. The returned func stops watching; once it
// returns, ctx no longer touches conn.
func (c *Client) watch(ctx context.Context) func() {
	dl, _ := ctx.Deadline() // zero: none
	c.conn.SetDeadline(dl)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	return func() {
		if !stop() {
			<-fired
		}
	}
}

// wrapErr names the operation an error happened in, and prefers the
// context's error to the I/O error it caused.
func wrapErr(ctx context.Context, op string, err error) error {
	var se *Error
	switch {
	case errors.As(err, &se):
		return err
	case errors.Is(err, ErrProtocol):
	case ctx.Err() != nil:
		err = ctx.Err()
	case isTimeout(err) && pastDeadline(ctx):
		// The connection's deadline is the context's: it may fire a
		// moment before the context's own timer.
		err = context.DeadlineExceeded
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		err = errors.New("the server closed the connection")
	}
	return fmt.Errorf("nbd: %s: %w", op, err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func pastDeadline(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

func (c *Client) readFull(p []byte) error {
	_, err := io.ReadFull(c.r, p)
	return err
}

func (c *Client) discard(n int64) error {
	_, err := c.r.Discard(int(n))
	return err
}

func (c *Client) greet() error {
	b := c.hdr[:18]
	if err := c.readFull(b[:16]); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(b) != magicNBD {
		return errors.New("not an NBD server (no NBDMAGIC)")
	}
	switch binary.BigEndian.Uint64(b[8:]) {
	case magicOpt:
	case magicOldstyle:
		return errors.New("the server speaks the oldstyle handshake, which this client does not")
	default:
		return protoErr("unknown handshake magic %#x", binary.BigEndian.Uint64(b[8:]))
	}
	if err := c.readFull(b[16:18]); err != nil {
		return err
	}
	hflags := binary.BigEndian.Uint16(b[16:])
	if hflags&flagFixedNewstyle == 0 {
		return errors.New("the server does not speak fixed newstyle negotiation")
	}
	cflags := uint32(flagFixedNewstyle)
	if hflags&flagNoZeroes != 0 {
		cflags |= flagNoZeroes
		c.noZeroes = true
	}
	binary.BigEndian.PutUint32(b[:4], cflags)
	_, err := c.conn.Write(b[:4])
	return err
}

func (c *Client) sendOpt(opt uint32, data []byte) error {
	msg := make([]byte, 16+len(data))
	binary.BigEndian.PutUint64(msg, magicOpt)
	binary.BigEndian.PutUint32(msg[8:], opt)
	binary.BigEndian.PutUint32(msg[12:], uint32(len(data)))
	copy(msg[16:], data)
	_, err := c.conn.Write(msg)
	return err
}

// optReply reads one option reply to opt: its type and payload.
func (c *Client) optReply(opt uint32) (typ uint32, data []byte, err error) {
	b := c.hdr[:20]
	if err := c.readFull(b); err != nil {
		return 0, nil, err
	}
	if m := binary.BigEndian.Uint64(b); m != magicOptReply {
		return 0, nil, protoErr("option reply magic %#x", m)
	}
	if o := binary.BigEndian.Uint32(b[8:]); o != opt {
		return 0, nil, protoErr("reply to option %d while waiting for option %d", o, opt)
	}
	typ = binary.BigEndian.Uint32(b[12:])
	n := binary.BigEndian.Uint32(b[16:])
	if n > maxOptReply {
		return 0, nil, protoErr("option reply of %d bytes", n)
	}
	data = make([]byte, n)
	if err := c.readFull(data); err != nil {
		return 0, nil, err
	}
	return typ, data, nil
}

// optError renders an error reply to an option.
func optError(what string, typ uint32, data []byte) error {
	names := map[uint32]string{
		repErrBit + 1: "unsupported", repErrBit + 2: "refused by policy", repErrBit + 3: "invalid",
		repErrBit + 4: "unsupported on the server's platform", repErrBit + 5: "TLS required", repErrBit + 6: "unknown export",
		repErrBit + 7: "server shutting down", repErrBit + 8: "block size negotiation required", repErrBit + 9: "too big",
	}
	name, ok := names[typ]
	if !ok {
		name = fmt.Sprintf("error %#x", typ)
	}
	if msg := oneLine(data); msg != "" {
		name += ": " + msg
	}
	return fmt.Errorf("%s: %s", what, name)
}

// oneLine is a server's message made safe to put in an error: valid
// UTF-8, on one line, not too long.
func oneLine(b []byte) string {
	s := strings.Join(strings.Fields(strings.ToValidUTF8(string(b), "?")), " ")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

func (c *Client) negotiateStructured() error {
	if err := c.sendOpt(optStructuredRepl, nil); err != nil {
		return err
	}
	typ, data, err := c.optReply(optStructuredRepl)
	switch {
	case err != nil:
		return err
	case typ == repAck:
		c.structured = true
	case typ == repErrUnsup:
		c.structured = false
	case typ&repErrBit != 0:
		return optError("structured replies", typ, data)
	default:
		return protoErr("reply type %d to NBD_OPT_STRUCTURED_REPLY", typ)
	}
	return nil
}

func (c *Client) setMetaContexts(export string, names []string) error {
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint32(data, uint32(len(names)))
	for _, n := range names {
		data = binary.BigEndian.AppendUint32(data, uint32(len(n)))
		data = append(data, n...)
	}
	if err := c.sendOpt(optSetMetaContext, data); err != nil {
		return err
	}
	for {
		typ, data, err := c.optReply(optSetMetaContext)
		if err != nil {
			return err
		}
		switch {
		case typ == repAck:
			for _, n := range names {
				if _, ok := c.contexts[n]; !ok {
					return fmt.Errorf("the server does not offer metadata context %q on export %q", n, export)
				}
			}
			return nil
		case typ == repMetaContext:
			if len(data) < 4 || len(data) > 4+maxString {
				return protoErr("metadata context reply of %d bytes", len(data))
			}
			c.contexts[string(data[4:])] = binary.BigEndian.Uint32(data)
		case typ&repErrBit != 0:
			return optError("metadata contexts", typ, data)
		default:
			return protoErr("reply type %d to NBD_OPT_SET_META_CONTEXT", typ)
		}
	}
}

// goExport ends the handshake with NBD_OPT_GO (NBD_OPT_EXPORT_NAME for a
// server without it), asking for the block size constraints.
func (c *Client) goExport(export string) error {
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 1)
	data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	if err := c.sendOpt(optGo, data); err != nil {
		return err
	}
	haveExport := false
	c.minBlock, c.prefBlock, c.maxPayload = 1, 4096, MaxRead
	for {
		typ, data, err := c.optReply(optGo)
		if err != nil {
			return err
		}
		switch {
		case typ == repInfo:
			if len(data) < 2 {
				return protoErr("information reply of %d bytes", len(data))
			}
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					return protoErr("NBD_INFO_EXPORT of %d bytes", len(data))
				}
				if err := c.setExport(binary.BigEndian.Uint64(data[2:]), binary.BigEndian.Uint16(data[10:])); err != nil {
					return err
				}
				haveExport = true
			case infoBlockSize:
				if len(data) != 14 {
					return protoErr("NBD_INFO_BLOCK_SIZE of %d bytes", len(data))
				}
				if err := c.setBlockSizes(binary.BigEndian.Uint32(data[2:]), binary.BigEndian.Uint32(data[6:]), binary.BigEndian.Uint32(data[10:])); err != nil {
					return err
				}
			}
		case typ == repAck:
			if !haveExport {
				return protoErr("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return nil
		case typ == repErrUnsup:
			return c.exportName(export)
		case typ == repErrUnknown:
			return fmt.Errorf("the server has no export %q", export)
		case typ&repErrBit != 0:
			return optError(fmt.Sprintf("export %q", export), typ, data)
		default:
			return protoErr("reply type %d to NBD_OPT_GO", typ)
		}
	}
}

// exportName is the old way to end the handshake: the server answers
// with the export's size and flags, or hangs up.
func (c *Client) exportName(export string) error {
	if err := c.sendOpt(optExportName, []byte(export)); err != nil {
		return err
	}
	b := c.hdr[:10]
	if err := c.readFull(b); err != nil {
		return fmt.Errorf("export %q: %w", export, err)
	}
	if err := c.setExport(binary.BigEndian.Uint64(b), binary.BigEndian.Uint16(b[8:])); err != nil {
		return err
	}
	if !c.noZeroes {
		return c.discard(124) // reserved zeroes
	}
	return nil
}

func (c *Client) setExport(size uint64, flags uint16) error {
	if size > 1<<62 {
		return protoErr("export size %d", size)
	}
	c.size, c.flags = int64(size), flags
	return nil
}

func (c *Client) setBlockSizes(minB, pref, maxP uint32) error {
	pow2 := func(v uint32) bool { return v != 0 && v&(v-1) == 0 }
	if !pow2(minB) || minB > 64<<10 || !pow2(pref) || pref < minB || maxP < pref {
		return protoErr("block sizes min %d, preferred %d, max payload %d", minB, pref, maxP)
	}
	c.minBlock, c.prefBlock, c.maxPayload = int64(minB), int64(pref), int64(maxP)
	return nil
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// ReadOnly says whether the server exports read-only.
func (c *Client) ReadOnly() bool { return c.flags&transmitReadOnly != 0 }

// BlockSizes are the server's size constraints: minimum block, preferred
// block and maximum payload (the protocol's defaults if it sent none).
func (c *Client) BlockSizes() (minBlock, preferred, maxPayload int64) {
	return c.minBlock, c.prefBlock, c.maxPayload
}

// readSize is what one read request asks for at most: the server's
// maximum payload, at most MaxRead, in whole minimum blocks.
func (c *Client) readSize() int64 {
	if c.maxRead == 0 {
		n := min(c.maxPayload, MaxRead)
		if n >= c.prefBlock {
			n -= n % c.prefBlock
		}
		n -= n % c.minBlock
		c.maxRead = max(n, c.minBlock)
	}
	return c.maxRead
}

// begin takes the connection for one call.
func (c *Client) begin() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("nbd: client closed")
	}
	if c.broken != nil {
		c.mu.Unlock()
		return c.broken
	}
	return nil
}

// fail ends a call that failed: a server error leaves the stream in
// step, anything else (I/O, protocol) breaks it for good.
func (c *Client) fail(ctx context.Context, op string, err error) error {
	var se *Error
	if errors.As(err, &se) {
		return err
	}
	err = wrapErr(ctx, op, err)
	c.broken = err
	c.conn.Close()
	return err
}

// ReadAt reads len(p) bytes of the export at off. Holes the server
// reports are zeroed in p.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off > c.size || int64(len(p)) > c.size-off {
		return fmt.Errorf("nbd: read %d+%d: outside the export (%d bytes)", off, len(p), c.size)
	}
	if err := c.begin(); err != nil {
		return err
	}
	defer c.mu.Unlock()
	stop := c.watch(ctx)
	defer stop()
	for len(p) > 0 {
		n, err := c.readPiece(ctx, p, off)
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// readPiece reads the start of p at off in one request, through the
// bounce buffer when off or the length is not in whole minimum blocks,
// and says how many bytes of p it filled.
func (c *Client) readPiece(ctx context.Context, p []byte, off int64) (int, error) {
	mb, max := c.minBlock, c.readSize()
	n := min(int64(len(p)), max)
	if off%mb == 0 && (n%mb == 0 || off+n == c.size) {
		return int(n), c.request(ctx, cmdRead, p[:n], off, n)
	}
	if off%mb == 0 && n > mb {
		n -= n % mb // the aligned part now, the tail next
		return int(n), c.request(ctx, cmdRead, p[:n], off, n)
	}
	start := off - off%mb
	end := min(start+max, off+int64(len(p)))
	if end%mb != 0 {
		end = min(end+mb-end%mb, c.size)
	}
	if int64(cap(c.bounce)) < end-start {
		c.bounce = make([]byte, end-start)
	}
	b := c.bounce[:end-start]
	if err := c.request(ctx, cmdRead, b, start, end-start); err != nil {
		return 0, err
	}
	return copy(p, b[off-start:]), nil
}

// BlockStatus lists the extents of [off, off+length) in the metadata
// context name (one of Options.MetaContexts), sorted, consecutive,
// clipped to the range, neighbours with equal flags merged. It asks again
// where the server answered for less than asked.
func (c *Client) BlockStatus(ctx context.Context, name string, off, length int64) ([]Extent, error) {
	if off < 0 || length < 0 || off > c.size || length > c.size-off {
		return nil, fmt.Errorf("nbd: block status %d+%d: outside the export (%d bytes)", off, length, c.size)
	}
	if err := c.begin(); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	id, ok := c.contexts[name]
	if !ok {
		return nil, fmt.Errorf("nbd: block status: metadata context %q was not negotiated", name)
	}
	stop := c.watch(ctx)
	defer stop()
	var out []Extent
	end := off + length
	for pos := off; pos < end; {
		n := min(end-pos, maxStatusLength)
		if n > c.minBlock {
			n -= n % c.minBlock
		}
		c.exts = c.exts[:0]
		if err := c.blockStatus(ctx, id, pos, n); err != nil {
			return nil, err
		}
		for _, e := range c.exts {
			if e.Offset >= end {
				break
			}
			e.Length = min(e.Length, end-e.Offset)
			if k := len(out) - 1; k >= 0 && out[k].Flags == e.Flags && out[k].Offset+out[k].Length == e.Offset {
				out[k].Length += e.Length
			} else {
				out = append(out, e)
			}
			pos = e.Offset + e.Length
		}
	}
	return out, nil
}

func (c *Client) blockStatus(ctx context.Context, id uint32, off, n int64) error {
	c.descs = c.descs[:0]
	return c.request(ctx, cmdBlockStatus, nil, off, n, id)
}

// request sends one command and reads its whole reply: into p for a
// read, into c.exts (the extents of context ctxID[0]) for block status.
func (c *Client) request(ctx context.Context, cmd uint16, p []byte, off, n int64, ctxID ...uint32) error {
	op := fmt.Sprintf("read %d+%d", off, n)
	if cmd == cmdBlockStatus {
		op = fmt.Sprintf("block status %d+%d", off, n)
	}
	c.cookie++
	h := c.hdr[:28]
	binary.BigEndian.PutUint32(h, magicRequest)
	binary.BigEndian.PutUint16(h[4:], 0)
	binary.BigEndian.PutUint16(h[6:], cmd)
	binary.BigEndian.PutUint64(h[8:], c.cookie)
	binary.BigEndian.PutUint64(h[16:], uint64(off))
	binary.BigEndian.PutUint32(h[24:], uint32(n))
	if _, err := c.conn.Write(h); err != nil {
		return c.fail(ctx, op, err)
	}
	var err error
	if cmd == cmdRead {
		err = c.readReply(op, p, off)
	} else {
		err = c.statusReply(op, ctxID[0], off, n)
	}
	if err != nil {
		return c.fail(ctx, op, err)
	}
	return nil
}

// replyHeader reads the next reply's header. simple is true for a simple
// reply (errno set), else the structured chunk's fields are set.
type replyHeader struct {
	simple     bool
	errno      uint32
	flags, typ uint16
	length     uint32
}

func (c *Client) replyHeader() (replyHeader, error) {
	var r replyHeader
	b := c.hdr[:20]
	if err := c.readFull(b[:4]); err != nil {
		return r, err
	}
	switch binary.BigEndian.Uint32(b) {
	case magicSimpleReply:
		if err := c.readFull(b[4:16]); err != nil {
			return r, err
		}
		r.simple, r.errno = true, binary.BigEndian.Uint32(b[4:])
		if ck := binary.BigEndian.Uint64(b[8:]); ck != c.cookie {
			return r, protoErr("reply cookie %d, want %d", ck, c.cookie)
		}
	case magicStructReply:
		if !c.structured {
			return r, protoErr("structured reply without negotiating them")
		}
		if err := c.readFull(b[4:20]); err != nil {
			return r, err
		}
		r.flags, r.typ = binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:])
		if ck := binary.BigEndian.Uint64(b[8:]); ck != c.cookie {
			return r, protoErr("reply cookie %d, want %d", ck, c.cookie)
		}
		r.length = binary.BigEndian.Uint32(b[16:])
	default:
		return r, protoErr("reply magic %#x", binary.BigEndian.Uint32(b))
	}
	return r, nil
}

// errorChunk reads an error chunk's payload (the header is read).
func (c *Client) errorChunk(op string, r replyHeader) (*Error, error) {
	if r.length < 6 || r.length > maxErrorChunk {
		return nil, protoErr("error chunk of %d bytes", r.length)
	}
	b := make([]byte, r.length)
	if err := c.readFull(b); err != nil {
		return nil, err
	}
	msgLen := int(binary.BigEndian.Uint16(b[4:]))
	if msgLen > len(b)-6 {
		return nil, protoErr("error message of %d bytes in a chunk of %d", msgLen, r.length)
	}
	if r.typ == chunkErrorOffset && len(b)-6-msgLen != 8 {
		return nil, protoErr("error offset chunk of %d bytes", r.length)
	}
	e := &Error{Op: op, Errno: binary.BigEndian.Uint32(b), Message: oneLine(b[6 : 6+msgLen])}
	if e.Errno == 0 {
		return nil, protoErr("error chunk with error 0")
	}
	return e, nil
}

// readReply reads the reply to a read of len(p) bytes at off into p.
func (c *Client) readReply(op string, p []byte, off int64) error {
	n := int64(len(p))
	c.spans = c.spans[:0]
	var first *Error
	for {
		r, err := c.replyHeader()
		if err != nil {
			return err
		}
		if r.simple {
			if c.structured {
				return protoErr("simple reply to a read after negotiating structured replies")
			}
			if r.errno != 0 {
				return &Error{Op: op, Errno: r.errno}
			}
			return c.readFull(p)
		}
		switch {
		case r.typ == chunkNone:
			if r.length != 0 || r.flags&replyFlagDone == 0 {
				return protoErr("NBD_REPLY_TYPE_NONE of %d bytes, flags %#x", r.length, r.flags)
			}
		case r.typ == chunkOffsetData:
			if r.length < 9 {
				return protoErr("data chunk of %d bytes", r.length)
			}
			b := c.hdr[20:28]
			if err := c.readFull(b); err != nil {
				return err
			}
			at, dn := binary.BigEndian.Uint64(b), int64(r.length-8)
			if at < uint64(off) || at-uint64(off) > uint64(n) || dn > n-int64(at-uint64(off)) {
				return protoErr("data chunk %d+%d outside the read %d+%d", at, dn, off, n)
			}
			rel := int64(at - uint64(off))
			if err := c.readFull(p[rel : rel+dn]); err != nil {
				return err
			}
			c.spans = append(c.spans, span{rel, rel + dn})
		case r.typ == chunkOffsetHole:
			if r.length != 12 {
				return protoErr("hole chunk of %d bytes", r.length)
			}
			b := c.hdr[20:32]
			if err := c.readFull(b); err != nil {
				return err
			}
			at, hn := binary.BigEndian.Uint64(b), int64(binary.BigEndian.Uint32(b[8:]))
			if hn == 0 || at < uint64(off) || at-uint64(off) > uint64(n) || hn > n-int64(at-uint64(off)) {
				return protoErr("hole chunk %d+%d empty or outside the read %d+%d", at, hn, off, n)
			}
			rel := int64(at - uint64(off))
			clear(p[rel : rel+hn])
			c.spans = append(c.spans, span{rel, rel + hn})
		case r.typ&chunkErrBit != 0:
			e, err := c.errorChunk(op, r)
			if err != nil {
				return err
			}
			if first == nil {
				first = e
			}
		default:
			return protoErr("chunk type %d in the reply to a read", r.typ)
		}
		if r.flags&replyFlagDone != 0 {
			break
		}
	}
	if first != nil {
		return first
	}
	return checkCovered(c.spans, n)
}

// checkCovered says whether spans cover [0, n) exactly once.
func checkCovered(spans []span, n int64) error {
	sorted := true
	for i := 1; i < len(spans); i++ {
		if spans[i].off < spans[i-1].off {
			sorted = false
			break
		}
	}
	if !sorted {
		sort.Slice(spans, func(i, j int) bool { return spans[i].off < spans[j].off })
	}
	var pos int64
	for _, s := range spans {
		if s.off != pos {
			if s.off < pos {
				return protoErr("read reply chunks overlap at %d", s.off)
			}
			return protoErr("read reply misses bytes %d+%d", pos, s.off-pos)
		}
		pos = s.end
	}
	if pos != n {
		return protoErr("read reply misses bytes %d+%d", pos, n-pos)
	}
	return nil
}

// statusReply reads the reply to a block status request for n bytes at
// off: the extents of context id into c.exts.
func (c *Client) statusReply(op string, id uint32, off, n int64) error {
	var first *Error
	seen := map[uint32]bool{}
	for {
		r, err := c.replyHeader()
		if err != nil {
			return err
		}
		if r.simple {
			if r.errno != 0 {
				return &Error{Op: op, Errno: r.errno}
			}
			return protoErr("simple reply without error to a block status request")
		}
		switch {
		case r.typ == chunkNone:
			if r.length != 0 || r.flags&replyFlagDone == 0 {
				return protoErr("NBD_REPLY_TYPE_NONE of %d bytes, flags %#x", r.length, r.flags)
			}
		case r.typ == chunkBlockStatus:
			if r.length < 12 || (r.length-4)%8 != 0 || r.length > maxStatusChunk {
				return protoErr("block status chunk of %d bytes", r.length)
			}
			if int64(cap(c.descs)) < int64(r.length) {
				c.descs = make([]byte, r.length)
			}
			b := c.descs[:r.length]
			if err := c.readFull(b); err != nil {
				return err
			}
			cid := binary.BigEndian.Uint32(b)
			if !c.knownContext(cid) {
				return protoErr("block status for metadata context id %d, which was not negotiated", cid)
			}
			if seen[cid] {
				return protoErr("two block status chunks for metadata context id %d", cid)
			}
			seen[cid] = true
			pos := off
			for d := b[4:]; cid == id && len(d) > 0; d = d[8:] {
				l := int64(binary.BigEndian.Uint32(d))
				if l == 0 {
					return protoErr("block status extent of length 0")
				}
				if pos >= off+n {
					return protoErr("block status extents past the request %d+%d", off, n)
				}
				c.exts = append(c.exts, Extent{Offset: pos, Length: min(l, c.size-pos), Flags: binary.BigEndian.Uint32(d[4:])})
				pos += l
				if pos > c.size {
					break // the last extent may run past the end of the export: clipped
				}
			}
		case r.typ&chunkErrBit != 0:
			e, err := c.errorChunk(op, r)
			if err != nil {
				return err
			}
			if first == nil {
				first = e
			}
		default:
			return protoErr("chunk type %d in the reply to block status", r.typ)
		}
		if r.flags&replyFlagDone != 0 {
			break
		}
	}
	if first != nil {
		return first
	}
	if !seen[id] {
		return protoErr("no block status for the asked metadata context")
	}
	return nil
}

func (c *Client) knownContext(id uint32) bool {
	for _, v := range c.contexts {
		if v == id {
			return true
		}
	}
	return false
}

// Close ends the session (NBD_CMD_DISC, then the connection).
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.broken == nil {
		c.cookie++
		h := c.hdr[:28]
		clear(h)
		binary.BigEndian.PutUint32(h, magicRequest)
		binary.BigEndian.PutUint16(h[6:], cmdDisc)
		binary.BigEndian.PutUint64(h[8:], c.cookie)
		c.conn.SetWriteDeadline(time.Now().Add(discTimeout))
		c.conn.Write(h) // best effort: the connection closes anyway
	}
	return c.conn.Close()
}
