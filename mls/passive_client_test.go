package mls

import (
	"bytes"
	"fmt"
	"testing"
)

// The passive-client vectors describe a client that joins by Welcome and
// then only receives. A PublicGroupState plays that client without its
// secrets: it is bootstrapped from the GroupInfo in the Welcome (decrypted
// with the vector's init_priv) and the ratchet tree, and then fed every
// proposal and Commit through HandleProposal and HandleCommit.
//
// What the vectors let us compare: they give the epoch_authenticator of
// each epoch, a secret a DS cannot compute. Two comparisons follow.
//
//   - Public: every handshake message is signed over the GroupContext of
//     its epoch (§6.1, member and new_member_commit senders), so a message
//     of epoch N verifying against the state's GroupContext N proves that
//     the state's tree hash, confirmed transcript hash, extensions and
//     epoch equal the members'. That covers each epoch followed by another
//     handshake message; the last epoch of an entry has none.
//   - With the joiner's secrets, which the vectors supply: the test (not
//     the library) plays the member next to the DS state, decrypting each
//     UpdatePath with its keys (§7.6) and running the key schedule (§8)
//     over the GroupContext the DS state computed. The resulting
//     epoch_authenticator must equal the vector's, and the Commit's
//     confirmation tag and every membership tag must verify: the two
//     checks the DS cannot do. A GroupContext differing in any byte would
//     change all three, so every epoch, the last included, is compared.

type passiveVector struct {
	CipherSuite  CipherSuite `json:"cipher_suite"`
	ExternalPSKs []struct {
		PSKID hexBytes `json:"psk_id"`
		PSK   hexBytes `json:"psk"`
	} `json:"external_psks"`
	KeyPackage                hexBytes `json:"key_package"`
	SignaturePriv             hexBytes `json:"signature_priv"`
	EncryptionPriv            hexBytes `json:"encryption_priv"`
	InitPriv                  hexBytes `json:"init_priv"`
	Welcome                   hexBytes `json:"welcome"`
	RatchetTree               hexBytes `json:"ratchet_tree"`
	InitialEpochAuthenticator hexBytes `json:"initial_epoch_authenticator"`
	Epochs                    []struct {
		Proposals          []hexBytes `json:"proposals"`
		Commit             hexBytes   `json:"commit"`
		EpochAuthenticator hexBytes   `json:"epoch_authenticator"`
	} `json:"epochs"`
}

const skipPrivateHandshake = "PrivateMessage handshake: needs member secrets (issue 4)"

func TestPassiveClientHandlingCommit(t *testing.T) {
	runPassiveVectors(t, "passive-client-handling-commit.json")
}

func TestPassiveClientRandom(t *testing.T) {
	runPassiveVectors(t, "passive-client-random.json")
}

func TestPassiveClientWelcome(t *testing.T) {
	runPassiveVectors(t, "passive-client-welcome.json")
}

// passiveStats counts the epochs of a vector file by how they were
// checked.
type passiveStats struct {
	epochs        int // epochs processed
	confirmed     int // epochs whose GroupContext a later signature confirmed
	unconfirmed   int // epochs with no later handshake message to confirm them
	proposals     int
	commits       int
	skippedEpochs int
	authenticated int // epochs whose epoch_authenticator the member side matched
}

func runPassiveVectors(t *testing.T, file string) {
	var vs []passiveVector
	loadVectors(t, file, &vs)
	count := newVectorCount(file)
	defer count.report(t)
	var st passiveStats
	for i := range vs {
		v := &vs[i]
		if !v.CipherSuite.Supported() {
			count.skip("cipher suite not supported")
			continue
		}
		skip, err := runPassiveEntry(v, &st)
		switch {
		case err != nil:
			t.Errorf("%s entry %d (suite %d): %v", file, i, v.CipherSuite, err)
		case skip != "":
			count.skip(skip)
		default:
			count.pass()
		}
	}
	t.Logf("%s: %d epochs processed (%d proposals, %d commits); %d epochs confirmed by the signature of a later message, %d final epochs without a later message; %d of %d epoch_authenticators matched by the member side; %d epochs skipped",
		file, st.epochs, st.proposals, st.commits, st.confirmed, st.unconfirmed, st.authenticated, st.epochs, st.skippedEpochs)
}

// runPassiveEntry plays one vector entry. It returns a skip reason if the
// entry cannot be processed to the end without secrets.
func runPassiveEntry(v *passiveVector, st *passiveStats) (string, error) {
	cs := v.CipherSuite
	kpMsg, err := ParseMLSMessage(v.KeyPackage)
	if err != nil || kpMsg.KeyPackage == nil {
		return "", fmt.Errorf("key_package: %v", err)
	}
	ref, err := kpMsg.KeyPackage.Ref()
	if err != nil {
		return "", err
	}
	wMsg, err := ParseMLSMessage(v.Welcome)
	if err != nil || wMsg.Welcome == nil {
		return "", fmt.Errorf("welcome: %v", err)
	}
	psks := make(map[string][]byte)
	for _, p := range v.ExternalPSKs {
		psks[string(p.PSKID)] = p.PSK
	}
	var tree *RatchetTree
	if len(v.RatchetTree) > 0 {
		if tree, err = UnmarshalRatchetTree(cs, v.RatchetTree); err != nil {
			return "", fmt.Errorf("ratchet_tree: %v", err)
		}
	}
	gs, gi, err := DecryptWelcomeWithTree(wMsg.Welcome, ref, padP521(cs, v.InitPriv), psks, tree)
	if err != nil {
		return "", fmt.Errorf("Welcome: %v", err)
	}

	// The initial epoch: the key schedule from the Welcome must reach the
	// vector's epoch_authenticator, and the GroupInfo's confirmation tag.
	list := make([]PSK, len(gs.PSKs))
	for k, id := range gs.PSKs {
		list[k] = PSK{ID: id, Secret: psks[pskLookupKey(&id)]}
	}
	pskSecret, err := PSKSecret(cs, list)
	if err != nil {
		return "", err
	}
	ks, err := NewKeySchedule(cs, gs.JoinerSecret, pskSecret)
	if err != nil {
		return "", err
	}
	es, err := ks.EpochSecrets(&gi.GroupContext)
	if err != nil {
		return "", err
	}
	if !bytes.Equal(es.EpochAuthenticator, v.InitialEpochAuthenticator) {
		return "", fmt.Errorf("initial epoch_authenticator %x, want %x", es.EpochAuthenticator, v.InitialEpochAuthenticator)
	}
	if err := es.VerifyConfirmationTag(gi.GroupContext.ConfirmedTranscriptHash, gi.ConfirmationTag); err != nil {
		return "", fmt.Errorf("GroupInfo confirmation tag: %v", err)
	}

	s, err := NewPublicGroupState(gi, tree)
	if err != nil {
		return "", fmt.Errorf("bootstrap: %v", err)
	}
	if !bytes.Equal(s.GroupContext().TreeHash, gi.GroupContext.TreeHash) {
		return "", fmt.Errorf("bootstrap: tree hash differs from the GroupInfo")
	}
	// The DS stores and reloads its state; do so once per entry.
	if s, err = reloadState(s); err != nil {
		return "", err
	}
	mem, err := newPassiveMember(v, kpMsg.KeyPackage, gs, gi, s, es, psks)
	if err != nil {
		return "", fmt.Errorf("member side: %v", err)
	}

	pendingConfirm := false // the current epoch awaits a message signed over its context
	for e, ep := range v.Epochs {
		for _, raw := range ep.Proposals {
			m, err := ParseMLSMessage(raw)
			if err != nil {
				return "", fmt.Errorf("epoch %d proposal: %v", e, err)
			}
			if m.PublicMessage == nil {
				st.skippedEpochs += len(v.Epochs) - e
				return skipPrivateHandshake, nil
			}
			if _, err := s.HandleProposal(m.PublicMessage); err != nil {
				return "", fmt.Errorf("epoch %d: HandleProposal: %v", s.Epoch(), err)
			}
			if err := mem.checkMembershipTag(m.PublicMessage, s); err != nil {
				return "", fmt.Errorf("epoch %d proposal: %v", s.Epoch(), err)
			}
			st.proposals++
			if signsOverContext(m.PublicMessage) && pendingConfirm {
				st.confirmed++
				pendingConfirm = false
			}
		}
		m, err := ParseMLSMessage(ep.Commit)
		if err != nil {
			return "", fmt.Errorf("epoch %d commit: %v", e, err)
		}
		if m.PublicMessage == nil {
			st.skippedEpochs += len(v.Epochs) - e
			return skipPrivateHandshake, nil
		}
		before := s.Epoch()
		next, effect, err := s.HandleCommit(m.PublicMessage)
		if err != nil {
			return "", fmt.Errorf("epoch %d: HandleCommit: %v", before, err)
		}
		if err := mem.checkMembershipTag(m.PublicMessage, s); err != nil {
			return "", fmt.Errorf("epoch %d commit: %v", before, err)
		}
		if err := mem.commit(m.PublicMessage, effect, s, next, ep.EpochAuthenticator); err != nil {
			return "", fmt.Errorf("epoch %d commit, member side: %v", before, err)
		}
		st.authenticated++
		st.commits++
		if pendingConfirm {
			// HandleCommit verified the Commit's signature over the
			// previous epoch's GroupContext.
			st.confirmed++
		}
		if s.Epoch() != before {
			return "", fmt.Errorf("HandleCommit changed the old state")
		}
		if next.Epoch() != before+1 {
			return "", fmt.Errorf("epoch %d after a Commit in epoch %d", next.Epoch(), before)
		}
		// The tree the state serves must re-encode to the same tree hash.
		data, err := next.Tree().MarshalBinary()
		if err != nil {
			return "", err
		}
		again, err := UnmarshalRatchetTree(cs, data)
		if err != nil {
			return "", err
		}
		if !bytes.Equal(again.TreeHash(), next.GroupContext().TreeHash) {
			return "", fmt.Errorf("epoch %d: re-encoded tree has another tree hash", next.Epoch())
		}
		s = next
		st.epochs++
		pendingConfirm = true
	}
	if pendingConfirm {
		st.unconfirmed++
	}
	if _, err := reloadState(s); err != nil {
		return "", err
	}
	return "", nil
}

// padP521 restores the leading zero byte of a P-521 private key. The
// passive-client vectors of suite 5 carry 65-byte scalars (the generator
// dropped the zero top byte), while RFC 9180 §7.1.2 serializes P-521
// private keys as exactly 66 bytes, the form this package takes.
func padP521(cs CipherSuite, priv []byte) []byte {
	if cs == MLS_256_DHKEMP521_AES256GCM_SHA512_P521 && len(priv) < 66 {
		return append(make([]byte, 66-len(priv)), priv...)
	}
	return priv
}

// signsOverContext reports whether m's signature covers the GroupContext
// (§6.1): messages from members and new_member_commit senders.
func signsOverContext(m *PublicMessage) bool {
	t := m.Content.Sender.SenderType
	return t == SenderTypeMember || t == SenderTypeNewMemberCommit
}

// reloadState round-trips s through MarshalBinary and
// UnmarshalPublicGroupState and checks that nothing was lost.
func reloadState(s *PublicGroupState) (*PublicGroupState, error) {
	data, err := s.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("MarshalBinary: %v", err)
	}
	r, err := UnmarshalPublicGroupState(data)
	if err != nil {
		return nil, fmt.Errorf("UnmarshalPublicGroupState: %v", err)
	}
	again, err := r.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again, data) {
		return nil, fmt.Errorf("reloaded state encodes differently")
	}
	if !bytes.Equal(r.InterimTranscriptHash(), s.InterimTranscriptHash()) || len(r.PendingProposals()) != len(s.PendingProposals()) {
		return nil, fmt.Errorf("reloaded state differs")
	}
	r.SetPolicy(s.policy)
	return r, nil
}

// passiveMember is the member side of a passive-client vector, kept by the
// test only: the joiner's private keys for its leaf and the parents above
// it, and the epoch secrets. It follows the DS state, using the
// GroupContext that state computes.
type passiveMember struct {
	cs      CipherSuite
	myLeaf  LeafIndex
	priv    map[NodeIndex][]byte // private keys of nodes, by index
	secrets *EpochSecrets        // of the current epoch
	psks    map[string][]byte    // external PSKs, and resumption PSKs of the epochs seen
	groupID []byte
}

func newPassiveMember(v *passiveVector, kp *KeyPackage, gs *GroupSecrets, gi *GroupInfo, s *PublicGroupState, es *EpochSecrets, psks map[string][]byte) (*passiveMember, error) {
	cs := v.CipherSuite
	m := &passiveMember{cs: cs, priv: map[NodeIndex][]byte{}, secrets: es, psks: psks, groupID: s.GroupID()}
	tree := s.Tree()
	want := mustEncode(&kp.LeafNode)
	found := false
	for i, leaf := range tree.Leaves() {
		if bytes.Equal(mustEncode(leaf), want) {
			m.myLeaf, found = i, true
		}
	}
	if !found {
		return nil, fmt.Errorf("the joiner's KeyPackage leaf is not in the tree")
	}
	m.priv[m.myLeaf.node()] = padP521(cs, v.EncryptionPriv)
	if gs.PathSecret != nil {
		// §12.4.3.1: the path secret is for the lowest common ancestor of
		// the joiner and the signer; the nodes above follow from it.
		lca := commonAncestor(m.myLeaf.node(), gi.Signer.node())
		if err := m.deriveUp(tree, lca, gs.PathSecret); err != nil {
			return nil, err
		}
	}
	m.psks[ResumptionPSKKey(m.groupID, s.Epoch())] = es.ResumptionPSK
	return m, nil
}

// deriveUp sets the keys of node x from pathSecret and of every non-blank
// node above it from the following path secrets (§7.4), and returns the
// secret after the last one: the commit secret.
func (m *passiveMember) deriveUpSecret(tree *RatchetTree, x NodeIndex, pathSecret []byte) ([]byte, error) {
	n := tree.LeafCount()
	ps := pathSecret
	for {
		if !tree.IsBlank(x) {
			nodeSecret, err := m.cs.DeriveSecret(ps, "node")
			if err != nil {
				return nil, err
			}
			priv, pub, err := m.cs.DeriveKeyPair(nodeSecret)
			if err != nil {
				return nil, err
			}
			if !bytes.Equal(pub, tree.EncryptionKey(x)) {
				return nil, fmt.Errorf("path secret for node %d derives a key that is not the node's", x)
			}
			m.priv[x] = priv
		}
		if x == rootOf(n) {
			break
		}
		x = x.parent(n)
		if !tree.IsBlank(x) {
			next, err := m.cs.DeriveSecret(ps, "path")
			if err != nil {
				return nil, err
			}
			ps = next
		}
	}
	return m.cs.DeriveSecret(ps, "path")
}

func (m *passiveMember) deriveUp(tree *RatchetTree, x NodeIndex, pathSecret []byte) error {
	_, err := m.deriveUpSecret(tree, x, pathSecret)
	return err
}

// checkMembershipTag verifies the membership tag of a member's message
// with the epoch's membership key (§6.2), which the DS cannot do.
func (m *passiveMember) checkMembershipTag(msg *PublicMessage, s *PublicGroupState) error {
	gc := s.GroupContext()
	_, err := UnprotectPublic(msg, m.secrets.MembershipKey, &gc)
	return err
}

// commit moves the member to the epoch the DS state next reached with msg:
// commit secret from the UpdatePath, PSK secret, key schedule over next's
// GroupContext; then checks the confirmation tag and the epoch
// authenticator.
func (m *passiveMember) commit(msg *PublicMessage, effect *CommitEffect, prev, next *PublicGroupState, wantAuth []byte) error {
	cs := m.cs
	newGC := next.GroupContext()
	tree := next.Tree()
	var commitSecret []byte
	if path := msg.Content.Commit.Path; path != nil {
		if effect.External {
			return fmt.Errorf("external Commit: the test does not derive external init secrets")
		}
		provisional := newGC
		provisional.ConfirmedTranscriptHash = prev.GroupContext().ConfirmedTranscriptHash
		ctx := mustEncode(&provisional)
		newLeaves := map[NodeIndex]bool{}
		for _, a := range effect.Added {
			newLeaves[a.Leaf.node()] = true
		}
		sender := effect.Committer
		fdp := tree.FilteredDirectPath(sender)
		done := false
		for k, p := range fdp {
			if !p.isAncestorOf(m.myLeaf.node()) {
				continue
			}
			sib := p.left()
			if sib.isAncestorOf(sender.node()) {
				sib = p.right()
			}
			j := 0
			for _, x := range tree.Resolution(sib) {
				if newLeaves[x] {
					continue
				}
				if priv, ok := m.priv[x]; ok && x.isAncestorOf(m.myLeaf.node()) {
					ct := path.Nodes[k].EncryptedPathSecret[j]
					ps, err := cs.DecryptWithLabel(priv, "UpdatePathNode", ctx, ct.KEMOutput, ct.Ciphertext)
					if err != nil {
						return fmt.Errorf("decrypting the path secret of node %d: %v", p, err)
					}
					if commitSecret, err = m.deriveUpSecret(tree, p, ps); err != nil {
						return err
					}
					done = true
					break
				}
				j++
			}
			break
		}
		if !done {
			return fmt.Errorf("no path secret encrypted to a node the joiner holds")
		}
	}
	// Drop the keys of nodes the Commit blanked or replaced.
	for x, priv := range m.priv {
		pub, err := cs.KEMPublicKey(priv)
		if err != nil || !bytes.Equal(pub, tree.EncryptionKey(x)) {
			delete(m.priv, x)
		}
	}
	if _, ok := m.priv[m.myLeaf.node()]; !ok {
		return fmt.Errorf("the joiner's own leaf changed")
	}
	list := make([]PSK, len(effect.PSKs))
	for k, id := range effect.PSKs {
		v, ok := m.psks[pskLookupKey(&id)]
		if !ok {
			return fmt.Errorf("PSK %d (%s) unknown to the joiner", k, pskDescription(&id))
		}
		list[k] = PSK{ID: id, Secret: v}
	}
	pskSecret, err := PSKSecret(cs, list)
	if err != nil {
		return err
	}
	joiner, err := JoinerSecret(m.secrets.InitSecret, commitSecret, &newGC)
	if err != nil {
		return err
	}
	ks, err := NewKeySchedule(cs, joiner, pskSecret)
	if err != nil {
		return err
	}
	es, err := ks.EpochSecrets(&newGC)
	if err != nil {
		return err
	}
	if err := es.VerifyConfirmationTag(newGC.ConfirmedTranscriptHash, msg.Auth.ConfirmationTag); err != nil {
		return fmt.Errorf("confirmation tag over the DS state's confirmed transcript hash: %v", err)
	}
	if !bytes.Equal(es.EpochAuthenticator, wantAuth) {
		return fmt.Errorf("epoch_authenticator %x, want %x", es.EpochAuthenticator, wantAuth)
	}
	m.secrets = es
	m.psks[ResumptionPSKKey(m.groupID, newGC.Epoch)] = es.ResumptionPSK
	return nil
}
