package client

import (
	"bytes"
	"testing"
)

// TestProposeUpdate: an Update proposal is committed by another member's
// client on its own (never by the proposer, which may not commit its own
// Update, §12.2); afterwards the proposer's leaf has the new key, every
// member agrees on the epoch, and the proposer, which kept the new leaf's
// private key, still follows the group.
func TestProposeUpdate(t *testing.T) {
	e := startEnv(t)
	alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
	g := group3(t, e, GroupOptions{}, alice, bob, carol)
	gid := g.ID()
	ctx := ctxT(t)
	all := []*tclient{alice, bob, carol}

	for round, proposer := range []*tclient{bob, alice} { // alice has the lowest leaf: bob commits hers
		before := sameEpoch(t, gid, all...)
		pg := proposer.Group(gid)
		oldKey := leafKey(t, pg)
		r, err := pg.ProposeUpdate(ctx)
		if err != nil {
			t.Fatalf("round %d: ProposeUpdate: %v", round, err)
		}
		if r.Epoch != before {
			t.Errorf("round %d: proposal receipt for epoch %d, want %d", round, r.Epoch, before)
		}
		for _, c := range all {
			waitEpoch(t, c, gid, before+1)
		}
		sameEpoch(t, gid, all...)
		for _, ev := range carol.snapshot() {
			if ev.Kind == EventEpoch && bytes.Equal(ev.GroupID, gid) && ev.Epoch == before+1 && ev.Sender == proposer.ID() {
				t.Errorf("round %d: %s committed its own Update proposal", round, proposer.ID())
			}
		}
		if bytes.Equal(leafKey(t, pg), oldKey) {
			t.Errorf("round %d: %s's leaf kept its encryption key after its Update was committed", round, proposer.ID())
		}
		exchange(t, gid, 3, "after-update", all...)
	}
}

// leafKey is the encryption key of g's own leaf.
func leafKey(t *testing.T, g *Group) []byte {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	return bytes.Clone(g.st.Tree().Leaf(g.st.Self()).EncryptionKey)
}
