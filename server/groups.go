package server

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
)

// groupService implements mlsds.v1.GroupService.
type groupService struct{ s *Server }

const maxAcksPerCall = 1000

func receipt(r ds.Receipt) *mlsdsv1.Receipt {
	return &mlsdsv1.Receipt{GroupId: r.GroupID, GroupSeq: r.GroupSeq, Epoch: r.Epoch, AcceptedAt: timestamppb.New(r.AcceptedAt)}
}

func envelope(e *ds.Envelope) *mlsdsv1.Envelope {
	return &mlsdsv1.Envelope{
		GroupId:        e.GroupID,
		GroupSeq:       e.GroupSeq,
		Epoch:          e.Epoch,
		SenderClientId: e.Sender,
		ContentType:    mlsdsv1.ContentType(e.ContentType),
		Message:        e.Data,
		AcceptedAt:     timestamppb.New(e.AcceptedAt),
	}
}

func modeOf(m mlsdsv1.GroupMode) (ds.Mode, error) {
	switch m {
	case mlsdsv1.GroupMode_GROUP_MODE_UNSPECIFIED, mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT:
		return ds.ModeTransparent, nil
	case mlsdsv1.GroupMode_GROUP_MODE_OPAQUE:
		return ds.ModeOpaque, nil
	case mlsdsv1.GroupMode_GROUP_MODE_DENIABLE:
		return ds.ModeDeniable, nil
	}
	return 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("unknown group mode %d", m))
}

func protoMode(m ds.Mode) mlsdsv1.GroupMode {
	if m == ds.ModeOpaque {
		return mlsdsv1.GroupMode_GROUP_MODE_OPAQUE
	}
	if m == ds.ModeDeniable {
		return mlsdsv1.GroupMode_GROUP_MODE_DENIABLE
	}
	return mlsdsv1.GroupMode_GROUP_MODE_TRANSPARENT
}

func needGroupID(id []byte) error {
	if len(id) == 0 {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("group_id is empty"))
	}
	return nil
}

func (g *groupService) CreateGroup(ctx context.Context, req *connect.Request[mlsdsv1.CreateGroupRequest]) (*connect.Response[mlsdsv1.CreateGroupResponse], error) {
	s, client := g.s, mustClient(ctx)
	m := req.Msg
	mode, err := modeOf(m.Mode)
	if err != nil {
		return nil, err
	}
	if err := needGroupID(m.GroupId); err != nil {
		return nil, err
	}
	for _, id := range m.Members {
		if err := checkPrintable(id); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("member id %w", err))
		}
	}
	err = s.ds.CreateGroup(ctx, client, ds.CreateGroup{
		GroupID:     m.GroupId,
		Mode:        mode,
		GroupInfo:   m.GroupInfo,
		RatchetTree: m.RatchetTree,
		Members:     m.Members,
		Epoch:       m.Epoch,
		KeyPackages: m.KeyPackages,
		Welcome:     m.Welcome,
		Predecessor: m.PredecessorGroupId,

		MembershipKey: m.MembershipKey,
	})
	if err != nil {
		return nil, s.toConnect(ctx, err, m.GroupId)
	}
	return connect.NewResponse(&mlsdsv1.CreateGroupResponse{GroupId: m.GroupId}), nil
}

// accepted counts the outcome of a submitted message.
func (s *Server) accepted(kind string, err error) {
	if err == nil {
		s.metrics.messagesAccepted.WithLabelValues(kind).Inc()
		return
	}
	reason := rejectReason(err)
	s.metrics.messagesRejected.WithLabelValues(reason).Inc()
	if reason == "wrong_epoch" {
		s.metrics.commitConflicts.Inc()
	}
}

func (g *groupService) Send(ctx context.Context, req *connect.Request[mlsdsv1.SendRequest]) (*connect.Response[mlsdsv1.SendResponse], error) {
	if _, ok := ClientID(ctx); !ok {
		return g.sendDeniable(ctx, req) // deniable.go
	}
	s, client := g.s, mustClient(ctx)
	r, err := s.ds.SendWithJoinToken(ctx, client, req.Msg.Message, req.Msg.JoinToken)
	s.accepted("send", err)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	return connect.NewResponse(&mlsdsv1.SendResponse{Receipt: receipt(r)}), nil
}

func (g *groupService) SendCommitBundle(ctx context.Context, req *connect.Request[mlsdsv1.SendCommitBundleRequest]) (*connect.Response[mlsdsv1.SendCommitBundleResponse], error) {
	if _, ok := ClientID(ctx); !ok {
		return g.sendCommitBundleDeniable(ctx, req) // deniable.go
	}
	s, client := g.s, mustClient(ctx)
	r, err := s.ds.SendCommitBundle(ctx, client, commitBundle(req.Msg))
	s.accepted("commit_bundle", err)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	return connect.NewResponse(&mlsdsv1.SendCommitBundleResponse{Receipt: receipt(r)}), nil
}

func (g *groupService) Fetch(ctx context.Context, req *connect.Request[mlsdsv1.FetchRequest]) (*connect.Response[mlsdsv1.FetchResponse], error) {
	if _, ok := ClientID(ctx); !ok {
		return g.fetchDeniable(ctx, req) // deniable.go
	}
	s, client := g.s, mustClient(ctx)
	m := req.Msg
	if err := needGroupID(m.GroupId); err != nil {
		return nil, err
	}
	// ds.Fetch applies the default for 0 and refuses a limit above the
	// maximum, or a from_seq no group reaches, with InvalidArgument.
	// The page takes what is left of the bytes all answers being written
	// may hold (one message at least).
	reserved := s.reserveAnswerBytes(ctx, int64(s.ds.Config().FetchMaxBytes))
	envs, err := s.ds.FetchWithin(ctx, client, m.GroupId, m.FromSeq, int(m.Limit), int(reserved))
	if err != nil {
		holdAnswerBytes(ctx, -reserved)
		return nil, s.toConnect(ctx, err, m.GroupId)
	}
	return connect.NewResponse(fetchPage(ctx, envs, max(m.FromSeq, 1), reserved)), nil
}

// commitBundle is the ds.CommitBundle of m, but for its next membership
// key (deniable groups only).
func commitBundle(m *mlsdsv1.SendCommitBundleRequest) ds.CommitBundle {
	return ds.CommitBundle{
		Commit:     m.Commit,
		Welcome:    m.Welcome,
		GroupInfo:  m.GroupInfo,
		Added:      m.Added,
		Removed:    m.Removed,
		RemoteTree: bundleRemoteTree(m.RemoteTree),
		JoinToken:  m.JoinToken,
	}
}

// fetchPage is the Fetch answer holding envs, with next_seq from when envs
// is empty. The page is within the Fetch budget (ds.Config.FetchMaxBytes),
// reserved bytes of which were set aside; its write has a deadline
// (flush.go), and until it is out it counts in mlsds_fetch_buffered_bytes.
func fetchPage(ctx context.Context, envs []ds.Envelope, from uint64, reserved int64) *mlsdsv1.FetchResponse {
	res := &mlsdsv1.FetchResponse{Messages: make([]*mlsdsv1.Envelope, len(envs)), NextSeq: from}
	var size int64
	for i := range envs {
		res.Messages[i] = envelope(&envs[i])
		res.NextSeq = envs[i].GroupSeq + 1
		size += int64(len(envs[i].Data))
	}
	holdAnswerBytes(ctx, size-reserved)
	return res
}

func (g *groupService) Ack(ctx context.Context, req *connect.Request[mlsdsv1.AckRequest]) (*connect.Response[mlsdsv1.AckResponse], error) {
	s, client := g.s, mustClient(ctx)
	if len(req.Msg.Cursors) > maxAcksPerCall {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%d cursors in one call; send at most %d", len(req.Msg.Cursors), maxAcksPerCall))
	}
	for _, c := range req.Msg.Cursors {
		if err := needGroupID(c.GroupId); err != nil {
			return nil, err
		}
		if err := s.ds.Ack(ctx, client, c.GroupId, c.Seq); err != nil {
			return nil, s.toConnect(ctx, err, c.GroupId)
		}
	}
	if err := s.ds.AckWelcomes(ctx, client, req.Msg.WelcomeRefs); err != nil { // deniable groups
		return nil, s.toConnect(ctx, err, nil)
	}
	return connect.NewResponse(&mlsdsv1.AckResponse{}), nil
}

func (g *groupService) GetGroupInfo(ctx context.Context, req *connect.Request[mlsdsv1.GetGroupInfoRequest]) (*connect.Response[mlsdsv1.GetGroupInfoResponse], error) {
	if _, ok := ClientID(ctx); !ok {
		return g.getGroupInfoDeniable(ctx, req) // deniable.go
	}
	s, client := g.s, mustClient(ctx)
	if err := needGroupID(req.Msg.GroupId); err != nil {
		return nil, err
	}
	gi, err := s.ds.JoinGroupInfo(ctx, client, req.Msg.GroupId, req.Msg.JoinToken)
	if err != nil {
		return nil, s.toConnect(ctx, err, req.Msg.GroupId)
	}
	res := &mlsdsv1.GetGroupInfoResponse{
		GroupId:          gi.GroupID,
		Mode:             protoMode(gi.Mode),
		Epoch:            gi.Epoch,
		GroupInfo:        gi.GroupInfo,
		RatchetTree:      gi.RatchetTree,
		TreeHash:         gi.TreeHash,
		Proposals:        gi.Proposals,
		SuccessorGroupId: gi.SuccessorGroupID,
	}
	if req.Msg.WithoutTree {
		res.RatchetTree, res.Proposals = nil, nil
	}
	return connect.NewResponse(res), nil
}

func (g *groupService) GetRoster(ctx context.Context, req *connect.Request[mlsdsv1.GetRosterRequest]) (*connect.Response[mlsdsv1.GetRosterResponse], error) {
	s, client := g.s, mustClient(ctx)
	if err := needGroupID(req.Msg.GroupId); err != nil {
		return nil, err
	}
	ids, err := s.ds.Roster(ctx, client, req.Msg.GroupId)
	if err != nil {
		return nil, s.toConnect(ctx, err, req.Msg.GroupId)
	}
	resp := &mlsdsv1.GetRosterResponse{ClientIds: ids}
	if req.Msg.IncludeLeaves {
		if err := g.addRosterLeaves(ctx, client, req.Msg.GroupId, req.Msg.LeafIndices, resp); err != nil {
			return nil, err
		}
	}
	return connect.NewResponse(resp), nil
}
