package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// trail applies n audited commands to a store whose sink is a File in dir.
func trail(t *testing.T, dir string, n int) (*state.Store, *File) {
	t.Helper()
	f, err := OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := state.New()
	s.SetAuditSink(f)
	applyN(s, 1, n)
	return s, f
}

func applyN(s *state.Store, from, n int) {
	for i := from; i < from+n; i++ {
		s.Apply(uint64(i), &statev1.Command{Version: state.CommandVersion, UnixNano: int64(i) * 1e9,
			Cmd: &statev1.Command_RecordAudit{RecordAudit: &statev1.RecordAudit{Records: []*statev1.AuditRecord{
				{Kind: "denied", Result: "denied", Context: &statev1.AuditContext{Actor: "u" + string(rune('a'+i%3)), Action: "CreateVM"}}}}}})
	}
}

func lines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

func write(t *testing.T, path string, ls [][]byte) {
	t.Helper()
	var b []byte
	for _, l := range ls {
		b = append(b, bytes.TrimSuffix(l, []byte("\n"))...)
		b = append(b, '\n')
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func verifyPath(t *testing.T, path string, head *statev1.AuditHead) *Report {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := Verify(f, head)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func kinds(rep *Report) map[string]uint64 {
	m := map[string]uint64{}
	for _, p := range rep.Problems {
		m[p.Kind] = p.Seq
	}
	return m
}

// Verify names each kind of tampering with the seq it concerns, and
// nothing on an intact trail.
func TestVerifyNamesTampering(t *testing.T) {
	dir := t.TempDir()
	s, f := trail(t, dir, 20)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileName)
	head := s.AuditHead()
	if rep := verifyPath(t, path, head); !rep.OK() || rep.Records != 20 {
		t.Fatalf("intact trail: %+v", rep)
	}
	orig := lines(t, path)
	tamper := func(name string, fn func(ls [][]byte) [][]byte, want map[string]uint64) {
		t.Run(name, func(t *testing.T) {
			ls := make([][]byte, len(orig))
			copy(ls, orig)
			write(t, path, fn(ls))
			got := kinds(verifyPath(t, path, head))
			if len(got) != len(want) {
				t.Fatalf("problems %v, want %v", got, want)
			}
			for k, seq := range want {
				if got[k] != seq {
					t.Fatalf("problems %v, want %v", got, want)
				}
			}
		})
	}
	tamper("altered", func(ls [][]byte) [][]byte {
		ls[4] = bytes.Replace(ls[4], []byte(`"actor":"u`), []byte(`"actor":"x`), 1)
		return ls
	}, map[string]uint64{Altered: 5})
	tamper("altered and rehashed", func(ls [][]byte) [][]byte {
		var l Line
		json.Unmarshal(ls[4], &l)
		l.Actor = "mallory"
		r := l.Record()
		r.Hash = state.AuditHash(r.PrevHash, r)
		ls[4] = LineOf(r).Marshal()
		return ls
	}, map[string]uint64{Missing: 5})
	tamper("deleted", func(ls [][]byte) [][]byte {
		return append(ls[:7:7], ls[8:]...)
	}, map[string]uint64{Missing: 8})
	tamper("reordered", func(ls [][]byte) [][]byte {
		ls[10], ls[11] = ls[11], ls[10]
		return ls
	}, map[string]uint64{Reordered: 11})
	tamper("truncated", func(ls [][]byte) [][]byte {
		return ls[:17]
	}, map[string]uint64{Truncated: 18})
	tamper("garbage line", func(ls [][]byte) [][]byte {
		return append(ls[:3:3], append([][]byte{[]byte("not json")}, ls[3:]...)...)
	}, map[string]uint64{Unreadable: 4})
	tamper("all at once", func(ls [][]byte) [][]byte {
		ls[1] = bytes.Replace(ls[1], []byte(`"result":"denied"`), []byte(`"result":"ok"`), 1)
		ls[10], ls[11] = ls[11], ls[10]
		ls = append(ls[:5:5], ls[6:]...) // seq 6
		return ls[:len(ls)-2]
	}, map[string]uint64{Altered: 2, Missing: 6, Reordered: 11, Truncated: 19})
}

// Append skips what the file holds (a replay after a restart), a torn last
// line is dropped on open, and a snapshot's records replace the file.
func TestFileIdempotentAndRestore(t *testing.T) {
	dir := t.TempDir()
	s, f := trail(t, dir, 10)
	f.Close()
	path := filepath.Join(dir, FileName)
	// A crash cut the last line short.
	b, _ := os.ReadFile(path)
	os.WriteFile(path, b[:len(b)-7], 0o600)
	f, err := OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if last, _ := f.Last(); last != 9 {
		t.Fatalf("last %d after a torn line, want 9", last)
	}
	// The raft log replays every command from the start: the file ends
	// with each record once.
	s2 := state.New()
	s2.SetAuditSink(f)
	applyN(s2, 1, 12)
	f.Flush()
	if rep := verifyPath(t, path, s2.AuditHead()); !rep.OK() || rep.Records != 12 {
		t.Fatalf("after replay: %+v", rep)
	}
	_ = s
	// A snapshot's reader ends where it was taken; restoring it elsewhere
	// gives the same file.
	rc, err := f.SnapshotReader()
	if err != nil {
		t.Fatal(err)
	}
	applyN(s2, 13, 3) // appends after the snapshot do not show in it
	dir2 := t.TempDir()
	_, g := trail(t, dir2, 30) // a follower with a longer, different trail
	if err := g.Restore(rc, &statev1.AuditHead{Seq: 12}); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if last, _ := g.Last(); last != 12 {
		t.Fatalf("restored file ends at %d", last)
	}
	g.Close()
	f.Close()
	want := lines(t, path)[:12]
	got := lines(t, filepath.Join(dir2, FileName))
	if len(got) != 12 || !bytes.Equal(bytes.TrimSpace(bytes.Join(got, nil)), bytes.TrimSpace(bytes.Join(want, nil))) {
		t.Fatalf("restored trail differs: %d lines", len(got))
	}
}

// Archiving drops the prefix; the rest still verifies against the head,
// starting at the archived mark.
func TestFileArchived(t *testing.T) {
	dir := t.TempDir()
	s, f := trail(t, dir, 10)
	var hash []byte
	f.Scan(func(l Line) (bool, error) {
		if l.Seq == 4 {
			hash = l.Record().Hash
		}
		return true, nil
	})
	if _, err := s.Apply(11, &statev1.Command{Version: state.CommandVersion, UnixNano: 99, Audit: &statev1.AuditContext{Actor: "aud", Action: "ArchiveAudit"},
		Cmd: &statev1.Command_ArchiveAudit{ArchiveAudit: &statev1.ArchiveAudit{ThroughSeq: 4, ThroughHash: hash}}}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	path := filepath.Join(dir, FileName)
	rep := verifyPath(t, path, s.AuditHead())
	if !rep.OK() || rep.First != 5 || rep.Last != 11 {
		t.Fatalf("after archive: %+v", rep)
	}
	// Removing the first remaining record is still found.
	write(t, path, lines(t, path)[1:])
	if got := kinds(verifyPath(t, path, s.AuditHead())); got[Missing] != 5 {
		t.Fatalf("problems %v", got)
	}
}

// Params are the request without its secrets; targets name the object.
func TestParamsAndTarget(t *testing.T) {
	req := &yunchiv1.JoinClusterRequest{Id: "c4", RaftAddress: "10.0.0.4:7000"}
	if p := Params(req); p != `{"id":"c4","raft_address":"10.0.0.4:7000"}` {
		t.Fatalf("params %s", p)
	}
	// A secret field at any depth is redacted (SubmitAudit's records carry
	// token_id: a name with "token" in it).
	sub := &yunchiv1.SubmitAuditRequest{LoginFailures: []*yunchiv1.LoginFailure{{User: "bob", TokenId: "secret-ish", Reason: "x"}}}
	if p := Params(sub); strings.Contains(p, "secret-ish") || !strings.Contains(p, `"token_id":"[redacted]"`) {
		t.Fatalf("params %s", p)
	}
	if sub.LoginFailures[0].TokenId != "secret-ish" {
		t.Fatal("Params redacted the caller's request, not a copy")
	}
	// Without a secret set, nothing is redacted (and no copy made).
	if p := Params(&yunchiv1.SubmitAuditRequest{LoginFailures: []*yunchiv1.LoginFailure{{User: "bob"}}}); p != `{"login_failures":[{"user":"bob"}]}` {
		t.Fatalf("params %s", p)
	}
	for _, c := range []struct {
		method string
		m      proto.Message
		want   string
	}{
		{yunchiv1.VMService_CreateVM_FullMethodName, &yunchiv1.CreateVMRequest{Name: "web-1", Project: "air"}, "project/air/vm/web-1"},
		{yunchiv1.VMService_DeleteVM_FullMethodName, &yunchiv1.VMActionRequest{Name: "web-1"}, "project/default/vm/web-1"},
		{yunchiv1.GroupService_CreateGroup_FullMethodName, &yunchiv1.CreateGroupRequest{Name: "g", Project: "p"}, "project/p/group/g"},
		{yunchiv1.VolumeService_AttachVolume_FullMethodName, &yunchiv1.AttachVolumeRequest{Name: "data", Project: "air", Vm: "web-1"}, "project/air/volume/data"},
		{yunchiv1.VolumeService_CreateVolume_FullMethodName, &yunchiv1.CreateVolumeRequest{Name: "data"}, "project/default/volume/data"},
		{yunchiv1.HostService_UpdateHost_FullMethodName, &yunchiv1.UpdateHostRequest{Id: "h1"}, "host/h1"},
		{yunchiv1.AgentService_RegisterHost_FullMethodName, &yunchiv1.RegisterHostRequest{Facts: &yunchiv1.HostFacts{Id: "h2"}}, "host/h2"},
		{yunchiv1.RatioService_SetRatios_FullMethodName, &yunchiv1.SetRatiosRequest{Scope: "center", Name: "a1"}, "ratio/center/a1"},
		{yunchiv1.ClusterService_RemoveMember_FullMethodName, &yunchiv1.RemoveMemberRequest{Id: "b1"}, "member/b1"},
	} {
		if got := TargetOf(c.method, c.m); got != c.want {
			t.Errorf("%s: target %q, want %q", c.method, got, c.want)
		}
	}
	if long := Params(&yunchiv1.CreateVMRequest{Name: strings.Repeat("x", 2*MaxParams)}); len(long) > MaxParams+20 {
		t.Fatalf("params of %d bytes", len(long))
	}
}

// Every RPC has an access rule, and the audit RPCs are the auditor's (and
// SubmitAudit the controllers') only.
func TestAuditRules(t *testing.T) {
	for _, m := range []string{yunchiv1.AuditService_ListAudit_FullMethodName, yunchiv1.AuditService_VerifyAudit_FullMethodName,
		yunchiv1.AuditService_ExportAudit_FullMethodName, yunchiv1.AuditService_ArchiveAudit_FullMethodName} {
		r, _ := auth.RuleFor(m)
		if r == nil || len(r.Roles) != 1 || r.Roles[0] != yunchiv1.Role_ROLE_AUDITOR {
			t.Errorf("%s: rule %v", m, r)
		}
	}
	if r, _ := auth.RuleFor(yunchiv1.AuditService_SubmitAudit_FullMethodName); r == nil || r.Mutating || r.Roles[0] != yunchiv1.Role_ROLE_CONTROLLER {
		t.Errorf("SubmitAudit: rule %v", r)
	}
	if !auth.Mutating(yunchiv1.VMService_CreateVM_FullMethodName) {
		t.Error("CreateVM is not mutating")
	}
}

// WithContext merges: the authentication interceptor and
// UnaryInterceptor may run in either order.
func TestWithContextMerges(t *testing.T) {
	ctx := WithContext(context.Background(), Context{Action: "CreateVM", Source: "1.2.3.4:5"})
	ctx = WithContext(ctx, Context{Actor: "alice", Role: "ROLE_MEMBER"})
	c, ok := FromContext(ctx)
	if !ok || c.Actor != "alice" || c.Action != "CreateVM" || c.Source != "1.2.3.4:5" {
		t.Fatalf("%+v", c)
	}
}

type fakeSubmit struct {
	mu       sync.Mutex
	batches  [][]*statev1.AuditRecord
	failures []*statev1.LoginFailure
	err      error
}

func (f *fakeSubmit) submit(_ context.Context, d []*statev1.AuditRecord, l []*statev1.LoginFailure) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	if len(d) > 0 {
		f.batches = append(f.batches, d)
	}
	f.failures = append(f.failures, l...)
	return nil
}

// The recorder sends batches of at most FlushRecords, keeps what it
// could not send for the next try, and turns overflow into a counted
// "dropped" record instead of losing it silently.
func TestRecorderBatchesAndDrops(t *testing.T) {
	fs := &fakeSubmit{err: errors.New("no leader")}
	r := NewRecorder(fs.submit, nil)
	ctx := WithContext(context.Background(), Context{Actor: "eve", Role: "ROLE_VIEWER"})
	for range QueueLimit + 5 {
		r.Denied(ctx, "/yunchi.v1.AuditService/ListAudit", codes.PermissionDenied, "auditors only")
	}
	r.LoginFailed(context.Background(), "/yunchi.v1.VMService/ListVMs", "tk1", "bob", "bad secret")
	if r.Dropped() != 6 || r.Queued() != QueueLimit {
		t.Fatalf("dropped %d queued %d", r.Dropped(), r.Queued())
	}
	if err := r.Flush(context.Background()); err == nil {
		t.Fatal("flush without a leader succeeded")
	}
	fs.mu.Lock()
	fs.err = nil
	fs.mu.Unlock()
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r.Queued() != 0 {
		t.Fatalf("%d still queued", r.Queued())
	}
	total := 0
	for _, b := range fs.batches {
		if len(b) > FlushRecords {
			t.Fatalf("batch of %d", len(b))
		}
		total += len(b)
	}
	first := fs.batches[0][0]
	if first.Kind != "dropped" || !strings.Contains(first.Message, "dropped") {
		t.Fatalf("first record %v", first)
	}
	d := fs.batches[0][1]
	if d.Kind != "denied" || d.GetContext().GetActor() != "eve" || d.GetContext().GetAction() != "ListAudit" || d.Code != "PermissionDenied" {
		t.Fatalf("denied record %v", d)
	}
	if len(fs.failures) != 1 || fs.failures[0].User != "bob" {
		t.Fatalf("failures %v", fs.failures)
	}
	if total < QueueLimit-1 {
		t.Fatalf("%d records sent", total)
	}
}

// Records the buffered writer has written out leave memory: without a
// flush (a snapshot or a read of the trail comes every few minutes), 5,000
// records keep only the few still in the 64 KiB buffer pending, not all
// 5,000 (before the fix every record stayed until the next flush, up to
// maxPending, and the trail then logged that records were missing). The
// file still holds all of them, in order.
func TestPendingOnlyWhatIsBuffered(t *testing.T) {
	dir := t.TempDir()
	s, f := trail(t, dir, 0)
	applyN(s, 1, 5000)
	f.mu.Lock()
	pending, buffered := len(f.pending), f.w.Buffered()
	for i, r := range f.pending {
		if r.Seq != uint64(5000-len(f.pending)+i+1) {
			t.Errorf("pending[%d] is seq %d: pending is not the newest records in order", i, r.Seq)
			break
		}
	}
	f.mu.Unlock()
	if pending == 0 || pending > 1000 {
		t.Fatalf("%d records pending with %d bytes buffered, want the few in the buffer", pending, buffered)
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	if rep := verifyPath(t, filepath.Join(dir, FileName), s.AuditHead()); !rep.OK() || rep.Records != 5000 {
		t.Fatalf("trail: %+v", rep)
	}
}
