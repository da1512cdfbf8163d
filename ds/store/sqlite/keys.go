package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/mlsds/mlsds/ds"
)

// The signature keys of clients (ds/keys.go), in client_keys
// (migrations/0008_client_keys.sql).

// ClientKeys implements ds.Store.
func (s *Store) ClientKeys(ctx context.Context, ids []string) (map[string][][]byte, error) {
	if len(ids) == 0 {
		return map[string][][]byte{}, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	rows, err := s.r.QueryContext(ctx, "SELECT client_id, signature_key FROM client_keys WHERE client_id IN ("+
		placeholders(len(ids))+") ORDER BY client_id, id", args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string][][]byte)
	for rows.Next() {
		var id string
		var key []byte
		if err := rows.Scan(&id, &key); err != nil {
			return nil, err
		}
		out[id] = append(out[id], key)
	}
	return out, rows.Err()
}

// AddClientKey implements ds.Store. The single writer connection
// serialises it with RemoveClientKey and DeleteClient.
func (s *Store) AddClientKey(ctx context.Context, clientID string, key []byte, now time.Time, limit int) error {
	return s.write(ctx, func(tx *sql.Conn) error {
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM clients WHERE id = ?", clientID).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("%w: client %q", ds.ErrNotFound, clientID)
		}
		var one int
		err := tx.QueryRowContext(ctx, "SELECT 1 FROM client_keys WHERE client_id = ? AND signature_key = ?", clientID, nonNil(key)).Scan(&one)
		if err == nil {
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM client_keys WHERE client_id = ?", clientID).Scan(&n); err != nil {
			return err
		}
		if n >= limit {
			return &ds.TooLargeError{Limit: limit, What: ds.WhatSignatureKeys}
		}
		_, err = tx.ExecContext(ctx, "INSERT INTO client_keys (client_id, signature_key, added_at) VALUES (?, ?, ?)",
			clientID, nonNil(key), micros(now))
		return err
	})
}

// RemoveClientKey implements ds.Store.
func (s *Store) RemoveClientKey(ctx context.Context, clientID string, key []byte) error {
	return s.write(ctx, func(tx *sql.Conn) error {
		rows, err := tx.QueryContext(ctx, "SELECT signature_key FROM client_keys WHERE client_id = ? ORDER BY id", clientID)
		if err != nil {
			return err
		}
		var keys [][]byte
		for rows.Next() {
			var k []byte
			if err := rows.Scan(&k); err != nil {
				rows.Close()
				return err
			}
			keys = append(keys, k)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var rest [][]byte
		for _, k := range keys {
			if !bytes.Equal(k, key) {
				rest = append(rest, k)
			}
		}
		switch {
		case len(rest) == len(keys):
			return fmt.Errorf("%w: client %q holds no such signature key", ds.ErrNotFound, clientID)
		case len(rest) == 0:
			return fmt.Errorf("%w: it is the only signature key of client %q", ds.ErrLastKey, clientID)
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM client_keys WHERE client_id = ? AND signature_key = ?", clientID, nonNil(key)); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, "UPDATE clients SET signature_key = ? WHERE id = ? AND signature_key = ?", rest[0], clientID, nonNil(key))
		return err
	})
}
