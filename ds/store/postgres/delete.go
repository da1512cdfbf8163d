package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
)

// DeleteClient implements ds.Store. It locks the client's row, then the
// rows of the groups it is a member of (in id order), so that the groups
// it leaves empty are told exactly, and no message of it comes in between.
// A Commit that would add
// the client concurrently consumes one of its KeyPackages, whose row this
// transaction deletes: one of the two waits for the other, and the Commit
// then fails for want of the KeyPackage.
func (s *Store) DeleteClient(ctx context.Context, clientID string) (ds.ClientDeletion, error) {
	if !textOK(clientID) {
		return ds.ClientDeletion{}, fmt.Errorf("%w: client %q", ds.ErrNotFound, clientID)
	}
	var d ds.ClientDeletion
	err := s.tx(ctx, "delete client", func(tx pgx.Tx) error {
		d = ds.ClientDeletion{ClientID: clientID}
		err := tx.QueryRow(ctx, "SELECT user_id FROM clients WHERE id = $1 FOR UPDATE", clientID).Scan(&d.UserID)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: client %q", ds.ErrNotFound, clientID)
		} else if err != nil {
			return err
		}
		if d.Groups, err = blobsOf(ctx, tx, `SELECT g.id FROM groups g
			WHERE g.id IN (SELECT group_id FROM memberships WHERE client_id = $1 AND until_seq IS NULL)
			ORDER BY g.id FOR UPDATE OF g`, clientID); err != nil {
			return err
		}
		// Every group the client ever was in: it has a cursor there from
		// its first window on (Leave keeps it), and it can have sent to
		// no other group. This bounds the rewrite of messages.sender,
		// which has no index of its own.
		touched, err := blobsOf(ctx, tx, `SELECT group_id FROM cursors WHERE client_id = $1
			UNION SELECT group_id FROM memberships WHERE client_id = $1 ORDER BY 1`, clientID)
		if err != nil {
			return err
		}
		// The groups it leaves without members: among those it ever was
		// in, those where nobody else has an open window (also those it
		// left before, which nobody else is in either).
		for _, g := range touched {
			var others bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM memberships
				WHERE group_id = $1 AND until_seq IS NULL AND client_id <> $2)`, g, clientID).Scan(&others); err != nil {
				return err
			}
			if !others {
				d.EmptiedGroups = append(d.EmptiedGroups, g)
			}
		}
		b := &pgx.Batch{}
		b.Queue("UPDATE messages SET sender = $3 WHERE group_id = ANY($2) AND sender = $1", clientID, nonNilAll(touched), ds.DeletedSender)
		// The Welcomes routed to the client, then those no route names
		// any more.
		b.Queue(`WITH gone AS (DELETE FROM welcome_routes WHERE client_id = $1 RETURNING group_id, commit_seq)
			DELETE FROM welcomes w USING gone
			WHERE w.group_id = gone.group_id AND w.commit_seq = gone.commit_seq
			AND NOT EXISTS (SELECT 1 FROM welcome_routes r
				WHERE r.group_id = w.group_id AND r.commit_seq = w.commit_seq AND r.client_id <> $1)`, clientID)
		b.Queue("DELETE FROM memberships WHERE client_id = $1", clientID)
		b.Queue("DELETE FROM cursors WHERE client_id = $1", clientID)
		b.Queue("DELETE FROM key_packages WHERE client_id = $1", clientID)
		b.Queue("UPDATE key_packages SET claimed_by = NULL WHERE claimed_by = $1", clientID)
		b.Queue("DELETE FROM device_links WHERE creator = $1 OR used_by = $1", clientID)
		b.Queue("DELETE FROM join_links WHERE created_by = $1", clientID)
		b.Queue("UPDATE groups SET creator = $2 WHERE creator = $1", clientID, ds.DeletedSender)
		b.Queue("UPDATE remote_trees SET sender = $2 WHERE sender = $1", clientID, ds.DeletedSender)
		b.Queue("DELETE FROM client_keys WHERE client_id = $1", clientID)
		b.Queue("DELETE FROM clients WHERE id = $1", clientID)
		// The client's daily quota counters (quota.go).
		b.Queue("DELETE FROM quota_usage WHERE client_id = $1", clientID)
		// The links that would admit a new client to a user that has
		// none left: the user id is free again.
		b.Queue(`DELETE FROM device_links WHERE user_id = $1
			AND NOT EXISTS (SELECT 1 FROM clients WHERE user_id = $1)`, d.UserID)
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return ds.ClientDeletion{}, err
	}
	return d, nil
}

// blobsOf runs a query whose rows are one bytea each.
func blobsOf(ctx context.Context, tx pgx.Tx, q string, args ...any) ([][]byte, error) {
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[[]byte])
}
