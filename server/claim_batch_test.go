package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/server"
)

func claimManyReq(targets ...string) *connect.Request[mlsdsv1.ClaimKeyPackagesRequest] {
	return connect.NewRequest(&mlsdsv1.ClaimKeyPackagesRequest{ClientIds: targets, CipherSuite: uint32(suite)})
}

// TestClaimBatchRPC: client_ids claims one KeyPackage of each client in
// the order asked, and reports the exhausted ones with the detail a single
// claim of each would have carried.
func TestClaimBatchRPC(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	bob := e.client("bob")
	a, b, empty := e.client("a"), e.client("b"), e.client("empty")
	aRefs := a.uploadKeyPackages(2, false)
	bRefs := b.uploadKeyPackages(0, true) // only a last-resort one

	res, err := bob.kps.ClaimKeyPackages(ctx, claimManyReq("b", "empty", "a"))
	if err != nil {
		t.Fatal(err)
	}
	kps := res.Msg.KeyPackages
	if len(kps) != 2 || kps[0].ClientId != "b" || kps[1].ClientId != "a" {
		t.Fatalf("claimed %v, want b then a", kps)
	}
	if !kps[0].LastResort || string(kps[0].Ref) != string(bRefs[0]) {
		t.Errorf("b: %+v, want its last-resort KeyPackage", kps[0])
	}
	if kps[1].LastResort || string(kps[1].Ref) != string(aRefs[0]) || len(kps[1].KeyPackage) == 0 {
		t.Errorf("a: %+v, want its oldest KeyPackage", kps[1])
	}
	if a.count() != 1 || b.count() != 0 {
		t.Errorf("stock after the batch: a %d (want 1), b %d (want 0)", a.count(), b.count())
	}
	// empty is reported as a claim of it alone would have been.
	_, single := bob.kps.ClaimKeyPackages(ctx, claimReq("empty"))
	want := detail[mlsdsv1.KeyPackagesExhausted](t, connectErr(t, single, connect.CodeNotFound))
	if len(res.Msg.Exhausted) != 1 || res.Msg.Exhausted[0].ClientId != empty.id ||
		res.Msg.Exhausted[0].CipherSuite != want.CipherSuite || res.Msg.Exhausted[0].UserId != want.UserId {
		t.Errorf("exhausted = %v, want [%v]", res.Msg.Exhausted, want)
	}
	// Single claims answer no exhausted list.
	res, err = bob.kps.ClaimKeyPackages(ctx, claimReq("a"))
	if err != nil || len(res.Msg.Exhausted) != 0 {
		t.Errorf("single claim: %v, %v", res, err)
	}
}

// TestClaimBatchRPCRefused: the request must name one kind of target, a
// list without repeats or the caller, of registered clients, within the
// bound; refusals claim nothing.
func TestClaimBatchRPCRefused(t *testing.T) {
	e := startEnv(t, func(c *ds.Config, _ *server.Config) { c.MaxGroupSize = 4 })
	ctx := context.Background()
	bob := e.client("bob")
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		e.client(id).uploadKeyPackages(1, false)
	}
	cases := []struct {
		name string
		req  *mlsdsv1.ClaimKeyPackagesRequest
		code connect.Code
		says string
	}{
		{"nothing", &mlsdsv1.ClaimKeyPackagesRequest{CipherSuite: uint32(suite)}, connect.CodeInvalidArgument, "client_ids"},
		{"two kinds", &mlsdsv1.ClaimKeyPackagesRequest{Target: &mlsdsv1.ClaimKeyPackagesRequest_ClientId{ClientId: "a"},
			ClientIds: []string{"b"}, CipherSuite: uint32(suite)}, connect.CodeInvalidArgument, "not two"},
		{"repeat", &mlsdsv1.ClaimKeyPackagesRequest{ClientIds: []string{"a", "b", "a"}, CipherSuite: uint32(suite)}, connect.CodeInvalidArgument, "twice"},
		{"self", &mlsdsv1.ClaimKeyPackagesRequest{ClientIds: []string{"a", "bob"}, CipherSuite: uint32(suite)}, connect.CodeInvalidArgument, "own"},
		{"unknown", &mlsdsv1.ClaimKeyPackagesRequest{ClientIds: []string{"a", "ghost"}, CipherSuite: uint32(suite)}, connect.CodeNotFound, "ghost"},
		{"no suite", &mlsdsv1.ClaimKeyPackagesRequest{ClientIds: []string{"a"}}, connect.CodeInvalidArgument, "cipher_suite"},
		{"too many", &mlsdsv1.ClaimKeyPackagesRequest{ClientIds: []string{"a", "b", "c", "d", "e"}, CipherSuite: uint32(suite)}, connect.CodeResourceExhausted, "clients per claim"},
	}
	for _, c := range cases {
		_, err := bob.kps.ClaimKeyPackages(ctx, connect.NewRequest(c.req))
		ce := connectErr(t, err, c.code)
		if !strings.Contains(ce.Message(), c.says) {
			t.Errorf("%s: message %q does not say %q", c.name, ce.Message(), c.says)
		}
		if c.name == "too many" {
			if d := detail[mlsdsv1.TooLarge](t, ce); d.Limit != 4 {
				t.Errorf("TooLarge limit %d, want the group size limit 4", d.Limit)
			}
		}
	}
	// Nothing was claimed by the refused calls: all four pass now.
	res, err := bob.kps.ClaimKeyPackages(ctx, claimManyReq("a", "b", "c", "d"))
	if err != nil || len(res.Msg.KeyPackages) != 4 || len(res.Msg.Exhausted) != 0 {
		t.Fatalf("claiming a..d after the refusals: %v, %v", res, err)
	}
}

// TestClaimBatchRPCRateLimit: a batch over the caller's remaining claim
// budget is refused with RateLimited and claims nothing; one over its
// whole budget with TooLarge, giving the budget as the bound.
func TestClaimBatchRPCRateLimit(t *testing.T) {
	e := startEnv(t, func(c *ds.Config, _ *server.Config) { c.ClaimsPerMinute = 4 })
	ctx := context.Background()
	bob := e.client("bob")
	var ids []string
	var targets []*member
	for i := 0; i < 5; i++ {
		m := e.client(fmt.Sprintf("t%d", i))
		m.uploadKeyPackages(2, false)
		ids, targets = append(ids, m.id), append(targets, m)
	}
	_, err := bob.kps.ClaimKeyPackages(ctx, claimManyReq(ids...))
	if d := detail[mlsdsv1.TooLarge](t, connectErr(t, err, connect.CodeResourceExhausted)); d.Limit != 4 {
		t.Errorf("TooLarge limit %d, want the claim budget 4", d.Limit)
	}
	if _, err := bob.kps.ClaimKeyPackages(ctx, claimManyReq(ids[:2]...)); err != nil {
		t.Fatal(err)
	}
	_, err = bob.kps.ClaimKeyPackages(ctx, claimManyReq(ids[2:]...))
	if d := detail[mlsdsv1.RateLimited](t, connectErr(t, err, connect.CodeResourceExhausted)); d.RetryAfter.AsDuration() <= 0 {
		t.Errorf("retry_after %v", d.RetryAfter.AsDuration())
	}
	for _, m := range targets[2:] {
		if n := m.count(); n != 2 {
			t.Errorf("%s has %d KeyPackages after a refused batch, want 2", m.id, n)
		}
	}
	// The two claims left still pass.
	if _, err := bob.kps.ClaimKeyPackages(ctx, claimManyReq(ids[2:4]...)); err != nil {
		t.Errorf("the remaining budget: %v", err)
	}
}
