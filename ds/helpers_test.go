package ds_test

import (
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
)

// The tests of this package run the Service on a real SQLite file with
// real MLS objects: KeyPackages, GroupInfos, trees and Commits built and
// signed with the mls package. Where the Delivery Service cannot check
// something (confirmation and membership tags, ciphertexts), the helpers
// fill in random bytes of the right length.

const suite = mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

var bg = context.Background()

// clock is a settable Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type env struct {
	t     *testing.T
	path  string
	cfg   ds.Config
	clock *clock
	store *sqlite.Store
	svc   *ds.Service
	byID  map[string]*member // the clients register made
}

// newEnv returns a Service on a fresh database. Rate limits are off unless
// cfg sets them.
func newEnv(t *testing.T, cfg ds.Config) *env {
	t.Helper()
	e := &env{t: t, path: filepath.Join(t.TempDir(), "ds.db"), clock: &clock{t: time.Now().UTC().Truncate(time.Second)}}
	if cfg.RequestsPerSecond == 0 {
		cfg.RequestsPerSecond = -1
	}
	if cfg.ClaimsPerMinute == 0 {
		cfg.ClaimsPerMinute = -1
	}
	if cfg.ClaimsPerTargetPerMinute == 0 {
		cfg.ClaimsPerTargetPerMinute = -1
	}
	cfg.Now = e.clock.Now
	e.cfg = cfg
	e.open()
	t.Cleanup(func() { e.store.Close() })
	return e
}

func (e *env) open() {
	e.t.Helper()
	s, err := sqlite.Open(bg, e.path, sqlite.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.store = s
	e.svc = ds.New(s, e.cfg)
}

// reopen closes the database and opens it again under a new Service, as
// after a restart.
func (e *env) reopen() {
	e.t.Helper()
	if err := e.store.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.open()
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// must returns v, or panics (failing the test) on an error in building
// test objects.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func encode(t testing.TB, m *mls.MLSMessage) []byte {
	t.Helper()
	m.Version = mls.ProtocolVersionMLS10
	return must(m.MarshalBinary())
}

// member is a client with its signature key pair.
type member struct {
	id              string
	sigPriv, sigPub []byte
}

func (e *env) register(id, user string) *member {
	e.t.Helper()
	priv, pub, err := suite.GenerateSignatureKeyPair()
	if err != nil {
		e.t.Fatal(err)
	}
	m := &member{id: id, sigPriv: priv, sigPub: pub}
	if e.byID == nil {
		e.byID = make(map[string]*member)
	}
	e.byID[id] = m
	if err := e.svc.RegisterClient(bg, ds.Client{ID: id, UserID: user, CipherSuite: suite, SignatureKey: pub}); err != nil {
		e.t.Fatal(err)
	}
	return m
}

func capabilities() mls.Capabilities {
	return mls.Capabilities{
		Versions:     []mls.ProtocolVersion{mls.ProtocolVersionMLS10},
		CipherSuites: []mls.CipherSuite{suite},
		Credentials:  []mls.CredentialType{mls.CredentialTypeBasic},
	}
}

// kpLeaf returns a signed key_package LeafNode of m valid from nb to na.
func (m *member) kpLeaf(t testing.TB, nb, na time.Time) mls.LeafNode {
	t.Helper()
	_, encPub := must2(t)(suite.GenerateKEMKeyPair())
	leaf := mls.LeafNode{
		EncryptionKey:  encPub,
		SignatureKey:   m.sigPub,
		Credential:     mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(m.id)},
		Capabilities:   capabilities(),
		LeafNodeSource: mls.LeafNodeSourceKeyPackage,
		Lifetime:       &mls.Lifetime{NotBefore: uint64(nb.Unix()), NotAfter: uint64(na.Unix())},
	}
	if err := leaf.Sign(suite, m.sigPriv, nil, 0); err != nil {
		t.Fatal(err)
	}
	return leaf
}

func must2(t testing.TB) func(a, b []byte, err error) ([]byte, []byte) {
	return func(a, b []byte, err error) ([]byte, []byte) {
		if err != nil {
			panic(err)
		}
		return a, b
	}
}

// keyPackage returns a KeyPackage of m valid around now, and its
// MLSMessage encoding.
func (m *member) keyPackage(t testing.TB, now time.Time) (*mls.KeyPackage, []byte) {
	return m.keyPackageValid(t, now.Add(-time.Hour), now.Add(24*time.Hour))
}

func (m *member) keyPackageValid(t testing.TB, nb, na time.Time) (*mls.KeyPackage, []byte) {
	t.Helper()
	_, initPub := must2(t)(suite.GenerateKEMKeyPair())
	kp := &mls.KeyPackage{
		Version:     mls.ProtocolVersionMLS10,
		CipherSuite: suite,
		InitKey:     initPub,
		LeafNode:    m.kpLeaf(t, nb, na),
	}
	if err := kp.Sign(m.sigPriv); err != nil {
		t.Fatal(err)
	}
	return kp, encode(t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp})
}

func ref(t *testing.T, kp *mls.KeyPackage) []byte {
	t.Helper()
	return must(kp.Ref())
}

// upload publishes n KeyPackages of m (and a last-resort one if lastResort)
// and returns them in order.
func (e *env) upload(m *member, n int, lastResort bool) []*mls.KeyPackage {
	e.t.Helper()
	var ups []ds.KeyPackageUpload
	var kps []*mls.KeyPackage
	for i := 0; i < n; i++ {
		kp, data := m.keyPackage(e.t, e.clock.Now())
		ups = append(ups, ds.KeyPackageUpload{Data: data})
		kps = append(kps, kp)
	}
	if lastResort {
		kp, data := m.keyPackage(e.t, e.clock.Now())
		ups = append(ups, ds.KeyPackageUpload{Data: data, LastResort: true})
		kps = append(kps, kp)
	}
	if _, err := e.svc.UploadKeyPackages(bg, m.id, ups); err != nil {
		e.t.Fatal(err)
	}
	return kps
}

// consent publishes a fresh KeyPackage of each of ids (clients made by
// register) and returns them, to pass as CreateGroup.KeyPackages: the
// consent of an opaque group's initial members. The creator, if among
// ids, is left out.
func (e *env) consent(creator string, ids ...string) [][]byte {
	e.t.Helper()
	var out [][]byte
	for _, id := range ids {
		if id == creator {
			continue
		}
		m := e.byID[id]
		if m == nil {
			e.t.Fatalf("consent: %q was not registered by this env", id)
		}
		_, data := m.keyPackage(e.t, e.clock.Now())
		if _, err := e.svc.UploadKeyPackages(bg, id, []ds.KeyPackageUpload{{Data: data}}); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, data)
	}
	return out
}

// createOpaque creates an opaque group of creator and members, each of
// which consents with a fresh KeyPackage (see consent).
func (e *env) createOpaque(creator string, g ds.CreateGroup) error {
	e.t.Helper()
	g.Mode = ds.ModeOpaque
	g.KeyPackages = append(g.KeyPackages, e.consent(creator, g.Members...)...)
	return e.svc.CreateGroup(bg, creator, g)
}

// group is a test-side mirror of a transparent group: the public state the
// members agree on, and the keys of the members by leaf.
type group struct {
	id   []byte
	st   *mls.PublicGroupState
	keys map[mls.LeafIndex]*member
}

// newGroup builds a one-member group of creator at epoch 0 and returns it
// with its GroupInfo (as an MLSMessage) and ratchet tree.
func newGroup(t *testing.T, creator *member, now time.Time) (*group, []byte, []byte) {
	t.Helper()
	id := append([]byte("group-"), random(8)...)
	leaf := creator.kpLeaf(t, now.Add(-time.Hour), now.Add(24*time.Hour))
	tree := must(mls.NewRatchetTree(suite, []*mls.Node{{Leaf: &leaf}}))
	gi := &mls.GroupInfo{
		GroupContext: mls.GroupContext{
			Version:                 mls.ProtocolVersionMLS10,
			CipherSuite:             suite,
			GroupID:                 id,
			Epoch:                   0,
			TreeHash:                tree.TreeHash(),
			ConfirmedTranscriptHash: []byte{},
		},
		ConfirmationTag: random(suite.HashSize()),
		Signer:          0,
	}
	if err := gi.Sign(creator.sigPriv); err != nil {
		t.Fatal(err)
	}
	st := must(mls.NewPublicGroupState(gi, tree))
	g := &group{id: id, st: st, keys: map[mls.LeafIndex]*member{0: creator}}
	return g, encode(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}), must(tree.MarshalBinary())
}

func (e *env) createGroup(creator *member) *group {
	e.t.Helper()
	g, gi, tree := newGroup(e.t, creator, e.clock.Now())
	if err := e.svc.CreateGroup(bg, creator.id, ds.CreateGroup{GroupID: g.id, Mode: ds.ModeTransparent, GroupInfo: gi, RatchetTree: tree}); err != nil {
		e.t.Fatal(err)
	}
	return g
}

func addOf(kp *mls.KeyPackage) mls.ProposalOrRef {
	return mls.ProposalOrRef{Type: mls.ProposalOrRefTypeProposal, Proposal: &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}}}
}

func removeOf(leaf mls.LeafIndex) mls.ProposalOrRef {
	return mls.ProposalOrRef{Type: mls.ProposalOrRefTypeProposal, Proposal: &mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: leaf}}}
}

// frame signs content as sender (at leaf) for the group's current epoch and
// returns the PublicMessage and its MLSMessage encoding.
func (g *group) frame(t *testing.T, sender *member, leaf mls.LeafIndex, fc mls.FramedContent) (*mls.PublicMessage, []byte) {
	t.Helper()
	gc := g.st.GroupContext()
	fc.GroupID = g.id
	fc.Epoch = gc.Epoch
	fc.Sender = mls.Sender{SenderType: mls.SenderTypeMember, LeafIndex: leaf}
	ac := &mls.AuthenticatedContent{WireFormat: mls.WireFormatPublicMessage, Content: fc}
	if fc.ContentType == mls.ContentTypeCommit {
		ac.Auth.ConfirmationTag = random(suite.HashSize())
	}
	if err := ac.Sign(suite, sender.sigPriv, &gc); err != nil {
		t.Fatal(err)
	}
	pm := must(mls.ProtectPublic(ac, random(suite.HashSize()), &gc))
	return pm, encode(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})
}

// commit builds a Commit by sender at leaf with props and path, and the
// state it leads to.
func (g *group) commit(t *testing.T, sender *member, leaf mls.LeafIndex, props []mls.ProposalOrRef, path *mls.UpdatePath) ([]byte, *mls.PublicGroupState) {
	t.Helper()
	pm, data := g.frame(t, sender, leaf, mls.FramedContent{ContentType: mls.ContentTypeCommit, Commit: &mls.Commit{Proposals: props, Path: path}})
	next, _, err := g.st.HandleCommit(pm)
	if err != nil {
		t.Fatalf("test commit is invalid: %v", err)
	}
	if next.Tree().Leaf(leaf) != nil {
		commitGroupInfos.Store(string(data), commitGroupInfo(t, next, pm, sender, leaf))
	}
	return data, next
}

// commitGroupInfos maps each Commit built by group.commit to the GroupInfo
// of the epoch it starts, which sendMsg sends with it.
var commitGroupInfos sync.Map

// commitGroupInfo returns the GroupInfo of the epoch the Commit pm starts
// (state next), as its committer publishes it (§12.4.3): its
// confirmation_tag, an external_pub, signed by the member at leaf.
func commitGroupInfo(t testing.TB, next *mls.PublicGroupState, pm *mls.PublicMessage, signer *member, leaf mls.LeafIndex) []byte {
	t.Helper()
	_, extPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	ext := must((&mls.ExternalPub{PublicKey: extPub}).MarshalBinary())
	gi := &mls.GroupInfo{GroupContext: next.GroupContext(), ConfirmationTag: pm.Auth.ConfirmationTag, Signer: leaf,
		Extensions: mls.Extensions{{ExtensionType: mls.ExtensionTypeExternalPub, ExtensionData: ext}}}
	if err := gi.Sign(signer.sigPriv); err != nil {
		t.Fatal(err)
	}
	return must((&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}).MarshalBinary())
}

// commitGI returns the GroupInfo group.commit made for commit.
func commitGI(t *testing.T, commit []byte) []byte {
	t.Helper()
	gi, ok := commitGroupInfos.Load(string(commit))
	if !ok {
		t.Fatal("no GroupInfo for this Commit")
	}
	return gi.([]byte)
}

// sendBundle is SendCommitBundle that adds the GroupInfo of a Commit built
// by group.commit when b has none.
func sendBundle(svc *ds.Service, sender string, b ds.CommitBundle) (ds.Receipt, error) {
	if gi, ok := commitGroupInfos.Load(string(b.Commit)); ok && b.GroupInfo == nil {
		b.GroupInfo = gi.([]byte)
	}
	return svc.SendCommitBundle(bg, sender, opaqueBundle(b))
}

// sendMsg sends data as sender: a Commit built by group.commit with the
// GroupInfo of its new epoch, an opaque group's Commit (a PrivateMessage
// here) as opaqueBundle makes it (SendCommitBundle), anything else with
// Send.
func sendMsg(svc *ds.Service, sender string, data []byte) (ds.Receipt, error) {
	if gi, ok := commitGroupInfos.Load(string(data)); ok {
		return svc.SendCommitBundle(bg, sender, ds.CommitBundle{Commit: data, GroupInfo: gi.([]byte)})
	}
	if m, err := mls.ParseMLSMessage(data); err == nil && m.PrivateMessage != nil && m.PrivateMessage.ContentType == mls.ContentTypeCommit {
		return svc.SendCommitBundle(bg, sender, opaqueBundle(ds.CommitBundle{Commit: data}))
	}
	return svc.Send(bg, sender, data)
}

// opaqueBundle completes the bundle of an opaque group's Commit (a
// PrivateMessage) as the Service requires: with a remote tree of the
// next epoch if it has none, and, if the Commit declares nothing, the
// roster declaration of b.Added and b.Removed in its authenticated_data
// (roster_ad.go). The same bundle gives the same bytes.
func opaqueBundle(b ds.CommitBundle) ds.CommitBundle {
	m, err := mls.ParseMLSMessage(b.Commit)
	if err != nil || m.PrivateMessage == nil || m.PrivateMessage.ContentType != mls.ContentTypeCommit {
		return b
	}
	if b.RemoteTree == nil {
		b.RemoteTree = &ds.RemoteTree{Epoch: m.PrivateMessage.Epoch + 1, Blob: []byte("the remote tree")}
	}
	if len(m.PrivateMessage.AuthenticatedData) == 0 && (len(b.Added) > 0 || len(b.Removed) > 0) {
		m.PrivateMessage.AuthenticatedData = ds.RosterChange{Added: b.Added, Removed: b.Removed}.MarshalDeclaration()
		if data, err := m.MarshalBinary(); err == nil {
			b.Commit = data
		}
	}
	return b
}

// proposal builds a Proposal message by sender at leaf.
func (g *group) proposal(t *testing.T, sender *member, leaf mls.LeafIndex, p *mls.Proposal) []byte {
	t.Helper()
	_, data := g.frame(t, sender, leaf, mls.FramedContent{ContentType: mls.ContentTypeProposal, Proposal: p})
	return data
}

// removePath builds the UpdatePath with which the member at leaf commits
// the removal of the member at removed, in a group of two leaves: the tree
// shrinks to one leaf, so the path has no nodes.
func (g *group) removePath(t *testing.T, m *member, leaf, removed mls.LeafIndex) *mls.UpdatePath {
	t.Helper()
	tree := g.st.Tree()
	if err := tree.RemoveLeaf(removed); err != nil {
		t.Fatal(err)
	}
	_, encPub := must2(t)(suite.GenerateKEMKeyPair())
	path := &mls.UpdatePath{LeafNode: mls.LeafNode{
		EncryptionKey:  encPub,
		SignatureKey:   m.sigPub,
		Credential:     mls.Credential{CredentialType: mls.CredentialTypeBasic, Identity: []byte(m.id)},
		Capabilities:   capabilities(),
		LeafNodeSource: mls.LeafNodeSourceCommit,
	}}
	ph, err := tree.PathParentHash(leaf, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(tree.FilteredDirectPath(leaf)) != 0 {
		t.Fatalf("removePath only handles paths without nodes")
	}
	path.LeafNode.ParentHash = ph
	if err := path.LeafNode.Sign(suite, m.sigPriv, g.id, leaf); err != nil {
		t.Fatal(err)
	}
	return path
}

// groupInfo returns a GroupInfo of state st signed by the member at leaf.
func (g *group) groupInfo(t *testing.T, st *mls.PublicGroupState, signer *member, leaf mls.LeafIndex) []byte {
	t.Helper()
	gi := &mls.GroupInfo{GroupContext: st.GroupContext(), ConfirmationTag: random(suite.HashSize()), Signer: leaf}
	if err := gi.Sign(signer.sigPriv); err != nil {
		t.Fatal(err)
	}
	return encode(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
}

// welcome returns a Welcome addressed to the KeyPackages refs. The
// Delivery Service only reads the refs; the secrets are random.
func welcome(t *testing.T, refs ...[]byte) []byte {
	t.Helper()
	w := &mls.Welcome{CipherSuite: suite, EncryptedGroupInfo: random(64)}
	for _, r := range refs {
		w.Secrets = append(w.Secrets, mls.EncryptedGroupSecrets{
			NewMember:             r,
			EncryptedGroupSecrets: mls.HPKECiphertext{KEMOutput: random(32), Ciphertext: random(48)},
		})
	}
	return encode(t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: w})
}

// private returns a PrivateMessage for group id and epoch; its ciphertext is
// random, as the Delivery Service cannot read it anyway.
func private(t *testing.T, id []byte, epoch uint64, ct mls.ContentType) []byte {
	t.Helper()
	return encode(t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
		GroupID: id, Epoch: epoch, ContentType: ct, EncryptedSenderData: random(32), Ciphertext: random(64),
	}})
}

func wantErr[T error](t *testing.T, err error) T {
	t.Helper()
	var target T
	if !errors.As(err, &target) {
		t.Fatalf("got error %v, want %T", err, target)
	}
	return target
}

func wantIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

// collect reads events from ch until pred says stop or timeout passes (a
// safety net against hanging, not a timing assertion).
func collect(t *testing.T, ch <-chan ds.Event, stop func([]ds.Event) bool) []ds.Event {
	t.Helper()
	var evs []ds.Event
	timeout := time.After(20 * time.Second)
	for !stop(evs) {
		select {
		case ev, ok := <-ch:
			if !ok {
				return evs
			}
			evs = append(evs, ev)
		case <-timeout:
			t.Fatalf("no stop condition after %d events", len(evs))
		}
	}
	return evs
}

func untilCaughtUp(evs []ds.Event) bool {
	return len(evs) > 0 && evs[len(evs)-1].CaughtUp
}

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(bg)
}

// replay subscribes as client, returns the events up to CaughtUp, and ends
// the subscription.
func replay(t *testing.T, e *env, client string) []ds.Event {
	t.Helper()
	ctx, cancel := contextWithCancel()
	defer cancel()
	ch, err := e.svc.Subscribe(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	evs := collect(t, ch, untilCaughtUp)
	return evs[:len(evs)-1]
}

func pendingWelcomes(t *testing.T, e *env, client string) []ds.WelcomeEvent {
	t.Helper()
	var out []ds.WelcomeEvent
	for _, ev := range replay(t, e, client) {
		if ev.Welcome != nil {
			out = append(out, *ev.Welcome)
		}
	}
	return out
}

// messages returns the group sequence numbers of the message events in evs.
func messageSeqs(evs []ds.Event) []uint64 {
	var out []uint64
	for _, ev := range evs {
		if ev.Message != nil {
			out = append(out, ev.Message.GroupSeq)
		}
	}
	return out
}
