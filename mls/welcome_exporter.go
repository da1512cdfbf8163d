package mls

import (
	"errors"
)

// This file gives the exporter secret (§8.5) of an epoch to code that
// needs it before it holds a Group of that epoch:
//
//   - a joiner that got a Welcome without the ratchet_tree extension and
//     must fetch the tree from somewhere, encrypted under a key exported
//     from the very epoch it joins (OpenWelcomeEpoch);
//   - a committer that must publish something for the epoch its Commit
//     starts, together with the Commit, before the Delivery Service has
//     accepted it and the Commit is merged (PendingExport,
//     PendingGroupInfo).

// WelcomeEpoch is a joiner's view of the epoch a Welcome starts, taken
// from the Welcome alone: the GroupInfo and the epoch's key schedule. It
// is enough to export secrets of the epoch, not to join: that takes the
// ratchet tree (JoinGroup).
type WelcomeEpoch struct {
	// GroupInfo is the Welcome's GroupInfo. Its GroupContext is
	// authenticated by the confirmation tag, which OpenWelcomeEpoch
	// checked against the key schedule; its signature is not checked,
	// since the signer's key is in the tree.
	GroupInfo *GroupInfo

	es *EpochSecrets
}

// OpenWelcomeEpoch decrypts the Welcome w for the KeyPackage whose
// reference is kpRef (initPriv is its init key, psks the PSKs the Welcome
// may name, as in DecryptWelcome) and runs the key schedule of the new
// epoch (§8) as far as the joiner can without the ratchet tree: the
// GroupInfo's confirmation tag must verify (§12.4.3.1), which binds the
// GroupContext (group id, epoch, tree hash) to the joiner secret.
func OpenWelcomeEpoch(w *Welcome, kpRef KeyPackageRef, initPriv []byte, psks map[string][]byte) (*WelcomeEpoch, error) {
	gs, gi, err := openWelcome(w, kpRef, initPriv, psks)
	if err != nil {
		return nil, err
	}
	// openWelcome checked that every PSK is available.
	list := make([]PSK, len(gs.PSKs))
	for i := range gs.PSKs {
		list[i] = PSK{ID: gs.PSKs[i], Secret: psks[pskLookupKey(&gs.PSKs[i])]}
	}
	cs := gi.GroupContext.CipherSuite
	pskSecret, err := PSKSecret(cs, list)
	if err != nil {
		return nil, err
	}
	ks, err := NewKeySchedule(cs, gs.JoinerSecret, pskSecret)
	if err != nil {
		return nil, err
	}
	es, err := ks.EpochSecrets(&gi.GroupContext)
	if err != nil {
		return nil, err
	}
	if err := es.VerifyConfirmationTag(gi.GroupContext.ConfirmedTranscriptHash, gi.ConfirmationTag); err != nil {
		return nil, err
	}
	return &WelcomeEpoch{GroupInfo: gi, es: es}, nil
}

// GroupID returns the group's ID.
func (e *WelcomeEpoch) GroupID() []byte { return e.GroupInfo.GroupContext.GroupID }

// Epoch returns the epoch the Welcome starts.
func (e *WelcomeEpoch) Epoch() uint64 { return e.GroupInfo.GroupContext.Epoch }

// CipherSuite returns the group's cipher suite.
func (e *WelcomeEpoch) CipherSuite() CipherSuite { return e.GroupInfo.GroupContext.CipherSuite }

// Export returns MLS-Exporter(label, context, length) of the epoch (§8.5),
// the value every member of the epoch gets from Group.Export.
func (e *WelcomeEpoch) Export(label string, context []byte, length int) ([]byte, error) {
	return e.es.Export(label, context, length)
}

// errNoPendingCommit is returned by the Pending methods without a pending
// Commit.
var errNoPendingCommit = errors.New("mls: no pending Commit; make one with Commit first")

// PendingExport is Export for the epoch that the pending Commit starts: the
// value every member gets from Export once it has processed the Commit.
func (g *Group) PendingExport(label string, context []byte, length int) ([]byte, error) {
	if g.pending == nil {
		return nil, errNoPendingCommit
	}
	return g.pending.next.Export(label, context, length)
}

// PendingGroupInfo is GroupInfo for the epoch that the pending Commit
// starts: a GroupInfo of that epoch signed by this member (with the
// ratchet_tree extension if withTree), and that epoch's ratchet tree.
func (g *Group) PendingGroupInfo(withTree bool) (*GroupInfo, *RatchetTree, error) {
	if g.pending == nil {
		return nil, nil, errNoPendingCommit
	}
	next := g.pending.next
	gi, err := next.GroupInfo(withTree)
	if err != nil {
		return nil, nil, err
	}
	return gi, next.Tree(), nil
}
