//go:build linux

package netns

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// serve listens inside node's namespace on port and answers each
// connection with the node's name.
func serve(t *testing.T, n *Net, nd *Node, port int) {
	t.Helper()
	var l net.Listener
	if err := n.In(nd, func() (err error) { l, err = net.Listen("tcp", nd.Addr(port)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, nd.Name)
			c.Close()
		}
	}()
}

// ask dials addr with dial and returns what the peer said.
func ask(dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestNetFaults: nodes reach each other and are reached from the hub;
// Cut separates two sides (and only them), Isolate silences one node,
// Heal restores everything, Close removes every namespace.
func TestNetFaults(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	n, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
		entries, _ := os.ReadDir("/run/netns")
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), n.hub[:len(n.hub)-len("hub")]) {
				t.Errorf("namespace %s left behind", e.Name())
			}
		}
	}()
	var nodes []*Node
	for _, name := range []string{"a", "b", "c"} {
		nd, err := n.Add(name)
		if err != nil {
			t.Fatal(err)
		}
		serve(t, n, nd, 7000)
		nodes = append(nodes, nd)
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	from := func(nd *Node) func(ctx context.Context, network, addr string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = n.In(nd, func() error {
				var d net.Dialer
				var err error
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}
	}
	reach := func(dial func(ctx context.Context, network, addr string) (net.Conn, error), to *Node) bool {
		got, err := ask(dial, to.Addr(7000))
		return err == nil && got == to.Name
	}
	for _, to := range nodes {
		if !reach(n.Dial, to) {
			t.Fatalf("hub cannot reach %s", to.Name)
		}
	}
	if !reach(from(a), b) || !reach(from(b), c) {
		t.Fatal("nodes cannot reach each other")
	}

	if err := n.Cut([]string{"a"}, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	if reach(from(a), b) || reach(from(b), a) {
		t.Error("a and b still reach each other across the cut")
	}
	if !reach(from(a), c) || !reach(from(c), b) || !reach(n.Dial, a) {
		t.Error("the cut between a and b also cut others")
	}
	if got := n.Faults(); got != "a-/-b" {
		t.Errorf("Faults() = %q", got)
	}

	if err := n.Isolate("c"); err != nil {
		t.Fatal(err)
	}
	if reach(n.Dial, c) || reach(from(a), c) {
		t.Error("an isolated node is still reached")
	}

	if err := n.Heal(); err != nil {
		t.Fatal(err)
	}
	if n.Faults() != "" {
		t.Errorf("faults left after Heal: %s", n.Faults())
	}
	for _, to := range nodes {
		if !reach(n.Dial, to) {
			t.Errorf("hub cannot reach %s after Heal", to.Name)
		}
	}
	if !reach(from(a), b) || !reach(from(b), a) || !reach(from(a), c) {
		t.Error("nodes do not reach each other after Heal")
	}
}
