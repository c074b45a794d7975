package state

import (
	"crypto/subtle"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// joinTokenKeep is how long an expired or used join token stays in the
// state (so a late attempt hears "used" or "expired", not "unknown"):
// CreateJoinToken drops older ones.
const joinTokenKeep = 24 * time.Hour

func kindName(k statev1.JoinTokenKind) string {
	switch k {
	case statev1.JoinTokenKind_JOIN_TOKEN_KIND_HOST:
		return "host"
	case statev1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER:
		return "controller"
	}
	return "unspecified"
}

func (s *Store) applyCreateJoinToken(now int64, c *statev1.CreateJoinToken) (*statev1.JoinTokenRecord, error) {
	t := c.GetToken()
	switch {
	case t.GetId() == "" || !ValidName(t.Id):
		return nil, errorf(KindInvalid, "join token id %q is not valid", t.GetId())
	case len(t.GetSecretHash()) != 32:
		return nil, errorf(KindInvalid, "join token secret hash must be 32 bytes (SHA-256), not %d", len(t.GetSecretHash()))
	case t.Kind != statev1.JoinTokenKind_JOIN_TOKEN_KIND_HOST && t.Kind != statev1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER:
		return nil, errorf(KindInvalid, "join token kind must be host or controller")
	case t.ExpiresUnixNano <= now:
		return nil, errorf(KindInvalid, "join token would expire before it is created")
	}
	if _, ok := s.joinTokens[t.Id]; ok {
		return nil, errorf(KindAlreadyExists, "join token %q already exists", t.Id)
	}
	for id, old := range s.joinTokens {
		if old.ExpiresUnixNano+int64(joinTokenKeep) < now {
			delete(s.joinTokens, id)
		}
	}
	rec := proto.Clone(t).(*statev1.JoinTokenRecord)
	rec.CreatedUnixNano, rec.UsedUnixNano, rec.UsedBy = now, 0, ""
	s.joinTokens[rec.Id] = rec
	return proto.Clone(rec).(*statev1.JoinTokenRecord), nil
}

// applyConsumeJoinToken uses a join token once; for a host it also creates
// the host's API token. Errors name the token id, never its secret.
// CheckJoinToken says whether c would consume its join token now: the
// check Apply makes first, for the API to refuse a bad token before
// anything is proposed.
func (s *Store) CheckJoinToken(now int64, c *statev1.ConsumeJoinToken) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, err := s.checkJoinToken(now, c)
	return err
}

// checkJoinToken finds c's join token and refuses an unknown, wrong,
// used or expired one. Callers hold mu.
func (s *Store) checkJoinToken(now int64, c *statev1.ConsumeJoinToken) (*statev1.JoinTokenRecord, error) {
	t, ok := s.joinTokens[c.GetId()]
	switch {
	case !ok || len(c.GetSecretHash()) != 32 || subtle.ConstantTimeCompare(t.SecretHash, c.SecretHash) != 1:
		return nil, errorf(KindFailedPrecondition, "join token is not valid: ask a sysadmin for a new one (`yunchi %s join-token create`)", cmdOf(c.Kind))
	case t.Kind != c.Kind:
		return nil, errorf(KindFailedPrecondition, "join token %s is for a %s, not a %s", t.Id, kindName(t.Kind), kindName(c.Kind))
	case t.UsedUnixNano != 0:
		return nil, errorf(KindFailedPrecondition, "join token %s was already used (by %s): a join token works once; create a new one", t.Id, t.UsedBy)
	case t.ExpiresUnixNano <= now:
		return nil, errorf(KindFailedPrecondition, "join token %s expired at %s: create a new one", t.Id, time.Unix(0, t.ExpiresUnixNano).UTC().Format(time.RFC3339))
	case c.GetUsedBy() == "":
		return nil, errorf(KindInvalid, "join token use names no host or controller")
	}
	return t, nil
}

func (s *Store) applyConsumeJoinToken(now int64, c *statev1.ConsumeJoinToken) (*statev1.JoinTokenRecord, *statev1.TokenRecord, error) {
	t, err := s.checkJoinToken(now, c)
	if err != nil {
		return nil, nil, err
	}
	var tok *statev1.TokenRecord
	if ht := c.GetHostToken(); ht != nil {
		if ht.User != "" || ht.HostId != c.UsedBy {
			return nil, nil, errorf(KindInvalid, "a join's host token is for the joining host %q only", c.UsedBy)
		}
		var err error
		if tok, err = s.applyCreateToken(now, &statev1.CreateToken{Token: ht}); err != nil {
			return nil, nil, err
		}
	}
	t = proto.Clone(t).(*statev1.JoinTokenRecord)
	t.UsedUnixNano, t.UsedBy = now, c.UsedBy
	s.joinTokens[t.Id] = t
	return proto.Clone(t).(*statev1.JoinTokenRecord), tok, nil
}

func cmdOf(k statev1.JoinTokenKind) string {
	if k == statev1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER {
		return "cluster"
	}
	return "host"
}

// JoinTokens lists the join tokens (secret hashes included), by id.
func (s *Store) JoinTokens() []*statev1.JoinTokenRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*statev1.JoinTokenRecord, 0, len(s.joinTokens))
	for _, t := range s.joinTokens {
		out = append(out, proto.Clone(t).(*statev1.JoinTokenRecord))
	}
	slices.SortFunc(out, func(a, b *statev1.JoinTokenRecord) int { return strings.Compare(a.Id, b.Id) })
	return out
}
