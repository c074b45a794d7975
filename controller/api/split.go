package api

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"
)

// One port serves gRPC and HTTP (REST, /metrics, /healthz). Handing gRPC
// to net/http's HTTP/2 server and grpc.Server.ServeHTTP costs about twice
// the CPU and latency of gRPC's own transport, so the port is split per
// connection instead: a connection that opens with the HTTP/2 preface and
// whose first request has content-type application/grpc goes to the gRPC
// server's own transport; every other connection (HTTP/1.1, and HTTP/2
// without TLS for anything else) goes to the HTTP server as before.

const (
	h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	// A connection must show what it is within this long.
	sniffTimeout = 10 * time.Second
	// Frames a client may send before its first request (SETTINGS,
	// WINDOW_UPDATE, PING, PRIORITY, the ACK of ours); more is not a
	// client worth waiting for.
	sniffMaxFrames = 16
	// The largest frame read while sniffing: the HTTP/2 default
	// SETTINGS_MAX_FRAME_SIZE, which a client may not exceed before it
	// has seen ours.
	sniffMaxFrame  = 16384
	frameHeaderLen = 9

	frameHeaders      = 0x1
	frameSettings     = 0x4
	frameContinuation = 0x9
	flagAck           = 0x1
	flagEndHeaders    = 0x4
	flagPadded        = 0x8
	flagPriority      = 0x20
)

// emptySettings is a SETTINGS frame with no parameters: the server
// preface. A gRPC client sends its first request only after the server
// preface, so the splitter sends one; the HTTP server's own follows later.
var emptySettings = []byte{0, 0, 0, frameSettings, 0, 0, 0, 0, 0}

// Split divides the connections lis accepts between two listeners: gRPC
// ones (see above) and the rest. Closing either closes lis.
func Split(lis net.Listener) (grpcLis, httpLis net.Listener) {
	s := &splitter{lis: lis, done: make(chan struct{})}
	g := &splitListener{s: s, conns: make(chan net.Conn)}
	h := &splitListener{s: s, conns: make(chan net.Conn)}
	go s.run(g, h)
	return g, h
}

type splitter struct {
	lis  net.Listener
	once sync.Once
	done chan struct{}
	err  error // why Accept stopped; read after done is closed
}

func (s *splitter) close(err error) {
	s.once.Do(func() {
		s.err = err
		close(s.done)
		s.lis.Close()
	})
}

func (s *splitter) run(g, h *splitListener) {
	var backoff time.Duration
	for {
		c, err := s.lis.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				s.close(err)
				return
			}
			// Out of file descriptors, say: wait and accept again, as
			// net/http's server does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
			case <-s.done:
				return
			}
			continue
		}
		backoff = 0
		go func() {
			grpc, conn, err := sniff(c)
			if err != nil {
				c.Close()
				return
			}
			to := h
			if grpc {
				to = g
			}
			select {
			case to.conns <- conn:
			case <-s.done:
				c.Close()
			}
		}()
	}
}

// splitListener is one side of a Split.
type splitListener struct {
	s     *splitter
	conns chan net.Conn
}

func (l *splitListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.s.done:
		return nil, l.s.err
	}
}

func (l *splitListener) Close() error {
	l.s.close(net.ErrClosed)
	return nil
}

func (l *splitListener) Addr() net.Addr { return l.s.lis.Addr() }

// sniff reads the start of c and says whether it is gRPC; the connection it
// returns reads again what sniff read.
func sniff(c net.Conn) (grpc bool, _ net.Conn, _ error) {
	c.SetReadDeadline(time.Now().Add(sniffTimeout))
	defer c.SetReadDeadline(time.Time{})
	var seen []byte
	buf := make([]byte, len(h2Preface))
	for len(seen) < len(h2Preface) {
		n, err := c.Read(buf[:len(h2Preface)-len(seen)])
		seen = append(seen, buf[:n]...)
		if !strings.HasPrefix(h2Preface, string(seen)) {
			return false, &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(seen), c)}, nil
		}
		if err != nil {
			return false, nil, err
		}
	}
	// HTTP/2 without TLS: send the server preface and read frames up to
	// the first request's headers.
	if _, err := c.Write(emptySettings); err != nil {
		return false, nil, err
	}
	br := bufio.NewReader(c)
	var (
		block   []byte
		inBlock bool
		acked   bool // the client's ACK of emptySettings was read (and left out)
	)
	for range sniffMaxFrames {
		hdr, payload, err := readFrame(br)
		if err != nil {
			return false, nil, err
		}
		typ, flags := hdr[3], hdr[4]
		if typ == frameSettings && flags&flagAck != 0 && !acked {
			// Ours: gRPC ignores it, the HTTP server would take it for
			// an ACK of its own and fail the connection.
			acked = true
		} else {
			seen = append(append(seen, hdr...), payload...)
		}
		switch {
		case typ == frameHeaders && !inBlock:
			frag, err := headerFragment(flags, payload)
			if err != nil {
				return false, nil, err
			}
			block, inBlock = frag, true
		case typ == frameContinuation && inBlock:
			block = append(block, payload...)
		default:
			continue
		}
		if flags&flagEndHeaders == 0 {
			continue
		}
		ct, err := contentType(block)
		if err != nil {
			return false, nil, err
		}
		grpc = strings.HasPrefix(ct, "application/grpc")
		r := io.MultiReader(bytes.NewReader(seen), br)
		if !grpc && !acked {
			// Frames follow the preface.
			frames := &dropFirstAck{r: bufio.NewReader(io.MultiReader(bytes.NewReader(seen[len(h2Preface):]), br))}
			r = io.MultiReader(strings.NewReader(h2Preface), frames)
		}
		return grpc, &replayConn{Conn: c, r: r}, nil
	}
	return false, nil, errors.New("no request headers in the first frames")
}

func readFrame(r *bufio.Reader) (hdr, payload []byte, err error) {
	hdr = make([]byte, frameHeaderLen)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, nil, err
	}
	n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	if n > sniffMaxFrame {
		return nil, nil, errors.New("frame too large")
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, nil, err
	}
	return hdr, payload, nil
}

// headerFragment is a HEADERS frame's header block fragment: the payload
// without padding and priority.
func headerFragment(flags byte, p []byte) ([]byte, error) {
	pad := 0
	if flags&flagPadded != 0 {
		if len(p) < 1 {
			return nil, errors.New("bad HEADERS frame")
		}
		pad, p = int(p[0]), p[1:]
	}
	if flags&flagPriority != 0 {
		if len(p) < 5 {
			return nil, errors.New("bad HEADERS frame")
		}
		p = p[5:]
	}
	if pad > len(p) {
		return nil, errors.New("bad HEADERS frame")
	}
	return p[:len(p)-pad], nil
}

func contentType(block []byte) (string, error) {
	var ct string
	d := hpack.NewDecoder(4096, func(f hpack.HeaderField) {
		if f.Name == "content-type" {
			ct = f.Value
		}
	})
	d.SetMaxStringLength(sniffMaxFrame)
	if _, err := d.Write(block); err != nil {
		return "", err
	}
	return ct, d.Close()
}

// replayConn reads from r (what was sniffed, then the connection).
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// NetConn is the connection underneath (a *tls.Conn on a TLS port: its
// state is the gRPC peer's, internal/pki.HandshakenCreds).
func (c *replayConn) NetConn() net.Conn { return c.Conn }

// dropFirstAck passes HTTP/2 frames through but the first SETTINGS ACK.
type dropFirstAck struct {
	r       *bufio.Reader
	pending []byte
	done    bool
}

func (d *dropFirstAck) Read(p []byte) (int, error) {
	for !d.done && len(d.pending) == 0 {
		hdr := make([]byte, frameHeaderLen)
		if _, err := io.ReadFull(d.r, hdr); err != nil {
			return 0, err
		}
		n := binary.BigEndian.Uint32(append([]byte{0}, hdr[:3]...))
		if hdr[3] == frameSettings && hdr[4]&flagAck != 0 && n == 0 {
			d.done = true
			break
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(d.r, payload); err != nil {
			return 0, err
		}
		d.pending = append(hdr, payload...)
	}
	if len(d.pending) > 0 {
		n := copy(p, d.pending)
		d.pending = d.pending[n:]
		return n, nil
	}
	return d.r.Read(p)
}
