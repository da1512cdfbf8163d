package client

import "github.com/mlsds/mlsds/mls"

// defaultGroupInfoTreeLimit is Config.GroupInfoTreeLimit's default.
const defaultGroupInfoTreeLimit = 64 << 10

// greaseKeyPackages makes the client's KeyPackages, and with them its
// leaves, carry GREASE values (RFC 9420 §13.5), so that every peer meets
// unknown values from it and a peer that wrongly refuses them shows it.
var greaseKeyPackages = mls.KeyPackageOptions{Grease: true,
	// Members with x509 credentials (RFC 9420 §5.3) can join this client's
	// groups: the default CredentialValidator checks them (validate.go).
	CredentialTypes: []mls.CredentialType{mls.CredentialTypeX509}}

// commitGroupInfo returns the GroupInfo of st, the state a Commit of this
// client starts, to send with the Commit: with the ratchet_tree extension
// while the encoded tree is at most Config.GroupInfoTreeLimit bytes, so a
// joiner of a small group needs nothing else, and without it above, where
// joiners fetch the tree (or parts of it) from the Delivery Service. Like
// the client's KeyPackages, it carries a GREASE extension (RFC 9420 §13.5).
func (c *Client) commitGroupInfo(st *mls.Group) (*mls.GroupInfo, error) {
	opts := mls.GroupInfoOptions{Grease: true}
	if limit := c.cfg.GroupInfoTreeLimit; limit > 0 {
		tree, err := st.Tree().MarshalBinary()
		if err != nil {
			return nil, err
		}
		opts.RatchetTree = len(tree) <= limit
	}
	return st.GroupInfoWith(opts)
}
