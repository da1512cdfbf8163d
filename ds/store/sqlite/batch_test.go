package sqlite

import (
	"context"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/storetest"
)

// TestBatchCommitFailure: a batch whose COMMIT fails (here on a deferred
// foreign key that a trigger violates for the poison sender's message)
// gives no receipt and leaves nothing behind, and the writer connection
// goes on working.
func TestBatchCommitFailure(t *testing.T) {
	storetest.BatchCommitFailure(t, func(t *testing.T) ds.Store { return openTemp(t) }, func(t *testing.T, st ds.Store) {
		s := st.(*Store)
		for _, q := range []string{
			"CREATE TABLE poison_guard (group_id BLOB REFERENCES groups (id) DEFERRABLE INITIALLY DEFERRED)",
			`CREATE TRIGGER poison AFTER INSERT ON messages WHEN NEW.sender = '` + storetest.PoisonSender + `'
			BEGIN INSERT INTO poison_guard (group_id) VALUES (x'00'); END`,
		} {
			if _, err := s.w.ExecContext(context.Background(), q); err != nil {
				t.Fatal(err)
			}
		}
	})
}
