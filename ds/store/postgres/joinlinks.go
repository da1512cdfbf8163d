package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
)

const joinLinkColumns = "group_id, link_id, token_hash, created_by, created_at, expires_at"

func scanJoinLink(row pgx.Row) (ds.JoinLink, error) {
	var l ds.JoinLink
	if err := row.Scan(&l.GroupID, &l.ID, &l.TokenHash, &l.CreatedBy, &l.CreatedAt, &l.ExpiresAt); err != nil {
		return ds.JoinLink{}, err
	}
	l.CreatedAt, l.ExpiresAt = l.CreatedAt.UTC(), l.ExpiresAt.UTC()
	return l, nil
}

// CreateJoinLink implements ds.Store.
func (s *Store) CreateJoinLink(ctx context.Context, l ds.JoinLink, limit int) error {
	if err := checkText("join link id", l.ID, l.CreatedBy); err != nil {
		return err
	}
	return s.tx(ctx, "create join link", func(tx pgx.Tx) error {
		// The group's row lock orders the count and the insert of
		// concurrent creators.
		var one int
		err := tx.QueryRow(ctx, "SELECT 1 FROM groups WHERE id = $1 FOR UPDATE", nonNil(l.GroupID)).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: group %x", ds.ErrNotFound, l.GroupID)
		} else if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM join_links WHERE group_id = $1 AND expires_at <= $2", nonNil(l.GroupID), l.CreatedAt); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM join_links WHERE group_id = $1", nonNil(l.GroupID)).Scan(&n); err != nil {
			return err
		}
		if n >= limit {
			return &ds.TooLargeError{Limit: limit, What: "live join links per group"}
		}
		_, err = tx.Exec(ctx, "INSERT INTO join_links ("+joinLinkColumns+") VALUES ($1, $2, $3, $4, $5, $6)",
			nonNil(l.GroupID), l.ID, nonNil(l.TokenHash), l.CreatedBy, l.CreatedAt, l.ExpiresAt)
		if uniqueViolation(err, "") {
			return fmt.Errorf("%w: join link %q", ds.ErrAlreadyExists, l.ID)
		}
		return err
	})
}

// JoinLinkByToken implements ds.Store.
func (s *Store) JoinLinkByToken(ctx context.Context, groupID, tokenHash []byte, now time.Time) (ds.JoinLink, error) {
	l, err := scanJoinLink(s.pool.QueryRow(ctx,
		"SELECT "+joinLinkColumns+" FROM join_links WHERE token_hash = $1 AND group_id = $2 AND expires_at > $3",
		nonNil(tokenHash), nonNil(groupID), now))
	if errors.Is(err, pgx.ErrNoRows) {
		return ds.JoinLink{}, fmt.Errorf("%w: join link", ds.ErrNotFound)
	}
	return l, err
}

// JoinLinks implements ds.Store.
func (s *Store) JoinLinks(ctx context.Context, groupID []byte, now time.Time) ([]ds.JoinLink, error) {
	rows, err := s.pool.Query(ctx,
		"SELECT "+joinLinkColumns+" FROM join_links WHERE group_id = $1 AND expires_at > $2 ORDER BY created_at, link_id",
		nonNil(groupID), now)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ds.JoinLink
	for rows.Next() {
		l, err := scanJoinLink(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// RevokeJoinLink implements ds.Store.
func (s *Store) RevokeJoinLink(ctx context.Context, groupID []byte, id string) error {
	if !textOK(id) {
		return fmt.Errorf("%w: join link %q of group %x", ds.ErrNotFound, id, groupID)
	}
	tag, err := s.pool.Exec(ctx, "DELETE FROM join_links WHERE group_id = $1 AND link_id = $2", nonNil(groupID), id)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: join link %q of group %x", ds.ErrNotFound, id, groupID)
	}
	return nil
}
