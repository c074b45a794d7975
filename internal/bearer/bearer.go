// Package bearer is the gRPC per-call credentials that send an API token
// as "authorization: Bearer <token>": agents with their host token, the
// embedded dev cluster, tests and the benchmark. Standard library and
// grpc only (the CLI and test helpers build without cgo).
package bearer

import (
	"context"

	"google.golang.org/grpc/credentials"
)

// Token returns credentials sending tok ("": nothing) with every call,
// also over a plaintext connection (clusters without TLS). The metadata
// is made once: a call costs no allocation for it.
func Token(tok string) credentials.PerRPCCredentials {
	c := creds{}
	if tok != "" {
		c.md = map[string]string{"authorization": "Bearer " + tok}
	}
	return c
}

type creds struct{ md map[string]string } // read only: shared by every call

func (c creds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return c.md, nil
}

// RequireTransportSecurity is false: without TLS (yunchid dev,
// --insecure) the token alone authenticates.
func (creds) RequireTransportSecurity() bool { return false }
