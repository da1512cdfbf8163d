package client

import (
	"errors"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// The ReInit group_id of an opaque group's Commit (ds/roster_ad.go): the
// server links as the successor of a closed opaque group only the group
// its last Commit declares (ds/successor.go), so the members refuse a
// Commit whose declared id is not the one of the ReInit it commits, or
// that declares one without committing a ReInit. Mallory sends such a
// valid Commit; alice and bob refuse it (ErrRosterMismatch naming the
// ReInit), rejoin and talk on.
func TestOpaqueReInitDeclarationMismatch(t *testing.T) {
	for _, tc := range []struct {
		name     string
		reinit   bool   // the Commit carries a ReInit of group "successor"
		declared []byte // the ReInit group_id it declares
	}{
		{"ReInit declared with another id", true, []byte("mallory's group")},
		{"ReInit not declared", true, nil},
		{"declared without a ReInit", false, []byte("successor")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, alice, bob, mallory, gid, mst := opaqueWithMallory(t)
			st, err := cloneState(mst)
			if err != nil {
				t.Fatal(err)
			}
			opts := mls.CommitOptions{WireFormat: mls.WireFormatPublicMessage,
				AuthenticatedData: marshalDeclaration(ds.RosterChange{ReInitGroupID: tc.declared})}
			if tc.reinit {
				opts.ReInit = &mls.ReInit{GroupID: []byte("successor"), Version: mls.ProtocolVersionMLS10, CipherSuite: mallory.cs}
			}
			msg, _, err := st.CommitMessage(opts)
			if err != nil {
				t.Fatal(err)
			}
			_, blob, err := SealPendingRemoteTree(st)
			if err != nil {
				t.Fatal(err)
			}
			wire, err := mlsMessage(msg)
			if err != nil {
				t.Fatal(err)
			}
			sendOpaqueCommit(t, mallory, wire, mst.Epoch(), blob, nil)
			for id, ev := range recovered(t, gid, alice, bob) {
				if !errors.Is(ev.Err, ErrRosterMismatch) {
					t.Errorf("%s refused mallory's Commit for another reason: %v", id, ev.Err)
				}
			}
		})
	}
}
