package storetest

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
)

// testMessagesBudget: MessageQuery.MaxBytes ends a page with the message
// that brings the size of the page's Data to MaxBytes or beyond; the first
// message always comes; Limit, FromSeq, ExcludeOwn and the membership
// windows apply as without a budget; paging on from the last message
// returned yields every message once, in order.
func testMessagesBudget(t *testing.T, s ds.Store) {
	newGroup(t, s, "g", 0, "a", "b")
	sizes := []int{100, 300, 50, 1000, 20, 20, 4000, 7}
	for i, n := range sizes {
		sender := "a"
		if i%2 == 1 {
			sender = "b"
		}
		p := msg("g", 0, mls.ContentTypeApplication, sender, "")
		p.Data = bytes.Repeat([]byte{byte(i + 1)}, n)
		h := sha256.Sum256(p.Data)
		p.Hash = h[:]
		mustAccept(t, s, p)
	}
	query := func(q ds.MessageQuery) []ds.Envelope {
		t.Helper()
		q.GroupID = []byte("g")
		envs, err := s.Messages(ctx(), q)
		if err != nil {
			t.Fatalf("Messages(%+v): %v", q, err)
		}
		return envs
	}
	// want is the page the rule gives over the unbudgeted answer.
	want := func(q ds.MessageQuery) []uint64 {
		all := q
		all.MaxBytes = 0
		var out []uint64
		total := 0
		for _, e := range query(all) {
			if q.MaxBytes > 0 && len(out) > 0 && total >= q.MaxBytes {
				break
			}
			out = append(out, e.GroupSeq)
			total += len(e.Data)
		}
		return out
	}
	for _, q := range []ds.MessageQuery{
		{ClientID: "a", FromSeq: 1, Limit: 100, MaxBytes: 1},    // one message per page
		{ClientID: "a", FromSeq: 1, Limit: 100, MaxBytes: 100},  // exactly the first
		{ClientID: "a", FromSeq: 1, Limit: 100, MaxBytes: 101},  // the second brings it over
		{ClientID: "a", FromSeq: 1, Limit: 100, MaxBytes: 450},  // 100+300+50 reaches it
		{ClientID: "a", FromSeq: 1, Limit: 100, MaxBytes: 451},  // ... the 1000 goes over
		{ClientID: "a", FromSeq: 1, Limit: 2, MaxBytes: 10_000}, // Limit first
		{ClientID: "a", FromSeq: 1, Limit: 100, MaxBytes: 1 << 30},
		{ClientID: "a", FromSeq: 7, Limit: 100, MaxBytes: 10}, // a first message far over the budget
		{ClientID: "a", FromSeq: 3, Limit: 100, MaxBytes: 1051},
		{ClientID: "a", FromSeq: 1, Limit: 100, MaxBytes: 301, ExcludeOwn: true}, // b's: 300, 1000, ...
		{ClientID: "b", FromSeq: 2, Limit: 100, MaxBytes: 1070, ExcludeOwn: true},
		{ClientID: "stranger", FromSeq: 1, Limit: 100, MaxBytes: 10},
		{ClientID: "a", FromSeq: 9, Limit: 100, MaxBytes: 10},
	} {
		got := seqsOf(query(q))
		if w := want(q); fmt.Sprint(got) != fmt.Sprint(w) {
			t.Errorf("%+v: %v, want %v", q, got, w)
		}
	}
	// The rule itself, on a few cases worked by hand.
	for _, c := range []struct {
		from     uint64
		maxBytes int
		want     string
	}{
		{1, 1, "[1]"}, {1, 100, "[1]"}, {1, 101, "[1 2]"}, {1, 450, "[1 2 3]"}, {1, 451, "[1 2 3 4]"},
		{7, 10, "[7]"}, {5, 40, "[5 6]"}, {5, 41, "[5 6 7]"}, {8, 1, "[8]"},
	} {
		if got := fmt.Sprint(seqsOf(query(ds.MessageQuery{ClientID: "a", FromSeq: c.from, Limit: 100, MaxBytes: c.maxBytes}))); got != c.want {
			t.Errorf("FromSeq %d MaxBytes %d: %s, want %s", c.from, c.maxBytes, got, c.want)
		}
	}
	// Paging: each page is whole up to its last message, the pages
	// together are the group.
	for _, budget := range []int{1, 64, 400, 1500, 5000} {
		var seqs []uint64
		from := uint64(1)
		for pages := 0; ; pages++ {
			if pages > len(sizes) {
				t.Fatalf("budget %d: paging does not end", budget)
			}
			page := query(ds.MessageQuery{ClientID: "b", FromSeq: from, Limit: 3, MaxBytes: budget})
			if len(page) == 0 {
				break
			}
			total := 0
			for i, e := range page {
				if i > 0 && total >= budget {
					t.Errorf("budget %d: page from %d goes on after reaching it", budget, from)
				}
				total += len(e.Data)
				seqs = append(seqs, e.GroupSeq)
			}
			from = page[len(page)-1].GroupSeq + 1
		}
		if got := fmt.Sprint(seqs); got != "[1 2 3 4 5 6 7 8]" {
			t.Errorf("budget %d: pages gave %s", budget, got)
		}
	}
}
