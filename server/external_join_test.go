package server_test

import (
	"bytes"
	"context"
	"testing"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// proposeAdd builds a Proposal of m, a PublicMessage in g's current epoch,
// that adds kp.
func (m *member) proposeAdd(g *tgroup, kp *mls.KeyPackage) []byte {
	m.t.Helper()
	gc := g.st.GroupContext()
	ac := &mls.AuthenticatedContent{
		WireFormat: mls.WireFormatPublicMessage,
		Content: mls.FramedContent{
			GroupID: gc.GroupID, Epoch: gc.Epoch,
			Sender:      mls.Sender{SenderType: mls.SenderTypeMember, LeafIndex: g.leaf},
			ContentType: mls.ContentTypeProposal,
			Proposal:    &mls.Proposal{ProposalType: mls.ProposalTypeAdd, Add: &mls.Add{KeyPackage: *kp}},
		},
	}
	if err := ac.Sign(suite, m.sigPriv, &gc); err != nil {
		m.t.Fatal(err)
	}
	pm := &mls.PublicMessage{Content: ac.Content, Auth: ac.Auth, MembershipTag: randBytes(suite.HashSize())}
	return mlsMessage(m.t, &mls.MLSMessage{WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm})
}

// TestGetGroupInfoExternalJoin: a registered client that is not a member
// reads what it needs for an external Commit (§12.4.3.2) of a transparent
// group: the GroupInfo, the ratchet tree, its tree hash and the Proposals
// of the epoch so far, when the ExternalJoin policy lets it in. By
// default (links) it needs a join link's token; with members-only even a
// token does not help; with any it needs none. Refused, it gets NotMember.
func TestGetGroupInfoExternalJoin(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		policy                ds.ExternalJoinPolicy
		withoutLink, withLink bool // whether bob may read
	}{
		{"links", ds.ExternalJoinLinks, false, true},
		{"members", ds.ExternalJoinMembersOnly, false, false},
		{"any", ds.ExternalJoinAny, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, func(c *ds.Config, _ *server.Config) { c.ExternalJoin = tc.policy })
			alice, bob, carol := e.client("alice"), e.client("bob"), e.client("carol")
			ctx := context.Background()
			gid := groupID("external")
			g0, gi, tree := alice.newTransparentGroup(gid)
			if _, err := alice.groups.CreateGroup(ctx, connect.NewRequest(&mlsdsv1.CreateGroupRequest{
				GroupId: gid, Mode: mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT, GroupInfo: gi, RatchetTree: tree})); err != nil {
				t.Fatalf("CreateGroup: %v", err)
			}
			prop := alice.proposeAdd(g0, mustKP(t, alice, carol))
			alice.mustSend(prop)

			check := func(token string, may bool) {
				t.Helper()
				info, err := bob.groups.GetGroupInfo(ctx, connect.NewRequest(&mlsdsv1.GetGroupInfoRequest{GroupId: gid, JoinToken: token}))
				if !may {
					ce := connectErr(t, err, connect.CodePermissionDenied)
					if d := detail[mlsdsv1.NotMember](t, ce); !bytes.Equal(d.GroupId, gid) {
						t.Fatalf("NotMember names group %q", d.GroupId)
					}
					return
				}
				if err != nil {
					t.Fatalf("GetGroupInfo by a non-member (token %v): %v", token != "", err)
				}
				gc := g0.st.GroupContext()
				if info.Msg.Epoch != 0 || !bytes.Equal(info.Msg.GroupInfo, gi) || !bytes.Equal(info.Msg.RatchetTree, tree) ||
					!bytes.Equal(info.Msg.TreeHash, gc.TreeHash) {
					t.Fatalf("GetGroupInfo: epoch %d, GroupInfo, tree or tree hash differ", info.Msg.Epoch)
				}
				if len(info.Msg.Proposals) != 1 || !bytes.Equal(info.Msg.Proposals[0], prop) {
					t.Fatalf("GetGroupInfo proposals: %d, want the Proposal alice sent", len(info.Msg.Proposals))
				}
			}
			check("", tc.withoutLink)
			check("not a token", tc.withoutLink)
			link, err := alice.groups.CreateJoinLink(ctx, connect.NewRequest(&mlsdsv1.CreateJoinLinkRequest{GroupId: gid}))
			if err != nil {
				t.Fatalf("CreateJoinLink: %v", err)
			}
			check(link.Msg.JoinToken, tc.withLink)
			// A revoked link lets nobody in.
			if _, err := alice.groups.RevokeJoinLink(ctx, connect.NewRequest(&mlsdsv1.RevokeJoinLinkRequest{GroupId: gid, LinkId: link.Msg.LinkId})); err != nil {
				t.Fatalf("RevokeJoinLink: %v", err)
			}
			check(link.Msg.JoinToken, tc.withoutLink)
		})
	}
}
