package reliability

import (
	"fmt"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// sendOutcome is what a client learned from one Send of a Commit.
type sendOutcome int

const (
	outcomeOK         sendOutcome = iota // a receipt
	outcomeWrongEpoch                    // ABORTED with WrongEpoch
	outcomeUnknown                       // the server died or was down: stored or not
)

// sendOp is one Send call of a Commit for epoch, with its call and return
// times since the start of the run.
type sendOp struct {
	client    int
	epoch     uint64
	hash      [32]byte
	call, ret time.Duration
	outcome   sendOutcome
	observed  uint64 // for wrong_epoch: the expected_epoch it named
}

// The model: the group is a register holding its Commit history, one
// Commit hash per epoch (as a string of 32-byte hashes, so states compare
// with ==). A Send of Commit h for epoch e is a compare-and-set:
//   - with n = len(history) == e it appends h (the Commit wins epoch e);
//   - it is answered with a receipt only if it won now, or h already won
//     epoch e (a resubmission gets its first receipt back);
//   - it is refused with wrong_epoch only if h did not win epoch e and the
//     register is at another epoch, the one the refusal names;
//   - a call the server died under may have won (if n == e) or done
//     nothing.
type commitInput struct {
	epoch uint64
	hash  [32]byte
}

type commitOutput struct {
	outcome  sendOutcome
	observed uint64
}

var commitModel = porcupine.NondeterministicModel{
	Init: func() []interface{} { return []interface{}{""} },
	Step: func(state, input, output interface{}) []interface{} {
		hist := state.(string)
		in := input.(commitInput)
		out := output.(commitOutput)
		n := uint64(len(hist) / 32)
		h := string(in.hash[:])
		wonBefore := in.epoch < n && hist[in.epoch*32:(in.epoch+1)*32] == h
		switch out.outcome {
		case outcomeOK:
			if n == in.epoch {
				return []interface{}{hist + h}
			}
			if wonBefore {
				return []interface{}{hist}
			}
			return nil
		case outcomeWrongEpoch:
			if !wonBefore && n != in.epoch && n == out.observed {
				return []interface{}{hist}
			}
			return nil
		default:
			if n == in.epoch {
				return []interface{}{hist, hist + h}
			}
			return []interface{}{hist}
		}
	},
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(commitInput), output.(commitOutput)
		switch out.outcome {
		case outcomeOK:
			return fmt.Sprintf("commit(%d, %x) -> receipt", in.epoch, in.hash[:4])
		case outcomeWrongEpoch:
			return fmt.Sprintf("commit(%d, %x) -> wrong_epoch(%d)", in.epoch, in.hash[:4], out.observed)
		}
		return fmt.Sprintf("commit(%d, %x) -> unknown", in.epoch, in.hash[:4])
	},
}

// checkLinearizable checks the Send history against commitModel with
// porcupine.
func checkLinearizable(t *testing.T, ops []sendOp) {
	t.Helper()
	history := make([]porcupine.Operation, len(ops))
	for i, op := range ops {
		history[i] = porcupine.Operation{
			ClientId: op.client,
			Input:    commitInput{op.epoch, op.hash},
			Output:   commitOutput{op.outcome, op.observed},
			Call:     int64(op.call),
			Return:   int64(op.ret),
		}
	}
	start := time.Now()
	res := porcupine.CheckOperationsTimeout(commitModel.ToModel(), history, 30*time.Second)
	switch res {
	case porcupine.Ok:
		t.Logf("porcupine: %d Send calls linearizable (checked in %v)", len(ops), time.Since(start).Round(time.Millisecond))
	case porcupine.Illegal:
		t.Errorf("porcupine: the %d Send calls are not linearizable as a compare-and-set register of epochs", len(ops))
	default:
		t.Logf("porcupine: no answer within 30s for %d Send calls; the invariant checks stand alone", len(ops))
	}
}

// TestCommitModel: the model accepts a plain race and a resubmission after
// a crash, and rejects a fork (two receipts for one epoch) and a
// wrong_epoch that names an epoch the group was not at.
func TestCommitModel(t *testing.T) {
	a, b := [32]byte{1}, [32]byte{2}
	op := func(c int, epoch uint64, h [32]byte, call, ret time.Duration, o sendOutcome, obs uint64) sendOp {
		return sendOp{client: c, epoch: epoch, hash: h, call: call, ret: ret, outcome: o, observed: obs}
	}
	cases := []struct {
		name string
		ops  []sendOp
		want porcupine.CheckResult
	}{
		{"race", []sendOp{op(0, 0, a, 0, 10, outcomeOK, 0), op(1, 0, b, 1, 9, outcomeWrongEpoch, 1)}, porcupine.Ok},
		{"resubmission", []sendOp{op(0, 0, a, 0, 10, outcomeUnknown, 0), op(0, 0, a, 20, 30, outcomeOK, 0),
			op(1, 0, b, 12, 15, outcomeWrongEpoch, 1)}, porcupine.Ok},
		{"fork", []sendOp{op(0, 0, a, 0, 10, outcomeOK, 0), op(1, 0, b, 20, 30, outcomeOK, 0)}, porcupine.Illegal},
		{"stale refusal", []sendOp{op(0, 0, a, 0, 10, outcomeOK, 0), op(1, 0, b, 20, 30, outcomeWrongEpoch, 0)}, porcupine.Illegal},
		{"lost receipt", []sendOp{op(0, 0, a, 0, 10, outcomeOK, 0), op(1, 0, b, 20, 30, outcomeOK, 0),
			op(2, 1, b, 40, 50, outcomeOK, 0)}, porcupine.Illegal},
	}
	for _, c := range cases {
		history := make([]porcupine.Operation, len(c.ops))
		for i, o := range c.ops {
			history[i] = porcupine.Operation{ClientId: o.client, Input: commitInput{o.epoch, o.hash},
				Output: commitOutput{o.outcome, o.observed}, Call: int64(o.call), Return: int64(o.ret)}
		}
		if got := porcupine.CheckOperationsTimeout(commitModel.ToModel(), history, 10*time.Second); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
