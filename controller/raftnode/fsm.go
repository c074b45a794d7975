// Package raftnode runs hashicorp/raft for the controller: durable log and
// stable stores, file snapshots, the TCP (or, in tests, in-memory)
// transport, bootstrap, and the FSM that feeds log entries to state.Store.
package raftnode

import (
	"fmt"
	"io"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Result is what FSM.Apply returns for every command entry.
type Result struct {
	Value state.Result
	Err   error
}

// FSM adapts state.Store to raft.FSM. Apply must be deterministic: it only
// decodes the entry and hands it to Store.Apply.
type FSM struct {
	Store *state.Store
}

var _ raft.FSM = (*FSM)(nil)

// Apply decodes one log entry (a statev1.Command) and applies it.
func (f *FSM) Apply(l *raft.Log) any {
	var cmd statev1.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		return Result{Err: fmt.Errorf("log entry %d is not a command: %w", l.Index, err)}
	}
	v, err := f.Store.Apply(l.Index, &cmd)
	return Result{Value: v, Err: err}
}

// Snapshot takes a view of the state (pointers to records the store no
// longer changes); sorting, encoding and I/O happen in Persist, while
// Apply goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{view: f.Store.View()}, nil
}

// Restore replaces the state with a persisted snapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	var snap statev1.Snapshot
	if err := proto.Unmarshal(b, &snap); err != nil {
		return fmt.Errorf("decode snapshot: %w", err)
	}
	return f.Store.Restore(&snap)
}

type fsmSnapshot struct{ view *state.View }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	b, err := proto.Marshal(s.view.Snapshot())
	if err == nil {
		_, err = sink.Write(b)
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
