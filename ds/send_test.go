package ds_test

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

type sendResult struct {
	i   int
	r   ds.Receipt
	err error
}

// race submits all at once and returns the results in input order.
func race(n int, send func(i int) (ds.Receipt, error)) []sendResult {
	out := make([]sendResult, n)
	var start, done sync.WaitGroup
	start.Add(1)
	for i := 0; i < n; i++ {
		done.Add(1)
		go func() {
			defer done.Done()
			start.Wait()
			r, err := send(i)
			out[i] = sendResult{i, r, err}
		}()
	}
	start.Done()
	done.Wait()
	return out
}

// applyFetched brings the mirror g up to date with the group's Commits from
// seq on, as a client does after WrongEpochError.
func applyFetched(t *testing.T, e *env, client string, g *group, from uint64) {
	t.Helper()
	envs, err := e.svc.Fetch(bg, client, g.id, from, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range envs {
		if env.ContentType != mls.ContentTypeCommit || env.Epoch != g.st.Epoch() {
			continue
		}
		m := must(mls.ParseMLSMessage(env.Data))
		next, _, err := g.st.HandleCommit(m.PublicMessage)
		if err != nil {
			t.Fatalf("fetched Commit %d does not apply: %v", env.GroupSeq, err)
		}
		g.st = next
	}
}

// TestConcurrentCommitsTransparent: 20 Commits for epoch 0 at once. One is
// accepted; the 19 others get WrongEpochError naming epoch 1 and the
// winner's sequence number. The losers then fetch, rebuild and retry until
// all 20 are in one linear history.
func TestConcurrentCommitsTransparent(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	g := e.createGroup(a)
	const n = 20
	kps := make([]*mls.KeyPackage, n)
	for i := range kps {
		j := e.register(fmt.Sprintf("j%02d", i), fmt.Sprintf("j%02d", i))
		kps[i] = e.upload(j, 1, false)[0]
	}
	pending := make(map[int]bool)
	for i := 0; i < n; i++ {
		pending[i] = true
	}
	round := 0
	for len(pending) > 0 {
		var idx []int
		commits := make(map[int][]byte)
		for i := range pending {
			idx = append(idx, i)
			commits[i], _ = g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kps[i])}, nil)
		}
		epoch := g.st.Epoch()
		results := race(len(idx), func(k int) (ds.Receipt, error) {
			i := idx[k]
			return sendBundle(e.svc, "a", ds.CommitBundle{Commit: commits[i], Welcome: welcome(t, ref(t, kps[i]))})
		})
		var winner *sendResult
		var losers []*ds.WrongEpochError
		for k := range results {
			r := &results[k]
			var we *ds.WrongEpochError
			switch {
			case r.err == nil:
				if winner != nil {
					t.Fatalf("round %d: two Commits accepted for epoch %d", round, epoch)
				}
				winner = r
				delete(pending, idx[r.i])
			case errors.As(r.err, &we):
				losers = append(losers, we)
			default:
				t.Fatalf("round %d: %v", round, r.err)
			}
		}
		if winner == nil {
			t.Fatalf("round %d: no Commit accepted", round)
		}
		if round == 0 && len(losers) != n-1 {
			t.Fatalf("first round: %d losers, want %d", len(losers), n-1)
		}
		if winner.r.Epoch != epoch {
			t.Errorf("winner receipt epoch %d, want %d", winner.r.Epoch, epoch)
		}
		for _, l := range losers {
			if l.Expected != epoch+1 || l.FetchFromSeq != winner.r.GroupSeq {
				t.Errorf("round %d: WrongEpochError{Expected: %d, FetchFromSeq: %d}, want {%d, %d}",
					round, l.Expected, l.FetchFromSeq, epoch+1, winner.r.GroupSeq)
			}
		}
		from := winner.r.GroupSeq
		if len(losers) > 0 {
			from = losers[0].FetchFromSeq
		}
		applyFetched(t, e, "a", g, from)
		round++
	}
	if round != n {
		t.Errorf("%d rounds, want %d (one Commit per epoch)", round, n)
	}
	// One linear history: seq i is the Commit of epoch i-1.
	envs := must(e.svc.Fetch(bg, "a", g.id, 1, 100))
	if len(envs) != n {
		t.Fatalf("%d messages stored, want %d", len(envs), n)
	}
	for i, env := range envs {
		if env.GroupSeq != uint64(i+1) || env.Epoch != uint64(i) || env.ContentType != mls.ContentTypeCommit {
			t.Errorf("message %d: seq %d epoch %d type %d", i, env.GroupSeq, env.Epoch, env.ContentType)
		}
	}
	roster := must(e.svc.Roster(bg, "a", g.id))
	if len(roster) != n+1 {
		t.Errorf("roster has %d members, want %d", len(roster), n+1)
	}
	info := must(e.svc.GroupInfo(bg, "a", g.id))
	if info.Epoch != n {
		t.Errorf("group at epoch %d, want %d", info.Epoch, n)
	}
	tree := must(mls.UnmarshalRatchetTree(suite, info.RatchetTree))
	gc := g.st.GroupContext()
	if !bytes.Equal(tree.TreeHash(), gc.TreeHash) {
		t.Errorf("the served tree is not the members' tree")
	}
	// Every joiner got exactly its Welcome.
	for i := 0; i < n; i++ {
		ws := pendingWelcomes(t, e, fmt.Sprintf("j%02d", i))
		if len(ws) != 1 || !bytes.Equal(ws[0].KeyPackageRef, ref(t, kps[i])) {
			t.Errorf("j%02d: %d Welcomes", i, len(ws))
		}
	}
}

// TestConcurrentCommitsOpaque: the same race in an opaque group, between 20
// different members sending encrypted Commits.
func TestConcurrentCommitsOpaque(t *testing.T) {
	e := newEnv(t, ds.Config{})
	const n = 20
	var ids []string
	for i := 0; i < n; i++ {
		ids = append(ids, e.register(fmt.Sprintf("m%02d", i), fmt.Sprintf("m%02d", i)).id)
	}
	gid := []byte("opaque group")
	if err := e.createOpaque(ids[0], ds.CreateGroup{GroupID: gid, Members: ids[1:], Epoch: 7}); err != nil {
		t.Fatal(err)
	}
	sendMsg(e.svc, ids[3], private(t, gid, 7, mls.ContentTypeApplication)) // seq 1
	results := race(n, func(i int) (ds.Receipt, error) {
		return sendMsg(e.svc, ids[i], private(t, gid, 7, mls.ContentTypeCommit))
	})
	var winners []ds.Receipt
	var losers []int
	for _, r := range results {
		if r.err == nil {
			winners = append(winners, r.r)
			continue
		}
		we := wantErr[*ds.WrongEpochError](t, r.err)
		losers = append(losers, r.i)
		if we.Expected != 8 || we.FetchFromSeq != 2 {
			t.Errorf("loser %d: %+v, want Expected 8, FetchFromSeq 2", r.i, we)
		}
	}
	if len(winners) != 1 || winners[0].GroupSeq != 2 || winners[0].Epoch != 7 {
		t.Fatalf("winners %+v", winners)
	}
	// Losers retry one by one on the epoch they were told.
	epoch := uint64(8)
	for _, i := range losers {
		r, err := sendMsg(e.svc, ids[i], private(t, gid, epoch, mls.ContentTypeCommit))
		if err != nil || r.Epoch != epoch {
			t.Fatalf("retry of %d: %+v, %v", i, r, err)
		}
		epoch++
	}
	envs := must(e.svc.Fetch(bg, ids[0], gid, 2, 100))
	for k, env := range envs {
		if env.Epoch != uint64(7+k) {
			t.Errorf("commit %d has epoch %d, want %d", k, env.Epoch, 7+k)
		}
	}
}

func TestIdempotentResubmission(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	j := e.register("j", "j")
	kp := e.upload(j, 1, false)[0]
	g := e.createGroup(a)

	app := private(t, g.id, 0, mls.ContentTypeApplication)
	r1 := must(sendMsg(e.svc, "a", app))
	e.clock.Advance(1000)
	r2 := must(sendMsg(e.svc, "a", app))
	if r1.GroupSeq != r2.GroupSeq || r1.Epoch != r2.Epoch || !r1.AcceptedAt.Equal(r2.AcceptedAt) {
		t.Errorf("resubmission receipt %+v, first %+v", r2, r1)
	}

	commit, next := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kp)}, nil)
	bundle := ds.CommitBundle{Commit: commit, Welcome: welcome(t, ref(t, kp)), GroupInfo: commitGI(t, commit)}
	c1 := must(sendBundle(e.svc, "a", bundle))
	g.st = next
	must(sendMsg(e.svc, "a", private(t, g.id, 1, mls.ContentTypeApplication)))
	// The Commit's epoch is gone, yet the same bytes get the same receipt.
	c2, err := sendBundle(e.svc, "a", bundle)
	if err != nil || c2.GroupSeq != c1.GroupSeq {
		t.Errorf("resubmitted Commit: %+v, %v; want receipt %+v", c2, err, c1)
	}
	c3, err := sendMsg(e.svc, "a", commit)
	if err != nil || c3.GroupSeq != c1.GroupSeq {
		t.Errorf("Commit resubmitted through Send: %+v, %v", c3, err)
	}
	// A client outside the group replaying the same bytes learns
	// nothing: no receipt, whichever path the message takes.
	e.register("x", "x")
	for name, replay := range map[string][]byte{"application message": app, "Commit": commit} {
		if r, err := sendMsg(e.svc, "x", replay); !errors.Is(err, ds.ErrNotMember) {
			t.Errorf("an outsider replaying the %s got %+v, %v; want ErrNotMember", name, r, err)
		}
	}
	// The client the Commit added may know of it: it gets the receipt.
	if r, err := sendMsg(e.svc, "j", commit); err != nil || r.GroupSeq != c1.GroupSeq {
		t.Errorf("the joiner resubmitting its Commit: %+v, %v; want receipt %+v", r, err, c1)
	}
	envs := must(e.svc.Fetch(bg, "a", g.id, 1, 100))
	if len(envs) != 3 {
		t.Errorf("%d messages stored, want 3", len(envs))
	}
	if ws := pendingWelcomes(t, e, "j"); len(ws) != 1 {
		t.Errorf("%d Welcomes for j, want 1", len(ws))
	}
}

func TestEpochRules(t *testing.T) {
	e := newEnv(t, ds.Config{AppMessageEpochWindow: 2})
	ids := []string{"a", "b"}
	for _, id := range ids {
		e.register(id, id)
	}
	gid := []byte("g")
	must(0, e.createOpaque("a", ds.CreateGroup{GroupID: gid, Members: []string{"b"}}))
	for ep := uint64(0); ep < 5; ep++ {
		must(sendMsg(e.svc, "a", private(t, gid, ep, mls.ContentTypeCommit)))
	}
	// The group is at epoch 5.
	for _, ep := range []uint64{5, 4, 3} {
		if _, err := sendMsg(e.svc, "b", private(t, gid, ep, mls.ContentTypeApplication)); err != nil {
			t.Errorf("application message of epoch %d: %v", ep, err)
		}
	}
	_, err := sendMsg(e.svc, "b", private(t, gid, 2, mls.ContentTypeApplication))
	if se := wantErr[*ds.StaleEpochError](t, err); se.Current != 5 {
		t.Errorf("StaleEpochError.Current = %d, want 5", se.Current)
	}
	_, err = sendMsg(e.svc, "b", private(t, gid, 6, mls.ContentTypeApplication))
	wantErr[*ds.WrongEpochError](t, err)
	_, err = sendMsg(e.svc, "b", private(t, gid, 4, mls.ContentTypeProposal))
	if we := wantErr[*ds.WrongEpochError](t, err); we.Expected != 5 || we.FetchFromSeq != 5 {
		t.Errorf("old proposal: %+v, want Expected 5, FetchFromSeq 5", we)
	}
	must(sendMsg(e.svc, "b", private(t, gid, 5, mls.ContentTypeProposal)))
	_, err = sendMsg(e.svc, "b", private(t, gid, 4, mls.ContentTypeCommit))
	wantErr[*ds.WrongEpochError](t, err)
	_, err = sendMsg(e.svc, "b", private(t, gid, 9, mls.ContentTypeCommit))
	wantErr[*ds.WrongEpochError](t, err)
}

func TestStaleEpochTransparent(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	g := e.createGroup(a)
	for i := 0; i < 3; i++ {
		j := e.register(fmt.Sprintf("j%d", i), fmt.Sprintf("j%d", i))
		kp := e.upload(j, 1, false)[0]
		c, next := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kp)}, nil)
		must(sendMsg(e.svc, "a", c))
		g.st = next
	}
	must(sendMsg(e.svc, "a", private(t, g.id, 1, mls.ContentTypeApplication)))
	_, err := sendMsg(e.svc, "a", private(t, g.id, 0, mls.ContentTypeApplication))
	if se := wantErr[*ds.StaleEpochError](t, err); se.Current != 3 {
		t.Errorf("Current = %d, want 3", se.Current)
	}
}

// TestWrongSender: a member may send only as its own leaf, and only members
// may send.
func TestWrongSender(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	b := e.register("b", "b")
	e.register("c", "c")
	kpB := e.upload(b, 1, false)[0]
	g := e.createGroup(a)
	commit, next := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kpB)}, nil)
	must(sendMsg(e.svc, "a", commit))
	g.st = next // a at leaf 0, b at leaf 1

	j := e.register("j", "j")
	kpJ := e.upload(j, 1, false)[0]
	addJ := &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kpJ}}

	// b claims a's leaf, signing with its own key.
	_, err := sendMsg(e.svc, "b", g.proposal(t, b, 0, addJ))
	wantIs(t, err, ds.ErrPermissionDenied)
	forged, _ := g.frame(t, b, 0, mls.FramedContent{ContentType: mls.ContentTypeCommit, Commit: &mls.Commit{Proposals: []mls.ProposalOrRef{addOf(kpJ)}}})
	_, err = sendMsg(e.svc, "b", encode(t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: forged}))
	wantIs(t, err, ds.ErrPermissionDenied)
	// a's message submitted by b's connection: b is not leaf 0 either.
	_, err = sendMsg(e.svc, "b", g.proposal(t, a, 0, addJ))
	wantIs(t, err, ds.ErrPermissionDenied)
	// b on its own leaf but with a's signature: the signature fails.
	_, err = sendMsg(e.svc, "b", g.proposal(t, a, 1, addJ))
	if im := wantErr[*ds.InvalidMessageError](t, err); im.Section != "6.1" {
		t.Errorf("bad signature: section %q, want 6.1", im.Section)
	}
	// c is no member.
	_, err = sendMsg(e.svc, "c", private(t, g.id, 1, mls.ContentTypeApplication))
	wantIs(t, err, ds.ErrNotMember)
	_, err = sendMsg(e.svc, "c", g.proposal(t, b, 1, addJ))
	wantIs(t, err, ds.ErrNotMember)
	// b, correctly.
	must(sendMsg(e.svc, "b", g.proposal(t, b, 1, addJ)))
	must(sendMsg(e.svc, "b", private(t, g.id, 1, mls.ContentTypeApplication)))
	// Encrypted handshake messages are refused in a transparent group.
	_, err = sendMsg(e.svc, "b", private(t, g.id, 1, mls.ContentTypeCommit))
	wantErr[*ds.InvalidMessageError](t, err)
}

func TestMalformedAndLimits(t *testing.T) {
	e := newEnv(t, ds.Config{MaxMessageSize: 2048})
	a := e.register("a", "a")
	g := e.createGroup(a)
	_, err := sendMsg(e.svc, "a", []byte{0, 1, 0, 2, 0xff})
	wantErr[*ds.InvalidMessageError](t, err)
	_, err = sendMsg(e.svc, "a", make([]byte, 2049))
	if tl := wantErr[*ds.TooLargeError](t, err); tl.Limit != 2048 {
		t.Errorf("limit %d", tl.Limit)
	}
	_, err = sendMsg(e.svc, "a", private(t, []byte("no such group"), 0, mls.ContentTypeApplication))
	wantIs(t, err, ds.ErrNotMember) // one answer for outsiders
	_, kp := a.keyPackage(t, e.clock.Now())
	_, err = sendMsg(e.svc, "a", kp)
	wantErr[*ds.InvalidMessageError](t, err)
	_, err = sendBundle(e.svc, "a", ds.CommitBundle{Commit: private(t, g.id, 0, mls.ContentTypeApplication)})
	wantErr[*ds.InvalidMessageError](t, err)
	// Groups: duplicate id, creator not in the tree, malformed GroupInfo.
	_, gi, tree := newGroup(t, a, e.clock.Now())
	err = e.svc.CreateGroup(bg, "a", ds.CreateGroup{Mode: ds.ModeTransparent, GroupInfo: gi, RatchetTree: tree})
	if err != nil {
		t.Fatal(err)
	}
	err = e.svc.CreateGroup(bg, "a", ds.CreateGroup{Mode: ds.ModeTransparent, GroupInfo: gi, RatchetTree: tree})
	wantIs(t, err, ds.ErrAlreadyExists)
	e.register("x", "x")
	_, gi, tree = newGroup(t, a, e.clock.Now())
	err = e.svc.CreateGroup(bg, "x", ds.CreateGroup{Mode: ds.ModeTransparent, GroupInfo: gi, RatchetTree: tree})
	wantIs(t, err, ds.ErrPermissionDenied)
	err = e.svc.CreateGroup(bg, "a", ds.CreateGroup{Mode: ds.ModeTransparent, GroupInfo: gi[:len(gi)-1], RatchetTree: tree})
	wantErr[*ds.InvalidMessageError](t, err)
	bad := append([]byte(nil), gi...)
	bad[len(bad)-1] ^= 1 // the signature
	err = e.svc.CreateGroup(bg, "a", ds.CreateGroup{Mode: ds.ModeTransparent, GroupInfo: bad, RatchetTree: tree})
	wantErr[*ds.InvalidMessageError](t, err)
	err = e.svc.CreateGroup(bg, "a", ds.CreateGroup{GroupID: []byte("o"), Mode: ds.ModeOpaque, Members: []string{"nobody"}})
	wantIs(t, err, ds.ErrNotFound)
	// Group size.
	e2 := newEnv(t, ds.Config{MaxGroupSize: 2})
	for _, id := range []string{"a", "b"} {
		e2.register(id, id)
	}
	kpC := e2.upload(e2.register("c", "c"), 1, false)[0]
	err = e2.createOpaque("a", ds.CreateGroup{GroupID: []byte("o"), Members: []string{"b", "c"}})
	if tl := wantErr[*ds.TooLargeError](t, err); tl.Limit != 2 {
		t.Errorf("group size limit %d", tl.Limit)
	}
	must(0, e2.createOpaque("a", ds.CreateGroup{GroupID: []byte("o"), Members: []string{"b"}}))
	_, err = sendBundle(e2.svc, "a", ds.CommitBundle{Commit: private(t, []byte("o"), 0, mls.ContentTypeCommit), Added: []string{"c"}, Welcome: welcome(t, ref(t, kpC))})
	wantErr[*ds.TooLargeError](t, err)
}

// TestGroupInfoBundle: a GroupInfo published with a Commit must describe
// the epoch the Commit starts; the Commit, Welcome and GroupInfo are
// accepted or refused together.
func TestGroupInfoBundle(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	j := e.register("j", "j")
	kp := e.upload(j, 1, false)[0]
	g := e.createGroup(a)
	commit, next := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kp)}, nil)

	// A GroupInfo of the old epoch: all refused.
	stale := g.groupInfo(t, g.st, a, 0)
	_, err := sendBundle(e.svc, "a", ds.CommitBundle{Commit: commit, Welcome: welcome(t, ref(t, kp)), GroupInfo: stale})
	wantErr[*ds.InvalidMessageError](t, err)
	// A GroupInfo signed by someone else than the claimed signer.
	forged := g.groupInfo(t, next, j, 0)
	_, err = sendBundle(e.svc, "a", ds.CommitBundle{Commit: commit, GroupInfo: forged})
	wantErr[*ds.InvalidMessageError](t, err)
	// A correctly signed GroupInfo whose external_pub holds the bare key
	// without its opaque<V> length prefix, as ts-mls 1.6.4 writes it: no
	// joiner could use it, so it is not published (§12.4.3.2).
	_, extPub, err := suite.GenerateKEMKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	badExt := &mls.GroupInfo{GroupContext: next.GroupContext(), ConfirmationTag: random(suite.HashSize()),
		Extensions: mls.Extensions{{ExtensionType: mls.ExtensionTypeExternalPub, ExtensionData: extPub}}}
	if err := badExt.Sign(a.sigPriv); err != nil {
		t.Fatal(err)
	}
	_, err = sendBundle(e.svc, "a", ds.CommitBundle{Commit: commit,
		GroupInfo: encode(t, &mls.MLSMessage{WireFormat: mls.WireFormatGroupInfo, GroupInfo: badExt})})
	if ie := wantErr[*ds.InvalidMessageError](t, err); ie.Section != "12.4.3.2" {
		t.Errorf("bare external_pub refused under §%s, want §12.4.3.2", ie.Section)
	}
	// A Welcome for a KeyPackage the Commit does not add.
	other := e.upload(e.register("k", "k"), 1, false)[0]
	_, err = sendBundle(e.svc, "a", ds.CommitBundle{Commit: commit, Welcome: welcome(t, ref(t, other))})
	wantErr[*ds.InvalidMessageError](t, err)
	info := must(e.svc.GroupInfo(bg, "a", g.id))
	if info.Epoch != 0 {
		t.Fatalf("a refused bundle moved the group to epoch %d", info.Epoch)
	}
	if ws := pendingWelcomes(t, e, "j"); len(ws) != 0 {
		t.Fatalf("a refused bundle routed a Welcome")
	}
	if n, _ := e.svc.CountKeyPackages(bg, "j"); n[suite] != 1 {
		t.Fatalf("a refused bundle consumed a KeyPackage")
	}

	gi := commitGI(t, commit)
	r := must(sendBundle(e.svc, "a", ds.CommitBundle{Commit: commit, Welcome: welcome(t, ref(t, kp)), GroupInfo: gi}))
	g.st = next
	info = must(e.svc.GroupInfo(bg, "a", g.id))
	if info.Epoch != 1 || !bytes.Equal(info.GroupInfo, gi) || info.Mode != ds.ModeTransparent {
		t.Errorf("GroupInfo after commit: epoch %d, same GroupInfo %v", info.Epoch, bytes.Equal(info.GroupInfo, gi))
	}
	ws := pendingWelcomes(t, e, "j")
	if len(ws) != 1 || ws[0].CommitSeq != r.GroupSeq || ws[0].Epoch != 1 || !bytes.Equal(ws[0].GroupID, g.id) {
		t.Errorf("Welcome for j: %+v", ws)
	}
	// The KeyPackage is used: a second Welcome naming it is refused.
	j2 := e.upload(e.register("j2", "j2"), 1, false)[0]
	c2, _ := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(j2)}, nil)
	_, err = sendBundle(e.svc, "a", ds.CommitBundle{Commit: c2, Welcome: welcome(t, ref(t, j2), ref(t, kp))})
	wantErr[*ds.InvalidMessageError](t, err)
	// The bundle's declared roster changes must match the Commit's.
	_, err = sendBundle(e.svc, "a", ds.CommitBundle{Commit: c2, Added: []string{"someone"}})
	wantErr[*ds.InvalidMessageError](t, err)
	must(sendBundle(e.svc, "a", ds.CommitBundle{Commit: c2, Added: []string{"j2"}}))
}

// TestProposalsConcurrent: Proposals for one epoch arriving together all
// land in the tracked state (none is lost to a concurrent update), and a
// Commit can then refer to them.
func TestProposalsConcurrent(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	g := e.createGroup(a)
	const n = 8
	msgs := make([][]byte, n)
	for i := range msgs {
		j := e.register(fmt.Sprintf("j%d", i), fmt.Sprintf("j%d", i))
		kp := e.upload(j, 1, false)[0]
		msgs[i] = g.proposal(t, a, 0, &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}})
	}
	for _, r := range race(n, func(i int) (ds.Receipt, error) { return sendMsg(e.svc, "a", msgs[i]) }) {
		if r.err != nil {
			t.Fatalf("proposal %d: %v", r.i, r.err)
		}
	}
	// The members learn the proposals in the group's order and commit them
	// by reference.
	var refs []mls.ProposalOrRef
	for _, env := range must(e.svc.Fetch(bg, "a", g.id, 1, 100)) {
		m := must(mls.ParseMLSMessage(env.Data))
		pr, err := g.st.HandleProposal(m.PublicMessage)
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, mls.ProposalOrRef{Type: mls.ProposalOrRefTypeReference, Reference: pr})
	}
	commit, _ := g.commit(t, a, 0, refs, nil)
	if _, err := sendMsg(e.svc, "a", commit); err != nil {
		t.Fatalf("Commit of %d proposals by reference: %v", len(refs), err)
	}
	if roster := must(e.svc.Roster(bg, "a", g.id)); len(roster) != n+1 {
		t.Errorf("roster %v, want %d members", roster, n+1)
	}
}
