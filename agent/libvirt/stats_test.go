package libvirt

import (
	"context"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
)

// Stats has an entry for each running managed domain and none for a
// shut-off one or one that is not Yunchi's (the test driver's numbers
// are zero; TestRealHostStats reads real ones).
func TestStatsRunningManagedOnly(t *testing.T) {
	d, _ := openTestNode(t, TestNode{CPUs: 4, MemoryBytes: 8 << 30})
	ctx := context.Background()
	if stats, err := d.Stats(ctx); err != nil || len(stats) != 0 {
		t.Fatalf("empty host: %v, %v", stats, err)
	}
	for _, id := range []string{"on", "off"} {
		if err := d.Define(ctx, agent.DomainSpec{VMID: id, VCPUs: 1, MemoryBytes: 64 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Start(ctx, "on"); err != nil {
		t.Fatal(err)
	}
	foreign, err := (&libvirtxml.Domain{Type: "test", Name: "not-ours", Memory: &libvirtxml.DomainMemory{Value: 65536, Unit: "KiB"},
		OS: &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Type: "hvm"}}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := d.conn.DomainCreateXML(foreign, 0)
	if err != nil {
		t.Fatal(err)
	}
	dom.Free()
	stats, err := d.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := stats["on"]; !ok || len(stats) != 1 {
		t.Fatalf("stats %v, want the running managed domain only", stats)
	}
}

func TestKiBToBytes(t *testing.T) {
	for _, c := range []struct {
		kib  uint64
		want int64
	}{{0, 0}, {65536, 64 << 20}, {1 << 60, 1<<63 - 1}, {^uint64(0), 1<<63 - 1}} {
		if got := kibToBytes(c.kib); got != c.want {
			t.Errorf("kibToBytes(%d) = %d, want %d", c.kib, got, c.want)
		}
	}
}
