package ds_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mlsds/mlsds/ds"
)

// TestOpaqueCreateGroupConsent: the initial members of an opaque group
// besides its creator must each consent with a KeyPackage they published
// here and nobody used yet (last-resort ones excepted), which the group's
// creation marks used. Each refusal leaves no group behind and the
// KeyPackages unused.
func TestOpaqueCreateGroupConsent(t *testing.T) {
	e := newEnv(t, ds.Config{})
	for _, id := range []string{"a", "b", "c", "x"} {
		e.register(id, id)
	}
	n := 0
	create := func(members []string, kps ...[]byte) ([]byte, error) {
		n++
		gid := fmt.Appendf(nil, "consent-%d", n)
		return gid, e.svc.CreateGroup(bg, "a", ds.CreateGroup{GroupID: gid, Mode: ds.ModeOpaque, Members: members, KeyPackages: kps})
	}
	refused := func(gid []byte, err, target error, says string) {
		t.Helper()
		wantIs(t, err, target)
		if says != "" && !strings.Contains(err.Error(), says) {
			t.Errorf("error %q does not say %q", err, says)
		}
		// No group: the creator is no member of it.
		if _, err := e.svc.Roster(bg, "a", gid); err == nil {
			t.Errorf("group %q exists after a refusal", gid)
		}
	}
	claim := func(target string) []byte {
		t.Helper()
		c, err := e.svc.ClaimKeyPackage(bg, "a", target, suite)
		if err != nil {
			t.Fatal(err)
		}
		return c.Data
	}
	e.upload(e.byID["b"], 3, true)
	e.upload(e.byID["c"], 2, false)
	e.upload(e.byID["x"], 1, false)

	// No KeyPackage at all, or one for b only.
	gid, err := create([]string{"b"})
	refused(gid, err, ds.ErrPermissionDenied, "claim one and pass it in key_packages")
	kpB := claim("b")
	gid, err = create([]string{"b", "c"}, kpB)
	refused(gid, err, ds.ErrPermissionDenied, `initial member "c"`)
	// A KeyPackage of someone not among the members.
	kpX := claim("x")
	gid, err = create([]string{"b"}, kpB, kpX)
	refused(gid, err, ds.ErrInvalidArgument, `"x"`)
	// Two of one member.
	gid, err = create([]string{"b"}, kpB, claim("b"))
	refused(gid, err, ds.ErrInvalidArgument, "2 KeyPackages")
	// A valid KeyPackage of b that b never published here is no consent.
	_, forged := e.byID["b"].keyPackage(t, e.clock.Now())
	gid, err = create([]string{"b"}, forged)
	refused(gid, err, ds.ErrPermissionDenied, "not one that \"b\" published")
	// Not a KeyPackage at all.
	gid, err = create([]string{"b"}, []byte("garbage"))
	wantErr[*ds.InvalidMessageError](t, err)

	// Consent given: the group is created and the KeyPackages used.
	kpC := claim("c")
	gid, err = create([]string{"b", "c"}, kpB, kpC)
	if err != nil {
		t.Fatalf("CreateGroup with consent: %v", err)
	}
	if roster, err := e.svc.Roster(bg, "c", gid); err != nil || fmt.Sprint(roster) != "[a b c]" {
		t.Fatalf("roster %v (%v), want [a b c]", roster, err)
	}
	// Used once, a KeyPackage is no consent for another group.
	gid, err = create([]string{"c"}, kpC)
	refused(gid, err, ds.ErrKeyPackageUsed, "")

	// A last-resort KeyPackage may consent again and again.
	claim("b") // the last fresh one
	lr, err := e.svc.ClaimKeyPackage(bg, "a", "b", suite)
	if err != nil || !lr.LastResort {
		t.Fatalf("claim: %+v, %v; want b's last-resort KeyPackage", lr, err)
	}
	for range 2 {
		if _, err := create([]string{"b"}, lr.Data); err != nil {
			t.Fatalf("CreateGroup with a last-resort KeyPackage: %v", err)
		}
	}
}
