package server_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// Fuzz targets against the API handlers of a real server (loopback, SQLite).
// Each go test -fuzz worker runs its own server. The invariants: no panic
// (a handler panic comes back as internal), no internal or unknown error,
// and a refused call changes nothing.
//
//	go test ./server -run '^$' -fuzz FuzzSend -fuzztime 2m -fuzzminimizetime 20x
//	go test ./server -run '^$' -fuzz FuzzUploadKeyPackages -fuzztime 2m -fuzzminimizetime 20x
//	go test ./server -run '^$' -fuzz FuzzCreateGroup -fuzztime 2m -fuzzminimizetime 20x
//
// Bound the minimization: every run is a round trip to the server (a few
// ms), and go test spends up to a minute minimizing each input that finds
// new coverage (-fuzzminimizetime 60s), which leaves a short -fuzztime no
// time to fuzz (a 45 s run made 53 runs of FuzzSend, all of the seeds).

// refusalCodes are the codes a refusal of hostile input may carry. Any
// other code (internal, unknown, unavailable, data_loss, ...) is a bug.
var refusalCodes = map[connect.Code]bool{
	connect.CodeInvalidArgument:    true,
	connect.CodePermissionDenied:   true,
	connect.CodeNotFound:           true,
	connect.CodeAlreadyExists:      true,
	connect.CodeAborted:            true,
	connect.CodeFailedPrecondition: true,
	connect.CodeResourceExhausted:  true,
}

func checkRefusal(t *testing.T, err error) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v is not a Connect error", err)
	}
	if !refusalCodes[ce.Code()] {
		t.Fatalf("refused with %v: %v", ce.Code(), ce.Message())
	}
}

// fuzzEnv starts a server without rate limits for a fuzz target.
func fuzzEnv(f *testing.F) *testEnv {
	return startEnv(f, func(c *ds.Config, s *server.Config) {
		// Internal errors are logged by the server: show them.
		s.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
		c.RequestsPerSecond = -1
		c.ClaimsPerMinute = -1
		c.ClaimsPerTargetPerMinute = -1
		// The fuzzers create far more groups than a client may per day.
		c.MaxGroupsPerDay, c.MaxBytesPerDay = -1, -1
	})
}

// messageVectors returns the first n entries of the official messages
// test vectors (RFC 9420 test-vectors, messages.json).
func messageVectors(f *testing.F, n int) []map[string]string {
	file, err := os.Open("../mls/testdata/vectors/messages.json.gz")
	if err != nil {
		f.Fatal(err)
	}
	defer file.Close()
	zr, err := gzip.NewReader(file)
	if err != nil {
		f.Fatal(err)
	}
	var vs []map[string]string
	if err := json.NewDecoder(zr).Decode(&vs); err != nil {
		f.Fatal(err)
	}
	return vs[:min(n, len(vs))]
}

func unhex(f *testing.F, s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// groupHead is what a refused message must leave alone.
type groupHead struct {
	epoch, lastSeq uint64
}

func headOf(t *testing.T, m *member, gid []byte, from uint64) groupHead {
	t.Helper()
	ctx := context.Background()
	gi, err := m.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
	if err != nil {
		t.Fatalf("GetGroupInfo: %v", err)
	}
	h := groupHead{epoch: gi.Msg.Epoch, lastSeq: from}
	for {
		page, err := m.groups.Fetch(ctx, connect.NewRequest(&mlsdsv1.FetchRequest{GroupId: gid, FromSeq: h.lastSeq + 1, Limit: 1000}))
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		for _, env := range page.Msg.Messages {
			h.lastSeq = env.GroupSeq
		}
		if len(page.Msg.Messages) < 1000 {
			return h
		}
	}
}

// FuzzSend sends random and mutated MLS messages as alice, a member of a
// transparent group (with bob, epoch 1) and of an opaque group. With resign
// set, a message that parses is first aimed at the chosen group's current
// epoch, and a PublicMessage is re-signed with alice's key as leaf 0, so
// that mutations reach the validation behind the signature check (proposal
// lists, paths, leaves). Invariants: no panic, no internal error, and a
// refused message leaves both groups' epoch and last seq as they were.
// A transparent Commit or Proposal the server accepts is applied to a
// local copy of the state too, which must agree. A PublicMessage Commit
// goes with SendCommitBundle, as the server requires, with the GroupInfo
// of the epoch it starts if the local state accepts it (else that of the
// current epoch, which the server refuses only after checking the Commit).
func FuzzSend(f *testing.F) {
	e := fuzzEnv(f)
	ctx := context.Background()
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	tgid, ogid := []byte("fuzz-transparent"), []byte("fuzz-opaque")
	g0, gi, tree := alice.newTransparentGroup(tgid)
	if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: tgid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi, RatchetTree: tree})); err != nil {
		f.Fatal(err)
	}
	commit, _, gi1, g1 := alice.commitAdd(g0, mustKP(f, alice, bob))
	if _, err := alice.sendBundle(commit, gi1); err != nil {
		f.Fatal(err)
	}
	alice.createOpaqueGroup(ogid, bob)

	// Seeds: real messages of both groups, and the official vectors.
	carolKP := mustKP(f, alice, carol)
	add, _ := publicCommit(f, alice.sigPriv, g1, 0, addCommit(carolKP))
	f.Add(add, false, false)
	f.Add(add, false, true)
	f.Add(alice.pathCommit(g1, false), false, true)
	f.Add(alice.pathCommit(g1, true), false, true)
	f.Add(commit, false, false) // a replay
	remove := func() []byte {
		gc := g1.st.GroupContext()
		ac := &mls.AuthenticatedContent{WireFormat: mls.WireFormatPublicMessage, Content: mls.FramedContent{
			GroupID: tgid, Epoch: 1, Sender: mls.Sender{SenderType: mls.SenderTypeMember, LeafIndex: 0},
			ContentType: mls.ContentTypeProposal,
			Proposal:    &mls.Proposal{ProposalType: mls.ProposalTypeRemove, Remove: &mls.Remove{Removed: leafOf(f, g1, "bob")}}}}
		if err := ac.Sign(suite, alice.sigPriv, &gc); err != nil {
			f.Fatal(err)
		}
		return mlsMessage(f, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: &mls.PublicMessage{
			Content: ac.Content, Auth: ac.Auth, MembershipTag: randBytes(suite.HashSize())}})
	}()
	f.Add(remove, false, true)
	for _, ct := range []mls.ContentType{mls.ContentTypeApplication, mls.ContentTypeProposal, mls.ContentTypeCommit} {
		f.Add(privateMessage(f, tgid, 1, ct, 48), false, false)
		f.Add(privateMessage(f, ogid, 0, ct, 48), true, false)
		f.Add(privateMessage(f, ogid, 0, ct, 48), true, true)
	}
	for _, v := range messageVectors(f, 3) {
		for _, k := range []string{"public_message_application", "public_message_proposal", "public_message_commit", "private_message", "mls_welcome", "mls_key_package"} {
			f.Add(unhex(f, v[k]), false, true)
			f.Add(unhex(f, v[k]), true, true)
		}
	}

	// The fuzz function runs sequentially in each worker: st and the
	// heads are this worker's view of its own server.
	st := g1.st
	lastGI := gi1 // the GroupInfo of st's epoch
	heads := map[string]groupHead{}
	var execs, accepted atomic.Int64
	f.Fuzz(func(t *testing.T, data []byte, opaque, resign bool) {
		execs.Add(1)
		gid := tgid
		if opaque {
			gid = ogid
		}
		msg := data
		if resign {
			msg = retarget(t, data, gid, heads, st, alice)
		}
		before := map[string]groupHead{}
		for _, g := range [][]byte{tgid, ogid} {
			before[string(g)] = headOf(t, alice, g, heads[string(g)].lastSeq)
		}
		heads = before
		var r *mlsdsv1.Receipt
		var err error
		var nextGI []byte
		if pm := publicCommitOf(msg); pm != nil {
			nextGI = lastGI
			if next, _, herr := st.HandleCommit(pm); herr == nil {
				if gi, gerr := groupInfoOf(next, pm, alice); gerr == nil {
					nextGI = gi
				}
			}
			r, err = alice.sendBundle(msg, nextGI)
		} else {
			r, err = alice.send(msg)
		}
		after := map[string]groupHead{}
		for _, g := range [][]byte{tgid, ogid} {
			after[string(g)] = headOf(t, alice, g, before[string(g)].lastSeq)
		}
		heads = after
		if err != nil {
			checkRefusal(t, err)
			if after[string(tgid)] != before[string(tgid)] || after[string(ogid)] != before[string(ogid)] {
				t.Fatalf("refused (%v) but the groups moved: before %+v, after %+v", err, before, after)
			}
			return
		}
		accepted.Add(1)
		g := string(r.GroupId)
		if _, known := before[g]; !known {
			t.Fatalf("accepted into unknown group %q", r.GroupId)
		}
		if r.GroupSeq <= before[g].lastSeq {
			return // a resubmission: the first receipt, nothing new
		}
		if after[g].lastSeq != r.GroupSeq {
			t.Fatalf("accepted at seq %d but the group's last seq is %d", r.GroupSeq, after[g].lastSeq)
		}
		if g != string(tgid) {
			return
		}
		// Keep the local view of the transparent group in step.
		var m mls.MLSMessage
		if err := m.UnmarshalBinary(msg); err != nil || m.WireFormat != mls.WireFormatPublicMessage {
			return // an application PrivateMessage
		}
		switch m.PublicMessage.Content.ContentType {
		case mls.ContentTypeCommit:
			next, _, err := st.HandleCommit(m.PublicMessage)
			if err != nil {
				t.Fatalf("the server accepted a Commit that the mls package refuses: %v", err)
			}
			st, lastGI = next, nextGI
		case mls.ContentTypeProposal:
			if _, err := st.HandleProposal(m.PublicMessage); err != nil {
				t.Fatalf("the server accepted a Proposal that the mls package refuses: %v", err)
			}
		}
		if after[g].epoch != st.Epoch() {
			t.Fatalf("server at epoch %d, local state at %d", after[g].epoch, st.Epoch())
		}
	})
	f.Cleanup(func() { f.Logf("FuzzSend: %d executions in this process, %d accepted", execs.Load(), accepted.Load()) })
}

// retarget aims a message that parses at gid's current epoch; a
// PublicMessage to the transparent group is re-signed by alice as leaf 0
// over the group's current GroupContext. Anything else is returned as is.
func retarget(t *testing.T, data, gid []byte, heads map[string]groupHead, st *mls.PublicGroupState, alice *member) []byte {
	var m mls.MLSMessage
	if err := m.UnmarshalBinary(data); err != nil {
		return data
	}
	switch {
	case m.WireFormat == mls.WireFormatPrivateMessage:
		m.PrivateMessage.GroupID = bytes.Clone(gid)
		m.PrivateMessage.Epoch = heads[string(gid)].epoch
	case m.WireFormat == mls.WireFormatPublicMessage && bytes.Equal(gid, st.GroupID()):
		pm := m.PublicMessage
		gc := st.GroupContext()
		pm.Content.GroupID = gc.GroupID
		pm.Content.Epoch = gc.Epoch
		if pm.Content.Sender.SenderType == mls.SenderTypeMember {
			pm.Content.Sender.LeafIndex = 0
		}
		ac := pm.AuthenticatedContent()
		if err := ac.Sign(suite, alice.sigPriv, &gc); err != nil {
			return data
		}
		pm.Auth = ac.Auth
		if pm.Content.ContentType == mls.ContentTypeCommit && len(pm.Auth.ConfirmationTag) != suite.HashSize() {
			pm.Auth.ConfirmationTag = make([]byte, suite.HashSize())
		}
		if pm.Content.Sender.SenderType == mls.SenderTypeMember && len(pm.MembershipTag) != suite.HashSize() {
			pm.MembershipTag = make([]byte, suite.HashSize())
		}
	default:
		return data
	}
	out, err := m.MarshalBinary()
	if err != nil {
		return data
	}
	return out
}

// publicCommitOf returns the PublicMessage of msg if it is a Commit.
func publicCommitOf(msg []byte) *mls.PublicMessage {
	var m mls.MLSMessage
	if m.UnmarshalBinary(msg) != nil || m.WireFormat != mls.WireFormatPublicMessage ||
		m.PublicMessage.Content.ContentType != mls.ContentTypeCommit {
		return nil
	}
	return m.PublicMessage
}

// groupInfoOf is signGroupInfo without failing the test: the GroupInfo of
// next, which pm starts, signed by alice as the leaf she holds in it.
func groupInfoOf(next *mls.PublicGroupState, pm *mls.PublicMessage, alice *member) ([]byte, error) {
	leaf, ok := mls.LeafIndex(0), false
	for i, ln := range next.Tree().Leaves() {
		if string(ln.Credential.Identity) == alice.id {
			leaf, ok = i, true
		}
	}
	if !ok {
		return nil, errors.New("alice holds no leaf")
	}
	_, extPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		return nil, err
	}
	ext, err := (&mls.ExternalPub{PublicKey: extPub}).MarshalBinary()
	if err != nil {
		return nil, err
	}
	gi := &mls.GroupInfo{GroupContext: next.GroupContext(), ConfirmationTag: pm.Auth.ConfirmationTag, Signer: leaf,
		Extensions: mls.Extensions{{ExtensionType: mls.ExtensionTypeExternalPub, ExtensionData: ext}}}
	if err := gi.Sign(alice.sigPriv); err != nil {
		return nil, err
	}
	return (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}).MarshalBinary()
}

// FuzzUploadKeyPackages uploads random and mutated KeyPackages as alice.
// With resign set, a KeyPackage that parses gets alice's credential and
// signature key and is signed again (leaf and package), so that mutations
// reach the checks behind the signatures (capabilities, extensions,
// lifetime, keys). Invariants: no panic, no internal error; a refused
// upload leaves alice's KeyPackages as they were; an accepted one adds
// exactly the one it reports (it is deleted again, so that the stock limit
// never stops the fuzzing).
func FuzzUploadKeyPackages(f *testing.F) {
	e := fuzzEnv(f)
	ctx := context.Background()
	alice, bob := e.client("alice"), e.client("bob")
	good, kp := alice.keyPackage()
	f.Add(good, false, false)
	f.Add(good, true, true)
	bare, err := kp.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(bare, false, false)
	bobs, _ := bob.keyPackage()
	f.Add(bobs, false, false)
	f.Add(bobs, false, true)
	f.Add(alice.keyPackageWith(func(kp *mls.KeyPackage) { kp.LeafNode.Lifetime.NotAfter = kp.LeafNode.Lifetime.NotBefore + 1 }), false, false)
	for _, v := range messageVectors(f, 5) {
		f.Add(unhex(f, v["mls_key_package"]), false, false)
		f.Add(unhex(f, v["mls_key_package"]), false, true)
	}

	list := func(t *testing.T) []string {
		res, err := alice.kps.ListKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ListKeyPackagesRequest{}))
		if err != nil {
			t.Fatalf("ListKeyPackages: %v", err)
		}
		var out []string
		for _, i := range res.Msg.KeyPackages {
			out = append(out, fmt.Sprintf("%x/%v", i.Ref, i.LastResort))
		}
		return out
	}
	var execs, accepted atomic.Int64
	f.Fuzz(func(t *testing.T, data []byte, lastResort, resign bool) {
		execs.Add(1)
		if resign {
			data = resignKeyPackage(data, alice)
		}
		before := list(t)
		res, err := alice.kps.UploadKeyPackages(ctx, connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
			KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: data, LastResort: lastResort}}}))
		after := list(t)
		if err != nil {
			checkRefusal(t, err)
			if strings.Join(before, ",") != strings.Join(after, ",") {
				t.Fatalf("refused (%v) but alice's KeyPackages changed: %v -> %v", err, before, after)
			}
			return
		}
		accepted.Add(1)
		if len(res.Msg.KeyPackages) != 1 {
			t.Fatalf("one upload accepted as %d KeyPackages", len(res.Msg.KeyPackages))
		}
		ref := res.Msg.KeyPackages[0].Ref
		if len(after) != len(before)+1 || !strings.Contains(strings.Join(after, ","), fmt.Sprintf("%x/", ref)) {
			t.Fatalf("accepted %x but alice's KeyPackages went %v -> %v", ref, before, after)
		}
		if _, err := alice.kps.DeleteKeyPackages(ctx, connect.NewRequest(&mlsdsv1.DeleteKeyPackagesRequest{Refs: [][]byte{ref}})); err != nil {
			t.Fatalf("DeleteKeyPackages: %v", err)
		}
	})
	f.Cleanup(func() {
		f.Logf("FuzzUploadKeyPackages: %d executions in this process, %d accepted", execs.Load(), accepted.Load())
	})
}

// resignKeyPackage gives a KeyPackage that parses alice's credential and
// key and signs it again; anything else is returned as is.
func resignKeyPackage(data []byte, alice *member) []byte {
	var m mls.MLSMessage
	var kp *mls.KeyPackage
	if err := m.UnmarshalBinary(data); err == nil && m.WireFormat == mls.WireFormatKeyPackage {
		kp = m.KeyPackage
	} else {
		kp = new(mls.KeyPackage)
		if kp.UnmarshalBinary(data) != nil {
			return data
		}
		m = mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp}
	}
	if kp.CipherSuite != suite {
		return data // alice signs with Ed25519 only
	}
	kp.LeafNode.Credential = alice.cred
	kp.LeafNode.SignatureKey = alice.sigPub
	if kp.LeafNode.Sign(suite, alice.sigPriv, nil, 0) != nil || kp.Sign(alice.sigPriv) != nil {
		return data
	}
	out, err := m.MarshalBinary()
	if err != nil {
		return data
	}
	return out
}

// FuzzCreateGroup creates groups from random and mutated GroupInfos and
// ratchet trees, in either mode, with a fresh group id each time. With
// resign set, a GroupInfo that parses gets the fresh group id and, if the
// tree parses, that tree's hash, and is signed again by alice (who must
// then be its leaf 0), so that mutations of the tree reach the tree checks
// (parent hashes, leaves, §7.9.2, §7.3). In opaque mode, resign makes bob,
// if listed, consent with a KeyPackage alice claimed; a transparent group
// always comes with the KeyPackage through which bob's leaf of the seed
// tree came in (usable once). Invariants: no panic, no internal error; a
// refused group does not exist afterwards (its id is still free); a
// created one can be read back at the epoch it was created with.
func FuzzCreateGroup(f *testing.F) {
	e := fuzzEnv(f)
	ctx := context.Background()
	alice, bob := e.client("alice"), e.client("bob")
	g0, gi, tree := alice.newTransparentGroup([]byte("seed"))
	f.Add(gi, tree, uint8(1), uint64(0), "", true)
	f.Add(gi, tree, uint8(0), uint64(0), "", false)
	// Two members, at epoch 1.
	bobKP := mustKP(f, alice, bob)
	bobKPMsg := mlsMessage(f, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: bobKP})
	_, _, gi1, g1 := alice.commitAdd(g0, bobKP)
	tree1, err := g1.st.Tree().MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(gi1, tree1, uint8(1), uint64(1), "", true)
	f.Add([]byte(nil), []byte(nil), uint8(2), uint64(3), "bob", false)
	f.Add([]byte(nil), []byte(nil), uint8(2), uint64(3), "bob", true)
	f.Add([]byte(nil), []byte(nil), uint8(2), uint64(0), "bob,nobody", false)
	f.Add([]byte(nil), []byte(nil), uint8(2), uint64(0), "bob,nobody", true)
	for _, v := range messageVectors(f, 3) {
		f.Add(unhex(f, v["mls_group_info"]), unhex(f, v["ratchet_tree"]), uint8(0), uint64(0), "", true)
		f.Add(unhex(f, v["mls_group_info"]), unhex(f, v["ratchet_tree"]), uint8(0), uint64(0), "", false)
	}

	var n, execs, accepted atomic.Int64
	f.Fuzz(func(t *testing.T, groupInfo, ratchetTree []byte, mode uint8, epoch uint64, members string, resign bool) {
		execs.Add(1)
		gid := []byte(fmt.Sprintf("fuzz-%d-%d", os.Getpid(), n.Add(1)))
		if resign {
			groupInfo = resignGroupInfo(groupInfo, ratchetTree, gid, alice)
		}
		req := &mlsdsv1.CreateGroupRequest{GroupId: gid, Mode: mlsdsv1.GroupMode(mode % 3), GroupInfo: groupInfo,
			RatchetTree: ratchetTree, Epoch: epoch}
		if members != "" {
			// proto3 strings are UTF-8: the client library refuses to
			// send anything else.
			req.Members = strings.Split(strings.ToValidUTF8(members, "?"), ",")
		}
		switch {
		case req.Mode == mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT:
			req.KeyPackages = [][]byte{bobKPMsg}
		case req.Mode == mlsdsv1.GroupMode_GROUP_MODE_OPAQUE && resign && slices.Contains(req.Members, "bob"):
			// Copies that fail t, not f, inside the fuzz target.
			bt, at := *bob, *alice
			bt.t, at.t = t, t
			bt.uploadKeyPackages(1, false)
			req.KeyPackages = [][]byte{at.claim("bob")}
		}
		_, err := alice.groups.CreateGroup(ctx, connect.NewRequest(req))
		info, gerr := alice.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid}))
		if err != nil {
			checkRefusal(t, err)
			// An unknown group and one alice is not in get the same
			// answer; that the id is still free shows that there is no
			// such group.
			var ce *connect.Error
			if !errors.As(gerr, &ce) || ce.Code() != connect.CodePermissionDenied {
				t.Fatalf("CreateGroup refused (%v) but GetGroupInfo says %v", err, gerr)
			}
			if _, err2 := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
				GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE})); err2 != nil {
				t.Fatalf("CreateGroup refused (%v), but the id is taken: %v", err, err2)
			}
			return
		}
		accepted.Add(1)
		if gerr != nil {
			t.Fatalf("created, but GetGroupInfo: %v", gerr)
		}
		if req.Mode == mlsdsv1.GroupMode_GROUP_MODE_OPAQUE && info.Msg.Epoch != epoch {
			t.Fatalf("opaque group created at epoch %d reads back at %d", epoch, info.Msg.Epoch)
		}
	})
	f.Cleanup(func() {
		f.Logf("FuzzCreateGroup: %d executions in this process, %d accepted", execs.Load(), accepted.Load())
	})
}

// resignGroupInfo sets the group id and tree hash of a GroupInfo that
// parses and has alice sign it; anything else is returned as is.
func resignGroupInfo(data, tree, gid []byte, alice *member) []byte {
	var m mls.MLSMessage
	if m.UnmarshalBinary(data) != nil || m.WireFormat != mls.WireFormatGroupInfo || m.GroupInfo.GroupContext.CipherSuite != suite {
		return data
	}
	gi := m.GroupInfo
	gi.GroupContext.GroupID = bytes.Clone(gid)
	if rt, err := mls.UnmarshalRatchetTree(suite, tree); err == nil {
		if h := rt.TreeHash(); h != nil {
			gi.GroupContext.TreeHash = h
		}
	}
	gi.Signer = 0
	if gi.Sign(alice.sigPriv) != nil {
		return data
	}
	out, err := m.MarshalBinary()
	if err != nil {
		return data
	}
	return out
}
