package mls

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// This file is the secret tree of RFC 9420 §9: per-sender hash ratchets
// rooted at the encryption_secret of an epoch, from which the keys and
// nonces of PrivateMessage content encryption come. Secrets are deleted as
// soon as they are consumed (§9.2); keys for generations skipped by
// out-of-order delivery are kept within a bounded window (§15.3).

// Errors wrapped by the *ValidationError that SecretTree.Key returns when
// it cannot provide the key of a generation.
var (
	// ErrGenerationTooFarAhead: the generation is more than MaxForward
	// steps ahead of the ratchet; deriving it would let a sender make the
	// receiver do unbounded work.
	ErrGenerationTooFarAhead = errors.New("mls: generation too far ahead of the sender ratchet")
	// ErrGenerationUsed: the key of this generation was already used and
	// deleted, so the message is a replay or a duplicate.
	ErrGenerationUsed = errors.New("mls: generation already used")
	// ErrGenerationTooOld: the generation is more than MaxBackward steps
	// behind the ratchet; its key was deleted.
	ErrGenerationTooOld = errors.New("mls: generation too old")
	// ErrRatchetExhausted: all 2^32 generations of the ratchet are used; the
	// sender must wait for a new epoch.
	ErrRatchetExhausted = errors.New("mls: sender ratchet exhausted")
)

// Default limits of a SecretTree on out-of-order generations (§15.3).
const (
	DefaultMaxForward  = 1000
	DefaultMaxBackward = 1000
	// DefaultMaxRetained bounds the skipped-generation keys a tree keeps
	// over all its ratchets together (SecretTree.MaxRetained).
	DefaultMaxRetained = 4096
)

// RatchetType selects one of the two hash ratchets of a leaf (§9).
type RatchetType uint8

const (
	// HandshakeRatchet protects proposals and commits.
	HandshakeRatchet RatchetType = 1
	// ApplicationRatchet protects application messages.
	ApplicationRatchet RatchetType = 2
)

func (r RatchetType) String() string {
	switch r {
	case HandshakeRatchet:
		return "handshake"
	case ApplicationRatchet:
		return "application"
	}
	return fmt.Sprintf("RatchetType(%d)", uint8(r))
}

// RatchetFor returns the ratchet that protects content of type ct (§6.3.1).
func RatchetFor(ct ContentType) RatchetType {
	if ct == ContentTypeApplication {
		return ApplicationRatchet
	}
	return HandshakeRatchet
}

// SecretTree is the secret tree of one epoch (§9). It is not safe for
// concurrent use.
type SecretTree struct {
	// MaxForward is the largest number of generations a received message
	// may skip ahead of the next expected one; further ones are rejected
	// with ErrGenerationTooFarAhead (§15.3).
	MaxForward uint32
	// MaxBackward is how many generations behind the newest one received
	// the keys of skipped generations are kept for late messages; older
	// ones are deleted (§15.3). At most MaxBackward keys are kept per
	// ratchet.
	MaxBackward uint32
	// MaxRetained bounds the keys of skipped generations kept over all the
	// tree's ratchets together (§15.3), so that the state of a large group
	// stays small whatever its senders skip; 0 means DefaultMaxRetained.
	// Past it, the oldest generations of the ratchets that keep the most
	// are deleted first.
	MaxRetained int

	suite   CipherSuite
	nLeaves uint32
	// nodes holds the tree secrets not yet consumed: initially only the
	// root, later the copath frontier of the leaves whose ratchets exist.
	nodes    map[NodeIndex][]byte
	ratchets map[LeafIndex]*leafRatchets
}

type leafRatchets struct {
	handshake, application hashRatchet
}

// hashRatchet is one sender ratchet of §9.1.
type hashRatchet struct {
	secret   []byte // ratchet_secret at generation next
	next     uint64 // the next generation to derive; 1<<32 when exhausted
	retained map[uint32]messageKey
	low      uint64 // every retained generation is at least low
}

type messageKey struct {
	key, nonce []byte
}

func (k messageKey) wipe() {
	clear(k.key)
	clear(k.nonce)
}

// NewSecretTree returns the secret tree of an epoch whose encryption_secret
// is encryptionSecret, for a ratchet tree of nLeaves leaves (a power of
// two, §7.7). The tree keeps its own copy of the secret.
func NewSecretTree(cs CipherSuite, encryptionSecret []byte, nLeaves uint32) (*SecretTree, error) {
	if err := cs.check(); err != nil {
		return nil, err
	}
	if nLeaves == 0 || nLeaves&(nLeaves-1) != 0 || nLeaves > 1<<31 {
		return nil, fmt.Errorf("mls: a secret tree needs a power of two leaves up to 2^31, like the ratchet tree (§7.7); got %d", nLeaves)
	}
	if len(encryptionSecret) != cs.HashSize() {
		return nil, fmt.Errorf("mls: encryption_secret must be %d bytes for %v, got %d", cs.HashSize(), cs, len(encryptionSecret))
	}
	return &SecretTree{
		MaxForward:  DefaultMaxForward,
		MaxBackward: DefaultMaxBackward,
		suite:       cs,
		nLeaves:     nLeaves,
		nodes:       map[NodeIndex][]byte{rootOf(nLeaves): append([]byte(nil), encryptionSecret...)},
		ratchets:    map[LeafIndex]*leafRatchets{},
	}, nil
}

// LeafCount returns the number of leaves the tree was made for.
func (t *SecretTree) LeafCount() uint32 { return t.nLeaves }

// ratchet returns the ratchet rt of leaf, deriving the leaf's ratchets
// from the tree on first use.
func (t *SecretTree) ratchet(leaf LeafIndex, rt RatchetType) (*hashRatchet, error) {
	if uint32(leaf) >= t.nLeaves {
		return nil, invalidf("6.3.2", "leaf_index %d is outside the tree of %d leaves", leaf, t.nLeaves)
	}
	lr, ok := t.ratchets[leaf]
	if !ok {
		var err error
		if lr, err = t.initLeaf(leaf); err != nil {
			return nil, err
		}
		t.ratchets[leaf] = lr
	}
	switch rt {
	case HandshakeRatchet:
		return &lr.handshake, nil
	case ApplicationRatchet:
		return &lr.application, nil
	}
	return nil, fmt.Errorf("mls: unknown ratchet type %d", rt)
}

// initLeaf derives the tree secrets from the lowest stored ancestor of
// leaf down to the leaf, keeping the siblings of the path and deleting
// the consumed secrets on it (§9.2), then starts the leaf's two ratchets.
func (t *SecretTree) initLeaf(leaf LeafIndex) (*leafRatchets, error) {
	p, err := t.planLeaf(leaf)
	if err != nil {
		return nil, err
	}
	p.apply(t)
	return p.lr, nil
}

// leafPlan is the change initLeaf makes to the tree, computed without
// making it: the secrets to store and those consumed.
type leafPlan struct {
	leaf  LeafIndex
	lr    *leafRatchets
	set   map[NodeIndex][]byte
	del   []NodeIndex
	apply func(t *SecretTree)
}

func (t *SecretTree) planLeaf(leaf LeafIndex) (*leafPlan, error) {
	cs := t.suite
	target := leaf.node()
	// Walk up to the nearest ancestor whose secret is still stored.
	x := target
	root := rootOf(t.nLeaves)
	for t.nodes[x] == nil {
		if x == root {
			return nil, fmt.Errorf("mls: secret tree has no secret left for leaf %d", leaf)
		}
		x = x.parent(t.nLeaves)
	}
	p := &leafPlan{leaf: leaf, set: map[NodeIndex][]byte{}}
	secret := t.nodes[x]
	for x != target {
		left, err := cs.ExpandWithLabel(secret, "tree", []byte("left"), cs.HashSize())
		if err != nil {
			return nil, err
		}
		right, err := cs.ExpandWithLabel(secret, "tree", []byte("right"), cs.HashSize())
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(secret, t.nodes[x]) || t.nodes[x] == nil {
			clear(secret) // an intermediate secret derived here
		}
		p.del = append(p.del, x)
		if target < x {
			p.set[x.right()] = right
			x, secret = x.left(), left
		} else {
			p.set[x.left()] = left
			x, secret = x.right(), right
		}
	}
	p.del = append(p.del, target)
	hs, err := cs.ExpandWithLabel(secret, "handshake", nil, cs.HashSize())
	if err != nil {
		return nil, err
	}
	app, err := cs.ExpandWithLabel(secret, "application", nil, cs.HashSize())
	if err != nil {
		return nil, err
	}
	if _, stored := t.nodes[target]; !stored {
		clear(secret) // derived here, not the tree's
	}
	p.lr = &leafRatchets{
		handshake:   hashRatchet{secret: hs, retained: map[uint32]messageKey{}},
		application: hashRatchet{secret: app, retained: map[uint32]messageKey{}},
	}
	p.apply = func(t *SecretTree) {
		for _, n := range p.del {
			clear(t.nodes[n])
			delete(t.nodes, n)
		}
		for n, v := range p.set {
			t.nodes[n] = v
		}
		t.ratchets[p.leaf] = p.lr
	}
	return p, nil
}

// wipe drops a plan that is not applied.
func (p *leafPlan) wipe() {
	for _, v := range p.set {
		clear(v)
	}
	clear(p.lr.handshake.secret)
	clear(p.lr.application.secret)
}

// step derives the key and nonce of generation r.next and advances the
// ratchet secret, deleting the old one (§9.1, §9.2).
func (r *hashRatchet) step(cs CipherSuite) (messageKey, error) {
	if r.next > 0xffffffff {
		return messageKey{}, ErrRatchetExhausted
	}
	g := uint32(r.next)
	key, err := cs.DeriveTreeSecret(r.secret, "key", g, cs.AEADKeySize())
	if err != nil {
		return messageKey{}, err
	}
	nonce, err := cs.DeriveTreeSecret(r.secret, "nonce", g, cs.AEADNonceSize())
	if err != nil {
		return messageKey{}, err
	}
	if g == 0xffffffff {
		// The last generation: nothing follows it.
		clear(r.secret)
		r.secret = nil
	} else {
		next, err := cs.DeriveTreeSecret(r.secret, "secret", g, cs.HashSize())
		if err != nil {
			return messageKey{}, err
		}
		clear(r.secret)
		r.secret = next
	}
	r.next++
	return messageKey{key: key, nonce: nonce}, nil
}

// NextKey returns the key and nonce of the next unused generation of the
// ratchet rt of leaf, for a sender encrypting its own message (§6.3.1).
// The generation is consumed: it is never handed out again.
func (t *SecretTree) NextKey(leaf LeafIndex, rt RatchetType) (generation uint32, key, nonce []byte, err error) {
	r, err := t.ratchet(leaf, rt)
	if err != nil {
		return 0, nil, nil, err
	}
	generation = uint32(r.next)
	k, err := r.step(t.suite)
	if err != nil {
		if errors.Is(err, ErrRatchetExhausted) {
			return 0, nil, nil, &ValidationError{
				Rule:    fmt.Sprintf("the %v ratchet of leaf %d has used all its generations in this epoch", rt, leaf),
				Section: "9.1", Err: err,
			}
		}
		return 0, nil, nil, err
	}
	t.dropOld(r)
	return generation, k.key, k.nonce, nil
}

// Key returns the key and nonce of generation of the ratchet rt of leaf,
// for a receiver decrypting a message. The key is deleted from the tree
// (§9.2), so a second request for the same generation fails with
// ErrGenerationUsed. Generations skipped on the way are kept for late
// messages, within MaxBackward and MaxRetained; a generation more than
// MaxForward ahead of the ratchet is rejected with
// ErrGenerationTooFarAhead before any derivation. All these errors are
// *ValidationError.
func (t *SecretTree) Key(leaf LeafIndex, rt RatchetType, generation uint32) (key, nonce []byte, err error) {
	l, err := t.lease(leaf, rt, generation)
	if err != nil {
		return nil, nil, err
	}
	key, nonce = bytes.Clone(l.key.key), bytes.Clone(l.key.nonce)
	l.commit()
	return key, nonce, nil
}

// keyLease is the key of one generation of a ratchet, derived without
// changing the tree: a receiver first decrypts with it and checks the
// content's signature, and only then consumes the key and moves the
// ratchet (commit), so that a message that fails, however far ahead its
// generation, leaves the tree as it was.
type keyLease struct {
	t   *SecretTree
	r   *hashRatchet
	gen uint32
	key messageKey
	// kept says the key is a retained one (of a generation skipped
	// earlier); otherwise the lease holds the ratchet as it is after the
	// generation: its secret, next, and the keys of the generations
	// skipped on the way.
	kept    bool
	from    uint64
	secret  []byte
	next    uint64
	skipped []messageKey
	done    bool
	// plan starts the leaf's ratchets, if the lease is the first use.
	plan *leafPlan
}

// lease finds or derives the key of generation, with the checks of Key,
// without changing the ratchet.
func (t *SecretTree) lease(leaf LeafIndex, rt RatchetType, generation uint32) (*keyLease, error) {
	if uint32(leaf) >= t.nLeaves {
		return nil, invalidf("6.3.2", "leaf_index %d is outside the tree of %d leaves", leaf, t.nLeaves)
	}
	var plan *leafPlan
	lr, ok := t.ratchets[leaf]
	if !ok {
		// The leaf's ratchets start only if the lease is committed.
		var err error
		if plan, err = t.planLeaf(leaf); err != nil {
			return nil, err
		}
		lr = plan.lr
	}
	var r *hashRatchet
	switch rt {
	case HandshakeRatchet:
		r = &lr.handshake
	case ApplicationRatchet:
		r = &lr.application
	default:
		return nil, fmt.Errorf("mls: unknown ratchet type %d", rt)
	}
	l, err := t.leaseFrom(r, leaf, rt, generation)
	if err != nil {
		if plan != nil {
			plan.wipe()
		}
		return nil, err
	}
	l.plan = plan
	return l, nil
}

func (t *SecretTree) leaseFrom(r *hashRatchet, leaf LeafIndex, rt RatchetType, generation uint32) (*keyLease, error) {
	g := uint64(generation)
	if g < r.next {
		if k, ok := r.retained[generation]; ok {
			return &keyLease{t: t, r: r, gen: generation, key: k, kept: true}, nil
		}
		if r.next-1-g > uint64(t.MaxBackward) {
			return nil, &ValidationError{
				Rule: fmt.Sprintf("generation %d of the %v ratchet of leaf %d is more than %d behind the newest (%d); its key was deleted",
					generation, rt, leaf, t.MaxBackward, r.next-1),
				Section: "15.3", Err: ErrGenerationTooOld,
			}
		}
		return nil, &ValidationError{
			Rule: fmt.Sprintf("generation %d of the %v ratchet of leaf %d was already used; its key was deleted",
				generation, rt, leaf),
			Section: "9.2", Err: ErrGenerationUsed,
		}
	}
	if g-r.next > uint64(t.MaxForward) {
		return nil, &ValidationError{
			Rule: fmt.Sprintf("generation %d of the %v ratchet of leaf %d is more than %d ahead of the next expected generation %d",
				generation, rt, leaf, t.MaxForward, r.next),
			Section: "15.3", Err: ErrGenerationTooFarAhead,
		}
	}
	if r.secret == nil {
		return nil, &ValidationError{
			Rule:    fmt.Sprintf("the %v ratchet of leaf %d has used all its generations in this epoch", rt, leaf),
			Section: "9.1", Err: ErrRatchetExhausted,
		}
	}
	l := &keyLease{t: t, r: r, gen: generation, from: r.next}
	tmp := hashRatchet{secret: bytes.Clone(r.secret), next: r.next}
	keep := uint64(t.MaxBackward)
	for tmp.next < g {
		k, err := tmp.step(t.suite)
		if err != nil {
			l.discard()
			clear(tmp.secret)
			return nil, err
		}
		// Only the last MaxBackward skipped keys could be kept anyway.
		if g-(tmp.next-1) <= keep {
			l.skipped = append(l.skipped, k)
		} else {
			k.wipe()
		}
	}
	k, err := tmp.step(t.suite)
	if err != nil {
		l.discard()
		clear(tmp.secret)
		return nil, err
	}
	l.key, l.secret, l.next = k, tmp.secret, tmp.next
	return l, nil
}

// commit consumes the leased key (§9.2) and, for a generation at or ahead
// of the ratchet, moves the ratchet past it, keeping the skipped keys
// within MaxBackward and MaxRetained. The ratchet must not have moved
// since the lease.
func (l *keyLease) commit() {
	if l.done {
		return
	}
	l.done = true
	r := l.r
	if l.plan != nil {
		if _, started := l.t.ratchets[l.plan.leaf]; started {
			// Started by something else meanwhile: nothing of it applies.
			l.plan.wipe()
			l.wipeDerived()
			return
		}
		l.plan.apply(l.t)
	}
	if l.kept {
		delete(r.retained, l.gen)
		l.key.wipe()
		return
	}
	if r.next != l.from {
		// The ratchet moved under the lease: nothing of it applies.
		l.wipeDerived()
		return
	}
	first := l.next - 1 - uint64(len(l.skipped))
	for i, k := range l.skipped {
		if l.t.MaxBackward > 0 {
			r.retained[uint32(first+uint64(i))] = k
		} else {
			k.wipe()
		}
	}
	l.skipped = nil
	clear(r.secret)
	r.secret, r.next = l.secret, l.next
	if l.next > 0xffffffff {
		// The last generation: nothing follows it.
		clear(r.secret)
		r.secret = nil
	}
	l.secret = nil
	l.key.wipe()
	l.t.dropOld(r)
	l.t.capRetained()
}

// discard drops a lease that was not used, leaving the tree as it was.
func (l *keyLease) discard() {
	if l.done {
		return
	}
	l.done = true
	if !l.kept {
		l.wipeDerived()
	}
	if l.plan != nil {
		l.plan.wipe()
	}
}

func (l *keyLease) wipeDerived() {
	l.key.wipe()
	for _, k := range l.skipped {
		k.wipe()
	}
	clear(l.secret)
	l.skipped, l.secret = nil, nil
}

// maxRetained returns the effective MaxRetained.
func (t *SecretTree) maxRetained() int {
	if t.MaxRetained <= 0 {
		return DefaultMaxRetained
	}
	return t.MaxRetained
}

// Retained returns how many keys of skipped generations the tree keeps,
// over all its ratchets.
func (t *SecretTree) Retained() int {
	n := 0
	for _, lr := range t.ratchets {
		n += len(lr.handshake.retained) + len(lr.application.retained)
	}
	return n
}

// capRetained deletes retained keys beyond MaxRetained: the oldest
// generations of the ratchet that keeps the most, then of the next one,
// so that one sender skipping far cannot push out everyone else's keys.
func (t *SecretTree) capRetained() {
	excess := t.Retained() - t.maxRetained()
	for excess > 0 {
		var big *hashRatchet
		for _, lr := range t.ratchets {
			for _, r := range []*hashRatchet{&lr.handshake, &lr.application} {
				if big == nil || len(r.retained) > len(big.retained) {
					big = r
				}
			}
		}
		if big == nil || len(big.retained) == 0 {
			return
		}
		// Down to the size of the runner-up (at least one key goes).
		second := 0
		for _, lr := range t.ratchets {
			for _, r := range []*hashRatchet{&lr.handshake, &lr.application} {
				if r != big && len(r.retained) > second {
					second = len(r.retained)
				}
			}
		}
		n := min(excess, max(1, len(big.retained)-second))
		gens := slices.Sorted(maps.Keys(big.retained))
		for _, g := range gens[:n] {
			big.retained[g].wipe()
			delete(big.retained, g)
		}
		excess -= n
	}
}

// dropOld deletes the retained keys that fell out of the MaxBackward
// window. All retained generations are at least r.low; the scan walks
// either the generations from r.low up to the new bound or the map,
// whichever is shorter, so the cost stays proportional to the steps taken.
func (t *SecretTree) dropOld(r *hashRatchet) {
	if r.next <= uint64(t.MaxBackward)+1 {
		return
	}
	low := r.next - 1 - uint64(t.MaxBackward)
	if low <= r.low {
		return
	}
	if low-r.low <= uint64(len(r.retained)) {
		for g := r.low; g < low; g++ {
			if k, ok := r.retained[uint32(g)]; ok {
				k.wipe()
				delete(r.retained, uint32(g))
			}
		}
	} else {
		for g, k := range r.retained {
			if uint64(g) < low {
				k.wipe()
				delete(r.retained, g)
			}
		}
	}
	r.low = low
}

// restore gives back the key of a generation that Key handed out but that
// did not decrypt its message, so that it stays available for the genuine
// message (§9.2 deletes keys used to decrypt successfully). It keeps the
// window of MaxBackward; outside it, the key is wiped instead.
func (t *SecretTree) restore(leaf LeafIndex, rt RatchetType, generation uint32, k messageKey) {
	r, err := t.ratchet(leaf, rt)
	if err != nil || uint64(generation) >= r.next || uint64(generation) < r.low ||
		r.next-1-uint64(generation) > uint64(t.MaxBackward) {
		k.wipe()
		return
	}
	r.retained[generation] = k
}
