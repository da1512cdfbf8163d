package sqlite

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkRawInsert reports the durable insert rate of the disk under the
// temporary directory (RawInsertRate), the baseline of the engine's rates.
func BenchmarkRawInsert(b *testing.B) {
	for _, payload := range []int{100, 1024} {
		for _, perTx := range []int{1, 64} {
			b.Run(fmt.Sprintf("payload=%d/rowsPerTx=%d", payload, perTx), func(b *testing.B) {
				var rate float64
				for range b.N {
					r, err := RawInsertRate(context.Background(), b.TempDir(), payload, perTx, time.Second)
					if err != nil {
						b.Fatal(err)
					}
					rate = r
				}
				b.ReportMetric(rate, "rows/s")
			})
		}
	}
}

func TestRawInsertRate(t *testing.T) {
	r, err := RawInsertRate(context.Background(), t.TempDir(), 100, 4, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r <= 0 {
		t.Errorf("RawInsertRate = %v, want a positive rate", r)
	}
	if _, err := RawInsertRate(context.Background(), t.TempDir(), 100, 0, time.Second); err == nil {
		t.Error("RawInsertRate accepted 0 rows per transaction")
	}
}
