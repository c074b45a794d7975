package libvirt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	lv "libvirt.org/go/libvirt"

	"github.com/yunchi/yunchi/agent"
)

// consoleWritePoll is how often a write retries while libvirt's outgoing
// queue is full; keystrokes rarely see it.
const consoleWritePoll = 10 * time.Millisecond

// consoleWake are the stream events a waiting Read is woken by.
const consoleWake = lv.STREAM_EVENT_READABLE | lv.STREAM_EVENT_ERROR | lv.STREAM_EVENT_HANGUP

// OpenConsole implements agent.Driver: the domain's first serial console
// (or its <console>), through a non-blocking libvirt stream driven by the
// event loop, as `virsh console` does.
//
// An attach takes the console over (DOMAIN_CONSOLE_FORCE, like `virsh
// console --force`): a session left behind by a relay or agent that died
// must not lock admins out, and libvirt allows one session per console, so
// the session attached before ends (its Read returns an error or io.EOF).
//
// For real hosts each console has a connection of its own, opened after
// the event loop is registered so that libvirt watches it; Close closes
// it. The test driver has no consoles (libvirt answers "not supported").
func (d *Driver) OpenConsole(ctx context.Context, vmID string) (io.ReadWriteCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := startEventLoop(); err != nil {
		return nil, err
	}
	c := &console{own: d.reconnect, ready: make(chan struct{}, 1), closed: make(chan struct{})}
	if c.own {
		conn, err := lv.NewConnect(d.uri)
		if err != nil {
			return nil, wrap("connect to "+d.uri+" for a console", err)
		}
		c.conn = conn
	} else {
		conn, err := d.connect()
		if err != nil {
			return nil, err
		}
		c.conn = conn
	}
	if err := c.open(vmID); err != nil {
		c.release()
		return nil, err
	}
	return c, nil
}

// console is an attached console stream.
type console struct {
	conn *lv.Connect
	own  bool // conn is the console's to close

	// mu serialises calls on the stream (all non-blocking) with Close,
	// which frees it.
	mu     sync.Mutex
	st     *lv.Stream
	cb     bool // an event callback is registered on st
	armed  bool // it is asked for READABLE
	ended  bool // the stream reported EOF or an error: Read and Write say so again
	ready  chan struct{}
	closed chan struct{}
	once   sync.Once
}

var _ io.ReadWriteCloser = (*console)(nil)

func (c *console) open(vmID string) error {
	dom, err := c.conn.LookupDomainByUUIDString(domainUUID(vmID))
	if err != nil {
		if isCode(err, lv.ERR_NO_DOMAIN) {
			return fmt.Errorf("%s: %w", domainName(vmID), agent.ErrDomainNotFound)
		}
		return wrap("look up "+domainName(vmID), err)
	}
	defer dom.Free()
	if active, err := dom.IsActive(); err == nil && !active {
		return fmt.Errorf("console of %s: the domain is not running", domainName(vmID))
	}
	st, err := c.conn.NewStream(lv.STREAM_NONBLOCK)
	if err != nil {
		return wrap("console stream for "+domainName(vmID), err)
	}
	c.st = st
	if err := dom.OpenConsole("", st, lv.DOMAIN_CONSOLE_FORCE); err != nil {
		return wrap("open console of "+domainName(vmID), err)
	}
	// Interest in READABLE is one-shot: libvirt's remote stream fires
	// its callback again and again while data waits unread (the event
	// loop would spin while nobody reads), so the callback drops it and
	// Read asks again before it waits.
	c.mu.Lock() // the callback may come before armed is set
	defer c.mu.Unlock()
	err = st.EventAddCallback(consoleWake, func(s *lv.Stream, _ lv.StreamEventType) {
		c.mu.Lock()
		if c.st != nil && c.armed {
			s.EventUpdateCallback(consoleWake &^ lv.STREAM_EVENT_READABLE)
			c.armed = false
		}
		c.mu.Unlock()
		select {
		case c.ready <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return wrap("watch console of "+domainName(vmID), err)
	}
	c.armed = true
	c.cb = true
	return nil
}

// Read returns what the guest wrote, waiting for it; io.EOF when the
// console closed (the domain stopped, or another session took over).
func (c *console) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := c.call(func() (int, error) {
			n, err := c.st.Recv(p)
			if n == -2 && err == nil && !c.armed {
				// Nothing yet: ask to be woken before waiting. Data that
				// came meanwhile makes libvirt call back at once.
				if err := c.st.EventUpdateCallback(consoleWake); err != nil {
					return 0, err
				}
				c.armed = true
			}
			return n, err
		})
		if err != nil || n >= 0 {
			return max(n, 0), err
		}
		select {
		case <-c.ready:
		case <-c.closed:
			return 0, net.ErrClosed
		case <-time.After(consoleErrorPoll):
			// Recv again: see consoleErrorPoll.
		}
	}
}

// consoleErrorPoll is how often a waiting Read calls Recv again without
// being woken. libvirt's remote streams call back for READABLE only on
// data or end of stream, not on an error: a stream the daemon aborted (as
// when another session takes the console over) can report its error only
// to the next Recv, and a Read waiting for READABLE alone waited forever
// (TestRealHostConsole, now and then under load).
const consoleErrorPoll = time.Second

// Write sends p to the guest, all of it or an error.
func (c *console) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := c.call(func() (int, error) { return c.st.Send(p[done:]) })
		if err != nil {
			return done, err
		}
		if n >= 0 {
			done += n
			continue
		}
		// -2: libvirt's queue is full.
		select {
		case <-time.After(consoleWritePoll):
		case <-c.closed:
			return done, net.ErrClosed
		}
	}
	return done, nil
}

// call runs one stream call under mu, unless the console is closed.
func (c *console) call(fn func() (int, error)) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	if c.ended {
		return 0, io.EOF
	}
	n, err := fn()
	if err != nil {
		c.ended = true
		if !errors.Is(err, io.EOF) {
			err = wrap("console", err)
		}
	}
	return n, err
}

// Close detaches: a Read or Write waiting returns net.ErrClosed.
func (c *console) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.release()
	})
	return nil
}

// release ends the stream (aborted, as virsh console does; an error for
// one that already ended changes nothing) and, for a connection of its
// own, closes it.
//
// It does not wait on libvirtd for more than releaseWait: an abort of a
// stream another session took over can go unanswered (seen with libvirt
// 9.0 on a loaded host), and a Close that never returns would hold the
// agent's console relay forever. The abort then finishes in the
// background, which frees the stream and the connection after it.
func (c *console) release() {
	st, cb, conn := c.st, c.cb, c.conn
	if !c.own {
		conn = nil
	}
	c.st, c.conn = nil, nil
	if st == nil && conn == nil {
		return
	}
	done := make(chan struct{})
	end, wait := endStream, releaseWait
	go func() {
		defer close(done)
		if st != nil {
			end(st, cb)
		}
		if conn != nil {
			conn.Close()
		}
	}()
	select {
	case <-done:
	case <-time.After(wait):
		slog.Warn("libvirt did not answer the end of a console stream: left to finish in the background", "waited", wait)
	}
}

// releaseWait bounds how long Close waits for libvirtd to end a console
// stream.
var releaseWait = 5 * time.Second

// endStream aborts and frees a console stream (a variable: tests stand
// in a libvirtd that does not answer).
var endStream = func(st *lv.Stream, cb bool) {
	if cb {
		st.EventRemoveCallback()
	}
	st.Abort()
	st.Free()
}
