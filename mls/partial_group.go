package mls

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Members of large groups without the ratchet tree.
//
// A member of a group of thousands need not download and check the whole
// ratchet tree to take part. JoinGroupPartial joins from a Welcome whose
// GroupInfo has no ratchet_tree extension (§12.4.3.1 lets the tree come
// from elsewhere) and asks a TreeSource, typically the Delivery Service's
// tree queries, only for what it needs: the direct path and copath of its
// own leaf with their resolutions, the path of the GroupInfo signer, and
// later the leaves of the members whose messages it opens. Every answer is
// a TreeProof, and every proof is verified against the tree_hash of a
// GroupContext the member got from a signed GroupInfo and confirmed with
// its own key schedule (the confirmation tag, §8.1), or, after a Commit of
// another member, from the confirmation tag of that Commit. The source is
// trusted for nothing: a node it changes, adds or leaves out makes the
// hashes disagree, and the member refuses the answer.
//
// A PartialGroup can send and open application messages (the secret tree
// needs only the leaf count, §9), commit with an UpdatePath and no
// proposals (the new tree hash and parent hashes follow from the new path
// and the hashes of the copath subtrees, which the Commit does not
// change), and process the Commits of others whose proposals it can see.

// TreeSource answers a partial member's questions about the group's
// current ratchet tree. Its answers are encoded TreeProofs (see
// RatchetTree.PathProof and RatchetTree.LeavesProof); the member verifies
// each one against its GroupContext, so a TreeSource need not be trusted.
// The mlsds Delivery Service answers them with GetPath and with GetRoster
// (include_leaves, leaf_indices).
type TreeSource interface {
	// PathProof returns the proof of leaf's direct path, copath and their
	// resolutions in the group's current epoch.
	PathProof(leaf LeafIndex) ([]byte, error)
	// LeavesProof returns a proof that shows the given leaves of the
	// group's current epoch.
	LeavesProof(leaves []LeafIndex) ([]byte, error)
}

// PartialJoinOptions adjusts JoinGroupPartial. The zero value is usable.
type PartialJoinOptions struct {
	// PSKs holds the PSKs the Welcome may name, as for JoinGroup.
	PSKs map[string][]byte
	// Leaf, if not nil, is where the joiner looks for its leaf. It is only
	// a hint: the leaf found there must be the KeyPackage's. Without it,
	// the joiner finds its leaf below the node of the GroupInfo signer's
	// direct path that its path_secret belongs to, which works when the
	// signer is the committer and the Commit has a path.
	Leaf *LeafIndex
}

// rulePartialTreeHash is the rule a TreeProof breaks when it does not add
// up to the tree hash of the member's GroupContext.
const rulePartialTreeHash = "the tree nodes received must add up to the GroupContext's tree_hash"

// readTreeProof decodes a TreeProof and verifies it against treeHash.
func readTreeProof(cs CipherSuite, data, treeHash []byte, what string) (*TreeProof, error) {
	p := new(TreeProof)
	if err := p.UnmarshalBinary(data); err != nil {
		return nil, &ValidationError{Rule: rulePartialTreeHash, Section: "7.8", Err: fmt.Errorf("%s: %w: %w", what, ErrTreeProof, err)}
	}
	if err := VerifyTreeProof(cs, p, treeHash); err != nil {
		return nil, &ValidationError{Rule: rulePartialTreeHash, Section: "7.8", Err: fmt.Errorf("%s: %w", what, err)}
	}
	return p, nil
}

// PartialGroup is one member's state of a group in the current epoch when
// the member holds only part of the ratchet tree. See JoinGroupPartial.
//
// A PartialGroup is not safe for concurrent use.
type PartialGroup struct {
	gc      GroupContext
	interim []byte
	tree    *partialTree
	leaves  map[LeafIndex]*LeafNode // leaves of this epoch, checked against the tree hash
	signed  map[LeafIndex]bool      // leaves whose signature was checked too (§7.3)
	keys    *TreePrivateKey
	es      *EpochSecrets
	st      *SecretTree
	sigPriv []byte
	sigKey  []byte // sigPriv as signing takes it fastest
	removed bool
	pending *partialPending
}

// partialPending is a Commit this member made and has not merged yet.
type partialPending struct {
	wire []byte
	next *PartialGroup
}

// newPartialGroup assembles the state of an epoch. The cached leaves are
// those the tree shows.
func newPartialGroup(gc GroupContext, interim []byte, tree *partialTree, keys *TreePrivateKey, es *EpochSecrets, sigPriv []byte) (*PartialGroup, error) {
	if !bytes.Equal(tree.treeHash(), gc.TreeHash) {
		return nil, errors.New("mls: internal error: partial tree does not match the GroupContext")
	}
	for x, nk := range keys.keys {
		if !bytes.Equal(tree.encryptionKey(x), nk.pub) {
			return nil, fmt.Errorf("mls: internal error: private key of node %d does not match the tree", x)
		}
	}
	st, err := es.SecretTree(tree.leafCount())
	if err != nil {
		return nil, err
	}
	g := &PartialGroup{gc: gc, interim: interim, tree: tree, leaves: map[LeafIndex]*LeafNode{}, signed: map[LeafIndex]bool{},
		keys: keys, es: es, st: st, sigPriv: bytes.Clone(sigPriv)}
	tree.shownLeaves(func(i LeafIndex, ln *LeafNode) { g.leaves[i] = ln })
	return g, nil
}

// JoinGroupPartial joins a group from a Welcome addressed to kp
// (§12.4.3.1) without the ratchet tree. It decrypts the group secrets and
// the GroupInfo and asks src for what it needs, checking every answer
// against the GroupContext's tree_hash:
//
//   - without opts.Leaf, the path of the GroupInfo signer, to find its own
//     leaf (see PartialJoinOptions.Leaf) and the signer's key;
//   - its own path, unless the signer's path already shows all of it;
//   - with opts.Leaf, the signer's leaf, unless its own path shows it.
//
// It then checks that its leaf is the KeyPackage's, the GroupInfo
// signature, the parent-hash chain of its direct path (§7.9.2), applies
// the path_secret to its direct path (§7.4), runs the key schedule and
// verifies the confirmation tag (§8.1), which binds the GroupContext and
// so the tree hash. opts may be nil.
//
// Unlike JoinGroup, it does not check the rest of the tree (leaf
// signatures, key uniqueness, parent hashes elsewhere): it does not have
// it. It relies on the members who built the tree, whose signed GroupInfo
// and key schedule vouch for its hash. Leaves it uses later (Leaf, Open)
// have their signatures checked then.
func JoinGroupPartial(w *Welcome, kp *KeyPackage, priv *KeyPackagePrivate, src TreeSource, opts *PartialJoinOptions) (*PartialGroup, error) {
	if opts == nil {
		opts = &PartialJoinOptions{}
	}
	ref, err := kp.Ref()
	if err != nil {
		return nil, err
	}
	gs, gi, err := openWelcome(w, ref, priv.InitPriv, opts.PSKs)
	if err != nil {
		return nil, err
	}
	gc := cloneGroupContext(&gi.GroupContext)
	cs := gc.CipherSuite
	if gc.Version != ProtocolVersionMLS10 {
		return nil, invalidf("12.4.3.1", "GroupContext has protocol version %d; only mls10 (1) is supported", gc.Version)
	}
	if kp.CipherSuite != cs {
		return nil, invalidf("12.4.3.1", "KeyPackage is for cipher suite %d, the group uses %d", uint16(kp.CipherSuite), uint16(cs))
	}
	if err := checkOwnSupport(&kp.LeafNode, gc.Extensions); err != nil {
		return nil, err
	}
	if t, dup := duplicateExtension(gi.Extensions); dup {
		return nil, invalidf("13.4", "GroupInfo extensions list type %d twice", uint16(t))
	}
	if len(gi.ConfirmationTag) != cs.HashSize() {
		return nil, invalidf("6.1", "GroupInfo confirmation_tag has %d bytes; a MAC of %s has %d", len(gi.ConfirmationTag), cs, cs.HashSize())
	}

	// Without a hint, the signer's path locates the joiner (and shows
	// the signer's leaf).
	var sp *TreeProof
	self := LeafIndex(0)
	if opts.Leaf != nil {
		self = *opts.Leaf
	} else {
		data, err := src.PathProof(gi.Signer)
		if err != nil {
			return nil, fmt.Errorf("mls: fetching the path of GroupInfo signer %d: %w", gi.Signer, err)
		}
		if sp, err = readTreeProof(cs, data, gc.TreeHash, fmt.Sprintf("path of GroupInfo signer %d", gi.Signer)); err != nil {
			return nil, err
		}
		if self, err = locateJoiner(cs, sp, gi.Signer, gs.PathSecret, &kp.LeafNode); err != nil {
			return nil, err
		}
	}

	// The joiner's own path, unless the signer's path shows all of it
	// already (as it does when the resolutions are long lists of leaves).
	var op *TreeProof
	if sp != nil {
		if _, err := sp.Path(self); err == nil {
			op = sp
		}
	}
	if op == nil {
		data, err := src.PathProof(self)
		if err != nil {
			return nil, fmt.Errorf("mls: fetching the path of leaf %d: %w", self, err)
		}
		if op, err = readTreeProof(cs, data, gc.TreeHash, fmt.Sprintf("path of leaf %d", self)); err != nil {
			return nil, err
		}
	}
	own, err := op.Leaf(self)
	if err != nil {
		return nil, err
	}
	if own == nil || !bytes.Equal(mustEncode(own), mustEncode(&kp.LeafNode)) {
		return nil, invalidf("12.4.3.1", "the ratchet tree must contain the new member's leaf from its KeyPackage (leaf %d does not)", self)
	}

	// The signer's leaf checks the GroupInfo signature; fetch it alone
	// unless a proof at hand shows it.
	if sp == nil && op.lookup(gi.Signer.node()) != nil {
		sp = op
	}
	if sp == nil {
		data, err := src.LeavesProof([]LeafIndex{gi.Signer})
		if err != nil {
			return nil, fmt.Errorf("mls: fetching the leaf of GroupInfo signer %d: %w", gi.Signer, err)
		}
		if sp, err = readTreeProof(cs, data, gc.TreeHash, fmt.Sprintf("leaf of GroupInfo signer %d", gi.Signer)); err != nil {
			return nil, err
		}
	}
	signer, err := sp.Leaf(gi.Signer)
	if err != nil {
		return nil, err
	}
	if signer == nil {
		return nil, invalidf("12.4.3.1", "GroupInfo signer %d is not a member of the ratchet tree", gi.Signer)
	}
	if err := gi.VerifySignature(signer.SignatureKey); err != nil {
		return nil, &ValidationError{Rule: "GroupInfo signature does not verify with the signer's leaf", Section: "12.4.3.1", Err: err}
	}

	tree, err := newPartialTree(cs, op)
	if err != nil {
		return nil, err
	}
	if err := tree.verifyPathParentHashes(self); err != nil {
		return nil, err
	}
	keys, err := NewTreePrivateKey(cs, self, priv.EncryptionPriv)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(keys.keys[self.node()].pub, own.EncryptionKey) {
		return nil, errors.New("mls: the KeyPackage's encryption private key does not match its leaf")
	}
	if gs.PathSecret != nil {
		if err := implantPartial(keys, tree, gs.PathSecret); err != nil {
			return nil, err
		}
	}

	// §12.4.3.1: the key schedule from the joiner secret, checked by the
	// confirmation tag, which binds the GroupContext and so the tree hash
	// every proof was checked against.
	list := make([]PSK, len(gs.PSKs))
	for i := range gs.PSKs {
		list[i] = PSK{ID: gs.PSKs[i], Secret: opts.PSKs[pskLookupKey(&gs.PSKs[i])]}
	}
	pskSecret, err := PSKSecret(cs, list)
	if err != nil {
		return nil, err
	}
	ks, err := NewKeySchedule(cs, gs.JoinerSecret, pskSecret)
	if err != nil {
		return nil, err
	}
	es, err := ks.EpochSecrets(&gc)
	if err != nil {
		return nil, err
	}
	if err := es.VerifyConfirmationTag(gc.ConfirmedTranscriptHash, gi.ConfirmationTag); err != nil {
		return nil, err
	}
	interim, err := InterimTranscriptHash(cs, gc.ConfirmedTranscriptHash, gi.ConfirmationTag)
	if err != nil {
		return nil, err
	}
	g, err := newPartialGroup(gc, interim, tree, keys, es, priv.SignaturePriv)
	if err != nil {
		return nil, err
	}
	for i, ln := range sp.Leaves() {
		g.leaves[i] = ln
	}
	return g, nil
}

// locateJoiner finds the joiner's leaf in the resolution of the copath child, seen from the signer, of the node of the
// signer's direct path whose public key the path_secret derives (§12.4.3.1:
// the path_secret is that of the lowest common ancestor of the committer
// and the joiner, and a new leaf is in the resolution of the subtree it
// was added to, directly or as an unmerged leaf).
func locateJoiner(cs CipherSuite, sp *TreeProof, signer LeafIndex, pathSecret []byte, ln *LeafNode) (LeafIndex, error) {
	if pathSecret == nil {
		return 0, errors.New("mls: the Welcome carries no path_secret, so the joiner's leaf cannot be found from the committer's path; pass PartialJoinOptions.Leaf")
	}
	nk, err := deriveNodeKey(cs, pathSecret)
	if err != nil {
		return 0, err
	}
	path, err := sp.Path(signer)
	if err != nil {
		return 0, err
	}
	want := mustEncode(ln)
	for k, d := range path.DirectPath {
		if d.Node == nil || d.Node.Parent == nil || !bytes.Equal(d.Node.Parent.EncryptionKey, nk.pub) {
			continue
		}
		for _, r := range path.Copath[k].Resolution {
			if r.Index.isLeaf() && r.Node.Leaf != nil && bytes.Equal(mustEncode(r.Node.Leaf), want) {
				return r.Index.leaf(), nil
			}
		}
		return 0, invalidf("12.4.3.1", "the new member's leaf must be below the node its path_secret belongs to (node %d)", d.Index)
	}
	return 0, invalid("12.4.3.1", "the path_secret belongs to no node of the GroupInfo signer's direct path; if the signer is not the committer, pass PartialJoinOptions.Leaf")
}

// implantPartial is TreePrivateKey.Implant on a partial tree: pathSecret
// belongs to a node of the joiner's filtered direct path, and the secrets
// of the nodes above it follow (§7.4). The committer's filtered direct
// path and the joiner's share every node from their lowest common ancestor
// up, so the joiner's own path is enough.
func implantPartial(k *TreePrivateKey, tree *partialTree, pathSecret []byte) error {
	steps, err := tree.filteredPath(k.self)
	if err != nil {
		return err
	}
	nk, err := deriveNodeKey(k.cs, pathSecret)
	if err != nil {
		return err
	}
	start := slices.IndexFunc(steps, func(s partialStep) bool { return bytes.Equal(tree.encryptionKey(s.node), nk.pub) })
	if start < 0 {
		return invalid("12.4.3.1", "path_secret must belong to a node of the new member's filtered direct path")
	}
	derived, _, err := deriveChain(k.cs, pathSecret, len(steps)-start)
	if err != nil {
		return err
	}
	for i, s := range steps[start:] {
		if !bytes.Equal(tree.encryptionKey(s.node), derived[i].pub) {
			return &ValidationError{Rule: ruleTreeKEMPublicKey, Section: "12.4.3.1", Err: fmt.Errorf("node %d", s.node)}
		}
	}
	for i, s := range steps[start:] {
		k.keys[s.node] = derived[i]
	}
	return nil
}

// GroupID returns the group's ID.
func (g *PartialGroup) GroupID() []byte { return bytes.Clone(g.gc.GroupID) }

// Epoch returns the current epoch.
func (g *PartialGroup) Epoch() uint64 { return g.gc.Epoch }

// Self returns the member's leaf index.
func (g *PartialGroup) Self() LeafIndex { return g.keys.Self() }

// LeafCount returns the number of leaf positions of the group's tree.
func (g *PartialGroup) LeafCount() uint32 { return g.tree.leafCount() }

// GroupContext returns the GroupContext of the current epoch.
func (g *PartialGroup) GroupContext() GroupContext { return cloneGroupContext(&g.gc) }

// EpochAuthenticator returns the epoch_authenticator of the current epoch
// (§8.7).
func (g *PartialGroup) EpochAuthenticator() []byte { return bytes.Clone(g.es.EpochAuthenticator) }

// Export returns MLS-Exporter(label, context, length) of the current
// epoch (§8.5).
func (g *PartialGroup) Export(label string, context []byte, length int) ([]byte, error) {
	return g.es.Export(label, context, length)
}

// KnownLeaves returns the indices of the leaves the member holds, verified,
// for the current epoch, in order.
func (g *PartialGroup) KnownLeaves() []LeafIndex { return slices.Sorted(maps.Keys(g.leaves)) }

func (g *PartialGroup) checkActive() error {
	if g.removed {
		return ErrNotMember
	}
	return nil
}

// Leaf returns the leaf at i in the current epoch, nil if it is blank. A
// leaf the member does not hold yet is fetched from src and checked
// against the tree hash (§7.8); every leaf Leaf returns has had its
// signature checked (§7.3). Fetched leaves are kept for the epoch.
func (g *PartialGroup) Leaf(i LeafIndex, src TreeSource) (*LeafNode, error) {
	if uint32(i) >= g.tree.leafCount() {
		return nil, &ValidationError{Rule: ruleLeafIndex, Section: "7.8", Err: fmt.Errorf("leaf %d, tree has %d leaves", i, g.tree.leafCount())}
	}
	if ln, ok := g.leaves[i]; ok {
		if ln != nil && !g.signed[i] {
			if err := ln.VerifySignature(g.gc.CipherSuite, g.gc.GroupID, i); err != nil {
				return nil, &ValidationError{Rule: ruleLeafSignature, Section: "7.3", Err: fmt.Errorf("leaf %d: %w", i, err)}
			}
			g.signed[i] = true
		}
		return ln, nil
	}
	if src == nil {
		return nil, fmt.Errorf("mls: leaf %d is not known and no TreeSource was given", i)
	}
	data, err := src.LeavesProof([]LeafIndex{i})
	if err != nil {
		return nil, fmt.Errorf("mls: fetching leaf %d: %w", i, err)
	}
	p, err := readTreeProof(g.gc.CipherSuite, data, g.gc.TreeHash, fmt.Sprintf("leaf %d", i))
	if err != nil {
		return nil, err
	}
	ln, err := p.Leaf(i)
	if err != nil || ln == nil {
		return nil, err
	}
	if err := ln.VerifySignature(g.gc.CipherSuite, g.gc.GroupID, i); err != nil {
		return nil, &ValidationError{Rule: ruleLeafSignature, Section: "7.3", Err: fmt.Errorf("leaf %d: %w", i, err)}
	}
	g.leaves[i], g.signed[i] = ln, true
	return ln, nil
}

// Seal encrypts application data as a PrivateMessage of the current epoch
// (§6.3), signed by the member.
func (g *PartialGroup) Seal(data, authenticatedData []byte) (*PrivateMessage, error) {
	if err := g.checkActive(); err != nil {
		return nil, err
	}
	if g.sigKey == nil {
		g.sigKey = g.gc.CipherSuite.signingKey(g.sigPriv)
	}
	return sealApplication(g.gc, g.keys.Self(), g.sigKey, g.es.SenderDataSecret, g.st, data, authenticatedData)
}

// Open decrypts an application PrivateMessage of the current epoch and
// verifies its signature (§6.3) with the sender's leaf, which it fetches
// from src (checked against the tree hash) if the member does not hold it
// yet. src may be nil if the sender's leaf is known.
func (g *PartialGroup) Open(m *PrivateMessage, src TreeSource) (sender LeafIndex, data []byte, err error) {
	if err := g.checkActive(); err != nil {
		return 0, nil, err
	}
	gc := g.gc
	if !bytes.Equal(m.GroupID, gc.GroupID) {
		return 0, nil, invalid("6", "message is for another group (group_id differs)")
	}
	if m.Epoch != gc.Epoch {
		return 0, nil, &ValidationError{Rule: "message epoch must equal the group's epoch", Section: "6.3",
			Err: &EpochMismatchError{Got: m.Epoch, Current: gc.Epoch}}
	}
	if m.ContentType != ContentTypeApplication {
		return 0, nil, errors.New("mls: Open handles application messages only")
	}
	var leafErr error
	var leaf *LeafNode
	ac, lease, err := unprotectPrivate(m, g.es.SenderDataSecret, g.st, func(i LeafIndex) bool {
		leaf, leafErr = g.Leaf(i, src)
		return leaf != nil
	})
	if leafErr != nil {
		if lease != nil {
			lease.discard()
		}
		return 0, nil, leafErr
	}
	if err != nil {
		return 0, nil, err
	}
	sender = ac.Content.Sender.LeafIndex
	if leaf == nil {
		lease.discard()
		return 0, nil, invalidf("6.3.2", "sender %d is not a member", sender)
	}
	// The ratchet moves only once the signature verified (§15.3).
	if err := ac.VerifySignature(gc.CipherSuite, leaf.SignatureKey, &gc); err != nil {
		lease.discard()
		return 0, nil, &ValidationError{Rule: "message signature does not verify with the sender's key", Section: "6.1", Err: err}
	}
	lease.commit()
	return sender, slices.Clone(ac.Content.Application), nil
}

// Commit creates a Commit with an UpdatePath and no proposals (§12.4),
// sent as a PublicMessage: a fresh leaf key and fresh path secrets for
// the member's filtered direct path, each encrypted to the resolution of
// its copath child (§7.6), and parent hashes (§7.9) computed from the new
// keys and the tree hashes of the copath subtrees.
//
// The group stays in the current epoch until MergePendingCommit (or
// HandleCommit of this very message); making another Commit replaces the
// pending one.
func (g *PartialGroup) Commit() (*PublicMessage, error) {
	if err := g.checkActive(); err != nil {
		return nil, err
	}
	cs := g.gc.CipherSuite
	self := g.keys.Self()
	oldGC := g.gc
	t := g.tree
	steps, err := t.filteredPath(self)
	if err != nil {
		return nil, err
	}
	first := make([]byte, cs.HashSize())
	rand.Read(first)
	derived, commitSecret, err := deriveChain(cs, first, len(steps))
	if err != nil {
		return nil, err
	}
	leafPriv, leafPub, err := cs.GenerateKEMKeyPair()
	if err != nil {
		return nil, err
	}
	own := t.at(self.node())
	if own == nil || own.leaf == nil {
		return nil, fmt.Errorf("mls: leaf %d of the committer is blank", self)
	}
	path := &UpdatePath{LeafNode: *own.leaf, Nodes: make([]UpdatePathNode, len(steps))}
	for i := range steps {
		path.Nodes[i].EncryptionKey = derived[i].pub
	}

	// §7.9: top down, each node's parent hash covers the node above it
	// and the tree hash of its copath child, which the merge leaves as is
	// and which is the original sibling tree hash since the merged node
	// has no unmerged leaves.
	h := t.hasher()
	stored := make([][]byte, len(steps))
	var above []byte
	for k := len(steps) - 1; k >= 0; k-- {
		stored[k] = above
		sib := t.subtreeHash(steps[k].sibling)
		if above = h.parentHash(path.Nodes[k].EncryptionKey, above, sib); sib == nil || above == nil {
			return nil, invalid("7.9", ruleTreeEncode)
		}
	}
	ln := &path.LeafNode
	ln.EncryptionKey = leafPub
	ln.LeafNodeSource = LeafNodeSourceCommit
	ln.Lifetime = nil
	ln.Signature = nil
	ln.ParentHash = above
	if err := ln.Sign(cs, g.sigPriv, oldGC.GroupID, self); err != nil {
		return nil, err
	}

	// §7.5: merge the path: the direct path is blanked, the filtered
	// direct path gets the new keys, the leaf is replaced.
	onPath := make(map[NodeIndex]int, len(steps))
	for k, s := range steps {
		onPath[s.node] = k
	}
	newLeaf := new(LeafNode)
	*newLeaf = path.LeafNode
	merged, err := t.withPath(self, func(x NodeIndex, n *partialNode) {
		if x.isLeaf() {
			n.leaf = newLeaf
			return
		}
		n.parent = nil
		if k, ok := onPath[x]; ok {
			n.parent = &ParentNode{EncryptionKey: path.Nodes[k].EncryptionKey, ParentHash: stored[k]}
		}
	})
	if err != nil {
		return nil, err
	}
	provisional := oldGC
	provisional.Epoch++
	provisional.TreeHash = merged.treeHash()
	context, err := provisional.MarshalBinary()
	if err != nil {
		return nil, err
	}
	// §7.6: the copath subtrees are not changed by the merge, so their
	// resolutions are those of the current tree.
	for i, s := range steps {
		for _, r := range s.resolution {
			kem, ct, err := cs.EncryptWithLabel(t.encryptionKey(r), labelUpdatePathNode, context, derived[i].pathSecret)
			if err != nil {
				return nil, fmt.Errorf("mls: encrypting path secret to node %d: %w", r, err)
			}
			path.Nodes[i].EncryptedPathSecret = append(path.Nodes[i].EncryptedPathSecret, HPKECiphertext{KEMOutput: kem, Ciphertext: ct})
		}
	}

	ac := &AuthenticatedContent{
		WireFormat: WireFormatPublicMessage,
		Content: FramedContent{GroupID: oldGC.GroupID, Epoch: oldGC.Epoch,
			Sender:      Sender{SenderType: SenderTypeMember, LeafIndex: self},
			ContentType: ContentTypeCommit, Commit: &Commit{Path: path}},
	}
	if err := ac.Sign(cs, g.sigPriv, &oldGC); err != nil {
		return nil, err
	}
	confirmed, err := ConfirmedTranscriptHash(cs, g.interim, ac)
	if err != nil {
		return nil, err
	}
	newGC := provisional
	newGC.ConfirmedTranscriptHash = confirmed
	es, err := DeriveEpochSecrets(g.es.InitSecret, commitSecret, nil, &newGC)
	if err != nil {
		return nil, err
	}
	ac.Auth.ConfirmationTag = es.ConfirmationTag(confirmed)
	msg, err := ProtectPublic(ac, g.es.MembershipKey, &oldGC)
	if err != nil {
		return nil, err
	}
	interim, err := InterimTranscriptHash(cs, confirmed, ac.Auth.ConfirmationTag)
	if err != nil {
		return nil, err
	}
	keys := &TreePrivateKey{cs: cs, self: self, keys: map[NodeIndex]*nodeKey{self.node(): {priv: leafPriv, pub: leafPub}}}
	for i, s := range steps {
		keys.keys[s.node] = derived[i]
	}
	next, err := newPartialGroup(newGC, interim, merged, keys, es, g.sigPriv)
	if err != nil {
		return nil, err
	}
	// The Commit changes no leaf but the committer's.
	for i, l := range g.leaves {
		if _, ok := next.leaves[i]; !ok && i != self {
			next.leaves[i], next.signed[i] = l, g.signed[i]
		}
	}
	g.pending = &partialPending{wire: mustEncode(msg), next: next}
	return msg, nil
}

// MergePendingCommit moves the group to the epoch of the Commit it made
// last, once the Delivery Service has accepted it.
func (g *PartialGroup) MergePendingCommit() error {
	if g.pending == nil {
		return errors.New("mls: no pending Commit to merge")
	}
	*g = *g.pending.next
	return nil
}

// DiscardPendingCommit forgets the Commit made last.
func (g *PartialGroup) DiscardPendingCommit() { g.pending = nil }

// GroupInfo returns a GroupInfo of the current epoch signed by this member
// (§12.4.3) with the external_pub extension and without the tree, which
// the member does not have.
func (g *PartialGroup) GroupInfo() (*GroupInfo, error) {
	if err := g.checkActive(); err != nil {
		return nil, err
	}
	_, extPub, err := g.es.ExternalKeyPair()
	if err != nil {
		return nil, err
	}
	gi := &GroupInfo{
		GroupContext:    cloneGroupContext(&g.gc),
		Extensions:      Extensions{{ExtensionType: ExtensionTypeExternalPub, ExtensionData: mustEncode(&ExternalPub{PublicKey: extPub})}},
		ConfirmationTag: g.es.ConfirmationTag(g.gc.ConfirmedTranscriptHash),
		Signer:          g.keys.Self(),
	}
	if err := gi.Sign(g.sigPriv); err != nil {
		return nil, err
	}
	return gi, nil
}

// HandleCommit processes a Commit sent as a PublicMessage in the current
// epoch. A Commit of this member that is its pending one is merged. For a
// Commit of another member, the member checks the membership tag (§6.2)
// and the signature with the committer's leaf (which it must hold or be
// able to fetch from src for the current epoch), then asks src for its own
// path in the new epoch. It cannot compute the new tree hash itself, so it
// takes the one the answer adds up to, decrypts the UpdatePath with the
// resolution the answer shows (§7.5), runs the key schedule with the
// resulting GroupContext, and accepts only if the Commit's confirmation
// tag verifies (§12.4.2): the tag binds the GroupContext, and so the tree
// hash, the committer computed from the whole tree. On error the group is
// unchanged.
//
// Only proposals sent by value, of type Add, Remove and Update, are
// supported: the member cannot see proposals by reference it was not
// sent. If the Commit removes this member, the group becomes unusable and
// HandleCommit returns ErrNotMember.
func (g *PartialGroup) HandleCommit(msg *PublicMessage, src TreeSource) error {
	if err := g.checkActive(); err != nil {
		return err
	}
	c := &msg.Content
	self := g.keys.Self()
	if c.Sender.SenderType == SenderTypeMember && c.Sender.LeafIndex == self {
		if g.pending != nil && bytes.Equal(mustEncode(msg), g.pending.wire) {
			*g = *g.pending.next
			return nil
		}
		return errors.New("mls: a Commit from this member's leaf that is not its pending Commit")
	}
	oldGC := g.gc
	cs := oldGC.CipherSuite
	if c.ContentType != ContentTypeCommit || c.Commit == nil {
		return errors.New("mls: HandleCommit handles Commits only")
	}
	if !bytes.Equal(c.GroupID, oldGC.GroupID) {
		return invalid("6", "message is for another group (group_id differs)")
	}
	if c.Epoch != oldGC.Epoch {
		return &ValidationError{Rule: "message epoch must equal the group's epoch", Section: "6",
			Err: &EpochMismatchError{Got: c.Epoch, Current: oldGC.Epoch}}
	}
	if c.Sender.SenderType != SenderTypeMember {
		return errors.New("mls: a partial member processes Commits of members only")
	}
	ac, err := UnprotectPublic(msg, g.es.MembershipKey, &oldGC)
	if err != nil {
		return err
	}
	sender := c.Sender.LeafIndex
	senderLeaf, err := g.Leaf(sender, src)
	if err != nil {
		return fmt.Errorf("mls: the committer's leaf of epoch %d: %w", oldGC.Epoch, err)
	}
	if senderLeaf == nil {
		return invalidf("6.1", "Commit sender %d is not a member", sender)
	}
	if err := ac.VerifySignature(cs, senderLeaf.SignatureKey, &oldGC); err != nil {
		return &ValidationError{Rule: "message signature does not verify with the sender's key", Section: "6.1", Err: err}
	}
	var added []*LeafNode
	needPath := len(c.Commit.Proposals) == 0
	for i, p := range c.Commit.Proposals {
		if p.Type != ProposalOrRefTypeProposal || p.Proposal == nil {
			return fmt.Errorf("mls: proposal %d of the Commit is sent by reference, which a partial member cannot resolve", i)
		}
		switch p.Proposal.ProposalType {
		case ProposalTypeAdd:
			added = append(added, &p.Proposal.Add.KeyPackage.LeafNode)
		case ProposalTypeRemove:
			needPath = true
			if p.Proposal.Remove.Removed == self {
				g.removed, g.pending = true, nil
				return ErrNotMember
			}
		case ProposalTypeUpdate:
			needPath = true
		default:
			return fmt.Errorf("mls: proposal %d of the Commit has type %d, which a partial member does not process", i, p.Proposal.ProposalType)
		}
	}
	if needPath && c.Commit.Path == nil {
		return invalid("12.4", "a Commit with no proposals, or with a Remove or Update, must carry an UpdatePath")
	}
	confirmed, err := ConfirmedTranscriptHash(cs, g.interim, ac)
	if err != nil {
		return err
	}

	// The new epoch's tree as far as this member needs it. Its hash is
	// only a claim until the confirmation tag verifies.
	data, err := src.PathProof(self)
	if err != nil {
		return fmt.Errorf("mls: fetching the path of leaf %d for epoch %d: %w", self, oldGC.Epoch+1, err)
	}
	p := new(TreeProof)
	if err := p.UnmarshalBinary(data); err != nil {
		return &ValidationError{Rule: rulePartialTreeHash, Section: "7.8", Err: fmt.Errorf("path of leaf %d: %w: %w", self, ErrTreeProof, err)}
	}
	claimed := copyProofTree(cs, p).treeHash()
	if claimed == nil {
		return invalid("7.8", ruleTreeEncode)
	}
	if err := VerifyTreeProof(cs, p, claimed); err != nil {
		return err
	}
	tree, err := newPartialTree(cs, p)
	if err != nil {
		return err
	}
	own := tree.at(self.node())
	if own == nil || own.leaf == nil || !bytes.Equal(mustEncode(own.leaf), mustEncode(g.leaves[self])) {
		return invalid("12.4.2", "a Commit that does not remove this member must leave its leaf as it is")
	}
	newGC := oldGC
	newGC.Epoch++
	newGC.TreeHash = claimed
	newGC.ConfirmedTranscriptHash = confirmed
	keys := g.keys.Clone()
	var commitSecret []byte
	if c.Commit.Path != nil {
		provisional := newGC
		provisional.ConfirmedTranscriptHash = oldGC.ConfirmedTranscriptHash
		if commitSecret, err = decryptPathPartial(keys, tree, sender, c.Commit.Path, &provisional, added); err != nil {
			return err
		}
	}
	// §7.5: drop the keys of nodes the Commit blanked or replaced.
	for x, nk := range keys.keys {
		if !bytes.Equal(tree.encryptionKey(x), nk.pub) {
			delete(keys.keys, x)
		}
	}
	es, err := DeriveEpochSecrets(g.es.InitSecret, commitSecret, nil, &newGC)
	if err != nil {
		return err
	}
	if err := es.VerifyConfirmationTag(confirmed, msg.Auth.ConfirmationTag); err != nil {
		return err
	}
	if err := tree.verifyPathParentHashes(self); err != nil {
		return err
	}
	interim, err := InterimTranscriptHash(cs, confirmed, msg.Auth.ConfirmationTag)
	if err != nil {
		return err
	}
	next, err := newPartialGroup(newGC, interim, tree, keys, es, g.sigPriv)
	if err != nil {
		return err
	}
	*g = *next
	return nil
}

// copyProofTree copies the shape and nodes of a proof that is not
// verified yet, to compute the tree hash it claims.
func copyProofTree(cs CipherSuite, p *TreeProof) *partialTree {
	q := *p
	q.verified = []byte{}
	t, _ := newPartialTree(cs, &q)
	return t
}

// decryptPathPartial is TreePrivateKey.DecryptUpdatePath on the partial
// tree of the receiver (the tree after the Commit): the committer's
// filtered direct path and the receiver's share the nodes from their
// lowest common ancestor up, so the receiver knows which UpdatePathNode is
// for it (the one of the ancestor, counted from the top) and which
// resolution the ciphertexts follow (that of the ancestor's child on the
// receiver's side, without the new members, §7.6).
func decryptPathPartial(k *TreePrivateKey, tree *partialTree, sender LeafIndex, path *UpdatePath, gc *GroupContext, added []*LeafNode) ([]byte, error) {
	self := k.self
	if sender == self {
		return nil, invalid("7.5", ruleTreeKEMSelfSender)
	}
	if uint32(sender) >= tree.leafCount() {
		return nil, &ValidationError{Rule: ruleLeafIndex, Section: "7.5", Err: fmt.Errorf("sender %d, tree has %d leaves", sender, tree.leafCount())}
	}
	lca := commonAncestor(sender.node(), self.node())
	steps, err := tree.filteredPath(self)
	if err != nil {
		return nil, err
	}
	start := slices.IndexFunc(steps, func(s partialStep) bool { return s.node == lca })
	if start < 0 {
		return nil, &ValidationError{Rule: ruleTreeKEMNotCovered, Section: "7.5", Err: fmt.Errorf("leaf %d, sender %d", self, sender)}
	}
	above := len(steps) - start
	pos := len(path.Nodes) - above
	if pos < 0 {
		return nil, &ValidationError{Rule: rulePathLength, Section: "7.6",
			Err: fmt.Errorf("path has %d nodes, but %d nodes of the sender's filtered direct path are at or above node %d", len(path.Nodes), above, lca)}
	}
	child := lca.left()
	if !child.isAncestorOf(self.node()) {
		child = lca.right()
	}
	res, err := tree.resolution(child)
	if err != nil {
		return nil, err
	}
	newMember := func(r NodeIndex) bool {
		n := tree.at(r)
		if !r.isLeaf() || n == nil || n.leaf == nil {
			return false
		}
		enc := mustEncode(n.leaf)
		return slices.ContainsFunc(added, func(a *LeafNode) bool { return bytes.Equal(mustEncode(a), enc) })
	}
	res = slices.DeleteFunc(res, newMember)
	cts := path.Nodes[pos].EncryptedPathSecret
	if len(cts) != len(res) {
		return nil, &ValidationError{Rule: ruleTreeKEMCiphertexts, Section: "7.6",
			Err: fmt.Errorf("node %d has %d ciphertexts, resolution of node %d has %d nodes", lca, len(cts), child, len(res))}
	}
	context, err := gc.MarshalBinary()
	if err != nil {
		return nil, err
	}
	for j, r := range res {
		nk := k.keys[r]
		if nk == nil || !bytes.Equal(nk.pub, tree.encryptionKey(r)) {
			continue
		}
		secret, err := k.cs.DecryptWithLabel(nk.priv, labelUpdatePathNode, context, cts[j].KEMOutput, cts[j].Ciphertext)
		if err != nil {
			return nil, &ValidationError{Rule: ruleTreeKEMDecrypt, Section: "7.6", Err: fmt.Errorf("ciphertext %d of node %d for node %d: %w", j, lca, r, err)}
		}
		derived, commitSecret, err := deriveChain(k.cs, secret, above)
		if err != nil {
			return nil, err
		}
		for i := range above {
			if !bytes.Equal(derived[i].pub, path.Nodes[pos+i].EncryptionKey) {
				return nil, &ValidationError{Rule: ruleTreeKEMPublicKey, Section: "7.5", Err: fmt.Errorf("node %d", steps[start+i].node)}
			}
		}
		for _, x := range self.node().directPath(tree.leafCount()) {
			if x.isAncestorOf(lca) {
				delete(k.keys, x)
			}
		}
		for i := range above {
			k.keys[steps[start+i].node] = derived[i]
		}
		return commitSecret, nil
	}
	return nil, &ValidationError{Rule: ruleTreeKEMNoKey, Section: "7.5", Err: fmt.Errorf("leaf %d, copath node %d", self, child)}
}
