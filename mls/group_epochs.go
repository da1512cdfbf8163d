package mls

import (
	"bytes"
	"errors"
	"maps"
	"slices"

	"golang.org/x/crypto/cryptobyte"
)

// This file keeps, for a few epochs after a Commit, what a member needs to
// open the application messages sent in them: a Delivery Service may
// deliver an application message of epoch n after the Commit that starts
// epoch n+1 (§15.2 discusses such late messages; §9.2 lets a member keep
// the secret tree of an epoch "for some reasonable amount of time"). Only
// application messages are opened there: a proposal or Commit of an
// earlier epoch can no longer take effect.

// DefaultPastEpochs is how many epochs before the current one a Group
// keeps the secrets of, to open late application messages.
const DefaultPastEpochs = 2

// pastEpoch is what opening an application message of an earlier epoch
// needs (§6.3): sender_data_secret, the epoch's secret tree (its ratchets
// go on advancing and deleting keys, §9.2), the GroupContext over which
// signatures are made (§6.1), and the signature keys of the members.
type pastEpoch struct {
	gc               GroupContext
	senderDataSecret []byte
	st               *SecretTree
	// tree is the ratchet tree of the epoch (shared, copy-on-write, with
	// the later epochs' trees); a state loaded with UnmarshalGroup has
	// sigKeys instead, the members' signature keys by leaf.
	tree    *RatchetTree
	sigKeys map[LeafIndex][]byte
}

// signatureKey returns the signature key of the member at leaf i in that
// epoch, or nil if the leaf was blank.
func (p *pastEpoch) signatureKey(i LeafIndex) []byte {
	if p.tree != nil {
		if l := p.tree.Leaf(i); l != nil {
			return l.SignatureKey
		}
		return nil
	}
	return p.sigKeys[i]
}

// wipe deletes the epoch's secrets, for forward secrecy (§9.2).
func (p *pastEpoch) wipe() {
	clear(p.senderDataSecret)
	p.senderDataSecret = nil
	wipeSecretTree(p.st)
	p.st = nil
}

// wipeSecretTree deletes every secret and key a secret tree still holds.
func wipeSecretTree(t *SecretTree) {
	if t == nil {
		return
	}
	for x, s := range t.nodes {
		clear(s)
		delete(t.nodes, x)
	}
	for l, lr := range t.ratchets {
		for _, r := range []*hashRatchet{&lr.handshake, &lr.application} {
			clear(r.secret)
			r.secret = nil
			for g, k := range r.retained {
				k.wipe()
				delete(r.retained, g)
			}
		}
		delete(t.ratchets, l)
	}
}

// SetPastEpochs sets how many epochs before the current one the member
// keeps the secrets of, so that Open and Process accept application
// messages sent in them (DefaultPastEpochs unless set; 0 keeps none). A
// Delivery Service that forwards application messages up to k epochs old
// needs k here. Keeping epochs weakens forward secrecy for as long as they
// are kept (§9.2); lowering the number deletes the secrets of the epochs
// beyond it at once. Negative values count as 0.
func (g *Group) SetPastEpochs(n int) {
	g.keepPast = max(n, 0)
	g.trimPast()
}

// PastEpochs returns the epochs before the current one whose application
// messages the member can still open, newest first.
func (g *Group) PastEpochs() []uint64 {
	out := make([]uint64, len(g.past))
	for i, p := range g.past {
		out[i] = p.gc.Epoch
	}
	return out
}

// trimPast drops and wipes the past epochs beyond keepPast.
func (g *Group) trimPast() {
	if len(g.past) <= g.keepPast {
		return
	}
	for _, p := range g.past[g.keepPast:] {
		p.wipe()
	}
	g.past = slices.Clone(g.past[:g.keepPast])
}

// advance moves the member to next, the state of the epoch a Commit
// starts: the current epoch becomes the newest past one, and the settings
// that are not per epoch carry over.
func (g *Group) advance(next *Group) {
	next.keepPast = g.keepPast
	next.handshake = g.handshake
	cur := &pastEpoch{gc: g.pub.GroupContext(), senderDataSecret: g.es.SenderDataSecret, st: g.st, tree: g.pub.Tree()}
	next.past = append([]*pastEpoch{cur}, g.past...)
	next.trimPast()
	*g = *next
}

// epochKeys is what opening a PrivateMessage of one epoch needs.
type epochKeys struct {
	gc               GroupContext
	senderDataSecret []byte
	st               *SecretTree
	signatureKey     func(LeafIndex) []byte
}

// keysFor returns the keys of epoch, the current one or a kept past one.
// An epoch neither current nor kept gives a *ValidationError wrapping an
// *EpochMismatchError.
func (g *Group) keysFor(epoch uint64) (*epochKeys, error) {
	if epoch == g.pub.Epoch() {
		tree := g.pub.tree
		return &epochKeys{gc: g.pub.GroupContext(), senderDataSecret: g.es.SenderDataSecret, st: g.st,
			signatureKey: func(i LeafIndex) []byte {
				if l := tree.Leaf(i); l != nil {
					return l.SignatureKey
				}
				return nil
			}}, nil
	}
	for _, p := range g.past {
		if p.gc.Epoch == epoch && p.st != nil {
			return &epochKeys{gc: p.gc, senderDataSecret: p.senderDataSecret, st: p.st, signatureKey: p.signatureKey}, nil
		}
	}
	rule := "message epoch must equal the group's epoch"
	if len(g.past) > 0 {
		rule = "an application message must be of the group's epoch or of one of the past epochs the member keeps"
	}
	return nil, &ValidationError{Rule: rule, Section: "6.3",
		Err: &EpochMismatchError{Got: epoch, Current: g.pub.Epoch()}}
}

// openApplication decrypts an application PrivateMessage of the current
// epoch or of a kept past one and verifies its signature (§6.3, §6.1).
// A removed member can still open the messages of the epochs it was a
// member in, as long as it keeps them (§12.4.2 allows keeping the secret
// tree "for a short time to decrypt late messages").
func (g *Group) openApplication(m *PrivateMessage) (*AuthenticatedContent, error) {
	if !bytes.Equal(m.GroupID, g.pub.gc.GroupID) {
		return nil, invalid("6", "message is for another group (group_id differs)")
	}
	if m.ContentType != ContentTypeApplication {
		return nil, errors.New("mls: Open handles application messages only; use Process for proposals and Commits")
	}
	if g.removed && m.Epoch > g.pub.Epoch() {
		return nil, ErrNotMember
	}
	k, err := g.keysFor(m.Epoch)
	if err != nil {
		return nil, err
	}
	// The ratchet moves only once the signature verified: a message that
	// decrypts (any member can encrypt for any leaf) but was not signed by
	// the sender it names leaves the secret tree as it was (§15.3).
	ac, lease, err := unprotectPrivate(m, k.senderDataSecret, k.st, func(i LeafIndex) bool { return k.signatureKey(i) != nil })
	if err != nil {
		return nil, err
	}
	sender := ac.Content.Sender.LeafIndex
	key := k.signatureKey(sender)
	if key == nil {
		lease.discard()
		return nil, invalidf("6.3.2", "sender %d is not a member", sender)
	}
	if err := ac.VerifySignature(k.gc.CipherSuite, key, &k.gc); err != nil {
		lease.discard()
		return nil, &ValidationError{Rule: "message signature does not verify with the sender's key", Section: "6.1", Err: err}
	}
	lease.commit()
	return ac, nil
}

// marshalPastEpoch writes a past epoch for Group.MarshalBinary:
//
//	struct {
//	    GroupContext group_context;
//	    opaque sender_data_secret<V>;
//	    opaque secret_tree<V>;     /* see marshalSecretTree */
//	    struct { uint32 leaf; opaque signature_key<V>; } members<V>;
//	} PastEpoch;
//
// Only the members' signature keys of the tree are kept: they are all
// that opening a message needs.
func marshalPastEpoch(b *cryptobyte.Builder, p *pastEpoch) {
	p.gc.marshal(b)
	addOpaque(b, p.senderDataSecret)
	addVector(b, func(b *cryptobyte.Builder) { marshalSecretTree(b, p.st) })
	addVector(b, func(b *cryptobyte.Builder) {
		if p.tree != nil {
			for i, l := range p.tree.Leaves() {
				b.AddUint32(uint32(i))
				addOpaque(b, l.SignatureKey)
			}
			return
		}
		for _, i := range slices.Sorted(maps.Keys(p.sigKeys)) {
			b.AddUint32(uint32(i))
			addOpaque(b, p.sigKeys[i])
		}
	})
}

func unmarshalPastEpoch(s *cryptobyte.String, p *pastEpoch) bool {
	var st cryptobyte.String
	p.st = new(SecretTree)
	p.sigKeys = map[LeafIndex][]byte{}
	return p.gc.unmarshal(s) &&
		readOpaque(s, &p.senderDataSecret) &&
		readVector(s, &st) && unmarshalSecretTree(&st, p.st) && st.Empty() &&
		readList(s, func(s *cryptobyte.String) bool {
			var i uint32
			var k []byte
			if !s.ReadUint32(&i) || !readOpaque(s, &k) || i >= p.st.nLeaves {
				return false
			}
			p.sigKeys[LeafIndex(i)] = k
			return true
		})
}
