package server

import (
	"context"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

// LeaveGroup stops the delivery of a group to the caller at once (see
// ds.Service.LeaveGroup). A caller that is not a member, also one that
// left already, gets PermissionDenied with a NotMember detail, as on every
// other call.
func (g *groupService) LeaveGroup(ctx context.Context, req *connect.Request[mlsdsv1.LeaveGroupRequest]) (*connect.Response[mlsdsv1.LeaveGroupResponse], error) {
	s, client := g.s, mustClient(ctx)
	m := req.Msg
	if err := needGroupID(m.GroupId); err != nil {
		return nil, err
	}
	last, err := s.ds.LeaveGroup(ctx, client, m.GroupId, m.RemoveProposal)
	if len(m.RemoveProposal) > 0 {
		s.accepted("leave_proposal", err)
	}
	if err != nil {
		return nil, s.toConnect(ctx, err, m.GroupId)
	}
	return connect.NewResponse(&mlsdsv1.LeaveGroupResponse{LastSeq: last}), nil
}
