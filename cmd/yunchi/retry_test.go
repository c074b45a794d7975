package main

import (
	"strings"
	"testing"
	"time"
)

const progressLine = "yunchi: no leader (election in progress): retrying for up to 20s…\n"

// TestElectionRetry: with several --addr, calls go round the controllers
// again while they answer "no leader", with one progress line on stderr,
// until one takes the call or the bound passes; creates are sent again only
// when the answer says nothing was proposed.
func TestElectionRetry(t *testing.T) {
	t.Run("read waits for the election", func(t *testing.T) {
		a, b := startFake(t), startFake(t)
		a.electing(2, false)
		b.electing(2, false)
		code, stdout, stderr := yunchi(t, "--addr", a.addr+","+b.addr, "vm", "list")
		if code != 0 || !strings.Contains(stdout, "web-1") {
			t.Fatalf("exit %d stdout %q stderr %q", code, stdout, stderr)
		}
		if stderr != progressLine {
			t.Errorf("stderr %q, want the one progress line", stderr)
		}
		if n := a.callCount("ListVMs") + b.callCount("ListVMs"); n != 5 {
			t.Errorf("%d ListVMs calls, want 4 refused and 1 answered", n)
		}
	})
	t.Run("stop waits for the election", func(t *testing.T) {
		a, b := startFake(t), startFake(t)
		a.electing(3, false)
		b.electing(3, false)
		code, _, stderr := yunchi(t, "--addr", a.addr+","+b.addr, "vm", "stop", "web-1")
		if code != 0 || stderr != progressLine {
			t.Fatalf("exit %d stderr %q", code, stderr)
		}
	})
	t.Run("create sent again after not proposed", func(t *testing.T) {
		a, b := startFake(t), startFake(t)
		a.electing(2, true)
		b.electing(2, true)
		code, _, stderr := yunchi(t, "--addr", a.addr+","+b.addr, "vm", "create", "web-7")
		if code != 0 || stderr != progressLine {
			t.Fatalf("exit %d stderr %q", code, stderr)
		}
		a.mu.Lock()
		_, onA := a.vms["web-7"]
		a.mu.Unlock()
		b.mu.Lock()
		_, onB := b.vms["web-7"]
		b.mu.Unlock()
		if onA == onB {
			t.Errorf("web-7 created on a: %v, on b: %v; want exactly one", onA, onB)
		}
	})
	t.Run("create sent again with the same key after an ambiguous answer", func(t *testing.T) {
		a, b := startFake(t), startFake(t)
		a.electing(1, false) // an UNAVAILABLE that may come after raft took the request
		code, _, stderr := yunchi(t, "--addr", a.addr+","+b.addr, "vm", "create", "web-8")
		if code != 0 || a.callCount("CreateVM") != 1 || b.callCount("CreateVM") != 1 {
			t.Fatalf("exit %d, creates a %d b %d: %s", code, a.callCount("CreateVM"), b.callCount("CreateVM"), stderr)
		}
		a.mu.Lock()
		b.mu.Lock()
		ka, kb := a.keys, b.keys
		b.mu.Unlock()
		a.mu.Unlock()
		if len(ka) != 1 || len(kb) != 1 || ka[0] == "" || ka[0] != kb[0] {
			t.Fatalf("idempotency keys: first send %q, resend %q; want one key, the same", ka, kb)
		}
		// The next command is another request: another key.
		if code, _, stderr := yunchi(t, "--addr", b.addr, "vm", "create", "web-9"); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if len(b.keys) != 2 || b.keys[1] == "" || b.keys[1] == kb[0] {
			t.Fatalf("keys of two commands: %q; want two different keys", b.keys)
		}
	})
	t.Run("join not sent again after an ambiguous answer", func(t *testing.T) {
		a, b := startFake(t), startFake(t)
		a.electing(1, false)
		code, _, stderr := yunchi(t, "--addr", a.addr+","+b.addr, "cluster", "join", "--id", "c4", "--raft-addr", "10.0.0.4:8471", "--api-addr", "10.0.0.4:8470")
		if code != 6 || a.callCount("JoinCluster") != 1 || b.callCount("JoinCluster") != 0 {
			t.Fatalf("exit %d, joins a %d b %d: %s", code, a.callCount("JoinCluster"), b.callCount("JoinCluster"), stderr)
		}
		if got := oneErrorLine(t, stderr); got != "no leader: election in progress" {
			t.Errorf("message %q", got)
		}
	})
	t.Run("bounded by --timeout", func(t *testing.T) {
		a, b := startFake(t), startFake(t)
		a.setUnavailable(true)
		b.setUnavailable(true)
		code, _, stderr := yunchi(t, "--addr", a.addr+","+b.addr, "--timeout", "1s", "vm", "list")
		if code != 6 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		progress, last, ok := strings.Cut(stderr, "\n")
		if !ok || progress+"\n" != strings.Replace(progressLine, "20s", "1s", 1) {
			t.Fatalf("stderr %q: want the progress line, then the error", stderr)
		}
		got := oneErrorLine(t, last)
		if want := "no leader within 1s: " + a.addr + ": no leader: election in progress; " + b.addr + ": no leader: election in progress"; got != want {
			t.Errorf("message %q, want %q", got, want)
		}
	})
	t.Run("one address: no waiting", func(t *testing.T) {
		a := startFake(t)
		a.electing(1, true)
		code, _, stderr := yunchi(t, "--addr", a.addr, "vm", "list")
		if code != 6 || oneErrorLine(t, stderr) != "no leader: election in progress" || a.callCount("ListVMs") != 1 {
			t.Fatalf("exit %d, %d calls: %s", code, a.callCount("ListVMs"), stderr)
		}
	})
	t.Run("removed controller passed over", func(t *testing.T) {
		r, f := startFake(t), startFake(t)
		r.mu.Lock()
		r.removed = true
		r.mu.Unlock()
		code, _, stderr := yunchi(t, "--addr", r.addr+","+f.addr, "vm", "create", "web-9")
		if code != 0 || stderr != "" || f.callCount("CreateVM") != 1 {
			t.Fatalf("exit %d, %d creates on the member: %s", code, f.callCount("CreateVM"), stderr)
		}
		code, _, stderr = yunchi(t, "--addr", r.addr, "vm", "list")
		if got := oneErrorLine(t, stderr); code != 7 || got != "controller c9 was removed from the cluster; use one of: 10.0.0.1:8470" {
			t.Fatalf("exit %d: %q", code, got)
		}
	})
}

// TestRetryRoundsFollowAnElectionClosely: whenever the new leader is in
// place during the retries, the next round over the controllers comes
// within retryMaxWait (300 ms) of it, so the CLI adds little to a failover
// of 0.5–1.5 s; with waits doubling to 1 s it added up to a second.
func TestRetryRoundsFollowAnElectionClosely(t *testing.T) {
	var rounds []time.Duration // when each round starts, from the first
	at, w := time.Duration(0), retryFirstWait
	for at < electionWait {
		rounds = append(rounds, at)
		at += w
		w = nextRetryWait(w)
	}
	for elected := time.Duration(0); elected < 5*time.Second; elected += 10 * time.Millisecond {
		i := 0
		for i < len(rounds) && rounds[i] < elected {
			i++
		}
		if i == len(rounds) {
			t.Fatalf("no round after %s", elected)
		}
		if lag := rounds[i] - elected; lag > retryMaxWait {
			t.Fatalf("a leader elected %s after the first try is found %s later, want at most %s", elected, lag, retryMaxWait)
		}
	}
}
