package api

import (
	"context"
	"time"

	"github.com/hashicorp/raft"

	"github.com/yunchi/yunchi/controller/raftstore"
	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// What the handlers need from the rest of the controller, as small
// interfaces so that they can be tested without a raft cluster. A
// controller wires them to its raft node (*raftnode.Node: Proposer and
// Membership) and its replicated state (*state.Store: ReadView).

// Proposer puts commands through the raft log and says who leads.
type Proposer interface {
	// Apply proposes cmd and waits for it to be applied; the error is the
	// FSM's rejection (*state.Error) or a raft error.
	Apply(ctx context.Context, cmd *statev1.Command) (state.Result, error)
	// Barrier waits until everything committed so far is applied here
	// (leader only).
	Barrier(ctx context.Context) error
	// CaughtUp makes sure this leader has applied every entry of earlier
	// terms.
	CaughtUp(ctx context.Context) error
	IsLeader() bool
	// LeaderID is the current leader's id ("" when there is none).
	LeaderID() string
}

// Membership is the raft configuration and this node's standing in it.
type Membership interface {
	// Configuration is this node's latest raft configuration.
	Configuration() (raft.Configuration, error)
	AddVoter(id, addr string, timeout time.Duration) error
	RemoveServer(id string, timeout time.Duration) error
	// LeadershipTransfer hands leadership to another voter (leader only).
	LeadershipTransfer() error
	// Removed: the configuration lists servers, but not this node.
	Removed() bool
	// Stats is raft's status map (state, term, commit_index, ...).
	Stats() map[string]string
	// Indexes are the current term, commit index and applied index.
	Indexes() (term, commit, applied uint64)
	// LogStoreHealth says whether the raft log store can write.
	LogStoreHealth() raftstore.Health
}

// ReadView is the replicated state as the handlers read it, and the
// checks they run before proposing (the rules Apply enforces, which live
// in controller/state).
type ReadView interface {
	TenancyView
	Index() uint64
	Changed() <-chan struct{}

	Centers() []string
	Host(id string) (state.HostView, bool)
	HostSummary(id string) (state.HostSummary, bool)
	Hosts() []state.HostView
	HostsPage(center, after string, limit int) ([]state.HostView, bool)
	HostLiveness(id string) (statev1.HostState, bool)
	HostRevision(id string) uint64

	VM(project, name string) (*statev1.VMRecord, bool)
	VMByID(id string) (*statev1.VMRecord, bool)
	VMs(project, hostID string) []*statev1.VMRecord
	VMsPage(project, hostID string, after state.VMKey, limit int) ([]*statev1.VMRecord, bool)

	PlacementGroup(project, name string) (state.GroupView, bool)
	PlacementGroups(project string) []state.GroupView
	HasPlacementGroup(project, name string) bool

	Member(id string) (*statev1.MemberRecord, bool)
	Ratios() []*statev1.RatioRecord
	Request(id string) (*statev1.RequestRecord, bool)

	Quota(dept, project string) (state.QuotaUse, bool)
	Quotas(dept string) []state.QuotaUse

	// Images (images.go).
	ProjectDepartment(project string) (string, bool)
	Image(project, name string) (*statev1.ImageRecord, bool)
	GetImage(project, name string) (*statev1.ImageRecord, bool)
	ImagesPage(project string, after state.ImageKey, limit int) ([]*statev1.ImageRecord, bool)
	Images() []*statev1.ImageRecord
	ImageVMs(r *statev1.ImageRecord) int
	ImageSHAs() map[string]bool
	ImagePeerKeyOK(sha, key string) bool

	// Volumes (volumes.go).
	Volume(project, name string) (*statev1.VolumeRecord, bool)
	VolumesPage(project string, after state.VolumeKey, limit int) ([]*statev1.VolumeRecord, bool)
	HostVolumes(hostID string) []*statev1.VolumeRecord
	CheckQuota(project string, ask state.Usage) error

	CheckCreatePlacementGroup(g *statev1.PlacementGroupRecord) error
	CheckSetRatios(c *statev1.SetRatios) error
	CheckUpdateHost(c *statev1.UpdateHost) error
}
