// Package pki is Yunchi's transport security: the cluster CA (ECDSA P-256,
// generated at bootstrap), the certificates it issues to controllers and
// hosts (identity in a URI SAN: spiffe://yunchi/controller/<id>,
// spiffe://yunchi/host/<id>), the TLS configurations of the API port, raft
// and the clients, the CA pin joiners verify (sha256 of the CA's public
// key, as kubeadm's --discovery-token-ca-cert-hash), and PeerIdentity: who
// the verified client certificate of a gRPC call says the caller is.
package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ClusterServerName is the name agents and controllers ask for (TLS SNI)
// and verify when they dial a controller: every controller certificate
// carries it, so the cluster's own connections do not depend on addresses,
// and a controller serving the ministry's certificate (--tls-cert) still
// answers them with the cluster CA's.
const ClusterServerName = "controllers.yunchi.internal"

// Identity kinds.
const (
	KindHost       = "host"
	KindController = "controller"
)

// Identity is who a certificate issued by the cluster CA names.
type Identity struct {
	Kind string // KindHost or KindController
	ID   string
}

func (i Identity) String() string { return i.Kind + "/" + i.ID }

// URI is the certificate's URI SAN for the identity.
func (i Identity) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: "yunchi", Path: "/" + i.Kind + "/" + i.ID}
}

// IdentityOf reads the identity of a certificate from its URI SANs.
func IdentityOf(cert *x509.Certificate) (Identity, bool) {
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" || u.Host != "yunchi" {
			continue
		}
		kind, id, ok := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		if !ok || id == "" || strings.Contains(id, "/") {
			continue
		}
		if kind == KindHost || kind == KindController {
			return Identity{Kind: kind, ID: id}, true
		}
	}
	return Identity{}, false
}

// PeerIdentity is the identity of the gRPC peer's client certificate, only
// when the TLS handshake verified it against the cluster CA (the API
// port's and raft's configurations verify client certificates against
// the cluster CA and nothing else). ok is false on plaintext connections,
// without a client certificate, and for in-process calls.
func PeerIdentity(ctx context.Context) (Identity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Identity{}, false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return Identity{}, false
	}
	return IdentityOf(ti.State.VerifiedChains[0][0])
}

// CA is the cluster CA.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
}

// Lifetimes.
const (
	CALifetime   = 10 * 365 * 24 * time.Hour
	CertLifetime = 365 * 24 * time.Hour
)

// NewKey makes an ECDSA P-256 key.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
}

// NewCA generates a cluster CA.
func NewCA(now time.Time) (*CA, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "Yunchi cluster CA", Organization: []string{"yunchi"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: CertPEM(der)}, nil
}

// ParseCA reads a CA from its PEM certificate and key.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, errors.New("the CA certificate is not a CA")
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("the CA key does not belong to the CA certificate")
	}
	return &CA{Cert: cert, Key: key, CertPEM: CertPEM(cert.Raw)}, nil
}

// Pool is a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// KeyPEM is the CA's key, PEM (a secret).
func (ca *CA) KeyPEM() ([]byte, error) { return KeyPEM(ca.Key) }

// Hash is the CA's pin.
func (ca *CA) Hash() string { return CertHash(ca.Cert) }

// Names are the DNS names and IP addresses a certificate is valid for.
type Names struct {
	DNS []string
	IPs []net.IP
}

// NamesOf splits host:port or host addresses into DNS names and IPs, with
// localhost and 127.0.0.1 always in.
func NamesOf(addrs ...string) Names {
	n := Names{DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}}
	seen := map[string]bool{"localhost": true, "127.0.0.1": true, "::1": true}
	for _, a := range addrs {
		if a == "" {
			continue
		}
		h := a
		if hh, _, err := net.SplitHostPort(a); err == nil {
			h = hh
		}
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			if !ip.IsUnspecified() {
				n.IPs = append(n.IPs, ip)
			}
			continue
		}
		n.DNS = append(n.DNS, h)
	}
	return n
}

// Issue signs a certificate for pub naming id, valid for TLS server and
// client use (controllers are both; hosts only dial, but one kind of
// certificate keeps this simple).
func (ca *CA) Issue(pub crypto.PublicKey, id Identity, names Names, now time.Time, lifetime time.Duration) ([]byte, error) {
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: id.String(), Organization: []string{"yunchi"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URI()},
		DNSNames:     names.DNS,
		IPAddresses:  names.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, err
	}
	return CertPEM(der), nil
}

// IssueCSR checks a PKCS#10 request's signature and issues a certificate for
// its key naming id. Only the key (and, for controllers, the DNS and IP
// names) come from the request: the identity is the issuer's decision.
func (ca *CA) IssueCSR(csrDER []byte, id Identity, withNames bool, now time.Time) ([]byte, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request: bad signature: %v", err)
	}
	var names Names
	if withNames {
		names = Names{DNS: csr.DNSNames, IPs: csr.IPAddresses}
	}
	return ca.Issue(csr.PublicKey, id, names, now, CertLifetime)
}

// CSR makes a certificate request for key with the given names.
func CSR(key *ecdsa.PrivateKey, cn string, names Names) ([]byte, error) {
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: cn}, DNSNames: names.DNS, IPAddresses: names.IPs,
	}, key)
}

// CertHash is a certificate's pin: "sha256:" and the hex SHA-256 of its
// SubjectPublicKeyInfo.
func CertHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// CheckHash validates a --ca-cert-hash value.
func CheckHash(h string) error {
	hx, ok := strings.CutPrefix(h, "sha256:")
	if b, err := hex.DecodeString(hx); !ok || err != nil || len(b) != sha256.Size {
		return fmt.Errorf("--ca-cert-hash %q: want sha256:<64 hex digits>, as `yunchid controller --bootstrap` printed", h)
	}
	return nil
}

// CertPEM encodes a DER certificate.
func CertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// KeyPEM encodes a private key (PKCS#8).
func KeyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCertPEM reads the first certificate of a PEM text.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM certificate found")
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

// ParseKeyPEM reads an ECDSA private key (PKCS#8 or SEC 1).
func ParseKeyPEM(b []byte) (*ecdsa.PrivateKey, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key found")
		}
		switch blk.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, err
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("private key is %T, not ECDSA", k)
			}
			return ek, nil
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(blk.Bytes)
		}
	}
}

// Files of a controller's tls directory (<data-dir>/tls) and of an agent's
// credentials directory.
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
	HostCertFile   = "host.crt"
	HostKeyFile    = "host.key"
)

// WriteFiles writes files into dir (made 0700), each 0600, through a
// temporary file renamed into place, so a crash leaves whole files.
func WriteFiles(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, b := range files {
		tmp, err := os.CreateTemp(dir, "."+name+".tmp*")
		if err != nil {
			return err
		}
		_, werr := tmp.Write(b)
		if err := errors.Join(werr, tmp.Chmod(0o600), tmp.Sync(), tmp.Close()); err != nil {
			os.Remove(tmp.Name())
			return err
		}
		if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
			os.Remove(tmp.Name())
			return err
		}
	}
	return nil
}

// Exists says whether dir holds file.
func Exists(dir, file string) bool {
	_, err := os.Stat(filepath.Join(dir, file))
	return err == nil
}

// LoadCA reads ca.crt and ca.key from dir.
func LoadCA(dir string) (*CA, error) {
	c, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	k, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, err
	}
	ca, err := ParseCA(c, k)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return ca, nil
}

// LoadPool reads a PEM file of CA certificates.
func LoadPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return p, nil
}

// LoadKeyPair reads a certificate and key, with ca appended to the chain
// (so a joiner that pins the CA sees it) unless nil.
func LoadKeyPair(certFile, keyFile string, ca *x509.Certificate) (tls.Certificate, error) {
	kp, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	if ca != nil && len(kp.Certificate) == 1 {
		kp.Certificate = append(kp.Certificate, ca.Raw)
	}
	return kp, nil
}

// ServerConfig is the API port's TLS: cert (the cluster CA's server
// certificate, or the ministry's own), ALPN h2 and http/1.1, client
// certificates requested and, when given, verified against the cluster
// CA (users come without one, with bearer tokens).
func ServerConfig(cert tls.Certificate, clusterCA *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    clusterCA,
		NextProtos:   []string{"h2", "http/1.1"},
	}
}

// ClientConfig verifies the server against roots, presenting cert when
// not nil.
func ClientConfig(roots *x509.CertPool, cert *tls.Certificate) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// PinnedConfig trusts a server only if the chain it presents holds a CA
// whose pin is hash and its leaf was issued by that CA (names are not
// checked: the joiner knows the CA, not yet the names). For the first
// call of a joiner, which has no CA yet.
func PinnedConfig(hash string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := VerifyPinned(raw, hash)
			return err
		},
	}
}

// VerifyPinned checks a presented chain against a pin and returns the CA.
func VerifyPinned(raw [][]byte, hash string) (*x509.Certificate, error) {
	if len(raw) == 0 {
		return nil, errors.New("the server presented no certificate")
	}
	var certs []*x509.Certificate
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	for _, c := range certs {
		if !c.IsCA || CertHash(c) != hash {
			continue
		}
		pool := x509.NewCertPool()
		pool.AddCert(c)
		inter := x509.NewCertPool()
		for _, i := range certs[1:] {
			inter.AddCert(i)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return nil, fmt.Errorf("server certificate does not chain to the pinned CA: %v", err)
		}
		return c, nil
	}
	return nil, fmt.Errorf("the server's certificate chain holds no CA matching --ca-cert-hash %s (wrong cluster, or its API uses another certificate)", hash)
}
