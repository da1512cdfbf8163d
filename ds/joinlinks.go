package ds

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"time"
)

// Join links. A transparent group's GroupInfo and tree are what a client
// needs to join it by external Commit (RFC 9420 §12.4.3.2), so the
// Service serves them, and accepts external Commits and new_member
// Proposals, only from clients the group lets in: its members (who resync
// by external Commit), clients of a user that already has a member client
// in the group (new devices), and holders of a live join link's token,
// which a member created and shared. Config.ExternalJoin can widen this
// to any registered client, or narrow it to members.

const (
	// DefaultJoinLinkTTL is how long a join link lives unless asked.
	DefaultJoinLinkTTL = 7 * 24 * time.Hour
	// MaxJoinLinkTTL is the longest a join link may live.
	MaxJoinLinkTTL = 30 * 24 * time.Hour
	// MaxJoinLinksPerGroup bounds a group's live join links.
	MaxJoinLinksPerGroup = 100
	// maxJoinTokenSize bounds the join tokens the Service hashes.
	maxJoinTokenSize = 256
)

// NewJoinLink is a join link just created: the only time its token is
// known to anyone but its creator.
type NewJoinLink struct {
	ID        string
	Token     string // 256 random bits, base64url; the secret to share
	ExpiresAt time.Time
}

// hashJoinToken returns the SHA-256 of a join token, the form stored.
func hashJoinToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// CreateJoinLink makes a join link for a transparent group; only members
// may. ttl 0 means DefaultJoinLinkTTL; more than MaxJoinLinkTTL is
// refused with ErrInvalidArgument.
func (s *Service) CreateJoinLink(ctx context.Context, client string, groupID []byte, ttl time.Duration) (NewJoinLink, error) {
	if err := s.allow(client); err != nil {
		return NewJoinLink{}, err
	}
	head, err := s.checkMember(ctx, client, groupID)
	if err != nil {
		return NewJoinLink{}, err
	}
	if head.Mode != ModeTransparent {
		return NewJoinLink{}, fmt.Errorf("%w: group %x is opaque: the Delivery Service cannot serve its GroupInfo for joining; add members with a Commit and a Welcome", ErrInvalidArgument, head.ID)
	}
	switch {
	case ttl == 0:
		ttl = DefaultJoinLinkTTL
	case ttl < 0 || ttl > MaxJoinLinkTTL:
		return NewJoinLink{}, fmt.Errorf("%w: a join link lives at most %s; ask for less", ErrInvalidArgument, MaxJoinLinkTTL)
	}
	var secret [32]byte
	var id [16]byte
	rand.Read(secret[:])
	rand.Read(id[:])
	token := base64.RawURLEncoding.EncodeToString(secret[:])
	now := s.now()
	l := JoinLink{
		GroupID:   bytes.Clone(head.ID),
		ID:        hex.EncodeToString(id[:]),
		TokenHash: hashJoinToken(token),
		CreatedBy: client,
		CreatedAt: now,
		ExpiresAt: now.Add(ttl),
	}
	if err := s.store.CreateJoinLink(ctx, l, MaxJoinLinksPerGroup); err != nil {
		return NewJoinLink{}, err
	}
	return NewJoinLink{ID: l.ID, Token: token, ExpiresAt: l.ExpiresAt}, nil
}

// RevokeJoinLink ends a join link of the group at once; only members may.
// ErrNotFound if the group has no link with that id.
func (s *Service) RevokeJoinLink(ctx context.Context, client string, groupID []byte, linkID string) error {
	if err := s.allow(client); err != nil {
		return err
	}
	if _, err := s.checkMember(ctx, client, groupID); err != nil {
		return err
	}
	if err := s.store.RevokeJoinLink(ctx, groupID, linkID); err != nil {
		if isNotFound(err) {
			return fmt.Errorf("%w: the group has no join link %q (it may have expired)", ErrNotFound, linkID)
		}
		return err
	}
	return nil
}

// JoinLinks lists the group's live join links, without their tokens; only
// members may ask.
func (s *Service) JoinLinks(ctx context.Context, client string, groupID []byte) ([]JoinLink, error) {
	if err := s.allow(client); err != nil {
		return nil, err
	}
	if _, err := s.checkMember(ctx, client, groupID); err != nil {
		return nil, err
	}
	ls, err := s.store.JoinLinks(ctx, groupID, s.now())
	if err != nil {
		return nil, err
	}
	for i := range ls {
		ls[i].TokenHash = nil
	}
	return ls, nil
}

// mayJoin reports whether client, not a member of the transparent group,
// may read what joining needs and join by external Commit: see the top of
// this file.
func (s *Service) mayJoin(ctx context.Context, head GroupRecord, client, joinToken string) (bool, error) {
	if head.Mode != ModeTransparent {
		return false, nil
	}
	switch s.cfg.ExternalJoin {
	case ExternalJoinMembersOnly:
		return false, nil
	case ExternalJoinAny:
		if _, err := s.store.Client(ctx, client); err != nil {
			if isNotFound(err) {
				return false, fmt.Errorf("%w: %q is not a registered client", ErrPermissionDenied, client)
			}
			return false, err
		}
		return true, nil
	}
	if joinToken != "" && len(joinToken) <= maxJoinTokenSize {
		_, err := s.store.JoinLinkByToken(ctx, head.ID, hashJoinToken(joinToken), s.now())
		if err == nil {
			return true, nil
		}
		if !isNotFound(err) {
			return false, err
		}
	}
	// A new device of a user already in the group.
	c, err := s.store.Client(ctx, client)
	if err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, err
	}
	if c.UserID == "" {
		return false, nil
	}
	devices, err := s.store.ClientsOfUser(ctx, c.UserID)
	if err != nil {
		return false, err
	}
	for _, d := range devices {
		if d.ID == client {
			continue
		}
		ws, err := s.store.Memberships(ctx, head.ID, d.ID)
		if err != nil {
			return false, err
		}
		if len(ws) > 0 && ws[len(ws)-1].Open() {
			return true, nil
		}
	}
	return false, nil
}
