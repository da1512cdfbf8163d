package postgres

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/storetest"
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/mls"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func ctx() context.Context { return context.Background() }

// open opens a Store on url, closed when t ends.
func open(t testing.TB, url string, opts Options) *Store {
	t.Helper()
	s, err := Open(ctx(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) ds.Store {
		s, err := Open(ctx(), pgtest.NewDatabase(t), Options{})
		if err != nil {
			t.Fatal(err)
		}
		return s // the suite closes it
	})
}

const suite = mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 123456000, time.UTC)

func appMsg(group string, epoch uint64, ct mls.ContentType, sender, text string) ds.AcceptParams {
	data := []byte(fmt.Sprintf("%s|%d|%d|%s|%s", group, epoch, ct, sender, text))
	h := sha256.Sum256(data)
	return ds.AcceptParams{
		GroupID: []byte(group), Hash: h[:], Epoch: epoch, ContentType: ct, WireFormat: mls.WireFormatPrivateMessage,
		Sender: sender, Data: data, AcceptedAt: t0, MaxEpochLag: 2,
	}
}

// twoNodes opens two Stores (two pools, as two mlsds nodes would) on one
// new database.
func twoNodes(t *testing.T, opts Options) (a, b *Store) {
	url := pgtest.NewDatabase(t)
	return open(t, url, opts), open(t, url, opts)
}

// TestTwoNodesCommitRace: for each of 30 epochs, 20 Commits race through two
// Stores; exactly one wins each epoch, and every loser learns the new epoch
// and the winner's sequence number.
func TestTwoNodesCommitRace(t *testing.T) {
	a, b := twoNodes(t, Options{})
	nodes := []*Store{a, b}
	g := ds.GroupRecord{ID: []byte("g"), Mode: ds.ModeOpaque, CipherSuite: suite, Creator: "c0", CreatedAt: t0}
	if err := a.CreateGroup(ctx(), g, []string{"c0"}); err != nil {
		t.Fatal(err)
	}
	const epochs, racers = 30, 20
	var winners []ds.Receipt
	for e := uint64(0); e < epochs; e++ {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won []ds.Receipt
		var lost []*ds.WrongEpochError
		start := make(chan struct{})
		for i := 0; i < racers; i++ {
			p := appMsg("g", e, mls.ContentTypeCommit, fmt.Sprintf("c%d", i), "commit")
			s := nodes[i%2]
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				r, err := s.AcceptMessage(ctx(), p)
				mu.Lock()
				defer mu.Unlock()
				var we *ds.WrongEpochError
				switch {
				case err == nil && !r.Duplicate:
					won = append(won, r.Receipt)
				case errors.As(err, &we):
					lost = append(lost, we)
				default:
					t.Errorf("epoch %d: AcceptMessage = %+v, %v", e, r, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if len(won) != 1 || len(lost) != racers-1 {
			t.Fatalf("epoch %d: %d Commits accepted and %d refused, want 1 and %d", e, len(won), len(lost), racers-1)
		}
		for _, l := range lost {
			if l.Expected != e+1 || l.FetchFromSeq != won[0].GroupSeq {
				t.Errorf("epoch %d: loser told %+v, want Expected %d FetchFromSeq %d", e, l, e+1, won[0].GroupSeq)
			}
		}
		winners = append(winners, won[0])
	}
	// Both nodes see the same history: one Commit per epoch, seq 1, 2, ...
	for _, s := range nodes {
		envs, err := s.Messages(ctx(), ds.MessageQuery{GroupID: []byte("g"), ClientID: "c0", FromSeq: 1, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(envs) != epochs {
			t.Fatalf("%d messages stored, want %d", len(envs), epochs)
		}
		for i, env := range envs {
			if env.GroupSeq != uint64(i+1) || env.Epoch != uint64(i) || env.GroupSeq != winners[i].GroupSeq {
				t.Errorf("message %d: seq %d epoch %d, want seq %d epoch %d", i, env.GroupSeq, env.Epoch, winners[i].GroupSeq, i)
			}
		}
	}
	head, err := b.Group(ctx(), []byte("g"))
	if err != nil || head.Epoch != epochs || head.LastSeq != epochs || head.EpochStartSeq != epochs {
		t.Errorf("group after the races: %+v, %v", head, err)
	}
}

// TestTwoNodesAppendAndDuplicates: concurrent application messages through
// two Stores get gap-free sequence numbers, and a message submitted through
// both at once is stored once, the second submission getting the first
// receipt.
func TestTwoNodesAppendAndDuplicates(t *testing.T) {
	a, b := twoNodes(t, Options{})
	nodes := []*Store{a, b}
	if err := a.CreateGroup(ctx(), ds.GroupRecord{ID: []byte("g"), Creator: "a", CreatedAt: t0}, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	const n = 40
	type result struct {
		r   ds.AcceptResult
		err error
	}
	results := make([]result, 2*n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		p := appMsg("g", 0, mls.ContentTypeApplication, "a", fmt.Sprint(i))
		for j, s := range nodes { // each message twice, once per node
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				r, err := s.AcceptMessage(ctx(), p)
				results[2*i+j] = result{r, err}
			}()
		}
	}
	close(start)
	wg.Wait()
	seqs := make(map[uint64]bool)
	for i := 0; i < n; i++ {
		x, y := results[2*i], results[2*i+1]
		if x.err != nil || y.err != nil {
			t.Fatalf("message %d: %v, %v", i, x.err, y.err)
		}
		if x.r.Duplicate == y.r.Duplicate {
			t.Errorf("message %d: duplicate flags %v and %v, want exactly one duplicate", i, x.r.Duplicate, y.r.Duplicate)
		}
		if x.r.GroupSeq != y.r.GroupSeq || !x.r.AcceptedAt.Equal(y.r.AcceptedAt) {
			t.Errorf("message %d: receipts %+v and %+v differ", i, x.r, y.r)
		}
		seqs[x.r.GroupSeq] = true
	}
	for s := uint64(1); s <= n; s++ {
		if !seqs[s] {
			t.Errorf("sequence number %d missing: %v", s, seqs)
		}
	}
	head, _ := a.Group(ctx(), []byte("g"))
	if head.LastSeq != n {
		t.Errorf("LastSeq = %d, want %d (nothing stored twice)", head.LastSeq, n)
	}
}

// TestTwoNodesClaims: 10 claimers on two Stores drain one client's
// KeyPackages; none is handed out twice, and each is recorded as claimed by
// the claimer that got it.
func TestTwoNodesClaims(t *testing.T) {
	a, b := twoNodes(t, Options{})
	nodes := []*Store{a, b}
	for _, id := range []string{"target", "other"} {
		if err := a.CreateClient(ctx(), ds.Client{ID: id, UserID: id, CipherSuite: suite, SignatureKey: []byte(id), CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
	}
	const stock = 60
	var kps []ds.KeyPackageRecord
	for i := 0; i < stock; i++ {
		ref := sha256.Sum256([]byte(fmt.Sprint("kp", i)))
		kps = append(kps, ds.KeyPackageRecord{Ref: ref[:], ClientID: "target", CipherSuite: suite, Data: []byte(fmt.Sprint(i)),
			NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(time.Hour), UploadedAt: t0, LastResort: i == stock-1})
	}
	if err := b.AddKeyPackages(ctx(), kps, 1000); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := make(map[string]string) // ref -> claimer
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 10; i++ {
		claimer := fmt.Sprintf("claimer-%d", i)
		s := nodes[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				// Claims for two targets at once, in varying order: the
				// client locks must not deadlock.
				targets := []string{"target", "other"}
				if len(claimer)%2 == 0 {
					targets = []string{"other", "target"}
				}
				cs, err := s.ClaimKeyPackages(ctx(), ds.ClaimParams{Claimer: claimer, Targets: targets, Suite: suite, Now: t0})
				if err != nil {
					t.Error(err)
					return
				}
				var c ds.Claim
				for _, x := range cs {
					if x.Target == "target" {
						c = x
					} else if x.KeyPackage != nil {
						t.Errorf("claim for a client without KeyPackages returned %+v", x.KeyPackage)
					}
				}
				if c.KeyPackage == nil {
					t.Errorf("%s: no KeyPackage although a last-resort one exists", claimer)
					return
				}
				if c.KeyPackage.LastResort {
					if c.Remaining != 0 {
						t.Errorf("%s: last-resort KeyPackage while %d remain", claimer, c.Remaining)
					}
					return
				}
				mu.Lock()
				if other, dup := got[string(c.KeyPackage.Ref)]; dup {
					t.Errorf("KeyPackage %x handed to %s and %s", c.KeyPackage.Ref[:4], other, claimer)
				}
				got[string(c.KeyPackage.Ref)] = claimer
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(got) != stock-1 {
		t.Errorf("%d KeyPackages claimed, want %d", len(got), stock-1)
	}
	recs, err := a.KeyPackagesByRef(ctx(), refsOf(kps[:stock-1]))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.ClaimedBy != got[string(r.Ref)] {
			t.Errorf("KeyPackage %x: recorded claimer %q, handed to %q", r.Ref[:4], r.ClaimedBy, got[string(r.Ref)])
		}
	}
}

func refsOf(kps []ds.KeyPackageRecord) [][]byte {
	var out [][]byte
	for _, k := range kps {
		out = append(out, k.Ref)
	}
	return out
}

// testLogger sends log lines to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, nil))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// waitWake waits for a wake-up on ch, failing after a generous timeout.
func waitWake(t *testing.T, ch <-chan struct{}, what string) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-ch:
		return time.Since(start)
	case <-time.After(10 * time.Second):
		t.Fatalf("no wake-up for %s", what)
		return 0
	}
}

func signal(ch chan struct{}) func() {
	return func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// TestNotifyAcrossNodes: a message accepted through node A, followed by the
// Notify that the Service sends after it, wakes a listener of node B by
// NOTIFY (not by a fallback: B's connection is up throughout).
func TestNotifyAcrossNodes(t *testing.T) {
	a, b := twoNodes(t, Options{FallbackInterval: time.Hour})
	if err := b.notifier.Ready(ctx()); err != nil {
		t.Fatal(err)
	}
	if err := a.CreateGroup(ctx(), ds.GroupRecord{ID: []byte{1, 2, 3}, Creator: "x", CreatedAt: t0}, []string{"x"}); err != nil {
		t.Fatal(err)
	}
	woken := make(chan struct{}, 1)
	stop := b.Notifier().Listen(ds.GroupTopic([]byte{1, 2, 3}), signal(woken))
	defer stop()
	other := make(chan struct{}, 1)
	defer b.Notifier().Listen(ds.GroupTopic([]byte{9}), signal(other))()

	start := time.Now()
	p := appMsg("\x01\x02\x03", 0, mls.ContentTypeApplication, "x", "hello")
	if _, err := a.AcceptMessage(ctx(), p); err != nil {
		t.Fatal(err)
	}
	if err := a.Notifier().Notify(ctx(), ds.GroupTopic(p.GroupID), ds.ClientTopic("x")); err != nil {
		t.Fatal(err)
	}
	waitWake(t, woken, "the group topic on the other node")
	t.Logf("accept + notify on node A to wake-up on node B: %v", time.Since(start))
	if !b.notifier.Listening() {
		t.Error("B's listening connection went down during the test")
	}
	select {
	case <-other:
		t.Error("a listener of another topic was woken")
	default:
	}
	envs, err := b.Messages(ctx(), ds.MessageQuery{GroupID: p.GroupID, ClientID: "x", FromSeq: 1, Limit: 10})
	if err != nil || len(envs) != 1 || !bytes.Equal(envs[0].Data, p.Data) {
		t.Errorf("B reads %+v, %v after the wake-up", envs, err)
	}
}

// TestNotifyTopics: long and odd topics travel hashed, many topics are split
// over several payloads, and a node does not wake its own listeners twice
// (once directly, once by the echo of its NOTIFY).
func TestNotifyTopics(t *testing.T) {
	a, b := twoNodes(t, Options{FallbackInterval: time.Hour})
	for _, s := range []*Store{a, b} {
		if err := s.notifier.Ready(ctx()); err != nil {
			t.Fatal(err)
		}
	}
	long := ds.ClientTopic(strings.Repeat("long client id ", 40))
	odd := ds.ClientTopic("line\nbreak")
	var topics []string
	for i := 0; i < 500; i++ { // ~ 500 * 70 bytes: several payloads
		topics = append(topics, ds.GroupTopic(sha256.New().Sum([]byte(fmt.Sprint(i)))))
	}
	topics = append(topics, long, odd)

	var mu sync.Mutex
	countsA := make(map[string]int)
	countsB := make(map[string]int)
	all := make(chan struct{}, len(topics))
	for _, topic := range topics {
		defer a.Notifier().Listen(topic, func() { mu.Lock(); countsA[topic]++; mu.Unlock() })()
		defer b.Notifier().Listen(topic, func() {
			mu.Lock()
			countsB[topic]++
			mu.Unlock()
			all <- struct{}{}
		})()
	}
	sentinel := make(chan struct{}, 1)
	defer a.Notifier().Listen("sentinel", signal(sentinel))()
	// A near-miss of the long topic must not wake it.
	if err := b.Notifier().Notify(ctx(), long[:len(long)-1]); err != nil {
		t.Fatal(err)
	}

	if err := a.Notifier().Notify(ctx(), topics...); err != nil {
		t.Fatal(err)
	}
	for range topics {
		waitWake(t, all, "every topic on the other node")
	}
	// Notifications reach a listener in commit order: once A sees B's
	// sentinel, sent after A's Notify, A's own echo has been handled too.
	if err := b.Notifier().Notify(ctx(), "sentinel"); err != nil {
		t.Fatal(err)
	}
	waitWake(t, sentinel, "the sentinel")
	mu.Lock()
	defer mu.Unlock()
	for _, topic := range topics {
		if countsA[topic] != 1 || countsB[topic] != 1 {
			t.Errorf("topic %.30q woke A %d and B %d times, want once each", topic, countsA[topic], countsB[topic])
		}
	}
}

// TestNotifierReconnect: when B's listening connection is killed, B wakes
// its listeners (notifications may have been lost), reconnects, and
// receives notifications again.
func TestNotifierReconnect(t *testing.T) {
	a, b := twoNodes(t, Options{FallbackInterval: 50 * time.Millisecond, Logger: testLogger(t)})
	if err := b.notifier.Ready(ctx()); err != nil {
		t.Fatal(err)
	}
	woken := make(chan struct{}, 1)
	defer b.Notifier().Listen("t", signal(woken))()

	// Kill B's listening session from the server side.
	var killed int
	err := a.pool.QueryRow(ctx(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&killed)
	if err != nil || killed != 1 {
		t.Fatalf("terminated %d listening sessions (%v), want 1", killed, err)
	}
	waitWake(t, woken, "the loss of the listening connection")

	ready, cancel := context.WithTimeout(ctx(), 20*time.Second)
	defer cancel()
	for !b.notifier.Listening() {
		if ready.Err() != nil {
			t.Fatal("B did not reconnect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := b.notifier.Ready(ready); err != nil {
		t.Fatal(err)
	}
	// Drain wake-ups of the reconnection, then check that NOTIFY works.
	for len(woken) > 0 {
		<-woken
	}
	time.Sleep(100 * time.Millisecond)
	for len(woken) > 0 {
		<-woken
	}
	if err := a.Notifier().Notify(ctx(), "t"); err != nil {
		t.Fatal(err)
	}
	waitWake(t, woken, "a notification after the reconnection")
}

// TestMigrateConcurrently: three Stores opened at once on a new database
// all succeed, and the schema is applied once.
func TestMigrateConcurrently(t *testing.T) {
	url := pgtest.NewDatabase(t)
	stores := make([]*Store, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			stores[i], errs[i] = Open(ctx(), url, Options{})
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
		defer stores[i].Close()
	}
	ms, err := embeddedMigrations()
	if err != nil {
		t.Fatal(err)
	}
	var rows, version int
	if err := stores[0].pool.QueryRow(ctx(), "SELECT count(*), max(version) FROM schema_version").Scan(&rows, &version); err != nil {
		t.Fatal(err)
	}
	if rows != 1 || version != len(ms) {
		t.Errorf("schema_version has %d rows, version %d; want 1 row at %d", rows, version, len(ms))
	}
	// Each Store works.
	for i, s := range stores {
		id := fmt.Sprint("client-", i)
		if err := s.CreateClient(ctx(), ds.Client{ID: id, UserID: "u", CipherSuite: suite, SignatureKey: []byte("k")}); err != nil {
			t.Fatal(err)
		}
	}
	if cs, _ := stores[2].ClientsOfUser(ctx(), "u"); len(cs) != 3 {
		t.Errorf("ClientsOfUser = %d clients, want 3", len(cs))
	}
	// A database from a newer mlsds is refused.
	if _, err := stores[0].pool.Exec(ctx(), "UPDATE schema_version SET version = version + 1"); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(ctx(), url, Options{}); err == nil {
		s.Close()
		t.Error("Open of a database with a newer schema succeeded")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open of a newer schema: %v", err)
	}
}

// TestText: ids that PostgreSQL's text cannot hold are refused on writes
// and simply unknown on reads; times come back in UTC; ids sort byte-wise.
func TestText(t *testing.T) {
	s := open(t, pgtest.NewDatabase(t), Options{})
	err := s.CreateClient(ctx(), ds.Client{ID: "nul\x00id", UserID: "u", CipherSuite: suite, SignatureKey: []byte("k")})
	if !errors.Is(err, ds.ErrInvalidArgument) {
		t.Errorf("CreateClient with a NUL byte: %v, want ErrInvalidArgument", err)
	}
	if _, err := s.Client(ctx(), "nul\x00id"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("Client with a NUL byte: %v, want ErrNotFound", err)
	}
	if _, err := s.Client(ctx(), "\xff"); !errors.Is(err, ds.ErrNotFound) {
		t.Errorf("Client with invalid UTF-8: %v, want ErrNotFound", err)
	}

	zone := time.FixedZone("UTC+5", 5*3600)
	created := time.Date(2025, 1, 2, 3, 4, 5, 678901000, zone)
	// Byte order, whatever the database's collation: "B" < "a" < "b" < "é".
	for _, id := range []string{"é", "b", "a", "B"} {
		if err := s.CreateClient(ctx(), ds.Client{ID: id, UserID: "u", CipherSuite: suite, SignatureKey: []byte("k"), CreatedAt: created}); err != nil {
			t.Fatal(err)
		}
	}
	cs, err := s.ClientsOfUser(ctx(), "u")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
		if !c.CreatedAt.Equal(created) || c.CreatedAt.Location() != time.UTC {
			t.Errorf("CreatedAt = %v, want %v in UTC", c.CreatedAt, created)
		}
	}
	if fmt.Sprint(ids) != "[B a b é]" {
		t.Errorf("ClientsOfUser order = %v, want byte order [B a b é]", ids)
	}

	// Zero times survive in NOT NULL columns.
	k := ds.KeyPackageRecord{Ref: []byte("r"), ClientID: "a", CipherSuite: suite, Data: []byte("d"), NotAfter: created}
	if err := s.AddKeyPackages(ctx(), []ds.KeyPackageRecord{k}, 10); err != nil {
		t.Fatal(err)
	}
	got, err := s.KeyPackages(ctx(), "a")
	if err != nil || len(got) != 1 {
		t.Fatalf("KeyPackages = %+v, %v", got, err)
	}
	if !got[0].NotBefore.IsZero() || !got[0].UploadedAt.IsZero() || !got[0].NotAfter.Equal(created) || got[0].NotAfter.Location() != time.UTC {
		t.Errorf("times after a round trip: NotBefore %v, UploadedAt %v, NotAfter %v", got[0].NotBefore, got[0].UploadedAt, got[0].NotAfter)
	}
}

// TestOpenErrors: a bad URL is refused without echoing it (it may hold a
// password); an unreachable server fails Open.
func TestOpenErrors(t *testing.T) {
	_, err := Open(ctx(), "postgres://user:s3cret@[bad", Options{})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Open(bad URL) = %v; want an error that does not show the password", err)
	}
	c, cancel := context.WithTimeout(ctx(), 5*time.Second)
	defer cancel()
	if s, err := Open(c, "postgres://nobody:pw@127.0.0.1:1/none?sslmode=disable&connect_timeout=2", Options{}); err == nil {
		s.Close()
		t.Error("Open of an unreachable server succeeded")
	}
}

// durableDB returns a database on a server of its own with fsync on (the
// shared test server runs without), so that write rates are those of a
// production setup and compare with SQLite's synchronous=FULL.
func durableDB(b *testing.B) string {
	b.Helper()
	srv, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		pgtest.Unavailable(b, err)
	}
	b.Cleanup(func() { srv.Stop() })
	name, err := srv.CreateDatabase(ctx(), b.Name())
	if err != nil {
		b.Fatal(err)
	}
	return srv.URL(name)
}

// BenchmarkRawInsert measures PostgreSQL's raw insert rate on the harness
// server (fsync on, as in production): plain INSERTs of a 1 KiB payload,
// 1 and 64 rows per transaction, without the Store. The figure to compare
// is rows/s.
func BenchmarkRawInsert(b *testing.B) {
	url := durableDB(b)
	conn, err := pgx.Connect(ctx(), url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx())
	if _, err := conn.Exec(ctx(), "CREATE TABLE raw (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload bytea NOT NULL)"); err != nil {
		b.Fatal(err)
	}
	payload := bytes.Repeat([]byte{0xa5}, 1024)
	for _, perTx := range []int{1, 64} {
		b.Run(fmt.Sprintf("rows=%d", perTx), func(b *testing.B) {
			b.SetBytes(int64(perTx * len(payload)))
			for i := 0; i < b.N; i++ {
				tx, err := conn.Begin(ctx())
				if err != nil {
					b.Fatal(err)
				}
				for j := 0; j < perTx; j++ {
					if _, err := tx.Exec(ctx(), "INSERT INTO raw (payload) VALUES ($1)", payload); err != nil {
						b.Fatal(err)
					}
				}
				if err := tx.Commit(ctx()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*perTx)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// BenchmarkAcceptMessage measures the Store's AcceptMessage of 1 KiB
// application messages: into one group (serialised on its row lock) and
// spread over 16 groups by parallel writers.
func BenchmarkAcceptMessage(b *testing.B) {
	s := open(b, durableDB(b), Options{})
	const groups = 16
	for g := 0; g < groups; g++ {
		if err := s.CreateGroup(ctx(), ds.GroupRecord{ID: []byte{byte(g)}, Creator: "a", CreatedAt: t0}, []string{"a"}); err != nil {
			b.Fatal(err)
		}
	}
	payload := bytes.Repeat([]byte{0x5a}, 1024)
	var seq atomic.Int64
	accept := func(b *testing.B, group byte) {
		n := seq.Add(1)
		data := append(fmt.Appendf(nil, "%d|", n), payload...)
		h := sha256.Sum256(data)
		_, err := s.AcceptMessage(ctx(), ds.AcceptParams{GroupID: []byte{group}, Hash: h[:], ContentType: mls.ContentTypeApplication,
			WireFormat: mls.WireFormatPrivateMessage, Sender: "a", Data: data, AcceptedAt: t0, RequireMember: true})
		if err != nil {
			b.Error(err)
		}
	}
	b.Run("one-group", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			accept(b, 0)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	b.Run("16-groups-parallel", func(b *testing.B) {
		var next atomic.Int64
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			g := byte(next.Add(1) % groups)
			for pb.Next() {
				accept(b, g)
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}

func ctxWithCancel() (context.Context, context.CancelFunc) { return context.WithCancel(ctx()) }
