package postgres

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
)

// Quotas: the stored KeyPackage bytes come from key_packages, under the
// client's row lock (see addKeyPackages); the daily counters live in
// quota_usage, one row per client and day, whose row lock serialises the
// charges of one client across nodes.

// unwrapQuota returns a *ds.QuotaExceededError in err as it is, without
// the operation's name that engineErr puts before errors it does not know.
func unwrapQuota(err error) error {
	var qe *ds.QuotaExceededError
	if errors.As(err, &qe) {
		return qe
	}
	return err
}

// AddKeyPackagesWithin implements ds.Store.
func (s *Store) AddKeyPackagesWithin(ctx context.Context, kps []ds.KeyPackageRecord, lim ds.KeyPackageLimits) error {
	return s.addKeyPackages(ctx, kps, lim)
}

// DailyUsage implements ds.Store.
func (s *Store) DailyUsage(ctx context.Context, clientID string, day int64) (ds.DailyUsage, error) {
	u := ds.DailyUsage{ClientID: clientID, Day: day}
	if !textOK(clientID) {
		return u, nil
	}
	err := s.pool.QueryRow(ctx, "SELECT groups_created, bytes_accepted FROM quota_usage WHERE client_id = $1 AND day = $2",
		clientID, day).Scan(&u.Groups, &u.Bytes)
	if errors.Is(err, pgx.ErrNoRows) {
		err = nil
	}
	return u, engineErr("read daily usage", err)
}

// addUsageSQL adds to a registered client's counters only: a count
// flushed after the client was deleted must not bring back a row that
// names it.
const addUsageSQL = `INSERT INTO quota_usage (client_id, day, groups_created, bytes_accepted)
	SELECT $1, $2, GREATEST($3::bigint, 0), GREATEST($4::bigint, 0) WHERE EXISTS (SELECT 1 FROM clients WHERE id = $1)
	ON CONFLICT (client_id, day) DO UPDATE SET
		groups_created = GREATEST(quota_usage.groups_created + $3::bigint, 0),
		bytes_accepted = GREATEST(quota_usage.bytes_accepted + $4::bigint, 0)`

// AddDailyUsage implements ds.Store. The rows are written in the order of
// their keys, so that two nodes flushing at once cannot deadlock.
func (s *Store) AddDailyUsage(ctx context.Context, us []ds.DailyUsage) error {
	if len(us) == 0 {
		return nil
	}
	for _, u := range us {
		if err := checkText("client id", u.ClientID); err != nil {
			return err
		}
	}
	sorted := slices.Clone(us)
	slices.SortFunc(sorted, func(a, b ds.DailyUsage) int {
		return cmp.Or(strings.Compare(a.ClientID, b.ClientID), cmp.Compare(a.Day, b.Day))
	})
	latest := sorted[0].Day
	for _, u := range sorted {
		latest = max(latest, u.Day)
	}
	return s.tx(ctx, "add daily usage", func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, u := range sorted {
			b.Queue(addUsageSQL, u.ClientID, u.Day, u.Groups, u.Bytes)
		}
		b.Queue("DELETE FROM quota_usage WHERE day < $1", latest-1)
		return tx.SendBatch(ctx, b).Close()
	})
}

// ChargeDailyUsage implements ds.Store. The row is created first, if
// missing, so that FOR UPDATE has something to lock: charges of one client
// and day on every node queue on it.
func (s *Store) ChargeDailyUsage(ctx context.Context, u ds.DailyUsage, limit ds.DailyUsage) (ds.DailyUsage, error) {
	if err := checkText("client id", u.ClientID); err != nil {
		return ds.DailyUsage{}, err
	}
	out := ds.DailyUsage{ClientID: u.ClientID, Day: u.Day}
	err := s.tx(ctx, "charge daily usage", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO quota_usage (client_id, day) VALUES ($1, $2)
			ON CONFLICT (client_id, day) DO NOTHING`, u.ClientID, u.Day); err != nil {
			return err
		}
		var groups, bytes int64
		if err := tx.QueryRow(ctx, `SELECT groups_created, bytes_accepted FROM quota_usage
			WHERE client_id = $1 AND day = $2 FOR UPDATE`, u.ClientID, u.Day).Scan(&groups, &bytes); err != nil {
			return err
		}
		if err := ds.CheckDailyLimit(groups+u.Groups, bytes+u.Bytes, limit); err != nil {
			return err
		}
		out.Groups, out.Bytes = max(groups+u.Groups, 0), max(bytes+u.Bytes, 0)
		_, err := tx.Exec(ctx, `UPDATE quota_usage SET groups_created = $3, bytes_accepted = $4
			WHERE client_id = $1 AND day = $2`, u.ClientID, u.Day, out.Groups, out.Bytes)
		return err
	})
	if err != nil {
		return ds.DailyUsage{}, unwrapQuota(err)
	}
	return out, nil
}
