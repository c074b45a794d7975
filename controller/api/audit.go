package api

import (
	"context"
	"encoding/hex"
	"io"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/audit"
	"github.com/yunchi/yunchi/controller/auth"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// AuditTrail is this controller's audit trail file (controller/audit.File)
// and the replicated head it is checked against (the state store).
type AuditTrail interface {
	// Reader reads the records written so far.
	Reader() (io.ReadCloser, error)
	// WithHead calls fn with the chain's head while nothing is appended.
	WithHead(fn func(head *statev1.AuditHead))
}

// Audit page sizes.
const (
	defaultAuditPage = 100
	maxAuditPage     = 1000
)

func (s *Server) trail() (AuditTrail, error) {
	if s.Audit == nil {
		return nil, status.Error(codes.Unavailable, "this controller keeps no audit trail")
	}
	return s.Audit, nil
}

func checkTimes(since, until int64) error {
	if since < 0 || until < 0 {
		return invalid("since and until are unix nanoseconds: give 0 or more")
	}
	if until != 0 && until < since {
		return invalid("until (%d) is before since (%d): swap them", until, since)
	}
	return nil
}

func (s *Server) ListAudit(ctx context.Context, req *yunchiv1.ListAuditRequest) (*yunchiv1.ListAuditResponse, error) {
	t, err := s.trail()
	if err != nil {
		return nil, err
	}
	if err := checkTimes(req.SinceUnixNano, req.UntilUnixNano); err != nil {
		return nil, err
	}
	size, err := pageSize(req.PageSize, defaultAuditPage, maxAuditPage)
	if err != nil {
		return nil, err
	}
	var after uint64
	if req.PageToken != "" {
		if after, err = strconv.ParseUint(req.PageToken, 10, 64); err != nil {
			return nil, badToken(req.PageToken)
		}
	}
	out := &yunchiv1.ListAuditResponse{}
	err = scanTrail(ctx, t, func(l audit.Line) bool {
		if l.Seq <= after || !matches(l, req.SinceUnixNano, req.UntilUnixNano) {
			return true
		}
		if req.User != "" && l.Actor != req.User || req.Action != "" && !strings.EqualFold(l.Action, req.Action) ||
			req.Department != "" && l.Department != req.Department {
			return true
		}
		if len(out.Records) == size {
			out.NextPageToken = strconv.FormatUint(out.Records[size-1].Seq, 10)
			return false
		}
		out.Records = append(out.Records, auditToAPI(l))
		return true
	})
	return out, err
}

func matches(l audit.Line, since, until int64) bool {
	return (since == 0 || l.UnixNano >= since) && (until == 0 || l.UnixNano < until)
}

// scanTrail reads the trail's records in order until fn returns false or
// ctx is done.
func scanTrail(ctx context.Context, t AuditTrail, fn func(audit.Line) bool) error {
	rc, err := t.Reader()
	if err != nil {
		return status.Errorf(codes.Internal, "read the audit trail: %v", err)
	}
	defer rc.Close()
	err = audit.ScanLines(rc, func(_ int, l audit.Line, err error) (bool, error) {
		if err := ctx.Err(); err != nil {
			return false, status.FromContextError(err).Err()
		}
		if err != nil {
			return true, nil // not a record: verify names it
		}
		return fn(l), nil
	})
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Errorf(codes.Internal, "read the audit trail: %v", err)
	}
	return nil
}

func auditToAPI(l audit.Line) *yunchiv1.AuditRecord {
	return &yunchiv1.AuditRecord{Seq: l.Seq, PrevHash: l.Prev, Hash: l.Hash, UnixNano: l.UnixNano, Index: l.Index, Kind: l.Kind,
		EventUnixNano: l.EventUnixNano, RequestId: l.RequestID, Actor: l.Actor, Role: l.Role, Department: l.Department,
		Source: l.Source, TokenId: l.TokenID, Action: l.Action, Target: l.Target, Params: l.Params,
		Result: l.Result, Code: l.Code, Message: l.Message}
}

// AuditLineOf is an API record as a trail line (the CLI's export format).
func AuditLineOf(r *yunchiv1.AuditRecord) audit.Line {
	l := audit.Line{Seq: r.Seq, Prev: r.PrevHash, Hash: r.Hash, UnixNano: r.UnixNano, Index: r.Index, Kind: r.Kind,
		EventUnixNano: r.EventUnixNano, RequestID: r.RequestId, Actor: r.Actor, Role: r.Role, Department: r.Department,
		Source: r.Source, TokenID: r.TokenId, Action: r.Action, Target: r.Target, Params: r.Params,
		Result: r.Result, Code: r.Code, Message: r.Message}
	return audit.LineOf(l.Record()) // sets time the same way the file does
}

func (s *Server) VerifyAudit(ctx context.Context, req *yunchiv1.VerifyAuditRequest) (*yunchiv1.VerifyAuditResponse, error) {
	t, err := s.trail()
	if err != nil {
		return nil, err
	}
	var (
		rc   io.ReadCloser
		head *statev1.AuditHead
	)
	t.WithHead(func(h *statev1.AuditHead) {
		head = h
		rc, err = t.Reader()
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read the audit trail: %v", err)
	}
	defer rc.Close()
	rep, err := audit.Verify(rc, head)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read the audit trail: %v", err)
	}
	return VerifyToAPI(rep, s.self.ID), nil
}

// VerifyToAPI is a verification report in the API's terms (also the CLI's
// offline mode).
func VerifyToAPI(rep *audit.Report, id string) *yunchiv1.VerifyAuditResponse {
	out := &yunchiv1.VerifyAuditResponse{Ok: rep.OK(), Records: rep.Records, FirstSeq: rep.First, LastSeq: rep.Last,
		HeadSeq: rep.HeadSeq, HeadHash: hex.EncodeToString(rep.HeadHash), Controller: id}
	for _, p := range rep.Problems {
		d := p.Detail
		if p.Count > 1 {
			d += " (" + strconv.Itoa(p.Count) + " such problems in all)"
		}
		out.Problems = append(out.Problems, &yunchiv1.AuditProblem{Kind: p.Kind, Seq: p.Seq, Detail: d})
	}
	return out
}

func (s *Server) ExportAudit(req *yunchiv1.ExportAuditRequest, stream yunchiv1.AuditService_ExportAuditServer) error {
	t, err := s.trail()
	if err != nil {
		return err
	}
	if err := checkTimes(req.SinceUnixNano, req.UntilUnixNano); err != nil {
		return err
	}
	var serr error
	err = scanTrail(stream.Context(), t, func(l audit.Line) bool {
		if !matches(l, req.SinceUnixNano, req.UntilUnixNano) {
			return true
		}
		serr = stream.Send(auditToAPI(l))
		return serr == nil
	})
	if serr != nil {
		return serr
	}
	return err
}

func (s *Server) ArchiveAudit(ctx context.Context, req *yunchiv1.ArchiveAuditRequest) (*yunchiv1.ArchiveAuditResponse, error) {
	t, err := s.trail()
	if err != nil {
		return nil, err
	}
	if req.ThroughSeq == 0 {
		return nil, invalid("through_seq is required: the last record the archive holds")
	}
	hash, err := hex.DecodeString(req.ThroughHash)
	if err != nil || len(hash) != 32 {
		return nil, invalid("through_hash %q is not a SHA-256 in hex: give the hash of record %d as the export wrote it", req.ThroughHash, req.ThroughSeq)
	}
	sum, err := hex.DecodeString(req.ArchiveSha256)
	if err != nil || len(sum) != 32 {
		return nil, invalid("archive_sha256 %q is not a SHA-256 in hex", req.ArchiveSha256)
	}
	// The archive must end with the record this trail holds at through_seq.
	var found *audit.Line
	if err := scanTrail(ctx, t, func(l audit.Line) bool {
		if l.Seq == req.ThroughSeq {
			found = &l
			return false
		}
		return true
	}); err != nil {
		return nil, err
	}
	if found == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "record %d is not in the audit trail (archived already, or not written yet)", req.ThroughSeq)
	}
	if found.Hash != strings.ToLower(req.ThroughHash) {
		return nil, status.Errorf(codes.FailedPrecondition, "record %d of the trail has hash %s, not %s: the archive is not this trail's; export it again", req.ThroughSeq, found.Hash, req.ThroughHash)
	}
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_ArchiveAudit{ArchiveAudit: &statev1.ArchiveAudit{
		ThroughSeq: req.ThroughSeq, ThroughHash: hash, ArchiveSha256: sum, Count: req.Count,
		FirstUnixNano: req.FirstUnixNano, LastUnixNano: req.LastUnixNano,
	}}}); err != nil {
		return nil, err
	}
	out := &yunchiv1.ArchiveAuditResponse{}
	err = scanTrail(ctx, t, func(l audit.Line) bool {
		if l.Kind == "archived" {
			out.Checkpoint = auditToAPI(l)
		}
		return true
	})
	return out, err
}

// SubmitAudit records a follower's denied requests and failed logins
// (leader only: a follower's Recorder sends them here).
func (s *Server) SubmitAudit(ctx context.Context, req *yunchiv1.SubmitAuditRequest) (*yunchiv1.SubmitAuditResponse, error) {
	if !s.prop.IsLeader() {
		return nil, notProposed("this controller is not the leader: send audit records to the leader")
	}
	var denied []*statev1.AuditRecord
	for _, r := range req.Denied {
		denied = append(denied, AuditLineOf(r).Record())
	}
	var failures []*statev1.LoginFailure
	for _, f := range req.LoginFailures {
		failures = append(failures, &statev1.LoginFailure{User: f.User, TokenId: f.TokenId, Reason: f.Reason, Source: f.Source})
	}
	return &yunchiv1.SubmitAuditResponse{}, s.recordAudit(ctx, denied, failures)
}

// recordAudit proposes a batch on the leader.
func (s *Server) recordAudit(ctx context.Context, denied []*statev1.AuditRecord, failures []*statev1.LoginFailure) error {
	if len(denied) > 0 {
		if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_RecordAudit{RecordAudit: &statev1.RecordAudit{Records: denied}}}); err != nil {
			return err
		}
	}
	if len(failures) > 0 {
		if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_RecordLoginFailures{RecordLoginFailures: &statev1.RecordLoginFailures{Failures: failures}}}); err != nil {
			return err
		}
	}
	return nil
}

// SubmitAuditBatch is the audit.Recorder's Submit: recorded here on the
// leader, sent to the leader from a follower.
func (s *Server) SubmitAuditBatch(ctx context.Context, denied []*statev1.AuditRecord, failures []*statev1.LoginFailure) error {
	if s.prop.IsLeader() {
		return s.recordAudit(ctx, denied, failures)
	}
	if s.TLS == nil && s.Auth != nil && s.Auth.Escalate != nil {
		// Without certificates this follower cannot prove itself to the
		// leader, which would refuse the batch (and the Recorder retry it
		// for ever). Its refusals do not come here: the Authorizer leaves
		// them to the leader (auth.Authorizer.Escalate). What does comes
		// from nowhere else, so dropping it records nothing twice: writes
		// refused here before they reached the leader, and what this
		// controller queued while it led but could not record then.
		s.log.Warn("audit: records dropped: a follower without TLS cannot send them to the leader", "denied", len(denied), "failed_logins", len(failures))
		return nil
	}
	conn, err := s.fwd.leaderConn()
	if err != nil {
		return err
	}
	req := &yunchiv1.SubmitAuditRequest{}
	for _, r := range denied {
		req.Denied = append(req.Denied, auditToAPI(audit.LineOf(r)))
	}
	for _, f := range failures {
		req.LoginFailures = append(req.LoginFailures, &yunchiv1.LoginFailure{User: f.User, TokenId: f.TokenId, Reason: f.Reason, Source: f.Source})
	}
	octx := metadata.NewOutgoingContext(ctx, metadata.Pairs(auth.ForwardedKey, s.self.ID))
	_, err = yunchiv1.NewAuditServiceClient(conn).SubmitAudit(octx, req)
	return err
}
