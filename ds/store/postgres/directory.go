package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// CreateClient implements ds.Store.
func (s *Store) CreateClient(ctx context.Context, c ds.Client) error {
	if err := checkText("client id", c.ID, c.UserID); err != nil {
		return err
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO clients (id, user_id, cipher_suite, signature_key, created_at)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING`,
		c.ID, c.UserID, int32(c.CipherSuite), nonNil(c.SignatureKey), ts(c.CreatedAt))
	if err != nil {
		return engineErr("create client", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: client %q", ds.ErrAlreadyExists, c.ID)
	}
	return nil
}

const clientColumns = "id, user_id, cipher_suite, signature_key, created_at"

func scanClient(row pgx.Row) (ds.Client, error) {
	var c ds.Client
	var cs int32
	var created *time.Time
	if err := row.Scan(&c.ID, &c.UserID, &cs, &c.SignatureKey, &created); err != nil {
		return ds.Client{}, err
	}
	c.CipherSuite = mls.CipherSuite(cs)
	c.CreatedAt = fromTS(created)
	return c, nil
}

// Client implements ds.Store.
func (s *Store) Client(ctx context.Context, id string) (ds.Client, error) {
	if !textOK(id) {
		return ds.Client{}, fmt.Errorf("%w: client %q", ds.ErrNotFound, id)
	}
	c, err := scanClient(s.pool.QueryRow(ctx, "SELECT "+clientColumns+" FROM clients WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return ds.Client{}, fmt.Errorf("%w: client %q", ds.ErrNotFound, id)
	}
	return c, engineErr("read client", err)
}

// ClientsOfUser implements ds.Store.
func (s *Store) ClientsOfUser(ctx context.Context, userID string) ([]ds.Client, error) {
	if !textOK(userID) {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT "+clientColumns+" FROM clients WHERE user_id = $1 ORDER BY id", userID)
	if err != nil {
		return nil, engineErr("read clients of user", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ds.Client, error) { return scanClient(r) })
	return out, engineErr("read clients of user", err)
}

// lockClient locks the clients row of id for the rest of tx: uploads and
// claims of one client's KeyPackages are serialised on it.
func lockClient(ctx context.Context, tx pgx.Tx, id string) error {
	var one int
	err := tx.QueryRow(ctx, "SELECT 1 FROM clients WHERE id = $1 FOR UPDATE", id).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: client %q is not registered", ds.ErrNotFound, id)
	}
	return err
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
	if err := checkText("client id", client); err != nil {
		return err
	}
	seen := make(map[string]bool, len(kps))
	lastResort := make(map[mls.CipherSuite]bool)
	var refs [][]byte
	for _, kp := range kps {
		if kp.ClientID != client {
			return errors.New("postgres: AddKeyPackages: KeyPackages of several clients in one call")
		}
		if seen[string(kp.Ref)] {
			return fmt.Errorf("%w: KeyPackage %x appears twice in the upload", ds.ErrAlreadyExists, kp.Ref)
		}
		seen[string(kp.Ref)] = true
		refs = append(refs, nonNil(kp.Ref))
		if kp.LastResort {
			if lastResort[kp.CipherSuite] {
				return fmt.Errorf("%w: the upload has two last-resort KeyPackages for cipher suite %d; at most one per suite", ds.ErrAlreadyExists, kp.CipherSuite)
			}
			lastResort[kp.CipherSuite] = true
		}
	}
	return unwrapQuota(s.tx(ctx, "add key packages", func(tx pgx.Tx) error {
		if err := lockClient(ctx, tx, client); err != nil {
			return err
		}
		var stored int
		var storedBytes int64
		if err := tx.QueryRow(ctx,
			"SELECT count(*), COALESCE(sum(length(data)), 0) FROM key_packages WHERE client_id = $1 AND claimed_at IS NULL",
			client).Scan(&stored, &storedBytes); err != nil {
			return err
		}
		if stored+len(kps) > limit {
			return &ds.TooLargeError{Limit: limit, What: "unclaimed key packages per client"}
		}
		if lim.Bytes > 0 && storedBytes+ds.KeyPackageBytes(kps) > lim.Bytes {
			return &ds.QuotaExceededError{What: ds.QuotaKeyPackageBytes, Limit: lim.Bytes}
		}
		var dup []byte
		err := tx.QueryRow(ctx, "SELECT ref FROM key_packages WHERE ref = ANY($1) LIMIT 1", refs).Scan(&dup)
		if err == nil {
			return fmt.Errorf("%w: KeyPackage %x is already stored", ds.ErrAlreadyExists, dup)
		} else if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		for suite := range lastResort {
			var one int
			err := tx.QueryRow(ctx,
				"SELECT 1 FROM key_packages WHERE client_id = $1 AND cipher_suite = $2 AND last_resort",
				client, int32(suite)).Scan(&one)
			if err == nil {
				return fmt.Errorf("%w: client %q already has a last-resort KeyPackage for cipher suite %d; delete it before uploading another", ds.ErrAlreadyExists, client, suite)
			} else if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
		}
		b := &pgx.Batch{}
		for _, kp := range kps {
			b.Queue(`INSERT INTO key_packages
				(ref, client_id, cipher_suite, data, not_before, not_after, last_resort, uploaded_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
				nonNil(kp.Ref), client, int32(kp.CipherSuite), nonNil(kp.Data), kp.NotBefore, kp.NotAfter, kp.LastResort, kp.UploadedAt)
		}
		err = tx.SendBatch(ctx, b).Close()
		if uniqueViolation(err, "") {
			// Another client uploaded one of the refs concurrently.
			return fmt.Errorf("%w: a KeyPackage of the upload is already stored", ds.ErrAlreadyExists)
		}
		return err
	}))
}

const kpColumns = "ref, client_id, cipher_suite, data, not_before, not_after, last_resort, uploaded_at, claimed_by, claimed_at, consumed_at"

func scanKeyPackage(row pgx.Row) (ds.KeyPackageRecord, error) {
	var kp ds.KeyPackageRecord
	var cs int32
	var claimedBy *string
	var claimedAt, consumedAt *time.Time
	if err := row.Scan(&kp.Ref, &kp.ClientID, &cs, &kp.Data, &kp.NotBefore, &kp.NotAfter, &kp.LastResort, &kp.UploadedAt,
		&claimedBy, &claimedAt, &consumedAt); err != nil {
		return ds.KeyPackageRecord{}, err
	}
	kp.CipherSuite = mls.CipherSuite(cs)
	kp.NotBefore, kp.NotAfter, kp.UploadedAt = kp.NotBefore.UTC(), kp.NotAfter.UTC(), kp.UploadedAt.UTC()
	if claimedBy != nil {
		kp.ClaimedBy = *claimedBy
	}
	kp.ClaimedAt = fromTS(claimedAt)
	kp.ConsumedAt = fromTS(consumedAt)
	return kp, nil
}

func collectKeyPackages(rows pgx.Rows, err error) ([]ds.KeyPackageRecord, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ds.KeyPackageRecord, error) { return scanKeyPackage(r) })
}

// KeyPackages implements ds.Store.
func (s *Store) KeyPackages(ctx context.Context, clientID string) ([]ds.KeyPackageRecord, error) {
	if !textOK(clientID) {
		return nil, nil
	}
	out, err := collectKeyPackages(s.pool.Query(ctx,
		"SELECT "+kpColumns+" FROM key_packages WHERE client_id = $1 AND claimed_at IS NULL ORDER BY id", clientID))
	return out, engineErr("list key packages", err)
}

// DeleteKeyPackages implements ds.Store.
func (s *Store) DeleteKeyPackages(ctx context.Context, clientID string, refs [][]byte) (int, error) {
	if len(refs) == 0 || !textOK(clientID) {
		return 0, nil
	}
	tag, err := s.pool.Exec(ctx,
		"DELETE FROM key_packages WHERE client_id = $1 AND claimed_at IS NULL AND ref = ANY($2)", clientID, nonNilAll(refs))
	if err != nil {
		return 0, engineErr("delete key packages", err)
	}
	return int(tag.RowsAffected()), nil
}

// CountKeyPackages implements ds.Store.
func (s *Store) CountKeyPackages(ctx context.Context, clientID string, now time.Time) (map[mls.CipherSuite]int, error) {
	out := make(map[mls.CipherSuite]int)
	if !textOK(clientID) {
		return out, nil
	}
	return s.suiteCounts(ctx, "count key packages", `SELECT cipher_suite, count(*) FROM key_packages
		WHERE client_id = $1 AND claimed_at IS NULL AND NOT last_resort AND not_before <= $2 AND not_after >= $2
		GROUP BY cipher_suite`, clientID, now)
}

// KeyPackageStock implements ds.Store.
func (s *Store) KeyPackageStock(ctx context.Context, now time.Time) (map[mls.CipherSuite]int, error) {
	return s.suiteCounts(ctx, "count key package stock", `SELECT cipher_suite, count(*) FROM key_packages
		WHERE claimed_at IS NULL AND NOT last_resort AND not_before <= $1 AND not_after >= $1
		GROUP BY cipher_suite`, now)
}

// suiteCounts runs a query that yields (cipher_suite, count) rows.
func (s *Store) suiteCounts(ctx context.Context, what, query string, args ...any) (map[mls.CipherSuite]int, error) {
	out := make(map[mls.CipherSuite]int)
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, engineErr(what, err)
	}
	var cs int32
	var n int
	_, err = pgx.ForEachRow(rows, []any{&cs, &n}, func() error {
		out[mls.CipherSuite(cs)] = n
		return nil
	})
	if err != nil {
		return nil, engineErr(what, err)
	}
	return out, nil
}

// claimQuery claims the oldest claimable KeyPackage of a client ($1) for a
// suite ($2) valid at $3 for claimer $4, or else returns the client's
// last-resort KeyPackage valid at $3 without changing it. SKIP LOCKED
// passes over a KeyPackage that another transaction is deleting or
// claiming; the UPDATE re-checks claimed_at on the locked row.
const claimQuery = `WITH pick AS (
		SELECT id FROM key_packages
		WHERE client_id = $1 AND cipher_suite = $2 AND NOT last_resort AND claimed_at IS NULL
		  AND not_before <= $3 AND not_after >= $3
		ORDER BY id LIMIT 1
		FOR UPDATE SKIP LOCKED
	), claimed AS (
		UPDATE key_packages k SET claimed_by = $4, claimed_at = $3
		FROM pick WHERE k.id = pick.id AND k.claimed_at IS NULL
		RETURNING k.ref, k.client_id, k.cipher_suite, k.data, k.not_before, k.not_after, k.last_resort,
		          k.uploaded_at, k.claimed_by, k.claimed_at, k.consumed_at
	)
	SELECT * FROM claimed
	UNION ALL
	(SELECT ` + kpColumns + ` FROM key_packages
	 WHERE client_id = $1 AND cipher_suite = $2 AND last_resort AND not_before <= $3 AND not_after >= $3
	   AND NOT EXISTS (SELECT 1 FROM claimed)
	 LIMIT 1)`

// ClaimKeyPackages implements ds.Store.
func (s *Store) ClaimKeyPackages(ctx context.Context, p ds.ClaimParams) ([]ds.Claim, error) {
	if err := checkText("claimer id", p.Claimer); err != nil {
		return nil, err
	}
	var targets []string // those that can have KeyPackages
	for _, t := range p.Targets {
		if textOK(t) {
			targets = append(targets, t)
		}
	}
	var out []ds.Claim
	err := s.tx(ctx, "claim key packages", func(tx pgx.Tx) error {
		out = make([]ds.Claim, 0, len(p.Targets))
		b := &pgx.Batch{}
		// Lock the targets in one order, so that claims cannot deadlock.
		b.Queue("SELECT id FROM clients WHERE id = ANY($1) ORDER BY id FOR UPDATE", targets)
		for _, t := range p.Targets {
			if !textOK(t) {
				continue
			}
			b.Queue(claimQuery, t, int32(p.Suite), p.Now, p.Claimer)
			b.Queue(`SELECT count(*) FROM key_packages
				WHERE client_id = $1 AND cipher_suite = $2 AND NOT last_resort AND claimed_at IS NULL
				  AND not_before <= $3 AND not_after >= $3`, t, int32(p.Suite), p.Now)
		}
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		if _, err := br.Exec(); err != nil {
			return err
		}
		for _, t := range p.Targets {
			c := ds.Claim{Target: t}
			if textOK(t) {
				kps, err := collectKeyPackages(br.Query())
				if err != nil {
					return err
				}
				if len(kps) > 0 {
					c.KeyPackage = &kps[0]
				}
				if err := br.QueryRow().Scan(&c.Remaining); err != nil {
					return err
				}
			}
			out = append(out, c)
		}
		return br.Close()
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// KeyPackagesByRef implements ds.Store.
func (s *Store) KeyPackagesByRef(ctx context.Context, refs [][]byte) ([]ds.KeyPackageRecord, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	out, err := collectKeyPackages(s.pool.Query(ctx, `SELECT k.ref, k.client_id, k.cipher_suite, k.data, k.not_before,
		k.not_after, k.last_resort, k.uploaded_at, k.claimed_by, k.claimed_at, k.consumed_at
		FROM unnest($1::bytea[]) WITH ORDINALITY AS r (ref, ord)
		JOIN key_packages k ON k.ref = r.ref
		ORDER BY r.ord`, nonNilAll(refs)))
	return out, engineErr("read key packages by ref", err)
}

// nonNilAll replaces nil elements, which would become NULL in an array.
func nonNilAll(bs [][]byte) [][]byte {
	for _, b := range bs {
		if b == nil {
			out := make([][]byte, len(bs))
			for i, b := range bs {
				out[i] = nonNil(b)
			}
			return out
		}
	}
	return bs
}
