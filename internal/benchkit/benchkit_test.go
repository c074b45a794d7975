package benchkit

import (
	"bytes"
	"fmt"
	"net"
	"testing"
)

func TestLinesRoundTrip(t *testing.T) {
	var ls Lines
	ls.Add("a_s", "%.2f", 1.5)
	ls.Add("b", "%d (why: x)", 3)
	var out bytes.Buffer
	ls.Print(&out)
	if out.String() != "a_s: 1.50\nb: 3 (why: x)\n" {
		t.Fatalf("printed %q", out.String())
	}
	got, err := ParseLines(out.String())
	if err != nil || got["a_s"] != "1.50" || got["b"] != "3 (why: x)" {
		t.Fatalf("parsed %v %v", got, err)
	}
	if _, err := ParseLines("a: 1\nnot a figure"); err == nil {
		t.Fatal("a line without a name was accepted")
	}
}

func TestFreeBasePort(t *testing.T) {
	base, err := FreeBasePort()
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{0, 1, 2, 10, 11, 12} {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+off))
		if err != nil {
			t.Fatalf("port %d of base %d is not free: %v", base+off, base, err)
		}
		l.Close()
	}
}
