package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
)

// HandshakenCreds are gRPC server credentials for connections whose TLS
// handshake already happened before gRPC saw them: the API port accepts
// TLS, then sniffs each connection for gRPC (controller/api/split.go) and
// hands it over decrypted. They report the connection's TLS state to gRPC
// (so PeerIdentity sees the client certificate) and let any other
// connection (the in-process one REST streams use) through as it is.
func HandshakenCreds() credentials.TransportCredentials { return handshaken{} }

type handshaken struct{}

// netConner is a wrapper that gives its connection back (*tls.Conn and
// the splitter's replay connections do).
type netConner interface{ NetConn() net.Conn }

func tlsState(c net.Conn) (tls.ConnectionState, bool) {
	for range 8 { // wrappers are at most a few deep
		switch cc := c.(type) {
		case *tls.Conn:
			return cc.ConnectionState(), true
		case netConner:
			c = cc.NetConn()
		default:
			return tls.ConnectionState{}, false
		}
	}
	return tls.ConnectionState{}, false
}

func (handshaken) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("pki: server-side credentials only")
}

func (handshaken) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	st, ok := tlsState(c)
	if !ok {
		return c, nil, nil
	}
	return c, credentials.TLSInfo{State: st, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (handshaken) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.2"}
}
func (h handshaken) Clone() credentials.TransportCredentials { return h }
func (handshaken) OverrideServerName(string) error           { return nil }

// verifyController checks that a presented chain verifies against roots
// and names a controller.
func verifyController(roots *x509.CertPool, raw [][]byte, usage x509.ExtKeyUsage) error {
	if len(raw) == 0 {
		return errors.New("no certificate presented: raft peers must present a controller certificate")
	}
	certs := make([]*x509.Certificate, 0, len(raw))
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return err
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return fmt.Errorf("peer certificate not issued by the cluster CA: %v", err)
	}
	id, ok := IdentityOf(certs[0])
	if !ok || id.Kind != KindController {
		return fmt.Errorf("peer certificate names %q, not a controller", certs[0].Subject.CommonName)
	}
	return nil
}

// PeerServerConfig is raft's listening side: the peer must present a
// controller certificate issued by the cluster CA.
func PeerServerConfig(cert tls.Certificate, roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert, // verified below, with the identity
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyController(roots, raw, x509.ExtKeyUsageClientAuth)
		},
	}
}

// PeerClientConfig is a controller dialing another controller (raft): the
// server must be a controller of the cluster CA (by identity, not by
// address: raft addresses are what peers advertise).
func PeerClientConfig(cert tls.Certificate, roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyController(roots, raw, x509.ExtKeyUsageServerAuth)
		},
	}
}
