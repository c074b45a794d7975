package libvirt

import (
	"context"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
)

// openTestNode writes spec to a temp dir and opens it with the test driver.
func openTestNode(t *testing.T, spec TestNode) (*Driver, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.xml")
	uri, err := WriteTestNodeXML(path, spec)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, uri
}

func TestNodeFactsFromTestNodeXML(t *testing.T) {
	d, uri := openTestNode(t, TestNode{
		CPUs: 24, CPUModel: "Yunchi-Test-CPU", Sockets: 2, Cores: 6, Threads: 2,
		MemoryBytes: 96 << 30,
		Pools:       []TestPool{{Name: "images"}, {Name: "scratch"}},
	})
	f, err := d.NodeFacts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if f.VCPUs != 24 || f.MemoryBytes != 96<<30 || f.CPUModel != "Yunchi-Test-CPU" || f.Hostname == "" {
		t.Errorf("facts = %+v", f)
	}
	// The hypervisor is libvirt's test driver; libvirt's version is the
	// library's, three numbers.
	if !strings.HasPrefix(f.Hypervisor, "TEST") || !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(f.LibvirtVersion) {
		t.Errorf("hypervisor %q, libvirt version %q", f.Hypervisor, f.LibvirtVersion)
	}
	// Every test-driver pool reports 100 GiB.
	if f.DiskBytes != 2*100<<30 {
		t.Errorf("disk = %d, want two pools of 100 GiB", f.DiskBytes)
	}

	// The file is what libvirt's own tools read too.
	if virsh, err := exec.LookPath("virsh"); err == nil {
		out, err := exec.Command(virsh, "-c", uri, "nodeinfo").CombinedOutput()
		if err != nil {
			t.Fatalf("virsh nodeinfo: %v\n%s", err, out)
		}
		for _, want := range []string{"CPU(s):              24", "Memory size:         100663296 KiB", "Yunchi-Test-CPU"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("virsh nodeinfo lacks %q:\n%s", want, out)
			}
		}
	}
}

func TestWriteTestNodeXMLRejectsBadSpecs(t *testing.T) {
	dir := t.TempDir()
	for name, spec := range map[string]TestNode{
		"no cpus":        {MemoryBytes: 1 << 30},
		"no memory":      {CPUs: 2},
		"partial KiB":    {CPUs: 2, MemoryBytes: 1<<30 + 1},
		"small topology": {CPUs: 8, Sockets: 1, Cores: 2, Threads: 2},
		"long model":     {CPUs: 2, MemoryBytes: 1 << 30, CPUModel: strings.Repeat("x", 32)},
		"unnamed pool":   {CPUs: 2, MemoryBytes: 1 << 30, Pools: []TestPool{{}}},
	} {
		if _, err := WriteTestNodeXML(filepath.Join(dir, "n.xml"), spec); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A relative path (yunchid dev --data-dir rel/dir) still gives a URI that
// opens the file, not one naming a remote host "rel".
func TestWriteTestNodeXMLRelativePath(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.Mkdir("rel", 0o700); err != nil {
		t.Fatal(err)
	}
	uri, err := WriteTestNodeXML(filepath.Join("rel", "node.xml"), TestNode{CPUs: 3, MemoryBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if f, err := d.NodeFacts(context.Background()); err != nil || f.VCPUs != 3 {
		t.Errorf("%s: facts %+v, err %v", uri, f, err)
	}
}

func TestDomainUUIDAndName(t *testing.T) {
	const id = "0B5D4A6E-1F5E-4F55-9B66-5D8A3D8F2B11"
	if got := domainUUID(id); got != strings.ToLower(id) {
		t.Errorf("uuid of a uuid id = %s", got)
	}
	if got := domainName(id); got != "yunchi-"+strings.ToLower(id) {
		t.Errorf("name = %s", got)
	}
	// Ids that are not UUIDs get a stable name-based UUID, and a name with no
	// trace of the (possibly hostile) id text.
	a, b := domainUUID("vm-1"), domainUUID("vm-2")
	if a == b || a != domainUUID("vm-1") {
		t.Errorf("derived uuids not stable/distinct: %s %s", a, b)
	}
	if u, err := uuid.Parse(a); err != nil || u.Version() != 5 || a[14] != '5' {
		t.Errorf("derived uuid %s is not a version 5 uuid", a)
	}
	// Pinned: a changed derivation would orphan the domains of existing VMs.
	// Only the 36-character form is taken as a UUID.
	for id, want := range map[string]string{
		"vm-1":                             "79fc2f14-6ecc-5477-b84f-762be81fb6c1",
		"0b5d4a6e1f5e4f559b665d8a3d8f2b11": "63243afe-68cd-5fb2-bb76-add446fadd08",
	} {
		if got := domainUUID(id); got != want {
			t.Errorf("domainUUID(%q) = %s, want %s", id, got, want)
		}
	}
	if n := domainName("../<evil>'\""); strings.ContainsAny(n, "/<>'\" ") {
		t.Errorf("unsafe name %q", n)
	}
}

func TestDomainXMLIsLibvirtXML(t *testing.T) {
	spec := agent.DomainSpec{VMID: "vm-<1>&", Project: "p&q", Name: "web<1>", VCPUs: 2, MemoryBytes: 512<<20 + 1, RebootSeq: 4}
	doc, err := DomainXML("kvm", spec, Devices{})
	if err != nil {
		t.Fatal(err)
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(doc); err != nil {
		t.Fatalf("unmarshal: %v\n%s", err, doc)
	}
	if dom.Type != "kvm" || dom.UUID != domainUUID(spec.VMID) || dom.VCPU.Value != 2 || dom.Memory.Value != 512*1024+1 {
		t.Errorf("domain = %+v", dom)
	}
	if !strings.Contains(dom.Metadata.XML, MetadataNamespace) || !strings.Contains(dom.Metadata.XML, "vm-&lt;1&gt;&amp;") {
		t.Errorf("metadata = %s", dom.Metadata.XML)
	}
	for _, bad := range []agent.DomainSpec{
		{VMID: "", VCPUs: 1, MemoryBytes: 1 << 20},
		{VMID: "a", VCPUs: 0, MemoryBytes: 1 << 20},
		{VMID: "a", VCPUs: 1, MemoryBytes: 0},
	} {
		if _, err := DomainXML("kvm", bad, Devices{}); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestDomainLifecycle(t *testing.T) {
	ctx := context.Background()
	d, err := Open("test:///default")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	// test:///default holds a running domain "test" that is not Yunchi's.
	doms, err := d.ListDomains(ctx)
	if err != nil || len(doms) != 0 {
		t.Fatalf("unmanaged domains listed: %+v %v", doms, err)
	}

	const id = "7f0c2a9e-3b1d-4c8e-9a55-1e2f3a4b5c6d"
	spec := agent.DomainSpec{VMID: id, Project: "default", Name: "web", VCPUs: 2, MemoryBytes: 256 << 20, RebootSeq: 2}
	state := func() agent.Domain {
		t.Helper()
		doms, err := d.ListDomains(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(doms) != 1 {
			t.Fatalf("domains = %+v", doms)
		}
		return doms[0]
	}
	if err := d.Start(ctx, id); !errors.Is(err, agent.ErrDomainNotFound) {
		t.Fatalf("start before define: %v", err)
	}
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	// Defining the same VM again updates the one domain.
	if err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if got := state(); got.VMID != id || got.Project != "default" || got.Name != "web" || got.State != agent.StateShutOff || got.RebootSeq != 2 {
		t.Fatalf("after define: %+v", got)
	}
	for i := 0; i < 2; i++ { // start is idempotent
		if err := d.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if got := state(); got.State != agent.StateRunning {
		t.Fatalf("after start: %+v", got)
	}
	if err := d.Reboot(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := d.SetRebootSeq(ctx, id, 3); err != nil {
		t.Fatal(err)
	}
	if got := state(); got.State != agent.StateRunning || got.RebootSeq != 3 {
		t.Fatalf("after reboot: %+v", got)
	}
	if err := d.Stop(ctx, id, time.Second); err != nil {
		t.Fatal(err)
	}
	// The reboot sequence went to the persistent definition too.
	if got := state(); got.State != agent.StateShutOff || got.RebootSeq != 3 {
		t.Fatalf("after stop: %+v", got)
	}
	if err := d.SetRebootSeq(ctx, id, 5); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(ctx, id, time.Second); err != nil {
		t.Fatalf("stop of a stopped domain: %v", err)
	}
	if err := d.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if got := state(); got.RebootSeq != 5 {
		t.Fatalf("after start: %+v", got)
	}
	if err := d.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, id); err != nil {
		t.Fatalf("destroy of a stopped domain: %v", err)
	}
	if err := d.Undefine(ctx, id); err != nil {
		t.Fatal(err)
	}
	if doms, _ := d.ListDomains(ctx); len(doms) != 0 {
		t.Fatalf("after undefine: %+v", doms)
	}
	if err := d.Undefine(ctx, id); !errors.Is(err, agent.ErrDomainNotFound) {
		t.Fatalf("second undefine: %v", err)
	}
}

func TestErrorsAreOneLine(t *testing.T) {
	d, err := Open("test:///default")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// A domain type the test driver does not know.
	d.domainType = "no-such-type"
	err = d.Define(context.Background(), agent.DomainSpec{VMID: "x", VCPUs: 1, MemoryBytes: 1 << 20})
	if err == nil {
		t.Fatal("define with a bad domain type succeeded")
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || strings.Contains(msg, "virError") || !strings.HasPrefix(msg, "define yunchi-") {
		t.Errorf("error = %q", msg)
	}
	var le *Error
	if !errors.As(err, &le) {
		t.Errorf("error %T is not *Error", err)
	}
}

// Text XML cannot carry is refused, not written as U+FFFD: the metadata
// would read back as another VM's. Memory near MaxInt64 does not wrap.
func TestDomainXMLRefusesWhatXMLCannotCarry(t *testing.T) {
	for _, s := range []agent.DomainSpec{
		{VMID: "a\x00", VCPUs: 1, MemoryBytes: 1 << 20},
		{VMID: "a", Project: "p\x1b[31m", VCPUs: 1, MemoryBytes: 1 << 20},
		{VMID: "a", Name: "web\xff", VCPUs: 1, MemoryBytes: 1 << 20},
		{VMID: "a", Name: "\uffff", VCPUs: 1, MemoryBytes: 1 << 20},
	} {
		if doc, err := DomainXML("kvm", s, Devices{}); err == nil || !strings.Contains(err.Error(), "XML cannot carry") {
			t.Errorf("%+v: %v\n%s", s, err, doc)
		}
	}
	doc, err := DomainXML("kvm", agent.DomainSpec{VMID: "a", Name: "tab\there\r\n\ufffd", VCPUs: 1, MemoryBytes: math.MaxInt64}, Devices{})
	if err != nil {
		t.Fatal(err)
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	if dom.Memory.Value != math.MaxInt64/1024+1 {
		t.Errorf("memory of MaxInt64 bytes = %d KiB", dom.Memory.Value)
	}
}
