package cloudinit

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/ssh"
)

// newKey returns a fresh ed25519 public key as one authorized_keys line.
func newKey(t *testing.T, comment string) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(sp)), "\n")
	if comment != "" {
		line += " " + comment
	}
	return line
}

// readISO opens img with go-diskfs and returns its label and files.
func readISO(t *testing.T, img []byte) (string, map[string]string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "seed.iso")
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := diskfs.Open(path, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fsys, err := d.GetFilesystem(0)
	if err != nil {
		t.Fatalf("read the seed back: %v", err)
	}
	ents, err := fsys.ReadDir(".") // io/fs names: "." is the root
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, e := range ents {
		b, err := fsys.ReadFile(e.Name())
		if err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		files[e.Name()] = string(b)
	}
	// go-diskfs pads the 32-byte volume identifier with NULs (blkid and
	// Linux read the label the same either way).
	return strings.TrimRight(fsys.Label(), "\x00 "), files
}

// Every shape of seed survives the trip through an ISO: the label is
// cidata, the volume holds exactly meta-data and user-data, byte for
// byte, and the YAML reads back as the fields that went in, even values
// YAML would otherwise take for numbers, booleans or mappings.
func TestISORoundTrip(t *testing.T) {
	k1, k2 := newKey(t, "alice@laptop"), newKey(t, "")
	cases := []struct {
		name string
		seed Seed
		// keysIn says where the keys must be: "user-data", "meta-data" or "".
		keysIn string
	}{
		{"user data only", Seed{InstanceID: "6c1f3c1e-0a0b-4c3d-9e8f-000000000001", Hostname: "vm1", UserData: "#!/bin/sh\necho 'hi: there' # \"quoted\"\n"}, ""},
		{"keys only", Seed{InstanceID: "i-2", Hostname: "web-01", SSHAuthorizedKeys: []string{k1, k2}}, "user-data"},
		{"keys and user data", Seed{InstanceID: "i-3", Hostname: "db", SSHAuthorizedKeys: []string{k1}, UserData: "#cloud-config\npackages: [htop]\n"}, "meta-data"},
		{"nothing but identity", Seed{InstanceID: "yes", Hostname: "123"}, ""},
		{"yaml-looking id", Seed{InstanceID: "a:#b{c}[d]&*!|>'\"%@`", Hostname: "null"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want, err := c.seed.Files()
			if err != nil {
				t.Fatal(err)
			}
			img, err := c.seed.ISO()
			if err != nil {
				t.Fatal(err)
			}
			if len(img)%2048 != 0 {
				t.Errorf("image is %d bytes, not whole 2048-byte sectors", len(img))
			}
			label, got := readISO(t, img)
			if label != Label {
				t.Errorf("label %q, want %q", label, Label)
			}
			if len(got) != 2 || got[MetaDataFile] != string(want[MetaDataFile]) || got[UserDataFile] != string(want[UserDataFile]) {
				t.Fatalf("files on the ISO %q, want %q", got, want)
			}
			var md struct {
				InstanceID    string   `yaml:"instance-id"`
				LocalHostname string   `yaml:"local-hostname"`
				PublicKeys    []string `yaml:"public-keys"`
			}
			if err := yaml.Unmarshal([]byte(got[MetaDataFile]), &md); err != nil {
				t.Fatalf("meta-data is not YAML: %v\n%s", err, got[MetaDataFile])
			}
			if md.InstanceID != c.seed.InstanceID || md.LocalHostname != c.seed.Hostname {
				t.Errorf("meta-data reads back as %+v, want id %q hostname %q", md, c.seed.InstanceID, c.seed.Hostname)
			}
			var keysInUserData []string
			switch c.keysIn {
			case "user-data":
				if !strings.HasPrefix(got[UserDataFile], "#cloud-config\n") {
					t.Fatalf("user-data made for keys is not a #cloud-config:\n%s", got[UserDataFile])
				}
				var cc struct {
					Keys []string `yaml:"ssh_authorized_keys"`
				}
				if err := yaml.Unmarshal([]byte(got[UserDataFile]), &cc); err != nil {
					t.Fatal(err)
				}
				keysInUserData = cc.Keys
			default:
				if got[UserDataFile] != c.seed.UserData {
					t.Errorf("user-data %q, want the user's %q as is", got[UserDataFile], c.seed.UserData)
				}
			}
			wantMeta, wantUser := []string(nil), []string(nil)
			if c.keysIn == "meta-data" {
				wantMeta = c.seed.SSHAuthorizedKeys
			}
			if c.keysIn == "user-data" {
				wantUser = c.seed.SSHAuthorizedKeys
			}
			if !slices.Equal(md.PublicKeys, wantMeta) || !slices.Equal(keysInUserData, wantUser) {
				t.Errorf("keys in meta-data %q and in user-data %q; want %q and %q", md.PublicKeys, keysInUserData, wantMeta, wantUser)
			}
		})
	}
}

// Bad input in any field is refused with an error naming it, by Validate,
// Files and ISO alike.
func TestValidateRejects(t *testing.T) {
	good := Seed{InstanceID: "i-1", Hostname: "vm1", SSHAuthorizedKeys: []string{newKey(t, "c")}, UserData: "#cloud-config\n"}
	if err := good.Validate(); err != nil {
		t.Fatalf("good seed refused: %v", err)
	}
	key := newKey(t, "")
	typ, b64, _ := strings.Cut(key, " ")
	raw, _ := base64.StdEncoding.DecodeString(b64)
	raw[len(raw)-40] ^= 0xff // the length prefix of the key bytes: no longer parses
	cases := []struct {
		name string
		edit func(*Seed)
		want string
	}{
		{"empty instance id", func(s *Seed) { s.InstanceID = "" }, "instance id is empty"},
		{"instance id with a space", func(s *Seed) { s.InstanceID = "i 1" }, "instance id"},
		{"instance id with a newline", func(s *Seed) { s.InstanceID = "i-1\nlocal-hostname: evil" }, "instance id"},
		{"instance id not ASCII", func(s *Seed) { s.InstanceID = "i-é" }, "instance id"},
		{"instance id too long", func(s *Seed) { s.InstanceID = strings.Repeat("i", MaxInstanceIDBytes+1) }, "instance id is 256 bytes"},
		{"empty hostname", func(s *Seed) { s.Hostname = "" }, "hostname is empty"},
		{"hostname with a dot", func(s *Seed) { s.Hostname = "vm1.example" }, "not a DNS label"},
		{"hostname with an underscore", func(s *Seed) { s.Hostname = "my_vm" }, "not a DNS label"},
		{"hostname with a newline", func(s *Seed) { s.Hostname = "vm1\nx" }, "not a DNS label"},
		{"hostname leading hyphen", func(s *Seed) { s.Hostname = "-vm" }, "starts or ends"},
		{"hostname trailing hyphen", func(s *Seed) { s.Hostname = "vm-" }, "starts or ends"},
		{"hostname too long", func(s *Seed) { s.Hostname = strings.Repeat("a", 64) }, "longer than 63"},
		{"key on two lines", func(s *Seed) { s.SSHAuthorizedKeys = []string{key + "\n" + key} }, "ssh key 1: spans more than one line"},
		{"key with a carriage return", func(s *Seed) { s.SSHAuthorizedKeys = []string{key + "\r"} }, "ssh key 1: spans"},
		{"empty key", func(s *Seed) { s.SSHAuthorizedKeys = []string{key, " "} }, "ssh key 2: empty"},
		{"not a key", func(s *Seed) { s.SSHAuthorizedKeys = []string{"hello world"} }, "ssh key 1: not an OpenSSH public key"},
		{"bad base64", func(s *Seed) { s.SSHAuthorizedKeys = []string{typ + " !!!notbase64"} }, "ssh key 1: not an OpenSSH"},
		{"corrupt key bytes", func(s *Seed) { s.SSHAuthorizedKeys = []string{typ + " " + base64.StdEncoding.EncodeToString(raw)} }, "ssh key 1: not an OpenSSH"},
		{"key too long", func(s *Seed) { s.SSHAuthorizedKeys = []string{key + " " + strings.Repeat("c", MaxKeyBytes)} }, "more than 16384"},
		{"too many keys", func(s *Seed) { s.SSHAuthorizedKeys = slices.Repeat([]string{key}, MaxKeys+1) }, "65 ssh keys"},
		{"user data too big", func(s *Seed) { s.UserData = strings.Repeat("x", MaxUserDataBytes+1) }, "user data is 65537 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := good
			s.SSHAuthorizedKeys = slices.Clone(good.SSHAuthorizedKeys)
			c.edit(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Validate: %v; want one line containing %q", err, c.want)
			}
			if _, err := s.Files(); err == nil {
				t.Error("Files accepted it")
			}
			if img, err := s.ISO(); err == nil || img != nil {
				t.Errorf("ISO made %d bytes, err %v", len(img), err)
			}
		})
	}
}

// The largest seed allowed still makes a small image, and the user data
// bound is exact.
func TestSizeBound(t *testing.T) {
	keys := make([]string, MaxKeys)
	for i := range keys {
		keys[i] = newKey(t, "k")
	}
	s := Seed{InstanceID: strings.Repeat("i", MaxInstanceIDBytes), Hostname: strings.Repeat("h", 63), SSHAuthorizedKeys: keys, UserData: strings.Repeat("u", MaxUserDataBytes)}
	img, err := s.ISO()
	if err != nil {
		t.Fatal(err)
	}
	if len(img) > 256<<10 {
		t.Errorf("largest seed makes a %d-byte image, want at most 256 KiB", len(img))
	}
	_, files := readISO(t, img)
	if len(files[UserDataFile]) != MaxUserDataBytes {
		t.Errorf("user-data read back is %d bytes, want %d", len(files[UserDataFile]), MaxUserDataBytes)
	}
	t.Logf("largest seed: %d-byte image", len(img))
	s.UserData += "u"
	if _, err := s.ISO(); err == nil {
		t.Error("one byte over the user data bound accepted")
	}
}

// ISO leaves nothing behind in the temporary directory.
func TestISOCleansUp(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	if _, err := (Seed{InstanceID: "i", Hostname: "h"}).ISO(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}
