package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
)

// pruneBatch bounds the expired rows one call deletes on the side.
const pruneBatch = 64

// Clients implements ds.Store.
func (s *Store) Clients(ctx context.Context, ids []string) ([]ds.Client, error) {
	ok := make([]string, 0, len(ids))
	for _, id := range ids {
		if textOK(id) {
			ok = append(ok, id)
		}
	}
	if len(ok) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT "+clientColumns+" FROM clients WHERE id = ANY($1)", ok)
	if err != nil {
		return nil, engineErr("read clients", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ds.Client, error) { return scanClient(r) })
	return out, engineErr("read clients", err)
}

// idLock returns the advisory lock key of a client or user id. Client ids
// and user ids are one namespace, so both kinds share the key of a name.
func idLock(id string) int64 {
	h := sha256.Sum256([]byte("mlsds id lock\x00" + id))
	return int64(binary.BigEndian.Uint64(h[:8]))
}

// lockIDs takes the advisory locks of ids for the rest of tx, in key
// order so that two transactions cannot wait for each other.
func lockIDs(ctx context.Context, tx pgx.Tx, ids ...string) error {
	keys := make([]int64, 0, len(ids))
	for _, id := range ids {
		keys = append(keys, idLock(id))
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	for _, k := range keys {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", k); err != nil {
			return err
		}
	}
	return nil
}

// RegisterClient implements ds.Store. Registrations that name the same
// client or user id are serialised by advisory locks on the ids; under
// READ COMMITTED every statement after the locks sees what the
// transactions that held them committed.
func (s *Store) RegisterClient(ctx context.Context, r ds.ClientRegistration) error {
	c := r.Client
	if err := checkText("client id", c.ID, c.UserID); err != nil {
		return err
	}
	return unwrapQuota(s.tx(ctx, "register client", func(tx pgx.Tx) error {
		if err := lockIDs(ctx, tx, c.ID, c.UserID); err != nil {
			return err
		}
		exists := func(query string, args ...any) (bool, error) {
			var one int
			err := tx.QueryRow(ctx, query, args...).Scan(&one)
			if errors.Is(err, pgx.ErrNoRows) {
				return false, nil
			}
			return err == nil, err
		}
		taken, err := exists("SELECT 1 FROM clients WHERE id = $1", c.ID)
		if err != nil {
			return err
		}
		if taken {
			return fmt.Errorf("%w: client %q", ds.ErrAlreadyExists, c.ID)
		}
		if c.UserID != c.ID {
			if other, err := exists("SELECT 1 FROM clients WHERE user_id = $1 LIMIT 1", c.ID); err != nil {
				return err
			} else if other {
				return fmt.Errorf("%w (client id %q is the id of a user)", ds.ErrRegistrationRefused, c.ID)
			}
			if other, err := exists("SELECT 1 FROM clients WHERE id = $1 AND user_id <> $1", c.UserID); err != nil {
				return err
			} else if other {
				return fmt.Errorf("%w (user id %q is the id of a client of another user)", ds.ErrRegistrationRefused, c.UserID)
			}
		}
		if r.Once != nil {
			if err := spendOnce(ctx, tx, *r.Once); err != nil {
				return err
			}
		}
		if !r.UserVouched {
			hasClients, err := exists("SELECT 1 FROM clients WHERE user_id = $1 LIMIT 1", c.UserID)
			if err != nil {
				return err
			}
			if hasClients {
				if r.DeviceLink == nil {
					return fmt.Errorf("%w (user %q has clients and no device link was given)", ds.ErrRegistrationRefused, c.UserID)
				}
				tag, err := tx.Exec(ctx, `UPDATE device_links SET used_at = $1, used_by = $2
					WHERE hash = $3 AND user_id = $4 AND used_at IS NULL AND expires_at > $1`,
					r.Now, c.ID, r.DeviceLink, c.UserID)
				if err != nil {
					return err
				}
				if tag.RowsAffected() != 1 {
					return fmt.Errorf("%w (the device link is unknown, expired, used or for another user than %q)", ds.ErrRegistrationRefused, c.UserID)
				}
			}
		}
		if r.MaxClientsPerUser > 0 {
			// The advisory lock on the user id serialises this count with
			// every other registration of the user.
			var n int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM clients WHERE user_id = $1", c.UserID).Scan(&n); err != nil {
				return err
			}
			if n >= r.MaxClientsPerUser {
				return &ds.QuotaExceededError{What: ds.QuotaClientsPerUser, Limit: int64(r.MaxClientsPerUser)}
			}
		}
		_, err = tx.Exec(ctx, `INSERT INTO clients (id, user_id, cipher_suite, signature_key, created_at)
			VALUES ($1, $2, $3, $4, $5)`,
			c.ID, c.UserID, int32(c.CipherSuite), nonNil(c.SignatureKey), ts(c.CreatedAt))
		return err
	}))
}

// CreateDeviceLink implements ds.Store.
func (s *Store) CreateDeviceLink(ctx context.Context, l ds.DeviceLinkRecord, limit int) error {
	if err := checkText("client id", l.Creator, l.UserID); err != nil {
		return err
	}
	return s.tx(ctx, "create device link", func(tx pgx.Tx) error {
		// The creator's row lock serialises its links, so that the
		// limit holds under concurrency.
		if err := lockClient(ctx, tx, l.Creator); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM device_links WHERE hash IN
			(SELECT hash FROM device_links WHERE expires_at <= $1 LIMIT $2)`, l.CreatedAt, pruneBatch); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM device_links
			WHERE creator = $1 AND used_at IS NULL AND expires_at > $2`, l.Creator, l.CreatedAt).Scan(&n); err != nil {
			return err
		}
		if n >= limit {
			return &ds.TooLargeError{Limit: limit, What: "unused device links per client"}
		}
		tag, err := tx.Exec(ctx, `INSERT INTO device_links (hash, user_id, creator, created_at, expires_at)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING`,
			nonNil(l.Hash), l.UserID, l.Creator, l.CreatedAt, l.ExpiresAt)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: device link", ds.ErrAlreadyExists)
		}
		return nil
	})
}

// SpendOnce implements ds.Store.
func (s *Store) SpendOnce(ctx context.Context, o ds.OnceRecord) error {
	if err := checkText("scope", o.Scope); err != nil {
		return err
	}
	return s.tx(ctx, "spend single-use value", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM used_once WHERE ctid IN
			(SELECT ctid FROM used_once WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`, o.Now, pruneBatch); err != nil {
			return err
		}
		return spendOnce(ctx, tx, o)
	})
}

// spendOnce records o in tx; an expired record of the same value is
// replaced. Under concurrency the unique key makes one insert wait for the
// other and then see its row.
func spendOnce(ctx context.Context, tx pgx.Tx, o ds.OnceRecord) error {
	tag, err := tx.Exec(ctx, `INSERT INTO used_once (scope, key, expires_at) VALUES ($1, $2, $3)
		ON CONFLICT (scope, key) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE used_once.expires_at <= $4`,
		o.Scope, nonNil(o.Key), o.Expires, o.Now)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: this %s was used before", ds.ErrAlreadyUsed, o.Scope)
	}
	return nil
}
