//go:build linux

package tinyimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/yunchi/yunchi/agent/cloudinit"
	"github.com/yunchi/yunchi/internal/libvirthost"
)

// The image boots, through SeaBIOS and syslinux, from a virtio disk (a
// qcow2 overlay of the built raw image, as the agent's driver makes root
// disks), reads its NoCloud seed from an IDE cdrom, sets the hostname and
// prints the marker on its logged serial console; the console then
// answers commands, and an ACPI shutdown request powers it off. The domain
// has the shape agent/libvirt's DomainXML gives it.
func TestBootsFromItsDisk(t *testing.T) {
	if why := libvirthost.Available(); why != "" {
		t.Skip(why)
	}
	if why := Available(); why != "" {
		t.Skip(why)
	}
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("booting the image needs qemu-img (apt-get install qemu-utils)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()

	begin := time.Now()
	img, err := Build(ctx, filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	built := time.Since(begin)
	begin = time.Now()
	again, err := Build(ctx, filepath.Join(dir, "cache"))
	if err != nil || again != img {
		t.Fatalf("second build: %q, %v; want the cached %q", again, err, img)
	}
	cached := time.Since(begin)
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image %s: %d MiB, built in %v, found in the cache in %v", filepath.Base(img), st.Size()>>20, built.Round(time.Millisecond), cached.Round(time.Millisecond))
	if st.Size() > 64<<20 {
		t.Errorf("image is %d bytes, want at most 64 MiB", st.Size())
	}

	disk := filepath.Join(dir, "root.qcow2")
	if out, err := exec.CommandContext(ctx, qemuImg, "create", "-q", "-f", "qcow2", "-F", Format, "-b", img, disk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	userData := "#cloud-config\nruncmd: [echo hi]\n"
	iso, err := cloudinit.Seed{InstanceID: "6c1f3c1e-0a0b-4c3d-9e8f-0000000000aa", Hostname: "tiny-test-1", UserData: userData}.ISO()
	if err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(dir, "seed.iso")
	if err := os.WriteFile(seed, iso, 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "console.log")

	h, err := libvirthost.Start(ctx, filepath.Join(dir, "host"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Stop(); err != nil {
			t.Error(err)
		}
	})
	conn, err := libvirt.NewConnect(h.URI)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	xml, err := domainXML(disk, seed, logPath)
	if err != nil {
		t.Fatal(err)
	}
	dom, err := conn.DomainDefineXML(xml)
	if err != nil {
		t.Fatalf("define: %v\n%s", err, xml)
	}
	t.Cleanup(func() {
		if active, err := dom.IsActive(); err == nil && active {
			if err := dom.Destroy(); err != nil {
				t.Error(err)
			}
		}
		if err := dom.Undefine(); err != nil {
			t.Error(err)
		}
		dom.Free()
	})
	if err := dom.Create(); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	want := Marker + " hostname=tiny-test-1"
	log, err := waitForLine(ctx, logPath, want, 90*time.Second)
	if err != nil {
		t.Fatalf("%v; console so far:\n%s", err, log)
	}
	t.Logf("start to %q: %v", want, time.Since(started).Round(time.Millisecond))
	sum := sha256.Sum256([]byte(userData))
	if wantSeed := SeedMarker + " device=/dev/sr0 user-data-sha256=" + hex.EncodeToString(sum[:]); !bytes.Contains(log, []byte("\n"+wantSeed+"\r\n")) {
		t.Errorf("console lacks the line %q:\n%s", wantSeed, log)
	}

	// The console answers: a command typed in is run by the guest's shell.
	reply, err := console(ctx, conn, dom, "echo tiny-$((6*7))\n", "tiny-42", 30*time.Second)
	if err != nil {
		t.Fatalf("console: %v; read:\n%s", err, reply)
	}

	// A graceful shutdown (the ACPI power button) powers the guest off.
	asked := time.Now()
	if err := dom.ShutdownFlags(libvirt.DOMAIN_SHUTDOWN_ACPI_POWER_BTN); err != nil {
		t.Fatal(err)
	}
	for {
		state, _, err := dom.GetState()
		if err != nil {
			t.Fatal(err)
		}
		if state == libvirt.DOMAIN_SHUTOFF {
			break
		}
		if time.Since(asked) > 30*time.Second {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("still in state %d 30 s after the ACPI power button; console:\n%s", state, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("ACPI shutdown to shut off: %v", time.Since(asked).Round(time.Millisecond))
}

// domainXML is the domain the test boots: the shape of agent/libvirt's
// DomainXML (virtio root disk booted by SeaBIOS, the seed as an IDE cdrom,
// a logged pty serial port with its console, ACPI, a virtio NIC on
// user-mode networking and a virtio balloon), as TCG.
func domainXML(disk, seed, logPath string) (string, error) {
	port := uint(0)
	d := &libvirtxml.Domain{
		Type:   "qemu",
		Name:   "tiny-test",
		Memory: &libvirtxml.DomainMemory{Value: 192, Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 1},
		OS: &libvirtxml.DomainOS{
			Type:        &libvirtxml.DomainOSType{Type: "hvm", Arch: "x86_64", Machine: "pc"},
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}},
		},
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{
				{
					Device: "disk",
					Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2", Discard: "unmap"},
					Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: disk}},
					Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
				},
				{
					Device:   "cdrom",
					Driver:   &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
					Source:   &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: seed}},
					Target:   &libvirtxml.DomainDiskTarget{Dev: "hdc", Bus: "ide"},
					ReadOnly: &libvirtxml.DomainDiskReadOnly{},
				},
			},
			Interfaces: []libvirtxml.DomainInterface{{
				Source: &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}},
				Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"},
			}},
			Serials: []libvirtxml.DomainSerial{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainSerialTarget{Port: &port},
				Log:    &libvirtxml.DomainChardevLog{File: logPath, Append: "off"},
			}},
			Consoles: []libvirtxml.DomainConsole{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port},
			}},
			MemBalloon: &libvirtxml.DomainMemBalloon{Model: "virtio", Stats: &libvirtxml.DomainMemBalloonStats{Period: 5}},
		},
	}
	return d.Marshal()
}

// waitForLine polls the console log until a line starts with want,
// returning what it read.
func waitForLine(ctx context.Context, path, want string, limit time.Duration) ([]byte, error) {
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte("\n"+want)) {
			return b, nil
		}
		if time.Now().After(deadline) {
			return b, errors.New("no " + want + " on the console within " + limit.String())
		}
		select {
		case <-ctx.Done():
			return b, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// console attaches to dom's serial console, types input and reads until
// the output holds want, or limit passes.
func console(ctx context.Context, conn *libvirt.Connect, dom *libvirt.Domain, input, want string, limit time.Duration) (string, error) {
	st, err := conn.NewStream(0)
	if err != nil {
		return "", err
	}
	defer st.Free()
	if err := dom.OpenConsole("", st, libvirt.DOMAIN_CONSOLE_FORCE); err != nil {
		return "", err
	}
	type chunk struct {
		b   []byte
		err error
	}
	got := make(chan chunk, 16)
	go func() {
		defer close(got)
		for {
			buf := make([]byte, 4096)
			n, err := st.Recv(buf)
			got <- chunk{buf[:n], err}
			if err != nil || n == 0 {
				return
			}
		}
	}()
	// Abort ends the blocked Recv; wait for the reader before Free.
	defer func() {
		st.Abort()
		for range got {
		}
	}()
	if _, err := st.Send([]byte(input)); err != nil {
		return "", err
	}
	var out strings.Builder
	timeout := time.After(limit)
	for {
		select {
		case c := <-got:
			out.Write(c.b)
			if strings.Contains(out.String(), want) {
				return out.String(), nil
			}
			if c.err != nil || len(c.b) == 0 {
				return out.String(), errors.New("console closed before " + want)
			}
		case <-timeout:
			return out.String(), errors.New("no " + want + " on the console within " + limit.String())
		case <-ctx.Done():
			return out.String(), ctx.Err()
		}
	}
}
