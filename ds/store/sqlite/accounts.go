package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/mlsds/mlsds/ds"
)

// pruneBatch bounds the expired rows one call deletes on the side.
const pruneBatch = 64

// Clients implements ds.Store.
func (s *Store) Clients(ctx context.Context, ids []string) ([]ds.Client, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	return s.queryClients(ctx, "SELECT "+clientColumns+" FROM clients WHERE id IN ("+placeholders(len(ids))+")", args...)
}

// RegisterClient implements ds.Store. The single writer connection
// serialises it with every other registration.
func (s *Store) RegisterClient(ctx context.Context, r ds.ClientRegistration) error {
	c := r.Client
	return s.write(ctx, func(tx *sql.Conn) error {
		exists := func(query string, args ...any) (bool, error) {
			var one int
			err := tx.QueryRowContext(ctx, query, args...).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				return false, nil
			}
			return err == nil, err
		}
		taken, err := exists("SELECT 1 FROM clients WHERE id = ?", c.ID)
		if err != nil {
			return err
		}
		if taken {
			return fmt.Errorf("%w: client %q", ds.ErrAlreadyExists, c.ID)
		}
		if c.UserID != c.ID {
			if other, err := exists("SELECT 1 FROM clients WHERE user_id = ? LIMIT 1", c.ID); err != nil {
				return err
			} else if other {
				return fmt.Errorf("%w (client id %q is the id of a user)", ds.ErrRegistrationRefused, c.ID)
			}
			if other, err := exists("SELECT 1 FROM clients WHERE id = ? AND user_id <> ?", c.UserID, c.UserID); err != nil {
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
			hasClients, err := exists("SELECT 1 FROM clients WHERE user_id = ? LIMIT 1", c.UserID)
			if err != nil {
				return err
			}
			if hasClients {
				if r.DeviceLink == nil {
					return fmt.Errorf("%w (user %q has clients and no device link was given)", ds.ErrRegistrationRefused, c.UserID)
				}
				res, err := tx.ExecContext(ctx, `UPDATE device_links SET used_at = ?, used_by = ?
					WHERE hash = ? AND user_id = ? AND used_at IS NULL AND expires_at > ?`,
					micros(r.Now), c.ID, r.DeviceLink, c.UserID, micros(r.Now))
				if err != nil {
					return err
				}
				if n, err := res.RowsAffected(); err != nil {
					return err
				} else if n != 1 {
					return fmt.Errorf("%w (the device link is unknown, expired, used or for another user than %q)", ds.ErrRegistrationRefused, c.UserID)
				}
			}
		}
		if r.MaxClientsPerUser > 0 {
			var n int
			if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM clients WHERE user_id = ?", c.UserID).Scan(&n); err != nil {
				return err
			}
			if n >= r.MaxClientsPerUser {
				return &ds.QuotaExceededError{What: ds.QuotaClientsPerUser, Limit: int64(r.MaxClientsPerUser)}
			}
		}
		_, err = tx.ExecContext(ctx,
			"INSERT INTO clients (id, user_id, cipher_suite, signature_key, created_at) VALUES (?, ?, ?, ?, ?)",
			c.ID, c.UserID, int64(c.CipherSuite), nonNil(c.SignatureKey), micros(c.CreatedAt))
		return err
	})
}

// CreateDeviceLink implements ds.Store.
func (s *Store) CreateDeviceLink(ctx context.Context, l ds.DeviceLinkRecord, limit int) error {
	return s.write(ctx, func(tx *sql.Conn) error {
		var one int
		err := tx.QueryRowContext(ctx, "SELECT 1 FROM clients WHERE id = ?", l.Creator).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: client %q is not registered", ds.ErrNotFound, l.Creator)
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM device_links WHERE hash IN
			(SELECT hash FROM device_links WHERE expires_at <= ? LIMIT ?)`, micros(l.CreatedAt), pruneBatch); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM device_links
			WHERE creator = ? AND used_at IS NULL AND expires_at > ?`, l.Creator, micros(l.CreatedAt)).Scan(&n); err != nil {
			return err
		}
		if n >= limit {
			return &ds.TooLargeError{Limit: limit, What: "unused device links per client"}
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO device_links (hash, user_id, creator, created_at, expires_at)
			VALUES (?, ?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING`,
			nonNil(l.Hash), l.UserID, l.Creator, micros(l.CreatedAt), micros(l.ExpiresAt))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("%w: device link", ds.ErrAlreadyExists)
		}
		return nil
	})
}

// SpendOnce implements ds.Store.
func (s *Store) SpendOnce(ctx context.Context, o ds.OnceRecord) error {
	return s.write(ctx, func(tx *sql.Conn) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM used_once WHERE (scope, key) IN
			(SELECT scope, key FROM used_once WHERE expires_at <= ? LIMIT ?)`, micros(o.Now), pruneBatch); err != nil {
			return err
		}
		return spendOnce(ctx, tx, o)
	})
}

// spendOnce records o in tx; an expired record of the same value is
// replaced.
func spendOnce(ctx context.Context, tx *sql.Conn, o ds.OnceRecord) error {
	res, err := tx.ExecContext(ctx, `INSERT INTO used_once (scope, key, expires_at) VALUES (?, ?, ?)
		ON CONFLICT (scope, key) DO UPDATE SET expires_at = excluded.expires_at WHERE used_once.expires_at <= ?`,
		o.Scope, nonNil(o.Key), micros(o.Expires), micros(o.Now))
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%w: this %s was used before", ds.ErrAlreadyUsed, o.Scope)
	}
	return nil
}
