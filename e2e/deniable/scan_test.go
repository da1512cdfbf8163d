// Package deniable runs the full life of a deniable group against a real
// `mlsds serve` process with raw MLS clients, then scans every row of the
// server's store and every line of its log for what a deniable group must
// not leave behind: a registered client id next to the group id, a member
// signature over anything that names the group, or a membership MAC.
package deniable

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/internal/testkit"
	"github.com/mlsds/mlsds/mls"
)

var bg = context.Background()

// world is one server, the group, and the proofs sent to it.
type world struct {
	t        *testing.T
	srv      *testkit.Serve
	gid      []byte
	groups   mlsdsv1connect.GroupServiceClient // no session
	sentMACs []string                          // base64url, as in the headers
	lastMs   uint64
}

// member is a raw client with its MLS state of the group and its own
// position in it (the server keeps none).
type member struct {
	*testkit.Client
	g    *mls.Group
	next uint64          // the next GroupSeq to read
	own  map[string]bool // hashes of the messages it sent
	got  []string        // application messages it read
}

func (w *world) key(m *member) []byte {
	w.t.Helper()
	k, err := m.g.Export(ds.MembershipLabel, ds.MembershipKeyContext(w.gid, m.g.Epoch()), ds.MembershipKeySize)
	if err != nil {
		w.t.Fatal(err)
	}
	return k
}

// sign puts m's proof (the key of its current epoch) on req.
func sign[T any](w *world, m *member, req *connect.Request[T], procedure string) *connect.Request[T] {
	w.t.Helper()
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(any(req.Msg).(proto.Message))
	if err != nil {
		w.t.Fatal(err)
	}
	h := sha256.Sum256(body)
	ts := max(uint64(time.Now().UnixMilli()), w.lastMs+1) // no two calls share a MAC
	w.lastMs = ts
	nonce := ds.NewMembershipNonce()
	mac := ds.MembershipMAC(w.key(m), ds.MembershipTranscript(procedure, w.gid, m.g.Epoch(), ts, nonce, h[:]))
	w.sentMACs = append(w.sentMACs, base64.RawURLEncoding.EncodeToString(mac))
	req.Header().Set(ds.MembershipHeader, ds.FormatMembershipHeader(m.g.Epoch(), ts, nonce, mac))
	return req
}

func (w *world) send(m *member, text string) {
	w.t.Helper()
	pm, err := m.g.Seal([]byte(text), nil)
	if err != nil {
		w.t.Fatal(err)
	}
	data := testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm})
	h := sha256.Sum256(data)
	m.own[string(h[:])] = true
	if _, err := w.groups.Send(bg, sign(w, m, connect.NewRequest(&mlsdsv1.SendRequest{Message: data}), mlsdsv1connect.GroupServiceSendProcedure)); err != nil {
		w.t.Fatalf("%s sends: %v", m.ID, err)
	}
}

// sealTree encrypts the epoch's GroupInfo (with the tree) under a key
// only members of the epoch derive: what a remote tree holds.
func (w *world) sealTree(m *member) *mlsdsv1.RemoteTree {
	w.t.Helper()
	gi, err := m.g.GroupInfo(true)
	if err != nil {
		w.t.Fatal(err)
	}
	plain := testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
	k, err := m.g.Export("mlsds test remote tree", nil, 32)
	if err != nil {
		w.t.Fatal(err)
	}
	block, _ := aes.NewCipher(k)
	aead, _ := cipher.NewGCM(block)
	nonce := testkit.RandBytes(aead.NonceSize())
	return &mlsdsv1.RemoteTree{Epoch: m.g.Epoch(), Blob: aead.Seal(nonce, nonce, plain, nil)}
}

// commit has m commit opts as a PrivateMessage, with the next key, a
// sealed remote tree and the Welcome; it returns the Welcome.
func (w *world) commit(m *member, opts mls.CommitOptions) *mls.Welcome {
	w.t.Helper()
	opts.WireFormat = mls.WireFormatPrivateMessage
	msg, welcome, err := m.g.CommitMessage(opts)
	if err != nil {
		w.t.Fatal(err)
	}
	req := connect.NewRequest(&mlsdsv1.SendCommitBundleRequest{Commit: testkit.Message(w.t, msg)})
	saved, _ := m.g.MarshalBinary()
	if err := m.g.MergePendingCommit(); err != nil {
		w.t.Fatal(err)
	}
	req.Msg.NextMembershipKey = w.key(m)
	req.Msg.RemoteTree = w.sealTree(m)
	if welcome != nil {
		req.Msg.Welcome = testkit.Message(w.t, &mls.MLSMessage{WireFormat: mls.WireFormatWelcome, Welcome: welcome})
	}
	// The proof is of the Commit's epoch: sign with the state before it.
	cur := m.g
	if m.g, err = mls.UnmarshalGroup(saved); err != nil {
		w.t.Fatal(err)
	}
	sign(w, m, req, mlsdsv1connect.GroupServiceSendCommitBundleProcedure)
	m.g = cur
	r, err := w.groups.SendCommitBundle(bg, req)
	if err != nil {
		w.t.Fatalf("%s commits: %v", m.ID, err)
	}
	h := sha256.Sum256(req.Msg.Commit)
	m.own[string(h[:])] = true
	m.next = r.Msg.Receipt.GroupSeq + 1
	return welcome
}

// sync has m read and process what it has not read yet.
func (w *world) sync(m *member) {
	w.t.Helper()
	res, err := w.groups.Fetch(bg, sign(w, m, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: w.gid, FromSeq: m.next}), mlsdsv1connect.GroupServiceFetchProcedure))
	if err != nil {
		w.t.Fatalf("%s fetches: %v", m.ID, err)
	}
	for _, env := range res.Msg.Messages {
		if env.SenderClientId != "" {
			w.t.Fatalf("an envelope names its sender %q", env.SenderClientId)
		}
		h := sha256.Sum256(env.Message)
		if m.own[string(h[:])] || env.Epoch < m.g.Epoch() && env.ContentType == mlsdsv1.ContentType_CONTENT_TYPE_COMMIT {
			continue
		}
		msg, err := mls.ParseMLSMessage(env.Message)
		if err != nil {
			w.t.Fatal(err)
		}
		p, err := m.g.Process(msg)
		if err != nil {
			w.t.Fatalf("%s processes seq %d: %v", m.ID, env.GroupSeq, err)
		}
		if p.ContentType == mls.ContentTypeApplication {
			m.got = append(m.got, string(p.ApplicationData))
		}
	}
	m.next = res.Msg.NextSeq
}

// join has m take its Welcome from its session stream, join, and ack it.
func (w *world) join(m *member, kp *mls.KeyPackage, priv *mls.KeyPackagePrivate) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	s, err := m.Delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
	if err != nil {
		w.t.Fatal(err)
	}
	defer s.Close()
	var ev *mlsdsv1.WelcomeEvent
	for ev == nil && s.Receive() {
		ev = s.Msg().GetWelcome()
	}
	if ev == nil {
		w.t.Fatalf("%s got no Welcome: %v", m.ID, s.Err())
	}
	if len(ev.GroupId) != 0 || ev.CommitSeq != 0 {
		w.t.Fatalf("the Welcome event names group %x and commit %d", ev.GroupId, ev.CommitSeq)
	}
	msg, err := mls.ParseMLSMessage(ev.Welcome)
	if err != nil {
		w.t.Fatal(err)
	}
	if m.g, err = mls.JoinGroup(msg.Welcome, kp, priv, nil, nil); err != nil {
		w.t.Fatalf("%s joins: %v", m.ID, err)
	}
	m.next, m.own = 0, map[string]bool{}
	if _, err := m.Groups.Ack(bg, connect.NewRequest(&mlsdsv1.AckRequest{WelcomeRefs: [][]byte{ev.KeyPackageRef}})); err != nil {
		w.t.Fatal(err)
	}
}

func claim(t *testing.T, by *testkit.Client, id string) *mls.KeyPackage {
	t.Helper()
	res, err := by.KPs.ClaimKeyPackages(bg, connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{ClientIds: []string{id}, CipherSuite: uint32(testkit.Suite)}))
	if err != nil {
		t.Fatalf("claim %s: %v", id, err)
	}
	m, err := mls.ParseMLSMessage(res.Msg.KeyPackages[0].KeyPackage)
	if err != nil {
		t.Fatal(err)
	}
	return m.KeyPackage
}

func TestDeniableLeavesNoTrace(t *testing.T) {
	srv := testkit.StartServe(t, "--rate-limit", "-1", "--claim-rate", "-1", "--claimer-rate", "-1", "--auth-rate-limit", "-1")
	w := &world{t: t, srv: srv, gid: testkit.RandBytes(16), groups: mlsdsv1connect.NewGroupServiceClient(testkit.H2C(), srv.URL)}
	ids := []string{"alice-x1", "bob-x2", "carol-x3"}
	mk := func(id string) *member {
		return &member{Client: testkit.NewClient(t, srv.URL, id).MustJoin(), own: map[string]bool{}}
	}
	alice, bob, carol := mk(ids[0]), mk(ids[1]), mk(ids[2])

	// Create.
	kp, priv := alice.KeyPackage()
	g, err := mls.NewGroup(w.gid, kp, priv)
	if err != nil {
		t.Fatal(err)
	}
	alice.g, alice.next = g, 1
	if _, err := alice.Groups.CreateGroup(bg, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: w.gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_DENIABLE, MembershipKey: w.key(alice)})); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	w.send(alice, "before anyone")

	// Add bob and carol by Welcome.
	bobKPs, bobPrivs := bob.Upload(1)
	carolKPs, carolPrivs := carol.Upload(1)
	w.commit(alice, mls.CommitOptions{Adds: []*mls.KeyPackage{claim(t, alice.Client, bob.ID), claim(t, alice.Client, carol.ID)}})
	w.join(bob, bobKPs[0], bobPrivs[0])
	w.join(carol, carolKPs[0], carolPrivs[0])

	// Messages both ways, and a Commit by bob.
	w.send(alice, "hi all")
	w.send(bob, "hi alice")
	w.sync(bob)
	w.sync(carol)
	w.sync(alice)
	w.commit(bob, mls.CommitOptions{})
	w.sync(alice)
	w.sync(carol)
	w.send(carol, "carol here")
	w.sync(alice)
	w.sync(bob)
	if strings.Join(alice.got, ",") != "hi alice,carol here" || strings.Join(bob.got, ",") != "hi all,carol here" {
		t.Fatalf("alice read %q, bob read %q", alice.got, bob.got)
	}

	// Remove carol, then add her back with a new KeyPackage.
	w.commit(alice, mls.CommitOptions{Removes: []mls.LeafIndex{carol.g.Self()}})
	w.sync(bob)
	w.send(bob, "without carol")
	newKPs, newPrivs := carol.Upload(1)
	w.sync(alice)
	w.commit(alice, mls.CommitOptions{Adds: []*mls.KeyPackage{claim(t, alice.Client, carol.ID)}})
	w.join(carol, newKPs[0], newPrivs[0])
	w.sync(bob)
	w.send(carol, "back again")
	w.sync(alice)
	w.sync(bob)
	if alice.got[len(alice.got)-1] != "back again" || bob.got[len(bob.got)-1] != "back again" {
		t.Fatalf("after the re-add: alice %q, bob %q", alice.got, bob.got)
	}

	// The scan. Every row that holds the group id, in hex as the dump
	// prints blobs.
	gidHex := hex.EncodeToString(w.gid)
	dump := testkit.DumpSQLite(t, srv.DBPath())
	rowsWithGroup := 0
	for table, rows := range dump {
		for _, row := range rows {
			for _, mac := range w.sentMACs {
				macBytes, _ := base64.RawURLEncoding.DecodeString(mac)
				if strings.Contains(row, mac) || strings.Contains(row, hex.EncodeToString(macBytes)) {
					t.Errorf("%s holds a membership MAC: %s", table, row)
				}
			}
			if !strings.Contains(row, gidHex) {
				continue
			}
			rowsWithGroup++
			for _, id := range ids {
				if strings.Contains(row, id) || strings.Contains(row, hex.EncodeToString([]byte(id))) {
					t.Errorf("%s names client %s next to the group: %s", table, id, row)
				}
			}
			checkNoSignedObject(t, table, row, w.gid)
		}
	}
	if rowsWithGroup == 0 {
		t.Fatal("no row holds the group id: the scan found nothing to check")
	}
	// The Welcomes were acknowledged and deleted.
	if n := len(dump["deniable_welcomes"]); n != 0 {
		t.Errorf("%d deniable Welcomes left after the joiners acked them", n)
	}

	// The log: no line names a client next to the group, none holds a MAC.
	for _, l := range srv.Logs() {
		for _, mac := range w.sentMACs {
			if strings.Contains(l.Raw, mac) {
				t.Errorf("log line holds a membership MAC: %s", l.Raw)
			}
		}
		if !strings.Contains(l.Raw, gidHex) {
			continue
		}
		for _, id := range ids {
			if strings.Contains(l.Raw, id) {
				t.Errorf("log line names client %s next to the group: %s", id, l.Raw)
			}
		}
	}
}

// checkNoSignedObject fails if a column of row holds an MLS object signed
// by a member that names the group in the clear: a PublicMessage or a
// GroupInfo of group gid (a KeyPackage names no group; a Welcome and a
// PrivateMessage carry no signature in the clear).
func checkNoSignedObject(t *testing.T, table, row string, gid []byte) {
	t.Helper()
	for _, col := range strings.Split(row, " | ") {
		name, val, ok := strings.Cut(col, "=")
		if !ok {
			continue
		}
		b, err := hex.DecodeString(val)
		if err != nil || len(b) < 4 {
			continue
		}
		m, err := mls.ParseMLSMessage(b)
		if err != nil {
			continue
		}
		switch m.WireFormat {
		case mls.WireFormatPublicMessage:
			if bytes.Equal(m.PublicMessage.Content.GroupID, gid) {
				t.Errorf("%s.%s holds a signed PublicMessage of the group", table, name)
			}
		case mls.WireFormatGroupInfo:
			if bytes.Equal(m.GroupInfo.GroupContext.GroupID, gid) {
				t.Errorf("%s.%s holds a signed GroupInfo of the group", table, name)
			}
		}
	}
}
