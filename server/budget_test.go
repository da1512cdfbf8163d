package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/mls"
	"github.com/mlsds/mlsds/server"
)

// metricValue sums the samples of the series name whose labels include
// labels (name=value pairs).
func metricValue(t testing.TB, e *testEnv, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := e.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	samples:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue samples
				}
			}
			switch {
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// waitMetric waits (up to a generous 30s: a hang, not a speed check) until
// cond holds for the series' value.
func waitMetric(t testing.TB, e *testEnv, what string, cond func(float64) bool, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v := metricValue(t, e, name, labels...)
		if cond(v) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s%v is %v", what, name, labels, v)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialStalled opens a TCP connection to the server whose receive buffer is
// as small as the kernel allows: a client that never reads fills its TCP
// window after a few KiB.
func dialStalled(t testing.TB, e *testEnv) net.Conn {
	t.Helper()
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// rawRequest writes an HTTP/1.1 POST of body to procedure as m, and reads
// nothing.
func rawRequest(t testing.TB, conn net.Conn, m *member, procedure, contentType string, body []byte) {
	t.Helper()
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: mlsds\r\nContent-Type: %s\r\nConnect-Protocol-Version: 1\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n",
		procedure, contentType, m.token, len(body))
	if _, err := conn.Write(append([]byte(head), body...)); err != nil {
		t.Fatal(err)
	}
}

// readAll reads what the server sent before it closed the connection.
func readAll(t testing.TB, conn net.Conn) int64 {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := io.Copy(io.Discard, bufio.NewReader(conn))
	if err != nil && !isReset(err) {
		t.Fatalf("reading what the server sent: %v (after %d bytes)", err, n)
	}
	return n
}

func isReset(err error) bool {
	var errno syscall.Errno
	for e := err; e != nil; {
		if en, ok := e.(syscall.Errno); ok {
			errno = en
			break
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return errno == syscall.ECONNRESET
}

// TestFetchByteBudget: a Fetch of a group whose messages sum to far more
// than FetchMaxBytes answers a page within it, with a next_seq that pages
// on through every message once; a message larger than the budget comes
// alone.
func TestFetchByteBudget(t *testing.T) {
	const budget, size, n = 256 << 10, 100 << 10, 12
	e := startEnv(t, func(c *ds.Config, _ *server.Config) { c.FetchMaxBytes = budget })
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("fetch-budget")
	alice.createOpaqueGroup(gid, bob)
	var want []uint64
	for range n {
		want = append(want, alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, size)).GroupSeq)
	}
	var got []uint64
	from := uint64(1)
	for pages := 0; ; pages++ {
		if pages > n {
			t.Fatal("paging does not end")
		}
		res, err := bob.fetch(gid, from, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Messages) == 0 {
			if res.NextSeq != from {
				t.Errorf("empty page from %d: next_seq %d", from, res.NextSeq)
			}
			break
		}
		total := 0
		for _, m := range res.Messages {
			total += len(m.Message)
			got = append(got, m.GroupSeq)
		}
		if total > budget {
			t.Fatalf("a page of %d messages holds %d bytes, over the budget of %d", len(res.Messages), total, budget)
		}
		if last := res.Messages[len(res.Messages)-1].GroupSeq; res.NextSeq != last+1 {
			t.Fatalf("next_seq %d after a page ending at %d", res.NextSeq, last)
		}
		from = res.NextSeq
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("pages gave %v, want %v", got, want)
	}
	// One message over the budget comes alone.
	big := alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, budget+1000)).GroupSeq
	alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, 10))
	res, err := bob.fetch(gid, big, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Messages) != 1 || res.Messages[0].GroupSeq != big || res.NextSeq != big+1 {
		t.Fatalf("from the large message: %d messages, next_seq %d; want it alone", len(res.Messages), res.NextSeq)
	}
}

// TestStalledFetchIsCut: a client sends a Fetch over raw HTTP/1.1 and
// never reads the answer (a large page: its TCP window fills). The write
// misses its deadline within the slow-consumer timeout, the server closes
// the connection, and the answer's bytes are let go.
func TestStalledFetchIsCut(t *testing.T) {
	const size, n = 512 << 10, 16
	e := startEnv(t, func(c *ds.Config, _ *server.Config) {
		c.FetchMaxBytes = n * (size + 1024)
		c.SlowConsumerTimeout = 300 * time.Millisecond
	})
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("stalled-fetch")
	alice.createOpaqueGroup(gid, bob)
	for range n {
		alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, size))
	}
	conn := dialStalled(t, e)
	body, err := proto.Marshal(&mlsdsv1.FetchRequest{GroupId: gid, FromSeq: 1, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	rawRequest(t, conn, bob, "/mlsds.v1.GroupService/Fetch", "application/proto", body)
	waitMetric(t, e, "the stalled answer was not cut", func(v float64) bool { return v >= 1 },
		"mlsds_write_timeouts_total", "kind", "unary")
	waitMetric(t, e, "the stalled answer's bytes are still held", func(v float64) bool { return v == 0 },
		"mlsds_fetch_buffered_bytes")
	if got := readAll(t, conn); got >= n*size {
		t.Fatalf("the client got %d bytes, the whole answer: it was not cut", got)
	} else {
		t.Logf("the stalled client got %d of about %d bytes before the server closed the connection", got, n*size)
	}
	// The server still answers others.
	if _, err := alice.fetch(gid, 1, 1); err != nil {
		t.Fatal(err)
	}
}

// TestStalledSubscribeIsCut: a client opens Subscribe over raw HTTP/1.1
// and never reads while large messages arrive: its TCP window fills, the
// server's write blocks, and it is cut within the slow-consumer timeout;
// nothing stays buffered for it. Nothing is lost: a new subscription
// replays every message.
func TestStalledSubscribeIsCut(t *testing.T) {
	const size, n = 256 << 10, 40
	e := startEnv(t, func(c *ds.Config, _ *server.Config) {
		c.SlowConsumerTimeout = 300 * time.Millisecond
	})
	alice, bob := e.client("alice"), e.client("bob")
	gid := groupID("stalled-stream")
	alice.createOpaqueGroup(gid, bob)
	conn := dialStalled(t, e)
	rawRequest(t, conn, bob, "/mlsds.v1.DeliveryService/Subscribe", "application/connect+proto", []byte{0, 0, 0, 0, 0})
	waitMetric(t, e, "the stream did not open", func(v float64) bool { return v == 1 }, "mlsds_streaming_clients")
	for range n {
		alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, size))
	}
	waitMetric(t, e, "the stalled stream was not cut", func(v float64) bool { return v >= 1 },
		"mlsds_streams_cut_total")
	waitMetric(t, e, "the stalled stream stays open", func(v float64) bool { return v == 0 }, "mlsds_streaming_clients")
	waitMetric(t, e, "bytes stay buffered for the cut stream", func(v float64) bool { return v == 0 }, "mlsds_stream_buffered_bytes")
	if got := readAll(t, conn); got >= n*size {
		t.Fatalf("the client got %d bytes, every message: it was not cut", got)
	}
	t.Logf("cut: write_timeout %v, slow_consumer %v", metricValue(t, e, "mlsds_streams_cut_total", "reason", "write_timeout"),
		metricValue(t, e, "mlsds_streams_cut_total", "reason", "slow_consumer"))
	sub := bob.subscribe()
	if got := len(sub.waitCaughtUp(t)); got != n {
		t.Fatalf("a new subscription replayed %d messages, want %d", got, n)
	}
}

// TestStreamBudgets: with small byte budgets, clients whose streams do not
// read (two streams of one client, one of another; their HTTP/2 windows
// are full) leave the server's buffered bytes within the server-wide
// budget, and a reading client of the same group gets every message once
// and in order meanwhile. (ds's TestSubscriptionBudgets checks the budgets
// per subscription and per client.)
func TestStreamBudgets(t *testing.T) {
	const (
		size, n = 16 << 10, 100
		total   = 320 << 10
	)
	e := startEnv(t, func(c *ds.Config, s *server.Config) {
		c.MaxMessageSize = 64 << 10
		c.SubscriptionMaxBytes = 128 << 10
		c.ClientSubscriptionMaxBytes = 192 << 10
		c.BufferedMaxBytes = total
		c.SlowConsumerTimeout = 20 * time.Second // the stalled streams stay during the test
	})
	alice, bob := e.client("alice"), e.client("bob")
	tr := &http.Transport{HTTP2: &http.HTTP2Config{MaxReceiveBufferPerStream: 64 << 10, MaxReceiveBufferPerConnection: 64 << 10}}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	slow := &testEnv{t: t, url: e.url, http: &http.Client{Transport: tr}}
	carol, dave := slow.client("carol"), slow.client("dave")
	gid := groupID("budgets")
	alice.createOpaqueGroup(gid, bob, carol, dave)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, m := range []*member{carol, carol, dave} {
		stream, err := m.delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
	}
	reader := bob.subscribe()
	reader.waitCaughtUp(t)
	waitMetric(t, e, "the streams did not open", func(v float64) bool { return v == 4 }, "mlsds_streaming_clients")

	var want, got []uint64
	peak := 0.0
	for range n {
		want = append(want, alice.mustSend(privateMessage(t, gid, 0, mls.ContentTypeApplication, size)).GroupSeq)
		peak = max(peak, metricValue(t, e, "mlsds_stream_buffered_bytes"))
	}
	for len(got) < n {
		ev := reader.next(t)
		if m := ev.GetMessage(); m != nil {
			got = append(got, m.GroupSeq)
		}
		peak = max(peak, metricValue(t, e, "mlsds_stream_buffered_bytes"))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the reader got %v, want %v", got, want)
	}
	t.Logf("largest buffered %v bytes (budget %d); %v events held back", peak, total, metricValue(t, e, "mlsds_stream_backpressure_total"))
	// The reader, holding nothing, may always take one message beyond
	// the shared budgets.
	if one := float64(size + 1024); peak > total+one {
		t.Fatalf("%v bytes buffered, over the server-wide budget of %d and the reader's one message", peak, total)
	}
	if metricValue(t, e, "mlsds_stream_backpressure_total") == 0 {
		t.Fatal("no event was held back: the stalled streams did not fill their budgets")
	}
	cancel()
	waitMetric(t, e, "bytes stay buffered after the streams ended", func(v float64) bool { return v == 0 }, "mlsds_stream_buffered_bytes")
}
