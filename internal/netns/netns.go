//go:build linux

// Package netns gives tests a network of their own: one Linux network
// namespace per node (controller or host), all joined by a bridge that
// lives in a hub namespace, and faults on its links. It follows
// ../shared/testing/multihost.md and its network rule: nothing here ever
// gives an address to the root namespace or dials one of the nodes' private
// addresses from it. Processes run inside a node's namespace (Command);
// the test itself reaches the nodes from inside the hub namespace (Dial),
// so no packet to 10.213.0.0/24 ever leaves through the machine's own
// routes.
//
// Faults: Isolate takes a node's link down (silence both ways, as a pulled
// cable or a dead switch port); Cut blackholes the routes between two sets
// of nodes inside their namespaces (a partition between two sides, each
// side still reaching the hub). Heal undoes every fault. Close removes the
// namespaces, also of a harness that died before its cleanup ran (Sweep).
package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// prefix names every namespace this package makes: prefix + pid + "-" +
// node. Sweep removes those of pids that are gone.
const prefix = "ycnet"

// subnet is the nodes' network, inside the namespaces only. It is the same
// in every Net: two nets are two separate bridges that share nothing.
const subnet = "10.213.0."

// Available says why tests cannot make namespaces here ("" when they can):
// it needs root and iproute2's ip.
func Available() string {
	if os.Geteuid() != 0 {
		return "network namespaces need root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "network namespaces need iproute2's ip (apt-get install iproute2)"
	}
	return ""
}

// Net is one test's network: a hub namespace with a bridge, and nodes.
type Net struct {
	hub   string // name of the hub namespace
	hubFD int    // open handle on it, for Dial

	mu     sync.Mutex
	nodes  map[string]*Node
	cuts   map[[2]string]bool // blackholed pairs (from, to), both directions recorded
	closed bool
}

// Node is one namespace on the bridge.
type Node struct {
	Name string // as the test calls it, e.g. "c1", "h3"
	NS   string // namespace name
	IP   string // its address on the bridge
	veth string // its link's end in the hub, taken down by Isolate
	down bool
}

// Addr is the node's address with a port.
func (n *Node) Addr(port int) string { return net.JoinHostPort(n.IP, strconv.Itoa(port)) }

// New makes the hub namespace and its bridge. It first removes what a
// harness that was killed before its cleanup left behind.
func New() (*Net, error) {
	if why := Available(); why != "" {
		return nil, fmt.Errorf("netns: %s", why)
	}
	Sweep()
	n := &Net{hub: fmt.Sprintf("%s%d-hub", prefix, os.Getpid()), hubFD: -1, nodes: map[string]*Node{}, cuts: map[[2]string]bool{}}
	steps := [][]string{
		{"netns", "add", n.hub},
		{"-n", n.hub, "link", "set", "lo", "up"},
		{"-n", n.hub, "link", "add", "br0", "type", "bridge"},
		{"-n", n.hub, "addr", "add", subnet + "254/24", "dev", "br0"},
		{"-n", n.hub, "link", "set", "br0", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			n.Close()
			return nil, err
		}
	}
	fd, err := unix.Open("/run/netns/"+n.hub, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("netns: open hub namespace: %w", err)
	}
	n.hubFD = fd
	return n, nil
}

// Add makes a node's namespace, joined to the bridge (at most 250 nodes).
func (n *Net) Add(name string) (*Node, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("netns: closed")
	}
	if _, ok := n.nodes[name]; ok {
		return nil, fmt.Errorf("netns: node %q exists", name)
	}
	i := len(n.nodes) + 1
	if i > 250 {
		return nil, fmt.Errorf("netns: at most 250 nodes")
	}
	nd := &Node{Name: name, NS: fmt.Sprintf("%s%d-%s", prefix, os.Getpid(), name), IP: subnet + strconv.Itoa(i), veth: fmt.Sprintf("v%d", i)}
	steps := [][]string{
		{"netns", "add", nd.NS},
		{"-n", nd.NS, "link", "set", "lo", "up"},
		// Both ends are made inside their namespaces: the root namespace
		// never holds them, not even for a moment.
		{"link", "add", nd.veth, "netns", n.hub, "type", "veth", "peer", "name", "eth0", "netns", nd.NS},
		{"-n", n.hub, "link", "set", nd.veth, "master", "br0", "up"},
		{"-n", nd.NS, "addr", "add", nd.IP + "/24", "dev", "eth0"},
		{"-n", nd.NS, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			ip("netns", "del", nd.NS)
			return nil, err
		}
	}
	n.nodes[name] = nd
	return nd, nil
}

// Node returns a node by name (nil if none).
func (n *Net) Node(name string) *Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.nodes[name]
}

// Command returns the program and arguments that run bin with args inside
// the node's namespace (ip netns exec replaces itself with bin: the pid is
// bin's).
func (nd *Node) Command(bin string, args ...string) (string, []string) {
	return "ip", append([]string{"netns", "exec", nd.NS, bin}, args...)
}

// Dial connects from inside the hub namespace (the test's place on the
// bridge) to addr, a node's address. Its signature is net.Dialer's
// DialContext, for gRPC's WithContextDialer and http.Transport.
func (n *Net) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := inNamespace(n.hubFD, func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// inNamespace runs fn on a thread moved into the namespace nsFD. A socket
// belongs to the namespace of the thread that made it (socket(2)) and then
// works from any thread: so fn makes its sockets right there (a dial's
// socket and connect happen in the calling goroutine), and the thread goes
// back to its own namespace after.
func inNamespace(nsFD int, fn func() error) error {
	runtime.LockOSThread()
	self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: own namespace: %w", err)
	}
	defer unix.Close(self)
	if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: enter namespace: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
		// The thread stays locked, so the runtime ends it with this
		// goroutine instead of running other code in the wrong namespace.
		return fmt.Errorf("netns: leave namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// In runs fn inside node's namespace (see inNamespace: sockets fn makes
// stay there). Tests use it to listen or dial as the node would.
func (n *Net) In(node *Node, fn func() error) error {
	fd, err := unix.Open("/run/netns/"+node.NS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: open %s: %w", node.NS, err)
	}
	defer unix.Close(fd)
	return inNamespace(fd, fn)
}

// Isolate takes node's link down: nothing reaches it and nothing leaves it,
// silently (connections hang until they time out), as with a cable pulled.
func (n *Net) Isolate(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	nd := n.nodes[name]
	if nd == nil {
		return fmt.Errorf("netns: no node %q", name)
	}
	if err := ip("-n", n.hub, "link", "set", nd.veth, "down"); err != nil {
		return err
	}
	nd.down = true
	return nil
}

// Cut partitions side a from side b: inside each node's namespace a
// blackhole route to every node of the other side. Each side still reaches
// its own members and the hub (the test's clients). New connections across
// the cut fail at once; open ones hang, as with a dead link.
func (n *Net) Cut(a, b []string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, x := range a {
		for _, y := range b {
			for _, p := range [][2]string{{x, y}, {y, x}} {
				if n.cuts[p] {
					continue
				}
				from, to := n.nodes[p[0]], n.nodes[p[1]]
				if from == nil || to == nil {
					return fmt.Errorf("netns: no node %q or %q", p[0], p[1])
				}
				if err := ip("-n", from.NS, "route", "add", "blackhole", to.IP+"/32"); err != nil {
					return err
				}
				n.cuts[p] = true
			}
		}
	}
	return nil
}

// Heal undoes every Isolate and Cut.
func (n *Net) Heal() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var first error
	keep := func(err error) {
		if first == nil {
			first = err
		}
	}
	for p := range n.cuts {
		from, to := n.nodes[p[0]], n.nodes[p[1]]
		if err := ip("-n", from.NS, "route", "del", "blackhole", to.IP+"/32"); err != nil {
			keep(err)
			continue
		}
		delete(n.cuts, p)
	}
	for _, nd := range n.nodes {
		if nd.down {
			if err := ip("-n", n.hub, "link", "set", nd.veth, "up"); err != nil {
				keep(err)
				continue
			}
			nd.down = false
		}
	}
	return first
}

// Faults describes the faults in place ("" when none), for logs.
func (n *Net) Faults() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, nd := range n.nodes {
		if nd.down {
			out = append(out, nd.Name+" isolated")
		}
	}
	for p := range n.cuts {
		if p[0] < p[1] {
			out = append(out, p[0]+"-/-"+p[1])
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// Close removes every namespace of this net (their links go with them).
// Processes still running inside keep their namespace alive until they
// end: stop them first.
func (n *Net) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	if n.hubFD >= 0 {
		unix.Close(n.hubFD)
	}
	var first error
	for _, nd := range n.nodes {
		if err := ip("netns", "del", nd.NS); err != nil && first == nil {
			first = err
		}
	}
	if err := ip("netns", "del", n.hub); err != nil && first == nil {
		first = err
	}
	return first
}

// Sweep removes the namespaces of nets whose process is gone (a test
// binary killed by its timeout runs no cleanup).
func Sweep() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		pidText, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if unix.Kill(pid, 0) == unix.ESRCH {
			ip("netns", "del", name)
		}
	}
}

// ip runs iproute2's ip; its error carries ip's own message.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
