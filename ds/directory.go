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
// a basic credential whose identity is clientID and the client's
// registered signature key, and not be stored already. At most one
// last-resort KeyPackage per suite: uploading another while one is stored
// fails with ErrAlreadyExists (delete the old one first).
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
	recs := make([]KeyPackageRecord, 0, len(kps))
	infos := make([]KeyPackageInfo, 0, len(kps))
	for i, up := range kps {
		if len(up.Data) > s.cfg.MaxMessageSize {
			return nil, &TooLargeError{Limit: s.cfg.MaxMessageSize, What: "message bytes"}
		}
		rec, err := s.checkKeyPackage(client, up, now)
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
	if err := s.store.AddKeyPackages(ctx, recs, s.cfg.MaxKeyPackagesPerClient); err != nil {
		return nil, err
	}
	s.notify(ClientTopic(clientID))
	return infos, nil
}

func (s *Service) checkKeyPackage(client Client, up KeyPackageUpload, now time.Time) (KeyPackageRecord, error) {
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
	if !bytes.Equal(kp.LeafNode.SignatureKey, client.SignatureKey) {
		return KeyPackageRecord{}, fmt.Errorf("%w: the KeyPackage's signature key is not the one client %q registered",
			ErrPermissionDenied, client.ID)
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
	out, err := s.claim(ctx, claimer, []string{target}, cs)
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
	out, err := s.claim(ctx, claimer, targets, cs)
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: user %q, suite %d", ErrKeyPackagesExhausted, userID, cs)
	}
	return out, nil
}

// claim applies the claim rate limits and claims for targets; targets with
// nothing left are absent from the answer.
func (s *Service) claim(ctx context.Context, claimer string, targets []string, cs mls.CipherSuite) ([]ClaimedKeyPackage, error) {
	now := s.cfg.Now()
	if err := s.claimsBy.reserve(now, claimer); err != nil {
		return nil, err
	}
	if err := s.claimsForTarget.reserve(now, targets...); err != nil {
		return nil, err
	}
	claims, err := s.store.ClaimKeyPackages(ctx, ClaimParams{Claimer: claimer, Targets: targets, Suite: cs, Now: s.now()})
	if err != nil {
		return nil, err
	}
	var out []ClaimedKeyPackage
	var wake []string
	for _, c := range claims {
		if c.KeyPackage == nil {
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
	return out, nil
}
