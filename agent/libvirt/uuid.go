package libvirt

import "github.com/google/uuid"

// uuidNamespace is the name-space UUID for VM ids that are not UUIDs
// themselves (RFC 9562 version 5). Changing it would orphan every such domain.
var uuidNamespace = uuid.UUID{
	0x5c, 0x1f, 0x0e, 0x6a, 0x8e, 0x44, 0x4d, 0x2b,
	0x9f, 0x3a, 0x61, 0x79, 0x75, 0x6e, 0x63, 0x68,
}

// domainUUID is the libvirt UUID of a VM's domain: the VM id itself when it
// is a UUID, otherwise a name-based UUID derived from it. Either way one VM id
// maps to one UUID, and libvirt refuses a second domain with the same UUID.
//
// Only the canonical 36-character form counts as a UUID: uuid.Parse also
// takes the 32-digit, braced and urn: forms, and taking them now would move
// existing domains of such ids to another UUID.
func domainUUID(vmID string) string {
	if len(vmID) == 36 {
		if u, err := uuid.Parse(vmID); err == nil {
			return u.String()
		}
	}
	return uuid.NewSHA1(uuidNamespace, []byte(vmID)).String()
}

// domainName is the libvirt name of a VM's domain. It is built from the UUID,
// never from user text, so it is always a valid, unique libvirt name.
func domainName(vmID string) string {
	return "yunchi-" + domainUUID(vmID)
}

// DomainName is the libvirt domain name of a VM id (what virsh lists, and
// what a console log is named after).
func DomainName(vmID string) string { return domainName(vmID) }
