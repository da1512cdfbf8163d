package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// CreateClient implements ds.Store.
func (s *Store) CreateClient(ctx context.Context, c ds.Client) error {
	return s.write(ctx, func(tx *sql.Conn) error {
		var one int
		err := tx.QueryRowContext(ctx, "SELECT 1 FROM clients WHERE id = ?", c.ID).Scan(&one)
		if err == nil {
			return fmt.Errorf("%w: client %q", ds.ErrAlreadyExists, c.ID)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		_, err = tx.ExecContext(ctx,
			"INSERT INTO clients (id, user_id, cipher_suite, signature_key, created_at) VALUES (?, ?, ?, ?, ?)",
			c.ID, c.UserID, int64(c.CipherSuite), nonNil(c.SignatureKey), micros(c.CreatedAt))
		return err
	})
}

const clientColumns = "id, user_id, cipher_suite, signature_key, created_at"

func scanClient(row interface{ Scan(...any) error }) (ds.Client, error) {
	var c ds.Client
	var cs int64
	var created sql.NullInt64
	if err := row.Scan(&c.ID, &c.UserID, &cs, &c.SignatureKey, &created); err != nil {
		return ds.Client{}, err
	}
	c.CipherSuite = mls.CipherSuite(cs)
	c.CreatedAt = fromMicros(created)
	return c, nil
}

// Client implements ds.Store.
func (s *Store) Client(ctx context.Context, id string) (ds.Client, error) {
	c, err := scanClient(s.r.QueryRowContext(ctx, "SELECT "+clientColumns+" FROM clients WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return ds.Client{}, fmt.Errorf("%w: client %q", ds.ErrNotFound, id)
	}
	return c, err
}

// ClientsOfUser implements ds.Store.
func (s *Store) ClientsOfUser(ctx context.Context, userID string) ([]ds.Client, error) {
	return s.queryClients(ctx, "SELECT "+clientColumns+" FROM clients WHERE user_id = ? ORDER BY id", userID)
}

// queryClients runs a query of clientColumns and scans its rows.
func (s *Store) queryClients(ctx context.Context, query string, args ...any) ([]ds.Client, error) {
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ds.Client
	for rows.Next() {
		c, err := scanClient(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// AddKeyPackages implements ds.Store.
func (s *Store) AddKeyPackages(ctx context.Context, kps []ds.KeyPackageRecord, limit int) error {
	return s.addKeyPackages(ctx, kps, ds.KeyPackageLimits{Count: limit})
}

// addKeyPackages adds kps within lim (AddKeyPackagesWithin).
func (s *Store) addKeyPackages(ctx context.Context, kps []ds.KeyPackageRecord, lim ds.KeyPackageLimits) error {
	if len(kps) == 0 {
		return nil
	}
	client, limit := kps[0].ClientID, lim.Count
	return s.write(ctx, func(tx *sql.Conn) error {
		var stored int
		var storedBytes int64
		if err := tx.QueryRowContext(ctx,
			"SELECT COUNT(*), COALESCE(SUM(length(data)), 0) FROM key_packages WHERE client_id = ? AND claimed_at IS NULL",
			client).Scan(&stored, &storedBytes); err != nil {
			return err
		}
		if stored+len(kps) > limit {
			return &ds.TooLargeError{Limit: limit, What: "unclaimed key packages per client"}
		}
		if lim.Bytes > 0 && storedBytes+ds.KeyPackageBytes(kps) > lim.Bytes {
			return &ds.QuotaExceededError{What: ds.QuotaKeyPackageBytes, Limit: lim.Bytes}
		}
		seen := make(map[string]bool)
		lastResort := make(map[mls.CipherSuite]bool)
		for _, kp := range kps {
			if kp.ClientID != client {
				return fmt.Errorf("sqlite: AddKeyPackages: KeyPackages of several clients in one call")
			}
			if seen[string(kp.Ref)] {
				return fmt.Errorf("%w: KeyPackage %x appears twice in the upload", ds.ErrAlreadyExists, kp.Ref)
			}
			seen[string(kp.Ref)] = true
			var one int
			err := tx.QueryRowContext(ctx, "SELECT 1 FROM key_packages WHERE ref = ?", kp.Ref).Scan(&one)
			if err == nil {
				return fmt.Errorf("%w: KeyPackage %x is already stored", ds.ErrAlreadyExists, kp.Ref)
			} else if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			if kp.LastResort {
				if lastResort[kp.CipherSuite] {
					return fmt.Errorf("%w: the upload has two last-resort KeyPackages for cipher suite %d; at most one per suite", ds.ErrAlreadyExists, kp.CipherSuite)
				}
				lastResort[kp.CipherSuite] = true
				err := tx.QueryRowContext(ctx,
					"SELECT 1 FROM key_packages WHERE client_id = ? AND cipher_suite = ? AND last_resort = 1",
					client, int64(kp.CipherSuite)).Scan(&one)
				if err == nil {
					return fmt.Errorf("%w: client %q already has a last-resort KeyPackage for cipher suite %d; delete it before uploading another", ds.ErrAlreadyExists, client, kp.CipherSuite)
				} else if !errors.Is(err, sql.ErrNoRows) {
					return err
				}
			}
			_, err = tx.ExecContext(ctx, `INSERT INTO key_packages
				(ref, client_id, cipher_suite, data, not_before, not_after, last_resort, uploaded_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
				kp.Ref, client, int64(kp.CipherSuite), nonNil(kp.Data), kp.NotBefore.UnixMicro(), kp.NotAfter.UnixMicro(),
				kp.LastResort, kp.UploadedAt.UnixMicro())
			if err != nil {
				return err
			}
		}
		return nil
	})
}

const kpColumns = "ref, client_id, cipher_suite, data, not_before, not_after, last_resort, uploaded_at, claimed_by, claimed_at, consumed_at"

func scanKeyPackage(row interface{ Scan(...any) error }) (ds.KeyPackageRecord, error) {
	var kp ds.KeyPackageRecord
	var cs int64
	var notBefore, notAfter, uploaded, claimedAt, consumedAt sql.NullInt64
	var claimedBy sql.NullString
	if err := row.Scan(&kp.Ref, &kp.ClientID, &cs, &kp.Data, &notBefore, &notAfter, &kp.LastResort, &uploaded,
		&claimedBy, &claimedAt, &consumedAt); err != nil {
		return ds.KeyPackageRecord{}, err
	}
	kp.CipherSuite = mls.CipherSuite(cs)
	kp.NotBefore = fromMicros(notBefore)
	kp.NotAfter = fromMicros(notAfter)
	kp.UploadedAt = fromMicros(uploaded)
	kp.ClaimedBy = claimedBy.String
	kp.ClaimedAt = fromMicros(claimedAt)
	kp.ConsumedAt = fromMicros(consumedAt)
	return kp, nil
}

func queryKeyPackages(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, query string, args ...any) ([]ds.KeyPackageRecord, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ds.KeyPackageRecord
	for rows.Next() {
		kp, err := scanKeyPackage(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, kp)
	}
	return out, rows.Err()
}

// KeyPackages implements ds.Store.
func (s *Store) KeyPackages(ctx context.Context, clientID string) ([]ds.KeyPackageRecord, error) {
	return queryKeyPackages(ctx, s.r,
		"SELECT "+kpColumns+" FROM key_packages WHERE client_id = ? AND claimed_at IS NULL ORDER BY id", clientID)
}

// DeleteKeyPackages implements ds.Store.
func (s *Store) DeleteKeyPackages(ctx context.Context, clientID string, refs [][]byte) (int, error) {
	n := 0
	err := s.write(ctx, func(tx *sql.Conn) error {
		for _, ref := range refs {
			res, err := tx.ExecContext(ctx,
				"DELETE FROM key_packages WHERE ref = ? AND client_id = ? AND claimed_at IS NULL", ref, clientID)
			if err != nil {
				return err
			}
			k, err := res.RowsAffected()
			if err != nil {
				return err
			}
			n += int(k)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// CountKeyPackages implements ds.Store.
func (s *Store) CountKeyPackages(ctx context.Context, clientID string, now time.Time) (map[mls.CipherSuite]int, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT cipher_suite, COUNT(*) FROM key_packages
		WHERE client_id = ? AND claimed_at IS NULL AND last_resort = 0 AND not_before <= ? AND not_after >= ?
		GROUP BY cipher_suite`, clientID, now.UnixMicro(), now.UnixMicro())
	if err != nil {
		return nil, err
	}
	return suiteCounts(rows)
}

// suiteCounts reads (cipher_suite, count) rows and closes them.
func suiteCounts(rows *sql.Rows) (map[mls.CipherSuite]int, error) {
	defer rows.Close()
	out := make(map[mls.CipherSuite]int)
	for rows.Next() {
		var cs int64
		var n int
		if err := rows.Scan(&cs, &n); err != nil {
			return nil, err
		}
		out[mls.CipherSuite(cs)] = n
	}
	return out, rows.Err()
}

// KeyPackageStock implements ds.Store.
func (s *Store) KeyPackageStock(ctx context.Context, now time.Time) (map[mls.CipherSuite]int, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT cipher_suite, COUNT(*) FROM key_packages
		WHERE claimed_at IS NULL AND last_resort = 0 AND not_before <= ? AND not_after >= ?
		GROUP BY cipher_suite`, now.UnixMicro(), now.UnixMicro())
	if err != nil {
		return nil, err
	}
	return suiteCounts(rows)
}

// ClaimKeyPackages implements ds.Store.
func (s *Store) ClaimKeyPackages(ctx context.Context, p ds.ClaimParams) ([]ds.Claim, error) {
	var out []ds.Claim
	now := p.Now.UnixMicro()
	err := s.write(ctx, func(tx *sql.Conn) error {
		out = out[:0]
		for _, target := range p.Targets {
			c := ds.Claim{Target: target}
			kp, err := scanKeyPackage(tx.QueryRowContext(ctx, "SELECT "+kpColumns+` FROM key_packages
				WHERE client_id = ? AND cipher_suite = ? AND last_resort = 0 AND claimed_at IS NULL
				  AND not_before <= ? AND not_after >= ?
				ORDER BY id LIMIT 1`, target, int64(p.Suite), now, now))
			switch {
			case err == nil:
				if _, err := tx.ExecContext(ctx,
					"UPDATE key_packages SET claimed_by = ?, claimed_at = ? WHERE ref = ?", p.Claimer, now, kp.Ref); err != nil {
					return err
				}
				kp.ClaimedBy, kp.ClaimedAt = p.Claimer, time.UnixMicro(now).UTC()
				c.KeyPackage = &kp
			case errors.Is(err, sql.ErrNoRows):
				kp, err := scanKeyPackage(tx.QueryRowContext(ctx, "SELECT "+kpColumns+` FROM key_packages
					WHERE client_id = ? AND cipher_suite = ? AND last_resort = 1
					  AND not_before <= ? AND not_after >= ?`, target, int64(p.Suite), now, now))
				if err == nil {
					c.KeyPackage = &kp
				} else if !errors.Is(err, sql.ErrNoRows) {
					return err
				}
			default:
				return err
			}
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM key_packages
				WHERE client_id = ? AND cipher_suite = ? AND last_resort = 0 AND claimed_at IS NULL
				  AND not_before <= ? AND not_after >= ?`, target, int64(p.Suite), now, now).Scan(&c.Remaining); err != nil {
				return err
			}
			out = append(out, c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// KeyPackagesByRef implements ds.Store.
func (s *Store) KeyPackagesByRef(ctx context.Context, refs [][]byte) ([]ds.KeyPackageRecord, error) {
	var out []ds.KeyPackageRecord
	for _, ref := range refs {
		kp, err := scanKeyPackage(s.r.QueryRowContext(ctx, "SELECT "+kpColumns+" FROM key_packages WHERE ref = ?", ref))
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, kp)
	}
	return out, nil
}
