package client

import (
	"fmt"
	"time"
)

// EventKind says what an Event reports.
type EventKind int

const (
	// EventMessage is an application message of another member: Data
	// holds the plaintext, Sender the sending client.
	EventMessage EventKind = iota + 1
	// EventMembersAdded reports a Commit that added members: Members
	// lists the client ids added, Sender the committer.
	EventMembersAdded
	// EventMembersRemoved reports a Commit that removed members (or took
	// in their Remove proposals): Members lists the client ids removed.
	EventMembersRemoved
	// EventEpoch reports that the group entered a new epoch (after any
	// Commit, including this client's own): Epoch is the new epoch and
	// Members the roster of it. It follows EventMembersAdded and
	// EventMembersRemoved of the same Commit.
	EventEpoch
	// EventJoined reports that this client joined a group, from a Welcome
	// or by external Commit: Members is the roster, Epoch the epoch joined.
	EventJoined
	// EventRemoved reports that this client was removed from the group by
	// another member's Commit. No event of the group follows.
	EventRemoved
	// EventUndecryptable reports a message this client could not process;
	// Err says why. The group goes on with the next message. If it was a
	// Commit, this client's state of the group stays behind the others'
	// and their later messages will not decrypt either (the Group's
	// methods return ErrGroupBroken) until it rejoins on its own
	// (EventRejoined follows; see EventRejoined). Sender is the committer.
	// In an opaque group a Commit whose declared roster change is not what
	// it does is refused so too (Err wraps ErrRosterMismatch).
	EventUndecryptable
	// EventRefused reports that this client refused a Welcome or a Commit
	// because a leaf it brings in failed the credential check (RFC 9420
	// §5.3.1; see CredentialValidator): Err is a *CredentialError naming
	// the leaf, its identity and the rule, Members the identity, Sender
	// the committer. The group's state stays as it was. A refused Welcome
	// leaves no group behind (the client leaves it on the server); after a
	// refused Commit the client can no longer follow the group
	// (ErrGroupBroken) and does not rejoin on its own into a tree that
	// holds the leaf: Group.Rejoin works once the leaf is gone.
	EventRefused
	// EventRejoined reports that this client could not process a Commit
	// that the Delivery Service had accepted (an EventUndecryptable before
	// it says which), or found a fork (EventForked), and rejoined the group
	// on its own with a resync external Commit: in a transparent group
	// from the GroupInfo the server serves, in an opaque one from the
	// encrypted remote tree of the current epoch or, if none opens, from
	// its own state (see client/opaque_recovery.go). Err is the reason,
	// Epoch the epoch joined, Members the roster. Messages
	// sent between that Commit and the rejoin stay unread; everything
	// after it arrives as usual.
	EventRejoined
	// EventLeft reports that this client left the group (Group.Leave): the
	// server no longer delivers the group to it, and the other members'
	// clients commit its removal. No event of the group follows.
	EventLeft
	// EventPruned reports that the server deleted messages of the group
	// before this client received them (every other member had them, or
	// they outlived the server's retention): Seq is the first GroupSeq
	// still kept, Err wraps ErrPruned. In a transparent group the client
	// then rejoins on its own (EventRejoined follows, its Err wrapping
	// ErrPruned too). In an opaque group it goes on if the group is still
	// at its epoch (only application messages were lost); otherwise Err
	// says so and the group is broken (ErrGroupBroken) until the app
	// rejoins it (Client.JoinExternalWith with a GroupInfo from another
	// member) or a member re-adds this client. See client/pruned.go.
	EventPruned
	// EventMembersUpdated reports a Commit that replaced members' leaves:
	// their Update proposals, or a member's resync external Commit (which
	// replaces its old leaf). Members lists their client ids, Sender the
	// committer. The committer's own new keys (its UpdatePath) are not
	// reported.
	EventMembersUpdated
	// EventMisattributed reports a message refused because the member
	// leaf that signed it is not the client the Delivery Service recorded
	// as its sender (a member replaying or re-encrypting another member's
	// signed content, which every member can encrypt for any leaf):
	// Sender is the client the server recorded, Members the identity of
	// the signing leaf, Err wraps ErrMisattributed. An application
	// message or proposal is dropped; a Commit is still processed (its
	// signature binds the committer; refusing it would only break this
	// client's state).
	EventMisattributed
	// EventReInit reports a Commit that carried a ReInit proposal (RFC
	// 9420 §11.2): the group is closed (its methods return
	// ErrGroupReInit, which Err is) and its members are to continue in the
	// successor group that ReInit names (group id, protocol version,
	// cipher suite, extensions). Members is the last roster. The client
	// never commits a ReInit proposal on its own.
	EventReInit
	// EventForked reports that the group this client joined from a
	// Welcome is not the one the Delivery Service serves (the Welcome came
	// from another Commit than the one accepted, so the joiner would see a
	// group of its own): Err wraps ErrForked. After another member's
	// Commit, the same check against the Delivery Service's GroupInfo of
	// the epoch (an opaque group's: its remote tree) reports a mismatch
	// so too, and the client rejoins (EventRejoined; see client/fork.go). The client refuses that
	// state and joins the served group by external Commit instead
	// (EventJoined follows) if the server lets it; otherwise it holds no
	// group.
	EventForked
	// EventProposalDropped reports a proposal that this client dropped
	// without taking it in, because the epoch's pending proposals are at
	// their bound (Config.MaxPendingProposals, MaxPendingProposalBytes):
	// Sender is the proposer, Err wraps ErrProposalDropped. A Commit that
	// carries the proposal cannot be processed; the client then rejoins a
	// transparent group (EventRejoined).
	EventProposalDropped
	// EventDropped reports that the Delivery Service no longer delivers
	// an opaque group to this client although its state says it is a
	// member: a member's Commit declared it removed without removing it
	// (the other members refuse that Commit), or the server is faulty.
	// Err wraps ErrDropped. The group's methods return ErrDropped
	// meanwhile; the other members' clients restore this client to the
	// server's roster when they recover from that Commit, and the client
	// then rejoins on its own (EventRejoined). See opaque_recovery.go.
	EventDropped
	// EventKeyMismatch reports that the server holds, for the newest
	// epoch of a deniable group, a membership key the members do not
	// derive, so that nobody can prove membership of that epoch: the
	// Commit that started it gave the server a wrong key. Epoch is that
	// epoch, Sender (and Members) the committer, Err wraps
	// ErrKeyMismatch. It comes once per group and epoch. The members
	// then continue in a branch without the committer: EventJoined (its
	// Predecessor naming this group) and EventLeft for this group follow.
	// See client/deniable_recover.go.
	EventKeyMismatch
)

var eventKindNames = [...]string{
	EventMessage:         "message",
	EventMembersAdded:    "members-added",
	EventMembersRemoved:  "members-removed",
	EventEpoch:           "epoch",
	EventJoined:          "joined",
	EventRemoved:         "removed",
	EventUndecryptable:   "undecryptable",
	EventRefused:         "refused",
	EventRejoined:        "rejoined",
	EventLeft:            "left",
	EventPruned:          "pruned",
	EventMembersUpdated:  "members-updated",
	EventMisattributed:   "misattributed",
	EventReInit:          "reinit",
	EventForked:          "forked",
	EventProposalDropped: "proposal-dropped",
	EventDropped:         "dropped",
	EventKeyMismatch:     "key-mismatch",
}

// String returns a short lower-case name of k.
func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is something that happened in one of the client's groups, in the
// group's order. The events of one group arrive in the order of the
// group's messages (GroupSeq), each exactly once, across reconnects and
// restarts of the client.
type Event struct {
	Kind    EventKind
	GroupID []byte
	// Seq is the position in the group's order of the message the event
	// comes from (the Commit, for membership and epoch events; the Commit
	// that added this client, for EventJoined).
	Seq uint64
	// Epoch is the epoch the message was sent in; for EventEpoch and
	// EventJoined, the epoch entered.
	Epoch uint64
	// Sender is the client id of the member that sent the message or the
	// Commit; empty when unknown.
	Sender string
	// Data is the plaintext of an EventMessage.
	Data []byte
	// Members lists client ids: those added or removed, or the roster (see
	// the kinds).
	Members []string
	// Left lists, for EventMembersRemoved, those of Members who asked to
	// leave (their own Remove proposal, Group.Leave) rather than being
	// removed by Sender. EventLeft also reports this client's own leave
	// when a Commit that takes it in arrives before the server confirmed
	// it.
	Left []string
	// ReInit names the successor group of an EventReInit.
	ReInit *ReInitInfo
	// Predecessor, for EventJoined, names the group this one continues:
	// the group a ReInit closed (this is its successor) or the group it
	// branched from (client/reinit.go); nil for other groups.
	Predecessor []byte
	// AcceptedAt is when the Delivery Service accepted the message.
	AcceptedAt time.Time
	// Err is set for EventUndecryptable, EventRefused (a *CredentialError),
	// EventRejoined (the reason) and EventPruned (wrapping ErrPruned).
	Err error
}
