package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
)

// Leave implements ds.Store. It locks the group's row, as every accept
// does, so that no message is appended between reading last_seq and
// closing the window there.
func (s *Store) Leave(ctx context.Context, groupID []byte, clientID string) (uint64, error) {
	if !textOK(clientID) {
		// Never stored, so never a member; but an unknown group is
		// still told apart, as for every other client.
		if _, err := s.Group(ctx, groupID); err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("%w: %q is not a member of group %x", ds.ErrNotMember, clientID, groupID)
	}
	groupID = nonNil(groupID)
	var last int64
	err := s.tx(ctx, "leave group", func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, "SELECT last_seq FROM groups WHERE id = $1 FOR UPDATE", groupID).Scan(&last)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
		} else if err != nil {
			return err
		}
		var from int64
		err = tx.QueryRow(ctx,
			"SELECT from_seq FROM memberships WHERE group_id = $1 AND client_id = $2 AND until_seq IS NULL",
			groupID, clientID).Scan(&from)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %q is not a member of group %x", ds.ErrNotMember, clientID, groupID)
		} else if err != nil {
			return err
		}
		b := &pgx.Batch{}
		if from > last {
			// Nothing was sent in the window yet: an empty window
			// cannot be written down (until_seq < from_seq, or 0,
			// which reads as open), so it goes.
			b.Queue("DELETE FROM memberships WHERE group_id = $1 AND client_id = $2 AND from_seq = $3",
				groupID, clientID, from)
		} else {
			b.Queue("UPDATE memberships SET until_seq = $4 WHERE group_id = $1 AND client_id = $2 AND from_seq = $3",
				groupID, clientID, from, last)
		}
		b.Queue("UPDATE welcome_routes SET delivered = true WHERE client_id = $1 AND group_id = $2 AND NOT delivered",
			clientID, groupID)
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return 0, err
	}
	return uint64(last), nil
}
