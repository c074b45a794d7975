package state

import (
	"bytes"
	"context"
	"errors"
	"time"

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
type requestTable struct {
	byID  map[string]*statev1.RequestRecord
	order []*statev1.RequestRecord // oldest first, from head
	head  int
	// clock is the latest command time seen: leaders' clocks differ, so
	// expiry never goes backwards when an older clock leads.
	clock int64
	ttl   int64
	max   int
}

func newRequestTable() requestTable {
	return requestTable{byID: map[string]*statev1.RequestRecord{}, ttl: int64(RequestTTL), max: MaxRequests}
}

func (t *requestTable) len() int { return len(t.order) - t.head }

// advance moves the clock to now and forgets what expired or is over count.
func (t *requestTable) advance(now int64) {
	t.clock = max(t.clock, now)
	for t.len() > 0 {
		r := t.order[t.head]
		if t.len() <= t.max && r.UnixNano >= t.clock-t.ttl {
			break
		}
		delete(t.byID, r.Id)
		t.order[t.head] = nil
		t.head++
	}
	if t.head > 1024 && t.head > len(t.order)/2 {
		t.order = append([]*statev1.RequestRecord(nil), t.order[t.head:]...)
		t.head = 0
	}
}

func (t *requestTable) add(r *statev1.RequestRecord) {
	t.byID[r.Id] = r
	t.order = append(t.order, r)
	for t.len() > t.max {
		delete(t.byID, t.order[t.head].Id)
		t.order[t.head] = nil
		t.head++
	}
}

// record builds the record of a command's outcome.
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
	for _, vm := range res.VMs {
		r.Vms = append(r.Vms, proto.Clone(vm).(*statev1.VMRecord))
	}
	// Version 3 wrote vm_list for PlaceVMs only; it is kept for a reader
	// of that version (a controller not yet upgraded replays this snapshot).
	_, r.VmList = cmd.GetCmd().(*statev1.Command_PlaceVms)
	if res.Host != nil {
		r.Host = proto.Clone(res.Host).(*statev1.HostRecord)
	}
	if res.Ratio != nil {
		r.Ratio = proto.Clone(res.Ratio).(*statev1.RatioRecord)
	}
	if res.Group != nil {
		r.Group = proto.Clone(res.Group).(*statev1.PlacementGroupRecord)
	}
	if res.Member != nil {
		r.Member = proto.Clone(res.Member).(*statev1.MemberRecord)
	}
	if res.Department != nil {
		r.Department = proto.Clone(res.Department).(*statev1.DepartmentRecord)
	}
	if res.Project != nil {
		r.Project = proto.Clone(res.Project).(*statev1.ProjectRecord)
	}
	if res.User != nil {
		r.User = proto.Clone(res.User).(*statev1.UserRecord)
	}
	if res.Token != nil {
		r.Token = proto.Clone(res.Token).(*statev1.TokenRecord)
	}
	if res.Image != nil {
		r.Image = proto.Clone(res.Image).(*statev1.ImageRecord)
	}
	if res.Volume != nil {
		r.Volume = proto.Clone(res.Volume).(*statev1.VolumeRecord)
	}
	if res.Center != nil {
		r.Center = proto.Clone(res.Center).(*statev1.CenterRecord)
	}
	if res.Policy != nil {
		r.Policy = proto.Clone(res.Policy).(*statev1.PolicyRecord)
	}
	if res.RestorePoint != nil {
		r.RestorePoint = proto.Clone(res.RestorePoint).(*statev1.RestorePointRecord)
	}
	if res.DRRun != nil {
		r.DrRun = proto.Clone(res.DRRun).(*statev1.DRRunRecord)
	}
	if res.DrillSchedule != nil {
		r.DrillSchedule = proto.Clone(res.DrillSchedule).(*statev1.DrillScheduleRecord)
	}
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
	if !bytes.Equal(r.Hash, cmd.RequestHash) {
		return Result{}, true, ReusedRequestID(cmd.RequestId)
	}
	res, err = Outcome(r)
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
	return proto.Clone(r).(*statev1.RequestRecord), true
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
