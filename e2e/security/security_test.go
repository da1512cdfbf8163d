// Package security is the hostile-input table of the security model,
// run against a real `mlsds serve` process on loopback with its embedded
// SQLite store. Every case is an attack by a registered client (a
// stranger, or a member of the group it attacks); each asserts the exact
// error, that not one row of the store changed, and that the group's
// members still talk afterwards.
package security

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/internal/testkit"
	"github.com/mlsds/mlsds/mls"
)

// member is a raw client that holds its own MLS state of the group.
type member struct {
	*testkit.Client
	g *mls.Group
}

// world is a transparent group of alice (its creator), bob and mallory,
// plus eve, a registered client outside the group.
type world struct {
	t       *testing.T
	srv     *testkit.Serve
	gid     []byte
	alice   *member
	bob     *member
	mallory *member
	eve     *testkit.Client
	pings   int

	// usedKP is a KeyPackage of carol that another group's Add used.
	usedKP *mls.KeyPackage
	// revokedLink is the token of a join link of the group, revoked.
	revokedLink string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	srv := testkit.StartServe(t, "--rate-limit", "-1", "--claim-rate", "-1", "--claimer-rate", "-1", "--auth-rate-limit", "-1")
	w := &world{t: t, srv: srv}
	mk := func(id string) *testkit.Client { return testkit.NewClient(t, srv.URL, id).MustJoin() }
	w.alice, w.bob, w.mallory = &member{Client: mk("alice")}, &member{Client: mk("bob")}, &member{Client: mk("mallory")}
	w.eve = mk("eve")
	bobKPs, bobPrivs := w.bob.Upload(2)
	malKPs, malPrivs := w.mallory.Upload(2)
	_ = bobKPs
	_ = malKPs

	// alice creates the group and adds bob and mallory with KeyPackages
	// claimed from the directory.
	kp, priv := w.alice.KeyPackage()
	w.gid = testkit.RandBytes(16)
	g, err := mls.NewGroup(w.gid, kp, priv)
	if err != nil {
		t.Fatal(err)
	}
	w.alice.g = g
	gi, err := g.GroupInfo(true)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := w.alice.Groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: w.gid, GroupInfo: testkit.Message(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}),
	})); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	claimed := w.claim(w.alice.Client, "bob", "mallory")
	pm, welcome, gi1, next := w.commit(w.alice, mls.CommitOptions{Adds: claimed})
	if _, err := w.alice.Groups.SendCommitBundle(ctx, connect.NewRequest(w.bundle(pm, welcome, gi1))); err != nil {
		t.Fatalf("adding bob and mallory: %v", err)
	}
	w.alice.g = next
	w.bob.g = w.join(welcome, claimed[0], bobKPs, bobPrivs)
	w.mallory.g = w.join(welcome, claimed[1], malKPs, malPrivs)
	w.alive()
	w.setupUsedKP()
	w.setupRevokedLink()
	return w
}

// setupUsedKP has eve create a group of her own and add carol to it with
// a KeyPackage claimed from the directory.
func (w *world) setupUsedKP() {
	t := w.t
	carol := testkit.NewClient(t, w.srv.URL, "carol").MustJoin()
	carol.Upload(1)
	kp, priv := w.eve.KeyPackage()
	g, err := mls.NewGroup(testkit.RandBytes(16), kp, priv)
	if err != nil {
		t.Fatal(err)
	}
	gi, err := g.GroupInfo(true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.eve.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: g.GroupID(), GroupInfo: testkit.Message(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})})); err != nil {
		t.Fatalf("eve's CreateGroup: %v", err)
	}
	eve := &member{Client: w.eve, g: g}
	claimed := w.claim(w.eve, "carol")
	pm, welcome, gi1, _ := w.commit(eve, mls.CommitOptions{Adds: claimed})
	if _, err := w.eve.Groups.SendCommitBundle(bg, connect.NewRequest(w.bundle(pm, welcome, gi1))); err != nil {
		t.Fatalf("eve adds carol: %v", err)
	}
	w.usedKP = claimed[0]
}

// setupRevokedLink has alice make a join link, shows that it lets eve
// fetch the GroupInfo, and revokes it.
func (w *world) setupRevokedLink() {
	t := w.t
	res, err := w.alice.Groups.CreateJoinLink(bg, connect.NewRequest(&mlsdsv1.CreateJoinLinkRequest{GroupId: w.gid}))
	if err != nil {
		t.Fatalf("CreateJoinLink: %v", err)
	}
	if _, err := w.eve.Groups.GetGroupInfo(bg, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: w.gid, JoinToken: res.Msg.JoinToken})); err != nil {
		t.Fatalf("GetGroupInfo with a live join link: %v", err)
	}
	if _, err := w.alice.Groups.RevokeJoinLink(bg, connect.NewRequest(&mlsdsv1.RevokeJoinLinkRequest{GroupId: w.gid, LinkId: res.Msg.LinkId})); err != nil {
		t.Fatalf("RevokeJoinLink: %v", err)
	}
	w.revokedLink = res.Msg.JoinToken
}

// claim claims one KeyPackage of each target through c.
func (w *world) claim(c *testkit.Client, targets ...string) []*mls.KeyPackage {
	w.t.Helper()
	res, err := c.KPs.ClaimKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{ClientIds: targets, CipherSuite: uint32(testkit.Suite)}))
	if err != nil {
		w.t.Fatalf("ClaimKeyPackages(%v): %v", targets, err)
	}
	var out []*mls.KeyPackage
	for _, c := range res.Msg.KeyPackages {
		m, err := mls.ParseMLSMessage(c.KeyPackage)
		if err != nil {
			w.t.Fatal(err)
		}
		out = append(out, m.KeyPackage)
	}
	if len(out) != len(targets) {
		w.t.Fatalf("claimed %d KeyPackages for %v", len(out), targets)
	}
	return out
}

// join makes the Group of the owner of kp from a Welcome.
func (w *world) join(welcome *mls.Welcome, kp *mls.KeyPackage, kps []*mls.KeyPackage, privs []*mls.KeyPackagePrivate) *mls.Group {
	w.t.Helper()
	want, _ := kp.Ref()
	for i, k := range kps {
		if ref, _ := k.Ref(); bytes.Equal(ref, want) {
			g, err := mls.JoinGroup(welcome, k, privs[i], nil, nil)
			if err != nil {
				w.t.Fatalf("JoinGroup: %v", err)
			}
			return g
		}
	}
	w.t.Fatal("claimed KeyPackage is not one the client uploaded")
	return nil
}

// commit makes a Commit of m and the GroupInfo of the epoch it starts.
// m stays in its epoch; next is m's state once the Commit is accepted.
func (w *world) commit(m *member, opts mls.CommitOptions) (*mls.PublicMessage, *mls.Welcome, *mls.GroupInfo, *mls.Group) {
	w.t.Helper()
	saved := w.clone(m.g)
	pm, welcome, err := m.g.CommitWith(opts)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := m.g.MergePendingCommit(); err != nil {
		w.t.Fatal(err)
	}
	gi, err := m.g.GroupInfo(false)
	if err != nil {
		w.t.Fatal(err)
	}
	next := m.g
	m.g = saved
	return pm, welcome, gi, next
}

func (w *world) clone(g *mls.Group) *mls.Group {
	w.t.Helper()
	b, err := g.MarshalBinary()
	if err != nil {
		w.t.Fatal(err)
	}
	c, err := mls.UnmarshalGroup(b)
	if err != nil {
		w.t.Fatal(err)
	}
	return c
}

func (w *world) bundle(pm *mls.PublicMessage, welcome *mls.Welcome, gi *mls.GroupInfo) *mlsdsv1.SendCommitBundleRequest {
	req := &mlsdsv1.SendCommitBundleRequest{Commit: testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})}
	if welcome != nil {
		req.Welcome = testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: welcome})
	}
	if gi != nil {
		req.GroupInfo = testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
	}
	return req
}

// alive shows the group works: alice sends an application message, and
// bob and mallory fetch and decrypt it.
func (w *world) alive() {
	w.t.Helper()
	w.pings++
	text := fmt.Sprintf("ping %d", w.pings)
	pm, err := w.alice.g.Seal([]byte(text), nil)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx := context.Background()
	res, err := w.alice.Groups.Send(ctx, connect.NewRequest(&mlsdsv1.SendRequest{Message: testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm})}))
	if err != nil {
		w.t.Fatalf("the group stopped working: alice's Send: %v", err)
	}
	seq := res.Msg.Receipt.GroupSeq
	for _, m := range []*member{w.bob, w.mallory} {
		page, err := m.Groups.Fetch(ctx, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: w.gid, FromSeq: seq, Limit: 1}))
		if err != nil || len(page.Msg.Messages) != 1 {
			w.t.Fatalf("the group stopped working: %s's Fetch of seq %d: %v", m.ID, seq, err)
		}
		msg, err := mls.ParseMLSMessage(page.Msg.Messages[0].Message)
		if err != nil {
			w.t.Fatal(err)
		}
		_, got, err := m.g.Open(msg.PrivateMessage)
		if err != nil || string(got) != text {
			w.t.Fatalf("the group stopped working: %s opened %q, %v; want %q", m.ID, got, err, text)
		}
	}
}

// attack is one case of the table.
type attack struct {
	name string
	// do runs the attack and returns the error the server answered.
	do   func(w *world) error
	code connect.Code
	// msg must appear in the error message.
	msg string
	// detail, if set, checks the error's details.
	detail func(t *testing.T, ce *connect.Error)
}

func notMember(t *testing.T, ce *connect.Error) {
	t.Helper()
	for _, d := range ce.Details() {
		v, err := d.Value()
		if err != nil {
			continue
		}
		if _, ok := v.(*mlsdsv1.NotMember); ok {
			return
		}
	}
	t.Errorf("error %v carries no NotMember detail", ce)
}

// run runs one attack: the exact error, the store unchanged, the group
// alive.
func (w *world) run(t *testing.T, a attack) {
	before := testkit.DumpSQLite(t, w.srv.DBPath())
	errLines := len(w.srv.LogsAt("ERROR"))
	err := a.do(w)
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("%s: got %v, want a %v error", a.name, err, a.code)
	}
	if ce.Code() != a.code {
		t.Errorf("%s: code %v, want %v (%v)", a.name, ce.Code(), a.code, ce)
	}
	if a.msg != "" && !strings.Contains(ce.Message(), a.msg) {
		t.Errorf("%s: message %q does not say %q", a.name, ce.Message(), a.msg)
	}
	if a.detail != nil {
		a.detail(t, ce)
	}
	// Give the server a moment for anything asynchronous, then compare
	// every row of every table.
	time.Sleep(50 * time.Millisecond)
	after := testkit.DumpSQLite(t, w.srv.DBPath())
	// quota_usage gets the byte counts of earlier, accepted requests up
	// to a second late (they are flushed in batches); a refused request
	// adds nothing to them (server/quota_test.go shows that).
	if d := before.Diff(after, "quota_usage"); d != "" {
		t.Errorf("%s: the refused request changed the store:\n%s", a.name, d)
	}
	if errs := w.srv.LogsAt("ERROR")[errLines:]; len(errs) > 0 {
		t.Errorf("%s: the server logged errors for a client's mistake:\n%v", a.name, errs)
	}
	w.alive()
}
