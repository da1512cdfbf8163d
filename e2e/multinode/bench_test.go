package multinode

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/mls"
)

// The benchmarks compare, on one machine and in one run:
//
//   - BenchmarkThroughput: application messages per second accepted
//     (msgs/s) and delivered (deliveries/s) under the same load: 30
//     clients spread over the nodes, one group of all 30, each subscribed
//     through its node; 10 of them send concurrently. With 1 node on
//     SQLite, 1 node on PostgreSQL and 3 nodes on PostgreSQL.
//   - BenchmarkRawInsert: single-row autocommit INSERTs of the same
//     payload (an MLSMessage of the load above) into a plain table, on
//     SQLite (WAL, synchronous=FULL, as the engine runs it) and on
//     PostgreSQL (fsync on).
//
// PostgreSQL runs with fsync on here (a server of the benchmarks' own,
// unlike the tests'), so that both databases make their commits durable.

const (
	benchClients = 30
	benchSenders = 10
	benchBody    = 100
)

var (
	benchMu     sync.Mutex
	benchEnvs   = map[string]*benchEnv{}
	benchPG     *pgtest.Server
	benchPGErr  error
	benchPGOnce sync.Once
)

// durablePG returns the benchmarks' PostgreSQL server, with fsync on.
func durablePG(b *testing.B) *pgtest.Server {
	benchPGOnce.Do(func() { benchPG, benchPGErr = pgtest.Start(pgtest.Options{}) })
	if benchPGErr != nil {
		pgtest.Unavailable(b, benchPGErr)
	}
	return benchPG
}

func durablePGDatabase(b *testing.B, hint string) string {
	srv := durablePG(b)
	name, err := srv.CreateDatabase(context.Background(), hint)
	if err != nil {
		b.Fatal(err)
	}
	return srv.URL(name)
}

func closeBenchEnvs() {
	benchMu.Lock()
	defer benchMu.Unlock()
	for _, e := range benchEnvs {
		e.close()
	}
	if benchPG != nil {
		benchPG.Stop()
	}
}

// benchEnv is a running configuration: nodes, clients, subscribers. It is
// kept across the calls of one benchmark (each b.N) and closed by TestMain.
type benchEnv struct {
	nodes     []*node
	clients   []*client
	gid       []byte
	delivered atomic.Int64
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	dirs      []string
}

func (e *benchEnv) close() {
	e.cancel()
	for _, n := range e.nodes {
		n.stop()
	}
	e.wg.Wait()
	for _, d := range e.dirs {
		os.RemoveAll(d)
	}
}

func getBenchEnv(b *testing.B, key string, nNodes int, store func(dir string) string) *benchEnv {
	benchMu.Lock()
	defer benchMu.Unlock()
	if e := benchEnvs[key]; e != nil {
		return e
	}
	bin := buildBinary(b)
	dir, err := os.MkdirTemp("", "mlsds-bench-")
	if err != nil {
		b.Fatal(err)
	}
	st := store(dir)
	secret := writeSecret(b, dir)
	ctx, cancel := context.WithCancel(context.Background())
	e := &benchEnv{cancel: cancel, dirs: []string{dir}}
	for i := range nNodes {
		e.nodes = append(e.nodes, startNode(b, bin, fmt.Sprintf("%s-%d", key, i+1), st, secret))
	}
	for i := range benchClients {
		e.clients = append(e.clients, newClient(b, e.nodes[i%nNodes], fmt.Sprintf("bench%02d", i)))
	}
	e.gid = []byte(fmt.Sprintf("bench-%x", randBytes(4)))
	e.clients[0].createOpaqueGroup(b, e.gid, e.clients)
	// Subscribers count deliveries and acknowledge every 64.
	ready := make(chan struct{}, benchClients)
	for _, c := range e.clients {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			st, err := c.delivery.Subscribe(ctx, connect.NewRequest(&mlsdsv1.SubscribeRequest{}))
			if err != nil {
				ready <- struct{}{}
				return
			}
			defer st.Close()
			var last uint64
			n := 0
			for st.Receive() {
				ev := st.Msg()
				if ev.GetCaughtUp() != nil {
					ready <- struct{}{}
				}
				if m := ev.GetMessage(); m != nil {
					e.delivered.Add(1)
					last = m.GroupSeq
					if n++; n%64 == 0 {
						c.ack(ctx, e.gid, last)
					}
				}
			}
		}()
	}
	for range benchClients {
		<-ready
	}
	benchEnvs[key] = e
	return e
}

func BenchmarkThroughput(b *testing.B) {
	b.Run("sqlite-1node", func(b *testing.B) {
		benchThroughput(b, getBenchEnv(b, "sqlite1", 1, func(dir string) string {
			return "sqlite:" + filepath.Join(dir, "mlsds.db")
		}))
	})
	b.Run("postgres-1node", func(b *testing.B) {
		benchThroughput(b, getBenchEnv(b, "pg1", 1, func(string) string { return durablePGDatabase(b, "bench_pg1") }))
	})
	b.Run("postgres-3nodes", func(b *testing.B) {
		benchThroughput(b, getBenchEnv(b, "pg3", 3, func(string) string { return durablePGDatabase(b, "bench_pg3") }))
	})
}

func benchThroughput(b *testing.B, e *benchEnv) {
	ctx := context.Background()
	msgs := make([][]byte, b.N)
	for i := range msgs {
		msgs[i] = privateMessage(b, e.gid, 0, mls.ContentTypeApplication, benchBody)
	}
	want := e.delivered.Load() + int64(b.N)*(benchClients-1)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for s := range benchSenders {
		c := e.clients[s]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				if _, err := c.send(ctx, msgs[i]); err != nil {
					b.Errorf("send: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	accepted := time.Since(start)
	deadline := time.Now().Add(2 * time.Minute)
	for e.delivered.Load() < want {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d deliveries after 2 minutes", e.delivered.Load()-(want-int64(b.N)*(benchClients-1)), int64(b.N)*(benchClients-1))
		}
		time.Sleep(time.Millisecond)
	}
	all := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/accepted.Seconds(), "msgs/s")
	b.ReportMetric(float64(b.N)*(benchClients-1)/all.Seconds(), "deliveries/s")
}

// rawPayload is an MLSMessage as the throughput load sends it.
func rawPayload(b *testing.B) []byte {
	return privateMessage(b, []byte("bench-raw-group"), 0, mls.ContentTypeApplication, benchBody)
}

func BenchmarkRawInsert(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "raw.db")
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(5000)")
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		db.SetMaxOpenConns(1)
		if _, err := db.Exec(`CREATE TABLE raw (group_id BLOB NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (group_id, seq))`); err != nil {
			b.Fatal(err)
		}
		payload, gid := rawPayload(b), []byte("bench-raw-group")
		b.SetBytes(int64(len(payload)))
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := db.Exec(`INSERT INTO raw (group_id, seq, payload) VALUES (?, ?, ?)`, gid, i, payload); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "inserts/s")
	})
	b.Run("postgres", func(b *testing.B) {
		url := durablePGDatabase(b, "bench_raw")
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `CREATE TABLE raw (group_id bytea NOT NULL, seq bigint NOT NULL, payload bytea NOT NULL, PRIMARY KEY (group_id, seq))`); err != nil {
			b.Fatal(err)
		}
		payload, gid := rawPayload(b), []byte("bench-raw-group")
		b.SetBytes(int64(len(payload)))
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := conn.Exec(ctx, `INSERT INTO raw (group_id, seq, payload) VALUES ($1, $2, $3)`, gid, i, payload); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "inserts/s")
	})
}
