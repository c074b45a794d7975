package libvirt

import (
	"crypto/sha1"
	"encoding/hex"
	"strings"
)

// uuidNamespace is the name-space UUID for VM ids that are not UUIDs
// themselves (RFC 9562 version 5). Changing it would orphan every such domain.
var uuidNamespace = [16]byte{
	0x5c, 0x1f, 0x0e, 0x6a, 0x8e, 0x44, 0x4d, 0x2b,
	0x9f, 0x3a, 0x61, 0x79, 0x75, 0x6e, 0x63, 0x68,
}

// domainUUID is the libvirt UUID of a VM's domain: the VM id itself when it
// is a UUID, otherwise a name-based UUID derived from it. Either way one VM id
// maps to one UUID, and libvirt refuses a second domain with the same UUID.
func domainUUID(vmID string) string {
	if u, ok := parseUUID(vmID); ok {
		return formatUUID(u)
	}
	h := sha1.New()
	h.Write(uuidNamespace[:])
	h.Write([]byte(vmID))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = (u[6] & 0x0f) | 0x50 // version 5
	u[8] = (u[8] & 0x3f) | 0x80 // RFC 4122 variant
	return formatUUID(u)
}

// domainName is the libvirt name of a VM's domain. It is built from the UUID,
// never from user text, so it is always a valid, unique libvirt name.
func domainName(vmID string) string {
	return "yunchi-" + domainUUID(vmID)
}

func parseUUID(s string) ([16]byte, bool) {
	var u [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, false
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		return u, false
	}
	copy(u[:], b)
	return u, true
}

func formatUUID(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
