package ds

import (
	"strconv"
	"time"
)

// Mode says how much of a group the Delivery Service can see.
type Mode int

const (
	// ModeTransparent groups send Proposals and Commits as PublicMessages.
	// The Service keeps the group's public state (tree, GroupContext),
	// verifies every handshake message against it and derives the roster
	// from the credentials in the tree.
	ModeTransparent Mode = iota
	// ModeOpaque groups may encrypt everything. The Service orders by the
	// clear header (group_id, epoch, content_type) and takes roster
	// changes from the committing client.
	ModeOpaque
)

func (m Mode) String() string {
	switch m {
	case ModeTransparent:
		return "transparent"
	case ModeOpaque:
		return "opaque"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// ExternalJoinPolicy says who may read what an external joiner needs of a
// transparent group (its GroupInfo, tree and pending Proposals) and join it
// by external Commit (RFC 9420 §12.4.3.2).
type ExternalJoinPolicy int

const (
	// ExternalJoinLinks, the default, lets in the group's members (to
	// resync), clients of a user that has a member client in the group
	// (new devices), and holders of a live join link (see CreateJoinLink).
	ExternalJoinLinks ExternalJoinPolicy = iota
	// ExternalJoinMembersOnly lets in members only.
	ExternalJoinMembersOnly
	// ExternalJoinAny lets any registered client read every transparent
	// group's GroupInfo and tree and join it. It weakens security: any
	// client can then join any transparent group whose id it learns. Only
	// an operator who wants open groups should choose it.
	ExternalJoinAny
)

// Config holds the bounds and policies of a Service. A zero field takes the
// default given in its comment. For the rate limits a negative value turns
// the limit off.
type Config struct {
	MaxMessageSize          int           // bytes of one MLSMessage; default 1 MiB
	MaxGroupSize            int           // members of a group; default 50_000
	MaxKeyPackagesPerClient int           // unclaimed KeyPackages stored per client; default 1_000
	MaxKeyPackageLifetime   time.Duration // longest lifetime a KeyPackage may claim; default 90 days
	KeyPackageLowWater      int           // a client is told when its stock for a suite falls below this; default 10
	MaxGroupIDSize          int           // bytes of a group id; default 255
	MaxClientIDSize         int           // bytes of a client or user id; default 255

	// AppMessageEpochWindow is how many epochs old an application message
	// may be: with 2, a group at epoch 7 takes application messages of
	// epochs 5, 6 and 7. Default 2. Proposals and Commits must always be
	// for the current epoch.
	AppMessageEpochWindow uint64
	// ZeroAppMessageEpochWindow makes AppMessageEpochWindow 0 (only the
	// current epoch), since a zero AppMessageEpochWindow means the default.
	ZeroAppMessageEpochWindow bool

	RequestsPerSecond        float64 // per client, for every call that acts for a client; default 50
	RequestBurst             int     // default 2*RequestsPerSecond
	ClaimsPerMinute          float64 // KeyPackage claims per claimer; default 120
	ClaimsPerTargetPerMinute float64 // KeyPackage claims per target client; default 60
	MaxRateLimitKeys         int     // clients tracked per limiter before the least recent is forgotten; default 100_000

	SubscriptionBuffer  int           // events buffered per subscription; default 256
	SlowConsumerTimeout time.Duration // a subscription whose consumer takes nothing for this long ends; default 30s
	PollInterval        time.Duration // subscriptions re-check the store this often even without wake-ups; default 5s

	// StateCacheBytes bounds the decoded states of transparent groups kept
	// in memory, least recently used first out, in approximate bytes of
	// memory; default 256 MiB, negative: no cache (every handshake
	// message rebuilds its group's state from the store).
	StateCacheBytes int64
	// SnapshotEvery is how many state changes (Proposals, Commits) of a
	// transparent group may pile up in its log before the Service writes
	// a new snapshot of its state; one is also written once the log since
	// the last snapshot is larger than the snapshot. Default 256.
	SnapshotEvery int
	// ExternalJoin says who may fetch a transparent group's GroupInfo and
	// join it by external Commit (§12.4.3.2); default ExternalJoinLinks.
	ExternalJoin ExternalJoinPolicy

	// Notifier carries wake-ups from the writers to the subscriptions. Nil
	// means the Store's own (if it implements NotifierProvider) or else an
	// in-process one.
	Notifier Notifier

	// Now returns the current time; default time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	deff := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxMessageSize, 1<<20)
	def(&c.MaxGroupSize, 50_000)
	def(&c.MaxKeyPackagesPerClient, 1_000)
	defd(&c.MaxKeyPackageLifetime, 90*24*time.Hour)
	def(&c.KeyPackageLowWater, 10)
	def(&c.MaxGroupIDSize, 255)
	def(&c.MaxClientIDSize, 255)
	if c.AppMessageEpochWindow == 0 && !c.ZeroAppMessageEpochWindow {
		c.AppMessageEpochWindow = 2
	}
	deff(&c.RequestsPerSecond, 50)
	if c.RequestBurst == 0 {
		c.RequestBurst = int(2 * c.RequestsPerSecond)
		if c.RequestBurst < 1 {
			c.RequestBurst = 1
		}
	}
	deff(&c.ClaimsPerMinute, 120)
	deff(&c.ClaimsPerTargetPerMinute, 60)
	def(&c.MaxRateLimitKeys, 100_000)
	if c.StateCacheBytes == 0 {
		c.StateCacheBytes = 256 << 20
	}
	def(&c.SnapshotEvery, 256)
	def(&c.SubscriptionBuffer, 256)
	defd(&c.SlowConsumerTimeout, 30*time.Second)
	defd(&c.PollInterval, 5*time.Second)
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
