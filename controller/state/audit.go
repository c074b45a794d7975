package state

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// The audit trail (audit.proto). Apply produces the records, one per
// audited command, from the command alone (its audit context and its
// outcome), chains them and hands them to the AuditSink (the controller's
// file store, controller/audit); the state keeps only the chain's head.
//
// Which commands are audited (version 6 on):
//   - every command carrying an audit context (an API request that reached
//     the log): one "action" record, applied or rejected;
//   - RecordAudit: its records as given (denied requests, "dropped");
//   - RecordLoginFailures: one "login_failed" record per failure;
//   - ArchiveAudit: one "archived" checkpoint;
//   - the leader's own SetHostState (liveness: a host marked down or back
//     up), UpsertMember and RemoveMember: a "system" record, actor
//     "system";
//   - never RecordHeartbeats (a note every few seconds that says nothing
//     of anyone's actions) nor an agent report without a context.

// AuditSink stores the records Apply produces, in seq order. Apply calls
// it under the store's lock and cannot fail on its account: a sink that
// cannot write says so itself (verify then names the gap).
type AuditSink interface {
	Append(rec *statev1.AuditRecord)
	// Archived drops the records through seq (written out by an auditor).
	Archived(throughSeq uint64)
}

// auditV6 is the first command version whose commands are audited.
const auditV6 = 6

// AuditEncodingVersion is the first byte of every record's canonical
// encoding: a change of encoding gets a new number, and Hash reads it.
const AuditEncodingVersion = 1

// AuditCanonical is the canonical encoding of a record without its hash
// and prev hash, version 1: the byte 1, then these fields in this order,
// every integer as 8 bytes big-endian and every string as its length (4
// bytes big-endian) and its UTF-8 bytes: seq, unix_nano, index, kind,
// event_unix_nano, request_id, actor, role, department, source, token_id,
// action, target, params, result, code, message. It is defined here, not
// by a protobuf encoder, so that no library version can change it.
func AuditCanonical(r *statev1.AuditRecord) []byte {
	c := r.GetContext()
	return appendAuditCanonical(make([]byte, 0, 160+len(c.GetParams())+len(r.GetMessage())), r)
}

// appendAuditCanonical appends AuditCanonical(r) to b.
func appendAuditCanonical(b []byte, r *statev1.AuditRecord) []byte {
	c := r.GetContext()
	b = append(b, AuditEncodingVersion)
	u := func(v uint64) { b = binary.BigEndian.AppendUint64(b, v) }
	s := func(v string) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	u(r.GetSeq())
	u(uint64(r.GetUnixNano()))
	u(r.GetIndex())
	s(r.GetKind())
	u(uint64(r.GetEventUnixNano()))
	s(r.GetRequestId())
	s(c.GetActor())
	s(c.GetRole())
	s(c.GetDepartment())
	s(c.GetSource())
	s(c.GetTokenId())
	s(c.GetAction())
	s(c.GetTarget())
	s(c.GetParams())
	s(r.GetResult())
	s(r.GetCode())
	s(r.GetMessage())
	return b
}

// AuditHash is SHA-256(prev || AuditCanonical(r)).
func AuditHash(prev []byte, r *statev1.AuditRecord) []byte {
	var scratch []byte
	return auditHash(&scratch, prev, r)
}

// auditHash is AuditHash, built in *scratch (kept for the next call:
// Apply hashes a record for every command).
func auditHash(scratch *[]byte, prev []byte, r *statev1.AuditRecord) []byte {
	b := append((*scratch)[:0], prev...)
	b = appendAuditCanonical(b, r)
	*scratch = b
	sum := sha256.Sum256(b)
	return sum[:]
}

// AuditHashOK says whether r's hash is its content's.
func AuditHashOK(r *statev1.AuditRecord) bool {
	return bytes.Equal(r.GetHash(), AuditHash(r.GetPrevHash(), r))
}

// auditChain is the replicated head and where records go.
type auditChain struct {
	head *statev1.AuditHead
	sink AuditSink
	// scratch is where records are laid out to be hashed.
	scratch []byte
}

// SetAuditSink makes Apply hand its records to sink (nil: none). Set it
// before the first Apply or Restore.
func (s *Store) SetAuditSink(sink AuditSink) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.audit.sink = sink
}

// AuditHead is the chain's head as of the last applied index (a clone).
func (s *Store) AuditHead() *statev1.AuditHead {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return proto.Clone(s.audit.head).(*statev1.AuditHead)
}

// appendAudit chains rec onto the head and hands it to the sink; callers
// hold mu. The head is replaced, never changed (a View may share it).
func (s *Store) appendAudit(index uint64, now int64, rec *statev1.AuditRecord) {
	h := s.audit.head
	rec.Seq = h.GetSeq() + 1
	rec.PrevHash = h.GetHash()
	rec.UnixNano, rec.Index = now, index
	rec.Hash = auditHash(&s.audit.scratch, rec.PrevHash, rec)
	s.audit.head = &statev1.AuditHead{Seq: rec.Seq, Hash: rec.Hash, ArchivedThrough: h.GetArchivedThrough(), ArchivedHash: h.GetArchivedHash()}
	if s.audit.sink != nil {
		s.audit.sink.Append(rec)
	}
}

// auditCommand records what cmd did (see the list above); callers hold mu.
func (s *Store) auditCommand(index uint64, cmd *statev1.Command, replayed bool, err error) {
	if cmd.GetVersion() < auditV6 {
		return
	}
	now := cmd.GetUnixNano()
	switch c := cmd.GetCmd().(type) {
	case *statev1.Command_RecordAudit:
		if err != nil {
			break
		}
		for _, r := range c.RecordAudit.GetRecords() {
			rec := &statev1.AuditRecord{Kind: r.GetKind(), EventUnixNano: r.GetEventUnixNano(), RequestId: r.GetRequestId(),
				Context: r.GetContext(), Result: r.GetResult(), Code: r.GetCode(), Message: r.GetMessage()}
			s.appendAudit(index, now, rec)
		}
		return
	case *statev1.Command_RecordLoginFailures:
		for _, f := range c.RecordLoginFailures.GetFailures() {
			s.appendAudit(index, now, &statev1.AuditRecord{Kind: "login_failed", Result: "failed", Message: f.GetReason(),
				Context: &statev1.AuditContext{Actor: f.GetUser(), TokenId: f.GetTokenId(), Source: f.GetSource(), Action: "Login"}})
		}
		return
	}
	ctx := cmd.GetAudit()
	kind := "action"
	if ctx == nil {
		action, target, params := "", "", ""
		switch c := cmd.GetCmd().(type) {
		case *statev1.Command_SetHostState:
			action, target, params = "SetHostState", "host/"+c.SetHostState.GetHostId(), fmt.Sprintf(`{"state":%q}`, c.SetHostState.GetState().String())
		case *statev1.Command_UpsertMember:
			m := c.UpsertMember.GetMember()
			action, target, params = "UpsertMember", "member/"+m.GetId(), jsonOf(map[string]string{"raft_address": m.GetRaftAddress(), "api_address": m.GetApiAddress(), "center": m.GetCenter()})
		case *statev1.Command_RemoveMember:
			action, target = "RemoveMember", "member/"+c.RemoveMember.GetId()
		case *statev1.Command_DeleteRestorePoints:
			// Retention: the leader's, by policy. Backups going is worth a
			// record; starting and finishing them (every minute per VM) is
			// not (the points themselves say who made them and when).
			action, target, params = "DeleteRestorePoints", "backups", jsonOf(map[string][]string{"points": c.DeleteRestorePoints.GetPointIds()})
		default:
			return
		}
		kind = "system"
		ctx = &statev1.AuditContext{Actor: "system", Action: action, Target: target, Params: params}
	}
	if _, ok := cmd.GetCmd().(*statev1.Command_ArchiveAudit); ok && err == nil {
		kind = "archived"
	}
	rec := &statev1.AuditRecord{Kind: kind, RequestId: cmd.GetRequestId(), Context: ctx, Result: "ok"}
	if err != nil {
		rec.Result, rec.Code, rec.Message = "error", KindOf(err).String(), err.Error()
	}
	if replayed {
		rec.Message = strings.TrimSpace("repeated request id, answered with the first outcome. " + rec.Message)
	}
	s.appendAudit(index, now, rec)
}

// applyArchiveAudit moves the archived mark; the checkpoint record is
// written by auditCommand after it. Apply cannot read the store, so the
// leader checks through_hash against its own store before proposing.
func (s *Store) applyArchiveAudit(c *statev1.ArchiveAudit) error {
	h := s.audit.head
	if c.GetThroughSeq() <= h.GetArchivedThrough() {
		return errorf(KindInvalid, "audit records through %d are already archived", h.GetArchivedThrough())
	}
	if c.GetThroughSeq() >= h.GetSeq() {
		return errorf(KindInvalid, "cannot archive through record %d: the trail ends at %d and its last record is never archived", c.GetThroughSeq(), h.GetSeq())
	}
	s.audit.head = &statev1.AuditHead{Seq: h.GetSeq(), Hash: h.GetHash(), ArchivedThrough: c.GetThroughSeq(), ArchivedHash: c.GetThroughHash()}
	if s.audit.sink != nil {
		s.audit.sink.Archived(c.GetThroughSeq())
	}
	return nil
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// String names a Kind in audit records.
func (k Kind) String() string {
	switch k {
	case KindInvalid:
		return "invalid"
	case KindNotFound:
		return "not_found"
	case KindAlreadyExists:
		return "already_exists"
	case KindConflict:
		return "conflict"
	case KindFailedPrecondition:
		return "failed_precondition"
	case KindQuotaExceeded:
		return "quota_exceeded"
	case 0:
		return "internal"
	}
	return fmt.Sprintf("kind_%d", int(k))
}

// auditKey carries an API request's audit context to the proposer.
type auditKey struct{}

type auditValue struct {
	ac     *statev1.AuditContext
	once   sync.Once
	params func() string
	// handled: a command was proposed under this context, or the request
	// was forwarded to the leader, which records it.
	handled atomic.Bool
}

// MarkAuditHandled notes that the request of ctx reached the log (or was
// forwarded to the leader): its record comes from there.
func MarkAuditHandled(ctx context.Context) {
	if v, _ := ctx.Value(auditKey{}).(*auditValue); v != nil {
		v.handled.Store(true)
	}
}

// AuditHandled says whether MarkAuditHandled was called for ctx.
func AuditHandled(ctx context.Context) bool {
	v, _ := ctx.Value(auditKey{}).(*auditValue)
	return v != nil && v.handled.Load()
}

// WithAudit returns ctx carrying the audit context that commands proposed
// under it are stamped with (controller/audit.WithContext builds it).
func WithAudit(ctx context.Context, ac *statev1.AuditContext) context.Context {
	return WithAuditParams(ctx, ac, nil)
}

// WithAuditParams is WithAudit with the params computed by params (when
// not nil) the first time they are needed: a request that proposes
// nothing (most heartbeats) never encodes them.
func WithAuditParams(ctx context.Context, ac *statev1.AuditContext, params func() string) context.Context {
	return context.WithValue(ctx, auditKey{}, &auditValue{ac: ac, params: params})
}

// AuditFrom returns the audit context ctx carries (nil: none). Treat it as
// read-only.
func AuditFrom(ctx context.Context) *statev1.AuditContext {
	v, _ := ctx.Value(auditKey{}).(*auditValue)
	if v == nil {
		return nil
	}
	if v.params != nil {
		v.once.Do(func() { v.ac.Params = v.params() })
	}
	return v.ac
}

// WithAuditHead calls fn with the chain's head while no command applies,
// so that the sink holds exactly the records up to it meanwhile (a
// verification reads the sink inside fn).
func (s *Store) WithAuditHead(fn func(head *statev1.AuditHead)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fn(s.audit.head)
}
