package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/postgres"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// Quotas, through the real server: each refusal carries its typed detail,
// changes nothing in the store, and shows on /metrics.

// testClock is a settable clock for ds.Config.Now.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// use puts the server on the clock too (session tokens must not predate
// the clients they are for), with sessions that outlive the test's days.
func (c *testClock) use(s *server.Config) {
	s.Now = c.now
	s.SessionTTL = 72 * time.Hour
}

// wantMetric fails unless /metrics of e has a series line starting with
// series (name and labels) and the value want.
func wantMetric(t *testing.T, e *testEnv, series, want string) {
	t.Helper()
	_, body := get(t, e, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			if v != want {
				t.Errorf("%s = %s, want %s", series, v, want)
			}
			return
		}
	}
	t.Errorf("/metrics lacks %s (want %s)", series, want)
}

func quotaStore(t *testing.T) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "mlsds.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestKeyPackageTooLarge(t *testing.T) {
	st := quotaStore(t)
	e := startEnvOn(t, st)
	alice := e.client("alice")
	// Over 64 KiB (the default) and well under the message bound of 1 MiB.
	big := make([]byte, 64<<10+1)
	_, err := alice.kps.UploadKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
		KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: big}}}))
	ce := connectErr(t, err, connect.CodeResourceExhausted)
	d := detail[mlsdsv1.TooLarge](t, ce)
	if d.Limit != 64<<10 || d.What != ds.LimitKeyPackageSize {
		t.Errorf("TooLarge{%d, %q}, want {%d, %q}", d.Limit, d.What, 64<<10, ds.LimitKeyPackageSize)
	}
	if kps, _ := st.KeyPackages(context.Background(), "alice"); len(kps) != 0 {
		t.Errorf("the refused upload stored %d KeyPackages", len(kps))
	}
	wantMetric(t, e, `mlsds_quota_refusals_total{quota="key_package_size"}`, "1")
	wantMetric(t, e, `mlsds_quota_limit{quota="key_package_size"}`, "65536")
}

func TestKeyPackageBytesQuota(t *testing.T) {
	// One KeyPackage of a client has the same size every time (fixed-size
	// keys and signatures); measure it on a throwaway server.
	probe := startEnv(t).newMember("alice")
	one, _ := probe.keyPackage()
	quota := int64(3*len(one) + len(one)/2)

	st := quotaStore(t)
	e := startEnvOn(t, st, func(c *ds.Config, _ *server.Config) { c.MaxKeyPackageBytes = quota })
	alice := e.client("alice")
	refs := alice.uploadKeyPackages(3, false)
	data, _ := alice.keyPackage()
	upload := func() error {
		_, err := alice.kps.UploadKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.UploadKeyPackagesRequest{
			KeyPackages: []*mlsdsv1.KeyPackageUpload{{KeyPackage: data}}}))
		return err
	}
	ce := connectErr(t, upload(), connect.CodeResourceExhausted)
	d := detail[mlsdsv1.QuotaExceeded](t, ce)
	if d.What != ds.QuotaKeyPackageBytes || d.Limit != uint64(quota) || d.RetryAfter != nil {
		t.Errorf("QuotaExceeded{%q, %d, %v}, want {%q, %d, no retry_after}", d.What, d.Limit, d.RetryAfter, ds.QuotaKeyPackageBytes, quota)
	}
	if kps, _ := st.KeyPackages(context.Background(), "alice"); len(kps) != 3 {
		t.Errorf("after the refusal alice holds %d KeyPackages, want 3", len(kps))
	}
	wantMetric(t, e, `mlsds_quota_refusals_total{quota="key_package_bytes"}`, "1")
	wantMetric(t, e, `mlsds_quota_limit{quota="key_package_bytes"}`, fmt.Sprint(quota))

	// Deleting one frees its bytes.
	if _, err := alice.kps.DeleteKeyPackages(context.Background(), connect.NewRequest(&mlsdsv1.DeleteKeyPackagesRequest{
		Refs: refs[:1]})); err != nil {
		t.Fatal(err)
	}
	if err := upload(); err != nil {
		t.Fatalf("after deleting one: %v", err)
	}
	if kps, _ := st.KeyPackages(context.Background(), "alice"); len(kps) != 3 {
		t.Errorf("alice holds %d KeyPackages, want 3", len(kps))
	}
}

func TestGroupsPerDayQuota(t *testing.T) {
	clock := &testClock{t: time.Date(2030, 1, 2, 20, 0, 0, 0, time.UTC)}
	st := quotaStore(t)
	e := startEnvOn(t, st, func(c *ds.Config, s *server.Config) {
		c.Now = clock.now
		c.MaxGroupsPerDay = 3
		clock.use(s)
	})
	alice := e.client("alice")
	g0 := groupID("g0")
	alice.createOpaqueGroup(g0)
	// A creation that the store refuses (the id is taken) costs nothing.
	_, err := alice.groups.CreateGroup(context.Background(), connect.NewRequest(&mlsdsv1.CreateGroupRequest{
		GroupId: g0, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE}))
	connectErr(t, err, connect.CodeAlreadyExists)
	alice.createOpaqueGroup(groupID("g1"))
	alice.createOpaqueGroup(groupID("g2"))
	gid := groupID("fourth")
	create := func() error {
		_, err := alice.groups.CreateGroup(context.Background(), connect.NewRequest(&mlsdsv1.CreateGroupRequest{
			GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_OPAQUE}))
		return err
	}
	ce := connectErr(t, create(), connect.CodeResourceExhausted)
	d := detail[mlsdsv1.QuotaExceeded](t, ce)
	if d.What != ds.QuotaGroupsPerDay || d.Limit != 3 {
		t.Errorf("QuotaExceeded{%q, %d}, want {%q, 3}", d.What, d.Limit, ds.QuotaGroupsPerDay)
	}
	// 20:00 UTC: the quota frees up at midnight, in four hours.
	if got := d.RetryAfter.AsDuration(); got != 4*time.Hour {
		t.Errorf("retry_after %v, want 4h (the next UTC midnight)", got)
	}
	if _, err := st.Group(context.Background(), gid); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("the refused group is stored: %v", err)
	}
	day := ds.UsageDay(clock.now())
	if u, _ := st.DailyUsage(context.Background(), "alice", day); u.Groups != 3 {
		t.Errorf("after the refusal alice's counter is %d groups, want 3", u.Groups)
	}
	wantMetric(t, e, `mlsds_quota_refusals_total{quota="groups_per_day"}`, "1")
	wantMetric(t, e, `mlsds_quota_limit{quota="groups_per_day"}`, "3")

	clock.add(4 * time.Hour)
	if err := create(); err != nil {
		t.Fatalf("the next day: %v", err)
	}
	if u, _ := st.DailyUsage(context.Background(), "alice", day+1); u.Groups != 1 {
		t.Errorf("the next day's counter is %d groups, want 1", u.Groups)
	}
}

// TestBytesPerDayQuota runs two nodes over one PostgreSQL database: what
// one node accepted, once written (within a flush interval), counts on
// the other.
func TestBytesPerDayQuota(t *testing.T) {
	url := pgtest.NewDatabase(t)
	secret := bytes.Repeat([]byte{0x42}, 32)
	clock := &testClock{t: time.Date(2030, 1, 2, 18, 30, 0, 0, time.UTC)}
	const quota = 10_000
	var stores []*postgres.Store
	node := func() *testEnv {
		st, err := postgres.Open(context.Background(), url, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, st)
		return startEnvOn(t, st, func(c *ds.Config, s *server.Config) {
			c.Now = clock.now
			c.MaxBytesPerDay = quota
			c.QuotaFlushInterval = 20 * time.Millisecond
			s.AuthSecret = secret
			clock.use(s)
		})
	}
	a, b := node(), node()
	alice := a.client("alice")
	aliceOnB := b.rebind(alice)
	gid := groupID("bytes")
	alice.createOpaqueGroup(gid)

	msg := func() []byte { return privateMessage(t, gid, 0, mls.ContentTypeApplication, 900) }
	size := len(msg())
	n := quota / size
	for range n {
		alice.mustSend(msg()) // through node a
	}
	day := ds.UsageDay(clock.now())
	want := int64(n * size)
	deadline := time.Now().Add(10 * time.Second)
	for {
		u, err := stores[1].DailyUsage(context.Background(), "alice", day)
		if err != nil {
			t.Fatal(err)
		}
		if u.Bytes == want {
			break
		}
		if u.Bytes > want || time.Now().After(deadline) {
			t.Fatalf("the store counts %d bytes of alice's, want %d", u.Bytes, want)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Node b has seen none of it itself, and refuses.
	_, err := aliceOnB.send(msg())
	ce := connectErr(t, err, connect.CodeResourceExhausted)
	d := detail[mlsdsv1.QuotaExceeded](t, ce)
	if d.What != ds.QuotaBytesPerDay || d.Limit != quota {
		t.Errorf("QuotaExceeded{%q, %d}, want {%q, %d}", d.What, d.Limit, ds.QuotaBytesPerDay, quota)
	}
	if got := d.RetryAfter.AsDuration(); got != 5*time.Hour+30*time.Minute {
		t.Errorf("retry_after %v, want 5h30m (the next UTC midnight)", got)
	}
	head, err := stores[1].Group(context.Background(), gid)
	if err != nil || head.LastSeq != uint64(n) {
		t.Errorf("after the refusal the group's last message is %d (%v), want %d", head.LastSeq, err, n)
	}
	wantMetric(t, b, `mlsds_quota_refusals_total{quota="bytes_per_day"}`, "1")
	wantMetric(t, b, `mlsds_messages_rejected_total{reason="quota_exceeded"}`, "1")
	wantMetric(t, a, `mlsds_quota_bytes_accepted_total`, fmt.Sprint(want))
	// Node a refuses too.
	_, err = alice.send(msg())
	connectErr(t, err, connect.CodeResourceExhausted)

	// A new day, a new quota, on either node.
	clock.add(5*time.Hour + 30*time.Minute)
	aliceOnB.mustSend(msg())
	alice.mustSend(msg())
}

// TestClientsPerUserCap registers devices of one user concurrently, each
// with a device link of its own: the cap holds exactly.
func TestClientsPerUserCap(t *testing.T) {
	st := quotaStore(t)
	e := startEnvOn(t, st, func(c *ds.Config, _ *server.Config) { c.MaxClientsPerUser = 3 })
	first := e.newMember("ursula-phone")
	first.register("ursula")
	first.login()
	const n = 6
	links := make([]string, n)
	devices := make([]*member, n)
	for i := range n {
		links[i] = first.deviceLink(0).DeviceLink
		devices[i] = e.newMember(fmt.Sprintf("ursula-%d", i))
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = devices[i].tryRegister("ursula", links[i]) })
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		if err == nil {
			won++
			continue
		}
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted {
			t.Fatalf("device %d: %v, want RESOURCE_EXHAUSTED", i, err)
		}
		d := detail[mlsdsv1.QuotaExceeded](t, ce)
		if d.What != ds.QuotaClientsPerUser || d.Limit != 3 || d.RetryAfter != nil {
			t.Errorf("QuotaExceeded{%q, %d, %v}, want {%q, 3, none}", d.What, d.Limit, d.RetryAfter, ds.QuotaClientsPerUser)
		}
		if _, err := st.Client(context.Background(), devices[i].id); !errors.Is(err, ds.ErrNotFound) {
			t.Errorf("refused device %d is registered: %v", i, err)
		}
	}
	if won != 2 {
		t.Errorf("%d more devices registered under a cap of 3 with one, want 2", won)
	}
	if cs, _ := st.ClientsOfUser(context.Background(), "ursula"); len(cs) != 3 {
		t.Errorf("ursula has %d clients, want 3", len(cs))
	}
	wantMetric(t, e, `mlsds_quota_refusals_total{quota="clients_per_user"}`, fmt.Sprint(n-2))
	// Registering an existing device again is no new client.
	if err := first.tryRegister("ursula", ""); err != nil {
		t.Errorf("registering an existing client again at the cap: %v", err)
	}
}

// fromAddr returns an HTTP/2 client whose connections come from the
// loopback address local.
func fromAddr(local string) *http.Client {
	c := h2cClient()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c.Transport.(*http.Transport).DialContext = d.DialContext
	return c
}

func TestRegistrationsPerAddress(t *testing.T) {
	st := quotaStore(t)
	e := startEnvOn(t, st, func(_ *ds.Config, s *server.Config) {
		s.AuthRatePerSecond = 1000 // on, and out of the way
		s.RegistrationsPerHour = 10
		s.RegistrationBurst = 2
	})
	other := fromAddr("127.0.0.2")
	if conn, err := net.DialTCP("tcp", &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1}); err != nil && strings.Contains(err.Error(), "assign requested address") {
		t.Skip("no second loopback address on this machine")
	} else if conn != nil {
		conn.Close()
	}

	a, b := e.newMember("reg-a"), e.newMember("reg-b")
	a.register("")
	b.register("")
	c := e.newMember("reg-c")
	err := c.tryRegister("", "")
	ce := connectErr(t, err, connect.CodeResourceExhausted)
	d := detail[mlsdsv1.RateLimited](t, ce)
	if d.What != server.WhatRegistrations || d.RetryAfter.AsDuration() <= 0 || d.RetryAfter.AsDuration() > 6*time.Minute {
		t.Errorf("RateLimited{%v, %q}, want {<= 6m (one of 10 per hour), %q}", d.RetryAfter.AsDuration(), d.What, server.WhatRegistrations)
	}
	if _, err := st.Client(context.Background(), "reg-c"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("the refused client is registered: %v", err)
	}
	wantMetric(t, e, `mlsds_quota_refusals_total{quota="registrations_per_address"}`, "1")
	wantMetric(t, e, `mlsds_quota_limit{quota="registrations_per_address"}`, "10")

	// Registering an existing client again is not a new registration.
	if err := a.tryRegister("", ""); err != nil {
		t.Errorf("registering reg-a again: %v", err)
	}
	// Another address still registers.
	c.auth = mlsdsv1connect.NewAuthServiceClient(other, e.url)
	if err := c.tryRegister("", ""); err != nil {
		t.Fatalf("from another address: %v", err)
	}
	if _, err := st.Client(context.Background(), "reg-c"); err != nil {
		t.Errorf("reg-c: %v", err)
	}
}
