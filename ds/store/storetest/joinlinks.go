package storetest

import (
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// Join links, consuming KeyPackages, and the order of AcceptMessage's
// refusals for non-members.

func joinLink(group, id string, created time.Time, ttl time.Duration) ds.JoinLink {
	h := sha256.Sum256([]byte("token-" + group + "-" + id))
	return ds.JoinLink{GroupID: []byte(group), ID: id, TokenHash: h[:], CreatedBy: "alice", CreatedAt: created, ExpiresAt: created.Add(ttl)}
}

func testJoinLinks(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "alice")
	newGroup(t, s, "h", 0, "alice")
	if err := s.CreateJoinLink(ctx(), joinLink("nope", "l0", t0, time.Hour), 10); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("CreateJoinLink(unknown group): %v, want ErrNotFound", err)
	}
	l1 := joinLink("g", "l1", t0, time.Hour)
	l2 := joinLink("g", "l2", t0.Add(time.Minute), 2*time.Hour)
	for _, l := range []ds.JoinLink{l1, l2} {
		if err := s.CreateJoinLink(ctx(), l, 10); err != nil {
			t.Fatalf("CreateJoinLink(%s): %v", l.ID, err)
		}
	}
	if err := s.CreateJoinLink(ctx(), l1, 10); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Errorf("CreateJoinLink(same link again): %v, want ErrAlreadyExists", err)
	}

	got, err := s.JoinLinkByToken(ctx(), []byte("g"), l1.TokenHash, t0)
	if err != nil {
		t.Fatalf("JoinLinkByToken: %v", err)
	}
	if got.ID != "l1" || string(got.GroupID) != "g" || got.CreatedBy != "alice" || !got.CreatedAt.Equal(l1.CreatedAt) || !got.ExpiresAt.Equal(l1.ExpiresAt) {
		t.Errorf("JoinLinkByToken = %+v, want %+v", got, l1)
	}
	if _, err := s.JoinLinkByToken(ctx(), []byte("h"), l1.TokenHash, t0); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("JoinLinkByToken(token of another group): %v, want ErrNotFound", err)
	}
	if _, err := s.JoinLinkByToken(ctx(), []byte("g"), l1.TokenHash, l1.ExpiresAt); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("JoinLinkByToken(at expiry): %v, want ErrNotFound", err)
	}

	ls, err := s.JoinLinks(ctx(), []byte("g"), t0.Add(2*time.Minute))
	if err != nil || len(ls) != 2 || ls[0].ID != "l1" || ls[1].ID != "l2" {
		t.Fatalf("JoinLinks = %+v, %v; want l1, l2", ls, err)
	}
	if ls, err := s.JoinLinks(ctx(), []byte("g"), l1.ExpiresAt); err != nil || len(ls) != 1 || ls[0].ID != "l2" {
		t.Errorf("JoinLinks after l1 expired = %+v, %v; want l2", ls, err)
	}
	if ls, err := s.JoinLinks(ctx(), []byte("h"), t0); err != nil || len(ls) != 0 {
		t.Errorf("JoinLinks(other group) = %+v, %v; want none", ls, err)
	}

	if err := s.RevokeJoinLink(ctx(), []byte("h"), "l2"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("RevokeJoinLink(link of another group): %v, want ErrNotFound", err)
	}
	if err := s.RevokeJoinLink(ctx(), []byte("g"), "l2"); err != nil {
		t.Fatalf("RevokeJoinLink: %v", err)
	}
	if _, err := s.JoinLinkByToken(ctx(), []byte("g"), l2.TokenHash, t0); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("JoinLinkByToken(revoked): %v, want ErrNotFound", err)
	}
	if err := s.RevokeJoinLink(ctx(), []byte("g"), "l2"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("RevokeJoinLink(twice): %v, want ErrNotFound", err)
	}

	// The limit counts live links only: creating one drops expired ones.
	if err := s.CreateJoinLink(ctx(), joinLink("g", "l3", t0, time.Hour), 2); err != nil {
		t.Fatalf("CreateJoinLink(second live link, limit 2): %v", err)
	}
	var tle *ds.TooLargeError
	if err := s.CreateJoinLink(ctx(), joinLink("g", "l4", t0, time.Hour), 2); !errors.As(err, &tle) || tle.Limit != 2 {
		t.Errorf("CreateJoinLink(over the limit): %v, want TooLargeError{2}", err)
	}
	if err := s.CreateJoinLink(ctx(), joinLink("g", "l5", l1.ExpiresAt, time.Hour), 2); err != nil {
		t.Errorf("CreateJoinLink(once the others expired): %v", err)
	}
}

// testConsumeKeyPackages: accepting a message or creating a group marks its
// KeyPackages used, and fails with ErrKeyPackageUsed, changing nothing, if
// one is used already, gone, or raced for.
func testConsumeKeyPackages(t *testing.T, s ds.Store) {
	mustClient(t, s, "bob", "")
	a, b, lr := kp("bob", false), kp("bob", false), kp("bob", true)
	mustAddKPs(t, s, a, b, lr)
	newGroup(t, s, "g", 0, "alice")

	used := func(ref []byte) bool {
		t.Helper()
		rs, err := s.KeyPackagesByRef(ctx(), [][]byte{ref})
		if err != nil || len(rs) != 1 {
			t.Fatalf("KeyPackagesByRef: %v, %v", rs, err)
		}
		return rs[0].Consumed()
	}

	c := msg("g", 0, mls.ContentTypeCommit, "alice", "add bob")
	c.Added, c.ConsumeKeyPackages = []string{"bob"}, [][]byte{a.Ref}
	mustAccept(t, s, c)
	if !used(a.Ref) {
		t.Fatal("the accepted Commit did not mark its KeyPackage used")
	}
	// a was used without a claim: it left the claimable stock, so no
	// claim hands it out afterwards.
	if n, err := s.CountKeyPackages(ctx(), "bob", t0); err != nil || n[suite] != 1 {
		t.Errorf("CountKeyPackages after a used-unclaimed KeyPackage: %v, %v; want 1 (b)", n, err)
	}
	if cl, err := s.ClaimKeyPackages(ctx(), ds.ClaimParams{Claimer: "alice", Targets: []string{"bob"}, Suite: suite, Now: t0}); err != nil ||
		len(cl) != 1 || cl[0].KeyPackage == nil || string(cl[0].KeyPackage.Ref) == string(a.Ref) {
		t.Fatalf("claim after a used-unclaimed KeyPackage: %+v, %v; want b, never a", cl, err)
	} else if string(cl[0].KeyPackage.Ref) != string(b.Ref) {
		t.Fatalf("claim handed out %x, want b", cl[0].KeyPackage.Ref)
	}

	// Again: refused, and nothing of the message is stored.
	c = msg("g", 1, mls.ContentTypeCommit, "alice", "add bob again")
	c.ConsumeKeyPackages = [][]byte{b.Ref, a.Ref}
	if _, err := s.AcceptMessage(ctx(), c); !errors.Is(err, ds.ErrKeyPackageUsed) {
		t.Fatalf("Commit with a used KeyPackage: %v, want ErrKeyPackageUsed", err)
	}
	if used(b.Ref) {
		t.Error("a refused Commit marked a KeyPackage used")
	}
	if head, err := s.Group(ctx(), []byte("g")); err != nil || head.Epoch != 1 || head.LastSeq != 1 {
		t.Errorf("after the refused Commit: %+v, %v; want epoch 1, last seq 1", head, err)
	}
	// An unknown KeyPackage cannot be used either.
	c.ConsumeKeyPackages = [][]byte{make([]byte, 32)}
	if _, err := s.AcceptMessage(ctx(), c); !errors.Is(err, ds.ErrKeyPackageUsed) {
		t.Errorf("Commit with an unknown KeyPackage: %v, want ErrKeyPackageUsed", err)
	}

	// CreateGroup consumes in its transaction.
	g2 := ds.GroupRecord{ID: []byte("g2"), Mode: ds.ModeTransparent, CipherSuite: suite, Creator: "alice", CreatedAt: t0,
		ConsumeKeyPackages: [][]byte{a.Ref}}
	if err := s.CreateGroup(ctx(), g2, []string{"alice", "bob"}); !errors.Is(err, ds.ErrKeyPackageUsed) {
		t.Fatalf("CreateGroup with a used KeyPackage: %v, want ErrKeyPackageUsed", err)
	}
	if _, err := s.Group(ctx(), g2.ID); !errors.Is(err, ds.ErrNotFound) {
		t.Fatalf("a refused CreateGroup stored the group: %v", err)
	}

	// Two groups race for b: exactly one wins.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := ds.GroupRecord{ID: []byte{'r', byte('0' + i)}, Mode: ds.ModeTransparent, CipherSuite: suite, Creator: "alice", CreatedAt: t0,
				ConsumeKeyPackages: [][]byte{b.Ref}}
			errs[i] = s.CreateGroup(ctx(), g, []string{"alice", "bob"})
		}()
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, ds.ErrKeyPackageUsed):
			t.Errorf("racing CreateGroup: %v, want nil or ErrKeyPackageUsed", err)
		}
	}
	if wins != 1 || !used(b.Ref) {
		t.Errorf("%d of two groups racing for one KeyPackage won, want 1", wins)
	}
}

// testAcceptMemberBeforeEpoch: a non-member's message is refused with
// ErrNotMember, never with the epoch errors that would tell it the group's
// epoch.
func testAcceptMemberBeforeEpoch(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 5, "alice")
	for _, epoch := range []uint64{0, 5, 9} {
		for _, ct := range []mls.ContentType{mls.ContentTypeApplication, mls.ContentTypeCommit} {
			p := msg("g", epoch, ct, "mallory", "probe")
			p.RequireMember = true
			if _, err := s.AcceptMessage(ctx(), p); !errors.Is(err, ds.ErrNotMember) {
				t.Errorf("non-member, epoch %d, content type %d: %v, want ErrNotMember", epoch, ct, err)
			}
		}
	}
}
