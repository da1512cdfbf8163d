package loadgen

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlsds/mlsds/ds/store/postgres"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/mls"
)

// Baselines are the rates of the raw operations the server is built on,
// measured on the same machine in the same run as the load, so that the
// bench's figures can be read as ratios.
type Baselines struct {
	// Raw durable inserts of rows the size of one application message
	// (payload bytes), 1 and 64 rows per transaction.
	SQLiteInsert1, SQLiteInsert64     float64
	PostgresInsert1, PostgresInsert64 float64
	// Ed25519 verifications of a 100-byte message per second, on one
	// goroutine and on one per CPU.
	Ed25519Verify, Ed25519VerifyAllCores float64
	Payload                              int
}

// measureBaselines runs each baseline for d. sqliteDir is a directory on
// the disk the server writes to; pgDSN, if set, a PostgreSQL database the
// bench may create and drop a table in.
func measureBaselines(ctx context.Context, sqliteDir, pgDSN string, payload int, d time.Duration, logf func(string, ...any)) (Baselines, error) {
	b := Baselines{Payload: payload}
	var err error
	logf("baseline: SQLite raw durable insert, %d-byte rows, 1 row/tx", payload)
	if b.SQLiteInsert1, err = sqlite.RawInsertRate(ctx, sqliteDir, payload, 1, d); err != nil {
		return b, err
	}
	logf("baseline: SQLite raw durable insert, %d-byte rows, 64 rows/tx", payload)
	if b.SQLiteInsert64, err = sqlite.RawInsertRate(ctx, sqliteDir, payload, 64, d); err != nil {
		return b, err
	}
	if pgDSN != "" {
		logf("baseline: PostgreSQL raw durable insert, %d-byte rows, 1 and 64 rows/tx", payload)
		if b.PostgresInsert1, err = postgres.RawInsertRate(ctx, pgDSN, payload, 1, d); err != nil {
			return b, err
		}
		if b.PostgresInsert64, err = postgres.RawInsertRate(ctx, pgDSN, payload, 64, d); err != nil {
			return b, err
		}
	}
	logf("baseline: Ed25519 verify, one core and %d", runtime.GOMAXPROCS(0))
	b.Ed25519Verify = verifyRate(ctx, 1, d)
	b.Ed25519VerifyAllCores = verifyRate(ctx, runtime.GOMAXPROCS(0), d)
	return b, nil
}

// verifyRate is how many Ed25519 signatures of a 100-byte message workers
// goroutines verify per second together.
func verifyRate(ctx context.Context, workers int, d time.Duration) float64 {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 100)
	rand.Read(msg)
	sig := ed25519.Sign(priv, msg)
	var n atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := int64(0)
			for ctx.Err() == nil {
				for range 64 {
					if !ed25519.Verify(pub, msg, sig) {
						panic("ed25519: a valid signature does not verify")
					}
				}
				k += 64
				if time.Now().After(deadline) {
					break
				}
			}
			n.Add(k)
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// wireSize is the size of an MLSMessage holding an application message
// of size bytes, as a member of a group of this suite seals it: the row
// the server stores per message is about this big.
func wireSize(size int) (int, error) {
	cs := mls.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	kp, priv, err := mls.NewKeyPackage(cs, []byte("bench-size-probe"), nil, 0, 1<<62)
	if err != nil {
		return 0, err
	}
	id := make([]byte, 16)
	rand.Read(id)
	g, err := mls.NewGroup(id, kp, priv)
	if err != nil {
		return 0, err
	}
	pm, err := g.Seal(make([]byte, size), nil)
	if err != nil {
		return 0, err
	}
	b, err := (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: pm}).MarshalBinary()
	if err != nil {
		return 0, fmt.Errorf("sealing a probe message: %w", err)
	}
	return len(b), nil
}
