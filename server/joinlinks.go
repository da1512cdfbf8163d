package server

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
)

// CreateJoinLink makes a join link of a transparent group (members only).
func (g *groupService) CreateJoinLink(ctx context.Context, req *connect.Request[mlsdsv1.CreateJoinLinkRequest]) (*connect.Response[mlsdsv1.CreateJoinLinkResponse], error) {
	s, client := g.s, mustClient(ctx)
	m := req.Msg
	if err := needGroupID(m.GroupId); err != nil {
		return nil, err
	}
	l, err := s.ds.CreateJoinLink(ctx, client, m.GroupId, time.Duration(m.TtlSeconds)*time.Second)
	if err != nil {
		return nil, s.toConnect(ctx, err, m.GroupId)
	}
	return connect.NewResponse(&mlsdsv1.CreateJoinLinkResponse{
		LinkId:    l.ID,
		JoinToken: l.Token,
		ExpiresAt: timestamppb.New(l.ExpiresAt),
	}), nil
}

// RevokeJoinLink ends a join link at once (members only).
func (g *groupService) RevokeJoinLink(ctx context.Context, req *connect.Request[mlsdsv1.RevokeJoinLinkRequest]) (*connect.Response[mlsdsv1.RevokeJoinLinkResponse], error) {
	s, client := g.s, mustClient(ctx)
	m := req.Msg
	if err := needGroupID(m.GroupId); err != nil {
		return nil, err
	}
	if err := s.ds.RevokeJoinLink(ctx, client, m.GroupId, m.LinkId); err != nil {
		return nil, s.toConnect(ctx, err, m.GroupId)
	}
	return connect.NewResponse(&mlsdsv1.RevokeJoinLinkResponse{}), nil
}

// ListJoinLinks lists the group's live join links (members only).
func (g *groupService) ListJoinLinks(ctx context.Context, req *connect.Request[mlsdsv1.ListJoinLinksRequest]) (*connect.Response[mlsdsv1.ListJoinLinksResponse], error) {
	s, client := g.s, mustClient(ctx)
	m := req.Msg
	if err := needGroupID(m.GroupId); err != nil {
		return nil, err
	}
	ls, err := s.ds.JoinLinks(ctx, client, m.GroupId)
	if err != nil {
		return nil, s.toConnect(ctx, err, m.GroupId)
	}
	res := &mlsdsv1.ListJoinLinksResponse{Links: make([]*mlsdsv1.JoinLink, len(ls))}
	for i, l := range ls {
		res.Links[i] = &mlsdsv1.JoinLink{
			LinkId:    l.ID,
			CreatedBy: l.CreatedBy,
			CreatedAt: timestamppb.New(l.CreatedAt),
			ExpiresAt: timestamppb.New(l.ExpiresAt),
		}
	}
	return connect.NewResponse(res), nil
}
