// Package raftnode runs hashicorp/raft for the controller: durable log and
// stable stores, file snapshots, the TCP (or, in tests, in-memory)
// transport, bootstrap, and the FSM that feeds log entries to state.Store.
package raftnode

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Result is what FSM.Apply returns for every command entry, as a pointer:
// the proposer takes the value out (see Node.Apply), since raft's leader
// keeps each entry's future, response and all, in its log cache for
// thousands of entries after the proposer has its answer.
type Result struct {
	Value state.Result
	Err   error
	// Unanswered: applied while this node did not lead, so Value is
	// empty (see FSM.Answers).
	Unanswered bool
}

// FSM adapts state.Store to raft.FSM. Apply must be deterministic: it only
// decodes the entry and hands it to Store.Apply.
type FSM struct {
	Store *state.Store
	// Audit is the audit trail's file (the Store's AuditSink), which
	// snapshots carry after the state; nil: snapshots carry none.
	Audit AuditFile
	// Answers says whether this node leads: only then can a proposer be
	// waiting for Apply's answer. When it says no, Apply does not copy
	// what a command made into an answer, and marks the Result
	// Unanswered. Nil: always answer.
	Answers func() bool
}

// AuditFile is the audit trail's file store (controller/audit.File) as
// snapshots see it.
type AuditFile interface {
	// SnapshotReader reads the trail as Apply left it so far (called on
	// the FSM goroutine, between two applies).
	SnapshotReader() (io.ReadCloser, error)
	// Restore replaces the trail with a snapshot's records, ending at head.
	Restore(r io.Reader, head *statev1.AuditHead) error
}

// snapshotMagic starts a snapshot of format 4 on: then a uvarint length,
// the state (statev1.Snapshot), and the audit trail's file (JSON lines)
// to the end. Older snapshots are the state message alone; an encoded
// Snapshot never starts with this byte (field 11, wire type 1, is not a
// field of it).
const snapshotMagic = "YCSNAP4\n"

var _ raft.FSM = (*FSM)(nil)

// Apply decodes one log entry (a statev1.Command) and applies it.
func (f *FSM) Apply(l *raft.Log) any {
	var cmd statev1.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		return &Result{Err: fmt.Errorf("log entry %d is not a command: %w", l.Index, err)}
	}
	if f.Answers != nil && !f.Answers() {
		return &Result{Err: f.Store.ApplyUnanswered(l.Index, &cmd), Unanswered: true}
	}
	v, err := f.Store.Apply(l.Index, &cmd)
	return &Result{Value: v, Err: err}
}

// Snapshot takes a view of the state (pointers to records the store no
// longer changes) and a reader of the audit trail as far as that view;
// sorting, encoding and I/O happen in Persist, while Apply goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	s := &fsmSnapshot{view: f.Store.View()}
	if f.Audit != nil {
		rc, err := f.Audit.SnapshotReader()
		if err != nil {
			return nil, fmt.Errorf("snapshot the audit trail: %w", err)
		}
		s.audit = rc
	}
	return s, nil
}

// Restore replaces the state (and the audit trail) with a persisted
// snapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	snap, trail, err := ReadSnapshot(rc)
	if err != nil {
		return err
	}
	if f.Audit != nil {
		if trail == nil {
			trail = strings.NewReader("") // a snapshot from before the trail
		}
		if err := f.Audit.Restore(trail, snap.GetAuditHead()); err != nil {
			return err
		}
	}
	return f.Store.Restore(snap)
}

// ReadSnapshot decodes a snapshot stream: the state, and a reader of the
// audit trail that follows it (nil in snapshots before format 4).
func ReadSnapshot(r io.Reader) (*statev1.Snapshot, io.Reader, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	var snap statev1.Snapshot
	if head, err := br.Peek(len(snapshotMagic)); err != nil || string(head) != snapshotMagic {
		b, err := io.ReadAll(br)
		if err != nil {
			return nil, nil, fmt.Errorf("read snapshot: %w", err)
		}
		if err := proto.Unmarshal(b, &snap); err != nil {
			return nil, nil, fmt.Errorf("decode snapshot: %w", err)
		}
		return &snap, nil, nil
	}
	br.Discard(len(snapshotMagic))
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, nil, fmt.Errorf("read snapshot: %w", err)
	}
	if n > 1<<34 {
		return nil, nil, fmt.Errorf("snapshot state of %d bytes is not believable: the snapshot is damaged", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		return nil, nil, fmt.Errorf("read snapshot: %w", err)
	}
	if err := proto.Unmarshal(b, &snap); err != nil {
		return nil, nil, fmt.Errorf("decode snapshot: %w", err)
	}
	return &snap, br, nil
}

type fsmSnapshot struct {
	view  *state.View
	audit io.ReadCloser
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	b, err := s.view.Encode()
	if err == nil {
		hdr := binary.AppendUvarint([]byte(snapshotMagic), uint64(len(b)))
		if _, err = sink.Write(hdr); err == nil {
			_, err = sink.Write(b)
		}
	}
	if err == nil && s.audit != nil {
		_, err = io.Copy(sink, s.audit)
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {
	if s.audit != nil {
		s.audit.Close()
	}
}
