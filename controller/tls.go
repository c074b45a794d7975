package controller

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

	"github.com/yunchi/yunchi/controller/raftnode"
	"github.com/yunchi/yunchi/internal/pki"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// security is a controller's TLS material, loaded (or made) by setupTLS.
type security struct {
	ca   *pki.CA
	api  *tls.Config // the API port
	peer *raftnode.PeerTLS
	dial credentials.TransportCredentials
}

// TLSDir is where a controller keeps its TLS files.
func TLSDir(dataDir string) string { return filepath.Join(dataDir, "tls") }

// joinWait bounds how long a joining controller tries to get its
// credentials from the controllers it was told to join.
const joinWait = 2 * time.Minute

// setupTLS loads <data-dir>/tls, or makes it: a new cluster CA at
// bootstrap, the CA and a certificate from a running controller when
// joining with a join token.
func setupTLS(cfg Config, lg *slog.Logger) (*security, error) {
	dir := TLSDir(cfg.DataDir)
	// The ministry's certificate first: a bad one leaves the data dir as
	// it was.
	var own *tls.Certificate
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		if cfg.TLSCert == "" || cfg.TLSKey == "" {
			return nil, errors.New("--tls-cert and --tls-key go together")
		}
		kp, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		own = &kp
	}
	names := pki.NamesOf(cfg.Listen, cfg.Advertise, cfg.RaftListen, cfg.RaftAdvertise, pki.ClusterServerName)
	if !pki.Exists(dir, pki.CACertFile) {
		switch {
		case cfg.Bootstrap:
			ca, err := pki.NewCA(time.Now())
			if err != nil {
				return nil, err
			}
			keyPEM, err := ca.KeyPEM()
			if err != nil {
				return nil, err
			}
			// ca.crt last: its presence says the directory is complete.
			if err := pki.WriteFiles(dir, map[string][]byte{pki.CAKeyFile: keyPEM}); err != nil {
				return nil, fmt.Errorf("write the cluster CA: %w", err)
			}
			if err := pki.WriteFiles(dir, map[string][]byte{pki.CACertFile: ca.CertPEM}); err != nil {
				return nil, fmt.Errorf("write the cluster CA: %w", err)
			}
			lg.Info("generated the cluster CA", "dir", dir, "ca_cert_hash", ca.Hash())
		case len(cfg.Join) > 0:
			if cfg.JoinToken == "" || cfg.CACertHash == "" {
				return nil, fmt.Errorf("no cluster CA in %s: a controller joining a TLS cluster needs --join-token (from `yunchi cluster join-token create`) and --ca-cert-hash (printed at bootstrap), or --insecure for a plaintext cluster", dir)
			}
			if err := joinCredentials(cfg, dir, names, lg); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("no cluster CA in %s: start the first controller with --bootstrap, the others with --join --join-token --ca-cert-hash, or all with --insecure (plaintext)", dir)
		}
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	if cfg.CACertHash != "" && ca.Hash() != cfg.CACertHash {
		return nil, fmt.Errorf("the cluster CA in %s has hash %s, not --ca-cert-hash %s", dir, ca.Hash(), cfg.CACertHash)
	}
	if !pki.Exists(dir, pki.ServerCertFile) {
		key, err := pki.NewKey()
		if err != nil {
			return nil, err
		}
		certPEM, err := ca.Issue(&key.PublicKey, pki.Identity{Kind: pki.KindController, ID: cfg.ID}, names, time.Now(), pki.CertLifetime)
		if err != nil {
			return nil, err
		}
		keyPEM, err := pki.KeyPEM(key)
		if err != nil {
			return nil, err
		}
		if err := pki.WriteFiles(dir, map[string][]byte{pki.ServerKeyFile: keyPEM, pki.ServerCertFile: certPEM}); err != nil {
			return nil, fmt.Errorf("write the controller certificate: %w", err)
		}
	}
	server, err := pki.LoadKeyPair(filepath.Join(dir, pki.ServerCertFile), filepath.Join(dir, pki.ServerKeyFile), ca.Cert)
	if err != nil {
		return nil, fmt.Errorf("controller certificate: %w", err)
	}
	if id, ok := pki.IdentityOf(server.Leaf); !ok || id.Kind != pki.KindController || id.ID != cfg.ID {
		return nil, fmt.Errorf("%s is not the certificate of controller %q: was this data dir another controller's?", filepath.Join(dir, pki.ServerCertFile), cfg.ID)
	}
	pool := ca.Pool()
	apiCfg := pki.ServerConfig(server, pool)
	if own != nil {
		apiCfg = pki.ServerConfig(*own, pool)
		// Agents and controllers ask for the cluster's own name and get
		// the cluster CA's certificate; everyone else the ministry's.
		apiCfg.Certificates = nil
		apiCfg.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if h.ServerName == pki.ClusterServerName {
				return &server, nil
			}
			return own, nil
		}
	}
	dialCfg := pki.ClientConfig(pool, &server)
	dialCfg.ServerName = pki.ClusterServerName
	return &security{
		ca: ca, api: apiCfg,
		peer: &raftnode.PeerTLS{Server: pki.PeerServerConfig(server, pool), Client: pki.PeerClientConfig(server, pool)},
		dial: credentials.NewTLS(dialCfg),
	}, nil
}

// joinCredentials asks the controllers in cfg.Join, verified by the CA
// pin, for the cluster CA and a certificate, and writes them into dir.
func joinCredentials(cfg Config, dir string, names pki.Names, lg *slog.Logger) error {
	if err := pki.CheckHash(cfg.CACertHash); err != nil {
		return err
	}
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	csr, err := pki.CSR(key, cfg.ID, names)
	if err != nil {
		return err
	}
	tc := pki.PinnedConfig(cfg.CACertHash)
	tc.ServerName = pki.ClusterServerName
	req := &yunchiv1.JoinControllerRequest{Id: cfg.ID, JoinToken: cfg.JoinToken, Csr: csr}
	parent := cfg.Context
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithTimeout(parent, joinWait)
	defer cancel()
	var resp *yunchiv1.JoinControllerResponse
	if err := pki.Exchange(ctx, cfg.Join, tc, lg, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = yunchiv1.NewClusterServiceClient(conn).JoinController(ctx, req)
		return err
	}); err != nil {
		if errors.Is(err, pki.ErrNoAnswer) {
			return fmt.Errorf("no controller in --join gave this controller its credentials within %s: %w", joinWait, err)
		}
		return err
	}
	ca, err := pki.ParseCA(resp.CaCertificate, resp.CaKey)
	if err != nil {
		return fmt.Errorf("the CA the cluster sent: %w", err)
	}
	if ca.Hash() != cfg.CACertHash {
		return fmt.Errorf("the CA the cluster sent has hash %s, not --ca-cert-hash %s", ca.Hash(), cfg.CACertHash)
	}
	keyPEM, err := pki.KeyPEM(key)
	if err != nil {
		return err
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	if err := pki.WriteFiles(dir, map[string][]byte{pki.CAKeyFile: caKey, pki.ServerKeyFile: keyPEM, pki.ServerCertFile: resp.Certificate}); err != nil {
		return fmt.Errorf("write the credentials: %w", err)
	}
	if err := pki.WriteFiles(dir, map[string][]byte{pki.CACertFile: ca.CertPEM}); err != nil {
		return fmt.Errorf("write the credentials: %w", err)
	}
	lg.Info("got the cluster CA and this controller's certificate", "dir", dir)
	return nil
}

// CAHash is the cluster CA's pin ("" without TLS).
func (c *Controller) CAHash() string {
	if c.sec == nil {
		return ""
	}
	return c.sec.ca.Hash()
}
