package main

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// recorder is the dev cluster's log handler: it notes when the agent
// logged that it defined and started each VM's domain (the agent logs
// "defined domain" and "started domain" with the VM id in "vm" right after
// the libvirt call returns), which splits a VM's create-to-running into
// the API, the agent's part and the status report; records at Warn and
// above go on to next.
type recorder struct {
	next  slog.Handler
	attrs []slog.Attr // from WithAttrs
	st    *recorderState
}

type recorderState struct {
	mu sync.Mutex
	at map[string]map[string]time.Time // message -> VM id -> when
	// downs counts the controllers' "marked down" warnings about a host
	// (its heartbeats came late).
	downs int
}

// markedDown is what a controller logs when a host's heartbeats stop.
const markedDown = "host missed its heartbeats: marked down"

// hostDowns says how many times a controller marked a host down.
func (r *recorder) hostDowns() int {
	r.st.mu.Lock()
	defer r.st.mu.Unlock()
	return r.st.downs
}

// recorded are the agent's messages the recorder keeps.
var recorded = map[string]bool{"defined domain": true, "started domain": true}

func newRecorder(next slog.Handler) *recorder {
	return &recorder{next: next, st: &recorderState{at: map[string]map[string]time.Time{}}}
}

// when says when msg was logged for VM id (the first time).
func (r *recorder) when(msg, id string) (time.Time, bool) {
	r.st.mu.Lock()
	defer r.st.mu.Unlock()
	t, ok := r.st.at[msg][id]
	return t, ok
}

func (r *recorder) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo
}

func (r *recorder) Handle(ctx context.Context, rec slog.Record) error {
	if recorded[rec.Message] {
		id := ""
		for _, a := range r.attrs {
			if a.Key == "vm" {
				id = a.Value.String()
			}
		}
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "vm" {
				id = a.Value.String()
			}
			return true
		})
		if id != "" {
			r.st.mu.Lock()
			m := r.st.at[rec.Message]
			if m == nil {
				m = map[string]time.Time{}
				r.st.at[rec.Message] = m
			}
			if _, seen := m[id]; !seen {
				m[id] = rec.Time
			}
			r.st.mu.Unlock()
		}
	}
	if rec.Message == markedDown {
		r.st.mu.Lock()
		r.st.downs++
		r.st.mu.Unlock()
	}
	if rec.Level >= slog.LevelWarn && r.next.Enabled(ctx, rec.Level) {
		return r.next.Handle(ctx, rec)
	}
	return nil
}

func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &recorder{next: r.next.WithAttrs(as), attrs: append(append([]slog.Attr(nil), r.attrs...), as...), st: r.st}
}

func (r *recorder) WithGroup(name string) slog.Handler {
	// The agent's attributes are not grouped; a group's "vm" would be
	// another key, so the recorder's own list stays as it is.
	return &recorder{next: r.next.WithGroup(name), attrs: r.attrs, st: r.st}
}
