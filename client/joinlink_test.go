package client

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestJoinLinkString(t *testing.T) {
	l := JoinLink{GroupID: []byte{0xfb, 0xff, 0x00, 0x10}, Token: "tok.en-_1", ID: "not printed"}
	s := l.String()
	if !strings.HasPrefix(s, "mlsds-join:") || strings.Contains(s, "not printed") {
		t.Fatalf("String() = %q", s)
	}
	p, err := ParseJoinLink(" " + s + "\n")
	if err != nil {
		t.Fatal(err)
	}
	// The token may hold dots: the group id ends at the first one.
	if !bytes.Equal(p.GroupID, l.GroupID) || p.Token != l.Token || p.ID != "" {
		t.Fatalf("ParseJoinLink(%q) = %+v", s, p)
	}
	for _, bad := range []string{"", "chat", "mlsds-join:", "mlsds-join:AAEC", "mlsds-join:AAEC.", "mlsds-join:.tok", "mlsds-join:A+/=.tok", "mlsds-join:AAEC.to ken"} {
		if _, err := ParseJoinLink(bad); err == nil {
			t.Errorf("ParseJoinLink(%q) succeeded", bad)
		}
	}
}

// TestJoinWithLink: a stranger joins a transparent group with a member's
// join link, and not after the link is revoked; without a link it cannot.
func TestJoinWithLink(t *testing.T) {
	e := startEnv(t)
	alice, dave, eve := e.client("alice"), e.client("dave"), e.client("eve")
	ctx := ctxT(t)
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	if _, err := eve.JoinExternal(ctx, gid); err == nil {
		t.Fatal("eve joined by external Commit without a link")
	}

	l, err := g.CreateJoinLink(ctx, time.Hour)
	if err != nil {
		t.Fatalf("CreateJoinLink: %v", err)
	}
	if l.ID == "" || l.Token == "" || !bytes.Equal(l.GroupID, gid) || l.ExpiresAt.Before(time.Now()) {
		t.Fatalf("CreateJoinLink returned %+v", l)
	}
	links, err := g.JoinLinks(ctx)
	if err != nil {
		t.Fatalf("JoinLinks: %v", err)
	}
	if len(links) != 1 || links[0].ID != l.ID || links[0].Token != "" || links[0].CreatedBy != "alice" {
		t.Fatalf("JoinLinks = %+v; want the one link, without its token", links)
	}

	shared, err := ParseJoinLink(l.String())
	if err != nil {
		t.Fatal(err)
	}
	dg, err := dave.JoinWithLink(ctx, shared)
	if err != nil {
		t.Fatalf("JoinWithLink: %v", err)
	}
	if got := dg.Members(); !slices.Equal(got, []string{"alice", "dave"}) {
		t.Errorf("dave's members: %v", got)
	}
	alice.waitFor("dave joined", 0, func(e Event) bool {
		return e.Kind == EventMembersAdded && slices.Equal(e.Members, []string{"dave"})
	})

	// A link of another group admits to nothing.
	other, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wrong := JoinLink{GroupID: other.ID(), Token: l.Token}
	if _, err := eve.JoinWithLink(ctx, wrong); !errors.Is(err, ErrJoinLinkRefused) {
		t.Fatalf("JoinWithLink with another group's token: %v; want ErrJoinLinkRefused", err)
	}

	if err := g.RevokeJoinLink(ctx, l.ID); err != nil {
		t.Fatalf("RevokeJoinLink: %v", err)
	}
	if _, err := eve.JoinWithLink(ctx, shared); !errors.Is(err, ErrJoinLinkRefused) {
		t.Fatalf("JoinWithLink after the revocation: %v; want ErrJoinLinkRefused", err)
	}
	if links, err := g.JoinLinks(ctx); err != nil || len(links) != 0 {
		t.Fatalf("JoinLinks after the revocation: %v, %v", links, err)
	}
	if got := g.Members(); !slices.Equal(got, []string{"alice", "dave"}) {
		t.Errorf("alice's members: %v", got)
	}
}
