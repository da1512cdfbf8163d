// Package walkthrough runs the README's API walk-through
// (scripts/walkthrough.sh: register with a proof of possession, log in by
// challenge, one authenticated call, with curl and openssl only) against a
// real `mlsds serve`.
package walkthrough

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mlsds/mlsds/internal/testkit"
)

// need finds the tools the script uses: without one, the test skips, or
// fails under CI=true (.ci/run installs them).
func need(t *testing.T) {
	t.Helper()
	var missing []string
	for _, tool := range []string{"bash", "curl", "openssl", "base64", "od", "sed"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		// Ed25519 needs OpenSSL 1.1.1 or later.
		if out, err := exec.Command("openssl", "genpkey", "-algorithm", "ed25519").CombinedOutput(); err != nil {
			missing = append(missing, "openssl with Ed25519 ("+strings.TrimSpace(string(out))+")")
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "the API walk-through needs " + strings.Join(missing, ", ") + " (apt-get install curl openssl)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func TestWalkthroughScript(t *testing.T) {
	need(t)
	srv := testkit.StartServe(t)
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "walkthrough.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"walker", strings.Repeat("w", 70)} { // 1- and 2-byte length prefixes
		cmd := exec.Command("bash", script, srv.URL, id)
		out, err := cmd.CombinedOutput()
		t.Logf("%s", out)
		if err != nil {
			t.Fatalf("walkthrough.sh as %s: %v", id, err)
		}
		if !strings.Contains(string(out), "walkthrough: ok, the directory binds "+id+" to this key") {
			t.Fatalf("walkthrough.sh as %s did not finish", id)
		}
	}
}
