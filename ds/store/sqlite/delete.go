package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/mlsds/mlsds/ds"
)

// DeleteClient implements ds.Store. The write transaction holds SQLite's
// write lock, so no message, claim or Commit comes in between.
func (s *Store) DeleteClient(ctx context.Context, clientID string) (ds.ClientDeletion, error) {
	var d ds.ClientDeletion
	err := s.write(ctx, func(tx *sql.Conn) error {
		d = ds.ClientDeletion{ClientID: clientID}
		err := tx.QueryRowContext(ctx, "SELECT user_id FROM clients WHERE id = ?", clientID).Scan(&d.UserID)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: client %q", ds.ErrNotFound, clientID)
		} else if err != nil {
			return err
		}
		if d.Groups, err = blobColumn(ctx, tx,
			"SELECT group_id FROM memberships WHERE client_id = ? AND until_seq IS NULL ORDER BY group_id", clientID); err != nil {
			return err
		}
		// Every group the client ever was in: it has a cursor there from
		// its first window on (Leave keeps it), and it can have sent to
		// no other group. This bounds the rewrite of messages.sender,
		// which has no index of its own.
		touched, err := blobColumn(ctx, tx, `SELECT group_id FROM cursors WHERE client_id = ?
			UNION SELECT group_id FROM memberships WHERE client_id = ? ORDER BY 1`, clientID, clientID)
		if err != nil {
			return err
		}
		// The groups it leaves without members: among those it ever was
		// in, those where nobody else has an open window (also those it
		// left before, which nobody else is in either).
		for _, g := range touched {
			var others int
			if err := tx.QueryRowContext(ctx,
				"SELECT count(*) FROM memberships WHERE group_id = ? AND until_seq IS NULL AND client_id <> ?",
				g, clientID).Scan(&others); err != nil {
				return err
			}
			if others == 0 {
				d.EmptiedGroups = append(d.EmptiedGroups, g)
			}
		}
		for _, g := range touched {
			if _, err := tx.ExecContext(ctx, "UPDATE messages SET sender = ? WHERE group_id = ? AND sender = ?",
				ds.DeletedSender, g, clientID); err != nil {
				return err
			}
		}
		// The Welcomes routed to the client, then those no route names
		// any more.
		type welcomeKey struct {
			group []byte
			seq   int64
		}
		var welcomes []welcomeKey
		rows, err := tx.QueryContext(ctx, "SELECT group_id, commit_seq FROM welcome_routes WHERE client_id = ?", clientID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var w welcomeKey
			if err := rows.Scan(&w.group, &w.seq); err != nil {
				rows.Close()
				return err
			}
			welcomes = append(welcomes, w)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM welcome_routes WHERE client_id = ?", clientID); err != nil {
			return err
		}
		for _, w := range welcomes {
			if _, err := tx.ExecContext(ctx, `DELETE FROM welcomes WHERE group_id = ? AND commit_seq = ?
				AND NOT EXISTS (SELECT 1 FROM welcome_routes r WHERE r.group_id = welcomes.group_id AND r.commit_seq = welcomes.commit_seq)`,
				w.group, w.seq); err != nil {
				return err
			}
		}
		for _, q := range []string{
			"DELETE FROM memberships WHERE client_id = ?1",
			"DELETE FROM cursors WHERE client_id = ?1",
			"DELETE FROM key_packages WHERE client_id = ?1",
			"UPDATE key_packages SET claimed_by = NULL WHERE claimed_by = ?1",
			"DELETE FROM device_links WHERE creator = ?1 OR used_by = ?1",
			"DELETE FROM join_links WHERE created_by = ?1",
			"UPDATE groups SET creator = ?2 WHERE creator = ?1",
			"UPDATE remote_trees SET sender = ?2 WHERE sender = ?1",
			"DELETE FROM client_keys WHERE client_id = ?1",
			"DELETE FROM clients WHERE id = ?1",
		} {
			if _, err := tx.ExecContext(ctx, q, clientID, ds.DeletedSender); err != nil {
				return fmt.Errorf("sqlite: delete client: %q: %w", q, err)
			}
		}
		// The client's daily quota counters (quota.go).
		if _, err := tx.ExecContext(ctx, "DELETE FROM quota_usage WHERE client_id = ?", clientID); err != nil {
			return err
		}
		// The links that would admit a new client to a user that has none
		// left: the user id is free again.
		_, err = tx.ExecContext(ctx, `DELETE FROM device_links WHERE user_id = ?
			AND NOT EXISTS (SELECT 1 FROM clients WHERE user_id = ?)`, d.UserID, d.UserID)
		return err
	})
	if err != nil {
		return ds.ClientDeletion{}, err
	}
	return d, nil
}
