package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/yunchi/yunchi/controller"
	"github.com/yunchi/yunchi/internal/apitest"
	"github.com/yunchi/yunchi/internal/daemon"
)

// proc is one yunchid controller process started by the benchmark.
type proc struct {
	id, center, api, raft, dataDir, logPath string
	args                                    []string
	d                                       *daemon.Proc
}

func (p *proc) start(bin string) error {
	d, err := daemon.Start(bin, p.args, p.logPath, true)
	if err != nil {
		return fmt.Errorf("controller %s: %w", p.id, err)
	}
	p.d = d
	return nil
}

func (p *proc) running() bool { return p.d.Running() }

// kill sends SIGKILL by pid and waits for the process to end.
func (p *proc) kill() { p.d.Kill() }

// stop sends SIGTERM, then SIGKILL after 10 s.
func (p *proc) stop() { p.d.Stop() }

// cpuSeconds is the process's user+system CPU time from /proc/<pid>/stat.
func (p *proc) cpuSeconds() (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.d.Pid()))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc stat format")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc stat format")
	}
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unexpected /proc stat format")
	}
	const clkTck = 100 // USER_HZ, 100 on every Linux architecture Go supports here
	return float64(ut+st) / clkTck, nil
}

// rssBytes is the process's resident set from /proc/<pid>/statm.
func (p *proc) rssBytes() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", p.d.Pid()))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("unexpected statm format")
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize()), err
}

type cluster struct {
	bin, dir string
	ctls     []*proc
	// tokens are the administrators' tokens the first controller wrote
	// to its data dir: the load clients and the status calls act as the
	// sysadmin, host tokens are made as the secadmin.
	tokens controller.AdminTokens
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startCluster starts n controllers on loopback: the first bootstraps, the
// others join it with the sysadmin's token it wrote; it waits until every
// one knows n voters and a leader. The apitest helpers (status calls) send
// the sysadmin's token from then on.
func startCluster(ctx context.Context, bin, dir string, n int) (*cluster, error) {
	c := &cluster{bin: bin, dir: dir}
	centers := []string{"a1", "a2", "b1"}
	for i := 0; i < n; i++ {
		api, err := freePort()
		if err != nil {
			return c, err
		}
		rft, err := freePort()
		if err != nil {
			return c, err
		}
		p := &proc{id: fmt.Sprintf("c%d", i+1), center: centers[i%3], api: api, raft: rft}
		p.dataDir = filepath.Join(dir, p.id)
		p.logPath = filepath.Join(dir, p.id+".log")
		p.args = []string{"--log-level", "info", "controller", "--id", p.id, "--center", p.center,
			"--listen", api, "--raft-listen", rft, "--data-dir", p.dataDir,
			"--insecure",        // the benchmark measures the write path as before: plaintext on loopback
			"--rate-limit", "0"} // and its load clients share one token: no per-token limit
		if i == 0 {
			p.args = append(p.args, "--bootstrap")
		} else {
			p.args = append(p.args, "--join", c.ctls[0].api, "--join-token", c.tokens.Sysadmin)
		}
		if err := p.start(bin); err != nil {
			return c, err
		}
		c.ctls = append(c.ctls, p)
		if i == 0 {
			toks, err := daemon.WaitAdminTokens(ctx, p.d, p.dataDir, 60*time.Second)
			if err != nil {
				return c, fmt.Errorf("controller %s: %w", p.id, err)
			}
			c.tokens = toks
			apitest.SetToken(toks.Sysadmin)
			// The others join through the first: wait until it leads.
			if err := c.waitFormed(ctx, 1, 60*time.Second); err != nil {
				return c, err
			}
		}
	}
	return c, c.waitFormed(ctx, n, 60*time.Second)
}

func (c *cluster) stopAll() {
	for _, p := range c.ctls {
		p.stop()
	}
}

func (c *cluster) killAll() {
	for _, p := range c.ctls {
		p.kill()
	}
}

func (c *cluster) alive() []*proc {
	var out []*proc
	for _, p := range c.ctls {
		if p.running() {
			out = append(out, p)
		}
	}
	return out
}

func (c *cluster) apis() []string {
	var out []string
	for _, p := range c.ctls {
		out = append(out, p.api)
	}
	return out
}

// leader returns the live controller that says it leads, or nil.
func (c *cluster) leader() *proc {
	for _, p := range c.alive() {
		if st, err := apitest.Status(p.api); err == nil && st.NodeState == "Leader" {
			return p
		}
	}
	return nil
}

// waitFormed waits until every live controller reports n members with API
// addresses and a leader, and has applied what is committed.
func (c *cluster) waitFormed(ctx context.Context, n int, d time.Duration) error {
	return apitest.Poll(ctx, d, fmt.Sprintf("%d voters and a leader", n), func() bool {
		var addrs []string
		for _, p := range c.alive() {
			st, err := apitest.Status(p.api)
			if err != nil || !apitest.Formed(st, n) {
				return false
			}
			addrs = append(addrs, p.api)
		}
		return apitest.Converged(addrs)
	})
}

// waitLeader waits for a live leader and returns it.
func (c *cluster) waitLeader(ctx context.Context, d time.Duration) (*proc, error) {
	var l *proc
	err := apitest.Poll(ctx, d, "a leader", func() bool { l = c.leader(); return l != nil })
	return l, err
}
