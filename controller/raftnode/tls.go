package raftnode

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// PeerTLS is raft over mutual TLS between controllers: Server verifies the
// dialing controller, Client the one dialed (internal/pki's
// PeerServerConfig and PeerClientConfig).
type PeerTLS struct {
	Server, Client *tls.Config
}

// tlsStream is raft's network over mutual TLS (a raft.StreamLayer: a
// net.Listener that also dials).
type tlsStream struct {
	net.Listener
	advertise net.Addr
	client    *tls.Config
}

func newTLSStream(bind string, advertise net.Addr, t *PeerTLS) (*tlsStream, error) {
	if ta, ok := advertise.(*net.TCPAddr); ok && ta.IP.IsUnspecified() {
		return nil, fmt.Errorf("raft address %s cannot be dialed by peers: give --raft-advertise", advertise)
	}
	lis, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	if ta, ok := advertise.(*net.TCPAddr); advertise == nil || ok && ta.Port == 0 {
		advertise = lis.Addr()
	}
	return &tlsStream{Listener: tls.NewListener(lis, t.Server), advertise: advertise, client: t.Client}, nil
}

// Addr is the advertised address.
func (s *tlsStream) Addr() net.Addr { return s.advertise }

// Dial opens a connection to a peer with the TLS handshake done within
// timeout.
func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: s.client}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.DialContext(ctx, "tcp", string(address))
}
