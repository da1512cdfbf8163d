package loadgen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"testing"
	"time"
)

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	rng := rand.New(rand.NewPCG(1, 2))
	var all []time.Duration
	for range 20000 {
		d := time.Duration(rng.ExpFloat64() * float64(5*time.Millisecond))
		all = append(all, d)
		h.Observe(d)
	}
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.95, 0.99, 0.999} {
		exact := all[int(q*float64(len(all)))-1]
		got := h.Quantile(q)
		// Within one 2% bucket of the exact order statistic.
		if got < exact || float64(got) > float64(exact)*1.021 {
			t.Errorf("q%.3f = %v, exact %v", q, got, exact)
		}
	}
	if h.Count() != 20000 || h.Max() != all[len(all)-1] || h.Quantile(1) != h.Max() {
		t.Errorf("count %d, max %v (want %v), q1 %v", h.Count(), h.Max(), all[len(all)-1], h.Quantile(1))
	}
	var empty Histogram
	if empty.Quantile(0.99) != 0 || empty.Mean() != 0 {
		t.Error("an empty histogram has quantiles")
	}
}

// A delivery may arrive before the sender has its receipt: the latency is
// then counted once the receipt comes, from the send time.
func TestGroupTrackOrders(t *testing.T) {
	var h Histogram
	tr := groupTrack{want: 2, msgs: map[uint64]*msgTrack{}}
	t0 := time.Unix(1000, 0)
	tr.received(7, t0.Add(3*time.Millisecond), &h) // before the receipt
	if h.Count() != 0 {
		t.Fatal("latency recorded before the send time is known")
	}
	tr.sent(7, t0, &h)
	tr.received(7, t0.Add(5*time.Millisecond), &h)
	tr.sent(8, t0, &h)
	tr.received(8, t0.Add(time.Millisecond), &h)
	if h.Count() != 3 || h.Max() != 5*time.Millisecond {
		t.Fatalf("count %d max %v", h.Count(), h.Max())
	}
	if _, ok := tr.msgs[7]; ok {
		t.Error("a message every member received is still tracked")
	}
	if m := tr.msgs[8]; m == nil || m.got != 1 {
		t.Error("a message one member still has to receive is not tracked")
	}
}

func TestReadProc(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	// Burn a little CPU so that there is some to see.
	deadline := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = fmt.Sprint(x)
	}
	u := readProc(os.Getpid())
	if !u.OK || u.RSS <= 0 || u.PeakRSS < u.RSS {
		t.Fatalf("readProc(self) = %+v", u)
	}
}

func TestScrape(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, "# HELP mlsds_process_cpu_seconds_total x\n# TYPE mlsds_process_cpu_seconds_total counter\n"+
			"mlsds_process_cpu_seconds_total 12.5\nmlsds_process_resident_memory_bytes 4.2e+07\n"+
			"mlsds_commit_conflicts_total 3\nmlsds_requests_total{procedure=\"x\",code=\"ok\"} 9\n"+
			"mlsds_store_latency_seconds_bucket{operation=\"ack\",le=\"0.001\"} 4\n"+
			"mlsds_store_latency_seconds_sum{operation=\"ack\"} 0.25\nmlsds_store_latency_seconds_count{operation=\"ack\"} 5\n"+
			"mlsds_accept_batch_messages_bucket{le=\"1\"} 2\nmlsds_accept_batch_messages_sum 70\nmlsds_accept_batch_messages_count 7\n")
	}))
	defer srv.Close()
	m := scrape(context.Background(), srv.Client(), srv.URL+"/")
	if !m.OK || m.CPUSeconds != 12.5 || m.RSS != 4.2e7 || m.CommitConflicts != 3 || m.Store["ack"] != (storeOp{Count: 5, Sum: 0.25}) || len(m.Store) != 1 ||
		m.Batch != (storeOp{Count: 7, Sum: 70}) {
		t.Fatalf("scrape = %+v", m)
	}
	if m := scrape(context.Background(), srv.Client(), srv.URL+"/nothing/"); m.OK {
		t.Fatal("a 404 scraped as metrics")
	}
}

func TestWireSize(t *testing.T) {
	a, err := wireSize(100)
	if err != nil {
		t.Fatal(err)
	}
	b, err := wireSize(1100)
	if err != nil {
		t.Fatal(err)
	}
	if a <= 100 || b-a < 1000 {
		t.Fatalf("wire sizes %d (100 bytes), %d (1100 bytes)", a, b)
	}
}
