package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"net"
	"net/http"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
)

// Deniable groups (ds/deniable.go). The calls below may carry a membership
// proof in the Mlsds-Membership header instead of a session: the
// authenticator lets such a call through without a client, and the
// handler, finding no client in the context, verifies the proof. Nothing
// here logs or keeps the MAC; the observer logs no client for these calls,
// since there is none.

// membershipProcedures are the calls that take a membership proof.
var membershipProcedures = map[string]bool{
	mlsdsv1connect.GroupServiceSendProcedure:              true,
	mlsdsv1connect.GroupServiceSendCommitBundleProcedure:  true,
	mlsdsv1connect.GroupServiceFetchProcedure:             true,
	mlsdsv1connect.GroupServiceGetGroupInfoProcedure:      true,
	mlsdsv1connect.GroupServicePutRemoteTreeProcedure:     true,
	mlsdsv1connect.GroupServiceGetRemoteTreeProcedure:     true,
	mlsdsv1connect.DeliveryServiceSubscribeGroupProcedure: true,
}

// membershipCall reports whether a call goes without a session because it
// carries a membership proof instead: a procedure that takes one, a
// Mlsds-Membership header, and no Authorization header.
func membershipCall(procedure string, header interface{ Get(string) string }) bool {
	return membershipProcedures[procedure] && header.Get("Authorization") == "" && header.Get(ds.MembershipHeader) != ""
}

// connKey names the caller's connection for the limits of deniable calls:
// its remote address without the port, so that new connections from one
// host share one budget.
func connKey(peer string) string {
	if host, _, err := net.SplitHostPort(peer); err == nil {
		return host
	}
	return peer
}

// membershipProof reads the proof of a call: the header, and the hash of
// the request message's deterministic encoding.
func membershipProof(procedure string, header http.Header, peer string, msg proto.Message) (ds.MembershipProof, error) {
	epoch, ts, nonce, mac, err := ds.ParseMembershipHeader(header.Get(ds.MembershipHeader))
	if err != nil {
		return ds.MembershipProof{}, connect.NewError(connect.CodeInvalidArgument, err)
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return ds.MembershipProof{}, connect.NewError(connect.CodeInvalidArgument, errors.New("the request cannot be encoded"))
	}
	h := sha256.Sum256(body)
	return ds.MembershipProof{
		Procedure: procedure,
		Epoch:     epoch,
		UnixMilli: ts,
		Nonce:     nonce,
		MAC:       mac,
		BodyHash:  h[:],
		Conn:      connKey(peer),
	}, nil
}

// proofOf is membershipProof for a unary call.
func proofOf[T any](req *connect.Request[T]) (ds.MembershipProof, error) {
	msg, ok := any(req.Msg).(proto.Message)
	if !ok {
		return ds.MembershipProof{}, connect.NewError(connect.CodeInternal, errors.New("not a protobuf request"))
	}
	return membershipProof(req.Spec().Procedure, req.Header(), req.Peer().Addr, msg)
}

func (g *groupService) sendDeniable(ctx context.Context, req *connect.Request[mlsdsv1.SendRequest]) (*connect.Response[mlsdsv1.SendResponse], error) {
	s := g.s
	pr, err := proofOf(req)
	if err != nil {
		return nil, err
	}
	if req.Msg.JoinToken != "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("deniable groups have no join links: leave join_token empty"))
	}
	r, err := s.ds.SendDeniable(ctx, pr, req.Msg.Message)
	s.accepted("send", err)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	return connect.NewResponse(&mlsdsv1.SendResponse{Receipt: receipt(r)}), nil
}

func (g *groupService) sendCommitBundleDeniable(ctx context.Context, req *connect.Request[mlsdsv1.SendCommitBundleRequest]) (*connect.Response[mlsdsv1.SendCommitBundleResponse], error) {
	s := g.s
	pr, err := proofOf(req)
	if err != nil {
		return nil, err
	}
	b := commitBundle(req.Msg)
	b.NextMembershipKey = req.Msg.NextMembershipKey
	r, err := s.ds.SendCommitBundleDeniable(ctx, pr, b)
	s.accepted("commit_bundle", err)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	return connect.NewResponse(&mlsdsv1.SendCommitBundleResponse{Receipt: receipt(r)}), nil
}

func (g *groupService) fetchDeniable(ctx context.Context, req *connect.Request[mlsdsv1.FetchRequest]) (*connect.Response[mlsdsv1.FetchResponse], error) {
	s := g.s
	m := req.Msg
	if err := needGroupID(m.GroupId); err != nil {
		return nil, err
	}
	pr, err := proofOf(req)
	if err != nil {
		return nil, err
	}
	reserved := s.reserveAnswerBytes(ctx, int64(s.ds.Config().FetchMaxBytes))
	envs, from, err := s.ds.FetchDeniable(ctx, pr, m.GroupId, m.FromSeq, int(m.Limit), int(reserved))
	if err != nil {
		holdAnswerBytes(ctx, -reserved)
		return nil, s.toConnect(ctx, err, m.GroupId)
	}
	return connect.NewResponse(fetchPage(ctx, envs, from, reserved)), nil
}

func (g *groupService) getGroupInfoDeniable(ctx context.Context, req *connect.Request[mlsdsv1.GetGroupInfoRequest]) (*connect.Response[mlsdsv1.GetGroupInfoResponse], error) {
	s := g.s
	if err := needGroupID(req.Msg.GroupId); err != nil {
		return nil, err
	}
	pr, err := proofOf(req)
	if err != nil {
		return nil, err
	}
	gi, err := s.ds.GroupInfoDeniable(ctx, pr, req.Msg.GroupId)
	if err != nil {
		return nil, s.toConnect(ctx, err, req.Msg.GroupId)
	}
	return connect.NewResponse(&mlsdsv1.GetGroupInfoResponse{GroupId: gi.GroupID, Mode: protoMode(gi.Mode), Epoch: gi.Epoch}), nil
}

func (g *groupService) putRemoteTreeDeniable(ctx context.Context, req *connect.Request[mlsdsv1.PutRemoteTreeRequest]) (*connect.Response[mlsdsv1.PutRemoteTreeResponse], error) {
	s := g.s
	m := req.Msg
	if err := needGroupID(m.GroupId); err != nil {
		return nil, err
	}
	if m.RemoteTree == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("remote_tree is missing: give the epoch and the encrypted GroupInfo and ratchet tree"))
	}
	pr, err := proofOf(req)
	if err != nil {
		return nil, err
	}
	if err := s.ds.PutRemoteTreeDeniable(ctx, pr, m.GroupId, ds.RemoteTree{Epoch: m.RemoteTree.Epoch, Blob: m.RemoteTree.Blob}); err != nil {
		return nil, s.toConnect(ctx, err, m.GroupId)
	}
	return connect.NewResponse(&mlsdsv1.PutRemoteTreeResponse{}), nil
}

func (g *groupService) getRemoteTreeDeniable(ctx context.Context, req *connect.Request[mlsdsv1.GetRemoteTreeRequest]) (*connect.Response[mlsdsv1.GetRemoteTreeResponse], error) {
	s := g.s
	if err := needGroupID(req.Msg.GroupId); err != nil {
		return nil, err
	}
	pr, err := proofOf(req)
	if err != nil {
		return nil, err
	}
	r, err := s.ds.RemoteTreesDeniable(ctx, pr, req.Msg.GroupId)
	if err != nil {
		return nil, s.toConnect(ctx, err, req.Msg.GroupId)
	}
	return connect.NewResponse(remoteTrees(r)), nil
}
