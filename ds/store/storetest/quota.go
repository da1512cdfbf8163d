package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/mlsds/mlsds/ds"
)

// The quotas the store keeps (ds/quota.go): KeyPackage bytes, checked in
// the upload's transaction; daily counters; clients per user, checked in
// the registration's transaction.

func testQuotas(t *testing.T, s ds.Store) {
	t.Run("KeyPackageBytes", func(t *testing.T) { testKeyPackageBytes(t, s) })
	t.Run("DailyUsage", func(t *testing.T) { testDailyUsage(t, s) })
	t.Run("ChargeDailyUsage", func(t *testing.T) { testChargeDailyUsage(t, s) })
	t.Run("ChargeConcurrent", func(t *testing.T) { testChargeConcurrent(t, s) })
	t.Run("ClientsPerUser", func(t *testing.T) { testClientsPerUser(t, s) })
}

// sizedKP is a KeyPackageRecord of client whose Data has n bytes.
func sizedKP(client string, n int) ds.KeyPackageRecord {
	k := kp(client, false)
	k.Data = bytes.Repeat([]byte{byte(len(k.Ref))}, n)
	return k
}

func wantQuota(t *testing.T, err error, what string, limit int64) {
	t.Helper()
	var qe *ds.QuotaExceededError
	if !errors.As(err, &qe) {
		t.Fatalf("err = %v, want a *QuotaExceededError for %q", err, what)
	}
	if qe.What != what || qe.Limit != limit {
		t.Fatalf("QuotaExceededError{What: %q, Limit: %d}, want {%q, %d}", qe.What, qe.Limit, what, limit)
	}
}

func testKeyPackageBytes(t *testing.T, s ds.Store) {
	mustClient(t, s, "quinn", "quinn")
	mustClient(t, s, "claimer", "claimer")
	lim := ds.KeyPackageLimits{Count: 100, Bytes: 1000}
	a, b := sizedKP("quinn", 400), sizedKP("quinn", 400)
	if err := s.AddKeyPackagesWithin(ctx(), []ds.KeyPackageRecord{a, b}, lim); err != nil {
		t.Fatalf("800 of 1000 bytes: %v", err)
	}
	// 800 + 300 > 1000: refused, and nothing of the upload is stored.
	c, d := sizedKP("quinn", 100), sizedKP("quinn", 200)
	err := s.AddKeyPackagesWithin(ctx(), []ds.KeyPackageRecord{c, d}, lim)
	wantQuota(t, err, ds.QuotaKeyPackageBytes, 1000)
	if got, _ := s.KeyPackages(ctx(), "quinn"); len(got) != 2 {
		t.Fatalf("after the refused upload the client holds %d KeyPackages, want 2", len(got))
	}
	// Exactly at the quota is fine.
	if err := s.AddKeyPackagesWithin(ctx(), []ds.KeyPackageRecord{sizedKP("quinn", 200)}, lim); err != nil {
		t.Fatalf("exactly 1000 of 1000 bytes: %v", err)
	}
	wantQuota(t, s.AddKeyPackagesWithin(ctx(), []ds.KeyPackageRecord{sizedKP("quinn", 1)}, lim), ds.QuotaKeyPackageBytes, 1000)
	// Deleting frees bytes.
	if n, err := s.DeleteKeyPackages(ctx(), "quinn", [][]byte{a.Ref}); err != nil || n != 1 {
		t.Fatalf("DeleteKeyPackages = %d, %v", n, err)
	}
	if err := s.AddKeyPackagesWithin(ctx(), []ds.KeyPackageRecord{c, d}, lim); err != nil {
		t.Fatalf("after deleting 400 bytes, 300 more: %v", err)
	}
	// A claimed KeyPackage is no longer the client's to store.
	claims, err := s.ClaimKeyPackages(ctx(), ds.ClaimParams{Claimer: "claimer", Targets: []string{"quinn"}, Suite: suite, Now: t0})
	if err != nil || len(claims) != 1 || claims[0].KeyPackage == nil {
		t.Fatalf("ClaimKeyPackages = %+v, %v", claims, err)
	}
	freed := int64(len(claims[0].KeyPackage.Data))
	if err := s.AddKeyPackagesWithin(ctx(), []ds.KeyPackageRecord{sizedKP("quinn", int(freed))}, lim); err != nil {
		t.Fatalf("after a claim freed %d bytes, as many more: %v", freed, err)
	}
	// The count bound still holds, as a TooLargeError.
	var tl *ds.TooLargeError
	err = s.AddKeyPackagesWithin(ctx(), []ds.KeyPackageRecord{sizedKP("claimer", 1), sizedKP("claimer", 1)}, ds.KeyPackageLimits{Count: 1})
	if !errors.As(err, &tl) {
		t.Fatalf("two KeyPackages over a count of 1: %v, want a TooLargeError", err)
	}
	// Bytes 0: no bound.
	if err := s.AddKeyPackagesWithin(ctx(), []ds.KeyPackageRecord{sizedKP("claimer", 5000)}, ds.KeyPackageLimits{Count: 10}); err != nil {
		t.Fatalf("no byte bound: %v", err)
	}
}

func mustUsage(t *testing.T, s ds.Store, client string, day, groups, bytes int64) {
	t.Helper()
	u, err := s.DailyUsage(ctx(), client, day)
	if err != nil {
		t.Fatal(err)
	}
	if u.Groups != groups || u.Bytes != bytes {
		t.Fatalf("DailyUsage(%s, %d) = %d groups, %d bytes; want %d, %d", client, day, u.Groups, u.Bytes, groups, bytes)
	}
}

func testDailyUsage(t *testing.T, s ds.Store) {
	const day = 20_000
	mustClient(t, s, "ann", "")
	mustClient(t, s, "bob", "")
	mustUsage(t, s, "nobody", day, 0, 0)
	// Counts of a client that is not registered (deleted while its
	// counts waited to be written) leave no row that names it.
	if err := s.AddDailyUsage(ctx(), []ds.DailyUsage{{ClientID: "nobody", Day: day, Bytes: 9}}); err != nil {
		t.Fatal(err)
	}
	mustUsage(t, s, "nobody", day, 0, 0)
	if err := s.AddDailyUsage(ctx(), nil); err != nil {
		t.Fatalf("nothing to add: %v", err)
	}
	err := s.AddDailyUsage(ctx(), []ds.DailyUsage{
		{ClientID: "ann", Day: day, Bytes: 100},
		{ClientID: "bob", Day: day, Groups: 2, Bytes: 7},
		{ClientID: "ann", Day: day - 1, Bytes: 5},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddDailyUsage(ctx(), []ds.DailyUsage{{ClientID: "ann", Day: day, Groups: 1, Bytes: 50}}); err != nil {
		t.Fatal(err)
	}
	mustUsage(t, s, "ann", day, 1, 150)
	mustUsage(t, s, "ann", day-1, 0, 5)
	mustUsage(t, s, "bob", day, 2, 7)
	// A refund never takes a counter below zero.
	if err := s.AddDailyUsage(ctx(), []ds.DailyUsage{{ClientID: "bob", Day: day, Groups: -5}}); err != nil {
		t.Fatal(err)
	}
	mustUsage(t, s, "bob", day, 0, 7)
	// Counters of days before yesterday may go; today's and yesterday's
	// stay.
	if err := s.AddDailyUsage(ctx(), []ds.DailyUsage{{ClientID: "bob", Day: day + 1, Bytes: 1}}); err != nil {
		t.Fatal(err)
	}
	mustUsage(t, s, "ann", day, 1, 150)
	mustUsage(t, s, "bob", day+1, 0, 1)
}

func testChargeDailyUsage(t *testing.T, s ds.Store) {
	mustClient(t, s, "cat", "")
	mustClient(t, s, "dog", "")
	const day = 20_100
	limit := ds.DailyUsage{Groups: 2, Bytes: 1000}
	for i := range 2 {
		u, err := s.ChargeDailyUsage(ctx(), ds.DailyUsage{ClientID: "cat", Day: day, Groups: 1, Bytes: 100}, limit)
		if err != nil {
			t.Fatalf("charge %d: %v", i+1, err)
		}
		if u.Groups != int64(i+1) || u.Bytes != int64(100*(i+1)) {
			t.Fatalf("charge %d: counters %+v", i+1, u)
		}
	}
	_, err := s.ChargeDailyUsage(ctx(), ds.DailyUsage{ClientID: "cat", Day: day, Groups: 1}, limit)
	wantQuota(t, err, ds.QuotaGroupsPerDay, 2)
	_, err = s.ChargeDailyUsage(ctx(), ds.DailyUsage{ClientID: "cat", Day: day, Bytes: 801}, limit)
	wantQuota(t, err, ds.QuotaBytesPerDay, 1000)
	mustUsage(t, s, "cat", day, 2, 200)
	// A refusal of a new day's first charge leaves no row behind that
	// counts.
	_, err = s.ChargeDailyUsage(ctx(), ds.DailyUsage{ClientID: "cat", Day: day + 1, Groups: 3}, limit)
	wantQuota(t, err, ds.QuotaGroupsPerDay, 2)
	mustUsage(t, s, "cat", day+1, 0, 0)
	// Another day, another client: their own counters.
	if _, err := s.ChargeDailyUsage(ctx(), ds.DailyUsage{ClientID: "cat", Day: day + 1, Groups: 1}, limit); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ChargeDailyUsage(ctx(), ds.DailyUsage{ClientID: "dog", Day: day, Groups: 2}, limit); err != nil {
		t.Fatal(err)
	}
	// No bound: anything goes.
	if _, err := s.ChargeDailyUsage(ctx(), ds.DailyUsage{ClientID: "cat", Day: day, Groups: 100}, ds.DailyUsage{}); err != nil {
		t.Fatal(err)
	}
	mustUsage(t, s, "cat", day, 102, 200)
}

func testChargeConcurrent(t *testing.T, s ds.Store) {
	mustClient(t, s, "eve", "")
	const day, n, quota = 20_200, 12, 5
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.ChargeDailyUsage(ctx(), ds.DailyUsage{ClientID: "eve", Day: day, Groups: 1}, ds.DailyUsage{Groups: quota})
		})
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		var qe *ds.QuotaExceededError
		switch {
		case err == nil:
			won++
		case !errors.As(err, &qe):
			t.Errorf("concurrent charge: %v", err)
		}
	}
	if won != quota {
		t.Fatalf("%d of %d concurrent charges passed a quota of %d", won, n, quota)
	}
	mustUsage(t, s, "eve", day, quota, 0)
}

func testClientsPerUser(t *testing.T, s ds.Store) {
	const n, capN = 10, 3
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			r := registration(fmt.Sprintf("hal-%d", i), "hal")
			r.UserVouched = true
			r.MaxClientsPerUser = capN
			errs[i] = s.RegisterClient(ctx(), r)
		})
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		var qe *ds.QuotaExceededError
		switch {
		case err == nil:
			won++
		case errors.As(err, &qe):
			if qe.What != ds.QuotaClientsPerUser || qe.Limit != capN {
				t.Errorf("refusal %+v", qe)
			}
		default:
			t.Errorf("concurrent registration: %v", err)
		}
	}
	cs, err := s.ClientsOfUser(ctx(), "hal")
	if err != nil {
		t.Fatal(err)
	}
	if won != capN || len(cs) != capN {
		t.Fatalf("%d registrations passed and %d clients are stored under a cap of %d", won, len(cs), capN)
	}
	// The cap counts the user's clients: another user is not affected,
	// and an existing client is still ErrAlreadyExists, not a quota.
	r := registration(cs[0].ID, "hal")
	r.UserVouched, r.MaxClientsPerUser = true, capN
	if err := s.RegisterClient(ctx(), r); !errors.Is(err, ds.ErrAlreadyExists) {
		t.Errorf("registering an existing client again at the cap: %v, want ErrAlreadyExists", err)
	}
	r = registration("ida", "ida")
	r.MaxClientsPerUser = capN
	if err := s.RegisterClient(ctx(), r); err != nil {
		t.Errorf("another user: %v", err)
	}
	// A cap of 0 is none.
	r = registration("hal-extra", "hal")
	r.UserVouched = true
	if err := s.RegisterClient(ctx(), r); err != nil {
		t.Errorf("no cap: %v", err)
	}
}
