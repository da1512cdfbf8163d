package server

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
)

// addDetail attaches one detail message to a Connect error.
func addDetail(ce *connect.Error, m proto.Message) {
	if d, err := connect.NewErrorDetail(m); err == nil {
		ce.AddDetail(d)
	}
}

func withDetail(code connect.Code, err error, m proto.Message) *connect.Error {
	ce := connect.NewError(code, err)
	if m != nil {
		addDetail(ce, m)
	}
	return ce
}

// toConnect maps an error of ds onto a Connect code and one detail message.
// The messages of ds errors are written for clients and pass through;
// anything else is an internal failure, logged here and hidden from the
// client. groupID, when known, goes into NotMember.
func (s *Server) toConnect(ctx context.Context, err error, groupID []byte) error {
	if err == nil {
		return nil
	}
	var (
		ce  *connect.Error
		we  *ds.WrongEpochError
		se  *ds.StaleEpochError
		ie  *ds.InvalidMessageError
		rle *ds.RateLimitedError
		tle *ds.TooLargeError
		pe  *ds.PrunedError
		qe  *ds.QuotaExceededError
	)
	switch {
	case errors.As(err, &ce):
		return ce
	case errors.As(err, &qe):
		s.metrics.quotaRefusals.WithLabelValues(quotaLabel(qe.What)).Inc()
		d := &mlsdsv1.QuotaExceeded{What: qe.What, Limit: uint64(max(0, qe.Limit))}
		if qe.RetryAfter > 0 {
			d.RetryAfter = durationpb.New(qe.RetryAfter)
		}
		// qe itself, not err: an engine may have wrapped it in words
		// meant for logs.
		return withDetail(connect.CodeResourceExhausted, qe, d)
	case errors.As(err, &pe):
		return withDetail(connect.CodeOutOfRange, err, &mlsdsv1.Pruned{GroupId: pe.GroupID, OldestSeq: pe.OldestSeq})
	case errors.As(err, &we):
		// ABORTED: a lost race for the epoch, to be retried at a higher
		// level (fetch, rebase, resend).
		return withDetail(connect.CodeAborted, err, &mlsdsv1.WrongEpoch{ExpectedEpoch: we.Expected, FetchFromSeq: we.FetchFromSeq})
	case errors.As(err, &se):
		return withDetail(connect.CodeFailedPrecondition, err, &mlsdsv1.StaleEpoch{CurrentEpoch: se.Current})
	case errors.As(err, &ie):
		return withDetail(connect.CodeInvalidArgument, err, &mlsdsv1.InvalidMessage{Reason: ie.Reason, RfcSection: ie.Section})
	case errors.As(err, &rle):
		return withDetail(connect.CodeResourceExhausted, err, &mlsdsv1.RateLimited{RetryAfter: durationpb.New(rle.RetryAfter), What: rle.What})
	case errors.As(err, &tle):
		s.metrics.quotaRefusals.WithLabelValues(quotaLabel(tle.What)).Inc()
		return withDetail(connect.CodeResourceExhausted, err, &mlsdsv1.TooLarge{Limit: uint64(max(0, tle.Limit)), What: tle.What})
	case errors.Is(err, ds.ErrNotMember):
		return withDetail(connect.CodePermissionDenied, err, &mlsdsv1.NotMember{GroupId: groupID})
	case errors.Is(err, ds.ErrKeyPackageUsed):
		// Another group used the KeyPackage first: claim another.
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, ds.ErrKeyPackagesExhausted):
		// The detail is added by the claim handler, which knows the target.
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, ds.ErrNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, ds.ErrAlreadyExists):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, ds.ErrPermissionDenied):
		return connect.NewError(connect.CodePermissionDenied, err)
	case errors.Is(err, ds.ErrInvalidArgument):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, errors.New("call canceled"))
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded"))
	}
	s.log.LogAttrs(ctx, slog.LevelError, "internal error", slog.String("error", err.Error()))
	return connect.NewError(connect.CodeInternal, errors.New("internal error; the server logged it"))
}

// rejectReason names the reason of a refused message for
// mlsds_messages_rejected_total.
func rejectReason(err error) string {
	var (
		we  *ds.WrongEpochError
		se  *ds.StaleEpochError
		ie  *ds.InvalidMessageError
		rle *ds.RateLimitedError
		tle *ds.TooLargeError
		qe  *ds.QuotaExceededError
	)
	switch {
	case errors.As(err, &qe):
		return "quota_exceeded"
	case errors.As(err, &we):
		return "wrong_epoch"
	case errors.As(err, &se):
		return "stale_epoch"
	case errors.As(err, &ie):
		return "invalid_message"
	case errors.As(err, &rle):
		return "rate_limited"
	case errors.As(err, &tle):
		return "too_large"
	case errors.Is(err, ds.ErrNotMember):
		return "not_member"
	case errors.Is(err, ds.ErrKeyPackageUsed):
		return "key_package_used"
	case errors.Is(err, ds.ErrNotFound):
		return "unknown_group"
	case errors.Is(err, ds.ErrPermissionDenied):
		return "permission_denied"
	case errors.Is(err, ds.ErrInvalidArgument):
		return "invalid_argument"
	case errors.Is(err, ds.ErrAlreadyExists):
		return "already_exists"
	}
	return "internal"
}
