package storetest

import (
	"errors"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// testNumbersOutOfRange covers numbers beyond what an engine keeps
// (2^63-1): refused with ErrInvalidArgument, the caller's mistake, rather
// than with an engine failure.
func testNumbersOutOfRange(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a")
	const big = 1 << 63
	if _, err := s.Messages(ctx(), ds.MessageQuery{GroupID: []byte("g"), ClientID: "a", FromSeq: big, Limit: 10}); !errors.Is(err, ds.ErrInvalidArgument) {
		t.Errorf("Messages from 2^63: %v, want ErrInvalidArgument", err)
	}
	if err := s.Ack(ctx(), "a", []byte("g"), big); !errors.Is(err, ds.ErrInvalidArgument) {
		t.Errorf("Ack of 2^63: %v, want ErrInvalidArgument", err)
	}
	if _, err := s.StateLog(ctx(), []byte("g"), big, 10); !errors.Is(err, ds.ErrInvalidArgument) {
		t.Errorf("StateLog after 2^63: %v, want ErrInvalidArgument", err)
	}
	g := ds.GroupRecord{ID: []byte("h"), Mode: ds.ModeOpaque, Creator: "a", CreatedAt: t0, Epoch: big}
	if err := s.CreateGroup(ctx(), g, []string{"a"}); !errors.Is(err, ds.ErrInvalidArgument) {
		t.Errorf("CreateGroup at epoch 2^63: %v, want ErrInvalidArgument", err)
	}
	p := msg("g", big, mls.ContentTypeApplication, "a", "far future")
	if _, err := s.AcceptMessage(ctx(), p); !errors.Is(err, ds.ErrInvalidArgument) {
		t.Errorf("AcceptMessage of epoch 2^63: %v, want ErrInvalidArgument", err)
	}
	if head, err := s.Group(ctx(), []byte("g")); err != nil || head.LastSeq != 0 {
		t.Errorf("after the refusals: %+v, %v; want the group unchanged", head, err)
	}
}
