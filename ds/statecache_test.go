package ds_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// The tests of the state cache and the snapshot + log storage of
// transparent groups: the Service must accept and refuse exactly as if it
// decoded the stored state for every message, whatever it has cached, on
// one node or several, across restarts and failed writes.

// pathCommit builds an empty Commit with an UpdatePath by m at leaf l.
func (g *group) pathCommit(t *testing.T, m *member, l mls.LeafIndex) ([]byte, *mls.PublicGroupState) {
	t.Helper()
	return g.commit(t, m, l, nil, buildUpdatePath(t, g.st.Tree(), g.id, m, l))
}

// grow adds n new members to g in one Commit by leaf 0 and returns them.
func (e *env) grow(g *group, svc *ds.Service, n int, prefix string) []*member {
	e.t.Helper()
	var props []mls.ProposalOrRef
	var refs [][]byte
	var ms []*member
	for i := 0; i < n; i++ {
		m := e.register(fmt.Sprintf("%s%d", prefix, i), fmt.Sprintf("%s%d", prefix, i))
		kp := e.upload(m, 1, false)[0]
		props = append(props, addOf(kp))
		refs = append(refs, ref(e.t, kp))
		ms = append(ms, m)
	}
	commit, next := g.commit(e.t, g.keys[0], 0, props, nil)
	if _, err := sendBundle(svc, g.keys[0].id, ds.CommitBundle{Commit: commit, Welcome: welcome(e.t, refs...)}); err != nil {
		e.t.Fatal(err)
	}
	old := g.st
	g.st = next
	for i, l := range newLeaves(old, next) {
		g.keys[l] = ms[i]
	}
	return ms
}

// newLeaves returns the leaves non-blank in next and blank in old.
func newLeaves(old, next *mls.PublicGroupState) []mls.LeafIndex {
	ot := old.Tree()
	var out []mls.LeafIndex
	for i := range next.Tree().Leaves() {
		if ot.Leaf(i) == nil {
			out = append(out, i)
		}
	}
	return out
}

// checkTree checks that svc serves the tree of the mirror's state.
func checkTree(t *testing.T, svc *ds.Service, client string, g *group) {
	t.Helper()
	rt, err := svc.RatchetTree(bg, client, g.id)
	if err != nil {
		t.Fatal(err)
	}
	gc := g.st.GroupContext()
	if rt.Epoch != gc.Epoch || !bytes.Equal(rt.TreeHash, gc.TreeHash) {
		t.Fatalf("served epoch %d tree hash %x, want %d %x", rt.Epoch, rt.TreeHash, gc.Epoch, gc.TreeHash)
	}
}

// noSnapshots is a store that drops snapshots, as a node that crashed
// before writing them would.
type noSnapshots struct{ ds.Store }

func (noSnapshots) PutSnapshot(context.Context, []byte, uint64, []byte) error { return nil }

// TestStateRestart: Commits are stored without a new snapshot; a Service
// started on the same database afterwards rebuilds the state from the
// creation snapshot and the log, and goes on.
func TestStateRestart(t *testing.T) {
	e := newEnv(t, ds.Config{SnapshotEvery: 1})
	e.svc = ds.New(noSnapshots{e.store}, e.cfg)
	a := e.register("a", "a")
	g := e.createGroup(a)
	e.grow(g, e.svc, 3, "x")
	for i := 0; i < 3; i++ {
		l := mls.LeafIndex(i % 2)
		commit, next := g.pathCommit(t, g.keys[l], l)
		if _, err := sendMsg(e.svc, g.keys[l].id, commit); err != nil {
			t.Fatal(err)
		}
		g.st = next
	}
	rec, err := e.store.GroupState(bg, g.id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.SnapshotVersion != 0 || rec.StateVersion != 4 {
		t.Fatalf("snapshot at %d, state version %d; want the creation snapshot and 4 log entries", rec.SnapshotVersion, rec.StateVersion)
	}
	e.reopen()
	checkTree(t, e.svc, "a", g)
	commit, next := g.pathCommit(t, a, 0)
	if _, err := sendMsg(e.svc, "a", commit); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	g.st = next
	checkTree(t, e.svc, "x0", g)
}

// TestStateSnapshots: with SnapshotEvery 2, snapshots follow the Commits;
// each decodes to the state of its version, and a new Service starting
// from one goes on.
func TestStateSnapshots(t *testing.T) {
	e := newEnv(t, ds.Config{SnapshotEvery: 2})
	a := e.register("a", "a")
	g := e.createGroup(a)
	e.grow(g, e.svc, 2, "x")
	states := map[uint64]*mls.PublicGroupState{1: g.st}
	for v := uint64(2); v <= 6; v++ {
		l := mls.LeafIndex(v % 3)
		commit, next := g.pathCommit(t, g.keys[l], l)
		if _, err := sendMsg(e.svc, g.keys[l].id, commit); err != nil {
			t.Fatal(err)
		}
		g.st = next
		states[v] = next
	}
	// Snapshots are written in the background: wait for one of version
	// 4 or later (a bound against hanging, not a timing assertion).
	var rec ds.GroupRecord
	for deadline := time.Now().Add(20 * time.Second); ; {
		var err error
		if rec, err = e.store.GroupState(bg, g.id); err != nil {
			t.Fatal(err)
		}
		if rec.SnapshotVersion >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if rec.SnapshotVersion < 4 {
		t.Fatalf("no snapshot after 6 state changes with SnapshotEvery 2 (latest at %d)", rec.SnapshotVersion)
	}
	st, err := mls.UnmarshalPublicGroupState(rec.State)
	if err != nil {
		t.Fatal(err)
	}
	want := states[rec.SnapshotVersion]
	if st.Epoch() != want.Epoch() || !bytes.Equal(st.GroupContext().TreeHash, want.GroupContext().TreeHash) {
		t.Fatalf("snapshot of version %d is epoch %d, want the state of that version (epoch %d)", rec.SnapshotVersion, st.Epoch(), want.Epoch())
	}
	e.reopen()
	checkTree(t, e.svc, "a", g)
	commit, next := g.pathCommit(t, a, 0)
	if _, err := sendMsg(e.svc, "a", commit); err != nil {
		t.Fatalf("after a restart from a snapshot: %v", err)
	}
	g.st = next
	checkTree(t, e.svc, "a", g)
}

// TestStateTwoNodes: two Services share the database, as two nodes do.
// Each accepts Commits in turn; each must first learn the other's from
// the log, and a Commit validated against an outdated state must not get
// in.
func TestStateTwoNodes(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	g := e.createGroup(a)
	other := ds.New(e.store, e.cfg)
	e.grow(g, other, 2, "x")
	svcs := []*ds.Service{e.svc, other}
	for i := 0; i < 6; i++ {
		l := mls.LeafIndex(i % 3)
		commit, next := g.pathCommit(t, g.keys[l], l)
		if _, err := sendMsg(svcs[i%2], g.keys[l].id, commit); err != nil {
			t.Fatalf("Commit %d on node %d: %v", i, i%2, err)
		}
		g.st = next
		checkTree(t, svcs[(i+1)%2], "a", g)
	}
	// Both nodes cached the state; a Commit for the current epoch
	// accepted by one makes the other's copy stale: a competing Commit
	// for the same epoch is refused there with WrongEpochError.
	c1, next := g.pathCommit(t, a, 0)
	c2, _ := g.pathCommit(t, g.keys[1], 1)
	if _, err := sendMsg(e.svc, "a", c1); err != nil {
		t.Fatal(err)
	}
	_, err := sendMsg(other, g.keys[1].id, c2)
	if we := wantErr[*ds.WrongEpochError](t, err); we.Expected != next.Epoch() {
		t.Errorf("WrongEpochError expects %d, want %d", we.Expected, next.Epoch())
	}
	g.st = next
	checkTree(t, other, "a", g)

	// A GroupInfo stored with a Commit on one node is served by the other.
	c3, next := g.pathCommit(t, a, 0)
	gi := commitGI(t, c3)
	if _, err := sendBundle(e.svc, "a", ds.CommitBundle{Commit: c3, GroupInfo: gi}); err != nil {
		t.Fatal(err)
	}
	g.st = next
	info, err := other.GroupInfo(bg, "x0", g.id)
	if err != nil || !bytes.Equal(info.GroupInfo, gi) || info.Epoch != next.Epoch() {
		t.Fatalf("other node's GroupInfo: epoch %d, the bundle's GroupInfo: %v (%v)", info.Epoch, bytes.Equal(info.GroupInfo, gi), err)
	}
}

// TestStateCacheOff: without a cache every handshake message rebuilds the
// state from the store, with the same outcome.
func TestStateCacheOff(t *testing.T) {
	e := newEnv(t, ds.Config{StateCacheBytes: -1, SnapshotEvery: 3})
	a := e.register("a", "a")
	g := e.createGroup(a)
	e.grow(g, e.svc, 2, "x")
	for i := 0; i < 5; i++ {
		l := mls.LeafIndex(i % 3)
		commit, next := g.pathCommit(t, g.keys[l], l)
		if _, err := sendMsg(e.svc, g.keys[l].id, commit); err != nil {
			t.Fatal(err)
		}
		g.st = next
	}
	checkTree(t, e.svc, "x1", g)
}

// failingStore refuses the next AcceptMessage when armed.
type failingStore struct {
	ds.Store
	mu  sync.Mutex
	arm bool
}

var errInjected = errors.New("injected store failure")

func (f *failingStore) AcceptMessage(ctx context.Context, p ds.AcceptParams) (ds.AcceptResult, error) {
	f.mu.Lock()
	arm := f.arm
	f.arm = false
	f.mu.Unlock()
	if arm {
		return ds.AcceptResult{}, errInjected
	}
	return f.Store.AcceptMessage(ctx, p)
}

// TestStateFailedWrite: a Proposal that passed validation but that the
// store did not take leaves no trace: a Commit that refers to it is
// refused, as it would be by a Service that read the stored state. After
// the Proposal is stored, the same Commit goes through.
func TestStateFailedWrite(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	g := e.createGroup(a)
	e.grow(g, e.svc, 2, "x")
	fs := &failingStore{Store: e.store}
	svc := ds.New(fs, e.cfg)
	checkTree(t, svc, "a", g) // the state is cached

	kp := e.upload(e.register("y", "y"), 1, false)[0]
	prop := g.proposal(t, a, 0, &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}})
	fs.arm = true
	if _, err := sendMsg(svc, "a", prop); !errors.Is(err, errInjected) {
		t.Fatalf("Send with a failing store: %v", err)
	}
	pm := must(mls.ParseMLSMessage(prop)).PublicMessage
	withProp := must(mls.UnmarshalPublicGroupState(must(g.st.MarshalBinary())))
	pref, err := withProp.HandleProposal(pm)
	if err != nil {
		t.Fatal(err)
	}
	byRef := []mls.ProposalOrRef{{Type: mls.ProposalOrRefTypeReference, Reference: pref}}
	mirror := g.st
	g.st = withProp
	commit, next := g.commit(t, a, 0, byRef, nil)
	g.st = mirror
	_, err = sendMsg(svc, "a", commit)
	wantErr[*ds.InvalidMessageError](t, err)

	if _, err := sendMsg(svc, "a", prop); err != nil {
		t.Fatal(err)
	}
	info, err := svc.GroupInfo(bg, "x0", g.id)
	if err != nil || len(info.Proposals) != 1 || !bytes.Equal(info.Proposals[0], prop) {
		t.Fatalf("GroupInfo proposals = %d, %v; want the stored Proposal", len(info.Proposals), err)
	}
	if _, err := sendMsg(svc, "a", commit); err != nil {
		t.Fatalf("Commit by reference after the Proposal was stored: %v", err)
	}
	g.st = next
	checkTree(t, svc, "y", g)
	if info, err := svc.GroupInfo(bg, "x0", g.id); err != nil || len(info.Proposals) != 0 {
		t.Fatalf("GroupInfo proposals after the Commit = %d, %v; want none", len(info.Proposals), err)
	}
}

// TestStateOneLeafPerClient: the client index follows Removes: a client
// removed may be added again, one still in the group may not.
func TestStateOneLeafPerClient(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	g := e.createGroup(a)
	b := e.grow(g, e.svc, 1, "b")[0]
	// a holds leaf 0: adding a again (with another key: the same one
	// would break §7.3) is refused.
	kpA, _ := otherKey(t, a).keyPackage(t, e.clock.Now())
	commit, _ := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kpA)}, nil)
	_, err := sendMsg(e.svc, "a", commit)
	wantIs(t, err, ds.ErrPermissionDenied)
	// a removes b, then adds b back.
	commit, next := g.commit(t, a, 0, []mls.ProposalOrRef{removeOf(1)}, g.removePath(t, a, 0, 1))
	if _, err := sendMsg(e.svc, "a", commit); err != nil {
		t.Fatal(err)
	}
	g.st = next
	kpB := e.upload(b, 1, false)[0]
	commit, next = g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kpB)}, nil)
	if _, err := sendBundle(e.svc, "a", ds.CommitBundle{Commit: commit, Welcome: welcome(t, ref(t, kpB))}); err != nil {
		t.Fatalf("adding a removed client again: %v", err)
	}
	g.st = next
	if r := must(e.svc.Roster(bg, "a", g.id)); fmt.Sprint(r) != "[a b0]" {
		t.Errorf("roster %v", r)
	}
	// And b, back in, cannot be added a second time.
	kpB2, _ := otherKey(t, b).keyPackage(t, e.clock.Now())
	commit, _ = g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kpB2)}, nil)
	_, err = sendMsg(e.svc, "a", commit)
	wantIs(t, err, ds.ErrPermissionDenied)
}

// otherKey returns m's client id with a new signature key pair.
func otherKey(t *testing.T, m *member) *member {
	priv, pub, err := suite.GenerateSignatureKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	return &member{id: m.id, sigPriv: priv, sigPub: pub}
}

// TestGroupInfoExternalJoin: any registered client may read what an
// external joiner needs of a transparent group, unless ExternalJoin is
// members-only; opaque groups stay members-only.
func TestGroupInfoExternalJoin(t *testing.T) {
	for _, policy := range []ds.ExternalJoinPolicy{ds.ExternalJoinAny, ds.ExternalJoinMembersOnly} {
		t.Run(fmt.Sprint(policy), func(t *testing.T) {
			e := newEnv(t, ds.Config{ExternalJoin: policy})
			a := e.register("a", "a")
			e.register("outsider", "o")
			g := e.createGroup(a)
			kp := e.upload(e.register("y", "y"), 1, false)[0]
			prop := g.proposal(t, a, 0, &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}})
			if _, err := sendMsg(e.svc, "a", prop); err != nil {
				t.Fatal(err)
			}
			info, err := e.svc.GroupInfo(bg, "outsider", g.id)
			if policy == ds.ExternalJoinMembersOnly {
				wantIs(t, err, ds.ErrNotMember)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			gc := g.st.GroupContext()
			if info.Epoch != gc.Epoch || !bytes.Equal(info.TreeHash, gc.TreeHash) || len(info.GroupInfo) == 0 {
				t.Errorf("GroupInfo: epoch %d tree hash %x (GroupInfo %d bytes); want %d %x", info.Epoch, info.TreeHash, len(info.GroupInfo), gc.Epoch, gc.TreeHash)
			}
			if tree, err := mls.UnmarshalRatchetTree(suite, info.RatchetTree); err != nil || !bytes.Equal(tree.TreeHash(), gc.TreeHash) {
				t.Errorf("GroupInfo tree does not match the tree hash (%v)", err)
			}
			if len(info.Proposals) != 1 || !bytes.Equal(info.Proposals[0], prop) {
				t.Errorf("GroupInfo proposals: %d, want the one sent", len(info.Proposals))
			}
			_, err = e.svc.GroupInfo(bg, "unregistered", g.id)
			wantIs(t, err, ds.ErrPermissionDenied)
			_, err = e.svc.GroupInfo(bg, "outsider", []byte("nope"))
			wantIs(t, err, ds.ErrNotMember) // one answer for outsiders
			if err := e.svc.CreateGroup(bg, "a", ds.CreateGroup{GroupID: []byte("opaque"), Mode: ds.ModeOpaque}); err != nil {
				t.Fatal(err)
			}
			_, err = e.svc.GroupInfo(bg, "outsider", []byte("opaque"))
			wantIs(t, err, ds.ErrNotMember)
		})
	}
}

// TestStateBigGroupRestart: a synthetic group of 300 members takes Add and
// UpdatePath Commits, and after a restart the rebuilt state goes on
// accepting them.
func TestStateBigGroupRestart(t *testing.T) {
	g := newBigGroup(t, t.TempDir()+"/ds.db", 300)
	defer func() { g.store.Close() }()
	for i := 0; i < 4; i++ {
		if _, err := sendBundle(g.svc, "m00000", g.addCommit(t)); err != nil {
			t.Fatal(err)
		}
		sender, data := g.pathCommit(t, g.committer(i))
		if _, err := sendMsg(g.svc, sender, data); err != nil {
			t.Fatal(err)
		}
	}
	g.store.Close()
	g.open(t)
	sender, data := g.pathCommit(t, g.committer(99))
	if _, err := sendMsg(g.svc, sender, data); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	rt, err := g.svc.RatchetTree(bg, "m00000", g.id)
	if err != nil || !bytes.Equal(rt.TreeHash, g.st.GroupContext().TreeHash) {
		t.Fatalf("tree after restart: %v", err)
	}
}

// TestStateCacheEviction: with a cache too small for two groups, each
// handshake message evicts the other group's state; both groups go on.
func TestStateCacheEviction(t *testing.T) {
	e := newEnv(t, ds.Config{StateCacheBytes: 1})
	a := e.register("a", "a")
	gs := []*group{e.createGroup(a), e.createGroup(a)}
	for i, g := range gs {
		e.grow(g, e.svc, 1, fmt.Sprintf("g%dx", i))
	}
	for i := 0; i < 6; i++ {
		g := gs[i%2]
		l := mls.LeafIndex(i / 2 % 2)
		commit, next := g.pathCommit(t, g.keys[l], l)
		if _, err := sendMsg(e.svc, g.keys[l].id, commit); err != nil {
			t.Fatalf("Commit %d: %v", i, err)
		}
		g.st = next
	}
	for _, g := range gs {
		checkTree(t, e.svc, "a", g)
	}
}
