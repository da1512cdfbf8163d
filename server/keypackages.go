package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// keyPackageService implements mlsds.v1.KeyPackageService.
type keyPackageService struct{ s *Server }

// maxRefsPerCall bounds the refs of one DeleteKeyPackages call.
const maxRefsPerCall = 10_000

func suiteLabel(cs mls.CipherSuite) string { return strconv.Itoa(int(cs)) }

func suiteArg(v uint32) (mls.CipherSuite, error) {
	if v == 0 || v > 0xffff {
		return 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cipher_suite %d is not an MLS cipher suite (RFC 9420 §17.1)", v))
	}
	return mls.CipherSuite(v), nil
}

func kpInfo(i ds.KeyPackageInfo) *mlsdsv1.KeyPackageInfo {
	return &mlsdsv1.KeyPackageInfo{
		Ref:         i.Ref,
		CipherSuite: uint32(i.CipherSuite),
		NotAfter:    timestamppb.New(i.NotAfter),
		LastResort:  i.LastResort,
	}
}

func (k *keyPackageService) UploadKeyPackages(ctx context.Context, req *connect.Request[mlsdsv1.UploadKeyPackagesRequest]) (*connect.Response[mlsdsv1.UploadKeyPackagesResponse], error) {
	s, client := k.s, mustClient(ctx)
	if len(req.Msg.KeyPackages) == 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("no KeyPackages to upload"))
	}
	ups := make([]ds.KeyPackageUpload, len(req.Msg.KeyPackages))
	for i, u := range req.Msg.KeyPackages {
		ups[i] = ds.KeyPackageUpload{Data: u.KeyPackage, LastResort: u.LastResort}
	}
	infos, err := s.ds.UploadKeyPackages(ctx, client, ups)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	res := &mlsdsv1.UploadKeyPackagesResponse{KeyPackages: make([]*mlsdsv1.KeyPackageInfo, len(infos))}
	for i, info := range infos {
		res.KeyPackages[i] = kpInfo(info)
		s.metrics.kpUploaded.WithLabelValues(suiteLabel(info.CipherSuite)).Inc()
	}
	return connect.NewResponse(res), nil
}

func (k *keyPackageService) ListKeyPackages(ctx context.Context, req *connect.Request[mlsdsv1.ListKeyPackagesRequest]) (*connect.Response[mlsdsv1.ListKeyPackagesResponse], error) {
	s, client := k.s, mustClient(ctx)
	infos, err := s.ds.ListKeyPackages(ctx, client)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	res := &mlsdsv1.ListKeyPackagesResponse{KeyPackages: make([]*mlsdsv1.KeyPackageInfo, len(infos))}
	for i, info := range infos {
		res.KeyPackages[i] = kpInfo(info)
	}
	return connect.NewResponse(res), nil
}

func (k *keyPackageService) DeleteKeyPackages(ctx context.Context, req *connect.Request[mlsdsv1.DeleteKeyPackagesRequest]) (*connect.Response[mlsdsv1.DeleteKeyPackagesResponse], error) {
	s, client := k.s, mustClient(ctx)
	if len(req.Msg.Refs) > maxRefsPerCall {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%d refs in one call; send at most %d", len(req.Msg.Refs), maxRefsPerCall))
	}
	n, err := s.ds.DeleteKeyPackages(ctx, client, req.Msg.Refs)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	s.metrics.kpDeleted.Add(float64(n))
	return connect.NewResponse(&mlsdsv1.DeleteKeyPackagesResponse{Deleted: uint32(n)}), nil
}

func (k *keyPackageService) CountKeyPackages(ctx context.Context, req *connect.Request[mlsdsv1.CountKeyPackagesRequest]) (*connect.Response[mlsdsv1.CountKeyPackagesResponse], error) {
	s, client := k.s, mustClient(ctx)
	counts, err := s.ds.CountKeyPackages(ctx, client)
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	res := &mlsdsv1.CountKeyPackagesResponse{ByCipherSuite: make(map[uint32]uint32, len(counts))}
	for cs, n := range counts {
		res.ByCipherSuite[uint32(cs)] = uint32(n)
	}
	return connect.NewResponse(res), nil
}

func (k *keyPackageService) ClaimKeyPackages(ctx context.Context, req *connect.Request[mlsdsv1.ClaimKeyPackagesRequest]) (*connect.Response[mlsdsv1.ClaimKeyPackagesResponse], error) {
	s, claimer := k.s, mustClient(ctx)
	cs, err := suiteArg(req.Msg.CipherSuite)
	if err != nil {
		return nil, err
	}
	if req.Msg.Target != nil && len(req.Msg.ClientIds) > 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("name the target once: client_id, user_id or client_ids, not two of them"))
	}
	var claimed []ds.ClaimedKeyPackage
	var exhausted []string
	var target, user string
	switch t := req.Msg.Target.(type) {
	case *mlsdsv1.ClaimKeyPackagesRequest_ClientId:
		target = t.ClientId
		var c ds.ClaimedKeyPackage
		if c, err = s.ds.ClaimKeyPackage(ctx, claimer, t.ClientId, cs); err == nil {
			claimed = []ds.ClaimedKeyPackage{c}
		}
	case *mlsdsv1.ClaimKeyPackagesRequest_UserId:
		user = t.UserId
		claimed, err = s.ds.ClaimKeyPackagesForUser(ctx, claimer, t.UserId, cs)
	default:
		if len(req.Msg.ClientIds) == 0 {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("name the target: client_id, user_id or client_ids"))
		}
		claimed, exhausted, err = s.ds.ClaimKeyPackagesFor(ctx, claimer, req.Msg.ClientIds, cs)
	}
	if errors.Is(err, ds.ErrKeyPackagesExhausted) {
		s.metrics.kpExhausted.Inc()
		return nil, withDetail(connect.CodeNotFound, err, &mlsdsv1.KeyPackagesExhausted{ClientId: target, UserId: user, CipherSuite: uint32(cs)})
	}
	if err != nil {
		return nil, s.toConnect(ctx, err, nil)
	}
	res := &mlsdsv1.ClaimKeyPackagesResponse{KeyPackages: make([]*mlsdsv1.ClaimedKeyPackage, len(claimed))}
	for i, c := range claimed {
		res.KeyPackages[i] = &mlsdsv1.ClaimedKeyPackage{ClientId: c.ClientID, Ref: c.Ref, KeyPackage: c.Data, LastResort: c.LastResort}
		s.metrics.kpClaimed.WithLabelValues(suiteLabel(cs), strconv.FormatBool(c.LastResort)).Inc()
	}
	for _, id := range exhausted {
		// What a claim of id alone would have said in its NOT_FOUND error.
		res.Exhausted = append(res.Exhausted, &mlsdsv1.KeyPackagesExhausted{ClientId: id, CipherSuite: uint32(cs)})
		s.metrics.kpExhausted.Inc()
	}
	return connect.NewResponse(res), nil
}
