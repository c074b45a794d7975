package libvirt

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent"
)

// xmlShape is the element and attribute structure of doc, text left out:
// one entry per start tag (its name and its attributes' names, in order)
// and per end tag.
func xmlShape(doc string) ([]string, error) {
	var shape []string
	d := xml.NewDecoder(strings.NewReader(doc))
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return shape, nil
		}
		if err != nil {
			return nil, err
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			e := "<" + tok.Name.Space + " " + tok.Name.Local
			for _, a := range tok.Attr {
				e += " " + a.Name.Space + ":" + a.Name.Local
			}
			shape = append(shape, e)
		case xml.EndElement:
			shape = append(shape, "</"+tok.Name.Space+" "+tok.Name.Local)
		case xml.CharData, xml.Comment:
		default:
			shape = append(shape, fmt.Sprintf("%T", tok)) // a ProcInst or Directive: never written
		}
	}
}

// FuzzDomainXML: whatever VM id, project and name a domain spec carries, the
// XML either is refused with one line or parses back to a domain with that
// id, project and name, in the same structure as a plain spec's: no text
// can add or remove an element or an attribute.
func FuzzDomainXML(f *testing.F) {
	plain := agent.DomainSpec{VMID: "vm-1", Project: "p", Name: "web", VCPUs: 2, MemoryBytes: 512 << 20, RebootSeq: 4}
	// Every device Define can write, so that the structure checked covers them.
	dev := Devices{RootPath: "/pool/r", SeedPath: "/pool/s.iso", ConsoleLog: "/log/c.log", Network: "br0"}
	doc, err := DomainXML("kvm", plain, dev)
	if err != nil {
		f.Fatal(err)
	}
	want, err := xmlShape(doc)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []agent.DomainSpec{
		plain,
		{VMID: "vm-<1>&", Project: "p&q", Name: "web<1>", VCPUs: 2, MemoryBytes: 512<<20 + 1, RebootSeq: 4},
		{VMID: "0B5D4A6E-1F5E-4F55-9B66-5D8A3D8F2B11", Project: "default", Name: "db-1", VCPUs: 1, MemoryBytes: 1 << 20},
		{VMID: "0b5d4a6e1f5e4f559b665d8a3d8f2b11", Project: "", Name: "", VCPUs: 1, MemoryBytes: 1},
		{VMID: "../<evil>'\"", Project: "a\nb", Name: "</name><name>x", VCPUs: 512, MemoryBytes: 16 << 40},
		{VMID: "a", Project: "]]><!--", Name: "<?xml version=\"1.0\"?><!DOCTYPE x>", VCPUs: 1, MemoryBytes: math.MaxInt64, RebootSeq: math.MaxUint64},
		{VMID: "a", Project: "x\x00y", Name: "\xff\xfe", VCPUs: 1, MemoryBytes: 1 << 20},
		{VMID: "a", Name: "\r\n\t \u0085\u2028\ufffd\U0001F600", VCPUs: 1, MemoryBytes: 1 << 20},
		{VMID: "", VCPUs: 1, MemoryBytes: 1 << 20},
		{VMID: "a", VCPUs: 0, MemoryBytes: 1 << 20},
		{VMID: "a", VCPUs: 1, MemoryBytes: 0},
	} {
		f.Add(s.VMID, s.Project, s.Name, s.VCPUs, s.MemoryBytes, s.RebootSeq)
	}
	f.Fuzz(func(t *testing.T, id, project, name string, vcpus int32, mem int64, seq uint64) {
		spec := agent.DomainSpec{VMID: id, Project: project, Name: name, VCPUs: vcpus, MemoryBytes: mem, RebootSeq: seq}
		doc, err := DomainXML("kvm", spec, dev)
		refuse := id == "" || vcpus <= 0 || mem <= 0 || !isXMLText(id) || !isXMLText(project) || !isXMLText(name)
		if err != nil {
			if !refuse {
				t.Fatalf("refused %+v: %v", spec, err)
			}
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		if refuse {
			t.Fatalf("accepted %+v", spec)
		}
		got, err := xmlShape(doc)
		if err != nil {
			t.Fatalf("the XML of %+v does not parse: %v\n%s", spec, err, doc)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("the XML of %+v has another structure:\n%s\nwant\n%s\n%s", spec, strings.Join(got, "\n"), strings.Join(want, "\n"), doc)
		}
		var dom libvirtxml.Domain
		if err := dom.Unmarshal(doc); err != nil {
			t.Fatalf("libvirtxml: %v\n%s", err, doc)
		}
		kib := uint64(mem) / 1024
		if mem%1024 != 0 {
			kib++
		}
		if dom.Type != "kvm" || dom.Name != domainName(id) || dom.UUID != domainUUID(id) ||
			dom.Title != strings.Join(strings.Fields(project+"/"+name), " ") || strings.ContainsAny(dom.Title, "\n\r") ||
			dom.VCPU == nil || dom.VCPU.Value != uint(vcpus) || dom.Memory == nil || uint64(dom.Memory.Value) != kib || dom.Memory.Unit != "KiB" ||
			dom.Metadata == nil {
			t.Fatalf("domain of %+v: %+v", spec, dom)
		}
		// What readMetadata does with what libvirt hands back.
		var m vmMetadata
		if err := xml.Unmarshal([]byte(dom.Metadata.XML), &m); err != nil {
			t.Fatalf("metadata: %v: %s", err, dom.Metadata.XML)
		}
		if m.XMLName.Space != MetadataNamespace || m.XMLName.Local != "vm" ||
			m.ID != id || m.Project != project || m.Name != name || m.RebootSeq != seq {
			t.Fatalf("metadata of %+v reads back as %+v", spec, m)
		}
	})
}
