package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
)

// SQLite compiles every statement it runs. database/sql does not keep
// compiled statements between calls, so without a cache the hot queries
// (a group's head, its messages, a client's windows) spent more CPU in
// SQLite's parser than in running them. A stmtCache keeps one *sql.Stmt
// per query text of the readers; database/sql prepares it once per
// connection and reuses it from then on. Our queries are constant strings,
// but the cache is bounded anyway: past maxCachedStmts, queries run
// uncached. (The writer's hot statements, writerStmts, are compiled on its
// connection at Open: see wstmt.)
type stmtCache struct {
	db *sql.DB

	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

const maxCachedStmts = 256

func newStmtCache(db *sql.DB) *stmtCache {
	return &stmtCache{db: db, stmts: make(map[string]*sql.Stmt)}
}

// stmt returns the cached statement for query, preparing it on first use;
// nil when the cache is full or the statement cannot be prepared (the
// caller then runs the query uncached and meets the error there).
func (c *stmtCache) stmt(ctx context.Context, query string) *sql.Stmt {
	c.mu.Lock()
	st, ok := c.stmts[query]
	full := len(c.stmts) >= maxCachedStmts
	c.mu.Unlock()
	if ok {
		return st
	}
	if full {
		return nil
	}
	// Prepared outside the lock: preparing waits for a free connection,
	// and callers that hold one must not queue behind it.
	st, err := c.db.PrepareContext(ctx, query)
	if err != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if other, ok := c.stmts[query]; ok {
		st.Close()
		return other
	}
	c.stmts[query] = st
	return st
}

// close closes the cached statements (not the database).
func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for q, st := range c.stmts {
		st.Close()
		delete(c.stmts, q)
	}
}

// readDB is the pool of reading connections, running queries through a
// stmtCache. It has the methods of *sql.DB that the Store uses.
type readDB struct {
	*sql.DB
	cache *stmtCache
}

func (r *readDB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := r.cache.stmt(ctx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return r.DB.QueryContext(ctx, query, args...)
}

func (r *readDB) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := r.cache.stmt(ctx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return r.DB.QueryRowContext(ctx, query, args...)
}

func (r *readDB) Close() error {
	r.cache.close()
	return r.DB.Close()
}

// wstmt returns query, one of writerStmts, as compiled on the writer
// connection at Open, for a write transaction to run. The statement
// belongs to the Store: the caller does not close it.
func (s *Store) wstmt(query string) (*sql.Stmt, error) {
	if st := s.wstmts[query]; st != nil {
		return st, nil
	}
	return nil, fmt.Errorf("sqlite: internal error: statement not among writerStmts: %q", query)
}
