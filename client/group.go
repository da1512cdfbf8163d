package client

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/mlsds/mlsds/mls"
)

// ErrRemoved is returned by the methods of a Group this client was
// removed from, or left.
var ErrRemoved = errors.New("client: this client is no longer a member of the group (removed, or left)")

// Group is one of the client's groups. Its methods are safe for concurrent
// use: they, and the processing of what arrives for the group, take turns.
type Group struct {
	c  *Client
	id []byte

	mu        sync.Mutex
	st        *mls.Group
	processed uint64 // the last GroupSeq processed
	opaque    bool
	removed   bool
	broken    bool // a Commit could not be processed: the state is behind
	// refused says the Commit that broke the group was refused by the
	// credential check: the client does not rejoin on its own.
	refused bool
	// brokenErr is why the group broke (in memory only), the reason of
	// the EventRejoined of the automatic rejoin; rejoinFailures counts
	// the automatic rejoins that failed since.
	brokenErr      error
	rejoinFailures int
	// commitSeen says a Commit was processed since the last roster check
	// (see removeStale); removalsDue holds the client ids whose Remove
	// proposal an epoch ended without (in memory only).
	commitSeen  bool
	removalsDue map[string]bool
	closed      bool
	// leaving says this client called Leave and the server has not
	// confirmed it yet (see leave.go).
	leaving bool
	// leaveMu serializes the sending of this client's Remove proposals.
	leaveMu sync.Mutex
	// ended, made on demand by WaitRemoved, is closed (and dropped) once
	// the state written says this client is removed or broken.
	ended   chan struct{}
	pending *pendingCommit
	// proposals holds the Proposals (MLSMessages) of the current epoch, in
	// order, for the auto-commit.
	proposals [][]byte
	// proposalsSince is when the first of proposals arrived (the server's
	// time), from which the committer timeout counts; takeover fires when
	// this client's turn to commit them comes (guard.go). In memory only.
	proposalsSince time.Time
	takeover       *time.Timer
	// unsaved holds the events of the messages processed since the state
	// was last written; persist queues them once the state that includes
	// those messages is durable, so that no event is delivered twice or
	// lost across a restart. dirty says the state changed since.
	unsaved []Event
	dirty   bool
	// own holds the GroupSeqs of this client's application messages that
	// are above processed: the stream leaves them out, so they are
	// stepped over rather than fetched (in memory only; after a restart
	// a Fetch does the same).
	own map[uint64]bool
	// rec is the state of the recovery of an opaque group from Commits
	// this client cannot follow, and of the fork checks
	// (opaque_recovery.go, fork.go).
	rec recoveryState
	// den is the deniable-mode state (membership keys), nil in other
	// modes (deniable.go).
	den *deniableState
}

// ErrGroupBroken is returned by the methods of a Group whose Commit this
// client could not process (see EventUndecryptable).
var ErrGroupBroken = errors.New("client: this client could not process a Commit of the group and can no longer follow it; call Group.Rejoin (transparent groups), or have another member remove it and add it again")

// Receipt is the server's promise about an accepted message: it is durable
// and will reach every member at position Seq of the group's order.
type Receipt struct {
	Seq        uint64    // position in the group's order
	Epoch      uint64    // the epoch the message was sent in
	AcceptedAt time.Time // when the server accepted it
}

// ID returns the group id.
func (g *Group) ID() []byte { return g.groupID() }

// Epoch returns the group's current epoch as this client has processed it.
func (g *Group) Epoch() uint64 { return g.epoch() }

// EpochAuthenticator returns the epoch_authenticator of the current epoch
// (RFC 9420 §8.7): members in the same epoch with the same view of the
// group have equal ones.
func (g *Group) EpochAuthenticator() []byte { return g.epochAuthenticator() }

// Members returns the client ids of the members, in leaf order.
func (g *Group) Members() []string { return g.members() }

// Add adds clients to the group: it claims one KeyPackage of each, and
// sends a Commit that adds them with a Welcome. Clients that are members
// already are skipped.
func (g *Group) Add(ctx context.Context, clientIDs ...string) error {
	return g.commit(ctx, intent{adds: clientIDs})
}

// Remove removes clients from the group with a Commit. Clients that are
// not members are skipped. To remove itself, a client uses Leave.
func (g *Group) Remove(ctx context.Context, clientIDs ...string) error {
	return g.commit(ctx, intent{removes: clientIDs})
}

// Update sends a Commit that gives this client fresh leaf keys (an
// UpdatePath without proposals), moving the group to a new epoch.
func (g *Group) Update(ctx context.Context) error {
	return g.commit(ctx, intent{update: true})
}

// ProposeUpdate sends a proposal to update this client's leaf with a fresh
// encryption key (RFC 9420 §12.1.2) in the current epoch, and returns its
// receipt. A member cannot commit its own Update proposal: another
// member's client commits it on its own (the one with the lowest leaf
// index that neither proposed an Update nor is being removed), like the
// proposals Leave makes. To update at once, call Update, which commits.
func (g *Group) ProposeUpdate(ctx context.Context) (Receipt, error) {
	if g.den != nil {
		return g.proposeUpdateDeniable(ctx) // deniable.go
	}
	return g.proposeUpdate(ctx)
}

// Leave leaves the group: it hands the server this client's Remove
// proposal (transparent groups; in opaque ones it sends it to the group
// first) with LeaveGroup, after which the server delivers the group to
// this client no more, takes in what was delivered up to then, and drops
// the group: EventLeft, and Removed is true. The other members' clients
// commit the removal on their own (the proposal, or else the server's
// roster, which no longer lists this client). Until the server confirms,
// the intent is kept in the state: a Leave cut short by an error or a
// restart is finished later on its own. A client whose state of the group
// is broken leaves without a proposal. Leave returns ErrRemoved if the
// client was already out when called, and nil if it finds itself removed
// while it leaves.
func (g *Group) Leave(ctx context.Context) error {
	if g.den != nil {
		return g.leaveDeniable(ctx) // deniable.go
	}
	return g.leave(ctx)
}

// WaitRemoved waits until this client is no longer a member of the group:
// its removal was committed and processed (EventRemoved is queued), or it
// left (EventLeft). It returns ctx's error if ctx ends first, ErrClosed if the
// client is closed, ErrGroupBroken if the client can no longer follow the
// group.
func (g *Group) WaitRemoved(ctx context.Context) error { return g.waitRemoved(ctx) }

// Removed reports whether this client is no longer a member of the group
// (removed, or it left), as far as it has processed the
// group's messages. The methods that act on the group then return
// ErrRemoved.
func (g *Group) Removed() bool { return g.isRemoved() }

// Broken reports whether this client could not process a Commit of the
// group and can no longer follow it (ErrGroupBroken): see Rejoin. A
// transparent group is rejoined on its own (EventRejoined), unless the
// Commit was refused by the credential check (EventRefused).
func (g *Group) Broken() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.broken
}

// Leaving reports whether this client called Leave and the server has not
// confirmed it yet.
func (g *Group) Leaving() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.leaving && !g.removed
}

// Send encrypts data as an application message of the group and sends it.
func (g *Group) Send(ctx context.Context, data []byte) (Receipt, error) {
	return g.send(ctx, data)
}

// Sync fetches and processes everything outstanding in the group.
func (g *Group) Sync(ctx context.Context) error { return g.syncAndLeave(ctx) }

// Rejoin brings this client back into a transparent-mode group whose state
// it lost track of (ErrGroupBroken) with a resync external Commit (RFC 9420
// §12.4.3.2): from the GroupInfo and ratchet tree the server keeps, it
// joins anew and removes its old leaf in the same Commit, so that it stays
// one member. Messages sent between the Commit it could not process and
// the rejoin stay unreadable. It works on a healthy group too (the client
// then gets fresh keys and a new leaf). On success the client gets
// EventJoined and the Group goes on as before. The client does this on
// its own when it cannot process a Commit of a transparent group
// (EventRejoined). Every leaf of the tree joined must pass the credential
// check (Config.CredentialValidator): if one fails, Rejoin returns a
// *CredentialError and the group stays broken. In an opaque-mode group
// the server holds no GroupInfo a broken member can read, so Rejoin fails:
// get a GroupInfo from another member (Group.GroupInfo) and call
// Client.JoinExternalWith, which rejoins the same way, or have another
// member remove the client and add it again.
func (g *Group) Rejoin(ctx context.Context) error { return g.rejoin(ctx) }

// GroupInfo returns a GroupInfo of the current epoch signed by this client,
// as an MLSMessage with the external_pub and ratchet_tree extensions, from
// which another client can join with Client.JoinExternalWith.
func (g *Group) GroupInfo() ([]byte, error) { return g.groupInfo() }
