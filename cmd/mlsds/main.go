// Command mlsds is the MLS Delivery Service in one binary.
//
//	mlsds serve     run the server
//	mlsds bench     load-test a server and report its figures
//	mlsds client    a command-line MLS client (init, create, add, send, listen, ...)
//	mlsds inspect   decode an MLS object and check its signatures and tree
//	mlsds admin     operator commands (delete-client, delete-user)
//	mlsds version   print the version (also mlsds --version)
//
// Every flag of a command has an environment twin: --max-message-size is
// also MLSDS_MAX_MESSAGE_SIZE (the client's --id is MLSDS_CLIENT_ID, the
// bench's --groups MLSDS_BENCH_GROUPS). A
// flag given on the command line wins over its environment variable,
// which wins over the default.
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
)

// command is one subcommand of mlsds.
type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands is the table of subcommands.
var commands = map[string]command{
	"serve":   {"run the Delivery Service", runServe},
	"bench":   {"load-test a server (one it starts, or --target) and report its figures", runBench},
	"version": {"print the version and exit", runVersion},
	"client":  {"a command-line MLS client: init, create, add, send, listen, ...", runClient},
	"inspect": {"decode an MLS object (message, KeyPackage, GroupInfo, Welcome, ratchet tree) and check what it can", runInspect},
	"admin":   {"operator commands: delete-client, delete-user (through a server, or on its database)", runAdmin},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" {
		return runVersion(args[1:], stdout, stderr)
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "mlsds: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	return cmd.run(args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "mlsds is a Delivery Service for Messaging Layer Security (RFC 9420).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: mlsds <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'mlsds <command> -h' for the flags of a command. Every flag has an")
	fmt.Fprintln(w, "environment twin: --data-dir is also MLSDS_DATA_DIR.")
}
