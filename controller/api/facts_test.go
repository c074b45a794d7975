package api

import (
	"context"
	"google.golang.org/protobuf/proto"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// An agent's free-text facts (hostname, CPU model, versions, libvirt URI,
// hypervisor) are one line of printable text of at most 256 bytes: a host
// token holder cannot store control characters or megabytes in every
// controller's state. A valid host's hypervisor and libvirt version reach
// the API.
func TestHostFactsText(t *testing.T) {
	good := func() *yunchiv1.HostFacts {
		return &yunchiv1.HostFacts{Id: "h1", Center: "a1", Hostname: "h1.gov.internal", CpuModel: "EPYC 7543",
			AgentVersion: "0.1.0", LibvirtUri: "qemu:///system", Hypervisor: "QEMU 7.2.0", LibvirtVersion: "9.0.0",
			Capacity: &yunchiv1.Resources{Vcpus: 8, MemoryBytes: 16 << 30}}
	}
	if err := checkFacts(good()); err != nil {
		t.Fatalf("valid facts: %v", err)
	}
	for _, tt := range []struct {
		field string
		set   func(f *yunchiv1.HostFacts, v string)
	}{
		{"hostname", func(f *yunchiv1.HostFacts, v string) { f.Hostname = v }},
		{"cpu model", func(f *yunchiv1.HostFacts, v string) { f.CpuModel = v }},
		{"agent version", func(f *yunchiv1.HostFacts, v string) { f.AgentVersion = v }},
		{"libvirt uri", func(f *yunchiv1.HostFacts, v string) { f.LibvirtUri = v }},
		{"hypervisor", func(f *yunchiv1.HostFacts, v string) { f.Hypervisor = v }},
		{"libvirt version", func(f *yunchiv1.HostFacts, v string) { f.LibvirtVersion = v }},
	} {
		for _, bad := range []string{"QEMU\n7.2", strings.Repeat("x", 257)} {
			f := good()
			tt.set(f, bad)
			err := checkFacts(f)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.field) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s = %.20q: %v; want one line of InvalidArgument naming the field", tt.field, bad, err)
			}
		}
	}
	st := state.New()
	if _, err := st.Apply(1, &statev1.Command{Version: state.CommandVersion, Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
		Id: "h1", Center: "a1", Hypervisor: "QEMU 7.2.0", LibvirtVersion: "9.0.0", Capacity: &statev1.Resources{Vcpus: 8, MemoryBytes: 16 << 30}}}}}); err != nil {
		t.Fatal(err)
	}
	hv, _ := st.Host("h1")
	h := hostToAPI(hv, nil)
	if h.Hypervisor != "QEMU 7.2.0" || h.LibvirtVersion != "9.0.0" {
		t.Errorf("API host: hypervisor %q, libvirt %q", h.Hypervisor, h.LibvirtVersion)
	}
}

// A host declares its storage pool and, for a pool on storage other hosts
// mount too, that storage's name (a DNS-label style name, the same on every
// host sharing it); both reach the state and the API, and a name that is
// not one is refused.
func TestHostFactsStorage(t *testing.T) {
	s, _ := newLeadingServer(t)
	facts := &yunchiv1.HostFacts{Id: "h1", Center: "a1", StoragePool: "vmstore", SharedStorage: "nfs-a1",
		Capacity: &yunchiv1.Resources{Vcpus: 8, MemoryBytes: 16 << 30, DiskBytes: 1 << 40}}
	resp, err := s.RegisterHost(context.Background(), &yunchiv1.RegisterHostRequest{Facts: facts})
	if err != nil {
		t.Fatal(err)
	}
	if h := resp.Host; h.StoragePool != "vmstore" || h.SharedStorage != "nfs-a1" {
		t.Fatalf("registered host: pool %q, shared storage %q", h.StoragePool, h.SharedStorage)
	}
	for _, bad := range []string{"NFS A1", "nfs/a1", strings.Repeat("n", 64)} {
		f := proto.Clone(facts).(*yunchiv1.HostFacts)
		f.SharedStorage = bad
		if err := checkFacts(f); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "shared storage") {
			t.Errorf("shared storage %q: %v; want InvalidArgument naming the field", bad, err)
		}
	}
	f := proto.Clone(facts).(*yunchiv1.HostFacts)
	f.StoragePool = "pool\x00"
	if err := checkFacts(f); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "storage pool") {
		t.Errorf("storage pool with a NUL: %v", err)
	}
}
