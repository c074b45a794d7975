package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// Request ids (idempotency keys) are remembered for RequestTTL of command
// time after their first apply, and at most MaxRequests at once (the
// oldest go first): whichever bound comes first. Every controller must use
// the same bounds, since they decide what Apply answers.
const (
	RequestTTL  = 10 * time.Minute
	MaxRequests = 100_000
)

// requestTable is the FSM's memory of recent request ids, in apply order.
// Callers hold Store.mu.
//
// A remembered outcome is kept encoded: up to MaxRequests of them, each
// maybe a copy of every VM a batch made, would otherwise be as many live
// records as the state's own for the collector to walk. Only a retry (or
// a snapshot) decodes one.
type requestTable struct {
	byID  map[string]*request
	order []*request // oldest first, from head
	head  int
	// clock is the latest command time seen: leaders' clocks differ, so
	// expiry never goes backwards when an older clock leads.
	clock int64
	ttl   int64
	max   int
}

// request is one remembered outcome: what lookup and expiry read, and the
// statev1.RequestRecord encoded.
type request struct {
	id       string
	hash     []byte
	unixNano int64
	enc      []byte
}

// decode returns the record (fresh, the caller's to keep).
func (r *request) decode() *statev1.RequestRecord {
	var rec statev1.RequestRecord
	if err := proto.Unmarshal(r.enc, &rec); err != nil {
		// Encoded by add from a record in memory: cannot fail.
		panic(fmt.Sprintf("state: remembered request %q does not decode: %v", r.id, err))
	}
	return &rec
}

func newRequestTable() requestTable {
	return requestTable{byID: map[string]*request{}, ttl: int64(RequestTTL), max: MaxRequests}
}

func (t *requestTable) len() int { return len(t.order) - t.head }

// advance moves the clock to now and forgets what expired or is over count.
func (t *requestTable) advance(now int64) {
	t.clock = max(t.clock, now)
	for t.len() > 0 {
		r := t.order[t.head]
		if t.len() <= t.max && r.unixNano >= t.clock-t.ttl {
			break
		}
		t.forgetOldest()
	}
	if t.head > 1024 && t.head > len(t.order)/2 {
		t.order = append([]*request(nil), t.order[t.head:]...)
		t.head = 0
	}
}

// add remembers r (encoded: later changes to r or what it points to do not
// reach the table).
func (t *requestTable) add(r *statev1.RequestRecord) {
	enc, err := proto.Marshal(r)
	if err != nil {
		// Only a string that is not UTF-8 fails, and every controller
		// fails alike on the same record: the id is not remembered, on
		// any of them.
		return
	}
	e := &request{id: r.Id, hash: r.Hash, unixNano: r.UnixNano, enc: enc}
	t.byID[e.id] = e
	t.order = append(t.order, e)
	for t.len() > t.max {
		t.forgetOldest()
	}
}

// forgetOldest drops the oldest entry (and its id, unless a newer entry
// holds it).
func (t *requestTable) forgetOldest() {
	r := t.order[t.head]
	if t.byID[r.id] == r {
		delete(t.byID, r.id)
	}
	t.order[t.head] = nil
	t.head++
}

// record builds the record of a command's outcome. It shares res's
// records: the table keeps it encoded (add), not the record itself.
func record(cmd *statev1.Command, index uint64, res Result, err error) *statev1.RequestRecord {
	r := &statev1.RequestRecord{Id: cmd.RequestId, Hash: cmd.RequestHash, UnixNano: cmd.UnixNano, Index: index}
	if err != nil {
		r.ErrorKind, r.Error = int32(KindOf(err)), err.Error()
		var e *Error
		if errors.As(err, &e) {
			r.ErrorSubject = e.Subject
		}
		return r
	}
	r.Vms = res.VMs
	// Version 3 wrote vm_list for PlaceVMs only; it is kept for a reader
	// of that version (a controller not yet upgraded replays this snapshot).
	_, r.VmList = cmd.GetCmd().(*statev1.Command_PlaceVms)
	r.Host, r.Ratio, r.Group, r.Member = res.Host, res.Ratio, res.Group, res.Member
	r.Department, r.Project, r.User, r.Token = res.Department, res.Project, res.User, res.Token
	r.Image, r.Volume, r.Center, r.Policy = res.Image, res.Volume, res.Center, res.Policy
	r.RestorePoint, r.DrRun, r.DrillSchedule = res.RestorePoint, res.DRRun, res.DrillSchedule
	return r
}

// Outcome turns a record back into what Apply returned the first time:
// the same Result (clones), or the same *Error.
func Outcome(r *statev1.RequestRecord) (Result, error) {
	if r.ErrorKind != 0 || r.Error != "" {
		return Result{}, &Error{Kind: Kind(r.ErrorKind), Msg: r.Error, Subject: r.ErrorSubject}
	}
	var res Result
	for _, vm := range r.Vms {
		res.VMs = append(res.VMs, proto.Clone(vm).(*statev1.VMRecord))
	}
	if r.Host != nil {
		res.Host = proto.Clone(r.Host).(*statev1.HostRecord)
	}
	if r.Ratio != nil {
		res.Ratio = proto.Clone(r.Ratio).(*statev1.RatioRecord)
	}
	if r.Group != nil {
		res.Group = proto.Clone(r.Group).(*statev1.PlacementGroupRecord)
	}
	if r.Member != nil {
		res.Member = proto.Clone(r.Member).(*statev1.MemberRecord)
	}
	if r.Department != nil {
		res.Department = proto.Clone(r.Department).(*statev1.DepartmentRecord)
	}
	if r.Project != nil {
		res.Project = proto.Clone(r.Project).(*statev1.ProjectRecord)
	}
	if r.User != nil {
		res.User = proto.Clone(r.User).(*statev1.UserRecord)
	}
	if r.Token != nil {
		res.Token = proto.Clone(r.Token).(*statev1.TokenRecord)
	}
	if r.Image != nil {
		res.Image = proto.Clone(r.Image).(*statev1.ImageRecord)
	}
	if r.Volume != nil {
		res.Volume = proto.Clone(r.Volume).(*statev1.VolumeRecord)
	}
	if r.Center != nil {
		res.Center = proto.Clone(r.Center).(*statev1.CenterRecord)
	}
	if r.Policy != nil {
		res.Policy = proto.Clone(r.Policy).(*statev1.PolicyRecord)
	}
	if r.RestorePoint != nil {
		res.RestorePoint = proto.Clone(r.RestorePoint).(*statev1.RestorePointRecord)
	}
	if r.DrRun != nil {
		res.DRRun = proto.Clone(r.DrRun).(*statev1.DRRunRecord)
	}
	if r.DrillSchedule != nil {
		res.DrillSchedule = proto.Clone(r.DrillSchedule).(*statev1.DrillScheduleRecord)
	}
	return res, nil
}

// replay answers a command whose request id is remembered: the first
// outcome, or a refusal when the id came with a different request. ok is
// false when the id is unknown (or the command carries none).
func (t *requestTable) replay(cmd *statev1.Command) (res Result, ok bool, err error) {
	if cmd.GetRequestId() == "" {
		return Result{}, false, nil
	}
	r, found := t.byID[cmd.RequestId]
	if !found {
		return Result{}, false, nil
	}
	if !bytes.Equal(r.hash, cmd.RequestHash) {
		return Result{}, true, ReusedRequestID(cmd.RequestId)
	}
	res, err = Outcome(r.decode())
	return res, true, err
}

// ReusedRequestID is the refusal of a request id that came with a
// different request before.
func ReusedRequestID(id string) error {
	return errorf(KindInvalid, "idempotency key %q was already used for a different request: send a new key with every new request", id)
}

// remembers says whether an outcome is final for its request id: a
// conflict is not (the leader decides again under the same id).
func remembers(err error) bool { return KindOf(err) != KindConflict }

// Request returns the remembered outcome of request id, if Apply still
// holds it (a clone).
func (s *Store) Request(id string) (*statev1.RequestRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.requests.byID[id]
	if !ok {
		return nil, false
	}
	return r.decode(), true
}

// RequestCount is how many request ids Apply remembers now.
func (s *Store) RequestCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.requests.len()
}

// setRequestBounds changes the bounds (tests only: every controller of a
// cluster must use the same).
func (s *Store) setRequestBounds(ttl time.Duration, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests.ttl, s.requests.max = int64(ttl), n
}

// requestKey carries an API request's id and hash to the proposer.
type requestKey struct{}

// RequestInfo identifies the API request a command carries out.
type RequestInfo struct {
	ID   string
	Hash []byte
}

// WithRequest returns ctx carrying the request id and hash that commands
// proposed under it are stamped with.
func WithRequest(ctx context.Context, id string, hash []byte) context.Context {
	return context.WithValue(ctx, requestKey{}, RequestInfo{ID: id, Hash: hash})
}

// RequestFrom returns the request id and hash ctx carries, if any.
func RequestFrom(ctx context.Context) (RequestInfo, bool) {
	ri, ok := ctx.Value(requestKey{}).(RequestInfo)
	return ri, ok && ri.ID != ""
}

// decodeRequests returns the view's remembered outcomes as records (fresh).
func (v *View) decodeRequests() []*statev1.RequestRecord {
	if len(v.requests) == 0 {
		return nil
	}
	out := make([]*statev1.RequestRecord, len(v.requests))
	for i, r := range v.requests {
		out[i] = r.decode()
	}
	return out
}

// snapshotRequests is Snapshot's field number of requests.
const snapshotRequests = 8

// Encode returns the view as an encoded statev1.Snapshot: the bytes of
// proto.Marshal(v.Snapshot()) up to field order, without decoding the
// remembered outcomes. They are already encoded, and a repeated message
// field may follow the others on the wire, each element as its own
// length-delimited field.
func (v *View) Encode() ([]byte, error) {
	snap := v.snapshot(false)
	b, err := proto.Marshal(snap)
	if err != nil {
		return nil, err
	}
	for _, r := range v.requests {
		b = protowire.AppendTag(b, snapshotRequests, protowire.BytesType)
		b = protowire.AppendBytes(b, r.enc)
	}
	return b, nil
}
