package client

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

// Join links: a member of a transparent-mode group asks the server for a
// secret token that lets whoever holds it fetch the group's GroupInfo and
// join by external Commit (RFC 9420 §12.4.3.2), until the link expires or
// a member revokes it. Without one, the server admits by external Commit
// only the group's members (a resync) and new devices of users already in
// the group.

// joinLinkPrefix starts the printable form of a JoinLink.
const joinLinkPrefix = "mlsds-join:"

// JoinLink is a link to join a transparent-mode group by external Commit.
// Its printable form (String, ParseJoinLink) holds the group id and the
// token: whoever holds it may join the group until the link expires or is
// revoked, so share it as a secret, with the people meant to join only.
type JoinLink struct {
	// GroupID is the group the link admits to.
	GroupID []byte
	// Token is the secret. It is empty in the links Group.JoinLinks lists.
	Token string
	// ID names the link for Group.RevokeJoinLink; it is not secret, and
	// not part of the printable form.
	ID string
	// CreatedBy is the client that made the link (Group.JoinLinks only).
	CreatedBy string
	// CreatedAt and ExpiresAt bound the link's life, as far as known.
	CreatedAt, ExpiresAt time.Time
}

// String returns the printable form of the link:
// "mlsds-join:" + the group id in unpadded base64url + "." + the token.
func (l JoinLink) String() string {
	return joinLinkPrefix + base64.RawURLEncoding.EncodeToString(l.GroupID) + "." + l.Token
}

// ParseJoinLink parses the printable form of a JoinLink (see
// JoinLink.String). The result has GroupID and Token set.
func ParseJoinLink(s string) (JoinLink, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), joinLinkPrefix)
	if !ok {
		return JoinLink{}, fmt.Errorf("client: %q is not a join link: a join link starts with %q", s, joinLinkPrefix)
	}
	enc, token, ok := strings.Cut(rest, ".")
	if !ok || enc == "" || token == "" {
		return JoinLink{}, errors.New("client: the join link is cut short: it needs a group id and a token, separated by a dot")
	}
	id, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil || len(id) == 0 {
		return JoinLink{}, errors.New("client: the join link's group id is not unpadded base64url; copy the whole link")
	}
	for _, r := range token {
		if r <= ' ' || r > '~' {
			return JoinLink{}, errors.New("client: the join link's token holds characters no token has; copy the whole link")
		}
	}
	return JoinLink{GroupID: id, Token: token}, nil
}

// ErrJoinLinkRefused is returned (wrapped) by Client.JoinWithLink when the
// server does not take the link: it was revoked or has expired, or it is
// not a link of that group.
var ErrJoinLinkRefused = errors.New("client: the server refuses the join link (revoked, expired, or not a link of this group); ask a member for a new one")

// CreateJoinLink asks the server for a new join link of the group, valid
// for ttl (0: the server's default, 7 days). Only members may make one,
// and only of a transparent-mode group.
func (g *Group) CreateJoinLink(ctx context.Context, ttl time.Duration) (JoinLink, error) {
	secs, err := ttlSeconds(ttl)
	if err != nil {
		return JoinLink{}, err
	}
	if err := g.checkMember(); err != nil {
		return JoinLink{}, err
	}
	res, err := g.c.rpc.groups.CreateJoinLink(ctx, connect.NewRequest(&mlsdsv1.CreateJoinLinkRequest{GroupId: g.id, TtlSeconds: secs}))
	if err != nil {
		return JoinLink{}, fmt.Errorf("client: creating a join link of group %x: %w", g.id, err)
	}
	l := JoinLink{GroupID: g.groupID(), Token: res.Msg.JoinToken, ID: res.Msg.LinkId, CreatedBy: g.c.id, CreatedAt: time.Now()}
	if res.Msg.ExpiresAt != nil {
		l.ExpiresAt = res.Msg.ExpiresAt.AsTime()
	}
	if l.Token == "" {
		return JoinLink{}, fmt.Errorf("client: the server answered CreateJoinLink of group %x without a token", g.id)
	}
	return l, nil
}

// RevokeJoinLink ends the group's join link with id linkID at once: the
// server refuses it from then on, also to joins under way.
func (g *Group) RevokeJoinLink(ctx context.Context, linkID string) error {
	if linkID == "" {
		return errors.New("client: RevokeJoinLink needs the link's id (JoinLink.ID, as CreateJoinLink and JoinLinks return it)")
	}
	if err := g.checkMember(); err != nil {
		return err
	}
	_, err := g.c.rpc.groups.RevokeJoinLink(ctx, connect.NewRequest(&mlsdsv1.RevokeJoinLinkRequest{GroupId: g.id, LinkId: linkID}))
	if err != nil {
		return fmt.Errorf("client: revoking join link %s of group %x: %w", linkID, g.id, err)
	}
	return nil
}

// JoinLinks returns the group's live join links, without their tokens.
func (g *Group) JoinLinks(ctx context.Context) ([]JoinLink, error) {
	if err := g.checkMember(); err != nil {
		return nil, err
	}
	res, err := g.c.rpc.groups.ListJoinLinks(ctx, connect.NewRequest(&mlsdsv1.ListJoinLinksRequest{GroupId: g.id}))
	if err != nil {
		return nil, fmt.Errorf("client: listing the join links of group %x: %w", g.id, err)
	}
	out := make([]JoinLink, 0, len(res.Msg.Links))
	for _, m := range res.Msg.Links {
		l := JoinLink{GroupID: g.groupID(), ID: m.LinkId, CreatedBy: m.CreatedBy}
		if m.CreatedAt != nil {
			l.CreatedAt = m.CreatedAt.AsTime()
		}
		if m.ExpiresAt != nil {
			l.ExpiresAt = m.ExpiresAt.AsTime()
		}
		out = append(out, l)
	}
	return out, nil
}

// JoinWithLink joins the group of link by external Commit, as JoinExternal
// does, with the link's token: the server hands out the group's GroupInfo
// and takes the Commit only with it. If the server does not take the link,
// the error wraps ErrJoinLinkRefused.
func (c *Client) JoinWithLink(ctx context.Context, link JoinLink) (*Group, error) {
	if len(link.GroupID) == 0 || link.Token == "" {
		return nil, errors.New("client: the join link has no group id or no token; ParseJoinLink reads the form JoinLink.String prints")
	}
	g, err := c.joinExternal(withJoinToken(ctx, link.Token), link.GroupID, nil)
	if err == nil {
		return g, nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		switch ce.Code() {
		case connect.CodePermissionDenied, connect.CodeNotFound, connect.CodeUnauthenticated:
			return nil, fmt.Errorf("%w: group %x: %v", ErrJoinLinkRefused, link.GroupID, ce)
		}
	}
	return nil, err
}

// checkMember fails if the client is closed or no longer a member.
func (g *Group) checkMember() error {
	if err := g.lockActive(); err != nil {
		return err
	}
	g.mu.Unlock()
	return nil
}

// ttlSeconds turns a link's lifetime into the API's whole seconds,
// rounding up.
func ttlSeconds(ttl time.Duration) (uint32, error) {
	if ttl < 0 {
		return 0, fmt.Errorf("client: a join link's lifetime must not be negative (got %v)", ttl)
	}
	secs := (ttl + time.Second - 1) / time.Second
	if secs > math.MaxUint32 {
		return 0, fmt.Errorf("client: a join link's lifetime of %v is too long", ttl)
	}
	return uint32(secs), nil
}

// joinTokenKey is the context key of the join token that joinExternal's
// calls (GetGroupInfo, SendCommitBundle) carry while JoinWithLink runs.
type joinTokenKey struct{}

func withJoinToken(ctx context.Context, token string) context.Context {
	return context.WithValue(ctx, joinTokenKey{}, token)
}

// joinTokenFrom returns the join token ctx carries, or "".
func joinTokenFrom(ctx context.Context) string {
	s, _ := ctx.Value(joinTokenKey{}).(string)
	return s
}
