package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/yunchi/yunchi/internal/pki"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// JoinConfig is how an agent gets its credentials: from Dir when an
// earlier start stored them, otherwise by trading JoinToken for them with
// one of the Controllers, verified by the CA pin CAHash.
type JoinConfig struct {
	HostID      string
	Controllers []string
	Dir         string
	JoinToken   string
	CAHash      string
	// Wait bounds the join (zero: two minutes).
	Wait   time.Duration
	Logger *slog.Logger
}

// Credentials are an agent's mutual-TLS credentials: its certificate and
// the cluster CA it verifies controllers by.
func Credentials(ctx context.Context, jc JoinConfig) (credentials.TransportCredentials, error) {
	if jc.Dir == "" {
		return nil, fmt.Errorf("--credentials-dir is required (where the host's certificate is kept), or --insecure for a plaintext cluster")
	}
	if !pki.Exists(jc.Dir, pki.CACertFile) {
		if jc.JoinToken == "" || jc.CAHash == "" {
			return nil, fmt.Errorf("no credentials in %s: the first start needs --join-token (from `yunchi host join-token create`) and --ca-cert-hash (printed at bootstrap), or --insecure for a plaintext cluster", jc.Dir)
		}
		if err := join(ctx, jc); err != nil {
			return nil, err
		}
	}
	cert, err := pki.LoadKeyPair(filepath.Join(jc.Dir, pki.HostCertFile), filepath.Join(jc.Dir, pki.HostKeyFile), nil)
	if err != nil {
		return nil, fmt.Errorf("host certificate in %s: %w", jc.Dir, err)
	}
	if id, ok := pki.IdentityOf(cert.Leaf); !ok || id.Kind != pki.KindHost || id.ID != jc.HostID {
		return nil, fmt.Errorf("the certificate in %s is not host %q's (it names %s)", jc.Dir, jc.HostID, cert.Leaf.Subject.CommonName)
	}
	pool, err := pki.LoadPool(filepath.Join(jc.Dir, pki.CACertFile))
	if err != nil {
		return nil, err
	}
	tc := pki.ClientConfig(pool, &cert)
	tc.ServerName = pki.ClusterServerName
	return credentials.NewTLS(tc), nil
}

// join trades the join token for the host's certificate (naming its host)
// and the cluster CA, and stores them in jc.Dir (0600 files).
func join(ctx context.Context, jc JoinConfig) error {
	lg := jc.Logger
	if lg == nil {
		lg = slog.Default()
	}
	if err := pki.CheckHash(jc.CAHash); err != nil {
		return err
	}
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	csr, err := pki.CSR(key, jc.HostID, pki.Names{})
	if err != nil {
		return err
	}
	tc := pki.PinnedConfig(jc.CAHash)
	tc.ServerName = pki.ClusterServerName
	wait := jc.Wait
	if wait == 0 {
		wait = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	req := &yunchiv1.JoinHostRequest{HostId: jc.HostID, JoinToken: jc.JoinToken, Csr: csr}
	var resp *yunchiv1.JoinHostResponse
	if err := pki.Exchange(ctx, jc.Controllers, tc, lg, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = yunchiv1.NewAgentServiceClient(conn).JoinHost(ctx, req)
		return err
	}); err != nil {
		if errors.Is(err, pki.ErrNoAnswer) {
			return fmt.Errorf("no controller let this host join within %s: %w", wait, err)
		}
		return err
	}
	ca, err := pki.ParseCertPEM(resp.CaCertificate)
	if err != nil {
		return fmt.Errorf("the CA the controller sent: %w", err)
	}
	if pki.CertHash(ca) != jc.CAHash {
		return fmt.Errorf("the CA the controller sent has hash %s, not --ca-cert-hash %s", pki.CertHash(ca), jc.CAHash)
	}
	keyPEM, err := pki.KeyPEM(key)
	if err != nil {
		return err
	}
	if _, err := tls.X509KeyPair(resp.Certificate, keyPEM); err != nil {
		return fmt.Errorf("the certificate the controller sent: %w", err)
	}
	if err := pki.WriteFiles(jc.Dir, map[string][]byte{
		pki.HostKeyFile: keyPEM, pki.HostCertFile: resp.Certificate,
	}); err != nil {
		return fmt.Errorf("store the credentials: %w", err)
	}
	// ca.crt last: its presence says the directory is complete.
	if err := pki.WriteFiles(jc.Dir, map[string][]byte{pki.CACertFile: resp.CaCertificate}); err != nil {
		return fmt.Errorf("store the credentials: %w", err)
	}
	lg.Info("joined: host certificate stored", "dir", jc.Dir)
	return nil
}
