package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/crypto/cryptobyte"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// Deniable groups (GroupOptions.Deniable, GROUP_MODE_DENIABLE) are opaque
// groups whose calls carry no client session: each call on the group
// proves membership with a MAC under the membership key of an epoch the
// client knows (see MembershipAuth in api/mlsds/v1/groups.proto),
//
//	K_e = MLS-Exporter("mlsds membership", group_id || uint64(e), 32)
//
// which every member of epoch e can compute, and so can the server, which
// holds it. The server therefore keeps no roster, no per-client cursor
// and no sender of the group's messages; the client keeps its position
// itself, receives the group on a stream of its own (SubscribeGroup) and
// takes Welcomes of deniable groups from its session stream, where they
// come without a group id.
//
// How it fits in the rest of the SDK:
//   - Client.rpc.groups is wrapped (routedGroups): the group calls of a
//     deniable group (Send, SendCommitBundle, Fetch, the remote tree,
//     GetGroupInfo) go on a second set of Connect clients without the
//     session, with the Mlsds-Membership header; Ack leaves the group's
//     cursors out; LeaveGroup is done locally (the server has nobody to
//     forget); the calls that would name this client next to the group
//     (rosters, trees, join links) fail here, before they leave.
//   - Each Commit carries K_{e+1} (next_membership_key), exported from the
//     state the Commit leads to.
//   - The keys of the last keptMembershipKeys epochs the client was a
//     member of are kept (Group.den), so that a member who missed Commits
//     proves membership with the newest key it has and then processes
//     the Commits it missed; a removed member keeps the key of its last
//     epoch and could, with it, still see the size and timing of later
//     ciphertexts until the server lets that key expire. The SDK stops
//     following a group once its removal is processed.
//   - Handshakes go as PrivateMessages (the server takes nothing else: a
//     PublicMessage would hold a member's signature over the group), so
//     Leave and ProposeUpdate have deniable variants here, and external
//     Commits are impossible.
//   - The session-less calls use a connection of their own; each proof
//     carries a fresh nonce, so that two members' equal calls (the joiners
//     of one Welcome fetching the remote tree) never carry the same MAC,
//     which the server would refuse as a replay.
//   - A Commit that gave the server a wrong K_{e+1} is noticed, reported
//     (EventKeyMismatch) and left behind in a branch without its
//     committer: deniable_recover.go.

// keptMembershipKeys bounds the membership keys kept per group: the
// current epoch's and those of the epochs before it.
const keptMembershipKeys = 8

// keptSentHashes bounds the hashes of this client's own application
// messages a deniable group remembers (see deniableState.sent).
const keptSentHashes = 64

// ErrDeniable is wrapped by the errors of operations a deniable group does
// not have: rosters, ratchet trees and join links on the server, all of
// which would name this client next to the group, and handshake messages
// in the clear (PublicMessages), which carry a member's signature over it.
var ErrDeniable = errors.New("client: not available in a deniable group")

// errNoServerView is the error of the calls that would ask the server
// about a deniable group with this client's session.
var errNoServerView = fmt.Errorf("%w: the server holds no roster, ratchet tree or join link of it, and asking with this client's session would link the client to the group", ErrDeniable)

// deniableState is what a deniable group keeps besides its MLS state.
type deniableState struct {
	mu sync.Mutex
	// keys are the membership keys known, newest epoch first.
	keys []membershipKey
	// sent holds the SHA-256 of this client's own recent application
	// messages: the group's stream brings them back (the server does
	// not know who sent what), and the sender's state cannot open them.
	sent [][]byte
	// welcomeRef is the KeyPackageRef of the Welcome this client joined
	// from, so that the Welcome, should it come again before the server
	// deletes it, is known for one taken in already.
	welcomeRef []byte
	// committers name the committers of the Commits that started the
	// last epochs, and rcv is the key check's state
	// (deniable_recover.go).
	committers []committerRecord
	rcv        keyRecovery
}

type membershipKey struct {
	epoch uint64
	key   []byte
}

// membershipKeyOf returns K_e of st's current epoch.
func membershipKeyOf(st *mls.Group) ([]byte, error) {
	return st.Export(ds.MembershipLabel, ds.MembershipKeyContext(st.GroupID(), st.Epoch()), ds.MembershipKeySize)
}

// note records the membership key of st's current epoch, unless st is
// no member's (a removed member's state knows no key past its last
// epoch).
func (d *deniableState) note(st *mls.Group) {
	epoch := st.Epoch()
	d.mu.Lock()
	known := len(d.keys) > 0 && d.keys[0].epoch >= epoch
	d.mu.Unlock()
	if known {
		return
	}
	key, err := membershipKeyOf(st)
	if err != nil {
		return
	}
	d.add(epoch, key)
}

// add records key as K_epoch.
func (d *deniableState) add(epoch uint64, key []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, k := range d.keys {
		if k.epoch == epoch {
			return
		}
	}
	i := 0
	for i < len(d.keys) && d.keys[i].epoch > epoch {
		i++
	}
	d.keys = append(d.keys[:i], append([]membershipKey{{epoch, bytes.Clone(key)}}, d.keys[i:]...)...)
	if len(d.keys) > keptMembershipKeys {
		d.keys = d.keys[:keptMembershipKeys]
	}
}

// newest returns the newest key known.
func (d *deniableState) newest() (membershipKey, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.keys) == 0 {
		return membershipKey{}, false
	}
	return d.keys[0], true
}

// keyOf returns K_epoch if known.
func (d *deniableState) keyOf(epoch uint64) ([]byte, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, k := range d.keys {
		if k.epoch == epoch {
			return k.key, true
		}
	}
	return nil, false
}

// noteSent remembers an own application message.
func (d *deniableState) noteSent(wire []byte) {
	h := sha256.Sum256(wire)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sent = append(d.sent, h[:])
	if len(d.sent) > keptSentHashes {
		d.sent = d.sent[len(d.sent)-keptSentHashes:]
	}
}

// wasSent reports whether wire is an own application message, and
// forgets it.
func (d *deniableState) wasSent(wire []byte) bool {
	h := sha256.Sum256(wire)
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, s := range d.sent {
		if bytes.Equal(s, h[:]) {
			d.sent = append(d.sent[:i], d.sent[i+1:]...)
			return true
		}
	}
	return false
}

// deniableStateFormat versions the encoding of deniableState (format 1
// lacks the committers).
const deniableStateFormat = 2

// marshal encodes the state:
//
//	uint8 format = 1;
//	struct { uint64 epoch; opaque key<0..255>; } keys<0..2^16-1>;
//	opaque sent<0..255><0..2^16-1>;
//	opaque welcome_ref<0..255>;
//	struct { uint64 epoch; uint32 leaf; opaque id<0..255>; uint64 accepted_unix_ms; } committers<0..2^16-1>;
func (d *deniableState) marshal() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := cryptobyte.NewBuilder(nil)
	b.AddUint8(deniableStateFormat)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, k := range d.keys {
			b.AddUint64(k.epoch)
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(k.key) })
		}
	})
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, s := range d.sent {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(s) })
		}
	})
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(d.welcomeRef) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, c := range d.committers {
			b.AddUint64(c.epoch)
			b.AddUint32(uint32(c.leaf))
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(c.id)) })
			b.AddUint64(uint64(c.at.UnixMilli()))
		}
	})
	return b.BytesOrPanic()
}

func unmarshalDeniableState(data []byte) (*deniableState, error) {
	s := cryptobyte.String(data)
	var format uint8
	var keys, sent cryptobyte.String
	d := &deniableState{}
	if !s.ReadUint8(&format) || format < 1 || format > deniableStateFormat {
		return nil, fmt.Errorf("client: stored deniable-group state of unknown format %d (a newer client wrote it)", format)
	}
	if !s.ReadUint16LengthPrefixed(&keys) || !s.ReadUint16LengthPrefixed(&sent) {
		return nil, errors.New("client: stored deniable-group state is malformed")
	}
	for !keys.Empty() {
		var k membershipKey
		var key cryptobyte.String
		if !keys.ReadUint64(&k.epoch) || !keys.ReadUint8LengthPrefixed(&key) {
			return nil, errors.New("client: stored membership keys are malformed")
		}
		k.key = bytes.Clone(key)
		d.keys = append(d.keys, k)
	}
	for !sent.Empty() {
		var h cryptobyte.String
		if !sent.ReadUint8LengthPrefixed(&h) {
			return nil, errors.New("client: stored message hashes are malformed")
		}
		d.sent = append(d.sent, bytes.Clone(h))
	}
	var ref, committers cryptobyte.String
	if !s.ReadUint8LengthPrefixed(&ref) || format >= 2 && !s.ReadUint16LengthPrefixed(&committers) || !s.Empty() {
		return nil, errors.New("client: stored deniable-group state is malformed")
	}
	for !committers.Empty() {
		var c committerRecord
		var leaf uint32
		var id cryptobyte.String
		var at uint64
		if !committers.ReadUint64(&c.epoch) || !committers.ReadUint32(&leaf) || !committers.ReadUint8LengthPrefixed(&id) || !committers.ReadUint64(&at) {
			return nil, errors.New("client: stored committers are malformed")
		}
		c.leaf, c.id, c.at = mls.LeafIndex(leaf), string(id), time.UnixMilli(int64(at))
		d.committers = append(d.committers, c)
	}
	if len(ref) > 0 {
		d.welcomeRef = bytes.Clone(ref)
	}
	return d, nil
}

// deniableClient is the client-wide part of deniable groups: Connect
// clients that carry no session, and the groups' streams.
type deniableClient struct {
	c        *Client
	groups   mlsdsv1connect.GroupServiceClient
	delivery mlsdsv1connect.DeliveryServiceClient

	mu      sync.Mutex
	streams map[*Group]*groupStream

	macs atomic.Int64 // calls signed, for tests and the bench
}

// setUpDeniable makes c's deniable-group machinery and routes the group
// calls of deniable groups through it (Open calls it once).
func (c *Client) setUpDeniable() {
	d := &deniableClient{c: c, streams: map[*Group]*groupStream{}}
	server := strings.TrimRight(c.cfg.Server, "/")
	// The MAC is made inside the rate-limit wait, so that a call sent
	// again carries a fresh timestamp.
	opts := connect.WithInterceptors(rateLimitWaiter{}, membershipInterceptor{d})
	hc := sessionlessHTTPClient(c.cfg.HTTPClient)
	d.groups = mlsdsv1connect.NewGroupServiceClient(hc, server, opts)
	d.delivery = mlsdsv1connect.NewDeliveryServiceClient(hc, server, opts)
	c.den = d
	c.rpc.groups = &routedGroups{GroupServiceClient: c.rpc.groups, c: c}
}

// sessionlessHTTPClient returns the HTTP client of the calls without a
// session: hc with a transport of its own when hc's is an
// *http.Transport (the default one is), so that no connection carries
// both this client's session and a membership proof, which would show the
// server on one connection who proves membership of the group. (The
// server still sees the network address; a client that must hide it too
// sets Config.HTTPClient to one that goes through a proxy.)
func sessionlessHTTPClient(hc *http.Client) *http.Client {
	tr, ok := hc.Transport.(*http.Transport)
	if !ok {
		return hc
	}
	out := *hc
	out.Transport = tr.Clone()
	return &out
}

// membershipAuth is what the MAC of one call needs: the group, the epoch
// it names and that epoch's key.
type membershipAuth struct {
	groupID []byte
	epoch   uint64
	key     []byte
}

type membershipCtxKey struct{}

func withMembership(ctx context.Context, a *membershipAuth) context.Context {
	return context.WithValue(ctx, membershipCtxKey{}, a)
}

// errNoMembership is a programming error: a call on the session-less
// clients without a membership key.
var errNoMembership = errors.New("client: a deniable-group call without a membership key")

// sign sets the Mlsds-Membership header of a call to procedure with
// request message msg, and drops any Authorization header.
func (d *deniableClient) sign(h http.Header, procedure string, a *membershipAuth, msg any) error {
	pm, ok := msg.(proto.Message)
	if !ok {
		return fmt.Errorf("client: cannot sign a %T", msg)
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(pm)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	// A fresh nonce makes every proof unique, so two members making the
	// same call in the same millisecond are not taken for a replay.
	ts, nonce := uint64(time.Now().UnixMilli()), ds.NewMembershipNonce()
	mac := ds.MembershipMAC(a.key, ds.MembershipTranscript(procedure, a.groupID, a.epoch, ts, nonce, sum[:]))
	h.Del("Authorization")
	h.Set(ds.MembershipHeader, ds.FormatMembershipHeader(a.epoch, ts, nonce, mac))
	d.macs.Add(1)
	return nil
}

// membershipInterceptor signs every call with the membershipAuth of its
// context.
type membershipInterceptor struct{ d *deniableClient }

func (m membershipInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		a, _ := ctx.Value(membershipCtxKey{}).(*membershipAuth)
		if a == nil {
			return nil, errNoMembership
		}
		// Every proof carries a fresh nonce, so two members making the very
		// same call at once are not taken for a replay.
		if err := m.d.sign(req.Header(), req.Spec().Procedure, a, req.Any()); err != nil {
			return nil, err
		}
		res, err := next(ctx, req)
		m.d.c.keyRefused(ctx, a, err) // deniable_recover.go
		return res, err
	}
}

// refusedAsOutsider reports whether err is the server's answer to a call
// that does not prove membership.
func refusedAsOutsider(err error) bool {
	c := connect.CodeOf(err)
	return err != nil && (c == connect.CodePermissionDenied || c == connect.CodeNotFound)
}

func (m membershipInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		a, _ := ctx.Value(membershipCtxKey{}).(*membershipAuth)
		return &membershipConn{StreamingClientConn: next(ctx, spec), d: m.d, a: a}
	}
}

func (m membershipInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// membershipConn signs a streaming call with its (only) request message,
// before the headers leave with it.
type membershipConn struct {
	connect.StreamingClientConn
	d      *deniableClient
	a      *membershipAuth
	signed bool
}

func (c *membershipConn) Send(msg any) error {
	if !c.signed {
		if c.a == nil {
			return errNoMembership
		}
		if err := c.d.sign(c.RequestHeader(), c.Spec().Procedure, c.a, msg); err != nil {
			return err
		}
		c.signed = true
	}
	return c.StreamingClientConn.Send(msg)
}

// deniableGroup returns the client's deniable group with id, or nil.
func (c *Client) deniableGroup(id []byte) *Group {
	if len(id) == 0 {
		return nil
	}
	g := c.group(id)
	if g == nil || g.den == nil {
		return nil
	}
	return g
}

// newestAuth is the membershipAuth of g's newest key.
func (g *Group) newestAuth() (*membershipAuth, error) {
	k, ok := g.den.newest()
	if !ok {
		return nil, fmt.Errorf("client: no membership key of deniable group %x is known", g.id)
	}
	return &membershipAuth{groupID: g.id, epoch: k.epoch, key: k.key}, nil
}

// withNewestKey makes call, a call on the session-less clients, proving
// membership of g with the newest key it knows.
func withNewestKey[Req, Res any](ctx context.Context, g *Group, req *connect.Request[Req], call func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error)) (*connect.Response[Res], error) {
	a, err := g.newestAuth()
	if err != nil {
		return nil, err
	}
	return call(withMembership(ctx, a), req)
}

// epochAuth is the membershipAuth of g's epoch.
func (g *Group) epochAuth(epoch uint64) (*membershipAuth, error) {
	key, ok := g.den.keyOf(epoch)
	if !ok {
		return nil, fmt.Errorf("client: the membership key of epoch %d of deniable group %x is not kept any more (a message of an old epoch?)", epoch, g.id)
	}
	return &membershipAuth{groupID: g.id, epoch: epoch, key: key}, nil
}

// messageGroupEpoch reads the group id and epoch from the clear header of
// an MLSMessage holding a PublicMessage or PrivateMessage (RFC 9420 §6:
// both start with group_id and epoch).
func messageGroupEpoch(wire []byte) (groupID []byte, epoch uint64, ok bool) {
	s := cryptobyte.String(wire)
	var version, wf uint16
	if !s.ReadUint16(&version) || !s.ReadUint16(&wf) {
		return nil, 0, false
	}
	if mls.WireFormat(wf) != mls.WireFormatPublicMessage && mls.WireFormat(wf) != mls.WireFormatPrivateMessage {
		return nil, 0, false
	}
	n, ok := readVarint(&s)
	if !ok || !s.ReadBytes(&groupID, int(n)) || !s.ReadUint64(&epoch) {
		return nil, 0, false
	}
	return groupID, epoch, true
}

// isPrivateMessage reports whether wire is an MLSMessage holding a
// PrivateMessage.
func isPrivateMessage(wire []byte) bool {
	s := cryptobyte.String(wire)
	var version, wf uint16
	return s.ReadUint16(&version) && s.ReadUint16(&wf) && mls.WireFormat(wf) == mls.WireFormatPrivateMessage
}

// readVarint reads an RFC 9420 §2.1.2 variable-length integer.
func readVarint(s *cryptobyte.String) (uint64, bool) {
	var b uint8
	if !s.ReadUint8(&b) {
		return 0, false
	}
	n := uint64(b & 0x3f)
	var extra int
	switch b >> 6 {
	case 0:
	case 1:
		extra = 1
	case 2:
		extra = 3
	default:
		return 0, false
	}
	for range extra {
		if !s.ReadUint8(&b) {
			return 0, false
		}
		n = n<<8 | uint64(b)
	}
	return n, true
}

// routedGroups is Client.rpc.groups: the session-authenticated
// GroupService, except for the calls on deniable groups (see the top of
// this file).
type routedGroups struct {
	mlsdsv1connect.GroupServiceClient
	c *Client
}

func (r *routedGroups) Send(ctx context.Context, req *connect.Request[mlsdsv1.SendRequest]) (*connect.Response[mlsdsv1.SendResponse], error) {
	if id, epoch, ok := messageGroupEpoch(req.Msg.Message); ok {
		if g := r.c.deniableGroup(id); g != nil {
			if !isPrivateMessage(req.Msg.Message) {
				// It would hand the server this client's signature over
				// the group; the server refuses it anyway.
				return nil, fmt.Errorf("%w: a deniable group takes PrivateMessages only", ErrDeniable)
			}
			a, err := g.epochAuth(epoch)
			if err != nil {
				return nil, err
			}
			return r.c.den.groups.Send(withMembership(ctx, a), req)
		}
	}
	return r.c.rpc.sends.Send(ctx, req)
}

// SendCommitBundle of a deniable group names no added or removed clients,
// and carries the membership key of the epoch the Commit starts, taken
// from the group's pending Commit (the caller, sendPendingLocked, holds
// the group's lock).
func (r *routedGroups) SendCommitBundle(ctx context.Context, req *connect.Request[mlsdsv1.SendCommitBundleRequest]) (*connect.Response[mlsdsv1.SendCommitBundleResponse], error) {
	if id, epoch, ok := messageGroupEpoch(req.Msg.Commit); ok {
		if g := r.c.deniableGroup(id); g != nil {
			if !isPrivateMessage(req.Msg.Commit) {
				// An external Commit (a PublicMessage by §12.4.3.2).
				return nil, fmt.Errorf("%w: a deniable group takes PrivateMessages only, so no external Commit", ErrDeniable)
			}
			a, err := g.epochAuth(epoch)
			if err != nil {
				return nil, err
			}
			p := g.pending
			if p == nil || !bytes.Equal(p.wire, req.Msg.Commit) {
				return nil, fmt.Errorf("client: a Commit to deniable group %x that is not the group's pending one", id)
			}
			next, err := membershipKeyOf(p.next)
			if err != nil {
				return nil, fmt.Errorf("client: deriving the next membership key: %w", err)
			}
			req.Msg.Added, req.Msg.Removed, req.Msg.NextMembershipKey = nil, nil, next
			return r.c.den.groups.SendCommitBundle(withMembership(ctx, a), req)
		}
	}
	return r.GroupServiceClient.SendCommitBundle(ctx, req)
}

func (r *routedGroups) Fetch(ctx context.Context, req *connect.Request[mlsdsv1.FetchRequest]) (*connect.Response[mlsdsv1.FetchResponse], error) {
	if g := r.c.deniableGroup(req.Msg.GroupId); g != nil {
		return withNewestKey(ctx, g, req, r.c.den.groups.Fetch)
	}
	return r.GroupServiceClient.Fetch(ctx, req)
}

func (r *routedGroups) GetGroupInfo(ctx context.Context, req *connect.Request[mlsdsv1.GetGroupInfoRequest]) (*connect.Response[mlsdsv1.GetGroupInfoResponse], error) {
	if g := r.c.deniableGroup(req.Msg.GroupId); g != nil {
		return withNewestKey(ctx, g, req, r.c.den.groups.GetGroupInfo)
	}
	return r.GroupServiceClient.GetGroupInfo(ctx, req)
}

func (r *routedGroups) PutRemoteTree(ctx context.Context, req *connect.Request[mlsdsv1.PutRemoteTreeRequest]) (*connect.Response[mlsdsv1.PutRemoteTreeResponse], error) {
	if g := r.c.deniableGroup(req.Msg.GroupId); g != nil {
		return withNewestKey(ctx, g, req, r.c.den.groups.PutRemoteTree)
	}
	return r.GroupServiceClient.PutRemoteTree(ctx, req)
}

func (r *routedGroups) GetRemoteTree(ctx context.Context, req *connect.Request[mlsdsv1.GetRemoteTreeRequest]) (*connect.Response[mlsdsv1.GetRemoteTreeResponse], error) {
	if g := r.c.deniableGroup(req.Msg.GroupId); g != nil {
		return withNewestKey(ctx, g, req, r.c.den.groups.GetRemoteTree)
	}
	return r.GroupServiceClient.GetRemoteTree(ctx, req)
}

// Ack leaves out the cursors of deniable groups: the server keeps none.
func (r *routedGroups) Ack(ctx context.Context, req *connect.Request[mlsdsv1.AckRequest]) (*connect.Response[mlsdsv1.AckResponse], error) {
	kept := req.Msg.Cursors[:0:0]
	for _, cur := range req.Msg.Cursors {
		if r.c.deniableGroup(cur.GroupId) == nil {
			kept = append(kept, cur)
		}
	}
	if len(kept) == 0 && len(req.Msg.WelcomeRefs) == 0 {
		return connect.NewResponse(&mlsdsv1.AckResponse{}), nil
	}
	req.Msg.Cursors = kept
	return r.GroupServiceClient.Ack(ctx, req)
}

// LeaveGroup of a deniable group is local: the server has no membership
// to end (the Remove proposal went to the group by Send), and the client
// stops following the group when it drops it.
func (r *routedGroups) LeaveGroup(ctx context.Context, req *connect.Request[mlsdsv1.LeaveGroupRequest]) (*connect.Response[mlsdsv1.LeaveGroupResponse], error) {
	if r.c.deniableGroup(req.Msg.GroupId) != nil {
		return connect.NewResponse(&mlsdsv1.LeaveGroupResponse{}), nil
	}
	return r.GroupServiceClient.LeaveGroup(ctx, req)
}

func (r *routedGroups) GetRoster(ctx context.Context, req *connect.Request[mlsdsv1.GetRosterRequest]) (*connect.Response[mlsdsv1.GetRosterResponse], error) {
	if r.c.deniableGroup(req.Msg.GroupId) != nil {
		return nil, errNoServerView
	}
	return r.GroupServiceClient.GetRoster(ctx, req)
}

func (r *routedGroups) GetRatchetTree(ctx context.Context, req *connect.Request[mlsdsv1.GetRatchetTreeRequest]) (*connect.Response[mlsdsv1.GetRatchetTreeResponse], error) {
	if r.c.deniableGroup(req.Msg.GroupId) != nil {
		return nil, errNoServerView
	}
	return r.GroupServiceClient.GetRatchetTree(ctx, req)
}

func (r *routedGroups) GetPath(ctx context.Context, req *connect.Request[mlsdsv1.GetPathRequest]) (*connect.Response[mlsdsv1.GetPathResponse], error) {
	if r.c.deniableGroup(req.Msg.GroupId) != nil {
		return nil, errNoServerView
	}
	return r.GroupServiceClient.GetPath(ctx, req)
}

func (r *routedGroups) CreateJoinLink(ctx context.Context, req *connect.Request[mlsdsv1.CreateJoinLinkRequest]) (*connect.Response[mlsdsv1.CreateJoinLinkResponse], error) {
	if r.c.deniableGroup(req.Msg.GroupId) != nil {
		return nil, errNoServerView
	}
	return r.GroupServiceClient.CreateJoinLink(ctx, req)
}

func (r *routedGroups) RevokeJoinLink(ctx context.Context, req *connect.Request[mlsdsv1.RevokeJoinLinkRequest]) (*connect.Response[mlsdsv1.RevokeJoinLinkResponse], error) {
	if r.c.deniableGroup(req.Msg.GroupId) != nil {
		return nil, errNoServerView
	}
	return r.GroupServiceClient.RevokeJoinLink(ctx, req)
}

func (r *routedGroups) ListJoinLinks(ctx context.Context, req *connect.Request[mlsdsv1.ListJoinLinksRequest]) (*connect.Response[mlsdsv1.ListJoinLinksResponse], error) {
	if r.c.deniableGroup(req.Msg.GroupId) != nil {
		return nil, errNoServerView
	}
	return r.GroupServiceClient.ListJoinLinks(ctx, req)
}

// ownDeniableLocked reports whether env, a message of deniable group g
// (whose envelopes name no sender), is this client's own: its pending
// Commit, or an application message it sent.
func (g *Group) ownDeniableLocked(env *mlsdsv1.Envelope) bool {
	if g.den == nil {
		return false
	}
	if g.pending != nil && bytes.Equal(g.pending.wire, env.Message) {
		return true
	}
	if env.ContentType == mlsdsv1.ContentType_CONTENT_TYPE_APPLICATION || env.ContentType == mlsdsv1.ContentType_CONTENT_TYPE_UNSPECIFIED {
		if g.own[env.GroupSeq] {
			delete(g.own, env.GroupSeq)
			return true
		}
		return g.den.wasSent(env.Message)
	}
	return false
}

// skipDeniableLocked passes over, in a deniable group, a Commit of an
// epoch before the state's: the Commit that added this client (a joiner
// starts from the first message of its epoch, which is that Commit, as the
// server has it). It reports whether env was passed over.
func (g *Group) skipDeniableLocked(env *mlsdsv1.Envelope) bool {
	if g.den == nil || env.ContentType != mlsdsv1.ContentType_CONTENT_TYPE_COMMIT || env.Epoch >= g.st.Epoch() {
		return false
	}
	g.processed, g.dirty = env.GroupSeq, true
	return true
}

// MembershipMACs returns how many calls on deniable groups this client
// signed with a membership key.
func (c *Client) MembershipMACs() int64 {
	if c.den == nil {
		return 0
	}
	return c.den.macs.Load()
}

// leaveDeniable is Leave for a deniable group: this client's Remove
// proposal goes to the group (encrypted, with a membership proof), and
// the client drops the group at once (EventLeft): there is no membership
// on the server to end, and it stops following the group. The other
// members' clients commit the proposal. A client whose state is broken
// drops the group without a proposal. Unlike in the other modes, the
// intent is not kept across a restart: a Leave that fails returns its
// error and may be called again.
func (g *Group) leaveDeniable(ctx context.Context) error {
	if err := g.lockOpen(); err != nil {
		return err
	}
	if g.broken {
		defer g.mu.Unlock()
		return g.dropLeftLocked(Event{Kind: EventLeft, GroupID: g.id, Seq: g.processed, Epoch: g.st.Epoch(), Members: memberIDs(g.st)})
	}
	g.mu.Unlock()
	_, err := g.sendRetrying(ctx, "leaving", func(wire *[]byte) (Receipt, error) { return g.leaveDeniableOnce(ctx, wire) })
	if errors.Is(err, ErrRemoved) {
		return nil // removed meanwhile: what it asked for
	}
	return err
}

func (g *Group) leaveDeniableOnce(ctx context.Context, wire *[]byte) (Receipt, error) {
	if err := g.lockActive(); err != nil {
		return Receipt{}, err
	}
	defer g.mu.Unlock()
	// Made on the real state, so that the handshake ratchet moves and is
	// saved before the message leaves.
	err := g.proposeLocked(ctx, wire, func() (*mls.MLSMessage, error) {
		msg, _, err := g.st.ProposeMessage(&mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: g.st.Self()}})
		return msg, err
	})
	if err != nil {
		return Receipt{}, err
	}
	res, err := g.c.rpc.groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: *wire}))
	if err != nil {
		return Receipt{}, fmt.Errorf("client: sending a Remove proposal to group %x: %w", g.id, err)
	}
	rc := res.Msg.Receipt
	r := Receipt{Seq: rc.GroupSeq, Epoch: rc.Epoch, AcceptedAt: rc.AcceptedAt.AsTime()}
	return r, g.dropLeftLocked(Event{Kind: EventLeft, GroupID: g.id, Seq: rc.GroupSeq, Epoch: rc.Epoch, Members: memberIDs(g.st), AcceptedAt: r.AcceptedAt})
}

// dropLeftLocked drops a deniable group this client leaves: it reads
// nothing of it any more (its stream ends), and reports e.
func (g *Group) dropLeftLocked(e Event) error {
	g.removed, g.leaving, g.proposals = true, false, nil
	g.pending = nil
	g.stopTakeoverLocked()
	g.unsaved = append(g.unsaved, e)
	g.dirty = true
	return g.persist(nil)
}

// proposeUpdateDeniable is ProposeUpdate for a deniable group: the
// proposal goes encrypted (the server takes PrivateMessages only), and
// comes back on the group's stream like any message, where this client's
// state knows it for its own.
func (g *Group) proposeUpdateDeniable(ctx context.Context) (Receipt, error) {
	return g.sendRetrying(ctx, "proposing an Update in", func(wire *[]byte) (Receipt, error) {
		if err := g.lockActive(); err != nil {
			return Receipt{}, err
		}
		defer g.mu.Unlock()
		// On the real state: it keeps the new leaf's private key. (Not
		// the method value g.st.ProposeUpdateMessage: catching up may
		// replace g.st.)
		err := g.proposeLocked(ctx, wire, func() (*mls.MLSMessage, error) { return g.st.ProposeUpdateMessage() })
		if err != nil {
			return Receipt{}, err
		}
		res, err := g.c.rpc.groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: *wire}))
		if err != nil {
			return Receipt{}, fmt.Errorf("client: sending an Update proposal to group %x: %w", g.id, err)
		}
		rc := res.Msg.Receipt
		if err := g.catchUpLocked(ctx, rc.GroupSeq); err != nil && !errors.Is(err, ErrRemoved) {
			g.c.log.Debug("catching up after an Update proposal; will finish later")
		}
		return Receipt{Seq: rc.GroupSeq, Epoch: rc.Epoch, AcceptedAt: rc.AcceptedAt.AsTime()}, nil
	})
}

// deniableSender fills in the Sender of base, the event of a Commit of a
// deniable group (whose envelopes name no sender): the committer's client,
// from its leaf in the epoch the Commit ended (oldMembers), or this client
// for its own Commit.
func (g *Group) deniableSender(base Event, oldMembers []mls.Member, effect *mls.CommitEffect, own bool) Event {
	g.noteDeniableCommitter(base, oldMembers, effect, own) // deniable_recover.go
	if g.den == nil || base.Sender != "" {
		return base
	}
	if own {
		base.Sender = g.c.id
		return base
	}
	if effect == nil || effect.External {
		return base
	}
	for _, m := range oldMembers {
		if m.Leaf == effect.Committer {
			base.Sender = string(m.Identity)
		}
	}
	return base
}
