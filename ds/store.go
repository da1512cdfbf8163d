package ds

import (
	"context"
	"time"

	"github.com/mlsds/mlsds/mls"
)

// Store is the durable state of a Delivery Service. Every method that
// changes more than one thing does so in one transaction of the engine, so
// that a crash leaves either all or none of it. The Service holds the
// policy (what is valid, who may do what); a Store holds the invariants
// that need a transaction to be kept under concurrency: one Commit per
// epoch, single-use KeyPackages, monotonic cursors, unique message hashes.
//
// Engines live in ds/store/<name> and must pass ds/store/storetest. Times
// are stored with at least microsecond precision; the Service only hands
// over times truncated to the microsecond, and an engine returns them
// exactly as given (in UTC).
//
// Errors: ErrNotFound for an unknown client, group or KeyPackage;
// ErrAlreadyExists (possibly wrapped) for a duplicate; the typed errors of
// AcceptMessage listed there. Anything else is an engine failure.
type Store interface {
	// CreateClient registers c. ErrAlreadyExists if c.ID is taken.
	CreateClient(ctx context.Context, c Client) error
	// Client returns the client with id, or ErrNotFound.
	Client(ctx context.Context, id string) (Client, error)
	// ClientsOfUser returns the clients registered with userID, ordered by
	// id (none is not an error).
	ClientsOfUser(ctx context.Context, userID string) ([]Client, error)
	// Clients returns the registered clients among ids, in any order;
	// unknown ids are left out.
	Clients(ctx context.Context, ids []string) ([]Client, error)
	// ClientKeys returns the signature keys of the registered clients
	// among ids, each client's oldest first; unknown ids are left out.
	// Every registered client holds at least one key: the one it
	// registered with, until it withdraws it (ds/keys.go).
	ClientKeys(ctx context.Context, ids []string) (map[string][][]byte, error)
	// AddClientKey adds key to the keys of clientID, recorded at now.
	// Adding a key the client holds changes nothing (nil). ErrNotFound if
	// there is no such client; a *TooLargeError if the client would hold
	// more than limit keys.
	AddClientKey(ctx context.Context, clientID string, key []byte, now time.Time, limit int) error
	// RemoveClientKey withdraws key from the keys of clientID, in one
	// transaction serialised with AddClientKey: ErrNotFound if the client
	// does not hold it, ErrLastKey if it is the client's only key. If key
	// was Client.SignatureKey, the client's oldest remaining key takes its
	// place.
	RemoveClientKey(ctx context.Context, clientID string, key []byte) error
	// RegisterClient stores r.Client under the rules of ClientRegistration,
	// in one transaction, serialised with every other registration that
	// names the same client or user id.
	RegisterClient(ctx context.Context, r ClientRegistration) error
	// CreateDeviceLink stores a device link. It fails with ErrNotFound if
	// l.Creator is not registered, with ErrAlreadyExists if l.Hash is
	// stored, and with a *TooLargeError if l.Creator already holds limit
	// unused links unexpired at l.CreatedAt. It may delete expired links.
	CreateDeviceLink(ctx context.Context, l DeviceLinkRecord, limit int) error
	// SpendOnce records that the single-use value o.Key of o.Scope was
	// used. It fails with ErrAlreadyUsed if o is recorded with an expiry
	// after o.Now; an expired record is replaced. It may delete a bounded
	// number of expired records.
	SpendOnce(ctx context.Context, o OnceRecord) error

	// AddKeyPackages stores kps for their client (all have the same
	// ClientID) as one transaction: none is stored unless all are. It
	// fails with ErrAlreadyExists (wrapped) if a Ref is already stored or
	// repeated in kps, or if a last-resort KeyPackage would make two
	// unclaimed last-resort ones for the client and suite; with a
	// *TooLargeError if the client would hold more than limit unclaimed
	// KeyPackages.
	AddKeyPackages(ctx context.Context, kps []KeyPackageRecord, limit int) error
	// KeyPackages returns the client's unclaimed KeyPackages (also expired
	// ones, so that the client can see and delete them), oldest first.
	KeyPackages(ctx context.Context, clientID string) ([]KeyPackageRecord, error)
	// DeleteKeyPackages deletes the client's unclaimed KeyPackages among
	// refs and returns how many it deleted. Refs of other clients, of
	// claimed KeyPackages and unknown refs are ignored.
	DeleteKeyPackages(ctx context.Context, clientID string, refs [][]byte) (int, error)
	// CountKeyPackages counts the client's claimable KeyPackages per suite:
	// unclaimed, not last-resort, valid at now.
	CountKeyPackages(ctx context.Context, clientID string, now time.Time) (map[mls.CipherSuite]int, error)
	// KeyPackageStock counts the claimable KeyPackages of all clients per
	// suite (unclaimed, not last-resort, valid at now), for operators'
	// metrics.
	KeyPackageStock(ctx context.Context, now time.Time) (map[mls.CipherSuite]int, error)
	// ClaimKeyPackages claims, in one transaction, one KeyPackage of suite
	// p.Suite for each client in p.Targets: the oldest unclaimed,
	// not-last-resort one valid at p.Now, which becomes claimed by
	// p.Claimer and is never returned again; if there is none, the
	// client's last-resort one valid at p.Now, which stays unclaimed. A
	// target with neither gets a Claim with a nil KeyPackage. Results are
	// in the order of p.Targets.
	ClaimKeyPackages(ctx context.Context, p ClaimParams) ([]Claim, error)
	// KeyPackagesByRef returns what the directory knows of each ref that
	// it holds, claimed or not; unknown refs are absent from the result.
	KeyPackagesByRef(ctx context.Context, refs [][]byte) ([]KeyPackageRecord, error)

	// AddKeyPackagesWithin is AddKeyPackages with limit lim.Count, and in
	// the same transaction a bound on bytes: it fails with a
	// *QuotaExceededError{What: QuotaKeyPackageBytes} if the Data of the
	// client's unclaimed KeyPackages, with kps, would total more than
	// lim.Bytes (0: no bound).
	AddKeyPackagesWithin(ctx context.Context, kps []KeyPackageRecord, lim KeyPackageLimits) error
	// DailyUsage returns the client's counters of day (zero if none).
	DailyUsage(ctx context.Context, clientID string, day int64) (DailyUsage, error)
	// AddDailyUsage adds the Groups and Bytes of each entry to its
	// client's counters of its day (creating them), in one transaction; a
	// counter never goes below zero. It may delete the counters of days
	// before the latest day in us minus one.
	AddDailyUsage(ctx context.Context, us []DailyUsage) error
	// ChargeDailyUsage adds u to its client's counters of u.Day, in one
	// transaction serialised with every other change of them, unless a
	// counter would then exceed its bound in limit (a bound of 0: none):
	// then it changes nothing and fails with a *QuotaExceededError naming
	// the first such counter (QuotaGroupsPerDay, QuotaBytesPerDay).
	// It returns the counters after the charge.
	ChargeDailyUsage(ctx context.Context, u DailyUsage, limit DailyUsage) (DailyUsage, error)

	// CreateGroup stores a new group with its first roster; every member
	// starts with the first message (GroupSeq 1). In the same transaction
	// it marks g.ConsumeKeyPackages used, failing with ErrKeyPackageUsed
	// (wrapped) if one of them is used already or gone, and stores
	// g.Welcome (if not nil) with its routes g.WelcomeTo at CommitSeq 0.
	// ErrAlreadyExists if the group id is taken.
	CreateGroup(ctx context.Context, g GroupRecord, members []string) error
	// Group returns the head of a group (everything but its state), or
	// ErrNotFound.
	Group(ctx context.Context, groupID []byte) (GroupRecord, error)
	// Successor returns the id of the group that succeeds groupID (see
	// GroupRecord.Predecessor), or nil if it has none.
	Successor(ctx context.Context, groupID []byte) ([]byte, error)
	// GroupState returns the head of the group together with its
	// GroupInfo and its latest state snapshot (State, at SnapshotVersion).
	GroupState(ctx context.Context, groupID []byte) (GroupRecord, error)
	// StateLog returns the messages that changed the group's state (those
	// accepted with AdvanceState or NewState) whose StateVersion is above
	// afterVersion, in version order, at most limit of them. The messages
	// after a snapshot, applied to it in this order, give the state of
	// the group's current StateVersion. ErrNotFound if there is no such
	// group.
	StateLog(ctx context.Context, groupID []byte, afterVersion uint64, limit int) ([]StateLogEntry, error)
	// PutSnapshot stores state as the group's snapshot of StateVersion
	// version, unless the stored one is as new or newer (then it does
	// nothing). ErrNotFound if there is no such group; ErrInvalidArgument
	// if version is above the group's StateVersion.
	PutSnapshot(ctx context.Context, groupID []byte, version uint64, state []byte) error
	// Members returns the clients that are members of the group now (whose
	// last membership window is open), ordered by id.
	Members(ctx context.Context, groupID []byte) ([]string, error)
	// Memberships returns the membership windows of a client in a group,
	// oldest first (none is not an error).
	Memberships(ctx context.Context, groupID []byte, clientID string) ([]MembershipWindow, error)

	// MessageByHash returns the receipt of the group's message whose
	// Hash is hash, or ErrNotFound.
	MessageByHash(ctx context.Context, groupID, hash []byte) (Receipt, error)
	// AcceptMessage appends a message to its group, in one transaction
	// with everything it implies; see AcceptParams for the rules and
	// effects. If the group already holds a message with p.Hash it changes
	// nothing and returns that message's receipt with Duplicate set.
	// Otherwise it fails with ErrNotFound (no such group), *WrongEpochError,
	// *StaleEpochError, ErrNotMember, ErrStateConflict, or succeeds.
	AcceptMessage(ctx context.Context, p AcceptParams) (AcceptResult, error)
	// Messages returns the group's messages with GroupSeq >= q.FromSeq in
	// order, at most q.Limit of them, restricted to the membership windows
	// of q.ClientID, and without those q.ClientID sent if q.ExcludeOwn.
	Messages(ctx context.Context, q MessageQuery) ([]Envelope, error)

	// Cursors returns, for every group in which the client has a
	// membership window, its acknowledged position and windows.
	Cursors(ctx context.Context, clientID string) ([]GroupCursor, error)
	// Ack moves the client's cursor in the group forward to seq (never
	// back) and marks the client's Welcomes of the group with
	// CommitSeq <= seq as delivered. ErrNotMember if the client never had
	// a membership window in the group.
	Ack(ctx context.Context, clientID string, groupID []byte, seq uint64) error
	// PendingWelcomes returns the Welcomes routed to the client that are
	// not delivered yet, oldest first.
	PendingWelcomes(ctx context.Context, clientID string) ([]WelcomeEvent, error)
	// Leave ends the client's membership of the group, in one transaction
	// that holds the group's sequence still: its open membership window
	// is closed at the group's last GroupSeq, which Leave returns, so that
	// the client receives no message after it. A window that would hold no
	// message (it starts after that GroupSeq) is deleted instead. The
	// client's undelivered Welcomes of the group are marked delivered; its
	// cursor stays. ErrNotFound if there is no such group, ErrNotMember if
	// the client has no open window in it (so leaving twice fails the
	// second time and changes nothing).
	Leave(ctx context.Context, groupID []byte, clientID string) (untilSeq uint64, err error)
	// DeleteClient deletes a client and everything that names it, in one
	// transaction: its registration, KeyPackages (claimed or not),
	// membership windows, cursors, Welcome routes (and the Welcomes no
	// route names any more), the device links it made or used, and the
	// join links it made. The messages it sent stay, their sender set to
	// DeletedSender, as do the creator of the groups it made and the
	// uploader of remote trees; KeyPackages it claimed no longer name
	// their claimer. Device links of its user go too when the user has no
	// client left. The result lists the groups it was a member of, and
	// those it leaves without members (EmptiedGroups), which the caller
	// deletes with DeleteGroupIfEmpty. ErrNotFound if there is no such
	// client.
	DeleteClient(ctx context.Context, clientID string) (ClientDeletion, error)

	// PutRemoteTree stores p.Tree as the remote tree of p.Tree.Epoch,
	// replacing one stored for that epoch, and drops those of epochs
	// before the previous one, in one transaction that checks that
	// p.Sender is a member (else ErrNotMember) and that p.Tree.Epoch is the
	// group's current epoch (else *WrongEpochError). ErrNotFound if there
	// is no such group.
	PutRemoteTree(ctx context.Context, p RemoteTreePut) error
	// RemoteTrees returns the group's current epoch and its remote trees
	// of the current and the previous epoch, as far as stored, newest
	// first, read together. ErrNotFound if there is no such group.
	RemoteTrees(ctx context.Context, groupID []byte) (epoch uint64, trees []RemoteTree, err error)

	// Retention (prune.go). PruneMessages does one bounded step of a sweep
	// over the groups from p.From, in one transaction: in each group it
	// deletes the messages that every recipient acknowledged (every client
	// whose window covers the message, the sender of an application
	// message excepted, has a cursor at or beyond it) and those accepted
	// before p.ExpireBefore, at most p.Limit in all; never a message of the
	// state log newer than the group's snapshot (those groups are listed in
	// NeedSnapshot), nor a Commit whose Welcome is still stored. It moves
	// the group's watermark (PrunedSeq) over the messages it passed, the
	// ones a member's own application messages excepted, and deletes the
	// groups without members (DeleteGroupIfEmpty).
	PruneMessages(ctx context.Context, p PruneParams) (PruneResult, error)
	// PruneKeyPackages deletes up to p.Limit KeyPackages that expired
	// before p.Now, and the Welcomes (with their routes) that were
	// delivered to every joiner, whose joiner's KeyPackage expired or is
	// gone, or that were accepted before p.ExpireBefore.
	PruneKeyPackages(ctx context.Context, p PruneParams) (PruneResult, error)
	// PrunedSeq returns the group's watermark: every message up to it may
	// have been pruned (0: none). ErrNotFound if there is no such group.
	PrunedSeq(ctx context.Context, groupID []byte) (uint64, error)
	// DeleteGroupIfEmpty deletes a group that has no open membership
	// window with everything it holds (messages, Welcomes, memberships,
	// cursors, snapshots, remote trees, join links), checked and done
	// under the group's lock; at most limit messages per call, so that
	// done is false while some are left (call again). ErrNotFound if
	// there is no such group, ErrGroupNotEmpty if it has a member.
	DeleteGroupIfEmpty(ctx context.Context, groupID []byte, limit int) (done bool, err error)
	// LockPruner makes the caller the only pruner of the store (of all
	// nodes that share it) until it calls unlock; ErrPrunerBusy if another
	// one is.
	LockPruner(ctx context.Context) (unlock func(), err error)

	// CreateJoinLink stores a join link of a group, first dropping the
	// group's expired ones; a *TooLargeError if the group would have more
	// than limit live links (expiring after l.CreatedAt). ErrNotFound if
	// there is no such group; ErrAlreadyExists if l.ID or l.TokenHash is
	// taken.
	CreateJoinLink(ctx context.Context, l JoinLink, limit int) error
	// JoinLinkByToken returns the group's join link whose token hashes to
	// tokenHash if it expires after now; else ErrNotFound.
	JoinLinkByToken(ctx context.Context, groupID, tokenHash []byte, now time.Time) (JoinLink, error)
	// JoinLinks returns the group's join links that expire after now,
	// oldest first (none is not an error).
	JoinLinks(ctx context.Context, groupID []byte, now time.Time) ([]JoinLink, error)
	// RevokeJoinLink deletes the group's join link id; ErrNotFound if the
	// group has none with that id.
	RevokeJoinLink(ctx context.Context, groupID []byte, id string) error

	// Deniable groups (deniable.go). MembershipKey returns the group's
	// membership key of epoch, or ErrNotFound. GroupMessages is Messages
	// without membership windows: every message of the group from
	// q.FromSeq on (q.ClientID and q.ExcludeOwn are ignored).
	// PutDeniableRemoteTree is PutRemoteTree without the member check and
	// with no uploader recorded. DeniableWelcomes returns the deniable
	// Welcomes stored under the refs of KeyPackages the client published
	// (claimed or not), as WelcomeEvents with no GroupID and CommitSeq 0;
	// DeleteDeniableWelcomes deletes those among refs and says how many.
	// PruneKeyPackages also deletes the deniable Welcomes that expired,
	// and PruneMessages never deletes a deniable group for want of
	// members, deletes its messages only by age, and deletes its
	// superseded membership keys once superseded before p.ExpireBefore.
	MembershipKey(ctx context.Context, groupID []byte, epoch uint64) (MembershipKey, error)
	GroupMessages(ctx context.Context, q MessageQuery) ([]Envelope, error)
	PutDeniableRemoteTree(ctx context.Context, p RemoteTreePut) error
	DeniableWelcomes(ctx context.Context, clientID string) ([]WelcomeEvent, error)
	DeleteDeniableWelcomes(ctx context.Context, clientID string, refs [][]byte) (int, error)

	// Close releases the engine's resources.
	Close() error
}

// NotifierProvider is implemented by a Store that brings its own Notifier
// (a PostgreSQL engine with LISTEN/NOTIFY, so that writers on one node wake
// subscriptions on another).
type NotifierProvider interface {
	Notifier() Notifier
}

// Client is a registered client (a device). Its ID is the identity in its
// MLS credentials.
type Client struct {
	ID           string
	UserID       string
	CipherSuite  mls.CipherSuite
	SignatureKey []byte
	CreatedAt    time.Time
}

// KeyPackageRecord is a KeyPackage in the directory.
type KeyPackageRecord struct {
	Ref         []byte
	ClientID    string
	CipherSuite mls.CipherSuite
	Data        []byte // as uploaded
	NotBefore   time.Time
	NotAfter    time.Time
	LastResort  bool
	UploadedAt  time.Time

	// Set once the KeyPackage was claimed (never for a last-resort one).
	ClaimedBy string
	ClaimedAt time.Time
	// Set once a Welcome that uses the KeyPackage was accepted.
	ConsumedAt time.Time
}

// Claimed reports whether the KeyPackage was handed out by a claim.
func (r KeyPackageRecord) Claimed() bool { return !r.ClaimedAt.IsZero() }

// Consumed reports whether an accepted Welcome used the KeyPackage.
func (r KeyPackageRecord) Consumed() bool { return !r.ConsumedAt.IsZero() }

// ClaimParams asks for one KeyPackage of each target.
type ClaimParams struct {
	Claimer string
	Targets []string
	Suite   mls.CipherSuite
	Now     time.Time
}

// Claim is the outcome of a claim for one target.
type Claim struct {
	Target     string
	KeyPackage *KeyPackageRecord // nil: nothing claimable left
	// Remaining is the target's claimable stock for the suite after the
	// claim (not counting last-resort KeyPackages).
	Remaining int
}

// GroupRecord is a group as stored.
type GroupRecord struct {
	ID          []byte
	Mode        Mode
	CipherSuite mls.CipherSuite // 0 in opaque mode when unknown
	Creator     string
	CreatedAt   time.Time

	Epoch uint64 // current epoch
	// EpochStartSeq is the GroupSeq of the Commit that started the current
	// epoch, or 1 before the first Commit.
	EpochStartSeq uint64
	LastSeq       uint64 // GroupSeq of the last message, 0 if none
	// StateVersion counts the changes of the group's state (messages
	// accepted with AdvanceState or NewState); AcceptParams.StateVersion
	// is compared with it.
	StateVersion uint64

	// Only filled by GroupState.
	State           []byte // transparent: a marshaled mls.PublicGroupState, the latest snapshot
	SnapshotVersion uint64 // the StateVersion State belongs to
	GroupInfo       []byte // latest GroupInfo (opaque: as the client gave it)

	// Only read by CreateGroup: the KeyPackages (not last-resort) through
	// which the first members consented, to mark used with the group.
	ConsumeKeyPackages [][]byte
	// Only read by CreateGroup: a Welcome for the first members, stored
	// with CommitSeq 0 (their messages start at 1) and Epoch, and routed
	// to every recipient in WelcomeTo, as AcceptParams.Welcome is.
	Welcome   []byte
	WelcomeTo []WelcomeRoute
	// Only read by CreateGroup (deniable mode): the membership key of
	// Epoch, stored with StartSeq 1.
	MembershipKey []byte
	// Only read by CreateGroup: the group this one succeeds (a ReInit
	// closed it, ds/successor.go). The link is stored in the same
	// transaction; ErrAlreadyExists (wrapped) if that group has a
	// successor already.
	Predecessor []byte
}

// MembershipWindow is a range of group sequence numbers in which a client
// is a member and receives the group's messages: FromSeq <= seq and, once
// the client was removed, seq <= UntilSeq.
type MembershipWindow struct {
	FromSeq  uint64
	UntilSeq uint64 // 0 while the client is a member
}

// Open reports whether the client is still a member.
func (w MembershipWindow) Open() bool { return w.UntilSeq == 0 }

// GroupCursor is a client's position in one group.
type GroupCursor struct {
	GroupID []byte
	Acked   uint64 // every message with GroupSeq <= Acked was acknowledged
	Windows []MembershipWindow
}

// AcceptParams describes a message to append to a group and its effects.
//
// Epoch rule, checked under the transaction against the group's current
// epoch E: a Commit must have Epoch == E, and then the group moves to epoch
// E+1 with EpochStartSeq set to the Commit's GroupSeq. Any other message
// must have E-MaxEpochLag <= Epoch <= E. A message for an epoch above E, a
// Commit for another epoch, or any message older than E when MaxEpochLag
// is 0, fails with *WrongEpochError{Expected: E, FetchFromSeq:
// EpochStartSeq}; an older message beyond the lag with *StaleEpochError.
type AcceptParams struct {
	GroupID     []byte
	Hash        []byte // SHA-256 of Data; unique per group (idempotency)
	Epoch       uint64
	ContentType mls.ContentType
	WireFormat  mls.WireFormat
	Sender      string // client id of the authenticated sender
	Data        []byte
	AcceptedAt  time.Time
	MaxEpochLag uint64

	// RequireMember makes the transaction fail with ErrNotMember unless
	// Sender is a member of the group (an open membership window). It is
	// checked before the epoch rule, so that a non-member learns nothing
	// of the group's epoch.
	RequireMember bool

	// When AdvanceState is set or NewState is not nil, the message changes
	// the group's state: the group's StateVersion must equal StateVersion
	// (else ErrStateConflict) and is incremented, and the message enters
	// the state log (StateLog) with the new version. NewState, when not
	// nil, is also stored as the snapshot of the new version.
	StateVersion uint64
	AdvanceState bool
	NewState     []byte
	// GroupInfo, when not nil, replaces the group's latest GroupInfo.
	GroupInfo []byte

	// Roster changes (Commits only). Removed clients receive this message
	// and none after it; Added clients receive the messages after it, and
	// their cursor starts at it.
	Added   []string
	Removed []string

	// Welcome, when not nil, is stored once and routed to every recipient
	// in WelcomeTo (only Commits carry one). ConsumeKeyPackages (the
	// KeyPackages of the Commit's Adds and of the Welcome) are marked
	// consumed, last-resort ones excepted; if one is unknown, or not
	// last-resort and consumed already, the transaction fails with
	// ErrKeyPackageUsed (wrapped), so that two groups racing on one
	// KeyPackage cannot both use it.
	Welcome            []byte
	WelcomeTo          []WelcomeRoute
	ConsumeKeyPackages [][]byte

	// RemoteTree, when not nil (opaque Commits only), is stored as the
	// remote tree of the epoch the Commit starts; its Epoch must be that
	// epoch (else ErrInvalidArgument). Every accepted Commit drops the
	// remote trees older than the previous epoch.
	RemoteTree *RemoteTree

	// Deniable groups (Commits only). NextMembershipKey, when not nil, is
	// stored as the membership key of the epoch the Commit starts, with
	// the Commit's GroupSeq as StartSeq, and the key of the Commit's epoch
	// is marked superseded at AcceptedAt. DeniableWelcome, when not nil,
	// is stored once under each of its Refs.
	NextMembershipKey []byte
	DeniableWelcome   *DeniableWelcome
}

// StateLogEntry is a message that changed a group's state.
type StateLogEntry struct {
	Version  uint64 // the StateVersion the message produced
	GroupSeq uint64
	Hash     []byte
	Data     []byte
}

// WelcomeRoute names a client that a Welcome is for, and the KeyPackage
// through which it joins.
type WelcomeRoute struct {
	ClientID      string
	KeyPackageRef []byte
}

// AcceptResult is what AcceptMessage did.
type AcceptResult struct {
	Receipt
	Duplicate bool // the message was there already; nothing was changed
}

// MessageQuery selects messages of a group as one client may see them.
type MessageQuery struct {
	GroupID    []byte
	ClientID   string
	FromSeq    uint64
	Limit      int
	ExcludeOwn bool
	// MaxBytes, when positive, bounds the page by the size of the
	// messages' Data: the page ends with the message that brings the total
	// to MaxBytes or beyond, and an engine reads no row after it. The
	// first message always comes, however large. A caller that wants pages
	// of at most B bytes asks for B minus the largest message size; a page
	// whose total reaches MaxBytes may have been cut short, any other page
	// shorter than Limit holds everything there is.
	MaxBytes int
}

// ChangesState reports whether the message changes the group's state
// (AdvanceState, or a NewState).
func (p *AcceptParams) ChangesState() bool { return p.AdvanceState || p.NewState != nil }

// CheckEpoch applies the epoch rule of AcceptParams to a group at epoch
// current whose current epoch began with GroupSeq startSeq. Engines call it
// under their transaction, so that every engine refuses alike.
func CheckEpoch(p AcceptParams, current, startSeq uint64) error {
	wrong := &WrongEpochError{Expected: current, FetchFromSeq: startSeq, Got: p.Epoch}
	switch {
	case p.ContentType == mls.ContentTypeCommit:
		if p.Epoch != current {
			return wrong
		}
	case p.Epoch > current:
		return wrong
	case current-p.Epoch > p.MaxEpochLag:
		if p.MaxEpochLag == 0 {
			return wrong
		}
		return &StaleEpochError{Current: current, Got: p.Epoch}
	}
	return nil
}

// JoinLink lets whoever holds its token fetch a transparent group's
// GroupInfo and join it by external Commit until ExpiresAt. The store
// keeps only the SHA-256 of the token.
type JoinLink struct {
	GroupID   []byte
	ID        string // names the link; not secret
	TokenHash []byte // SHA-256 of the token
	CreatedBy string
	CreatedAt time.Time
	ExpiresAt time.Time
}
