package client

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestDeviceLink: a user's second device registers only with a one-time
// link made by its first; the link works once, and the new device is
// then a client like any other.
func TestDeviceLink(t *testing.T) {
	e := startEnv(t)
	ctx := ctxT(t)
	phone := e.open("carol-phone", t.TempDir(), func(c *Config) { c.UserID = "carol" })

	open := func(id, link string) error {
		c, err := Open(context.Background(), Config{Server: e.url, StatePath: filepath.Join(t.TempDir(), id+".db"),
			ClientID: id, UserID: "carol", DeviceLink: link, Logger: quiet, KeyPackages: 2})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := open("carol-laptop", ""); err == nil {
		t.Fatal("a second client of user carol registered without a device link")
	}
	l, err := phone.CreateDeviceLink(ctx, 5*time.Minute)
	if err != nil {
		t.Fatalf("CreateDeviceLink: %v", err)
	}
	if l.UserID != "carol" || l.Link == "" || time.Until(l.ExpiresAt) > 5*time.Minute+time.Minute {
		t.Fatalf("device link %+v: want user carol, a link, expiring within 5 minutes", l)
	}
	if err := open("carol-laptop", l.Link); err != nil {
		t.Fatalf("registering with the device link: %v", err)
	}
	if err := open("carol-tablet", l.Link); err == nil {
		t.Fatal("the device link registered a second client")
	}

	// alice adds both devices of carol.
	alice := e.client("alice")
	g, err := alice.CreateGroup(ctx, GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Add(ctx, "carol-laptop", "carol-phone"); err != nil {
		t.Fatalf("Add(carol's devices): %v", err)
	}
	if m := g.Members(); !slices.Equal(m, []string{"alice", "carol-laptop", "carol-phone"}) {
		t.Errorf("members after adding user carol: %v", m)
	}
}
