package ds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/mlsds/mlsds/mls"
)

// The KeyPackage directory (the draft's "ClientInitKeys"): clients publish
// KeyPackages; others claim them, each at most once, to add the client to
// a group.

// maxUploadBatch bounds one upload call.
const maxUploadBatch = 1000

// UploadKeyPackages validates and stores KeyPackages of clientID, all or
// none. Each must be valid now (RFC 9420 §10.1) with a lifetime of at most
// Config.MaxKeyPackageLifetime, be in the client's registered suite, carry
// a credential that names clientID (a basic credential's identity, or a
// verified x509 certificate) and one of the client's registered signature
// keys (binding.go), and not be stored already. At most one
// last-resort KeyPackage per suite: uploading another while one is stored
// fails with ErrAlreadyExists (delete the old one first). Each KeyPackage
// has at most Config.MaxKeyPackageSize bytes (else a *TooLargeError), and
// the client's unclaimed ones together at most Config.MaxKeyPackageBytes
// (else a *QuotaExceededError; deleting some frees bytes).
func (s *Service) UploadKeyPackages(ctx context.Context, clientID string, kps []KeyPackageUpload) ([]KeyPackageInfo, error) {
	if err := s.allow(clientID); err != nil {
		return nil, err
	}
	if len(kps) == 0 {
		return nil, nil
	}
	if len(kps) > maxUploadBatch {
		return nil, &TooLargeError{Limit: maxUploadBatch, What: "key packages per upload"}
	}
	client, err := s.store.Client(ctx, clientID)
	if err != nil {
		return nil, err
	}
	now := s.now()
	b := s.binder()
	recs := make([]KeyPackageRecord, 0, len(kps))
	infos := make([]KeyPackageInfo, 0, len(kps))
	for i, up := range kps {
		if len(up.Data) > s.cfg.MaxMessageSize {
			return nil, &TooLargeError{Limit: s.cfg.MaxMessageSize, What: "message bytes"}
		}
		if lim := s.cfg.MaxKeyPackageSize; lim > 0 && len(up.Data) > lim {
			return nil, &TooLargeError{Limit: lim, What: LimitKeyPackageSize}
		}
		rec, err := s.checkKeyPackage(ctx, b, client, up, now)
		if err != nil {
			var im *InvalidMessageError
			if errors.As(err, &im) && len(kps) > 1 {
				im.Reason = fmt.Sprintf("KeyPackage %d of %d: %s", i+1, len(kps), im.Reason)
			}
			return nil, err
		}
		recs = append(recs, rec)
		infos = append(infos, rec.info())
	}
	lim := KeyPackageLimits{Count: s.cfg.MaxKeyPackagesPerClient, Bytes: max(0, s.cfg.MaxKeyPackageBytes)}
	if err := s.store.AddKeyPackagesWithin(ctx, recs, lim); err != nil {
		return nil, err
	}
	s.notify(ClientTopic(clientID))
	return infos, nil
}

// checkKeyPackage checks one KeyPackage client uploads; b binds its leaf
// (binding.go).
func (s *Service) checkKeyPackage(ctx context.Context, b *leafBinder, client Client, up KeyPackageUpload, now time.Time) (KeyPackageRecord, error) {
	kp, err := parseKeyPackage(up.Data)
	if err != nil {
		return KeyPackageRecord{}, err
	}
	if err := validateKeyPackage(kp, now, s.cfg.MaxKeyPackageLifetime); err != nil {
		var im *InvalidMessageError
		if errors.As(err, &im) {
			return KeyPackageRecord{}, err
		}
		return KeyPackageRecord{}, invalidMessage("KeyPackage", err)
	}
	if kp.CipherSuite != client.CipherSuite {
		return KeyPackageRecord{}, invalidf("", "KeyPackage is for cipher suite %d but client %q registered suite %d",
			kp.CipherSuite, client.ID, client.CipherSuite)
	}
	id, err := credentialClientID(&kp.LeafNode.Credential)
	if err != nil {
		return KeyPackageRecord{}, err
	}
	if id != client.ID {
		return KeyPackageRecord{}, fmt.Errorf("%w: the KeyPackage's credential names %q, not the uploading client %q",
			ErrPermissionDenied, id, client.ID)
	}
	if err := b.checkLeafBound(ctx, "the KeyPackage's leaf_node", &kp.LeafNode); err != nil {
		return KeyPackageRecord{}, err
	}
	ref, err := kp.Ref()
	if err != nil {
		return KeyPackageRecord{}, invalidMessage("KeyPackageRef", err)
	}
	return KeyPackageRecord{
		Ref:         ref,
		ClientID:    client.ID,
		CipherSuite: kp.CipherSuite,
		Data:        bytes.Clone(up.Data),
		NotBefore:   lifetimeTime(kp.LeafNode.Lifetime.NotBefore),
		NotAfter:    lifetimeTime(kp.LeafNode.Lifetime.NotAfter),
		LastResort:  up.LastResort,
		UploadedAt:  now,
	}, nil
}

func (r KeyPackageRecord) info() KeyPackageInfo {
	return KeyPackageInfo{Ref: r.Ref, CipherSuite: r.CipherSuite, NotAfter: r.NotAfter, LastResort: r.LastResort}
}

// ListKeyPackages lists the client's unclaimed KeyPackages, expired ones
// included, oldest first.
func (s *Service) ListKeyPackages(ctx context.Context, clientID string) ([]KeyPackageInfo, error) {
	if err := s.allow(clientID); err != nil {
		return nil, err
	}
	recs, err := s.store.KeyPackages(ctx, clientID)
	if err != nil {
		return nil, err
	}
	out := make([]KeyPackageInfo, len(recs))
	for i, r := range recs {
		out[i] = r.info()
	}
	return out, nil
}

// DeleteKeyPackages deletes some of the client's unclaimed KeyPackages by
// ref and returns how many it deleted; unknown refs are skipped.
func (s *Service) DeleteKeyPackages(ctx context.Context, clientID string, refs [][]byte) (int, error) {
	if err := s.allow(clientID); err != nil {
		return 0, err
	}
	if len(refs) > maxUploadBatch {
		return 0, &TooLargeError{Limit: maxUploadBatch, What: "refs per delete"}
	}
	n, err := s.store.DeleteKeyPackages(ctx, clientID, refs)
	if err == nil && n > 0 {
		s.notify(ClientTopic(clientID))
	}
	return n, err
}

// CountKeyPackages counts the client's claimable KeyPackages per suite:
// unclaimed, valid now, last-resort ones not counted.
func (s *Service) CountKeyPackages(ctx context.Context, clientID string) (map[mls.CipherSuite]int, error) {
	if err := s.allow(clientID); err != nil {
		return nil, err
	}
	return s.store.CountKeyPackages(ctx, clientID, s.now())
}

// KeyPackageStock counts the claimable KeyPackages of all clients per
// suite, for operators; it is not rate-limited and acts for no client.
func (s *Service) KeyPackageStock(ctx context.Context) (map[mls.CipherSuite]int, error) {
	return s.store.KeyPackageStock(ctx, s.now())
}

// ClaimKeyPackage claims one KeyPackage of target for suite cs on behalf
// of claimer. The KeyPackage is handed out once; when none is left, the
// target's last-resort KeyPackage is returned without being used up; when
// there is none of that either, ErrKeyPackagesExhausted. A client cannot
// claim its own KeyPackages.
func (s *Service) ClaimKeyPackage(ctx context.Context, claimer, target string, cs mls.CipherSuite) (ClaimedKeyPackage, error) {
	if err := s.allow(claimer); err != nil {
		return ClaimedKeyPackage{}, err
	}
	if claimer == target {
		return ClaimedKeyPackage{}, fmt.Errorf("%w: a client cannot claim its own KeyPackages", ErrInvalidArgument)
	}
	if _, err := s.store.Client(ctx, target); err != nil {
		return ClaimedKeyPackage{}, err
	}
	out, _, err := s.claim(ctx, claimer, []string{target}, cs, 1)
	if err != nil {
		return ClaimedKeyPackage{}, err
	}
	if len(out) == 0 {
		return ClaimedKeyPackage{}, fmt.Errorf("%w: client %q, suite %d", ErrKeyPackagesExhausted, target, cs)
	}
	return out[0], nil
}

// ClaimKeyPackagesForUser claims one KeyPackage of suite cs for each
// client of userID other than the claimer, in one step. Clients of the
// user with nothing to claim (or registered with another suite) are left
// out of the answer; if that leaves none, ErrKeyPackagesExhausted.
func (s *Service) ClaimKeyPackagesForUser(ctx context.Context, claimer, userID string, cs mls.CipherSuite) ([]ClaimedKeyPackage, error) {
	if err := s.allow(claimer); err != nil {
		return nil, err
	}
	clients, err := s.store.ClientsOfUser(ctx, userID)
	if err != nil {
		return nil, err
	}
	var targets []string
	for _, c := range clients {
		if c.ID != claimer && c.CipherSuite == cs {
			targets = append(targets, c.ID)
		}
	}
	if len(clients) == 0 {
		return nil, fmt.Errorf("%w: user %q has no clients", ErrNotFound, userID)
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("%w: user %q has no other client with suite %d", ErrKeyPackagesExhausted, userID, cs)
	}
	sort.Strings(targets)
	// One claim of the claimer's budget for the whole user, as before
	// batches existed; each client of the user pays its own.
	out, _, err := s.claim(ctx, claimer, targets, cs, 1)
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: user %q, suite %d", ErrKeyPackagesExhausted, userID, cs)
	}
	return out, nil
}

// MaxClaimBatch bounds the targets of one ClaimKeyPackagesFor call (also
// bounded by Config.MaxGroupSize: one Commit cannot add more).
const MaxClaimBatch = 1000

// ClaimBatchLimit is the most targets one ClaimKeyPackagesFor call may
// name: MaxClaimBatch, Config.MaxGroupSize, and the claimer's whole claim
// budget (a minute of Config.ClaimsPerMinute), whichever is least.
func (s *Service) ClaimBatchLimit() int {
	n := min(MaxClaimBatch, s.cfg.MaxGroupSize)
	if s.claimsBy != nil {
		n = min(n, s.claimsBy.burst)
	}
	return n
}

// ClaimKeyPackagesFor claims one KeyPackage of suite cs for each of
// targets on behalf of claimer, in one store transaction: the batch form
// of ClaimKeyPackage, for adding many clients with one Commit.
//
// targets must not be empty, repeat a client or name the claimer
// (ErrInvalidArgument), and holds at most MaxClaimBatch and
// Config.MaxGroupSize clients (*TooLargeError). Every target must be
// registered: otherwise ErrNotFound names the unknown ones and nothing is
// claimed.
//
// Rate limits: each target costs the claimer one claim of its budget
// (Config.ClaimsPerMinute) and costs the target one of its own
// (Config.ClaimsPerTargetPerMinute), as claiming the targets one by one
// would. The batch is all or nothing: if the claimer's remaining budget
// cannot cover all of targets, or some target's budget is spent, it fails
// with a *RateLimitedError whose RetryAfter is when it would pass, and
// takes nothing from any budget. A batch larger than the claimer's whole
// budget could never pass and fails with a *TooLargeError instead (see
// ClaimBatchLimit).
//
// A target with nothing to claim for cs (not even a last-resort
// KeyPackage) does not fail the batch: it is left out of claimed and
// listed in exhausted, in the order of targets, as are the claimed ones.
// Targets that end up with less than Config.KeyPackageLowWater, and the
// exhausted ones, get a low-water event as after a single claim.
func (s *Service) ClaimKeyPackagesFor(ctx context.Context, claimer string, targets []string, cs mls.CipherSuite) (claimed []ClaimedKeyPackage, exhausted []string, err error) {
	if err := s.allow(claimer); err != nil {
		return nil, nil, err
	}
	if len(targets) == 0 {
		return nil, nil, fmt.Errorf("%w: no clients to claim KeyPackages of", ErrInvalidArgument)
	}
	if limit := min(MaxClaimBatch, s.cfg.MaxGroupSize); len(targets) > limit {
		return nil, nil, &TooLargeError{Limit: limit, What: "clients per claim"}
	}
	seen := make(map[string]bool, len(targets))
	for _, t := range targets {
		if t == claimer {
			return nil, nil, fmt.Errorf("%w: a client cannot claim its own KeyPackages; leave %q out of the list", ErrInvalidArgument, claimer)
		}
		if seen[t] {
			return nil, nil, fmt.Errorf("%w: client %q is listed twice; name each client once", ErrInvalidArgument, t)
		}
		seen[t] = true
	}
	var unknown []string
	for _, t := range targets {
		if _, err := s.store.Client(ctx, t); errors.Is(err, ErrNotFound) {
			unknown = append(unknown, t)
		} else if err != nil {
			return nil, nil, err
		}
	}
	if len(unknown) > 0 {
		return nil, nil, fmt.Errorf("%w: %s not registered; nothing was claimed", ErrNotFound, nameSome(unknown, 10))
	}
	if s.claimsBy != nil && len(targets) > s.claimsBy.burst {
		return nil, nil, &TooLargeError{Limit: s.claimsBy.burst, What: "claims per claimer per minute"}
	}
	return s.claim(ctx, claimer, targets, cs, len(targets))
}

// nameSome names the clients of ids, at most max of them, for an error.
func nameSome(ids []string, max int) string {
	if len(ids) == 1 {
		return fmt.Sprintf("client %q is", ids[0])
	}
	if len(ids) <= max {
		return fmt.Sprintf("clients %q are", ids)
	}
	return fmt.Sprintf("%d clients (%q and %d more) are", len(ids), ids[:max], len(ids)-max)
}

// claim applies the claim rate limits and claims for targets: cost claims
// of the claimer's budget (all or none) and one of each target's. It
// returns the claimed KeyPackages in the order of targets, and the
// targets with nothing left.
func (s *Service) claim(ctx context.Context, claimer string, targets []string, cs mls.CipherSuite, cost int) ([]ClaimedKeyPackage, []string, error) {
	now := s.cfg.Now()
	refund, err := s.claimsBy.reserveN(now, claimer, cost)
	if err != nil {
		return nil, nil, err
	}
	if err := s.claimsForTarget.reserve(now, targets...); err != nil {
		// The batch did not happen: give the claimer its budget back.
		refund()
		return nil, nil, err
	}
	claims, err := s.store.ClaimKeyPackages(ctx, ClaimParams{Claimer: claimer, Targets: targets, Suite: cs, Now: s.now()})
	if err != nil {
		return nil, nil, err
	}
	var out []ClaimedKeyPackage
	var exhausted, wake []string
	for _, c := range claims {
		if c.KeyPackage == nil {
			exhausted = append(exhausted, c.Target)
			wake = append(wake, ClientTopic(c.Target))
			continue
		}
		out = append(out, ClaimedKeyPackage{
			ClientID:   c.Target,
			Ref:        c.KeyPackage.Ref,
			Data:       c.KeyPackage.Data,
			LastResort: c.KeyPackage.LastResort,
		})
		if c.Remaining < s.cfg.KeyPackageLowWater {
			wake = append(wake, ClientTopic(c.Target))
		}
	}
	s.notify(wake...)
	return out, exhausted, nil
}

// reserveN takes n tokens of key at now, or none: if fewer than n are
// there, a *RateLimitedError says when they will be. cancel gives the
// tokens back. n above the burst never passes; callers refuse such an n
// beforehand.
func (k *keyedLimiter) reserveN(now time.Time, key string, n int) (cancel func(), err error) {
	if k == nil || n <= 0 {
		return func() {}, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	r := k.get(key).ReserveN(now, n)
	if !r.OK() {
		return nil, &RateLimitedError{RetryAfter: time.Hour, What: k.what}
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return nil, &RateLimitedError{RetryAfter: d, What: k.what}
	}
	return func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		r.CancelAt(now)
	}, nil
}
