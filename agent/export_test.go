package agent

// NewDomainWorkers is newDomainWorkers, for the tests of package agent_test.
const NewDomainWorkers = newDomainWorkers
