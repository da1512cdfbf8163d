package ds_test

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

func TestRegisterClient(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("alice", "alice-user")
	// Same id, same key: fine.
	if err := e.svc.RegisterClient(bg, ds.Client{ID: "alice", UserID: "alice-user", CipherSuite: suite, SignatureKey: a.sigPub}); err != nil {
		t.Errorf("re-registering identically: %v", err)
	}
	// Same id, another key: refused.
	err := e.svc.RegisterClient(bg, ds.Client{ID: "alice", UserID: "alice-user", CipherSuite: suite, SignatureKey: random(32)})
	wantIs(t, err, ds.ErrAlreadyExists)
	wantIs(t, e.svc.RegisterClient(bg, ds.Client{ID: "", CipherSuite: suite, SignatureKey: a.sigPub}), ds.ErrInvalidArgument)
	wantIs(t, e.svc.RegisterClient(bg, ds.Client{ID: "x", CipherSuite: 0x7777, SignatureKey: a.sigPub}), ds.ErrInvalidArgument)
	c, err := e.svc.Client(bg, "alice")
	if err != nil || c.UserID != "alice-user" || !bytes.Equal(c.SignatureKey, a.sigPub) || c.CipherSuite != suite {
		t.Errorf("Client = %+v, %v", c, err)
	}
	_, err = e.svc.Client(bg, "nobody")
	wantIs(t, err, ds.ErrNotFound)
}

func TestUploadKeyPackages(t *testing.T) {
	e := newEnv(t, ds.Config{MaxKeyPackagesPerClient: 5, MaxKeyPackageLifetime: 30 * 24 * time.Hour})
	a := e.register("alice", "alice")
	b := e.register("bob", "bob")
	now := e.clock.Now()

	kp1, d1 := a.keyPackage(t, now)
	kp2, d2 := a.keyPackage(t, now)
	// A bare KeyPackage (not in an MLSMessage) is accepted too.
	bare := must(kp2.MarshalBinary())
	_ = d2
	infos, err := e.svc.UploadKeyPackages(bg, "alice", []ds.KeyPackageUpload{{Data: d1}, {Data: bare, LastResort: true}})
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || !bytes.Equal(infos[0].Ref, ref(t, kp1)) || !bytes.Equal(infos[1].Ref, ref(t, kp2)) ||
		infos[0].LastResort || !infos[1].LastResort || infos[0].CipherSuite != suite ||
		!infos[0].NotAfter.Equal(time.Unix(int64(kp1.LeafNode.Lifetime.NotAfter), 0)) {
		t.Errorf("upload infos = %+v", infos)
	}
	list, err := e.svc.ListKeyPackages(bg, "alice")
	if err != nil || len(list) != 2 || !bytes.Equal(list[0].Ref, infos[0].Ref) {
		t.Errorf("ListKeyPackages = %+v, %v", list, err)
	}
	counts, err := e.svc.CountKeyPackages(bg, "alice")
	if err != nil || counts[suite] != 1 {
		t.Errorf("CountKeyPackages = %v, %v; want 1 (last-resort not counted)", counts, err)
	}

	// Refusals; each leaves the stock unchanged.
	_, err = e.svc.UploadKeyPackages(bg, "alice", []ds.KeyPackageUpload{{Data: d1}})
	wantIs(t, err, ds.ErrAlreadyExists)
	_, lr2 := a.keyPackage(t, now)
	_, err = e.svc.UploadKeyPackages(bg, "alice", []ds.KeyPackageUpload{{Data: lr2, LastResort: true}})
	wantIs(t, err, ds.ErrAlreadyExists)
	_, bobs := b.keyPackage(t, now)
	_, err = e.svc.UploadKeyPackages(bg, "alice", []ds.KeyPackageUpload{{Data: bobs}})
	wantIs(t, err, ds.ErrPermissionDenied)
	_, expired := a.keyPackageValid(t, now.Add(-48*time.Hour), now.Add(-time.Hour))
	_, err = e.svc.UploadKeyPackages(bg, "alice", []ds.KeyPackageUpload{{Data: expired}})
	if im := wantErr[*ds.InvalidMessageError](t, err); im.Section == "" {
		t.Errorf("expired KeyPackage: %v has no RFC section", im)
	}
	_, long := a.keyPackageValid(t, now.Add(-time.Hour), now.Add(60*24*time.Hour))
	_, err = e.svc.UploadKeyPackages(bg, "alice", []ds.KeyPackageUpload{{Data: long}})
	wantErr[*ds.InvalidMessageError](t, err)
	badSig, _ := a.keyPackage(t, now)
	badSig.Signature[0] ^= 1
	_, err = e.svc.UploadKeyPackages(bg, "alice", []ds.KeyPackageUpload{{Data: must(badSig.MarshalBinary())}})
	if im := wantErr[*ds.InvalidMessageError](t, err); im.Section != "10.1" {
		t.Errorf("bad signature: section %q, want 10.1", im.Section)
	}
	_, err = e.svc.UploadKeyPackages(bg, "alice", []ds.KeyPackageUpload{{Data: []byte("garbage")}})
	wantErr[*ds.InvalidMessageError](t, err)
	// A KeyPackage signed by another key than the registered one.
	impostor := &member{id: "alice"}
	impostor.sigPriv, impostor.sigPub = must2(t)(suite.GenerateSignatureKeyPair())
	_, imp := impostor.keyPackage(t, now)
	_, err = e.svc.UploadKeyPackages(bg, "alice", []ds.KeyPackageUpload{{Data: imp}})
	wantIs(t, err, ds.ErrPermissionDenied)
	// A batch with one bad KeyPackage stores none.
	_, good := a.keyPackage(t, now)
	_, err = e.svc.UploadKeyPackages(bg, "alice", []ds.KeyPackageUpload{{Data: good}, {Data: expired}})
	wantErr[*ds.InvalidMessageError](t, err)
	// The limit: 2 stored, 3 more fit, the fourth does not.
	var four []ds.KeyPackageUpload
	for i := 0; i < 4; i++ {
		_, d := a.keyPackage(t, now)
		four = append(four, ds.KeyPackageUpload{Data: d})
	}
	_, err = e.svc.UploadKeyPackages(bg, "alice", four)
	if tl := wantErr[*ds.TooLargeError](t, err); tl.Limit != 5 {
		t.Errorf("limit %d, want 5", tl.Limit)
	}
	if list, _ := e.svc.ListKeyPackages(bg, "alice"); len(list) != 2 {
		t.Errorf("%d KeyPackages after refused uploads, want 2", len(list))
	}
	_, err = e.svc.UploadKeyPackages(bg, "nobody", []ds.KeyPackageUpload{{Data: good}})
	wantIs(t, err, ds.ErrNotFound)

	// Delete by ref; another client's ref is not touched.
	n, err := e.svc.DeleteKeyPackages(bg, "bob", [][]byte{infos[0].Ref})
	if err != nil || n != 0 {
		t.Errorf("bob deleting alice's KeyPackage: %d, %v", n, err)
	}
	n, err = e.svc.DeleteKeyPackages(bg, "alice", [][]byte{infos[0].Ref, infos[1].Ref})
	if err != nil || n != 2 {
		t.Errorf("DeleteKeyPackages = %d, %v; want 2", n, err)
	}
	if list, _ := e.svc.ListKeyPackages(bg, "alice"); len(list) != 0 {
		t.Errorf("%d KeyPackages after delete", len(list))
	}
}

// TestClaimConcurrent: 10 claimers race for 5 KeyPackages plus a
// last-resort one. No KeyPackage is handed out twice, and the last-resort
// one only once the 5 are gone.
func TestClaimConcurrent(t *testing.T) {
	e := newEnv(t, ds.Config{})
	target := e.register("target", "target")
	kps := e.upload(target, 5, true)
	lastResort := ref(t, kps[5])
	var claimers []string
	for i := 0; i < 10; i++ {
		claimers = append(claimers, e.register(fmt.Sprintf("claimer-%d", i), fmt.Sprintf("user-%d", i)).id)
	}

	type result struct {
		claimer string
		kp      ds.ClaimedKeyPackage
		err     error
	}
	results := make(chan result, len(claimers))
	var start sync.WaitGroup
	start.Add(1)
	for _, c := range claimers {
		go func() {
			start.Wait()
			kp, err := e.svc.ClaimKeyPackage(bg, c, "target", suite)
			results <- result{c, kp, err}
		}()
	}
	start.Done()
	handed := make(map[string]string)
	lr := 0
	for range claimers {
		r := <-results
		if r.err != nil {
			t.Fatalf("%s: %v", r.claimer, r.err)
		}
		if r.kp.ClientID != "target" {
			t.Errorf("%s got a KeyPackage of %q", r.claimer, r.kp.ClientID)
		}
		// What was handed out is a real, parseable KeyPackage with that ref.
		m := must(mls.ParseMLSMessage(r.kp.Data))
		if !bytes.Equal(ref(t, m.KeyPackage), r.kp.Ref) {
			t.Errorf("claimed data does not match its ref")
		}
		if r.kp.LastResort {
			lr++
			if !bytes.Equal(r.kp.Ref, lastResort) {
				t.Errorf("LastResort set on a normal KeyPackage")
			}
			continue
		}
		if prev, dup := handed[string(r.kp.Ref)]; dup {
			t.Errorf("KeyPackage handed to %s and %s", prev, r.claimer)
		}
		handed[string(r.kp.Ref)] = r.claimer
	}
	if len(handed) != 5 || lr != 5 {
		t.Errorf("%d distinct KeyPackages and %d last-resort; want 5 and 5", len(handed), lr)
	}
	// The last-resort one stays; the others are gone from the owner's list.
	list, _ := e.svc.ListKeyPackages(bg, "target")
	if len(list) != 1 || !bytes.Equal(list[0].Ref, lastResort) {
		t.Errorf("after the claims the owner lists %+v, want only the last-resort one", list)
	}
}

// TestClaimOrder: sequential claims hand out the 5 before the last-resort.
func TestClaimOrder(t *testing.T) {
	e := newEnv(t, ds.Config{})
	target := e.register("target", "target")
	e.register("c", "c")
	e.upload(target, 5, true)
	for i := 0; i < 7; i++ {
		kp, err := e.svc.ClaimKeyPackage(bg, "c", "target", suite)
		if err != nil {
			t.Fatal(err)
		}
		if kp.LastResort != (i >= 5) {
			t.Errorf("claim %d: LastResort = %v", i, kp.LastResort)
		}
	}
	// Without the last-resort one, the stock is exhausted.
	list, _ := e.svc.ListKeyPackages(bg, "target")
	e.svc.DeleteKeyPackages(bg, "target", [][]byte{list[0].Ref})
	_, err := e.svc.ClaimKeyPackage(bg, "c", "target", suite)
	wantIs(t, err, ds.ErrKeyPackagesExhausted)
	// Other suites, own KeyPackages and unknown clients.
	_, err = e.svc.ClaimKeyPackage(bg, "c", "target", mls.MLS_128_DHKEMP256_AES128GCM_SHA256_P256)
	wantIs(t, err, ds.ErrKeyPackagesExhausted)
	_, err = e.svc.ClaimKeyPackage(bg, "target", "target", suite)
	wantIs(t, err, ds.ErrInvalidArgument)
	_, err = e.svc.ClaimKeyPackage(bg, "c", "nobody", suite)
	wantIs(t, err, ds.ErrNotFound)
}

func TestClaimExpired(t *testing.T) {
	e := newEnv(t, ds.Config{})
	target := e.register("target", "target")
	e.register("c", "c")
	e.upload(target, 2, true) // valid for 24h
	e.clock.Advance(25 * time.Hour)
	_, err := e.svc.ClaimKeyPackage(bg, "c", "target", suite)
	wantIs(t, err, ds.ErrKeyPackagesExhausted)
	if n, _ := e.svc.CountKeyPackages(bg, "target"); n[suite] != 0 {
		t.Errorf("expired KeyPackages counted: %v", n)
	}
}

func TestClaimForUser(t *testing.T) {
	e := newEnv(t, ds.Config{})
	phone := e.register("alice-phone", "alice")
	laptop := e.registerDevice("alice-laptop", phone)
	tablet := e.registerDevice("alice-tablet", phone)
	e.register("bob", "bob")
	e.upload(phone, 2, false)
	e.upload(laptop, 2, false)
	// The tablet has nothing: it is left out.
	_ = tablet

	got, err := e.svc.ClaimKeyPackagesForUser(bg, "bob", "alice", suite)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ClientID != "alice-laptop" || got[1].ClientID != "alice-phone" {
		t.Errorf("claim for alice by bob: %+v", got)
	}
	// A device of alice claiming for alice gets the others only.
	got, err = e.svc.ClaimKeyPackagesForUser(bg, "alice-phone", "alice", suite)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ClientID != "alice-laptop" {
		t.Errorf("claim for alice by alice-phone: %+v", got)
	}
	_, err = e.svc.ClaimKeyPackagesForUser(bg, "bob", "carol", suite)
	wantIs(t, err, ds.ErrNotFound)
	// Alice's laptop now has none left, her phone one; the tablet none.
	got, err = e.svc.ClaimKeyPackagesForUser(bg, "alice-phone", "alice", suite)
	wantIs(t, err, ds.ErrKeyPackagesExhausted)
}

func TestClaimRateLimits(t *testing.T) {
	e := newEnv(t, ds.Config{ClaimsPerTargetPerMinute: 3, ClaimsPerMinute: 100})
	target := e.register("target", "target")
	e.register("c1", "c1")
	e.register("c2", "c2")
	e.register("other", "other")
	e.upload(target, 10, false)
	for i := 0; i < 3; i++ {
		if _, err := e.svc.ClaimKeyPackage(bg, "c1", "target", suite); err != nil {
			t.Fatal(err)
		}
	}
	// The target's budget is spent, whoever claims.
	_, err := e.svc.ClaimKeyPackage(bg, "c2", "target", suite)
	rl := wantErr[*ds.RateLimitedError](t, err)
	if rl.RetryAfter <= 0 {
		t.Errorf("RetryAfter = %v, want > 0", rl.RetryAfter)
	}
	// Time heals.
	e.clock.Advance(rl.RetryAfter)
	if _, err := e.svc.ClaimKeyPackage(bg, "c2", "target", suite); err != nil {
		t.Errorf("after RetryAfter: %v", err)
	}

	// Per claimer.
	e2 := newEnv(t, ds.Config{ClaimsPerMinute: 2})
	e2.register("c", "c")
	for i := 0; i < 3; i++ {
		tg := e2.register(fmt.Sprintf("t%d", i), fmt.Sprintf("t%d", i))
		e2.upload(tg, 1, false)
	}
	for i := 0; i < 2; i++ {
		if _, err := e2.svc.ClaimKeyPackage(bg, "c", fmt.Sprintf("t%d", i), suite); err != nil {
			t.Fatal(err)
		}
	}
	_, err = e2.svc.ClaimKeyPackage(bg, "c", "t2", suite)
	wantErr[*ds.RateLimitedError](t, err)

	// Requests per client.
	e3 := newEnv(t, ds.Config{RequestsPerSecond: 1, RequestBurst: 2})
	e3.register("c", "c")
	for i := 0; i < 2; i++ {
		if _, err := e3.svc.ListKeyPackages(bg, "c"); err != nil {
			t.Fatal(err)
		}
	}
	_, err = e3.svc.ListKeyPackages(bg, "c")
	wantErr[*ds.RateLimitedError](t, err)
}

func TestLowWaterEvent(t *testing.T) {
	e := newEnv(t, ds.Config{KeyPackageLowWater: 3})
	owner := e.register("owner", "owner")
	e.register("c", "c")
	e.upload(owner, 4, true)

	ctx, cancel := contextWithCancel()
	defer cancel()
	ch, err := e.svc.Subscribe(ctx, "owner")
	if err != nil {
		t.Fatal(err)
	}
	evs := collect(t, ch, untilCaughtUp)
	for _, ev := range evs {
		if ev.KeyPackageLow != nil {
			t.Errorf("low-water event with a stock of 4 over a mark of 3")
		}
	}
	// 4 -> 3: not below. 3 -> 2: below.
	for i := 0; i < 2; i++ {
		if _, err := e.svc.ClaimKeyPackage(bg, "c", "owner", suite); err != nil {
			t.Fatal(err)
		}
	}
	evs = collect(t, ch, func(evs []ds.Event) bool { return len(evs) > 0 })
	low := evs[0].KeyPackageLow
	if low == nil || low.Remaining != 2 || low.LowWater != 3 || low.CipherSuite != suite {
		t.Fatalf("event = %+v, want a low-water event with 2 remaining", evs[0])
	}
	// A new subscription reports the low stock at once.
	cancel()
	ctx2, cancel2 := contextWithCancel()
	defer cancel2()
	ch2 := must(e.svc.Subscribe(ctx2, "owner"))
	evs = collect(t, ch2, untilCaughtUp)
	found := false
	for _, ev := range evs {
		if ev.KeyPackageLow != nil && ev.KeyPackageLow.Remaining == 2 {
			found = true
		}
	}
	if !found {
		t.Errorf("replay has no low-water event: %+v", evs)
	}
}

func TestClaimedKeyPackageNotListedButRoutable(t *testing.T) {
	e := newEnv(t, ds.Config{})
	a := e.register("a", "a")
	j := e.register("j", "j")
	kps := e.upload(j, 1, false)
	claimed := must(e.svc.ClaimKeyPackage(bg, "a", "j", suite))
	if !bytes.Equal(claimed.Ref, ref(t, kps[0])) {
		t.Fatal("claimed another KeyPackage")
	}
	if n, _ := e.svc.DeleteKeyPackages(bg, "j", [][]byte{claimed.Ref}); n != 0 {
		t.Errorf("a claimed KeyPackage was deleted by its owner")
	}
	// The claimer can still add j with it, and the Welcome reaches j.
	g := e.createGroup(a)
	commit, _ := g.commit(t, a, 0, []mls.ProposalOrRef{addOf(kps[0])}, nil)
	if _, err := sendBundle(e.svc, "a", ds.CommitBundle{Commit: commit, Welcome: welcome(t, claimed.Ref)}); err != nil {
		t.Fatal(err)
	}
	ws := pendingWelcomes(t, e, "j")
	if len(ws) != 1 || !bytes.Equal(ws[0].KeyPackageRef, claimed.Ref) {
		t.Errorf("welcomes for j: %+v", ws)
	}
}
