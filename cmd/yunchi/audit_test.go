package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/audit"
	"github.com/yunchi/yunchi/controller/raftstore"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// auditDataDir writes a stopped controller's data dir as Apply leaves it:
// n audited commands in the raft log and the trail they produced.
func auditDataDir(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	logs, err := raftstore.Open(filepath.Join(dir, "raft"))
	if err != nil {
		t.Fatal(err)
	}
	trail, err := audit.OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := state.New()
	s.SetAuditSink(trail)
	for i := 1; i <= n; i++ {
		cmd := &statev1.Command{Version: state.CommandVersion, UnixNano: int64(i) * 1e9,
			Audit: &statev1.AuditContext{Actor: "alice", Action: "RemoveMember", Target: "member/x"},
			Cmd:   &statev1.Command_RemoveMember{RemoveMember: &statev1.RemoveMember{Id: "x"}}}
		b, _ := proto.Marshal(cmd)
		if err := logs.StoreLog(&raft.Log{Index: uint64(i), Term: 1, Type: raft.LogCommand, Data: b}); err != nil {
			t.Fatal(err)
		}
		s.Apply(uint64(i), cmd)
	}
	if err := errorsJoin(trail.Close(), logs.Close()); err != nil {
		t.Fatal(err)
	}
	return dir
}

func errorsJoin(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// `yunchi audit verify --data-dir` exits 0 on a whole trail and 8 on a
// tampered one, with one line per problem naming its kind and seq.
func TestAuditVerifyDataDir(t *testing.T) {
	dir := auditDataDir(t, 10)
	code, out, errs := yunchi(t, "audit", "verify", "--data-dir", dir)
	if code != exitOK || !strings.HasPrefix(out, "ok: 10 records") || errs != "" {
		t.Fatalf("intact: exit %d, %q %q", code, out, errs)
	}
	path := filepath.Join(dir, audit.FileName)
	b, _ := os.ReadFile(path)
	ls := bytes.SplitAfter(b, []byte("\n"))
	ls[2] = bytes.Replace(ls[2], []byte(`"actor":"alice"`), []byte(`"actor":"bob"`), 1) // seq 3
	ls[5], ls[6] = ls[6], ls[5]                                                         // seq 6, 7
	ls = append(ls[:7:7], ls[8:]...)                                                    // seq 8 gone
	ls = ls[:len(ls)-2]                                                                 // seq 10 cut off (and the empty tail)
	os.WriteFile(path, bytes.Join(ls, nil), 0o600)
	code, out, errs = yunchi(t, "audit", "verify", "--data-dir", dir)
	if code != exitAuditBroken {
		t.Fatalf("tampered: exit %d, %q %q", code, out, errs)
	}
	got := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		got[strings.Join(f[:3], " ")] = true
	}
	for _, want := range []string{"altered seq 3", "reordered seq 6", "missing seq 8", "truncated seq 10"} {
		if !got[want] {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 4 {
		t.Errorf("%d lines, want 4:\n%s", n, out)
	}
	msg := oneErrorLine(t, errs)
	if !strings.Contains(msg, "broken") {
		t.Errorf("error %q", msg)
	}
	// JSON for scripts, same exit code.
	code, out, _ = yunchi(t, "audit", "verify", "--data-dir", dir, "-o", "json")
	// protojson varies its spacing between builds: compare without it.
	if code != exitAuditBroken || !strings.Contains(strings.Join(strings.Fields(out), ""), `"kind":"truncated"`) {
		t.Fatalf("json: exit %d %s", code, out)
	}
}

func TestAuditUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"audit", "verify", "--data-dir", "a", "--file", "b"},
		{"audit", "list", "--since", "yesterday"},
		{"audit", "list", "--since", "1h", "--until", "2h"},
		{"audit", "export"},
		{"audit", "archive", "--out", "x"},
		{"audit", "archive", "--before", "2000-01-01"},
	} {
		code, _, errs := yunchi(t, args...)
		if code != exitUsage {
			t.Errorf("%v: exit %d %q", args, code, errs)
			continue
		}
		oneErrorLine(t, errs)
	}
	// Not a data dir: one line, not a usage error.
	code, _, errs := yunchi(t, "audit", "verify", "--data-dir", t.TempDir())
	if code != exitError {
		t.Errorf("empty dir: exit %d", code)
	}
	oneErrorLine(t, errs)
}
