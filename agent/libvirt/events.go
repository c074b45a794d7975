package libvirt

import (
	"context"
	"fmt"
	"sync"
	"time"

	lv "libvirt.org/go/libvirt"

	"github.com/yunchi/yunchi/agent"
)

// libvirt delivers events (and stream data, see console.go) through an
// event loop the application provides. The default implementation is
// registered once per process and run on a goroutine of its own for the
// life of the process: every Driver of the process (tests and `yunchid dev`
// open many) shares it. Connections that want events must be opened after
// it is registered (libvirt watches a connection's socket from the moment
// it is opened), so Events and OpenConsole open their own connections to
// real hosts rather than use the Driver's, which may be older.
var (
	eventLoopOnce sync.Once
	eventLoopErr  error
)

// eventLoopRetry paces EventRunDefaultImpl after it fails, which it does
// only when the loop itself is broken: better slow than a busy loop.
const eventLoopRetry = 100 * time.Millisecond

// startEventLoop registers libvirt's default event loop and starts running
// it, the first time it is called in the process.
func startEventLoop() error {
	eventLoopOnce.Do(func() {
		if err := lv.EventRegisterDefaultImpl(); err != nil {
			eventLoopErr = wrap("register the libvirt event loop", err)
			return
		}
		go func() {
			for {
				if err := lv.EventRunDefaultImpl(); err != nil {
					time.Sleep(eventLoopRetry)
				}
			}
		}()
	})
	return eventLoopErr
}

// Keepalive of the connection Events opens: a libvirtd that stops
// answering (hung, not only gone) is given up after about 5 s * 3.
const (
	keepaliveInterval = 5
	keepaliveCount    = 3
)

// rawEvent is what the libvirt callback copies out of its arguments, which
// are only valid during the call.
type rawEvent struct {
	uuid   string
	event  lv.DomainEventType
	detail int
}

// watcher is one Events call: libvirt's callback queues raw events (it
// runs on the event loop goroutine, which must never block: every
// connection of the process is served by it), and run resolves them to VM
// ids and hands them on.
type watcher struct {
	d    *Driver
	conn *lv.Connect
	own  bool // conn is the watcher's (else it is the Driver's, shared through a hub)
	cbID int  // own connection: the callback registered on it
	out  chan agent.DomainEvent

	mu      sync.Mutex
	queue   []rawEvent
	ready   chan struct{} // 1-buffered: queue has something
	lost    chan struct{} // closed when the connection closes
	lostOne sync.Once

	// vms maps domain UUIDs to VM ids, for the managed domains seen; an
	// undefined domain can no longer be asked for its metadata.
	vms map[string]string
}

// Events implements agent.Driver. Events of a real host come through a
// connection of their own (with keepalive), which is closed when ctx ends
// or libvirtd goes away. The test driver's come through the Driver's own
// connection, which holds that simulated host; there libvirt takes one
// registration per connection, which the watches share (hub).
//
// Events are resolved to VM ids after the fact: a domain undefined before
// its earlier events are looked at, and never seen by the watch before,
// has those events dropped (it is gone: there is nothing to reconcile).
func (d *Driver) Events(ctx context.Context) (<-chan agent.DomainEvent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := startEventLoop(); err != nil {
		return nil, err
	}
	w := &watcher{
		d: d, own: d.reconnect,
		out:   make(chan agent.DomainEvent, 64),
		ready: make(chan struct{}, 1),
		lost:  make(chan struct{}),
		vms:   map[string]string{},
	}
	if w.own {
		if err := w.openOwn(); err != nil {
			return nil, err
		}
	} else if err := d.joinHub(w); err != nil {
		return nil, err
	}
	// Learn the managed domains there are now, so that an undefine that
	// comes first can still be told apart.
	w.learnAll()
	go w.run(ctx)
	return w.out, nil
}

// openOwn opens the watcher's connection and registers on it.
func (w *watcher) openOwn() error {
	conn, err := lv.NewConnect(w.d.uri)
	if err != nil {
		return wrap("connect to "+w.d.uri+" for events", err)
	}
	w.conn = conn
	// Without keepalive a libvirtd that hangs would never be noticed;
	// drivers that do not support it (no remote side) need none.
	if err := conn.SetKeepAlive(keepaliveInterval, keepaliveCount); err != nil && !isCode(err, lv.ERR_NO_SUPPORT) {
		w.release()
		return wrap("keepalive on the events connection", err)
	}
	if err := conn.RegisterCloseCallback(func(*lv.Connect, lv.ConnectCloseReason) { w.connLost() }); err != nil {
		w.release()
		return wrap("watch the events connection", err)
	}
	id, err := conn.DomainEventLifecycleRegister(nil, func(_ *lv.Connect, dom *lv.Domain, ev *lv.DomainEventLifecycle) {
		if raw, ok := rawOf(dom, ev); ok {
			w.push(raw)
		}
	})
	if err != nil {
		w.release()
		if isCode(err, lv.ERR_NO_SUPPORT) {
			return agent.ErrNoEvents
		}
		return wrap("register for domain events", err)
	}
	w.cbID = id
	return nil
}

// rawOf copies what is needed out of a callback's arguments.
func rawOf(dom *lv.Domain, ev *lv.DomainEventLifecycle) (rawEvent, bool) {
	uuid, err := dom.GetUUIDString() // local: no call to libvirtd
	if err != nil {
		return rawEvent{}, false
	}
	return rawEvent{uuid: uuid, event: ev.Event, detail: ev.Detail}, true
}

// push queues an event; it never blocks.
func (w *watcher) push(raw rawEvent) {
	w.mu.Lock()
	w.queue = append(w.queue, raw)
	w.mu.Unlock()
	select {
	case w.ready <- struct{}{}:
	default:
	}
}

func (w *watcher) connLost() { w.lostOne.Do(func() { close(w.lost) }) }

func (w *watcher) take() []rawEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.queue
	w.queue = nil
	return q
}

// run hands events on until ctx ends or the connection is lost; the
// registration is undone before the channel closes, so a caller that
// watches again after the close is not refused as a duplicate.
func (w *watcher) run(ctx context.Context) {
	defer close(w.out)
	defer w.release()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.lost:
			return
		case <-w.ready:
		}
		for _, raw := range w.take() {
			ev, ok := w.resolve(raw)
			if !ok {
				continue
			}
			select {
			case w.out <- ev:
			case <-ctx.Done():
				return
			case <-w.lost:
				return
			}
		}
	}
}

// release undoes what the watch registered: on its own connection the
// callbacks (which fail on a lost connection: nothing to undo then) and
// the connection itself; on the Driver's, its place in the hub.
func (w *watcher) release() {
	if !w.own {
		w.d.leaveHub(w)
		return
	}
	if w.conn == nil {
		return
	}
	if w.cbID > 0 {
		w.conn.DomainEventDeregister(w.cbID)
	}
	w.conn.UnregisterCloseCallback()
	w.conn.Close()
	w.conn = nil
}

// A hub is the one lifecycle registration on a Driver's own connection
// (the test driver's), handing each event to every watch of that Driver.
type hub struct {
	conn     *lv.Connect
	cbID     int
	watchers map[*watcher]bool
}

var (
	hubsMu sync.Mutex
	hubs   = map[*Driver]*hub{}
)

func (d *Driver) joinHub(w *watcher) error {
	hubsMu.Lock()
	defer hubsMu.Unlock()
	h := hubs[d]
	if h == nil {
		conn, err := d.connect()
		if err != nil {
			return err
		}
		h = &hub{conn: conn, watchers: map[*watcher]bool{}}
		id, err := conn.DomainEventLifecycleRegister(nil, func(_ *lv.Connect, dom *lv.Domain, ev *lv.DomainEventLifecycle) {
			raw, ok := rawOf(dom, ev)
			if !ok {
				return
			}
			hubsMu.Lock()
			defer hubsMu.Unlock()
			for w := range h.watchers {
				w.push(raw)
			}
		})
		if err != nil {
			if isCode(err, lv.ERR_NO_SUPPORT) {
				return agent.ErrNoEvents
			}
			return wrap("register for domain events", err)
		}
		h.cbID = id
		hubs[d] = h
	}
	h.watchers[w] = true
	w.conn = h.conn
	return nil
}

// leaveHub removes w; the last watch out deregisters, unless Close has
// closed the connection (its callbacks went with it).
func (d *Driver) leaveHub(w *watcher) {
	hubsMu.Lock()
	defer hubsMu.Unlock()
	h := hubs[d]
	if h == nil || !h.watchers[w] {
		return
	}
	delete(h.watchers, w)
	if len(h.watchers) > 0 {
		return
	}
	delete(hubs, d)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == h.conn {
		h.conn.DomainEventDeregister(h.cbID)
	}
}

// lookup runs fn on the watch's connection. The Driver's connection is
// used under its lock, and not once Close has closed it.
func (w *watcher) lookup(fn func(*lv.Connect)) {
	if w.own {
		fn(w.conn)
		return
	}
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	if w.d.conn == w.conn {
		fn(w.conn)
	}
}

// learnAll records the VM ids of the managed domains defined now.
func (w *watcher) learnAll() {
	w.lookup(func(conn *lv.Connect) {
		doms, err := conn.ListAllDomains(0)
		if err != nil {
			return // events of domains not learnt here are resolved one by one
		}
		for i := range doms {
			if m, ok, err := readMetadata(&doms[i]); err == nil && ok {
				if uuid, err := doms[i].GetUUIDString(); err == nil {
					w.vms[uuid] = m.ID
				}
			}
			doms[i].Free()
		}
	})
}

// resolve turns a raw event into a DomainEvent; ok is false for a domain
// that is not Yunchi's (or gone before it could be told).
func (w *watcher) resolve(raw rawEvent) (agent.DomainEvent, bool) {
	id, known := w.vms[raw.uuid]
	if raw.event != lv.DOMAIN_EVENT_UNDEFINED {
		// Asked each time: metadata is what makes a domain Yunchi's, and
		// it can be changed with virsh.
		w.lookup(func(conn *lv.Connect) {
			dom, err := conn.LookupDomainByUUIDString(raw.uuid)
			if err != nil {
				return // gone meanwhile: what was learnt before stands
			}
			m, ok, merr := readMetadata(dom)
			dom.Free()
			switch {
			case merr == nil && ok:
				id, known = m.ID, true
				w.vms[raw.uuid] = id
			case merr == nil:
				delete(w.vms, raw.uuid)
				known = false
			}
		})
	} else {
		delete(w.vms, raw.uuid)
	}
	if !known {
		return agent.DomainEvent{}, false
	}
	state, detail := eventState(raw.event, raw.detail)
	return agent.DomainEvent{VMID: id, State: state, Detail: detail}, true
}

// eventState is the state a domain is in after a lifecycle event, and the
// event in libvirt's words: "stopped: crashed", "started: booted".
func eventState(ev lv.DomainEventType, detail int) (agent.DomainState, string) {
	words := eventName(ev)
	if d := eventDetails[ev][detail]; d != "" {
		words += ": " + d
	}
	switch ev {
	case lv.DOMAIN_EVENT_STARTED, lv.DOMAIN_EVENT_RESUMED:
		return agent.StateRunning, words
	case lv.DOMAIN_EVENT_STOPPED, lv.DOMAIN_EVENT_UNDEFINED:
		return agent.StateShutOff, words
	default:
		// defined (a definition changes no power state), suspended,
		// pmsuspended, crashed (a guest panic, domain kept), shutting down
		return agent.StateOther, words
	}
}

func eventName(ev lv.DomainEventType) string {
	switch ev {
	case lv.DOMAIN_EVENT_DEFINED:
		return "defined"
	case lv.DOMAIN_EVENT_UNDEFINED:
		return "undefined"
	case lv.DOMAIN_EVENT_STARTED:
		return "started"
	case lv.DOMAIN_EVENT_SUSPENDED:
		return "suspended"
	case lv.DOMAIN_EVENT_RESUMED:
		return "resumed"
	case lv.DOMAIN_EVENT_STOPPED:
		return "stopped"
	case lv.DOMAIN_EVENT_SHUTDOWN:
		return "shutdown"
	case lv.DOMAIN_EVENT_PMSUSPENDED:
		return "pmsuspended"
	case lv.DOMAIN_EVENT_CRASHED:
		return "crashed"
	}
	return fmt.Sprintf("event %d", int(ev))
}

// eventDetails names the details libvirt gives with each event; a detail
// not named here is left out.
var eventDetails = map[lv.DomainEventType]map[int]string{
	lv.DOMAIN_EVENT_DEFINED: {
		int(lv.DOMAIN_EVENT_DEFINED_ADDED): "added", int(lv.DOMAIN_EVENT_DEFINED_UPDATED): "updated",
		int(lv.DOMAIN_EVENT_DEFINED_RENAMED): "renamed", int(lv.DOMAIN_EVENT_DEFINED_FROM_SNAPSHOT): "from snapshot",
	},
	lv.DOMAIN_EVENT_UNDEFINED: {
		int(lv.DOMAIN_EVENT_UNDEFINED_REMOVED): "removed", int(lv.DOMAIN_EVENT_UNDEFINED_RENAMED): "renamed",
	},
	lv.DOMAIN_EVENT_STARTED: {
		int(lv.DOMAIN_EVENT_STARTED_BOOTED): "booted", int(lv.DOMAIN_EVENT_STARTED_MIGRATED): "migrated",
		int(lv.DOMAIN_EVENT_STARTED_RESTORED): "restored", int(lv.DOMAIN_EVENT_STARTED_FROM_SNAPSHOT): "from snapshot",
		int(lv.DOMAIN_EVENT_STARTED_WAKEUP): "woken up",
	},
	lv.DOMAIN_EVENT_SUSPENDED: {
		int(lv.DOMAIN_EVENT_SUSPENDED_PAUSED): "paused", int(lv.DOMAIN_EVENT_SUSPENDED_MIGRATED): "migrated",
		int(lv.DOMAIN_EVENT_SUSPENDED_IOERROR): "I/O error", int(lv.DOMAIN_EVENT_SUSPENDED_WATCHDOG): "watchdog",
		int(lv.DOMAIN_EVENT_SUSPENDED_RESTORED): "restored", int(lv.DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT): "from snapshot",
		int(lv.DOMAIN_EVENT_SUSPENDED_API_ERROR): "API error", int(lv.DOMAIN_EVENT_SUSPENDED_POSTCOPY): "post-copy",
		int(lv.DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED): "post-copy failed",
	},
	lv.DOMAIN_EVENT_RESUMED: {
		int(lv.DOMAIN_EVENT_RESUMED_UNPAUSED): "unpaused", int(lv.DOMAIN_EVENT_RESUMED_MIGRATED): "migrated",
		int(lv.DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT): "from snapshot", int(lv.DOMAIN_EVENT_RESUMED_POSTCOPY): "post-copy",
	},
	lv.DOMAIN_EVENT_STOPPED: {
		int(lv.DOMAIN_EVENT_STOPPED_SHUTDOWN): "shutdown", int(lv.DOMAIN_EVENT_STOPPED_DESTROYED): "destroyed",
		int(lv.DOMAIN_EVENT_STOPPED_CRASHED): "crashed", int(lv.DOMAIN_EVENT_STOPPED_MIGRATED): "migrated",
		int(lv.DOMAIN_EVENT_STOPPED_SAVED): "saved", int(lv.DOMAIN_EVENT_STOPPED_FAILED): "failed",
		int(lv.DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT): "from snapshot",
	},
	lv.DOMAIN_EVENT_SHUTDOWN: {
		int(lv.DOMAIN_EVENT_SHUTDOWN_FINISHED): "finished", int(lv.DOMAIN_EVENT_SHUTDOWN_GUEST): "by the guest",
		int(lv.DOMAIN_EVENT_SHUTDOWN_HOST): "by the host",
	},
	lv.DOMAIN_EVENT_PMSUSPENDED: {
		int(lv.DOMAIN_EVENT_PMSUSPENDED_MEMORY): "memory", int(lv.DOMAIN_EVENT_PMSUSPENDED_DISK): "disk",
	},
	lv.DOMAIN_EVENT_CRASHED: {
		int(lv.DOMAIN_EVENT_CRASHED_PANICKED): "panicked", int(lv.DOMAIN_EVENT_CRASHED_CRASHLOADED): "crash kernel loaded",
	},
}

// mapStateReason is mapState with, for a shut-off domain, why libvirt
// says it is off: "shut off: crashed", "shut off: destroyed". The agent
// tells an unexpected stop by it when no event said so first.
func mapStateReason(s lv.DomainState, reason int) (agent.DomainState, string) {
	state, detail := mapState(s)
	if s == lv.DOMAIN_SHUTOFF {
		if why := shutoffReasons[lv.DomainShutoffReason(reason)]; why != "" {
			detail += ": " + why
		}
	}
	return state, detail
}

// shutoffReasons names libvirt's reasons for a shut-off domain; unknown
// (a domain never started) is left out.
var shutoffReasons = map[lv.DomainShutoffReason]string{
	lv.DOMAIN_SHUTOFF_SHUTDOWN:      "shutdown",
	lv.DOMAIN_SHUTOFF_DESTROYED:     "destroyed",
	lv.DOMAIN_SHUTOFF_CRASHED:       "crashed",
	lv.DOMAIN_SHUTOFF_MIGRATED:      "migrated",
	lv.DOMAIN_SHUTOFF_SAVED:         "saved",
	lv.DOMAIN_SHUTOFF_FAILED:        "failed to start",
	lv.DOMAIN_SHUTOFF_FROM_SNAPSHOT: "from snapshot",
	lv.DOMAIN_SHUTOFF_DAEMON:        "killed by libvirtd",
}
