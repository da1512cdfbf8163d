package postgres

import (
	"errors"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/mls"
)

// TestPipelinedFailures: a statement that fails inside a pipelined batch
// transaction. In a Commit's own writes (behind its SAVEPOINT), it refuses
// that Commit and the batch goes on; in the batch's shared writes, it fails
// the batch, Acks included, and leaves nothing behind; either way the one
// connection of the pool serves the next batch.
func TestPipelinedFailures(t *testing.T) {
	s := open(t, pgtest.NewDatabase(t), Options{MaxConns: 1})
	if err := s.CreateGroup(ctx(), ds.GroupRecord{ID: []byte("g"), Mode: ds.ModeOpaque, CipherSuite: suite, Creator: "c0", CreatedAt: t0}, []string{"c0", "c1", "poison"}); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'poisoned message'; END $$`,
		`CREATE TRIGGER poison BEFORE INSERT ON messages
		FOR EACH ROW WHEN (NEW.sender = 'poison') EXECUTE FUNCTION poison()`,
	} {
		if _, err := s.pool.Exec(ctx(), q); err != nil {
			t.Fatal(err)
		}
	}
	app := func(sender, text string) ds.AcceptParams {
		p := appMsg("g", 0, mls.ContentTypeApplication, sender, text)
		p.RequireMember = true
		return p
	}
	acks := []ds.AckParams{{ClientID: "c1", GroupID: []byte("g"), Seq: 1}}

	// The poisoned Commit's insert fails behind its SAVEPOINT.
	commit := appMsg("g", 0, mls.ContentTypeCommit, "poison", "commit")
	res, errs, ackErrs := s.AcceptMessagesAndAcks(ctx(), []ds.AcceptParams{app("c0", "1"), commit, app("c0", "2")}, acks)
	if errs[0] != nil || errs[2] != nil || res[0].GroupSeq != 1 || res[2].GroupSeq != 2 {
		t.Errorf("messages around the failed Commit: %+v %v, %+v %v; want seq 1 and 2", res[0], errs[0], res[2], errs[2])
	}
	if errs[1] == nil || isDSError(errs[1]) {
		t.Errorf("the poisoned Commit: %v, want the engine's error", errs[1])
	}
	if ackErrs[0] != nil {
		t.Errorf("ack: %v", ackErrs[0])
	}

	// A poisoned application message fails the shared insert: nothing of
	// the batch stays, the Ack neither.
	acks[0].Seq = 2
	_, errs, ackErrs = s.AcceptMessagesAndAcks(ctx(), []ds.AcceptParams{app("c0", "3"), app("poison", "4")}, acks)
	for i, err := range append(errs, ackErrs...) {
		if err == nil || isDSError(err) {
			t.Errorf("result %d of the poisoned batch: %v, want the engine's error", i, err)
		}
	}
	var pe *pipelineError
	if !errors.As(errs[0], &pe) {
		t.Errorf("the poisoned batch failed with %v, want the failure of a queued statement", errs[0])
	}

	// The connection is clean: the next batch goes through.
	res, errs, ackErrs = s.AcceptMessagesAndAcks(ctx(), []ds.AcceptParams{app("c0", "3")}, acks)
	if errs[0] != nil || res[0].GroupSeq != 3 || ackErrs[0] != nil {
		t.Errorf("after the failed batch: %+v %v, ack %v; want seq 3", res[0], errs[0], ackErrs[0])
	}
	envs, err := s.Messages(ctx(), ds.MessageQuery{GroupID: []byte("g"), ClientID: "c1", FromSeq: 1, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(envs) != 3 {
		t.Errorf("%d messages stored, want 3", len(envs))
	}
	cur, err := s.Cursors(ctx(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if len(cur) != 1 || cur[0].Acked != 2 {
		t.Errorf("c1's cursors %+v, want acked 2", cur)
	}
}
