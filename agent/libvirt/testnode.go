package libvirt

import (
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"libvirt.org/go/libvirtxml"
)

// TestNode describes a simulated host for libvirt's test driver: a file
// written by WriteTestNodeXML and opened with the URI it returns,
// test:///ABS/PATH/node.xml. Each
// connection to that URI is a fresh host built from the file; its state
// (domains defined, started, ...) lives in that connection only.
type TestNode struct {
	// CPUs is the number of logical CPUs (required).
	CPUs int
	// CPUModel is what NodeGetInfo reports as model (at most 31 bytes);
	// default "yunchi-sim".
	CPUModel string
	// MHz defaults to 2400.
	MHz int
	// Topology; zero values mean one NUMA node, one socket, CPUs cores, one
	// thread. Their product must be at least CPUs.
	NUMANodes, Sockets, Cores, Threads int
	// MemoryBytes is the host memory (required, whole KiB).
	MemoryBytes int64
	// Pools are storage pools to create, active. The test driver reports
	// 100 GiB for every pool whatever the file says.
	Pools []TestPool
}

// TestPool is a directory storage pool of a TestNode.
type TestPool struct {
	Name string
	// Path defaults to /var/lib/yunchi/<Name>; nothing is created there.
	Path string
}

// testNodeXML is the test driver's <node> document. Pools reuse libvirtxml's
// storage pool type; the node and cpu elements have no libvirtxml type.
type testNodeXML struct {
	XMLName xml.Name                 `xml:"node"`
	CPU     testNodeCPU              `xml:"cpu"`
	Memory  int64                    `xml:"memory"`
	Pools   []libvirtxml.StoragePool `xml:"pool"`
}

type testNodeCPU struct {
	MHz     int    `xml:"mhz"`
	Model   string `xml:"model"`
	Active  int    `xml:"active"`
	Max     int    `xml:"max"`
	Nodes   int    `xml:"nodes"`
	Sockets int    `xml:"sockets"`
	Cores   int    `xml:"cores"`
	Threads int    `xml:"threads"`
}

// WriteTestNodeXML writes spec as a libvirt test-driver node file at path
// and returns the URI that opens it, test:///ABS/PATH (a relative path is
// made absolute: libvirt would read its first element as a host name).
func WriteTestNodeXML(path string, spec TestNode) (uri string, err error) {
	doc, err := testNodeDocument(spec)
	if err != nil {
		return "", err
	}
	b, err := xml.MarshalIndent(doc, "", "  ")
	if err != nil {
		return "", fmt.Errorf("test node xml: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("test node xml: %w", err)
	}
	b = append([]byte(xml.Header), append(b, '\n')...)
	if err := os.WriteFile(abs, b, 0o644); err != nil {
		return "", err
	}
	return "test://" + abs, nil
}

func testNodeDocument(spec TestNode) (*testNodeXML, error) {
	if spec.CPUs <= 0 {
		return nil, fmt.Errorf("test node: %d cpus, must be > 0", spec.CPUs)
	}
	if spec.MemoryBytes < 1024 || spec.MemoryBytes%1024 != 0 {
		return nil, fmt.Errorf("test node: memory %d bytes, must be a positive whole number of KiB", spec.MemoryBytes)
	}
	model := spec.CPUModel
	if model == "" {
		model = "yunchi-sim"
	}
	if len(model) > 31 { // virNodeInfo.model is char[32]
		return nil, fmt.Errorf("test node: cpu model %q longer than 31 bytes", model)
	}
	cpu := testNodeCPU{
		MHz: spec.MHz, Model: model, Active: spec.CPUs, Max: spec.CPUs,
		Nodes: spec.NUMANodes, Sockets: spec.Sockets, Cores: spec.Cores, Threads: spec.Threads,
	}
	if cpu.MHz == 0 {
		cpu.MHz = 2400
	}
	if cpu.Nodes == 0 {
		cpu.Nodes = 1
	}
	if cpu.Sockets == 0 {
		cpu.Sockets = 1
	}
	if cpu.Threads == 0 {
		cpu.Threads = 1
	}
	if cpu.Cores == 0 {
		cpu.Cores = (spec.CPUs + cpu.Nodes*cpu.Sockets*cpu.Threads - 1) / (cpu.Nodes * cpu.Sockets * cpu.Threads)
	}
	// The test driver reports min(active, nodes*sockets*cores*threads).
	if n := cpu.Nodes * cpu.Sockets * cpu.Cores * cpu.Threads; n < spec.CPUs {
		return nil, fmt.Errorf("test node: topology %dx%dx%dx%d holds %d cpus, fewer than %d",
			cpu.Nodes, cpu.Sockets, cpu.Cores, cpu.Threads, n, spec.CPUs)
	}
	doc := &testNodeXML{CPU: cpu, Memory: spec.MemoryBytes / 1024}
	seen := map[string]bool{}
	for _, p := range spec.Pools {
		if p.Name == "" {
			return nil, errors.New("test node: pool without a name")
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("test node: pool %q twice", p.Name)
		}
		seen[p.Name] = true
		path := p.Path
		if path == "" {
			path = "/var/lib/yunchi/" + p.Name
		}
		doc.Pools = append(doc.Pools, libvirtxml.StoragePool{
			Type:   "dir",
			Name:   p.Name,
			Target: &libvirtxml.StoragePoolTarget{Path: path},
		})
	}
	return doc, nil
}
