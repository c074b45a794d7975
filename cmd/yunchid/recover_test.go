package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/cmd/yunchid/clustertest"
	"github.com/yunchi/yunchi/controller/audit"
	"github.com/yunchi/yunchi/controller/raftnode"
	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/internal/apitest"
	"github.com/yunchi/yunchi/internal/daemon"
	"github.com/yunchi/yunchi/internal/pki"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// recoverSource is a stopped controller b1 (raft address 127.0.0.1:18482)
// with a few hosts, its data dir and a state copy it took.
type recoverSource struct {
	dataDir, copyPath string
}

func makeRecoverSource(t *testing.T) recoverSource {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "b1")
	trail, err := audit.OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := state.New()
	store.SetAuditSink(trail)
	_, trans := raft.NewInmemTransport("127.0.0.1:18482")
	n, err := raftnode.Open(raftnode.Config{ID: "b1", DataDir: dir, Bootstrap: true, Transport: trans, Audit: trail,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 100 * time.Millisecond}, store)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { n.Shutdown(); trail.Close() }()
	apitest.Eventually(t, 10*time.Second, "b1 leads", n.IsLeader)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, cmd := range []*statev1.Command{
		{Cmd: &statev1.Command_UpsertMember{UpsertMember: &statev1.UpsertMember{Member: &statev1.MemberRecord{Id: "b1", Center: "b1", RaftAddress: "127.0.0.1:18482", ApiAddress: "127.0.0.1:18472"}}}},
		{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{Id: "b1-h01", Hostname: "h", Center: "b1",
			Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 8 << 30, DiskBytes: 1 << 40}}}}},
	} {
		if _, err := n.Apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	cp := raftnode.NewDRCopier(n, raftnode.DRCopies{Dir: filepath.Join(dir, "dr-snapshots"), Interval: time.Hour, Keep: 2, ID: "b1", Center: "b1", DataDir: dir}, nil)
	info, err := cp.Copy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return recoverSource{dataDir: dir, copyPath: info.Path}
}

// writeTestCopy writes a state copy by hand: its header, the snapshot
// stream of snap (the state, no audit trail) and the checksum.
func writeTestCopy(t *testing.T, path string, format int, snap *statev1.Snapshot) {
	t.Helper()
	b, err := proto.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	payload := binary.AppendUvarint([]byte("YCSNAP4\n"), uint64(len(b)))
	payload = append(payload, b...)
	h, _ := json.Marshal(raftnode.CopyHeader{Format: format, Controller: "b1", TakenAt: time.Now(), Index: snap.Index, Term: 1, Size: int64(len(payload)),
		Servers: []raftnode.CopyServer{{ID: "b1", Address: "127.0.0.1:18482", Voter: true}}})
	var out bytes.Buffer
	fmt.Fprintf(&out, "YUNCHI-STATE-COPY %d\n", format)
	out.Write(h)
	out.WriteByte('\n')
	out.Write(payload)
	sum := sha256.Sum256(out.Bytes())
	out.Write(sum[:])
	if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeTLS makes a cluster CA and controller id's certificate in dir, as
// a controller's data dir holds them (<data-dir>/tls).
func writeTLS(t *testing.T, dir, id string) {
	t.Helper()
	ca, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue(&key.PublicKey, pki.Identity{Kind: pki.KindController, ID: id}, pki.NamesOf("127.0.0.1:18472", pki.ClusterServerName), time.Now(), pki.CertLifetime)
	if err != nil {
		t.Fatal(err)
	}
	caKey, _ := ca.KeyPEM()
	keyPEM, _ := pki.KeyPEM(key)
	if err := pki.WriteFiles(dir, map[string][]byte{pki.CACertFile: ca.CertPEM, pki.CAKeyFile: caKey, pki.ServerCertFile: cert, pki.ServerKeyFile: keyPEM}); err != nil {
		t.Fatal(err)
	}
}

// dirState lists a directory tree (every path, and each file's size,
// time and content hash) to check that a refused recovery changed nothing.
func dirState(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		switch {
		case err != nil:
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			out = append(out, fmt.Sprintf("%s %d %v %x", p, fi.Size(), fi.ModTime().UnixNano(), sha256.Sum256(b)))
		default:
			out = append(out, p)
		}
		return nil
	})
	return out
}

// Bad input gets one line and changes nothing: no new data dir, the
// source and the parent directory as they were.
func TestRecoverRefuses(t *testing.T) {
	src := makeRecoverSource(t)
	root := t.TempDir()
	fresh := filepath.Join(root, "new")
	notCopy := filepath.Join(root, "notes.txt")
	os.WriteFile(notCopy, []byte("not a snapshot\n"), 0o600)
	newer := filepath.Join(root, "newer.snap")
	good, _ := os.ReadFile(src.copyPath)
	os.WriteFile(newer, bytes.Replace(good, []byte("YUNCHI-STATE-COPY 1\n"), []byte("YUNCHI-STATE-COPY 2\n"), 1), 0o600)
	newerState := filepath.Join(root, "newer-state.snap")
	writeTestCopy(t, newerState, 1, &statev1.Snapshot{FormatVersion: state.SnapshotVersion + 1, Index: 7})
	raftSnap := filepath.Join(root, "state.bin")
	os.WriteFile(raftSnap, []byte("YCSNAP4\n\x00"), 0o600)
	full := filepath.Join(root, "full")
	os.MkdirAll(full, 0o700)
	os.WriteFile(filepath.Join(full, "x"), []byte("x"), 0o600)
	otherTLS := filepath.Join(root, "tls-a1")
	writeTLS(t, otherTLS, "a1")

	for _, tc := range []struct {
		name string
		args recoverArgs
		want string
	}{
		{"no source", recoverArgs{DataDir: fresh, Insecure: true}, "give exactly one of --from-snapshot"},
		{"two sources", recoverArgs{DataDir: fresh, FromSnapshot: src.copyPath, FromDataDir: src.dataDir, Insecure: true}, "give exactly one of --from-snapshot"},
		{"new dir holds raft state", recoverArgs{DataDir: src.dataDir, FromSnapshot: src.copyPath, Insecure: true}, "already holds raft state"},
		{"new dir not empty", recoverArgs{DataDir: full, FromSnapshot: src.copyPath, Insecure: true}, "is not empty"},
		{"not a copy", recoverArgs{DataDir: fresh, FromSnapshot: notCopy, Insecure: true}, "is not a Yunchi state copy"},
		{"a raft snapshot file", recoverArgs{DataDir: fresh, FromSnapshot: raftSnap, Insecure: true}, "is a raft snapshot of a data dir"},
		{"newer copy format", recoverArgs{DataDir: fresh, FromSnapshot: newer, Insecure: true}, "format 2, newer than this yunchid reads (1)"},
		{"newer state format", recoverArgs{DataDir: fresh, FromSnapshot: newerState, Insecure: true}, fmt.Sprintf("state format %d, newer than this yunchid reads (%d)", state.SnapshotVersion+1, state.SnapshotVersion)},
		{"no such file", recoverArgs{DataDir: fresh, FromSnapshot: filepath.Join(root, "nope.snap"), Insecure: true}, "no such file"},
		{"no copies in dir", recoverArgs{DataDir: fresh, FromSnapshot: otherTLS, Insecure: true}, "holds no state copies"},
		{"not a data dir", recoverArgs{DataDir: fresh, FromDataDir: root, Insecure: true}, "is not a controller's data dir"},
		{"no TLS source", recoverArgs{DataDir: fresh, FromSnapshot: src.copyPath}, "give --tls-from DIR"},
		{"another controller's certificate", recoverArgs{DataDir: fresh, FromSnapshot: src.copyPath, TLSFrom: otherTLS}, "is controller a1's, not b1's"},
		{"insecure and TLS", recoverArgs{DataDir: fresh, FromSnapshot: src.copyPath, TLSFrom: otherTLS, Insecure: true}, "--insecure excludes --tls-from"},
		{"unknown id", recoverArgs{DataDir: fresh, FromSnapshot: src.copyPath, ID: "zz", Insecure: true}, "controller zz is not in the source's raft configuration (b1 at 127.0.0.1:18482): give --raft-listen"},
		{"undialable address", recoverArgs{DataDir: fresh, FromSnapshot: src.copyPath, RaftListen: "0.0.0.0:8480", Insecure: true}, "cannot be dialed by peers"},
		{"data dir without id", recoverArgs{DataDir: fresh, FromDataDir: src.dataDir, Insecure: true}, "give --id"},
	} {
		before := dirState(t, root)
		srcBefore := dirState(t, src.dataDir)
		var out bytes.Buffer
		tc.args.Out = &out
		begin := time.Now()
		err := runRecover(tc.args)
		if d := time.Since(begin); d > time.Second {
			t.Logf("%s: refused after %v", tc.name, d)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v; want one line with %q", tc.name, err, tc.want)
		}
		if after := dirState(t, root); !slices.Equal(before, after) {
			t.Errorf("%s: the refusal changed %s", tc.name, root)
		}
		if after := dirState(t, src.dataDir); !slices.Equal(srcBefore, after) {
			t.Errorf("%s: the refusal changed the source data dir", tc.name)
		}
	}

	// The source controller still runs: its data dir is refused.
	t.Run("data dir in use", func(t *testing.T) {
		trail, _ := audit.OpenFile(src.dataDir, nil)
		defer trail.Close()
		store := state.New()
		_, trans := raft.NewInmemTransport("127.0.0.1:18482")
		n, err := raftnode.Open(raftnode.Config{ID: "b1", DataDir: src.dataDir, Transport: trans, Audit: trail}, store)
		if err != nil {
			t.Fatal(err)
		}
		defer n.Shutdown()
		err = runRecover(recoverArgs{DataDir: fresh, FromDataDir: src.dataDir, ID: "b1", Insecure: true, Out: &bytes.Buffer{}})
		if err == nil || !strings.Contains(err.Error(), "is in use: stop that controller first") {
			t.Fatalf("recover from a data dir in use: %v", err)
		}
		if _, err := os.Stat(fresh); !os.IsNotExist(err) {
			t.Fatalf("the refusal made %s", fresh)
		}
	})

	// And what is right works: from the copy with TLS, and from the data
	// dir into an empty directory.
	t.Run("accepted", func(t *testing.T) {
		tlsDir := filepath.Join(src.dataDir, "tls")
		writeTLS(t, tlsDir, "b1")
		var out bytes.Buffer
		if err := runRecover(recoverArgs{DataDir: fresh, FromSnapshot: filepath.Dir(src.copyPath), TLSFrom: tlsDir, Out: &out}); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s", out.String())
		for _, want := range []string{"recovered controller b1", "a one-voter cluster (raft 127.0.0.1:18482)", "1 hosts",
			"start it: yunchid controller --id b1 --center b1 --data-dir " + fresh + " --listen 127.0.0.1:18472 --raft-listen 127.0.0.1:18482"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q", want)
			}
		}
		if !raftnode.HasRaftState(fresh) || !pki.Exists(filepath.Join(fresh, "tls"), pki.CAKeyFile) {
			t.Fatal("the new data dir lacks raft state or the TLS material")
		}
		empty := filepath.Join(root, "empty")
		os.MkdirAll(empty, 0o700)
		out.Reset()
		if err := runRecover(recoverArgs{DataDir: empty, FromDataDir: src.dataDir, Out: &out}); err != nil { // id from its certificate
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "recovered controller b1") || !raftnode.HasRaftState(empty) {
			t.Fatalf("from the data dir: %s", out.String())
		}
		ents, _ := os.ReadDir(root)
		for _, e := range ents {
			if strings.Contains(e.Name(), ".recover-") {
				t.Fatalf("temporary directory %s left", e.Name())
			}
		}
	})
}

// TestSiteALossRecovery: three controllers as processes (c1 in a1, c2 in
// a2, c3 in b1, the remote-DR center, copying the state every 2 s), an
// agent in a1. Objects are made, a copy is taken, more objects are made;
// then site A goes (c1, c2 and the agent killed with SIGKILL) and c3 is
// killed too, as the remote center stops it to recover. `yunchid
// controller recover` rebuilds c3 in a new data dir, from the newest copy
// and, second, from c3's own data dir; each time c3 starts as the leader
// of a one-controller cluster. From the copy it holds every object made
// before the copy (objects made after it, by raft index, are gone); from
// its data dir every object c3 had applied. The test reports how many were
// lost, b1's replication lag, and the times.
func TestSiteALossRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	c := clustertest.New(t)
	c.ControllerArgs = func(string) []string { return []string{"--dr-snapshot-interval", "2s", "--dr-snapshot-keep", "4"} }
	c.StartControllers(3)
	c1, c3 := c.Controllers[0], c.Controllers[2]
	leader := func() string {
		var addr string
		apitest.Eventually(t, 30*time.Second, "a leader", func() bool {
			if l := c.Leader(); l != nil {
				addr = l.API
				return true
			}
			return false
		})
		return addr
	}
	// Centers and VMs are the sysadmin's to make, departments and projects
	// the security administrator's.
	secadmin := http.Header{"Authorization": {"Bearer " + c.Tokens.Secadmin}}
	doAs := func(h http.Header, method, path, body string) {
		t.Helper()
		apitest.Eventually(t, 30*time.Second, method+" "+path+" "+body, func() bool {
			code, b, err := apitest.DoWith(leader(), method, path, body, h)
			if err == nil && code != 200 && code != 409 && code != 503 {
				t.Fatalf("%s %s %s: %d %s", method, path, body, code, b)
			}
			return err == nil && (code == 200 || code == 409)
		})
	}
	for _, ce := range []struct{ name, site, role string }{{"a1", "a", "CENTER_ROLE_PRODUCTION"}, {"a2", "a", "CENTER_ROLE_SAME_CITY_DR"}, {"b1", "b", "CENTER_ROLE_REMOTE_DR"}} {
		doAs(nil, "PUT", "/v1/centers/"+ce.name, fmt.Sprintf(`{"site":%q,"role":%q}`, ce.site, ce.role))
	}
	agent := c.StartAgent("a1-h01", "a1", 64, 256<<30, 10<<40)
	apitest.Eventually(t, 30*time.Second, "host a1-h01 ready", func() bool {
		h, err := listHosts(c1.API)
		return err == nil && len(h.Hosts) == 1 && h.Hosts[0].State == yunchiv1.HostState_HOST_STATE_READY
	})
	doAs(secadmin, "POST", "/v1/departments", `{"name":"env"}`)
	commit := func() uint64 {
		st, err := apitest.Status(leader())
		if err != nil {
			t.Fatal(err)
		}
		return st.CommitIndex
	}
	// An object: a project and a VM in it, made through the leader.
	type object struct {
		name           string
		before, after  uint64 // the leader's commit index before and after its two writes
		beforeTheCopy  bool
		replicationLag uint64 // leader commit - c3 applied, right after it was made
	}
	var objects []*object
	make1 := func(name string) *object {
		o := &object{name: name, before: commit()}
		doAs(secadmin, "POST", "/v1/projects", fmt.Sprintf(`{"name":%q,"department":"env"}`, name))
		doAs(nil, "POST", "/v1/vms", fmt.Sprintf(`{"name":"vm-%s","project":%q,"vcpus":1,"memory":"512MiB","disk":"5GiB"}`, name, name))
		o.after = commit()
		if st, err := apitest.Status(c3.API); err == nil && o.after > st.AppliedIndex {
			o.replicationLag = o.after - st.AppliedIndex
		}
		objects = append(objects, o)
		return o
	}
	const nBefore, nAfter = 8, 12
	for i := range nBefore {
		make1(fmt.Sprintf("before-%d", i)).beforeTheCopy = true
	}
	// A copy that holds them all.
	copies := filepath.Join(c.DataDir(c3.ID), "dr-snapshots")
	need := objects[len(objects)-1].after
	var firstCopy *raftnode.CopyHeader
	apitest.Eventually(t, 30*time.Second, fmt.Sprintf("c3 to copy the state at index %d or later", need), func() bool {
		_, h, _, err := raftnode.NewestCopy(copies)
		firstCopy = h
		return err == nil && h.Index >= need
	})
	t.Logf("a copy at index %d (%d bytes) holds the %d objects made before it", firstCopy.Index, firstCopy.Size, nBefore)
	for i := range nAfter {
		make1(fmt.Sprintf("after-%d", i))
	}
	// Site A is lost; the remote center stops c3 to recover it.
	final, _ := apitest.Status(c3.API)
	leaderCommit := commit()
	c1.Kill()
	c.Controllers[1].Kill()
	agent.Kill()
	killedAt := time.Now()
	c3.Kill()
	var maxLag uint64
	for _, o := range objects {
		maxLag = max(maxLag, o.replicationLag)
	}
	t.Logf("at the loss: leader commit %d, c3 applied %d (lag %d entries); the largest lag seen right after a write: %d entries",
		leaderCommit, final.AppliedIndex, leaderCommit-final.AppliedIndex, maxLag)

	bin := clustertest.Binary(t)
	runCLI := func(args ...string) (string, time.Duration) {
		t.Helper()
		start := time.Now()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("yunchid %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), time.Since(start)
	}
	// start runs the recovered c3 on dir with its old addresses and waits
	// until it leads; it returns the time that took.
	start := func(dir string) (*daemon.Proc, time.Duration) {
		t.Helper()
		begin := time.Now()
		p, err := daemon.Start(bin, []string{"controller", "--id", c3.ID, "--center", "b1", "--data-dir", dir, "--listen", c3.API, "--raft-listen", c3.Raft,
			"--insecure", "--dr-snapshot-interval", "2s"}, dir+".log", false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		apitest.Eventually(t, 30*time.Second, "the recovered c3 to lead a one-voter cluster", func() bool {
			st, err := apitest.Status(c3.API)
			return err == nil && st.NodeState == "Leader" && len(st.Members) == 1 && st.Members[0].Id == c3.ID
		})
		return p, time.Since(begin)
	}
	has := func(o *object) bool {
		code, _, err := apitest.Do(c3.API, "GET", "/v1/projects/"+o.name, "")
		if err != nil {
			t.Fatal(err)
		}
		vcode, _, err := apitest.Do(c3.API, "GET", "/v1/vms/vm-"+o.name+"?project="+o.name, "")
		if err != nil {
			t.Fatal(err)
		}
		if (code == 200) != (vcode == 200) {
			// A copy cut between an object's two writes: say so.
			t.Logf("%s: project %d, VM %d", o.name, code, vcode)
		}
		return code == 200
	}
	write := func(name string) {
		t.Helper()
		code, b, err := apitest.DoWith(c3.API, "POST", "/v1/projects", fmt.Sprintf(`{"name":%q,"department":"env"}`, name), secadmin)
		if err != nil || code != 200 {
			t.Fatalf("a write to the recovered cluster: %d %s %v", code, b, err)
		}
	}

	t.Run("from the newest copy", func(t *testing.T) {
		_, h, _, err := raftnode.NewestCopy(copies)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "c3-recovered")
		out, took := runCLI("controller", "recover", "--data-dir", dir, "--from-snapshot", copies, "--insecure")
		t.Logf("recover (%v):\n%s", took, out)
		p, lead := start(dir)
		defer p.Stop()
		lost, kept := 0, 0
		for _, o := range objects {
			got := has(o)
			switch {
			case o.before >= h.Index && got: // made wholly after the copy's index
				t.Errorf("%s (made after index %d, past the copy's %d) is there", o.name, o.before, h.Index)
			case o.after <= h.Index && !got:
				t.Errorf("%s (committed by index %d, within the copy's %d) is missing", o.name, o.after, h.Index)
			}
			if got {
				kept++
			} else {
				lost++
			}
			if o.beforeTheCopy && !got {
				t.Errorf("%s, made before the copy was awaited, is missing", o.name)
			}
		}
		write("after-recovery-from-copy")
		t.Logf("from the copy at index %d, taken %v before the loss (%d bytes): %d of %d objects kept, %d made after it lost; recover took %v, start to leading %v",
			h.Index, killedAt.Sub(h.TakenAt).Round(time.Millisecond), h.Size, kept, len(objects), lost, took.Round(time.Millisecond), lead.Round(time.Millisecond))
	})
	t.Run("from c3's data dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "c3-recovered")
		out, took := runCLI("controller", "recover", "--data-dir", dir, "--from-data-dir", c.DataDir(c3.ID), "--id", c3.ID, "--insecure")
		t.Logf("recover (%v):\n%s", took, out)
		p, lead := start(dir)
		defer p.Stop()
		lost := 0
		for _, o := range objects {
			if !has(o) {
				lost++
				if o.after <= final.AppliedIndex {
					t.Errorf("%s (committed by index %d; c3 had applied %d) is missing", o.name, o.after, final.AppliedIndex)
				}
			}
		}
		write("after-recovery-from-data-dir")
		t.Logf("from c3's data dir: %d of %d objects kept, %d lost; recover took %v, start to leading %v", len(objects)-lost, len(objects), lost, took.Round(time.Millisecond), lead.Round(time.Millisecond))
	})
}
