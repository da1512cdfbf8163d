package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	mlsdsv1 "github.com/mlsds/mlsds/api/mlsds/v1"
	"github.com/mlsds/mlsds/api/mlsds/v1/mlsdsv1connect"
	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/postgres"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/server"
)

// `mlsds admin` is for the operator: it deletes a client, or every client
// of a user, either through a running server's AdminService (--server,
// with the admin token the server was started with) or, with the server
// stopped, directly in its database (--store / --data-dir, as serve takes
// them). Its flags' environment twins are those of serve: MLSDS_STORE,
// MLSDS_DATA_DIR, MLSDS_ADMIN_TOKEN_FILE, MLSDS_SERVER.

type adminFlags struct {
	server         string
	adminTokenFile string
	dataDir, store string
	timeout        time.Duration
}

var adminCommands = map[string]string{
	"delete-client": "delete a client: its registration, KeyPackages, memberships, Welcomes; its messages stay without its id",
	"delete-user":   "delete every client of a user",
}

func adminUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: mlsds admin <command> [flags] <id>")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, n := range []string{"delete-client", "delete-user"} {
		fmt.Fprintf(w, "  %-14s %s\n", n, adminCommands[n])
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "With --server URL the command goes to a running server's AdminService, with the")
	fmt.Fprintln(w, "token of --admin-token-file (the server's own --admin-token-file). Without it, the")
	fmt.Fprintln(w, "command works on the database of --store / --data-dir, as mlsds serve would; a")
	fmt.Fprintln(w, "SQLite data directory must not be in use by a running server.")
}

func runAdmin(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		adminUsage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	name := args[0]
	if _, ok := adminCommands[name]; !ok {
		fmt.Fprintf(stderr, "mlsds admin: unknown command %q\n\n", name)
		adminUsage(stderr)
		return 2
	}
	var f adminFlags
	fs := flag.NewFlagSet("mlsds admin "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.server, "server", "", "URL of a running server (http:// or https://) to call AdminService on; empty: work on the database directly")
	fs.StringVar(&f.adminTokenFile, "admin-token-file", "", "file holding the server's admin token (with --server)")
	fs.StringVar(&f.dataDir, "data-dir", "./mlsds-data", "the server's data directory (without --server)")
	fs.StringVar(&f.store, "store", "", "the server's storage engine, as mlsds serve --store (without --server)")
	fs.DurationVar(&f.timeout, "timeout", time.Minute, "give up after this long")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: mlsds admin %s [flags] <%s>\n\n%s.\n\nFlags:\n", name, strings.TrimPrefix(name, "delete-"), adminCommands[name])
		fs.PrintDefaults()
	}
	addEnvToUsage(fs, serveEnvPrefix)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := applyEnv(fs, lookupEnv); err != nil {
		fmt.Fprintf(stderr, "mlsds admin: %v\n", err)
		return 2
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" {
		fmt.Fprintf(stderr, "mlsds admin %s: give exactly one %s id\n", name, strings.TrimPrefix(name, "delete-"))
		return 2
	}
	id := fs.Arg(0)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()

	var (
		deleted []string
		groups  int
		err     error
	)
	if f.server != "" {
		deleted, groups, err = adminRemote(ctx, &f, name, id)
	} else {
		deleted, groups, err = adminDirect(ctx, &f, name, id)
	}
	if err != nil {
		fmt.Fprintf(stderr, "mlsds admin %s: %v\n", name, err)
		return 1
	}
	switch name {
	case "delete-client":
		fmt.Fprintf(stdout, "deleted client %s (member of %d groups)\n", id, groups)
	case "delete-user":
		fmt.Fprintf(stdout, "deleted user %s: %d clients\n", id, len(deleted))
		for _, c := range deleted {
			fmt.Fprintf(stdout, "  %s\n", c)
		}
	}
	return 0
}

// adminRemote calls AdminService on f.server.
func adminRemote(ctx context.Context, f *adminFlags, name, id string) (deleted []string, groups int, err error) {
	if f.adminTokenFile == "" {
		return nil, 0, errors.New("--server needs --admin-token-file, the file the server was started with")
	}
	token, err := readAdminToken(f.adminTokenFile)
	if err != nil {
		return nil, 0, err
	}
	hc := &http.Client{Timeout: f.timeout}
	c := mlsdsv1connect.NewAdminServiceClient(hc, strings.TrimRight(f.server, "/"))
	auth := "Bearer " + token
	switch name {
	case "delete-client":
		req := connect.NewRequest(&mlsdsv1.AdminServiceDeleteClientRequest{ClientId: id})
		req.Header().Set("Authorization", auth)
		res, err := c.DeleteClient(ctx, req)
		if err != nil {
			return nil, 0, adminError(err)
		}
		return []string{id}, int(res.Msg.GroupsLeft), nil
	default:
		req := connect.NewRequest(&mlsdsv1.AdminServiceDeleteUserRequest{UserId: id})
		req.Header().Set("Authorization", auth)
		res, err := c.DeleteUser(ctx, req)
		if err != nil {
			return nil, 0, adminError(err)
		}
		return res.Msg.ClientIds, 0, nil
	}
}

func adminError(err error) error {
	switch connect.CodeOf(err) {
	case connect.CodeUnimplemented:
		return fmt.Errorf("the server has AdminService off: start it with --admin-token-file (%w)", err)
	case connect.CodePermissionDenied:
		return fmt.Errorf("the server refused the admin token: give the file it was started with (%w)", err)
	case connect.CodeNotFound:
		return fmt.Errorf("no such client or user (%w)", err)
	}
	return err
}

// readAdminToken reads an admin token file: its content without the
// surrounding white space.
func readAdminToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	t := strings.TrimSpace(string(data))
	if len(t) < server.MinAdminTokenSize {
		return "", fmt.Errorf("admin token in %s is shorter than %d bytes; put a long random secret in it (for example: openssl rand -hex 32)", path, server.MinAdminTokenSize)
	}
	return t, nil
}

// adminDirect deletes in the database, as a server would.
func adminDirect(ctx context.Context, f *adminFlags, name, id string) (deleted []string, groups int, err error) {
	var st ds.Store
	if isPostgres(f.store) {
		// Servers may run on it: they stop accepting the client's
		// session tokens within their LiveClientTTL.
		if st, err = postgres.Open(ctx, f.store, postgres.Options{}); err != nil {
			return nil, 0, err
		}
	} else {
		path, err := sqlitePath(f.store, f.dataDir)
		if err != nil {
			return nil, 0, err
		}
		if _, err := os.Stat(path); err != nil {
			return nil, 0, fmt.Errorf("no database at %s: give the server's --data-dir or --store (%w)", path, err)
		}
		if f.store == "" {
			// The lock mlsds serve holds: a running server keeps state
			// in memory that a deletion behind its back would not reach.
			unlock, err := lockDataDir(f.dataDir)
			if err != nil {
				return nil, 0, fmt.Errorf("%w; or delete through it with --server and --admin-token-file", err)
			}
			defer unlock()
		}
		if st, err = sqlite.Open(ctx, path, sqlite.Options{}); err != nil {
			return nil, 0, err
		}
	}
	defer st.Close()
	svc := ds.New(st, ds.Config{PruneInterval: -1}) // no background work
	defer svc.Close()
	switch name {
	case "delete-client":
		d, err := svc.DeleteClientAdmin(ctx, id)
		if err != nil {
			return nil, 0, err
		}
		return []string{id}, len(d.Groups), nil
	default:
		ds, err := svc.DeleteUser(ctx, id)
		for _, d := range ds {
			deleted = append(deleted, d.ClientID)
		}
		return deleted, 0, err
	}
}
