package postgres

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
)

// The signature keys of clients (ds/keys.go), in client_keys
// (migrations/0008_client_keys.sql). Changes lock the client's row, so
// that they are serialised with each other and with DeleteClient.

// ClientKeys implements ds.Store.
func (s *Store) ClientKeys(ctx context.Context, ids []string) (map[string][][]byte, error) {
	ok := make([]string, 0, len(ids))
	for _, id := range ids {
		if textOK(id) {
			ok = append(ok, id)
		}
	}
	out := make(map[string][][]byte)
	if len(ok) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT client_id, signature_key FROM client_keys WHERE client_id = ANY($1) ORDER BY client_id, id", ok)
	if err != nil {
		return nil, engineErr("read client keys", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var key []byte
		if err := rows.Scan(&id, &key); err != nil {
			return nil, engineErr("read client keys", err)
		}
		out[id] = append(out[id], key)
	}
	return out, engineErr("read client keys", rows.Err())
}

// lockClientKeys locks the client's row and returns its keys, oldest
// first; ErrNotFound if there is no such client.
func lockClientKeys(ctx context.Context, tx pgx.Tx, clientID string) ([][]byte, error) {
	tag, err := tx.Exec(ctx, "SELECT 1 FROM clients WHERE id = $1 FOR UPDATE", clientID)
	if err != nil {
		return nil, err
	}
	if tag.RowsAffected() == 0 {
		return nil, fmt.Errorf("%w: client %q", ds.ErrNotFound, clientID)
	}
	rows, err := tx.Query(ctx, "SELECT signature_key FROM client_keys WHERE client_id = $1 ORDER BY id", clientID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[[]byte])
}

// AddClientKey implements ds.Store.
func (s *Store) AddClientKey(ctx context.Context, clientID string, key []byte, now time.Time, limit int) error {
	if !textOK(clientID) {
		return fmt.Errorf("%w: client %q", ds.ErrNotFound, clientID)
	}
	return s.tx(ctx, "add client key", func(tx pgx.Tx) error {
		keys, err := lockClientKeys(ctx, tx, clientID)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if bytes.Equal(k, key) {
				return nil
			}
		}
		if len(keys) >= limit {
			return &ds.TooLargeError{Limit: limit, What: ds.WhatSignatureKeys}
		}
		_, err = tx.Exec(ctx, "INSERT INTO client_keys (client_id, signature_key, added_at) VALUES ($1, $2, $3)",
			clientID, nonNil(key), ts(now))
		return err
	})
}

// RemoveClientKey implements ds.Store.
func (s *Store) RemoveClientKey(ctx context.Context, clientID string, key []byte) error {
	if !textOK(clientID) {
		return fmt.Errorf("%w: client %q holds no such signature key", ds.ErrNotFound, clientID)
	}
	return s.tx(ctx, "remove client key", func(tx pgx.Tx) error {
		keys, err := lockClientKeys(ctx, tx, clientID)
		if err != nil {
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
		if _, err := tx.Exec(ctx, "DELETE FROM client_keys WHERE client_id = $1 AND signature_key = $2", clientID, nonNil(key)); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "UPDATE clients SET signature_key = $1 WHERE id = $2 AND signature_key = $3", rest[0], clientID, nonNil(key))
		return err
	})
}
