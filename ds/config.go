package ds

import (
	"crypto/x509"
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
	// ModeDeniable groups are opaque groups whose members prove their
	// membership by a MAC under a per-epoch key instead of a session, and
	// of which the Service keeps no roster nor anything else that names a
	// client next to the group (deniable.go).
	ModeDeniable
)

func (m Mode) String() string {
	switch m {
	case ModeTransparent:
		return "transparent"
	case ModeOpaque:
		return "opaque"
	case ModeDeniable:
		return "deniable"
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

	// MaxSignatureKeysPerClient bounds the signature keys one client holds
	// (keys.go); default 100.
	MaxSignatureKeysPerClient int
	// X509Roots are the trust anchors of x509 credentials (RFC 9420
	// §5.3, x509.go). nil refuses x509 credentials.
	X509Roots *x509.CertPool

	// Quotas (see quota.go): what one client may make the Service store.
	// Zero takes the default; negative turns the quota off.
	MaxKeyPackageSize  int   // bytes of one KeyPackage; default 64 KiB
	MaxKeyPackageBytes int64 // bytes of the unclaimed KeyPackages a client stores; default 4 MiB
	MaxGroupsPerDay    int   // groups a client creates per UTC day; default 100
	// MaxBytesPerDay bounds the bytes a client submits per UTC day:
	// messages, Welcomes, GroupInfos, ratchet trees and remote trees;
	// default 1 GiB. Nodes that share a store may together admit a little
	// more (quota.go says how much).
	MaxBytesPerDay    int64
	MaxClientsPerUser int // clients registered under one user id; default 20
	// QuotaFlushInterval is how often a node writes the bytes it accepted
	// to the store; default 1s. It bounds how late other nodes see them.
	QuotaFlushInterval time.Duration

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

	// Byte budgets. FetchMaxBytes bounds the messages of one Fetch page
	// (at least one message comes, however large); default 4 MiB. The
	// others bound the messages and Welcomes that subscriptions hold for
	// their consumers, taken in but not yet taken out: per subscription
	// (default 4 MiB), per client over all its subscriptions (default
	// 8 MiB) and for the whole Service (default 64 MiB). A subscription
	// that finds one full stops taking in new events and reads them from
	// the store once there is room again: nothing is lost or reordered.
	// Each is raised to at least one message of MaxMessageSize.
	FetchMaxBytes              int
	SubscriptionMaxBytes       int
	ClientSubscriptionMaxBytes int
	BufferedMaxBytes           int64

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

	// Retention is how long a message (or Welcome) is kept at most, even if
	// some recipient has not acknowledged it yet; default 30 days, negative:
	// forever (messages then go only once everyone acknowledged them). See
	// prune.go.
	Retention time.Duration
	// PruneInterval is how often the background pruner sweeps the store;
	// default 1 minute, negative: no background pruner (Prune may still be
	// called).
	PruneInterval time.Duration
	// PruneBatch bounds the rows one pruning transaction deletes; default
	// 1,000.
	PruneBatch int
	// PrunePause is the pause between two pruning transactions, so that
	// the pruner leaves room to the traffic; default 50ms.
	PrunePause time.Duration

	// MembershipClockSkew is how far the timestamp of a deniable group's
	// membership proof may be from the Service's clock, either way;
	// default 2 minutes. MembershipReplayCacheBytes bounds the memory of
	// the replay check of those proofs (per node); default 16 MiB.
	MembershipClockSkew        time.Duration
	MembershipReplayCacheBytes int64

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
	def(&c.MaxKeyPackageSize, 64<<10)
	def64 := func(v *int64, d int64) {
		if *v == 0 {
			*v = d
		}
	}
	def64(&c.MaxKeyPackageBytes, 4<<20)
	def(&c.MaxGroupsPerDay, 100)
	def64(&c.MaxBytesPerDay, 1<<30)
	def(&c.MaxClientsPerUser, 20)
	def(&c.MaxSignatureKeysPerClient, 100)
	if c.QuotaFlushInterval <= 0 {
		c.QuotaFlushInterval = time.Second
	}
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
	// One message (and what an Envelope costs besides) always fits.
	least := c.MaxMessageSize + envelopeOverhead
	def(&c.FetchMaxBytes, 4<<20)
	def(&c.SubscriptionMaxBytes, 4<<20)
	def(&c.ClientSubscriptionMaxBytes, 8<<20)
	if c.BufferedMaxBytes == 0 {
		c.BufferedMaxBytes = 64 << 20
	}
	c.FetchMaxBytes = max(c.FetchMaxBytes, 1)
	c.SubscriptionMaxBytes = max(c.SubscriptionMaxBytes, least)
	c.ClientSubscriptionMaxBytes = max(c.ClientSubscriptionMaxBytes, least)
	c.BufferedMaxBytes = max(c.BufferedMaxBytes, int64(least))
	defd(&c.Retention, 30*24*time.Hour)
	defd(&c.PruneInterval, time.Minute)
	def(&c.PruneBatch, 1_000)
	defd(&c.PrunePause, 50*time.Millisecond)
	defd(&c.MembershipClockSkew, defaultMembershipClockSkew)
	if c.MembershipReplayCacheBytes <= 0 {
		c.MembershipReplayCacheBytes = defaultMembershipReplaySize
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
