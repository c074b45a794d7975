package api

import (
	"encoding/base64"
	"strings"

	"github.com/yunchi/yunchi/controller/state"
)

// List pages: a client asks for page_size items and passes the answer's
// next_page_token to get the ones after. The token is the key of the last
// item given, opaque to clients (base64url; for VMs of "project NUL
// name"), so a page is right even when items were added or deleted in
// between.
const (
	defaultPageSize = 1000
	maxPageSize     = 5000
)

// pageSize reads page_size: 0 asks for def, more than limit is refused.
func pageSize(size int32, def, limit int) (int, error) {
	if size < 0 || int64(size) > int64(limit) {
		return 0, invalid("page_size %d is out of range: give 1 to %d (0 for %d)", size, limit, def)
	}
	if size == 0 {
		return def, nil
	}
	return int(size), nil
}

func badToken(token string) error {
	return invalid("page_token %q is not one this API gave: list again without it", token)
}

// vmPage reads a VM list's page_size and page_token.
func vmPage(size int32, token string) (int, state.VMKey, error) {
	n, err := pageSize(size, defaultPageSize, maxPageSize)
	if err != nil || token == "" {
		return n, state.VMKey{}, err
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	project, name, ok := strings.Cut(string(b), "\x00")
	if err != nil || !ok || checkName("project", project) != nil || checkName("vm name", name) != nil {
		return 0, state.VMKey{}, badToken(token)
	}
	return n, state.VMKey{Project: project, Name: name}, nil
}

func vmToken(k state.VMKey) string {
	return base64.RawURLEncoding.EncodeToString([]byte(k.Project + "\x00" + k.Name))
}

// hostPage reads a host list's page_size and page_token.
func hostPage(size int32, token string) (int, string, error) {
	n, err := pageSize(size, defaultPageSize, maxPageSize)
	if err != nil || token == "" {
		return n, "", err
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || checkHostID(string(b)) != nil {
		return 0, "", badToken(token)
	}
	return n, string(b), nil
}

func hostToken(id string) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }
