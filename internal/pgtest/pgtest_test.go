package pgtest

import (
	"context"
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestStartStop starts a server of its own, uses it, and checks that Stop
// leaves neither a process nor a directory behind.
func TestStartStop(t *testing.T) {
	if os.Getenv("PGTEST_URL") != "" {
		t.Skip("PGTEST_URL points at an external server")
	}
	s, err := Start(Options{Logf: t.Logf, NoFsync: true})
	if err != nil {
		Unavailable(t, err)
	}
	defer s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	name, err := s.CreateDatabase(ctx, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, s.URL(name))
	if err != nil {
		t.Fatal(err)
	}
	var db, who string
	var superuser bool
	if err := conn.QueryRow(ctx, "SELECT current_database(), current_user, usesuper FROM pg_user WHERE usename = current_user").Scan(&db, &who, &superuser); err != nil {
		t.Fatal(err)
	}
	if db != name || who != "postgres" || !superuser {
		t.Errorf("connected to %q as %q (superuser %v), want %q as postgres superuser", db, who, superuser, name)
	}
	conn.Close(ctx)
	if err := s.DropDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}

	pid := s.cmd.Process.Pid
	if os.Geteuid() == 0 {
		fi, err := os.Stat(s.dir)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid == 0 {
			t.Errorf("running as root, but the data directory belongs to root")
		}
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory %s still there after Stop: %v", s.dir, err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("postmaster %d still running after Stop (kill 0: %v)", pid, err)
	}
}

// TestNewDatabaseWithoutMain covers the path without TestMain: the test gets
// a server of its own.
func TestNewDatabaseWithoutMain(t *testing.T) {
	url := NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE t (x int)"); err != nil {
		t.Fatal(err)
	}
}
