package state

import (
	"encoding/hex"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// memSink keeps what Apply hands it.
type memSink struct {
	recs     []*statev1.AuditRecord
	archived uint64
}

func (m *memSink) Append(r *statev1.AuditRecord) {
	m.recs = append(m.recs, proto.Clone(r).(*statev1.AuditRecord))
}
func (m *memSink) Archived(seq uint64) { m.archived = seq }

// The canonical encoding is fixed: this golden hash may never change (a
// changed encoding needs a new AuditEncodingVersion), whatever protobuf
// library version encodes the log.
func TestAuditCanonicalEncodingIsFixed(t *testing.T) {
	r := &statev1.AuditRecord{Seq: 7, UnixNano: 1_700_000_000_000_000_000, Index: 42, Kind: "action", RequestId: "k1",
		Context: &statev1.AuditContext{Actor: "alice", Role: "ROLE_MEMBER", Department: "air", Source: "10.0.0.1:5000",
			TokenId: "t1", Action: "CreateVM", Target: "project/air/vm/web-1", Params: `{"name":"web-1"}`},
		Result: "ok"}
	enc := AuditCanonical(r)
	if enc[0] != AuditEncodingVersion {
		t.Fatalf("encoding starts with %d", enc[0])
	}
	// 1 version byte + 4 integers of 8 bytes + 13 strings with a 4-byte length.
	wantLen := 1 + 4*8 + 13*4 + len("action") + len("k1") + len("alice") + len("ROLE_MEMBER") + len("air") + len("10.0.0.1:5000") +
		len("t1") + len("CreateVM") + len("project/air/vm/web-1") + len(`{"name":"web-1"}`) + len("ok")
	if len(enc) != wantLen {
		t.Fatalf("encoding is %d bytes, want %d", len(enc), wantLen)
	}
	got := hex.EncodeToString(AuditHash(make([]byte, 32), r))
	const golden = "069f0026cd39dbd3694e033cc978a88c3a4e80bcd9889b8a874332f591787407"
	if got != golden {
		t.Fatalf("hash %s, want %s: the canonical encoding changed", got, golden)
	}
	// Moving a value between fields changes the hash (lengths delimit).
	r2 := proto.Clone(r).(*statev1.AuditRecord)
	r2.Context.Actor, r2.Context.Role = "aliceROLE_MEMBER", ""
	if hex.EncodeToString(AuditHash(make([]byte, 32), r2)) == got {
		t.Fatal("moving bytes between fields kept the hash")
	}
	// The chain fields themselves are not encoded: the hash is over prev
	// and the content.
	r3 := proto.Clone(r).(*statev1.AuditRecord)
	r3.Hash, r3.PrevHash = []byte{1}, []byte{2}
	if string(AuditCanonical(r3)) != string(enc) {
		t.Fatal("hash fields are in the encoding")
	}
}

func v6(cmd *statev1.Command, now int64) *statev1.Command {
	cmd.Version, cmd.UnixNano = CommandVersion, now
	return cmd
}

// Apply records one chained record per audited command, applied or
// rejected, none for heartbeat bookkeeping or commands of older versions;
// a follower applying the same log gets the same records.
func TestApplyRecordsAuditTrail(t *testing.T) {
	run := func() (*Store, *memSink) {
		s, sink := New(), &memSink{}
		s.SetAuditSink(sink)
		ac := &statev1.AuditContext{Actor: "ops", Role: "ROLE_SYSADMIN", Action: "UpdateHost", Target: "host/h1", Params: `{"id":"h1"}`}
		cmds := []*statev1.Command{
			v6(&statev1.Command{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{Id: "h1", Center: "a1",
				Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 8 << 30, DiskBytes: 100 << 30}}}},
				Audit: &statev1.AuditContext{Actor: "h1", Role: "ROLE_HOST", Action: "RegisterHost", Target: "host/h1"}}, 10),
			v6(&statev1.Command{Cmd: &statev1.Command_RecordHeartbeats{RecordHeartbeats: &statev1.RecordHeartbeats{}}}, 11),                                              // not audited
			v6(&statev1.Command{Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: "h1", State: statev1.HostState_HOST_STATE_DOWN}}}, 12),    // system
			v6(&statev1.Command{Cmd: &statev1.Command_UpdateHost{UpdateHost: &statev1.UpdateHost{HostId: "nope"}}, Audit: ac}, 13),                                       // rejected
			{Version: 5, UnixNano: 14, Cmd: &statev1.Command_SetHostState{SetHostState: &statev1.SetHostState{HostId: "h1", State: statev1.HostState_HOST_STATE_READY}}}, // old version
			v6(&statev1.Command{Cmd: &statev1.Command_RecordAudit{RecordAudit: &statev1.RecordAudit{Records: []*statev1.AuditRecord{
				{Kind: "denied", Result: "denied", Code: "PermissionDenied", EventUnixNano: 9, Context: &statev1.AuditContext{Actor: "eve", Action: "ListAudit"}},
				{Kind: "dropped", Result: "dropped", Message: "3 audit records were dropped"},
			}}}}, 15),
			v6(&statev1.Command{Cmd: &statev1.Command_RecordLoginFailures{RecordLoginFailures: &statev1.RecordLoginFailures{Failures: []*statev1.LoginFailure{
				{User: "bob", TokenId: "tk", Reason: "bad secret", Source: "10.1.1.1:1"}}}}}, 16),
		}
		for i, c := range cmds {
			s.Apply(uint64(i+1), c)
		}
		return s, sink
	}
	s, sink := run()
	want := []struct{ kind, actor, action, result string }{
		{"action", "h1", "RegisterHost", "ok"},
		{"system", "system", "SetHostState", "ok"},
		{"action", "ops", "UpdateHost", "error"},
		{"denied", "eve", "ListAudit", "denied"},
		{"dropped", "", "", "dropped"},
		{"login_failed", "bob", "Login", "failed"},
	}
	if len(sink.recs) != len(want) {
		t.Fatalf("%d records, want %d: %v", len(sink.recs), len(want), sink.recs)
	}
	var prev []byte
	for i, w := range want {
		r := sink.recs[i]
		c := r.GetContext()
		if r.Kind != w.kind || c.GetActor() != w.actor || c.GetAction() != w.action || r.Result != w.result {
			t.Errorf("record %d = %s/%s/%s/%s, want %v", i+1, r.Kind, c.GetActor(), c.GetAction(), r.Result, w)
		}
		if r.Seq != uint64(i+1) || string(r.PrevHash) != string(prev) || !AuditHashOK(r) {
			t.Errorf("record %d: seq %d, chain broken", i+1, r.Seq)
		}
		prev = r.Hash
	}
	if r := sink.recs[2]; r.Code != "not_found" || r.Message == "" {
		t.Errorf("rejected command recorded as %q %q", r.Code, r.Message)
	}
	if r := sink.recs[1]; r.UnixNano != 12 || r.Index != 3 || r.GetContext().GetTarget() != "host/h1" {
		t.Errorf("system record: time %d index %d target %q", r.UnixNano, r.Index, r.GetContext().GetTarget())
	}
	if h := s.AuditHead(); h.Seq != 6 || string(h.Hash) != string(prev) {
		t.Fatalf("head %d, want 6 with the last hash", h.Seq)
	}
	// Determinism: another replica gets the same chain.
	_, sink2 := run()
	for i := range sink.recs {
		if !proto.Equal(sink.recs[i], sink2.recs[i]) {
			t.Fatalf("replicas differ at record %d", i+1)
		}
	}
	// The head travels in snapshots.
	r := New()
	if err := r.Restore(s.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(r.AuditHead(), s.AuditHead()) {
		t.Fatal("snapshot lost the audit head")
	}
}

// A repeated request id is recorded again (the request was made twice),
// saying it was answered with the first outcome.
func TestAuditRecordsRepeatedRequest(t *testing.T) {
	s, sink := New(), &memSink{}
	s.SetAuditSink(sink)
	cmd := func() *statev1.Command {
		return v6(&statev1.Command{RequestId: "k", RequestHash: []byte{1}, Audit: &statev1.AuditContext{Actor: "a", Action: "RemoveMember"},
			Cmd: &statev1.Command_RemoveMember{RemoveMember: &statev1.RemoveMember{Id: "x"}}}, 1)
	}
	s.Apply(1, cmd())
	s.Apply(2, cmd())
	if len(sink.recs) != 2 || !strings.HasPrefix(sink.recs[1].Message, "repeated request id") || sink.recs[1].Result != "error" || sink.recs[1].Code != "not_found" {
		t.Fatalf("records %v", sink.recs)
	}
}

// Archiving moves the head's archived mark, tells the sink, and is
// recorded by a checkpoint; bad ranges change nothing.
func TestArchiveAudit(t *testing.T) {
	s, sink := New(), &memSink{}
	s.SetAuditSink(sink)
	for i := range 5 {
		s.Apply(uint64(i+1), v6(&statev1.Command{Cmd: &statev1.Command_RecordAudit{RecordAudit: &statev1.RecordAudit{Records: []*statev1.AuditRecord{{Kind: "denied"}}}}}, int64(i)))
	}
	arch := func(through uint64) error {
		_, err := s.Apply(s.Index()+1, v6(&statev1.Command{Audit: &statev1.AuditContext{Actor: "aud", Action: "ArchiveAudit"},
			Cmd: &statev1.Command_ArchiveAudit{ArchiveAudit: &statev1.ArchiveAudit{ThroughSeq: through, ThroughHash: sink.recs[min(through, 5)-1].Hash}}}, 9))
		return err
	}
	if err := arch(5); err == nil {
		t.Fatal("archived the last record")
	}
	if err := arch(3); err != nil {
		t.Fatal(err)
	}
	if err := arch(2); err == nil {
		t.Fatal("archived twice")
	}
	h := s.AuditHead()
	if h.ArchivedThrough != 3 || string(h.ArchivedHash) != string(sink.recs[2].Hash) || sink.archived != 3 {
		t.Fatalf("head %v, sink archived %d", h, sink.archived)
	}
	var kinds []string
	for _, r := range sink.recs {
		kinds = append(kinds, r.Kind)
	}
	if got := kinds[6]; got != "archived" {
		t.Fatalf("kinds %v", kinds)
	}
}
