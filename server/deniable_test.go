package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// Deniable groups against a real server: members are real mls.Groups that
// derive the membership keys with the MLS exporter, and every group call
// carries the Mlsds-Membership header and no session.

// denWorld is a server with a fake clock, a retention of one hour and no
// background pruner, and clients without sessions for the deniable calls.
type denWorld struct {
	t        *testing.T
	e        *testEnv
	clock    *testClock
	groups   mlsdsv1connect.GroupServiceClient    // no session
	delivery mlsdsv1connect.DeliveryServiceClient // no session
}

func newDenWorld(t *testing.T) *denWorld {
	clock := &testClock{t: time.Now().UTC().Truncate(time.Millisecond)}
	e := startEnv(t, func(c *ds.Config, _ *server.Config) {
		c.Now = clock.now
		c.Retention = time.Hour
		c.PruneInterval = -1
	})
	return &denWorld{
		t: t, e: e, clock: clock,
		groups:   mlsdsv1connect.NewGroupServiceClient(e.http, e.url),
		delivery: mlsdsv1connect.NewDeliveryServiceClient(e.http, e.url),
	}
}

// membershipKey derives K_e of g's current epoch.
func membershipKey(t testing.TB, g *mls.Group) []byte {
	t.Helper()
	k, err := g.Export(ds.MembershipLabel, ds.MembershipKeyContext(g.GroupID(), g.Epoch()), ds.MembershipKeySize)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sign puts a membership proof for req in its header: the MAC of epoch
// under key, at the server's time plus skew.
func sign[T any](w *denWorld, req *connect.Request[T], procedure string, gid []byte, epoch uint64, key []byte, skew time.Duration) *connect.Request[T] {
	w.t.Helper()
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(any(req.Msg).(proto.Message))
	if err != nil {
		w.t.Fatal(err)
	}
	h := sha256.Sum256(body)
	// A client's clock moves between two calls: identical calls within a
	// millisecond are replays.
	w.clock.add(time.Millisecond)
	ts := uint64(w.clock.now().Add(skew).UnixMilli())
	nonce := ds.NewMembershipNonce()
	mac := ds.MembershipMAC(key, ds.MembershipTranscript(procedure, gid, epoch, ts, nonce, h[:]))
	req.Header().Set(ds.MembershipHeader, ds.FormatMembershipHeader(epoch, ts, nonce, mac))
	return req
}

// answer is everything a caller sees of a refusal: code, message and
// details, byte for byte.
func answer(t testing.TB, err error) string {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("want a Connect error, got %v", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%v|%s", ce.Code(), ce.Message())
	for _, d := range ce.Details() {
		fmt.Fprintf(&b, "|%s:%s", d.Type(), hex.EncodeToString(d.Bytes()))
	}
	return b.String()
}

// denMember is a member of the deniable group: its MLS state.
type denMember struct {
	*member
	g *mls.Group
}

func (d *denMember) key() []byte { return membershipKey(d.t, d.g) }

// seal makes an application message of d's current epoch.
func (d *denMember) seal(text string) []byte {
	d.t.Helper()
	pm, err := d.g.Seal([]byte(text), nil)
	if err != nil {
		d.t.Fatal(err)
	}
	return mlsMessage(d.t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm})
}

func (w *denWorld) send(gid []byte, msg []byte, epoch uint64, key []byte) (*mlsdsv1.Receipt, error) {
	req := sign(w, connect.NewRequest(&mlsdsv1.SendRequest{Message: msg}), mlsdsv1connect.GroupServiceSendProcedure, gid, epoch, key, 0)
	res, err := w.groups.Send(context.Background(), req)
	if err != nil {
		return nil, err
	}
	return res.Msg.Receipt, nil
}

func (w *denWorld) fetch(gid []byte, from uint64, epoch uint64, key []byte) (*mlsdsv1.FetchResponse, error) {
	req := sign(w, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid, FromSeq: from}), mlsdsv1connect.GroupServiceFetchProcedure, gid, epoch, key, 0)
	res, err := w.groups.Fetch(context.Background(), req)
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// commit makes a PrivateMessage Commit of d (merged into d.g) and sends it
// with the key of the new epoch; it returns the receipt or the error, and
// the Welcome if any.
func (w *denWorld) commit(d *denMember, opts mls.CommitOptions, edit func(*mlsdsv1.SendCommitBundleRequest)) (*mlsdsv1.Receipt, *mls.Welcome, error) {
	return w.commitSigned(d, opts, edit, nil)
}

// commitSigned is commit with a last change to the signed request.
func (w *denWorld) commitSigned(d *denMember, opts mls.CommitOptions, edit func(*mlsdsv1.SendCommitBundleRequest), after func(*connect.Request[mlsdsv1.SendCommitBundleRequest])) (*mlsdsv1.Receipt, *mls.Welcome, error) {
	w.t.Helper()
	opts.WireFormat = mls.WireFormatPrivateMessage
	gid, epoch, key := d.g.GroupID(), d.g.Epoch(), d.key()
	msg, welcome, err := d.g.CommitMessage(opts)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := d.g.MergePendingCommit(); err != nil {
		w.t.Fatal(err)
	}
	req := &mlsdsv1.SendCommitBundleRequest{Commit: mlsMessage(w.t, msg), NextMembershipKey: d.key()}
	if welcome != nil {
		req.Welcome = mlsMessage(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: welcome})
	}
	if edit != nil {
		edit(req)
	}
	signed := sign(w, connect.NewRequest(req), mlsdsv1connect.GroupServiceSendCommitBundleProcedure, gid, epoch, key, 0)
	if after != nil {
		after(signed)
	}
	res, err := w.groups.SendCommitBundle(context.Background(), signed)
	if err != nil {
		return nil, welcome, err
	}
	return res.Msg.Receipt, welcome, nil
}

// create makes alice's group and creates it on the server in deniable mode.
func (w *denWorld) create(alice *member, gid []byte) *denMember {
	w.t.Helper()
	kp, priv, err := mls.NewKeyPackage(suite, []byte(alice.id), alice.sigPriv, 0, 1<<62)
	if err != nil {
		w.t.Fatal(err)
	}
	g, err := mls.NewGroup(gid, kp, priv)
	if err != nil {
		w.t.Fatal(err)
	}
	d := &denMember{member: alice, g: g}
	if _, err := alice.groups.CreateGroup(context.Background(), connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_DENIABLE, MembershipKey: d.key()})); err != nil {
		w.t.Fatalf("CreateGroup: %v", err)
	}
	return d
}

// claimMLS claims a KeyPackage of id through c.
func claimMLS(t testing.TB, c *member, id string) *mls.KeyPackage {
	t.Helper()
	res, err := c.kps.ClaimKeyPackages(context.Background(), claimReq(id))
	if err != nil {
		t.Fatalf("claim %s: %v", id, err)
	}
	m, err := mls.ParseMLSMessage(res.Msg.KeyPackages[0].KeyPackage)
	if err != nil {
		t.Fatal(err)
	}
	return m.KeyPackage
}

// welcomeOn waits on s for a Welcome event.
func welcomeOn(t testing.TB, s *subscription) *mlsdsv1.WelcomeEvent {
	t.Helper()
	for {
		if w := s.nextData(t).GetWelcome(); w != nil {
			return w
		}
	}
}

// joinFrom joins the group from a WelcomeEvent.
func joinFrom(t testing.TB, m *member, ev *mlsdsv1.WelcomeEvent, kp *mls.KeyPackage, priv *mls.KeyPackagePrivate) *denMember {
	t.Helper()
	msg, err := mls.ParseMLSMessage(ev.Welcome)
	if err != nil {
		t.Fatal(err)
	}
	g, err := mls.JoinGroup(msg.Welcome, kp, priv, nil, nil)
	if err != nil {
		t.Fatalf("%s joins: %v", m.id, err)
	}
	return &denMember{member: m, g: g}
}

func TestDeniableLife(t *testing.T) {
	w := newDenWorld(t)
	ctx := context.Background()
	alice, bob, carol := w.e.client("alice"), w.e.client("bob"), w.e.client("carol")
	gid := groupID("den")

	// A deniable group starts with its creator alone and a 32-byte key.
	for name, req := range map[string]*mlsdsv1.CreateGroupRequest{
		"members":   {GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_DENIABLE, MembershipKey: make([]byte, 32), Members: []string{"bob"}},
		"short key": {GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_DENIABLE, MembershipKey: make([]byte, 31)},
	} {
		_, err := alice.groups.CreateGroup(ctx, connect.NewRequest(req))
		connectErr(t, err, connect.CodeInvalidArgument)
		_ = name
	}
	a := w.create(alice, gid)
	key0 := a.key()

	// An application message, proven with K_0.
	r, err := w.send(gid, a.seal("hello"), 0, key0)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if r.GroupSeq != 1 {
		t.Fatalf("first message at seq %d", r.GroupSeq)
	}
	// A Commit cannot go by Send.
	{
		saved, _ := a.g.MarshalBinary()
		msg, _, err := a.g.CommitMessage(mls.CommitOptions{WireFormat: mls.WireFormatPrivateMessage})
		if err != nil {
			t.Fatal(err)
		}
		_, err = w.send(gid, mlsMessage(t, msg), 0, key0)
		ce := connectErr(t, err, connect.CodeInvalidArgument)
		if !strings.Contains(ce.Message(), "next_membership_key") {
			t.Fatalf("Commit by Send: %v", ce.Message())
		}
		a.g.DiscardPendingCommit()
		_ = saved
	}

	// Alice adds bob and carol with a Welcome.
	bobKP, bobPriv := bob.mlsKeyPackage()
	carolKP, carolPriv := carol.mlsKeyPackage()
	kpB, kpC := claimMLS(t, alice, "bob"), claimMLS(t, alice, "carol")
	if rb, _ := kpB.Ref(); !bytes.Equal(rb, must(bobKP.Ref())) {
		t.Fatal("claimed another KeyPackage of bob")
	}
	// Without the next key, or with a GroupInfo in clear: refused, and
	// nothing is stored (the same Commit goes through afterwards).
	saved, err := a.g.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(*mlsdsv1.SendCommitBundleRequest){
		"no next key": func(r *mlsdsv1.SendCommitBundleRequest) { r.NextMembershipKey = nil },
		"group info":  func(r *mlsdsv1.SendCommitBundleRequest) { r.GroupInfo = []byte{1} },
		"roster":      func(r *mlsdsv1.SendCommitBundleRequest) { r.Added = []string{"bob"} },
	} {
		_, _, err := w.commit(a, mls.CommitOptions{Adds: []*mls.KeyPackage{kpB, kpC}}, edit)
		connectErr(t, err, connect.CodeInvalidArgument)
		if a.g, err = mls.UnmarshalGroup(saved); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	bobSub, carolSub := bob.subscribe(), carol.subscribe()
	r, welcome, err := w.commit(a, mls.CommitOptions{Adds: []*mls.KeyPackage{kpB, kpC}}, nil)
	if err != nil {
		t.Fatalf("SendCommitBundle: %v", err)
	}
	if r.GroupSeq != 2 || r.Epoch != 0 || welcome == nil {
		t.Fatalf("Commit receipt %v", r)
	}
	key1 := a.key()

	// Bob and carol get the Welcome on their own streams, without the
	// group id, and join.
	evB, evC := welcomeOn(t, bobSub), welcomeOn(t, carolSub)
	for _, ev := range []*mlsdsv1.WelcomeEvent{evB, evC} {
		if len(ev.GroupId) != 0 || ev.CommitSeq != 0 || ev.Epoch != 1 {
			t.Fatalf("Welcome event names group %x, commit_seq %d, epoch %d", ev.GroupId, ev.CommitSeq, ev.Epoch)
		}
	}
	b := joinFrom(t, bob, evB, bobKP, bobPriv)
	c := joinFrom(t, carol, evC, carolKP, carolPriv)
	if !bytes.Equal(b.key(), key1) || !bytes.Equal(c.key(), key1) {
		t.Fatal("joiners derive another membership key")
	}
	// Carol may not delete bob's Welcome; bob deletes his.
	if _, err := carol.groups.Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{WelcomeRefs: [][]byte{evB.KeyPackageRef}})); err != nil {
		t.Fatal(err)
	}
	if n := len(pendingDeniableWelcomes(t, bob)); n != 1 {
		t.Fatalf("bob has %d Welcomes after carol acked his ref, want 1", n)
	}
	if _, err := bob.groups.Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{WelcomeRefs: [][]byte{evB.KeyPackageRef}})); err != nil {
		t.Fatal(err)
	}
	if n := len(pendingDeniableWelcomes(t, bob)); n != 0 {
		t.Fatalf("bob has %d Welcomes after acking, want 0", n)
	}
	bobSub.close()
	carolSub.close()

	// With K_1 bob reads from the Commit that started epoch 1, whatever
	// from_seq says; nothing names a sender.
	f, err := w.fetch(gid, 0, 1, key1)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if len(f.Messages) != 1 || f.Messages[0].GroupSeq != 2 || f.Messages[0].SenderClientId != "" || f.NextSeq != 3 {
		t.Fatalf("Fetch with K_1: %v", f)
	}

	// A group stream, then a live message that bob can open.
	stream := w.subscribeGroup(gid, 0, 1, key1)
	if got := stream.untilCaughtUp(t); len(got) != 1 || got[0].GroupSeq != 2 {
		t.Fatalf("group stream replay: %v", got)
	}
	if _, err := w.send(gid, a.seal("to all"), 1, key1); err != nil {
		t.Fatalf("Send in epoch 1: %v", err)
	}
	live := stream.nextMessage(t)
	m, err := mls.ParseMLSMessage(live.Message)
	if err != nil {
		t.Fatal(err)
	}
	if _, data, err := b.g.Open(m.PrivateMessage); err != nil || string(data) != "to all" {
		t.Fatalf("bob opens %q, %v", data, err)
	}
	stream.close()

	// Carol and alice race for epoch 1: alice wins; carol's Commit, proven
	// with K_1, learns the epoch; the same Commit without a valid proof
	// gets the answer for outsiders.
	if _, _, err := w.commit(a, mls.CommitOptions{}, nil); err != nil {
		t.Fatalf("alice's Commit: %v", err)
	}
	savedC, _ := c.g.MarshalBinary()
	_, _, err = w.commit(c, mls.CommitOptions{}, nil)
	we := detail[mlsdsv1.WrongEpoch](t, connectErr(t, err, connect.CodeAborted))
	if we.ExpectedEpoch != 2 {
		t.Fatalf("WrongEpoch expects %d", we.ExpectedEpoch)
	}
	c.g, _ = mls.UnmarshalGroup(savedC)
	_, _, err = w.commitSigned(c, mls.CommitOptions{}, nil, func(r *connect.Request[mlsdsv1.SendCommitBundleRequest]) {
		r.Msg.NextMembershipKey[0] ^= 1 // the body no longer matches the MAC
	})
	connectErr(t, err, connect.CodePermissionDenied)
	c.g, _ = mls.UnmarshalGroup(savedC)

	// Bob processes alice's Commit; alice removes carol.
	key2 := a.key()
	catchUp(t, w, b, key1)
	if !bytes.Equal(b.key(), key2) {
		t.Fatal("bob's key of epoch 2 differs")
	}
	r, _, err = w.commit(a, mls.CommitOptions{Removes: []mls.LeafIndex{c.g.Self()}}, nil)
	if err != nil {
		t.Fatalf("removing carol: %v", err)
	}
	removalSeq := r.GroupSeq
	key3 := a.key()
	if _, err := w.send(gid, a.seal("without carol"), 3, key3); err != nil {
		t.Fatal(err)
	}

	// Carol never learns K_3: her K_1 still reads (from the start of
	// epoch 1, the Commits she missed and the ciphertexts after them) but
	// cannot prove epoch 3.
	f, err = w.fetch(gid, 0, 1, key1)
	if err != nil {
		t.Fatalf("carol's fetch with K_1: %v", err)
	}
	if n := len(f.Messages); n == 0 || f.Messages[0].GroupSeq != 2 || f.Messages[n-1].GroupSeq <= removalSeq {
		t.Fatalf("carol's fetch: %d messages", n)
	}
	_, err = w.send(gid, c.seal("still here?"), 3, key1)
	connectErr(t, err, connect.CodePermissionDenied)

	// A group stream opened with K_1 ends once K_1 expires.
	old := w.subscribeGroup(gid, 0, 1, key1)
	old.untilCaughtUp(t)

	// Once K_1 and K_2 are superseded longer than the retention, they
	// read nothing; the current key still does.
	w.clock.add(time.Hour + time.Minute)
	for old.next(t) != nil {
	}
	connectErr(t, <-old.done, connect.CodePermissionDenied)
	_, err = w.fetch(gid, 0, 1, key1)
	connectErr(t, err, connect.CodePermissionDenied)
	if _, err := w.fetch(gid, 0, 3, key3); err != nil {
		t.Fatalf("fetch with the current key: %v", err)
	}

	// GetGroupInfo says the mode and epoch, and nothing else.
	gi, err := w.groups.GetGroupInfo(ctx, sign(w, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}),
		mlsdsv1connect.GroupServiceGetGroupInfoProcedure, gid, 3, key3, 0))
	if err != nil {
		t.Fatal(err)
	}
	if gi.Msg.Mode != mlsdsv1.GroupMode_GROUP_MODE_DENIABLE || gi.Msg.Epoch != 3 || gi.Msg.GroupInfo != nil {
		t.Fatalf("GetGroupInfo: %v", gi.Msg)
	}
	// Remote trees: put with the current key, got back.
	if _, err := w.groups.PutRemoteTree(ctx, sign(w, connect.NewRequest(&mlsdsv1.PutRemoteTreeRequest{GroupId: gid,
		RemoteTree: &mlsdsv1.RemoteTree{Epoch: 3, Blob: []byte("sealed")}}),
		mlsdsv1connect.GroupServicePutRemoteTreeProcedure, gid, 3, key3, 0)); err != nil {
		t.Fatalf("PutRemoteTree: %v", err)
	}
	rt, err := w.groups.GetRemoteTree(ctx, sign(w, connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: gid}),
		mlsdsv1connect.GroupServiceGetRemoteTreeProcedure, gid, 3, key3, 0))
	if err != nil || len(rt.Msg.RemoteTrees) != 1 || string(rt.Msg.RemoteTrees[0].Blob) != "sealed" {
		t.Fatalf("GetRemoteTree: %v, %v", rt, err)
	}
}

// catchUp makes d process what it missed, fetched with key.
func catchUp(t *testing.T, w *denWorld, d *denMember, key []byte) {
	t.Helper()
	f, err := w.fetch(d.g.GroupID(), 0, d.g.Epoch(), key)
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range f.Messages {
		if env.Epoch < d.g.Epoch() || env.ContentType != mlsdsv1.ContentType_CONTENT_TYPE_COMMIT {
			continue
		}
		m, err := mls.ParseMLSMessage(env.Message)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.g.Process(m); err != nil {
			t.Fatalf("%s processes seq %d: %v", d.id, env.GroupSeq, err)
		}
	}
}

// pendingDeniableWelcomes opens a session stream of m and returns the
// Welcomes before caught_up.
func pendingDeniableWelcomes(t *testing.T, m *member) []*mlsdsv1.WelcomeEvent {
	t.Helper()
	s := m.subscribe()
	defer s.close()
	var out []*mlsdsv1.WelcomeEvent
	for {
		ev := s.nextData(t)
		if ev.GetCaughtUp() != nil {
			return out
		}
		if w := ev.GetWelcome(); w != nil {
			out = append(out, w)
		}
	}
}

// groupStream reads a SubscribeGroup stream in the background.
type groupStream struct {
	events chan *mlsdsv1.SubscribeGroupResponse
	cancel context.CancelFunc
	done   chan error
}

func (w *denWorld) subscribeGroup(gid []byte, from, epoch uint64, key []byte) *groupStream {
	w.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req := sign(w, connect.NewRequest(&mlsdsv1.SubscribeGroupRequest{GroupId: gid, FromSeq: from}),
		mlsdsv1connect.DeliveryServiceSubscribeGroupProcedure, gid, epoch, key, 0)
	stream, err := w.delivery.SubscribeGroup(ctx, req)
	if err != nil {
		cancel()
		w.t.Fatalf("SubscribeGroup: %v", err)
	}
	s := &groupStream{events: make(chan *mlsdsv1.SubscribeGroupResponse, 1024), cancel: cancel, done: make(chan error, 1)}
	readInBackground(ctx, stream, s.events, s.done)
	w.t.Cleanup(s.close)
	return s
}

func (s *groupStream) close() {
	s.cancel()
	for range s.events {
	}
}

// next returns the next event that is not a keep-alive, or nil once the
// stream ended (its error in s.done).
func (s *groupStream) next(t testing.TB) *mlsdsv1.SubscribeGroupResponse {
	t.Helper()
	ev, _ := nextEvent(t, s.events)
	return ev
}

func (s *groupStream) untilCaughtUp(t testing.TB) []*mlsdsv1.Envelope {
	t.Helper()
	var out []*mlsdsv1.Envelope
	for {
		ev := s.next(t)
		if ev == nil {
			t.Fatalf("group stream ended: %v", <-s.done)
		}
		if ev.GetCaughtUp() != nil {
			return out
		}
		if m := ev.GetMessage(); m != nil {
			out = append(out, m)
		}
	}
}

func (s *groupStream) nextMessage(t testing.TB) *mlsdsv1.Envelope {
	t.Helper()
	for {
		ev := s.next(t)
		if ev == nil {
			t.Fatalf("group stream ended: %v", <-s.done)
		}
		if m := ev.GetMessage(); m != nil {
			return m
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestDeniableRefusals: every call on a deniable group that does not prove
// membership (wrong key, unknown epoch, a MAC over another body, a replay),
// and every session call on it, gets byte for byte the answer the same
// call gets for a group that does not exist; a stale timestamp is refused
// alike for both; a call with neither session nor proof is
// unauthenticated.
func TestDeniableRefusals(t *testing.T) {
	w := newDenWorld(t)
	ctx := context.Background()
	alice, eve := w.e.client("alice"), w.e.client("eve")
	gid := groupID("den")
	wrong := bytes.Repeat([]byte{7}, 32)
	var key0 []byte // set once the group exists

	fetchReq := func() *connect.Request[mlsdsv1.FetchRequest] {
		return connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid})
	}
	streamErr := func(req *connect.Request[mlsdsv1.SubscribeGroupRequest]) error {
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		s, err := w.delivery.SubscribeGroup(sctx, req)
		if err != nil {
			return err
		}
		defer s.Close()
		for s.Receive() {
			if s.Msg().GetCaughtUp() != nil {
				return errors.New("stream caught up")
			}
		}
		return s.Err()
	}
	calls := map[string]func() error{
		"send, wrong key": func() error {
			_, err := w.send(gid, privateMessage(t, gid, 0, mls.ContentTypeApplication, 40), 0, wrong)
			return err
		},
		"commit bundle, wrong key": func() error {
			req := connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
				Commit: privateMessage(t, gid, 0, mls.ContentTypeCommit, 40), NextMembershipKey: make([]byte, 32)})
			_, err := w.groups.SendCommitBundle(ctx, sign(w, req, mlsdsv1connect.GroupServiceSendCommitBundleProcedure, gid, 0, wrong, 0))
			return err
		},
		"fetch, wrong key": func() error { _, err := w.fetch(gid, 0, 0, wrong); return err },
		"fetch, unknown epoch": func() error {
			k := wrong
			if key0 != nil {
				k = key0
			}
			_, err := w.fetch(gid, 0, 5, k)
			return err
		},
		"fetch, MAC over another body": func() error {
			k := wrong
			if key0 != nil {
				k = key0
			}
			req := sign(w, fetchReq(), mlsdsv1connect.GroupServiceFetchProcedure, gid, 0, k, 0)
			req.Msg.FromSeq = 1
			_, err := w.groups.Fetch(ctx, req)
			return err
		},
		"fetch, replayed": func() error {
			k := wrong
			if key0 != nil {
				k = key0
			}
			req := sign(w, fetchReq(), mlsdsv1connect.GroupServiceFetchProcedure, gid, 0, k, 0)
			w.groups.Fetch(ctx, req) // accepted once the group exists
			again := connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid})
			again.Header().Set(ds.MembershipHeader, req.Header().Get(ds.MembershipHeader))
			_, err := w.groups.Fetch(ctx, again)
			return err
		},
		"fetch, signed for Send": func() error {
			k := wrong
			if key0 != nil {
				k = key0
			}
			_, err := w.groups.Fetch(ctx, sign(w, fetchReq(), mlsdsv1connect.GroupServiceSendProcedure, gid, 0, k, 0))
			return err
		},
		"group info, wrong key": func() error {
			_, err := w.groups.GetGroupInfo(ctx, sign(w, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}),
				mlsdsv1connect.GroupServiceGetGroupInfoProcedure, gid, 0, wrong, 0))
			return err
		},
		"remote tree, wrong key": func() error {
			_, err := w.groups.GetRemoteTree(ctx, sign(w, connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: gid}),
				mlsdsv1connect.GroupServiceGetRemoteTreeProcedure, gid, 0, wrong, 0))
			return err
		},
		"put remote tree, wrong key": func() error {
			_, err := w.groups.PutRemoteTree(ctx, sign(w, connect.NewRequest(&mlsdsv1.PutRemoteTreeRequest{GroupId: gid,
				RemoteTree: &mlsdsv1.RemoteTree{Epoch: 0, Blob: []byte("x")}}), mlsdsv1connect.GroupServicePutRemoteTreeProcedure, gid, 0, wrong, 0))
			return err
		},
		"group stream, wrong key": func() error {
			return streamErr(sign(w, connect.NewRequest(&mlsdsv1.SubscribeGroupRequest{GroupId: gid}),
				mlsdsv1connect.DeliveryServiceSubscribeGroupProcedure, gid, 0, wrong, 0))
		},
		"fetch, stale timestamp": func() error {
			_, err := w.groups.Fetch(ctx, sign(w, fetchReq(), mlsdsv1connect.GroupServiceFetchProcedure, gid, 0, wrong, -3*time.Minute))
			return err
		},
		"send, future timestamp": func() error {
			req := connect.NewRequest(&mlsdsv1.SendRequest{Message: privateMessage(t, gid, 0, mls.ContentTypeApplication, 40)})
			_, err := w.groups.Send(ctx, sign(w, req, mlsdsv1connect.GroupServiceSendProcedure, gid, 0, wrong, 3*time.Minute))
			return err
		},
		// Session calls: the creator has no roster row either.
		"roster, creator's session": func() error {
			_, err := alice.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid}))
			return err
		},
		"fetch, creator's session": func() error { _, err := alice.fetch(gid, 0, 0); return err },
		"send, creator's session": func() error {
			_, err := alice.send(privateMessage(t, gid, 0, mls.ContentTypeApplication, 40))
			return err
		},
		"leave, creator's session": func() error {
			_, err := alice.leave(gid, nil)
			return err
		},
		"group info, stranger's session": func() error {
			_, err := eve.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
			return err
		},
		"ack, creator's session": func() error {
			_, err := alice.groups.Ack(ctx, connect.NewRequest(&mlsdsv1.AckRequest{Cursors: []*mlsdsv1.Cursor{{GroupId: gid, Seq: 1}}}))
			return err
		},
		"ratchet tree, creator's session": func() error {
			_, err := alice.groups.GetRatchetTree(ctx, connect.NewRequest(&mlsdsv1.GetRatchetTreeRequest{GroupId: gid}))
			return err
		},
		"remote tree, creator's session": func() error {
			_, err := alice.groups.GetRemoteTree(ctx, connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: gid}))
			return err
		},
		"join link, creator's session": func() error {
			_, err := alice.groups.CreateJoinLink(ctx, connect.NewRequest(&mlsdsv1.CreateJoinLinkRequest{GroupId: gid}))
			return err
		},
		"group stream, creator's session": func() error {
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			s, err := alice.delivery.SubscribeGroup(sctx, connect.NewRequest(&mlsdsv1.SubscribeGroupRequest{GroupId: gid}))
			if err != nil {
				return err
			}
			defer s.Close()
			for s.Receive() {
			}
			return s.Err()
		},
	}
	missing := make(map[string]string)
	for name, call := range calls {
		err := call()
		if err == nil {
			t.Fatalf("%s on a missing group: success", name)
		}
		missing[name] = answer(t, err)
	}
	a := w.create(alice, gid)
	key0 = a.key()
	// A valid proof works (and the group has a message to hide).
	if _, err := w.send(gid, a.seal("hi"), 0, key0); err != nil {
		t.Fatalf("Send with K_0: %v", err)
	}
	for name, call := range calls {
		err := call()
		if err == nil {
			t.Errorf("%s: success", name)
			continue
		}
		if got := answer(t, err); got != missing[name] {
			t.Errorf("%s:\n got  %s\n want %s (the answer for a missing group)", name, got, missing[name])
		}
	}
	for _, name := range []string{"fetch, stale timestamp", "send, future timestamp"} {
		if !strings.HasPrefix(missing[name], connect.CodeInvalidArgument.String()) {
			t.Errorf("%s: %s, want invalid_argument", name, missing[name])
		}
	}
	for name, got := range missing {
		if strings.Contains(name, "timestamp") {
			continue
		}
		if !strings.HasPrefix(got, connect.CodePermissionDenied.String()) {
			t.Errorf("%s: %s, want permission_denied", name, got)
		}
	}

	// Neither session nor proof: unauthenticated.
	_, err := w.groups.Fetch(ctx, fetchReq())
	connectErr(t, err, connect.CodeUnauthenticated)
	// A proof on a call that takes none: unauthenticated.
	_, err = w.groups.GetRoster(ctx, sign(w, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid}),
		mlsdsv1connect.GroupServiceGetRosterProcedure, gid, 0, key0, 0))
	connectErr(t, err, connect.CodeUnauthenticated)

	// A MAC on an opaque group answers as for a missing group.
	ogid := groupID("opq")
	before := answer(t, must2(w.fetch(ogid, 0, 0, key0)))
	alice.createOpaqueGroup(ogid, alice)
	if after := answer(t, must2(w.fetch(ogid, 0, 0, key0))); after != before {
		t.Errorf("opaque group with a MAC:\n got  %s\n want %s", after, before)
	}
}

// must2 returns the error of a call that must fail.
func must2[T any](_ T, err error) error {
	if err == nil {
		panic("call succeeded")
	}
	return err
}

// TestGroupStreamSession: a member of an opaque group follows it with
// SubscribeGroup and its session, from a sequence number; an outsider gets
// the answer for a missing group.
func TestGroupStreamSession(t *testing.T) {
	e := startEnv(t)
	alice, bob, eve := e.client("alice"), e.client("bob"), e.client("eve")
	gid := groupID("opq")
	open := func(m *member, from uint64) (*groupStream, error) {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := m.delivery.SubscribeGroup(ctx, connect.NewRequest(&mlsdsv1.SubscribeGroupRequest{GroupId: gid, FromSeq: from}))
		if err != nil {
			cancel()
			return nil, err
		}
		s := &groupStream{events: make(chan *mlsdsv1.SubscribeGroupResponse, 64), cancel: cancel, done: make(chan error, 1)}
		go func() {
			defer close(s.events)
			for stream.Receive() {
				s.events <- stream.Msg()
			}
			s.done <- stream.Err()
		}()
		t.Cleanup(s.close)
		return s, nil
	}
	streamErr := func(m *member) string {
		s, err := open(m, 0)
		if err != nil {
			return answer(t, err)
		}
		for s.next(t) != nil {
		}
		return answer(t, <-s.done)
	}
	before := streamErr(eve)
	alice.createOpaqueGroup(gid, alice, bob)
	for i := 0; i < 3; i++ {
		alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 30))
	}
	s, err := open(bob, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.untilCaughtUp(t); len(got) != 2 || got[0].GroupSeq != 2 || got[0].SenderClientId != "alice" {
		t.Fatalf("replay from 2: %v", got)
	}
	alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 30))
	if m := s.nextMessage(t); m.GroupSeq != 4 {
		t.Fatalf("live message at seq %d", m.GroupSeq)
	}
	if after := streamErr(eve); after != before {
		t.Fatalf("an outsider's group stream:\n got  %s\n want %s", after, before)
	}
}

// TestDeniableLimits: deniable calls are limited per group and per remote
// address (they have no client), before the group is looked at; and the
// daily bytes are counted per group.
func TestDeniableLimits(t *testing.T) {
	clock := &testClock{t: time.Now().UTC().Truncate(time.Millisecond)}
	e := startEnv(t, func(c *ds.Config, _ *server.Config) {
		c.Now = clock.now
		c.PruneInterval = -1
		c.RequestsPerSecond, c.RequestBurst = 1, 3
		c.MaxBytesPerDay = 1000
	})
	w := &denWorld{t: t, e: e, clock: clock,
		groups:   mlsdsv1connect.NewGroupServiceClient(e.http, e.url),
		delivery: mlsdsv1connect.NewDeliveryServiceClient(e.http, e.url)}
	alice := e.client("alice")
	gid := groupID("den")
	a := w.create(alice, gid)

	// Over the daily bytes of the group: refused, with a valid proof.
	if _, err := w.send(gid, privateMessage(t, gid, 0, mls.ContentTypeApplication, 600), 0, a.key()); err != nil {
		t.Fatalf("first message: %v", err)
	}
	_, err := w.send(gid, privateMessage(t, gid, 0, mls.ContentTypeApplication, 600), 0, a.key())
	detail[mlsdsv1.QuotaExceeded](t, connectErr(t, err, connect.CodeResourceExhausted))

	// The third call, a made-up proof, spends the address's burst of 3 (not
	// the group's: see TestDeniableOutsiderCannotSpendGroupLimit).
	_, err = w.fetch(gid, 0, 0, bytes.Repeat([]byte{1}, 32))
	connectErr(t, err, connect.CodePermissionDenied)
	_, err = w.fetch(gid, 0, 0, a.key())
	detail[mlsdsv1.RateLimited](t, connectErr(t, err, connect.CodeResourceExhausted))
	// Another group, from the same address.
	_, err = w.fetch(groupID("other"), 0, 0, bytes.Repeat([]byte{1}, 32))
	detail[mlsdsv1.RateLimited](t, connectErr(t, err, connect.CodeResourceExhausted))
	// Both refill with time.
	clock.add(10 * time.Second)
	if _, err := w.fetch(gid, 0, 0, a.key()); err != nil {
		t.Fatalf("after the refill: %v", err)
	}
}

// TestDeniableSameCallSameMillisecond: two members making the very same
// call at the same millisecond (the joiners of one Welcome fetching the
// remote tree) are both served, because each proof carries its own nonce;
// the same proof twice is a replay.
func TestDeniableSameCallSameMillisecond(t *testing.T) {
	w := newDenWorld(t)
	ctx := context.Background()
	gid := groupID("den-same-ms")
	a := w.create(w.e.client("alice"), gid)
	key := a.key()
	ts := uint64(w.clock.now().UnixMilli())
	h := sha256.Sum256(must(proto.MarshalOptions{Deterministic: true}.Marshal(&mlsdsv1.GetRemoteTreeRequest{GroupId: gid})))
	header := func() string {
		n := ds.NewMembershipNonce()
		mac := ds.MembershipMAC(key, ds.MembershipTranscript(mlsdsv1connect.GroupServiceGetRemoteTreeProcedure, gid, 0, ts, n, h[:]))
		return ds.FormatMembershipHeader(0, ts, n, mac)
	}
	call := func(v string) error {
		req := connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: gid})
		req.Header().Set(ds.MembershipHeader, v)
		_, err := w.groups.GetRemoteTree(ctx, req)
		return err
	}
	first, second := header(), header()
	if err := call(first); err != nil {
		t.Fatalf("first member: %v", err)
	}
	if err := call(second); err != nil {
		t.Fatalf("second member, same call, same millisecond: %v", err)
	}
	connectErr(t, call(first), connect.CodePermissionDenied)
}

// TestDeniableOutsiderCannotSpendGroupLimit: a group's request budget is
// spent only by calls that prove membership. An outsider who knows the id
// of a deniable group and floods it with made-up proofs from another
// address uses up its own address's budget, not the members'.
func TestDeniableOutsiderCannotSpendGroupLimit(t *testing.T) {
	clock := &testClock{t: time.Now().UTC().Truncate(time.Millisecond)}
	e := startEnv(t, func(c *ds.Config, _ *server.Config) {
		c.Now = clock.now
		c.PruneInterval = -1
		c.RequestsPerSecond, c.RequestBurst = 0.001, 3
	})
	w := &denWorld{t: t, e: e, clock: clock,
		groups:   mlsdsv1connect.NewGroupServiceClient(e.http, e.url),
		delivery: mlsdsv1connect.NewDeliveryServiceClient(e.http, e.url)}
	gid := groupID("den-budget")
	a := w.create(e.client("alice"), gid)

	// The outsider calls from 127.0.0.2, another address on loopback.
	tr := &http.Transport{ForceAttemptHTTP2: true, DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	outsider := &denWorld{t: t, e: e, clock: clock, groups: mlsdsv1connect.NewGroupServiceClient(&http.Client{Transport: tr}, e.url)}
	wrong := bytes.Repeat([]byte{7}, ds.MembershipKeySize)
	for i := range 10 {
		_, err := outsider.fetch(gid, 0, 0, wrong)
		if i < 3 {
			connectErr(t, err, connect.CodePermissionDenied)
		} else {
			detail[mlsdsv1.RateLimited](t, connectErr(t, err, connect.CodeResourceExhausted))
		}
	}
	// The members' budget of 3 is whole.
	for i := range 3 {
		if _, err := w.fetch(gid, 0, 0, a.key()); err != nil {
			t.Fatalf("alice's call %d after the outsider's flood: %v", i+1, err)
		}
	}
}

// TestDeniableBytesPerAddress: a client may create many deniable groups,
// and their messages name no client, so the daily byte budget is charged
// to the caller's address as well as to the group: one address cannot
// store a budget's worth in each of its groups.
func TestDeniableBytesPerAddress(t *testing.T) {
	clock := &testClock{t: time.Now().UTC().Truncate(time.Millisecond)}
	e := startEnv(t, func(c *ds.Config, _ *server.Config) {
		c.Now = clock.now
		c.PruneInterval = -1
		c.MaxBytesPerDay = 1000
	})
	w := &denWorld{t: t, e: e, clock: clock,
		groups:   mlsdsv1connect.NewGroupServiceClient(e.http, e.url),
		delivery: mlsdsv1connect.NewDeliveryServiceClient(e.http, e.url)}
	alice := e.client("alice")
	g1, g2 := groupID("den-bytes-1"), groupID("den-bytes-2")
	a1, a2 := w.create(alice, g1), w.create(alice, g2)
	if _, err := w.send(g1, privateMessage(t, g1, 0, mls.ContentTypeApplication, 600), 0, a1.key()); err != nil {
		t.Fatalf("first group's message: %v", err)
	}
	_, err := w.send(g2, privateMessage(t, g2, 0, mls.ContentTypeApplication, 600), 0, a2.key())
	d := detail[mlsdsv1.QuotaExceeded](t, connectErr(t, err, connect.CodeResourceExhausted))
	if d.What != ds.QuotaBytesPerDay || d.Limit != 1000 {
		t.Fatalf("QuotaExceeded{%q, %d}", d.What, d.Limit)
	}
	// The refusal took nothing: a small message still fits.
	if _, err := w.send(g2, privateMessage(t, g2, 0, mls.ContentTypeApplication, 100), 0, a2.key()); err != nil {
		t.Fatalf("a message within what is left: %v", err)
	}
}
