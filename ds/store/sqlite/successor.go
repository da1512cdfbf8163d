package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/mlsds/mlsds/ds"
)

// Successor implements ds.Store.
func (s *Store) Successor(ctx context.Context, groupID []byte) ([]byte, error) {
	var id []byte
	err := s.r.QueryRowContext(ctx, "SELECT successor_id FROM group_successors WHERE group_id = ?", groupID).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return id, err
}

// linkSuccessor stores, within CreateGroup's transaction, that g succeeds
// g.Predecessor; ErrAlreadyExists if the predecessor has a successor.
func linkSuccessor(ctx context.Context, tx *sql.Conn, g ds.GroupRecord) error {
	if len(g.Predecessor) == 0 {
		return nil
	}
	r, err := tx.ExecContext(ctx, `INSERT INTO group_successors (group_id, successor_id, linked_at) VALUES (?, ?, ?)
		ON CONFLICT (group_id) DO NOTHING`, g.Predecessor, g.ID, micros(g.CreatedAt))
	if err != nil {
		return err
	}
	if n, _ := r.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: group %x has a successor already", ds.ErrAlreadyExists, g.Predecessor)
	}
	return nil
}
