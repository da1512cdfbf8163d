package client

import (
	"context"
	"database/sql"
	"fmt"
)

// The state of a deniable group besides its MLS state (deniableState: the
// membership keys of the last epochs, hashes of the client's own recent
// messages, the Welcome it joined from) lives in a table of its own,
// written in the same transaction as the group's row. The group's
// position is the group row's processed: the server keeps none.
const deniableSchema = `
CREATE TABLE IF NOT EXISTS deniable_groups (
	group_id BLOB PRIMARY KEY,
	state BLOB NOT NULL
);
`

// migrateDeniable adds the table to a state file that lacks it.
func migrateDeniable(ctx context.Context, db *sql.DB) error {
	_, err := db.ExecContext(ctx, deniableSchema)
	return err
}

// putDeniableTx writes r's deniable state, if it has one, in tx.
func putDeniableTx(ctx context.Context, tx *sql.Tx, r *groupRow) error {
	if r.deniable == nil {
		return nil
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO deniable_groups (group_id, state) VALUES (?, ?)
		ON CONFLICT (group_id) DO UPDATE SET state = excluded.state`,
		r.id, r.deniable.marshal())
	return err
}

// deniableStates reads the deniable state of every deniable group, by
// group id.
func (s *store) deniableStates(ctx context.Context) (map[string]*deniableState, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT group_id, state FROM deniable_groups`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]*deniableState{}
	for rows.Next() {
		var id, data []byte
		if err := rows.Scan(&id, &data); err != nil {
			return nil, err
		}
		d, err := unmarshalDeniableState(data)
		if err != nil {
			return nil, fmt.Errorf("group %x: %w", id, err)
		}
		out[string(id)] = d
	}
	return out, rows.Err()
}

// deniableRowLocked notes the membership key of g's current epoch and
// returns the deniable state to write with g's row (nil for other
// groups).
func (g *Group) deniableRowLocked() *deniableState {
	if g.den == nil {
		return nil
	}
	if !g.removed {
		g.den.note(g.st)
	}
	return g.den
}
