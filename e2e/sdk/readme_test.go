package sdk

import (
	"bytes"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// readmeStep is one code block of the README's chat section: commands
// typed in a terminal, or what a terminal shows.
type readmeStep struct {
	terminal string
	commands [][]string // argument lists after "go run ./cmd/mlsds"
	shows    []string   // expected lines, when the block is output
}

var terminalRe = regexp.MustCompile(`(?i)terminal (\d+)`)

// groupRe finds the group names in the lines a terminal shows. A group
// that its client has no name for shows as the first 8 hex digits of its
// random id: those of the README are an example, which the test binds to
// the digits the terminal really shows, and replaces in later commands.
var groupRe = regexp.MustCompile(`\[([0-9a-f]{8})\]`)

// readmeChat reads the "Chat from two terminals" section of the README:
// each code block belongs to the terminal the text before it names last.
func readmeChat(t *testing.T) []readmeStep {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	i := strings.Index(text, "\n## Chat from two terminals\n")
	if i < 0 {
		t.Fatal(`README.md has no "## Chat from two terminals" section`)
	}
	text = text[i+1:]
	if j := strings.Index(text[3:], "\n## "); j >= 0 {
		text = text[:j+3]
	}
	var steps []readmeStep
	terminal := ""
	var block *readmeStep
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "```"):
			if block == nil {
				if terminal == "" {
					t.Fatal("README: a code block of the chat section names no terminal")
				}
				block = &readmeStep{terminal: terminal}
			} else {
				steps = append(steps, *block)
				block = nil
			}
		case block != nil && strings.HasPrefix(line, "go run ./cmd/mlsds "):
			block.commands = append(block.commands, shellWords(t, strings.TrimPrefix(line, "go run ./cmd/mlsds ")))
		case block != nil && strings.TrimSpace(line) != "":
			block.shows = append(block.shows, line)
		case block == nil:
			if m := terminalRe.FindAllStringSubmatch(line, -1); m != nil {
				terminal = m[len(m)-1][1]
			}
		}
	}
	return steps
}

// lineRegexp matches line literally, but for its example group ids: those
// bound stand for their real digits, the others for any 8 hex digits
// (captured, one group per id of the line).
func lineRegexp(line string, bound map[string]string) *regexp.Regexp {
	var b strings.Builder
	last := 0
	for _, m := range groupRe.FindAllStringSubmatchIndex(line, -1) {
		b.WriteString(regexp.QuoteMeta(line[last:m[2]]))
		if real, ok := bound[line[m[2]:m[3]]]; ok {
			b.WriteString("(" + regexp.QuoteMeta(real) + ")")
		} else {
			b.WriteString("([0-9a-f]{8})")
		}
		last = m[3]
	}
	b.WriteString(regexp.QuoteMeta(line[last:]))
	return regexp.MustCompile(b.String())
}

// shellWords splits a command line of the README: words, and double- or
// single-quoted strings.
func shellWords(t *testing.T, s string) []string {
	var out []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			if strings.ContainsRune("$`\\|&;<>*", r) {
				t.Fatalf("README command %q uses shell syntax this test does not run", s)
			}
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("README command %q: unterminated quote", s)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// terminal is a running `listen` of one README terminal.
type terminal struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	exit chan error
}

// TestREADMEChat runs the commands of the README's chat section, in
// order, with the real mlsds binary against a real `mlsds serve`, and
// checks that each terminal shows what the README says. The README's
// commands rely on the default server address; the test points them at
// its own server with MLSDS_CLIENT_SERVER and keeps the state files in a
// temporary configuration directory.
func TestREADMEChat(t *testing.T) {
	steps := readmeChat(t)
	srv := startServer(t)
	cfg := t.TempDir()
	env := append(os.Environ(), "XDG_CONFIG_HOME="+cfg, "HOME="+cfg, "MLSDS_CLIENT_SERVER="+srv.url)
	listens := map[string]*terminal{} // the last listen of each terminal
	running := map[string]bool{}
	interrupt := func(term string) {
		l := listens[term]
		l.cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-l.exit:
			if err != nil {
				t.Errorf("terminal %s: %v after Ctrl-C: %v\n%s", term, l.cmd.Args[1:], err, l.out.String())
			}
		case <-time.After(30 * time.Second):
			l.cmd.Process.Kill()
			t.Errorf("terminal %s: listen did not stop within 30s of Ctrl-C", term)
		}
		running[term] = false
	}
	t.Cleanup(func() {
		for term, r := range running {
			if r {
				listens[term].cmd.Process.Kill()
			}
		}
	})
	var ran, checked int
	ids := map[string]string{} // README example digits -> the real ones
	for _, st := range steps {
		t.Logf("terminal %s: commands %q, shows %q", st.terminal, st.commands, st.shows)
		for _, args := range st.commands {
			if len(args) > 0 && args[0] == "serve" {
				continue // the test's own server stands for it
			}
			if running[st.terminal] {
				interrupt(st.terminal) // Ctrl-C before the next command
			}
			args = slices.Clone(args)
			for i, a := range args {
				if len(a) == 8 && groupRe.MatchString("["+a+"]") {
					real, ok := ids[a]
					if !ok {
						t.Fatalf("README: terminal %s's command %q uses the group id %s before a terminal shows it", st.terminal, args, a)
					}
					args[i] = real
				}
			}
			cmd := exec.Command(binPath, args...)
			cmd.Env = env
			ran++
			if len(args) > 1 && args[0] == "client" && args[1] == "listen" {
				out := &lockedBuffer{}
				cmd.Stdout, cmd.Stderr = out, out
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				l := &terminal{cmd: cmd, out: out, exit: make(chan error, 1)}
				go func() { l.exit <- cmd.Wait() }()
				listens[st.terminal], running[st.terminal] = l, true
				// Like a person, wait until it says it listens.
				waitShown(t, st.terminal, l, []string{"listening as"}, ids)
				continue
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("terminal %s: mlsds %s: %v\n%s", st.terminal, strings.Join(args, " "), err, out)
			}
		}
		if len(st.shows) > 0 {
			l := listens[st.terminal]
			if l == nil {
				t.Fatalf("README: terminal %s shows output, but no listen ran there", st.terminal)
			}
			waitShown(t, st.terminal, l, st.shows, ids)
			checked += len(st.shows)
		}
	}
	for term, r := range running {
		if r {
			interrupt(term)
		}
	}
	if ran < 8 || checked < 3 {
		t.Fatalf("the README's chat section ran only %d commands and checked %d lines", ran, checked)
	}
	t.Logf("ran %d README commands, checked %d lines of output", ran, checked)
}

// waitShown waits until the terminal's output holds the lines, in order.
// A group id of the README's (see groupRe) stands for the one ids binds
// it to, or, if unbound, for any, which it then binds.
func waitShown(t *testing.T, term string, l *terminal, lines []string, ids map[string]string) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		out := l.out.String()
		rest, ok := out, true
		bound := maps.Clone(ids)
		for _, line := range lines {
			m := lineRegexp(line, bound).FindStringSubmatchIndex(rest)
			if m == nil {
				ok = false
				break
			}
			for i, ex := range groupRe.FindAllStringSubmatch(line, -1) {
				if _, ok := bound[ex[1]]; !ok && 2*i+3 < len(m) && m[2*i+2] >= 0 {
					bound[ex[1]] = rest[m[2*i+2]:m[2*i+3]]
				}
			}
			rest = rest[m[1]:]
		}
		if ok {
			maps.Copy(ids, bound)
			return
		}
		select {
		case err := <-l.exit:
			t.Fatalf("terminal %s: listen exited (%v) before showing %q:\n%s", term, err, lines, l.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("terminal %s does not show %q within 45s; it shows:\n%s", term, lines, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
