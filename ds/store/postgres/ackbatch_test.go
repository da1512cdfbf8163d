package postgres

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/mlsds/mlsds/ds"
)

// TestTwoNodesAckMany: batches of Acks over the same cursors, each in its
// own shuffled order, race through two Stores together with single Acks.
// Every Ack succeeds (a deadlock would be retried, but the ordered locks
// should not let one happen often enough to exhaust the retries), and every
// cursor ends at the highest Seq acknowledged for it.
func TestTwoNodesAckMany(t *testing.T) {
	a, b := twoNodes(t, Options{})
	nodes := []*Store{a, b}
	const groups, members, rounds = 4, 8, 10
	var keys []ds.AckParams
	for g := range groups {
		id := []byte(fmt.Sprintf("g%d", g))
		var ms []string
		for m := range members {
			ms = append(ms, fmt.Sprintf("c%d", m))
		}
		if err := a.CreateGroup(ctx(), ds.GroupRecord{ID: id, Creator: ms[0], CreatedAt: t0}, ms); err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			keys = append(keys, ds.AckParams{ClientID: m, GroupID: id})
		}
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 2*rounds*(len(keys)+1))
	for r := range rounds {
		for n, s := range nodes {
			wg.Add(2)
			go func() {
				defer wg.Done()
				ps := append([]ds.AckParams(nil), keys...)
				rand.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
				for i := range ps {
					ps[i].Seq = uint64(1 + r*2 + n)
				}
				<-start
				for _, err := range s.AckMany(ctx(), ps) {
					if err != nil {
						errs <- err
					}
				}
			}()
			go func() {
				defer wg.Done()
				<-start
				k := keys[(r*2+n)%len(keys)]
				if err := s.Ack(ctx(), k.ClientID, k.GroupID, uint64(1+r*2+n)); err != nil {
					errs <- err
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for m := range members {
		cur, err := b.Cursors(ctx(), fmt.Sprintf("c%d", m))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cur {
			if c.Acked != 2*rounds {
				t.Errorf("c%d's cursor in %s = %d, want %d", m, c.GroupID, c.Acked, 2*rounds)
			}
		}
	}
}
