package postgres

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/internal/pgtest"
	"github.com/mlsds/mlsds/mls"
)

// BenchmarkAcceptBatch measures the accept transaction alone, as the
// Service's committer runs it: batches of 1, 16 and 50 application
// messages, one per group of 50 (the shape of `mlsds bench --groups 50
// --members 2 --senders 1`), with as many Acks, one batch after the other,
// on a server of its own with fsync on. The figures to compare are msgs/s
// and ns/op (one batch) and, less sensitive to a busy machine, the CPU
// time per message of this process (go-cpu-us/msg) and of the database's
// backends (pg-cpu-us/msg, read from /proc, in ticks of 10ms).
func BenchmarkAcceptBatch(b *testing.B) {
	const groups = 50
	srv, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		pgtest.Unavailable(b, err)
	}
	defer srv.Stop()
	for _, size := range []int{1, 16, 50} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			name, err := srv.CreateDatabase(ctx(), "accept_batch")
			if err != nil {
				b.Fatal(err)
			}
			s := open(b, srv.URL(name), Options{})
			for g := range groups {
				id := fmt.Sprintf("g%02d", g)
				if err := s.CreateGroup(ctx(), ds.GroupRecord{ID: []byte(id), Mode: ds.ModeOpaque, CipherSuite: suite, Creator: "a", CreatedAt: t0}, []string{"a", "b"}); err != nil {
					b.Fatal(err)
				}
			}
			next := 0
			batch := func(n int) ([]ds.AcceptParams, []ds.AckParams) {
				ps := make([]ds.AcceptParams, n)
				acks := make([]ds.AckParams, n)
				for i := range ps {
					g := fmt.Sprintf("g%02d", next%groups)
					ps[i] = appMsg(g, 0, mls.ContentTypeApplication, "a", fmt.Sprint(next))
					ps[i].RequireMember = true
					acks[i] = ds.AckParams{ClientID: "b", GroupID: []byte(g), Seq: uint64(next / groups)}
					next++
				}
				return ps, acks
			}
			// Warm the connections' statement caches.
			for range 3 {
				ps, acks := batch(groups)
				s.AcceptMessagesAndAcks(ctx(), ps, acks)
			}
			pg0 := backendCPU(b, s)
			go0 := processCPU()
			b.ResetTimer()
			for range b.N {
				ps, acks := batch(size)
				_, errs, ackErrs := s.AcceptMessagesAndAcks(ctx(), ps, acks)
				for i, err := range errs {
					if err != nil {
						b.Fatalf("message %d: %v", i, err)
					}
				}
				for i, err := range ackErrs {
					if err != nil {
						b.Fatalf("ack %d: %v", i, err)
					}
				}
			}
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64((processCPU()-go0).Microseconds())/float64(b.N*size), "go-cpu-us/msg")
			if pg := backendCPU(b, s); pg >= 0 && pg0 >= 0 {
				b.ReportMetric(float64((pg-pg0).Microseconds())/float64(b.N*size), "pg-cpu-us/msg")
			}
		})
	}
}

// processCPU is the user and system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// backendCPU is the CPU time so far of the server processes that serve
// s's database (from /proc: the server must run on this machine), or -1.
func backendCPU(b *testing.B, s *Store) time.Duration {
	rows, err := s.pool.Query(ctx(), "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
	if err != nil {
		b.Fatal(err)
	}
	var pids []int
	var pid int
	for rows.Next() {
		if err := rows.Scan(&pid); err != nil {
			b.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	var ticks int64
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return -1
		}
		// The fields after the command (which may hold spaces): utime
		// and stime are the 12th and 13th.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 13 {
			return -1
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ
}
