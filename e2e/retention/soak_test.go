// Package retention soaks a real `mlsds serve` with steady traffic and a
// short retention, to show that the database stops growing: delivered and
// expired messages are pruned as fast as new ones come.
package retention

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/client"
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/internal/testkit"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// soakDuration is MLSDS_SOAK_DURATION, 10 minutes by default.
func soakDuration(t *testing.T) time.Duration {
	if os.Getenv("MLSDS_SOAK") != "1" {
		t.Skip("soak test: opt in with MLSDS_SOAK=1 (MLSDS_SOAK_DURATION sets its length, default 10m)")
	}
	d := 10 * time.Minute
	if v := os.Getenv("MLSDS_SOAK_DURATION"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil || d < time.Minute {
			t.Fatalf("MLSDS_SOAK_DURATION=%q: want a duration of at least 1m", v)
		}
	}
	return d
}

func TestSoakSQLite(t *testing.T) {
	d := soakDuration(t)
	soak(t, d, nil, func(srv *testkit.Serve) (int64, error) {
		var n int64
		for _, f := range []string{srv.DBPath(), srv.DBPath() + "-wal"} {
			fi, err := os.Stat(f)
			if err == nil {
				n += fi.Size()
			} else if !os.IsNotExist(err) {
				return 0, err
			}
		}
		return n, nil
	})
}

func TestSoakPostgreSQL(t *testing.T) {
	d := soakDuration(t)
	url := pgtest.NewDatabase(t)
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	soak(t, d, []string{"--store", url}, func(*testkit.Serve) (int64, error) {
		var n int64
		err := conn.QueryRow(context.Background(), "SELECT pg_database_size(current_database())").Scan(&n)
		return n, err
	})
}

// member is one SDK client of the soak and what it received.
type member struct {
	c      *client.Client
	g      *client.Group
	joined chan struct{}
	mu     sync.Mutex
	got    map[string]int // messages received per sender
	bad    []string       // events that mean loss
}

// soak runs `mlsds serve` (with extra flags) under steady load for d:
// three SDK clients in one group send ~100 messages/s in all and
// acknowledge what they receive (the SDK does, every 200ms). Every 30s it
// logs the database size (size()); at the end the last three readings
// must be within 20% of each other and not rising, and every message must
// have reached every other member (nothing acknowledged was pruned early,
// nothing unacknowledged was pruned before its time).
func soak(t *testing.T, d time.Duration, flags []string, size func(*testkit.Serve) (int64, error)) {
	srv := testkit.StartServe(t, append([]string{"--retention", "1m", "--prune-interval", "5s",
		"--rate-limit", "-1", "--log-level", "info"}, flags...)...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ids := []string{"alice", "bob", "carol"}
	ms := map[string]*member{}
	for _, id := range ids {
		c, err := client.Open(ctx, client.Config{Server: srv.URL, ClientID: id, Logger: quiet, KeyPackages: 5})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		m := &member{c: c, joined: make(chan struct{}), got: map[string]int{}}
		ms[id] = m
		go func() {
			var once sync.Once
			for ev := range c.Events() {
				m.mu.Lock()
				switch ev.Kind {
				case client.EventJoined:
					once.Do(func() { close(m.joined) })
				case client.EventMessage:
					m.got[ev.Sender]++
				case client.EventPruned, client.EventUndecryptable, client.EventRejoined:
					m.bad = append(m.bad, fmt.Sprintf("%v seq %d: %v", ev.Kind, ev.Seq, ev.Err))
				}
				m.mu.Unlock()
			}
		}()
	}
	g, err := ms["alice"].c.CreateGroup(ctx, client.GroupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ms["alice"].g = g
	if err := g.Add(ctx, "bob", "carol"); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[1:] {
		select {
		case <-ms[id].joined:
		case <-time.After(60 * time.Second):
			t.Fatalf("%s did not join", id)
		}
		ms[id].g = ms[id].c.Group(g.ID())
	}

	// ~100 messages/s in all, 1 KiB each.
	var sent sync.Map // sender -> *atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	payload := strings.Repeat("x", 1000)
	for _, id := range ids {
		n := new(atomic.Int64)
		sent.Store(id, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(30 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if _, err := ms[id].g.Send(ctx, []byte(payload)); err != nil {
					t.Errorf("%s: Send: %v", id, err)
					return
				}
				n.Add(1)
			}
		}()
	}

	var readings []int64
	start := time.Now()
	every := time.NewTicker(30 * time.Second)
	for time.Since(start) < d {
		<-every.C
		n, err := size(srv)
		if err != nil {
			t.Fatal(err)
		}
		readings = append(readings, n)
		var total int64
		sent.Range(func(_, v any) bool { total += v.(*atomic.Int64).Load(); return true })
		t.Logf("%5.0fs: database %7.2f MiB, %d messages sent (%.0f/s)", time.Since(start).Seconds(),
			float64(n)/(1<<20), total, float64(total)/time.Since(start).Seconds())
	}
	every.Stop()
	close(stop)
	wg.Wait()

	// Every message reached every other member.
	deadline := time.Now().Add(2 * time.Minute)
	for _, id := range ids {
		m := ms[id]
		for _, from := range ids {
			if from == id {
				continue
			}
			v, _ := sent.Load(from)
			want := int(v.(*atomic.Int64).Load())
			for {
				m.mu.Lock()
				got := m.got[from]
				m.mu.Unlock()
				if got >= want {
					if got > want {
						t.Errorf("%s got %d messages of %s, which sent %d", id, got, from, want)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("%s got %d of the %d messages of %s", id, got, want, from)
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		m.mu.Lock()
		if len(m.bad) > 0 {
			t.Errorf("%s: %d events that mean lost messages, first: %s", id, len(m.bad), m.bad[0])
		}
		m.mu.Unlock()
	}
	logPruneMetrics(t, srv.URL)

	if len(readings) < 4 {
		t.Fatalf("%d readings: run at least 2 minutes", len(readings))
	}
	last := readings[len(readings)-3:]
	lo, hi := last[0], last[0]
	for _, n := range last {
		lo, hi = min(lo, n), max(hi, n)
	}
	if float64(hi) > 1.2*float64(lo) {
		t.Errorf("the database does not plateau: last readings %v bytes differ by more than 20%%", last)
	}
	if last[0] < last[1] && last[1] < last[2] && float64(last[2]) > 1.05*float64(last[0]) {
		t.Errorf("the database keeps growing: last readings %v bytes", last)
	}
}

// logPruneMetrics logs the server's pruning series.
func logPruneMetrics(t *testing.T, url string) {
	res, err := http.Get(url + "/metrics")
	if err != nil {
		t.Logf("metrics: %v", err)
		return
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "mlsds_prune") {
			t.Log(l)
		}
	}
}
