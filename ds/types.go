package ds

import (
	"time"

	"github.com/mlsds/mlsds/mls"
)

// Receipt confirms that a message was accepted: it is durable and will be
// delivered to every member.
type Receipt struct {
	GroupID  []byte
	GroupSeq uint64 // position in the group's order, from 1
	// Epoch is the epoch the message was sent in (for a Commit, the epoch
	// it ends; the group is at Epoch+1 after it).
	Epoch      uint64
	AcceptedAt time.Time
}

// Envelope is an accepted message as delivered to a member.
type Envelope struct {
	GroupID     []byte
	GroupSeq    uint64
	Epoch       uint64
	Sender      string // client id of the sender
	ContentType mls.ContentType
	WireFormat  mls.WireFormat
	Data        []byte // the MLSMessage exactly as sent
	AcceptedAt  time.Time
}

// WelcomeEvent delivers a Welcome to one of the joiners it names. It is
// pending until the joiner acknowledges the group at CommitSeq or later
// (Ack(groupID, CommitSeq) is the natural way: the joiner's messages in the
// group start after it).
type WelcomeEvent struct {
	GroupID       []byte
	CommitSeq     uint64 // GroupSeq of the Commit that added the joiner
	Epoch         uint64 // the epoch the joiner enters
	KeyPackageRef []byte // the joiner's KeyPackage the Welcome is encrypted to
	Data          []byte // the MLSMessage holding the Welcome
	AcceptedAt    time.Time
}

// LowWaterEvent tells a client that its stock of claimable KeyPackages for
// a suite fell below Config.KeyPackageLowWater.
type LowWaterEvent struct {
	CipherSuite mls.CipherSuite
	Remaining   int // claimable KeyPackages left, last-resort ones not counted
	LowWater    int
}

// Event is one item of a subscription; exactly one field is set.
type Event struct {
	Message       *Envelope
	Welcome       *WelcomeEvent
	KeyPackageLow *LowWaterEvent
	// Pruned: messages of a group after the client's cursor were pruned
	// before it acknowledged them (prune.go); the messages that follow
	// start at Pruned.OldestSeq.
	Pruned *PrunedEvent
	// CaughtUp marks the end of the replay: everything that was stored
	// when the subscription started has been sent. It comes exactly once.
	CaughtUp bool
	// Err ends the subscription: the channel is closed after it. It is
	// set when the consumer was too slow (see Config.SlowConsumerTimeout)
	// or the store failed; a context cancellation just closes the channel.
	Err error
}

// KeyPackageUpload is one KeyPackage to publish.
type KeyPackageUpload struct {
	Data       []byte // an MLSMessage holding a KeyPackage, or a bare KeyPackage
	LastResort bool   // may be handed out repeatedly when no other is left; at most one per suite
}

// KeyPackageInfo describes a stored KeyPackage to its owner.
type KeyPackageInfo struct {
	Ref         []byte // KeyPackageRef (RFC 9420 §5.2)
	CipherSuite mls.CipherSuite
	NotAfter    time.Time
	LastResort  bool
}

// ClaimedKeyPackage is a KeyPackage handed out by a claim.
type ClaimedKeyPackage struct {
	ClientID   string
	Ref        []byte
	Data       []byte // as uploaded
	LastResort bool   // a last-resort KeyPackage, which other claimers may get too
}

// CreateGroup describes a new group.
type CreateGroup struct {
	GroupID []byte
	Mode    Mode
	// GroupInfo: transparent mode: the group's GroupInfo (an MLSMessage or
	// a bare GroupInfo), which fixes the group id, suite and epoch. Opaque
	// mode: optional, stored as given and served to members.
	GroupInfo []byte
	// RatchetTree (transparent mode): the tree, encoded as in the
	// ratchet_tree extension (§12.4.3.3); may be empty when the GroupInfo
	// carries that extension.
	RatchetTree []byte
	// Members (opaque mode): the initial roster besides the creator.
	Members []string
	// KeyPackages (transparent mode): the KeyPackages (MLSMessages or bare)
	// through which the tree's leaves other than the creator's came in,
	// each published by its client, unused unless last-resort, and with a
	// leaf_node equal to the leaf. They are marked used with the group.
	KeyPackages [][]byte
	// Epoch (opaque mode): the group's current epoch; usually 0.
	Epoch uint64
	// Welcome: optional MLSMessage holding a Welcome for the members the
	// creator added before creating the group here (for a library that
	// exports only the GroupInfo after its first Commit). It must name
	// exactly the KeyPackages in KeyPackages, and is routed to their
	// clients with CommitSeq 0 (creategroup_welcome.go).
	Welcome []byte
	// MembershipKey (deniable mode): the membership key of Epoch,
	// MembershipKeySize bytes (membership.go).
	MembershipKey []byte
	// Predecessor: optional id of the group a committed ReInit closed and
	// this one succeeds (RFC 9420 §11.2; successor.go).
	Predecessor []byte
}

// CommitBundle is a Commit with what goes with it, accepted or refused as
// one.
type CommitBundle struct {
	Commit    []byte // MLSMessage holding the Commit
	Welcome   []byte // optional MLSMessage holding a Welcome for the joiners
	GroupInfo []byte // optional GroupInfo of the new epoch
	// Opaque mode: the roster changes the Commit makes. Transparent mode:
	// derived from the Commit; if given, they must agree.
	Added, Removed []string
	// RemoteTree, opaque mode only: the encrypted GroupInfo and ratchet
	// tree of the epoch the Commit starts, stored with the Commit.
	RemoteTree *RemoteTree
	// JoinToken, for an external Commit of a client that is neither a
	// member nor a device of a member's user: a live join link's token.
	JoinToken string
	// NextMembershipKey, deniable mode only: the membership key of the
	// epoch the Commit starts, stored with it.
	NextMembershipKey []byte
}

// GroupInfoResult is what a member can learn of a group's public state.
type GroupInfoResult struct {
	GroupID     []byte
	Mode        Mode
	Epoch       uint64
	GroupInfo   []byte // latest GroupInfo: an MLSMessage as the committer gave it (nil if none)
	RatchetTree []byte // transparent mode: the current ratchet tree, ratchet_tree extension encoding
	TreeHash    []byte // transparent mode: the tree hash of the current epoch
	// Transparent mode: the Proposals (MLSMessages) accepted in the
	// current epoch so far, in group order.
	Proposals [][]byte
	// SuccessorGroupID: the group created as this one's successor, if
	// any (successor.go).
	SuccessorGroupID []byte
}
