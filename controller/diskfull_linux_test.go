package controller

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/yunchi/yunchi/internal/apitest"
)

const tmpfsSize = 8 << 20

// mountTmpfs mounts a small tmpfs on a new dir under the test's temp dir
// (see apitest.MountTmpfs).
func mountTmpfs(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "disk")
	apitest.MountTmpfs(t, dir, tmpfsSize)
	return dir
}

// TestFullDataDiskRecovers: one controller's data disk (a small tmpfs)
// fills up while VMs keep being created. It says so (cluster status,
// /healthz 503, gRPC health NOT_SERVING, the metric), refuses local reads
// with UNAVAILABLE, and a leader steps down; the other two go on. Once the
// filler is removed it recovers by itself, without a restart: it applies
// everything the leader committed, serves reads again with the same VMs,
// and no acknowledged create is lost. Before the fix it stayed wedged
// ("segment is sealed" / "non-monotonic append") with stale state.
func TestFullDataDiskRecovers(t *testing.T) {
	for _, role := range []string{"follower", "leader"} {
		t.Run(role, func(t *testing.T) { testFullDisk(t, role) })
	}
}

func testFullDisk(t *testing.T, role string) {
	c := &inmemCluster{t: t, segSize: 64 << 10} // ~200 entries per preallocated segment
	for _, id := range []string{"a1", "a2", "b1"} {
		c.members = append(c.members, &member{id: id, center: id, dir: mountTmpfs(t)})
	}
	c.form(nil)
	victim := c.leader()
	if role == "follower" {
		victim = c.members[2]
		if victim == c.leader() {
			victim = c.members[1]
		}
	}
	if victim == nil {
		t.Fatal("no leader")
	}
	var others []*member
	for _, m := range c.members {
		if m != victim {
			others = append(others, m)
		}
	}
	registerHosts(t, others[0].ctl.Addr(), 6, 256, 4096*gib)

	acked := map[string]bool{}
	n := 0
	// create makes one VM through the controllers that have room, retrying
	// while leadership moves, and records it when acknowledged.
	create := func() {
		t.Helper()
		name := fmt.Sprintf("vm-%04d", n)
		n++
		body := fmt.Sprintf(`{"name":%q,"vcpus":1,"memory":"1GiB","disk":"1GiB"}`, name)
		for attempt := 0; attempt < 100; attempt++ {
			code, resp, err := apitest.Post(others[attempt%2].ctl.Addr(), "/v1/vms", body)
			if err == nil && code == 200 {
				acked[name] = true
				return
			}
			if err == nil && code == 409 {
				return // applied, but its answer was lost: not acknowledged
			}
			if err == nil && code != 503 {
				t.Fatalf("create %s: %d %s", name, code, resp)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("create %s: no answer but 503 after 100 attempts", name)
	}

	filler := apitest.FillDisk(t, victim.dir)
	vaddr := victim.ctl.Addr()
	failing := func() bool {
		st, err := apitest.Status(vaddr)
		return err == nil && st.LogStoreError != ""
	}
	for i := 0; i < 1500 && !failing(); i++ {
		create()
	}
	if !failing() {
		t.Fatalf("%s never reported a failed raft log write after %d creates on a full disk", victim.id, n)
	}
	apitest.Eventually(t, 20*time.Second, victim.id+" to report no space left on device", func() bool {
		st, err := apitest.Status(vaddr)
		return err == nil && strings.Contains(st.LogStoreError, "no space left on device") && st.LogStoreFailingSince != nil
	})
	if role == "leader" {
		apitest.Eventually(t, 20*time.Second, "another controller to lead", func() bool {
			l := c.leader()
			return l != nil && l != victim
		})
	}
	// The others go on while the victim cannot write.
	for range 20 {
		create()
	}
	if !failing() {
		t.Fatalf("%s reports a healthy log store while its disk is still full", victim.id)
	}
	code, body := apitest.Get(t, vaddr, "/healthz")
	if code != 503 || !strings.Contains(string(body), "cannot write its raft log since") {
		t.Errorf("/healthz on %s with a full disk = %d %.200q; want 503 saying it cannot write its raft log", victim.id, code, body)
	}
	code, body = apitest.Get(t, vaddr, "/v1/vms")
	if code != 503 || !strings.Contains(string(body), "its state may be stale: use another controller") {
		t.Errorf("GET /v1/vms on %s with a full disk = %d %.200s; want 503 saying its state may be stale", victim.id, code, body)
	}
	if m := metric(t, vaddr, "yunchi_raft_log_store_healthy"); m != "0" {
		t.Errorf("yunchi_raft_log_store_healthy on %s with a full disk = %q, want 0", victim.id, m)
	}
	hc := healthpb.NewHealthClient(dial(t, vaddr))
	apitest.Eventually(t, 10*time.Second, "gRPC health NOT_SERVING on "+victim.id, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && r.Status == healthpb.HealthCheckResponse_NOT_SERVING
	})

	// Space returns: the victim recovers by itself (same process, no restart).
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	create() // something to replicate, in case the cluster is idle
	apitest.Eventually(t, 60*time.Second, victim.id+" to write its log again and catch up", func() bool {
		return !failing() && apitest.Converged([]string{c.members[0].ctl.Addr(), c.members[1].ctl.Addr(), c.members[2].ctl.Addr()})
	})
	code, body = apitest.Get(t, vaddr, "/healthz")
	if code != 200 {
		t.Errorf("/healthz on %s after recovery = %d %q; want 200", victim.id, code, body)
	}
	if m := metric(t, vaddr, "yunchi_raft_log_store_healthy"); m != "1" {
		t.Errorf("yunchi_raft_log_store_healthy on %s after recovery = %q, want 1", victim.id, m)
	}
	if m := metric(t, vaddr, "yunchi_raft_log_store_recoveries_total"); m == "0" || m == "" {
		t.Errorf("yunchi_raft_log_store_recoveries_total on %s after recovery = %q, want at least 1", victim.id, m)
	}
	apitest.Eventually(t, 10*time.Second, "gRPC health SERVING on "+victim.id, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && r.Status == healthpb.HealthCheckResponse_SERVING
	})
	want := vmCount(t, others[0].ctl.Addr())
	if got := vmCount(t, vaddr); got != want || got < len(acked) {
		t.Errorf("%s lists %d VMs after recovery, %s lists %d; %d were acknowledged", victim.id, got, others[0].id, want, len(acked))
	}
	for _, m := range c.members {
		checkInvariants(t, m.ctl.Addr(), acked)
	}
}

func vmCount(t *testing.T, addr string) int {
	t.Helper()
	return len(listVMs(t, addr).Vms)
}

// metric is the value of an unlabelled series on addr's /metrics ("" when
// absent).
func metric(t *testing.T, addr, name string) string {
	t.Helper()
	code, body := apitest.Get(t, addr, "/metrics")
	if code != 200 {
		t.Fatalf("%s/metrics: %d", addr, code)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}
