package mls

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// treeOf is a TreeSource that answers from the current tree of a full
// member, as the Delivery Service answers from the state it keeps. It can
// be told to tamper with its answers.
type treeOf struct {
	g      func() *RatchetTree
	tamper func(data []byte) []byte
	asked  []string
}

func (s *treeOf) answer(p *TreeProof, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	data, err := p.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if s.tamper != nil {
		data = s.tamper(data)
	}
	return data, nil
}

func (s *treeOf) PathProof(leaf LeafIndex) ([]byte, error) {
	s.asked = append(s.asked, fmt.Sprintf("path %d", leaf))
	return s.answer(s.g().PathProof(leaf))
}

func (s *treeOf) LeavesProof(leaves []LeafIndex) ([]byte, error) {
	s.asked = append(s.asked, fmt.Sprintf("leaves %v", leaves))
	return s.answer(s.g().LeavesProof(leaves...))
}

func partialKP(t *testing.T, cs CipherSuite, name string) (*KeyPackage, *KeyPackagePrivate) {
	t.Helper()
	kp, priv, err := NewKeyPackage(cs, []byte(name), nil, 0, 1<<62)
	if err != nil {
		t.Fatal(err)
	}
	return kp, priv
}

// partialScene is a group of n members in which the joiner took leaf pos
// from a Welcome without the tree: a full creator at leaf 0, a full member
// x (nil for n < 3) that has committed once, so that the tree has parent
// nodes off the creator's path with the joiner as unmerged leaf, and the
// joiner as a PartialGroup.
type partialScene struct {
	cs      CipherSuite
	creator *Group
	x       *Group
	joiner  *PartialGroup
	src     *treeOf
}

func (s *partialScene) full() []*Group {
	if s.x == nil {
		return []*Group{s.creator}
	}
	return []*Group{s.creator, s.x}
}

func newPartialScene(t *testing.T, n int, pos LeafIndex) *partialScene {
	t.Helper()
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	ckp, cpriv := partialKP(t, cs, "creator")
	creator, err := NewGroup([]byte("partial"), ckp, cpriv)
	if err != nil {
		t.Fatal(err)
	}
	s := &partialScene{cs: cs, creator: creator}
	s.src = &treeOf{g: func() *RatchetTree { return s.creator.Tree() }}

	// n-1 others at leaves 1..n-1; x is the last one, or the one before
	// if the joiner is to take the last leaf.
	var kps []*KeyPackage
	var privs []*KeyPackagePrivate
	for i := 1; i < n; i++ {
		kp, priv := partialKP(t, cs, fmt.Sprintf("m%d", i))
		kps, privs = append(kps, kp), append(privs, priv)
	}
	_, w, err := creator.Commit(kps, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := creator.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	xi := LeafIndex(n - 1)
	if xi == pos {
		xi--
	}
	if n >= 3 {
		if s.x, err = JoinGroup(wireWelcome(t, w), kps[xi-1], privs[xi-1], nil, nil); err != nil {
			t.Fatalf("x joins: %v", err)
		}
		c, _, err := s.x.Commit(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := creator.HandleCommit(wirePublic(t, c)); err != nil {
			t.Fatal(err)
		}
		if err := s.x.MergePendingCommit(); err != nil {
			t.Fatal(err)
		}
	}

	// The creator replaces the member at pos by the joiner, whose leaf
	// is then the leftmost blank one.
	jkp, jpriv := partialKP(t, cs, "joiner")
	c, _, err := creator.Commit([]*KeyPackage{jkp}, []LeafIndex{pos})
	if err != nil {
		t.Fatal(err)
	}
	w, err = creator.WelcomeWithoutTree([]*KeyPackage{jkp})
	if err != nil {
		t.Fatal(err)
	}
	if err := creator.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	if s.x != nil {
		if _, err := s.x.HandleCommit(wirePublic(t, c)); err != nil {
			t.Fatal(err)
		}
	}
	// The Welcome really is without the tree.
	if _, _, err := DecryptWelcome(wireWelcome(t, w), mustRef(t, jkp), jpriv.InitPriv, nil); !errors.Is(err, ErrNoRatchetTree) {
		t.Fatalf("DecryptWelcome of the tree-less Welcome: %v, want ErrNoRatchetTree", err)
	}
	if s.joiner, err = JoinGroupPartial(wireWelcome(t, w), jkp, jpriv, s.src, nil); err != nil {
		t.Fatalf("JoinGroupPartial (n=%d, pos=%d): %v", n, pos, err)
	}
	if s.joiner.Self() != pos {
		t.Fatalf("joiner at leaf %d, want %d", s.joiner.Self(), pos)
	}
	// With a leaf hint, the joiner fetches its own path and, unless that
	// shows it, the signer's leaf, and ends in the same state.
	hinted := &treeOf{g: s.src.g}
	h, err := JoinGroupPartial(wireWelcome(t, w), jkp, jpriv, hinted, &PartialJoinOptions{Leaf: &pos})
	if err != nil {
		t.Fatalf("JoinGroupPartial with a hint: %v", err)
	}
	if hinted.asked[0] != fmt.Sprintf("path %d", pos) || len(hinted.asked) > 2 || !bytes.Equal(h.EpochAuthenticator(), s.joiner.EpochAuthenticator()) {
		t.Fatalf("join with a hint asked %v", hinted.asked)
	}
	s.same(t)
	return s
}

func mustRef(t *testing.T, kp *KeyPackage) KeyPackageRef {
	t.Helper()
	ref, err := kp.Ref()
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// same checks that every member is in the same epoch with the same
// GroupContext (hence tree hash) and epoch_authenticator.
func (s *partialScene) same(t *testing.T) {
	t.Helper()
	jgc := s.joiner.GroupContext()
	for _, g := range s.full() {
		gc := g.GroupContext()
		if !bytes.Equal(mustEncode(&gc), mustEncode(&jgc)) {
			t.Fatalf("leaf %d: GroupContext of epoch %d differs from the partial member's (epoch %d)", g.Self(), gc.Epoch, jgc.Epoch)
		}
		if !bytes.Equal(g.Tree().TreeHash(), s.joiner.tree.treeHash()) {
			t.Fatalf("partial tree hash differs from the full tree's")
		}
		if !bytes.Equal(g.EpochAuthenticator(), s.joiner.EpochAuthenticator()) {
			t.Fatalf("leaf %d: epoch_authenticator differs from the partial member's", g.Self())
		}
	}
}

// messages checks application messages in both directions.
func (s *partialScene) messages(t *testing.T) {
	t.Helper()
	m, err := s.joiner.Seal([]byte("from the partial member"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range s.full() {
		from, data, err := g.Open(wirePrivate(t, m))
		if err != nil || from != s.joiner.Self() || string(data) != "from the partial member" {
			t.Fatalf("leaf %d opens the partial member's message: %d %q %v", g.Self(), from, data, err)
		}
		m, err := g.Seal([]byte("to the partial member"), nil)
		if err != nil {
			t.Fatal(err)
		}
		from, data, err = s.joiner.Open(wirePrivate(t, m), s.src)
		if err != nil || from != g.Self() || string(data) != "to the partial member" {
			t.Fatalf("partial member opens leaf %d's message: %d %q %v", g.Self(), from, data, err)
		}
	}
}

// TestPartialMember runs, for every group size from 2 to 33 and every
// leaf position of the joiner, a join from a Welcome without the tree,
// messages both ways, a Commit of the partial member that the full members
// accept (so its UpdatePath, parent hashes and tree hash are the ones a
// full member computes), and Commits of full members, with and without
// Adds, that the partial member follows.
func TestPartialMember(t *testing.T) {
	maxN := 33
	if testing.Short() {
		maxN = 9
	}
	for n := 2; n <= maxN; n++ {
		for pos := LeafIndex(1); pos < LeafIndex(n); pos++ {
			t.Run(fmt.Sprintf("n=%d/pos=%d", n, pos), func(t *testing.T) {
				s := newPartialScene(t, n, pos)
				s.messages(t)

				// The partial member commits; the full members follow.
				c, err := s.joiner.Commit()
				if err != nil {
					t.Fatal(err)
				}
				for _, g := range s.full() {
					if _, err := g.HandleCommit(wirePublic(t, c)); err != nil {
						t.Fatalf("leaf %d rejects the partial member's Commit: %v", g.Self(), err)
					}
				}
				if err := s.joiner.HandleCommit(wirePublic(t, c), s.src); err != nil {
					t.Fatal(err)
				}
				s.same(t)
				s.messages(t)

				// A full member commits; the partial one follows from its
				// path in the new epoch.
				committer := s.full()[len(s.full())-1]
				c, _, err = committer.Commit(nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				s.followFull(t, committer, c)

				// The creator adds a member: the partial member skips the
				// new leaf in the resolution.
				kp, _ := partialKP(t, s.cs, "late")
				c, _, err = s.creator.Commit([]*KeyPackage{kp}, nil)
				if err != nil {
					t.Fatal(err)
				}
				s.followFull(t, s.creator, c)
				s.messages(t)

				// And commits again, from the tree it got by following.
				pc, err := s.joiner.Commit()
				if err != nil {
					t.Fatal(err)
				}
				for _, g := range s.full() {
					if _, err := g.HandleCommit(wirePublic(t, pc)); err != nil {
						t.Fatalf("leaf %d rejects the partial member's second Commit: %v", g.Self(), err)
					}
				}
				if err := s.joiner.MergePendingCommit(); err != nil {
					t.Fatal(err)
				}
				s.same(t)
			})
		}
	}
}

// followFull has every member but committer process c, the partial one
// last, from the tree of the new epoch.
func (s *partialScene) followFull(t *testing.T, committer *Group, c *PublicMessage) {
	t.Helper()
	// The partial member needs the committer's leaf of the current epoch.
	if _, err := s.joiner.Leaf(committer.Self(), s.src); err != nil {
		t.Fatal(err)
	}
	if err := committer.MergePendingCommit(); err != nil {
		t.Fatal(err)
	}
	for _, g := range s.full() {
		if g != committer {
			if _, err := g.HandleCommit(wirePublic(t, c)); err != nil {
				t.Fatal(err)
			}
		}
	}
	src := &treeOf{g: func() *RatchetTree { return committer.Tree() }}
	if err := s.joiner.HandleCommit(wirePublic(t, c), src); err != nil {
		t.Fatalf("partial member follows leaf %d's Commit: %v", committer.Self(), err)
	}
	s.same(t)
}

// TestPartialJoinRejectsTampering flips every byte of the path answers in
// turn, and gives answers about other trees: the join must fail with a
// ValidationError, never with a member on a tree that is not the group's.
func TestPartialJoinRejectsTampering(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	ckp, cpriv := partialKP(t, cs, "creator")
	creator, err := NewGroup([]byte("partial"), ckp, cpriv)
	if err != nil {
		t.Fatal(err)
	}
	var kps []*KeyPackage
	for i := range 6 {
		kp, _ := partialKP(t, cs, fmt.Sprintf("m%d", i))
		kps = append(kps, kp)
	}
	if _, _, err := creator.Commit(kps, nil); err != nil {
		t.Fatal(err)
	}
	creator.MergePendingCommit()
	old := creator.Tree()
	jkp, jpriv := partialKP(t, cs, "joiner")
	if _, _, err := creator.Commit([]*KeyPackage{jkp}, nil); err != nil {
		t.Fatal(err)
	}
	w, err := creator.WelcomeWithoutTree([]*KeyPackage{jkp})
	if err != nil {
		t.Fatal(err)
	}
	creator.MergePendingCommit()
	good := &treeOf{g: creator.Tree}
	data, _ := good.PathProof(7)

	for i := range data {
		src := &treeOf{g: creator.Tree, tamper: func(d []byte) []byte {
			d = bytes.Clone(d)
			d[i] ^= 0x01
			return d
		}}
		g, err := JoinGroupPartial(wireWelcome(t, w), jkp, jpriv, src, nil)
		var ve *ValidationError
		if err == nil || g != nil || !errors.As(err, &ve) || !errors.Is(err, ErrTreeProof) || ve.Section != "7.8" {
			t.Fatalf("byte %d of the path flipped: %v", i, err)
		}
	}
	// A consistent answer about the tree of the previous epoch.
	stale := &treeOf{g: func() *RatchetTree { return old }}
	if _, err := JoinGroupPartial(wireWelcome(t, w), jkp, jpriv, stale, nil); !errors.Is(err, ErrTreeProof) {
		t.Fatalf("stale tree: %v", err)
	}
	// A wrong leaf hint.
	hint := LeafIndex(3)
	if _, err := JoinGroupPartial(wireWelcome(t, w), jkp, jpriv, good, &PartialJoinOptions{Leaf: &hint}); err == nil {
		t.Fatal("joined at a leaf that is not the KeyPackage's")
	}
	g, err := JoinGroupPartial(wireWelcome(t, w), jkp, jpriv, good, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g.Self() != 7 || !bytes.Equal(g.EpochAuthenticator(), creator.EpochAuthenticator()) {
		t.Fatalf("joined at leaf %d", g.Self())
	}
	// Leaves fetched later are checked the same way. (The signer's path
	// showed every leaf of this small tree; forget one.)
	delete(g.leaves, 3)
	flipped := &treeOf{g: creator.Tree, tamper: func(d []byte) []byte { d = bytes.Clone(d); d[len(d)-40] ^= 1; return d }}
	if _, err := g.Leaf(3, flipped); !errors.Is(err, ErrTreeProof) {
		t.Fatalf("tampered leaf answer: %v", err)
	}
	other := &treeOf{g: func() *RatchetTree {
		return creator.Tree()
	}}
	wrongLeaf := &wrongLeafSource{other}
	if _, err := g.Leaf(3, wrongLeaf); !errors.Is(err, ErrTreeProof) {
		t.Fatalf("answer about another leaf: %v", err)
	}
	if ln, err := g.Leaf(3, good); err != nil || string(ln.Credential.Identity) != "m2" {
		t.Fatalf("leaf 3: %v", err)
	}

	// A source that answers about the old tree after a Commit: the
	// confirmation tag (or the path) gives it away.
	c, _, err := creator.Commit(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := creator.Tree()
	creator.MergePendingCommit()
	lying := &treeOf{g: func() *RatchetTree { return before }}
	err = g.HandleCommit(wirePublic(t, c), lying)
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("followed a Commit on the old tree: %v", err)
	}
	t.Logf("old tree after a Commit: %v", err)
	if err := g.HandleCommit(wirePublic(t, c), &treeOf{g: creator.Tree}); err != nil {
		t.Fatalf("after the lying source: %v", err)
	}
	if !bytes.Equal(g.EpochAuthenticator(), creator.EpochAuthenticator()) {
		t.Fatal("epochs differ")
	}
}

// commitAddWithoutPath makes a Commit of g that adds kp by value without
// an UpdatePath (§12.4 allows it for Adds), which mls.Group does not make.
func commitAddWithoutPath(t *testing.T, g *Group, kp *KeyPackage) *PublicMessage {
	t.Helper()
	cs := g.pub.CipherSuite()
	oldGC := g.pub.GroupContext()
	ac := &AuthenticatedContent{
		WireFormat: WireFormatPublicMessage,
		Content: FramedContent{GroupID: oldGC.GroupID, Epoch: oldGC.Epoch,
			Sender:      Sender{SenderType: SenderTypeMember, LeafIndex: g.Self()},
			ContentType: ContentTypeCommit, Commit: &Commit{Proposals: []ProposalOrRef{{Type: ProposalOrRefTypeProposal,
				Proposal: &Proposal{ProposalType: ProposalTypeAdd, Add: &Add{KeyPackage: *kp}}}}}},
	}
	if err := ac.Sign(cs, g.sigPriv, &oldGC); err != nil {
		t.Fatal(err)
	}
	tree := g.pub.Tree()
	leaf := kp.LeafNode
	tree.AddLeaf(&leaf)
	newGC := oldGC
	newGC.Epoch++
	newGC.TreeHash = tree.TreeHash()
	confirmed, err := ConfirmedTranscriptHash(cs, g.pub.InterimTranscriptHash(), ac)
	if err != nil {
		t.Fatal(err)
	}
	newGC.ConfirmedTranscriptHash = confirmed
	es, err := DeriveEpochSecrets(g.es.InitSecret, nil, nil, &newGC)
	if err != nil {
		t.Fatal(err)
	}
	ac.Auth.ConfirmationTag = es.ConfirmationTag(confirmed)
	msg, err := ProtectPublic(ac, g.es.MembershipKey, &oldGC)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// TestPartialFollowsCommitWithoutPath: for a Commit without a path, no
// HPKE context binds the new tree hash, so only the confirmation tag stands
// between the partial member and a source that answers about another
// tree. A consistent proof of the wrong tree must fail on the tag; the
// right one must be followed.
func TestPartialFollowsCommitWithoutPath(t *testing.T) {
	s := newPartialScene(t, 7, 3)
	kp, _ := partialKP(t, s.cs, "late")
	c := commitAddWithoutPath(t, s.x, kp)
	if _, err := s.joiner.Leaf(s.x.Self(), s.src); err != nil {
		t.Fatal(err)
	}
	if _, err := s.creator.HandleCommit(wirePublic(t, c)); err != nil {
		t.Fatalf("creator rejects the path-less Commit: %v", err)
	}
	s.x = nil // it cannot process its own hand-made Commit

	// The tree as it was before the Commit: a proof that verifies, of the
	// wrong tree.
	old := &treeOf{g: func() *RatchetTree { return oldTreeWithout(t, s.creator.Tree(), kp) }}
	if gc := s.joiner.GroupContext(); !bytes.Equal(old.g().TreeHash(), gc.TreeHash) {
		t.Fatal("the stale tree is not the tree of the current epoch")
	}
	err := s.joiner.HandleCommit(wirePublic(t, c), old)
	if !errors.Is(err, ErrBadConfirmationTag) {
		t.Fatalf("followed a path-less Commit on the old tree: %v", err)
	}
	if err := s.joiner.HandleCommit(wirePublic(t, c), s.src); err != nil {
		t.Fatal(err)
	}
	s.same(t)
	s.messages(t)
}

// oldTreeWithout returns tree with the leaf of kp removed again, as it was
// before an Add-only Commit without path.
func oldTreeWithout(t *testing.T, tree *RatchetTree, kp *KeyPackage) *RatchetTree {
	t.Helper()
	want := mustEncode(&kp.LeafNode)
	nodes := tree.Nodes()
	for i, ln := range tree.Leaves() {
		if bytes.Equal(mustEncode(ln), want) {
			nodes[i.node()] = nil
			// and out of every unmerged_leaves list
			for x, n := range nodes {
				if n != nil && n.Parent != nil {
					p := *n.Parent
					var keep []LeafIndex
					for _, u := range p.UnmergedLeaves {
						if u != i {
							keep = append(keep, u)
						}
					}
					p.UnmergedLeaves = keep
					nodes[x] = &Node{Parent: &p}
				}
			}
		}
	}
	for len(nodes) > 0 && nodes[len(nodes)-1] == nil {
		nodes = nodes[:len(nodes)-1]
	}
	out, err := NewRatchetTree(tree.CipherSuite(), nodes)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPartialTreeMatchesFull builds, for trees of several shapes and every
// leaf, the partial tree of the leaf's PathProof and compares what it
// computes with the whole tree: the tree hash, the filtered direct path and
// the copath resolutions; and checks that the parent-hash check of the
// direct path passes, and fails once any parent node on it carries another
// parent_hash (with the tree hash recomputed, as a dishonest committer
// would).
func TestPartialTreeMatchesFull(t *testing.T) {
	broken := 0
	for _, c := range []struct {
		n   int
		pos LeafIndex
	}{{3, 1}, {5, 2}, {9, 8}, {12, 5}, {17, 3}, {33, 20}} {
		s := newPartialScene(t, c.n, c.pos)
		if _, err := s.joiner.Commit(); err != nil { // a pending Commit changes nothing
			t.Fatal(err)
		}
		full := s.creator.Tree()
		for l := range full.LeafCount() {
			leaf := LeafIndex(l)
			pt := partialOf(t, full, leaf)
			if !bytes.Equal(pt.treeHash(), full.TreeHash()) {
				t.Fatalf("n=%d leaf %d: tree hash differs", c.n, leaf)
			}
			if full.Leaf(leaf) == nil {
				continue
			}
			steps, err := pt.filteredPath(leaf)
			if err != nil {
				t.Fatal(err)
			}
			want := full.FilteredDirectPath(leaf)
			if len(steps) != len(want) {
				t.Fatalf("n=%d leaf %d: filtered path of %d nodes, want %d", c.n, leaf, len(steps), len(want))
			}
			for k, st := range steps {
				if st.node != want[k] || fmt.Sprint(st.resolution) != fmt.Sprint(full.Resolution(st.sibling)) {
					t.Fatalf("n=%d leaf %d: step %d is node %d res %v, want node %d res %v", c.n, leaf, k, st.node, st.resolution, want[k], full.Resolution(st.sibling))
				}
			}
			if err := pt.verifyPathParentHashes(leaf); err != nil {
				t.Fatalf("n=%d leaf %d: %v", c.n, leaf, err)
			}
			// Break the parent_hash of each non-blank parent on the path.
			for _, x := range full.DirectPath(leaf) {
				p := full.Parent(x)
				if p == nil {
					continue
				}
				nodes := full.Nodes()
				q := *p
				q.ParentHash = append(bytes.Clone(p.ParentHash), 1)
				nodes[x] = &Node{Parent: &q}
				bad, err := NewRatchetTree(full.CipherSuite(), nodes)
				if err != nil {
					t.Fatal(err)
				}
				err = partialOf(t, bad, leaf).verifyPathParentHashes(leaf)
				var ve *ValidationError
				if !errors.As(err, &ve) || ve.Section != "7.9.2" {
					t.Fatalf("n=%d leaf %d: parent_hash of node %d changed: %v", c.n, leaf, x, err)
				}
				broken++
			}
		}
	}
	if broken < 50 {
		t.Fatalf("only %d broken parent hashes tried", broken)
	}
	t.Logf("%d broken parent hashes caught", broken)
}

// partialOf is the partial tree of leaf's PathProof of tree.
func partialOf(t *testing.T, tree *RatchetTree, leaf LeafIndex) *partialTree {
	t.Helper()
	p, err := tree.PathProof(leaf)
	if err != nil {
		t.Fatal(err)
	}
	data, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	q, err := readTreeProof(tree.CipherSuite(), data, tree.TreeHash(), "test")
	if err != nil {
		t.Fatal(err)
	}
	pt, err := newPartialTree(tree.CipherSuite(), q)
	if err != nil {
		t.Fatal(err)
	}
	return pt
}

// wrongLeafSource answers every leaf question about the next leaf.
type wrongLeafSource struct{ *treeOf }

func (w *wrongLeafSource) LeavesProof(leaves []LeafIndex) ([]byte, error) {
	var next []LeafIndex
	for _, l := range leaves {
		next = append(next, l+1)
	}
	return w.treeOf.LeavesProof(next)
}
