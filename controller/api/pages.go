package api

import (
	"encoding/base64"
	"strings"

	"github.com/yunchi/yunchi/controller/state"
)

// List pages: a client asks for page_size items and passes the answer's
// next_page_token to get the ones after. The token is the key of the last
// item given, opaque to clients (base64url of "project NUL name"), so a
// page is right even when items were added or deleted in between.
const (
	defaultPageSize = 1000
	maxPageSize     = 5000
)

func pageOf(size int32, token string) (int, state.VMKey, error) {
	if size < 0 || size > maxPageSize {
		return 0, state.VMKey{}, invalid("page_size %d is out of range: give 1 to %d (0 for %d)", size, maxPageSize, defaultPageSize)
	}
	n := int(size)
	if n == 0 {
		n = defaultPageSize
	}
	if token == "" {
		return n, state.VMKey{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	project, name, ok := strings.Cut(string(b), "\x00")
	if err != nil || !ok || checkName("project", project) != nil || checkName("vm name", name) != nil {
		return 0, state.VMKey{}, invalid("page_token %q is not one this API gave: list again without it", token)
	}
	return n, state.VMKey{Project: project, Name: name}, nil
}

func pageToken(k state.VMKey) string {
	return base64.RawURLEncoding.EncodeToString([]byte(k.Project + "\x00" + k.Name))
}
