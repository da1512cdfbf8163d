// Package partialjoin checks, against a real server over real SQLite, that a
// client can join a 1,000-member transparent group from a Welcome without
// the ratchet tree, fetching only the tree parts it needs from the Delivery
// Service's tree queries, and then send, receive and commit.
package partialjoin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

const suite = mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

// env is a running server: the Connect handlers over a ds.Service on a
// SQLite file, on a loopback port, spoken to over HTTP/2 (h2c).
type env struct {
	url  string
	http *http.Client
}

func startServer(t *testing.T) *env {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "mlsds.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dsCfg := ds.Config{
		RequestsPerSecond:        100_000,
		ClaimsPerMinute:          100_000,
		ClaimsPerTargetPerMinute: 100_000,
		PollInterval:             time.Second,
	}
	srvCfg := server.Config{
		AuthRatePerSecond: -1,
		KeepAlive:         30 * time.Second,
		ShutdownTimeout:   5 * time.Second,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxMessageSize:    dsCfg.MaxMessageSize,
		Metrics:           server.NewMetrics(),
	}
	svc := ds.New(srvCfg.Metrics.InstrumentStore(st), dsCfg)
	srv, err := server.New(svc, srvCfg)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	tr := &http.Transport{ForceAttemptHTTP2: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	e := &env{url: "http://" + ln.Addr().String(), http: &http.Client{Transport: tr}}
	t.Cleanup(func() {
		cancel()
		e.http.CloseIdleConnections()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		st.Close()
	})
	return e
}

// bearer adds the session token to every call of a client.
type bearer struct{ token *string }

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if *b.token != "" {
			req.Header().Set("Authorization", "Bearer "+*b.token)
		}
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if *b.token != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+*b.token)
		}
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// client is a registered client of the server with its MLS signature key.
type client struct {
	t       *testing.T
	id      string
	sigPriv []byte
	sigPub  []byte
	token   string

	auth     mlsdsv1connect.AuthServiceClient
	kps      mlsdsv1connect.KeyPackageServiceClient
	groups   mlsdsv1connect.GroupServiceClient
	delivery mlsdsv1connect.DeliveryServiceClient
}

// client registers id with a fresh signature key (or sigPriv, if given).
func (e *env) client(t *testing.T, id string, sigPriv []byte) *client {
	t.Helper()
	var sigPub []byte
	var err error
	if sigPriv == nil {
		sigPriv, sigPub, err = suite.GenerateSignatureKeyPair()
	} else {
		sigPub, err = suite.SignaturePublicKey(sigPriv)
	}
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, id: id, sigPriv: sigPriv, sigPub: sigPub}
	opt := connect.WithInterceptors(bearer{&c.token})
	c.auth = mlsdsv1connect.NewAuthServiceClient(e.http, e.url, opt)
	c.kps = mlsdsv1connect.NewKeyPackageServiceClient(e.http, e.url, opt)
	c.groups = mlsdsv1connect.NewGroupServiceClient(e.http, e.url, opt)
	c.delivery = mlsdsv1connect.NewDeliveryServiceClient(e.http, e.url, opt)
	cred, err := (&mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(id)}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	reg := &mlsdsv1.RegisterClientRequest{Credential: cred, SignatureKey: sigPub, CipherSuite: uint32(suite)}
	if reg.Proof, err = suite.SignWithLabel(sigPriv, ds.RegisterLabel, ds.RegisterTBS(reg.Credential, reg.SignatureKey, suite, reg.UserId)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.auth.RegisterClient(context.Background(), connect.NewRequest(reg)); err != nil {
		t.Fatalf("RegisterClient(%s): %v", id, err)
	}
	return c
}

// login runs the challenge-response and keeps the session token.
func (c *client) login() {
	c.t.Helper()
	ctx := context.Background()
	ch, err := c.auth.GetChallenge(ctx, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: c.id}))
	if err != nil {
		c.t.Fatal(err)
	}
	sig, err := suite.SignWithLabel(c.sigPriv, ch.Msg.Label, ch.Msg.Challenge)
	if err != nil {
		c.t.Fatal(err)
	}
	res, err := c.auth.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{ClientId: c.id, Challenge: ch.Msg.Challenge, Signature: sig}))
	if err != nil {
		c.t.Fatalf("login(%s): %v", c.id, err)
	}
	c.token = res.Msg.SessionToken
}

func (c *client) keyPackage() (*mls.KeyPackage, *mls.KeyPackagePrivate) {
	c.t.Helper()
	now := uint64(time.Now().Unix())
	kp, priv, err := mls.NewKeyPackage(suite, []byte(c.id), c.sigPriv, now-3600, now+7*24*3600)
	if err != nil {
		c.t.Fatal(err)
	}
	return kp, priv
}

// publish uploads kp, a KeyPackage of c: c's consent to be added with it.
func (c *client) publish(kp *mls.KeyPackage) {
	c.t.Helper()
	if _, err := c.kps.UploadKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
		KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: wire(c.t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp})}}})); err != nil {
		c.t.Fatalf("UploadKeyPackages(%s): %v", c.id, err)
	}
}

func wire(t *testing.T, m *mls.MLSMessage) []byte {
	t.Helper()
	m.Version = mls.ProtocolVersionMLS10
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func public(t *testing.T, m *mls.PublicMessage) []byte {
	return wire(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: m})
}

func groupInfo(t *testing.T, gi *mls.GroupInfo) []byte {
	return wire(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
}

// commit submits a Commit bundle.
func (c *client) commit(msg *mls.PublicMessage, welcome *mls.Welcome, gi *mls.GroupInfo) {
	c.t.Helper()
	req := &mlsdsv1.SendCommitBundleRequest{Commit: public(c.t, msg)}
	if welcome != nil {
		req.Welcome = wire(c.t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: welcome})
	}
	if gi != nil {
		req.GroupInfo = groupInfo(c.t, gi)
	}
	if _, err := c.groups.SendCommitBundle(context.Background(), connect.NewRequest(req)); err != nil {
		c.t.Fatalf("SendCommitBundle(%s): %v", c.id, err)
	}
}

// send submits an application message and returns its sequence number.
func (c *client) send(m *mls.PrivateMessage) uint64 {
	c.t.Helper()
	res, err := c.groups.Send(context.Background(), connect.NewRequest(&mlsdsv1.SendRequest{
		Message: wire(c.t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: m})}))
	if err != nil {
		c.t.Fatalf("Send(%s): %v", c.id, err)
	}
	return res.Msg.Receipt.GroupSeq
}

// last fetches the group's newest message and parses it.
func (c *client) last(groupID []byte) *mls.MLSMessage {
	c.t.Helper()
	var out *mlsdsv1.Envelope
	for from := uint64(1); ; {
		res, err := c.groups.Fetch(context.Background(), connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: groupID, FromSeq: from, Limit: 100}))
		if err != nil {
			c.t.Fatalf("Fetch(%s): %v", c.id, err)
		}
		if len(res.Msg.Messages) == 0 {
			break
		}
		out = res.Msg.Messages[len(res.Msg.Messages)-1]
		from = out.GroupSeq + 1
	}
	if out == nil {
		c.t.Fatalf("%s: no messages", c.id)
	}
	m, err := mls.ParseMLSMessage(out.Message)
	if err != nil {
		c.t.Fatal(err)
	}
	return m
}

// dsTree answers a partial member's tree questions with the Delivery
// Service's GetPath and GetRoster, counting what comes over the wire.
type dsTree struct {
	c       *client
	groupID []byte
	tamper  func(leaf mls.LeafIndex, proof []byte) []byte
	bytes   int // encoded size of the answers
	calls   []string
}

func (d *dsTree) PathProof(leaf mls.LeafIndex) ([]byte, error) {
	res, err := d.c.groups.GetPath(context.Background(), connect.NewRequest(&mlsdsv1.GetPathRequest{GroupId: d.groupID, LeafIndex: uint32(leaf)}))
	if err != nil {
		return nil, err
	}
	d.bytes += proto.Size(res.Msg)
	d.calls = append(d.calls, fmt.Sprintf("GetPath(%d)", leaf))
	if d.tamper != nil {
		return d.tamper(leaf, bytes.Clone(res.Msg.Proof)), nil
	}
	return res.Msg.Proof, nil
}

func (d *dsTree) LeavesProof(leaves []mls.LeafIndex) ([]byte, error) {
	req := &mlsdsv1.GetRosterRequest{GroupId: d.groupID, IncludeLeaves: true}
	for _, l := range leaves {
		req.LeafIndices = append(req.LeafIndices, uint32(l))
	}
	res, err := d.c.groups.GetRoster(context.Background(), connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	d.bytes += proto.Size(res.Msg)
	d.calls = append(d.calls, fmt.Sprintf("GetRoster(%v)", leaves))
	return res.Msg.Proof, nil
}

// nextWelcome waits on a Subscribe stream for a Welcome.
func nextWelcome(t *testing.T, c *client) *mlsdsv1.WelcomeEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := c.delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	for stream.Receive() {
		if w := stream.Msg().GetWelcome(); w != nil {
			return w
		}
	}
	t.Fatalf("no Welcome: %v", stream.Err())
	return nil
}

// member is a full member: a client of the server with a whole-tree
// mls.Group.
type member struct {
	c *client
	g *mls.Group
}

// figures are what a run measured.
type figures struct {
	joinBytes, allBytes, wholeTree  int
	joinCalls, allCalls             []string
	welcome, fullWelcome, leafCount int
}

// warmLeaves are the members that commit before the joiner comes, so that
// the tree has parent nodes with keys, as in a group whose members update
// now and then: the roots of the copath subtrees of the creator (leaf 0)
// and of the joiner (leaf 999). Without them every parent but the
// creator's path is blank and the resolutions are long lists of leaves.
var warmLeaves = []int{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 896, 960, 992, 996, 998}

// runPartialJoin builds a 1,000-member transparent group on the server (a
// creator and 998 members added in one Commit; with warm, some of them
// then commit; then the joiner is added in a second Commit of the creator
// with a Welcome without the ratchet tree), has the joiner join from its
// own path and the GroupInfo signer's, exchange application messages
// with full members (fetching the one leaf it lacks), commit an UpdatePath
// that the server's transparent validation and the full members accept,
// and follow the creator's next Commit: all end in the same epoch with the
// same epoch_authenticator. A tampered path answer makes the join fail.
func runPartialJoin(t *testing.T, warm bool) figures {
	const size = 1000
	e := startServer(t)
	ctx := context.Background()
	gid := []byte("partial-join-1000")

	creator := &member{c: e.client(t, "creator", nil)}
	creator.c.login()
	joiner := e.client(t, "joiner", nil)
	joiner.login()

	// Members 1..998, registered, each publishing the KeyPackage through
	// which the creator adds it (its consent); those in fullAt also get a
	// whole-tree mls.Group, locally, from the Welcome of the Commit that
	// adds them.
	fullAt := map[int]bool{256: true}
	if warm {
		for _, l := range warmLeaves {
			fullAt[l] = true
		}
	}
	var kps []*mls.KeyPackage
	privs := map[int]*mls.KeyPackagePrivate{}
	clients := map[int]*client{}
	var ids []string
	for i := 1; i < size-1; i++ {
		c := e.client(t, fmt.Sprintf("m%04d", i), nil)
		c.login()
		kp, priv := c.keyPackage()
		c.publish(kp)
		kps = append(kps, kp)
		ids = append(ids, c.id)
		if fullAt[i] {
			clients[i], privs[i] = c, priv
		}
	}
	// The creator claims them, in one batch, as an adder does.
	claimed, err := creator.c.kps.ClaimKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{ClientIds: ids, CipherSuite: uint32(suite)}))
	if err != nil {
		t.Fatalf("ClaimKeyPackages of %d members: %v", len(ids), err)
	}
	if got := len(claimed.Msg.KeyPackages); got != len(kps) {
		t.Fatalf("claimed %d KeyPackages of %d members", got, len(kps))
	}
	for i, c := range claimed.Msg.KeyPackages {
		if ref, err := kps[i].Ref(); err != nil || c.ClientId != ids[i] || !bytes.Equal(c.Ref, ref) {
			t.Fatalf("claim %d: %s's KeyPackage %x, want %s's %x (%v)", i, c.ClientId, c.Ref, ids[i], ref, err)
		}
	}

	ckp, cpriv := creator.c.keyPackage()
	if creator.g, err = mls.NewGroup(gid, ckp, cpriv); err != nil {
		t.Fatal(err)
	}
	gi0, err := creator.g.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	tree0, err := creator.g.Tree().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := creator.c.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: groupInfo(t, gi0), RatchetTree: tree0})); err != nil {
		t.Fatal(err)
	}

	// Epoch 1: 999 members.
	c1, w1, err := creator.g.Commit(kps, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := creator.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	gi1, err := creator.g.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	creator.c.commit(c1, nil, gi1)
	fulls := []*member{creator}
	byLeaf := map[int]*member{}
	for i := range size - 1 {
		if !fullAt[i] {
			continue
		}
		g, err := mls.JoinGroup(w1, kps[i-1], privs[i], nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		byLeaf[i] = &member{c: clients[i], g: g}
		fulls = append(fulls, byLeaf[i])
	}
	// follow has every full member but from process a Commit the server
	// accepted.
	follow := func(from *member, c *mls.PublicMessage) {
		t.Helper()
		for _, f := range fulls {
			if f != from {
				if _, err := f.g.HandleCommit(c); err != nil {
					t.Fatalf("%s processes %s's Commit: %v", f.c.id, from.c.id, err)
				}
			}
		}
	}
	if warm {
		for _, l := range warmLeaves {
			f := byLeaf[l]
			c, _, err := f.g.Commit(nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.g.MergePendingCommit(); err != nil {
				t.Fatal(err)
			}
			gi, err := f.g.GroupInfo(false)
			if err != nil {
				t.Fatal(err)
			}
			f.c.commit(c, nil, gi)
			follow(f, c)
		}
	}

	// Next epoch: the joiner, with a Welcome without the tree.
	jkp, jpriv := joiner.keyPackage()
	joiner.publish(jkp)
	c2, wFull, err := creator.g.Commit([]*mls.KeyPackage{jkp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := creator.g.WelcomeWithoutTree([]*mls.KeyPackage{jkp})
	if err != nil {
		t.Fatal(err)
	}
	if err := creator.g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	gi2, err := creator.g.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	creator.c.commit(c2, w2, gi2)
	follow(creator, c2)

	ev := nextWelcome(t, joiner)
	wm, err := mls.ParseMLSMessage(ev.Welcome)
	if err != nil || wm.Welcome == nil {
		t.Fatalf("Welcome event: %v", err)
	}
	fullWelcome, _ := wFull.MarshalBinary()

	// A path answer with one byte flipped is refused: the signer's, or
	// (when it is fetched) the joiner's own.
	for _, target := range []mls.LeafIndex{0, size - 1} {
		if !warm && target != 0 {
			continue
		}
		bad := &dsTree{c: joiner, groupID: gid, tamper: func(leaf mls.LeafIndex, p []byte) []byte {
			if leaf == target {
				p[len(p)/2] ^= 0x10
			}
			return p
		}}
		_, err = mls.JoinGroupPartial(wm.Welcome, jkp, jpriv, bad, nil)
		var ve *mls.ValidationError
		if err == nil || !errors.Is(err, mls.ErrTreeProof) || !errors.As(err, &ve) || ve.Section != "7.8" {
			t.Fatalf("join with a tampered answer to GetPath(%d): %v", target, err)
		}
		t.Logf("tampered answer to GetPath(%d): %v", target, err)
	}

	src := &dsTree{c: joiner, groupID: gid}
	pg, err := mls.JoinGroupPartial(wm.Welcome, jkp, jpriv, src, nil)
	if err != nil {
		t.Fatalf("JoinGroupPartial: %v", err)
	}
	cg := creator.g
	if pg.Self() != size-1 || pg.Epoch() != cg.Epoch() || !bytes.Equal(pg.EpochAuthenticator(), cg.EpochAuthenticator()) {
		t.Fatalf("joined at leaf %d epoch %d; creator at epoch %d (same authenticator: %v)", pg.Self(), pg.Epoch(), cg.Epoch(),
			bytes.Equal(pg.EpochAuthenticator(), cg.EpochAuthenticator()))
	}
	fig := figures{joinBytes: src.bytes, joinCalls: append([]string(nil), src.calls...), welcome: len(ev.Welcome), fullWelcome: len(fullWelcome), leafCount: int(pg.LeafCount())}
	// The signer's path and its own; in a fresh tree the signer's path
	// shows all the joiner needs.
	if want := []string{"GetPath(0)", "GetPath(999)"}; !slices.Equal(fig.joinCalls, want) && (warm || !slices.Equal(fig.joinCalls, want[:1])) {
		t.Fatalf("join made the tree queries %v, want %v", fig.joinCalls, want)
	}
	same := func() {
		t.Helper()
		for _, f := range fulls {
			if f.g.Epoch() != pg.Epoch() || !bytes.Equal(f.g.EpochAuthenticator(), pg.EpochAuthenticator()) {
				t.Fatalf("%s at epoch %d, joiner at %d, or their epoch_authenticators differ", f.c.id, f.g.Epoch(), pg.Epoch())
			}
		}
	}
	same()

	// Application messages: joiner -> creator; m0256 -> joiner, whose
	// leaf the joiner fetches; creator -> joiner.
	m, err := pg.Seal([]byte("hello from a partial member"), nil)
	if err != nil {
		t.Fatal(err)
	}
	joiner.send(m)
	if from, data, err := cg.Open(creator.c.last(gid).PrivateMessage); err != nil || from != pg.Self() || string(data) != "hello from a partial member" {
		t.Fatalf("creator opens: %d %q %v", from, data, err)
	}
	for _, s := range []*member{byLeaf[256], creator} {
		m, err := s.g.Seal([]byte("hello from "+s.c.id), nil)
		if err != nil {
			t.Fatal(err)
		}
		s.c.send(m)
		if from, data, err := pg.Open(joiner.last(gid).PrivateMessage, src); err != nil || from != s.g.Self() || string(data) != "hello from "+s.c.id {
			t.Fatalf("joiner opens %s's message: %d %q %v", s.c.id, from, data, err)
		}
	}
	// In a fresh tree the creator's path shows every leaf; otherwise
	// leaf 256 is hidden below a parent node and must be fetched.
	if want := "GetRoster([256])"; warm && src.calls[len(src.calls)-1] != want {
		t.Fatalf("tree queries %v, want the last to be %s", src.calls, want)
	}

	// The joiner commits an UpdatePath; the server validates it against
	// its whole tree, and so do the full members.
	c3, err := pg.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	gi3, err := pg.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	joiner.commit(c3, nil, gi3)
	if _, err := cg.HandleCommit(creator.c.last(gid).PublicMessage); err != nil {
		t.Fatalf("creator processes the partial member's Commit: %v", err)
	}
	follow(creator, c3)
	same()
	rt, err := joiner.groups.GetRatchetTree(ctx, connect.NewRequest(&mlsdsv1.GetRatchetTreeRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	if gc := pg.GroupContext(); rt.Msg.Epoch != pg.Epoch() || !bytes.Equal(rt.Msg.TreeHash, gc.TreeHash) {
		t.Fatalf("server at epoch %d with another tree hash than the joiner", rt.Msg.Epoch)
	}

	// The creator commits; the joiner follows from its refetched path.
	c4, _, err := cg.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cg.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	gi4, err := cg.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	creator.c.commit(c4, nil, gi4)
	follow(creator, c4)
	if err := pg.HandleCommit(joiner.last(gid).PublicMessage, src); err != nil {
		t.Fatalf("joiner follows the creator's Commit: %v", err)
	}
	same()
	m, err = pg.Seal([]byte("still here"), nil)
	if err != nil {
		t.Fatal(err)
	}
	joiner.send(m)
	if from, data, err := cg.Open(creator.c.last(gid).PrivateMessage); err != nil || from != pg.Self() || string(data) != "still here" {
		t.Fatalf("creator opens: %d %q %v", from, data, err)
	}

	// What the joiner fetched, against the whole tree.
	rt, err = joiner.groups.GetRatchetTree(ctx, connect.NewRequest(&mlsdsv1.GetRatchetTreeRequest{GroupId: gid}))
	if err != nil {
		t.Fatal(err)
	}
	fig.wholeTree = proto.Size(rt.Msg)
	fig.allBytes, fig.allCalls = src.bytes, src.calls
	t.Logf("group of %d members (%d leaf positions), warm=%v", size, fig.leafCount, warm)
	t.Logf("Welcome: %d bytes without the tree, %d with it", fig.welcome, fig.fullWelcome)
	t.Logf("join fetched %d bytes in %v", fig.joinBytes, fig.joinCalls)
	t.Logf("all tree queries: %d bytes in %v", fig.allBytes, fig.allCalls)
	t.Logf("GetRatchetTree answer: %d bytes (%.1fx the join's fetches)", fig.wholeTree, float64(fig.wholeTree)/float64(fig.joinBytes))
	if fig.welcome*100 > fig.fullWelcome {
		t.Fatalf("the Welcome without the tree has %d bytes, the one with it %d", fig.welcome, fig.fullWelcome)
	}
	return fig
}

// TestPartialJoin1000 runs the scenario in a group whose members have
// committed (parent nodes with keys): the joiner fetches a small part of
// the tree.
func TestPartialJoin1000(t *testing.T) {
	fig := runPartialJoin(t, true)
	if fig.joinBytes*10 > fig.wholeTree {
		t.Fatalf("the join fetched %d bytes, more than a tenth of the whole tree's %d", fig.joinBytes, fig.wholeTree)
	}
}

// TestPartialJoin1000FreshTree runs the scenario right after the members
// were added, when every parent node off the creator's path is blank: the
// resolutions a Commit encrypts to are long lists of leaves, and the paths
// the joiner needs show most of the tree. The join still works; the
// figures show what it costs.
func TestPartialJoin1000FreshTree(t *testing.T) {
	runPartialJoin(t, false)
}
