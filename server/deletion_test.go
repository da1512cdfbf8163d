package server_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

const testAdminToken = "admin-token-0123456789abcdef"

func withAdmin(token string) envOption {
	return func(_ *ds.Config, c *server.Config) { c.AdminToken = token }
}

// admin returns an AdminService client that sends token as its bearer.
func (e *testEnv) admin(token string) mlsdsv1connect.AdminServiceClient {
	tok := token
	all := append([]connect.ClientOption{connect.WithInterceptors(bearer{&tok})}, e.opts...)
	return mlsdsv1connect.NewAdminServiceClient(e.http, e.url, all...)
}

// TestDeleteClient: bob, a member of a transparent group with alice and
// carol and of an opaque group of his own, deletes himself. His token
// stops working at once, his messages stay for the others without his
// id, the others no longer see him on the roster, a Commit that removes
// his leaf is accepted, and his own group goes.
func TestDeleteClient(t *testing.T) {
	st := openSQLite(t, t.TempDir()+"/mlsds.db")
	e := startEnvOn(t, st)
	ctx := context.Background()
	g := newMLSGroup(t, e)
	alice, bob, carol := g.alice, g.bob, g.carol
	bobSays := bob.mustSend(privateMessage(t, g.id, 1, mls.ContentTypeApplication, 40))
	alice.mustSend(privateMessage(t, g.id, 1, mls.ContentTypeApplication, 40))
	solo := groupID("solo")
	bob.createOpaqueGroup(solo)
	bob.mustSend(privateMessage(t, solo, 0, mls.ContentTypeApplication, 40))
	bob.uploadKeyPackages(3, true)
	bobSub := bob.subscribe()
	bobSub.waitCaughtUp(t)

	res, err := bob.account().DeleteClient(ctx, connect.NewRequest(&mlsdsv1.DeleteClientRequest{}))
	if err != nil {
		t.Fatalf("DeleteClient: %v", err)
	}
	if res.Msg.GroupsLeft != 2 {
		t.Errorf("groups_left = %d, want 2", res.Msg.GroupsLeft)
	}

	// The token is dead on this node at once, for every service; so is
	// the stream, and a new one.
	_, err = bob.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: g.id}))
	connectErr(t, err, connect.CodeUnauthenticated)
	_, err = bob.account().DeleteClient(ctx, connect.NewRequest(&mlsdsv1.DeleteClientRequest{}))
	connectErr(t, err, connect.CodeUnauthenticated)
	bobSub.waitEnd(t)
	_, err = bob.fetch(g.id, 1, 0)
	connectErr(t, err, connect.CodeUnauthenticated)
	// Nor can it log in again.
	if _, err := bob.tryLogin(); err == nil {
		t.Errorf("a deleted client logged in")
	}

	// The others: bob is off the roster and the key directory; his
	// message stays, without his id.
	roster, err := alice.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: g.id}))
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(roster.Msg.ClientIds, "bob") || !slices.Contains(roster.Msg.ClientIds, "carol") {
		t.Errorf("roster after bob's deletion = %v", roster.Msg.ClientIds)
	}
	keys, err := alice.account().GetClientKeys(ctx, connect.NewRequest(&mlsdsv1.GetClientKeysRequest{ClientIds: []string{"bob", "carol"}}))
	if err != nil || len(keys.Msg.Clients) != 1 || keys.Msg.Clients[0].ClientId != "carol" {
		t.Errorf("GetClientKeys after bob's deletion = %v, %v; want carol only", keys.Msg.GetClients(), err)
	}
	page, err := carol.fetch(g.id, bobSays.GroupSeq, 1)
	if err != nil || len(page.Messages) != 1 {
		t.Fatalf("carol's fetch of bob's message: %v, %v", page, err)
	}
	if s := page.Messages[0].SenderClientId; s != "" {
		t.Errorf("bob's message has sender %q after his deletion, want none", s)
	}
	_, err = alice.kps.ClaimKeyPackages(ctx, claimReq("bob"))
	if err == nil {
		t.Errorf("claimed a KeyPackage of a deleted client")
	}

	// Alice commits the removal of bob's leaf: accepted; carol follows.
	commit, _, err := g.ga.Commit(nil, []mls.LeafIndex{g.gb.Self()})
	if err != nil {
		t.Fatal(err)
	}
	r := alice.sendCommit(g.ga, commit, nil)
	m := alice.mustSend(privateMessage(t, g.id, 2, mls.ContentTypeApplication, 40))
	page, err = carol.fetch(g.id, r.GroupSeq, 0)
	if err != nil || len(page.Messages) != 2 || page.Messages[1].GroupSeq != m.GroupSeq {
		t.Fatalf("carol's fetch after the removal: %v, %v", page, err)
	}
	if w, err := st.Memberships(ctx, g.id, "bob"); err != nil || len(w) != 0 {
		t.Errorf("bob's windows after the removal Commit = %v, %v; want none", w, err)
	}

	// His own group is gone.
	if _, err := st.Group(ctx, solo); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("bob's own group after his deletion: %v, want ErrNotFound", err)
	}

	// The id is free again; the old token does not act for the new
	// client of that id.
	time.Sleep(1100 * time.Millisecond) // the token's issue time is kept to the second
	oldToken := bob.token
	bob2 := e.newMember("bob")
	bob2.register("bob")
	bob2.login()
	bob.token = oldToken
	_, err = bob.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: g.id}))
	connectErr(t, err, connect.CodeUnauthenticated)
	if _, err := bob2.account().GetClientKeys(ctx, connect.NewRequest(&mlsdsv1.GetClientKeysRequest{ClientIds: []string{"bob"}})); err != nil {
		t.Errorf("the new bob's own token: %v", err)
	}
}

// TestDeleteClientOtherNode: a node that did not delete the client stops
// accepting its token within LiveClientTTL (here: at its next store read,
// since the TTL is tiny).
func TestDeleteClientOtherNode(t *testing.T) {
	secret := randBytes(32)
	shared := func(_ *ds.Config, c *server.Config) {
		c.AuthSecret = secret
		c.LiveClientTTL = time.Nanosecond
	}
	path := t.TempDir() + "/mlsds.db"
	e1 := startEnvOn(t, openSQLite(t, path), shared)
	e2 := startEnvOn(t, openSQLite(t, path), shared)
	ctx := context.Background()
	dave := e1.client("dave")
	on2 := e2.newMember("dave")
	on2.token = dave.token
	if _, err := on2.account().GetClientKeys(ctx, connect.NewRequest(&mlsdsv1.GetClientKeysRequest{ClientIds: []string{"dave"}})); err != nil {
		t.Fatalf("dave's token on node 2: %v", err)
	}
	if _, err := dave.account().DeleteClient(ctx, connect.NewRequest(&mlsdsv1.DeleteClientRequest{})); err != nil {
		t.Fatal(err)
	}
	_, err := on2.account().GetClientKeys(ctx, connect.NewRequest(&mlsdsv1.GetClientKeysRequest{ClientIds: []string{"dave"}}))
	connectErr(t, err, connect.CodeUnauthenticated)
}

func TestAdminService(t *testing.T) {
	ctx := context.Background()
	// Off without a token: Unimplemented, whatever is sent.
	off := startEnv(t)
	_, err := off.admin(testAdminToken).DeleteClient(ctx, connect.NewRequest(&mlsdsv1.AdminServiceDeleteClientRequest{ClientId: "x"}))
	connectErr(t, err, connect.CodeUnimplemented)

	st := openSQLite(t, t.TempDir()+"/mlsds.db")
	e := startEnvOn(t, st, withAdmin(testAdminToken))
	alice := e.client("alice")
	phone := e.newMember("erin-phone")
	phone.register("erin")
	phone.login()
	link, err := phone.account().CreateDeviceLink(ctx, connect.NewRequest(&mlsdsv1.CreateDeviceLinkRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	laptop := e.newMember("erin-laptop")
	if err := laptop.tryRegister("erin", link.Msg.DeviceLink); err != nil {
		t.Fatal(err)
	}
	laptop.login()
	gid := groupID("erin")
	alice.createOpaqueGroup(gid, phone, laptop)

	// No token, a wrong one, a client's session token: refused.
	for name, tok := range map[string]string{"none": "", "wrong": testAdminToken + "x", "client session": alice.token} {
		_, err := e.admin(tok).DeleteUser(ctx, connect.NewRequest(&mlsdsv1.AdminServiceDeleteUserRequest{UserId: "erin"}))
		if connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Errorf("AdminService with %s token: %v, want PermissionDenied", name, err)
		}
	}
	// The admin token is no session token.
	admin := e.newMember("alice")
	admin.token = testAdminToken
	_, err = admin.account().GetClientKeys(ctx, connect.NewRequest(&mlsdsv1.GetClientKeysRequest{ClientIds: []string{"alice"}}))
	connectErr(t, err, connect.CodeUnauthenticated)

	// Unknown ids.
	_, err = e.admin(testAdminToken).DeleteClient(ctx, connect.NewRequest(&mlsdsv1.AdminServiceDeleteClientRequest{ClientId: "nobody"}))
	connectErr(t, err, connect.CodeNotFound)
	_, err = e.admin(testAdminToken).DeleteUser(ctx, connect.NewRequest(&mlsdsv1.AdminServiceDeleteUserRequest{UserId: "nobody"}))
	connectErr(t, err, connect.CodeNotFound)

	res, err := e.admin(testAdminToken).DeleteUser(ctx, connect.NewRequest(&mlsdsv1.AdminServiceDeleteUserRequest{UserId: "erin"}))
	if err != nil {
		t.Fatalf("DeleteUser: %v", err)
	}
	if !slices.Equal(res.Msg.ClientIds, []string{"erin-laptop", "erin-phone"}) {
		t.Errorf("DeleteUser deleted %v, want erin-laptop and erin-phone", res.Msg.ClientIds)
	}
	for _, m := range []*member{phone, laptop} {
		_, err := m.account().GetClientKeys(ctx, connect.NewRequest(&mlsdsv1.GetClientKeysRequest{ClientIds: []string{"alice"}}))
		connectErr(t, err, connect.CodeUnauthenticated)
	}
	roster, err := alice.groups.GetRoster(ctx, connect.NewRequest(&mlsdsv1.GetRosterRequest{GroupId: gid}))
	if err != nil || !slices.Equal(roster.Msg.ClientIds, []string{"alice"}) {
		t.Errorf("roster after erin's deletion = %v, %v; want alice", roster.Msg.GetClientIds(), err)
	}

	// DeleteClient of alice, the group's last member: the group goes.
	r, err := e.admin(testAdminToken).DeleteClient(ctx, connect.NewRequest(&mlsdsv1.AdminServiceDeleteClientRequest{ClientId: "alice"}))
	if err != nil || r.Msg.GroupsLeft != 1 {
		t.Fatalf("DeleteClient(alice) = %v, %v; want 1 group left", r, err)
	}
	if _, err := st.Group(ctx, gid); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("the group of a deleted last member: %v, want ErrNotFound", err)
	}
}

func openSQLite(t *testing.T, path string) ds.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitEnd waits for the stream to end, skipping its events.
func (s *subscription) waitEnd(t testing.TB) error {
	t.Helper()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-s.events:
			if !ok {
				return <-s.done
			}
		case <-timer.C:
			t.Fatal("the stream did not end within 30s")
		}
	}
}
