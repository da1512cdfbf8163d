package loadgen

import (
	"math"
	"sync/atomic"
	"time"
)

// Histogram records durations in logarithmic buckets 2% wide, from 1µs to
// about 10 minutes, without locks: Observe is a few atomic adds, so that
// tens of thousands of deliveries a second can be recorded from many
// goroutines. Quantiles are exact to within one bucket (2%).
type Histogram struct {
	buckets [histBuckets]atomic.Int64
	count   atomic.Int64
	sum     atomic.Int64 // nanoseconds
	max     atomic.Int64 // nanoseconds
}

const (
	histGrowth  = 1.02
	histMin     = float64(time.Microsecond)
	histBuckets = 1400 // 1µs * 1.02^1400 ≈ 10^12 µs: far beyond any run
)

var logGrowth = math.Log(histGrowth)

func bucketOf(d time.Duration) int {
	if float64(d) <= histMin {
		return 0
	}
	i := int(math.Log(float64(d)/histMin)/logGrowth) + 1
	return min(i, histBuckets-1)
}

// upperBound is the largest duration bucket i holds.
func upperBound(i int) time.Duration {
	return time.Duration(histMin * math.Pow(histGrowth, float64(i)))
}

// Observe records one duration (negative ones count as zero).
func (h *Histogram) Observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.buckets[bucketOf(d)].Add(1)
	h.count.Add(1)
	h.sum.Add(int64(d))
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			break
		}
	}
}

// Count returns how many durations were recorded.
func (h *Histogram) Count() int64 { return h.count.Load() }

// Max returns the largest duration recorded.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Mean returns the mean of the recorded durations.
func (h *Histogram) Mean() time.Duration {
	n := h.count.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Quantile returns the duration below which a fraction q of the recorded
// durations lie (the upper edge of the bucket holding it, never above the
// maximum), or 0 if nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.count.Load()
	if n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(n)))
	rank = max(rank, 1)
	var seen int64
	for i := range h.buckets {
		seen += h.buckets[i].Load()
		if seen >= rank {
			return min(upperBound(i), h.Max())
		}
	}
	return h.Max()
}

// ms converts a duration to milliseconds for reports.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
