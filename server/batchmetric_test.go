package server_test

import (
	"bufio"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/mlsds/mlsds/mls"
)

// TestAcceptBatchMetric: mlsds_accept_batch_messages counts every message
// that went through an accept transaction once (its _sum grows by the
// messages sent) and each transaction once (its _count by at least one and
// at most the messages), so that _sum/_count is the mean batch an operator
// tunes by.
func TestAcceptBatchMetric(t *testing.T) {
	e := startEnv(t)
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("batch-metric")
	alice.createOpaqueGroup(gid, bob)

	sum0, count0 := acceptBatchSeries(t, e)
	const n = 40
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = privateMessage(t, gid, 0, mls.ContentTypeApplication, 10)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { _, errs[i] = alice.send(msgs[i]) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	sum, count := acceptBatchSeries(t, e)
	if got := sum - sum0; got != n {
		t.Errorf("mlsds_accept_batch_messages_sum grew by %v for %d messages", got, n)
	}
	if got := count - count0; got < 1 || got > n {
		t.Errorf("mlsds_accept_batch_messages_count grew by %v for %d messages; want 1 to %d", got, n, n)
	}
}

// acceptBatchSeries reads mlsds_accept_batch_messages_sum and _count.
func acceptBatchSeries(t *testing.T, e *testEnv) (sum, count float64) {
	t.Helper()
	code, body := get(t, e, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	found := 0
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		switch name {
		case "mlsds_accept_batch_messages_sum":
			sum, found = v, found+1
		case "mlsds_accept_batch_messages_count":
			count, found = v, found+1
		}
	}
	if found != 2 {
		t.Fatalf("/metrics lacks mlsds_accept_batch_messages_sum or _count:\n%s", body)
	}
	return sum, count
}
