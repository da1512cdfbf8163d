package ds_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// TestClaimBatch: one call claims one KeyPackage of each target, in the
// order of the targets; a target whose stock is gone gets its last-resort
// KeyPackage (kept), one with nothing at all is reported, not fatal.
func TestClaimBatch(t *testing.T) {
	e := newEnv(t, ds.Config{})
	e.register("c", "c")
	a, b, x := e.register("a", "a"), e.register("b", "b"), e.register("x", "x")
	e.register("empty", "empty")
	aKPs := e.upload(a, 2, false)
	bKPs := e.upload(b, 1, true) // one, then the last-resort one
	e.upload(x, 1, false)

	targets := []string{"b", "empty", "a", "x"}
	got, exhausted, err := e.svc.ClaimKeyPackagesFor(bg, "c", targets, suite)
	if err != nil {
		t.Fatal(err)
	}
	if ids := claimedIDs(got); fmt.Sprint(ids) != "[b a x]" {
		t.Errorf("claimed for %v, want [b a x] (the order of the targets, empty left out)", ids)
	}
	if fmt.Sprint(exhausted) != "[empty]" {
		t.Errorf("exhausted = %v, want [empty]", exhausted)
	}
	if !bytes.Equal(got[0].Ref, ref(t, bKPs[0])) || got[0].LastResort {
		t.Errorf("b: got %x (last resort %v), want its oldest, not last-resort", got[0].Ref, got[0].LastResort)
	}
	if !bytes.Equal(got[1].Ref, ref(t, aKPs[0])) {
		t.Errorf("a: got %x, want its oldest", got[1].Ref)
	}
	for _, c := range got {
		if len(c.Data) == 0 {
			t.Errorf("%s: no KeyPackage bytes", c.ClientID)
		}
	}

	// Claimed ones are gone: a second batch gets a's second KeyPackage,
	// b's last-resort one and nothing of x.
	got, exhausted, err = e.svc.ClaimKeyPackagesFor(bg, "c", []string{"a", "b", "x"}, suite)
	if err != nil {
		t.Fatal(err)
	}
	if ids := claimedIDs(got); fmt.Sprint(ids) != "[a b]" || fmt.Sprint(exhausted) != "[x]" {
		t.Fatalf("second batch: claimed %v, exhausted %v; want [a b] and [x]", ids, exhausted)
	}
	if !bytes.Equal(got[0].Ref, ref(t, aKPs[1])) || !got[1].LastResort || !bytes.Equal(got[1].Ref, ref(t, bKPs[1])) {
		t.Errorf("second batch: %+v", got)
	}
	// The last-resort one is kept: b can still be claimed, alone or in a
	// batch, and single claims agree with the batch about x.
	if c, err := e.svc.ClaimKeyPackage(bg, "c", "b", suite); err != nil || !c.LastResort {
		t.Errorf("single claim of b after the batches: %+v, %v", c, err)
	}
	_, err = e.svc.ClaimKeyPackage(bg, "c", "x", suite)
	wantIs(t, err, ds.ErrKeyPackagesExhausted)

	// Another suite: everyone is exhausted, and that is still an answer.
	got, exhausted, err = e.svc.ClaimKeyPackagesFor(bg, "c", []string{"a", "b"}, mls.MLS_128_DHKEMP256_AES128GCM_SHA256_P256)
	if err != nil || len(got) != 0 || fmt.Sprint(exhausted) != "[a b]" {
		t.Errorf("other suite: %+v, %v, %v; want nothing claimed and [a b] exhausted", got, exhausted, err)
	}
}

func claimedIDs(cs []ds.ClaimedKeyPackage) []string {
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ClientID)
	}
	return ids
}

// TestClaimBatchRefused: malformed lists are refused before anything is
// claimed.
func TestClaimBatchRefused(t *testing.T) {
	e := newEnv(t, ds.Config{MaxGroupSize: 3})
	e.register("c", "c")
	for _, id := range []string{"a", "b", "d"} {
		e.upload(e.register(id, id), 1, false)
	}
	stock := func() int {
		n := 0
		for _, id := range []string{"a", "b", "d"} {
			n += must(e.svc.CountKeyPackages(bg, id))[suite]
		}
		return n
	}

	_, _, err := e.svc.ClaimKeyPackagesFor(bg, "c", nil, suite)
	wantIs(t, err, ds.ErrInvalidArgument)
	_, _, err = e.svc.ClaimKeyPackagesFor(bg, "c", []string{"a", "b", "a"}, suite)
	wantIs(t, err, ds.ErrInvalidArgument)
	if !strings.Contains(err.Error(), `"a"`) {
		t.Errorf("duplicate refused without naming it: %v", err)
	}
	_, _, err = e.svc.ClaimKeyPackagesFor(bg, "c", []string{"a", "c"}, suite)
	wantIs(t, err, ds.ErrInvalidArgument)

	// Unknown clients are named, and the known ones are not claimed.
	_, _, err = e.svc.ClaimKeyPackagesFor(bg, "c", []string{"a", "ghost", "phantom"}, suite)
	wantIs(t, err, ds.ErrNotFound)
	for _, name := range []string{"ghost", "phantom"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("unknown %q not named: %v", name, err)
		}
	}
	if strings.Contains(err.Error(), `"a"`) {
		t.Errorf("a known client named as unknown: %v", err)
	}

	// More than the group size limit (3 here) can never be added at once.
	e.register("e", "e")
	_, _, err = e.svc.ClaimKeyPackagesFor(bg, "c", []string{"a", "b", "d", "e"}, suite)
	if tl := wantErr[*ds.TooLargeError](t, err); tl.Limit != 3 {
		t.Errorf("TooLarge limit %d, want MaxGroupSize 3", tl.Limit)
	}
	if n := stock(); n != 3 {
		t.Errorf("refused batches claimed something: stock %d, want 3", n)
	}
	if got := e.svc.ClaimBatchLimit(); got != 3 {
		t.Errorf("ClaimBatchLimit = %d, want 3", got)
	}

	// And never more than MaxClaimBatch.
	e2 := newEnv(t, ds.Config{})
	e2.register("c", "c")
	many := make([]string, ds.MaxClaimBatch+1)
	for i := range many {
		many[i] = fmt.Sprintf("t%d", i)
	}
	_, _, err = e2.svc.ClaimKeyPackagesFor(bg, "c", many, suite)
	if tl := wantErr[*ds.TooLargeError](t, err); tl.Limit != ds.MaxClaimBatch {
		t.Errorf("TooLarge limit %d, want %d", tl.Limit, ds.MaxClaimBatch)
	}
}

// TestClaimBatchRateLimits: a batch costs what its claims one by one would
// (one of the claimer's budget and one of the target's, per target), and
// is refused as a whole, at no cost, when the budgets cannot cover it.
func TestClaimBatchRateLimits(t *testing.T) {
	e := newEnv(t, ds.Config{ClaimsPerMinute: 5, ClaimsPerTargetPerMinute: 2})
	e.register("c", "c")
	e.register("c2", "c2")
	var ids []string
	for i := 0; i < 6; i++ {
		id := fmt.Sprintf("t%d", i)
		e.upload(e.register(id, id), 5, false)
		ids = append(ids, id)
	}
	stock := func(id string) int { return must(e.svc.CountKeyPackages(bg, id))[suite] }
	if got := e.svc.ClaimBatchLimit(); got != 5 {
		t.Errorf("ClaimBatchLimit = %d, want the claimer's burst 5", got)
	}
	// 6 targets are more than a whole minute of the claimer's budget: no
	// wait would help.
	_, _, err := e.svc.ClaimKeyPackagesFor(bg, "c", ids, suite)
	if tl := wantErr[*ds.TooLargeError](t, err); tl.Limit != 5 {
		t.Errorf("TooLarge limit %d, want 5", tl.Limit)
	}
	// 3 pass and take 3 of the 5.
	if _, _, err := e.svc.ClaimKeyPackagesFor(bg, "c", ids[:3], suite); err != nil {
		t.Fatal(err)
	}
	// 3 more do not fit in the 2 left: refused whole, nothing claimed.
	_, _, err = e.svc.ClaimKeyPackagesFor(bg, "c", ids[3:], suite)
	rl := wantErr[*ds.RateLimitedError](t, err)
	if rl.RetryAfter <= 0 {
		t.Errorf("RetryAfter = %v, want > 0", rl.RetryAfter)
	}
	for _, id := range ids[3:] {
		if n := stock(id); n != 5 {
			t.Errorf("%s: stock %d after a refused batch, want 5", id, n)
		}
	}
	// After RetryAfter (one more claim earned, 3 in all) the same batch
	// passes: so the refusal took nothing from the claimer.
	e.clock.Advance(rl.RetryAfter + time.Millisecond)
	if _, _, err := e.svc.ClaimKeyPackagesFor(bg, "c", ids[3:], suite); err != nil {
		t.Fatalf("after RetryAfter: %v", err)
	}
	// The claimer's budget is spent, for single claims too.
	_, err = e.svc.ClaimKeyPackage(bg, "c", ids[0], suite)
	wantErr[*ds.RateLimitedError](t, err)
	_, _, err = e.svc.ClaimKeyPackagesFor(bg, "c", ids[:1], suite)
	wantErr[*ds.RateLimitedError](t, err)

	// Per target: each was claimed once; c2 claims t0 and t1 a second
	// time, which spends their budgets of 2.
	if _, _, err := e.svc.ClaimKeyPackagesFor(bg, "c2", []string{"t0", "t1"}, suite); err != nil {
		t.Fatal(err)
	}
	// A batch naming t0 again is refused whole: t2 is not claimed and
	// keeps its budget, and c2 keeps its remaining 3 claims.
	_, _, err = e.svc.ClaimKeyPackagesFor(bg, "c2", []string{"t2", "t0"}, suite)
	wantErr[*ds.RateLimitedError](t, err)
	if n := stock("t2"); n != 4 {
		t.Errorf("t2: stock %d after a refused batch, want 4", n)
	}
	if _, _, err := e.svc.ClaimKeyPackagesFor(bg, "c2", []string{"t2", "t3", "t4"}, suite); err != nil {
		t.Fatalf("c2's remaining 3 claims, t2's remaining one: %v", err)
	}
	// Now c2's budget is spent too, and so are the budgets of t0..t4,
	// whoever claims them, singly.
	_, err = e.svc.ClaimKeyPackage(bg, "c2", "t5", suite)
	wantErr[*ds.RateLimitedError](t, err)
	e.register("c3", "c3")
	_, err = e.svc.ClaimKeyPackage(bg, "c3", "t2", suite)
	wantErr[*ds.RateLimitedError](t, err)
	if _, err := e.svc.ClaimKeyPackage(bg, "c3", "t5", suite); err != nil {
		t.Errorf("t5 has one claim left: %v", err)
	}
}

// TestClaimBatchLowWater: targets that a batch leaves low are told as
// after single claims; others are not.
func TestClaimBatchLowWater(t *testing.T) {
	e := newEnv(t, ds.Config{KeyPackageLowWater: 2})
	e.register("c", "c")
	low, plenty := e.register("low", "low"), e.register("plenty", "plenty")
	e.register("empty", "empty") // in the batch, exhausted
	e.upload(low, 2, false)
	e.upload(plenty, 5, false)

	ctx, cancel := contextWithCancel()
	defer cancel()
	chans := map[string]<-chan ds.Event{}
	for _, id := range []string{"low", "plenty"} {
		ch := must(e.svc.Subscribe(ctx, id))
		collect(t, ch, untilCaughtUp)
		chans[id] = ch
	}
	if _, _, err := e.svc.ClaimKeyPackagesFor(bg, "c", []string{"low", "plenty", "empty"}, suite); err != nil {
		t.Fatal(err)
	}
	evs := collect(t, chans["low"], func(evs []ds.Event) bool { return len(evs) > 0 })
	if l := evs[0].KeyPackageLow; l == nil || l.Remaining != 1 || l.LowWater != 2 {
		t.Errorf("low: event %+v, want a low-water event with 1 remaining", evs[0])
	}
	// plenty (4 left, over the mark) hears nothing: a later single claim
	// that takes it to 1 left is the first thing on its channel.
	for i := 0; i < 3; i++ {
		must(e.svc.ClaimKeyPackage(bg, "c", "plenty", suite))
	}
	evs = collect(t, chans["plenty"], func(evs []ds.Event) bool { return len(evs) > 0 })
	if l := evs[0].KeyPackageLow; l == nil || l.Remaining != 1 {
		t.Errorf("plenty: first event %+v, want the low-water event with 1 remaining, nothing from the batch", evs[0])
	}
}
