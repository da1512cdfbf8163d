// Package client is the Go client SDK of mlsds, an MLS (RFC 9420) Delivery
// Service: it keeps a client's identity, KeyPackages and group states in a
// local SQLite file, talks to the Delivery Service over Connect, and turns
// the group messages it receives into Events, in each group's order, each
// exactly once.
//
// A Client registers and authenticates itself on Open, keeps a stock of
// KeyPackages published, follows the Delivery Service's stream in the
// background (reconnecting and logging in again as needed) and processes
// what arrives.
//
// Each group is processed strictly in the server's order (GroupSeq): the
// state file holds the group's MLS state together with the position it
// matches, written in one transaction per batch of messages (those the
// stream brought meanwhile, or a page of Fetch), and a message's events
// are delivered only once the state after it is written, so that a client
// that stops and opens its state again goes on where it was, without
// losing or repeating events. Gaps in what the stream brings are filled
// with Fetch.
//
// Commits and messages that lose the race for an epoch (the server's
// WrongEpoch or StaleEpoch) are made again on the new state and resent: an
// Add skips clients that became members meanwhile, a Remove those already
// gone, an Update is simply redone. The application sees such an error
// only when ten attempts in a row fail.
//
// Members check the credentials they meet (RFC 9420 §5.3.1): every leaf of
// a Welcome's or an external join's tree, and every leaf a Commit or a
// proposal brings in, must pass Config.CredentialValidator (by default:
// the Delivery Service's directory binds its signature key to its client
// id). A Welcome or Commit with a leaf that fails is refused, the state
// unchanged (EventRefused).
//
// Leave hands the server this client's Remove proposal with LeaveGroup:
// the server stops delivering the group at once and the client drops it
// (EventLeft). The member with the lowest leaf index that the pending
// proposals do not remove commits them on its own; after any Commit, it
// also commits the removal of clients whose Remove proposal an epoch
// ended without, or whom the server's roster no longer lists. Messages of
// a group the client holds no state of make it leave that group on the
// server rather than download it again.
//
// A state file is used by one Client at a time: Open locks it (see
// ErrStateInUse) until Close or the end of the process.
//
// The client sends handshake messages as PublicMessages in transparent
// and opaque groups (PrivateMessages in deniable ones), and processes
// those other members send as PrivateMessages too; in opaque mode it also
// declares, in the Commit's authenticated_data, whom a Commit adds and
// removes (ds.RosterChange), which the other members check.
// The server gets an opaque group's GroupInfo and ratchet tree only
// encrypted for the members of each epoch (see RemoteTreeKey): CreateGroup
// uploads epoch 0's, every Commit carries the next epoch's, and Welcomes
// leave the tree out; a joiner decrypts the tree of its epoch with the key
// its Welcome gives.
//
// A client that could not process a Commit (ErrGroupBroken) rejoins the
// group on its own with a resync external Commit that replaces its old
// leaf (EventRejoined; Group.Rejoin does the same on demand): in a
// transparent group from the GroupInfo the server serves, in an opaque one
// from the encrypted remote tree that the Commit carried, sealed also
// under the key of the epoch it was made in (see client/remotetree.go).
// A client that lost more than one epoch of an opaque group (pruned
// messages) rejoins with Client.JoinExternalWith and a GroupInfo from
// another member. Every Commit the client sends carries the new epoch's
// GroupInfo (transparent groups) or its encrypted remote tree (opaque).
package client

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlsds/mlsds/mls"
)

// Config configures a Client. Zero fields take the defaults in comments.
type Config struct {
	// Server is the Delivery Service's base URL: "http://host:port" (HTTP/2
	// without TLS, prior knowledge) or "https://host".
	Server string
	// HTTPClient, if set, carries every call. Default: an h2c client for
	// http:// URLs, an HTTP/2 client with the system's TLS settings for
	// https:// URLs. The messages of transparent and opaque groups go
	// over one bidirectional stream (SendStream), which needs HTTP/2 end
	// to end; where the server or a proxy does not carry it (Unimplemented,
	// or an HTTP/1.1 connection), the client uses unary Send calls.
	HTTPClient *http.Client
	// StatePath is the local SQLite file holding the identity, the private
	// keys of the KeyPackages and the group states. It is created (mode
	// 0600) if missing. Empty keeps everything in memory: the client is
	// gone when it is closed. One Client at a time may use a state file:
	// Open locks it (ErrStateInUse) with a lock on the file StatePath +
	// ".client-lock", created beside it, until Close or the end of the
	// process.
	StatePath string
	// ClientID and UserID name the client when the state holds no identity
	// yet; afterwards they must be empty or equal to the stored ones.
	// UserID defaults to ClientID on the server.
	ClientID, UserID string
	// CipherSuite is the suite of a new identity; default
	// MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (1).
	CipherSuite mls.CipherSuite
	// EnrollmentToken is sent on registration if the server requires one.
	EnrollmentToken string
	// DeviceLink is sent on registration to join an existing user as a
	// further device: a one-time link that another client of UserID made
	// with Client.CreateDeviceLink. Ignored once the client is registered.
	DeviceLink string
	// KeyPackages is how many KeyPackages are kept published, besides one
	// last-resort KeyPackage; default 20.
	KeyPackages int
	// GroupInfoTreeLimit is the largest encoded ratchet tree, in bytes,
	// that the client puts into the GroupInfo it sends with each Commit of
	// a transparent group (the ratchet_tree extension, RFC 9420
	// §12.4.3.3), so that whoever joins from that GroupInfo gets the tree
	// with it. Above it the GroupInfo goes without the tree, and joiners
	// take the tree from the Delivery Service (GetGroupInfo's
	// ratchet_tree, or parts of it). Default (0) 64 KiB; negative: never.
	GroupInfoTreeLimit int
	// Logger receives diagnostics; default slog.Default(). It never sees
	// secrets or plaintext.
	Logger *slog.Logger
	// CredentialValidator checks the credential and signature key of every
	// leaf the client meets in a group (RFC 9420 §5.3.1): the trees of
	// Welcomes and external joins, the leaves Commits add or replace. A
	// leaf it refuses makes the client refuse the Welcome or Commit
	// (EventRefused). Default (nil): the Delivery Service's directory
	// (AccountService.GetClientKeys) must bind the signature key to the
	// client id of a basic credential; its answers are cached for the life
	// of the Client.
	CredentialValidator CredentialValidator
	// ProposalPolicy decides which proposals of other members this
	// client's Commits carry (see ProposalPolicy). Default (nil): all,
	// except what the client never commits: a ReInit (EventReInit is for
	// the app to act on), an Add of a client the same Commit removes (so
	// Remove drops a pending re-add) or that is a member already.
	// Proposals that would make the Commit invalid are left out too.
	ProposalPolicy ProposalPolicy
	// MaxPendingProposals and MaxPendingProposalBytes bound the proposals
	// of one epoch the client keeps for the Commit that takes them in
	// (in count, and in bytes of their messages); a proposal past either
	// is dropped unseen (EventProposalDropped). Defaults
	// DefaultMaxPendingProposals (64) and DefaultMaxPendingProposalBytes
	// (512 KiB).
	MaxPendingProposals, MaxPendingProposalBytes int
	// CommitterTimeout is how long the member designated to commit the
	// pending proposals (the lowest leaf they neither remove nor update)
	// has before the next member in leaf order commits them instead, and
	// so on. Default DefaultCommitterTimeout (30s).
	CommitterTimeout time.Duration
	// X509Roots, if set, are the trust anchors against which the default
	// CredentialValidator verifies the certificate chains of x509
	// credentials (RFC 9420 §5.3), at the time of the check. Without it,
	// an x509 leaf needs what every leaf needs (its certificate naming, by
	// a SAN URI "mlsds:client/<id>", a client the directory binds the
	// leaf's key to) and a certificate that certifies that key; the
	// Delivery Service verified the chain against its own roots.
	X509Roots *x509.CertPool
	// OnConnection, if set, is told when the client's stream from the
	// Delivery Service breaks (connected false; err is why, nil when the
	// server ended it) and when a new stream works again (connected true),
	// once per change. The client reconnects on its own meanwhile. It is
	// called from the client's background work: return quickly.
	OnConnection func(connected bool, err error)
	// Offline makes Open only load the state: it neither registers nor
	// logs in, publishes KeyPackages or follows the server's stream, so it
	// works while the server is away; Server may then be empty. What the
	// state holds can be read (Groups, Group.Members, Group.Epoch, ...);
	// calls that need the server still try it.
	Offline bool
}

// testHookOpened, when set (by tests only, before Open), is called with a
// new Client just before its stream starts.
var testHookOpened func(*Client)

// ErrClosed is returned by the methods of a closed Client.
var ErrClosed = errors.New("client: the client is closed")

// ErrStateInUse is returned by Open when another Client, of this process
// or another one, has the state file open. Two Clients on one state would
// both follow the server, overwrite each other's group states and seal
// messages with the same keys and nonces.
var ErrStateInUse = errors.New("client: the state file is in use by another Client")

// Client is one MLS client (device) of a Delivery Service. Its methods are
// safe for concurrent use.
type Client struct {
	cfg  Config
	log  *slog.Logger
	id   string
	user string
	cs   mls.CipherSuite
	sig  []byte // signature private key
	db   *store
	rpc  *rpc

	ctx    context.Context // ends on Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	groups map[string]*Group
	closed bool

	events chan Event
	queue  *eventQueue
	acks   *acker

	kpMu sync.Mutex // serializes PublishKeyPackages

	// directory is the default CredentialValidator, made on first use.
	directory *directoryValidator
	// joining counts, per group id, the external joins in flight, during
	// which the group's messages may come before its Group exists;
	// leftUnknown the groups without state this client left on the
	// server (see leaveUnknown). Both under mu.
	joining     map[string]int
	leftUnknown map[string]bool

	// caughtUp is whether the current stream has delivered its backlog
	// (the server's caught_up) and everything before it is processed.
	caughtUp caughtUpSignal

	connDown       atomic.Bool            // the stream is down (see noteConnection)
	streams        atomic.Int64           // Subscribe streams opened
	rebases        atomic.Int64           // messages made again after the group moved on
	testHookStream atomic.Pointer[func()] // called before each stream event, in tests

	// joinTree says where the ratchet tree of the last join from a
	// Welcome came from (a treeFrom* constant), for tests.
	joinTree       atomic.Pointer[string]
	streamReceived atomic.Int64 // stream events received, for tests
	// testWelcomeWithoutTree makes the Welcomes of transparent groups
	// leave out the ratchet tree too, in tests.
	testWelcomeWithoutTree bool

	// den holds the session-less clients and the group streams of
	// deniable groups (deniable.go).
	den *deniableClient
}

// Open loads the client's state from cfg.StatePath (or starts a new one),
// registers a new identity with the server, authenticates, publishes
// KeyPackages and starts following the server's stream. Call Close when
// done.
func Open(ctx context.Context, cfg Config) (*Client, error) {
	return open(ctx, cfg)
}

// ID returns the client id: the identity of the client's MLS credential.
func (c *Client) ID() string { return c.id }

// Events returns the channel of the client's events. Read it steadily:
// while events pile up unread, the client stops taking in new messages
// (nothing is lost; they are fetched again later). The channel closes
// after Close, once the events queued before are delivered.
func (c *Client) Events() <-chan Event { return c.events }

// Close stops the background work, waits for the group operations in
// flight, closes the state file, and closes the Events channel once the
// events queued before are delivered. Methods called afterwards return
// ErrClosed.
func (c *Client) Close() error { return c.close() }

// SessionToken returns a session token of this client for the Delivery
// Service's API (sent as "Authorization: Bearer <token>") and when it
// expires, logging in if the client holds none that is still good. Treat
// it as a secret: it acts for this client until it expires.
func (c *Client) SessionToken(ctx context.Context) (string, time.Time, error) {
	if err := c.checkOpen(); err != nil {
		return "", time.Time{}, err
	}
	tok, err := c.rpc.currentToken(ctx)
	if err != nil {
		return "", time.Time{}, err
	}
	c.rpc.tokMu.Lock()
	exp := c.rpc.expires
	c.rpc.tokMu.Unlock()
	return tok, exp, nil
}

// PublishKeyPackages tops up the client's published KeyPackages to
// Config.KeyPackages, plus one last-resort KeyPackage, and returns how
// many it uploaded. The client also does this on its own when the server
// reports a low stock and after it joins a group.
func (c *Client) PublishKeyPackages(ctx context.Context) (int, error) {
	return c.publishKeyPackages(ctx)
}

// GroupOptions configures a new group.
type GroupOptions struct {
	// ID is the group id; nil means 16 random bytes.
	ID []byte
	// Opaque creates an opaque-mode group, whose messages the server does
	// not inspect; the client tells it the roster changes. Default:
	// transparent mode, where the server validates every handshake.
	Opaque bool
	// Deniable creates a deniable-mode group: opaque, and its calls carry
	// no client session but a MAC under the epoch's membership key, so
	// that the server keeps no link between this client and the group
	// and holds nothing that proves membership to anyone else (see
	// client/deniable.go). Welcomes of deniable groups come without a
	// group id; their members receive on a stream per group. Handshakes
	// go as PrivateMessages; Leave sends the Remove proposal and drops
	// the group at once. Join links, rosters, server-side ratchet trees
	// and external joins (Rejoin, JoinExternalWith) are not available
	// (ErrDeniable). Deniable implies Opaque.
	Deniable bool
}

// CreateGroup creates a group with this client as its only member.
func (c *Client) CreateGroup(ctx context.Context, opts GroupOptions) (*Group, error) {
	return c.createGroup(ctx, opts)
}

// Group returns the client's group with id, or nil if there is none.
func (c *Client) Group(id []byte) *Group { return c.group(id) }

// Groups returns the client's groups, including those it was removed from.
func (c *Client) Groups() []*Group { return c.allGroups() }

// JoinExternal joins a transparent-mode group by external Commit (RFC 9420
// §12.4.3.2) from the GroupInfo and ratchet tree the server keeps of it,
// retrying with a fresh GroupInfo if another Commit wins the epoch. If the
// tree holds a leaf of this client (a state it lost), the Commit removes
// it; if this client's state of the group is broken, it rejoins as
// Group.Rejoin does. A
// server may be configured to hand these out to members only; a client
// that is not a member then gets the GroupInfo from a member
// (Group.GroupInfo) and uses JoinExternalWith.
func (c *Client) JoinExternal(ctx context.Context, groupID []byte) (*Group, error) {
	return c.joinExternal(ctx, groupID, nil)
}

// JoinExternalWith joins a group by external Commit from groupInfo, an
// MLSMessage holding a GroupInfo with the external_pub and ratchet_tree
// extensions, as Group.GroupInfo returns it. If the group has moved on to
// another epoch, it fails: get a fresh GroupInfo and call it again. A
// client whose state of the group is broken rejoins it so, in either mode
// (see Group.Rejoin).
func (c *Client) JoinExternalWith(ctx context.Context, groupInfo []byte) (*Group, error) {
	return c.joinExternal(ctx, nil, groupInfo)
}

// Sync fetches and processes everything outstanding in every group.
func (c *Client) Sync(ctx context.Context) error { return c.syncAll(ctx) }

// WaitCaughtUp waits until the client's stream from the server has caught
// up: the server has sent everything stored for this client when the
// stream began (messages, Welcomes), and the client has processed it, so
// that the events of all of it are queued on Events. It returns at once if
// the current stream caught up already; while the client reconnects it
// waits for the new stream. A short-lived process calls it after Open to
// take in what arrived while it was away. It returns ctx's error if ctx
// ends first, ErrClosed if the client is closed.
func (c *Client) WaitCaughtUp(ctx context.Context) error { return c.waitCaughtUp(ctx) }
