package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

func issue(t *testing.T, ca *CA, id Identity) *x509.Certificate {
	t.Helper()
	key, _ := NewKey()
	p, err := ca.Issue(&key.PublicKey, id, NamesOf("10.1.2.3:8470", "ctl.example:1", ClusterServerName), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCertPEM(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIdentityAndPeer(t *testing.T) {
	ca, err := NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c := issue(t, ca, Identity{Kind: KindHost, ID: "h1"})
	if id, ok := IdentityOf(c); !ok || id != (Identity{KindHost, "h1"}) {
		t.Fatalf("identity %v %v", id, ok)
	}
	if c.URIs[0].String() != "spiffe://yunchi/host/h1" {
		t.Fatalf("URI SAN %s", c.URIs[0])
	}
	if !strings.Contains(strings.Join(c.DNSNames, ","), "ctl.example") || len(c.IPAddresses) < 3 {
		t.Fatalf("names %v %v", c.DNSNames, c.IPAddresses)
	}
	for _, u := range []string{"spiffe://other/host/h1", "spiffe://yunchi/user/x", "spiffe://yunchi/host/", "spiffe://yunchi/host/a/b"} {
		pu, _ := url.Parse(u)
		if id, ok := IdentityOf(&x509.Certificate{URIs: []*url.URL{pu}}); ok {
			t.Errorf("%s read as %v", u, id)
		}
	}
	// Only a verified chain counts.
	ctx := func(verified bool) context.Context {
		st := tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}}
		if verified {
			st.VerifiedChains = [][]*x509.Certificate{{c, ca.Cert}}
		}
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: st}})
	}
	if id, ok := PeerIdentity(ctx(true)); !ok || id.ID != "h1" {
		t.Fatalf("verified peer: %v %v", id, ok)
	}
	if _, ok := PeerIdentity(ctx(false)); ok {
		t.Fatal("an unverified certificate gave an identity")
	}
	if _, ok := PeerIdentity(context.Background()); ok {
		t.Fatal("no peer gave an identity")
	}
}

func TestPinAndCSR(t *testing.T) {
	ca, _ := NewCA(time.Now())
	other, _ := NewCA(time.Now())
	leaf := issue(t, ca, Identity{Kind: KindController, ID: "c1"})
	if got, err := VerifyPinned([][]byte{leaf.Raw, ca.Cert.Raw}, ca.Hash()); err != nil || !got.Equal(ca.Cert) {
		t.Fatalf("right pin: %v", err)
	}
	if _, err := VerifyPinned([][]byte{leaf.Raw, ca.Cert.Raw}, other.Hash()); err == nil {
		t.Fatal("wrong pin accepted")
	}
	// A chain that claims the pinned CA but whose leaf another CA signed.
	forged := issue(t, other, Identity{Kind: KindController, ID: "c1"})
	if _, err := VerifyPinned([][]byte{forged.Raw, ca.Cert.Raw}, ca.Hash()); err == nil {
		t.Fatal("a leaf of another CA passed the pin")
	}
	for _, h := range []string{"", "sha256:zz", "md5:" + strings.Repeat("0", 64), ca.Hash()[:20]} {
		if CheckHash(h) == nil {
			t.Errorf("CheckHash(%q) passed", h)
		}
	}
	if err := CheckHash(ca.Hash()); err != nil {
		t.Fatal(err)
	}
	key, _ := NewKey()
	csr, err := CSR(key, "x", NamesOf("10.0.0.9:1"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.IssueCSR(csr, Identity{Kind: KindController, ID: "c2"}, true, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, _ := ParseCertPEM(p)
	if id, _ := IdentityOf(c); id.ID != "c2" || c.NotAfter.Before(time.Now().Add(364*24*time.Hour)) {
		t.Fatalf("issued %v until %v", id, c.NotAfter)
	}
	bad := append([]byte(nil), csr...)
	bad[len(bad)-3] ^= 0xff
	if _, err := ca.IssueCSR(bad, Identity{Kind: KindHost, ID: "h"}, false, time.Now()); err == nil {
		t.Fatal("a corrupt request was signed")
	}
}
