package sqlite

import (
	"context"
	"database/sql"
	"errors"

	"github.com/mlsds/mlsds/ds"
)

// Quotas: the stored KeyPackage bytes come from key_packages (see
// addKeyPackages); the daily counters live in quota_usage, one row per
// client and day. The single writer connection serialises every change.

// AddKeyPackagesWithin implements ds.Store.
func (s *Store) AddKeyPackagesWithin(ctx context.Context, kps []ds.KeyPackageRecord, lim ds.KeyPackageLimits) error {
	return s.addKeyPackages(ctx, kps, lim)
}

// DailyUsage implements ds.Store.
func (s *Store) DailyUsage(ctx context.Context, clientID string, day int64) (ds.DailyUsage, error) {
	u := ds.DailyUsage{ClientID: clientID, Day: day}
	err := s.r.QueryRowContext(ctx, "SELECT groups_created, bytes_accepted FROM quota_usage WHERE client_id = ? AND day = ?",
		clientID, day).Scan(&u.Groups, &u.Bytes)
	if errors.Is(err, sql.ErrNoRows) {
		err = nil
	}
	return u, err
}

// addUsage adds u to its counters in tx.
func addUsage(ctx context.Context, tx *sql.Conn, u ds.DailyUsage) error {
	// Only for a registered client: a count flushed after the client was
	// deleted must not bring back a row that names it.
	_, err := tx.ExecContext(ctx, `INSERT INTO quota_usage (client_id, day, groups_created, bytes_accepted)
		SELECT ?1, ?2, max(?3, 0), max(?4, 0) WHERE EXISTS (SELECT 1 FROM clients WHERE id = ?1)
		ON CONFLICT (client_id, day) DO UPDATE SET
			groups_created = max(groups_created + ?3, 0),
			bytes_accepted = max(bytes_accepted + ?4, 0)`,
		u.ClientID, u.Day, u.Groups, u.Bytes)
	return err
}

// AddDailyUsage implements ds.Store.
func (s *Store) AddDailyUsage(ctx context.Context, us []ds.DailyUsage) error {
	if len(us) == 0 {
		return nil
	}
	latest := us[0].Day
	for _, u := range us {
		latest = max(latest, u.Day)
	}
	return s.write(ctx, func(tx *sql.Conn) error {
		for _, u := range us {
			if err := addUsage(ctx, tx, u); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, "DELETE FROM quota_usage WHERE day < ?", latest-1)
		return err
	})
}

// ChargeDailyUsage implements ds.Store.
func (s *Store) ChargeDailyUsage(ctx context.Context, u ds.DailyUsage, limit ds.DailyUsage) (ds.DailyUsage, error) {
	out := ds.DailyUsage{ClientID: u.ClientID, Day: u.Day}
	err := s.write(ctx, func(tx *sql.Conn) error {
		var groups, bytes int64
		err := tx.QueryRowContext(ctx, "SELECT groups_created, bytes_accepted FROM quota_usage WHERE client_id = ? AND day = ?",
			u.ClientID, u.Day).Scan(&groups, &bytes)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if err := ds.CheckDailyLimit(groups+u.Groups, bytes+u.Bytes, limit); err != nil {
			return err
		}
		if err := addUsage(ctx, tx, u); err != nil {
			return err
		}
		out.Groups, out.Bytes = max(groups+u.Groups, 0), max(bytes+u.Bytes, 0)
		return nil
	})
	if err != nil {
		return ds.DailyUsage{}, err
	}
	return out, nil
}
