package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mlsds/mlsds/ds"
)

const joinLinkColumns = "group_id, link_id, token_hash, created_by, created_at, expires_at"

func scanJoinLink(row interface{ Scan(...any) error }) (ds.JoinLink, error) {
	var l ds.JoinLink
	var created, expires sql.NullInt64
	if err := row.Scan(&l.GroupID, &l.ID, &l.TokenHash, &l.CreatedBy, &created, &expires); err != nil {
		return ds.JoinLink{}, err
	}
	l.CreatedAt, l.ExpiresAt = fromMicros(created), fromMicros(expires)
	return l, nil
}

// CreateJoinLink implements ds.Store.
func (s *Store) CreateJoinLink(ctx context.Context, l ds.JoinLink, limit int) error {
	return s.write(ctx, func(tx *sql.Conn) error {
		var one int
		err := tx.QueryRowContext(ctx, "SELECT 1 FROM groups WHERE id = ?", l.GroupID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: group %x", ds.ErrNotFound, l.GroupID)
		} else if err != nil {
			return err
		}
		now := l.CreatedAt.UnixMicro()
		if _, err := tx.ExecContext(ctx, "DELETE FROM join_links WHERE group_id = ? AND expires_at <= ?", l.GroupID, now); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM join_links WHERE group_id = ?", l.GroupID).Scan(&n); err != nil {
			return err
		}
		if n >= limit {
			return &ds.TooLargeError{Limit: limit, What: "live join links per group"}
		}
		_, err = tx.ExecContext(ctx, "INSERT INTO join_links ("+joinLinkColumns+") VALUES (?, ?, ?, ?, ?, ?)",
			l.GroupID, l.ID, nonNil(l.TokenHash), l.CreatedBy, now, l.ExpiresAt.UnixMicro())
		if err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed") {
			return fmt.Errorf("%w: join link %q", ds.ErrAlreadyExists, l.ID)
		}
		return err
	})
}

// JoinLinkByToken implements ds.Store.
func (s *Store) JoinLinkByToken(ctx context.Context, groupID, tokenHash []byte, now time.Time) (ds.JoinLink, error) {
	l, err := scanJoinLink(s.r.QueryRowContext(ctx,
		"SELECT "+joinLinkColumns+" FROM join_links WHERE token_hash = ? AND group_id = ? AND expires_at > ?",
		nonNil(tokenHash), groupID, now.UnixMicro()))
	if errors.Is(err, sql.ErrNoRows) {
		return ds.JoinLink{}, fmt.Errorf("%w: join link", ds.ErrNotFound)
	}
	return l, err
}

// JoinLinks implements ds.Store.
func (s *Store) JoinLinks(ctx context.Context, groupID []byte, now time.Time) ([]ds.JoinLink, error) {
	rows, err := s.r.QueryContext(ctx,
		"SELECT "+joinLinkColumns+" FROM join_links WHERE group_id = ? AND expires_at > ? ORDER BY created_at, link_id",
		groupID, now.UnixMicro())
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
	return s.write(ctx, func(tx *sql.Conn) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM join_links WHERE group_id = ? AND link_id = ?", groupID, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("%w: join link %q of group %x", ds.ErrNotFound, id, groupID)
		}
		return nil
	})
}
