// Package cloudinit builds cloud-init NoCloud seed images: an ISO 9660
// volume labelled "cidata" holding meta-data and user-data, which a guest
// finds by its label (cloud-init's NoCloud datasource, and the test image
// of internal/tinyimage) when it is attached as a cdrom or a disk.
//
// Seed mirrors agent.Seed field for field without importing the agent,
// so that the agent's drivers can use it with no import cycle.
//
// The ISO is written with github.com/diskfs/go-diskfs, the maintained
// pure-Go disk and filesystem library, with Rock Ridge and Joliet names
// (as `genisoimage -volid cidata -joliet -rock` makes them) so that the
// guest sees "meta-data" and "user-data", not 8.3 names. The YAML is
// written by go.yaml.in/yaml/v3, never pasted together.
package cloudinit

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/ssh"
)

const (
	// Label is the volume label NoCloud looks for.
	Label = "cidata"
	// MaxUserDataBytes bounds UserData.
	MaxUserDataBytes = 64 << 10
	// MaxKeys bounds the number of SSH keys, and MaxKeyBytes each key.
	MaxKeys     = 64
	MaxKeyBytes = 16 << 10
	// MaxInstanceIDBytes bounds InstanceID.
	MaxInstanceIDBytes = 255
)

// File names on the seed.
const (
	MetaDataFile = "meta-data"
	UserDataFile = "user-data"
)

// Seed is what a guest learns through cloud-init.
type Seed struct {
	InstanceID        string
	Hostname          string
	SSHAuthorizedKeys []string
	// UserData is passed as is (a #cloud-config, a script, ...).
	UserData string
}

// Validate checks every field; the error names the first bad one.
func (s Seed) Validate() error {
	if s.InstanceID == "" {
		return errors.New("cloud-init seed: instance id is empty")
	}
	if len(s.InstanceID) > MaxInstanceIDBytes {
		return fmt.Errorf("cloud-init seed: instance id is %d bytes, more than %d", len(s.InstanceID), MaxInstanceIDBytes)
	}
	for _, r := range s.InstanceID {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) || r == ' ' {
			return fmt.Errorf("cloud-init seed: instance id %q: only printable ASCII without spaces", s.InstanceID)
		}
	}
	if err := validHostname(s.Hostname); err != nil {
		return err
	}
	if len(s.SSHAuthorizedKeys) > MaxKeys {
		return fmt.Errorf("cloud-init seed: %d ssh keys, more than %d", len(s.SSHAuthorizedKeys), MaxKeys)
	}
	for i, k := range s.SSHAuthorizedKeys {
		if err := validKey(k); err != nil {
			return fmt.Errorf("cloud-init seed: ssh key %d: %v", i+1, err)
		}
	}
	if len(s.UserData) > MaxUserDataBytes {
		return fmt.Errorf("cloud-init seed: user data is %d bytes, more than %d", len(s.UserData), MaxUserDataBytes)
	}
	return nil
}

// validHostname accepts one DNS label (RFC 1123): 1-63 letters, digits
// and hyphens, not starting or ending with a hyphen.
func validHostname(h string) error {
	if h == "" {
		return errors.New("cloud-init seed: hostname is empty")
	}
	if len(h) > 63 {
		return fmt.Errorf("cloud-init seed: hostname %q is longer than 63 characters", h)
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("cloud-init seed: hostname %q is not a DNS label (letters, digits, '-')", h)
		}
	}
	if h[0] == '-' || h[len(h)-1] == '-' {
		return fmt.Errorf("cloud-init seed: hostname %q starts or ends with '-'", h)
	}
	return nil
}

// validKey accepts one authorized_keys line: optional options, a key type,
// the key in base64 and an optional comment, whose key parses.
func validKey(k string) error {
	if len(k) > MaxKeyBytes {
		return fmt.Errorf("%d bytes, more than %d", len(k), MaxKeyBytes)
	}
	if strings.ContainsAny(k, "\r\n") {
		return errors.New("spans more than one line")
	}
	if strings.TrimSpace(k) == "" {
		return errors.New("empty")
	}
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
		return fmt.Errorf("not an OpenSSH public key line (type base64 [comment]): %v", err)
	}
	return nil
}

// metaData is NoCloud's meta-data document.
type metaData struct {
	InstanceID    string `yaml:"instance-id"`
	LocalHostname string `yaml:"local-hostname"`
	// PublicKeys carries the keys when UserData is the user's own:
	// cloud-init installs them for the default user as it would
	// ssh_authorized_keys.
	PublicKeys []string `yaml:"public-keys,omitempty"`
}

// cloudConfig is the user-data made when there is none but keys.
type cloudConfig struct {
	SSHAuthorizedKeys []string `yaml:"ssh_authorized_keys"`
}

// Files returns the seed's files by name: meta-data and user-data.
func (s Seed) Files() (map[string][]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	md := metaData{InstanceID: s.InstanceID, LocalHostname: s.Hostname}
	userData := []byte(s.UserData)
	if len(s.SSHAuthorizedKeys) > 0 {
		if s.UserData == "" {
			cc, err := yaml.Marshal(cloudConfig{SSHAuthorizedKeys: s.SSHAuthorizedKeys})
			if err != nil {
				return nil, fmt.Errorf("cloud-init seed: user data: %w", err)
			}
			userData = append([]byte("#cloud-config\n"), cc...)
		} else {
			md.PublicKeys = s.SSHAuthorizedKeys
		}
	}
	mdb, err := yaml.Marshal(md)
	if err != nil {
		return nil, fmt.Errorf("cloud-init seed: meta-data: %w", err)
	}
	return map[string][]byte{MetaDataFile: mdb, UserDataFile: userData}, nil
}

// ISO returns the seed as an ISO 9660 image labelled Label.
func (s Seed) ISO() ([]byte, error) {
	files, err := s.Files()
	if err != nil {
		return nil, err
	}
	// go-diskfs writes through a backing file and a workspace directory.
	dir, err := os.MkdirTemp("", "cloudinit-seed-")
	if err != nil {
		return nil, fmt.Errorf("cloud-init seed: %w", err)
	}
	defer os.RemoveAll(dir)
	ws := filepath.Join(dir, "ws")
	if err := os.Mkdir(ws, 0o700); err != nil {
		return nil, fmt.Errorf("cloud-init seed: %w", err)
	}
	// Room for the volume descriptors, directories and path tables of
	// both name spaces, and the files; the image is cut to the volume's
	// own size below.
	size := int64(1 << 20)
	for _, b := range files {
		size += int64(len(b)) + 2048
	}
	img := filepath.Join(dir, "seed.iso")
	d, err := diskfs.Create(img, size, diskfs.SectorSizeDefault)
	if err != nil {
		return nil, fmt.Errorf("cloud-init seed: %w", err)
	}
	defer d.Close()
	d.LogicalBlocksize = 2048
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 0, FSType: filesystem.TypeISO9660, VolumeLabel: Label, WorkDir: ws})
	if err != nil {
		return nil, fmt.Errorf("cloud-init seed: %w", err)
	}
	iso, ok := fsys.(*iso9660.FileSystem)
	if !ok {
		return nil, fmt.Errorf("cloud-init seed: go-diskfs made a %T, not an ISO 9660 filesystem", fsys)
	}
	for _, name := range []string{MetaDataFile, UserDataFile} {
		f, err := iso.OpenFile(name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return nil, fmt.Errorf("cloud-init seed: %s: %w", name, err)
		}
		_, werr := f.Write(files[name])
		cerr := f.Close()
		if err := errors.Join(werr, cerr); err != nil {
			return nil, fmt.Errorf("cloud-init seed: %s: %w", name, err)
		}
	}
	if err := iso.Finalize(iso9660.FinalizeOptions{RockRidge: true, Joliet: true, VolumeIdentifier: Label}); err != nil {
		return nil, fmt.Errorf("cloud-init seed: finalize: %w", err)
	}
	out, err := os.ReadFile(img)
	if err != nil {
		return nil, fmt.Errorf("cloud-init seed: %w", err)
	}
	return trimToVolume(out)
}

// trimToVolume cuts the image to the volume space size its primary volume
// descriptor records (ECMA-119 8.4: the descriptor at sector 16, the
// size as a both-endian 32-bit block count at offset 80, the block size
// at offset 128).
func trimToVolume(img []byte) ([]byte, error) {
	const pvd = 16 * 2048
	if len(img) < pvd+2048 || img[pvd] != 1 || !bytes.Equal(img[pvd+1:pvd+6], []byte("CD001")) {
		return nil, errors.New("cloud-init seed: the written image has no primary volume descriptor")
	}
	blocks := int64(binary.LittleEndian.Uint32(img[pvd+80:]))
	bs := int64(binary.LittleEndian.Uint16(img[pvd+128:]))
	n := blocks * bs
	if n < pvd+2048 || n > int64(len(img)) {
		return nil, fmt.Errorf("cloud-init seed: the written volume claims %d bytes of a %d-byte image", n, len(img))
	}
	return img[:n], nil
}
