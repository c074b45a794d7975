package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"strings"
)

// Tokens are "yc_<id>_<secret>": the id (16 characters) names the token in
// lists and the audit trail; the secret (52 characters, 256 random bits)
// proves it. Only SHA-256(secret) is stored: the secret has full entropy,
// so a slow password hash would add nothing but CPU per request.
const (
	tokenPrefix = "yc_"
	idBytes     = 10
	secretBytes = 32
)

var enc = base32.StdEncoding.WithPadding(base32.NoPadding)

// NewToken makes a token; it returns the whole token (shown once), its id
// and the hash to store.
func NewToken() (token, id string, hash []byte, err error) {
	var b [idBytes + secretBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", nil, err
	}
	id = strings.ToLower(enc.EncodeToString(b[:idBytes]))
	secret := strings.ToLower(enc.EncodeToString(b[idBytes:]))
	return tokenPrefix + id + "_" + secret, id, HashSecret(secret), nil
}

// ErrMalformed is ParseToken's error for anything that is not a token.
var ErrMalformed = errors.New("not a Yunchi token (want yc_<id>_<secret>)")

// ParseToken splits a token into its id and secret.
func ParseToken(tok string) (id, secret string, err error) {
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok {
		return "", "", ErrMalformed
	}
	id, secret, ok = strings.Cut(rest, "_")
	if !ok || len(id) != enc.EncodedLen(idBytes) || len(secret) != enc.EncodedLen(secretBytes) || !lowerBase32(id) || !lowerBase32(secret) {
		return "", "", ErrMalformed
	}
	return id, secret, nil
}

func lowerBase32(s string) bool {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// HashSecret is what is stored for a secret.
func HashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// SecretMatches compares in constant time.
func SecretMatches(secret string, hash []byte) bool {
	return subtle.ConstantTimeCompare(HashSecret(secret), hash) == 1
}
