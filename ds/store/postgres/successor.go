package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/mlsds/mlsds/ds"
)

// Successor implements ds.Store.
func (s *Store) Successor(ctx context.Context, groupID []byte) ([]byte, error) {
	var id []byte
	err := s.pool.QueryRow(ctx, "SELECT successor_id FROM group_successors WHERE group_id = $1", nonNil(groupID)).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return id, engineErr("read successor", err)
}

// linkSuccessor stores, within CreateGroup's transaction, that g succeeds
// g.Predecessor; ErrAlreadyExists if the predecessor has a successor.
func linkSuccessor(ctx context.Context, tx pgx.Tx, g ds.GroupRecord) error {
	if len(g.Predecessor) == 0 {
		return nil
	}
	tag, err := tx.Exec(ctx, `INSERT INTO group_successors (group_id, successor_id, linked_at) VALUES ($1, $2, $3)
		ON CONFLICT (group_id) DO NOTHING`, g.Predecessor, nonNil(g.ID), ts(g.CreatedAt))
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: group %x has a successor already", ds.ErrAlreadyExists, g.Predecessor)
	}
	return nil
}
