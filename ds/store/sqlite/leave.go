package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/mlsds/mlsds/ds"
)

// Leave implements ds.Store. The write transaction holds SQLite's write
// lock, so no message is appended between reading the group's last
// GroupSeq and closing the window there.
func (s *Store) Leave(ctx context.Context, groupID []byte, clientID string) (uint64, error) {
	var last int64
	err := s.write(ctx, func(tx *sql.Conn) error {
		err := tx.QueryRowContext(ctx, "SELECT "+lastSeq("groups")+" FROM groups WHERE id = ?", groupID).Scan(&last)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: group %x", ds.ErrNotFound, groupID)
		} else if err != nil {
			return err
		}
		var from int64
		err = tx.QueryRowContext(ctx,
			"SELECT from_seq FROM memberships WHERE group_id = ? AND client_id = ? AND until_seq IS NULL",
			groupID, clientID).Scan(&from)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: %q is not a member of group %x", ds.ErrNotMember, clientID, groupID)
		} else if err != nil {
			return err
		}
		if from > last {
			// Nothing was sent in the window yet: an empty window
			// cannot be written down (until_seq < from_seq, or 0,
			// which reads as open), so it goes.
			_, err = tx.ExecContext(ctx,
				"DELETE FROM memberships WHERE group_id = ? AND client_id = ? AND from_seq = ?", groupID, clientID, from)
		} else {
			_, err = tx.ExecContext(ctx,
				"UPDATE memberships SET until_seq = ? WHERE group_id = ? AND client_id = ? AND from_seq = ?",
				last, groupID, clientID, from)
		}
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx,
			"UPDATE welcome_routes SET delivered = 1 WHERE client_id = ? AND group_id = ? AND delivered = 0",
			clientID, groupID)
		return err
	})
	if err != nil {
		return 0, err
	}
	return uint64(last), nil
}
