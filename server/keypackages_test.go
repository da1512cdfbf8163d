package server_test

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

func claimReq(target string) *connect.Request[mlsdsv1.ClaimKeyPackagesRequest] {
	return connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
		Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: target}, CipherSuite: uint32(suite)})
}

func (m *member) count() int {
	m.t.Helper()
	res, err := m.kps.CountKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.CountKeyPackagesRequest{}))
	if err != nil {
		m.t.Fatal(err)
	}
	return int(res.Msg.ByCipherSuite[uint32(suite)])
}

func TestKeyPackageDirectory(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	ctx := context.Background()

	refs := alice.uploadKeyPackages(3, true)
	if len(refs) != 4 {
		t.Fatalf("upload returned %d infos, want 4", len(refs))
	}
	list, err := alice.kps.ListKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ListKeyPackagesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var lastResort int
	for _, kp := range list.Msg.KeyPackages {
		if kp.CipherSuite != uint32(suite) || kp.NotAfter.AsTime().IsZero() {
			t.Errorf("listed %+v", kp)
		}
		if kp.LastResort {
			lastResort++
			if !bytes.Equal(kp.Ref, refs[3]) {
				t.Errorf("the last-resort KeyPackage is %x, want %x", kp.Ref, refs[3])
			}
		}
	}
	if len(list.Msg.KeyPackages) != 4 || lastResort != 1 {
		t.Fatalf("listed %d KeyPackages, %d last-resort; want 4 and 1", len(list.Msg.KeyPackages), lastResort)
	}
	// The count leaves the last-resort KeyPackage out.
	if n := alice.count(); n != 3 {
		t.Fatalf("count %d, want 3", n)
	}

	// Another client's token acts for that client only: bob deletes
	// nothing of alice's and lists his own (none).
	del, err := bob.kps.DeleteKeyPackages(ctx, connect.NewRequest(&mlsdsv1.DeleteKeyPackagesRequest{Refs: refs}))
	if err != nil {
		t.Fatal(err)
	}
	if del.Msg.Deleted != 0 {
		t.Fatalf("bob deleted %d of alice's KeyPackages", del.Msg.Deleted)
	}
	bl, err := bob.kps.ListKeyPackages(ctx, connect.NewRequest(&mlsdsv1.ListKeyPackagesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(bl.Msg.KeyPackages) != 0 {
		t.Fatalf("bob lists %d KeyPackages, want none of alice's", len(bl.Msg.KeyPackages))
	}
	// Bob cannot publish a KeyPackage of alice's either.
	kpData, _ := alice.keyPackage()
	_, err = bob.kps.UploadKeyPackages(ctx, connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
		KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: kpData}}}))
	connectErr(t, err, connect.CodePermissionDenied)

	del, err = alice.kps.DeleteKeyPackages(ctx, connect.NewRequest(&mlsdsv1.DeleteKeyPackagesRequest{Refs: refs[:1]}))
	if err != nil {
		t.Fatal(err)
	}
	if del.Msg.Deleted != 1 || alice.count() != 2 {
		t.Fatalf("deleted %d, count now %d; want 1 and 2", del.Msg.Deleted, alice.count())
	}

	// Claims: bob gets alice's two remaining KeyPackages, then the
	// last-resort one (which stays), never one twice.
	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		res, err := bob.kps.ClaimKeyPackages(ctx, claimReq("alice"))
		if err != nil {
			t.Fatal(err)
		}
		kp := res.Msg.KeyPackages[0]
		if kp.ClientId != "alice" {
			t.Fatalf("claimed a KeyPackage of %q", kp.ClientId)
		}
		if want := i >= 2; kp.LastResort != want {
			t.Fatalf("claim %d: last_resort %v, want %v", i, kp.LastResort, want)
		}
		if !kp.LastResort && seen[string(kp.Ref)] {
			t.Fatalf("KeyPackage %x handed out twice", kp.Ref)
		}
		seen[string(kp.Ref)] = true
		var parsed mls.MLSMessage
		if err := parsed.UnmarshalBinary(kp.KeyPackage); err != nil || parsed.KeyPackage == nil {
			t.Fatalf("claimed bytes are not a KeyPackage MLSMessage: %v", err)
		}
		ref, _ := parsed.KeyPackage.Ref()
		if !bytes.Equal(ref, kp.Ref) {
			t.Fatalf("ref %x does not match the KeyPackage (%x)", kp.Ref, ref)
		}
	}
	// A client cannot claim its own KeyPackages.
	_, err = alice.kps.ClaimKeyPackages(ctx, claimReq("alice"))
	connectErr(t, err, connect.CodeInvalidArgument)
	// Unknown target.
	_, err = alice.kps.ClaimKeyPackages(ctx, claimReq("nobody"))
	connectErr(t, err, connect.CodeNotFound)
}

func TestKeyPackageUploadRefusals(t *testing.T) {
	e := startEnv(t, func(c *ds.Config, _ *server.Config) { c.MaxKeyPackagesPerClient = 3 })
	alice := e.client("alice")
	ctx := context.Background()
	upload := func(ups ...*mlsdsv1.KeyPackageUpload) error {
		_, err := alice.kps.UploadKeyPackages(ctx, connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{KeyPackages: ups}))
		return err
	}

	// Malformed bytes.
	ce := connectErr(t, upload(&mlsdsv1.KeyPackageUpload{KeyPackage: []byte{0, 1, 0, 5, 9}}), connect.CodeInvalidArgument)
	detail[mlsdsv1.InvalidMessage](t, ce)

	// A broken signature names its RFC section.
	_, kp := alice.keyPackage()
	kp.Signature[0] ^= 1
	bad := mlsMessage(t, &mls.MLSMessage{WireFormat: mls.WireFormatKeyPackage, KeyPackage: kp})
	ce = connectErr(t, upload(&mlsdsv1.KeyPackageUpload{KeyPackage: bad}), connect.CodeInvalidArgument)
	if d := detail[mlsdsv1.InvalidMessage](t, ce); d.RfcSection != "10.1" || d.Reason == "" {
		t.Errorf("detail %+v, want a reason and section 10.1", d)
	}

	// Duplicates.
	good, _ := alice.keyPackage()
	if err := upload(&mlsdsv1.KeyPackageUpload{KeyPackage: good}); err != nil {
		t.Fatal(err)
	}
	connectErr(t, upload(&mlsdsv1.KeyPackageUpload{KeyPackage: good}), connect.CodeAlreadyExists)

	// Two last-resort KeyPackages for one suite.
	lr1, _ := alice.keyPackage()
	lr2, _ := alice.keyPackage()
	connectErr(t, upload(&mlsdsv1.KeyPackageUpload{KeyPackage: lr1, LastResort: true},
		&mlsdsv1.KeyPackageUpload{KeyPackage: lr2, LastResort: true}), connect.CodeAlreadyExists)

	// Over the stock limit (3 per client): the batch is refused as a whole.
	a, _ := alice.keyPackage()
	b, _ := alice.keyPackage()
	c, _ := alice.keyPackage()
	ce = connectErr(t, upload(&mlsdsv1.KeyPackageUpload{KeyPackage: a}, &mlsdsv1.KeyPackageUpload{KeyPackage: b},
		&mlsdsv1.KeyPackageUpload{KeyPackage: c}), connect.CodeResourceExhausted)
	if d := detail[mlsdsv1.TooLarge](t, ce); d.Limit != 3 {
		t.Errorf("limit %d, want 3", d.Limit)
	}
	if n := alice.count(); n != 1 {
		t.Fatalf("count %d after refused batches, want 1", n)
	}
}

func TestClaimExhausted(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	_, err := bob.kps.ClaimKeyPackages(context.Background(), claimReq("alice"))
	ce := connectErr(t, err, connect.CodeNotFound)
	d := detail[mlsdsv1.KeyPackagesExhausted](t, ce)
	if d.ClientId != "alice" || d.CipherSuite != uint32(suite) {
		t.Fatalf("detail %+v", d)
	}
	// By user: alice's only client has nothing left.
	_, err = bob.kps.ClaimKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{
		Target: &mlsdsv1.ClaimKeyPackagesRequest_UserId{UserId: alice.user}, CipherSuite: uint32(suite)}))
	ce = connectErr(t, err, connect.CodeNotFound)
	if d := detail[mlsdsv1.KeyPackagesExhausted](t, ce); d.UserId != "alice" {
		t.Fatalf("detail %+v", d)
	}
}

func TestClaimRateLimit(t *testing.T) {
	e := startEnv(t, func(c *ds.Config, _ *server.Config) { c.ClaimsPerTargetPerMinute = 2 })
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	alice.uploadKeyPackages(5, false)
	ctx := context.Background()
	for _, m := range []*member{bob, carol} {
		if _, err := m.kps.ClaimKeyPackages(ctx, claimReq("alice")); err != nil {
			t.Fatal(err)
		}
	}
	// The third claim for alice within the minute is refused, whoever asks.
	_, err := bob.kps.ClaimKeyPackages(ctx, claimReq("alice"))
	ce := connectErr(t, err, connect.CodeResourceExhausted)
	if d := detail[mlsdsv1.RateLimited](t, ce); d.RetryAfter.AsDuration() <= 0 {
		t.Fatalf("retry_after %v", d.RetryAfter.AsDuration())
	}
	if n := alice.count(); n != 3 {
		t.Fatalf("alice has %d KeyPackages left, want 3: a refused claim must not consume one", n)
	}
}

// TestConcurrentClaims: 10 claimers race for 5 KeyPackages and a
// last-resort one. Exactly the 5 are handed out, each once, and the other
// 5 claimers get the last-resort one; since 10 claims consumed all 5, no
// claim got the last-resort one while a regular one was left.
func TestConcurrentClaims(t *testing.T) {
	e := startEnv(t)
	target := e.client("target")
	refs := target.uploadKeyPackages(5, true)
	lastResort := refs[5]
	claimers := make([]*member, 10)
	for i := range claimers {
		claimers[i] = e.client("claimer-" + string(rune('a'+i)))
	}
	var wg sync.WaitGroup
	results := make([]*mlsdsv1.ClaimedKeyPackage, len(claimers))
	errs := make([]error, len(claimers))
	start := make(chan struct{})
	for i, c := range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := c.kps.ClaimKeyPackages(context.Background(), claimReq("target"))
			if err == nil {
				results[i] = res.Msg.KeyPackages[0]
			}
			errs[i] = err
		}()
	}
	close(start)
	wg.Wait()
	regular := map[string]int{}
	var lr int
	for i, r := range results {
		if errs[i] != nil {
			t.Fatalf("claimer %d: %v", i, errs[i])
		}
		if r.LastResort {
			if !bytes.Equal(r.Ref, lastResort) {
				t.Fatalf("last-resort answer %x is not the last-resort KeyPackage", r.Ref)
			}
			lr++
			continue
		}
		regular[string(r.Ref)]++
	}
	if len(regular) != 5 || lr != 5 {
		t.Fatalf("%d distinct regular KeyPackages and %d last-resort answers; want 5 and 5", len(regular), lr)
	}
	for ref, n := range regular {
		if n != 1 {
			t.Fatalf("KeyPackage %x handed out %d times", ref, n)
		}
	}
	if n := target.count(); n != 0 {
		t.Fatalf("target has %d claimable KeyPackages left", n)
	}
}

func TestKeyPackageLowWater(t *testing.T) {
	e := startEnv(t, func(c *ds.Config, _ *server.Config) { c.KeyPackageLowWater = 3 })
	alice, bob := e.client("alice"), e.client("bob")
	alice.uploadKeyPackages(3, false)
	sub := alice.subscribe()
	if got := sub.waitCaughtUp(t); len(got) != 0 {
		t.Fatalf("replayed %d messages", len(got))
	}
	if _, err := bob.kps.ClaimKeyPackages(context.Background(), claimReq("alice")); err != nil {
		t.Fatal(err)
	}
	ev := sub.next(t)
	low := ev.GetKeyPackageLow()
	if low == nil {
		t.Fatalf("got %v, want key_package_low", ev)
	}
	if low.Remaining != 2 || low.LowWater != 3 || low.CipherSuite != uint32(suite) {
		t.Fatalf("key_package_low %+v", low)
	}
}
