package pki

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// ErrNoAnswer wraps the last error when no address answered before ctx
// ended.
var ErrNoAnswer = errors.New("no controller answered")

// Exchange makes one credential exchange (a join) with the first of addrs
// that answers, over TLS configured by tc (the pinned CA): it tries each
// address in turn, then again with a growing pause (up to 5 s), until ctx
// ends. A refusal (the token: PermissionDenied, InvalidArgument,
// FailedPrecondition) or a failed handshake (the pin does not match) is
// final: retrying would not change it.
func Exchange(ctx context.Context, addrs []string, tc *tls.Config, lg *slog.Logger, call func(ctx context.Context, conn *grpc.ClientConn) error) error {
	var last error
	for backoff := 200 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		for _, addr := range addrs {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
			if err != nil {
				return fmt.Errorf("%s: %w", addr, err)
			}
			cctx, ccancel := context.WithTimeout(ctx, 15*time.Second)
			err = call(cctx, conn)
			ccancel()
			conn.Close()
			if err == nil {
				return nil
			}
			switch msg := status.Convert(err).Message(); {
			case status.Code(err) == codes.Unauthenticated, status.Code(err) == codes.PermissionDenied, status.Code(err) == codes.InvalidArgument, status.Code(err) == codes.FailedPrecondition:
				return fmt.Errorf("join via %s refused: %s", addr, msg)
			case strings.Contains(msg, "authentication handshake failed"):
				return fmt.Errorf("join via %s: %s", addr, msg)
			}
			last = fmt.Errorf("%s: %s", addr, status.Convert(err).Message())
			lg.Warn("join failed, will retry", "err", last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrNoAnswer, last)
		case <-time.After(backoff):
		}
	}
}
