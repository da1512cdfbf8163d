package testkit

import (
	"database/sql"
	"fmt"
	"sort"
	"strings"
	"testing"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// Dump is every row of every table of a SQLite store, each row printed
// as text, rows sorted, keyed by table name.
type Dump map[string][]string

// DumpSQLite reads the whole store at path (read-only; the server may be
// running and writing to it).
func DumpSQLite(tb testing.TB, path string) Dump {
	tb.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin() // one snapshot of every table
	if err != nil {
		tb.Fatal(err)
	}
	defer tx.Rollback()
	rows, err := tx.Query(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`)
	if err != nil {
		tb.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			tb.Fatal(err)
		}
		tables = append(tables, n)
	}
	rows.Close()
	out := make(Dump)
	for _, t := range tables {
		rs, err := tx.Query(fmt.Sprintf("SELECT * FROM %q", t))
		if err != nil {
			tb.Fatal(err)
		}
		cols, _ := rs.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		lines := []string{}
		for rs.Next() {
			if err := rs.Scan(ptrs...); err != nil {
				tb.Fatal(err)
			}
			var b strings.Builder
			for i, v := range vals {
				if i > 0 {
					b.WriteString(" | ")
				}
				switch v := v.(type) {
				case []byte:
					fmt.Fprintf(&b, "%s=%x", cols[i], v)
				default:
					fmt.Fprintf(&b, "%s=%v", cols[i], v)
				}
			}
			lines = append(lines, b.String())
		}
		rs.Close()
		sort.Strings(lines)
		out[t] = lines
	}
	return out
}

// Diff describes how b differs from a, ignoring the tables in skip; ""
// when they are equal.
func (a Dump) Diff(b Dump, skip ...string) string {
	ignore := make(map[string]bool)
	for _, s := range skip {
		ignore[s] = true
	}
	names := make(map[string]bool)
	for n := range a {
		names[n] = true
	}
	for n := range b {
		names[n] = true
	}
	var sorted []string
	for n := range names {
		if !ignore[n] {
			sorted = append(sorted, n)
		}
	}
	sort.Strings(sorted)
	var out strings.Builder
	for _, n := range sorted {
		ra, rb := a[n], b[n]
		inA := make(map[string]int)
		for _, r := range ra {
			inA[r]++
		}
		for _, r := range rb {
			if inA[r] > 0 {
				inA[r]--
				continue
			}
			fmt.Fprintf(&out, "%s: + %s\n", n, r)
		}
		for r, k := range inA {
			for ; k > 0; k-- {
				fmt.Fprintf(&out, "%s: - %s\n", n, r)
			}
		}
	}
	return out.String()
}
