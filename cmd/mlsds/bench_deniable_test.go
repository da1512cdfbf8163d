package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestBenchModeDeniable runs `mlsds bench --mode deniable` against a
// server it starts and checks its figures: opaque and deniable groups
// both had messages accepted, every one reached every other member once,
// only the deniable clients signed calls with membership keys, and the
// MAC check was measured.
func TestBenchModeDeniable(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and loads it for seconds")
	}
	useTestServerChild(t)
	var out, errb bytes.Buffer
	args := []string{"bench", "--mode", "deniable", "--duration", "1s", "--groups", "2", "--members", "3", "--temp-dir", t.TempDir(), "--json"}
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("mlsds bench exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var rep modeReport
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &rep); err != nil {
		t.Fatalf("the last line of stdout is not the JSON report: %v\n%s", err, out.String())
	}
	if len(rep.Modes) != 2 || rep.Modes[0].Mode != "opaque" || rep.Modes[1].Mode != "deniable" {
		t.Fatalf("modes: %+v", rep.Modes)
	}
	for _, m := range rep.Modes {
		if m.Accepted <= 0 || m.AcceptedPerSec <= 0 {
			t.Errorf("%s: nothing accepted: %+v", m.Mode, m)
		}
		if want := m.Accepted * 2; m.Deliveries != want || m.ExpectedDeliveries != want {
			t.Errorf("%s: %d deliveries (expected %d), want %d", m.Mode, m.Deliveries, m.ExpectedDeliveries, want)
		}
		if m.Errors != 0 || m.Undecryptable != 0 {
			t.Errorf("%s: %d errors (%s), %d undecryptable", m.Mode, m.Errors, m.FirstError, m.Undecryptable)
		}
	}
	if rep.Modes[0].MembershipMACs != 0 || rep.Modes[1].MembershipMACs < rep.Modes[1].Accepted {
		t.Errorf("membership MACs: opaque %d, deniable %d for %d accepted", rep.Modes[0].MembershipMACs, rep.Modes[1].MembershipMACs, rep.Modes[1].Accepted)
	}
	if rep.MACVerifyNs <= 0 || rep.MACSignNs <= 0 || rep.DeniableVsOpaque <= 0 {
		t.Errorf("MAC cost or ratio not measured: %+v", rep)
	}
	for _, want := range []string{"deniable/opaque accepted messages/s", "membership MAC check per request"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, out.String())
		}
	}

	errb.Reset()
	if code := run([]string{"bench", "--mode", "transparent"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "deniable") {
		t.Errorf("--mode transparent: exit %d, %q", code, errb.String())
	}
}
