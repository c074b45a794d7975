package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/yunchi/yunchi/internal/pki"
)

// transport is how the CLI reaches the controllers: TLS verifying the
// server (--ca-cert, or the system's CAs), or plaintext (--insecure, or,
// with neither flag, when every --addr is on this machine: the dev
// cluster on loopback, where nothing crosses a network).
type transport struct {
	// nil: plaintext; a controller that then answers with TLS gets the
	// one-line hint to pass --ca-cert instead of a bare connection failure.
	tls *tls.Config
}

// plaintextWarning is what --insecure prints to stderr, once.
const plaintextWarning = "yunchi: plaintext: credentials and data cross the network unencrypted"

// caHint says what to pass to verify a TLS cluster's controllers.
const caHint = "pass --ca-cert <data-dir>/tls/ca.crt (the cluster CA, from a controller's data dir) or set YUNCHI_CA_CERT"

// newTransport reads --ca-cert and --insecure. The config file with login
// (later) plugs in here.
func newTransport(addrs []string, caFile string, insecure bool, stderr io.Writer) (transport, error) {
	switch {
	case caFile != "" && insecure:
		return transport{}, usagef("--ca-cert and --insecure exclude each other")
	case insecure:
		fmt.Fprintln(stderr, plaintextWarning)
		return transport{}, nil
	case caFile != "":
		pool, err := pki.LoadPool(caFile)
		if err != nil {
			return transport{}, usagef("--ca-cert: %v", err)
		}
		return transport{tls: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, NextProtos: []string{"h2"}}}, nil
	}
	for _, a := range addrs {
		if !loopback(a) {
			// The system's CAs: a controller serving the ministry's own
			// certificate (--tls-cert) needs no flag.
			return transport{tls: &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}}, nil
		}
	}
	return transport{}, nil
}

func loopback(addr string) bool {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// handshake runs the TLS handshake on a dialed connection (the client's
// dialer does it, so a failure is remembered with the address and
// explained).
func (t transport) handshake(ctx context.Context, conn net.Conn, addr string) (net.Conn, error) {
	if t.tls == nil {
		return conn, nil
	}
	cfg := t.tls.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, tlsError(err)
	}
	return tc, nil
}

// tlsError turns a failed verification into what to do about it.
func tlsError(err error) error {
	var ua x509.UnknownAuthorityError
	var cv *tls.CertificateVerificationError
	var he x509.HostnameError
	var rh tls.RecordHeaderError
	switch {
	case errors.As(err, &he):
		return usagef("the controller's certificate is not valid for %s (%v): use an address it names", he.Host, err)
	case errors.As(err, &ua), errors.As(err, &cv):
		return usagef("cannot verify the controller's certificate (%v): %s", err, caHint)
	case errors.As(err, &rh):
		return usagef("the controller does not speak TLS (a plaintext cluster, e.g. `yunchid dev` or --insecure): pass --insecure")
	}
	return err
}

// probeTLS says whether addr answers a TLS handshake (certificate not
// checked: only to explain a plaintext connection that failed).
func probeTLS(ctx context.Context, addr string, timeout time.Duration) bool {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: &tls.Config{InsecureSkipVerify: true}}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
