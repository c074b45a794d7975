package agent

import "time"

// NewDomainWorkers is newDomainWorkers, for the tests of package agent_test.
const NewDomainWorkers = newDomainWorkers

// SetMirrorKeepUnlisted sets how long an unlisted mirror export's file is
// kept, until the test ends.
func SetMirrorKeepUnlisted(t interface{ Cleanup(func()) }, d time.Duration) {
	old := mirrorKeepUnlisted
	mirrorKeepUnlisted = d
	t.Cleanup(func() { mirrorKeepUnlisted = old })
}
