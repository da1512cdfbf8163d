package mls

import (
	"bytes"
	"errors"
	"testing"
)

type treeKEMVector struct {
	CipherSuite             CipherSuite `json:"cipher_suite"`
	GroupID                 hexBytes    `json:"group_id"`
	Epoch                   uint64      `json:"epoch"`
	ConfirmedTranscriptHash hexBytes    `json:"confirmed_transcript_hash"`
	RatchetTree             hexBytes    `json:"ratchet_tree"`
	LeavesPrivate           []struct {
		Index          LeafIndex `json:"index"`
		EncryptionPriv hexBytes  `json:"encryption_priv"`
		SignaturePriv  hexBytes  `json:"signature_priv"`
		PathSecrets    []struct {
			Node       NodeIndex `json:"node"`
			PathSecret hexBytes  `json:"path_secret"`
		} `json:"path_secrets"`
	} `json:"leaves_private"`
	UpdatePaths []struct {
		Sender        LeafIndex  `json:"sender"`
		UpdatePath    hexBytes   `json:"update_path"`
		PathSecrets   []hexBytes `json:"path_secrets"`
		CommitSecret  hexBytes   `json:"commit_secret"`
		TreeHashAfter hexBytes   `json:"tree_hash_after"`
	} `json:"update_paths"`
}

// TestTreeKEMVectorsPrivate runs the private half of treekem.json. Each
// leaves_private entry must be a correct private view of the tree. For each
// update path, every other member decrypts its path secret (the one of the
// lowest common ancestor with the sender) and the commit secret, and then
// the sender makes a fresh UpdatePath on the same tree that every other
// member decrypts to the sender's commit secret. One count per update path.
func TestTreeKEMVectorsPrivate(t *testing.T) {
	var vectors []treeKEMVector
	loadVectors(t, "treekem.json", &vectors)
	count := newVectorCount("treekem.json (private)")
	decryptions, roundTrips := 0, 0
	for n, v := range vectors {
		if !v.CipherSuite.Supported() {
			for range v.UpdatePaths {
				count.skip("cipher suite not implemented")
			}
			continue
		}
		cs := v.CipherSuite
		tree, err := UnmarshalRatchetTree(cs, v.RatchetTree)
		if err != nil {
			t.Fatalf("entry %d: ratchet_tree: %v", n, err)
		}
		privs := map[LeafIndex]*TreePrivateKey{}
		sigPrivs := map[LeafIndex][]byte{}
		ok := true
		for _, lp := range v.LeavesPrivate {
			k, err := NewTreePrivateKey(cs, lp.Index, lp.EncryptionPriv)
			if err != nil {
				t.Errorf("entry %d leaf %d: %v", n, lp.Index, err)
				ok = false
				continue
			}
			for _, ps := range lp.PathSecrets {
				if err := k.SetPathSecret(ps.Node, ps.PathSecret); err != nil {
					t.Errorf("entry %d leaf %d node %d: %v", n, lp.Index, ps.Node, err)
					ok = false
				}
			}
			if err := k.Check(tree); err != nil {
				t.Errorf("entry %d leaf %d: private keys do not match the tree: %v", n, lp.Index, err)
				ok = false
			}
			pub, err := cs.SignaturePublicKey(lp.SignaturePriv)
			if err != nil || !bytes.Equal(pub, tree.Leaf(lp.Index).SignatureKey) {
				t.Errorf("entry %d leaf %d: signature_priv does not match the leaf (%v)", n, lp.Index, err)
				ok = false
			}
			privs[lp.Index], sigPrivs[lp.Index] = k, lp.SignaturePriv
		}
		for p, up := range v.UpdatePaths {
			if !ok {
				t.Errorf("entry %d path %d: not run, private state is wrong", n, p)
				continue
			}
			var path UpdatePath
			if err := decode(up.UpdatePath, "UpdatePath", path.unmarshal); err != nil {
				t.Fatalf("entry %d path %d: %v", n, p, err)
			}
			after := tree.Clone()
			if err := after.MergeUpdatePath(up.Sender, &path); err != nil {
				t.Fatalf("entry %d path %d: merge: %v", n, p, err)
			}
			gc := GroupContext{Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: v.GroupID, Epoch: v.Epoch,
				TreeHash: after.TreeHash(), ConfirmedTranscriptHash: v.ConfirmedTranscriptHash}
			pass := true
			for leaf, k := range privs {
				if leaf == up.Sender {
					continue
				}
				k = k.Clone()
				got, err := k.DecryptUpdatePath(after, up.Sender, &path, &gc, nil)
				if err != nil {
					t.Errorf("entry %d path %d leaf %d: %v", n, p, leaf, err)
					pass = false
					continue
				}
				decryptions++
				if !bytes.Equal(got, up.CommitSecret) {
					t.Errorf("entry %d path %d leaf %d: commit_secret %x, want %x", n, p, leaf, got, up.CommitSecret)
					pass = false
				}
				want := up.PathSecrets[leaf]
				if ps := k.PathSecret(commonAncestor(leaf.node(), up.Sender.node())); !bytes.Equal(ps, want) {
					t.Errorf("entry %d path %d leaf %d: path secret %x, want %x", n, p, leaf, ps, want)
					pass = false
				}
				if err := k.Check(after); err != nil {
					t.Errorf("entry %d path %d leaf %d: keys after decryption: %v", n, p, leaf, err)
					pass = false
				}
			}
			if !roundTrip(t, cs, v.GroupID, v.Epoch, v.ConfirmedTranscriptHash, tree, up.Sender, privs, sigPrivs[up.Sender]) {
				pass = false
			} else {
				roundTrips++
			}
			if pass {
				count.pass()
			}
		}
	}
	t.Logf("treekem.json (private): %d path decryptions by receivers, %d create/decrypt round trips", decryptions, roundTrips)
	count.report(t)
}

// roundTrip has sender create a fresh UpdatePath on tree and checks that
// every other member in privs decrypts it to the same commit secret and
// ends with keys that match the new tree.
func roundTrip(t *testing.T, cs CipherSuite, groupID []byte, epoch uint64, cth []byte, tree *RatchetTree, sender LeafIndex, privs map[LeafIndex]*TreePrivateKey, sigPriv []byte) bool {
	t.Helper()
	committer := privs[sender]
	if committer == nil || sigPriv == nil {
		t.Errorf("sender %d has no private state", sender)
		return false
	}
	committer = committer.Clone()
	newTree := tree.Clone()
	gc := GroupContext{Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: groupID, Epoch: epoch + 1, ConfirmedTranscriptHash: cth}
	template := *tree.Leaf(sender)
	path, commitSecret, err := committer.CreateUpdatePath(newTree, &template, sigPriv, &gc, nil)
	if err != nil {
		t.Errorf("sender %d: CreateUpdatePath: %v", sender, err)
		return false
	}
	if !bytes.Equal(gc.TreeHash, newTree.TreeHash()) {
		t.Errorf("sender %d: provisional tree hash does not match the merged tree", sender)
		return false
	}
	if err := newTree.Verify(groupID); err != nil {
		t.Errorf("sender %d: tree after own path does not verify: %v", sender, err)
		return false
	}
	if err := committer.Check(newTree); err != nil {
		t.Errorf("sender %d: committer keys: %v", sender, err)
		return false
	}
	// A receiver merges the path itself from the encoding on the wire.
	var wire UpdatePath
	if err := decode(mustEncode(path), "UpdatePath", wire.unmarshal); err != nil {
		t.Errorf("sender %d: UpdatePath does not round trip: %v", sender, err)
		return false
	}
	recvTree := tree.Clone()
	if err := recvTree.MergeUpdatePath(sender, &wire); err != nil {
		t.Errorf("sender %d: receiver merge: %v", sender, err)
		return false
	}
	if !bytes.Equal(recvTree.TreeHash(), newTree.TreeHash()) {
		t.Errorf("sender %d: receiver's tree differs from committer's", sender)
		return false
	}
	for leaf, k := range privs {
		if leaf == sender {
			continue
		}
		k = k.Clone()
		got, err := k.DecryptUpdatePath(recvTree, sender, &wire, &gc, nil)
		if err != nil {
			t.Errorf("sender %d leaf %d: round trip: %v", sender, leaf, err)
			return false
		}
		if !bytes.Equal(got, commitSecret) {
			t.Errorf("sender %d leaf %d: round trip commit secret differs", sender, leaf)
			return false
		}
		if err := k.Check(recvTree); err != nil {
			t.Errorf("sender %d leaf %d: round trip keys: %v", sender, leaf, err)
			return false
		}
		ca := commonAncestor(leaf.node(), sender.node())
		if !bytes.Equal(k.PathSecret(ca), committer.PathSecretFor(leaf)) {
			t.Errorf("sender %d leaf %d: receiver and committer disagree on the path secret of node %d", sender, leaf, ca)
			return false
		}
	}
	return true
}

// TestTreeKEMRejects checks that a receiver rejects an UpdatePath with a
// wrong context, a tampered ciphertext, or a public key that does not
// follow from the path secrets, and stays unchanged.
func TestTreeKEMRejects(t *testing.T) {
	var vectors []treeKEMVector
	loadVectors(t, "treekem.json", &vectors)
	var v *treeKEMVector
	for i := range vectors {
		if vectors[i].CipherSuite == MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 && len(vectors[i].LeavesPrivate) >= 4 {
			v = &vectors[i]
			break
		}
	}
	if v == nil {
		t.Fatal("no suite-1 treekem.json entry with 4 members")
	}
	cs := v.CipherSuite
	tree, err := UnmarshalRatchetTree(cs, v.RatchetTree)
	if err != nil {
		t.Fatal(err)
	}
	keyOf := func(i int) *TreePrivateKey {
		lp := v.LeavesPrivate[i]
		k, err := NewTreePrivateKey(cs, lp.Index, lp.EncryptionPriv)
		if err != nil {
			t.Fatal(err)
		}
		for _, ps := range lp.PathSecrets {
			if err := k.SetPathSecret(ps.Node, ps.PathSecret); err != nil {
				t.Fatal(err)
			}
		}
		return k
	}
	sender, receiver := keyOf(0), keyOf(len(v.LeavesPrivate)-1)
	newTree := tree.Clone()
	gc := GroupContext{Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: v.GroupID, Epoch: v.Epoch + 1}
	template := *tree.Leaf(sender.Self())
	path, _, err := sender.CreateUpdatePath(newTree, &template, v.LeavesPrivate[0].SignaturePriv, &gc, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := receiver.Clone()
	unchanged := func() {
		t.Helper()
		if err := receiver.Check(tree); err != nil || len(receiver.keys) != len(before.keys) {
			t.Fatalf("receiver state changed after a failed decryption: %v", err)
		}
	}

	wrongGC := gc
	wrongGC.Epoch++
	_, err = receiver.DecryptUpdatePath(newTree, sender.Self(), path, &wrongGC, nil)
	expectRule(t, err, ruleTreeKEMDecrypt, "7.6")
	unchanged()

	// The receiver's ciphertext is in the last path node (the root's copath
	// child covers the last leaf).
	last := len(path.Nodes) - 1
	tampered := *path
	tampered.Nodes = append([]UpdatePathNode(nil), path.Nodes...)
	tampered.Nodes[last].EncryptedPathSecret = nil
	_, err = receiver.DecryptUpdatePath(newTree, sender.Self(), &tampered, &gc, nil)
	expectRule(t, err, ruleTreeKEMCiphertexts, "7.6")
	unchanged()

	tampered.Nodes[last] = path.Nodes[last]
	tampered.Nodes[last].EncryptionKey = path.Nodes[0].EncryptionKey
	_, err = receiver.DecryptUpdatePath(newTree, sender.Self(), &tampered, &gc, nil)
	expectRule(t, err, ruleTreeKEMPublicKey, "7.5")
	unchanged()

	_, err = sender.DecryptUpdatePath(newTree, sender.Self(), path, &gc, nil)
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Rule != ruleTreeKEMSelfSender {
		t.Fatalf("decrypting own path: got %v", err)
	}

	// The genuine path still decrypts.
	if _, err := receiver.DecryptUpdatePath(newTree, sender.Self(), path, &gc, nil); err != nil {
		t.Fatal(err)
	}
}

// TestTreeKEMExcludesJoiners checks that new members added by the Commit
// get no ciphertext (§7.6), and that they can derive the path from the
// secret the committer gives them (§12.4.3.1).
func TestTreeKEMExcludesJoiners(t *testing.T) {
	cs := MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	groupID := []byte("treekem joiners")
	sigPrivs := map[LeafIndex][]byte{}
	encPrivs := map[LeafIndex][]byte{}
	newLeaf := func() (*LeafNode, []byte, []byte) {
		encPriv, encPub, err := cs.GenerateKEMKeyPair()
		if err != nil {
			t.Fatal(err)
		}
		sigPriv, sigPub, err := cs.GenerateSignatureKeyPair()
		if err != nil {
			t.Fatal(err)
		}
		ln := &LeafNode{EncryptionKey: encPub, SignatureKey: sigPub,
			Credential:     Credential{CredentialType: CredentialTypeBasic, Identity: sigPub[:8]},
			Capabilities:   Capabilities{Versions: []ProtocolVersion{ProtocolVersionMLS10}, CipherSuites: []CipherSuite{cs}, Credentials: []CredentialType{CredentialTypeBasic}},
			LeafNodeSource: LeafNodeSourceKeyPackage, Lifetime: &Lifetime{NotBefore: 0, NotAfter: 1 << 62}}
		if err := ln.Sign(cs, sigPriv, nil, 0); err != nil {
			t.Fatal(err)
		}
		return ln, encPriv, sigPriv
	}
	ln, encPriv, sigPriv := newLeaf()
	tree, err := NewRatchetTree(cs, []*Node{{Leaf: ln}})
	if err != nil {
		t.Fatal(err)
	}
	sigPrivs[0], encPrivs[0] = sigPriv, encPriv
	alice, err := NewTreePrivateKey(cs, 0, encPriv)
	if err != nil {
		t.Fatal(err)
	}
	// Alice alone commits to an empty path: the commit secret still comes
	// out, and nothing is encrypted.
	gc := GroupContext{Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: groupID, Epoch: 1}
	template := *ln
	path, cs0, err := alice.CreateUpdatePath(tree, &template, sigPriv, &gc, nil)
	if err != nil || len(path.Nodes) != 0 || len(cs0) != cs.HashSize() {
		t.Fatalf("lone commit: %d nodes, commit secret %x, %v", len(path.Nodes), cs0, err)
	}
	// Alice adds five members and commits with a path.
	var joiners []LeafIndex
	for range 5 {
		ln, encPriv, sigPriv := newLeaf()
		i := tree.AddLeaf(ln)
		joiners = append(joiners, i)
		sigPrivs[i], encPrivs[i] = sigPriv, encPriv
	}
	gc = GroupContext{Version: ProtocolVersionMLS10, CipherSuite: cs, GroupID: groupID, Epoch: 2}
	template = *tree.Leaf(0)
	path, commitSecret, err := alice.CreateUpdatePath(tree, &template, sigPrivs[0], &gc, joiners)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range path.Nodes {
		if len(n.EncryptedPathSecret) != 0 {
			t.Fatalf("path node %d has %d ciphertexts for new members only", i, len(n.EncryptedPathSecret))
		}
	}
	if err := tree.Verify(groupID); err != nil {
		t.Fatal(err)
	}
	keys := map[LeafIndex]*TreePrivateKey{0: alice}
	for _, j := range joiners {
		k, err := NewTreePrivateKey(cs, j, encPrivs[j])
		if err != nil {
			t.Fatal(err)
		}
		got, err := k.Implant(tree, 0, alice.PathSecretFor(j))
		if err != nil {
			t.Fatalf("joiner %d: %v", j, err)
		}
		if !bytes.Equal(got, commitSecret) {
			t.Fatalf("joiner %d: commit secret differs", j)
		}
		if err := k.Check(tree); err != nil {
			t.Fatalf("joiner %d: %v", j, err)
		}
		keys[j] = k
	}
	// Now leaf 3 commits; everyone else decrypts, Alice included.
	sender := joiners[2]
	gc.Epoch = 3
	template = *tree.Leaf(sender)
	path, commitSecret, err = keys[sender].CreateUpdatePath(tree, &template, sigPrivs[sender], &gc, nil)
	if err != nil {
		t.Fatal(err)
	}
	for leaf, k := range keys {
		if leaf == sender {
			continue
		}
		got, err := k.DecryptUpdatePath(tree, sender, path, &gc, nil)
		if err != nil || !bytes.Equal(got, commitSecret) {
			t.Fatalf("leaf %d: commit secret %x, want %x (%v)", leaf, got, commitSecret, err)
		}
		if err := k.Check(tree); err != nil {
			t.Fatalf("leaf %d: %v", leaf, err)
		}
	}
}
