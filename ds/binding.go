package ds

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/mlsds/mlsds/mls"
)

// This file binds the leaves of transparent groups to registered clients,
// and Adds to the consent of the added client.
//
// The Delivery Service enforces the bindings of the Authentication Service
// (RFC 9750 §5): every leaf it lets into a group carries a basic
// credential naming a registered client and that client's registered
// signature key, so no member can put another client's name on its own
// key. Members check the same binding themselves (RFC 9420 §5.3.1).
//
// A client consents to be added to a group by publishing a KeyPackage to
// the directory (RFC 9420 §10): an Add must use one of them, and each is
// used once (last-resort ones excepted).

// ErrKeyPackageUsed reports a KeyPackage that an earlier Add or Welcome
// already used (or that its client deleted), found when the transaction
// that would use it again runs: two groups raced on one KeyPackage and
// this one lost.
var ErrKeyPackageUsed = errors.New("ds: KeyPackage already used; claim a fresh KeyPackage of the client and build the Commit again")

// leafBinder checks leaves against the registered clients and their keys,
// remembering the keys of the clients it has looked up.
type leafBinder struct {
	s    *Service
	keys map[string][][]byte // nil: not a registered client
}

func (s *Service) binder() *leafBinder {
	return &leafBinder{s: s, keys: make(map[string][][]byte)}
}

// keysOf returns the signature keys registered for client id (keys.go);
// none if it is not a registered client.
func (b *leafBinder) keysOf(ctx context.Context, id string) ([][]byte, error) {
	if k, ok := b.keys[id]; ok {
		return k, nil
	}
	m, err := b.s.store.ClientKeys(ctx, []string{id})
	if err != nil {
		return nil, err
	}
	b.keys[id] = m[id]
	return m[id], nil
}

// checkLeafBound checks one leaf: its credential must name a registered
// client (a basic credential by its identity, an x509 one by its verified
// certificate, x509.go) and carry a signature key that client registered
// (RFC 9750 §5). where names the leaf in the error ("leaf 3", "the
// KeyPackage of an Add"). It is the one place that decides which keys a
// client may use: the directory's uploads, logins and ClientKeys go
// through checkKey and keysOf too.
func (b *leafBinder) checkLeafBound(ctx context.Context, where string, leaf *mls.LeafNode) error {
	id, err := b.s.verifiedClientID(&leaf.Credential, leaf.SignatureKey)
	if err != nil {
		var im *InvalidMessageError
		if errors.As(err, &im) {
			return err
		}
		if errors.Is(err, ErrPermissionDenied) {
			return fmt.Errorf("%s: %w", where, err)
		}
		return invalidMessage(where, err)
	}
	return b.checkKey(ctx, where, id, leaf.SignatureKey)
}

// checkKey checks that key is one of the keys client id registered.
func (b *leafBinder) checkKey(ctx context.Context, where, id string, key []byte) error {
	keys, err := b.keysOf(ctx, id)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return fmt.Errorf("%w: %s: credential names %q, which is not a registered client; only registered clients can be members (RFC 9750 §5)",
			ErrPermissionDenied, where, id)
	}
	for _, k := range keys {
		if bytes.Equal(k, key) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s: credential names %q but its signature key is not one %s registered (RFC 9750 §5); "+
		"the client registers another key with AccountService.AddSignatureKey, proving possession by a signature or by a KeyPackage made with the key",
		ErrPermissionDenied, where, id, id)
}

// checkLeafBound checks one leaf alone; see leafBinder.checkLeafBound.
func (s *Service) checkLeafBound(ctx context.Context, where string, leaf *mls.LeafNode) error {
	return s.binder().checkLeafBound(ctx, where, leaf)
}

// checkCommitLeaves checks every leaf a Commit brings into the tree: those
// of its Adds (by value or reference), its Updates, and the committer's
// UpdatePath leaf, which is also the joiner's leaf of an external Commit
// (mls.CommitEffect lists all of them in Added and Updated). Leaves it
// does not list are unchanged, and were bound when they came in.
func (s *Service) checkCommitLeaves(ctx context.Context, next *mls.RatchetTree, eff *mls.CommitEffect) error {
	b := s.binder()
	check := func(i mls.LeafIndex) error {
		leaf := next.Leaf(i)
		if leaf == nil {
			return nil
		}
		return b.checkLeafBound(ctx, fmt.Sprintf("leaf %d", i), leaf)
	}
	for _, a := range eff.Added {
		if err := check(a.Leaf); err != nil {
			return err
		}
	}
	for _, u := range eff.Updated {
		if err := check(u.Leaf); err != nil {
			return err
		}
	}
	return nil
}

// consent is a KeyPackage an Add uses, with the client it adds.
type consent struct {
	where  string
	ref    []byte
	client string
}

// checkConsent checks that every KeyPackage in cs was published to this
// Delivery Service by the client the Add names and was not used by an
// earlier Add or Welcome (unless it is a last-resort one), and returns
// the refs to mark used when the message is accepted.
func (s *Service) checkConsent(ctx context.Context, cs []consent) ([][]byte, error) {
	if len(cs) == 0 {
		return nil, nil
	}
	refs := make([][]byte, len(cs))
	for i, c := range cs {
		refs[i] = c.ref
	}
	byRef, err := s.keyPackagesByRef(ctx, refs)
	if err != nil {
		return nil, err
	}
	var consume [][]byte
	seen := make(map[string]bool)
	for _, c := range cs {
		if seen[string(c.ref)] {
			return nil, invalidf("12.2", "%s: KeyPackage %x is used twice", c.where, c.ref)
		}
		seen[string(c.ref)] = true
		rec, ok := byRef[string(c.ref)]
		if !ok || rec.ClientID != c.client {
			return nil, fmt.Errorf("%w: %s: KeyPackage %x is not one that %q published to this Delivery Service; add a client only with a KeyPackage claimed from it (RFC 9750 §5)",
				ErrPermissionDenied, c.where, c.ref, c.client)
		}
		if rec.LastResort {
			continue
		}
		if rec.Consumed() {
			return nil, fmt.Errorf("%w: %s: KeyPackage %x of %q", ErrKeyPackageUsed, c.where, c.ref, c.client)
		}
		consume = append(consume, c.ref)
	}
	return consume, nil
}

// proposalConsent checks the leaf and the KeyPackage of a Proposal sent on
// its own: an Add's KeyPackage must be bound and consented to, an
// Update's leaf bound. The KeyPackage is marked used only by the Commit
// that includes the Add.
func (s *Service) proposalConsent(ctx context.Context, p *mls.Proposal) error {
	switch {
	case p == nil:
		return nil
	case p.Add != nil:
		kp := &p.Add.KeyPackage
		if err := s.checkLeafBound(ctx, "the Add proposal's KeyPackage", &kp.LeafNode); err != nil {
			return err
		}
		ref, err := kp.Ref()
		if err != nil {
			return invalidMessage("the Add proposal's KeyPackage", err)
		}
		id, _ := credentialClientID(&kp.LeafNode.Credential)
		_, err = s.checkConsent(ctx, []consent{{where: "the Add proposal", ref: ref, client: id}})
		return err
	case p.Update != nil:
		return s.checkLeafBound(ctx, "the Update proposal's leaf", &p.Update.LeafNode)
	}
	return nil
}

// addedConsent returns the consents of the Adds of a Commit.
func addedConsent(eff *mls.CommitEffect) ([]consent, error) {
	var cs []consent
	for _, a := range eff.Added {
		if a.KeyPackageRef == nil {
			continue // the joiner of an external Commit
		}
		id, err := credentialClientID(&a.Credential)
		if err != nil {
			return nil, invalidMessage(fmt.Sprintf("added leaf %d", a.Leaf), err)
		}
		cs = append(cs, consent{where: fmt.Sprintf("leaf %d", a.Leaf), ref: a.KeyPackageRef, client: id})
	}
	return cs, nil
}

// treeConsent checks the tree of a new transparent group: every leaf is
// bound, the creator holds one, and every other leaf came in through one
// of kps, a KeyPackage its client published whose leaf_node is the leaf
// byte for byte. It returns the refs to mark used with the group's
// creation.
func (s *Service) treeConsent(ctx context.Context, creator string, tree *mls.RatchetTree, kps [][]byte) ([][]byte, error) {
	type offered struct {
		ref    []byte
		client string
		used   bool
	}
	byLeaf := make(map[string]*offered, len(kps))
	for i, data := range kps {
		kp, err := parseKeyPackage(data)
		if err != nil {
			return nil, invalidMessage(fmt.Sprintf("key_packages[%d]", i), err)
		}
		ref, err := kp.Ref()
		if err != nil {
			return nil, invalidMessage(fmt.Sprintf("key_packages[%d]", i), err)
		}
		ln, err := kp.LeafNode.MarshalBinary()
		if err != nil {
			return nil, invalidMessage(fmt.Sprintf("key_packages[%d]", i), err)
		}
		id, _ := credentialClientID(&kp.LeafNode.Credential)
		byLeaf[string(ln)] = &offered{ref: ref, client: id}
	}
	b := s.binder()
	var cs []consent
	creatorLeaves := 0
	for i, leaf := range tree.Leaves() {
		where := fmt.Sprintf("leaf %d", i)
		if err := b.checkLeafBound(ctx, where, leaf); err != nil {
			return nil, err
		}
		id, _ := credentialClientID(&leaf.Credential)
		if id == creator {
			creatorLeaves++
			continue
		}
		ln, err := leaf.MarshalBinary()
		if err != nil {
			return nil, invalidMessage(where, err)
		}
		o := byLeaf[string(ln)]
		if o == nil || o.used {
			return nil, fmt.Errorf("%w: %s of %q came in through no KeyPackage in key_packages; give the KeyPackage of every leaf but the creator's, so that each client consented (RFC 9750 §5)",
				ErrPermissionDenied, where, id)
		}
		o.used = true
		cs = append(cs, consent{where: where, ref: o.ref, client: o.client})
	}
	if creatorLeaves == 0 {
		return nil, fmt.Errorf("%w: the creator %q holds no leaf of the group's tree", ErrPermissionDenied, creator)
	}
	return s.checkConsent(ctx, cs)
}
