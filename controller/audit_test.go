package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/audit"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func listAudit(t *testing.T, addr string, req *yunchiv1.ListAuditRequest) []*yunchiv1.AuditRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var all []*yunchiv1.AuditRecord
	for range 100 {
		resp, err := yunchiv1.NewAuditServiceClient(dial(t, addr)).ListAudit(ctx, req)
		if err != nil {
			t.Fatalf("list audit on %s: %v", addr, err)
		}
		all = append(all, resp.Records...)
		if resp.NextPageToken == "" {
			return all
		}
		req.PageToken = resp.NextPageToken
	}
	t.Fatal("more than 100 pages")
	return nil
}

func verifyAudit(t *testing.T, addr string) *yunchiv1.VerifyAuditResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := yunchiv1.NewAuditServiceClient(dial(t, addr)).VerifyAudit(ctx, &yunchiv1.VerifyAuditRequest{})
	if err != nil {
		t.Fatalf("verify audit on %s: %v", addr, err)
	}
	return resp
}

// The audit trail end to end on a 3-controller cluster: writes through a
// follower are recorded once, by Apply on every controller alike (same
// chain head everywhere); denied requests and failed logins seen by a
// follower reach the log through the leader; list filters; export; then,
// in a copy of a stopped controller's data dir, offline verification names
// each altered, missing, reordered and truncated record.
func TestAuditTrailThroughRaft(t *testing.T) {
	c := newInmemCluster(t)
	l := c.leader()
	var f *member
	for _, m := range c.members {
		if m != l {
			f = m
			break
		}
	}
	registerHosts(t, f.ctl.Addr(), 3, 16, 64*gib)
	vc := yunchiv1.NewVMServiceClient(dial(t, f.ctl.Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, name := range []string{"web-1", "web-2", "web-3"} {
		if _, err := vc.CreateVM(metadata.AppendToOutgoingContext(ctx, "idempotency-key", "k-"+name),
			&yunchiv1.CreateVMRequest{Name: name, Vcpus: 1, Memory: "1GiB", Disk: "10GiB"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := vc.StopVM(ctx, &yunchiv1.VMActionRequest{Name: "web-2"}); err != nil {
		t.Fatal(err)
	}
	// Rejected by the API before the log: not a command, not recorded
	// here (the access interceptor records denials).
	if _, err := vc.StopVM(ctx, &yunchiv1.VMActionRequest{Name: "nope"}); err == nil {
		t.Fatal("stopped a VM that does not exist")
	}
	// A follower's denied request and failed login go to the leader.
	rec := f.ctl.Recorder()
	dctx := audit.WithContext(context.Background(), audit.Context{Actor: "eve", Role: "ROLE_SYSADMIN", Department: "air", Source: "10.9.9.9:1234"})
	rec.Denied(dctx, yunchiv1.AuditService_ListAudit_FullMethodName, codes.PermissionDenied, "only auditors read the audit trail")
	rec.LoginFailed(audit.WithContext(context.Background(), audit.Context{Source: "10.9.9.8:1"}), "/yunchi.v1.VMService/ListVMs", "tk9", "mallory", "unknown token")

	apitest.Eventually(t, 20*time.Second, "denied and failed login recorded on every controller", func() bool {
		for _, m := range c.members {
			if len(listAudit(t, m.ctl.Addr(), &yunchiv1.ListAuditRequest{User: "eve"})) != 1 ||
				len(listAudit(t, m.ctl.Addr(), &yunchiv1.ListAuditRequest{User: "mallory"})) != 1 {
				return false
			}
		}
		return true
	})
	// A write through the leader's REST gateway is recorded with the
	// HTTP client's address (through a follower's, the address could be
	// the follower's own and still pass).
	if code, body, err := apitest.Post(l.ctl.Addr(), "/v1/vms/web-2:start", "{}"); err != nil || code != 200 {
		t.Fatalf("POST /v1/vms/web-2:start: %d %s %v", code, body, err)
	}
	var restStart *yunchiv1.AuditRecord
	apitest.Eventually(t, 20*time.Second, "the REST start recorded", func() bool {
		for _, r := range listAudit(t, l.ctl.Addr(), &yunchiv1.ListAuditRequest{Action: "StartVM"}) {
			if r.Kind == "action" && r.Target == "project/default/vm/web-2" {
				restStart = r
			}
		}
		return restStart != nil
	})
	if !strings.HasPrefix(restStart.Source, "127.0.0.1:") {
		t.Fatalf("REST StartVM recorded from %q, want the client's 127.0.0.1 address", restStart.Source)
	}
	apitest.Eventually(t, 20*time.Second, "the same head on every controller", func() bool {
		h := verifyAudit(t, l.ctl.Addr())
		for _, m := range c.members {
			v := verifyAudit(t, m.ctl.Addr())
			if !v.Ok || v.HeadSeq != h.HeadSeq || v.HeadHash != h.HeadHash {
				return false
			}
		}
		return true
	})
	for _, m := range c.members {
		creates := listAudit(t, m.ctl.Addr(), &yunchiv1.ListAuditRequest{Action: "CreateVM"})
		if len(creates) != 3 {
			t.Fatalf("%s: %d CreateVM records", m.id, len(creates))
		}
		for i, r := range creates {
			if r.Kind != "action" || r.Result != "ok" || r.Target != "project/default/vm/web-"+string(rune('1'+i)) ||
				r.RequestId != "k-web-"+string(rune('1'+i)) || r.Source == "" || r.UnixNano == 0 {
				t.Fatalf("record %+v", r)
			}
			var p map[string]any
			if err := json.Unmarshal([]byte(r.Params), &p); err != nil || p["name"] != "web-"+string(rune('1'+i)) {
				t.Fatalf("params %q", r.Params)
			}
		}
	}
	all := listAudit(t, l.ctl.Addr(), &yunchiv1.ListAuditRequest{PageSize: 2})
	kinds := map[string]int{}
	for _, r := range all {
		kinds[r.Kind+"/"+r.Action]++
	}
	// 3 registrations, 3 creates, 1 stop, the members joining (system),
	// the denial and the failed login.
	for _, k := range []string{"action/RegisterHost", "action/CreateVM", "action/StopVM", "system/UpsertMember", "denied/ListAudit", "login_failed/Login"} {
		if kinds[k] == 0 {
			t.Errorf("no %s record in %v", k, kinds)
		}
	}
	if kinds["action/StopVM"] != 1 {
		t.Errorf("%d StopVM records", kinds["action/StopVM"])
	}
	if got := listAudit(t, l.ctl.Addr(), &yunchiv1.ListAuditRequest{Department: "air"}); len(got) != 1 || got[0].Source != "10.9.9.9:1234" {
		t.Fatalf("department filter: %v", got)
	}
	if got := listAudit(t, l.ctl.Addr(), &yunchiv1.ListAuditRequest{SinceUnixNano: time.Now().Add(time.Hour).UnixNano()}); len(got) != 0 {
		t.Fatalf("since the future: %d", len(got))
	}
	// REST: the same through the gateway.
	if code, body := apitest.Get(t, f.ctl.Addr(), "/v1/audit?user=eve"); code != 200 || !bytes.Contains(body, []byte(`"actor":"eve"`)) {
		t.Fatalf("GET /v1/audit: %d %s", code, body)
	}
	if code, body := apitest.Get(t, f.ctl.Addr(), "/v1/audit/verify"); code != 200 || !bytes.Contains(body, []byte(`"ok":true`)) {
		t.Fatalf("GET /v1/audit/verify: %d %s", code, body)
	}
	if code, body := apitest.Get(t, f.ctl.Addr(), "/v1/audit?pageSize=5000"); code != 400 {
		t.Fatalf("GET /v1/audit?pageSize=5000: %d %s", code, body)
	}
	// Export streams everything, in the file's own format.
	st, err := yunchiv1.NewAuditServiceClient(dial(t, f.ctl.Addr())).ExportAudit(ctx, &yunchiv1.ExportAuditRequest{SinceUnixNano: 1})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, err := st.Recv(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != len(all) {
		t.Fatalf("exported %d, listed %d", n, len(all))
	}

	// Stop everything, then tamper with copies of the leader's data dir.
	c.stopAll()
	for _, m := range c.members {
		m.ctl = nil
	}
	rep, err := audit.VerifyDataDir(l.dir)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Records != uint64(len(all)) {
		t.Fatalf("stopped controller's trail: %+v (listed %d)", rep, len(all))
	}
	tamper := func(name string, edit func(ls [][]byte) [][]byte, want map[string]uint64) {
		t.Run(name, func(t *testing.T) {
			dir := copyDir(t, l.dir)
			path := filepath.Join(dir, audit.FileName)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			ls := bytes.SplitAfter(b, []byte("\n"))
			ls = ls[:len(ls)-1] // after the last newline
			if err := os.WriteFile(path, bytes.Join(edit(ls), nil), 0o600); err != nil {
				t.Fatal(err)
			}
			rep, err := audit.VerifyDataDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]uint64{}
			for _, p := range rep.Problems {
				got[p.Kind] = p.Seq
			}
			if len(got) != len(want) {
				t.Fatalf("problems %+v, want %v", rep.Problems, want)
			}
			for k, seq := range want {
				if got[k] != seq {
					t.Fatalf("problems %+v, want %v", rep.Problems, want)
				}
			}
		})
	}
	tamper("altered", func(ls [][]byte) [][]byte {
		ls[5] = bytes.Replace(ls[5], []byte(`"result":"ok"`), []byte(`"result":"error"`), 1)
		return ls
	}, map[string]uint64{audit.Altered: 6})
	tamper("deleted", func(ls [][]byte) [][]byte {
		return append(ls[:3:3], ls[4:]...)
	}, map[string]uint64{audit.Missing: 4})
	tamper("reordered", func(ls [][]byte) [][]byte {
		ls[6], ls[7] = ls[7], ls[6]
		return ls
	}, map[string]uint64{audit.Reordered: 7})
	tamper("truncated", func(ls [][]byte) [][]byte {
		return ls[:len(ls)-2]
	}, map[string]uint64{audit.Truncated: uint64(len(all) - 1)})
}

// copyDir copies a data dir (files and directories) into a temp dir.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy")
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}

// Archiving through the API: a wrong hash changes nothing; the right one
// drops the prefix on every controller, a checkpoint record stands for
// it, and every trail still verifies.
func TestAuditArchive(t *testing.T) {
	c := newInmemCluster(t)
	l := c.leader()
	var f *member
	for _, m := range c.members {
		if m != l {
			f = m
			break
		}
	}
	registerHosts(t, f.ctl.Addr(), 6, 16, 64*gib)
	apitest.Eventually(t, 20*time.Second, "every controller has the registrations", func() bool {
		for _, m := range c.members {
			if len(listAudit(t, m.ctl.Addr(), &yunchiv1.ListAuditRequest{Action: "RegisterHost"})) != 6 {
				return false
			}
		}
		return true
	})
	recs := listAudit(t, l.ctl.Addr(), &yunchiv1.ListAuditRequest{})
	through := recs[len(recs)-3]
	ac := yunchiv1.NewAuditServiceClient(dial(t, f.ctl.Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sum := "0000000000000000000000000000000000000000000000000000000000000000"
	_, err := ac.ArchiveAudit(ctx, &yunchiv1.ArchiveAuditRequest{ThroughSeq: through.Seq, ThroughHash: recs[0].Hash, ArchiveSha256: sum})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("archive with a wrong hash: %v", err)
	}
	if _, err := ac.ArchiveAudit(ctx, &yunchiv1.ArchiveAuditRequest{ThroughSeq: through.Seq, ThroughHash: "xyz", ArchiveSha256: sum}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("archive with a bad hash: %v", err)
	}
	// The refusals are themselves recorded (kind rejected, shortly after):
	// nothing else changed.
	if n, had := len(withoutKind(listAudit(t, l.ctl.Addr(), &yunchiv1.ListAuditRequest{}), "rejected")), len(withoutKind(recs, "rejected")); n != had {
		t.Fatalf("refused archives changed the trail: %d records, had %d", n, had)
	}
	resp, err := ac.ArchiveAudit(ctx, &yunchiv1.ArchiveAuditRequest{ThroughSeq: through.Seq, ThroughHash: through.Hash, ArchiveSha256: sum,
		Count: through.Seq, FirstUnixNano: recs[0].UnixNano, LastUnixNano: through.UnixNano})
	if err != nil {
		t.Fatal(err)
	}
	if cp := resp.GetCheckpoint(); cp.GetKind() != "archived" || cp.GetAction() != "ArchiveAudit" {
		t.Fatalf("checkpoint %+v", cp)
	}
	apitest.Eventually(t, 20*time.Second, "every controller archived and verifies", func() bool {
		for _, m := range c.members {
			v := verifyAudit(t, m.ctl.Addr())
			if !v.Ok || v.FirstSeq != through.Seq+1 {
				return false
			}
		}
		return true
	})
	rest := withoutKind(listAudit(t, f.ctl.Addr(), &yunchiv1.ListAuditRequest{}), "rejected")
	if rest[0].Seq != through.Seq+1 || rest[len(rest)-1].Kind != "archived" {
		t.Fatalf("after archive: first %d, last %s", rest[0].Seq, rest[len(rest)-1].Kind)
	}
}

// withoutKind drops the records of one kind.
func withoutKind(recs []*yunchiv1.AuditRecord, kind string) []*yunchiv1.AuditRecord {
	var out []*yunchiv1.AuditRecord
	for _, r := range recs {
		if r.Kind != kind {
			out = append(out, r)
		}
	}
	return out
}
