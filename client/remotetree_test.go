package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

const rtSuite = mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

// rtIdentity is a test client's MLS identity: a signature key and
// KeyPackages made with it.
type rtIdentity struct {
	id              string
	sigPriv, sigPub []byte
}

func newRTIdentity(t *testing.T, id string) *rtIdentity {
	t.Helper()
	priv, pub, err := rtSuite.GenerateSignatureKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	return &rtIdentity{id: id, sigPriv: priv, sigPub: pub}
}

func (m *rtIdentity) keyPackage(t *testing.T) (*mls.KeyPackage, *mls.KeyPackagePrivate) {
	t.Helper()
	now := uint64(time.Now().Unix())
	kp, priv, err := mls.NewKeyPackage(rtSuite, []byte(m.id), m.sigPriv, now-3600, now+24*3600)
	if err != nil {
		t.Fatal(err)
	}
	return kp, priv
}

// rtNewGroup makes a one-member group of m at epoch 0.
func rtNewGroup(t *testing.T, m *rtIdentity, gid []byte) *mls.Group {
	t.Helper()
	kp, priv := m.keyPackage(t)
	g, err := mls.NewGroup(gid, kp, priv)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func rtSealCurrent(t *testing.T, g *mls.Group) []byte {
	t.Helper()
	gi, err := g.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := SealRemoteTree(g, gi, g.Tree())
	if err != nil {
		t.Fatalf("SealRemoteTree: %v", err)
	}
	return blob
}

func rtMustKey(t *testing.T, g *mls.Group) []byte {
	t.Helper()
	key, err := RemoteTreeKey(g)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func rtEncode(t *testing.T, v interface{ MarshalBinary() ([]byte, error) }) []byte {
	t.Helper()
	b, err := v.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRemoteTreeRoundTrip: a blob opens with its epoch's key into the
// GroupInfo and tree that went in, and with nothing else.
func TestRemoteTreeRoundTrip(t *testing.T) {
	alice := newRTIdentity(t, "alice")
	gid := []byte("round trip")
	g := rtNewGroup(t, alice, gid)
	gi, err := g.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := SealRemoteTree(g, gi, g.Tree())
	if err != nil {
		t.Fatal(err)
	}
	key := rtMustKey(t, g)
	if len(key) != rtSuite.AEADKeySize() {
		t.Fatalf("key has %d bytes, want Nk = %d", len(key), rtSuite.AEADKeySize())
	}
	gotGI, gotTree, err := OpenRemoteTree(rtSuite, key, gid, 0, blob)
	if err != nil {
		t.Fatalf("OpenRemoteTree: %v", err)
	}
	if !bytes.Equal(rtEncode(t, gotGI), rtEncode(t, gi)) || !bytes.Equal(rtEncode(t, gotTree), rtEncode(t, g.Tree())) {
		t.Fatal("the opened GroupInfo or tree differs from what was sealed")
	}
	if blob[0] != remoteTreeVersion {
		t.Errorf("blob starts with %d, want the version %d", blob[0], remoteTreeVersion)
	}
	if bytes.Contains(blob, rtEncode(t, g.Tree())) || bytes.Contains(blob, rtEncode(t, gi)) {
		t.Error("the blob holds the tree or GroupInfo in the clear")
	}
	// Two seals of the same content differ (random nonce).
	if again := rtSealCurrent(t, g); bytes.Equal(again, blob) {
		t.Error("two seals gave the same blob")
	}

	// The key of another epoch, group or exporter label.
	wrongLabel, err := g.Export("some other label", remoteTreeContext(gid, 0), rtSuite.AEADKeySize())
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := newRTIdentity(t, "bob").keyPackage(t)
	other := rtNewGroup(t, alice, []byte("another group"))
	if _, _, err := g.Commit([]*mls.KeyPackage{kp}, nil); err != nil {
		t.Fatal(err)
	}
	if err := g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	key1 := rtMustKey(t, g)
	flipped := func(i int) []byte {
		b := bytes.Clone(blob)
		b[i] ^= 1
		return b
	}
	for name, c := range map[string]struct {
		key   []byte
		gid   []byte
		epoch uint64
		blob  []byte
	}{
		"next epoch's key":       {key1, gid, 0, blob},
		"claimed as next epoch":  {key, gid, 1, blob},
		"another group's key":    {rtMustKey(t, other), gid, 0, blob},
		"claimed as other group": {key, []byte("another group"), 0, blob},
		"other exporter label":   {wrongLabel, gid, 0, blob},
		"flipped version":        {key, gid, 0, flipped(0)},
		"flipped nonce":          {key, gid, 0, flipped(1)},
		"flipped ciphertext":     {key, gid, 0, flipped(len(blob) / 2)},
		"flipped tag":            {key, gid, 0, flipped(len(blob) - 1)},
		"truncated":              {key, gid, 0, blob[:len(blob)-1]},
		"only a header":          {key, gid, 0, blob[:1+rtSuite.AEADNonceSize()]},
		"empty":                  {key, gid, 0, nil},
	} {
		if _, _, err := OpenRemoteTree(rtSuite, c.key, c.gid, c.epoch, c.blob); !errors.Is(err, ErrRemoteTree) {
			t.Errorf("%s: OpenRemoteTree = %v, want ErrRemoteTree", name, err)
		}
	}
	// Sealing refuses a GroupInfo of another epoch or a foreign tree.
	gi1, err := g.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SealRemoteTree(g, gi, g.Tree()); err == nil {
		t.Error("SealRemoteTree took the GroupInfo of epoch 0 for epoch 1")
	}
	if _, err := SealRemoteTree(g, gi1, other.Tree()); err == nil {
		t.Error("SealRemoteTree took a tree whose hash is not the GroupInfo's tree_hash")
	}
}

// TestRemoteTreeForgedContent: whoever holds the key (any member) can
// encrypt anything, so OpenRemoteTree checks the content: a tree that is not
// the GroupInfo's, or a GroupInfo whose signature does not verify.
func TestRemoteTreeForgedContent(t *testing.T) {
	alice := newRTIdentity(t, "alice")
	gid := []byte("forged")
	g := rtNewGroup(t, alice, gid)
	other := rtNewGroup(t, alice, []byte("other"))
	key := rtMustKey(t, g)
	gi, err := g.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	seal := func(gi *mls.GroupInfo, tree *mls.RatchetTree) []byte {
		// sealRemoteTree checks the tree hash; build the blob by hand.
		giData, treeData := rtEncode(t, gi), rtEncode(t, tree)
		var pt []byte
		for _, part := range [][]byte{giData, treeData} {
			n := len(part)
			pt = append(pt, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
			pt = append(pt, part...)
		}
		nonce := make([]byte, rtSuite.AEADNonceSize())
		ct, err := rtSuite.Seal(key, nonce, remoteTreeAAD(gid, 0), pt)
		if err != nil {
			t.Fatal(err)
		}
		return append(append([]byte{remoteTreeVersion1}, nonce...), ct...)
	}
	// The hand-built blob of the genuine content opens.
	if _, _, err := OpenRemoteTree(rtSuite, key, gid, 0, seal(gi, g.Tree())); err != nil {
		t.Fatalf("hand-built genuine blob: %v", err)
	}
	if _, _, err := OpenRemoteTree(rtSuite, key, gid, 0, seal(gi, other.Tree())); !errors.Is(err, ErrRemoteTree) {
		t.Errorf("tree of another group: %v, want ErrRemoteTree", err)
	}
	badSig := *gi
	badSig.Signature = bytes.Clone(gi.Signature)
	badSig.Signature[0] ^= 1
	if _, _, err := OpenRemoteTree(rtSuite, key, gid, 0, seal(&badSig, g.Tree())); !errors.Is(err, ErrRemoteTree) {
		t.Errorf("GroupInfo with a bad signature: %v, want ErrRemoteTree", err)
	}
	otherGI, err := other.GroupInfo(false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := OpenRemoteTree(rtSuite, key, gid, 0, seal(otherGI, other.Tree())); !errors.Is(err, ErrRemoteTree) {
		t.Errorf("GroupInfo of another group: %v, want ErrRemoteTree", err)
	}
}

// rtStripTree rebuilds the Welcome w for the single joiner kp without the
// ratchet_tree extension, as a committer that publishes the tree elsewhere
// would send it. mls.Group.Commit always embeds the tree (CommitOptions
// has no switch for it), so the test opens the Welcome with the joiner's
// init key to get the joiner secret, and seals it again.
func rtStripTree(t *testing.T, w *mls.Welcome, kp *mls.KeyPackage, priv *mls.KeyPackagePrivate, signerPriv []byte) *mls.Welcome {
	return rtRewriteWelcome(t, w, kp, priv, signerPriv, nil)
}

// rtRewriteWelcome is rtStripTree that also lets mutate change the
// GroupInfo before it is signed and sealed again.
func rtRewriteWelcome(t *testing.T, w *mls.Welcome, kp *mls.KeyPackage, priv *mls.KeyPackagePrivate, signerPriv []byte, mutate func(*mls.GroupInfo)) *mls.Welcome {
	t.Helper()
	ref, err := kp.Ref()
	if err != nil {
		t.Fatal(err)
	}
	gs, gi, err := mls.DecryptWelcome(w, ref, priv.InitPriv, nil)
	if err != nil {
		t.Fatal(err)
	}
	var exts mls.Extensions
	for _, e := range gi.Extensions {
		if e.ExtensionType != mls.ExtensionTypeRatchetTree {
			exts = append(exts, e)
		}
	}
	if len(exts) == len(gi.Extensions) {
		t.Fatal("the Welcome from mls.Group.Commit has no ratchet_tree extension any more; rtStripTree is not needed")
	}
	gi.Extensions = exts
	if mutate != nil {
		mutate(gi)
	}
	if err := gi.Sign(signerPriv); err != nil {
		t.Fatal(err)
	}
	ks, err := mls.NewKeySchedule(w.CipherSuite, gs.JoinerSecret, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, nonce, err := ks.WelcomeKey()
	if err != nil {
		t.Fatal(err)
	}
	out := &mls.Welcome{CipherSuite: w.CipherSuite}
	if out.EncryptedGroupInfo, err = w.CipherSuite.Seal(key, nonce, nil, rtEncode(t, gi)); err != nil {
		t.Fatal(err)
	}
	kem, ct, err := w.CipherSuite.EncryptWithLabel(kp.InitKey, "Welcome", out.EncryptedGroupInfo, rtEncode(t, gs))
	if err != nil {
		t.Fatal(err)
	}
	out.Secrets = []mls.EncryptedGroupSecrets{{NewMember: ref, EncryptedGroupSecrets: mls.HPKECiphertext{KEMOutput: kem, Ciphertext: ct}}}
	return out
}

// TestRemoteTreePending: the blob a committer seals for the epoch its
// pending Commit starts opens with that epoch's key, as the members get it
// after the Commit and the joiner gets it from the Welcome.
func TestRemoteTreePending(t *testing.T) {
	alice, bob := newRTIdentity(t, "alice"), newRTIdentity(t, "bob")
	gid := []byte("pending")
	g := rtNewGroup(t, alice, gid)
	if _, _, err := SealPendingRemoteTree(g); err == nil {
		t.Fatal("SealPendingRemoteTree without a pending Commit succeeded")
	}
	kp, priv := bob.keyPackage(t)
	_, w, err := g.Commit([]*mls.KeyPackage{kp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	epoch, blob, err := SealPendingRemoteTree(g)
	if err != nil {
		t.Fatal(err)
	}
	// The key schedule binds the Welcome's GroupContext (§8): a GroupInfo
	// that claims another epoch or group, or carries another confirmation
	// tag, yields no key.
	for name, mutate := range map[string]func(*mls.GroupInfo){
		"another epoch":            func(gi *mls.GroupInfo) { gi.GroupContext.Epoch = 7 },
		"another group":            func(gi *mls.GroupInfo) { gi.GroupContext.GroupID = []byte("other") },
		"another confirmation tag": func(gi *mls.GroupInfo) { gi.ConfirmationTag[0] ^= 1 },
	} {
		if _, _, err := WelcomeRemoteTreeKey(rtRewriteWelcome(t, w, kp, priv, alice.sigPriv, mutate), kp, priv, nil); err == nil {
			t.Errorf("WelcomeRemoteTreeKey of a Welcome whose GroupInfo has %s succeeded", name)
		}
	}
	if epoch != 1 || g.Epoch() != 0 {
		t.Fatalf("pending blob for epoch %d while the group is at %d; want 1 and 0", epoch, g.Epoch())
	}
	joinerKey, we, err := WelcomeRemoteTreeKey(rtStripTree(t, w, kp, priv, alice.sigPriv), kp, priv, nil)
	if err != nil {
		t.Fatalf("WelcomeRemoteTreeKey: %v", err)
	}
	if err := g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(joinerKey, rtMustKey(t, g)) {
		t.Fatal("the joiner's key from the Welcome differs from the members' key of the epoch")
	}
	if !bytes.Equal(we.GroupID(), gid) || we.Epoch() != 1 || we.CipherSuite() != rtSuite {
		t.Errorf("WelcomeEpoch says group %q epoch %d %v", we.GroupID(), we.Epoch(), we.CipherSuite())
	}
	_, tree, err := OpenRemoteTree(rtSuite, joinerKey, gid, 1, blob)
	if err != nil {
		t.Fatalf("OpenRemoteTree of the pending blob: %v", err)
	}
	if !bytes.Equal(rtEncode(t, tree), rtEncode(t, g.Tree())) {
		t.Error("the pending blob's tree is not the new epoch's")
	}
}

// rtServer is an in-process Delivery Service on a SQLite file.
type rtServer struct {
	url    string
	http   *http.Client
	store  *sqlite.Store
	dbPath string
}

func rtStartServer(t *testing.T) *rtServer {
	t.Helper()
	dbPath := filepath.Join(t.TempDir(), "mlsds.db")
	st, err := sqlite.Open(context.Background(), dbPath, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	svc := ds.New(st, ds.Config{RequestsPerSecond: -1, ClaimsPerMinute: -1, ClaimsPerTargetPerMinute: -1})
	srv, err := server.New(svc, server.Config{
		AuthRatePerSecond: -1,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		ShutdownTimeout:   5 * time.Second,
	})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	tr := &http.Transport{ForceAttemptHTTP2: true, Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	s := &rtServer{url: "http://" + ln.Addr().String(), http: &http.Client{Transport: tr}, store: st, dbPath: dbPath}
	t.Cleanup(func() {
		cancel()
		tr.CloseIdleConnections()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		st.Close()
	})
	return s
}

// rtConn is a registered, logged-in client of an rtServer.
type rtConn struct {
	*rtIdentity
	token    string
	groups   mlsdsv1connect.GroupServiceClient
	kps      mlsdsv1connect.KeyPackageServiceClient
	delivery mlsdsv1connect.DeliveryServiceClient
}

// rtBearer sends the session token with every call.
type rtBearer struct{ token *string }

func (b rtBearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if *b.token != "" {
			req.Header().Set("Authorization", "Bearer "+*b.token)
		}
		return next(ctx, req)
	}
}

func (b rtBearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if *b.token != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+*b.token)
		}
		return conn
	}
}

func (b rtBearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

func (s *rtServer) connect(t *testing.T, id string) *rtConn {
	t.Helper()
	ctx := context.Background()
	c := &rtConn{rtIdentity: newRTIdentity(t, id)}
	opts := connect.WithInterceptors(rtBearer{&c.token})
	a := mlsdsv1connect.NewAuthServiceClient(s.http, s.url, opts)
	c.groups = mlsdsv1connect.NewGroupServiceClient(s.http, s.url, opts)
	c.kps = mlsdsv1connect.NewKeyPackageServiceClient(s.http, s.url, opts)
	c.delivery = mlsdsv1connect.NewDeliveryServiceClient(s.http, s.url, opts)
	cred := mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(id)}
	reg := &mlsdsv1.RegisterClientRequest{Credential: rtEncode(t, &cred), SignatureKey: c.sigPub, CipherSuite: uint32(rtSuite)}
	if err := SignRegistration(c.sigPriv, reg); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RegisterClient(ctx, connect.NewRequest(reg)); err != nil {
		t.Fatalf("RegisterClient(%s): %v", id, err)
	}
	ch, err := a.GetChallenge(ctx, connect.NewRequest(&mlsdsv1.GetChallengeRequest{ClientId: id}))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := rtSuite.SignWithLabel(c.sigPriv, ch.Msg.Label, ch.Msg.Challenge)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Authenticate(ctx, connect.NewRequest(&mlsdsv1.AuthenticateRequest{ClientId: id, Challenge: ch.Msg.Challenge, Signature: sig}))
	if err != nil {
		t.Fatalf("Authenticate(%s): %v", id, err)
	}
	c.token = res.Msg.SessionToken
	return c
}

func rtMessage(t *testing.T, m *mls.MLSMessage) []byte {
	t.Helper()
	m.Version = mls.ProtocolVersionMLS10
	return rtEncode(t, m)
}

func (c *rtConn) remoteTrees(t *testing.T, gid []byte) *mlsdsv1.GetRemoteTreeResponse {
	t.Helper()
	res, err := c.groups.GetRemoteTree(context.Background(), connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: gid}))
	if err != nil {
		t.Fatalf("GetRemoteTree(%s): %v", c.id, err)
	}
	return res.Msg
}

func rtEpochs(res *mlsdsv1.GetRemoteTreeResponse) []uint64 {
	var out []uint64
	for _, rt := range res.RemoteTrees {
		out = append(out, rt.Epoch)
	}
	return out
}

// nextWelcome waits on c's subscription for a Welcome (a hang guard, not a
// timing check).
func (c *rtConn) nextWelcome(t *testing.T) *mlsdsv1.WelcomeEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
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
	t.Fatalf("no Welcome for %s: %v", c.id, stream.Err())
	return nil
}

// TestRemoteTreeThroughServer: an opaque group whose joiner gets a Welcome
// without the tree, and the tree from the server, encrypted.
func TestRemoteTreeThroughServer(t *testing.T) {
	srv := rtStartServer(t)
	alice, bob, carol := srv.connect(t, "alice"), srv.connect(t, "bob"), srv.connect(t, "carol")
	ctx := context.Background()
	gid := []byte("opaque remote tree group")

	// Bob publishes a KeyPackage.
	kpB, privB := bob.keyPackage(t)
	if _, err := bob.kps.UploadKeyPackages(ctx, connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
		KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: rtMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kpB})}}})); err != nil {
		t.Fatal(err)
	}

	// Alice creates the group and uploads the tree of epoch 0.
	g := rtNewGroup(t, alice.rtIdentity, gid)
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE})); err != nil {
		t.Fatal(err)
	}
	tree0 := rtEncode(t, g.Tree())
	blob0 := rtSealCurrent(t, g)
	if _, err := alice.groups.PutRemoteTree(ctx, connect.NewRequest(&mlsdsv1.PutRemoteTreeRequest{
		GroupId: gid, RemoteTree: &mlsdsv1.RemoteTree{Epoch: 0, Blob: blob0}})); err != nil {
		t.Fatalf("PutRemoteTree: %v", err)
	}

	// Alice adds Bob: the Welcome carries no tree; the bundle carries the
	// encrypted tree of epoch 1.
	// The Commit declares the roster change (ds/roster_ad.go).
	commit, w, err := g.CommitWith(mls.CommitOptions{Adds: []*mls.KeyPackage{kpB},
		AuthenticatedData: ds.RosterChange{Added: []string{"bob"}}.MarshalDeclaration()})
	if err != nil {
		t.Fatal(err)
	}
	w = rtStripTree(t, w, kpB, privB, alice.sigPriv)
	epoch1, blob1, err := SealPendingRemoteTree(g)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
		Commit:     rtMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: commit}),
		Welcome:    rtMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: w}),
		RemoteTree: &mlsdsv1.RemoteTree{Epoch: epoch1, Blob: blob1},
	})); err != nil {
		t.Fatalf("SendCommitBundle: %v", err)
	}
	if err := g.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	tree1 := rtEncode(t, g.Tree())
	gc1 := g.GroupContext()

	// Bob: the Welcome alone does not let him join ...
	we := bob.nextWelcome(t)
	msg, err := mls.ParseMLSMessage(we.Welcome)
	if err != nil || msg.Welcome == nil {
		t.Fatalf("Welcome event: %v", err)
	}
	refB, _ := kpB.Ref()
	if _, _, err := mls.DecryptWelcome(msg.Welcome, refB, privB.InitPriv, nil); !errors.Is(err, mls.ErrNoRatchetTree) {
		t.Fatalf("DecryptWelcome of the stripped Welcome: %v, want ErrNoRatchetTree", err)
	}
	// ... but gives him the key for the tree the server holds.
	key1, wepoch, err := WelcomeRemoteTreeKey(msg.Welcome, kpB, privB, nil)
	if err != nil {
		t.Fatalf("WelcomeRemoteTreeKey: %v", err)
	}
	res := bob.remoteTrees(t, gid)
	if res.Epoch != 1 || len(res.RemoteTrees) != 2 || res.RemoteTrees[0].Epoch != 1 || res.RemoteTrees[1].Epoch != 0 {
		t.Fatalf("GetRemoteTree after the add: epoch %d, trees %v; want 1, [1 0]", res.Epoch, rtEpochs(res))
	}
	_, tree, err := OpenRemoteTree(wepoch.CipherSuite(), key1, wepoch.GroupID(), wepoch.Epoch(), res.RemoteTrees[0].Blob)
	if err != nil {
		t.Fatalf("OpenRemoteTree: %v", err)
	}
	if _, _, err := OpenRemoteTree(wepoch.CipherSuite(), key1, gid, 0, res.RemoteTrees[1].Blob); !errors.Is(err, ErrRemoteTree) {
		t.Errorf("the joiner opened the tree of an epoch before it joined: %v", err)
	}
	bg, err := mls.JoinGroup(msg.Welcome, kpB, privB, tree, nil)
	if err != nil {
		t.Fatalf("JoinGroup with the remote tree: %v", err)
	}
	if bg.Epoch() != 1 || !bytes.Equal(bg.EpochAuthenticator(), g.EpochAuthenticator()) {
		t.Fatal("Bob's group is not in Alice's epoch")
	}

	// Non-members get nothing.
	_, err = carol.groups.GetRemoteTree(ctx, connect.NewRequest(&mlsdsv1.GetRemoteTreeRequest{GroupId: gid}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("GetRemoteTree by a non-member: %v, want PermissionDenied", err)
	}
	_, err = carol.groups.PutRemoteTree(ctx, connect.NewRequest(&mlsdsv1.PutRemoteTreeRequest{
		GroupId: gid, RemoteTree: &mlsdsv1.RemoteTree{Epoch: 1, Blob: blob1}}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("PutRemoteTree by a non-member: %v, want PermissionDenied", err)
	}

	// Bob commits (an update); both blobs of epochs 1 and 2 are served,
	// the one of epoch 0 is gone.
	commit2, _, err := bg.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	epoch2, blob2, err := SealPendingRemoteTree(bg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.groups.SendCommitBundle(ctx, connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{
		Commit:     rtMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: commit2}),
		RemoteTree: &mlsdsv1.RemoteTree{Epoch: epoch2, Blob: blob2},
	})); err != nil {
		t.Fatalf("SendCommitBundle of Bob: %v", err)
	}
	if err := bg.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	if _, err := g.HandleCommit(commit2); err != nil {
		t.Fatalf("Alice processes Bob's Commit: %v", err)
	}
	tree2 := rtEncode(t, g.Tree())
	gc2 := g.GroupContext()
	res = alice.remoteTrees(t, gid)
	if got := rtEpochs(res); res.Epoch != 2 || len(got) != 2 || got[0] != 2 || got[1] != 1 {
		t.Fatalf("GetRemoteTree after the second Commit: epoch %d, trees %v; want 2, [2 1]", res.Epoch, got)
	}
	if _, t2, err := OpenRemoteTree(rtSuite, rtMustKey(t, g), gid, 2, res.RemoteTrees[0].Blob); err != nil || !bytes.Equal(rtEncode(t, t2), tree2) {
		t.Errorf("Alice opens the tree of epoch 2: %v", err)
	}
	if _, t1, err := OpenRemoteTree(rtSuite, key1, gid, 1, res.RemoteTrees[1].Blob); err != nil || !bytes.Equal(rtEncode(t, t1), tree1) {
		t.Errorf("the tree of epoch 1 with the key of epoch 1: %v", err)
	}

	// The server never saw a tree or a GroupInfo in the clear: neither in
	// what it stores nor anywhere in its database files.
	_, stored, err := srv.store.RemoteTrees(ctx, gid)
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string][]byte{
		"tree of epoch 0": tree0, "tree of epoch 1": tree1, "tree of epoch 2": tree2,
		"GroupContext of epoch 1": rtEncode(t, &gc1), "GroupContext of epoch 2": rtEncode(t, &gc2),
	}
	for _, st := range stored {
		for name, s := range secrets {
			if bytes.Contains(st.Blob, s) {
				t.Errorf("the stored blob of epoch %d contains the %s", st.Epoch, name)
			}
		}
	}
	files, _ := filepath.Glob(srv.dbPath + "*")
	found := false // control: the search does find what the server stored
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		found = found || bytes.Contains(data, blob2)
		for name, s := range secrets {
			if bytes.Contains(data, s) {
				t.Errorf("database file %s contains the %s in the clear", filepath.Base(f), name)
			}
		}
	}
	if !found {
		t.Errorf("the stored blob of epoch 2 is in none of the database files %v; the search above proves nothing", files)
	}
}
