// Package storetest is the conformance suite that every ds.Store engine
// must pass. An engine's tests call Run with a function that opens a fresh,
// empty store:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) ds.Store { ... })
//	}
//
// The suite treats MLS objects as opaque bytes: a Store never parses them.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// Run runs the whole suite. open must return a new, empty store for each
// call; the suite closes it.
func Run(t *testing.T, open func(t *testing.T) ds.Store) {
	tests := []struct {
		name string
		f    func(t *testing.T, s ds.Store)
	}{
		{"Clients", testClients},
		{"ClientKeys", testClientKeys},
		{"RegisterClient", testRegisterClient}, {"RegisterOnce", testRegisterOnce}, {"RegisterConcurrent", testRegisterConcurrent}, {"DeviceLinks", testDeviceLinks}, {"SpendOnce", testSpendOnce},
		{"KeyPackageUpload", testKeyPackageUpload},
		{"KeyPackageLimit", testKeyPackageLimit},
		{"KeyPackageLastResort", testKeyPackageLastResort},
		{"KeyPackageDelete", testKeyPackageDelete},
		{"KeyPackageClaim", testKeyPackageClaim},
		{"KeyPackageClaimValidity", testKeyPackageClaimValidity},
		{"KeyPackageClaimSeveral", testKeyPackageClaimSeveral},
		{"KeyPackageClaimConcurrent", testKeyPackageClaimConcurrent},
		{"Groups", testGroups},
		{"AcceptSequence", testAcceptSequence},
		{"AcceptCommitEpoch", testAcceptCommitEpoch},
		{"AcceptApplicationEpoch", testAcceptApplicationEpoch},
		{"AcceptIdempotent", testAcceptIdempotent},
		{"AcceptRequireMember", testAcceptRequireMember},
		{"AcceptState", testAcceptState},
		{"StateLog", testStateLog},
		{"StateLogBatch", testStateLogBatch},
		{"AcceptCommitsConcurrent", testAcceptCommitsConcurrent},
		{"AcceptAppConcurrent", testAcceptAppConcurrent},
		{"Membership", testMembership},
		{"Messages", testMessages}, {"MessagesBudget", testMessagesBudget},
		{"CursorsAndAck", testCursorsAndAck},
		{"Welcomes", testWelcomes},
		{"BatchMixed", testBatchMixed},
		{"BatchCommits", testBatchCommits},
		{"BatchMembership", testBatchMembership},
		{"BatchWelcome", testBatchWelcome},
		{"RemoteTrees", testRemoteTrees},
		{"AckBatch", testAckBatch},
		{"AckBatchWelcomes", testAckBatchWelcomes},
		{"AckBatchCheckHead", testAckBatchCheckHead},
		{"AckInBatch", testAckInBatch},
		{"JoinLinks", testJoinLinks}, {"ConsumeKeyPackages", testConsumeKeyPackages}, {"AcceptMemberBeforeEpoch", testAcceptMemberBeforeEpoch},
		{"PruneAcked", testPruneAcked}, {"PruneRetention", testPruneRetention}, {"PruneStateLog", testPruneStateLog}, {"PruneKeyPackages", testPruneKeyPackages}, {"PruneEmptyGroups", testPruneEmptyGroups}, {"PrunerLock", testPrunerLock},
		{"Leave", testLeave}, {"LeaveEmptyWindow", testLeaveEmptyWindow}, {"NumbersOutOfRange", testNumbersOutOfRange},
		{"DeleteClient", testDeleteClient}, {"DeleteClientFormerMember", testDeleteClientFormerMember},
		{"Quotas", testQuotas},
		{"CreateGroupWelcome", testCreateGroupWelcome},
		{"Deniable", testDeniable},
		{"Successor", testSuccessor},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.f(t, s)
		})
	}
}

// t0 is the suite's "now", at microsecond precision as the contract asks.
var t0 = time.Date(2025, 6, 1, 12, 0, 0, 123456000, time.UTC)

const suite = mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

func ctx() context.Context { return context.Background() }

func mustClient(t *testing.T, s ds.Store, id, user string) ds.Client {
	t.Helper()
	c := ds.Client{ID: id, UserID: user, CipherSuite: suite, SignatureKey: []byte("sig-" + id), CreatedAt: t0}
	if err := s.CreateClient(ctx(), c); err != nil {
		t.Fatalf("CreateClient(%q): %v", id, err)
	}
	return c
}

var kpCounter int

// kp returns a KeyPackageRecord of client valid around t0.
func kp(client string, lastResort bool) ds.KeyPackageRecord {
	kpCounter++
	ref := sha256.Sum256([]byte(fmt.Sprintf("kp-%s-%d", client, kpCounter)))
	return ds.KeyPackageRecord{
		Ref:         ref[:],
		ClientID:    client,
		CipherSuite: suite,
		Data:        []byte(fmt.Sprintf("key package %d of %s", kpCounter, client)),
		NotBefore:   t0.Add(-time.Hour),
		NotAfter:    t0.Add(24 * time.Hour),
		LastResort:  lastResort,
		UploadedAt:  t0,
	}
}

func mustAddKPs(t *testing.T, s ds.Store, kps ...ds.KeyPackageRecord) {
	t.Helper()
	if err := s.AddKeyPackages(ctx(), kps, 1000); err != nil {
		t.Fatalf("AddKeyPackages: %v", err)
	}
}

func refs(kps []ds.KeyPackageRecord) [][]byte {
	var out [][]byte
	for _, k := range kps {
		out = append(out, k.Ref)
	}
	return out
}

func sameRefs(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func testClients(t *testing.T, s ds.Store) {
	c := mustClient(t, s, "alice-phone", "alice")
	mustClient(t, s, "alice-laptop", "alice")
	mustClient(t, s, "bob", "bob")

	got, err := s.Client(ctx(), "alice-phone")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != c.ID || got.UserID != c.UserID || got.CipherSuite != c.CipherSuite ||
		!bytes.Equal(got.SignatureKey, c.SignatureKey) || !got.CreatedAt.Equal(c.CreatedAt) {
		t.Errorf("Client = %+v, want %+v", got, c)
	}
	err = s.CreateClient(ctx(), ds.Client{ID: "bob", UserID: "x", CipherSuite: suite, SignatureKey: []byte("k"), CreatedAt: t0})
	if !errors.Is(err, ds.ErrAlreadyExists) {
		t.Errorf("CreateClient of a taken id: %v, want ErrAlreadyExists", err)
	}
	if _, err := s.Client(ctx(), "carol"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("Client(unknown): %v, want ErrNotFound", err)
	}
	cs, err := s.ClientsOfUser(ctx(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].ID != "alice-laptop" || cs[1].ID != "alice-phone" {
		t.Errorf("ClientsOfUser(alice) = %v, want alice-laptop, alice-phone", cs)
	}
	if cs, err := s.ClientsOfUser(ctx(), "nobody"); err != nil || len(cs) != 0 {
		t.Errorf("ClientsOfUser(nobody) = %v, %v; want none", cs, err)
	}
}

func testKeyPackageUpload(t *testing.T, s ds.Store) {
	mustClient(t, s, "a", "a")
	mustClient(t, s, "b", "b")
	k1, k2, k3 := kp("a", false), kp("a", false), kp("a", true)
	mustAddKPs(t, s, k1, k2, k3)

	got, err := s.KeyPackages(ctx(), "a")
	if err != nil {
		t.Fatal(err)
	}
	if !sameRefs(refs(got), refs([]ds.KeyPackageRecord{k1, k2, k3})) {
		t.Fatalf("KeyPackages: refs %x, want upload order", refs(got))
	}
	g := got[2]
	if g.ClientID != "a" || g.CipherSuite != suite || !bytes.Equal(g.Data, k3.Data) || !g.LastResort ||
		!g.NotBefore.Equal(k3.NotBefore) || !g.NotAfter.Equal(k3.NotAfter) || !g.UploadedAt.Equal(t0) || g.Claimed() || g.Consumed() {
		t.Errorf("stored KeyPackage = %+v, want %+v", g, k3)
	}
	if got, _ := s.KeyPackages(ctx(), "b"); len(got) != 0 {
		t.Errorf("KeyPackages(b) = %d entries, want 0", len(got))
	}

	// A duplicate ref, within an upload or against the store, fails the
	// whole upload.
	k4 := kp("a", false)
	if err := s.AddKeyPackages(ctx(), []ds.KeyPackageRecord{k4, k1}, 1000); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Errorf("upload with a stored ref: %v, want ErrAlreadyExists", err)
	}
	if err := s.AddKeyPackages(ctx(), []ds.KeyPackageRecord{k4, k4}, 1000); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Errorf("upload with a repeated ref: %v, want ErrAlreadyExists", err)
	}
	// Another client uploading the same ref is a duplicate too.
	dup := k1
	dup.ClientID = "b"
	if err := s.AddKeyPackages(ctx(), []ds.KeyPackageRecord{dup}, 1000); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Errorf("upload of another client's ref: %v, want ErrAlreadyExists", err)
	}
	if got, _ := s.KeyPackages(ctx(), "a"); len(got) != 3 {
		t.Errorf("after failed uploads: %d KeyPackages, want 3 (a failed upload stores nothing)", len(got))
	}

	counts, err := s.CountKeyPackages(ctx(), "a", t0)
	if err != nil {
		t.Fatal(err)
	}
	if len(counts) != 1 || counts[suite] != 2 {
		t.Errorf("CountKeyPackages = %v, want {%d: 2} (last-resort not counted)", counts, suite)
	}
	stock, err := s.KeyPackageStock(ctx(), t0)
	if err != nil {
		t.Fatal(err)
	}
	if len(stock) != 1 || stock[suite] != 2 {
		t.Errorf("KeyPackageStock = %v, want {%d: 2} (all clients, last-resort not counted)", stock, suite)
	}

	byRef, err := s.KeyPackagesByRef(ctx(), [][]byte{k2.Ref, []byte("unknown"), k3.Ref})
	if err != nil {
		t.Fatal(err)
	}
	if len(byRef) != 2 {
		t.Fatalf("KeyPackagesByRef: %d results, want 2", len(byRef))
	}
	for _, r := range byRef {
		if r.ClientID != "a" || !(bytes.Equal(r.Ref, k2.Ref) || bytes.Equal(r.Ref, k3.Ref)) {
			t.Errorf("KeyPackagesByRef returned %+v", r)
		}
	}
}

func testKeyPackageLimit(t *testing.T, s ds.Store) {
	mustClient(t, s, "a", "a")
	mustClient(t, s, "b", "b")
	if err := s.AddKeyPackages(ctx(), []ds.KeyPackageRecord{kp("a", false), kp("a", false), kp("a", true)}, 3); err != nil {
		t.Fatal(err)
	}
	err := s.AddKeyPackages(ctx(), []ds.KeyPackageRecord{kp("a", false)}, 3)
	var tl *ds.TooLargeError
	if !errors.As(err, &tl) || tl.Limit != 3 {
		t.Fatalf("upload over the limit: %v, want TooLargeError{Limit: 3}", err)
	}
	// Claimed KeyPackages do not count against the limit.
	if _, err := s.ClaimKeyPackages(ctx(), ds.ClaimParams{Claimer: "b", Targets: []string{"a"}, Suite: suite, Now: t0}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddKeyPackages(ctx(), []ds.KeyPackageRecord{kp("a", false)}, 3); err != nil {
		t.Errorf("upload after a claim freed a slot: %v", err)
	}
	// The limit is per client.
	if err := s.AddKeyPackages(ctx(), []ds.KeyPackageRecord{kp("b", false), kp("b", false), kp("b", false)}, 3); err != nil {
		t.Errorf("other client's upload: %v", err)
	}
}

func testKeyPackageLastResort(t *testing.T, s ds.Store) {
	mustClient(t, s, "a", "a")
	if err := s.AddKeyPackages(ctx(), []ds.KeyPackageRecord{kp("a", true), kp("a", true)}, 100); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Errorf("two last-resort KeyPackages in one upload: %v, want ErrAlreadyExists", err)
	}
	lr := kp("a", true)
	mustAddKPs(t, s, lr)
	if err := s.AddKeyPackages(ctx(), []ds.KeyPackageRecord{kp("a", false), kp("a", true)}, 100); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Errorf("second last-resort KeyPackage: %v, want ErrAlreadyExists", err)
	}
	// Another suite has its own last-resort slot.
	other := kp("a", true)
	other.CipherSuite = mls.MLS_128_DHKEMP256_AES128GCM_SHA256_P256
	mustAddKPs(t, s, other)
	// Deleting the last-resort one frees the slot.
	if n, err := s.DeleteKeyPackages(ctx(), "a", [][]byte{lr.Ref}); err != nil || n != 1 {
		t.Fatalf("DeleteKeyPackages = %d, %v", n, err)
	}
	mustAddKPs(t, s, kp("a", true))
}

func testKeyPackageDelete(t *testing.T, s ds.Store) {
	mustClient(t, s, "a", "a")
	mustClient(t, s, "b", "b")
	ka1, ka2, ka3 := kp("a", false), kp("a", false), kp("a", false)
	kb := kp("b", false)
	mustAddKPs(t, s, ka1, ka2, ka3)
	mustAddKPs(t, s, kb)
	claims, err := s.ClaimKeyPackages(ctx(), ds.ClaimParams{Claimer: "b", Targets: []string{"a"}, Suite: suite, Now: t0})
	if err != nil || claims[0].KeyPackage == nil || !bytes.Equal(claims[0].KeyPackage.Ref, ka1.Ref) {
		t.Fatalf("claim: %+v, %v", claims, err)
	}
	// ka1 is claimed, kb is b's, "x" is unknown: only ka2 goes.
	n, err := s.DeleteKeyPackages(ctx(), "a", [][]byte{ka1.Ref, ka2.Ref, kb.Ref, []byte("x")})
	if err != nil || n != 1 {
		t.Fatalf("DeleteKeyPackages = %d, %v; want 1", n, err)
	}
	got, _ := s.KeyPackages(ctx(), "a")
	if !sameRefs(refs(got), [][]byte{ka3.Ref}) {
		t.Errorf("after delete: %x, want only the third", refs(got))
	}
	if got, _ := s.KeyPackages(ctx(), "b"); len(got) != 1 {
		t.Errorf("b's KeyPackage was deleted by a")
	}
	// The claimed one is still known for Welcome routing.
	byRef, _ := s.KeyPackagesByRef(ctx(), [][]byte{ka1.Ref})
	if len(byRef) != 1 || !byRef[0].Claimed() || byRef[0].ClaimedBy != "b" || !byRef[0].ClaimedAt.Equal(t0) {
		t.Errorf("claimed KeyPackage by ref: %+v", byRef)
	}
}

func claimOne(t *testing.T, s ds.Store, claimer, target string, now time.Time) ds.Claim {
	t.Helper()
	c, err := s.ClaimKeyPackages(ctx(), ds.ClaimParams{Claimer: claimer, Targets: []string{target}, Suite: suite, Now: now})
	if err != nil {
		t.Fatalf("ClaimKeyPackages: %v", err)
	}
	if len(c) != 1 || c[0].Target != target {
		t.Fatalf("ClaimKeyPackages returned %+v for one target", c)
	}
	return c[0]
}

func testKeyPackageClaim(t *testing.T, s ds.Store) {
	mustClient(t, s, "a", "a")
	mustClient(t, s, "b", "b")
	k1, k2, lr := kp("a", false), kp("a", false), kp("a", true)
	mustAddKPs(t, s, k1, lr, k2)

	for i, want := range []ds.KeyPackageRecord{k1, k2} {
		c := claimOne(t, s, "b", "a", t0)
		if c.KeyPackage == nil || !bytes.Equal(c.KeyPackage.Ref, want.Ref) || c.KeyPackage.LastResort {
			t.Fatalf("claim %d: %+v, want the oldest unclaimed", i, c.KeyPackage)
		}
		if !bytes.Equal(c.KeyPackage.Data, want.Data) {
			t.Errorf("claim %d returned other data", i)
		}
		if c.Remaining != 1-i {
			t.Errorf("claim %d: Remaining = %d, want %d", i, c.Remaining, 1-i)
		}
	}
	// Only the last-resort one is left: it is returned, again and again.
	for i := 0; i < 3; i++ {
		c := claimOne(t, s, "b", "a", t0)
		if c.KeyPackage == nil || !bytes.Equal(c.KeyPackage.Ref, lr.Ref) || !c.KeyPackage.LastResort || c.Remaining != 0 {
			t.Fatalf("claim after stock ran out: %+v, want the last-resort KeyPackage", c)
		}
	}
	got, _ := s.KeyPackages(ctx(), "a")
	if !sameRefs(refs(got), [][]byte{lr.Ref}) {
		t.Errorf("unclaimed after claims: %x, want only the last-resort one", refs(got))
	}
	// Without a last-resort one, the target is exhausted.
	if n, _ := s.DeleteKeyPackages(ctx(), "a", [][]byte{lr.Ref}); n != 1 {
		t.Fatal("delete last-resort failed")
	}
	if c := claimOne(t, s, "b", "a", t0); c.KeyPackage != nil {
		t.Errorf("claim on empty stock returned %+v", c.KeyPackage)
	}
	// Another suite is separate.
	o := kp("a", false)
	o.CipherSuite = mls.MLS_128_DHKEMP256_AES128GCM_SHA256_P256
	mustAddKPs(t, s, o)
	if c := claimOne(t, s, "b", "a", t0); c.KeyPackage != nil {
		t.Errorf("claim for suite %d returned a KeyPackage of suite %d", suite, c.KeyPackage.CipherSuite)
	}
	// Unknown targets are simply exhausted.
	if c := claimOne(t, s, "b", "nobody", t0); c.KeyPackage != nil {
		t.Errorf("claim for an unknown client returned %+v", c.KeyPackage)
	}
}

func testKeyPackageClaimValidity(t *testing.T, s ds.Store) {
	mustClient(t, s, "a", "a")
	expired := kp("a", false)
	expired.NotAfter = t0.Add(-time.Minute)
	future := kp("a", false)
	future.NotBefore = t0.Add(time.Minute)
	expiredLR := kp("a", true)
	expiredLR.NotAfter = t0.Add(-time.Second)
	good := kp("a", false)
	mustAddKPs(t, s, expired, future, expiredLR, good)

	counts, _ := s.CountKeyPackages(ctx(), "a", t0)
	if counts[suite] != 1 {
		t.Errorf("CountKeyPackages = %v, want 1 valid", counts)
	}
	c := claimOne(t, s, "b", "a", t0)
	if c.KeyPackage == nil || !bytes.Equal(c.KeyPackage.Ref, good.Ref) {
		t.Fatalf("claim = %+v, want the only valid one", c.KeyPackage)
	}
	if c := claimOne(t, s, "b", "a", t0); c.KeyPackage != nil {
		t.Errorf("claim returned an invalid KeyPackage %+v (expired last-resort must not be handed out)", c.KeyPackage)
	}
	// Later, the future one becomes valid.
	if c := claimOne(t, s, "b", "a", t0.Add(2*time.Minute)); c.KeyPackage == nil || !bytes.Equal(c.KeyPackage.Ref, future.Ref) {
		t.Errorf("claim once valid = %+v, want the formerly future one", c.KeyPackage)
	}
	// Expired ones are still listed so the owner can delete them.
	if got, _ := s.KeyPackages(ctx(), "a"); len(got) != 2 {
		t.Errorf("KeyPackages lists %d, want the 2 expired ones", len(got))
	}
}

func testKeyPackageClaimSeveral(t *testing.T, s ds.Store) {
	for _, id := range []string{"u1", "u2", "u3"} {
		mustClient(t, s, id, "u")
	}
	k1, k2 := kp("u1", false), kp("u2", true)
	mustAddKPs(t, s, k1)
	mustAddKPs(t, s, k2)
	claims, err := s.ClaimKeyPackages(ctx(), ds.ClaimParams{Claimer: "x", Targets: []string{"u1", "u2", "u3"}, Suite: suite, Now: t0})
	if err != nil {
		t.Fatal(err)
	}
	if len(claims) != 3 {
		t.Fatalf("%d claims, want 3", len(claims))
	}
	if claims[0].Target != "u1" || claims[0].KeyPackage == nil || !bytes.Equal(claims[0].KeyPackage.Ref, k1.Ref) {
		t.Errorf("claim for u1: %+v", claims[0])
	}
	if claims[1].Target != "u2" || claims[1].KeyPackage == nil || !claims[1].KeyPackage.LastResort {
		t.Errorf("claim for u2: %+v, want its last-resort KeyPackage", claims[1])
	}
	if claims[2].Target != "u3" || claims[2].KeyPackage != nil {
		t.Errorf("claim for u3: %+v, want none", claims[2])
	}
}

// testKeyPackageClaimConcurrent: 10 claimers race for 5 KeyPackages and a
// last-resort one. No KeyPackage may be handed out twice, the last-resort
// one only to claimers that came after the 5 were gone.
func testKeyPackageClaimConcurrent(t *testing.T, s ds.Store) {
	mustClient(t, s, "target", "target")
	var normal []ds.KeyPackageRecord
	for i := 0; i < 5; i++ {
		normal = append(normal, kp("target", false))
	}
	lr := kp("target", true)
	mustAddKPs(t, s, append(normal, lr)...)

	type result struct {
		claimer string
		claim   ds.Claim
		err     error
	}
	results := make(chan result, 10)
	var start sync.WaitGroup
	start.Add(1)
	for i := 0; i < 10; i++ {
		claimer := fmt.Sprintf("claimer-%d", i)
		go func() {
			start.Wait()
			c, err := s.ClaimKeyPackages(ctx(), ds.ClaimParams{Claimer: claimer, Targets: []string{"target"}, Suite: suite, Now: t0})
			var cl ds.Claim
			if len(c) == 1 {
				cl = c[0]
			}
			results <- result{claimer, cl, err}
		}()
	}
	start.Done()
	seen := make(map[string]string)
	lastResort := 0
	for i := 0; i < 10; i++ {
		r := <-results
		if r.err != nil {
			t.Fatalf("%s: %v", r.claimer, r.err)
		}
		kp := r.claim.KeyPackage
		if kp == nil {
			t.Fatalf("%s got nothing although a last-resort KeyPackage exists", r.claimer)
		}
		if kp.LastResort {
			lastResort++
			if r.claim.Remaining != 0 {
				t.Errorf("%s got the last-resort KeyPackage while %d others remained", r.claimer, r.claim.Remaining)
			}
			continue
		}
		if other, dup := seen[string(kp.Ref)]; dup {
			t.Errorf("KeyPackage %x handed to both %s and %s", kp.Ref[:4], other, r.claimer)
		}
		seen[string(kp.Ref)] = r.claimer
	}
	if len(seen) != 5 || lastResort != 5 {
		t.Errorf("%d distinct KeyPackages and %d last-resort, want 5 and 5", len(seen), lastResort)
	}
	for _, k := range normal {
		r, _ := s.KeyPackagesByRef(ctx(), [][]byte{k.Ref})
		if len(r) != 1 || r[0].ClaimedBy != seen[string(k.Ref)] {
			t.Errorf("KeyPackage %x: recorded claimer %q, handed to %q", k.Ref[:4], r[0].ClaimedBy, seen[string(k.Ref)])
		}
	}
}

func newGroup(t *testing.T, s ds.Store, id string, epoch uint64, members ...string) ds.GroupRecord {
	t.Helper()
	g := ds.GroupRecord{
		ID: []byte(id), Mode: ds.ModeOpaque, CipherSuite: suite, Creator: members[0], CreatedAt: t0,
		Epoch: epoch, State: []byte("state-0"), GroupInfo: []byte("gi-0"),
	}
	if err := s.CreateGroup(ctx(), g, members); err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	return g
}

func testGroups(t *testing.T, s ds.Store) {
	g := newGroup(t, s, "g1", 7, "alice", "bob", "carol", "bob")
	if err := s.CreateGroup(ctx(), g, []string{"x"}); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Errorf("CreateGroup of a taken id: %v, want ErrAlreadyExists", err)
	}
	if _, err := s.Group(ctx(), []byte("nope")); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("Group(unknown): %v, want ErrNotFound", err)
	}
	if _, err := s.GroupState(ctx(), []byte("nope")); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("GroupState(unknown): %v, want ErrNotFound", err)
	}
	head, err := s.Group(ctx(), g.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(head.ID, g.ID) || head.Mode != ds.ModeOpaque || head.CipherSuite != suite || head.Creator != "alice" ||
		!head.CreatedAt.Equal(t0) || head.Epoch != 7 || head.EpochStartSeq != 1 || head.LastSeq != 0 || head.StateVersion != 0 {
		t.Errorf("Group = %+v", head)
	}
	if head.State != nil || head.GroupInfo != nil {
		t.Errorf("Group returned the state; only GroupState should")
	}
	full, err := s.GroupState(ctx(), g.ID)
	if err != nil {
		t.Fatal(err)
	}
	if string(full.State) != "state-0" || string(full.GroupInfo) != "gi-0" || full.Epoch != 7 {
		t.Errorf("GroupState = %+v", full)
	}
	members, err := s.Members(ctx(), g.ID)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(members) != "[alice bob carol]" {
		t.Errorf("Members = %v, want [alice bob carol]", members)
	}
	w, err := s.Memberships(ctx(), g.ID, "bob")
	if err != nil || len(w) != 1 || w[0].FromSeq != 1 || !w[0].Open() {
		t.Errorf("Memberships(bob) = %+v, %v; want one open window from 1", w, err)
	}
	if w, err := s.Memberships(ctx(), g.ID, "dave"); err != nil || len(w) != 0 {
		t.Errorf("Memberships(dave) = %+v, %v; want none", w, err)
	}
}

// msg builds AcceptParams for a message whose bytes are derived from text.
func msg(group string, epoch uint64, ct mls.ContentType, sender, text string) ds.AcceptParams {
	data := []byte(fmt.Sprintf("%s|%d|%d|%s|%s", group, epoch, ct, sender, text))
	h := sha256.Sum256(data)
	return ds.AcceptParams{
		GroupID: []byte(group), Hash: h[:], Epoch: epoch, ContentType: ct, WireFormat: mls.WireFormatPrivateMessage,
		Sender: sender, Data: data, AcceptedAt: t0, MaxEpochLag: 2,
	}
}

func mustAccept(t *testing.T, s ds.Store, p ds.AcceptParams) ds.Receipt {
	t.Helper()
	r, err := s.AcceptMessage(ctx(), p)
	if err != nil {
		t.Fatalf("AcceptMessage(%s): %v", p.Data, err)
	}
	if r.Duplicate {
		t.Fatalf("AcceptMessage(%s): unexpected duplicate", p.Data)
	}
	return r.Receipt
}

func testAcceptSequence(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b")
	newGroup(t, s, "h", 0, "a")
	for i := 1; i <= 5; i++ {
		p := msg("g", 0, mls.ContentTypeApplication, "a", fmt.Sprint(i))
		p.AcceptedAt = t0.Add(time.Duration(i) * time.Microsecond)
		r := mustAccept(t, s, p)
		if r.GroupSeq != uint64(i) || r.Epoch != 0 || !bytes.Equal(r.GroupID, []byte("g")) || !r.AcceptedAt.Equal(p.AcceptedAt) {
			t.Errorf("receipt %d = %+v", i, r)
		}
	}
	// Each group has its own sequence.
	if r := mustAccept(t, s, msg("h", 0, mls.ContentTypeApplication, "a", "1")); r.GroupSeq != 1 {
		t.Errorf("first message of another group got seq %d", r.GroupSeq)
	}
	head, _ := s.Group(ctx(), []byte("g"))
	if head.LastSeq != 5 || head.Epoch != 0 {
		t.Errorf("group after 5 messages: %+v", head)
	}
	if _, err := s.AcceptMessage(ctx(), msg("nope", 0, mls.ContentTypeApplication, "a", "x")); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("accept into unknown group: %v, want ErrNotFound", err)
	}
}

func wantWrongEpoch(t *testing.T, err error, expected, fetch uint64) {
	t.Helper()
	var we *ds.WrongEpochError
	if !errors.As(err, &we) {
		t.Fatalf("got %v, want WrongEpochError", err)
	}
	if we.Expected != expected || we.FetchFromSeq != fetch {
		t.Errorf("WrongEpochError{Expected: %d, FetchFromSeq: %d}, want {%d, %d}", we.Expected, we.FetchFromSeq, expected, fetch)
	}
}

func testAcceptCommitEpoch(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 3, "a", "b")
	// Before any Commit, a wrong epoch points at the beginning.
	_, err := s.AcceptMessage(ctx(), msg("g", 4, mls.ContentTypeCommit, "a", "c"))
	wantWrongEpoch(t, err, 3, 1)

	mustAccept(t, s, msg("g", 3, mls.ContentTypeApplication, "a", "m1"))
	c1 := mustAccept(t, s, msg("g", 3, mls.ContentTypeCommit, "a", "c1"))
	if c1.GroupSeq != 2 || c1.Epoch != 3 {
		t.Errorf("commit receipt %+v, want seq 2, epoch 3", c1)
	}
	head, _ := s.Group(ctx(), []byte("g"))
	if head.Epoch != 4 || head.EpochStartSeq != 2 {
		t.Errorf("after commit: epoch %d start %d, want 4, 2", head.Epoch, head.EpochStartSeq)
	}
	// A second Commit for epoch 3 loses; so does one for a future epoch.
	_, err = s.AcceptMessage(ctx(), msg("g", 3, mls.ContentTypeCommit, "b", "c1'"))
	wantWrongEpoch(t, err, 4, 2)
	_, err = s.AcceptMessage(ctx(), msg("g", 9, mls.ContentTypeCommit, "b", "c9"))
	wantWrongEpoch(t, err, 4, 2)
	// Proposals must be for the current epoch (MaxEpochLag 0).
	p := msg("g", 3, mls.ContentTypeProposal, "b", "p-old")
	p.MaxEpochLag = 0
	_, err = s.AcceptMessage(ctx(), p)
	wantWrongEpoch(t, err, 4, 2)
	p = msg("g", 4, mls.ContentTypeProposal, "b", "p")
	p.MaxEpochLag = 0
	mustAccept(t, s, p)
	c2 := mustAccept(t, s, msg("g", 4, mls.ContentTypeCommit, "b", "c2"))
	head, _ = s.Group(ctx(), []byte("g"))
	if head.Epoch != 5 || head.EpochStartSeq != c2.GroupSeq || head.LastSeq != 4 {
		t.Errorf("after second commit: %+v", head)
	}
	// Refused messages were not stored.
	all, _ := s.Messages(ctx(), ds.MessageQuery{GroupID: []byte("g"), ClientID: "a", FromSeq: 1, Limit: 100})
	if len(all) != 4 {
		t.Errorf("%d messages stored, want 4", len(all))
	}
}

func testAcceptApplicationEpoch(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 10, "a")
	mustAccept(t, s, msg("g", 10, mls.ContentTypeApplication, "a", "now"))
	mustAccept(t, s, msg("g", 9, mls.ContentTypeApplication, "a", "one old"))
	mustAccept(t, s, msg("g", 8, mls.ContentTypeApplication, "a", "two old"))
	_, err := s.AcceptMessage(ctx(), msg("g", 7, mls.ContentTypeApplication, "a", "three old"))
	var se *ds.StaleEpochError
	if !errors.As(err, &se) || se.Current != 10 {
		t.Errorf("three epochs old with lag 2: %v, want StaleEpochError{Current: 10}", err)
	}
	_, err = s.AcceptMessage(ctx(), msg("g", 11, mls.ContentTypeApplication, "a", "future"))
	wantWrongEpoch(t, err, 10, 1)
	p := msg("g", 9, mls.ContentTypeApplication, "a", "lag 0")
	p.MaxEpochLag = 0
	_, err = s.AcceptMessage(ctx(), p)
	wantWrongEpoch(t, err, 10, 1)
	// Epochs near zero do not wrap around.
	newGroup(t, s, "z", 0, "a")
	mustAccept(t, s, msg("z", 0, mls.ContentTypeApplication, "a", "zero"))
}

func testAcceptIdempotent(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b")
	newGroup(t, s, "h", 0, "a", "b")
	c := msg("g", 0, mls.ContentTypeCommit, "a", "commit")
	c.Removed = []string{"b"}
	c.GroupInfo = []byte("gi-1")
	first := mustAccept(t, s, c)
	mustAccept(t, s, msg("g", 1, mls.ContentTypeApplication, "a", "after"))

	// The same bytes again: the first receipt, although the Commit's epoch
	// is no longer current, and no change.
	again, err := s.AcceptMessage(ctx(), c)
	if err != nil {
		t.Fatalf("resubmission: %v", err)
	}
	if !again.Duplicate || again.GroupSeq != first.GroupSeq || again.Epoch != first.Epoch || !again.AcceptedAt.Equal(first.AcceptedAt) {
		t.Errorf("resubmission = %+v, want duplicate of %+v", again, first)
	}
	r, err := s.MessageByHash(ctx(), []byte("g"), c.Hash)
	if err != nil || r.GroupSeq != first.GroupSeq {
		t.Errorf("MessageByHash = %+v, %v", r, err)
	}
	head, _ := s.GroupState(ctx(), []byte("g"))
	if head.LastSeq != 2 || head.Epoch != 1 {
		t.Errorf("after resubmission: %+v", head)
	}
	// The hash is unique per group, not globally.
	c.GroupID = []byte("h")
	if r := mustAccept(t, s, c); r.GroupSeq != 1 {
		t.Errorf("same bytes in another group: %+v", r)
	}
	if _, err := s.MessageByHash(ctx(), []byte("g"), []byte("unknown")); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("MessageByHash(unknown) = %v, want ErrNotFound", err)
	}
}

func testAcceptRequireMember(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b")
	p := msg("g", 0, mls.ContentTypeApplication, "x", "intruder")
	p.RequireMember = true
	if _, err := s.AcceptMessage(ctx(), p); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("non-member: %v, want ErrNotMember", err)
	}
	c := msg("g", 0, mls.ContentTypeCommit, "a", "remove b")
	c.RequireMember = true
	c.Removed = []string{"b"}
	mustAccept(t, s, c)
	p = msg("g", 1, mls.ContentTypeApplication, "b", "removed")
	p.RequireMember = true
	if _, err := s.AcceptMessage(ctx(), p); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("removed member: %v, want ErrNotMember", err)
	}
	p = msg("g", 1, mls.ContentTypeApplication, "a", "member")
	p.RequireMember = true
	mustAccept(t, s, p)
}

func testAcceptState(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b")
	p := msg("g", 0, mls.ContentTypeProposal, "a", "p1")
	p.NewState, p.StateVersion = []byte("state-1"), 0
	mustAccept(t, s, p)
	g, _ := s.GroupState(ctx(), []byte("g"))
	if g.StateVersion != 1 || string(g.State) != "state-1" || string(g.GroupInfo) != "gi-0" {
		t.Errorf("after proposal: version %d state %q gi %q", g.StateVersion, g.State, g.GroupInfo)
	}
	// A writer that validated against version 0 lost the race.
	p2 := msg("g", 0, mls.ContentTypeProposal, "b", "p2")
	p2.NewState, p2.StateVersion = []byte("state-1'"), 0
	if _, err := s.AcceptMessage(ctx(), p2); !errors.Is(err, ds.ErrStateConflict) {
		t.Errorf("stale state version: %v, want ErrStateConflict", err)
	}
	// Messages without a new state do not care about the version.
	mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "b", "app"))
	c := msg("g", 0, mls.ContentTypeCommit, "b", "c")
	c.NewState, c.StateVersion, c.GroupInfo = []byte("state-2"), 1, []byte("gi-1")
	mustAccept(t, s, c)
	g, _ = s.GroupState(ctx(), []byte("g"))
	if g.StateVersion != 2 || string(g.State) != "state-2" || string(g.GroupInfo) != "gi-1" || g.Epoch != 1 {
		t.Errorf("after commit: %+v", g)
	}
	// An epoch mismatch is reported before a state conflict.
	c = msg("g", 0, mls.ContentTypeCommit, "a", "late")
	c.NewState, c.StateVersion = []byte("x"), 0
	_, err := s.AcceptMessage(ctx(), c)
	wantWrongEpoch(t, err, 1, 3)
}

// testStateLog: messages accepted with AdvanceState form the state log, in
// version order, after the snapshot they follow; snapshots are kept newest
// only and never ahead of the group.
func testStateLog(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b")
	if log, err := s.StateLog(ctx(), []byte("g"), 0, 10); err != nil || len(log) != 0 {
		t.Fatalf("StateLog of a new group = %v, %v; want empty", log, err)
	}
	if _, err := s.StateLog(ctx(), []byte("nope"), 0, 10); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("StateLog(unknown) = %v, want ErrNotFound", err)
	}
	g, _ := s.GroupState(ctx(), []byte("g"))
	if string(g.State) != "state-0" || g.SnapshotVersion != 0 {
		t.Errorf("snapshot of a new group: %q at %d", g.State, g.SnapshotVersion)
	}
	advance := func(p ds.AcceptParams, version uint64) ds.Receipt {
		t.Helper()
		p.AdvanceState, p.StateVersion = true, version
		return mustAccept(t, s, p)
	}
	r1 := advance(msg("g", 0, mls.ContentTypeProposal, "a", "p1"), 0)
	mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "b", "app")) // not in the log
	r2 := advance(msg("g", 0, mls.ContentTypeCommit, "b", "c1"), 1)
	// A writer that validated against an older version loses.
	stale := msg("g", 1, mls.ContentTypeProposal, "a", "stale")
	stale.AdvanceState, stale.StateVersion = true, 1
	if _, err := s.AcceptMessage(ctx(), stale); !errors.Is(err, ds.ErrStateConflict) {
		t.Errorf("stale AdvanceState: %v, want ErrStateConflict", err)
	}
	r3 := advance(msg("g", 1, mls.ContentTypeCommit, "a", "c2"), 2)
	head, _ := s.Group(ctx(), []byte("g"))
	if head.StateVersion != 3 || head.Epoch != 2 {
		t.Fatalf("head after three state changes: %+v", head)
	}
	// The snapshot did not move.
	g, _ = s.GroupState(ctx(), []byte("g"))
	if string(g.State) != "state-0" || g.SnapshotVersion != 0 || g.StateVersion != 3 {
		t.Errorf("GroupState after AdvanceState: state %q at %d, version %d", g.State, g.SnapshotVersion, g.StateVersion)
	}
	log, err := s.StateLog(ctx(), []byte("g"), 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		v    uint64
		r    ds.Receipt
		text string
	}{{1, r1, "p1"}, {2, r2, "c1"}, {3, r3, "c2"}}
	if len(log) != len(want) {
		t.Fatalf("StateLog = %d entries, want %d", len(log), len(want))
	}
	for i, w := range want {
		e := log[i]
		if e.Version != w.v || e.GroupSeq != w.r.GroupSeq || !strings.HasSuffix(string(e.Data), w.text) {
			t.Errorf("log[%d] = version %d seq %d %q; want %d %d %q", i, e.Version, e.GroupSeq, e.Data, w.v, w.r.GroupSeq, w.text)
		}
		h := sha256.Sum256(e.Data)
		if !bytes.Equal(e.Hash, h[:]) {
			t.Errorf("log[%d] hash is not the message's", i)
		}
	}
	if log, _ := s.StateLog(ctx(), []byte("g"), 1, 1); len(log) != 1 || log[0].Version != 2 {
		t.Errorf("StateLog(after 1, limit 1) = %+v", log)
	}
	if log, _ := s.StateLog(ctx(), []byte("g"), 3, 10); len(log) != 0 {
		t.Errorf("StateLog(after the head) = %+v", log)
	}

	// Snapshots: newest wins, never ahead of the group.
	if err := s.PutSnapshot(ctx(), []byte("g"), 2, []byte("state-2")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSnapshot(ctx(), []byte("g"), 1, []byte("state-1")); err != nil {
		t.Fatal(err)
	}
	g, _ = s.GroupState(ctx(), []byte("g"))
	if string(g.State) != "state-2" || g.SnapshotVersion != 2 {
		t.Errorf("after snapshots 2 then 1: %q at %d", g.State, g.SnapshotVersion)
	}
	if err := s.PutSnapshot(ctx(), []byte("g"), 4, []byte("state-4")); !errors.Is(err, ds.ErrInvalidArgument) {
		t.Errorf("snapshot ahead of the group: %v, want ErrInvalidArgument", err)
	}
	if err := s.PutSnapshot(ctx(), []byte("nope"), 0, []byte("x")); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("snapshot of an unknown group: %v, want ErrNotFound", err)
	}
	// NewState is a state change with its snapshot.
	c := msg("g", 2, mls.ContentTypeCommit, "a", "c3")
	c.NewState, c.StateVersion = []byte("state-4"), 3
	mustAccept(t, s, c)
	g, _ = s.GroupState(ctx(), []byte("g"))
	if string(g.State) != "state-4" || g.SnapshotVersion != 4 || g.StateVersion != 4 {
		t.Errorf("after NewState: %q at %d, version %d", g.State, g.SnapshotVersion, g.StateVersion)
	}
	if log, _ := s.StateLog(ctx(), []byte("g"), 3, 10); len(log) != 1 || log[0].Version != 4 || !strings.HasSuffix(string(log[0].Data), "c3") {
		t.Errorf("NewState message in the log: %+v", log)
	}
	// A resubmission changes nothing.
	p := msg("g", 0, mls.ContentTypeProposal, "a", "p1")
	p.AdvanceState, p.StateVersion = true, 4
	if r, err := s.AcceptMessage(ctx(), p); err != nil || !r.Duplicate {
		t.Errorf("resubmission: %+v, %v", r, err)
	}
	if head, _ := s.Group(ctx(), []byte("g")); head.StateVersion != 4 {
		t.Errorf("resubmission changed the state version to %d", head.StateVersion)
	}
}

// testStateLogBatch: state changes in one batch (an engine that accepts
// batches) follow the same rules as one by one.
func testStateLogBatch(t *testing.T, s ds.Store) {
	ba, ok := s.(ds.BatchAccepter)
	if !ok {
		t.Skip("the engine does not accept batches")
	}
	newGroup(t, s, "g", 0, "a", "b")
	p1 := msg("g", 0, mls.ContentTypeProposal, "a", "p1")
	p1.AdvanceState, p1.StateVersion = true, 0
	p2 := msg("g", 0, mls.ContentTypeProposal, "b", "p2") // validated against version 0 too
	p2.AdvanceState, p2.StateVersion = true, 0
	c := msg("g", 0, mls.ContentTypeCommit, "a", "c")
	c.AdvanceState, c.StateVersion = true, 1
	_, errs := ba.AcceptMessages(ctx(), []ds.AcceptParams{p1, p2, c})
	if errs[0] != nil || !errors.Is(errs[1], ds.ErrStateConflict) || errs[2] != nil {
		t.Fatalf("batch errors %v; want nil, ErrStateConflict, nil", errs)
	}
	log, err := s.StateLog(ctx(), []byte("g"), 0, 10)
	if err != nil || len(log) != 2 || !strings.HasSuffix(string(log[0].Data), "p1") || !strings.HasSuffix(string(log[1].Data), "|c") {
		t.Errorf("StateLog after the batch = %+v, %v", log, err)
	}
}

// testAcceptCommitsConcurrent: 20 Commits for the same epoch at once.
// Exactly one is accepted; the 19 others learn the new epoch and the
// sequence number of the winner.
func testAcceptCommitsConcurrent(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 5, "c0")
	mustAccept(t, s, msg("g", 5, mls.ContentTypeApplication, "c0", "before"))
	const n = 20
	type result struct {
		r   ds.AcceptResult
		err error
	}
	results := make(chan result, n)
	var start sync.WaitGroup
	start.Add(1)
	for i := 0; i < n; i++ {
		p := msg("g", 5, mls.ContentTypeCommit, fmt.Sprintf("c%d", i), "commit")
		p.NewState, p.StateVersion = []byte(fmt.Sprintf("state from %d", i)), 0
		go func() {
			start.Wait()
			r, err := s.AcceptMessage(ctx(), p)
			results <- result{r, err}
		}()
	}
	start.Done()
	var winners []ds.Receipt
	var losers []*ds.WrongEpochError
	for i := 0; i < n; i++ {
		res := <-results
		var we *ds.WrongEpochError
		switch {
		case res.err == nil:
			winners = append(winners, res.r.Receipt)
		case errors.As(res.err, &we):
			losers = append(losers, we)
		default:
			t.Errorf("unexpected error: %v", res.err)
		}
	}
	if len(winners) != 1 || len(losers) != n-1 {
		t.Fatalf("%d accepted, %d refused with wrong epoch; want 1 and %d", len(winners), len(losers), n-1)
	}
	w := winners[0]
	if w.GroupSeq != 2 || w.Epoch != 5 {
		t.Errorf("winner receipt %+v, want seq 2 epoch 5", w)
	}
	for _, l := range losers {
		if l.Expected != 6 || l.FetchFromSeq != w.GroupSeq {
			t.Errorf("loser got %+v, want Expected 6, FetchFromSeq %d", l, w.GroupSeq)
		}
	}
	g, _ := s.GroupState(ctx(), []byte("g"))
	if g.Epoch != 6 || g.LastSeq != 2 || g.StateVersion != 1 {
		t.Errorf("group after the race: %+v", g)
	}
}

// testAcceptAppConcurrent: concurrent application messages all land, with
// distinct consecutive sequence numbers.
func testAcceptAppConcurrent(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a")
	const n = 40
	var wg sync.WaitGroup
	seqs := make([]uint64, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.AcceptMessage(ctx(), msg("g", 0, mls.ContentTypeApplication, "a", fmt.Sprint(i)))
			seqs[i], errs[i] = r.GroupSeq, err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("sequence numbers %v are not 1..%d", seqs, n)
		}
	}
}

func seqsOf(envs []ds.Envelope) []uint64 {
	var out []uint64
	for _, e := range envs {
		out = append(out, e.GroupSeq)
	}
	return out
}

func visible(t *testing.T, s ds.Store, group, client string) []uint64 {
	t.Helper()
	envs, err := s.Messages(ctx(), ds.MessageQuery{GroupID: []byte(group), ClientID: client, FromSeq: 1, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return seqsOf(envs)
}

func testMembership(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b")
	mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "a", "1"))
	c := msg("g", 0, mls.ContentTypeCommit, "a", "add c, remove b")
	c.Added, c.Removed = []string{"c"}, []string{"b"}
	add := mustAccept(t, s, c) // seq 2
	mustAccept(t, s, msg("g", 1, mls.ContentTypeApplication, "a", "3"))
	c = msg("g", 1, mls.ContentTypeCommit, "a", "re-add b")
	c.Added = []string{"b"}
	mustAccept(t, s, c) // seq 4
	mustAccept(t, s, msg("g", 2, mls.ContentTypeApplication, "c", "5"))

	if got := fmt.Sprint(visible(t, s, "g", "a")); got != "[1 2 3 4 5]" {
		t.Errorf("a sees %s", got)
	}
	// b: removed by the Commit at 2 (which it still gets), back after 4.
	if got := fmt.Sprint(visible(t, s, "g", "b")); got != "[1 2 5]" {
		t.Errorf("b sees %s, want [1 2 5]", got)
	}
	// c: added by the Commit at 2, sees what follows it.
	if got := fmt.Sprint(visible(t, s, "g", "c")); got != "[3 4 5]" {
		t.Errorf("c sees %s, want [3 4 5]", got)
	}
	if got := visible(t, s, "g", "stranger"); len(got) != 0 {
		t.Errorf("a stranger sees %v", got)
	}
	w, _ := s.Memberships(ctx(), []byte("g"), "b")
	if len(w) != 2 || w[0] != (ds.MembershipWindow{FromSeq: 1, UntilSeq: 2}) || w[1] != (ds.MembershipWindow{FromSeq: 5}) {
		t.Errorf("b's windows = %+v", w)
	}
	w, _ = s.Memberships(ctx(), []byte("g"), "c")
	if len(w) != 1 || w[0] != (ds.MembershipWindow{FromSeq: add.GroupSeq + 1}) {
		t.Errorf("c's windows = %+v", w)
	}
	if m, _ := s.Members(ctx(), []byte("g")); fmt.Sprint(m) != "[a b c]" {
		t.Errorf("Members = %v", m)
	}
}

func testMessages(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b")
	var sent []ds.AcceptParams
	for i := 1; i <= 6; i++ {
		sender := "a"
		if i%2 == 0 {
			sender = "b"
		}
		p := msg("g", 0, mls.ContentTypeApplication, sender, fmt.Sprint(i))
		if i == 3 {
			p.WireFormat = mls.WireFormatPublicMessage
			p.ContentType = mls.ContentTypeProposal
			p.MaxEpochLag = 0
		}
		p.AcceptedAt = t0.Add(time.Duration(i) * time.Second)
		mustAccept(t, s, p)
		sent = append(sent, p)
	}
	envs, err := s.Messages(ctx(), ds.MessageQuery{GroupID: []byte("g"), ClientID: "a", FromSeq: 2, Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seqsOf(envs)) != "[2 3 4]" {
		t.Fatalf("FromSeq 2 Limit 3 = %v", seqsOf(envs))
	}
	for _, e := range envs {
		p := sent[e.GroupSeq-1]
		if !bytes.Equal(e.GroupID, []byte("g")) || e.Epoch != 0 || e.Sender != p.Sender || e.ContentType != p.ContentType ||
			e.WireFormat != p.WireFormat || !bytes.Equal(e.Data, p.Data) || !e.AcceptedAt.Equal(p.AcceptedAt) {
			t.Errorf("envelope %d = %+v, want from %+v", e.GroupSeq, e, p)
		}
	}
	envs, _ = s.Messages(ctx(), ds.MessageQuery{GroupID: []byte("g"), ClientID: "a", FromSeq: 1, Limit: 100, ExcludeOwn: true})
	if fmt.Sprint(seqsOf(envs)) != "[2 4 6]" {
		t.Errorf("ExcludeOwn for a = %v, want [2 4 6]", seqsOf(envs))
	}
	envs, _ = s.Messages(ctx(), ds.MessageQuery{GroupID: []byte("g"), ClientID: "a", FromSeq: 7, Limit: 100})
	if len(envs) != 0 {
		t.Errorf("past the end: %v", seqsOf(envs))
	}
	envs, _ = s.Messages(ctx(), ds.MessageQuery{GroupID: []byte("g"), ClientID: "a", FromSeq: 0, Limit: 100})
	if len(envs) != 6 {
		t.Errorf("FromSeq 0: %d messages, want 6", len(envs))
	}
}

func testCursorsAndAck(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b")
	newGroup(t, s, "h", 0, "b")
	for i := 0; i < 3; i++ {
		mustAccept(t, s, msg("g", 0, mls.ContentTypeApplication, "a", fmt.Sprint(i)))
	}
	c := msg("h", 0, mls.ContentTypeCommit, "b", "add a")
	c.Added = []string{"a"}
	mustAccept(t, s, c)

	cur, err := s.Cursors(ctx(), "a")
	if err != nil {
		t.Fatal(err)
	}
	byGroup := make(map[string]ds.GroupCursor)
	for _, c := range cur {
		byGroup[string(c.GroupID)] = c
	}
	if len(cur) != 2 || byGroup["g"].Acked != 0 || len(byGroup["g"].Windows) != 1 || byGroup["g"].Windows[0].FromSeq != 1 {
		t.Fatalf("Cursors(a) = %+v", cur)
	}
	// Added by the Commit at seq 1 of h: its cursor starts at that Commit.
	if h := byGroup["h"]; h.Acked != 1 || h.Windows[0].FromSeq != 2 {
		t.Errorf("cursor in h after being added = %+v, want acked 1, from 2", h)
	}

	if err := s.Ack(ctx(), "a", []byte("g"), 2); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(ctx(), "a", []byte("g"), 1); err != nil {
		t.Fatal(err)
	}
	cur, _ = s.Cursors(ctx(), "a")
	for _, c := range cur {
		if string(c.GroupID) == "g" && c.Acked != 2 {
			t.Errorf("cursor after acks 2 then 1 = %d, want 2 (never backwards)", c.Acked)
		}
	}
	if err := s.Ack(ctx(), "x", []byte("g"), 1); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("Ack by a non-member: %v, want ErrNotMember", err)
	}
	if err := s.Ack(ctx(), "a", []byte("nope"), 1); !errors.Is(err, ds.ErrNotMember) {
		t.Errorf("Ack in an unknown group: %v, want ErrNotMember", err)
	}
	// A removed member keeps its cursor and may still ack.
	c = msg("g", 0, mls.ContentTypeCommit, "b", "remove a")
	c.Removed = []string{"a"}
	mustAccept(t, s, c)
	if err := s.Ack(ctx(), "a", []byte("g"), 4); err != nil {
		t.Errorf("Ack by a removed member: %v", err)
	}
	if cur, _ := s.Cursors(ctx(), "nobody"); len(cur) != 0 {
		t.Errorf("Cursors(nobody) = %+v", cur)
	}
}

func testWelcomes(t *testing.T, s ds.Store) {
	mustClient(t, s, "j1", "j1")
	mustClient(t, s, "j2", "j2")
	k1, k2 := kp("j1", false), kp("j2", true)
	mustAddKPs(t, s, k1)
	mustAddKPs(t, s, k2)
	newGroup(t, s, "g", 0, "a")

	c := msg("g", 0, mls.ContentTypeCommit, "a", "add j1 j2")
	c.Added = []string{"j1", "j2"}
	c.Welcome = []byte("welcome bytes")
	c.WelcomeTo = []ds.WelcomeRoute{{ClientID: "j1", KeyPackageRef: k1.Ref}, {ClientID: "j2", KeyPackageRef: k2.Ref}}
	c.ConsumeKeyPackages = [][]byte{k1.Ref, k2.Ref}
	r := mustAccept(t, s, c)

	for _, j := range []struct {
		id  string
		ref []byte
	}{{"j1", k1.Ref}, {"j2", k2.Ref}} {
		ws, err := s.PendingWelcomes(ctx(), j.id)
		if err != nil {
			t.Fatal(err)
		}
		if len(ws) != 1 {
			t.Fatalf("PendingWelcomes(%s) = %d, want 1", j.id, len(ws))
		}
		w := ws[0]
		if !bytes.Equal(w.GroupID, []byte("g")) || w.CommitSeq != r.GroupSeq || w.Epoch != 1 ||
			!bytes.Equal(w.KeyPackageRef, j.ref) || string(w.Data) != "welcome bytes" || !w.AcceptedAt.Equal(t0) {
			t.Errorf("welcome for %s = %+v", j.id, w)
		}
	}
	if ws, _ := s.PendingWelcomes(ctx(), "a"); len(ws) != 0 {
		t.Errorf("the committer got a Welcome")
	}
	// The KeyPackage is consumed, the last-resort one is not.
	got, _ := s.KeyPackagesByRef(ctx(), [][]byte{k1.Ref, k2.Ref})
	for _, g := range got {
		if g.LastResort == g.Consumed() {
			t.Errorf("KeyPackage %x (last resort %v) consumed = %v", g.Ref[:4], g.LastResort, g.Consumed())
		}
	}
	// Acking the group at the Commit delivers the Welcome.
	if err := s.Ack(ctx(), "j1", []byte("g"), r.GroupSeq); err != nil {
		t.Fatal(err)
	}
	if ws, _ := s.PendingWelcomes(ctx(), "j1"); len(ws) != 0 {
		t.Errorf("Welcome still pending after ack: %+v", ws)
	}
	if ws, _ := s.PendingWelcomes(ctx(), "j2"); len(ws) != 1 {
		t.Errorf("j2's Welcome was delivered by j1's ack")
	}
	// A refused Commit routes no Welcome.
	c = msg("g", 0, mls.ContentTypeCommit, "a", "late")
	c.Welcome = []byte("late welcome")
	c.WelcomeTo = []ds.WelcomeRoute{{ClientID: "j2", KeyPackageRef: k2.Ref}}
	if _, err := s.AcceptMessage(ctx(), c); err == nil {
		t.Fatal("late Commit accepted")
	}
	if ws, _ := s.PendingWelcomes(ctx(), "j2"); len(ws) != 1 {
		t.Errorf("refused Commit's Welcome was routed: %d pending", len(ws))
	}
}
