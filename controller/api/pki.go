package api

import (
	"context"
	"crypto/rand"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/internal/pki"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// TLS is a controller's transport security: the cluster CA (every
// controller holds its key and issues certificates) and the credentials it
// dials other controllers with (its own certificate: mutual TLS).
type TLS struct {
	CA   *pki.CA
	Dial credentials.TransportCredentials
}

// Join tokens.
const (
	joinTokenPrefix = "yj_"
	defaultJoinTTL  = time.Hour
	maxJoinTTL      = 7 * 24 * time.Hour
)

// randomText is n random characters of lower-case base32 ([a-z2-7], a
// subset of the [a-z0-9] tokens were made of before), each uniform: 5
// bits (crypto/rand.Text).
func randomText(n int) string {
	var b strings.Builder
	for b.Len() < n {
		b.WriteString(rand.Text())
	}
	return strings.ToLower(b.String()[:n])
}

// parseJoinToken splits "yj_<id>_<secret>", a token of kind; the error
// never repeats the token.
func parseJoinToken(tok string, kind statev1.JoinTokenKind) (id string, hash []byte, err error) {
	rest, ok := strings.CutPrefix(tok, joinTokenPrefix)
	id, secret, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 || !state.ValidName(id) || len(secret) < 16 {
		// The join token is the credential of these calls: without a
		// valid one they are unauthenticated, like any other call
		// without a token.
		cmd := "host"
		if kind == statev1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER {
			cmd = "cluster"
		}
		return "", nil, status.Errorf(codes.Unauthenticated, "join token is missing or malformed: want yj_<id>_<secret>, as `yunchi %s join-token create` printed it", cmd)
	}
	return id, auth.HashSecret(secret), nil
}

func (s *Server) needTLS() error {
	if s.TLS == nil {
		return status.Error(codes.FailedPrecondition, "this controller runs without TLS (--insecure): join tokens and certificates are for TLS clusters; start agents with --insecure")
	}
	return nil
}

func kindToState(k yunchiv1.JoinTokenKind) statev1.JoinTokenKind { return statev1.JoinTokenKind(k) }

// CreateJoinToken records a one-time join token (its secret's hash) and
// answers the token, once.
func (s *Server) CreateJoinToken(ctx context.Context, req *yunchiv1.CreateJoinTokenRequest) (*yunchiv1.JoinToken, error) {
	if err := s.needTLS(); err != nil {
		return nil, err
	}
	if req.Kind != yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_HOST && req.Kind != yunchiv1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER {
		return nil, invalid("join token kind must be host or controller")
	}
	ttl := time.Duration(req.TtlSeconds) * time.Second
	switch {
	case req.TtlSeconds < 0 || ttl > maxJoinTTL:
		return nil, invalid("join token ttl %ds is out of range: give 1s to 7 days (0: one hour)", req.TtlSeconds)
	case ttl == 0:
		ttl = defaultJoinTTL
	}
	if len(req.Description) > 256 {
		return nil, invalid("description is longer than 256 characters")
	}
	id, secret := randomText(8), randomText(32)
	sum := auth.HashSecret(secret)
	exp := time.Now().Add(ttl)
	if _, err := s.apply(ctx, &statev1.Command{Cmd: &statev1.Command_CreateJoinToken{CreateJoinToken: &statev1.CreateJoinToken{Token: &statev1.JoinTokenRecord{
		Id: id, Kind: kindToState(req.Kind), SecretHash: sum, ExpiresUnixNano: exp.UnixNano(), Description: req.Description,
	}}}}); err != nil {
		return nil, err
	}
	s.log.Info("join token created", "id", id, "kind", req.Kind.String(), "expires", exp.UTC().Format(time.RFC3339))
	return &yunchiv1.JoinToken{
		Id: id, Kind: req.Kind, Token: joinTokenPrefix + id + "_" + secret,
		Expires: timestamppb.New(exp), CaCertHash: s.TLS.CA.Hash(),
	}, nil
}

// joinChecker checks a join token as Apply will (*state.Store).
type joinChecker interface {
	CheckJoinToken(now int64, c *statev1.ConsumeJoinToken) error
}

// precheckJoin refuses a token the local state already says is no good
// (unknown, used, expired, other kind): a wrong token costs no raft entry.
// Apply checks again.
func (s *Server) precheckJoin(id string, hash []byte, kind statev1.JoinTokenKind, usedBy string) error {
	jc, ok := s.store.(joinChecker)
	if !ok {
		return nil
	}
	return joinStatus(jc.CheckJoinToken(time.Now().UnixNano(), &statev1.ConsumeJoinToken{Id: id, SecretHash: hash, Kind: kind, UsedBy: usedBy}))
}

// joinStatus: a refused join token (unknown, used, expired, of the other
// kind) fails authentication.
func joinStatus(err error) error {
	switch state.KindOf(err) {
	case state.KindFailedPrecondition, state.KindNotFound:
		return status.Error(codes.Unauthenticated, err.Error())
	}
	return toStatus(err)
}

// consumeJoin uses the token through raft (once, cluster-wide).
func (s *Server) consumeJoin(ctx context.Context, c *statev1.ConsumeJoinToken) (state.Result, error) {
	if err := s.precheckJoin(c.Id, c.SecretHash, c.Kind, c.UsedBy); err != nil {
		return state.Result{}, err
	}
	res, err := s.prop.Apply(ctx, &statev1.Command{Cmd: &statev1.Command_ConsumeJoinToken{ConsumeJoinToken: c}})
	return res, joinStatus(err)
}

// JoinHost trades a host join token for the host's certificate, the CA and
// a host API token.
func (s *Server) JoinHost(ctx context.Context, req *yunchiv1.JoinHostRequest) (*yunchiv1.JoinHostResponse, error) {
	id, hash, err := parseJoinToken(req.JoinToken, statev1.JoinTokenKind_JOIN_TOKEN_KIND_HOST)
	if err != nil {
		return nil, err
	}
	if err := s.needTLS(); err != nil {
		return nil, err
	}
	if err := checkHostID(req.HostId); err != nil {
		return nil, err
	}
	// The request is checked before the token is used: a bad one leaves
	// the token usable.
	certPEM, err := s.TLS.CA.IssueCSR(req.Csr, pki.Identity{Kind: pki.KindHost, ID: req.HostId}, false, time.Now())
	if err != nil {
		return nil, invalid("%v", err)
	}
	// The certificate is the host's credential: no API token is issued
	// (one nothing would use is only a secret to leak).
	if _, err := s.consumeJoin(ctx, &statev1.ConsumeJoinToken{
		Id: id, SecretHash: hash, Kind: statev1.JoinTokenKind_JOIN_TOKEN_KIND_HOST, UsedBy: req.HostId,
	}); err != nil {
		return nil, err
	}
	s.log.Info("host joined: certificate issued", "host", req.HostId, "join_token", id)
	return &yunchiv1.JoinHostResponse{Certificate: certPEM, CaCertificate: s.TLS.CA.CertPEM}, nil
}

// JoinController trades a controller join token for the cluster CA (with
// its key) and a certificate for the joining controller.
func (s *Server) JoinController(ctx context.Context, req *yunchiv1.JoinControllerRequest) (*yunchiv1.JoinControllerResponse, error) {
	id, hash, err := parseJoinToken(req.JoinToken, statev1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER)
	if err != nil {
		return nil, err
	}
	if err := s.needTLS(); err != nil {
		return nil, err
	}
	if err := checkName("controller id", req.Id); err != nil {
		return nil, err
	}
	certPEM, err := s.TLS.CA.IssueCSR(req.Csr, pki.Identity{Kind: pki.KindController, ID: req.Id}, true, time.Now())
	if err != nil {
		return nil, invalid("%v", err)
	}
	keyPEM, err := s.TLS.CA.KeyPEM()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "CA key: %v", err)
	}
	if _, err := s.consumeJoin(ctx, &statev1.ConsumeJoinToken{
		Id: id, SecretHash: hash, Kind: statev1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER, UsedBy: req.Id,
	}); err != nil {
		return nil, err
	}
	s.log.Info("controller credentials issued", "controller", req.Id, "join_token", id)
	return &yunchiv1.JoinControllerResponse{Certificate: certPEM, CaCertificate: s.TLS.CA.CertPEM, CaKey: keyPEM}, nil
}
