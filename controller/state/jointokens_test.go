package state

import (
	"bytes"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

var (
	hostKind = statev1.JoinTokenKind_JOIN_TOKEN_KIND_HOST
	ctlKind  = statev1.JoinTokenKind_JOIN_TOKEN_KIND_CONTROLLER
)

func secretHash(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

func mkJoinToken(id string, kind statev1.JoinTokenKind, secret string, expires time.Duration) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_CreateJoinToken{CreateJoinToken: &statev1.CreateJoinToken{Token: &statev1.JoinTokenRecord{
		Id: id, Kind: kind, SecretHash: secretHash(secret), ExpiresUnixNano: int64(expires)}}}}
}

func consume(id string, kind statev1.JoinTokenKind, secret, by string, hostToken *statev1.TokenRecord) *statev1.Command {
	return &statev1.Command{Cmd: &statev1.Command_ConsumeJoinToken{ConsumeJoinToken: &statev1.ConsumeJoinToken{
		Id: id, Kind: kind, SecretHash: secretHash(secret), UsedBy: by, HostToken: hostToken}}}
}

// wantRefusedAt applies cmd at command time now and wants a refusal of
// kind k that changes nothing and does not repeat the secret.
func wantRefusedAt(t *testing.T, s *Store, index uint64, now time.Duration, cmd *statev1.Command, k Kind, msg string) {
	t.Helper()
	before := s.Snapshot()
	_, err := applyAt(t, s, index, now, cmd)
	if KindOf(err) != k || !strings.Contains(err.Error(), msg) {
		t.Fatalf("apply %d: %v, want kind %d saying %q", index, err, k, msg)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("the error repeats the secret: %v", err)
	}
	unchanged(t, s, before)
}

func TestJoinTokens(t *testing.T) {
	s := New()
	sec := time.Second
	host := func(id string) *statev1.TokenRecord {
		return &statev1.TokenRecord{Id: id, HostId: "h1", SecretHash: bytes.Repeat([]byte{1}, 32)}
	}
	if _, err := applyAt(t, s, 1, 10*sec, mkJoinToken("j1", hostKind, "s3cret-one", 100*sec)); err != nil {
		t.Fatal(err)
	}
	if _, err := applyAt(t, s, 2, 10*sec, mkJoinToken("j2", ctlKind, "s3cret-two", 100*sec)); err != nil {
		t.Fatal(err)
	}
	// Bad creates change nothing.
	wantRefusedAt(t, s, 3, 10*sec, mkJoinToken("j1", hostKind, "x", 100*sec), KindAlreadyExists, "already exists")
	wantRefusedAt(t, s, 3, 10*sec, mkJoinToken("j3", hostKind, "x", 5*sec), KindInvalid, "expire before")
	wantRefusedAt(t, s, 3, 10*sec, mkJoinToken("j3", 0, "x", 50*sec), KindInvalid, "host or controller")

	// Refusals: wrong secret, unknown id, wrong kind.
	wantRefusedAt(t, s, 3, 20*sec, consume("j1", hostKind, "s3cret-wrong", "h1", host("t1")), KindFailedPrecondition, "not valid")
	wantRefusedAt(t, s, 3, 20*sec, consume("nope", hostKind, "s3cret-one", "h1", host("t1")), KindFailedPrecondition, "not valid")
	wantRefusedAt(t, s, 3, 20*sec, consume("j2", hostKind, "s3cret-two", "h1", host("t1")), KindFailedPrecondition, "is for a controller")
	// A host token for another host than the joiner is refused.
	wantRefusedAt(t, s, 3, 20*sec, consume("j1", hostKind, "s3cret-one", "h2", host("t1")), KindInvalid, "joining host")

	// Used once: the host token is created in the same command.
	res, err := applyAt(t, s, 3, 20*sec, consume("j1", hostKind, "s3cret-one", "h1", host("t1")))
	if err != nil {
		t.Fatal(err)
	}
	if res.JoinToken.UsedBy != "h1" || res.JoinToken.UsedUnixNano != int64(20*sec) || res.Token.GetHostId() != "h1" || res.Token.User != "" {
		t.Fatalf("result %v", res)
	}
	if _, ok := s.Token("t1"); !ok {
		t.Fatal("the host token was not created")
	}
	// Used: refused, also with the right secret.
	wantRefusedAt(t, s, 4, 21*sec, consume("j1", hostKind, "s3cret-one", "h9", nil), KindFailedPrecondition, "already used (by h1)")
	// Expired: refused by command time (Apply reads no clock).
	wantRefusedAt(t, s, 4, 100*sec, consume("j2", ctlKind, "s3cret-two", "c2", nil), KindFailedPrecondition, "expired")
	if _, err := applyAt(t, s, 4, 99*sec, consume("j2", ctlKind, "s3cret-two", "c2", nil)); err != nil {
		t.Fatal(err)
	}

	// Snapshots keep them; restoring gives the same state.
	snap := s.Snapshot()
	if len(snap.JoinTokens) != 2 {
		t.Fatalf("snapshot has %d join tokens", len(snap.JoinTokens))
	}
	r := New()
	if err := r.Restore(overWire(t, snap)); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(r.Snapshot(), snap) {
		t.Fatal("restored state differs")
	}
	wantRefusedAt(t, r, 5, 22*sec, consume("j1", hostKind, "s3cret-one", "h1", nil), KindFailedPrecondition, "already used")

	// A day after they expired, the next create drops them.
	if _, err := applyAt(t, s, 5, 100*sec+25*time.Hour, mkJoinToken("j9", hostKind, "x", 200*sec+25*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ts := s.JoinTokens(); len(ts) != 1 || ts[0].Id != "j9" {
		t.Fatalf("join tokens after pruning: %v", ts)
	}
}
