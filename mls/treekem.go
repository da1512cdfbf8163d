package mls

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"maps"
	"slices"

	"golang.org/x/crypto/cryptobyte"
)

// TreeKEM (§7.4-§7.6): deriving node keys from path secrets, creating an
// UpdatePath as a committer and decrypting one as a receiver.

// Rules reported in *ValidationError values by this file.
const (
	ruleTreeKEMNotCovered  = "receiver must be in the subtree of a copath node of the sender's filtered direct path"
	ruleTreeKEMCiphertexts = "UpdatePathNode must carry one ciphertext per node of the copath node's resolution, without new members"
	ruleTreeKEMNoKey       = "receiver must hold the private key of a node in the copath node's resolution"
	ruleTreeKEMDecrypt     = "encrypted path secret must decrypt"
	ruleTreeKEMPublicKey   = "public keys derived from the path secrets must match the UpdatePath"
	ruleTreeKEMSelfSender  = "a member does not decrypt its own UpdatePath"
)

const labelUpdatePathNode = "UpdatePathNode"

// TreePrivateKey is the private half of a member's view of the ratchet
// tree (§4, §7.4): the HPKE private key of its own leaf and of each parent
// node on its direct path that it knows, with the path secret each parent
// key came from. The tree invariant says a member knows the private keys of
// exactly those nodes.
//
// A TreePrivateKey changes only through its methods, and each of them
// leaves it unchanged when it returns an error. It is not safe for
// concurrent use; Clone gives an independent copy.
type TreePrivateKey struct {
	cs   CipherSuite
	self LeafIndex
	keys map[NodeIndex]*nodeKey
}

// nodeKey is an HPKE key pair of a node, with the path secret it was
// derived from (nil for a leaf, whose key is random).
type nodeKey struct {
	priv, pub  []byte
	pathSecret []byte
}

// NewTreePrivateKey returns the private state of the member at leaf self
// that knows only its leaf's HPKE private key leafPriv (the encryption_key
// of its LeafNode), as after joining from a KeyPackage.
func NewTreePrivateKey(cs CipherSuite, self LeafIndex, leafPriv []byte) (*TreePrivateKey, error) {
	pub, err := cs.KEMPublicKey(leafPriv)
	if err != nil {
		return nil, err
	}
	k := &TreePrivateKey{cs: cs, self: self, keys: map[NodeIndex]*nodeKey{}}
	k.keys[self.node()] = &nodeKey{priv: bytes.Clone(leafPriv), pub: pub}
	return k, nil
}

// CipherSuite returns the suite the keys belong to.
func (k *TreePrivateKey) CipherSuite() CipherSuite { return k.cs }

// Self returns the member's leaf index.
func (k *TreePrivateKey) Self() LeafIndex { return k.self }

// LeafPrivateKey returns the HPKE private key of the member's leaf.
func (k *TreePrivateKey) LeafPrivateKey() []byte {
	if nk := k.keys[k.self.node()]; nk != nil {
		return bytes.Clone(nk.priv)
	}
	return nil
}

// PrivateKey returns the HPKE private key the member holds for node x, or
// nil if it holds none.
func (k *TreePrivateKey) PrivateKey(x NodeIndex) []byte {
	if nk := k.keys[x]; nk != nil {
		return bytes.Clone(nk.priv)
	}
	return nil
}

// PathSecret returns the path secret of the parent node x, or nil if the
// member does not know it.
func (k *TreePrivateKey) PathSecret(x NodeIndex) []byte {
	if nk := k.keys[x]; nk != nil {
		return bytes.Clone(nk.pathSecret)
	}
	return nil
}

// PathSecretFor returns the path secret a committer sends to a new member
// at leaf joiner in its Welcome (§12.4.3.1): the one of the lowest common
// ancestor of the committer's leaf and the joiner's. It returns nil if the
// member does not know it, for example when the Commit has no path.
func (k *TreePrivateKey) PathSecretFor(joiner LeafIndex) []byte {
	return k.PathSecret(commonAncestor(k.self.node(), joiner.node()))
}

// Clone returns an independent copy of k.
func (k *TreePrivateKey) Clone() *TreePrivateKey {
	c := &TreePrivateKey{cs: k.cs, self: k.self, keys: maps.Clone(k.keys)}
	return c
}

// SetPathSecret records pathSecret as the path secret of the parent node x
// on the member's direct path, and the key pair derived from it (§7.4). It
// does not check the key against a tree; Check does.
func (k *TreePrivateKey) SetPathSecret(x NodeIndex, pathSecret []byte) error {
	if x.isLeaf() || !x.isAncestorOf(k.self.node()) {
		return fmt.Errorf("mls: node %d is not a parent on the direct path of leaf %d", x, k.self)
	}
	nk, err := deriveNodeKey(k.cs, pathSecret)
	if err != nil {
		return err
	}
	k.keys[x] = nk
	return nil
}

// Check reports whether every key of k matches the public key of its node
// in tree, and the member's leaf is present, so that k is a correct
// private view of tree.
func (k *TreePrivateKey) Check(tree *RatchetTree) error {
	if tree.CipherSuite() != k.cs {
		return fmt.Errorf("mls: private keys are for %v, tree is %v", k.cs, tree.CipherSuite())
	}
	if _, ok := k.keys[k.self.node()]; !ok {
		return fmt.Errorf("mls: private keys have no key for leaf %d", k.self)
	}
	for _, x := range slices.Sorted(maps.Keys(k.keys)) {
		if !bytes.Equal(tree.EncryptionKey(x), k.keys[x].pub) {
			return fmt.Errorf("mls: private key of node %d does not match the tree's public key", x)
		}
	}
	return nil
}

// Prune forgets every key whose node in tree no longer carries the
// matching public key, as after proposals blank or replace nodes (§7.5:
// outdated key pairs are deleted).
func (k *TreePrivateKey) Prune(tree *RatchetTree) {
	for x, nk := range k.keys {
		if !bytes.Equal(tree.EncryptionKey(x), nk.pub) {
			delete(k.keys, x)
		}
	}
}

// SetLeafPrivateKey replaces the HPKE private key of the member's leaf, as
// when an Update proposal of the member is committed (§12.1.2).
func (k *TreePrivateKey) SetLeafPrivateKey(leafPriv []byte) error {
	pub, err := k.cs.KEMPublicKey(leafPriv)
	if err != nil {
		return err
	}
	k.keys[k.self.node()] = &nodeKey{priv: bytes.Clone(leafPriv), pub: pub}
	return nil
}

// deriveNodeKey derives the key pair of a node from its path secret (§7.4):
// node_secret = DeriveSecret(path_secret, "node") and
// (node_priv, node_pub) = KEM.DeriveKeyPair(node_secret).
func deriveNodeKey(cs CipherSuite, pathSecret []byte) (*nodeKey, error) {
	nodeSecret, err := cs.DeriveSecret(pathSecret, "node")
	if err != nil {
		return nil, err
	}
	priv, pub, err := cs.DeriveKeyPair(nodeSecret)
	if err != nil {
		return nil, err
	}
	return &nodeKey{priv: priv, pub: pub, pathSecret: bytes.Clone(pathSecret)}, nil
}

// Implant sets the path secret of a new member (§12.4.3.1): pathSecret is
// the path secret, from the Welcome's GroupSecrets, of the lowest common
// ancestor of the member's leaf and the committer's leaf sender. Implant
// derives the secrets of the nodes above it on the committer's filtered
// direct path, checks each derived public key against tree (the group's
// tree after the Commit), and returns the commit secret.
func (k *TreePrivateKey) Implant(tree *RatchetTree, sender LeafIndex, pathSecret []byte) (commitSecret []byte, err error) {
	if sender == k.self {
		return nil, invalid("12.4.3.1", ruleTreeKEMSelfSender)
	}
	steps := tree.filteredPath(sender)
	lca := commonAncestor(sender.node(), k.self.node())
	start := slices.IndexFunc(steps, func(s pathStep) bool { return s.node == lca })
	if start < 0 {
		return nil, invalidf("12.4.3.1", "path_secret must belong to a node of the committer's filtered direct path (node %d is not)", lca)
	}
	keys := make([]NodeIndex, 0, len(steps)-start)
	for _, s := range steps[start:] {
		keys = append(keys, s.node)
	}
	derived, commitSecret, err := deriveChain(k.cs, pathSecret, len(keys))
	if err != nil {
		return nil, err
	}
	for i, x := range keys {
		if !bytes.Equal(tree.EncryptionKey(x), derived[i].pub) {
			return nil, &ValidationError{Rule: ruleTreeKEMPublicKey, Section: "12.4.3.1", Err: fmt.Errorf("node %d", x)}
		}
	}
	for i, x := range keys {
		k.keys[x] = derived[i]
	}
	return commitSecret, nil
}

// deriveChain derives n node keys from the path secret of the first node,
// each path secret following from the one below it (§7.4), and the commit
// secret derived from the last one (§8). With n = 0, the commit secret is
// derived from first directly.
func deriveChain(cs CipherSuite, first []byte, n int) (keys []*nodeKey, next []byte, err error) {
	secret := first
	keys = make([]*nodeKey, n)
	for i := range n {
		if keys[i], err = deriveNodeKey(cs, secret); err != nil {
			return nil, nil, err
		}
		if secret, err = cs.DeriveSecret(secret, "path"); err != nil {
			return nil, nil, err
		}
	}
	if n == 0 {
		if secret, err = cs.DeriveSecret(secret, "path"); err != nil {
			return nil, nil, err
		}
	}
	return keys, secret, nil
}

// resolutionExcluding returns the resolution of x without the leaves in
// exclude (§7.6: new members added by the Commit receive nothing).
func resolutionExcluding(tree *RatchetTree, x NodeIndex, exclude []LeafIndex) []NodeIndex {
	res := tree.Resolution(x)
	if len(exclude) == 0 {
		return res
	}
	return slices.DeleteFunc(res, func(r NodeIndex) bool {
		return r.isLeaf() && slices.Contains(exclude, r.leaf())
	})
}

// CreateUpdatePath makes the UpdatePath of a Commit sent by the member of
// k (§7.5, §7.6, §12.4.2) and applies it to tree.
//
// tree must be the group's tree with the Commit's proposals applied; on
// success it holds the merged path. leaf gives the content of the
// committer's new LeafNode (signature key, credential, capabilities,
// extensions); CreateUpdatePath sets a fresh encryption key, the commit
// source, the parent hash and a signature with sigPriv, and does not
// modify *leaf. gc is the provisional GroupContext of the new epoch
// (§12.4.2); CreateUpdatePath sets gc.TreeHash to the hash of the merged
// tree and encrypts the path secrets with gc as context. exclude lists the
// leaves added by the Commit, which get no ciphertexts.
//
// On success k holds the new leaf key and path keys, and the returned
// commit secret feeds the key schedule. On error, tree, gc and k are
// unchanged.
func (k *TreePrivateKey) CreateUpdatePath(tree *RatchetTree, leaf *LeafNode, sigPriv []byte, gc *GroupContext, exclude []LeafIndex) (path *UpdatePath, commitSecret []byte, err error) {
	return k.createUpdatePath(tree, leaf, sigPriv, gc, exclude, nil)
}

// createUpdatePath is CreateUpdatePath with an optional first path secret,
// for tests; nil draws it at random.
func (k *TreePrivateKey) createUpdatePath(tree *RatchetTree, leaf *LeafNode, sigPriv []byte, gc *GroupContext, exclude []LeafIndex, first []byte) (*UpdatePath, []byte, error) {
	cs := k.cs
	if tree.CipherSuite() != cs || gc.CipherSuite != cs {
		return nil, nil, fmt.Errorf("mls: private keys are for %v, tree is %v, group context is %v", cs, tree.CipherSuite(), gc.CipherSuite)
	}
	if tree.Leaf(k.self) == nil {
		return nil, nil, fmt.Errorf("mls: leaf %d of the committer is blank", k.self)
	}
	steps := tree.filteredPath(k.self)
	if first == nil {
		first = make([]byte, cs.HashSize())
		rand.Read(first)
	}
	derived, commitSecret, err := deriveChain(cs, first, len(steps))
	if err != nil {
		return nil, nil, err
	}
	leafPriv, leafPub, err := cs.GenerateKEMKeyPair()
	if err != nil {
		return nil, nil, err
	}

	path := &UpdatePath{LeafNode: *leaf, Nodes: make([]UpdatePathNode, len(steps))}
	for i := range steps {
		path.Nodes[i].EncryptionKey = derived[i].pub
	}
	ln := &path.LeafNode
	ln.EncryptionKey = leafPub
	ln.LeafNodeSource = LeafNodeSourceCommit
	ln.Lifetime = nil
	ln.Signature = nil
	if ln.ParentHash, err = tree.PathParentHash(k.self, path); err != nil {
		return nil, nil, err
	}
	if err := ln.Sign(cs, sigPriv, gc.GroupID, k.self); err != nil {
		return nil, nil, err
	}

	merged := tree.Clone()
	if err := merged.MergeUpdatePath(k.self, path); err != nil {
		return nil, nil, err
	}
	provisional := *gc
	provisional.TreeHash = merged.TreeHash()
	context, err := provisional.MarshalBinary()
	if err != nil {
		return nil, nil, err
	}
	// §7.6: each path secret goes to every node of the resolution of the
	// copath child, without the new members.
	for i, s := range steps {
		for _, r := range resolutionExcluding(merged, s.sibling, exclude) {
			kem, ct, err := cs.EncryptWithLabel(merged.EncryptionKey(r), labelUpdatePathNode, context, derived[i].pathSecret)
			if err != nil {
				return nil, nil, fmt.Errorf("mls: encrypting path secret to node %d: %w", r, err)
			}
			path.Nodes[i].EncryptedPathSecret = append(path.Nodes[i].EncryptedPathSecret, HPKECiphertext{KEMOutput: kem, Ciphertext: ct})
		}
	}

	keys := map[NodeIndex]*nodeKey{k.self.node(): {priv: leafPriv, pub: leafPub}}
	for i, s := range steps {
		keys[s.node] = derived[i]
	}
	*tree = *merged
	gc.TreeHash = provisional.TreeHash
	k.keys = keys
	return path, commitSecret, nil
}

// DecryptUpdatePath decrypts the path secret the UpdatePath of a Commit
// from leaf sender carries for the member of k (§7.5), derives the path
// secrets above it, checks the derived public keys against the path, and
// returns the commit secret.
//
// tree must be the group's tree after the Commit's proposals and after
// MergeUpdatePath of path; gc is the provisional GroupContext whose
// TreeHash is that tree's hash (§12.4.2); exclude lists the leaves added by
// the Commit. On success k forgets its keys of the nodes the path replaced
// and holds the new ones; on error it is unchanged.
func (k *TreePrivateKey) DecryptUpdatePath(tree *RatchetTree, sender LeafIndex, path *UpdatePath, gc *GroupContext, exclude []LeafIndex) (commitSecret []byte, err error) {
	pathSecret, start, err := k.decryptPathSecret(tree, sender, path, gc, exclude)
	if err != nil {
		return nil, err
	}
	steps := tree.filteredPath(sender)
	derived, commitSecret, err := deriveChain(k.cs, pathSecret, len(steps)-start)
	if err != nil {
		return nil, err
	}
	for i, s := range steps[start:] {
		if !bytes.Equal(derived[i].pub, path.Nodes[start+i].EncryptionKey) {
			return nil, &ValidationError{Rule: ruleTreeKEMPublicKey, Section: "7.5", Err: fmt.Errorf("node %d", s.node)}
		}
	}
	keys := maps.Clone(k.keys)
	for _, x := range tree.DirectPath(sender) {
		delete(keys, x)
	}
	for i, s := range steps[start:] {
		keys[s.node] = derived[i]
	}
	k.keys = keys
	return commitSecret, nil
}

// decryptPathSecret finds the node of the sender's filtered direct path
// whose copath child covers the member, and decrypts the path secret of
// that node with the key of the member's node in the child's resolution.
// It returns the secret and the node's position on the filtered path.
func (k *TreePrivateKey) decryptPathSecret(tree *RatchetTree, sender LeafIndex, path *UpdatePath, gc *GroupContext, exclude []LeafIndex) ([]byte, int, error) {
	if sender == k.self {
		return nil, 0, invalid("7.5", ruleTreeKEMSelfSender)
	}
	if uint32(sender) >= tree.LeafCount() || uint32(k.self) >= tree.LeafCount() {
		return nil, 0, &ValidationError{Rule: ruleLeafIndex, Section: "7.5", Err: fmt.Errorf("sender %d, receiver %d, tree has %d leaves", sender, k.self, tree.LeafCount())}
	}
	steps := tree.filteredPath(sender)
	if len(steps) != len(path.Nodes) {
		return nil, 0, &ValidationError{Rule: rulePathLength, Section: "7.6",
			Err: fmt.Errorf("path has %d nodes, filtered direct path of leaf %d has %d", len(path.Nodes), sender, len(steps))}
	}
	me := k.self.node()
	start := slices.IndexFunc(steps, func(s pathStep) bool { return s.sibling.isAncestorOf(me) })
	if start < 0 {
		return nil, 0, &ValidationError{Rule: ruleTreeKEMNotCovered, Section: "7.5", Err: fmt.Errorf("leaf %d, sender %d", k.self, sender)}
	}
	res := resolutionExcluding(tree, steps[start].sibling, exclude)
	cts := path.Nodes[start].EncryptedPathSecret
	if len(cts) != len(res) {
		return nil, 0, &ValidationError{Rule: ruleTreeKEMCiphertexts, Section: "7.6",
			Err: fmt.Errorf("node %d has %d ciphertexts, resolution of node %d has %d nodes", steps[start].node, len(cts), steps[start].sibling, len(res))}
	}
	for j, r := range res {
		nk := k.keys[r]
		if nk == nil || !bytes.Equal(nk.pub, tree.EncryptionKey(r)) {
			continue
		}
		context, err := gc.MarshalBinary()
		if err != nil {
			return nil, 0, err
		}
		secret, err := k.cs.DecryptWithLabel(nk.priv, labelUpdatePathNode, context, cts[j].KEMOutput, cts[j].Ciphertext)
		if err != nil {
			return nil, 0, &ValidationError{Rule: ruleTreeKEMDecrypt, Section: "7.6", Err: fmt.Errorf("ciphertext %d of node %d for node %d: %w", j, steps[start].node, r, err)}
		}
		return secret, start, nil
	}
	return nil, 0, &ValidationError{Rule: ruleTreeKEMNoKey, Section: "7.5", Err: fmt.Errorf("leaf %d, copath node %d", k.self, steps[start].sibling)}
}

// marshal writes k as
//
//	struct {
//	    uint16 cipher_suite;
//	    uint32 self;
//	    struct { uint32 node; opaque priv<V>; opaque pub<V>; opaque path_secret<V>; } keys<V>;
//	}
//
// with keys in node order, for Group.MarshalBinary.
func (k *TreePrivateKey) marshal(b *cryptobyte.Builder) {
	b.AddUint16(uint16(k.cs))
	b.AddUint32(uint32(k.self))
	addVector(b, func(b *cryptobyte.Builder) {
		for _, x := range slices.Sorted(maps.Keys(k.keys)) {
			nk := k.keys[x]
			b.AddUint32(uint32(x))
			addOpaque(b, nk.priv)
			addOpaque(b, nk.pub)
			addOpaque(b, nk.pathSecret)
		}
	})
}

func (k *TreePrivateKey) unmarshal(s *cryptobyte.String) bool {
	*k = TreePrivateKey{keys: map[NodeIndex]*nodeKey{}}
	if !s.ReadUint16((*uint16)(&k.cs)) || !s.ReadUint32((*uint32)(&k.self)) {
		return false
	}
	return readList(s, func(s *cryptobyte.String) bool {
		var x uint32
		nk := new(nodeKey)
		if !s.ReadUint32(&x) || !readOpaque(s, &nk.priv) || !readOpaque(s, &nk.pub) || !readOpaque(s, &nk.pathSecret) {
			return false
		}
		if len(nk.pathSecret) == 0 {
			nk.pathSecret = nil
		}
		k.keys[NodeIndex(x)] = nk
		return true
	})
}
