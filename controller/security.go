package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/controller/state"
	"github.com/yunchi/yunchi/internal/pki"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// AdminTokensFile is where the bootstrap controller writes the tokens of
// the three administrator accounts it creates (mode 0600, in its data dir).
const AdminTokensFile = "admin-tokens.json"

// AdminTokens are the first tokens of the separated administrators.
type AdminTokens struct {
	Sysadmin string `json:"sysadmin"`
	Secadmin string `json:"secadmin"`
	Auditor  string `json:"auditor"`
}

// ReadAdminTokens reads the tokens a bootstrap controller wrote.
func ReadAdminTokens(dataDir string) (AdminTokens, error) {
	var t AdminTokens
	b, err := os.ReadFile(filepath.Join(dataDir, AdminTokensFile))
	if err != nil {
		return t, err
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return t, fmt.Errorf("%s: %w", AdminTokensFile, err)
	}
	return t, nil
}

// WaitAdminTokens waits, up to d, for the bootstrap controller with data
// dir dataDir to write the administrators' tokens (alive, when not nil,
// says whether that controller still runs: no use waiting otherwise).
func WaitAdminTokens(ctx context.Context, dataDir string, d time.Duration, alive func() bool) (AdminTokens, error) {
	deadline := time.Now().Add(d)
	path := filepath.Join(dataDir, AdminTokensFile)
	for {
		toks, err := ReadAdminTokens(dataDir)
		if err == nil && toks.Sysadmin != "" && toks.Secadmin != "" {
			return toks, nil
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return toks, err
		}
		if alive != nil && !alive() {
			return toks, fmt.Errorf("the controller ended before it wrote %s", path)
		}
		if time.Now().After(deadline) {
			return toks, fmt.Errorf("no %s after %v: the first controller made no administrator accounts", path, d)
		}
		select {
		case <-ctx.Done():
			return toks, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// bootstrapAdmins creates, once, the accounts sysadmin, secadmin and
// auditor with a token each (no expiry: rotate them once real accounts
// exist). The tokens go to the data dir first, so that a crash between
// writing and proposing proposes the same tokens again next time; the
// request ids make proposing twice harmless. It returns the tokens when
// this call created them (to be printed once), nil otherwise.
func (c *Controller) bootstrapAdmins(ctx context.Context) (*AdminTokens, error) {
	path := filepath.Join(c.cfg.DataDir, AdminTokensFile)
	toks, err := ReadAdminTokens(c.cfg.DataDir)
	fresh := false
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if len(c.node.Store.Users("")) > 0 {
			return nil, nil // accounts exist: this data dir was not the first
		}
		for _, p := range []*string{&toks.Sysadmin, &toks.Secadmin, &toks.Auditor} {
			if *p, _, _, err = auth.NewToken(); err != nil {
				return nil, err
			}
		}
		b, _ := json.MarshalIndent(toks, "", "  ")
		if err := pki.WriteFiles(c.cfg.DataDir, map[string][]byte{AdminTokensFile: append(b, '\n')}); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		fresh = true
	case err != nil:
		return nil, err
	}
	for _, a := range []struct {
		name string
		role statev1.Role
		tok  string
	}{{"sysadmin", statev1.Role_ROLE_SYSADMIN, toks.Sysadmin}, {"secadmin", statev1.Role_ROLE_SECADMIN, toks.Secadmin}, {"auditor", statev1.Role_ROLE_AUDITOR, toks.Auditor}} {
		id, secret, err := auth.ParseToken(a.tok)
		if err != nil {
			return nil, fmt.Errorf("%s: %s token: %w", path, a.name, err)
		}
		if _, ok := c.node.Store.User(a.name); !ok {
			uctx := state.WithRequest(ctx, "bootstrap-user-"+a.name, []byte(a.name))
			if _, err := c.node.Apply(uctx, &statev1.Command{Cmd: &statev1.Command_CreateUser{CreateUser: &statev1.CreateUser{User: &statev1.UserRecord{
				Name: a.name, Role: a.role, DisplayName: "bootstrap " + a.name}}}}); err != nil && state.KindOf(err) != state.KindAlreadyExists {
				return nil, err
			}
		}
		if _, ok := c.node.Store.Token(id); !ok {
			tctx := state.WithRequest(ctx, "bootstrap-token-"+a.name, []byte(id))
			if _, err := c.node.Apply(tctx, &statev1.Command{Cmd: &statev1.Command_CreateToken{CreateToken: &statev1.CreateToken{Token: &statev1.TokenRecord{
				Id: id, User: a.name, SecretHash: auth.HashSecret(secret), Description: "bootstrap"}}}}); err != nil && state.KindOf(err) != state.KindAlreadyExists {
				return nil, err
			}
		}
	}
	if fresh {
		return &toks, nil
	}
	return nil, nil
}

// IssueHostToken makes a host token for hostID (no expiry) and records
// it; only the leader can (raft refuses elsewhere). For the embedded dev
// cluster, whose agents run in the same process; elsewhere a security
// administrator makes host tokens with `yunchi token create --host`.
func (c *Controller) IssueHostToken(ctx context.Context, hostID string) (string, error) {
	tok, id, hash, err := auth.NewToken()
	if err != nil {
		return "", err
	}
	_, err = c.node.Apply(ctx, &statev1.Command{Cmd: &statev1.Command_CreateToken{CreateToken: &statev1.CreateToken{Token: &statev1.TokenRecord{
		Id: id, HostId: hostID, SecretHash: hash, Description: "yunchid dev agent"}}}})
	if err != nil {
		return "", err
	}
	return tok, nil
}

// peerIdentity is the caller's verified client certificate, as the access
// interceptor takes it: a host's agent or another controller.
func peerIdentity(ctx context.Context) (auth.Kind, string, bool) {
	id, ok := pki.PeerIdentity(ctx)
	if !ok {
		return 0, "", false
	}
	switch id.Kind {
	case pki.KindHost:
		return auth.KindHost, id.ID, true
	case pki.KindController:
		return auth.KindController, id.ID, true
	}
	return 0, "", false
}
