package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Environment twins: every flag of a command has one, its name in upper
// case after the command's prefix ("max-message-size" of serve is
// MLSDS_MAX_MESSAGE_SIZE, "log-level" of client is MLSDS_CLIENT_LOG_LEVEL).
const (
	serveEnvPrefix  = "MLSDS_"
	clientEnvPrefix = "MLSDS_CLIENT_"
	benchEnvPrefix  = "MLSDS_BENCH_"
)

// envTwin is the environment twin of a flag under prefix.
func envTwin(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func envName(flagName string) string       { return envTwin(serveEnvPrefix, flagName) }
func clientEnvName(flagName string) string { return envTwin(clientEnvPrefix, flagName) }
func benchEnvName(flagName string) string  { return envTwin(benchEnvPrefix, flagName) }

// applyEnvTwins sets every flag of fs that was not given on the command
// line from its environment twin under prefix, if that is set. Call it
// after fs.Parse.
func applyEnvTwins(fs *flag.FlagSet, prefix string, lookup func(string) (string, bool)) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		name := envTwin(prefix, f.Name)
		if v, ok := lookup(name); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %v", name, v, e)
			}
		}
	})
	return err
}

func applyEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	return applyEnvTwins(fs, serveEnvPrefix, lookup)
}

func applyClientEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	return applyEnvTwins(fs, clientEnvPrefix, lookup)
}

func applyBenchEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	return applyEnvTwins(fs, benchEnvPrefix, lookup)
}

// addEnvToUsage appends the environment twin under prefix to the usage
// text of every flag of fs.
func addEnvToUsage(fs *flag.FlagSet, prefix string) {
	fs.VisitAll(func(f *flag.Flag) {
		f.Usage += " (env " + envTwin(prefix, f.Name) + ")"
	})
}

// byteSize is a flag value for sizes in bytes with an optional binary
// suffix: 1048576, 1024KiB, 1MiB, 1M.
type byteSize int

// String prints the size with the largest binary suffix that divides it
// ("1MiB", "64KiB", "1000"), the form -h shows for defaults.
func (b *byteSize) String() string { return formatByteSize(int(*b)) }

func formatByteSize(n int) string {
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.Itoa(n/u.mult) + u.suffix
		}
	}
	return strconv.Itoa(n)
}

func (b *byteSize) Set(s string) error {
	n, err := parseByteSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

func parseByteSize(s string) (int, error) {
	t := strings.TrimSpace(s)
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}} {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.Atoi(t)
	if err != nil || n < 0 || n > (1<<31-1)/mult {
		return 0, fmt.Errorf("%q is not a size; use bytes, or a number with KiB, MiB or GiB", s)
	}
	return n * mult, nil
}

// lookupEnv is os.LookupEnv, replaceable in tests.
var lookupEnv = os.LookupEnv
