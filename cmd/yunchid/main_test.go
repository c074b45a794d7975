package main

import (
	"os"
	"testing"

	"github.com/yunchi/yunchi/cmd/yunchid/clustertest"
)

// TestMain removes the yunchid the tests built (clustertest.Binary) once
// they are done.
func TestMain(m *testing.M) { os.Exit(clustertest.Main(m)) }

// The binary the tests build is removed by RemoveBinary (and so by Main):
// every test process used to leave a yunchid-bin-* directory in $TMPDIR.
func TestBinaryIsRemoved(t *testing.T) {
	bin := clustertest.Binary(t)
	if _, err := os.Stat(bin); err != nil {
		t.Fatal(err)
	}
	clustertest.RemoveBinary()
	if _, err := os.Stat(bin); !os.IsNotExist(err) {
		t.Fatalf("%s still there after RemoveBinary: %v", bin, err)
	}
}
