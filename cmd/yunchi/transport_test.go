package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/yunchi/yunchi/internal/pki"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// startTLSFake is the fake controller behind TLS, with a certificate of a
// fresh CA for 127.0.0.1; it returns its address and the CA file.
func startTLSFake(t *testing.T) (addr, caFile string) {
	t.Helper()
	ca, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	certPEM, err := ca.Issue(&key.PublicKey, pki.Identity{Kind: pki.KindController, ID: "c1"}, pki.NamesOf("127.0.0.1"), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyPEM, _ := pki.KeyPEM(key)
	if err := pki.WriteFiles(dir, map[string][]byte{"c.crt": certPEM, "c.key": keyPEM, "ca.crt": ca.CertPEM}); err != nil {
		t.Fatal(err)
	}
	cert, err := pki.LoadKeyPair(filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key"), ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(pki.ServerConfig(cert, ca.Pool()))))
	f := &fakeController{calls: map[string]int{}}
	yunchiv1.RegisterClusterServiceServer(srv, fakeCluster{})
	yunchiv1.RegisterVMServiceServer(srv, fakeVMs{f: f})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), filepath.Join(dir, "ca.crt")
}

func TestTLSDialing(t *testing.T) {
	addr, caFile := startTLSFake(t)
	_, otherCA := startTLSFake(t)
	plain := startFake(t)

	if code, _, stderr := yunchi(t, "--addr", addr, "--ca-cert", caFile, "cluster", "members"); code != 0 {
		t.Fatalf("--ca-cert: exit %d: %s", code, stderr)
	}
	t.Setenv("YUNCHI_CA_CERT", caFile)
	if code, _, stderr := yunchi(t, "--addr", addr, "cluster", "members"); code != 0 {
		t.Fatalf("YUNCHI_CA_CERT: exit %d: %s", code, stderr)
	}
	os.Unsetenv("YUNCHI_CA_CERT")

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"TLS server, no CA", []string{"--addr", addr}, "serves TLS: pass --ca-cert <data-dir>/tls/ca.crt"},
		{"another CA", []string{"--addr", addr, "--ca-cert", otherCA}, "cannot verify the controller's certificate"},
		{"plaintext server, a CA", []string{"--addr", plain.addr, "--ca-cert", caFile}, "does not speak TLS"},
		{"both flags", []string{"--addr", addr, "--ca-cert", caFile, "--insecure"}, "exclude each other"},
		{"missing CA file", []string{"--addr", addr, "--ca-cert", filepath.Join(t.TempDir(), "none.crt")}, "--ca-cert: open"},
	} {
		code, _, stderr := yunchi(t, append(c.args, "cluster", "members")...)
		if code == 0 || !strings.Contains(oneErrorLine(t, stderr), c.want) {
			t.Errorf("%s: exit %d, stderr %q, want %q", c.name, code, stderr, c.want)
		}
	}

	// --insecure: plaintext, and one warning line.
	code, _, stderr := yunchi(t, "--addr", plain.addr, "--insecure", "cluster", "members")
	if code != 0 || stderr != plaintextWarning+"\n" {
		t.Fatalf("--insecure: exit %d, stderr %q", code, stderr)
	}
}

func TestTransportChoice(t *testing.T) {
	var sink strings.Builder
	for _, c := range []struct {
		addrs []string
		tls   bool
	}{
		{[]string{"127.0.0.1:8470", "localhost:1", "[::1]:2"}, false},
		{[]string{"127.0.0.1:8470", "10.0.0.1:8470"}, true},
		{[]string{"ctl.example:8470"}, true},
	} {
		tr, err := newTransport(c.addrs, "", false, &sink)
		if err != nil || (tr.tls != nil) != c.tls {
			t.Errorf("%v: tls %v, err %v; want tls %v", c.addrs, tr.tls != nil, err, c.tls)
		}
	}
	if sink.Len() != 0 {
		t.Fatalf("warned without --insecure: %q", sink.String())
	}
}
