package ds

import (
	"bytes"
	"container/heap"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/mlsds/mlsds/mls"
)

// Deniable groups (ModeDeniable) are opaque groups whose members prove
// their membership with a MAC under the key of an epoch (membership.go)
// instead of a client session, and of which the Delivery Service keeps
// nothing that names a client next to the group:
//
//   - no creator, roster, membership window or cursor: callers keep their
//     own position and read with Fetch or SubscribeGroup from a GroupSeq;
//   - messages are stored without a sender, and only PrivateMessages are
//     taken, so that no stored row holds a member's signature over
//     anything that names the group; a GroupInfo travels only encrypted,
//     in a remote tree;
//   - a Welcome is stored under each KeyPackageRef it names, with neither
//     the group id nor the Commit next to it, delivered on the joiner's
//     own session stream, and deleted once the joiner acknowledges it (or
//     by retention);
//   - the membership key of each epoch: K_e is given at creation
//     (CreateGroup.MembershipKey) and K_{e+1} with every Commit
//     (CommitBundle.NextMembershipKey), stored in the transaction that
//     accepts it. A key that a Commit superseded is kept for
//     Config.Retention, so that a member that missed Commits can still
//     read from the Commit that started the last epoch it knows; then the
//     pruner deletes it. The current key is never deleted.
//
// The Service could compute every MAC itself, so a MAC proves nothing to a
// third party. It keeps no MAC: the replay check holds a hash of each MAC
// in memory for the timestamp window, per node (so a request replayed to
// another node that shares the store within the window is not caught;
// every such request carries the same body, and a Send of the same
// message is answered with the first receipt anyway).
//
// What the Service still learns: which connection calls for which group
// (it never writes it down, and logs no client id for these calls), the
// size and timing of every message, and, through the KeyPackages a
// Welcome consumes, when a client joined some deniable group (not which).
// A removed member that kept an old key may go on reading the sizes and
// timing of later ciphertexts until that key expires.
//
// Rate limits and quotas of deniable calls are kept per group and per
// connection (remote address) in memory, per node.

// MembershipKey is the membership key of one epoch of a deniable group.
type MembershipKey struct {
	GroupID []byte
	Epoch   uint64
	Key     []byte // MembershipKeySize bytes
	// StartSeq is the GroupSeq of the Commit that started the epoch, or 1
	// for the group's first epoch: a caller with this key may read from
	// there on.
	StartSeq  uint64
	CreatedAt time.Time
	// SupersededAt is when the Commit that ended the epoch was accepted;
	// zero while the key is the group's current one.
	SupersededAt time.Time
}

// DeniableWelcome is a Welcome of a deniable group to store with the
// Commit that adds its joiners: once under each of Refs, with nothing else
// than the epoch the joiners enter and a coarse expiry.
type DeniableWelcome struct {
	Refs      [][]byte
	Epoch     uint64
	Data      []byte
	ExpiresAt time.Time
}

// MembershipProof is what a call on a deniable group carries instead of a
// session: the parsed Mlsds-Membership header, with what the server knows
// of the call.
type MembershipProof struct {
	// Procedure is the RPC's full name, "/mlsds.v1.GroupService/Send".
	Procedure string
	Epoch     uint64
	UnixMilli uint64
	Nonce     []byte
	MAC       []byte
	// BodyHash is the SHA-256 of the request message's deterministic
	// protobuf encoding.
	BodyHash []byte
	// Conn names the caller's connection (its remote address), for rate
	// limits. It is never stored.
	Conn string
}

// Bounds of the deniable mode.
const (
	defaultMembershipClockSkew  = 2 * time.Minute
	defaultMembershipReplaySize = 16 << 20
	// replayEntryBytes is what one entry of the replay cache costs in
	// memory, roughly: its digest as a map key, the heap entry and their
	// overheads.
	replayEntryBytes = 128
	// maxWelcomeRefsPerAck bounds the refs of one AckWelcomes.
	maxWelcomeRefsPerAck = 1000
)

// notDeniableMember is the answer to every call on a deniable group that
// does not prove membership, the same as for a group that does not exist
// or is not deniable: notMember, with no client.
func notDeniableMember(groupID []byte) error { return notMember("", groupID) }

// deniableState is what a Service keeps in memory for deniable groups.
type deniableState struct {
	keys     keyCache
	replays  *replayCache
	requests *keyedLimiter // keys: "g"+group id in hex, "a"+connection
	bytes    *keyedLimiter // bytes per group per day, as tokens
}

func newDeniableState(cfg Config) *deniableState {
	d := &deniableState{
		replays:  newReplayCache(cfg.MembershipReplayCacheBytes, cfg.MembershipClockSkew),
		requests: newKeyedLimiter("requests", cfg.RequestsPerSecond, cfg.RequestBurst, cfg.MaxRateLimitKeys),
	}
	if cfg.MaxBytesPerDay > 0 {
		d.bytes = newKeyedLimiter("bytes per group and day", float64(cfg.MaxBytesPerDay)/86400,
			int(min(cfg.MaxBytesPerDay, 1<<40)), cfg.MaxRateLimitKeys)
	}
	return d
}

// deniable returns the Service's deniable state.
func (s *Service) deniable() *deniableState { return s.den }

// chargeGroupBytes takes n bytes of the daily budget of the group and of
// the caller's connection (address), or refuses with a
// *QuotaExceededError and takes nothing. Both are charged: a client may
// create many deniable groups, whose messages name no client, so the
// group's budget alone would multiply what one address may store.
func (s *Service) chargeGroupBytes(groupID []byte, conn string, n int) error {
	k := s.deniable().bytes
	if k == nil || n <= 0 {
		return nil
	}
	keys := []string{"g" + hex.EncodeToString(groupID)}
	if conn != "" {
		keys = append(keys, "a"+conn)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	wait, ok := k.takeNLocked(s.cfg.Now(), n, keys)
	switch {
	case !ok:
		return &QuotaExceededError{What: QuotaBytesPerDay, Limit: s.cfg.MaxBytesPerDay}
	case wait > 0:
		return &QuotaExceededError{What: QuotaBytesPerDay, Limit: s.cfg.MaxBytesPerDay, RetryAfter: wait}
	}
	return nil
}

// verifyMembership checks a proof for a call on groupID: the rate limit
// of the connection, the timestamp window, the MAC under the key of
// pr.Epoch (in constant time), that the same MAC was not used for the same
// procedure and group before, and then the rate limit of the group. It
// returns the key. A group
// that does not exist or is not deniable (only deniable groups have
// membership keys), no live key for the epoch, a MAC that does not verify
// or was used before, all get notDeniableMember; a timestamp out of the
// window is refused before the group is looked at, so that answer says
// nothing of the group either.
func (s *Service) verifyMembership(ctx context.Context, groupID []byte, pr *MembershipProof) (MembershipKey, error) {
	d := s.deniable()
	now := s.cfg.Now()
	// The connection's budget is spent by every call, the group's only by
	// calls that prove membership: an outsider who knows a group id must
	// not be able to use up its members' budget.
	if pr.Conn != "" {
		if err := d.requests.reserve(now, "a"+pr.Conn); err != nil {
			return MembershipKey{}, err
		}
	}
	if len(groupID) == 0 || len(groupID) > s.cfg.MaxGroupIDSize {
		return MembershipKey{}, fmt.Errorf("%w: group id must have 1 to %d bytes", ErrInvalidArgument, s.cfg.MaxGroupIDSize)
	}
	nowMs := now.UnixMilli()
	skew := s.cfg.MembershipClockSkew
	if ts := int64(min(pr.UnixMilli, 1<<62)); ts < nowMs-skew.Milliseconds() || ts > nowMs+skew.Milliseconds() {
		side := "behind"
		if ts > nowMs {
			side = "ahead of"
		}
		return MembershipKey{}, fmt.Errorf("%w: the %s timestamp is more than %s %s the server's clock; check the clock and sign the call again",
			ErrInvalidArgument, MembershipHeader, skew, side)
	}
	key, err := s.membershipKey(ctx, groupID, pr.Epoch)
	if isNotFound(err) {
		return MembershipKey{}, notDeniableMember(groupID)
	} else if err != nil {
		return MembershipKey{}, err
	}
	if s.keyExpired(key) {
		return MembershipKey{}, notDeniableMember(groupID)
	}
	want := MembershipMAC(key.Key, MembershipTranscript(pr.Procedure, groupID, pr.Epoch, pr.UnixMilli, pr.Nonce, pr.BodyHash))
	if !hmac.Equal(want, pr.MAC) {
		return MembershipKey{}, notDeniableMember(groupID)
	}
	if !d.replays.admit(replayDigest(pr.Procedure, groupID, pr.MAC), pr.UnixMilli, uint64(nowMs)) {
		return MembershipKey{}, notDeniableMember(groupID)
	}
	if err := d.requests.reserve(now, "g"+hex.EncodeToString(groupID)); err != nil {
		return MembershipKey{}, err
	}
	return key, nil
}

// Membership keys are cached for a short while: a key never changes once
// stored, but for the time its epoch was superseded (which matters only a
// retention period later), and a key that is not found is not cached.
const (
	keyCacheTTL     = time.Second
	keyCacheEntries = 10_000
)

// keyCache holds recently used membership keys, by group and epoch.
type keyCache struct {
	mu sync.Mutex
	m  map[string]cachedKey
}

type cachedKey struct {
	key MembershipKey
	at  time.Time
}

// membershipKey returns the group's key of epoch, from the cache when it
// was read within keyCacheTTL.
func (s *Service) membershipKey(ctx context.Context, groupID []byte, epoch uint64) (MembershipKey, error) {
	c := &s.deniable().keys
	id := string(MembershipKeyContext(groupID, epoch))
	now := s.cfg.Now()
	c.mu.Lock()
	e, ok := c.m[id]
	c.mu.Unlock()
	if ok && !now.Before(e.at) && now.Sub(e.at) < keyCacheTTL {
		return e.key, nil
	}
	k, err := s.store.MembershipKey(ctx, groupID, epoch)
	if err != nil {
		return MembershipKey{}, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= keyCacheEntries {
		c.m = make(map[string]cachedKey) // bounded: start over
	}
	c.m[id] = cachedKey{key: k, at: now}
	c.mu.Unlock()
	return k, nil
}

// keyExpired reports whether a superseded key outlived the retention.
func (s *Service) keyExpired(k MembershipKey) bool {
	return !k.SupersededAt.IsZero() && s.cfg.Retention > 0 && k.SupersededAt.Add(s.cfg.Retention).Before(s.cfg.Now())
}

// replayDigest names a (procedure, group, MAC) without holding the MAC.
func replayDigest(procedure string, groupID, mac []byte) [32]byte {
	var b cryptobyte.Builder
	addOpaqueV(&b, []byte(procedure))
	addOpaqueV(&b, groupID)
	addOpaqueV(&b, mac)
	return sha256.Sum256(b.BytesOrPanic())
}

// deniableCreate fills in the record of a new deniable group.
func (s *Service) deniableCreate(g CreateGroup, rec *GroupRecord) error {
	if len(g.Members) > 0 || len(g.KeyPackages) > 0 {
		return fmt.Errorf("%w: a deniable group starts with its creator alone: members and key_packages must be empty; add members with a Commit and a Welcome", ErrInvalidArgument)
	}
	if len(g.GroupInfo) > 0 || len(g.RatchetTree) > 0 {
		return fmt.Errorf("%w: a deniable group takes no GroupInfo or ratchet tree in clear (they are signed by a member); upload them encrypted with PutRemoteTree", ErrInvalidArgument)
	}
	if len(g.Welcome) > 0 {
		return fmt.Errorf("%w: a deniable group is created with its creator alone; send the Welcome with the Commit that adds its joiners", ErrInvalidArgument)
	}
	if len(g.MembershipKey) != MembershipKeySize {
		return fmt.Errorf("%w: membership_key must be the %d-byte key of the group's epoch, MLS-Exporter(%q, group_id || uint64(epoch), %d)",
			ErrInvalidArgument, MembershipKeySize, MembershipLabel, MembershipKeySize)
	}
	if err := checkEpochBound("epoch", g.Epoch); err != nil {
		return err
	}
	rec.ID = bytes.Clone(g.GroupID)
	rec.Epoch = g.Epoch
	rec.Creator = "" // nothing names a client next to the group
	rec.CipherSuite = 0
	rec.MembershipKey = bytes.Clone(g.MembershipKey)
	return nil
}

// SendDeniable is Send for a deniable group: msg must be a PrivateMessage
// (an application message or a Proposal; Commits go with
// SendCommitBundleDeniable), and pr must prove membership with the key of
// the message's epoch. The message is stored with no sender. A caller
// without a valid proof gets the answer of a missing group.
func (s *Service) SendDeniable(ctx context.Context, pr MembershipProof, msg []byte) (Receipt, error) {
	return s.submitDeniable(ctx, &pr, msg, nil)
}

// SendCommitBundleDeniable is SendCommitBundle for a deniable group. pr
// must prove membership with the key of the Commit's epoch, which must be
// the group's current one (else *WrongEpochError, only once the proof
// holds). b.NextMembershipKey, the key of the epoch the Commit starts, is
// stored with it; b.Added, b.Removed and b.GroupInfo must be empty; the
// Welcome, if any, is stored under the KeyPackageRefs it names only.
func (s *Service) SendCommitBundleDeniable(ctx context.Context, pr MembershipProof, b CommitBundle) (Receipt, error) {
	return s.submitDeniable(ctx, &pr, b.Commit, &b)
}

func (s *Service) submitDeniable(ctx context.Context, pr *MembershipProof, data []byte, b *CommitBundle) (Receipt, error) {
	if err := s.checkSizes(data, b); err != nil {
		return Receipt{}, err
	}
	sub, err := parseSubmission("", data, b)
	if err != nil {
		return Receipt{}, err
	}
	if _, err := s.verifyMembership(ctx, sub.groupID, pr); err != nil {
		return Receipt{}, err
	}
	if sub.wf != mls.WireFormatPrivateMessage {
		return Receipt{}, fmt.Errorf("%w: a deniable group takes PrivateMessages only (a PublicMessage carries a member's signature over the group)", ErrInvalidArgument)
	}
	if pr.Epoch != sub.epoch {
		return Receipt{}, fmt.Errorf("%w: the message is for epoch %d but the %s proof uses the key of epoch %d; prove membership with the key of the message's epoch",
			ErrInvalidArgument, sub.epoch, MembershipHeader, pr.Epoch)
	}
	if b == nil && sub.ct == mls.ContentTypeCommit {
		return Receipt{}, fmt.Errorf("%w: use SendCommitBundle with next_membership_key for a deniable group's Commit", ErrInvalidArgument)
	}
	// The store answers a resubmitted application message with its first
	// receipt; anything else is looked up first, since the epoch check
	// would refuse it once its epoch passed. The caller proved membership:
	// it may know the receipt.
	if !sub.isPrivateApplication() {
		if r, err := s.store.MessageByHash(ctx, sub.groupID, sub.hash); err == nil {
			return r, nil
		} else if !isNotFound(err) {
			return Receipt{}, err
		}
	}
	p := s.acceptParams(sub)
	p.Sender = ""
	notify := []string{GroupTopic(sub.groupID)}
	if sub.ct == mls.ContentTypeApplication {
		p.MaxEpochLag = s.cfg.AppMessageEpochWindow
	}
	// The store checks the epoch again under its transaction (and answers
	// a resubmitted application message first); checking now spares the
	// work on a Commit that cannot win.
	if !sub.isPrivateApplication() {
		head, err := s.store.Group(ctx, sub.groupID)
		if isNotFound(err) {
			return Receipt{}, notDeniableMember(sub.groupID)
		} else if err != nil {
			return Receipt{}, err
		}
		if err := CheckEpoch(p, head.Epoch, head.EpochStartSeq); err != nil {
			return Receipt{}, err
		}
	}
	if b != nil {
		joiners, err := s.prepareDeniableCommit(ctx, sub, b, &p)
		if err != nil {
			return Receipt{}, err
		}
		for _, c := range joiners {
			notify = append(notify, ClientTopic(c))
		}
	}
	if err := s.chargeGroupBytes(sub.groupID, pr.Conn, int(submittedBytes(data, b))); err != nil {
		return Receipt{}, err
	}
	res, err := s.acceptMessage(ctx, p, notify)
	if errors.Is(err, ErrNotMember) || isNotFound(err) {
		return Receipt{}, notDeniableMember(sub.groupID)
	}
	if err != nil {
		return Receipt{}, err
	}
	return res.Receipt, nil
}

// prepareDeniableCommit checks a deniable Commit's bundle and fills in p;
// it returns the clients whose KeyPackages the Welcome names, to wake
// their streams (in memory only).
func (s *Service) prepareDeniableCommit(ctx context.Context, sub *submission, b *CommitBundle, p *AcceptParams) ([]string, error) {
	if len(b.NextMembershipKey) != MembershipKeySize {
		return nil, fmt.Errorf("%w: a deniable group's Commit needs next_membership_key, the %d-byte key of the epoch it starts: MLS-Exporter(%q, group_id || uint64(epoch+1), %d)",
			ErrInvalidArgument, MembershipKeySize, MembershipLabel, MembershipKeySize)
	}
	if len(b.Added) > 0 || len(b.Removed) > 0 {
		return nil, fmt.Errorf("%w: a deniable group keeps no roster: added and removed must be empty", ErrInvalidArgument)
	}
	if len(b.GroupInfo) > 0 {
		return nil, fmt.Errorf("%w: a deniable group takes no GroupInfo in clear (it is signed by a member); put it, encrypted, in remote_tree", ErrInvalidArgument)
	}
	if b.JoinToken != "" {
		return nil, fmt.Errorf("%w: deniable groups have no join links", ErrInvalidArgument)
	}
	p.NextMembershipKey = bytes.Clone(b.NextMembershipKey)
	if b.RemoteTree != nil {
		t, err := s.bundleRemoteTree(sub, b.RemoteTree)
		if err != nil {
			return nil, err
		}
		p.RemoteTree = t
	}
	if len(b.Welcome) == 0 {
		return nil, nil
	}
	w, err := parseWelcome(b.Welcome)
	if err != nil {
		return nil, err
	}
	joiners := w.Joiners()
	if len(joiners) == 0 {
		return nil, invalidf("12.4.3.1", "the Welcome names no new member")
	}
	refs := make([][]byte, len(joiners))
	for i, r := range joiners {
		refs[i] = r
	}
	byRef, err := s.keyPackagesByRef(ctx, refs)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(refs))
	var clients []string
	for _, ref := range refs {
		if seen[string(ref)] {
			return nil, invalidf("12.4.3.1", "the Welcome names KeyPackage %x twice", ref)
		}
		seen[string(ref)] = true
		rec, ok := byRef[string(ref)]
		if !ok {
			return nil, invalidf("", "the Welcome names KeyPackage %x, which this Delivery Service does not know; publish and claim KeyPackages through it", ref)
		}
		if rec.CipherSuite != w.CipherSuite {
			return nil, invalidf("12.4.3.1", "the Welcome is for cipher suite %d, KeyPackage %x for %d", w.CipherSuite, ref, rec.CipherSuite)
		}
		if rec.Consumed() && !rec.LastResort {
			return nil, invalidf("10", "KeyPackage %x was already used by an earlier Welcome; a KeyPackage is used only once", ref)
		}
		if !rec.LastResort {
			p.ConsumeKeyPackages = append(p.ConsumeKeyPackages, ref)
		}
		clients = append(clients, rec.ClientID)
	}
	p.DeniableWelcome = &DeniableWelcome{
		Refs:      refs,
		Epoch:     sub.epoch + 1,
		Data:      bytes.Clone(b.Welcome),
		ExpiresAt: s.welcomeExpiry(),
	}
	return clients, nil
}

// welcomeExpiry is when a deniable Welcome stored now expires: after the
// retention, rounded up to the hour so that it says little of when the
// Commit came. Without a retention it is kept a year.
func (s *Service) welcomeExpiry() time.Time {
	keep := s.cfg.Retention
	if keep <= 0 {
		keep = 365 * 24 * time.Hour
	}
	t := s.now().Add(keep)
	if r := t.Truncate(time.Hour); r.Before(t) {
		t = r.Add(time.Hour)
	}
	return t
}

// FetchDeniable is Fetch for a deniable group: the caller proves
// membership with the key of an epoch e and reads from
// max(fromSeq, start of e) on, every message of the group, later epochs
// included. It returns the messages and the GroupSeq it read from.
func (s *Service) FetchDeniable(ctx context.Context, pr MembershipProof, groupID []byte, fromSeq uint64, limit, maxBytes int) ([]Envelope, uint64, error) {
	maxBytes = max(1, min(maxBytes, s.cfg.FetchMaxBytes))
	if err := checkSeq("from_seq", fromSeq); err != nil {
		return nil, 0, err
	}
	if limit > maxFetchLimit {
		return nil, 0, fmt.Errorf("%w: limit %d is above the maximum of %d messages per call; fetch in pages", ErrInvalidArgument, limit, maxFetchLimit)
	}
	if limit <= 0 {
		limit = defaultFetchLimit
	}
	key, err := s.verifyMembership(ctx, groupID, &pr)
	if err != nil {
		return nil, 0, err
	}
	from := max(fromSeq, key.StartSeq, 1)
	envs, err := s.store.GroupMessages(ctx, MessageQuery{GroupID: groupID, FromSeq: from, Limit: limit, MaxBytes: maxBytes})
	if err != nil {
		return nil, 0, err
	}
	envs = withinBudget(envs, maxBytes)
	if err := s.checkPruned(ctx, groupID, []MembershipWindow{{FromSeq: key.StartSeq}}, from, envs); err != nil {
		return nil, 0, err
	}
	return envs, from, nil
}

// GroupInfoDeniable answers GetGroupInfo for a deniable group: its mode
// and current epoch, and nothing else (the Service keeps no GroupInfo and
// no roster of it).
func (s *Service) GroupInfoDeniable(ctx context.Context, pr MembershipProof, groupID []byte) (GroupInfoResult, error) {
	if _, err := s.verifyMembership(ctx, groupID, &pr); err != nil {
		return GroupInfoResult{}, err
	}
	head, err := s.store.Group(ctx, groupID)
	if isNotFound(err) {
		return GroupInfoResult{}, notDeniableMember(groupID)
	} else if err != nil {
		return GroupInfoResult{}, err
	}
	return GroupInfoResult{GroupID: head.ID, Mode: ModeDeniable, Epoch: head.Epoch}, nil
}

// PutRemoteTreeDeniable is PutRemoteTree for a deniable group: pr proves
// membership with the key of t.Epoch, which must be the group's current
// epoch. The uploader is not recorded.
func (s *Service) PutRemoteTreeDeniable(ctx context.Context, pr MembershipProof, groupID []byte, t RemoteTree) error {
	if err := s.checkRemoteTreeBlob(t.Blob); err != nil {
		return err
	}
	if err := checkEpochBound("remote tree epoch", t.Epoch); err != nil {
		return err
	}
	if _, err := s.verifyMembership(ctx, groupID, &pr); err != nil {
		return err
	}
	if t.Epoch != pr.Epoch {
		return fmt.Errorf("%w: the remote tree is for epoch %d but the %s proof uses the key of epoch %d; prove membership with the key of the tree's epoch",
			ErrInvalidArgument, t.Epoch, MembershipHeader, pr.Epoch)
	}
	// The store refuses a tree that is not for the current epoch.
	if err := s.chargeGroupBytes(groupID, pr.Conn, len(t.Blob)); err != nil {
		return err
	}
	err := s.store.PutDeniableRemoteTree(ctx, RemoteTreePut{
		GroupID: bytes.Clone(groupID),
		Tree:    RemoteTree{Epoch: t.Epoch, Blob: bytes.Clone(t.Blob)},
		At:      s.now(),
	})
	if isNotFound(err) || errors.Is(err, ErrNotMember) {
		return notDeniableMember(groupID)
	}
	return err
}

// RemoteTreesDeniable is RemoteTrees for a deniable group; a joiner proves
// membership with the key it derives from its Welcome.
func (s *Service) RemoteTreesDeniable(ctx context.Context, pr MembershipProof, groupID []byte) (RemoteTreesResult, error) {
	if _, err := s.verifyMembership(ctx, groupID, &pr); err != nil {
		return RemoteTreesResult{}, err
	}
	epoch, trees, err := s.store.RemoteTrees(ctx, groupID)
	if isNotFound(err) {
		return RemoteTreesResult{}, notDeniableMember(groupID)
	} else if err != nil {
		return RemoteTreesResult{}, err
	}
	return RemoteTreesResult{GroupID: bytes.Clone(groupID), Epoch: epoch, Trees: trees}, nil
}

// AckWelcomes deletes the deniable groups' Welcomes stored under refs that
// name KeyPackages the client published; other refs are ignored.
func (s *Service) AckWelcomes(ctx context.Context, client string, refs [][]byte) error {
	if len(refs) == 0 {
		return nil
	}
	if err := s.allow(client); err != nil {
		return err
	}
	if len(refs) > maxWelcomeRefsPerAck {
		return fmt.Errorf("%w: %d welcome_refs in one call; send at most %d", ErrInvalidArgument, len(refs), maxWelcomeRefsPerAck)
	}
	for _, r := range refs {
		if len(r) == 0 || len(r) > 64 {
			return fmt.Errorf("%w: a welcome ref must be a KeyPackageRef (1 to 64 bytes)", ErrInvalidArgument)
		}
	}
	_, err := s.store.DeleteDeniableWelcomes(ctx, client, refs)
	return err
}

// sendDeniableWelcomes is the part of a session subscription's refresh
// that delivers the Welcomes of deniable groups stored under the client's
// KeyPackages: with no group id and CommitSeq 0. It reports stalled when a
// budget was full (the caller reads again once there is room).
func (sub *subscription) sendDeniableWelcomes(ctx context.Context) (stalled bool, err error) {
	ws, err := sub.s.store.DeniableWelcomes(ctx, sub.client.ID)
	if err != nil {
		return false, err
	}
	for i := range ws {
		// A last-resort KeyPackage may be named by several Welcomes.
		h := sha256.Sum256(ws[i].Data)
		k := welcomeKey{"ref:" + string(ws[i].KeyPackageRef) + string(h[:]), 0}
		if sub.sentWelcome[k] {
			continue
		}
		if err := sub.send(ctx, Event{Welcome: &ws[i]}); err != nil {
			if err == errFull {
				return true, nil
			}
			return false, err
		}
		if sub.sentWelcome == nil {
			sub.sentWelcome = make(map[welcomeKey]bool)
		}
		sub.sentWelcome[k] = true
	}
	return false, nil
}

// replayCache remembers the digests of the proofs accepted within the
// timestamp window, bounded in entries: when full, the oldest entry goes
// and every proof with a timestamp at or below its timestamp is refused
// from then on (floor), so that nothing the cache forgot can be replayed.
// An honest client signs each call with the current time and is not
// affected unless the cache turns over within the clock skew.
type replayCache struct {
	window time.Duration
	max    int

	mu    sync.Mutex
	seen  map[[32]byte]struct{}
	order replayHeap
	floor uint64
}

type replayEntry struct {
	digest [32]byte
	ts     uint64
}

type replayHeap []replayEntry

func (h replayHeap) Len() int           { return len(h) }
func (h replayHeap) Less(i, j int) bool { return h[i].ts < h[j].ts }
func (h replayHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *replayHeap) Push(x any)        { *h = append(*h, x.(replayEntry)) }
func (h *replayHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func newReplayCache(maxBytes int64, window time.Duration) *replayCache {
	return &replayCache{window: window, max: int(max(1, maxBytes/replayEntryBytes)), seen: make(map[[32]byte]struct{})}
}

// admit records a proof with timestamp ts (unix ms) at nowMs and reports
// whether it was new.
func (c *replayCache) admit(d [32]byte, ts, nowMs uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := uint64(c.window.Milliseconds())
	// Entries whose timestamp left the window are refused by the
	// timestamp check already.
	for len(c.order) > 0 && c.order[0].ts+w < nowMs {
		e := heap.Pop(&c.order).(replayEntry)
		delete(c.seen, e.digest)
	}
	if ts <= c.floor {
		return false
	}
	if _, dup := c.seen[d]; dup {
		return false
	}
	for len(c.order) >= c.max {
		e := heap.Pop(&c.order).(replayEntry)
		delete(c.seen, e.digest)
		c.floor = max(c.floor, e.ts)
	}
	if ts <= c.floor {
		return false
	}
	c.seen[d] = struct{}{}
	heap.Push(&c.order, replayEntry{digest: d, ts: ts})
	return true
}

// len returns how many proofs are remembered (for tests).
func (c *replayCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.order)
}
