package ds

import (
	"errors"
	"fmt"
	"slices"

	"golang.org/x/crypto/cryptobyte"

	"github.com/mlsds/mlsds/mls"
)

// Roster declarations. The Delivery Service cannot read an opaque group's
// Commits, so it learns who joins and leaves from the committer. To tie
// that to the signed Commit, the committer states it in the Commit's
// authenticated_data (RFC 9420 §6), which the Service reads in the clear
// (a PublicMessage's FramedContent, a PrivateMessage's header) and which
// the Commit's signature and, for a PrivateMessage, its AEAD cover:
//
//	struct {
//	    opaque label<V>;       /* "mlsds roster v1" */
//	    ClientID added<V>;     /* client ids that are members after the Commit */
//	    ClientID removed<V>;   /* client ids that are no members after it */
//	    opaque reinit_group_id<V>; /* the group_id of the ReInit it commits, or empty */
//	} RosterDeclaration;
//	opaque ClientID<V>;
//
// with <V> the variable-length vectors of RFC 9420 §2.1.2. The Service
// applies it to the roster; the members check it against what the Commit
// does to the tree, and refuse a Commit whose declaration does not match
// (client/opaque_recovery.go): a committer cannot drop a member from the
// Service's roster, or let a stranger read the group's ciphertexts, unless
// every member sees it. Besides the clients the Commit adds and removes, a
// declaration may name members the tree holds that the roster lost
// (added) and clients on the roster that the tree does not hold
// (removed): that is how members contest the roster a lying Commit left
// (see RosterChange). An empty authenticated_data declares no change.
//
// A Commit that carries a ReInit proposal (RFC 9420 §11.2) also states the
// proposal's group_id, which the members check like the roster (they
// refuse the Commit when it differs or is missing) and the Service reads
// from the Commit that started the group's last epoch when a group names
// the closed one as its predecessor (successor.go): the one successor
// link goes to the group the ReInit names, not to one a member chose.

// RosterLabel starts every roster declaration.
const RosterLabel = "mlsds roster v1"

// maxDeclaredClients bounds each list of a declaration.
const maxDeclaredClients = 1 << 16

// ErrRosterDeclaration is wrapped by the errors of ParseRosterDeclaration.
var ErrRosterDeclaration = errors.New("ds: malformed roster declaration")

// RosterChange is the roster change a Commit of an opaque group declares.
// Added lists client ids that are members after the Commit: the clients
// it adds, and members of the tree the Service's roster lacks (restored).
// Removed lists client ids that are not: the clients it removes, and
// clients on the roster the tree does not hold (evicted). A resync
// external Commit, which replaces the committer's own leaf, is neither.
type RosterChange struct {
	Added   []string
	Removed []string
	// ReInitGroupID is the group_id of the ReInit proposal the Commit
	// carries (§11.2), nil if it carries none.
	ReInitGroupID []byte
}

// Empty reports whether r declares nothing.
func (r RosterChange) Empty() bool {
	return len(r.Added) == 0 && len(r.Removed) == 0 && len(r.ReInitGroupID) == 0
}

// MarshalDeclaration returns r as a Commit's authenticated_data, its lists
// sorted and without duplicates.
func (r RosterChange) MarshalDeclaration() []byte {
	b := cryptobyte.NewBuilder(nil)
	addVarOpaque(b, []byte(RosterLabel))
	for _, list := range [][]string{dedupeSorted(r.Added), dedupeSorted(r.Removed)} {
		inner := cryptobyte.NewBuilder(nil)
		for _, id := range list {
			addVarOpaque(inner, []byte(id))
		}
		addVarOpaque(b, inner.BytesOrPanic())
	}
	addVarOpaque(b, r.ReInitGroupID)
	return b.BytesOrPanic()
}

// ParseRosterDeclaration reads the roster declaration of a Commit's
// authenticated_data ad. An empty ad declares nothing (ok false). Any other
// ad must be a declaration: else the error wraps ErrRosterDeclaration.
func ParseRosterDeclaration(ad []byte) (r RosterChange, ok bool, err error) {
	if len(ad) == 0 {
		return RosterChange{}, false, nil
	}
	bad := func(what string) (RosterChange, bool, error) {
		return RosterChange{}, false, fmt.Errorf("%w: %s; an opaque group's Commit carries in its authenticated_data nothing, or the %q declaration of its roster change", ErrRosterDeclaration, what, RosterLabel)
	}
	s := cryptobyte.String(ad)
	var label, added, removed, reinit []byte
	if !readVarOpaque(&s, &label) || string(label) != RosterLabel {
		return bad("it does not start with the label")
	}
	if !readVarOpaque(&s, &added) || !readVarOpaque(&s, &removed) || !readVarOpaque(&s, &reinit) || !s.Empty() {
		return bad("it does not decode")
	}
	for _, l := range []struct {
		data []byte
		out  *[]string
	}{{added, &r.Added}, {removed, &r.Removed}} {
		ls := cryptobyte.String(l.data)
		for !ls.Empty() {
			var id []byte
			if !readVarOpaque(&ls, &id) || len(id) == 0 {
				return bad("a client id does not decode or is empty")
			}
			if len(*l.out) == maxDeclaredClients {
				return bad("it names too many clients")
			}
			*l.out = append(*l.out, string(id))
		}
	}
	for _, id := range r.Added {
		if slices.Contains(r.Removed, id) {
			return bad(fmt.Sprintf("it names %q both added and removed", id))
		}
	}
	r.Added, r.Removed = dedupeSorted(r.Added), dedupeSorted(r.Removed)
	if len(reinit) > 0 {
		r.ReInitGroupID = slices.Clone(reinit)
	}
	return r, true, nil
}

// CommitAuthenticatedData returns the authenticated_data of a Commit in
// its clear form: a PublicMessage's or a PrivateMessage's.
func CommitAuthenticatedData(m *mls.MLSMessage) []byte {
	switch {
	case m.PublicMessage != nil:
		return m.PublicMessage.Content.AuthenticatedData
	case m.PrivateMessage != nil:
		return m.PrivateMessage.AuthenticatedData
	}
	return nil
}

// addVarOpaque writes data as opaque<V> (RFC 9420 §2.1.2).
func addVarOpaque(b *cryptobyte.Builder, data []byte) {
	n := len(data)
	switch {
	case n < 1<<6:
		b.AddUint8(uint8(n))
	case n < 1<<14:
		b.AddUint16(uint16(n) | 0x4000)
	default:
		b.AddUint32(uint32(n) | 0x80000000)
	}
	b.AddBytes(data)
}

// readVarOpaque reads an opaque<V>, refusing a length not in its shortest
// form (§2.1.2).
func readVarOpaque(s *cryptobyte.String, out *[]byte) bool {
	var first uint8
	if !s.ReadUint8(&first) {
		return false
	}
	n := uint32(first & 0x3f)
	switch first >> 6 {
	case 0:
	case 1:
		var lo uint8
		if !s.ReadUint8(&lo) {
			return false
		}
		n = n<<8 | uint32(lo)
		if n < 1<<6 {
			return false
		}
	case 2:
		var lo [3]byte
		var b []byte
		if !s.ReadBytes(&b, 3) {
			return false
		}
		copy(lo[:], b)
		n = n<<24 | uint32(lo[0])<<16 | uint32(lo[1])<<8 | uint32(lo[2])
		if n < 1<<14 {
			return false
		}
	default:
		return false
	}
	return s.ReadBytes(out, int(n))
}
