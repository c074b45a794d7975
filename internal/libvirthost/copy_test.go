package libvirthost

import (
	"os"
	"path/filepath"
	"testing"
)

// A host's copy of /etc/libvirt leaves out the machine's own domains and
// storage pools (a rehearsal on the machine's libvirtd once put its domain
// into a test host started meanwhile); configuration and networks stay.
func TestCopyLeavesOutTheMachinesDefinitions(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "etc")
	for _, f := range []string{"qemu.conf", "qemu/t1.xml", "qemu/autostart/t1.xml", "qemu/networks/default.xml", "storage/yunchi.xml", "storage/autostart/yunchi.xml"} {
		if err := os.MkdirAll(filepath.Join(src, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	skip := func(_, rel string, d os.DirEntry) bool { return machineDefinitions("/etc/libvirt", rel, d) }
	if err := copyTree(src, dst, skip); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]bool{"qemu.conf": true, "qemu/networks/default.xml": true,
		"qemu/t1.xml": false, "qemu/autostart": false, "storage": false} {
		_, err := os.Stat(filepath.Join(dst, f))
		if got := err == nil; got != want {
			t.Errorf("%s copied: %v, want %v", f, got, want)
		}
	}
}
