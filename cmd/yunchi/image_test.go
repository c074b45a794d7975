package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/yunchi/yunchi/controller"
	"github.com/yunchi/yunchi/internal/apitest"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// startController runs one real controller (a cluster of one, without
// authentication) for the test and returns its address.
func startController(t *testing.T) (string, *controller.Controller, string) {
	t.Helper()
	data := t.TempDir()
	ctl, err := controller.New(controller.Config{ID: "c1", Center: "a1", Listen: "127.0.0.1:0", RaftListen: "127.0.0.1:0", DataDir: data,
		Bootstrap: true, Insecure: true, NoAuth: true, FastRaft: true, AdminTokensOut: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ctl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	apitest.Eventually(t, 20*time.Second, "the controller leads", func() bool { return ctl.Node().IsLeader() })
	return ctl.Addr(), ctl, data
}

func dialTest(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// storedImages counts the files in the image store under a controller's
// data dir.
func storedImages(t *testing.T, data string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(filepath.Join(data, "images"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

// writeQCOW2 writes a qcow2 version 3 image of vsize bytes (n bytes long)
// to dir/name; backing names a backing file in its header.
func writeQCOW2(t *testing.T, dir, name string, vsize uint64, n int, backing bool) string {
	t.Helper()
	b := make([]byte, n)
	copy(b, "QFI\xfb")
	binary.BigEndian.PutUint32(b[4:], 3)
	binary.BigEndian.PutUint32(b[20:], 16)
	binary.BigEndian.PutUint64(b[24:], vsize)
	binary.BigEndian.PutUint32(b[100:], 104)
	if backing {
		binary.BigEndian.PutUint64(b[8:], 512)
		binary.BigEndian.PutUint32(b[16:], 10)
	}
	for i := 512; i < n; i++ {
		b[i] = byte(i / 511)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f alice@example"

// Mistakes on the command line are usage errors (exit 2, one line),
// found before any call.
func TestImageUsage(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	file := writeQCOW2(t, dir, "a.qcow2", 1<<30, 4096, false)
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"image", "import", "--file", file}, "NAME"},
		{[]string{"image", "import", "tiny"}, "--file is required"},
		{[]string{"image", "import", "tiny", "--file", filepath.Join(dir, "nope")}, "no such file or directory"},
		{[]string{"image", "import", "tiny", "--file", dir}, "is not a regular file"},
		{[]string{"image", "import", "tiny", "--file", empty}, "is empty"},
		{[]string{"image", "import", "tiny", "--file", file, "--format", "vmdk"}, `--format "vmdk" is not valid`},
		{[]string{"image", "import", "tiny", "--file", file, "--public", "--project", "p"}, "exclude each other"},
		{[]string{"image", "delete", "tiny", "--public", "--project", "p"}, "exclude each other"},
		{[]string{"image", "show"}, "NAME"},
		{[]string{"image", "frob"}, `unknown command "frob"`},
		{[]string{"vm", "create", "web", "--ssh-key", "not-a-key-nor-a-file"}, "neither a public key"},
		{[]string{"vm", "create", "web", "--user-data", filepath.Join(dir, "nope")}, "--user-data"},
	} {
		code, stdout, stderr := yunchi(t, append([]string{"--addr", "127.0.0.1:1"}, c.args...)...)
		if code != exitUsage || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", c.args, code, stdout, stderr)
			continue
		}
		if msg := oneErrorLine(t, stderr); !strings.Contains(msg, c.msg) {
			t.Errorf("%v: %q, want %q", c.args, msg, c.msg)
		}
	}
}

// Against a real controller: import (with progress for a large file),
// list, show, a VM made from the image with cloud-init keys and user
// data, delete refused while the VM exists and done once it is gone;
// refusals with their exit codes.
func TestImageCommands(t *testing.T) {
	addr, ctl, data := startController(t)
	dir := t.TempDir()
	file := writeQCOW2(t, dir, "tiny.qcow2", 2<<30, 9<<20+5, false)
	content, _ := os.ReadFile(file)
	sum := sha256.Sum256(content)
	sha := hex.EncodeToString(sum[:])
	a := func(args ...string) []string { return append([]string{"--addr", addr}, args...) }

	code, stdout, stderr := yunchi(t, a("image", "import", "tiny", "--file", file, "--description", "a tiny guest")...)
	if code != 0 {
		t.Fatalf("import: exit %d, %q", code, stderr)
	}
	for _, want := range []string{"Name: tiny", "Format: qcow2", "Virtual size: 2 GiB", "SHA256: " + sha, "Description: a tiny guest"} {
		if !strings.Contains(words(stdout), want) {
			t.Errorf("import output lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "yunchi: image tiny: ") || !strings.Contains(stderr, "sent (100%)") {
		t.Errorf("no progress on stderr: %q", stderr)
	}

	// JSON, a raw image (told from the bytes), small: no progress.
	raw := filepath.Join(dir, "disk.raw")
	os.WriteFile(raw, []byte(strings.Repeat("raw ", 1000)), 0o600)
	code, stdout, stderr = yunchi(t, a("image", "import", "disk", "--file", raw, "-o", "json")...)
	var img struct {
		Name, Format, Sha256 string
		SizeBytes            string `json:"sizeBytes"`
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &img) != nil || img.Name != "disk" || img.Format != "IMAGE_FORMAT_RAW" || img.SizeBytes != "4000" || stderr != "" {
		t.Fatalf("json import: exit %d %q %q", code, stdout, stderr)
	}

	// Refusals: exit codes and one line each.
	bad := writeQCOW2(t, dir, "overlay.qcow2", 1<<30, 4096, true)
	small := writeQCOW2(t, dir, "small.qcow2", 1<<30, 4096, false)
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{a("image", "import", "tiny", "--file", file), exitExists, `image "tiny" already exists in project "default"`},
		{a("image", "import", "over", "--file", bad), exitUsage, "names a backing file"},
		{a("image", "import", "as-raw", "--file", small, "--format", "raw"), exitUsage, "declared raw but its bytes are a qcow2 image"},
		{a("image", "import", "p", "--file", raw, "--project", "nope"), exitNotFound, `project "nope" not found`},
		{a("image", "show", "nope"), exitNotFound, `image "nope" not found`},
		{a("vm", "create", "web", "--image", "nope"), exitNotFound, `image "nope" not found`},
		{a("vm", "create", "web", "--image", "tiny", "--disk", "1GiB"), exitUsage, `disk 1GiB is smaller than image "tiny" (2 GiB)`},
	} {
		code, stdout, stderr := yunchi(t, c.args...)
		if code != c.code || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d", c.args[2:], code, stdout, stderr, c.code)
			continue
		}
		if msg := oneErrorLine(t, stderr); !strings.Contains(msg, c.msg) {
			t.Errorf("%v: %q, want %q", c.args[2:], msg, c.msg)
		}
	}
	if n := storedImages(t, data); n != 2 {
		t.Fatalf("%d files in the image store after the refusals, want the 2 images", n)
	}

	code, stdout, _ = yunchi(t, a("image", "list")...)
	if code != 0 || !strings.Contains(stdout, "tiny") || !strings.Contains(stdout, "disk") || !strings.Contains(stdout, "VIRTUAL SIZE") {
		t.Fatalf("list: exit %d\n%s", code, stdout)
	}
	code, stdout, _ = yunchi(t, a("image", "list", "-o", "json")...)
	var list struct{ Images []struct{ Name string } }
	if code != 0 || json.Unmarshal([]byte(stdout), &list) != nil || len(list.Images) != 2 {
		t.Fatalf("list json: exit %d %q", code, stdout)
	}

	// A VM from the image: keys given inline and from a file, user data
	// from a file.
	registerTestHost(t, addr, "h1")
	keys := filepath.Join(dir, "keys")
	os.WriteFile(keys, []byte("# team keys\n"+strings.Replace(testKey, "alice", "bob", 1)+"\n\n"), 0o600)
	ud := filepath.Join(dir, "user-data")
	os.WriteFile(ud, []byte("#cloud-config\nhostname: web\n"), 0o600)
	code, stdout, stderr = yunchi(t, a("vm", "create", "web", "--image", "tiny", "--ssh-key", testKey, "--ssh-key", keys, "--user-data", ud, "-o", "json")...)
	var vm struct {
		Id, Image, ImageSha256 string
		DiskBytes              string `json:"diskBytes"`
		SshAuthorizedKeys      []string
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &vm) != nil || vm.Image != "tiny" || vm.ImageSha256 != sha || vm.DiskBytes != "2147483648" || len(vm.SshAuthorizedKeys) != 2 {
		t.Fatalf("vm create: exit %d %q %q", code, stdout, stderr)
	}
	rec, _ := ctl.Node().Store.VM("default", "web")
	if rec.UserData != "#cloud-config\nhostname: web\n" || rec.SshAuthorizedKeys[1] != strings.Replace(testKey, "alice", "bob", 1) {
		t.Fatalf("recorded %q %q", rec.UserData, rec.SshAuthorizedKeys)
	}
	if code, stdout, _ = yunchi(t, a("vm", "show", "web")...); code != 0 || !strings.Contains(words(stdout), "Image: tiny (sha256 "+sha[:12]+")") || !strings.Contains(words(stdout), "SSH keys: 2") {
		t.Fatalf("vm show: exit %d\n%s", code, stdout)
	}
	if code, stdout, _ = yunchi(t, a("image", "show", "tiny")...); code != 0 || !strings.Contains(words(stdout), "VMs: 1") {
		t.Fatalf("image show: exit %d\n%s", code, stdout)
	}

	// Delete: refused while the VM exists, done once it is gone.
	code, _, stderr = yunchi(t, a("image", "delete", "tiny")...)
	if code != exitFailed || !strings.Contains(oneErrorLine(t, stderr), "used by 1 VM(s) (default/web)") {
		t.Fatalf("delete in use: exit %d %q", code, stderr)
	}
	if code, _, stderr = yunchi(t, a("vm", "delete", "web")...); code != 0 {
		t.Fatalf("vm delete: exit %d %q", code, stderr)
	}
	reportGone(t, addr, "h1", vm.Id)
	code, stdout, stderr = yunchi(t, a("image", "delete", "tiny")...)
	if code != 0 || stdout != "image tiny deleted\n" {
		t.Fatalf("delete: exit %d %q %q", code, stdout, stderr)
	}
	if code, _, _ = yunchi(t, a("image", "delete", "tiny")...); code != exitNotFound {
		t.Fatalf("deleting again: exit %d", code)
	}
}

func registerTestHost(t *testing.T, addr, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := yunchiv1.NewAgentServiceClient(dialTest(t, addr)).RegisterHost(ctx, &yunchiv1.RegisterHostRequest{Facts: &yunchiv1.HostFacts{
		Id: id, Center: "a1", Hostname: id, Capacity: &yunchiv1.Resources{Vcpus: 16, MemoryBytes: 64 << 30, DiskBytes: 1000 << 30}}})
	if err != nil {
		t.Fatal(err)
	}
}

func reportGone(t *testing.T, addr, host, vmID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := yunchiv1.NewAgentServiceClient(dialTest(t, addr)).ReportVMStatus(ctx, &yunchiv1.ReportVMStatusRequest{HostId: host,
		Statuses: []*yunchiv1.VMStatus{{VmId: vmID, Gone: true}}})
	if err != nil {
		t.Fatal(err)
	}
}

// words is s with every run of spaces (table alignment) made one space.
func words(s string) string { return strings.Join(strings.Fields(s), " ") }
