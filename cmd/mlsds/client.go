package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"connectrpc.com/connect"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/mlsds/mlsds/client"
	"github.com/mlsds/mlsds/ds"
)

// The `mlsds client` commands are a small MLS client on the Go SDK
// (package client): one identity per state file, one short-lived SDK
// client per command (open, do the work, sync, close), except `listen`,
// which keeps its client open until interrupted.
//
// Every command prints the group events its client processed while it
// ran, so that nothing arrives unseen: a message processed by `send` is
// not shown again by a later `listen`.

// defaultClientServer is the address `mlsds serve` listens on by default.
const defaultClientServer = "http://127.0.0.1:7400"

// clientOpts are the flags of the client commands; each command registers
// the ones it uses.
type clientOpts struct {
	state, id, server string
	// ca is the PEM file of the CA certificates an https:// server's
	// certificate must chain to, instead of the system's.
	ca           string
	user, token  string
	logLevel     string
	timeout      time.Duration
	wait         time.Duration
	ttl          time.Duration
	deviceLink   string
	keyPackages  int
	json, opaque bool
	// deniable creates a deniable-mode group (create --deniable).
	deniable bool
	// listen starts printing events only once it said it listens.
	listen bool
	// offline opens the state without the server (groups, when the
	// server cannot be reached); noStream opens it without following the
	// server's stream.
	offline, noStream bool
}

// clientCommand is one `mlsds client` subcommand.
type clientCommand struct {
	args, summary string
	// minArgs and maxArgs bound the positional arguments (-1: no bound).
	minArgs, maxArgs int
	// literalAfter, if > 0, ends flag parsing after that many positional
	// arguments: the rest (a message text) is taken as it is.
	literalAfter int
	flags        func(fs *flag.FlagSet, o *clientOpts)
	run          func(ctx context.Context, s *clientSession, args []string) error
	// init and listen manage their own client.
	init, listen bool
	// offlineOK says the command shows the local state when the server
	// cannot be reached.
	offlineOK bool
	// noStream opens the client without following the server's stream:
	// the command makes its own calls only.
	noStream bool
}

var clientCommands map[string]*clientCommand

func init() {
	clientCommands = map[string]*clientCommand{
		"init": {args: "", summary: "create an identity, register it with the server and publish KeyPackages",
			maxArgs: 0, init: true, flags: func(fs *flag.FlagSet, o *clientOpts) {
				fs.StringVar(&o.user, "user", "", "user id of the identity (several clients may share one); default: the client id")
				fs.StringVar(&o.token, "token", "", "enrollment token, if the server requires one (--registration=token); prefer the environment variable")
				fs.StringVar(&o.deviceLink, "device-link", "", "register as another device of an existing user, with the link 'mlsds client device-link' printed on one of its devices")
				fs.IntVar(&o.keyPackages, "key-packages", 0, "how many KeyPackages to keep published, besides a last-resort one (default 20)")
			}},
		"publish": {args: "", summary: "top up the published KeyPackages", maxArgs: 0,
			flags: func(fs *flag.FlagSet, o *clientOpts) {
				fs.IntVar(&o.keyPackages, "key-packages", 0, "how many KeyPackages to keep published from now on, besides a last-resort one (default: as before, 20 at first)")
			}, run: clientPublish},
		"create": {args: "<name>", summary: "create a group with you as its only member; the name is your label for it (the group id is random)",
			minArgs: 1, maxArgs: 1, flags: func(fs *flag.FlagSet, o *clientOpts) {
				fs.BoolVar(&o.opaque, "opaque", false, "create an opaque-mode group (the server orders its messages without inspecting them)")
				fs.BoolVar(&o.deniable, "deniable", false, "create a deniable-mode group: opaque, and the server keeps no link between its members and the group (members prove membership with a per-epoch key, not their session)")
			}, run: clientCreate},
		"add":    {args: "<group> <client-id>...", summary: "add clients to a group (each needs a published KeyPackage)", minArgs: 2, maxArgs: -1, run: clientAdd},
		"remove": {args: "<group> <client-id>...", summary: "remove clients from a group", minArgs: 2, maxArgs: -1, run: clientRemove},
		"send": {args: "<group> <text...>|-", summary: "send the words after the group as a message (- reads standard input); flags go first",
			minArgs: 2, maxArgs: -1, literalAfter: 1, run: clientSend},
		"listen": {args: "[<group>]", summary: "print the events of your groups (or of one) as they come, until interrupted",
			maxArgs: 1, listen: true},
		"leave": {args: "<group>", summary: "ask to leave a group; another member's client commits it", minArgs: 1, maxArgs: 1,
			flags: func(fs *flag.FlagSet, o *clientOpts) {
				fs.DurationVar(&o.wait, "wait", 10*time.Second, "how long to wait for another member to commit the removal (0: do not wait)")
			}, run: clientLeave},
		"groups": {args: "", summary: "list your groups with their epoch and members (from the local state when the server is away)", maxArgs: 0, run: clientGroups, offlineOK: true},
		"token": {args: "", summary: "print a session token of the identity for the API ('Authorization: Bearer TOKEN', e.g. with curl); --json adds its expiry",
			maxArgs: 0, run: clientToken, noStream: true},
		"label":  {args: "<group> <name>", summary: "name a group for yourself (a group you were added to shows its id until you do)", minArgs: 2, maxArgs: 2, run: clientLabel},
		"update": {args: "<group>", summary: "give yourself fresh keys in a group (a Commit to a new epoch)", minArgs: 1, maxArgs: 1, run: clientUpdate},
		"tree":   {args: "<group>", summary: "draw the group's ratchet tree as your client holds it: blank nodes, unmerged leaves, members", minArgs: 1, maxArgs: 1, run: clientTree},
		"link": {args: "<group>", summary: "print a secret join link of a group: whoever holds it may join until it expires or is revoked",
			minArgs: 1, maxArgs: 1, flags: func(fs *flag.FlagSet, o *clientOpts) {
				fs.DurationVar(&o.ttl, "ttl", 0, "how long the link is valid (default: the server's, 7 days)")
			}, run: clientLink},
		"links":  {args: "<group>", summary: "list a group's live join links (without their secrets)", minArgs: 1, maxArgs: 1, run: clientLinks},
		"unlink": {args: "<group> <link-id>", summary: "revoke a join link of a group at once", minArgs: 2, maxArgs: 2, run: clientUnlink},
		"join":   {args: "<link> [<name>]", summary: "join a group with a join link a member gave you; the name is your label for it", minArgs: 1, maxArgs: 2, run: clientJoin},
		"device-link": {args: "", summary: "print a one-time link that registers another device (client) of your user ('init --device-link')",
			maxArgs: 0, flags: func(fs *flag.FlagSet, o *clientOpts) {
				fs.DurationVar(&o.ttl, "ttl", 0, "how long the link is valid (default: the server's, 10 minutes)")
			}, run: clientDeviceLink},
	}
}

func clientUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: mlsds client <command> [flags] [arguments]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "A command-line MLS client of mlsds. Each identity lives in a state file (SQLite),")
	fmt.Fprintln(w, "by default "+filepath.Join("<config dir>", "mlsds", "<id>.db")+"; pick it with --id or --state.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	names := make([]string, 0, len(clientCommands))
	for n := range clientCommands {
		names = append(names, n)
	}
	order := []string{"init", "publish", "device-link", "create", "add", "remove", "send", "listen", "leave", "groups", "tree", "label", "update", "link", "links", "unlink", "join", "token"}
	slices.SortFunc(names, func(a, b string) int { return slices.Index(order, a) - slices.Index(order, b) })
	for _, n := range names {
		c := clientCommands[n]
		fmt.Fprintf(w, "  %-11s %-24s %s\n", n, c.args, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "A <group> is the name you gave it (create, label, join) or its id in hex (the first")
	fmt.Fprintln(w, "8 digits do), as 'groups' lists it.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'mlsds client <command> -h' for its flags. Every flag has an environment twin:")
	fmt.Fprintln(w, "--id is also MLSDS_CLIENT_ID, --server is MLSDS_CLIENT_SERVER, --ca is MLSDS_CLIENT_CA.")
}

// newClientFlagSet returns the flags of one client command.
func newClientFlagSet(name string, cmd *clientCommand, o *clientOpts, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("mlsds client "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.state, "state", "", "the identity's state file (SQLite); default "+filepath.Join("<config dir>", "mlsds", "<id>.db"))
	fs.StringVar(&o.id, "id", "", "client id: names the identity (with init) and picks its state file; optional when there is only one")
	if cmd.init {
		fs.StringVar(&o.server, "server", defaultClientServer, "URL of the Delivery Service (http:// for h2c, https:// for TLS); remembered in the state")
	} else {
		fs.StringVar(&o.server, "server", "", "URL of the Delivery Service, instead of the one remembered by init")
	}
	if cmd.init {
		fs.StringVar(&o.ca, "ca", "", "PEM file of the CA certificate(s) that an https:// server's certificate is signed by (a private CA, or the server's own self-signed certificate), trusted instead of the system's; remembered in the state")
	} else {
		fs.StringVar(&o.ca, "ca", "", "PEM file of the CA certificate(s) for an https:// server, instead of the one remembered by init")
	}
	fs.StringVar(&o.logLevel, "log-level", "warn", "diagnostics of the client on standard error: debug, info, warn or error")
	fs.BoolVar(&o.json, "json", false, "print one JSON object per line instead of text")
	if !cmd.listen {
		fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "give up after this long")
	}
	if cmd.flags != nil {
		cmd.flags(fs, o)
	}
	addEnvToUsage(fs, clientEnvPrefix)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: mlsds client %s [flags] %s\n\n%s.\n\nFlags:\n", name, cmd.args, upperFirst(cmd.summary))
		fs.PrintDefaults()
	}
	return fs
}

func upperFirst(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	return string(unicode.ToUpper(r)) + s[n:]
}

// parseInterspersed parses flags anywhere among the arguments, as far as
// "--" or, with literalAfter > 0, that many positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string, literalAfter int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
		if literalAfter > 0 && len(pos) >= literalAfter {
			if len(args) > 0 && args[0] == "--" {
				args = args[1:]
			}
			return append(pos, args...), nil
		}
	}
}

// clientSignals returns a context that ends on Ctrl-C or SIGTERM;
// replaceable in tests.
var clientSignals = func() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// clientStdin is read by `send -`; replaceable in tests.
var clientStdin io.Reader = os.Stdin

func runClient(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		clientUsage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	name := args[0]
	cmd, ok := clientCommands[name]
	if !ok {
		fmt.Fprintf(stderr, "mlsds client: unknown command %q\n\n", name)
		clientUsage(stderr)
		return 2
	}
	o := clientOpts{noStream: cmd.noStream}
	fs := newClientFlagSet(name, cmd, &o, stderr)
	pos, err := parseInterspersed(fs, args[1:], cmd.literalAfter)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := applyClientEnv(fs, lookupEnv); err != nil {
		fmt.Fprintf(stderr, "mlsds client %s: %v\n", name, err)
		return 2
	}
	if len(pos) < cmd.minArgs || (cmd.maxArgs >= 0 && len(pos) > cmd.maxArgs) {
		fmt.Fprintf(stderr, "usage: mlsds client %s [flags] %s\n", name, cmd.args)
		return 2
	}
	if o.keyPackages < 0 {
		fmt.Fprintf(stderr, "mlsds client %s: --key-packages must not be negative\n", name)
		return 2
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintf(stderr, "mlsds client %s: --log-level %q: use debug, info, warn or error\n", name, o.logLevel)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))

	sigCtx, stop := clientSignals()
	defer stop()
	go func() {
		// After the first signal, a second one ends the process at once.
		<-sigCtx.Done()
		stop()
	}()
	ctx := sigCtx
	if !cmd.listen {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(sigCtx, o.timeout)
		defer cancel()
	}
	switch {
	case cmd.init:
		err = clientInit(ctx, &o, log, stdout, stderr)
	case cmd.listen:
		err = clientListen(ctx, &o, log, stdout, stderr, pos)
	default:
		err = withClient(ctx, &o, log, stdout, stderr, func(s *clientSession) error { return cmd.run(ctx, s, pos) })
		if err != nil && cmd.offlineOK && unreachable(err) && ctx.Err() == nil {
			// The local state answers without the server.
			fmt.Fprintf(stderr, "mlsds client %s: %v\nshowing your local state instead; it may miss what happened since your last command\n", name, err)
			o.offline = true
			err = withClient(ctx, &o, log, stdout, stderr, func(s *clientSession) error { return cmd.run(ctx, s, pos) })
		}
	}
	if err != nil {
		switch {
		case sigCtx.Err() != nil && !cmd.listen:
			err = fmt.Errorf("interrupted: %w", err)
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			err = fmt.Errorf("gave up after --timeout %v (is the server reachable?): %w", o.timeout, err)
		}
		fmt.Fprintf(stderr, "mlsds client %s: %s\n", name, cliText(err))
		return 1
	}
	return 0
}

// clientStateDir is where state files live by default.
func clientStateDir() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no configuration directory for the state files (%v); pass --state", err)
	}
	return filepath.Join(dir, "mlsds"), nil
}

var fileSafeIDRe = regexp.MustCompile(`^[A-Za-z0-9_@+-][A-Za-z0-9._@+-]*$`)

// fileSafeID reports whether a client id can name its state file as it is.
func fileSafeID(id string) bool { return fileSafeIDRe.MatchString(id) }

// maxStateFileName bounds the name of a state file: most file systems
// allow 255 bytes per name.
const maxStateFileName = 255

// stateFileName returns the name of the state file of client id, without
// the directory. An id that fileSafeID accepts names its file as it is (the
// names state files always had); any other id is percent-encoded: every
// byte outside [A-Za-z0-9_@+-], and a leading ".", becomes %XX. Such a name
// always holds a "%", which a plain one never does, so the mapping is
// reversible (idOfStateFile).
func stateFileName(id string) string {
	if fileSafeID(id) {
		return id + ".db"
	}
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		plain := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '_' || c == '@' || c == '+' || c == '-' || (c == '.' && i > 0)
		if plain {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		}
	}
	return b.String() + ".db"
}

// idOfStateFile is the inverse of stateFileName: the client id that names
// the state file called name, or "" if name is not one stateFileName makes.
func idOfStateFile(name string) string {
	base, ok := strings.CutSuffix(name, ".db")
	if !ok {
		return ""
	}
	if !strings.Contains(base, "%") {
		if !fileSafeID(base) {
			return ""
		}
		return base
	}
	id, err := url.PathUnescape(base)
	if err != nil || stateFileName(id) != name {
		return ""
	}
	return id
}

// statePath picks the state file from --state, --id, or the only state
// file in the default directory.
func (o *clientOpts) statePath() (string, error) {
	if o.state != "" {
		return o.state, nil
	}
	dir, err := clientStateDir()
	if err != nil {
		return "", err
	}
	if o.id != "" {
		name := stateFileName(o.id)
		if len(name) > maxStateFileName {
			return "", fmt.Errorf("client id %q is too long to name a state file (%d bytes escaped, at most %d); pass --state PATH", o.id, len(name), maxStateFileName)
		}
		return filepath.Join(dir, name), nil
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.db"))
	switch len(files) {
	case 0:
		return "", errors.New("no client identity yet: run 'mlsds client init --id NAME' first (or pass --state)")
	case 1:
		return files[0], nil
	}
	var ids []string
	for _, f := range files {
		id := idOfStateFile(filepath.Base(f))
		if id == "" {
			id = filepath.Base(f)
		}
		ids = append(ids, id)
	}
	return "", fmt.Errorf("there are several identities in %s (%s): pick one with --id or MLSDS_CLIENT_ID", dir, strings.Join(ids, ", "))
}

// The CLI keeps its own settings in a table of the state file, beside the
// SDK's tables.
const settingsSchema = `CREATE TABLE IF NOT EXISTS mlsds_cli (key TEXT PRIMARY KEY, value TEXT NOT NULL)`

type clientSettings struct {
	server, clientID string
	ca               string
	keyPackages      int
}

func openSQLite(path, pragmas string) (*sql.DB, error) {
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+pragmas)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

func readSettings(ctx context.Context, path string) (clientSettings, error) {
	var s clientSettings
	db, err := openSQLite(path, "_pragma=busy_timeout(10000)")
	if err != nil {
		return s, err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, settingsSchema); err != nil {
		return s, fmt.Errorf("%s is not a client state file: %w", path, err)
	}
	rows, err := db.QueryContext(ctx, `SELECT key, value FROM mlsds_cli`)
	if err != nil {
		return s, err
	}
	defer rows.Close()
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return s, err
		}
		switch k {
		case "server":
			s.server = v
		case "client_id":
			s.clientID = v
		case "ca":
			s.ca = v
		case "key_packages":
			s.keyPackages, _ = strconv.Atoi(v)
		}
	}
	return s, rows.Err()
}

func writeSettings(ctx context.Context, path string, kv map[string]string) error {
	db, err := openSQLite(path, "_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, settingsSchema); err != nil {
		return err
	}
	for k, v := range kv {
		if _, err := db.ExecContext(ctx, `INSERT INTO mlsds_cli (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, k, v); err != nil {
			return fmt.Errorf("saving the settings in %s: %w", path, err)
		}
	}
	return nil
}

// Labels are the names a user gives its groups: group ids are random, and
// a name that others choose (a group id, a label a member suggests) could
// pass one group off as another. They live in a table of the state file,
// beside the CLI's settings, one unique label per group.
const labelsSchema = `CREATE TABLE IF NOT EXISTS mlsds_cli_labels (group_id BLOB PRIMARY KEY, label TEXT NOT NULL UNIQUE)`

// errLabelTaken says a label names another group of the identity.
var errLabelTaken = errors.New("label taken")

func openLabels(ctx context.Context, path string) (*sql.DB, error) {
	db, err := openSQLite(path, "_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, labelsSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("%s is not a client state file: %w", path, err)
	}
	return db, nil
}

// readLabels returns the labels of the state at path, by group id.
func readLabels(ctx context.Context, path string) (map[string]string, error) {
	db, err := openLabels(ctx, path)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT group_id, label FROM mlsds_cli_labels`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id []byte
		var label string
		if err := rows.Scan(&id, &label); err != nil {
			return nil, err
		}
		out[string(id)] = label
	}
	return out, rows.Err()
}

// writeLabel gives group id the label, replacing its former one; it fails
// with errLabelTaken if the label names another group.
func writeLabel(ctx context.Context, path string, id []byte, label string) error {
	db, err := openLabels(ctx, path)
	if err != nil {
		return err
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var other []byte
	switch err := tx.QueryRowContext(ctx, `SELECT group_id FROM mlsds_cli_labels WHERE label = ?`, label).Scan(&other); {
	case err == nil && !bytes.Equal(other, id):
		return errLabelTaken
	case err != nil && !errors.Is(err, sql.ErrNoRows):
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO mlsds_cli_labels (group_id, label) VALUES (?, ?) ON CONFLICT (group_id) DO UPDATE SET label = excluded.label`, id, label); err != nil {
		return fmt.Errorf("saving the group's name in %s: %w", path, err)
	}
	return tx.Commit()
}

// deleteLabel forgets the label of group id.
func deleteLabel(ctx context.Context, path string, id []byte) error {
	db, err := openLabels(ctx, path)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, `DELETE FROM mlsds_cli_labels WHERE group_id = ?`, id)
	return err
}

// checkLabel says what is wrong with a group name a user picked, if
// anything.
func checkLabel(name string) error {
	switch {
	case name == "":
		return errors.New("a group name must not be empty")
	case len(name) > 64:
		return fmt.Errorf("the group name %q is too long: at most 64 bytes", name)
	case !utf8.ValidString(name):
		return errors.New("a group name must be UTF-8 text")
	case strings.HasPrefix(name, "-"):
		return fmt.Errorf("the group name %q must not start with '-', which starts a flag", name)
	case strings.HasPrefix(name, joinLinkPrefix):
		return fmt.Errorf("%q is a join link, not a name: 'mlsds client join LINK NAME' joins with it", name)
	case len(name) >= shortIDLen && isHex(name):
		return fmt.Errorf("the group name %q would read as a group id; pick a name that is not only hex digits", name)
	}
	// Group names follow the profile of user and client ids (README,
	// "Security model"): PRECIS UsernameCaseMapped, one script, no
	// invisible or bidi characters, so that two names that look alike are
	// the same name.
	if err := ds.CheckIdentifier("group name", name); err != nil {
		return err
	}
	return nil
}

// joinLinkPrefix starts a join link (client.JoinLink.String).
const joinLinkPrefix = "mlsds-join:"

// shortIDLen is how many hex digits of a group id name a group that has
// no label.
const shortIDLen = 8

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return s != ""
}

// groupLabels are the labels of one identity, as loaded at the start of
// a command and changed by it.
type groupLabels struct {
	mu   sync.Mutex
	byID map[string]string
}

func (l *groupLabels) get(id []byte) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.byID[string(id)]
	return s, ok
}

func (l *groupLabels) set(id []byte, label string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.byID[string(id)] = label
}

func (l *groupLabels) forget(id []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.byID, string(id))
}

// lookup returns the id of the group labelled name.
func (l *groupLabels) lookup(name string) ([]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, label := range l.byID {
		if label == name {
			return []byte(id), true
		}
	}
	return nil, false
}

// name is how a group is shown: its label, or else the first hex digits
// of its id.
func (l *groupLabels) name(id []byte) string {
	if label, ok := l.get(id); ok {
		return label
	}
	h := hex.EncodeToString(id)
	if len(h) > shortIDLen {
		h = h[:shortIDLen]
	}
	return h
}

// stateLock is an exclusive lock on a state file, held by one process at
// a time: two SDK clients on one state would both follow the server and
// overwrite each other's group states. It is an SQLite lock on a file
// beside the state, so the operating system drops it when the process
// ends, however it ends.
type stateLock struct {
	db   *sql.DB
	conn *sql.Conn
}

var errStateBusy = errors.New("in use by another mlsds client process")

func lockState(ctx context.Context, path string) (*stateLock, error) {
	lockPath := path + ".lock"
	db, err := openSQLite(lockPath, "_pragma=busy_timeout(0)")
	if err != nil {
		return nil, err
	}
	conn, err := db.Conn(ctx)
	if err == nil {
		_, err = conn.ExecContext(ctx, `BEGIN EXCLUSIVE`)
		if err != nil {
			conn.Close()
		}
	}
	if err != nil {
		db.Close()
		msg := strings.ToLower(err.Error())
		if strings.Contains(msg, "locked") || strings.Contains(msg, "busy") {
			return nil, fmt.Errorf("the state %s is %w (a 'listen' in another terminal?): one process at a time may use an identity; stop the other one, or run this command as another identity", path, errStateBusy)
		}
		return nil, fmt.Errorf("locking the state %s: %w", path, err)
	}
	return &stateLock{db: db, conn: conn}, nil
}

func (l *stateLock) unlock() {
	l.conn.ExecContext(context.Background(), `ROLLBACK`)
	l.conn.Close()
	l.db.Close()
}

// clientSession is an open SDK client with its printer.
type clientSession struct {
	c      *client.Client
	path   string
	out    *eventPrinter
	done   chan struct{}
	stdout io.Writer
	stderr io.Writer
	opts   *clientOpts
	labels *groupLabels

	printing sync.Once
}

// openSession locks the state at path and opens an SDK client on it with
// cfg. The caller unlocks the state after closing the session.
func openSession(ctx context.Context, o *clientOpts, log *slog.Logger, stdout, stderr io.Writer, path string, cfg client.Config) (*clientSession, *stateLock, error) {
	lock, err := lockState(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	cfg.StatePath = path
	cfg.Logger = log
	c, err := client.Open(ctx, cfg)
	if err != nil {
		lock.unlock()
		return nil, nil, explainOpen(err, cfg.Server, o.ca)
	}
	byID, err := readLabels(ctx, path)
	if err != nil {
		c.Close()
		lock.unlock()
		return nil, nil, err
	}
	labels := &groupLabels{byID: byID}
	s := &clientSession{c: c, path: path, done: make(chan struct{}), stdout: stdout, stderr: stderr, opts: o, labels: labels,
		out: &eventPrinter{w: stdout, json: o.json, self: c.ID(), labels: labels}}
	return s, lock, nil
}

// close closes the client and prints the events it still had.
func (s *clientSession) close() error {
	err := s.c.Close()
	s.startPrinting()
	<-s.done
	return err
}

// startPrinting starts printing the client's events.
func (s *clientSession) startPrinting() {
	s.printing.Do(func() {
		go func() {
			defer close(s.done)
			for ev := range s.c.Events() {
				s.out.print(ev)
			}
		}()
	})
}

// explainOpen adds advice to the errors of client.Open.
func explainOpen(err error, server, ca string) error {
	if msg := tlsProblem(err, server, ca); msg != "" {
		return &cliError{msg: msg, err: err}
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable:
		return fmt.Errorf("cannot reach the Delivery Service at %s; is 'mlsds serve' running there? (--server picks another URL): %w", server, err)
	case connect.CodeAlreadyExists:
		return fmt.Errorf("%w\n(pick another --id)", err)
	case connect.CodePermissionDenied:
		return fmt.Errorf("%w\n(pick another --id; another device of an existing user registers with --device-link, from 'mlsds client device-link' on one of its devices; "+
			"a server that requires an enrollment token needs --token or MLSDS_CLIENT_TOKEN)", err)
	}
	return err
}

// cliError is an error the CLI words itself, keeping the cause for
// errors.Is and errors.As.
type cliError struct {
	msg string
	err error
}

func (e *cliError) Error() string { return e.msg }
func (e *cliError) Unwrap() error { return e.err }

// tlsProblem says what is wrong when err is a failed TLS connection to
// server, and what to do; "" if it is not one.
func tlsProblem(err error, server, ca string) string {
	caAdvice := "pass --ca FILE (or MLSDS_CLIENT_CA) with the PEM certificate of the CA that signed the server's certificate (for a self-signed one: that certificate, as given to 'mlsds serve --tls-cert')"
	if ca != "" {
		caAdvice = fmt.Sprintf("the server's certificate is not signed by a CA in --ca %s: check that it is the right file", ca)
	}
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var host x509.HostnameError
	var verify *tls.CertificateVerificationError
	var rec tls.RecordHeaderError
	switch {
	case errors.As(err, &unknown):
		return fmt.Sprintf("TLS failure talking to %s: the server's certificate is signed by an unknown authority (%v); %s", server, unknown, caAdvice)
	case errors.As(err, &host):
		return fmt.Sprintf("TLS failure talking to %s: the server's certificate is not valid for this name (%v); use the host name the certificate names in --server, or a certificate for %s", server, host, host.Host)
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return fmt.Sprintf("TLS failure talking to %s: the server's certificate has expired or is not valid yet (%v); the server's operator must renew it (or check this machine's clock)", server, invalid)
	case errors.As(err, &invalid):
		return fmt.Sprintf("TLS failure talking to %s: the server's certificate is not acceptable (%v)", server, invalid)
	case errors.As(err, &verify):
		return fmt.Sprintf("TLS failure talking to %s: the server's certificate does not verify (%v); %s", server, verify.Err, caAdvice)
	case errors.As(err, &rec):
		return fmt.Sprintf("TLS failure talking to %s: the server does not speak TLS on that port; use an http:// URL, or start 'mlsds serve' with --tls-cert and --tls-key", server)
	}
	if strings.HasPrefix(server, "http://") && strings.Contains(err.Error(), "http2:") && connect.CodeOf(err) == connect.CodeUnavailable {
		return fmt.Sprintf("cannot talk to %s without TLS: if the server runs with --tls-cert, use an https:// URL (%v)", server, err)
	}
	return ""
}

// unreachable reports whether err says the server could not be reached.
func unreachable(err error) bool {
	return connect.CodeOf(err) == connect.CodeUnavailable
}

// httpClientFor returns the HTTP client for server when the CLI needs its
// own (a CA file), or nil for the SDK's default.
func httpClientFor(server, caFile string) (*http.Client, error) {
	if caFile == "" {
		return nil, nil
	}
	if !strings.HasPrefix(server, "https://") {
		return nil, fmt.Errorf("--ca is for https:// servers; %s is not one", server)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--ca %s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", caFile)
	}
	tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}}
	return &http.Client{Transport: tr}, nil
}

// checkServerURL checks the form of a --server URL.
func checkServerURL(server string) error {
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--server %q is not a URL of the form http://HOST:PORT (h2c) or https://HOST[:PORT] (TLS)", server)
	}
	return nil
}

// withClient runs f on an SDK client opened on the identity's state, lets
// the client catch up with the server, and closes it.
func withClient(ctx context.Context, o *clientOpts, log *slog.Logger, stdout, stderr io.Writer, f func(*clientSession) error) error {
	path, err := o.statePath()
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		id := o.id
		if id == "" {
			id = "NAME"
		}
		return fmt.Errorf("no client state at %s: run 'mlsds client init --id %s' first", path, id)
	}
	set, err := readSettings(ctx, path)
	if err != nil {
		return err
	}
	cfg := client.Config{Server: set.server, ClientID: o.id, KeyPackages: set.keyPackages, Offline: o.offline || o.noStream}
	if o.server != "" {
		cfg.Server = o.server
	}
	if cfg.Server == "" && !o.offline {
		return fmt.Errorf("%s does not remember a server (it was not made by 'mlsds client init'): pass --server", path)
	}
	if cfg.Server != "" {
		if err := checkServerURL(cfg.Server); err != nil {
			return err
		}
	}
	if o.id != "" && set.clientID != "" && o.id != set.clientID {
		return fmt.Errorf("the state %s belongs to client %q, not %q", path, set.clientID, o.id)
	}
	if o.keyPackages > 0 {
		cfg.KeyPackages = o.keyPackages
	}
	if o.ca == "" {
		o.ca = set.ca
	}
	if !o.offline {
		if cfg.HTTPClient, err = httpClientFor(cfg.Server, o.ca); err != nil {
			return err
		}
	}
	if o.listen {
		cfg.OnConnection = func(up bool, err error) {
			if up {
				fmt.Fprintln(stderr, "reconnected")
				return
			}
			why := "the server ended the stream"
			if err != nil {
				why = cliText(err)
			}
			fmt.Fprintf(stderr, "reconnecting... (%s)\n", why)
		}
	}
	s, lock, err := openSession(ctx, o, log, stdout, stderr, path, cfg)
	if err != nil {
		return err
	}
	defer lock.unlock()
	if !o.listen {
		s.startPrinting()
	}
	err = f(s)
	if err == nil && !cfg.Offline && !o.listen {
		// Let the stream deliver what waited for this client, so that its
		// events are shown now; the command itself is done, so a failure
		// here only delays them to the next command.
		if cerr := s.caughtUp(ctx); cerr != nil && ctx.Err() == nil {
			fmt.Fprintf(stderr, "note: could not catch up with the server (%s); the next command shows what arrived\n", cliText(cerr))
		}
	}
	err = s.words(err)
	if cerr := s.close(); err == nil && !errors.Is(cerr, client.ErrClosed) {
		err = cerr
	}
	return err
}

// caughtUpWait bounds how long a command waits for the server's stream to
// deliver its backlog before it fetches instead.
const caughtUpWait = 5 * time.Second

// caughtUp waits until the stream has delivered and the client processed
// everything the server held for it when the command began; if that takes
// long, it fetches every group instead.
func (s *clientSession) caughtUp(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(ctx, caughtUpWait)
	err := s.c.WaitCaughtUp(wctx)
	cancel()
	if err == nil || ctx.Err() != nil {
		return err
	}
	return s.c.Sync(ctx)
}

// words puts err in the CLI's words: groups by the user's names rather
// than hex ids, without the SDK's "client: " prefixes.
func (s *clientSession) words(err error) error {
	if err == nil {
		return nil
	}
	var ce *cliError
	if errors.As(err, &ce) && ce == err {
		return err
	}
	text := err.Error()
	for _, g := range s.c.Groups() {
		h := hex.EncodeToString(g.ID())
		text = strings.ReplaceAll(text, "group "+h, s.labels.name(g.ID()))
		text = strings.ReplaceAll(text, h, s.labels.name(g.ID()))
	}
	return &cliError{msg: cliText(errors.New(text)), err: err}
}

// cliText is err's text without the SDK's "client: " prefixes and with
// the SDK's names (Config fields) in the CLI's words.
func cliText(err error) string {
	text := strings.ReplaceAll(err.Error(), "client: ", "")
	return strings.NewReplacer(
		"Config.Server", "--server",
		"Config.ClientID", "--id",
		"ClientID", "--id",
		"StatePath", "--state",
		"Group.Rejoin", "'mlsds client join GROUP'",
	).Replace(text)
}

func clientInit(ctx context.Context, o *clientOpts, log *slog.Logger, stdout, stderr io.Writer) error {
	if o.id == "" {
		return errors.New("init needs --id NAME (or MLSDS_CLIENT_ID): the client id other members add you by")
	}
	if err := checkServerURL(o.server); err != nil {
		return err
	}
	if o.ca != "" {
		abs, err := filepath.Abs(o.ca)
		if err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
		o.ca = abs
	}
	hc, err := httpClientFor(o.server, o.ca)
	if err != nil {
		return err
	}
	path, err := o.statePath()
	if err != nil {
		return err
	}
	_, statErr := os.Stat(path)
	existed := statErr == nil
	if existed {
		set, err := readSettings(ctx, path)
		if err != nil {
			return err
		}
		if set.clientID != "" {
			if set.clientID != o.id {
				return fmt.Errorf("the state %s belongs to client %q already; pass another --state for %q", path, set.clientID, o.id)
			}
			if set.server != o.server {
				return fmt.Errorf("%s is registered with %s already; to use %s, init another identity (--state or --id)", o.id, set.server, o.server)
			}
		}
	} else if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating the state directory: %w", err)
	}
	cfg := client.Config{Server: o.server, HTTPClient: hc, ClientID: o.id, UserID: o.user, EnrollmentToken: o.token, KeyPackages: o.keyPackages, DeviceLink: o.deviceLink}
	if o.deviceLink != "" && o.user == "" {
		return errors.New("--device-link needs --user: the user id that 'mlsds client device-link' printed with the link")
	}
	s, lock, err := openSession(ctx, o, log, stdout, stderr, path, cfg)
	if err != nil {
		if !existed {
			for _, suffix := range []string{"", "-wal", "-shm", ".lock", ".client-lock"} {
				os.Remove(path + suffix)
			}
		}
		return err
	}
	defer lock.unlock()
	kv := map[string]string{"server": o.server, "client_id": s.c.ID(), "ca": o.ca}
	if o.keyPackages > 0 {
		kv["key_packages"] = strconv.Itoa(o.keyPackages)
	}
	err = writeSettings(ctx, path, kv)
	if cerr := s.close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if existed {
		fmt.Fprintf(stdout, "%s is set up with %s (state %s); KeyPackages topped up\n", o.id, o.server, path)
	} else {
		fmt.Fprintf(stdout, "%s is registered with %s and has KeyPackages published (state %s)\n", o.id, o.server, path)
	}
	return nil
}

func clientPublish(ctx context.Context, s *clientSession, _ []string) error {
	// Opening the client topped the stock up already; this tops it up
	// again in case KeyPackages were claimed meanwhile.
	n, err := s.c.PublishKeyPackages(ctx)
	if err != nil {
		return err
	}
	if s.opts.keyPackages > 0 {
		if err := writeSettings(ctx, s.path, map[string]string{"key_packages": strconv.Itoa(s.opts.keyPackages)}); err != nil {
			return err
		}
	}
	fmt.Fprintf(s.stdout, "KeyPackages of %s are topped up (%d uploaded just now)\n", s.c.ID(), n)
	return nil
}

// resolve returns the id of the client's group that name names: its
// label, or its id in hex, whole or cut short to at least its first
// shortIDLen digits. It returns nil if there is none.
func (s *clientSession) resolve(name string) ([]byte, error) {
	if id, ok := s.labels.lookup(name); ok {
		return id, nil
	}
	if len(name) < shortIDLen || !isHex(name) {
		return nil, nil
	}
	prefix := strings.ToLower(name)
	var found []byte
	for _, g := range s.c.Groups() {
		if !strings.HasPrefix(hex.EncodeToString(g.ID()), prefix) {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("%q starts the ids of several of your groups: type more of the id ('mlsds client groups --json' shows them whole)", name)
		}
		found = g.ID()
	}
	return found, nil
}

// findGroup returns the client's group that name names (see resolve),
// brought up to date. If there is none, it waits up to a few seconds for
// the Welcomes that the stream may be about to deliver.
func (s *clientSession) findGroup(ctx context.Context, name string) (*client.Group, error) {
	lookup := func() (*client.Group, error) {
		id, err := s.resolve(name)
		if id == nil {
			return nil, err
		}
		return s.c.Group(id), nil
	}
	g, err := lookup()
	if err != nil {
		return nil, err
	}
	if g == nil {
		// A Welcome waiting for this client comes before the stream's
		// caught-up point: let it in, so that its group can be named by
		// id, and its events are shown.
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		s.c.WaitCaughtUp(wctx)
		cancel()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if g, err = lookup(); err != nil {
			return nil, err
		}
	}
	if g == nil {
		return nil, fmt.Errorf("you (%s) are not in a group %q: 'mlsds client groups' lists yours; create it, or ask a member to add you or for a join link", s.c.ID(), name)
	}
	return s.synced(ctx, g)
}

// synced brings g up to date, so that a command acts on the group's
// current epoch and membership: the stream delivers what the server held
// (without a request of its own), or else the group is fetched.
func (s *clientSession) synced(ctx context.Context, g *client.Group) (*client.Group, error) {
	name := s.labels.name(g.ID())
	var err error
	if err = s.caughtUp(ctx); err == nil {
		switch {
		case g.Removed():
			err = client.ErrRemoved
		case g.Broken():
			err = client.ErrGroupBroken
		}
	} else if ctx.Err() == nil {
		err = g.Sync(ctx)
	}
	switch {
	case errors.Is(err, client.ErrRemoved):
		return nil, fmt.Errorf("you are no longer a member of %s", name)
	case errors.Is(err, client.ErrGroupBroken):
		return nil, &cliError{msg: fmt.Sprintf("your client could not follow %s (a change it could not process); 'mlsds client join %s' rejoins it", name, name), err: err}
	case err != nil:
		return nil, err
	}
	return g, nil
}

// nameGroup gives group id the label name, in the state and for the rest
// of the command.
func (s *clientSession) nameGroup(ctx context.Context, id []byte, name string) error {
	if err := writeLabel(ctx, s.path, id, name); err != nil {
		if errors.Is(err, errLabelTaken) {
			return fmt.Errorf("you have another group named %q: pick another name ('mlsds client label' renames a group)", name)
		}
		return err
	}
	s.labels.set(id, name)
	return nil
}

func clientCreate(ctx context.Context, s *clientSession, args []string) error {
	name := args[0]
	if err := checkLabel(name); err != nil {
		return err
	}
	if _, ok := s.labels.lookup(name); ok {
		return fmt.Errorf("you have a group named %q already: pick another name ('mlsds client label' renames a group)", name)
	}
	// A random id: nobody can guess it, and groups of other users with
	// the same name do not collide with this one.
	id := make([]byte, 16)
	rand.Read(id)
	// The name is saved first: it is taken once the group exists.
	if err := s.nameGroup(ctx, id, name); err != nil {
		return err
	}
	g, err := s.c.CreateGroup(ctx, client.GroupOptions{ID: id, Opaque: s.opts.opaque, Deniable: s.opts.deniable})
	if err != nil {
		s.labels.forget(id)
		deleteLabel(context.WithoutCancel(ctx), s.path, id)
		return err
	}
	s.out.line(g.ID(), "created", fmt.Sprintf("you created the group (epoch %d, members: %s)", g.Epoch(), strings.Join(g.Members(), ", ")), nil)
	return nil
}

func clientLabel(ctx context.Context, s *clientSession, args []string) error {
	id, err := s.resolve(args[0])
	if err != nil {
		return err
	}
	if id == nil || s.c.Group(id) == nil {
		return fmt.Errorf("you (%s) have no group %q: 'mlsds client groups' lists yours", s.c.ID(), args[0])
	}
	name := args[1]
	if err := checkLabel(name); err != nil {
		return err
	}
	old := s.labels.name(id)
	if err := s.nameGroup(ctx, id, name); err != nil {
		return err
	}
	fmt.Fprintf(s.stderr, "%s is now named %s\n", old, name)
	return nil
}

func clientAdd(ctx context.Context, s *clientSession, args []string) error {
	g, err := s.findGroup(ctx, args[0])
	if err != nil {
		return err
	}
	members := g.Members()
	var add []string
	for _, id := range args[1:] {
		if slices.Contains(members, id) {
			fmt.Fprintf(s.stderr, "%s is a member of %s already\n", id, s.labels.name(g.ID()))
			continue
		}
		add = append(add, id)
	}
	if len(add) == 0 {
		return nil
	}
	return g.Add(ctx, add...)
}

func clientRemove(ctx context.Context, s *clientSession, args []string) error {
	g, err := s.findGroup(ctx, args[0])
	if err != nil {
		return err
	}
	name := s.labels.name(g.ID())
	var rm []string
	for _, id := range args[1:] {
		if id == s.c.ID() {
			return fmt.Errorf("to remove yourself, use 'mlsds client leave %s'", name)
		}
		if !slices.Contains(g.Members(), id) {
			return fmt.Errorf("%s is not a member of %s (members: %s)", id, name, strings.Join(g.Members(), ", "))
		}
		rm = append(rm, id)
	}
	return g.Remove(ctx, rm...)
}

func clientSend(ctx context.Context, s *clientSession, args []string) error {
	g, err := s.findGroup(ctx, args[0])
	if err != nil {
		return err
	}
	var text []byte
	if len(args) == 2 && args[1] == "-" {
		if text, err = io.ReadAll(bufio.NewReader(clientStdin)); err != nil {
			return fmt.Errorf("reading the message from standard input: %w", err)
		}
		text = bytes.TrimSuffix(text, []byte("\n"))
	} else {
		text = []byte(strings.Join(args[1:], " "))
	}
	if len(text) == 0 {
		return errors.New("the message is empty")
	}
	name := s.labels.name(g.ID())
	r, err := g.Send(ctx, text)
	if err != nil {
		if errors.Is(err, client.ErrRemoved) {
			return fmt.Errorf("you are no longer a member of %s", name)
		}
		if unreachable(err) {
			// The client sent the same sealed bytes on every try, and the
			// server keeps one copy of them: at most one arrives.
			return fmt.Errorf("the server did not confirm the message to %s (%w); if it took it before the connection broke, the members get it once, else nobody does", name, err)
		}
		return err
	}
	s.out.mu.Lock()
	defer s.out.mu.Unlock()
	if s.opts.json {
		return json.NewEncoder(s.stdout).Encode(receiptJSON{Group: name, GroupID: hex.EncodeToString(g.ID()), Event: "sent",
			Seq: r.Seq, Epoch: r.Epoch, AcceptedAt: r.AcceptedAt.UTC().Format(time.RFC3339Nano)})
	}
	fmt.Fprintf(s.stdout, "[%s] sent: message %d of the group, epoch %d\n", name, r.Seq, r.Epoch)
	return nil
}

// receiptJSON is the --json form of a send's receipt.
type receiptJSON struct {
	Group      string `json:"group"`
	GroupID    string `json:"group_id"`
	Event      string `json:"event"`
	Seq        uint64 `json:"seq"`
	Epoch      uint64 `json:"epoch"`
	AcceptedAt string `json:"accepted_at"`
}

// tokenJSON is the --json form of a session token.
type tokenJSON struct {
	ClientID     string `json:"client_id"`
	SessionToken string `json:"session_token"`
	ExpiresAt    string `json:"expires_at"`
}

func clientToken(ctx context.Context, s *clientSession, _ []string) error {
	tok, exp, err := s.c.SessionToken(ctx)
	if err != nil {
		return err
	}
	if s.opts.json {
		return json.NewEncoder(s.stdout).Encode(tokenJSON{ClientID: s.c.ID(), SessionToken: tok, ExpiresAt: exp.UTC().Format(time.RFC3339)})
	}
	fmt.Fprintln(s.stdout, tok)
	fmt.Fprintf(s.stderr, "a session token of %s, good until %s; it acts for %s: keep it secret. Use it as 'Authorization: Bearer TOKEN'\n",
		s.c.ID(), exp.Local().Format("2006-01-02 15:04 MST"), s.c.ID())
	return nil
}

func clientLeave(ctx context.Context, s *clientSession, args []string) error {
	g, err := s.findGroup(ctx, args[0])
	if err != nil {
		return err
	}
	if err := g.Leave(ctx); err != nil {
		return err
	}
	if s.opts.wait > 0 {
		// The SDK proposes the removal again in every epoch until another
		// member commits it.
		wctx, cancel := context.WithTimeout(ctx, s.opts.wait)
		defer cancel()
		if err := g.WaitRemoved(wctx); err == nil {
			return nil
		} else if wctx.Err() == nil {
			return err
		}
	}
	fmt.Fprintf(s.stderr, "asked to leave %s: another member's client commits your removal when it next runs (a 'listen', or any command)\n", s.labels.name(g.ID()))
	return nil
}

func clientUpdate(ctx context.Context, s *clientSession, args []string) error {
	g, err := s.findGroup(ctx, args[0])
	if err != nil {
		return err
	}
	return g.Update(ctx)
}

// linkJSON is the --json form of a join link.
type linkJSON struct {
	Group     string `json:"group"`
	GroupID   string `json:"group_id"`
	Link      string `json:"link,omitempty"`
	LinkID    string `json:"link_id"`
	CreatedBy string `json:"created_by,omitempty"`
	CreatedAt string `json:"created_at,omitempty"`
	ExpiresAt string `json:"expires_at,omitempty"`
}

func linkTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func clientLink(ctx context.Context, s *clientSession, args []string) error {
	if s.opts.ttl < 0 {
		return errors.New("--ttl must not be negative")
	}
	g, err := s.findGroup(ctx, args[0])
	if err != nil {
		return err
	}
	name := s.labels.name(g.ID())
	l, err := g.CreateJoinLink(ctx, s.opts.ttl)
	if err != nil {
		return fmt.Errorf("making a join link of %s: %w", name, serverCause(err))
	}
	s.out.mu.Lock()
	defer s.out.mu.Unlock()
	if s.opts.json {
		return json.NewEncoder(s.stdout).Encode(linkJSON{Group: name, GroupID: hex.EncodeToString(l.GroupID), Link: l.String(), LinkID: l.ID, ExpiresAt: linkTime(l.ExpiresAt)})
	}
	fmt.Fprintln(s.stdout, l.String())
	until := ""
	if !l.ExpiresAt.IsZero() {
		until = " until " + l.ExpiresAt.Local().Format("2006-01-02 15:04 MST")
	}
	fmt.Fprintf(s.stderr, "whoever has this link can join %s%s: give it only to those you mean to invite; 'mlsds client unlink %s %s' revokes it\n",
		name, until, name, l.ID)
	return nil
}

func clientLinks(ctx context.Context, s *clientSession, args []string) error {
	g, err := s.findGroup(ctx, args[0])
	if err != nil {
		return err
	}
	name := s.labels.name(g.ID())
	links, err := g.JoinLinks(ctx)
	if err != nil {
		return fmt.Errorf("listing the join links of %s: %w", name, serverCause(err))
	}
	s.out.mu.Lock()
	defer s.out.mu.Unlock()
	if s.opts.json {
		enc := json.NewEncoder(s.stdout)
		for _, l := range links {
			enc.Encode(linkJSON{Group: name, GroupID: hex.EncodeToString(g.ID()), LinkID: l.ID, CreatedBy: l.CreatedBy, CreatedAt: linkTime(l.CreatedAt), ExpiresAt: linkTime(l.ExpiresAt)})
		}
		return nil
	}
	if len(links) == 0 {
		fmt.Fprintf(s.stdout, "%s has no live join links\n", name)
	}
	for _, l := range links {
		fmt.Fprintf(s.stdout, "%s  made by %s  expires %s\n", l.ID, l.CreatedBy, linkTime(l.ExpiresAt))
	}
	return nil
}

func clientUnlink(ctx context.Context, s *clientSession, args []string) error {
	g, err := s.findGroup(ctx, args[0])
	if err != nil {
		return err
	}
	name := s.labels.name(g.ID())
	if err := g.RevokeJoinLink(ctx, args[1]); err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			return fmt.Errorf("%s has no live join link %q ('mlsds client links %s' lists them)", name, args[1], name)
		}
		return fmt.Errorf("revoking join link %s of %s: %w", args[1], name, serverCause(err))
	}
	fmt.Fprintf(s.stderr, "join link %s of %s is revoked: nobody can join with it any more\n", args[1], name)
	return nil
}

// serverCause returns the server's answer that err wraps, if any, else err:
// the SDK's own wrapping names groups by their ids, where the CLI names
// them by the user's names.
func serverCause(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	return err
}

func clientJoin(ctx context.Context, s *clientSession, args []string) error {
	arg := strings.TrimSpace(args[0])
	if !strings.HasPrefix(arg, joinLinkPrefix) {
		return joinWithoutLink(ctx, s, arg)
	}
	link, err := client.ParseJoinLink(arg)
	if err != nil {
		return fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "client: "))
	}
	if g := s.c.Group(link.GroupID); g != nil && !g.Removed() && !g.Broken() {
		return fmt.Errorf("you are a member of %s already", s.labels.name(g.ID()))
	}
	var name string
	_, hadLabel := s.labels.get(link.GroupID)
	if len(args) == 2 {
		name = args[1]
		if err := checkLabel(name); err != nil {
			return err
		}
		if err := s.nameGroup(ctx, link.GroupID, name); err != nil {
			return err
		}
	}
	_, err = s.c.JoinWithLink(ctx, link)
	if err == nil {
		return nil
	}
	if name != "" && !hadLabel {
		s.labels.forget(link.GroupID)
		deleteLabel(context.WithoutCancel(ctx), s.path, link.GroupID)
	}
	if errors.Is(err, client.ErrJoinLinkRefused) {
		return fmt.Errorf("the server refuses this join link: it was revoked or has expired; ask a member of the group for a new one (%w)", serverCause(err))
	}
	return err
}

// joinWithoutLink handles `join` of a group named rather than linked: it
// joins nothing, but a member whose state of the group broke rejoins it.
func joinWithoutLink(ctx context.Context, s *clientSession, name string) error {
	if id, _ := s.resolve(name); id != nil {
		if g := s.c.Group(id); g != nil {
			switch {
			case g.Broken():
				// The server takes a resync external Commit from a member.
				return g.Rejoin(ctx)
			case !g.Removed():
				return fmt.Errorf("you are a member of %s already", s.labels.name(id))
			}
			return fmt.Errorf("you are no longer a member of %s: to join it again, ask one of its members for a join link ('mlsds client link %s' prints one), then run 'mlsds client join LINK'", s.labels.name(id), s.labels.name(id))
		}
	}
	return fmt.Errorf("%q is not a join link: to join a group, ask one of its members for a join link ('mlsds client link GROUP' prints one), then run 'mlsds client join LINK'", name)
}

func clientDeviceLink(ctx context.Context, s *clientSession, _ []string) error {
	if s.opts.ttl < 0 {
		return errors.New("--ttl must not be negative")
	}
	l, err := s.c.CreateDeviceLink(ctx, s.opts.ttl)
	if err != nil {
		return err
	}
	if s.opts.json {
		return json.NewEncoder(s.stdout).Encode(map[string]any{"device_link": l.Link, "user_id": l.UserID, "expires_at": l.ExpiresAt})
	}
	fmt.Fprintf(s.stdout, "%s\n", l.Link)
	fmt.Fprintf(s.stderr, "On the new device, within %s: mlsds client init --id NEW-ID --user %s --device-link %s\n",
		time.Until(l.ExpiresAt).Round(time.Minute), l.UserID, l.Link)
	return nil
}

// groupStatus describes one group for `groups`.
type groupStatus struct {
	Group   string   `json:"group"` // the label, or the id's first hex digits
	GroupID string   `json:"group_id"`
	Label   string   `json:"label,omitempty"`
	Epoch   uint64   `json:"epoch"`
	Members []string `json:"members"`
	Status  string   `json:"status"` // member, removed or broken
}

func clientGroups(ctx context.Context, s *clientSession, _ []string) error {
	if !s.opts.offline {
		// Welcomes come on the stream only: let it deliver the ones
		// waiting, and the groups' messages.
		if err := s.caughtUp(ctx); err != nil {
			return err
		}
	}
	var list []groupStatus
	for _, g := range s.c.Groups() {
		st := groupStatus{Group: s.labels.name(g.ID()), GroupID: hex.EncodeToString(g.ID()), Epoch: g.Epoch(), Members: g.Members(), Status: "member"}
		st.Label, _ = s.labels.get(g.ID())
		switch {
		case g.Removed():
			st.Status = "removed"
		case g.Broken():
			st.Status = "broken"
		}
		list = append(list, st)
	}
	s.out.mu.Lock()
	defer s.out.mu.Unlock()
	if s.opts.json {
		enc := json.NewEncoder(s.stdout)
		for _, st := range list {
			enc.Encode(st)
		}
		return nil
	}
	if len(list) == 0 {
		fmt.Fprintf(s.stdout, "%s is in no group yet\n", s.c.ID())
	}
	for _, st := range list {
		note := ""
		if st.Status != "member" {
			note = " (" + st.Status + ")"
		}
		fmt.Fprintf(s.stdout, "%s  epoch %d  members: %s%s\n", st.Group, st.Epoch, strings.Join(st.Members, ", "), note)
	}
	return nil
}

func clientListen(ctx context.Context, o *clientOpts, log *slog.Logger, stdout, stderr io.Writer, args []string) error {
	done := errors.New("interrupted")
	o.listen = true
	err := withClient(ctx, o, log, stdout, stderr, func(s *clientSession) error {
		if len(args) == 1 {
			g, err := s.findGroup(ctx, args[0])
			if err != nil {
				return err
			}
			s.out.setFilter(g.ID())
		}
		fmt.Fprintf(stderr, "listening as %s; Ctrl-C to stop\n", s.c.ID())
		// The stream brings what waited, then what comes.
		s.startPrinting()
		<-ctx.Done()
		return done
	})
	if errors.Is(err, done) {
		return nil
	}
	return err
}

// eventPrinter prints SDK events, one line each.
type eventPrinter struct {
	mu     sync.Mutex
	w      io.Writer
	json   bool
	self   string
	labels *groupLabels
	filter []byte // the one group whose events are printed, if not nil
	// changes holds, per group, the Commit whose membership events were
	// printed last.
	changes map[string]uint64
}

func (p *eventPrinter) setFilter(f []byte) {
	p.mu.Lock()
	p.filter = f
	p.mu.Unlock()
}

// eventJSON is the --json form of an event.
type eventJSON struct {
	Group      string   `json:"group"` // the label, or the id's first hex digits
	GroupID    string   `json:"group_id"`
	Label      string   `json:"label,omitempty"`
	Event      string   `json:"event"`
	Seq        uint64   `json:"seq,omitempty"`
	Epoch      uint64   `json:"epoch"`
	Sender     string   `json:"sender,omitempty"`
	Text       *string  `json:"text,omitempty"`
	Data       []byte   `json:"data,omitempty"`
	Members    []string `json:"members,omitempty"`
	Left       []string `json:"left,omitempty"`
	AcceptedAt string   `json:"accepted_at,omitempty"`
	Error      string   `json:"error,omitempty"`
	Line       string   `json:"line"`
}

func (p *eventPrinter) print(e client.Event) {
	p.line(e.GroupID, e.Kind.String(), p.text(e), &e)
}

// text says what event e reports, as a person would.
func (p *eventPrinter) text(e client.Event) string {
	who := func(id string) string {
		if id == p.self {
			return "you"
		}
		return id
	}
	list := func(ids []string) string {
		var named []string
		for _, id := range ids {
			named = append(named, who(id))
		}
		switch len(named) {
		case 0:
			return ""
		case 1:
			return named[0]
		}
		return strings.Join(named[:len(named)-1], ", ") + " and " + named[len(named)-1]
	}
	roster := func() string { return strings.Join(e.Members, ", ") }
	sender := e.Sender
	if sender == "" {
		sender = "a member"
	}
	key := string(e.GroupID)
	switch e.Kind {
	case client.EventMessage:
		return e.Sender + ": " + sanitize(string(e.Data))
	case client.EventJoined:
		return fmt.Sprintf("you joined (epoch %d, members: %s)", e.Epoch, roster())
	case client.EventMembersAdded:
		p.noteChange(key, e.Seq)
		if len(e.Members) == 1 && e.Members[0] == e.Sender {
			return e.Sender + " joined"
		}
		return fmt.Sprintf("%s added %s", who(sender), list(e.Members))
	case client.EventMembersRemoved:
		p.noteChange(key, e.Seq)
		var parts []string
		if removed := without(e.Members, e.Left); len(removed) > 0 {
			parts = append(parts, fmt.Sprintf("%s removed %s", who(sender), list(removed)))
		}
		if len(e.Left) > 0 {
			parts = append(parts, list(e.Left)+" left")
		}
		return strings.Join(parts, "; ")
	case client.EventEpoch:
		if p.changed(key, e.Seq) {
			return fmt.Sprintf("epoch %d (members: %s)", e.Epoch, roster())
		}
		// A Commit that changed no membership: its committer took fresh
		// keys (and committed any Update proposals).
		if e.Sender == p.self {
			return fmt.Sprintf("you updated your keys (epoch %d)", e.Epoch)
		}
		return fmt.Sprintf("%s updated their keys (epoch %d)", sender, e.Epoch)
	case client.EventRemoved:
		if e.Sender != "" {
			return who(e.Sender) + " removed you: you are no longer a member"
		}
		return "you were removed: you are no longer a member"
	case client.EventLeft:
		return "you left"
	case client.EventUndecryptable:
		from := ""
		if e.Sender != "" {
			from = " from " + who(e.Sender)
		}
		return fmt.Sprintf("message %d%s could not be read: %s", e.Seq, from, errText(e.Err))
	case client.EventRefused:
		var ce *client.CredentialError
		if errors.As(e.Err, &ce) {
			return fmt.Sprintf("refused a change by %s: it brings in %q, whose signature key the server's directory does not bind to that name (%s)", sender, ce.Identity, errText(ce.Err))
		}
		return fmt.Sprintf("refused a change by %s: %s", sender, errText(e.Err))
	case client.EventRejoined:
		return fmt.Sprintf("you rejoined (epoch %d, members: %s) after your client could not follow the group: %s", e.Epoch, roster(), errText(e.Err))
	case client.EventPruned:
		return fmt.Sprintf("the server deleted messages before message %d before you got them: %s", e.Seq, errText(e.Err))
	case client.EventMembersUpdated:
		p.noteChange(key, e.Seq)
		text := list(e.Members) + " updated their keys"
		if len(e.Members) == 1 && e.Members[0] == p.self {
			text = "you updated your keys"
		}
		if e.Sender != "" && !slices.Contains(e.Members, e.Sender) {
			text += " (committed by " + who(e.Sender) + ")"
		}
		return text
	case client.EventMisattributed:
		return fmt.Sprintf("refused a message the server says %s sent: %s signed it (%s)", sender, list(e.Members), errText(e.Err))
	case client.EventReInit:
		return fmt.Sprintf("%s closed the group to go on in a new one (ReInit; last members: %s)", who(sender), roster())
	case client.EventForked:
		return "your client's view of the group is not the one the server serves; it rejoins the served one: " + errText(e.Err)
	case client.EventProposalDropped:
		return fmt.Sprintf("dropped a proposal by %s: too many proposals are pending in this epoch (%s)", sender, errText(e.Err))
	case client.EventDropped:
		return "the server no longer delivers this group to you although you are a member (a member's Commit declared you removed); " +
			"the other members restore you, and your client rejoins then: " + errText(e.Err)
	case client.EventKeyMismatch:
		return fmt.Sprintf("%s gave the server a wrong membership key for epoch %d, so nobody can use the group any more; "+
			"the other members move to a new group without %s: %s", who(sender), e.Epoch, who(sender), errText(e.Err))
	}
	return e.Kind.String()
}

// errText is the text of err (possibly nil) in the CLI's words.
func errText(err error) string {
	if err == nil {
		return "no reason given"
	}
	return cliText(err)
}

// noteChange records that a Commit (seq) of group key changed the
// membership, so that its epoch event shows the new roster rather than a
// key update.
func (p *eventPrinter) noteChange(key string, seq uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.changes == nil {
		p.changes = map[string]uint64{}
	}
	p.changes[key] = seq
}

func (p *eventPrinter) changed(key string, seq uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.changes[key]
	return ok && s == seq
}

// without returns the ids of a that are not in b.
func without(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// line prints one event line of group id (unless filtered out).
func (p *eventPrinter) line(id []byte, kind, text string, e *client.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.filter != nil && !bytes.Equal(p.filter, id) {
		return
	}
	name := p.labels.name(id)
	if !p.json {
		fmt.Fprintf(p.w, "[%s] %s\n", name, text)
		return
	}
	j := eventJSON{Group: name, GroupID: hex.EncodeToString(id), Event: kind, Line: text}
	j.Label, _ = p.labels.get(id)
	if e != nil {
		j.Seq, j.Epoch, j.Sender, j.Members, j.Left = e.Seq, e.Epoch, e.Sender, e.Members, e.Left
		if !e.AcceptedAt.IsZero() {
			j.AcceptedAt = e.AcceptedAt.UTC().Format(time.RFC3339Nano)
		}
		if e.Err != nil {
			j.Error = e.Err.Error()
		}
		if e.Kind == client.EventMessage {
			if utf8.Valid(e.Data) {
				t := string(e.Data)
				j.Text = &t
			} else {
				j.Data = e.Data
			}
		}
	}
	b, _ := json.Marshal(j)
	p.w.Write(append(b, '\n'))
}

// sanitize keeps a message from driving the terminal: control characters
// other than newline and tab are shown as U+FFFD, and every line after the
// first is indented.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' {
			return r
		}
		if unicode.IsControl(r) || r == utf8.RuneError {
			return utf8.RuneError
		}
		return r
	}, s)
	return strings.ReplaceAll(s, "\n", "\n    ")
}
